"""The public objects: a `Module` of patterns and a `Pattern` with its parameters bound."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import ast, ir, reference
from .checker import coerce_param, lower_pattern
from .errors import AttnlangError, Source, decode_source, did_you_mean
from .parser import parse_source
from .layout import ROW_MAJOR, Layout
from .printer import print_pattern

if TYPE_CHECKING:
    from .analysis import BlockMap

__all__ = ["Module", "Pattern", "parse", "load", "stdlib", "stdlib_dir", "check_module", "attention"]

EXACT_FIT_PAIRS = 1 << 23  # pairs of partial tiles a complexity fit evaluates exactly, per length


class Pattern:
    """A checked pattern with bound parameters: its IR, its reference mask and attention.

    Patterns are immutable; `bind(window=512)` returns a new specialized pattern.
    """

    def __init__(self, decl: ast.PatternDecl, module: "Module", params: dict | None = None):
        self.decl = decl
        self.module = module
        values = {p.name: p.default.value for p in decl.params}
        for name, value in (params or {}).items():
            values[name] = coerce_param(decl, name, value)
        self._params = values
        self.ir: ir.PatternIR = lower_pattern(decl, values, module)
        # inputs used when a call gives none (a traced mask_mod's captured tensors)
        self.default_inputs: dict = {}
        # the token order `ir` reads positions in (`with_layout`), and the lengths it is for
        self.layout: Layout = ROW_MAJOR
        self.layout_lengths: tuple[int, int] | None = None

    # -- identity ---------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.decl.name

    @property
    def params(self) -> dict:
        """Parameter name → bound value (the defaults unless rebound)."""
        return dict(self._params)

    @property
    def defaults(self) -> dict:
        return {p.name: p.default.value for p in self.decl.params}

    @property
    def doc(self) -> str:
        """The comment above the declaration."""
        return self.decl.doc

    @property
    def source(self) -> str:
        """The declaration as canonical source text."""
        return print_pattern(self.decl)

    @property
    def label(self) -> str:
        """`name(p=v, ...)`: names plots, caches and kernels."""
        args = ", ".join(f"{k}={_format_value(v)}" for k, v in self._params.items())
        return f"{self.name}({args})"

    @property
    def slug(self) -> str:
        """`name_p_v...` as an identifier: for file names and generated functions."""
        parts = [self.name] + [f"{k}_{_format_value(v)}" for k, v in self._params.items()]
        return "_".join(parts).replace(".", "p").replace("-", "m")

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.ir.inputs

    @property
    def is_routed(self) -> bool:
        return self.ir.route is not None

    @property
    def routes_regions(self) -> bool:
        """Whether it routes over grid regions (`block = (a, b, ...)`): then it is analyzed,
        simulated, compiled and referenced in the region layout, where each region is contiguous."""
        return self.is_routed and self.ir.route.region is not None and self.layout.is_row_major

    @property
    def depends_on_head(self) -> bool:
        return self.ir.uses("h")

    def bind(self, **params) -> "Pattern":
        """A copy with some parameters rebound; unknown or ill-typed ones raise `AttnlangError`."""
        if not self.layout.is_row_major:
            raise AttnlangError(f"pattern '{self.name}' is laid out ({self.layout}); bind its parameters first, "
                                "then call with_layout")
        bound = Pattern(self.decl, self.module, {**self._params, **params})
        bound.default_inputs = self.default_inputs
        return bound

    def inputs_or_defaults(self, inputs):
        """`inputs`, or the pattern's default inputs when none are given."""
        return self.default_inputs if inputs is None and self.default_inputs else inputs

    def __repr__(self) -> str:
        return f"<Pattern {self.label}>"

    def __eq__(self, other) -> bool:
        return isinstance(other, Pattern) and self.ir == other.ir

    def __hash__(self) -> int:
        return hash(self.ir)

    # -- ground truth -----------------------------------------------------------------

    def reference_mask(self, seq_q: int, seq_k: int, heads: int = 1, inputs=None, *, batch: int = 0,
                       static_only: bool = False, q=None, k=None) -> np.ndarray:
        """The dense boolean mask, shape `(heads, seq_q, seq_k)` — the ground truth.

        `inputs` maps each declared input to an int array of tokens (1-D, or 2-D per batch,
        of which row `batch` is used). A routing pattern's mask depends on content: pass
        `q` and `k` (`(B, H, N, D)` tensors), or `static_only=True` for the static part.
        """
        _check_positive("seq_q", seq_q)
        _check_positive("seq_k", seq_k)
        _check_positive("heads", heads)
        self._check_laid_out_lengths(seq_q, seq_k)
        checked = reference.check_inputs(self.ir, self.inputs_or_defaults(inputs), max(seq_q, seq_k), batch,
                                         (seq_q, seq_k), heads)
        static = reference.mask_block(self.ir, range(seq_q), range(seq_k), heads, seq_q, seq_k,
                                      checked, batch=batch)
        if not self.is_routed or static_only:
            return np.require(static, requirements=["C", "W"])  # a broadcast view is read-only
        if q is None or k is None:
            raise AttnlangError(f"pattern '{self.name}' routes by content: pass q= and k= to reference_mask, "
                                "or static_only=True for its static mask")
        if self.routes_regions:  # route in the region layout, read the mask back in token order
            laid_out, (q_order, k_order), (q_back, k_back) = self._region_orders(seq_q, seq_k, heads)
            mask = laid_out.reference_mask(seq_q, seq_k, heads, inputs, batch=batch, q=q[:, :, q_order],
                                           k=k[:, :, k_order])
            return np.ascontiguousarray(mask[:, q_back][:, :, k_back])
        import torch
        keep = reference._keep_mask(self.ir, seq_q, seq_k, heads, checked, batch)
        from .routing import input_scores
        scores = input_scores(self.ir.route, [checked], seq_q, seq_k, heads)
        routed = reference.routed_mask(self.ir.route, torch.from_numpy(np.array(static))[None],
                                       torch.from_numpy(keep)[None], q[batch:batch + 1], k[batch:batch + 1],
                                       scores=scores)
        return routed[0].cpu().numpy()

    # -- layouts ------------------------------------------------------------------------

    def _check_laid_out_lengths(self, seq_q: int, seq_k: int) -> None:
        """A laid-out pattern reads positions of its own order, at its layout's lengths only."""
        if self.layout.is_row_major:
            return
        padded = self.layout.lengths(*self.layout_lengths)
        if (seq_q, seq_k) != padded:
            raise AttnlangError(f"pattern '{self.name}' is laid out ({self.layout}) for {self.layout_lengths[0]} x "
                                f"{self.layout_lengths[1]} tokens: its positions are {padded[0]} x {padded[1]} in the "
                                f"layout's order, not {seq_q} x {seq_k}")

    def _region_orders(self, seq_q: int, seq_k: int, heads: int = 1):
        """This pattern in its region layout, each side's order into it and the order back."""
        from .layout import region_layout
        layout = region_layout(self.ir, seq_q, seq_k, heads)
        orders = tuple(tiling.order() for tiling in (layout.q, layout.k))
        return self.with_layout(layout, seq_q, seq_k), orders, tuple(np.argsort(order) for order in orders)

    def with_layout(self, layout, seq_q: int, seq_k: int | None = None, block=(128, 64), *, heads: int = 16,
                    hardware="h100") -> "Pattern":
        """This pattern on tokens reordered by `layout` (`attnlang.layout`): "row-major", a tile
        shape such as "16x8" (query/key: "16x8/8x8"), "residues D", "auto" (the simulator's
        choice at these lengths, `block` and `hardware`), or a `Layout`. Its `ir` reads
        positions in the new order: analyze, reference and compile it at
        `layout.lengths(seq_q, seq_k)` (whole tiles; padding is masked out)."""
        from .layout import apply
        seq_k = seq_q if seq_k is None else seq_k
        chosen = self.choose_layout(layout, seq_q, seq_k, block, heads=heads, hardware=hardware).layout
        if chosen.is_row_major:
            return self
        if not self.layout.is_row_major:
            raise AttnlangError(f"pattern '{self.name}' is already laid out ({self.layout})")
        laid_out = copy.copy(self)
        laid_out.ir = apply(self.ir, chosen, seq_q, seq_k)
        laid_out.layout, laid_out.layout_lengths = chosen, (seq_q, seq_k)
        return laid_out

    def choose_layout(self, layout, seq_q: int, seq_k: int | None = None, block=(128, 64), *, heads: int = 16,
                      head_dim: int = 128, dtype: str = "bf16", hardware="h100", backward: bool = True):
        """A `LayoutChoice`: for "auto", the simulated choice (`choice.reason` says why); for any
        other spec, that layout."""
        from .analysis import _tile_shape
        from .layout import LayoutChoice, choose_layout, is_spec, parse_layout
        seq_k = seq_q if seq_k is None else seq_k
        block = _tile_shape(block)
        if self.routes_regions:  # its regions are blocks only in their own order
            from .layout import region_layout
            return LayoutChoice(region_layout(self.ir, seq_q, seq_k, heads), seq_q, block, str(hardware), {}, {})
        if is_spec(layout, "auto"):
            return choose_layout(self.ir, seq_q, seq_k, block, heads, head_dim, dtype, hardware, backward=backward)
        chosen = parse_layout(layout, self.ir, seq_q, seq_k, *block, heads=heads)
        return LayoutChoice(chosen, seq_q, block, str(hardware), {}, {})

    # -- analysis and export ------------------------------------------------------------

    def analyze(self, seq_q: int, seq_k: int | None = None, heads: int = 1, block=128, inputs=None,
                *, batch: int = 0, layout="row-major", hardware="h100") -> "BlockMap":
        """The block map: which tiles are EMPTY / PARTIAL / FULL, exactly, without N² work.

        `block` is an int or a `(block_q, block_k)` pair; `inputs` as for `reference_mask`.
        For a routing pattern this is the static map the routing chooses from. With a
        `layout` ("auto", a tile shape such as "16x8", "residues D"; see `with_layout`) the
        map is of the permuted tokens: its tiles, counts and pairs refer to that order, and
        `bm.layout` (and `bm.layout_choice`) say which; a `LayoutChoice` is taken as made (its map reused).
        """
        from .analysis import analyze_blocks
        from .layout import LayoutChoice, is_spec
        seq_k = seq_q if seq_k is None else seq_k
        choice = None
        if not is_spec(layout, "row-major") or self.routes_regions:
            choice = layout if isinstance(layout, LayoutChoice) else self.choose_layout(
                layout, seq_q, seq_k, block, heads=heads, hardware=hardware)
        if choice is not None and not choice.layout.is_row_major:
            if choice.block_map is not None and batch == 0:  # the choice analyzed it already
                block_map = choice.block_map
            else:
                laid_out = self.with_layout(choice.layout, seq_q, seq_k, block)
                block_map = laid_out.analyze(*choice.layout.lengths(seq_q, seq_k), heads, block, inputs, batch=batch)
            block_map.layout, block_map.layout_choice = choice.layout, choice
            block_map.layout_lengths = (seq_q, seq_k)
            return block_map
        self._check_laid_out_lengths(seq_q, seq_k)
        block_map = analyze_blocks(self.ir, seq_q, seq_k, heads, block, self.inputs_or_defaults(inputs), batch)
        block_map.layout, block_map.layout_choice = self.layout, choice
        block_map.layout_lengths = self.layout_lengths  # a laid-out pattern's map is of permuted tokens
        return block_map

    def complexity(self, fit_lengths: tuple[int, ...] = (2048, 4096, 8192, 16384), heads: int = 8):
        """Allowed pairs at n_q = n_k = n: a sympy closed form in n and the parameters where
        one can be derived (see `attnlang.complexity`), else a growth exponent fitted to the
        block map's pair counts at `fit_lengths` (averaged over `heads` for per-head masks)."""
        from .checker import lower_pattern
        from .complexity import Complexity, NotDerivable, big_o, derive_pairs, fitted_exponent
        if not self.layout.is_row_major:  # pairs do not depend on the order: count them as written
            return Pattern(self.decl, self.module, self._params).complexity(fit_lengths, heads)
        if self.is_routed:
            r = self.ir.route
            return Complexity(self.label, "bound", f"O(n*{r.top}*{r.block}) + kept pairs",
                              reason=f"routing keeps at most {r.top} blocks of {r.block} per query block")
        try:
            # the pattern lowered with its values already, so what fails here is only the symbols
            symbolic = lower_pattern(self.decl, self._params, self.module, symbolic=True)
            pairs, valid_from = derive_pairs(symbolic, self._params)
            return Complexity(self.label, "derived", big_o(pairs, self._params), pairs=pairs, valid_from=valid_from,
                              params=tuple(self._params.items()))
        except NotDerivable as why:
            reason = str(why)
        except AttnlangError as why:
            reason = why.message
        if self.inputs:
            return Complexity(self.label, "input-dependent", "depends on the runtime inputs", reason=reason)
        counts = {}
        for length in fit_lengths:
            block_map = self.analyze(length, heads=heads, block=128)
            # exact where affordable: a 64-pair sample per tile is noise on a few dozen tiles
            exact = block_map.counts["partial"] * 128 * 128 <= EXACT_FIT_PAIRS
            counts[length] = block_map.pairs(exact=exact) / block_map.shape[0]
        exponent, label = fitted_exponent(counts)
        return Complexity(self.label, "fitted", label, exponent=exponent, fitted_lengths=tuple(fit_lengths),
                          reason=reason)

    def compile(self, heads: int | None = None, head_dim: int | None = None, heads_kv: int | None = None,
                dtype=None, block=64, *, tune_seq: int = 16384, hardware="h100", layout="auto",
                route_schedule: str | None = None):
        """A fused Triton kernel (forward and backward) for this pattern: an `AttentionKernel`.

        `kernel(q, k, v, inputs=None, scale=None, return_lse=False)` takes heads, GQA groups,
        head dim and dtype from the tensors; any of `heads`, `head_dim`, `heads_kv`, `dtype`
        given here is a pin the tensors must match. Its block tables are built for each
        length on first use. Kernels are cached by IR, pins and block; `kernel.source` is the
        generated Triton code. `block="auto"` picks the tile shape with the lowest simulated
        time at `tune_seq` on `hardware` (for the pinned head count and dim, else 16 and 128,
        bf16); `kernel.block_choice` says why.

        `layout` reorders tokens so that a `grid` or `% d` pattern's tiles are dense ("auto":
        the lowest simulated time with the permutation counted, chosen per length on first use;
        "row-major"; a tile shape such as "16x8"; "residues D"; see `with_layout`). Where a
        layout can apply, the result is a `LayoutKernel`: same call, plus `permute`,
        `unpermute`, `permuted=True`, `layout_for(seq)` and `layout_choice.reason` (the
        choice at the last length it ran or was asked for).

        `route_schedule` (per-token routing): "gathered" (key-block-major), "tiles"
        (tile-major), or None: per length, the faster on `hardware` by the simulator, but
        tile-major past a quarter of the device's memory (`kernel.schedule_for(q, k)` says which).
        """
        import torch

        from attnlang.codegen.runtime import AttentionKernel, LayoutKernel

        from .layout import is_spec
        choice = None
        if block == "auto":
            from .simulator import choose_block
            names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
            joint = "auto" if self._layout_applies(layout) and is_spec(layout, "auto") else "row-major"
            choice = choose_block(self, tune_seq, heads or 16, head_dim or 128, names.get(dtype, "bf16"), hardware,
                                  layout=joint)
            block = choice.block
        from .layout import check_spec
        check_spec(layout, self.ir)
        if self.is_routed:
            from .routing import check_schedule
            check_schedule(self.ir, route_schedule)
        elif route_schedule is not None:
            raise AttnlangError(f"pattern '{self.name}' does not route: route_schedule applies to routed patterns")
        if self._layout_applies(layout):
            kernel = LayoutKernel(self, layout, heads, head_dim, heads_kv, dtype, block, hardware, route_schedule)
            kernel.block_choice = choice
            return kernel
        key = (self.ir, heads, head_dim, heads_kv, dtype, block if isinstance(block, int) else tuple(block),
               route_schedule, str(hardware))
        if key not in _KERNELS:
            _KERNELS[key] = AttentionKernel(self, heads, head_dim, heads_kv, dtype, block, route_schedule, hardware)
            _KERNELS[key].pattern = self  # default inputs travel with the pattern object
        kernel = _KERNELS[key]
        if choice is not None:
            kernel.block_choice = choice
        return kernel

    def _layout_applies(self, layout) -> bool:
        """Whether `layout` can reorder this pattern's tokens ("auto": it has a grid or a `% d`)."""
        from .layout import has_candidates, is_spec
        if self.routes_regions:
            return True
        if not self.layout.is_row_major or is_spec(layout, "row-major"):
            return False
        if is_spec(layout, "auto"):
            return has_candidates(self.ir)
        return True

    def flex_mods(self, seq_q: int | None = None, seq_k: int | None = None, heads: int | None = None,
                  inputs=None, *, static_only: bool = False):
        """`(mask_mod, score_mod)` for FlexAttention, printed from the IR as torch code.

        Patterns that read `n_q`, `n_k` or `heads` need those values; patterns with inputs
        need them as int arrays or tensors. `flex_source` shows the code.
        """
        from .export import flex_mods
        return flex_mods(self.ir, seq_q, seq_k, heads, self.inputs_or_defaults(inputs), static_only)

    def flex_source(self, seq_q: int | None = None, seq_k: int | None = None, heads: int | None = None, *,
                    static_only: bool = False) -> str:
        """The Python source of `flex_mods`: a readable module with `mask_mod` and `score_mod`."""
        from .export import flex_source
        return flex_source(self.ir, seq_q, seq_k, heads, static_only)

    def reference_attention(self, q, k, v, inputs=None, scale=None, return_lse: bool = False, selection=None):
        """Dense softmax attention with this pattern's mask, bias and score (the oracle).

        q: `(B, H, Nq, D)`; k, v: `(B, Hkv, Nk, D)`, Hkv dividing H. Float64 inputs are
        computed in float64, others in float32; the result has q's dtype. Fully masked rows
        give 0 (and LSE -inf with `return_lse=True`); gradients flow through torch autograd.
        A routing pattern selects from q and k, or attends to `selection` (bool `(B, H,
        query units, key blocks)`, e.g. `kernel.selection(q, k)`), still within its candidates.
        """
        if self.routes_regions:  # route in the region layout, results back in token order
            laid_out, (q_order, k_order), (q_back, _) = self._region_orders(q.shape[2], k.shape[2], q.shape[1])
            out, lse = laid_out.reference_attention(q[:, :, q_order], k[:, :, k_order], v[:, :, k_order], inputs,
                                                    scale, True, selection)
            out, lse = out[:, :, q_back], lse[:, :, q_back]
            return (out, lse) if return_lse else out
        return reference.reference_attention(self.ir, q, k, v, self.inputs_or_defaults(inputs), scale, return_lse,
                                             selection)


