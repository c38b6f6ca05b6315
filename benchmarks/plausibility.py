"""Are the simulator's predictions physically plausible? Short rows against published kernels on H100.

Two published references (H100 SXM5, bf16, d = 128):
- dense attention at batch x seq = 16K, 16 heads (FlashAttention-3 paper, forward, no mask):
  Triton's fused-attention kernel and FA3 lose rate at short lengths, where each program has
  few tiles to hide its Q load, pipeline fill and epilogue; attnlang's kernel (Triton too)
  must not be predicted to lose less;
- FlashAttention-3 with a native sliding window runs at 0.77 of its causal rate (pairs per
  second) at N = 32K; a band is not predicted closer to causal's rate than that where its
  rows are as short (a window of 1024 or less).
Both with the op weights (`costs="model"`) and with the compiled kernels' SASS
(`costs="compiled"`: compiled without a GPU, cached). Writes benchmarks/results/plausibility.json.

    python benchmarks/plausibility.py [--seq 32768] [--windows 256,512,1024,2048,4096]
"""

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # compiling runs in attnlang.codegen.targets' subprocess either way

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json  # noqa: E402

import attnlang  # noqa: E402
from attnlang import simulate  # noqa: E402

FA3_SLIDING_OVER_CAUSAL = 0.77
# TFLOPS by sequence length, forward, batch x seq = 16K (FA3 paper, H100 SXM5, head dim 128)
PUBLISHED_DENSE = {"triton": {512: 323, 1024: 372, 2048: 389, 4096: 389, 8192: 392, 16384: 395},
                   "fa3": {512: 467, 1024: 565, 2048: 625, 4096: 638, 8192: 646, 16384: 648}}
BLOCK, HEAD_DIM = (128, 64), 128


def pair_rate(pattern, seq: int, costs: str, batch: int = 1) -> tuple[float, dict]:
    result = simulate(pattern, seq=seq, batch=batch, hardware="h100", block=BLOCK, head_dim=HEAD_DIM, costs=costs)
    pairs = pattern.analyze(seq, block=BLOCK).pairs(exact=False) * batch
    return pairs / result.time_ms, {"time_ms": round(result.time_ms, 3),
                                    "breakdown_ms": {k: round(v, 3) for k, v in result.breakdown.items()}}


def dense_scaling(costs: str) -> list[dict]:
    dense = attnlang.parse("pattern dense() { mask true }")["dense"]
    lengths = sorted(PUBLISHED_DENSE["triton"])
    rates = {seq: pair_rate(dense, seq, costs, batch=16384 // seq)[0] for seq in lengths}
    rows = []
    for seq in lengths:
        row = {"seq": seq, "costs": costs, "simulated": round(rates[seq] / rates[16384], 3)}
        row.update({name: round(tflops[seq] / tflops[16384], 3) for name, tflops in PUBLISHED_DENSE.items()})
        row["plausible"] = row["simulated"] <= row["triton"]
        rows.append(row)
        print(f"dense N={seq:5} (batch {16384 // seq:2}), costs={costs}: {row['simulated']:.3f} of the 16K rate "
              f"(Triton {row['triton']:.3f}, FA3 {row['fa3']:.3f})")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=32768)
    parser.add_argument("--windows", default="256,512,1024,2048,4096")
    args = parser.parse_args()
    lib = attnlang.stdlib()
    scaling = dense_scaling("model") + dense_scaling("compiled")
    rows, causal = [], {}
    for costs in ("model", "compiled"):
        causal[costs] = pair_rate(lib["causal"], args.seq, costs)
    for window in (int(w) for w in args.windows.split(",")):
        pattern = lib["sliding_window"].bind(window=window)
        for costs in ("model", "compiled"):
            rate, detail = pair_rate(pattern, args.seq, costs)
            ratio = rate / causal[costs][0]
            rows.append({"window": window, "costs": costs, "rate_over_causal": round(ratio, 3),
                         "below_fa3": ratio <= FA3_SLIDING_OVER_CAUSAL, **detail})
            print(f"sliding_window(window={window}) at {args.seq}, costs={costs}: {ratio:.3f} of causal's pair rate "
                  f"(FA3: {FA3_SLIDING_OVER_CAUSAL})")
    for costs, (_, detail) in causal.items():
        print(f"causal at {args.seq}, costs={costs}: {detail['time_ms']} ms, breakdown {detail['breakdown_ms']}")
    write_json("plausibility", {"environment": environment(), "hardware": "h100", "seq": args.seq,
                                "block": list(BLOCK), "head_dim": HEAD_DIM, "dtype": "bf16",
                                "published_dense_tflops": PUBLISHED_DENSE, "dense_scaling": scaling,
                                "fa3_sliding_over_causal": FA3_SLIDING_OVER_CAUSAL,
                                "causal": {c: d for c, (_, d) in causal.items()}, "sliding_window": rows})


if __name__ == "__main__":
    main()
