"""Launching the generated kernels: block tables on the device, autograd, caches.

`AttentionKernel` is what `Pattern.compile` returns. Its block tables are built by the
analysis on first use for each (seq_q, seq_k, inputs) and kept as int32 device tensors;
kernel modules are cached on disk by the hash of their source. CPU tensors run under the
Triton interpreter (the module is loaded with TRITON_INTERPRET=1), CUDA tensors compiled.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import torch

from attnlang.analysis import mask_depends_on_batch
from attnlang.errors import AttnlangError

from .template import standalone_source, statement_origins

__all__ = ["AttentionKernel", "cache_dir", "load_module"]

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

    q: (B, heads, N_q, head_dim); k, v: (B, heads_kv, N_k, head_dim), all of `dtype`. The
    result is differentiable (fused backward kernels, deterministic). It runs the very module
    `attnlang compile` writes, handing it the analysis' block tables instead of letting the
    module classify tiles on the device.
    """

    def __init__(self, pattern, heads: int, head_dim: int, heads_kv: int | None = None,
                 dtype=torch.float32, block=64):
        heads_kv = heads if heads_kv is None else heads_kv
        for name, value in (("heads", heads), ("heads_kv", heads_kv), ("head_dim", head_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise AttnlangError(f"{name} must be a positive int, got {value!r}")
        if heads % heads_kv:
            raise AttnlangError(f"heads_kv ({heads_kv}) must divide heads ({heads})")
        if not 16 <= head_dim <= 256:
            raise AttnlangError(f"head_dim must be between 16 and 256, got {head_dim}")
        if dtype not in DTYPES:
            raise AttnlangError(f"dtype must be one of torch.float32, torch.float16, torch.bfloat16, got {dtype}")
        if pattern.is_routed:
            raise AttnlangError(f"pattern '{pattern.name}' routes by content; routed kernels are not generated yet")
        self.pattern = pattern
        self.heads, self.heads_kv, self.head_dim, self.dtype = heads, heads_kv, head_dim, dtype
        self.block_m, self.block_n = _tile_shape(block)
        # the module that runs: kernels, device-side tile classifier, autograd and launcher
        self.source = standalone_source(pattern.ir, (self.block_m, self.block_n), statement_origins(pattern.decl))
        self._tables: dict = {}
        self.block_choice = None  # set by Pattern.compile(block="auto"): the simulated reason

    def standalone_source(self) -> str:
        """This kernel as a module that needs only torch and triton (`attnlang compile -o`)."""
        return self.source

    def compile_for(self, target: str, seq_q: int, seq_k: int | None = None, inputs=None, **options):
        """Every kernel a launch at these lengths runs, compiled for `target` ("sm_90", ...)
        without a GPU: a `codegen.targets.TargetReport` (resources, fit, SASS cost per tile)."""
        from .targets import compile_for
        return compile_for(self, target, seq_q, seq_k, inputs, **options)

    def __repr__(self) -> str:
        return (f"<AttentionKernel {self.pattern.label} heads={self.heads} heads_kv={self.heads_kv} "
                f"head_dim={self.head_dim} dtype={DTYPES[self.dtype]} block={self.block_m}x{self.block_n}>")

    # -- block tables -----------------------------------------------------------------

    def block_maps(self, seq_q: int, seq_k: int, inputs=None, batch: int = 1):
        """The analysis' block maps for these lengths: one, or one per batch row of inputs."""
        per_batch = mask_depends_on_batch(self.pattern.ir) or any(
            np.asarray(_numpy(v)).ndim == 2 for v in (inputs or {}).values())
        rows = range(batch) if per_batch else range(1)
        return [self.pattern.analyze(seq_q, seq_k, self.heads, (self.block_m, self.block_n), inputs, batch=b)
                for b in rows]

    def tables(self, seq_q: int, seq_k: int, inputs, batch: int, device):
        key = (seq_q, seq_k, _inputs_key(inputs), batch, str(device))
        if key not in self._tables:
            maps = self.block_maps(seq_q, seq_k, inputs, batch)
            self._tables[key] = {
                direction: [_stack([m.kernel_tables[direction][kind] for m in maps], device) for kind in (0, 1)]
                for direction in ("forward", "backward")} | {
                "map_batch": len(maps),
                "map_heads": maps[0].shape[0],
            }
        return self._tables[key]

    # -- running ----------------------------------------------------------------------

    def __call__(self, q, k, v, inputs=None, scale=None, return_lse: bool = False):
        self._check(q, k, v)
        batch, _, seq_q, _ = q.shape
        seq_k = k.shape[2]
        inputs = self.pattern.inputs_or_defaults(inputs)
        _checked_inputs(self.pattern, inputs, max(seq_q, seq_k))
        tables = self.tables(seq_q, seq_k, inputs, batch, q.device)
        # the same module `attnlang compile` writes, given the analysis' tables
        module = load_module(self.source, self.pattern.slug, interpret=q.device.type != "cuda")
        tensors = {name: torch.as_tensor(_numpy(values)) for name, values in (inputs or {}).items()}
        return module.attention(q, k, v, inputs=tensors,
                                scale=scale, return_lse=return_lse, block_m=self.block_m, block_n=self.block_n,
                                tables=tables)

    def _check(self, q, k, v):
        for name, t in (("q", q), ("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor) or t.dim() != 4:
                raise AttnlangError(f"{name} must be a 4-D tensor (batch, heads, tokens, head_dim)")
            if t.dtype != self.dtype:
                raise AttnlangError(f"{name} is {t.dtype}, but the kernel was compiled for {self.dtype}")
        if q.shape[1] != self.heads or q.shape[3] != self.head_dim:
            raise AttnlangError(f"q must have {self.heads} heads of dim {self.head_dim}, got shape {tuple(q.shape)}")
        expected = (q.shape[0], self.heads_kv, k.shape[2], self.head_dim)
        if tuple(k.shape) != expected or k.shape != v.shape:
            raise AttnlangError(f"k and v must both be {expected}, got {tuple(k.shape)} and {tuple(v.shape)}")
        if not (q.device == k.device == v.device):
            raise AttnlangError("q, k and v must be on the same device")


def _numpy(value):
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _inputs_key(inputs) -> str:
    if not inputs:
        return ""
    digest = hashlib.sha256()
    for name in sorted(inputs):
        array = np.ascontiguousarray(_numpy(inputs[name]).astype(np.int64))
        digest.update(name.encode() + str(array.shape).encode() + array.tobytes())
    return digest.hexdigest()


def _checked_inputs(pattern, inputs, length: int) -> None:
    """Clear errors for missing, unknown, short or non-integer inputs (per-batch rows too)."""
    from attnlang.reference import check_inputs
    check_inputs(pattern.ir, {name: _numpy(values) for name, values in (inputs or {}).items()}, length)


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
