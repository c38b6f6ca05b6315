"""Layouts for grid and residue patterns: useful work, visited tiles, analysis time, simulated time.

For each configuration: the useful fraction (allowed pairs / pairs of visited tiles) and visited
tiles in 128 x 128 tiles, row-major and in the layout `layout="auto"` chooses, with the analysis
time of each; and the simulated forward + backward time on H100 (16 heads, d = 128, bf16, the
kernel's 128 x 64 tiles) row-major, in the chosen layout without and with the permutation's
copies. Configurations: the issue's targets (2D neighborhoods on a 256 x 256 latent as in
NATTEN's FLUX layout, HunyuanVideo's 30 x 48 x 80 latent with a 17 x 23 x 23 window, HaloNet on
256 x 256, a dilated window) and the stdlib grid patterns at their defaults. Writes
benchmarks/results/layouts.json.

    python benchmarks/layouts.py [--only NAME]
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json  # noqa: E402

import attnlang  # noqa: E402
from attnlang import simulate  # noqa: E402

TARGET_BLOCK, KERNEL_BLOCK, HEADS = 128, (128, 64), 16
CONFIGS = [  # label, pattern, params, N, (row-major, target) useful fractions from the issue
    ("FLUX 256x256, kernel 13", "neighborhood2d", {"height": 256, "width": 256, "kernel": 13}, 65536, (0.051, 0.15)),
    ("FLUX 256x256, kernel 33", "neighborhood2d", {"height": 256, "width": 256, "kernel": 33}, 65536, (0.13, 0.55)),
    ("HunyuanVideo 30x48x80, 17x23x23", "neighborhood3d",
     {"frames": 30, "height": 48, "width": 80, "kernel_t": 17, "kernel_h": 23, "kernel_w": 23}, 115200, (0.28, 0.44)),
    ("HaloNet 256x256", "halonet", {"height": 256, "width": 256}, 65536, (0.054, 0.17)),
    ("dilated 512, dilation 2", "dilated", {"window": 512, "dilation": 2}, 131072, (0.47, 0.88)),
    ("neighborhood2d (defaults)", "neighborhood2d", {}, 16384, None),
    ("neighborhood3d (defaults)", "neighborhood3d", {}, 16384, None),
    ("halonet (defaults)", "halonet", {}, 16384, None),
    ("swin (defaults)", "swin", {}, 12544, None),
    ("swin_shifted (defaults)", "swin_shifted", {}, 12544, None),
    ("sliding_tile (defaults)", "sliding_tile", {}, 61440, None),
    ("strided (defaults)", "strided", {}, 16384, None),
]


def measure(label, name, params, seq, target) -> dict:
    pattern = attnlang.stdlib()[name].bind(**params)
    start = time.perf_counter()
    row_major = pattern.analyze(seq, block=TARGET_BLOCK)
    row_major_s = time.perf_counter() - start
    chosen = pattern.analyze(seq, block=TARGET_BLOCK, layout="auto", heads=HEADS)
    # the chosen layout's own analysis time (the choice analyzed it already: time it again alone)
    start = time.perf_counter()
    again = pattern.analyze(seq, block=TARGET_BLOCK, layout=chosen.layout)
    chosen_s = time.perf_counter() - start
    base = simulate(pattern, seq=seq, heads=HEADS, backward=True, block=KERNEL_BLOCK, layout="row-major")
    laid_out = simulate(pattern, seq=seq, heads=HEADS, backward=True, block=KERNEL_BLOCK, layout="auto")
    permutation = laid_out.breakdown["permutation"]
    row = {
        "config": label, "pattern": pattern.label, "seq": seq,
        "layout_128": str(chosen.layout), "layout_kernel": str(pattern.choose_layout(
            "auto", seq, block=KERNEL_BLOCK, heads=HEADS).layout),
        "useful_row_major": round(row_major.useful_fraction(), 4), "useful_chosen": round(again.useful_fraction(), 4),
        "visited_row_major": row_major.counts["full"] + row_major.counts["partial"],
        "visited_chosen": again.counts["full"] + again.counts["partial"],
        "analysis_s_row_major": round(row_major_s, 3), "analysis_s_chosen": round(chosen_s, 3),
        "simulated_ms_row_major": round(base.time_ms, 3),
        "simulated_ms_chosen": round(laid_out.time_ms - permutation, 3),
        "simulated_ms_chosen_with_permutation": round(laid_out.time_ms, 3),
        "speedup_with_permutation": round(base.time_ms / laid_out.time_ms, 2),
        "reason": chosen.layout_choice.reason if chosen.layout_choice else None,
    }
    if target:
        row["issue_row_major"], row["issue_target"] = target
        row["target_met"] = row["useful_chosen"] >= target[1]
    print(f"{label:34} {str(chosen.layout):12} useful {row['useful_row_major']:.3f} -> {row['useful_chosen']:.3f}"
          f"{'' if not target else f' (target {target[1]})'}  tiles {row['visited_row_major']:,} -> "
          f"{row['visited_chosen']:,}  analysis {row_major_s:.2f}s -> {chosen_s:.2f}s  sim {base.time_ms:.3f} -> "
          f"{row['simulated_ms_chosen']:.3f} ms (+{permutation:.3f} permutation, {str(row['layout_kernel'])})",
          flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="run the configurations whose label contains this")
    args = parser.parse_args()
    rows = [measure(*config) for config in CONFIGS if not args.only or args.only in config[0]]
    write_json("layouts", {"environment": environment(), "target_block": TARGET_BLOCK,
                           "kernel_block": list(KERNEL_BLOCK), "hardware": "h100", "heads": HEADS, "head_dim": 128,
                           "dtype": "bf16", "rows": rows})


if __name__ == "__main__":
    main()
