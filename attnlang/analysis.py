"""Block-sparsity analysis: which tiles of the attention matrix are EMPTY, PARTIAL or FULL.

`analyze_blocks` never evaluates all N² pairs. It bounds the mask over boxes of tiles
with interval arithmetic (`attnlang.intervals`), starting from the whole matrix and
halving undecided boxes (a quadtree), so the work follows the boundary of the pattern
rather than its area. A single tile that is still undecided is refined in three steps,
cheapest first: interval bounds on 4 x 4 sub-blocks (a FULL and an EMPTY sub-block prove
PARTIAL), exact evaluation at a few witness points, and only then exact evaluation of the
whole tile. The result is sound (never EMPTY when a pair is allowed, never FULL when a
pair is masked) and exact (every tile gets its true kind); `BlockMap.stats` says how many
tiles each step decided.
"""

from __future__ import annotations

import functools
import time
import warnings
from dataclasses import dataclass, field, replace

import numpy as np

from . import ir
from .errors import AttnlangError, AttnlangWarning
from .intervals import Boxes, IntervalEvaluator, RangeMinMax
from .reference import EMPTY, FULL, PARTIAL, Evaluator, check_inputs

__all__ = ["analyze_blocks", "BlockMap", "EMPTY", "PARTIAL", "FULL"]

UNKNOWN = -1
SUBDIVISIONS = 4           # sub-blocks per side when a tile or sub-block is refined
SUBDIVISION_LEVELS = 3     # how many times undecided sub-blocks are refined again
REFINE_CHUNK = 16384       # undecided tiles refined at once
EXACT_CHUNK_PAIRS = 1 << 22  # pairs evaluated at once when a tile must be evaluated whole
DENSITY_SAMPLES = 64       # pairs sampled per partial tile by density(exact=False)
SCATTERED_WITNESSES = 64   # random pairs per tile tried when the corner witnesses decide nothing
# Memory bounds. The analysis' work follows the pattern's boundary; these cap it where the
# boundary itself is too large (a parity mask at 10^7 tokens in 16-token tiles), so a run
# either fits in a few GiB or stops with an error that names the limit, never an OOM.
MAX_OPEN_BOXES = 1 << 22   # undecided boxes (or single tiles) the quadtree may hold at once
MAX_DENSE_TILES = 1 << 30  # tiles of a dense `kinds` array (int8: 1 GiB)


def analyze_blocks(pattern: ir.PatternIR, seq_q: int, seq_k: int, heads: int = 1, block=128,
                   inputs: dict | None = None, batch: int = 0) -> "BlockMap":
    """The block map of `pattern` for the given lengths, heads and tile shape."""
    block_q, block_k = _tile_shape(block)
    for name, value in (("seq_q", seq_q), ("seq_k", seq_k), ("heads", heads)):
        _check_positive(name, value)
    start = time.perf_counter()
    checked = check_inputs(pattern, inputs, max(seq_q, seq_k), batch, (seq_q, seq_k), heads)
    check_input_indices(pattern, seq_q, seq_k, heads, (block_q, block_k), checked, batch)
    analyzer = _Analyzer(pattern, seq_q, seq_k, heads, block_q, block_k, checked, batch)
    sets = analyzer.run()
    if not len(sets.full) and not len(sets.partial):
        warn_no_pair(pattern, seq_q, seq_k, batch)
    return BlockMap(dense=None, seq_q=seq_q, seq_k=seq_k, heads=heads, block_q=block_q, block_k=block_k,
                    pattern=pattern, inputs=checked, batch=batch, stats=analyzer.stats,
                    seconds=time.perf_counter() - start, tile_sets=analyzer.tile_sets)


def sample_rows(pattern: ir.PatternIR, seq_q: int, seq_k: int, block, rows: int = 16) -> tuple[float, float]:
    """FULL and PARTIAL tiles per query-tile row, averaged over `rows` query tiles drawn from
    the map (head 0): a cheap estimate of a block map's work, for ranking layouts."""
    block_q, block_k = _tile_shape(block)
    analyzer = _Analyzer(pattern, seq_q, seq_k, 1, block_q, block_k, {}, 0)
    # drawn at random (fixed seed): evenly spaced rows alias with a grid's period
    chosen = np.sort(np.random.default_rng(0).choice(analyzer.tiles_q, min(rows, analyzer.tiles_q), replace=False))
    sets = analyzer.run(chosen)
    return float(sets.full.area().sum()) / len(chosen), len(sets.partial) / len(chosen)


def warn_no_pair(pattern: ir.PatternIR, seq_q: int, seq_k: int, batch: int = 0) -> None:
    """An `AttnlangWarning`: the mask allows nothing at these lengths. That is legal, and
    kernels handle it (output 0, LSE -inf), but rarely meant (`-D window=-5`)."""
    args = ", ".join(f"{name}={value}" for name, value in pattern.params)
    where = f"{seq_q} x {seq_k}" + (f", batch entry {batch}" if mask_depends_on_batch(pattern) else "")
    warnings.warn(f"pattern '{pattern.name}({args})' allows no (query, key) pair at {where}: every row is "
                  "fully masked (output 0, LSE -inf)", AttnlangWarning, stacklevel=3)


def _tile_shape(block) -> tuple[int, int]:
    if isinstance(block, int | np.integer) and not isinstance(block, bool):
        block = (int(block), int(block))
    if not (isinstance(block, tuple | list) and len(block) == 2
            and all(isinstance(b, int | np.integer) and not isinstance(b, bool) and b > 0 for b in block)):
        raise AttnlangError(f"block must be a positive int or a (block_q, block_k) pair, got {block!r}")
    return int(block[0]), int(block[1])


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise AttnlangError(f"{name} must be a positive int, got {value!r}")


def pairs_depend_on(pattern: ir.PatternIR, name: str) -> bool:
    """Whether the allowed pairs read variable `name` ("h", "b"): the mask, or a routing's keep."""
    roots = [pattern.mask] + ([pattern.route.keep] if pattern.route else [])
    return any(isinstance(n, ir.Var) and n.name == name for root in roots for n in ir.walk(root))


