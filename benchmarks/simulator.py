"""Predicted vs measured kernel time: the simulator's error on the kernel benchmark suite.

Reads benchmarks/results/kernels.json (made on a GPU by benchmarks/kernels.py) and a profile
calibrated on other patterns (`attnlang calibrate` fits on dense, causal and sliding window),
predicts every attnlang timing of the patterns it was not calibrated on, and writes
benchmarks/results/simulator.json with the median and worst |predicted / measured - 1|.

    attnlang calibrate --hw h100 --out h100_calibrated.json        # on the GPU
    python benchmarks/kernels.py                                    # on the GPU
    python benchmarks/simulator.py --profile h100_calibrated.json
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment, write_json  # noqa: E402

import attnlang  # noqa: E402
from attnlang.simulator import load_hardware, simulate  # noqa: E402

CALIBRATED_ON = {"causal", "sliding_window", "dense"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", required=True, help="a calibrated profile (JSON or TOML) or a name")
    parser.add_argument("--measured", default=str(RESULTS / "kernels.json"))
    parser.add_argument("--out", default=None, help="where the JSON goes (default benchmarks/results/simulator.json)")
    args = parser.parse_args()
    measured_path = Path(args.measured)
    if not measured_path.exists():
        sys.exit(f"{measured_path} does not exist: run benchmarks/kernels.py on a GPU first")
    measured = json.loads(measured_path.read_text())
    if measured.get("smoke"):
        sys.exit(f"{measured_path} is a --smoke run on CPU; the simulator predicts GPU times")
    hardware = load_hardware(args.profile)
    block = tuple(measured["block"])
    lib = attnlang.stdlib()
    rows, errors = [], []
    for row in measured["rows"]:
        if row["pattern"] in CALIBRATED_ON or "forward_ms" not in row.get("attnlang", {}):
            continue
        pattern = lib[{"sliding_window": "sliding_window"}.get(row["pattern"], row["pattern"])].bind(**row["params"])
        inputs = None
        if pattern.inputs:
            inputs = {"doc": np.arange(row["n"]) // min(2048, max(row["n"] // 4, 1))}
        for backward, key in ((False, "forward_ms"), (True, "forward_backward_ms")):
            predicted = simulate(pattern, seq=row["n"], heads=measured["heads"], head_dim=measured["head_dim"],
                                 hardware=hardware, backward=backward, block=block, inputs=inputs).time_ms
            ratio = predicted / row["attnlang"][key]
            errors.append(abs(ratio - 1))
            rows.append({"pattern": row["pattern"], "n": row["n"], "backward": backward,
                         "measured_ms": row["attnlang"][key], "predicted_ms": predicted, "ratio": ratio})
            print(f"{row['pattern']:15} {row['n']:6d} {'fwd+bwd' if backward else 'fwd':7} "
                  f"measured {row['attnlang'][key]:9.3f} ms  predicted {predicted:9.3f} ms  ratio {ratio:5.2f}")
    summary = {"median_abs_error": float(np.median(errors)) if errors else None,
               "worst_abs_error": float(np.max(errors)) if errors else None, "points": len(errors)}
    print(summary)
    write_json("simulator", {"benchmark": "simulator", "environment": environment(), "profile": args.profile,
                             "measured_on": measured["environment"], "summary": summary, "rows": rows},
               args.out)


if __name__ == "__main__":
    main()