_KERNELS: dict = {}


def attention(q, k, v, pattern: "Pattern", *, inputs=None, scale=None, return_lse: bool = False, block=64):
    """`pattern`'s attention through its fused kernel: heads, GQA groups, head dim and dtype
    from the tensors, the kernel compiled once per pattern and block (`Pattern.compile`)."""
    if not isinstance(pattern, Pattern):
        raise AttnlangError(f"attention() takes a Pattern as its fourth argument, got {type(pattern).__name__}")
    return pattern.compile(block=block)(q, k, v, inputs=inputs, scale=scale, return_lse=return_lse)


def _format_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise AttnlangError(f"{name} must be a positive int, got {value!r}")


class Module:
    """The patterns of one or more source files. `module["causal"]` is a `Pattern`."""

    def __init__(self, decls: list[ast.PatternDecl], fallback: "Module | None" = None):
        self._decls: dict[str, ast.PatternDecl] = {}
        for decl in decls:
            if decl.name in self._decls:
                first = self._decls[decl.name].span
                raise AttnlangError(f"pattern '{decl.name}' is defined twice (first at "
                                    f"{first.filename}:{first.line})", decl.span)
            self._decls[decl.name] = decl
        self._fallback = fallback
        self._patterns: dict[str, Pattern] = {}

    def resolve(self, name: str) -> ast.PatternDecl | None:
        """The declaration `use NAME` refers to: this module's first, then the standard library."""
        if name in self._decls:
            return self._decls[name]
        return self._fallback.resolve(name) if self._fallback else None

    def visible_names(self) -> list[str]:
        """Every pattern `use` can reach from here (for "did you mean")."""
        return list(self._decls) + (self._fallback.visible_names() if self._fallback else [])

    def names(self) -> list[str]:
        """The names of the patterns declared in this module, in source order."""
        return list(self._decls)

    def __getitem__(self, name: str) -> Pattern:
        if name not in self._decls:
            raise AttnlangError(f"no pattern '{name}'{did_you_mean(name, self._decls)} "
                                f"(patterns here: {', '.join(self._decls) or 'none'})")
        if name not in self._patterns:
            self._patterns[name] = Pattern(self._decls[name], self)
        return self._patterns[name]

    def __contains__(self, name: str) -> bool:
        return name in self._decls

    def __iter__(self):
        return (self[name] for name in self._decls)

    def __len__(self) -> int:
        return len(self._decls)

    def __repr__(self) -> str:
        return f"<Module {', '.join(self._decls)}>"


