"""How the analysis decided each tile of every static stdlib pattern: by reasoning (interval
bounds on tiles and sub-blocks), by witness points, or by exact evaluation of the tile.

    python benchmarks/analysis_stats.py [--seq 16384] [--heads 4] [--block 128]
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json  # noqa: E402

import attnlang  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=16384)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--block", type=int, default=128)
    args = parser.parse_args()
    rows = []
    print("| pattern | tiles | reasoning | witness points | exact | seconds |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for pattern in attnlang.stdlib():
        if pattern.is_routed:
            continue
        # packed documents of 1/40 of the sequence each
        inputs = {"doc": np.minimum(np.arange(args.seq) * 40 // args.seq, 39)} if pattern.inputs else None
        start = time.perf_counter()
        block_map = pattern.analyze(args.seq, heads=args.heads, block=args.block, inputs=inputs)
        seconds = time.perf_counter() - start
        stats = block_map.stats
        rows.append({"pattern": pattern.label, "tiles": int(block_map.kinds.size), **stats, "seconds": seconds})
        print(f"| `{pattern.name}` | {block_map.kinds.size:,} | {stats['reasoning']:,} | {stats['sampling']:,} | "
              f"{stats['exact']:,} | {seconds:.2f} |")
    write_json("analysis_stats", {"benchmark": "analysis_stats", "environment": environment(),
                                  "seq": args.seq, "heads": args.heads, "block": args.block, "rows": rows})


if __name__ == "__main__":
    main()
