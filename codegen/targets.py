"""A kernel on a GPU without one: compile what a launch would build, for a named target, and measure it.

`AttentionKernel.compile_for("sm_90", seq_q)` runs the launcher the runtime runs — the
generated module's `attention`, forward and backward — on meta tensors of the launch's
shapes, with every `kernel[grid](...)` intercepted. Each intercepted launch is specialized
exactly as Triton's launcher specializes it (constexprs, the dtype of every pointer, 16-byte
divisibility of pointers and integers, integers equal to 1, num_warps, num_stages) and
compiled by `triton.compile` for the target: ptxas and nvdisasm ship with the Triton wheel,
so shared memory, registers, spills and SASS are those the GPU would load.

Triton decides when it is imported whether its language is interpreted (TRITON_INTERPRET=1,
as in the tests), and an interpreted library cannot compile. So compilation always runs in
a fresh Python (`python -m attnlang.codegen.targets --worker SPEC RESULT`) with TRITON_INTERPRET=0; it
writes JSON and the compiled files under the attnlang cache, and `compile_for` works the
same from either kind of process.

What fits: Triton refuses a launch whose `metadata.shared` exceeds the device's opt-in
shared memory per block (CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN), so that is
the limit here. Instruction counts per tile-loop iteration come from the SASS (attnlang.codegen.sass).

    python -m attnlang.codegen.targets --audit [--json FILE]   # every static stdlib pattern, sm_80 + sm_90
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import re
import subprocess
import sys
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from attnlang.errors import AttnlangError

from . import sass
from .kernel_template import SHARED_LIMITS

__all__ = ["TARGETS", "AuditFailure", "KernelReport", "Target", "TargetReport", "audit", "audit_cases",
           "audit_one", "compile_for", "resolve_target", "unavailable"]

WORKER_TIMEOUT_S = 900


@dataclass(frozen=True)
class Target:
    """A CUDA architecture and the opt-in shared memory one block may use on it (bytes)."""

    name: str
    capability: int
    shared_limit: int
    devices: str
    hardware: str | None  # attnlang/hardware profile used for block="auto"


# The opt-in shared memory per block (cudaDevAttrMaxSharedMemoryPerBlockOptin, which Triton
# checks) is the kernel template's SHARED_LIMITS: the launcher sizes its stages by it too.
TARGETS = {t.name: t for t in (
    Target("sm_80", 80, SHARED_LIMITS[80], "A100", "a100"),
    Target("sm_86", 86, SHARED_LIMITS[86], "A10, A40, RTX 30xx", None),
    Target("sm_89", 89, SHARED_LIMITS[89], "L40S, L4, RTX 40xx", "l40s"),
    Target("sm_90", 90, SHARED_LIMITS[90], "H100, H200", "h100"),
    Target("sm_100", 100, SHARED_LIMITS[100], "B200, GB200", "b200"),
    Target("sm_120", 120, SHARED_LIMITS[120], "RTX 50xx, RTX PRO 6000", None),
)}


def unavailable() -> str | None:
    """Why static compilation cannot run here (None when it can): it needs Triton's CUDA backend
    and the ptxas, cuobjdump and nvdisasm its wheel ships."""
    try:
        from triton import knobs
        missing = [name for name in ("ptxas", "cuobjdump", "nvdisasm")
                   if not Path(getattr(knobs.nvidia, name).path).exists()]
    except (ImportError, AttributeError, RuntimeError, OSError) as err:  # no CUDA backend, other knobs
        return f"Triton's CUDA backend is not usable: {err}"
    return f"Triton's CUDA tools are missing: {', '.join(missing)}" if missing else None


def resolve_target(target: str | Target) -> Target:
    """`"sm_90"`, `"sm90"`, `"90"` or a `Target`; anything else is an AttnlangError."""
    if isinstance(target, Target):
        return target
    digits = re.fullmatch(r"(?:sm_?)?(\d+)a?", str(target).strip().lower())
    name = f"sm_{digits.group(1)}" if digits else str(target)
    if name not in TARGETS:
        raise AttnlangError(f"unknown target '{target}': expected one of {', '.join(TARGETS)}")
    return TARGETS[name]


# -- reports ------------------------------------------------------------------------------

@dataclass
class KernelReport:
    """One compiled kernel of a launch: its specialization, resources and tile-loop cost.

    Counts are SASS instructions one warp issues per iteration of the tile loop (None when
    the kernel has no such loop or no tile of that kind); `loops` shows every tile loop and
    every path through it. `compiled` is Triton's `CompiledKernel` (`.asm["cubin"]`,
    `.asm["ptx"]`, `.asm["sass"]`, `.metadata`), loaded from `files` on first use.
    """

    kernel: str
    target: str
    block: tuple[int, int]
    num_warps: int
    num_stages: int
    registers: int
    spill_stores: int
    spill_loads: int
    stack_bytes: int
    shared_bytes: int
    shared_static: int
    shared_limit: int
    grid: tuple[int, ...]
    full_instructions: int | None
    partial_instructions: int | None
    loops: list[sass.TileLoop]
    specialization: dict[str, str]
    ptxas_info: list[str]
    files: dict[str, str]
    triton_hash: str
    _compiled: object = field(default=None, repr=False, compare=False)

    @property
    def fits(self) -> bool:
        """Whether Triton would launch it: its shared memory within the target's opt-in limit."""
        return self.shared_bytes <= self.shared_limit

    @property
    def spills(self) -> int:
        return self.spill_stores + self.spill_loads

    def per_thousand(self, kind: str = "full") -> float | None:
        """Warp instructions per 1000 score elements: count x warps x 1000 / (BLOCK_M x BLOCK_N)."""
        count = self.full_instructions if kind == "full" else self.partial_instructions
        if count is None:
            return None
        return count * self.num_warps * 1000 / (self.block[0] * self.block[1])

    @property
    def compiled(self):
        """Triton's CompiledKernel for this kernel (loading it needs no GPU)."""
        if self._compiled is None:
            from triton.compiler import CompiledKernel
            group = {Path(path).name: path for path in self.files.values()}
            self._compiled = CompiledKernel(None, group, self.triton_hash)
        return self._compiled

    def as_dict(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        data.update(fits=self.fits, spills=self.spills, full_per_1000=self.per_thousand("full"),
                    partial_per_1000=self.per_thousand("partial"))
        return data

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

    def __str__(self) -> str:
        fit = "fits" if self.fits else f"DOES NOT FIT (over by {self.shared_bytes - self.shared_limit:,} B)"
        lines = [
            (f"{self.kernel} on {self.target}: block {self.block[0]}x{self.block[1]}, "
             f"{self.num_warps} warps, {self.num_stages} stages, grid {self.grid}"),
            f"  shared    {self.shared_bytes:,} B of {self.shared_limit:,} B: {fit}",
            (f"  registers {self.registers}, spills {self.spill_stores:,} B stored / "
             f"{self.spill_loads:,} B loaded, stack {self.stack_bytes:,} B"),
        ]
        for kind in ("full", "partial"):
            count = self.full_instructions if kind == "full" else self.partial_instructions
            if count is not None:
                lines.append(f"  {kind:8}  {count:,} instructions per warp per tile, "
                             f"{self.per_thousand(kind):.0f} warp instructions per 1000 scores")
        lines += [f"  ptxas     {note}" for note in self.ptxas_info]
        return "\n".join(lines)


@dataclass
class TargetReport:
    """Every kernel one launch of a pattern runs, compiled for one target."""

    pattern: str
    target: str
    devices: str
    seq_q: int
    seq_k: int
    batch: int
    heads: int
    heads_kv: int
    head_dim: int
    dtype: str
    kernels: list[KernelReport]

    @property
    def fits(self) -> bool:
        return all(k.fits for k in self.kernels)

    def __iter__(self):
        return iter(self.kernels)

    def __len__(self) -> int:
        return len(self.kernels)

    def __getitem__(self, key: int | str) -> KernelReport:
        if isinstance(key, int):
            return self.kernels[key]
        for kernel in self.kernels:
            if kernel.kernel == key:
                return kernel
        raise KeyError(key)

    def as_dict(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if k != "kernels"}
        return data | {"fits": self.fits, "kernels": [k.as_dict() for k in self.kernels]}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

    def __str__(self) -> str:
        head = (f"{self.pattern} on {self.target} ({self.devices}): N_q {self.seq_q}, N_k {self.seq_k}, "
                f"{self.heads} heads ({self.heads_kv} kv), head_dim {self.head_dim}, {self.dtype}")
        header = (f"  {'kernel':22} {'block':>7} {'warps':>5} {'stg':>3} {'regs':>4} {'spill B':>13} "
                  f"{'stack':>5} {'shared B':>9} {'limit':>9} {'fits':>4} {'full':>6} {'partial':>7} "
                  f"{'per 1000 (f/p)':>14}")
        rows = [head, header]
        for k in self.kernels:
            per = "/".join("-" if k.per_thousand(kind) is None else f"{k.per_thousand(kind):.0f}"
                           for kind in ("full", "partial"))
            rows.append(f"  {k.kernel:22} {k.block[0]:>3}x{k.block[1]:<3} {k.num_warps:>5} {k.num_stages:>3} "
                        f"{k.registers:>4} {f'{k.spill_stores}/{k.spill_loads}':>13} {k.stack_bytes:>5} "
                        f"{k.shared_bytes:>9,} {k.shared_limit:>9,} {'yes' if k.fits else 'NO':>4} "
                        f"{_dash(k.full_instructions):>6} {_dash(k.partial_instructions):>7} {per:>14}")
        notes = [f"  {k.kernel}: ptxas {note}" for k in self.kernels for note in k.ptxas_info]
        legend = ("  full/partial: SASS instructions per warp per tile-loop iteration; per 1000: "
                  "x warps x 1000 / (BLOCK_M x BLOCK_N); spill B: stored/loaded")
        return "\n".join(rows + notes + [legend])


def _dash(value) -> str:
    return "-" if value is None else f"{value:,}"


# -- compile_for: the parent side -------------------------------------------------------------

def compile_for(kernel, target: str | Target, seq_q: int, seq_k: int | None = None, inputs=None, *,
                batch: int = 1, heads: int | None = None, heads_kv: int | None = None,
                head_dim: int | None = None, dtype=None, standalone: bool = False) -> TargetReport:
    """Compile every kernel a launch of `kernel` at these lengths runs, for `target`.

    The launch's shape is the kernel's pins (heads, heads_kv, head_dim, dtype), or these
    arguments where the kernel has none. The runtime launch (the analysis' block tables)
    runs attention_forward, attention_backward_kv and attention_backward_q;
    `standalone=True` adds the standalone module's `classify_tiles`, which builds the tables
    on the device (the attention kernels keep the analysis' table widths: the device's depend
    on the tables' contents). Works with or without TRITON_INTERPRET=1: compilation runs in a
    subprocess.
    """
    from .runtime import DTYPES, _checked_inputs, _numpy
    resolved = resolve_target(target)
    reason = unavailable()
    if reason:
        raise AttnlangError(f"cannot compile for {resolved.name}: {reason}")
    seq_k = seq_q if seq_k is None else seq_k
    shape = _launch_shape(kernel, seq_q, seq_k, batch, heads, heads_kv, head_dim, dtype)
    inputs = kernel.pattern.inputs_or_defaults(inputs)
    _checked_inputs(kernel.pattern, inputs, (shape["seq_q"], shape["seq_k"]))
    tables = kernel.tables(shape["seq_q"], shape["seq_k"], inputs, batch, "cpu", shape["heads"])
    spec = shape | {
        "source": kernel.source, "name": kernel.pattern.slug, "capability": resolved.capability,
        "shared_limit": resolved.shared_limit, "target": resolved.name, "dtype": DTYPES[shape["dtype"]],
        "block": [kernel.block_m, kernel.block_n], "launch": kernel.launch, "standalone": standalone,
        "inputs": {name: list(_numpy(values).shape) for name, values in (inputs or {}).items()},
        "tables": _table_shapes(tables),
        "route_schedule": _route_schedule(kernel, shape, inputs),
    }

    result = _run_worker(spec)
    return TargetReport(kernel.pattern.label, resolved.name, resolved.devices, seq_q, seq_k, batch,
                        spec["heads"], spec["heads_kv"], spec["head_dim"], spec["dtype"],
                        [_kernel_report(entry) for entry in result["kernels"]])


def _route_schedule(kernel, shape: dict, inputs) -> str | None:
    """The schedule a routed launch of this shape runs (`AttentionKernel.schedule_for`)."""
    if not kernel.pattern.is_routed:
        return None
    import torch
    q = torch.empty(shape["batch"], shape["heads"], shape["seq_q"], shape["head_dim"], dtype=shape["dtype"],
                    device="meta")
    k = torch.empty(shape["batch"], shape["heads_kv"], shape["seq_k"], shape["head_dim"], dtype=shape["dtype"],
                    device="meta")
    return kernel.schedule_for(q, k, inputs)


def _launch_shape(kernel, seq_q, seq_k, batch, heads, heads_kv, head_dim, dtype) -> dict:
    """Lengths, heads, head dim and dtype of the launch: the kernel's pins, else the arguments."""
    shape = {"seq_q": seq_q, "seq_k": seq_k, "batch": batch,
             "heads": kernel.heads or heads, "head_dim": kernel.head_dim or head_dim,
             "dtype": kernel.dtype or dtype}
    for name in ("heads", "head_dim", "dtype"):
        if shape[name] is None:
            raise AttnlangError(f"compile_for needs {name}=: the kernel does not pin it")
    shape["heads_kv"] = kernel.heads_kv or heads_kv or shape["heads"]
    for name in ("seq_q", "seq_k", "batch", "heads", "heads_kv", "head_dim"):
        value = shape[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise AttnlangError(f"{name} must be a positive int, got {value!r}")
    if shape["heads"] % shape["heads_kv"]:
        raise AttnlangError(f"heads_kv ({shape['heads_kv']}) must divide heads ({shape['heads']})")
    return shape


def _table_shapes(tables: dict) -> dict:
    """Only the shapes of the block tables reach the compiler (their widths are launch arguments)."""
    shapes = {direction: [[list(t.shape) for t in pair] for pair in tables[direction]]
              for direction in ("forward", "backward")}
    return shapes | {"map_batch": tables["map_batch"], "map_heads": tables["map_heads"]}


def _kernel_report(entry: dict) -> KernelReport:
    entry = dict(entry)
    entry["block"] = tuple(entry["block"])
    entry["grid"] = tuple(entry["grid"])
    entry["loops"] = [sass.TileLoop(loop["start"], loop["end"], [tuple(p) for p in loop["paths"]])
                      for loop in entry["loops"]]
    return KernelReport(**entry)


def _artifacts_dir(spec: dict) -> Path:
    from .runtime import cache_dir
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / "targets" / f"{spec['name']}_{spec['target']}_{digest}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run_worker(spec: dict) -> dict:
    """Compile in a fresh interpreter with Triton's compiler on; its errors become AttnlangErrors."""
    out = _artifacts_dir(spec)
    token = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"  # concurrent calls may share the folder
    spec_path, result_path = out / f"spec.{token}.json", out / f"result.{token}.json"
    spec_path.write_text(json.dumps(spec))
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, TRITON_INTERPRET="0",
               PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    try:
        done = subprocess.run([sys.executable, "-m", "attnlang.codegen.targets", "--worker", str(spec_path),
                               str(result_path)], env=env, capture_output=True, text=True,
                              timeout=WORKER_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise AttnlangError(f"compiling for {spec['target']} took over {WORKER_TIMEOUT_S} s") from None
    finally:
        spec_path.unlink(missing_ok=True)
    if done.returncode != 0 or not result_path.exists():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise AttnlangError(f"compiling {spec['name']} for {spec['target']} failed:\n{tail}")
    result = json.loads(result_path.read_text())
    result_path.unlink()
    return result


# -- audit: every static pattern at the block the compiler picks ------------------------------

def audit(names: list[str] | None = None, targets=("sm_80", "sm_90"), head_dims=(64, 128), dtype="bfloat16",
          seq: int = 16384, heads: int = 16, workers: int | None = None) -> list[TargetReport | AuditFailure]:
    """Compile each static stdlib pattern (default parameters) for each target and head dim.

    The block is the one `Pattern.compile(block="auto")` picks on the target's hardware
    profile at `seq`. Jobs run in `workers` processes (default: one per CPU), since choosing
    the block is Python work and compiling is a subprocess of its own; the processes are
    spawned, so a script calling this needs the `if __name__ == "__main__":` guard.
    """
    import attnlang
    names = names or [p.name for p in attnlang.stdlib() if not p.is_routed]
    cases = [(n, t, d) for n in names for t in targets for d in head_dims]
    return audit_cases(cases, dtype, seq, heads, workers)


@dataclass
class AuditFailure:
    """An audited case that did not compile: the error, in place of its report."""

    pattern: str
    target: str
    head_dim: int
    error: str

    fits = False

    def __str__(self) -> str:
        return f"{self.pattern} on {self.target}, head_dim {self.head_dim}: FAILED\n  {self.error}"

    def as_dict(self) -> dict:
        return asdict(self) | {"fits": False}


def audit_cases(cases: list[tuple[str, str, int]], dtype: str = "bfloat16", seq: int = 16384, heads: int = 16,
                workers: int | None = None) -> list[TargetReport | AuditFailure]:
    """`audit_one` for each (pattern name, target, head_dim), in order, `workers` processes at
    once; a case that fails is an `AuditFailure` and the others still run."""
    jobs = [(name, resolve_target(target).name, d, dtype, seq, heads) for name, target, d in cases]
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    if workers <= 1:
        return [_audit_or_failure(*job) for job in jobs]
    spawn = multiprocessing.get_context("spawn")  # the parent may hold threads (torch) or CUDA
    with ProcessPoolExecutor(workers, mp_context=spawn) as pool:
        return list(pool.map(_audit_or_failure, *zip(*jobs, strict=True)))


def _audit_or_failure(name: str, target: str, head_dim: int, *args) -> TargetReport | AuditFailure:
    try:
        return audit_one(name, target, head_dim, *args)
    except Exception as err:  # noqa: BLE001 - an audit reports every case, whatever broke it
        return AuditFailure(name, target, head_dim, f"{type(err).__name__}: {err}")


def audit_inputs(pattern, seq: int) -> dict | None:
    """Inputs of an audited launch: one document per 1024 tokens for each (document id) input."""
    import numpy as np
    return {name: np.arange(seq) // 1024 for name in pattern.inputs} or None


def audit_one(name: str, target: str, head_dim: int, dtype: str = "bfloat16", seq: int = 16384,
              heads: int = 16) -> TargetReport:
    """One stdlib pattern at the block `Pattern.compile(block="auto")` picks for `target`."""
    import torch

    import attnlang
    from attnlang.simulator import choose_block
    pattern, resolved = attnlang.stdlib()[name], resolve_target(target)
    torch_dtype, hardware = getattr(torch, dtype), resolved.hardware or "h100"
    inputs = audit_inputs(pattern, seq)
    if inputs is None:
        kernel = pattern.compile(heads=heads, head_dim=head_dim, dtype=torch_dtype, block="auto",
                                 tune_seq=seq, hardware=hardware)
    else:  # block="auto" simulates without inputs, which the analysis of such a pattern needs
        short = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[dtype]
        block = choose_block(pattern, seq, heads, head_dim, short, hardware, inputs).block
        kernel = pattern.compile(heads=heads, head_dim=head_dim, dtype=torch_dtype, block=block)
    return kernel.compile_for(resolved, seq, inputs=inputs)  # a layout kernel compiles its permuted launch


# -- the worker: runs with TRITON_INTERPRET=0 -------------------------------------------------

def _worker(spec_path: Path, result_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    out = spec_path.parent
    from .runtime import load_module
    module = load_module(spec["source"], spec["name"], interpret=False)
    source_file = spec["source_file"] = module.__file__
    launches = _capture_launches(module, spec)
    partial_lines, full_lines = marker_lines(spec["source"], source_file)
    kernels = [_compile_launch(launch, spec, out, partial_lines, full_lines) for launch in launches]
    result_path.write_text(json.dumps({"kernels": kernels}))


def _jit_functions(module) -> list:
    from triton.runtime.jit import JITFunction
    return [value for value in vars(module).values() if isinstance(value, JITFunction)]


def _capture_launches(module, spec: dict) -> list[tuple]:
    """Run the module's launcher on meta tensors; record each kernel's first launch."""
    import torch
    launches: dict[str, tuple] = {}
    for fn in _jit_functions(module):
        def record(*args, grid, warmup, _fn=fn, **kwargs):
            launches.setdefault(_fn.__name__, (_fn, () if callable(grid) else tuple(grid), args, kwargs))
        fn.run = record
    dtype = getattr(torch, spec["dtype"])
    batch, heads, heads_kv, d = spec["batch"], spec["heads"], spec["heads_kv"], spec["head_dim"]
    q = torch.empty(batch, heads, spec["seq_q"], d, dtype=dtype, device="meta")
    k, v = (torch.empty(batch, heads_kv, spec["seq_k"], d, dtype=dtype, device="meta") for _ in range(2))
    inputs = {name: torch.empty(shape, dtype=torch.int64, device="meta")
              for name, shape in spec["inputs"].items()}
    if spec["standalone"]:
        _launch_classifier(module, spec, inputs)
    _launch(module, spec, q, k, v, inputs, _meta_tables(spec["tables"]))
    return list(launches.values())


def _launch(module, spec: dict, q, k, v, inputs: dict, tables: dict) -> None:
    """Forward and backward, as AttentionKernel.run_forward and run_backward call the module."""
    import torch
    block_m, block_n = spec["block"]
    scale = 1.0 / spec["head_dim"] ** 0.5
    # what the launcher picks on a device of the target (meta tensors have no capability)
    launch = spec["launch"] or module.launch_for(block_m, block_n, spec["head_dim"], spec["capability"],
                                                 q.element_size(), len(module.INPUT_NAMES))
    if module.ROUTE is not None:  # a routed pattern: the selection stage, then attention on its tables
        route = module.ROUTE
        rows = -(-spec["seq_q"] // (module.ROUTE_UNITS if route["qblock"] == 1 else route["qblock"]))
        candidates = torch.empty((1, spec["heads"] if module.MASK_READS_HEAD else 1, rows,
                                  -(-spec["seq_k"] // route["block"])), dtype=torch.int8, device="meta")
        chosen = module.select(q, k, inputs, candidates)
        tables = tables | {"chosen": chosen, "map_batch": spec["batch"], "map_heads": spec["heads"]}
        if spec["route_schedule"] == "gathered":  # the chosen blocks' gathered kernels too
            tables["gathered"] = module.gathered_lists(chosen, -(-spec["seq_k"] // route["block"]), block_m)
    out, lse, _ = module.forward(q, k, v, inputs, scale, block_m, block_n, tables, launch)
    module.backward(q, k, v, out, lse, torch.empty_like(out), torch.empty_like(lse), inputs, scale, block_m,
                    block_n, tables, launch)


def _launch_classifier(module, spec: dict, inputs: dict) -> None:
    """The standalone module's `block_tables`, as far as its `classify_tiles` launch: what
    follows needs the tile kinds' values, which meta tensors do not have."""
    block_m, block_n = spec["block"]
    with contextlib.suppress(RuntimeError, NotImplementedError):
        module.block_tables(spec["seq_q"], spec["seq_k"], spec["heads"], inputs, "meta", block_m, block_n)


def _meta_tables(shapes: dict) -> dict:
    import torch

    def pair(counts, indices):
        return (torch.empty(counts, dtype=torch.int32, device="meta"),
                torch.empty(indices, dtype=torch.int32, device="meta"))
    return {direction: [pair(*p) for p in shapes[direction]] for direction in ("forward", "backward")} | {
        "map_batch": shapes["map_batch"], "map_heads": shapes["map_heads"]}


def _specialize(fn, args: tuple, kwargs: dict, backend):
    """What `JITFunction.run` computes before compiling: options, signature, constexprs, attrs."""
    from triton import knobs
    from triton.runtime.jit import create_function_from_signature
    kwargs = dict(kwargs)
    kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
    for name in ("instrumentation_mode", "fpsan_homomorphic_casts"):
        if hasattr(knobs.compilation, name):
            kwargs[name] = getattr(knobs.compilation, name)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    return fn._pack_args(backend, kwargs, bound_args, specialization, options)


def _own_file_names(listing: str, source_file: str) -> str:
    """The listing with every generated module's file name made `source_file`. Triton's cache
    keys a kernel by its source text and line numbers, not by its file: a kernel identical to
    one of an earlier module (a pattern whose backward alone changed, or the same module in
    another kernel cache) reuses that cubin, whose line info names the earlier file. Its lines
    are this module's lines. Generated modules are `{slug}_{16 hex digits}.py` (load_module)."""
    return re.sub(r"/[^\s\"',]*/[\w-]+_[0-9a-f]{16}\.py", lambda _: source_file, listing)


def _compile_launch(launch: tuple, spec: dict, out: Path, partial_lines: set, full_lines: set) -> dict:
    """One intercepted launch compiled for the target and measured: a KernelReport's fields."""
    fn, grid, args, kwargs = launch
    compiled, options, signature, constexprs, attrs, printed = _compile(fn, args, kwargs, spec["capability"])
    files = _keep_files(compiled, out / fn.__name__)
    ptxas_log = _ptxas_log(compiled, options, printed, out / fn.__name__ / "ptxas.json")
    resources = _resource_usage(files["cubin"])
    loops = sass.tile_loops(_own_file_names(_disassemble(files["cubin"]), spec["source_file"]),
                            partial_lines, full_lines)
    stack, stores, loads = _spills(ptxas_log)
    meta = compiled.metadata
    return {
        "kernel": fn.__name__, "target": spec["target"],
        "block": [kwargs.get("BLOCK_M", 0), kwargs.get("BLOCK_N", 0)],
        "num_warps": meta.num_warps, "num_stages": meta.num_stages, "registers": resources["REG"],
        "spill_stores": stores, "spill_loads": loads, "stack_bytes": max(stack, resources["STACK"]),
        "shared_bytes": meta.shared, "shared_static": resources["SHARED"],
        "shared_limit": spec["shared_limit"], "grid": list(grid),
        "full_instructions": _loop_count(loops, "full"),
        "partial_instructions": _loop_count(loops, "partial"),
        "loops": [asdict(loop) for loop in loops],
        "specialization": _describe_specialization(signature, constexprs, attrs),
        "ptxas_info": _ptxas_notes(ptxas_log), "files": files, "triton_hash": compiled.hash,
    }


def _compile(fn, args: tuple, kwargs: dict, capability: int) -> tuple:
    """`triton.compile` of the launch's specialization for `capability`, and what ptxas printed."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    target = GPUTarget("cuda", capability, 32)
    backend = make_backend(target)
    options, signature, constexprs, attrs = _specialize(fn, args, kwargs, backend)
    printed = io.StringIO()
    knobs.nvidia.dump_ptxas_log = True  # Triton prints `ptxas -v` when it runs ptxas (not on a cache hit)
    with contextlib.redirect_stdout(printed):
        compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                                  options=options.__dict__)
    return compiled, options, signature, constexprs, attrs, printed.getvalue()


def _loop_count(loops: list[sass.TileLoop], kind: str) -> int | None:
    counts = [c for c in (loop.count(kind) for loop in loops) if c is not None]
    return min(counts) if counts else None


def _keep_files(compiled, folder: Path) -> dict[str, str]:
    """Copy the compiled files (source, TTIR, TTGIR, PTX, cubin, metadata) out of Triton's cache,
    which may be temporary; the LLVM IR (megabytes) stays there."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, path in compiled.metadata_group.items():
        if name.startswith("__grp__") or name.endswith(".llir"):
            continue
        kept = folder / name
        _write_atomic(kept, Path(path).read_bytes())
        files["metadata" if name.endswith(".json") else Path(name).suffix[1:]] = str(kept)
    return files


def _describe_specialization(signature: dict, constexprs: dict, attrs: dict) -> dict[str, str]:
    """name -> its type with ':16' when Triton assumed 16-divisibility, or '= value' for constexprs."""
    names = list(signature)
    described = {}
    for index, name in enumerate(names):
        if signature[name] == "constexpr":
            described[name] = f"= {constexprs.get((index,), '?')!r}"
        else:
            divisible = any(a[0] == "tt.divisibility" for a in attrs.get((index,), []))
            described[name] = signature[name] + (":16" if divisible else "")
    return described


def _tool(name: str) -> str:
    from triton import knobs
    return getattr(knobs.nvidia, name).path


def _resource_usage(cubin: str) -> dict[str, int]:
    text = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", cubin], capture_output=True,
                          text=True, check=True).stdout
    return {key: int(value) for key, value in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text)}


def _disassemble(cubin: str) -> str:
    return subprocess.run([_tool("nvdisasm"), "-c", "-gi", cubin], capture_output=True, text=True,
                          check=True).stdout


def _ptxas_log(compiled, options, captured: str, kept: Path) -> str:
    """`ptxas -v` of this cubin: printed by Triton when it ran ptxas, else kept from an earlier
    run of the same kernel (same Triton hash), else run again."""
    if "Function properties" in captured:
        log = captured
    elif kept.exists() and json.loads(kept.read_text())["hash"] == compiled.hash:
        return json.loads(kept.read_text())["log"]
    else:
        log = _rerun_ptxas(compiled, options)
    _write_atomic(kept, json.dumps({"hash": compiled.hash, "log": log}).encode())
    return log


def _write_atomic(path: Path, data: bytes) -> None:
    """Whole files only: another compile of the same kernel may be reading this folder."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    temporary.write_bytes(data)
    temporary.replace(path)


def _rerun_ptxas(compiled, options) -> str:
    """ptxas -v on the kernel's PTX with Triton's flags, when the compile came from Triton's cache."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
    capability = compiled.metadata.target.arch
    ptx = Path(compiled.metadata_group[f"{compiled.name}.ptx"])
    fmad = [] if options.enable_fp_fusion else ["--fmad=false"]
    command = [get_ptxas(capability).path, "-lineinfo", *fmad, "-v", "--regAllocOptLevel=2",
               f"--gpu-name={sm_arch_from_capability(capability)}", str(ptx), "-o", os.devnull]
    return subprocess.run(command, capture_output=True, text=True, check=True).stderr


def _spills(log: str) -> tuple[int, int, int]:
    match = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return tuple(int(g) for g in match.groups()) if match else (0, 0, 0)


def _ptxas_notes(log: str) -> list[str]:
    """ptxas's warnings and performance notes (e.g. wgmma serialized for lack of registers)."""
    return [line.split(":", 1)[1].strip() for line in log.splitlines()
            if re.search(r"ptxas\S* (warning|info)\s*: \(C\d+\)|ptxas\S* warning", line)]


# -- which source lines only a FULL or only a PARTIAL tile runs -------------------------------

def marker_lines(source: str, filename: str) -> tuple[set[tuple[str, int]], set[tuple[str, int]]]:
    """(partial, full) (file, line) pairs of the generated module, told apart by the template.

    PARTIAL: the lines of `_mask`, the bodies of `if PARTIAL:`, and calls passing
    PARTIAL=True to a tile function; FULL: calls passing PARTIAL=False and `else` bodies.
    Instructions keep these lines through inlining (nvdisasm -gi shows the whole chain).
    """
    tree = ast.parse(source)
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    partial: set[int] = set()
    full: set[int] = set()
    if "_mask" in functions:
        partial |= _lines(functions["_mask"])
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "PARTIAL":
            partial |= {n for stmt in node.body for n in _lines(stmt)}
            full |= {n for stmt in node.orelse for n in _lines(stmt)}
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in functions:
            flag = _partial_argument(node, functions[node.func.id])
            if flag is not None:
                (partial if flag else full).update(_lines(node))
    return {(filename, n) for n in partial}, {(filename, n) for n in full}


def _lines(node: ast.AST) -> set[int]:
    return set(range(node.lineno, (node.end_lineno or node.lineno) + 1))


def _partial_argument(call: ast.Call, callee: ast.FunctionDef) -> bool | None:
    names = [a.arg for a in callee.args.args]
    if "PARTIAL" not in names:
        return None
    index = names.index("PARTIAL")
    argument = next((kw.value for kw in call.keywords if kw.arg == "PARTIAL"), None)
    if argument is None and index < len(call.args):
        argument = call.args[index]
    return argument.value if isinstance(argument, ast.Constant) and isinstance(argument.value, bool) else None


# -- command line ---------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnlang.codegen.targets", description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=2, metavar=("SPEC", "RESULT"), help=argparse.SUPPRESS)
    parser.add_argument("--audit", action="store_true", help="every static stdlib pattern, sm_80 and sm_90")
    parser.add_argument("--targets", default="sm_80,sm_90")
    parser.add_argument("--head-dims", default="64,128")
    parser.add_argument("--patterns", default=None, help="comma-separated names (default: all static)")
    parser.add_argument("--json", metavar="FILE", help="also write every report as JSON")
    args = parser.parse_args(argv)
    if args.worker:
        _worker(Path(args.worker[0]), Path(args.worker[1]))
        return 0
    if not args.audit:
        parser.error("nothing to do: pass --audit")
    reports = audit(args.patterns.split(",") if args.patterns else None, args.targets.split(","),
                    [int(d) for d in args.head_dims.split(",")])
    for report in reports:
        print(report, end="\n\n")
    if args.json:
        Path(args.json).write_text(json.dumps([r.as_dict() for r in reports], indent=2) + "\n")
    return 0 if all(r.fits for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