def check_module(module: Module) -> list[AttnlangError]:
    """Check every pattern with its defaults; return the errors (one per failing pattern)."""
    errors = []
    for name in module.names():
        try:
            module[name]
        except AttnlangError as err:
            errors.append(err)
    return errors


def _module_from_sources(sources: list[Source], fallback: Module | None) -> Module:
    decls: list[ast.PatternDecl] = []
    for source in sources:
        decls.extend(parse_source(source).patterns)
    return Module(decls, fallback)


def parse(text: str | bytes, filename: str = "<string>", *, check: bool = True) -> Module:
    """Parse and check a program (`str`, or UTF-8 `bytes`); `use` and pattern calls also see
    the standard library."""
    if isinstance(text, bytes | bytearray | memoryview):
        source = decode_source(text, filename)
    elif isinstance(text, str):
        source = Source(text, filename)
    else:
        raise AttnlangError(f"parse expects the program text as str or UTF-8 bytes, got {type(text).__name__}")
    module = _module_from_sources([source], stdlib())
    if check:
        errors = check_module(module)
        if errors:
            raise errors[0]
    return module


def load(path, *, check: bool = True) -> Module:
    """Parse and check the `.attn` file at `path`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise AttnlangError(f"cannot read {path}: {err.strerror or err}") from None
    return parse(data, str(path), check=check)


def stdlib_dir() -> Path:
    """The folder holding the standard library's `.attn` files (installed or in a checkout)."""
    installed = Path(__file__).parent / "patterns"
    if installed.is_dir():
        return installed
    return Path(__file__).parent.parent / "patterns"


@functools.cache
def stdlib() -> Module:
    """Every pattern of the standard library (`patterns/*.attn`) in one module."""
    files = sorted(stdlib_dir().glob("*.attn"))
    sources = [Source(f.read_text(), str(f.relative_to(stdlib_dir().parent))) for f in files]
    return _module_from_sources(sources, None)
