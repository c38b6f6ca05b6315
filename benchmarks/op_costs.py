"""What the simulator's op weights should be: SASS instructions per score pair, compiled without a GPU.

Each probe is a small pattern compiled as a launch specializes it (sm_90, d = 128, bf16, 128x64
tiles, N = 16384, the launcher's warps and stages; attnlang.codegen.targets). A tile loop's
warp instructions x warps x 32 / (BLOCK_M x BLOCK_N) is the thread instructions one score pair
costs. `base` (causal) gives the per-pair cost of a FULL tile per kernel (what SOFTMAX_OPS and
BACKWARD_OPS stand for) and of its PARTIAL tiles (the mask); every other probe adds one
operation to the mask or the logit, so its difference from `base` is that operation's cost.
Integer operations on q alone or k alone are computed once per row or column, not per pair,
which the IR weights do not see. Writes benchmarks/results/op_costs.json.

    python benchmarks/op_costs.py [--target sm_90] [--workers 2]
"""

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # compiling runs in attnlang.codegen.targets' subprocess either way

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json  # noqa: E402

BLOCK = (128, 64)
PROBES = {  # name -> pattern body; each differs from base by one operation
    "base": "mask q >= k",
    "compare (per pair)": "mask q >= k and q != k + 123456789",
    "// 7 (q only)": "mask q >= k and q // 7 != k + 123456789",
    "% 7 (q only)": "mask q >= k and q % 7 != k + 123456789",
    "// 7 (per pair)": "mask q >= k and (q - k) // 7 != 123456789",
    "% 7 (per pair)": "mask q >= k and (q - k) % 7 != 3",
    "* 3 (q only)": "mask q >= k and q * 3 != k + 123456789",
    "% 8 (per pair)": "mask q >= k and (q - k) % 8 != 3",
    "% (h + 3) (per pair)": "mask q >= k and (q - k) % (h + 3) != 3",
    "bias tanh(score)": "mask q >= k\nbias tanh(score)",
    "bias exp(score)": "mask q >= k\nbias exp(score * 0.01)",
    "bias log(score^2)": "mask q >= k\nbias log(score * score + 1.0)",
    "bias sqrt(score^2)": "mask q >= k\nbias sqrt(score * score + 1.0)",
    "bias score / (q - k + 1)": "mask q >= k\nbias score / (q - k + 1)",
    "bias hash(q, k) % 2": "mask q >= k\nbias (hash(q, k) % 2) * 1.0",
}


def measure(name: str, target: str) -> tuple[str, dict]:
    import torch

    import attnlang
    pattern = attnlang.parse(f"pattern probe() {{\n    {PROBES[name]}\n}}")["probe"]
    kernel = pattern.compile(heads=16, head_dim=128, dtype=torch.bfloat16, block=BLOCK, layout="row-major")
    per_pair = {}
    for k in kernel.compile_for(target, 16384):
        scale = k.num_warps * 32 / (BLOCK[0] * BLOCK[1])
        per_pair[k.kernel.removeprefix("attention_")] = {
            "full": round(k.full_instructions * scale, 2) if k.full_instructions else None,
            "partial": round(k.partial_instructions * scale, 2) if k.partial_instructions else None}
    return name, per_pair


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="sm_90")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with ProcessPoolExecutor(args.workers) as pool:
        results = dict(pool.map(measure, PROBES, [args.target] * len(PROBES)))
    base = results["base"]
    rows = {}
    for name, per_pair in results.items():
        rows[name] = {"per_pair": per_pair, "added": {
            kernel: {kind: (None if per_pair[kernel][kind] is None or base[kernel][kind] is None
                            else round(per_pair[kernel][kind] - base[kernel][kind], 2)) for kind in ("full", "partial")}
            for kernel in per_pair}}
    print(f"thread instructions per score pair ({args.target}, d=128, bf16, {BLOCK[0]}x{BLOCK[1]}): "
          "forward FULL / PARTIAL, dK/dV FULL / PARTIAL, dQ FULL / PARTIAL")
    for name, row in rows.items():
        cells = [row["per_pair"][k][kind] for k in ("forward", "backward_kv", "backward_q") for kind in ("full", "partial")]
        print(f"  {name:26} " + " ".join(f"{c:7.2f}" if c is not None else "      -" for c in cells))
    write_json("op_costs", {"environment": environment(), "target": args.target, "block": list(BLOCK),
                            "head_dim": 128, "dtype": "bfloat16", "seq": 16384, "probes": PROBES, "results": rows})


if __name__ == "__main__":
    main()
