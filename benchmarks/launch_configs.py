"""Launch configurations compiled for GPU targets, without a GPU: the data behind `launch_for`.

For each target, head dim and tile shape, the causal kernels are compiled as a launch
specializes them (bf16, 16 heads, N = 16384) with the launcher's own warps and stages
(`launch_for` in the kernel template), or over a grid of (num_warps, num_stages) with
`--warps 4,8 --stages 1,2`, and each kernel's shared memory, registers, spills and SASS
instructions per tile are recorded (attnlang.codegen.targets). The launcher's rows back the
simulator's REGISTER_SAFE table (what block="auto" may offer); tests/test_targets.py checks
the template's shared-memory model against compiled metadata. Rows of earlier runs are kept
(the newest wins) in benchmarks/results/launch_configs.json.

    python benchmarks/launch_configs.py                          # the launcher's configs, 7 tile shapes
    python benchmarks/launch_configs.py --warps 4,8 --stages 1,2 --blocks 64x64,128x64
"""

import argparse
import itertools
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # compiling runs in attnlang.codegen.targets' subprocess either way

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json  # noqa: E402

KERNELS = ("forward", "backward_kv", "backward_q")


def measure(target: str, head_dim: int, block: tuple[int, int], warps: int | None, stages: int | None) -> list[dict]:
    """One launch's kernels; warps and stages None: what the launcher picks (`launch_for`)."""
    import torch

    import attnlang
    kernel = attnlang.stdlib()["causal"].compile(heads=16, head_dim=head_dim, dtype=torch.bfloat16, block=block)
    chosen_by = "launch_for" if warps is None else "grid"
    if warps is not None:
        kernel.launch = {name: {"num_warps": warps, "num_stages": stages} for name in KERNELS}
    try:
        report = kernel.compile_for(target, 16384)
    except Exception as err:  # noqa: BLE001 - a configuration that does not compile is a result
        return [{"target": target, "head_dim": head_dim, "block": f"{block[0]}x{block[1]}", "num_warps": warps,
                 "num_stages": stages, "chosen_by": chosen_by, "error": f"{type(err).__name__}: {str(err)[:300]}"}]
    return [{"target": target, "head_dim": head_dim, "block": f"{block[0]}x{block[1]}", "chosen_by": chosen_by,
             "kernel": k.kernel,
             "num_warps": k.num_warps, "num_stages": k.num_stages, "registers": k.registers,
             "spill_bytes": k.spills, "stack_bytes": k.stack_bytes, "shared_bytes": k.shared_bytes,
             "shared_limit": k.shared_limit, "fits": k.fits, "full_per_tile": k.full_instructions,
             "partial_per_tile": k.partial_instructions,
             "full_per_1000": round(k.per_thousand("full"), 1) if k.full_instructions else None}
            for k in report]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="sm_80,sm_90")
    parser.add_argument("--head-dims", default="64,128")
    parser.add_argument("--blocks", default="128x128,128x64,64x128,64x64,128x32,64x32,32x32")
    parser.add_argument("--warps", default="launcher",
                        help="'launcher' (what launch_for picks, stages too), comma-separated counts, or "
                             "'rule': 4 for 64x64 tiles, 8 once a side is 128")
    parser.add_argument("--stages", default="1,2", help="with --warps other than 'launcher'")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "launch_configs.json"))
    args = parser.parse_args()
    blocks = [tuple(int(s) for s in b.split("x")) for b in args.blocks.split(",")]
    targets, head_dims = args.targets.split(","), [int(d) for d in args.head_dims.split(",")]
    if args.warps == "launcher":
        grid = [(t, d, b, None, None) for t, d, b in itertools.product(targets, head_dims, blocks)]
    else:
        warps = [None] if args.warps == "rule" else [int(w) for w in args.warps.split(",")]
        grid = [(target, d, block, w or (4 if max(block) < 128 else 8), stages)
                for target, d, block, w, stages in itertools.product(
                    targets, head_dims, blocks, warps, [int(s) for s in args.stages.split(",")])]
    out = Path(args.out)
    rows = json.loads(out.read_text())["configs"] if out.exists() else []  # earlier runs: merged, newest wins
    with ProcessPoolExecutor(args.workers) as pool:
        for result in pool.map(measure, *zip(*grid, strict=True)):
            keys = {_key(r) for r in result}
            rows = [r for r in rows if _key(r) not in keys] + result
            write_json("launch_configs", {"environment": environment(), "pattern": "causal()", "dtype": "bfloat16",
                                                 "heads": 16, "seq": 16384, "configs": sorted(rows, key=_key)}, out)
            last = result[-1]
            print(f"{last['target']} d={last['head_dim']} {last['block']} {last['num_warps']}w "
                  f"{last['num_stages']}s: " + ("; ".join(
                      f"{r['kernel']} {r['shared_bytes']:,} B {r['registers']} regs {r['spill_bytes']} spill "
                      f"{r['full_per_1000']}" for r in result) if "error" not in last else last["error"]),
                  flush=True)


def _key(row: dict) -> tuple:
    return (row.get("chosen_by", "grid"), row["target"], row["head_dim"], row["block"], row.get("kernel", ""),
            row["num_warps"] or 0, row["num_stages"] or 0)


if __name__ == "__main__":
    main()
