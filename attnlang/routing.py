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
           "routed_block_mask", "refuse_mods"]


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
    base = dict(name=pattern.name, params=pattern.params, logit=pattern.logit, inputs=pattern.inputs)
    open_ = ir.Binary("and", pattern.mask, ir.Unary("not", keep, ir.Type.BOOL), ir.Type.BOOL)
    kept = ir.Binary("and", pattern.mask, keep, ir.Type.BOOL)
    return ir.PatternIR(mask=open_, **base), ir.PatternIR(mask=kept, **base)


def candidate_blocks(pattern: ir.PatternIR, seq_q: int, seq_k: int, heads: int, inputs=None,
                     batch: int = 0) -> np.ndarray:
    """Bool (H', ceil(seq_q / B), ceil(seq_k / B)): routing blocks holding a candidate pair,
    from the analysis at the routing block (exact, no N² work)."""
    from .analysis import EMPTY, analyze_blocks
    open_, _ = _static_and_keep(pattern)
    block = pattern.route.block
    with np.errstate(all="ignore"):
        kinds = analyze_blocks(open_, seq_q, seq_k, heads, block, inputs, batch).kinds
    return kinds != EMPTY


def select_blocks(route: ir.RouteIR, candidates, q, k):
    """Bool (B, H, query blocks, key blocks): the top `route.top` candidates per query block by
    pooled q · pooled k (mean over each block's tokens; GQA key heads shared), ties to the lower
    block index; fewer candidates than K select them all. `candidates`: bool, broadcastable."""
    import torch

    from .reference import _pool_blocks
    pooled_q = _pool_blocks(q.detach().double(), route.block)
    pooled_k = _pool_blocks(k.detach().double(), route.block)
    if pooled_k.shape[1] != pooled_q.shape[1]:
        pooled_k = pooled_k.repeat_interleave(pooled_q.shape[1] // pooled_k.shape[1], dim=1)
    scores = pooled_q @ pooled_k.transpose(-1, -2)
    candidates = torch.as_tensor(candidates, device=scores.device).expand(scores.shape)
    scores = scores.masked_fill(~candidates, -math.inf)
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :route.top]
    selected = torch.zeros_like(candidates)
    selected.scatter_(-1, order, True)
    return selected & candidates


# -- the routed bound -------------------------------------------------------------------

def _kept_map(block_map):
    from .analysis import analyze_blocks
    _, kept = _static_and_keep(block_map.pattern)
    with np.errstate(all="ignore"):
        return analyze_blocks(kept, block_map.seq_q, block_map.seq_k, block_map.heads,
                              (block_map.block_q, block_map.block_k), block_map.inputs, block_map.batch).kinds


def routed_rows(block_map) -> np.ndarray:
    """Per (head, query tile): at most this many tiles are visited once routing has chosen —
    the kept tiles plus K routing blocks for every routing block row the tile overlaps, each
    over as many tiles as it spans, never more than the static map's."""
    route = block_map.pattern.route
    static = (block_map.kinds != 0).sum(-1)
    kept = (_kept_map(block_map) != 0).sum(-1)
    kept = np.broadcast_to(kept, np.broadcast_shapes(kept.shape, static.shape))
    rows_of = -(-block_map.block_q // route.block) + (route.block % block_map.block_q != 0)
    tiles_per_block = -(-route.block // block_map.block_k) + (route.block % block_map.block_k != 0)
    return np.minimum(static, kept + route.top * rows_of * tiles_per_block)


def routed_kinds(block_map) -> np.ndarray:
    """A tile map with each row's routed bound of tiles (what the simulator prices): the kept
    tiles, then the row's other static tiles in order, all PARTIAL (the routed mask is evaluated)."""
    from .analysis import EMPTY, PARTIAL
    static = block_map.kinds
    kept = np.broadcast_to(_kept_map(block_map) != EMPTY, static.shape)
    budget = routed_rows(block_map)
    budget = np.broadcast_to(budget, static.shape[:2])
    others = (static != EMPTY) & ~kept
    extra = np.maximum(budget - kept.sum(-1), 0)
    rank = np.cumsum(others, axis=-1)
    chosen = kept | (others & (rank <= extra[..., None]))
    return np.where(chosen, PARTIAL, EMPTY).astype(np.int8)


def selection_seconds(hw, route: ir.RouteIR, seq_q: int, seq_k: int, batch: int, heads: int, head_dim: int,
                      dtype: str) -> float:
    """The selection stage: pool the keys (read k once, write the block means), score each query
    block's pooled query against every key block (an MMA), keep the top K (a pass over the
    scores), and build the tables (a count, a prefix sum and a scatter per row)."""
    from .simulator import DTYPE_BYTES
    eff = hw.efficiency
    blocks_q, blocks_k = -(-seq_q // route.block), -(-seq_k // route.block)
    moved = batch * heads * (seq_k + seq_q + blocks_k + blocks_q) * head_dim * DTYPE_BYTES[dtype]
    memory = moved / (hw.hbm_gb_per_s * 1e9 * eff["memory"])
    flops = 2 * batch * heads * blocks_q * blocks_k * head_dim
    mma = flops / ((hw.bf16_tflops if dtype != "fp32" else hw.fp32_tflops) * 1e12 * eff["mma"])
    ops = batch * heads * blocks_q * blocks_k * (math.log2(max(route.top, 2)) + 4)  # compare-select + table
    elementwise = ops / (hw.fp32_tflops * 1e12 / 2 * eff["elementwise"])
    return memory + mma + elementwise


# -- export -------------------------------------------------------------------------------

def routed_block_mask(block_map, q, k):
    """FlexAttention's `BlockMask` for this routing on these tensors: the selection made from q
    and k, its mask_mod `static AND (selected OR keep)`, and only the tiles the selection (or
    keep) reaches."""
    import torch
    from torch.nn.attention.flex_attention import BlockMask

    from .analysis import _tables
    from .export import flex_mods
    pattern, route = block_map.pattern, block_map.pattern.route
    if q.shape[2] != block_map.seq_q or k.shape[2] != block_map.seq_k:
        raise AttnlangError(f"to_flex(q=, k=): the block map is for {block_map.seq_q} x {block_map.seq_k} tokens, "
                            f"the tensors have {q.shape[2]} and {k.shape[2]}")
    candidates = torch.from_numpy(candidate_blocks(pattern, block_map.seq_q, block_map.seq_k, q.shape[1],
                                                   block_map.inputs, block_map.batch))
    selected = select_blocks(route, candidates[None], q, k)  # (B, H, query blocks, key blocks)
    static_mod, _ = flex_mods(_plain(pattern, pattern.mask), block_map.seq_q, block_map.seq_k, q.shape[1],
                              block_map.inputs)
    keep_mod, _ = flex_mods(_plain(pattern, route.keep), block_map.seq_q, block_map.seq_k, q.shape[1],
                            block_map.inputs)
    chosen = selected.to(q.device)

    def mask_mod(b, h, q_idx, kv_idx):
        picked = chosen[b, h, q_idx // route.block, kv_idx // route.block]
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


def _plain(pattern: ir.PatternIR, mask: ir.Expr) -> ir.PatternIR:
    return ir.PatternIR(pattern.name, pattern.params, mask, pattern.logit, pattern.inputs)


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
    q_first, q_last = rows * block_map.block_q // route.block, ((rows + 1) * block_map.block_q - 1) // route.block
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
