"""Layouts: token orders in which a grid or residue pattern's tiles come out dense.

Tokens are stored row-major, so a 2D window is a few thin stripes of every tile it touches.
A `Layout` reorders queries and keys so that a kernel tile is a patch of the grid (a 16 x 8
patch of an image, a 2 x 8 x 8 cube of a video) or one residue class of a dilation. It is a
substitution into the IR (`apply`): each side's position `p` in the new order is read as its
tile index `p // B` and offset `p % B`, those as tile and in-tile coordinates per grid axis,
and those as the grid coordinate the pattern reads, so `q % W` becomes `(p // B % n) * 16 +
p % B % 16` — exact for interval bounds on a tile, where a flat index would not be. Analysis,
simulator, kernels and export then run unchanged on the permuted pattern. Axes that a tile
does not divide are padded; padding tokens are masked out (`valid`): the kernel's
permutation fills them with a copy of token 0 that the mask never reads, and drops them again.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace

import numpy as np

from . import ir
from .errors import AttnlangError
from .fold import fold_constants, fold_linear
from .ir import Const, Type

__all__ = ["Layout", "Tiling", "ROW_MAJOR", "apply", "candidates", "grid_sizes", "parse_layout"]

INT = Type.INT


def _const(value: int) -> ir.Const:
    return Const(int(value), INT)


def _binary(op: str, a: ir.Expr, b: ir.Expr, result: Type = INT) -> ir.Expr:
    return ir.Binary(op, a, b, result)


@dataclass(frozen=True)
class Tiling:
    """One side's order. Tokens `0 .. length-1` are row-major on a grid of `sizes` (outermost
    first; the first axis extended to cover `length`), cut into tiles of shape `tile`; tiles
    are enumerated with axis `tile_order[0]` outermost, tokens within a tile row-major."""

    length: int
    sizes: tuple[int, ...]
    tile: tuple[int, ...]
    tile_order: tuple[int, ...]

    @property
    def block(self) -> int:
        return math.prod(self.tile)

    @property
    def tiles_per_axis(self) -> tuple[int, ...]:
        return tuple(-(-s // t) for s, t in zip(self.sizes, self.tile))

    @property
    def padded(self) -> int:
        """Tokens in the new order, padding included: whole tiles."""
        return math.prod(self.tiles_per_axis) * self.block

    @property
    def strides(self) -> tuple[int, ...]:
        """Row-major strides of the original grid."""
        return tuple(math.prod(self.sizes[i + 1:]) for i in range(len(self.sizes)))

    def coordinates(self, position: ir.Expr) -> list[ir.Expr]:
        """Each grid coordinate of the token at `position` in this order, as IR."""
        tile, offset = _binary("//", position, _const(self.block)), _binary("%", position, _const(self.block))
        counts = self.tiles_per_axis
        coords = [None] * len(self.sizes)
        for rank, axis in enumerate(self.tile_order):
            inner = math.prod(counts[a] for a in self.tile_order[rank + 1:])
            index = tile if inner == 1 else _binary("//", tile, _const(inner))
            if rank > 0:
                index = _binary("%", index, _const(counts[axis]))
            within = math.prod(self.tile[axis + 1:])
            part = offset if within == 1 else _binary("//", offset, _const(within))
            if self.tile[axis] == 1:
                part = _const(0)
            elif axis > 0:
                part = _binary("%", part, _const(self.tile[axis]))
            coords[axis] = _binary("+", _binary("*", index, _const(self.tile[axis])), part)
        return [fold_constants(c) for c in coords]

    def valid(self, coords: list[ir.Expr]) -> ir.Expr:
        """Whether the token at these coordinates exists (padding does not)."""
        checks = [_binary("<", c, _const(s), Type.BOOL)
                  for c, s, n, t in zip(coords, self.sizes, self.tiles_per_axis, self.tile) if n * t > s]
        if math.prod(self.sizes) > self.length:  # the first axis' last row is cut
            flat = _flat(coords, self.strides)
            checks.append(_binary("<", flat, _const(self.length), Type.BOOL))
        return _conjunction(checks)

    def order(self) -> np.ndarray:
        """The original token at each position of this order, -1 for padding (int64)."""
        position = np.arange(self.padded, dtype=np.int64)
        tile, offset = position // self.block, position % self.block
        counts = self.tiles_per_axis
        token = np.zeros_like(position)
        valid = np.ones(self.padded, dtype=bool)
        for rank, axis in enumerate(self.tile_order):
            index = tile // math.prod(counts[a] for a in self.tile_order[rank + 1:]) % counts[axis]
            part = offset // math.prod(self.tile[axis + 1:]) % self.tile[axis]
            coordinate = index * self.tile[axis] + part
            valid &= coordinate < self.sizes[axis]
            token += coordinate * self.strides[axis]
        valid &= token < self.length
        return np.where(valid, token, -1)


def _flat(coords: list[ir.Expr], strides: tuple[int, ...]) -> ir.Expr:
    total = None
    for c, s in zip(coords, strides):
        term = c if s == 1 else _binary("*", c, _const(s))
        total = term if total is None else _binary("+", total, term)
    return total


def _conjunction(parts: list[ir.Expr]) -> ir.Expr:
    result = ir.TRUE
    for part in parts:
        result = part if result == ir.TRUE else _binary("and", result, part, Type.BOOL)
    return result


@dataclass(frozen=True)
class Layout:
    """A token order for queries (`q`) and keys (`k`); None on a side: row-major."""

    name: str
    q: Tiling | None = None
    k: Tiling | None = None
    kind: str = "row-major"  # "row-major", "tiles" (grid patches), "residues"

    @property
    def is_row_major(self) -> bool:
        return self.q is None and self.k is None

    def lengths(self, seq_q: int, seq_k: int) -> tuple[int, int]:
        """Tokens of each side in this order (padding included)."""
        return (self.q.padded if self.q else seq_q), (self.k.padded if self.k else seq_k)

    def __str__(self) -> str:
        return self.name


ROW_MAJOR = Layout("row-major")


def is_spec(spec, name: str) -> bool:
    """Whether `spec` spells the layout `name` ("auto", "row-major"), in any case or spacing."""
    return isinstance(spec, str) and spec.strip().lower() == name


def grid_sizes(pattern: ir.PatternIR, seq_q: int, seq_k: int, heads: int = 1) -> tuple[int, ...] | None:
    """The grid's sizes at these lengths (None without a grid, or if a size is not a constant)."""
    if not pattern.grid:
        return None
    values = {ir.Var("n_q", INT): _const(seq_q), ir.Var("n_k", INT): _const(seq_k), ir.Var("heads", INT): _const(heads)}
    sizes = [fold_constants(ir.substitute(size, values)) for _, size in pattern.grid]
    if not all(isinstance(s, Const) and s.value > 0 for s in sizes):
        return None
    return tuple(int(s.value) for s in sizes)


