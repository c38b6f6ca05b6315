"""Block-map construction: attnlang's analysis vs FlexAttention's create_block_mask.

Same patterns, lengths and 128 x 128 tiles, on the same machine, in one run; attnlang's
time includes the kernels' block tables (FlexAttention's index layout is built only by
`BlockMap.to_flex()`, which create_block_mask's result corresponds to). Every
measurement runs in a fresh child process (time: best of `--repeat`; memory: peak
resident memory above the process's baseline after imports). create_block_mask runs
under an address-space limit (`--flex-limit-gib`) and is recorded as out of memory where
it fails, and not tried at longer lengths after that.

    python benchmarks/analysis.py                 # full run, writes benchmarks/results/analysis.json
    python benchmarks/analysis.py --max-n 65536   # shorter
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from _common import environment, write_json  # noqa: E402

LENGTHS = [4096, 16384, 32768, 65536, 131072, 262144, 524288, 1048576]
PATTERNS = {
    "causal": ("causal", {}),
    "sliding_window": ("sliding_window", {"window": 4096}),
    "streaming": ("streaming", {"window": 1024, "sinks": 4}),
    "dilated": ("dilated", {"window": 512, "dilation": 2}),
    "document": ("document", {}),  # 1,000 documents of equal length
}
DOCUMENTS = 1000
BLOCK = 128


def documents(n: int):
    import numpy as np
    return np.minimum(np.arange(n) * DOCUMENTS // n, DOCUMENTS - 1)


def measure(tool: str, key: str, n: int, repeat: int) -> dict:
    """Runs in the child process: one tool, one pattern, one length."""
    import attnlang
    import numpy as np
    name, params = PATTERNS[key]
    pattern = attnlang.stdlib()[name].bind(**params)
    inputs = {"doc": documents(n)} if pattern.inputs else None
    if tool == "attnlang":
        def run():  # the block map and the tables the kernels walk (FULL runs, PARTIAL lists)
            block_map = pattern.analyze(n, n, block=BLOCK, inputs=inputs)
            block_map.kernel_tables
            return block_map
    else:
        import torch
        from torch.nn.attention.flex_attention import create_block_mask
        mask_mod, _ = pattern.flex_mods(n, n, 1, {k: torch.from_numpy(v) for k, v in (inputs or {}).items()})

        def run():
            return create_block_mask(mask_mod, None, None, n, n, device="cpu", BLOCK_SIZE=BLOCK)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"seconds": min(times), "peak_mib": (peak - baseline) / 1024}
    if tool == "attnlang":
        out.update(counts=result.counts, tile_density=result.tile_density, stats=result.stats)
    else:
        out["sparsity_percent"] = float(result.sparsity())
    del np
    return out


def run_child(tool: str, key: str, n: int, repeat: int, limit_gib: float | None, timeout: float) -> dict:
    def limit():
        if limit_gib:
            size = int(limit_gib * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (size, size))
    command = [sys.executable, __file__, "--child", tool, key, str(n), str(repeat)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout:.0f} s"}
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        memory = any(word in done.stderr for word in ("MemoryError", "out of memory", "DefaultCPUAllocator",
                                                      "Cannot allocate", "std::bad_alloc"))
        return {"error": "out of memory" if memory else tail[:200]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-n", type=int, default=LENGTHS[-1])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--flex-limit-gib", type=float, default=16.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--patterns", default=",".join(PATTERNS))
    parser.add_argument("--table", action="store_true", help="print results/analysis.json as a markdown table")
    parser.add_argument("--out", default=None, help="where the JSON goes (default benchmarks/results/analysis.json)")
    parser.add_argument("--child", nargs=4, metavar=("TOOL", "PATTERN", "N", "REPEAT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        tool, key, n, repeat = args.child
        print(json.dumps(measure(tool, key, int(n), int(repeat))))
        return
    if args.table:
        print_table(args.out)
        return

    rows = []
    print(f"{'pattern':16} {'N':>8} {'attnlang s':>11} {'MiB':>7} {'create_block_mask s':>20} {'MiB':>7} {'ratio':>7}")
    for key in args.patterns.split(","):
        flex_failed = None
        for n in [n for n in LENGTHS if n <= args.max_n]:
            mine = run_child("attnlang", key, n, args.repeat, None, args.timeout)
            if flex_failed:
                theirs = {"error": f"not tried ({flex_failed} at a shorter length)"}
            else:
                theirs = run_child("flex", key, n, 1 if n >= 16384 else args.repeat, args.flex_limit_gib, args.timeout)
                if "error" in theirs:
                    flex_failed = theirs["error"]
            ratio = theirs["seconds"] / mine["seconds"] if "seconds" in theirs and "seconds" in mine else None
            rows.append({"pattern": key, "params": PATTERNS[key][1], "n": n, "block": BLOCK,
                         "attnlang": mine, "create_block_mask": theirs, "speedup": ratio})
            flex_text = (f"{theirs['seconds']:20.3f} {theirs['peak_mib']:7.0f}" if "seconds" in theirs
                         else f"{theirs['error'][:28]:>28}")
            mine_text = (f"{mine['seconds']:11.3f} {mine['peak_mib']:7.0f}" if "seconds" in mine
                         else f"{mine['error'][:19]:>19}")
            print(f"{key:16} {n:8d} {mine_text} {flex_text} {('%7.0fx' % ratio) if ratio else '':>7}", flush=True)
    payload = {"benchmark": "analysis", "environment": environment(), "block": BLOCK,
               "flex_limit_gib": args.flex_limit_gib, "documents": DOCUMENTS, "rows": rows}
    print("wrote", write_json("analysis", payload, args.out))


def print_table(path=None):
    from _common import RESULTS
    payload = json.loads(Path(path or RESULTS / "analysis.json").read_text())
    env = payload["environment"]
    print(f"{env['processor']}, {env['cpus']} CPUs, {env['memory_gib']} GiB; torch {env['torch']}, "
          f"commit {env['commit']}\n")
    print("| pattern | N | attnlang | create_block_mask | speedup |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for row in payload["rows"]:
        mine, theirs = row["attnlang"], row["create_block_mask"]
        mine_text = f"{mine['seconds'] * 1000:.1f} ms, {mine['peak_mib']:.0f} MiB" if "seconds" in mine else mine["error"]
        if "seconds" in theirs:
            theirs_text = f"{theirs['seconds'] * 1000:,.0f} ms, {theirs['peak_mib']:,.0f} MiB"
        elif theirs["error"].startswith("not tried"):
            theirs_text = "—"
        else:
            theirs_text = theirs["error"]
        speedup = f"{row['speedup']:,.0f}x" if row["speedup"] else ""
        print(f"| {row['pattern']} | {row['n']:,} | {mine_text} | {theirs_text} | {speedup} |")


if __name__ == "__main__":
    main()
