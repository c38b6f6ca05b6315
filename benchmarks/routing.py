"""Routed attention: the device selection stage (time, memory) and the attention on its tables,
against the pattern's static candidates and dense attention; and the work of the two
schedules per-token routing can take (tile-major, and key-block-major: gathered).

    python benchmarks/routing.py                 # on a GPU: 16K-128K, bf16, B=1, H=16, D=128
    python benchmarks/routing.py --smoke         # tiny shapes on CPU (Triton interpreter), plumbing only
    python benchmarks/routing.py --schedules     # CPU: tiles each schedule visits, selections by the reference
    python benchmarks/routing.py --simulate      # CPU: the simulator's routed bound, both schedules, H100
    python benchmarks/routing.py --tables        # CPU: peak memory and time of the tile-major tables
                                                 #   (--previous COMMIT: that version's beside)

Selection memory is the peak CUDA allocation during the selection stage above what was
allocated before it (the pooled keys and queries and the chosen indices), and the tile-major
tables' likewise (`tables_bytes`, with `tables_ms`); a units x blocks
score matrix, which the stage never stores, is reported beside it for scale. Per-token
patterns are timed on both schedules (`compile(route_schedule=)`), with the gathered forward's
peak memory (its partial outputs). Writes benchmarks/results/routing.json (or --out).
"""

import argparse
import os
import sys
from pathlib import Path