def _extended(sizes: tuple[int, ...], length: int) -> tuple[int, ...]:
    """The first axis is not wrapped: it grows to hold `length` tokens."""
    inner = math.prod(sizes[1:])
    return (-(-length // inner),) + sizes[1:]


def apply(pattern: ir.PatternIR, layout: Layout, seq_q: int, seq_k: int) -> ir.PatternIR:
    """The pattern on the permuted positions: same pairs, in the layout's order."""
    if layout.is_row_major:
        return pattern
    routes_regions = pattern.route is not None and pattern.route.region is not None and layout.kind == "regions"
    if pattern.route is not None and not routes_regions:
        raise AttnlangError(f"pattern '{pattern.name}' routes by content over blocks of tokens: only row-major is "
                            "supported for it")
    replacements, ranges, real = {}, {}, {}  # real: per side, whether a position is a token
    for side, tiling, length in (("q", layout.q, seq_q), ("k", layout.k, seq_k)):
        replacements[ir.Var(f"n_{side}", INT)] = _const(length)
        if tiling is None:
            continue
        atoms = [ir.Var(f"@{side}{i}", INT) for i in range(len(tiling.sizes))]
        for atom, size in zip(atoms, tiling.sizes):
            ranges[atom] = (0, size - 1)  # for real tokens; padding is masked out below
        replacements[ir.Var(side, INT)] = _flat(atoms, tiling.strides)
        coords = tiling.coordinates(ir.Var(side, INT))
        real[side] = tiling.valid(coords)
        replacements.update(zip(atoms, coords))

    def rewrite(expr: ir.Expr) -> ir.Expr:
        positions = {v: e for v, e in replacements.items() if not v.name.startswith("@")}
        on_atoms = fold_linear(fold_constants(ir.substitute(expr, positions)), ranges)
        atoms = {v: e for v, e in replacements.items() if v.name.startswith("@")}
        return fold_constants(fold_linear(ir.substitute(on_atoms, atoms), {}))  # x // a // b -> x // (a*b)

    def laid_out(expr: ir.Expr) -> ir.Expr:
        return _guarded_loads(rewrite(expr), real)

    mask = fold_constants(_conjunction(list(real.values()) + [laid_out(pattern.mask)]))
    # in the region layout each region is `block` contiguous tokens: it routes as plain blocks
    route = pattern.route and replace(pattern.route, keep=laid_out(pattern.route.keep), region=None)
    # inputs stay in token order: a position reads them at its token (rewritten above), sized by
    # the row-major lengths
    return replace(pattern, mask=mask, logit=laid_out(pattern.logit), route=route, grid=(),
                   input_lengths=(seq_q, seq_k) if pattern.inputs else None)


def _guarded_loads(expr: ir.Expr, real: dict[str, ir.Expr]) -> ir.Expr:
    """`expr` with each input index read as 0 at padding positions: a padding position has no
    token, and every pair's index must be in range, masked or not. `real`: per side ("q", "k")
    whether its position is a token; an index is guarded by the sides it reads only, so that
    `doc[q]` stays a load per row."""
    kids = tuple(_guarded_loads(kid, real) for kid in ir.children(expr))
    if isinstance(expr, ir.Load):
        read = {node.name for node in ir.walk(kids[0]) if isinstance(node, ir.Var)}
        guard = _conjunction([real[side] for side in ("q", "k") if side in read and side in real
                              and real[side] != ir.TRUE])
        index = kids[0] if guard == ir.TRUE else ir.Select(guard, kids[0], _const(0), Type.INT)
        return ir.Load(expr.input, index, expr.span, expr.type)
    return ir.replace_children(expr, kids) if kids else expr


def region_layout(pattern: ir.PatternIR, seq_q: int, seq_k: int, heads: int = 1) -> Layout:
    """The order where each grid region of a `route ..., block = (a, b, ...)` is contiguous, region
    after region (row-major over regions, tokens row-major within one): queries and keys alike.
    Every region must be whole at these lengths — no padding, since a pooled region would count it."""
    region = pattern.route.region
    sizes = grid_sizes(pattern, seq_q, seq_k, heads)
    if sizes is None:
        raise AttnlangError(f"pattern '{pattern.name}' routes over grid regions: its grid sizes must be constants")
    tilings = []
    for side, length in (("query", seq_q), ("key", seq_k)):
        tiling = Tiling(length, _extended(sizes, length), region, tuple(range(len(sizes))))
        if tiling.padded != length:
            uneven = [f"{size} (axis {i}) is not a multiple of {r}" for i, (size, r) in
                      enumerate(zip(sizes, region)) if i > 0 and size % r]
            whole = math.prod(sizes[1:]) * region[0]
            why = "; ".join(uneven) or f"the {side} length {length} is not a multiple of {whole} (whole regions)"
            raise AttnlangError(f"pattern '{pattern.name}' routes over regions {'x'.join(map(str, region))} of its "
                                f"grid {'x'.join(map(str, sizes))}: every region must be whole, but {why}")
        tilings.append(tiling)
    return Layout("regions " + "x".join(map(str, region)), *tilings, kind="regions")


# -- candidates -----------------------------------------------------------------------

def _powers_of_two(total: int, axes: int, limits: tuple[int, ...]):
    """Tile shapes of `axes` powers of two with product `total`, each at most its limit."""
    if total & (total - 1):
        return
    bits = total.bit_length() - 1
    for split in itertools.product(range(bits + 1), repeat=axes):
        if sum(split) == bits and all(1 << b <= limit for b, limit in zip(split, limits)):
            yield tuple(1 << b for b in split)


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def tile_shape_name(q_tile: tuple[int, ...], k_tile: tuple[int, ...]) -> str:
    text = "x".join(map(str, q_tile))
    return text if q_tile == k_tile else f"{text}/{'x'.join(map(str, k_tile))}"


def tile_layout(pattern: ir.PatternIR, seq_q: int, seq_k: int, q_tile, k_tile, heads: int = 1) -> Layout:
    """Grid patches: query tiles of shape `q_tile`, key tiles of shape `k_tile`."""
    sizes = grid_sizes(pattern, seq_q, seq_k, heads)
    if sizes is None:
        raise AttnlangError(f"pattern '{pattern.name}' has no grid of constant sizes: a tile-shape layout "
                            "needs one (grid (y, x) = (height, width))")
    q_tile, k_tile = tuple(q_tile), tuple(k_tile)
    for name, shape in (("query", q_tile), ("key", k_tile)):
        if len(shape) != len(sizes) or not all(isinstance(t, int) and t > 0 for t in shape):
            raise AttnlangError(f"the {name} tile shape {'x'.join(map(str, shape))} must have one positive size per "
                                f"grid axis ({', '.join(a for a, _ in pattern.grid)})")
    order = tuple(range(len(sizes)))
    return Layout(tile_shape_name(q_tile, k_tile), Tiling(seq_q, _extended(sizes, seq_q), q_tile, order),
                  Tiling(seq_k, _extended(sizes, seq_k), k_tile, order), kind="tiles")


def residue_layout(seq_q: int, seq_k: int, modulus: int, block_q: int, block_k: int) -> Layout:
    """Each residue class mod `modulus` contiguous (dilation): token i at (i // d, i % d),
    tiles of consecutive members of one class."""
    def side(length, block):
        return Tiling(length, (-(-length // modulus), modulus), (block, 1), (1, 0))
    return Layout(f"residues {modulus}", side(seq_q, block_q), side(seq_k, block_k), kind="residues")


def _residue_moduli(pattern: ir.PatternIR) -> list[int]:
    """Constant moduli d > 1 of `%` applied to something that reads both q and k."""
    found = []
    for node in ir.walk(pattern.mask):
        if (isinstance(node, ir.Binary) and node.op == "%" and isinstance(node.right, Const)
                and isinstance(node.right.value, int) and node.right.value > 1):
            names = {n.name for n in ir.walk(node.left) if isinstance(n, ir.Var)}
            if {"q", "k"} <= names and node.right.value not in found:
                found.append(int(node.right.value))
    return found


def _checked_lengths(layout: Layout, seq_q: int, seq_k: int) -> Layout:
    """A `Layout` is made for given lengths: used at others it would permute the wrong tokens."""
    for side, tiling, length in (("query", layout.q, seq_q), ("key", layout.k, seq_k)):
        if tiling is not None and tiling.length != length:
            raise AttnlangError(f"layout {layout} was made for {tiling.length} {side} tokens, not {length}: make it "
                                f"for these lengths (a spec such as '{layout.name}' is made per length)")
    return layout


def check_spec(spec, pattern: ir.PatternIR) -> None:
    """What can be checked of a layout spec before lengths are known (at `compile`)."""
    if isinstance(spec, Layout) or is_spec(spec, "auto") or is_spec(spec, "row-major"):
        return
    if not isinstance(spec, str):
        raise AttnlangError(f"layout must be 'auto', 'row-major', a tile shape such as '16x8', or 'residues D'; "
                            f"got {spec!r}")
    if pattern.route is not None:
        raise AttnlangError(f"pattern '{pattern.name}' routes by content over blocks of tokens: layouts do not "
                            "reorder those; use layout='row-major'")
    parse_layout(spec, pattern, 1 << 12, 1 << 12, *_spec_blocks(spec), heads=1)


def _spec_blocks(spec: str) -> tuple[int, int]:
    """The blocks a shape spec implies (so its syntax and axes can be checked without a block)."""
    shapes = spec.strip().lower().split("/")
    try:
        sizes = [math.prod(int(part) for part in shape.split("x")) for shape in shapes]
    except ValueError:
        return 128, 128
    return sizes[0], sizes[-1]


def has_candidates(pattern: ir.PatternIR) -> bool:
    """Whether "auto" can pick a layout besides row-major: a grid of two or more axes, or a
    `% d` of q and k, and no routing; nor runtime inputs, since the choice analyzes each layout
    and that needs the inputs' values (a named layout takes them)."""
    if pattern.inputs or pattern.route is not None:
        return False
    return len(pattern.grid) > 1 or bool(_residue_moduli(pattern))


def candidates(pattern: ir.PatternIR, seq_q: int, seq_k: int, block_q: int, block_k: int,
               heads: int = 1) -> list[Layout]:
    """Row-major, then grid patches whose sizes are powers of two with products block_q and
    block_k (key tiles nested in query tiles), then residue classes of the mask's `% d`."""
    found = [ROW_MAJOR]
    if pattern.inputs or pattern.route is not None:
        return found
    sizes = grid_sizes(pattern, seq_q, seq_k, heads)
    if sizes is not None and len(sizes) > 1:
        extended = _extended(sizes, max(seq_q, seq_k))
        limits = tuple(_next_power_of_two(s) for s in extended)
        for q_tile in _compact_shapes(block_q, extended, limits):
            for k_tile in _key_shapes(q_tile, block_k):
                found.append(tile_layout(pattern, seq_q, seq_k, q_tile, k_tile, heads))
    for modulus in _residue_moduli(pattern):
        if modulus < min(seq_q, seq_k):
            found.append(residue_layout(seq_q, seq_k, modulus, block_q, block_k))
    return found


MAX_PADDING = 1.25  # a tile shape that pads the grid by more than this is not a candidate
MAX_SHAPES = 16     # query tile shapes per grid: the least padded, then the most compact


def _compact_shapes(block: int, sizes: tuple[int, ...], limits: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Query tile shapes worth analyzing: little padding, and cube-like before thin (a grid of
    six axes has hundreds of shapes; a window is served by the compact ones)."""
    def padding(tile):
        return math.prod(-(-s // t) * t for s, t in zip(sizes, tile)) / math.prod(sizes)
    shapes = [t for t in _powers_of_two(block, len(sizes), limits) if padding(t) <= MAX_PADDING]
    return sorted(shapes, key=lambda t: (round(padding(t), 2), max(t)))[:MAX_SHAPES]


def _key_shapes(q_tile: tuple[int, ...], block_k: int) -> list[tuple[int, ...]]:
    """Key tile shapes for a query tile: the same shape, or (for smaller key tiles) the query
    tile halved along its longest axes, again until it holds `block_k` (larger: doubled along
    its shortest). Nested tiles keep each key tile inside a query tile's footprint."""
    shapes = {tuple(q_tile)}
    while math.prod(next(iter(shapes))) != block_k:
        grow = math.prod(next(iter(shapes))) < block_k
        following = set()
        for shape in shapes:
            target = min(shape) if grow else max(shape)
            for axis, extent in enumerate(shape):
                if extent == target and (grow or extent > 1):
                    following.add(shape[:axis] + (extent * 2 if grow else extent // 2,) + shape[axis + 1:])
        if not following:
            return []
        shapes = following
    return sorted(shapes)


def parse_layout(spec, pattern: ir.PatternIR, seq_q: int, seq_k: int, block_q: int, block_k: int,
                 heads: int = 1) -> Layout:
    """A `Layout` from "row-major", a tile shape "16x8" (or "16x8/8x8": query/key), or
    "residues D"; a Layout passes through."""
    if isinstance(spec, Layout):
        return _checked_lengths(spec, seq_q, seq_k)
    if not isinstance(spec, str):
        raise AttnlangError(f"layout must be 'auto', 'row-major', a tile shape such as '16x8', or 'residues D'; "
                            f"got {spec!r}")
    text = spec.strip().lower()
    if text == "row-major":
        return ROW_MAJOR
    if text.startswith("residues"):
        modulus = text.removeprefix("residues").strip()
        if not modulus.isdigit() or int(modulus) < 2:
            raise AttnlangError(f"layout '{spec}': write 'residues D' with an int D >= 2")
        return residue_layout(seq_q, seq_k, int(modulus), block_q, block_k)
    shapes = text.split("/")
    try:
        tiles = [tuple(int(part) for part in shape.split("x")) for shape in shapes]
    except ValueError:
        tiles = []
    if len(tiles) not in (1, 2):
        raise AttnlangError(f"layout '{spec}' is not 'auto', 'row-major', a tile shape such as '16x8' "
                            "(or '16x8/8x8' for query/key tiles), or 'residues D'")
    q_tile, k_tile = tiles[0], tiles[-1]
    if len(tiles) == 1 and math.prod(q_tile) == block_q != block_k:  # one shape: key tiles nested in it
        k_tile = (_key_shapes(q_tile, block_k) or [k_tile])[0]
    for name, tile, block in (("query", q_tile, block_q), ("key", k_tile, block_k)):
        if math.prod(tile) != block:
            raise AttnlangError(f"layout '{spec}': the {name} tile {'x'.join(map(str, tile))} holds "
                                f"{math.prod(tile)} tokens, but {name} tiles are {block} (block)")
    return tile_layout(pattern, seq_q, seq_k, q_tile, k_tile, heads)


# -- the choice -------------------------------------------------------------------------

FINALISTS = 2       # layouts (besides row-major) that get a full analysis and simulation
SAMPLED_ROWS = 32   # query-tile rows per candidate when ranking by sampled block maps


@dataclass
class LayoutChoice:
    """The layout `layout="auto"` picked and the simulated times that decided it."""

    layout: Layout
    seq: int
    block: tuple[int, int]
    hardware: str
    times_ms: dict           # finalist name -> (attention ms, permutation ms), forward + backward
    estimates: dict          # candidate name -> visited tiles per query-tile row (sampled)
    block_map: object = field(default=None, repr=False)  # the winner's map (batch 0), analyzed for the choice

    @property
    def reason(self) -> str:
        if not self.times_ms:
            if not self.estimates and self.layout.is_row_major:
                return "layout row-major: no other order applies (no grid, no `% d` of q and k, or runtime inputs)"
            if self.layout.is_row_major:
                return "layout row-major: its visited tiles are all FULL already (sampled rows)"
            return f"layout {self.layout}: as given"
        ranked = sorted(self.times_ms.items(), key=lambda item: sum(item[1]))
        best, (attention, permute) = ranked[0]
        others = ", ".join(f"{name} {a + p:.3f} ms" for name, (a, p) in ranked[1:])
        text = (f"layout {best}: {attention + permute:.3f} ms simulated (attention {attention:.3f} + permutation "
                f"{permute:.3f}) at N={self.seq} on {self.hardware} in {self.block[0]}x{self.block[1]} tiles")
        text += f" (next: {others})" if others else ""
        if len(self.estimates) > len(self.times_ms):
            text += f"; {len(self.estimates)} candidates ranked by sampled block maps"
        return text


def permutation_ms(layout: Layout, hw, seq_q: int, seq_k: int, batch: int, heads: int, head_dim: int,
                   dtype: str, backward: bool = True) -> float:
    """Memory time of the copies a layout adds: q, k, v in and the output out (forward); dO in
    and dq, dk, dv out (backward); each read once and written once at `efficiency.memory`."""
    if layout.is_row_major:
        return 0.0
    from .simulator import DTYPE_BYTES
    padded_q, padded_k = layout.lengths(seq_q, seq_k)
    rows_q = (2 if backward else 1) * (padded_q + seq_q)    # q in, out out (dO in, dq out)
    rows_k = (2 if backward else 1) * 2 * (padded_k + seq_k)  # k, v in (dk, dv out)
    moved = (rows_q + rows_k) * batch * heads * head_dim * DTYPE_BYTES[dtype]
    return moved / (hw.hbm_gb_per_s * 1e9 * hw.efficiency["memory"]) * 1e3


def choose_layout(pattern: ir.PatternIR, seq_q: int, seq_k: int, block: tuple[int, int], heads: int = 16,
                  head_dim: int = 128, dtype: str = "bf16", hardware="h100", batch: int = 1,
                  backward: bool = True) -> LayoutChoice:
    """The layout with the lowest simulated forward + backward time (forward alone with
    `backward=False`), permutation included:
    every candidate ranked by a sampled block map (visited tiles of SAMPLED_ROWS query-tile
    rows, priced as the simulator prices FULL and PARTIAL tiles), the best FINALISTS and
    row-major analyzed whole and simulated."""
    from .analysis import analyze_blocks, sample_rows
    from .simulator import Hardware, load_hardware, simulate, tile_seconds
    hw = hardware if isinstance(hardware, Hardware) else load_hardware(hardware)
    options = candidates(pattern, seq_q, seq_k, *block, heads=heads)
    if len(options) == 1:
        return LayoutChoice(ROW_MAJOR, seq_q, block, hw.key, {}, {})
    estimates, scores = {}, {}
    full, partial = sample_rows(pattern, seq_q, seq_k, block, SAMPLED_ROWS)
    if partial == 0:  # row-major tiles are already all FULL (or EMPTY): no order can do better
        return LayoutChoice(ROW_MAJOR, seq_q, block, hw.key, {}, {ROW_MAJOR.name: full})
    full_s, partial_s = tile_seconds(pattern, hw, block, head_dim, dtype, backward)
    for layout in options:
        permuted = apply(pattern, layout, seq_q, seq_k)
        padded_q, padded_k = layout.lengths(seq_q, seq_k)
        full, partial = sample_rows(permuted, padded_q, padded_k, block, SAMPLED_ROWS)
        estimates[layout.name] = full + partial
        rows = -(-padded_q // block[0]) * batch * heads
        scores[layout.name] = (rows * (full * full_s + partial * partial_s) * 1e3 / hw.sms
                               + permutation_ms(layout, hw, seq_q, seq_k, batch, heads, head_dim, dtype, backward))
    ranked = sorted(options[1:], key=lambda layout: scores[layout.name])
    finalists = [ROW_MAJOR] + ranked[:FINALISTS]
    times, maps = {}, {}
    for layout in finalists:
        padded_q, padded_k = layout.lengths(seq_q, seq_k)
        block_map = maps[layout.name] = analyze_blocks(apply(pattern, layout, seq_q, seq_k), padded_q, padded_k,
                                                       heads, block)
        attention = simulate(block_map, heads=heads, head_dim=head_dim, dtype=dtype, batch=batch, hardware=hw,
                             backward=backward).time_ms
        times[layout.name] = (attention, permutation_ms(layout, hw, seq_q, seq_k, batch, heads, head_dim, dtype,
                                                        backward))
    best = min(finalists, key=lambda layout: sum(times[layout.name]))
    return LayoutChoice(best, seq_q, block, hw.key, times, estimates, maps[best.name])
