"""Are the simulator's predictions physically plausible? Sliding window against causal on H100.

FlashAttention-3 with a native sliding window runs at 0.77 of its causal rate (allowed pairs
per second) at N = 32K on H100; no simulated band pattern should come closer to causal's rate
than that. For each window this prints the predicted rate ratio with the op weights
(`costs="model"`) and with the compiled kernels' SASS (`costs="compiled"`: compiled without a
GPU, cached), and causal's time breakdown under both. Writes
benchmarks/results/plausibility.json.

    python benchmarks/plausibility.py [--seq 32768] [--windows 1024,4096]
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
BLOCK, HEAD_DIM = (128, 64), 128


def pair_rate(pattern, seq: int, costs: str) -> tuple[float, dict]:
    result = simulate(pattern, seq=seq, hardware="h100", block=BLOCK, head_dim=HEAD_DIM, costs=costs)
    pairs = pattern.analyze(seq, block=BLOCK).pairs(exact=False)
    return pairs / result.time_ms, {"time_ms": round(result.time_ms, 3),
                                    "breakdown_ms": {k: round(v, 3) for k, v in result.breakdown.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=32768)
    parser.add_argument("--windows", default="1024,4096")
    args = parser.parse_args()
    lib = attnlang.stdlib()
    rows, causal = [], {}
    for costs in ("model", "compiled"):
        causal[costs] = pair_rate(lib["causal"], args.seq, costs)
    for window in (int(w) for w in args.windows.split(",")):
        pattern = lib["sliding_window"].bind(window=window)
        for costs in ("model", "compiled"):
            rate, detail = pair_rate(pattern, args.seq, costs)
            ratio = rate / causal[costs][0]
            rows.append({"window": window, "costs": costs, "rate_over_causal": round(ratio, 3),
                         "plausible": ratio <= FA3_SLIDING_OVER_CAUSAL, **detail})
            print(f"sliding_window(window={window}) at {args.seq}, costs={costs}: {ratio:.3f} of causal's pair rate "
                  f"(FA3: {FA3_SLIDING_OVER_CAUSAL})")
    for costs, (_, detail) in causal.items():
        print(f"causal at {args.seq}, costs={costs}: {detail['time_ms']} ms, breakdown {detail['breakdown_ms']}")
    write_json("plausibility", {"environment": environment(), "hardware": "h100", "seq": args.seq,
                                "block": list(BLOCK), "head_dim": HEAD_DIM, "dtype": "bf16",
                                "fa3_sliding_over_causal": FA3_SLIDING_OVER_CAUSAL,
                                "causal": {c: d for c, (_, d) in causal.items()}, "sliding_window": rows})


if __name__ == "__main__":
    main()
