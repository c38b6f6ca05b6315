"""Content routing, made explicit: block selection, the routed bound, and a routed BlockMask.

A routing pattern (`route topk(K, block = B, keep = EXPR)`) allows `static AND (selected OR
keep)`: for each query block of B tokens, the K key blocks with the highest pooled-query ·
pooled-key score among the candidates (blocks with a pair that the static mask allows and
`keep` does not) are selected, ties to the lower block index. The selection depends on the
tensors, so no consumer may stand in the static mask for it: the analysis reports the static
candidates *and* the routed bound, the simulator prices the bound plus the selection stage,
and export builds a routed `BlockMask` from q and k or refuses.
"""

from __future__ import annotations

import math

import numpy as np

from . import ir
from .errors import AttnlangError

__all__ = ["candidate_blocks", "select_blocks", "routed_rows", "routed_kinds", "selection_seconds",
           "routed_block_mask", "refuse_mods", "kernel_maps"]


def refuse_mods(pattern: ir.PatternIR) -> None:
    """Mods alone cannot express a selection by content: a clear error instead of the static mask."""
    if pattern.route is not None:
        r = pattern.route
        raise AttnlangError(
            f"pattern '{pattern.name}' routes by content (route topk({r.top}, block = {r.block})): a mask_mod "
            "cannot select blocks by the tensors' content, and the static mask alone would attend to blocks "
            "the routing drops; build the routed BlockMask from the tensors with "
            "pattern.analyze(...).to_flex(q=q, k=k), or pass static_only=True for the static candidates")


def _static_and_keep(pattern: ir.PatternIR) -> tuple[ir.PatternIR, ir.PatternIR]:
    """The candidate pattern (static AND NOT keep) and the keep pattern (static AND keep)."""
    keep = pattern.route.keep
    open_ = ir.Binary("and", pattern.mask, ir.Unary("not", keep, ir.Type.BOOL), ir.Type.BOOL)
    kept = ir.Binary("and", pattern.mask, keep, ir.Type.BOOL)
    return pattern.with_mask(open_), pattern.with_mask(kept)


def candidate_blocks(pattern: ir.PatternIR, seq_q: int, seq_k: int, heads: int, inputs=None,
                     batch: int = 0) -> np.ndarray:
    """Bool (H', query units, key blocks): routing blocks holding a candidate pair, from the
    analysis in (query unit, key block) tiles (exact, no N² work)."""
    from .analysis import EMPTY
    open_, _ = _static_and_keep(pattern)
    route = pattern.route
    return _quiet_map(open_, seq_q, seq_k, heads, (route.query_block, route.block), inputs, batch).kinds != EMPTY


def _quiet_map(pattern: ir.PatternIR, seq_q: int, seq_k: int, heads: int, block, inputs, batch: int):
    """The block map of a routing's part (candidates, kept pairs): having none is legal."""
    import warnings

    from .analysis import analyze_blocks
    from .errors import AttnlangWarning
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", AttnlangWarning)
        return analyze_blocks(pattern, seq_q, seq_k, heads, block, inputs, batch)


def kernel_maps(block_map, unit_rows: int) -> dict:
    """What the routed kernels build their tables from, by the analysis (exact): the candidates'
    kinds per (unit, key block) — per token routing per (`unit_rows` tokens, key block), whose
    PARTIAL entries the selection decides row by row — and the tile kinds of the mask and of
    mask AND keep, FULL only inside the lengths. int8 numpy arrays (map heads, rows, cols)."""
    pattern, route = block_map.pattern, block_map.pattern.route
    open_, kept = _static_and_keep(pattern)
    rows = unit_rows if route.query_block == 1 else route.query_block
    shape = (block_map.seq_q, block_map.seq_k, block_map.heads)
    candidates = _quiet_map(open_, *shape, (rows, route.block), block_map.inputs, block_map.batch)
    kept_map = _quiet_map(kept, *shape, (block_map.block_q, block_map.block_k), block_map.inputs, block_map.batch)
    return {"candidates": candidates.kinds, "static": block_map.ragged_partial_kinds,
            "kept": kept_map.ragged_partial_kinds}