def mask_depends_on_head(pattern: ir.PatternIR) -> bool:
    return any(isinstance(n, ir.Var) and n.name == "h" for n in ir.walk(pattern.mask))


def mask_depends_on_batch(pattern: ir.PatternIR) -> bool:
    """Whether each batch entry needs its own block map: the mask reads b (per-batch inputs
    are the caller's to count, from the inputs' shape)."""
    return any(isinstance(n, ir.Var) and n.name == "b" for n in ir.walk(pattern.mask))


def input_index_ranges(pattern: ir.PatternIR, lengths: dict[str, ir.Expr]) -> list[tuple[ir.Load, ir.Expr]]:
    """Each input read of the pattern with the condition that its index is in range
    (`0 <= index < length`), innermost reads first."""
    roots = [pattern.mask, pattern.logit] + ([pattern.route.keep] if pattern.route else [])
    loads = list(dict.fromkeys(n for root in roots for n in ir.walk(root) if isinstance(n, ir.Load)))
    conditions = []
    for load in reversed(loads):
        above = ir.Binary(">=", load.index, ir.Const(0, ir.Type.INT), ir.Type.BOOL)
        below = ir.Binary("<", load.index, lengths[load.input], ir.Type.BOOL)
        conditions.append((load, ir.Binary("and", above, below, ir.Type.BOOL)))
    return conditions


def check_input_indices(pattern: ir.PatternIR, seq_q: int, seq_k: int, heads: int, block, inputs: dict,
                        batch: int = 0) -> None:
    """Raise for an input index outside its input at any pair of the matrix, masked or not.

    Kernels compute the mask and the logit of every pair of a visited tile, and `if`
    evaluates both branches, so the language asks every index to be in range everywhere.
    The proof is the block analysis of `0 <= index < length` itself: usually decided on the
    whole matrix at once (`doc[q]`), never by evaluating all pairs unless it must.
    """
    lengths = {name: ir.Const(len(values), ir.Type.INT) for name, values in inputs.items()}
    for load, condition in input_index_ranges(pattern, lengths):
        check = replace(pattern, mask=condition)
        analyzer = _Analyzer(check, seq_q, seq_k, heads, block[0], block[1], inputs, batch)
        sets = analyzer.run()
        tiles = analyzer.head_count * analyzer.tiles_q * analyzer.tiles_k
        if not len(sets.partial) and sets.full.area().sum() == tiles:
            continue
        kinds = BlockMap(None, seq_q, seq_k, heads, block[0], block[1], check, tile_sets=sets).kinds
        h, i, j = (int(x) for x in np.argwhere(kinds != FULL)[0])
        q = np.arange(i * block[0], min((i + 1) * block[0], seq_q))[:, None]
        k = np.arange(j * block[1], min((j + 1) * block[1], seq_k))[None, :]
        inside = exact_mask(check, q, k, np.int64(h), seq_q, seq_k, heads, inputs, batch)
        a, c = np.argwhere(~np.broadcast_to(inside, (len(q), k.shape[1])))[0]
        raise AttnlangError(f"index out of range for input '{load.input}' (length {len(inputs[load.input])}) "
                            f"at q={int(q[a, 0])}, k={int(k[0, c])}" + (f", h={h}" if kinds.shape[0] > 1 else "")
                            + "; every pair is evaluated, masked or not: clamp the index", load.span)


@dataclass
class TileSets:
    """The analysis' own record of a block map: boxes of FULL tiles, as the quadtree decided
    them, and the PARTIAL tiles. Their size follows the pattern's boundary, not its area, so
    the kernels' tables are built from them without scanning the map."""

    full: "_TileBoxes"
    partial: "_TileBoxes"  # single tiles
    map_heads: int  # heads of the map: 1 unless the mask reads h


def _concatenate(parts: list["_TileBoxes"]) -> "_TileBoxes":
    return _TileBoxes(*(np.concatenate([getattr(p, f) for p in parts]).astype(np.int64)
                        for f in ("h", "q0", "q1", "k0", "k1")))


