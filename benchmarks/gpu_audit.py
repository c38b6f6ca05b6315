"""Does every kernel fit its GPU? Every static stdlib pattern compiled for sm_80 and sm_90, no GPU needed.

For each pattern (default parameters), target and head dim (bf16, 16 heads, N = 16384), the
launch's kernels are compiled at the block `Pattern.compile(block="auto")` picks for the
target's hardware profile (attnlang.codegen.targets.audit), and each kernel's shared memory, registers,
spills and SASS cost per tile are recorded. Prints the kernels that do not fit; writes
benchmarks/results/gpu_audit.json. Exit status 1 when some kernel does not fit.

    python benchmarks/gpu_audit.py                          # the whole matrix (about 30 minutes on 2 cores)
    python benchmarks/gpu_audit.py --patterns causal,document --targets sm_90 --head-dims 128
"""

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # compiling runs in attnlang.codegen.targets' subprocess either way

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json  # noqa: E402

from attnlang.codegen.targets import AuditFailure, audit  # noqa: E402


def rows(reports) -> list[dict]:
    table = []
    for report in reports:
        if isinstance(report, AuditFailure):
            continue
        for k in report:
            table.append({
                "pattern": report.pattern, "target": report.target, "head_dim": report.head_dim,
                "kernel": k.kernel, "block": f"{k.block[0]}x{k.block[1]}", "num_warps": k.num_warps,
                "num_stages": k.num_stages, "registers": k.registers, "spill_stores": k.spill_stores,
                "spill_loads": k.spill_loads, "stack_bytes": k.stack_bytes, "shared_bytes": k.shared_bytes,
                "shared_limit": k.shared_limit, "fits": k.fits, "full_per_tile": k.full_instructions,
                "partial_per_tile": k.partial_instructions, "full_per_1000": k.per_thousand("full"),
                "partial_per_1000": k.per_thousand("partial"), "ptxas": k.ptxas_info})
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patterns", default=None, help="comma-separated names (default: every static one)")
    parser.add_argument("--targets", default="sm_80,sm_90")
    parser.add_argument("--head-dims", default="64,128")
    parser.add_argument("--workers", type=int, default=None, help="parallel compiles (default: one per CPU)")
    args = parser.parse_args()
    reports = audit(args.patterns.split(",") if args.patterns else None, args.targets.split(","),
                    [int(d) for d in args.head_dims.split(",")], workers=args.workers)
    table = rows(reports)
    print(f"{'pattern':40} {'target':6} {'d':>3} {'kernel':22} {'block':>7} {'regs':>4} {'spill B':>7} "
          f"{'shared B':>9} {'limit':>9} fits")
    for row in table:
        print(f"{row['pattern'][:40]:40} {row['target']:6} {row['head_dim']:>3} {row['kernel']:22} "
              f"{row['block']:>7} {row['registers']:>4} {row['spill_stores'] + row['spill_loads']:>7} "
              f"{row['shared_bytes']:>9,} {row['shared_limit']:>9,} {'yes' if row['fits'] else 'NO'}")
    failures = [report for report in reports if isinstance(report, AuditFailure)]
    for failure in failures:
        print(failure)
    misfits = [row for row in table if not row["fits"]]
    spilling = sum(1 for row in table if row["spill_stores"])
    print(f"{len(misfits)} of {len(table)} kernels do not fit; {spilling} spill; "
          f"{len(failures)} cases failed to compile")
    path = write_json("gpu_audit", {"environment": environment(), "dtype": "bfloat16", "seq": 16384,
                                    "heads": 16, "kernels": table,
                                    "failures": [f.as_dict() for f in failures]})
    print(f"wrote {path}")
    return 1 if misfits or failures else 0


if __name__ == "__main__":
    sys.exit(main())
