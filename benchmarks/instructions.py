"""SASS instructions per 1000 score elements of the kernels' tile loops, on a GPU target, without a GPU.

One warp's instructions per tile-loop iteration (attnlang.codegen.targets, counted in the cubin Triton
builds for the target) x warps x 1000 / (BLOCK_M x BLOCK_N): forward FULL and PARTIAL tiles
(causal), dK/dV FULL and dQ FULL. Defaults: sm_90, d = 128, bf16, 16 heads, N = 16384, 64x64
tiles (the issue's audit); writes benchmarks/results/instructions.json.

    python benchmarks/instructions.py
    python benchmarks/instructions.py --target sm_80 --blocks 64x64,128x64,auto
"""

import argparse
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # compiling runs in attnlang.codegen.targets' subprocess either way

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json  # noqa: E402

import attnlang  # noqa: E402
from attnlang.codegen.targets import resolve_target  # noqa: E402

ROWS = [("forward FULL", "attention_forward", "full"), ("forward PARTIAL", "attention_forward", "partial"),
        ("dK/dV FULL", "attention_backward_kv", "full"), ("dQ FULL", "attention_backward_q", "full")]


def measure(target: str, block, head_dim: int, heads: int, seq: int) -> dict:
    pattern = attnlang.stdlib()["causal"]
    hardware = resolve_target(target).hardware or "h100"
    kernel = pattern.compile(heads=heads, head_dim=head_dim, dtype=torch.bfloat16, block=block, tune_seq=seq,
                             hardware=hardware)
    report = kernel.compile_for(target, seq)
    per_kernel = {k.kernel: k for k in report}
    row = {"block": f"{kernel.block_m}x{kernel.block_n}", "kernel_id": _kernel_id(kernel.source)}
    for label, name, kind in ROWS:
        k = per_kernel[name]
        count = k.full_instructions if kind == "full" else k.partial_instructions
        row[label] = {"per_1000": round(k.per_thousand(kind), 1), "per_warp_per_tile": count,
                      "num_warps": k.num_warps, "num_stages": k.num_stages, "registers": k.registers,
                      "spill_bytes": k.spills, "shared_bytes": k.shared_bytes}
    return row


def _kernel_id(source: str) -> str:
    match = re.search(r"kernel version \d+, id [0-9a-f]+", source)
    return match.group(0) if match else ""


def _block(text: str):
    return "auto" if text == "auto" else tuple(int(side) for side in text.split("x"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="sm_90")
    parser.add_argument("--blocks", default="64x64", help="comma-separated BMxBN or 'auto'")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--seq", type=int, default=16384)
    args = parser.parse_args()
    blocks = [_block(text) for text in args.blocks.split(",")]
    rows = [measure(args.target, block, args.head_dim, args.heads, args.seq) for block in blocks]
    print(f"warp instructions per 1000 score elements: causal, {args.target}, d={args.head_dim}, bf16, "
          f"N={args.seq}")
    print(f"{'block':>8} " + " ".join(f"{label:>16}" for label, _, _ in ROWS))
    for row in rows:
        print(f"{row['block']:>8} " + " ".join(f"{row[label]['per_1000']:>16.0f}" for label, _, _ in ROWS))
    path = write_json("instructions", {"environment": environment(), "target": args.target,
                                       "pattern": "causal", "head_dim": args.head_dim, "dtype": "bfloat16",
                                       "seq": args.seq, "heads": args.heads, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