@dataclass
class _TileBoxes:
    """Boxes in tile coordinates: head h, query tiles [q0, q1), key tiles [k0, k1)."""

    h: np.ndarray
    q0: np.ndarray
    q1: np.ndarray
    k0: np.ndarray
    k1: np.ndarray

    def __len__(self):
        return len(self.h)

    def select(self, where) -> "_TileBoxes":
        return _TileBoxes(self.h[where], self.q0[where], self.q1[where], self.k0[where], self.k1[where])

    def area(self) -> np.ndarray:
        return (self.q1 - self.q0) * (self.k1 - self.k0)

    def split(self) -> "_TileBoxes":
        """Halve every box along each side longer than one tile."""
        q_mid = np.where(self.q1 - self.q0 > 1, (self.q0 + self.q1) // 2, self.q1)
        k_mid = np.where(self.k1 - self.k0 > 1, (self.k0 + self.k1) // 2, self.k1)
        parts = []
        for qa, qb in ((self.q0, q_mid), (q_mid, self.q1)):
            for ka, kb in ((self.k0, k_mid), (k_mid, self.k1)):
                keep = (qb > qa) & (kb > ka)
                parts.append(_TileBoxes(self.h[keep], qa[keep], qb[keep], ka[keep], kb[keep]))
        return _TileBoxes(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("h", "q0", "q1", "k0", "k1")))


class _Analyzer:
    def __init__(self, pattern, seq_q, seq_k, heads, block_q, block_k, inputs, batch):
        self.pattern = pattern
        self.seq_q, self.seq_k = seq_q, seq_k
        self.heads = heads
        self.block_q, self.block_k = block_q, block_k
        self.inputs = inputs
        self.batch = batch
        self.head_count = heads if mask_depends_on_head(pattern) else 1
        self.tiles_q = -(-seq_q // block_q)
        self.tiles_k = -(-seq_k // block_k)
        # a block map is for one batch entry: a mask that reads b is bounded at that b
        self.constants = {"n_q": seq_q, "n_k": seq_k, "heads": heads, "b": batch}
        self.ranges = {name: RangeMinMax(values) for name, values in inputs.items()}
        self.stats = {"reasoning": 0, "sampling": 0, "exact": 0}
        self.tile_sets: TileSets | None = None  # the FULL boxes and PARTIAL tiles, once run

    def run(self, rows: np.ndarray | None = None) -> TileSets:
        """The FULL boxes and PARTIAL tiles; every other tile is EMPTY. With `rows`, only
        those query tiles' rows are analyzed (of head 0)."""
        if rows is None:
            frontier = _TileBoxes(np.arange(self.head_count), np.zeros(self.head_count, np.int64),
                                  np.full(self.head_count, self.tiles_q), np.zeros(self.head_count, np.int64),
                                  np.full(self.head_count, self.tiles_k))
        else:
            rows = np.asarray(rows, dtype=np.int64)
            frontier = _TileBoxes(np.zeros(len(rows), np.int64), rows, rows + 1, np.zeros(len(rows), np.int64),
                                  np.full(len(rows), self.tiles_k))
        leaves, full = [], []
        open_tiles = 0
        while len(frontier):
            self._check_budget(len(frontier) + open_tiles)
            verdict = self._verdict(self._token_boxes(frontier))
            decided = verdict != UNKNOWN
            self.stats["reasoning"] += int(frontier.area()[decided].sum())
            full.append(frontier.select(verdict == FULL))
            open_boxes = frontier.select(~decided)
            single = open_boxes.area() == 1
            leaves.append(open_boxes.select(single))
            open_tiles += int(single.sum())
            frontier = open_boxes.select(~single).split()
        tiles = _TileBoxes(*(np.concatenate([getattr(p, f) for p in leaves]) for f in ("h", "q0", "q1", "k0", "k1")))
        refined = np.empty(len(tiles), dtype=np.int8)
        for start in range(0, len(tiles), REFINE_CHUNK):  # chunks bound the memory of refinement
            chunk = tiles.select(slice(start, start + REFINE_CHUNK))
            refined[start:start + REFINE_CHUNK] = self._refine(chunk)
        full.append(tiles.select(refined == FULL))
        self.tile_sets = TileSets(_concatenate(full), tiles.select(refined == PARTIAL), self.head_count)
        return self.tile_sets

    def _check_budget(self, open_boxes: int) -> None:
        if open_boxes > MAX_OPEN_BOXES:
            raise AttnlangError(
                f"the block map of {self.seq_q} x {self.seq_k} tokens in {self.block_q} x {self.block_k} tiles "
                f"has more than {MAX_OPEN_BOXES:,} tiles on the pattern's boundary (tiles that need a look of "
                f"their own); the analysis stops there to bound its memory: use larger tiles or shorter "
                f"lengths")

    # -- boxes ------------------------------------------------------------------------

    def _token_boxes(self, tiles: _TileBoxes) -> Boxes:
        return Boxes(tiles.h, tiles.q0 * self.block_q, np.minimum(tiles.q1 * self.block_q, self.seq_q) - 1,
                     tiles.k0 * self.block_k, np.minimum(tiles.k1 * self.block_k, self.seq_k) - 1)

    def _verdict(self, boxes: Boxes) -> np.ndarray:
        bounds = IntervalEvaluator(boxes, self.constants, self.ranges).visit(self.pattern.mask)
        lo = np.broadcast_to(bounds.lo, (len(boxes),))
        hi = np.broadcast_to(bounds.hi, (len(boxes),))
        return np.where(lo == 1, FULL, np.where(hi == 0, EMPTY, UNKNOWN)).astype(np.int8)

    # -- single tiles -----------------------------------------------------------------

    def _refine(self, tiles: _TileBoxes) -> np.ndarray:
        """Kinds of single tiles that interval bounds on the whole tile left undecided."""
        boxes = self._token_boxes(tiles)
        has_true, has_false, all_true, all_false = self._subdivide(boxes, deep_needs_true=True)
        kinds = _kinds_from_evidence(has_true, has_false, all_true, all_false)
        self.stats["reasoning"] += int((kinds != UNKNOWN).sum())

        rest = np.flatnonzero(kinds == UNKNOWN)
        for witnesses in (self._witnesses, self._scattered_witnesses):
            if len(rest):
                seen_true, seen_false = witnesses(_select_boxes(boxes, rest))
                proven = (has_true[rest] | seen_true) & (has_false[rest] | seen_false)
                kinds[rest[proven]] = PARTIAL
                self.stats["sampling"] += int(proven.sum())
                has_true[rest], has_false[rest] = has_true[rest] | seen_true, has_false[rest] | seen_false
                rest = rest[~proven]
        if len(rest):  # what witnesses missed: refine every undecided sub-block deeper
            decided = _kinds_from_evidence(*self._subdivide(_select_boxes(boxes, rest)))
            kinds[rest] = decided
            self.stats["reasoning"] += int((decided != UNKNOWN).sum())
            rest = rest[decided == UNKNOWN]
        if len(rest):
            kinds[rest] = self._evaluate_tiles(_select_boxes(boxes, rest))
            self.stats["exact"] += len(rest)
        return kinds

    def _subdivide(self, boxes: Boxes, deep_needs_true: bool = False):
        """Interval bounds on sub-blocks: SUBDIVISIONS x SUBDIVISIONS per tile, then again
        inside still-undecided sub-blocks (SUBDIVISION_LEVELS in all). A FULL and an EMPTY
        sub-block prove a tile PARTIAL; all sub-blocks of the first level FULL (EMPTY)
        prove it FULL (EMPTY)."""
        n = len(boxes)
        has_true, has_false = np.zeros(n, bool), np.zeros(n, bool)
        all_true = all_false = None
        owner, current = np.arange(n), boxes
        for level in range(SUBDIVISION_LEVELS):
            sub, real = _split_boxes(current, SUBDIVISIONS)
            sub_owner = np.repeat(owner, SUBDIVISIONS * SUBDIVISIONS)[real]
            verdict = self._verdict(sub)
            has_true |= _any_per_owner(sub_owner, verdict == FULL, n)
            has_false |= _any_per_owner(sub_owner, verdict == EMPTY, n)
            if level == 0:
                all_true = ~_any_per_owner(sub_owner, verdict != FULL, n)
                all_false = ~_any_per_owner(sub_owner, verdict != EMPTY, n)
            undecided = ~(has_true & has_false) & ~all_true & ~all_false
            # Refine deeper only where the open sub-blocks are a boundary (at most 3/4
            # of this level's sub-blocks of the tile), as along a window's edge; a parity mask
            # such as (q - k) % 2 == 0 leaves every sub-block open, and witnesses settle it.
            open_count = np.bincount(sub_owner[verdict == UNKNOWN], minlength=n)
            thin = 4 * open_count <= 3 * np.bincount(sub_owner, minlength=n)
            larger = (sub.q_hi > sub.q_lo) | (sub.k_hi > sub.k_lo)
            # With deep_needs_true, go deeper only where a FULL sub-block exists: a missing
            # EMPTY region (a window's edge clipping the tile) shows up in smaller sub-blocks,
            # while a missing allowed region is often one diagonal (strides, dilation) that
            # no sub-block isolates and a witness point finds at once.
            deep = undecided & thin & (has_true if deep_needs_true else True)
            keep = (verdict == UNKNOWN) & deep[sub_owner] & larger
            owner, current = sub_owner[keep], _select_boxes(sub, keep)
            if not len(owner):
                break
        return has_true, has_false, all_true, all_false

    def _witnesses(self, boxes: Boxes):
        """Exact mask values at a few points per tile: a 4 x 4 grid of neighbouring
        positions at each corner and at the centre (every residue mod 2 and 4 of q and k,
        for parity and dilation masks)."""
        offsets = np.arange(4)
        q_starts = [boxes.q_lo, np.maximum(boxes.q_hi - 3, boxes.q_lo), (boxes.q_lo + boxes.q_hi) // 2]
        k_starts = [boxes.k_lo, np.maximum(boxes.k_hi - 3, boxes.k_lo), (boxes.k_lo + boxes.k_hi) // 2]
        anchors = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 2)]
        q = np.concatenate([np.repeat(q_starts[a][:, None] + offsets, 4, axis=1) for a, _ in anchors], axis=1)
        k = np.concatenate([np.tile(k_starts[b][:, None] + offsets, (1, 4)) for _, b in anchors], axis=1)
        q = np.minimum(q, boxes.q_hi[:, None])
        k = np.minimum(k, boxes.k_hi[:, None])
        values = self._exact(q, k, np.broadcast_to(boxes.h[:, None], q.shape))
        return values.any(1), ~values.all(1)

    def _scattered_witnesses(self, boxes: Boxes):
        """Exact mask values at SCATTERED_WITNESSES pairs per tile drawn at random (fixed seed):
        where the allowed pairs of a tile are not contiguous in token order (a layout's patch,
        whose rows are grid rows), the corner and centre points can all miss them."""
        rng = np.random.default_rng(len(boxes))
        u, w = rng.random((2, len(boxes), SCATTERED_WITNESSES))
        q = boxes.q_lo[:, None] + (u * (boxes.q_hi - boxes.q_lo + 1)[:, None]).astype(np.int64)
        k = boxes.k_lo[:, None] + (w * (boxes.k_hi - boxes.k_lo + 1)[:, None]).astype(np.int64)
        values = self._exact(q, k, np.broadcast_to(boxes.h[:, None], q.shape))
        return values.any(1), ~values.all(1)

    def _evaluate_tiles(self, boxes: Boxes) -> np.ndarray:
        kinds = np.empty(len(boxes), dtype=np.int8)
        chunk = max(1, EXACT_CHUNK_PAIRS // (self.block_q * self.block_k))
        rows, cols = np.arange(self.block_q), np.arange(self.block_k)
        for start in range(0, len(boxes), chunk):
            part = slice(start, start + chunk)
            # positions past a ragged end repeat the last in-range one: any/all are unchanged
            q = np.minimum(boxes.q_lo[part, None] + rows, boxes.q_hi[part, None])[:, :, None]
            k = np.minimum(boxes.k_lo[part, None] + cols, boxes.k_hi[part, None])[:, None, :]
            values = self._exact(q, k, boxes.h[part, None, None])
            kinds[part] = np.where(values.all((1, 2)), FULL, np.where(values.any((1, 2)), PARTIAL, EMPTY))
        return kinds

    def _exact(self, q, k, h) -> np.ndarray:
        return exact_mask(self.pattern, q, k, h, self.seq_q, self.seq_k, self.heads, self.inputs, self.batch)


def exact_mask(pattern: ir.PatternIR, q, k, h, seq_q, seq_k, heads, inputs, batch=0) -> np.ndarray:
    """The reference mask at arbitrary broadcastable position arrays."""
    env = {"q": q, "k": k, "h": h, "b": np.int64(batch), "n_q": np.int64(seq_q),
           "n_k": np.int64(seq_k), "heads": np.int64(heads)}
    value = Evaluator(env, inputs).visit(pattern.mask)
    return np.broadcast_to(value, np.broadcast_shapes(np.shape(q), np.shape(k), np.shape(h)))


def _kinds_from_evidence(has_true, has_false, all_true, all_false) -> np.ndarray:
    """FULL / EMPTY where every sub-block said so, PARTIAL where both kinds were seen, else UNKNOWN."""
    kinds = np.full(len(has_true), UNKNOWN, dtype=np.int8)
    kinds[all_true] = FULL
    kinds[all_false] = EMPTY
    kinds[(kinds == UNKNOWN) & has_true & has_false] = PARTIAL
    return kinds


def _any_per_owner(owner: np.ndarray, flags: np.ndarray, n: int) -> np.ndarray:
    """For each of n owners, whether any of its entries has the flag."""
    return np.bincount(owner[flags], minlength=n) > 0


def _edges(lo: np.ndarray, hi: np.ndarray, parts: int) -> np.ndarray:
    """`parts + 1` boundaries splitting [lo, hi] into nearly equal integer pieces."""
    length = hi - lo + 1
    return lo[:, None] + (length[:, None] * np.arange(parts + 1)) // parts


def _split_boxes(boxes: Boxes, parts: int) -> tuple[Boxes, np.ndarray]:
    """Each box cut into parts x parts sub-boxes (row-major), without the empty ones
    that a box shorter than `parts` tokens leaves; `real` marks which were kept."""
    q_edges = _edges(boxes.q_lo, boxes.q_hi, parts)
    k_edges = _edges(boxes.k_lo, boxes.k_hi, parts)
    sub = Boxes(
        np.repeat(boxes.h, parts * parts),
        np.repeat(q_edges[:, :-1], parts, axis=1).ravel(), np.repeat(q_edges[:, 1:] - 1, parts, axis=1).ravel(),
        np.tile(k_edges[:, :-1], (1, parts)).ravel(), np.tile(k_edges[:, 1:] - 1, (1, parts)).ravel(),
    )
    real = (sub.q_hi >= sub.q_lo) & (sub.k_hi >= sub.k_lo)
    return _select_boxes(sub, real), real


def _select_boxes(boxes: Boxes, index) -> Boxes:
    return Boxes(boxes.h[index], boxes.q_lo[index], boxes.q_hi[index], boxes.k_lo[index], boxes.k_hi[index])


# -- the block map -------------------------------------------------------------------------

@dataclass(eq=False)
class BlockMap:
    """Tile kinds of a pattern at given lengths, and the index tables kernels walk.

    `kinds` is int8 `(H', ceil(seq_q / block_q), ceil(seq_k / block_k))` of EMPTY=0,
    PARTIAL=1, FULL=2, where H' is `heads` if the mask depends on `h`, else 1. A tile cut
    by a ragged end is classified by its in-range pairs. The analysis keeps its FULL boxes
    and PARTIAL tiles (`tile_sets`) and builds the dense `kinds` only when something reads
    it, so counts and the kernels' tables cost the boundary, not the area. The tables follow FlexAttention's
    layout — per row a count, then the indices, ascending, first — except that the index
    width is the largest row count rather than the number of tiles (`to_flex` pads).
    """

    dense: np.ndarray | None  # the kinds, if given; else built from `tile_sets` when first read
    seq_q: int
    seq_k: int
    heads: int
    block_q: int
    block_k: int
    pattern: ir.PatternIR = field(repr=False)
    inputs: dict = field(default_factory=dict, repr=False)
    batch: int = 0
    stats: dict = field(default_factory=dict)
    seconds: float = 0.0
    tile_sets: TileSets | None = field(default=None, repr=False)
    layout: object = None         # the token order of the map's tiles (`attnlang.layout.Layout`); None: row-major
    layout_choice: object = None  # why, when layout="auto" chose it (`LayoutChoice`)
    layout_lengths: tuple[int, int] | None = None  # the row-major lengths a laid-out map is for

    @property
    def shape(self) -> tuple[int, int, int]:
        if self.dense is not None:
            return self.dense.shape
        return (self.tile_sets.map_heads, -(-self.seq_q // self.block_q), -(-self.seq_k // self.block_k))

    @functools.cached_property
    def kinds(self) -> np.ndarray:
        if self.dense is not None:
            return self.dense
        tiles = int(np.prod(self.shape))
        if tiles > MAX_DENSE_TILES:
            raise AttnlangError(
                f"the dense tile map would hold {tiles:,} tiles {self.shape} (more than {MAX_DENSE_TILES:,}); "
                "counts, pairs, density and the kernel tables work without it: use those, or larger tiles")
        # EMPTY is 0: np.zeros maps zeroed pages lazily, so untouched (empty) regions cost nothing
        kinds = np.zeros(self.shape, dtype=np.int8)
        full, partial = self.tile_sets.full, self.tile_sets.partial
        single = full.area() == 1
        kinds[full.h[single], full.q0[single], full.k0[single]] = FULL
        boxes = full.select(~single)
        for h, q0, q1, k0, k1 in zip(boxes.h, boxes.q0, boxes.q1, boxes.k0, boxes.k1):
            kinds[h, q0:q1, k0:k1] = FULL
        kinds[partial.h, partial.q0, partial.k0] = PARTIAL
        return kinds

    @functools.cached_property
    def counts(self) -> dict:
        if self.dense is None:
            full = int(self.tile_sets.full.area().sum())
            partial = len(self.tile_sets.partial)
            return {"empty": int(np.prod(self.shape)) - full - partial, "partial": partial, "full": full}
        values = np.bincount(self.kinds.ravel(), minlength=3)
        return {"empty": int(values[EMPTY]), "partial": int(values[PARTIAL]), "full": int(values[FULL])}

    def routed_tiles(self, schedule: str | None = None) -> int | None:
        """For a routing pattern, the most tiles a launch visits once routing has chosen, over
        the map's heads: tile-major ("tiles"), the kept tiles plus K routing blocks per unit
        over each tile row (`attnlang.routing.routed_rows`); gathered (per-token routing), the
        kept tiles plus a program of BLOCK_M rows per chosen block (`attnlang.routing.
        gathered_bound`); None: the schedule the kernel picks on an H100 at D = 128, bf16
        (`attnlang.simulator.route_schedule_for`). `counts` are the static candidates. None
        for a pattern that does not route."""
        if self.pattern.route is None:
            return None
        from .routing import check_schedule, gathered_bound, routed_rows
        check_schedule(self.pattern, schedule)
        if (schedule or self.route_schedule()) == "gathered":
            return gathered_bound(self)
        return int(routed_rows(self).sum())

    def route_schedule(self) -> str | None:
        """The schedule a kernel with this map's tiles runs a routed pattern with on an H100 at
        D = 128, bf16 (`attnlang.simulator.route_schedule_for`; block routing: "tiles"); None
        for a pattern that does not route."""
        if self.pattern.route is None:
            return None
        if self.pattern.route.query_block != 1:
            return "tiles"
        from .simulator import route_schedule_for
        return route_schedule_for(self)

    def useful_fraction(self, exact: bool = False) -> float:
        """Allowed pairs over the pairs of visited (FULL and PARTIAL) tiles: the share of a
        kernel's tile work that is not thrown away (padding of a layout counts as waste)."""
        visited = self.counts["full"] + self.counts["partial"]
        return self.pairs(exact) / (visited * self.block_q * self.block_k) if visited else 0.0

    @property
    def tile_density(self) -> float:
        """Non-empty tiles over all tiles."""
        return (self.counts["partial"] + self.counts["full"]) / int(np.prod(self.shape))

    # -- pairs ------------------------------------------------------------------------

    def _tile_sizes(self) -> tuple[np.ndarray, np.ndarray]:
        rows = np.full(self.shape[1], self.block_q, dtype=np.int64)
        cols = np.full(self.shape[2], self.block_k, dtype=np.int64)
        rows[-1] = self.seq_q - (len(rows) - 1) * self.block_q
        cols[-1] = self.seq_k - (len(cols) - 1) * self.block_k
        return rows, cols

    def pairs(self, exact: bool = True) -> float:
        """Allowed (query, key) pairs, summed over the H' heads of `kinds`.

        FULL tiles count whole and EMPTY ones not at all; PARTIAL tiles are evaluated
        exactly (`exact=True`, O(partial tiles x tile size)) or estimated from
        DENSITY_SAMPLES random pairs each (deterministic). Cached per mode. Read from the
        analysis' boxes when it made this map, so no dense map is built.
        """
        cache = self.__dict__.setdefault("_pairs", {})
        if exact not in cache:
            rows, cols = self._tile_sizes()
            sets = self.tile_sets if self.dense is None else _tile_sets_from_kinds(self.kinds)
            full, partial = sets.full, sets.partial
            row_ends, col_ends = np.concatenate([[0], np.cumsum(rows)]), np.concatenate([[0], np.cumsum(cols)])
            box_rows = row_ends[full.q1] - row_ends[full.q0]
            box_cols = col_ends[full.k1] - col_ends[full.k0]
            total = float((box_rows * box_cols).sum())
            if len(partial):
                total += self._partial_pairs(partial.h, partial.q0, partial.k0, rows, cols, exact)
            cache[exact] = total
        return cache[exact]

    def _partial_pairs(self, h, i, j, rows, cols, exact: bool) -> float:
        q_lo, k_lo = i * self.block_q, j * self.block_k
        count = 0.0
        if not exact:
            rng = np.random.default_rng(0)
            chunk = max(1, EXACT_CHUNK_PAIRS // DENSITY_SAMPLES)
            for start in range(0, len(h), chunk):
                part = slice(start, start + chunk)
                n, r, c = len(h[part]), rows[i[part]][:, None], cols[j[part]][:, None]
                q = q_lo[part, None] + (rng.random((n, DENSITY_SAMPLES)) * r).astype(np.int64)
                k = k_lo[part, None] + (rng.random((n, DENSITY_SAMPLES)) * c).astype(np.int64)
                fraction = self._mask(q, k, h[part, None]).mean(1)
                count += float((fraction * r[:, 0] * c[:, 0]).sum())
            return count
        chunk = max(1, EXACT_CHUNK_PAIRS // (self.block_q * self.block_k))
        for start in range(0, len(h), chunk):
            part = slice(start, start + chunk)
            q = q_lo[part, None, None] + np.arange(self.block_q)[None, :, None]
            k = k_lo[part, None, None] + np.arange(self.block_k)[None, None, :]
            inside = (q < self.seq_q) & (k < self.seq_k)
            values = self._mask(np.minimum(q, self.seq_q - 1), np.minimum(k, self.seq_k - 1), h[part, None, None])
            count += float((values & inside).sum())
        return count

    def _mask(self, q, k, h) -> np.ndarray:
        return exact_mask(self.pattern, q, k, h, self.seq_q, self.seq_k, self.heads, self.inputs, self.batch)

    def density(self, exact: bool = False) -> float:
        """Allowed pairs over all pairs (exact evaluation of partial tiles if `exact`)."""
        return self.pairs(exact) / (self.shape[0] * self.seq_q * self.seq_k)

    # -- index tables -----------------------------------------------------------------

    @functools.cached_property
    def _forward(self):
        return _tables(self.kinds)

    @functools.cached_property
    def _backward(self):
        return _tables(self.kinds, transpose=True)

    @property
    def kv_num_blocks(self) -> np.ndarray:
        """Partial key tiles per query tile, int32 (H', Tq)."""
        return self._forward[0][0]

    @property
    def kv_indices(self) -> np.ndarray:
        """Their key-tile indices, ascending, int32 (H', Tq, width)."""
        return self._forward[0][1]

    @property
    def full_kv_num_blocks(self) -> np.ndarray:
        return self._forward[1][0]

    @property
    def full_kv_indices(self) -> np.ndarray:
        return self._forward[1][1]

    @property
    def q_num_blocks(self) -> np.ndarray:
        """Partial query tiles per key tile (the backward pass's tables), int32 (H', Tk)."""
        return self._backward[0][0]

    @property
    def q_indices(self) -> np.ndarray:
        return self._backward[0][1]

    @property
    def full_q_num_blocks(self) -> np.ndarray:
        return self._backward[1][0]

    @property
    def full_q_indices(self) -> np.ndarray:
        return self._backward[1][1]

    def tables(self) -> dict[str, np.ndarray]:
        """Every index table by its FlexAttention name."""
        names = ["kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices",
                 "q_num_blocks", "q_indices", "full_q_num_blocks", "full_q_indices"]
        return {name: getattr(self, name) for name in names}

    @functools.cached_property
    def ragged_partial_kinds(self) -> np.ndarray:
        """The kinds with every FULL tile cut by a ragged end made PARTIAL: what kernels run.

        A FULL tile then lies wholly inside both lengths, so kernels (ours, FlexAttention's)
        skip its mask *and* its bounds checks; only the last tile row and column can change.
        """
        kinds = self.kinds
        ragged_q, ragged_k = self.seq_q % self.block_q, self.seq_k % self.block_k
        if not (ragged_q or ragged_k):
            return kinds
        kinds = kinds.copy()
        for last in ([kinds[:, -1, :]] if ragged_q else []) + ([kinds[:, :, -1]] if ragged_k else []):
            last[last == FULL] = PARTIAL
        return kinds

    @functools.cached_property
    def kernel_tables(self) -> dict:
        """What the kernels walk, per direction ("forward": rows are query tiles, "backward":
        key tiles): `[(counts, runs), (counts, indices)]`. FULL tiles come as runs of adjacent
        tiles, `runs[h, row, i] = (first, count)`; PARTIAL tiles as ascending index lists. A
        tile cut by a ragged end is PARTIAL (`ragged_partial_kinds`). Built from the analysis'
        boxes, so their size follows the boundary: one run a row for causal at any length."""
        full, partial = self._kernel_tile_sets()
        heads, tiles_q, tiles_k = self.shape
        return {direction: [_run_table(full, heads, tiles_k if transpose else tiles_q, transpose),
                            _index_table(partial, heads, tiles_k if transpose else tiles_q, transpose)]
                for direction, transpose in (("forward", False), ("backward", True))}

    def _kernel_tile_sets(self) -> tuple["_TileBoxes", "_TileBoxes"]:
        """FULL boxes and PARTIAL tiles with the tiles cut by a ragged end moved to PARTIAL."""
        sets = self.tile_sets or _tile_sets_from_kinds(self.kinds)
        full, demoted = sets.full, [sets.partial]
        for axis, ragged, tiles in (("q", self.seq_q % self.block_q, self.shape[1]),
                                    ("k", self.seq_k % self.block_k, self.shape[2])):
            if not ragged:
                continue
            last = getattr(full, f"{axis}1") == tiles
            edge = full.select(last)
            setattr(edge, f"{axis}0", np.full(len(edge), tiles - 1))
            demoted.append(_single_tiles(edge))
            setattr(full, f"{axis}1", np.where(last, tiles - 1, getattr(full, f"{axis}1")))
            full = full.select(full.area() > 0)
        return full, _concatenate(demoted)

    # -- FlexAttention ----------------------------------------------------------------

    def to_flex(self, mask_mod=None, *, q=None, k=None, static_only: bool = False, stage: str = "auto"):
        """A FlexAttention `BlockMask` built from these tables, without evaluating pairs.

        FlexAttention never skips the mask on a tile cut by a ragged end, so such tiles
        are PARTIAL here. `mask_mod` defaults to the pattern's own, printed from the IR.
        A routing pattern needs the tensors it routes by (`q=`, `k=`: the selection is made
        from them, `attnlang.routing.routed_block_mask`), or `static_only=True` for its
        static candidates. `stage`: "device" makes the selection and the tables with the
        compiled kernels' own stage (`BlockMask.from_kv_blocks`; on CPU under the Triton
        interpreter), "reference" with the reference's float64 selection, "auto" (default):
        "device" for CUDA tensors, else "reference".
        """
        import torch
        from torch.nn.attention.flex_attention import BlockMask

        if self.pattern.route is not None and not static_only:
            from .routing import refuse_mods, routed_block_mask
            if q is None or k is None:
                refuse_mods(self.pattern)
            return routed_block_mask(self, q, k, stage)
        kinds = self.ragged_partial_kinds
        if mask_mod is None:
            from .export import flex_mods
            mask_mod, _ = flex_mods(self.pattern, self.seq_q, self.seq_k, self.heads, self.inputs, static_only)
        tq, tk = kinds.shape[1:]
        # FlexAttention's index width is the number of tiles
        forward = _tables(kinds, width=tk)
        backward = _tables(kinds, transpose=True, width=tq)
        tensors = [torch.from_numpy(array)[None] for table in forward + backward for array in table]
        return BlockMask((self.seq_q, self.seq_k), *tensors,
                         BLOCK_SIZE=(self.block_q, self.block_k), mask_mod=mask_mod)


def _tile_sets_from_kinds(kinds: np.ndarray) -> TileSets:
    """Every FULL tile as a box of its own (for a map built by hand, not by the analysis)."""
    def tiles_of(kind):
        h, i, j = np.nonzero(kinds == kind)
        return _TileBoxes(h, i, i + 1, j, j + 1)
    return TileSets(tiles_of(FULL), tiles_of(PARTIAL), kinds.shape[0])


def _single_tiles(boxes: "_TileBoxes") -> "_TileBoxes":
    """The tiles of boxes one tile high or wide, one by one."""
    heights, widths = boxes.q1 - boxes.q0, boxes.k1 - boxes.k0
    sizes = heights * widths
    offset = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    q = np.repeat(boxes.q0, sizes) + offset // np.repeat(widths, sizes)
    k = np.repeat(boxes.k0, sizes) + offset % np.repeat(widths, sizes)
    return _TileBoxes(np.repeat(boxes.h, sizes), q, q + 1, k, k + 1)


def _rows_of(boxes: "_TileBoxes", transpose: bool):
    """(head, row, first, count) for every row a box covers: rows are query tiles (key tiles
    with `transpose`), and each row of a box is one run of columns."""
    lo, hi, first, stop = ((boxes.k0, boxes.k1, boxes.q0, boxes.q1) if transpose
                           else (boxes.q0, boxes.q1, boxes.k0, boxes.k1))
    heights = hi - lo
    offset = np.arange(heights.sum()) - np.repeat(np.cumsum(heights) - heights, heights)
    return (np.repeat(boxes.h, heights), np.repeat(lo, heights) + offset, np.repeat(first, heights),
            np.repeat(stop - first, heights))


def _run_table(full: "_TileBoxes", heads: int, rows: int, transpose: bool):
    """Per-row counts and (first, count) runs of FULL tiles, adjacent runs merged."""
    h, row, first, count = _rows_of(full, transpose)
    order = np.lexsort((first, row, h))
    h, row, first, count = h[order], row[order], first[order], count[order]
    key = h * rows + row
    starts_run = np.ones(len(key), dtype=bool)
    starts_run[1:] = (key[1:] != key[:-1]) | (first[1:] != first[:-1] + count[:-1])
    where = np.flatnonzero(starts_run)
    run_key, run_first = key[where], first[where]
    run_count = np.add.reduceat(count, where) if len(where) else count[:0]
    counts, position = _positions(run_key, heads * rows)
    table = np.zeros((heads, rows, max(int(counts.max(initial=0)), 1), 2), dtype=np.int32)
    table[run_key // rows, run_key % rows, position] = np.stack([run_first, run_count], axis=-1)
    return counts.reshape(heads, rows), table


def _index_table(tiles: "_TileBoxes", heads: int, rows: int, transpose: bool):
    """Per-row counts and ascending indices of single tiles."""
    row, col = (tiles.k0, tiles.q0) if transpose else (tiles.q0, tiles.k0)
    order = np.lexsort((col, row, tiles.h))
    key, col = (tiles.h * rows + row)[order], col[order]
    counts, position = _positions(key, heads * rows)
    table = np.zeros((heads, rows, max(int(counts.max(initial=0)), 1)), dtype=np.int32)
    table[key // rows, key % rows, position] = col
    return counts.reshape(heads, rows), table


def _positions(sorted_keys: np.ndarray, size: int):
    """Entries per key (int32) and each entry's position among its key's, for sorted keys."""
    counts = np.bincount(sorted_keys, minlength=size).astype(np.int32)
    firsts = np.cumsum(counts, dtype=np.int64) - counts
    return counts, np.arange(len(sorted_keys)) - firsts[sorted_keys]


TABLE_CHUNK_TILES = 1 << 22  # tiles scanned at once while building tables of a dense map
SPARSE_FRACTION = 1 / 16     # below this fraction of set tiles, tables are built from a list


def _tables(kinds: np.ndarray, transpose: bool = False, width: int | None = None):
    """Per-row counts and indices (ascending, zero-padded) of the PARTIAL and of the FULL tiles.

    Rows are query tiles, or key tiles with `transpose` (the backward pass's tables). A
    sparse map is read as a list of its set tiles, found eight at a time; a dense one
    (causal at a million tokens has 33 million FULL tiles) in chunks of rows, so memory
    beyond the result stays bounded either way.
    """
    heads, rows, cols = (kinds.shape[0], kinds.shape[2], kinds.shape[1]) if transpose else kinds.shape
    flat = _flat_nonzero(kinds, limit=int(kinds.size * SPARSE_FRACTION))
    if flat is not None:
        h, rest = np.divmod(flat, kinds.shape[1] * kinds.shape[2])
        i, j = np.divmod(rest, kinds.shape[2])
        values = kinds.reshape(-1)[flat]
        if transpose:
            order = np.argsort(h * rows + j, kind="stable")  # entries are sorted by (h, i, j)
            h, i, j, values = h[order], j[order], i[order], values[order]
        chunks = [(h, i, j, values)]
        counts = {kind: np.bincount((h * rows + i)[values == kind], minlength=heads * rows)
                  .astype(np.int32).reshape(heads, rows) for kind in (PARTIAL, FULL)}
    else:
        source = np.ascontiguousarray(kinds.transpose(0, 2, 1)) if transpose else kinds
        counts = {kind: (source == kind).sum(axis=2, dtype=np.int32) for kind in (PARTIAL, FULL)}
        chunks = _dense_chunks(source)
    tables = {}
    for kind in (PARTIAL, FULL):
        row_width = max(int(counts[kind].max(initial=0)), 1) if width is None else width
        tables[kind] = (counts[kind], np.zeros((heads, rows, row_width), dtype=np.int32))
    starts = {kind: np.concatenate([[0], np.cumsum(counts[kind].ravel(), dtype=np.int64)[:-1]])
              for kind in (PARTIAL, FULL)}
    for h, i, j, values in chunks:
        for kind in (PARTIAL, FULL):
            chosen = values == kind
            hh, ii, jj = h[chosen], i[chosen], j[chosen]
            if len(jj):
                first = starts[kind][hh[0] * rows + ii[0]]
                position = first + np.arange(len(jj)) - starts[kind][hh * rows + ii]
                tables[kind][1][hh, ii, position] = jj
    return tables[PARTIAL], tables[FULL]


def _dense_chunks(source: np.ndarray):
    """(h, row, col, kind) of the set tiles, a chunk of rows at a time, in row-major order."""
    heads, rows, cols = source.shape
    step = max(1, TABLE_CHUNK_TILES // max(cols, 1))
    for h in range(heads):
        for r0 in range(0, rows, step):
            block = source[h, r0:r0 + step]
            flat = np.flatnonzero(block)
            row, col = np.divmod(flat, cols)
            yield np.full(len(flat), h), r0 + row, col, block.reshape(-1)[flat]


def _flat_nonzero(array: np.ndarray, limit: int) -> np.ndarray | None:
    """Flat indices of the non-zero entries of a contiguous int8 array, or None if more than
    about `limit`. Reads the array as 64-bit words first, so an almost empty map costs a
    pass over one eighth as many elements."""
    flat = array.reshape(-1)
    whole = flat.size // 8 * 8
    words = np.flatnonzero(flat[:whole].view(np.uint64))
    if len(words) > limit:
        return None
    candidates = (words[:, None] * 8 + np.arange(8)).ravel()
    candidates = candidates[flat[candidates] != 0]
    return np.concatenate([candidates, whole + np.flatnonzero(flat[whole:])])
