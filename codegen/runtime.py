"""Launching the generated kernels: block tables on the device, autograd, caches.

`AttentionKernel` is what `Pattern.compile` returns. Its block tables are built by the
analysis on first use for each (seq_q, seq_k, inputs) and kept as int32 device tensors;
kernel modules are cached on disk by the hash of their source. CPU tensors run under the
Triton interpreter (the module is loaded with TRITON_INTERPRET=1), CUDA tensors compiled.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import math
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import torch

from attnlang.analysis import pairs_depend_on
from attnlang.reference import has_batch_axis
from attnlang.ir import float_inputs as ir_float_inputs
from attnlang.errors import AttnlangError

from . import op
from .template import standalone_source, statement_origins

__all__ = ["AttentionKernel", "LayoutKernel", "cache_dir", "load_module"]

DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
_MODULES: dict[tuple[str, bool], object] = {}


def cache_dir() -> Path:
    root = os.environ.get("ATTNLANG_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "attnlang")
    path = Path(root) / "kernels"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _interpreter(enabled: bool):
    """Triton decides at decoration time whether a @triton.jit function is interpreted."""
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if enabled else "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved


def _check_triton_mode(interpret: bool) -> None:
    """Triton decorates its own library once, when first imported: interpreted or compiled."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    library_interpreted = isinstance(tl.zeros, InterpretedFunction)
    if interpret and not library_interpreted:
        raise AttnlangError("CPU tensors run under the Triton interpreter, which must be on before triton is "
                            "imported: set TRITON_INTERPRET=1 in the environment (or pass CUDA tensors)")
    if not interpret and library_interpreted:
        raise AttnlangError("CUDA tensors need compiled Triton kernels, but TRITON_INTERPRET=1 is set: "
                            "unset it to run on the GPU")


def load_module(source: str, name: str, interpret: bool):
    """Import generated source from the kernel cache (Triton needs a real file to read)."""
    _check_triton_mode(interpret)
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    key = (digest, interpret)
    if key not in _MODULES:
        path = cache_dir() / f"{name}_{digest}.py"
        if not path.exists():
            temporary = path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(source)
            temporary.replace(path)
        module_name = f"attnlang_kernels.{name}_{digest}_{'interpreted' if interpret else 'compiled'}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        with _interpreter(interpret):
            spec.loader.exec_module(module)
        sys.modules[module_name] = module
        _MODULES[key] = module
    return _MODULES[key]


def _tile_shape(block) -> tuple[int, int]:
    block = (block, block) if isinstance(block, int) else tuple(block)
    if len(block) != 2 or any(not isinstance(b, int) or b < 16 or b & (b - 1) for b in block):
        raise AttnlangError(f"block must be a power of two >= 16 (or a pair of them), got {block!r}")
    return block


