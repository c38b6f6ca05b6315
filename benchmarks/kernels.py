"""Generated kernels vs FlexAttention (torch.compile'd) vs SDPA, forward and forward+backward.

Same pattern, shapes and dtype in one run: B=1, H=16, D=128, bf16, N from 4K to 64K, for
causal, sliding window, streaming, dilated, document, ALiBi and softcap. FlexAttention gets
its own block mask (create_block_mask) and the mods attnlang exports; SDPA gets a dense
boolean mask (and is_causal=True for causal). TFLOP/s count only the allowed pairs
(4·D flops per pair forward, 10·D forward+backward). Needs a CUDA GPU; writes
benchmarks/results/kernels.json with the device, versions and commit.

    python benchmarks/kernels.py                   # on a GPU
    python benchmarks/kernels.py --smoke           # tiny shapes on CPU (Triton interpreter), plumbing only
"""

import argparse
import os
import sys
from pathlib import Path

SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before torch imports triton

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json  # noqa: E402

import attnlang  # noqa: E402
from attnlang.calibrate import median_milliseconds  # noqa: E402

PATTERNS = {
    "causal": ("causal", {}),
    "sliding_window": ("sliding_window", {"window": 4096}),
    "streaming": ("streaming", {"window": 1024, "sinks": 4}),
    "dilated": ("dilated", {"window": 512, "dilation": 2}),
    "document": ("document", {}),
    "alibi": ("alibi", {}),
    "softcap": ("softcap", {"cap": 30.0}),
}
LENGTHS = [4096, 8192, 16384, 32768, 65536]
DOCUMENT_TOKENS = 2048  # packed documents of this length


def run_one(key, n, args, device, dtype):
    name, params = PATTERNS[key]
    pattern = attnlang.stdlib()[name].bind(**params)
    heads, dim = args.heads, args.head_dim
    inputs = None
    if pattern.inputs:
        docs = np.arange(n) // min(DOCUMENT_TOKENS, max(n // 4, 1))
        inputs = {"doc": docs}
    q, k, v = (torch.randn(1, heads, n, dim, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn(1, heads, n, dim, device=device, dtype=dtype)
    block_map = pattern.analyze(n, n, heads, (args.block_m, args.block_n), inputs)
    pairs = block_map.pairs(exact=False) * heads / block_map.kinds.shape[0]
    flops = {"forward": 4 * pairs * dim, "forward_backward": 14 * pairs * dim}

    kernel = pattern.compile(heads=heads, head_dim=dim, dtype=dtype, block=(args.block_m, args.block_n))
    torch_inputs = {name: torch.from_numpy(values).to(device) for name, values in (inputs or {}).items()}
    mask_mod, score_mod = pattern.flex_mods(n, n, heads, torch_inputs)
    candidates = {"attnlang": lambda: kernel(q, k, v, inputs=inputs)}
    if not args.no_flex:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        flex = flex_attention if SMOKE else torch.compile(flex_attention)
        flex_mask = create_block_mask(mask_mod, None, None, n, n, device=str(device))
        has_score = pattern.ir.logit != attnlang.ir.Var("score", attnlang.ir.Type.FLOAT)
        candidates["flex_attention"] = lambda: flex(q, k, v, score_mod=score_mod if has_score else None,
                                                    block_mask=flex_mask)
    plain_logit = pattern.ir.logit == attnlang.ir.Var("score", attnlang.ir.Type.FLOAT)
    if plain_logit and n * n <= args.sdpa_max_mask_gib * 2**30:  # a bool mask cannot carry a bias
        dense = torch.from_numpy(pattern.reference_mask(n, n, 1, inputs)[0]).to(device)
        candidates["sdpa_mask"] = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    if name == "causal":
        candidates["sdpa_causal"] = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    row = {"pattern": key, "params": params, "n": n, "pairs": pairs, "tile_density": block_map.tile_density}
    for label, fn in candidates.items():
        try:
            forward_ms = median_milliseconds(fn, device, args.repeat)

            def both():
                out = fn()
                torch.autograd.grad(out, (q, k, v), grad)
            both_ms = median_milliseconds(both, device, args.repeat)
            row[label] = {"forward_ms": forward_ms, "forward_backward_ms": both_ms,
                          "forward_tflops": flops["forward"] / forward_ms / 1e9,
                          "forward_backward_tflops": flops["forward_backward"] / both_ms / 1e9}
        except Exception as err:  # a baseline that cannot run this shape (e.g. out of memory) is recorded
            row[label] = {"error": f"{type(err).__name__}: {str(err)[:160]}"}
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU, to check the script runs")
    parser.add_argument("--patterns", default=",".join(PATTERNS))
    parser.add_argument("--lengths", default=None, help="comma-separated N (default 4K..64K)")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--block-m", type=int, default=128)
    parser.add_argument("--block-n", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--sdpa-max-mask-gib", type=float, default=8.0)
    parser.add_argument("--no-flex", action="store_true")
    parser.add_argument("--out", default=None, help="where the JSON goes (default benchmarks/results/kernels.json)")
    args = parser.parse_args()
    if args.smoke:
        device, dtype = torch.device("cpu"), torch.float32
        args.heads, args.head_dim, args.block_m, args.block_n, args.repeat = 2, 32, 32, 32, 1
        lengths = [int(x) for x in (args.lengths or "192").split(",")]
    else:
        if not torch.cuda.is_available():
            sys.exit("benchmarks/kernels.py needs a CUDA GPU (or --smoke to check it on CPU)")
        device, dtype = torch.device("cuda"), torch.bfloat16
        lengths = [int(x) for x in args.lengths.split(",")] if args.lengths else LENGTHS
    rows = []
    for key in args.patterns.split(","):
        for n in lengths:
            row = run_one(key, n, args, device, dtype)
            rows.append(row)
            cells = [f"{label} {r['forward_ms']:.2f}/{r['forward_backward_ms']:.2f} ms"
                     if "forward_ms" in r else f"{label} {r['error'][:40]}"
                     for label, r in row.items() if isinstance(r, dict) and label != "params"]
            print(f"{key:15} {n:6d}  " + "   ".join(cells), flush=True)
    payload = {"benchmark": "kernels", "environment": environment(), "smoke": args.smoke,
               "heads": args.heads, "head_dim": args.head_dim, "dtype": str(dtype),
               "block": [args.block_m, args.block_n], "rows": rows}
    print("wrote", write_json("kernels_smoke" if args.smoke else "kernels", payload, args.out))


if __name__ == "__main__":
    main()
