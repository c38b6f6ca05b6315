"""Routed attention: the device selection stage (time, memory) and the attention on its tables,
against the pattern's static candidates and dense attention; and the work of the two
schedules per-token routing can take (tile-major, and key-block-major: gathered).

    python benchmarks/routing.py                 # on a GPU: 16K-128K, bf16, B=1, H=16, D=128
    python benchmarks/routing.py --smoke         # tiny shapes on CPU (Triton interpreter), plumbing only
    python benchmarks/routing.py --schedules     # CPU: tiles each schedule visits, selections by the reference
    python benchmarks/routing.py --simulate      # CPU: the simulator's routed bound, both schedules, H100

Selection memory is the peak CUDA allocation during the selection stage above what was
allocated before it (the pooled keys and queries and the chosen indices); a units x blocks
score matrix, which the stage never stores, is reported beside it for scale. Per-token
patterns are timed on both schedules (`compile(route_schedule=)`), with the gathered forward's
peak memory (its partial outputs). Writes benchmarks/results/routing.json (or --out).
"""

import argparse
import os
import sys
from pathlib import Path

SMOKE = "--smoke" in sys.argv
if SMOKE or "--schedules" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before torch imports triton

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json  # noqa: E402

import attnlang  # noqa: E402
from attnlang.calibrate import median_milliseconds  # noqa: E402

OWN = attnlang.parse("""
pattern moba_blocks(block = 512, top = 3) {
    mask q >= k
    route topk(top, block = block, keep = q // block == k // block)
}
pattern dense() {
}""")


def lookup(name):
    return OWN[name] if name in OWN else attnlang.stdlib()[name]
# name: (pattern, parameters (and with --smoke), heads_kv); each routes within causal
PATTERNS = {
    "moba": ("moba", {"block": 512, "top": 3}, {"block": 16, "top": 2}, 16),
    "nsa_selected": ("nsa_selected", {"block": 64, "top": 13}, {"block": 16, "top": 3}, 2),
    "moba_blocks": ("moba_blocks", {"block": 512, "top": 3}, {"block": 16, "top": 2}, 16),  # per query block
}


def pattern_of(name, smoke):
    source, params, small, heads_kv = PATTERNS[name]
    return lookup(source).bind(**(small if smoke else params)), min(heads_kv, 2) if smoke else heads_kv


def _peak_bytes(device, fn):
    """Peak bytes allocated by fn() beyond what was allocated before it (CUDA), and its result."""
    if device.type != "cuda":
        return None, fn()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before, result