class AttentionKernel:
    """A compiled attention pattern: `kernel(q, k, v, inputs=None, scale=None, return_lse=False)`.

    q: (B, H, N_q, D); k, v: (B, H_kv, N_k, D) of q's dtype, H_kv dividing H (grouped-query
    attention). Heads, groups, head dim and dtype come from the tensors at each call, so one
    kernel serves them all; `heads`, `heads_kv`, `head_dim` and `dtype` given here are pins
    that calls must match. The call is the custom op `attnlang::attention` (`attnlang.codegen.op`):
    differentiable (fused backward kernels, deterministic) and traceable by `torch.compile`.
    It runs the very module `attnlang compile` writes, handing it the analysis' block tables.
    """

    def __init__(self, pattern, heads: int | None = None, head_dim: int | None = None, heads_kv: int | None = None,
                 dtype=None, block=64, route_schedule: str | None = None, hardware="h100"):
        for name, value in (("heads", heads), ("heads_kv", heads_kv), ("head_dim", head_dim)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise AttnlangError(f"{name} must be a positive int, got {value!r}")
        if heads is not None and heads_kv is not None and heads % heads_kv:
            raise AttnlangError(f"heads_kv ({heads_kv}) must divide heads ({heads})")
        if head_dim is not None and head_dim > 256:
            raise AttnlangError(f"head_dim must be at most 256, got {head_dim}")
        if dtype is not None and dtype not in DTYPES:
            raise AttnlangError(f"dtype must be one of torch.float32, torch.float16, torch.bfloat16, got {dtype}")
        self.pattern = pattern
        self.heads, self.heads_kv, self.head_dim, self.dtype = heads, heads_kv, head_dim, dtype
        self.block_m, self.block_n = _tile_shape(block)
        # the module that runs: kernels, device-side tile classifier, autograd and launcher
        self.source = standalone_source(pattern.ir, (self.block_m, self.block_n), statement_origins(pattern.decl))
        self._tables = _Recent()
        self._route_maps = _Recent()
        self.block_choice = None  # set by Pattern.compile(block="auto"): the simulated reason
        self.launch = None  # num_warps and num_stages per kernel; None: the module's defaults
        if pattern.is_routed:
            from attnlang.routing import check_schedule
            check_schedule(pattern.ir, route_schedule)
        # per-token routing: "gathered" (key-block-major) or "tiles" (tile-major, a per-row bitmap
        # of each tile's chosen blocks); None: the faster on `hardware` by the simulator, per length.
        # Fixed at construction (compile's cache key holds them): read-only properties below
        self._route_schedule, self._hardware = route_schedule, hardware
        self._schedules = _Recent()
        self._key = op.register(self)

    def standalone_source(self) -> str:
        """This kernel as a module that needs only torch and triton (`attnlang compile -o`)."""
        return self.source

    @property
    def route_schedule(self) -> str | None:
        """`compile(route_schedule=)`: "gathered", "tiles", or None (picked per length, `schedule_for`)."""
        return self._route_schedule

    @property
    def hardware(self):
        """`compile(hardware=)`: what a per-token routing's schedule is picked for."""
        return self._hardware

    def compile_for(self, target: str, seq_q: int, seq_k: int | None = None, inputs=None, **options):
        """Every kernel a launch at these lengths runs, compiled for `target` ("sm_90", ...)
        without a GPU: a `attnlang.codegen.targets.TargetReport` (resources, fit, SASS cost per tile)."""
        from .targets import compile_for
        return compile_for(self, target, seq_q, seq_k, inputs, **options)

    def __repr__(self) -> str:
        pins = ", ".join(f"{name}={value}" for name, value in (
            ("heads", self.heads), ("heads_kv", self.heads_kv), ("head_dim", self.head_dim),
            ("dtype", DTYPES.get(self.dtype))) if value is not None)
        return f"<AttentionKernel {self.pattern.label} block={self.block_m}x{self.block_n}{' ' + pins if pins else ''}>"

    # -- block tables -----------------------------------------------------------------

    def block_maps(self, seq_q: int, seq_k: int, inputs=None, batch: int = 1, heads: int | None = None):
        """The analysis' block maps for these lengths: one, or one per batch entry (when the
        mask reads b or an input has a row per batch entry)."""
        heads = heads or self.heads or 1
        per_batch = pairs_depend_on(self.pattern.ir, 'b') or any(
            has_batch_axis(self.pattern.ir, name, value) for name, value in (inputs or {}).items())
        rows = range(batch) if per_batch else range(1)
        return [self.pattern.analyze(seq_q, seq_k, heads, (self.block_m, self.block_n), inputs, batch=b)
                for b in rows]

    def tables(self, seq_q: int, seq_k: int, inputs, batch: int, device, heads: int | None = None):
        """The kernels' block tables on `device`, cached per lengths, inputs, batch and heads."""
        heads = heads or self.heads or 1
        key = (seq_q, seq_k, _inputs_key(inputs), batch, str(device), heads)
        tables = self._tables.get(key)
        if tables is None:
            maps = self.block_maps(seq_q, seq_k, inputs, batch, heads)
            tables = self._tables[key] = {
                direction: [_stack([m.kernel_tables[direction][kind] for m in maps], device) for kind in (0, 1)]
                for direction in ("forward", "backward")} | {
                "map_batch": len(maps),
                "map_heads": maps[0].shape[0],
            }
        return tables

    def route_maps(self, seq_q: int, seq_k: int, inputs, batch: int, device, heads: int | None = None):
        """A routed pattern's candidate kinds and the tile kinds of its mask and of mask AND keep,
        by the analysis, on `device` (cached like the tables): what each call's selection
        builds its tables from."""
        from attnlang.routing import kernel_maps
        heads = heads or self.heads or 1
        by = self.pattern.ir.route.by  # the scores change every step; the maps do not read them
        key = (seq_q, seq_k, _inputs_key({n: v for n, v in (inputs or {}).items() if n != by}), batch, str(device),
               heads)
        route_maps = self._route_maps.get(key)
        if route_maps is None:
            unit_rows = self._module(device).ROUTE_UNITS
            maps = [kernel_maps(m, unit_rows) for m in self.block_maps(seq_q, seq_k, inputs, batch, heads)]
            route_maps = {name: torch.from_numpy(np.stack([m[name] for m in maps])).to(device) for name in maps[0]}
            if self.pattern.ir.route.query_block == 1:  # a gathered launch's tile-map half reads them every call
                route_maps["kept_tables"] = self._module(device).tables_of(route_maps["kept"])
            self._route_maps[key] = route_maps
        return route_maps

    def selection(self, q, k, inputs=None):
        """A routed pattern's selection for q and k, made by the device stage the kernel runs:
        bool (B, H, query units, key blocks) (units: ROUTE qblock tokens; the chosen blocks of
        each unit's share group, within the candidates of its head when the reference reads it)."""
        if not self.pattern.is_routed:
            raise AttnlangError(f"pattern '{self.pattern.name}' does not route: it has no selection")
        self._check(q, k, k)
        inputs = dict(zip(self.pattern.inputs, self._input_list(self.pattern.inputs_or_defaults(inputs), q.device)))
        q, k = q.detach().contiguous(), k.detach().contiguous()
        module = self._module(q.device)
        maps = self.route_maps(q.shape[2], k.shape[2], inputs, q.shape[0], q.device, q.shape[1])
        chosen = module.select(q, k, inputs, maps["candidates"]).long()
        chosen = chosen.repeat_interleave(q.shape[1] // chosen.shape[1], dim=1)
        blocks = -(-k.shape[2] // self.pattern.ir.route.block)
        selected = torch.zeros(chosen.shape[:3] + (blocks + 1,), dtype=torch.bool, device=q.device)
        selected.scatter_(3, torch.where(chosen < 0, blocks, chosen), True)  # none: a column past the blocks
        return selected[..., :blocks]

    def _launch_tables(self, q, k, inputs):
        """The block tables of a launch: the analysis' (cached), or for a routed pattern the
        tables of the selection this q and k make (a selection stage on the device)."""
        batch, heads, seq_q, _ = q.shape
        if not self.pattern.is_routed:
            return self.tables(seq_q, k.shape[2], inputs, batch, q.device, heads)
        maps = self.route_maps(seq_q, k.shape[2], inputs, batch, q.device, heads)
        return self._module(q.device).routed_tables(q, k, inputs, maps, self.block_m, self.block_n,
                                                    self.schedule_for(q, k, inputs))

    def schedule_for(self, q, k, inputs=None) -> str:
        """The schedule a routed launch on q and k (any device, meta too) runs: `route_schedule`,
        or for per-token routing `attnlang.simulator.route_schedule_for` on `hardware` (the
        faster by the simulator, tile-major past a quarter of the device's memory), chosen once
        per lengths, batch, heads, head dim, dtype and inputs (not a routing's `by` scores);
        block routing runs "tiles"."""
        schedule, route = self.route_schedule, self.pattern.ir.route
        if schedule is not None or route.query_block != 1:
            return schedule or "tiles"
        batch, heads, seq_q, head_dim = q.shape
        unscored = {name: value for name, value in (inputs or {}).items() if name != route.by}  # as route_maps
        key = (seq_q, k.shape[2], batch, heads, head_dim, q.dtype, _inputs_key(unscored))  # the map reads no scores
        schedule = self._schedules.get(key)
        if schedule is None:
            from attnlang.simulator import route_schedule_for
            block_map = self.pattern.analyze(seq_q, k.shape[2], heads, (self.block_m, self.block_n), inputs)
            dtype = {torch.float32: "fp32", torch.float16: "fp16"}.get(q.dtype, "bf16")
            schedule = self._schedules[key] = route_schedule_for(block_map, heads, head_dim, dtype, batch,
                                                                 self.hardware)
        return schedule

    # -- running ----------------------------------------------------------------------

    def __call__(self, q, k, v, inputs=None, scale=None, return_lse: bool = False):
        self._check(q, k, v)
        runtime_inputs = self._input_list(self.pattern.inputs_or_defaults(inputs), q.device)
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
        out, lse = op.attention_op(q, k, v, runtime_inputs, self._key, scale)
        return (out, lse) if return_lse else out

    def run_forward(self, q, k, v, runtime_inputs, scale: float):
        """The forward launch, inside the custom op: inputs checked, tables built or cached."""
        inputs = dict(zip(self.pattern.inputs, runtime_inputs))
        _checked_inputs(self.pattern, inputs, (q.shape[2], k.shape[2]), q.shape[1])
        # head dims below 16 run as 16 with zero columns: the kernels mask them on load and store
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        tables = self._launch_tables(q, k, inputs)
        out, lse, _ = self._module(q.device).forward(q, k, v, inputs, scale, self.block_m, self.block_n, tables,
                                                     self.launch)
        return out, lse

    def run_backward(self, q, k, v, out, lse, dout, dlse, runtime_inputs, scale: float):
        inputs = dict(zip(self.pattern.inputs, runtime_inputs))
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        tables = self._launch_tables(q, k, inputs)  # a routed pattern selects again: the same blocks
        return self._module(q.device).backward(q, k, v, out.contiguous(), lse.contiguous(), dout.contiguous(),
                                               dlse.contiguous(), inputs, scale, self.block_m, self.block_n, tables,
                                               self.launch)

    def _module(self, device):
        # the same module `attnlang compile` writes: interpreted for CPU tensors
        return load_module(self.source, self.pattern.slug, interpret=device.type != "cuda")

    def _input_list(self, inputs, device) -> list:
        """The runtime inputs in declaration order, as int64 tensors on `device`."""
        inputs = dict(inputs or {})
        missing = [name for name in self.pattern.inputs if name not in inputs]
        if missing:
            raise AttnlangError(f"pattern '{self.pattern.name}' needs input '{missing[0]}': pass inputs={{"
                                f"'{missing[0]}': ...}} with one value per token")
        unknown = [name for name in inputs if name not in self.pattern.inputs]
        if unknown:
            raise AttnlangError(f"pattern '{self.pattern.name}' has no input '{unknown[0]}' "
                                f"(its inputs: {', '.join(self.pattern.inputs) or 'none'})")
        floats = ir_float_inputs(self.pattern.ir)
        return [torch.as_tensor(inputs[name]).to(device=device, dtype=torch.float64 if name in floats else torch.int64)
                for name in self.pattern.inputs]

    def _check(self, q, k, v):
        for name, t in (("q", q), ("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor) or t.dim() != 4:
                raise AttnlangError(f"{name} must be a 4-D tensor (batch, heads, tokens, head_dim)")
            if t.dtype not in DTYPES:
                raise AttnlangError(f"{name} is {t.dtype}; kernels take float32, float16 or bfloat16")
        if not (q.dtype == k.dtype == v.dtype):
            raise AttnlangError(f"q, k and v must have one dtype, got {q.dtype}, {k.dtype} and {v.dtype}")
        if self.dtype is not None and q.dtype != self.dtype:
            raise AttnlangError(f"q is {q.dtype}, but the kernel was compiled for {self.dtype}")
        batch, heads, _, head_dim = q.shape
        if k.shape[0] != batch or k.shape[3] != head_dim or k.shape != v.shape:
            raise AttnlangError(f"k and v must both be ({batch}, heads_kv, tokens, {head_dim}), got "
                                f"{tuple(k.shape)} and {tuple(v.shape)}")
        if head_dim > 256:
            raise AttnlangError(f"head_dim must be at most 256, got {head_dim}")
        heads_kv = k.shape[1]
        if heads % heads_kv:
            raise AttnlangError(f"k and v have {heads_kv} heads, which must divide q's {heads} "
                                "(grouped-query attention: each k/v head serves heads / heads_kv query heads)")
        for name, pinned, got in (("heads", self.heads, heads), ("heads_kv", self.heads_kv, heads_kv),
                                  ("head_dim", self.head_dim, head_dim)):
            if pinned is not None and pinned != got:
                raise AttnlangError(f"the kernel was compiled with {name}={pinned}, but the tensors have {got}; "
                                    f"compile with {name}={got}, or leave {name} unset to take it from the tensors")
        if not (q.device == k.device == v.device):
            raise AttnlangError("q, k and v must be on the same device")


class _Recent(collections.OrderedDict):
    """A cache of the `limit` entries made last: tables are keyed by the inputs' values, which a
    training loop changes every step (documents), so an unbounded cache would grow with every
    batch; a few lengths and inputs stay. Read it with `get` (an entry may leave between `in`
    and `[]`)."""

    def __init__(self, limit: int = 16):
        super().__init__()
        self.limit = limit

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        while len(self) > self.limit:
            self.popitem(last=False)


def _numpy(value):
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _inputs_key(inputs) -> str:
    if not inputs:
        return ""
    digest = hashlib.sha256()
    for name in sorted(inputs):
        array = np.ascontiguousarray(_numpy(inputs[name]))  # its dtype too: 1 and 1.0 hash apart
        digest.update(name.encode() + str((array.shape, array.dtype.str)).encode() + array.tobytes())
    return digest.hexdigest()


def _checked_inputs(pattern, inputs, lengths: tuple[int, int], heads: int | None = None) -> None:
    """Clear errors for missing, unknown, short or non-integer inputs (per-batch rows too)."""
    from attnlang.reference import check_inputs
    check_inputs(pattern.ir, {name: _numpy(values) for name, values in (inputs or {}).items()}, max(lengths),
                 lengths=lengths, heads=heads)


def _stack(tables, device):
    """Per-batch (counts, entries) → int32 device tensors (maps, heads, rows, width[, 2]);
    entries are indices, or (first, count) runs."""
    width = max(entries.shape[2] for _, entries in tables)
    counts = np.stack([c for c, _ in tables])
    indices = np.zeros((len(tables),) + tables[0][1].shape[:2] + (width,) + tables[0][1].shape[3:], dtype=np.int32)
    for i, (_, idx) in enumerate(tables):
        indices[i, :, :, :idx.shape[2]] = idx
    return (torch.from_numpy(np.ascontiguousarray(counts)).to(device),
            torch.from_numpy(indices).to(device))


class LayoutKernel:
    """Attention in a token order where a grid or residue pattern's tiles are dense
    (`Pattern.compile(layout=...)`): `kernel(q, k, v)` permutes q, k and v into the layout's
    order (one gather each), runs the permuted pattern's `AttentionKernel` and un-permutes the
    output (one gather); autograd saves the permuted tensors, so the backward permutes only dO
    in and dq, dk, dv out. The layout depends on the lengths and is chosen on first use of
    each (`layout_for`); `kernel.permute(x)`, `kernel.unpermute(y)` and
    `kernel(q, k, v, permuted=True)` let a model stay in the permuted order across layers.

    Padding positions (an axis the tile does not divide) hold a copy of token 0 that the
    permuted mask never reads, so their outputs are dropped and their gradients are zero.
    """

    def __init__(self, pattern, layout, heads=None, head_dim=None, heads_kv=None, dtype=None, block=64,
                 hardware="h100", route_schedule=None):
        self.pattern, self.spec, self.hardware = pattern, layout, hardware
        self.heads, self.head_dim, self.heads_kv, self.dtype = heads, head_dim, heads_kv, dtype
        self.block_m, self.block_n = _tile_shape(block)
        self.block_choice = None  # set by Pattern.compile(block="auto")
        self.layout_choice = None  # the choice at the last length it was made for
        self._per_length: dict = {}  # (seq_q, seq_k) -> (LayoutChoice, AttentionKernel or None)
        self._route_schedule = route_schedule  # a routed pattern's: as AttentionKernel.route_schedule

    def __repr__(self) -> str:
        return f"<LayoutKernel {self.pattern.label} layout={self.spec} block={self.block_m}x{self.block_n}>"

    def layout_for(self, seq_q: int, seq_k: int | None = None):
        """The `Layout` used at these lengths (chosen and cached on first use)."""
        return self._entry(seq_q, seq_q if seq_k is None else seq_k)[0].layout

    def kernel_for(self, seq_q: int, seq_k: int | None = None) -> AttentionKernel:
        """The permuted pattern's kernel at these lengths (the row-major kernel if row-major won)."""
        return self._entry(seq_q, seq_q if seq_k is None else seq_k)[1]

    def _entry(self, seq_q: int, seq_k: int):
        if (seq_q, seq_k) not in self._per_length:
            if torch.compiler.is_compiling():  # choosing analyzes and simulates: numpy, not graph code
                # a builtin: dynamo traces its construction, not AttnlangError's
                raise RuntimeError(f"the layout for {seq_q} x {seq_k} tokens is chosen outside torch.compile: call "
                                    f"kernel.layout_for({seq_q}, {seq_k}) (or the kernel once) before the compiled "
                                    "model first sees this length")
            dtype = {torch.float16: "fp16", torch.float32: "fp32"}.get(self.dtype, "bf16")
            choice = self.pattern.choose_layout(self.spec, seq_q, seq_k, (self.block_m, self.block_n),
                                                heads=self.heads or 16, head_dim=self.head_dim or 128, dtype=dtype,
                                                hardware=self.hardware)
            laid_out = self.pattern.with_layout(choice.layout, seq_q, seq_k, (self.block_m, self.block_n))
            kernel = AttentionKernel(laid_out, self.heads, self.head_dim, self.heads_kv, self.dtype,
                                     (self.block_m, self.block_n), self.route_schedule, self.hardware)
            kernel.pattern = laid_out
            self._per_length[(seq_q, seq_k)] = (choice, kernel, _orders(choice.layout, seq_q, seq_k))
        entry = self._per_length[(seq_q, seq_k)]
        self.layout_choice = entry[0]
        return entry

    @property
    def route_schedule(self) -> str | None:
        """`compile(route_schedule=)`, as `AttentionKernel.route_schedule`."""
        return self._route_schedule

    def schedule_for(self, q, k, inputs=None) -> str:
        """The schedule a routed launch on row-major q and k runs (`AttentionKernel.schedule_for`
        of the permuted kernel at the layout's lengths)."""
        choice, kernel, _ = self._entry(q.shape[2], k.shape[2])
        seq_q, seq_k = choice.layout.lengths(q.shape[2], k.shape[2])
        permuted_q = torch.empty(q.shape[:2] + (seq_q, q.shape[3]), dtype=q.dtype, device="meta")
        permuted_k = torch.empty(k.shape[:2] + (seq_k, k.shape[3]), dtype=k.dtype, device="meta")
        return kernel.schedule_for(permuted_q, permuted_k, inputs)

    def compile_for(self, target: str, seq_q: int, seq_k: int | None = None, inputs=None, **options):
        """The permuted kernel's launch at these (row-major) lengths compiled for `target`
        without a GPU (`AttentionKernel.compile_for`; its lengths are the layout's, padding included)."""
        seq_k = seq_q if seq_k is None else seq_k
        padded = self.layout_for(seq_q, seq_k).lengths(seq_q, seq_k)
        return self.kernel_for(seq_q, seq_k).compile_for(target, *padded, inputs, **options)

    def source_for(self, seq_q: int, seq_k: int | None = None) -> str:
        """The generated module at these lengths: it takes q, k, v in the layout's order."""
        return self.kernel_for(seq_q, seq_k).source

    # -- permutations -------------------------------------------------------------------

    def permute(self, x, side: str = "q", seq_other: int | None = None):
        """`x` (B, H, N, D) in row-major order -> (B, H, N', D) in the layout's order (`side`:
        "q" for queries, "k" for keys and values; `seq_other`: the other side's length,
        default N)."""
        if side not in ("q", "k"):
            raise AttnlangError(f"permute: side must be 'q' (queries) or 'k' (keys and values), got {side!r}")
        length = x.shape[2]
        lengths = (length, seq_other or length) if side == "q" else (seq_other or length, length)
        gather = self._entry(*lengths)[2][side][0]
        return x if gather is None else x.index_select(2, gather.to(x.device))

    def unpermute(self, y, seq: int | None = None, seq_k: int | None = None):
        """`y` (B, H, N', D) in the layout's order (a query-side output) -> (B, H, N, D)."""
        entry = self._find(y.shape[2], None, seq, seq_k)
        inverse = entry[2]["q"][1]
        return y if inverse is None else y.index_select(2, inverse.to(y.device))

    def _find(self, padded_q: int, padded_k: int | None, seq: int | None, seq_k: int | None):
        """The entry whose layout has these permuted lengths (`padded_k` None: any key length),
        among the lengths asked for (`seq`, `seq_k`) or all this kernel has made."""
        if seq is not None:
            self._entry(seq, seq if seq_k is None else seq_k)
        matches = []
        for (n_q, n_k), entry in self._per_length.items():
            lengths = entry[0].layout.lengths(n_q, n_k)
            asked = seq is None or (n_q, n_k) == (seq, seq if seq_k is None else seq_k)
            if asked and lengths[0] == padded_q and padded_k in (None, lengths[1]):
                matches.append(entry)
        if len(matches) != 1:
            keys = "" if padded_k is None else f" and {padded_k} key positions"
            raise AttnlangError(f"no single layout of this kernel has {padded_q} query positions{keys}; pass seq= "
                                "and seq_k= (the row-major lengths), or permute with kernel.permute(x, side, "
                                "seq_other) first")
        return matches[0]

    def selection(self, q, k, inputs=None):
        """A routed pattern's selection for row-major q and k, in the layout's order (a grid
        region routing's units and blocks are the regions): `AttentionKernel.selection`."""
        choice, kernel, orders = self._entry(q.shape[2], k.shape[2])
        q = q if orders["q"][0] is None else q.index_select(2, orders["q"][0].to(q.device))
        k = k if orders["k"][0] is None else k.index_select(2, orders["k"][0].to(k.device))
        return kernel.selection(q, k, inputs)

    # -- running ------------------------------------------------------------------------

    def __call__(self, q, k, v, inputs=None, scale=None, return_lse: bool = False, permuted: bool = False,
                 seq: int | None = None, seq_k: int | None = None):
        # inputs stay in token order and length: the permuted pattern reads them at its tokens
        if permuted:
            entry = self._find(q.shape[2], k.shape[2], seq, seq_k)
            return entry[1](q, k, v, inputs, scale=scale, return_lse=return_lse)
        choice, kernel, orders = self._entry(q.shape[2], k.shape[2])
        if choice.layout.is_row_major:
            return kernel(q, k, v, inputs, scale=scale, return_lse=return_lse)
        gather = orders["q"][0], orders["k"][0]
        q = q if gather[0] is None else q.index_select(2, gather[0].to(q.device))
        k, v = ((k, v) if gather[1] is None else
                (k.index_select(2, gather[1].to(k.device)), v.index_select(2, gather[1].to(v.device))))
        out, lse = kernel(q, k, v, inputs, scale=scale, return_lse=True)
        inverse = orders["q"][1]
        if inverse is not None:
            out, lse = out.index_select(2, inverse.to(out.device)), lse.index_select(2, inverse.to(lse.device))
        return (out, lse) if return_lse else out


def _orders(layout, seq_q: int, seq_k: int) -> dict:
    """Per side: the gather into the layout's order (padding reads token 0) and the gather back
    (each token's position in that order), as int64 tensors; None for a row-major side."""
    orders = {}
    for side, tiling in (("q", layout.q), ("k", layout.k)):
        if tiling is None:
            orders[side] = (None, None)
            continue
        order = tiling.order()
        inverse = np.empty(tiling.length, dtype=np.int64)
        real = order >= 0
        inverse[order[real]] = np.flatnonzero(real)
        orders[side] = (torch.from_numpy(np.where(real, order, 0)), torch.from_numpy(inverse))
    return orders
