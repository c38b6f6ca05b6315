"""Fitting the simulator's efficiency parameters to measured kernel times.

`fit_efficiency` is pure computation (tested on CPU with synthetic measurements);
`measure_kernels` times attnlang's generated kernels on a CUDA device. `attnlang
calibrate` runs both on dense, causal and windowed patterns and writes a profile.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import numpy as np

from .errors import AttnlangError
from .simulator import Hardware, load_hardware, simulate

__all__ = ["Measurement", "fit_efficiency", "measure_kernels", "median_milliseconds", "write_profile",
           "CALIBRATION_PATTERNS"]

FITTED = ("mma", "memory", "tile_overhead_ns")
CALIBRATION_PATTERNS = {"dense": "pattern dense() { mask true }", "causal": None, "sliding_window": None}


@dataclasses.dataclass(frozen=True)
class Measurement:
    pattern: object  # attnlang.Pattern
    seq: int
    backward: bool
    milliseconds: float
    heads: int = 16
    head_dim: int = 128
    block: tuple[int, int] = (128, 64)


def _with(hw: Hardware, values: dict) -> Hardware:
    return dataclasses.replace(hw, efficiency={**hw.efficiency, **values})


def _loss(hw: Hardware, measurements) -> float:
    errors = [math.log(simulate(m.pattern, seq=m.seq, heads=m.heads, head_dim=m.head_dim, hardware=hw,
                                backward=m.backward, block=m.block).time_ms / m.milliseconds)
              for m in measurements]
    return float(np.mean(np.square(errors)))


def fit_efficiency(hw: Hardware, measurements, rounds: int = 3) -> tuple[Hardware, float]:
    """Least squares on log(predicted / measured) over mma, memory and tile overhead: a grid,
    then finer grids around the best point. Returns the fitted profile and its RMS log error."""
    if not measurements:
        raise AttnlangError("calibration needs at least one measurement")
    best = {k: hw.efficiency[k] for k in FITTED}
    spans = {"mma": 0.3, "memory": 0.3, "tile_overhead_ns": 200.0}
    limits = {"mma": (0.05, 1.0), "memory": (0.05, 1.0), "tile_overhead_ns": (0.0, 5000.0)}
    best_loss = _loss(_with(hw, best), measurements)
    for _ in range(rounds):
        grids = [np.clip(np.linspace(best[k] - spans[k], best[k] + spans[k], 5), *limits[k]) for k in FITTED]
        for values in itertools.product(*grids):
            candidate = dict(zip(FITTED, (float(v) for v in values)))
            loss = _loss(_with(hw, candidate), measurements)
            if loss < best_loss:
                best, best_loss = candidate, loss
        spans = {k: v / 3 for k, v in spans.items()}
    return _with(hw, best), math.sqrt(best_loss)


def median_milliseconds(fn, device, repeat: int) -> float:
    """Median milliseconds of `fn()` after one warm-up call: CUDA events on a GPU, wall time elsewhere."""
    import time

    import torch
    fn()
    samples = []
    for _ in range(repeat):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - begin) * 1000)
    return float(np.median(samples))


def measure_kernels(patterns, lengths=(2048, 4096, 8192, 16384), heads=16, head_dim=128, block=(128, 64),
                    repeat=10):
    """Median times of attnlang's kernels, forward and forward+backward, on the CUDA device."""
    import torch
    if not torch.cuda.is_available():
        raise AttnlangError("calibration times kernels on a CUDA GPU, and none is available here")
    measurements = []
    for pattern in patterns:
        kernel = pattern.compile(heads=heads, head_dim=head_dim, dtype=torch.bfloat16, block=block)
        for n in lengths:
            q, k, v = (torch.randn(1, heads, n, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                       for _ in range(3))
            grad = torch.randn_like(q)
            for backward in (False, True):
                def run():
                    out = kernel(q, k, v)
                    if backward:
                        torch.autograd.grad(out, (q, k, v), grad)
                milliseconds = median_milliseconds(run, torch.device("cuda"), repeat)
                measurements.append(Measurement(pattern, n, backward, milliseconds, heads, head_dim, block))
    return measurements


def write_profile(hw: Hardware, path, rms_log_error: float, measurements) -> None:
    data = {field.name: getattr(hw, field.name) for field in dataclasses.fields(hw) if field.name != "key"}
    data["calibration"] = {
        "rms_log_error": rms_log_error,
        "points": [{"pattern": m.pattern.label, "seq": m.seq, "backward": m.backward, "ms": m.milliseconds}
                   for m in measurements],
    }
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def calibration_patterns():
    import attnlang
    lib = attnlang.stdlib()
    dense = attnlang.parse(CALIBRATION_PATTERNS["dense"])["dense"]
    return [dense, lib["causal"], lib["sliding_window"].bind(window=1024)]


def calibrate(hardware: str, out) -> tuple[Hardware, float]:
    hw = load_hardware(hardware)
    measurements = measure_kernels(calibration_patterns())
    fitted, error = fit_efficiency(hw, measurements)
    write_profile(fitted, out, error, measurements)
    return fitted, error