def measure(name, seq, heads, head_dim, dtype, device, block, repeats, smoke):
    pattern, heads_kv = pattern_of(name, smoke)
    gen = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(1, heads, seq, head_dim, device=device, dtype=dtype, generator=gen)
    k, v = (torch.randn(1, heads_kv, seq, head_dim, device=device, dtype=dtype, generator=gen) for _ in range(2))
    kernel = pattern.compile(block=block)
    module = kernel._module(device)
    maps = kernel.route_maps(seq, seq, {}, 1, device, heads)
    route = pattern.ir.route
    memory, chosen = _peak_bytes(device, lambda: module.select(q, k, {}, maps["candidates"]))
    units, blocks = -(-seq // route.query_block), -(-seq // route.block)
    kinds = module.routed_kinds(chosen, maps["static"], maps["kept"], seq, seq, heads, kernel.block_m, kernel.block_n)
    timing = dict(device=device, repeat=repeats)
    row = {
        "pattern": pattern.label, "seq": seq, "heads": heads, "heads_kv": heads_kv, "head_dim": head_dim,
        "dtype": str(dtype).replace("torch.", ""), "block": [kernel.block_m, kernel.block_n],
        "selection_ms": median_milliseconds(lambda: module.select(q, k, {}, maps["candidates"]), **timing),
        "tables_ms": median_milliseconds(lambda: module.tables_of(module.routed_kinds(
            chosen, maps["static"], maps["kept"], seq, seq, heads, kernel.block_m, kernel.block_n)), **timing),
        "selection_bytes": memory,
        "chosen_bytes": chosen.numel() * chosen.element_size(),
        "score_matrix_bytes": units * blocks * heads * 4,  # float32 scores a materialising stage would hold
        "visited_tiles": int((kinds != 0).sum()),
        "static_tiles": int((maps["static"] != 0).sum()) * heads // maps["static"].shape[1],
    }
    scale = 1.0 / head_dim ** 0.5
    for schedule in ("gathered", "tiles") if route.query_block == 1 else ("tiles",):
        tables = module.routed_tables(q, k, {}, maps, kernel.block_m, kernel.block_n, schedule)
        forward = lambda: module.forward(q, k, v, {}, scale, kernel.block_m, kernel.block_n, tables)  # noqa: E731
        row[f"attention_ms_{schedule}"] = median_milliseconds(forward, **timing)
        row[f"forward_bytes_{schedule}"] = _peak_bytes(device, forward)[0]
        fixed = pattern.compile(block=block, route_schedule=schedule)
        row[f"routed_call_ms_{schedule}"] = median_milliseconds(lambda: fixed(q, k, v), **timing)
    row["attention_ms"] = row["attention_ms_gathered" if route.query_block == 1 else "attention_ms_tiles"]
    for label, static in (("static_ms", lookup("causal")), ("dense_ms", lookup("dense"))):
        static_kernel = static.compile(block=block)
        row[label] = median_milliseconds(lambda: static_kernel(q, k, v), **timing)
    row["selection_share"] = row["selection_ms"] / row["attention_ms"]
    return row


def schedules(seq, block, top, tile, data, seed=0, heads=2, head_dim=64):
    """Tiles per-token routing visits, tile-major (a query tile visits every tile its rows'
    chosen blocks reach) and key-block-major (each block visits the query tiles of the rows
    that chose it, gathered), for selections the reference makes on `data`: "random"
    (independent tokens) or "local" (an AR(1) sequence, neighbouring tokens alike)."""
    from attnlang.codegen.runtime import load_module
    from attnlang.codegen.template import standalone_source
    from attnlang.routing import candidate_blocks, kernel_maps, select_blocks
    pattern = attnlang.stdlib()["moba"].bind(block=block, top=top)
    gen = torch.Generator().manual_seed(seed)
    if data == "random":
        q, k = (torch.randn(1, heads, seq, head_dim, generator=gen) for _ in range(2))
    else:
        noise = torch.randn(2, 1, heads, seq, head_dim, generator=gen)
        walk = torch.zeros_like(noise)
        walk[..., 0, :] = noise[..., 0, :]
        for t in range(1, seq):
            walk[..., t, :] = 0.95 * walk[..., t - 1, :] + 0.31 * noise[..., t, :]
        q, k = walk[0], walk[1]
    candidates = torch.from_numpy(candidate_blocks(pattern.ir, seq, seq, heads))
    selected = select_blocks(pattern.ir.route, candidates[None], q, k)       # (1, H, seq, blocks)
    order = torch.sort((~selected).to(torch.int8), dim=-1, stable=True).indices[..., :top]
    chosen = torch.where(torch.gather(selected, -1, order), order, -1).to(torch.int32)
    module = load_module(standalone_source(pattern.ir, (tile, tile)), "schedules_" + pattern.slug, interpret=True)
    maps = {name: torch.from_numpy(kinds)[None] for name, kinds in
            kernel_maps(pattern.analyze(seq, heads=heads, block=tile), module.ROUTE_UNITS).items()}
    kinds = module.routed_kinds(chosen, maps["static"], maps["kept"], seq, seq, heads, tile, tile)
    kept = int((maps["kept"] != 0).sum()) * heads
    # the gathered kernels' own work list: its programs, each over its block's key tiles
    work = module.gathered_lists(chosen, -(-seq // block), tile)["work"]
    gathered = int((work[..., 0] >= 0).sum()) * -(-block // tile) + kept
    return {"seq": seq, "block": block, "top": top, "tile": tile, "data": data,
            "tile_major_tiles": int((kinds != 0).sum()), "key_block_major_tiles": gathered,
            "static_tiles": int((maps["static"] != 0).sum()) * heads}


SIMULATED = ("moba", "moba_blocks", "nsa_selected", "quest", "biformer", "vmoba", "causal")


def simulated(lengths=(16384, 65536)):
    """The simulator's prediction (H100, bf16, B=1, H=16, D=128, forward + backward): the routed
    bound plus the selection stage. Grid patterns run at their grid's lengths."""
    rows = []
    for name in SIMULATED:
        pattern = lookup(name)
        grid = ("frames", "height", "width")
        sizes = pattern.ir.grid and [int(pattern.params[p]) for p in pattern.params if p in grid]
        for seq in ([int(np.prod(sizes))] if sizes else lengths):
            result = attnlang.simulate(pattern, seq=seq, backward=True)  # per token: the schedule the kernel picks
            rows.append({"pattern": result.pattern, "seq": seq, "time_ms": result.time_ms, "speedup": result.speedup,
                         "selection_ms": result.breakdown["selection"], "upper_bound": result.upper_bound})
            if pattern.is_routed and pattern.ir.route.query_block == 1:
                for schedule in ("gathered", "tiles"):
                    rows[-1][f"time_ms_{schedule}"] = attnlang.simulate(pattern, seq=seq, backward=True,
                                                                        route_schedule=schedule).time_ms
                rows[-1]["schedule"] = "gathered" if result.breakdown["gathered"] > 0 else "tiles"
            print(rows[-1])
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="16384,32768,65536,131072")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--schedules", action="store_true")
    parser.add_argument("--simulate", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    payload = {"environment": environment()}
    if args.simulate:
        payload["simulated"] = simulated()
        write_json("routing_simulated", payload, args.out)
        return
    if args.schedules:
        payload["schedules"] = [schedules(seq, block, 3, 64, data) for seq in (4096, 8192)
                                for block in (256, 512) for data in ("random", "local")]
        for row in payload["schedules"]:
            print(row)
        write_json("routing_schedules", payload, args.out)
        return
    if args.smoke:
        device, dtype, lengths = torch.device("cpu"), torch.float32, [200]
        heads, head_dim, block, repeats = 4, 16, 16, 1
    else:
        device, dtype, heads, head_dim, block, repeats = torch.device("cuda"), torch.bfloat16, 16, 128, 64, 10
        lengths = [int(n) for n in args.lengths.split(",")]
    payload["rows"] = []
    for name in PATTERNS:
        for seq in lengths:
            row = measure(name, seq, heads, head_dim, dtype, device, block, repeats, args.smoke)
            print({key: (round(value, 3) if isinstance(value, float) else value) for key, value in row.items()})
            payload["rows"].append(row)
    write_json("routing_smoke" if args.smoke else "routing", payload, args.out)


if __name__ == "__main__":
    main()