def input_scores(route: ir.RouteIR, inputs_per_batch: list, seq_q: int, seq_k: int, heads: int):
    """`by = NAME`: the scores from the float block input (checked, one flattened array per batch
    entry), as float64 (B, H, units, key blocks); None when the routing scores q and k."""
    import torch
    if route.by is None:
        return None
    shape = (-(-seq_q // route.query_block), -(-seq_k // route.block))
    scores = torch.stack([torch.from_numpy(np.asarray(inputs[route.by], np.float64)).reshape(-1, *shape)
                          for inputs in inputs_per_batch])
    return scores.expand(len(inputs_per_batch), heads, *shape)


def select_blocks(route: ir.RouteIR, candidates, q, k, scores=None):
    """Bool (B, H, query units, key blocks): per query unit (a block of `route.query_block`
    tokens, or one token), the `route.top` candidates with the highest score, ties to the lower
    block index; fewer candidates than K select them all. With `top_p(P, max = K)`: the fewest
    of them, best first, whose probabilities (softmax of the unit's candidate scores) sum to at
    least P — a block is kept while the mass before it is below P. `candidates`: bool,
    broadcastable.

    A key block is summarized by `pool` — `mean` (its mean key), `max` (channel-wise max),
    `last` (its last key), `minmax` (channel-wise min and max, scored as the bound
    sum_d max(q_d min_d, q_d max_d) on q · k over the block) — and a query block by `qpool`:
    `mean` (its mean query's score) or `max` (the max of its queries' scores). With
    `share = group` (`all`) the scores of a GQA group's query heads (of all heads) are summed and
    one selection serves them, among the blocks that are candidates for any of them; each head
    keeps its own candidates only. GQA key heads serve their group's query heads. `scores`
    (B, H, units, key blocks), for `by = NAME`, replaces the pooled ones."""
    import torch
    q, k = q.detach().double(), k.detach().double()
    batch, heads, seq_q, _ = q.shape
    if scores is None:
        summary = _key_summary(k, route.block, route.pool)
        summary = tuple(s.repeat_interleave(heads // s.shape[1], dim=1) for s in summary)
        scores = _query_scores(q, summary, route)                      # (B, H, units, key blocks)
    scores = scores.to(q.device, torch.float64)
    candidates = torch.as_tensor(candidates, device=scores.device).expand(scores.shape)
    group = {"head": 1, "group": heads // k.shape[1], "all": heads}[route.share]
    shape = (batch, heads // group, group) + scores.shape[2:]
    shared_scores = scores.reshape(shape).sum(2)
    shared_candidates = candidates.reshape(shape).any(2)
    shared_scores = shared_scores.masked_fill(~shared_candidates, -math.inf)
    ranked, order = torch.sort(shared_scores, dim=-1, descending=True, stable=True)
    keep_rank = torch.arange(ranked.shape[-1], device=ranked.device) < route.top
    if route.top_p is not None:  # the fewest best candidates whose softmax mass reaches P, at most `top`
        mass = torch.softmax(ranked, dim=-1).nan_to_num(0.0)
        before = mass.cumsum(-1) - mass
        keep_rank = keep_rank & (before < route.top_p)
    selected = torch.zeros_like(shared_candidates)
    selected.scatter_(-1, order, keep_rank.expand(order.shape))
    selected &= shared_candidates
    return selected.repeat_interleave(group, dim=1) & candidates


def _blocks(x, block: int, fill: float):
    """x (B, H, N, D) as (B, H, blocks, block, D), a ragged last block filled with `fill`."""
    import torch
    batch, heads, length, dim = x.shape
    blocks = -(-length // block)
    padded = torch.full((batch, heads, blocks * block, dim), fill, dtype=x.dtype, device=x.device)
    padded[:, :, :length] = x
    return padded.view(batch, heads, blocks, block, dim)


def _key_summary(k, block: int, pool: str) -> tuple:
    """Each key block's summary: one (B, H, blocks, D) tensor, or (min, max) for `minmax`."""
    from .reference import _pool_blocks
    if pool == "mean":
        return (_pool_blocks(k, block),)
    if pool == "max":
        return (_blocks(k, block, -math.inf).amax(3),)
    if pool == "last":
        last = [min((j + 1) * block, k.shape[2]) - 1 for j in range(-(-k.shape[2] // block))]
        return (k[:, :, last],)
    return _blocks(k, block, math.inf).amin(3), _blocks(k, block, -math.inf).amax(3)


def _score(queries, summary: tuple):
    """(B, H, U, D) queries against each key block's summary: (B, H, U, blocks)."""
    import torch
    if len(summary) == 1:
        return queries @ summary[0].transpose(-1, -2)
    low, high = (s[:, :, None] for s in summary)                    # (B, H, 1, blocks, D)
    q = queries[:, :, :, None]                                        # (B, H, U, 1, D)
    return torch.maximum(q * low, q * high).sum(-1)


def _query_scores(q, summary: tuple, route: ir.RouteIR):
    from .reference import _pool_blocks
    if route.query_block == 1:
        return _score(q, summary)
    if route.qpool == "mean":
        return _score(_pool_blocks(q, route.query_block), summary)
    per_token = _score(q, summary)                                    # max over each block's queries
    return _blocks(per_token, route.query_block, -math.inf).amax(3)


# -- the routed bound -------------------------------------------------------------------

def _kept_map(block_map):
    _, kept = _static_and_keep(block_map.pattern)
    return _quiet_map(kept, block_map.seq_q, block_map.seq_k, block_map.heads,
                      (block_map.block_q, block_map.block_k), block_map.inputs, block_map.batch).kinds


def routed_rows(block_map) -> np.ndarray:
    """Per (head, query tile): the most tiles the routed kernels visit once routing has chosen,
    never more than the static map's. The kernels are tile-major: a query tile visits the kept
    tiles, and every tile that a block chosen by any of its routing units reaches — K blocks
    per unit, each over the tiles it spans. Per-token routing (`qblock = 1`) makes each of the
    tile's rows a unit, so the bound is K blocks per row (the data decide how many of them
    coincide; `benchmarks/routing.py` measures it)."""
    return _routed_rows(block_map, _kept_map(block_map))


def _overlap(length: int, tile: int) -> int:
    """The most units of `length` positions that one tile of `tile` positions overlaps (both
    aligned at 0): one more than ceil(tile / length) unless one divides the other."""
    aligned = length % tile == 0 or tile % length == 0
    return -(-tile // length) + (0 if aligned else 1)


def _routed_rows(block_map, kept_map: np.ndarray) -> np.ndarray:
    route = block_map.pattern.route
    static = (block_map.kinds != 0).sum(-1)
    kept = (kept_map != 0).sum(-1)
    kept = np.broadcast_to(kept, np.broadcast_shapes(kept.shape, static.shape))
    units = _overlap(route.query_block, block_map.block_q)   # routing units a query tile holds
    tiles_per_block = _overlap(block_map.block_k, route.block)  # key tiles one block spans
    return np.minimum(static, kept + route.top * units * tiles_per_block)


def routed_kinds(block_map, kept_only: bool = False) -> np.ndarray:
    """A tile map with each row's routed bound of tiles (what the simulator prices): the kept
    tiles, then the row's other static tiles in order. A routed tile is PARTIAL (the selection
    is read per pair) unless it lies in one routing unit and one block, whose selection is
    all or nothing: then it keeps its static kind, as the kernels' tables do. `kept_only`: the
    kept tiles alone (the tile-map half of a gathered launch; `gathered_tiles` has the rest)."""
    from .analysis import EMPTY, FULL, PARTIAL
    route = block_map.pattern.route
    static = block_map.ragged_partial_kinds
    kept_map = _kept_map(block_map)  # analyzed once, for the tiles and for the budget
    kept = np.broadcast_to(kept_map != EMPTY, static.shape)
    if kept_only:
        kept_full = np.broadcast_to(kept_map == FULL, static.shape) & (static == FULL)
        return np.where(kept, np.where(kept_full, FULL, PARTIAL), EMPTY).astype(np.int8)
    budget = _routed_rows(block_map, kept_map)
    budget = np.broadcast_to(budget, static.shape[:2])
    others = (static != EMPTY) & ~kept
    extra = np.maximum(budget - kept.sum(-1), 0)
    rank = np.cumsum(others, axis=-1)
    chosen = others & (rank <= extra[..., None])
    whole = route.query_block % block_map.block_q == 0 and route.block % block_map.block_k == 0
    kept_full = np.broadcast_to(kept_map == FULL, static.shape) & (static == FULL)
    routed_kind = np.where(static == FULL, FULL, PARTIAL) if whole else PARTIAL
    kinds = np.where(chosen, routed_kind, EMPTY)
    return np.where(kept, np.where(kept_full, FULL, PARTIAL), kinds).astype(np.int8)


SCHEDULES = ("gathered", "tiles")  # per-token routing's two schedules; block routing runs "tiles"


def check_schedule(pattern: ir.PatternIR, schedule: str | None) -> None:
    """A clear error for a schedule that is not one, or that this routing cannot run."""
    if schedule is not None and schedule not in SCHEDULES:
        raise AttnlangError(f"route_schedule must be 'gathered', 'tiles' or None, got {schedule!r}")
    if schedule == "gathered" and pattern.route.query_block != 1:
        raise AttnlangError(f"the gathered schedule is per-token routing's (qblock = 1); this pattern routes query "
                            f"blocks of {pattern.route.query_block}: use route_schedule='tiles' or None")


def _gathered_choices(block_map):
    """Per (map head, query tile, key block): whether the tile's rows may choose the block — for
    a share group, any of the group's heads' candidates (`share = group` counted as all heads:
    the map does not know the groups, and more candidates only loosen a bound) — and per query
    tile its rows."""
    from .analysis import EMPTY
    route = block_map.pattern.route
    bm = block_map.block_q
    open_, _ = _static_and_keep(block_map.pattern)
    candidates = _quiet_map(open_, block_map.seq_q, block_map.seq_k, block_map.heads, (bm, route.block),
                            block_map.inputs, block_map.batch).kinds != EMPTY
    if route.share != "head":
        candidates = np.broadcast_to(candidates.any(0, keepdims=True), candidates.shape)
    return candidates, np.minimum(bm, block_map.seq_q - np.arange(candidates.shape[1]) * bm)


def _block_tiles(block_map) -> np.ndarray:
    """Key tiles the gathered kernels visit for each key block: from its first key, BLOCK_N at a time."""
    route, bn = block_map.pattern.route, block_map.block_k
    first = np.arange(-(-block_map.seq_k // route.block)) * route.block
    return -(-(np.minimum(first + route.block, block_map.seq_k) - first) // bn)


def _launched_programs(block_map) -> int:
    """Programs a gathered launch starts per selection group (`gathered_lists`' bound on its work items)."""
    route = block_map.pattern.route
    return -(-block_map.seq_q * route.top // block_map.block_q) + -(-block_map.seq_k // route.block)


def gathered_tiles(block_map, backward: bool = True) -> dict:
    """Per-token routing's gathered kernels, as the simulator prices them: per kernel, its
    programs' FULL and PARTIAL tile counts (map heads, programs). A forward (and dQ) program
    takes BLOCK_M rows that chose one key block and visits that block's key tiles; the launch
    starts `_launched_programs` of them, the rest exiting with no tile. A dK/dV program takes
    one key tile and the programs of the blocks it overlaps. The rows a block gets are the
    expected count when each row chooses uniformly among its candidate blocks (min(top,
    candidates) of them): the data decide the real ones (`benchmarks/routing.py --schedules`
    counts them on real selections)."""
    route = block_map.pattern.route
    bm, bn = block_map.block_q, block_map.block_k
    candidates, rows = _gathered_choices(block_map)
    options = candidates.sum(-1)
    per_row = rows * np.minimum(route.top, options) / np.maximum(options, 1)
    programs = np.ceil((candidates * per_row[..., None]).sum(1) / bm - 1e-9).astype(np.int64)  # (H', blocks)
    block_tiles = _block_tiles(block_map).astype(np.float64)
    forward = np.zeros((programs.shape[0], max(_launched_programs(block_map), int(programs.sum(-1).max()))))
    key_tiles = np.zeros((programs.shape[0], -(-block_map.seq_k // bn)))
    starts = np.arange(programs.shape[1]) * route.block
    first, last = starts // bn, (np.minimum(starts + route.block, block_map.seq_k) - 1) // bn  # tiles it overlaps
    for head, counts in enumerate(programs):
        forward[head, :counts.sum()] = np.repeat(block_tiles, counts)
        for step in range(int((last - first).max()) + 1):  # each key tile: the programs of every block it overlaps
            np.add.at(key_tiles[head], np.minimum(first + step, last), np.where(first + step <= last, counts, 0))
    tiles = {"forward": (np.zeros_like(forward), forward)}
    if backward:
        tiles |= {"backward_kv": (np.zeros_like(key_tiles), key_tiles), "backward_q": (np.zeros_like(forward), forward)}
    return tiles


def gathered_bound(block_map) -> int:
    """The most tiles per-token routing's gathered schedule visits, over the map's heads: the
    kept tiles, and per key block one program of its key tiles per BLOCK_M rows that chose it,
    so at most (chosen entries / BLOCK_M + blocks with a candidate) programs of the widest
    block's tiles, where a row chooses min(top, its query tile's candidate blocks) at most
    (its share group's, `_gathered_choices`)."""
    from .analysis import EMPTY
    route = block_map.pattern.route
    candidates, rows = _gathered_choices(block_map)
    entries = (rows * np.minimum(route.top, candidates.sum(-1))).sum(-1)    # (H',)
    programs = np.ceil(entries / block_map.block_q) + candidates.any(1).sum(-1)
    kept_map = _kept_map(block_map)
    kept = int((kept_map != EMPTY).sum()) * candidates.shape[0] // kept_map.shape[0]
    return kept + int((programs * _block_tiles(block_map).max()).sum())


def gathered_workspace_bytes(route: ir.RouteIR, seq_q: int, batch: int, heads: int, head_dim: int) -> int:
    """The gathered schedule's float32 partial outputs, one per (row, choice), with their LSEs:
    the forward's peak above attention's own tensors (the backward's dQ slots are as large)."""
    return batch * heads * seq_q * route.top * (head_dim + 1) * 4


def merge_seconds(hw, route: ir.RouteIR, seq_q: int, batch: int, heads: int, head_dim: int,
                  backward: bool = True) -> float:
    """The gathered schedule's float32 partial outputs, one per (row, choice): zeroed, written
    by the kernel and read by the merge (forward), and the same for the dQ slots (backward)."""
    slots = batch * heads * seq_q * route.top * head_dim * 4
    passes = 2 if backward else 1
    return passes * 3 * slots / (hw.hbm_gb_per_s * 1e9 * hw.efficiency["memory"])


def selection_seconds(hw, route: ir.RouteIR, seq_q: int, seq_k: int, batch: int, heads: int, head_dim: int,
                      dtype: str) -> float:
    """The selection stage: pool the keys (read k once, write the block means), score each query
    block's pooled query against every key block (an MMA), keep the top K (a pass over the
    scores), and build the tables (a count, a prefix sum and a scatter per row)."""
    from .simulator import DTYPE_BYTES
    eff = hw.efficiency
    blocks_q, blocks_k = -(-seq_q // route.query_block), -(-seq_k // route.block)  # query units, key blocks
    if route.by is None:
        moved = batch * heads * (seq_k + seq_q + blocks_k + blocks_q) * head_dim * DTYPE_BYTES[dtype]
        flops = 2 * batch * heads * blocks_q * blocks_k * head_dim
    else:  # the scores are read (float64), nothing is pooled or multiplied
        moved, flops = batch * heads * blocks_q * blocks_k * 8, 0
    memory = moved / (hw.hbm_gb_per_s * 1e9 * eff["memory"])
    mma = flops / ((hw.bf16_tflops if dtype != "fp32" else hw.fp32_tflops) * 1e12 * eff["mma"])
    ops = batch * heads * blocks_q * blocks_k * (math.log2(max(route.top, 2)) + 4)  # compare-select + table
    elementwise = ops / (hw.fp32_tflops * 1e12 / 2 * eff["elementwise"])
    return memory + mma + elementwise


# -- export -------------------------------------------------------------------------------

def routed_block_mask(block_map, q, k, stage: str = "auto"):
    """FlexAttention's `BlockMask` for this routing on these tensors: the selection made from q
    and k, its mask_mod `static AND (selected OR keep)`, and only the tiles the selection (or
    keep) reaches. `stage` as `BlockMap.to_flex` says."""
    import torch
    from torch.nn.attention.flex_attention import BlockMask

    from .analysis import _tables
    from .export import flex_mods
    pattern, route = block_map.pattern, block_map.pattern.route
    if stage not in ("auto", "device", "reference"):
        raise AttnlangError(f"to_flex: stage must be 'auto', 'device' or 'reference', got {stage!r}")
    if block_map.layout is not None and not block_map.layout.is_row_major:
        raise AttnlangError(f"to_flex(q=, k=): this map of '{pattern.name}' is in the {block_map.layout} layout, so "
                            "its BlockMask would be for tokens in that order, not q's and k's; run the pattern's compiled "
                            "kernel (it permutes), or flex_attention on kernel.permute(q) and kernel.permute(k, 'k')")
    if q.shape[2] != block_map.seq_q or k.shape[2] != block_map.seq_k:
        raise AttnlangError(f"to_flex(q=, k=): the block map is for {block_map.seq_q} x {block_map.seq_k} tokens, "
                            f"the tensors have {q.shape[2]} and {k.shape[2]}")
    static_mod, _ = flex_mods(pattern.with_mask(pattern.mask), block_map.seq_q, block_map.seq_k, q.shape[1],
                              block_map.inputs)
    keep_mod, _ = flex_mods(pattern.with_mask(route.keep), block_map.seq_q, block_map.seq_k, q.shape[1],
                            block_map.inputs)
    if stage == "device" or (stage == "auto" and q.is_cuda):
        return _device_block_mask(block_map, q, k, static_mod, keep_mod)
    candidates = torch.from_numpy(candidate_blocks(pattern, block_map.seq_q, block_map.seq_k, q.shape[1],
                                                   block_map.inputs, block_map.batch))
    scores = input_scores(route, [block_map.inputs], block_map.seq_q, block_map.seq_k, q.shape[1])
    selected = select_blocks(route, candidates[None], q, k, scores)  # (B, H, query blocks, key blocks)
    chosen = selected.to(q.device)

    def mask_mod(b, h, q_idx, kv_idx):
        picked = chosen[b, h, q_idx // route.query_block, kv_idx // route.block]
        return static_mod(b, h, q_idx, kv_idx) & (picked | keep_mod(b, h, q_idx, kv_idx))

    kinds = _reached_tiles(block_map, selected.cpu().numpy())
    tq, tk = kinds.shape[-2:]
    batch, heads = kinds.shape[:2]
    flat = kinds.reshape(batch * heads, tq, tk)
    forward = _tables(flat, width=tk)
    backward = _tables(flat, transpose=True, width=tq)
    tensors = [torch.from_numpy(array).reshape(batch, heads, *array.shape[1:]) for table in forward + backward
               for array in table]
    return BlockMask((block_map.seq_q, block_map.seq_k), *tensors,
                     BLOCK_SIZE=(block_map.block_q, block_map.block_k), mask_mod=mask_mod)


def _device_block_mask(block_map, q, k, static_mod, keep_mod):
    """The routed `BlockMask` from the compiled kernels' own selection stage and tile map, on q's
    device: the chosen blocks (units x K indices) are what its mask_mod reads."""
    import torch
    from torch.nn.attention.flex_attention import BlockMask

    from attnlang.codegen.runtime import load_module
    from attnlang.codegen.template import standalone_source
    pattern, route = block_map.pattern, block_map.pattern.route
    block = (block_map.block_q, block_map.block_k)
    module = load_module(standalone_source(pattern, block), pattern.name, interpret=q.device.type != "cuda")
    maps = {name: torch.from_numpy(np.ascontiguousarray(kinds))[None].to(q.device)
            for name, kinds in kernel_maps(block_map, module.ROUTE_UNITS).items()}
    inputs = {name: torch.as_tensor(values) for name, values in block_map.inputs.items()}
    chosen = module.select(q.detach().contiguous(), k.detach().contiguous(), inputs, maps["candidates"])
    kinds = module.routed_kinds(chosen, maps["static"], maps["kept"], block_map.seq_q, block_map.seq_k, q.shape[1],
                                *block)
    share = q.shape[1] // chosen.shape[1]

    def tiles(selected):  # counts and every column index, selected ones first (FlexAttention's layout)
        order = torch.argsort((~selected).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return selected.sum(-1).to(torch.int32), order

    def mask_mod(b, h, q_idx, kv_idx):
        picked = (chosen[b, h // share, q_idx // route.query_block] == kv_idx // route.block).any(-1)
        return static_mod(b, h, q_idx, kv_idx) & (picked | keep_mod(b, h, q_idx, kv_idx))

    return BlockMask.from_kv_blocks(*tiles(kinds == 1), *tiles(kinds == 2), BLOCK_SIZE=block, mask_mod=mask_mod,
                                    seq_lengths=(block_map.seq_q, block_map.seq_k))


def _reached_tiles(block_map, selected: np.ndarray) -> np.ndarray:
    """(B, H, tiles_q, tiles_k) kinds: PARTIAL where the static map visits a tile that a
    selected routing block or a kept tile overlaps (the mask_mod decides the pairs), else EMPTY."""
    from .analysis import EMPTY, PARTIAL
    route = block_map.pattern.route
    batch, heads = selected.shape[:2]
    static = np.broadcast_to(block_map.kinds != EMPTY, (heads,) + block_map.kinds.shape[1:])
    kept = np.broadcast_to(_kept_map(block_map) != EMPTY, static.shape)
    tq, tk = static.shape[1:]
    rows = np.arange(tq)
    cols = np.arange(tk)
    # routing blocks a tile overlaps: [first, last] along each side
    unit = route.query_block
    q_first, q_last = rows * block_map.block_q // unit, ((rows + 1) * block_map.block_q - 1) // unit
    k_first, k_last = cols * block_map.block_k // route.block, ((cols + 1) * block_map.block_k - 1) // route.block
    q_last = np.minimum(q_last, selected.shape[2] - 1)
    k_last = np.minimum(k_last, selected.shape[3] - 1)
    # a 2-D prefix sum answers "any selected block in this rectangle" for every tile at once
    prefix = np.zeros((batch, heads, selected.shape[2] + 1, selected.shape[3] + 1), dtype=np.int64)
    prefix[:, :, 1:, 1:] = selected.astype(np.int64).cumsum(2).cumsum(3)
    a, b = q_first[:, None], q_last[:, None] + 1
    c, d = k_first[None, :], k_last[None, :] + 1
    hits = prefix[:, :, b, d] - prefix[:, :, a, d] - prefix[:, :, b, c] + prefix[:, :, a, c]
    reached = static[None] & ((hits > 0) | kept[None])
    return np.where(reached, PARTIAL, EMPTY).astype(np.int8)