SMOKE = "--smoke" in sys.argv
if SMOKE or "--schedules" in sys.argv or "--tables" in sys.argv or "--tables-one" in sys.argv:
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
    build_tables = lambda: module.routed_tile_tables(chosen, maps["static"], maps["kept"], seq, seq, heads,  # noqa: E731
                                                     kernel.block_m, kernel.block_n)
    timing = dict(device=device, repeat=repeats)
    row = {
        "pattern": pattern.label, "seq": seq, "heads": heads, "heads_kv": heads_kv, "head_dim": head_dim,
        "dtype": str(dtype).replace("torch.", ""), "block": [kernel.block_m, kernel.block_n],
        "selection_ms": median_milliseconds(lambda: module.select(q, k, {}, maps["candidates"]), **timing),
        "tables_ms": median_milliseconds(build_tables, **timing),  # the tile-major tables, as the kernel builds them
        "tables_bytes": _peak_bytes(device, build_tables)[0],
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


TABLE_PATTERNS = {"moba_blocks": {"block": 512, "top": 3}, "nsa_selected": {"block": 64, "top": 13},
                  "quest": {"page": 16, "top": 64}}


def _drawn_selection(route, seq, heads, top, generator):
    """A selection of `top` distinct earlier blocks per unit, drawn uniformly (duplicates drop to
    none): what a causal routing over random keys picks, without scoring anything."""
    units = -(-seq // route.query_block)
    own = torch.arange(units) * route.query_block // route.block  # the unit's own (kept) block
    drawn = (torch.rand(1, heads, units, top, generator=generator) * own[:, None]).long()
    drawn, _ = torch.sort(drawn, dim=-1)
    repeated = torch.zeros_like(drawn, dtype=torch.bool)
    repeated[..., 1:] = drawn[..., 1:] == drawn[..., :-1]
    return torch.where(repeated | (own[:, None] == 0), -1, drawn).to(torch.int32)


TRIMMED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536"}  # big blocks are mapped and unmapped: resident = allocated


class _ResidentPeak:
    """The peak resident memory of this process while the block runs, above what it held before:
    sampled every millisecond from /proc (torch's CPU kernels release the GIL), after returning
    freed memory to the system."""

    def __enter__(self):
        import ctypes
        import threading
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.base = self.peak = self._resident()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self._resident())
        self.bytes = self.peak - self.base

    def _sample(self):
        import time
        while self.running:
            self.peak = max(self.peak, self._resident())
            time.sleep(0.001)

    @staticmethod
    def _resident():
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def table_memory(name, seq, heads, builder):
    """Peak resident memory (above the inputs) and time of one table build on this CPU, in this
    process: "entries" (the kernels' sparse tables) or "tile_map" (a dense tile map per head and its
    tables, as FlexAttention's BlockMask holds them)."""
    import time

    from attnlang.codegen.runtime import load_module
    from attnlang.codegen.template import standalone_source
    from attnlang.routing import kernel_maps
    pattern = lookup(name).bind(**TABLE_PATTERNS[name])
    tile = (64, 64)
    if os.environ.get("ATTNLANG_TEMPLATE"):  # another version's kernel template (a comparison)
        import attnlang.codegen.template
        attnlang.codegen.template.TEMPLATE = Path(os.environ["ATTNLANG_TEMPLATE"])
    module = load_module(standalone_source(pattern.ir, tile), "tables_" + pattern.slug, interpret=True)
    block_map = pattern.analyze(seq, heads=heads, block=tile)
    maps = {key: torch.from_numpy(np.ascontiguousarray(kinds))[None]
            for key, kinds in kernel_maps(block_map, module.ROUTE_UNITS).items() if key != "candidates"}
    chosen = _drawn_selection(pattern.ir.route, seq, heads, module.ROUTE["top"], torch.Generator().manual_seed(0))
    with _ResidentPeak() as peak:
        started = time.perf_counter()
        if builder == "entries":
            tables = module.routed_tile_tables(chosen, maps["static"], maps["kept"], seq, seq, heads, *tile)
        else:
            kinds = module.routed_kinds(chosen, maps["static"], maps["kept"], seq, seq, heads, *tile)
            tables = module.tables_of(kinds)
            del kinds
        seconds = time.perf_counter() - started
    table_bytes = sum(t.numel() * t.element_size() for d in ("forward", "backward") for pair in tables[d] for t in pair)
    (full_num, runs), (partial_num, _) = tables["forward"]
    listed = torch.arange(runs.shape[-2]) < full_num[..., None]  # a row's entries past its count are padding
    visited = int(partial_num.sum()) + int(torch.where(listed, runs[..., 1], 0).sum())
    return {"pattern": pattern.label, "seq": seq, "heads": heads, "tile": list(tile), "builder": builder,
            "peak_bytes_above_inputs": peak.bytes, "table_bytes": table_bytes, "chosen_bytes": chosen.numel() * 4,
            "visited_tiles": visited, "seconds": seconds}


def tables(lengths=(16384, 65536, 131072), heads=16, previous=None):
    """`table_memory` of each builder, each in a fresh process (the peak is the process's; glibc
    maps every block past 64 KB, so freed memory leaves the resident set at once). `previous`: a
    commit whose kernel template's own tables ("tile_map" there) are measured beside, as
    "previous"."""
    import json
    import subprocess
    import tempfile
    builders = [("entries", {}), ("tile_map", {})]
    if previous:
        template = Path(tempfile.mkdtemp()) / "kernel_template.py"
        template.write_text(subprocess.run(["git", "show", f"{previous}:codegen/kernel_template.py"], check=True,
                                           capture_output=True, text=True, cwd=Path(__file__).parent).stdout)
        builders.append(("previous", {"ATTNLANG_TEMPLATE": str(template)}))
    rows = []
    for name in TABLE_PATTERNS:
        for seq in lengths:
            for label, env in builders:
                builder = "tile_map" if label == "previous" else label
                done = subprocess.run([sys.executable, __file__, "--tables-one", json.dumps([name, seq, heads, builder])],
                                      capture_output=True, text=True, env=os.environ | TRIMMED_MALLOC | env)
                if done.returncode:
                    rows.append({"pattern": name, "seq": seq, "heads": heads, "builder": label,
                                 "failed": done.stderr.strip().splitlines()[-1]})
                else:
                    rows.append(json.loads(done.stdout.strip().splitlines()[-1]) | {"builder": label})
                if label == "previous":
                    rows[-1]["commit"] = previous
                print(rows[-1])
    return rows


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
    parser.add_argument("--tables", action="store_true")
    parser.add_argument("--previous", help="with --tables: a commit whose tile-major tables are measured beside")
    parser.add_argument("--tables-one", help=argparse.SUPPRESS)  # one measurement, in its own process
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    if args.tables_one:
        import json
        print(json.dumps(table_memory(*json.loads(args.tables_one))))
        return
    payload = {"environment": environment()}
    if args.tables:
        payload["tables"] = tables(previous=args.previous)
        write_json("routing_tables", payload, args.out)
        return
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
