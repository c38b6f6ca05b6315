# <attnlang:header>
# The attnlang kernel template. As it stands it is a working module for dense attention;
# attnlang generates a pattern's module by replacing the two marked regions of this file:
# this header, and the pattern region below (its constants and its _mask, _logit2, _dlogit
# and _indices_in_range functions). Nothing else is spliced.
# </attnlang:header>
"""Block-sparse flash attention, forward and backward, for one attention pattern.

Glossary:
    q_pos, k_pos   token positions of the tile, (BLOCK_M, 1) and (1, BLOCK_N), int32
    off_b, off_h   batch entry and (query) head of the program; off_kvh its key/value head
    qk             q·k of the tile (float32)
    score          the logit in log2 units: qk * sm_scale * log2(e), so that exp2 gives
                   softmax's exp with the scale folded into one multiply
    _logit2        the pattern's logit transform, in those units (the identity when it has none)
    _dlogit        d logit / d score, natural units, as a function of the log2-unit score
    m_i, l_i, acc  running row maximum (log2 units), row sum of exp2, output accumulator
    FULL_*/PART_*  block tables, one row per (map batch, map head, tile row): a count, then
                   for FULL tiles runs of adjacent tiles (first, count), for PARTIAL tiles
                   their indices, ascending. FULL tiles lie wholly inside both lengths and
                   allow every pair: no mask, no bounds, no masked loads. PARTIAL tiles (a
                   tile cut by a ragged end is one) evaluate the mask and the bounds.
    MAP_HEADS      HEADS when the mask (or a routing's keep) reads h, or the tables are a
                   selection's; else 1 (rows of the block tables)
    MAP_BATCH      batch entries with their own block map (the mask reads b, per-batch inputs,
                   or a selection's tables)
    CHOSEN         a routed pattern's selection: int32 (batch, heads / ROUTE_SHARE, units,
                   ROUTE_TOP) key-block indices per query unit (ROUTE_QBLOCK tokens), -1 for none
    GROUP          query heads per key/value head (grouped-query attention)
    INPUTS         the runtime inputs stacked: int64 (inputs, rows, tokens), a float input as
                   the bits of its float64 values, a block input (BLOCK_INPUTS: its axes
                   past the batch) flattened; the pattern reads
                   input i of batch entry b at INPUTS_B + i * stride_input, where INPUTS_B is
                   already offset to the program's batch row
Empty tiles are never visited. Rows with no allowed key give output 0 and LSE -inf, never NaN.
The backward is deterministic: dK/dV per key tile over the transposed tables, dQ per query
tile over the forward ones, no atomics.
"""

import functools
import math

import torch
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)  # log2(e): exp(x) = exp2(x * LOG2E)
HASH_SEED = tl.constexpr(0x9E3779B9)
OUT_OF_RANGE = 3  # the tile kind classify_tiles writes where an input index leaves its input
KEPT_ONLY = tl.constexpr(-1)  # ROUTE_TOP of a gathered launch's tile-map half (mask AND keep)

# <attnlang:pattern>
PATTERN = "dense()"
MASK_READS_HEAD = False
MASK_READS_BATCH = False
INPUT_NAMES = ()
FLOAT_INPUTS = ()
BLOCK_INPUTS = {}
INPUT_READS = ""
BLOCK = (64, 64)
ROUTE = None


@triton.jit
def _mask(q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUTS_B, stride_input, INPUT_LEN, HEADS: tl.constexpr):
    return k_pos >= 0


@triton.jit
def _logit2(score, q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUTS_B, stride_input, INPUT_LEN, HEADS: tl.constexpr):
    return score


@triton.jit
def _dlogit(score, q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUTS_B, stride_input, INPUT_LEN, HEADS: tl.constexpr):
    return 1.0


@triton.jit
def _indices_in_range(q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUTS_B, stride_input, INPUT_LEN, INPUT_LENGTHS,
                      HEADS: tl.constexpr):
    return k_pos >= 0


@triton.jit
def _keep(q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUTS_B, stride_input, INPUT_LEN, HEADS: tl.constexpr):
    return k_pos < 0


LOGIT_IS_SCORE = tl.constexpr(True)  # True: _logit2 is the identity and _dlogit 1
# </attnlang:pattern>


# -- helpers the pattern's functions call ---------------------------------------------------------

@triton.jit
def _floordiv(a, b):
    """Floor division (Python's //); Triton's // truncates toward zero."""
    quotient = a // b
    return tl.where((a % b != 0) & ((a < 0) != (b < 0)), quotient - 1, quotient)


@triton.jit
def _mod(a, b):
    """Python's %: the remainder has the divisor's sign."""
    remainder = a % b
    return tl.where((remainder != 0) & ((remainder < 0) != (b < 0)), remainder + b, remainder)


@triton.jit
def _fmod(a, b):
    """Python's % of floats: C's fmod (Triton's float %), moved to the divisor's sign."""
    remainder = a % b
    return tl.where((remainder != 0) & ((remainder < 0) != (b < 0)), remainder + b, remainder)


@triton.jit
def _ffloordiv(a, b):
    """Python's // of floats, by CPython's algorithm (numpy's and torch's too): not floor(a / b),
    which rounds 1.0 / 0.1 up to 10 where 1.0 // 0.1 is 9."""
    remainder = a % b
    quotient = (a - remainder) / b
    quotient = tl.where((remainder != 0) & ((remainder < 0) != (b < 0)), quotient - 1.0, quotient)
    floored = tl.floor(quotient)
    floored = tl.where(quotient - floored > 0.5, floored + 1.0, floored)
    return tl.where(b == 0, a / b, floored)  # by zero: inf, -inf or NaN, as numpy and torch give


@triton.jit
def _ipow(x, POWER: tl.constexpr, LOW_BIT: tl.constexpr, BITS: tl.constexpr):
    """x ** POWER for a constant POWER >= 1 by repeated squaring (unrolled): exact signs for a
    negative x, and int powers wrap modulo 2**64 exactly as the reference's do."""
    square = x
    for _ in tl.static_range(LOW_BIT):
        square = square * square
    result = square
    for bit in tl.static_range(LOW_BIT + 1, BITS):
        square = square * square
        if (POWER >> bit) & 1:
            result = result * square
    return result


@triton.jit
def _fpow(a, b):
    """a ** b for floats, as C's pow: |a| ** b with the sign of a for odd integral b, NaN for a
    negative a and a fractional b, 1 for b == 0 or a == 1."""
    magnitude = tl.exp2(b * tl.log2(tl.abs(a)))
    integral = b == tl.floor(b)
    odd = integral & (tl.floor(b * 0.5) * 2.0 != b)
    signed = tl.where(odd, -magnitude, magnitude)
    result = tl.where(a < 0, tl.where(integral, signed, float("nan")), magnitude)
    return tl.where((b == 0) | (a == 1), 1.0, result)


@triton.jit
def _tanh(x):
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _hash_step(h, a):
    """One round of attnlang's hash: MurmurHash3's fmix32 of h XOR a, in 32 bits held in int64."""
    x = (h ^ (a & 0xFFFFFFFF)) & 0xFFFFFFFF
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & 0xFFFFFFFF
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & 0xFFFFFFFF
    return x ^ (x >> 16)


# -- the mask of a PARTIAL tile -------------------------------------------------------------------

@triton.jit
def _allowed(q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUTS_B, stride_input, INPUT_LEN, CHOSEN_BH,
             HEADS: tl.constexpr, ROUTE_TOP: tl.constexpr, ROUTE_QBLOCK: tl.constexpr, ROUTE_BLOCK: tl.constexpr):
    """The pattern's mask; routed (ROUTE_TOP > 0): mask AND (selected OR keep), where a pair is
    selected when its key block is one of the ROUTE_TOP blocks its query unit chose; KEPT_ONLY:
    mask AND keep."""
    allowed = _mask(q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUTS_B, stride_input, INPUT_LEN, HEADS)
    if ROUTE_TOP == KEPT_ONLY:  # the tile-map half of a gathered launch: the gathered kernels attend the rest
        allowed = allowed & _keep(q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUTS_B, stride_input, INPUT_LEN, HEADS)
    if ROUTE_TOP > 0:
        unit = q_pos // ROUTE_QBLOCK  # positions are >= 0: // is floor
        block = k_pos // ROUTE_BLOCK
        if k_pos.shape[1] // ROUTE_BLOCK + 2 <= 63:
            # per row, a bitmask of the tile's blocks its unit chose: ROUTE_TOP steps a row, not a pair
            first = tl.min(block)
            bits = tl.zeros_like(q_pos).to(tl.int64)
            for t in range(ROUTE_TOP):  # CHOSEN_BH: (units, ROUTE_TOP) block indices, -1 where none
                offset = tl.load(CHOSEN_BH + unit * ROUTE_TOP + t, mask=q_pos < N_Q, other=-1) - first
                inside = (offset >= 0) & (offset < 63)
                bits = bits | tl.where(inside, tl.full([1, 1], 1, tl.int64) << tl.where(inside, offset, 0), 0)
            selected = ((bits >> (block - first).to(tl.int64)) & 1) != 0
        else:  # a tile of more than 61 blocks: compare every pair with every chosen block
            selected = (q_pos < 0) & (k_pos < 0)
            for t in range(ROUTE_TOP):
                chosen = tl.load(CHOSEN_BH + unit * ROUTE_TOP + t, mask=q_pos < N_Q, other=-1)
                selected = selected | (chosen == block)
        keep = _keep(q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUTS_B, stride_input, INPUT_LEN, HEADS)
        allowed = allowed & (selected | keep)
    return allowed


@triton.jit
def _chosen_row(CHOSEN, off_b, off_h, N_Q, HEADS: tl.constexpr, ROUTE_TOP: tl.constexpr,
                ROUTE_QBLOCK: tl.constexpr, ROUTE_SHARE: tl.constexpr):
    """The selection of head off_h's share group: its (units, ROUTE_TOP) rows of CHOSEN."""
    units = tl.cdiv(N_Q, ROUTE_QBLOCK)
    group = off_b.to(tl.int64) * (HEADS // ROUTE_SHARE) + off_h // ROUTE_SHARE  # int64: B H N K passes 2**31
    return CHOSEN + group * units * ROUTE_TOP


# -- loads ----------------------------------------------------------------------------------------

@triton.jit
def _load_tile(base, offs, length, stride, HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr,
               BOUNDED: tl.constexpr):
    """Rows `offs` of a (tokens, head_dim) matrix. Bounded: rows past `length` and padded
    columns read 0. A tile inside the lengths with no padded column loads without a mask."""
    offs_d = tl.arange(0, HEAD_DIM_P)
    pointers = base + offs[:, None] * stride + offs_d[None, :]
    if BOUNDED or HEAD_DIM != HEAD_DIM_P:
        mask = (offs < length)[:, None] & (offs_d < HEAD_DIM)[None, :]
        return tl.load(pointers, mask=mask, other=0.0)
    return tl.load(pointers)


@triton.jit
def _table_entry(IDX, width, row, i, PARTIAL: tl.constexpr):
    """Entry i of a table row: a PARTIAL tile (first, 1), or a run of FULL tiles (first, count)."""
    if PARTIAL:
        return tl.load(IDX + row * width + i), 1
    entry = IDX + (row * width + i) * 2
    return tl.load(entry), tl.load(entry + 1)


@triton.jit
def _table_row(start, off_b, off_h, MAP_HEADS: tl.constexpr, MAP_BATCH: tl.constexpr):
    """The block-table row of tile row `start`: per head only if the mask reads h, per batch
    entry only if the map is per batch."""
    row = 0
    if MAP_BATCH > 1:
        row = off_b * MAP_HEADS
    if MAP_HEADS > 1:
        row = row + off_h
    return row * tl.num_programs(0) + start


# -- forward --------------------------------------------------------------------------------------

@triton.jit
def _online_softmax(acc, l_i, m_i, score, v, PRECISION: tl.constexpr):
    """One tile of the online softmax: a row with nothing allowed yet keeps m_i = -inf and sums 0."""
    m_new = tl.maximum(m_i, tl.max(score, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(score - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, l_i, m_new


@triton.jit
def _normalized(acc, l_i, m_i):
    """Output and LSE (natural units) of an online softmax: fully masked rows give 0 and -inf."""
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(tl.where(empty, 1.0, l_i))) / LOG2E)
    return out, lse


@triton.jit
def _forward_tiles(acc, l_i, m_i, q, K_head, V_head, NUM, IDX, width, row, q_pos, off_b, off_h, N_Q, N_K,
                   qk_scale, INPUTS_B, stride_input, INPUT_LEN, CHOSEN_BH, stride_kn, stride_vn,
                   HEADS: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr,
                   PARTIAL: tl.constexpr, BOUNDED: tl.constexpr, PRECISION: tl.constexpr,
                   ROUTE_TOP: tl.constexpr, ROUTE_QBLOCK: tl.constexpr, ROUTE_BLOCK: tl.constexpr):
    """The online softmax over the tiles of one table (FULL or PARTIAL) of this tile row.
    BOUNDED: check the lengths (PARTIAL tiles of a launch whose lengths are not whole tiles)."""
    for i in range(tl.load(NUM + row)):
        first, count = _table_entry(IDX, width, row, i, PARTIAL)
        for j in range(count):
            offs_n = (first + j) * BLOCK_N + tl.arange(0, BLOCK_N)
            k_pos = offs_n[None, :]
            # -- load the key/value tile --
            k = _load_tile(K_head, offs_n, N_K, stride_kn, HEAD_DIM, HEAD_DIM_P, BOUNDED)
            v = _load_tile(V_head, offs_n, N_K, stride_vn, HEAD_DIM, HEAD_DIM_P, BOUNDED)
            # -- the logits, in log2 units --
            qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)
            score = _logit2(qk * qk_scale, q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUTS_B, stride_input, INPUT_LEN,
                            HEADS)
            if PARTIAL:
                allowed = _allowed(q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUTS_B, stride_input, INPUT_LEN,
                                   CHOSEN_BH, HEADS, ROUTE_TOP, ROUTE_QBLOCK, ROUTE_BLOCK)
                if BOUNDED:  # rows past N_Q are never stored: only the keys need the bound
                    allowed = allowed & (k_pos < N_K)
                score = tl.where(allowed, score, float("-inf"))
            acc, l_i, m_i = _online_softmax(acc, l_i, m_i, score, v, PRECISION)
    return acc, l_i, m_i


@triton.jit
def attention_forward(Q, K, V, Out, Lse, FULL_NUM, FULL_IDX, full_width, PART_NUM, PART_IDX, part_width,
                      INPUTS, stride_input, stride_input_b, INPUT_LEN, CHOSEN, sm_scale, N_Q, N_K,
                      stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                      stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
                      HEADS: tl.constexpr, GROUP: tl.constexpr, MAP_HEADS: tl.constexpr, MAP_BATCH: tl.constexpr,
                      HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, RAGGED: tl.constexpr, PRECISION: tl.constexpr,
                      ROUTE_TOP: tl.constexpr, ROUTE_QBLOCK: tl.constexpr, ROUTE_BLOCK: tl.constexpr,
                      ROUTE_SHARE: tl.constexpr):
    start_m = tl.program_id(0)
    off_b = tl.program_id(1) // HEADS
    off_h = tl.program_id(1) % HEADS
    off_kvh = off_h // GROUP
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_P)
    q_pos = offs_m[:, None]
    q = _load_tile(Q + off_b * stride_qb + off_h * stride_qh, offs_m, N_Q, stride_qm, HEAD_DIM, HEAD_DIM_P, True)
    K_head = K + off_b * stride_kb + off_kvh * stride_kh
    V_head = V + off_b * stride_vb + off_kvh * stride_vh
    INPUTS_B = INPUTS + off_b * stride_input_b
    CHOSEN_BH = _chosen_row(CHOSEN, off_b, off_h, N_Q, HEADS, ROUTE_TOP, ROUTE_QBLOCK, ROUTE_SHARE)
    qk_scale = sm_scale * LOG2E
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_P], tl.float32)
    row = _table_row(start_m, off_b, off_h, MAP_HEADS, MAP_BATCH)
    # -- full tiles: no mask, no bounds --
    acc, l_i, m_i = _forward_tiles(acc, l_i, m_i, q, K_head, V_head, FULL_NUM, FULL_IDX, full_width, row, q_pos,
                                   off_b, off_h, N_Q, N_K, qk_scale, INPUTS_B, stride_input, INPUT_LEN, CHOSEN_BH,
                                   stride_kn, stride_vn, HEADS, BLOCK_N, HEAD_DIM, HEAD_DIM_P, False, False,
                                   PRECISION, ROUTE_TOP, ROUTE_QBLOCK, ROUTE_BLOCK)
    # -- partial tiles: the pattern's mask --
    acc, l_i, m_i = _forward_tiles(acc, l_i, m_i, q, K_head, V_head, PART_NUM, PART_IDX, part_width, row, q_pos,
                                   off_b, off_h, N_Q, N_K, qk_scale, INPUTS_B, stride_input, INPUT_LEN, CHOSEN_BH,
                                   stride_kn, stride_vn, HEADS, BLOCK_N, HEAD_DIM, HEAD_DIM_P, True, RAGGED,
                                   PRECISION, ROUTE_TOP, ROUTE_QBLOCK, ROUTE_BLOCK)
    # -- epilogue: fully masked rows give 0 and -inf; the LSE back in natural units --
    out, lse = _normalized(acc, l_i, m_i)
    q_mask = (offs_m < N_Q)[:, None] & (offs_d < HEAD_DIM)[None, :]
    tl.store(Out + off_b * stride_ob + off_h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :],
             out.to(Out.dtype.element_ty), mask=q_mask)
    tl.store(Lse + (off_b * HEADS + off_h) * N_Q + offs_m, lse, mask=offs_m < N_Q)


# -- backward -------------------------------------------------------------------------------------

@triton.jit
def _probabilities(q, k, do, v, lse2, delta, q_pos, k_pos, off_b, off_h, N_Q, N_K, qk_scale, INPUTS_B,
                   stride_input, INPUT_LEN, CHOSEN_BH, HEADS: tl.constexpr, PARTIAL: tl.constexpr,
                   BOUNDED: tl.constexpr, PRECISION: tl.constexpr, LOGIT_IS_SCORE: tl.constexpr,
                   ROUTE_TOP: tl.constexpr, ROUTE_QBLOCK: tl.constexpr, ROUTE_BLOCK: tl.constexpr):
    """Recompute the probabilities of one tile; return them and dS (w.r.t. the natural score)."""
    qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)
    score = qk * qk_scale
    if not LOGIT_IS_SCORE:
        score = _logit2(score, q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUTS_B, stride_input, INPUT_LEN, HEADS)
    p = tl.math.exp2(score - lse2[:, None])
    if PARTIAL:
        allowed = _allowed(q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUTS_B, stride_input, INPUT_LEN, CHOSEN_BH,
                           HEADS, ROUTE_TOP, ROUTE_QBLOCK, ROUTE_BLOCK)
        if BOUNDED:  # both: a padded row's LSE reads 0, and dK/dV sum over rows
            allowed = allowed & (k_pos < N_K) & (q_pos < N_Q)
        p = tl.where(allowed, p, 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    ds = p * (dp - delta[:, None])
    if not LOGIT_IS_SCORE:
        ds = ds * _dlogit(qk * qk_scale, q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUTS_B, stride_input, INPUT_LEN,
                          HEADS)
        if PARTIAL:  # d logit may be NaN/inf where no pair exists (a padded column's score is 0): 0 there
            ds = tl.where(allowed, ds, 0.0)
    return p, ds


@triton.jit
def _row_statistics(Lse, Delta, rows, valid):
    """The forward's LSE in log2 units (a fully masked row reads 0: its p are all masked) and delta."""
    lse = tl.load(Lse + rows, mask=valid, other=float("-inf"))
    lse2 = tl.where(lse == float("-inf"), 0.0, lse * LOG2E)
    return lse2, tl.load(Delta + rows, mask=valid, other=0.0)


@triton.jit
def _backward_kv_tiles(dk, dv, k, v, Q, DO, Lse, Delta, NUM, IDX, width, row, k_pos, off_b, off_h, N_Q, N_K,
                       qk_scale, INPUTS_B, stride_input, INPUT_LEN, CHOSEN_BH, stride_qm,
                       HEADS: tl.constexpr, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr,
                       HEAD_DIM_P: tl.constexpr, PARTIAL: tl.constexpr, BOUNDED: tl.constexpr,
                       PRECISION: tl.constexpr, LOGIT_IS_SCORE: tl.constexpr,
                       ROUTE_TOP: tl.constexpr, ROUTE_QBLOCK: tl.constexpr, ROUTE_BLOCK: tl.constexpr):
    """dK and dV of one key tile from the query tiles of one transposed table."""
    for i in range(tl.load(NUM + row)):
        first, count = _table_entry(IDX, width, row, i, PARTIAL)
        for j in range(count):
            offs_m = (first + j) * BLOCK_M + tl.arange(0, BLOCK_M)
            q_pos = offs_m[:, None]
            q = _load_tile(Q, offs_m, N_Q, stride_qm, HEAD_DIM, HEAD_DIM_P, BOUNDED)
            do = _load_tile(DO, offs_m, N_Q, stride_qm, HEAD_DIM, HEAD_DIM_P, BOUNDED)
            lse2, delta = _row_statistics(Lse, Delta, offs_m, offs_m < N_Q)
            p, ds = _probabilities(q, k, do, v, lse2, delta, q_pos, k_pos, off_b, off_h, N_Q, N_K, qk_scale, INPUTS_B,
                                   stride_input, INPUT_LEN, CHOSEN_BH, HEADS, PARTIAL, BOUNDED, PRECISION,
                                   LOGIT_IS_SCORE, ROUTE_TOP, ROUTE_QBLOCK, ROUTE_BLOCK)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
    return dk, dv


@triton.jit
def attention_backward_kv(Q, K, V, DO, Lse, Delta, DK, DV, FULL_NUM, FULL_IDX, full_width, PART_NUM, PART_IDX,
                          part_width, INPUTS, stride_input, stride_input_b, INPUT_LEN, CHOSEN, sm_scale, N_Q, N_K,
                          stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                          stride_vb, stride_vh, stride_vn,
                          HEADS: tl.constexpr, HEADS_KV: tl.constexpr, GROUP: tl.constexpr,
                          MAP_HEADS: tl.constexpr, MAP_BATCH: tl.constexpr,
                          HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, RAGGED: tl.constexpr,
                          PRECISION: tl.constexpr, ROUTE_TOP: tl.constexpr, ROUTE_QBLOCK: tl.constexpr,
                          ROUTE_BLOCK: tl.constexpr, ROUTE_SHARE: tl.constexpr):
    """dK and dV of one key tile: the query tiles of the transposed tables, every head of the group."""
    start_n = tl.program_id(0)
    off_b = tl.program_id(1) // HEADS_KV
    off_kvh = tl.program_id(1) % HEADS_KV
    offs_n = start_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM_P)
    k_pos = offs_n[None, :]
    k = _load_tile(K + off_b * stride_kb + off_kvh * stride_kh, offs_n, N_K, stride_kn, HEAD_DIM, HEAD_DIM_P, True)
    v = _load_tile(V + off_b * stride_vb + off_kvh * stride_vh, offs_n, N_K, stride_vn, HEAD_DIM, HEAD_DIM_P, True)
    INPUTS_B = INPUTS + off_b * stride_input_b
    qk_scale = sm_scale * LOG2E
    dk = tl.zeros([BLOCK_N, HEAD_DIM_P], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM_P], tl.float32)
    for g in range(GROUP):
        off_h = off_kvh * GROUP + g
        row = _table_row(start_n, off_b, off_h, MAP_HEADS, MAP_BATCH)
        head = off_b * stride_qb + off_h * stride_qh
        stats = (off_b * HEADS + off_h) * N_Q
        CHOSEN_BH = _chosen_row(CHOSEN, off_b, off_h, N_Q, HEADS, ROUTE_TOP, ROUTE_QBLOCK, ROUTE_SHARE)
        dk, dv = _backward_kv_tiles(dk, dv, k, v, Q + head, DO + head, Lse + stats, Delta + stats, FULL_NUM,
                                    FULL_IDX, full_width, row, k_pos, off_b, off_h, N_Q, N_K, qk_scale, INPUTS_B,
                                    stride_input, INPUT_LEN, CHOSEN_BH, stride_qm, HEADS, BLOCK_M, HEAD_DIM,
                                    HEAD_DIM_P, False, False, PRECISION, LOGIT_IS_SCORE, ROUTE_TOP, ROUTE_QBLOCK,
                                    ROUTE_BLOCK)
        dk, dv = _backward_kv_tiles(dk, dv, k, v, Q + head, DO + head, Lse + stats, Delta + stats, PART_NUM,
                                    PART_IDX, part_width, row, k_pos, off_b, off_h, N_Q, N_K, qk_scale, INPUTS_B,
                                    stride_input, INPUT_LEN, CHOSEN_BH, stride_qm, HEADS, BLOCK_M, HEAD_DIM,
                                    HEAD_DIM_P, True, RAGGED, PRECISION, LOGIT_IS_SCORE, ROUTE_TOP, ROUTE_QBLOCK,
                                    ROUTE_BLOCK)
    kv_mask = (offs_n < N_K)[:, None] & (offs_d < HEAD_DIM)[None, :]
    out = off_b * stride_kb + off_kvh * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :]
    tl.store(DK + out, (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _backward_q_tiles(dq, q, do, lse2, delta, K_head, V_head, NUM, IDX, width, row, q_pos, off_b, off_h, N_Q,
                      N_K, qk_scale, INPUTS_B, stride_input, INPUT_LEN, CHOSEN_BH, stride_kn, stride_vn,
                      HEADS: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr,
                      PARTIAL: tl.constexpr, BOUNDED: tl.constexpr, PRECISION: tl.constexpr,
                      LOGIT_IS_SCORE: tl.constexpr, ROUTE_TOP: tl.constexpr, ROUTE_QBLOCK: tl.constexpr,
                      ROUTE_BLOCK: tl.constexpr):
    """dQ of one query tile from the key tiles of one forward table."""
    for i in range(tl.load(NUM + row)):
        first, count = _table_entry(IDX, width, row, i, PARTIAL)
        for j in range(count):
            offs_n = (first + j) * BLOCK_N + tl.arange(0, BLOCK_N)
            k_pos = offs_n[None, :]
            k = _load_tile(K_head, offs_n, N_K, stride_kn, HEAD_DIM, HEAD_DIM_P, BOUNDED)
            v = _load_tile(V_head, offs_n, N_K, stride_vn, HEAD_DIM, HEAD_DIM_P, BOUNDED)
            p, ds = _probabilities(q, k, do, v, lse2, delta, q_pos, k_pos, off_b, off_h, N_Q, N_K, qk_scale, INPUTS_B,
                                   stride_input, INPUT_LEN, CHOSEN_BH, HEADS, PARTIAL, BOUNDED, PRECISION,
                                   LOGIT_IS_SCORE, ROUTE_TOP, ROUTE_QBLOCK, ROUTE_BLOCK)
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    return dq


@triton.jit
def attention_backward_q(Q, K, V, DO, Lse, Delta, DQ, FULL_NUM, FULL_IDX, full_width, PART_NUM, PART_IDX,
                         part_width, INPUTS, stride_input, stride_input_b, INPUT_LEN, CHOSEN, sm_scale, N_Q, N_K,
                         stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                         stride_vb, stride_vh, stride_vn,
                         HEADS: tl.constexpr, GROUP: tl.constexpr, MAP_HEADS: tl.constexpr, MAP_BATCH: tl.constexpr,
                         HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, RAGGED: tl.constexpr,
                         PRECISION: tl.constexpr, ROUTE_TOP: tl.constexpr, ROUTE_QBLOCK: tl.constexpr,
                         ROUTE_BLOCK: tl.constexpr, ROUTE_SHARE: tl.constexpr):
    """dQ of one query tile, over the key tiles of the forward tables (no atomics: deterministic)."""
    start_m = tl.program_id(0)
    off_b = tl.program_id(1) // HEADS
    off_h = tl.program_id(1) % HEADS
    off_kvh = off_h // GROUP
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_P)
    q_pos = offs_m[:, None]
    head = off_b * stride_qb + off_h * stride_qh
    q = _load_tile(Q + head, offs_m, N_Q, stride_qm, HEAD_DIM, HEAD_DIM_P, True)
    do = _load_tile(DO + head, offs_m, N_Q, stride_qm, HEAD_DIM, HEAD_DIM_P, True)
    lse2, delta = _row_statistics(Lse, Delta, (off_b * HEADS + off_h) * N_Q + offs_m, offs_m < N_Q)
    K_head = K + off_b * stride_kb + off_kvh * stride_kh
    V_head = V + off_b * stride_vb + off_kvh * stride_vh
    INPUTS_B = INPUTS + off_b * stride_input_b
    CHOSEN_BH = _chosen_row(CHOSEN, off_b, off_h, N_Q, HEADS, ROUTE_TOP, ROUTE_QBLOCK, ROUTE_SHARE)
    qk_scale = sm_scale * LOG2E
    dq = tl.zeros([BLOCK_M, HEAD_DIM_P], tl.float32)
    row = _table_row(start_m, off_b, off_h, MAP_HEADS, MAP_BATCH)
    dq = _backward_q_tiles(dq, q, do, lse2, delta, K_head, V_head, FULL_NUM, FULL_IDX, full_width, row, q_pos,
                           off_b, off_h, N_Q, N_K, qk_scale, INPUTS_B, stride_input, INPUT_LEN, CHOSEN_BH,
                           stride_kn, stride_vn, HEADS, BLOCK_N, HEAD_DIM, HEAD_DIM_P, False, False, PRECISION,
                           LOGIT_IS_SCORE, ROUTE_TOP, ROUTE_QBLOCK, ROUTE_BLOCK)
    dq = _backward_q_tiles(dq, q, do, lse2, delta, K_head, V_head, PART_NUM, PART_IDX, part_width, row, q_pos,
                           off_b, off_h, N_Q, N_K, qk_scale, INPUTS_B, stride_input, INPUT_LEN, CHOSEN_BH,
                           stride_kn, stride_vn, HEADS, BLOCK_N, HEAD_DIM, HEAD_DIM_P, True, RAGGED, PRECISION,
                           LOGIT_IS_SCORE, ROUTE_TOP, ROUTE_QBLOCK, ROUTE_BLOCK)
    q_mask = (offs_m < N_Q)[:, None] & (offs_d < HEAD_DIM)[None, :]
    tl.store(DQ + head + offs_m[:, None] * stride_qm + offs_d[None, :], (dq * sm_scale).to(DQ.dtype.element_ty),
             mask=q_mask)


# -- block tables on the device -------------------------------------------------------------------

@triton.jit
def classify_tiles(Kinds, INPUTS, stride_input, stride_input_b, INPUT_LEN, INPUT_LENGTHS, N_Q, N_K, TILE_M, TILE_N,
                   HEADS: tl.constexpr, MAP_HEADS: tl.constexpr, PAIRS: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr):
    """Kinds[(b, h), m, n] = 0 empty / 1 partial / 2 full, by evaluating the mask on the tile of
    TILE_M x TILE_N pairs, BLOCK_M x BLOCK_N at a time. PAIRS: 0 the mask, 1 the mask AND keep,
    2 the mask AND NOT keep (a routing's candidates). A tile cut by a ragged end is partial;
    OUT_OF_RANGE where an input index leaves its input."""
    start_m = tl.program_id(0)
    start_n = tl.program_id(1)
    off_b = tl.program_id(2) // MAP_HEADS
    off_h = tl.program_id(2) % MAP_HEADS
    INPUTS_B = INPUTS + off_b * stride_input_b
    end_m = tl.minimum(N_Q, (start_m + 1) * TILE_M)
    end_n = tl.minimum(N_K, (start_n + 1) * TILE_N)
    count = 0
    out_of_range = 0
    for m0 in range(start_m * TILE_M, (start_m + 1) * TILE_M, BLOCK_M):
        for n0 in range(start_n * TILE_N, (start_n + 1) * TILE_N, BLOCK_N):
            q_pos = (m0 + tl.arange(0, BLOCK_M))[:, None]
            k_pos = (n0 + tl.arange(0, BLOCK_N))[None, :]
            inside = (q_pos < end_m) & (k_pos < end_n)
            allowed = _mask(q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUTS_B, stride_input, INPUT_LEN, HEADS) & inside
            if PAIRS != 0:
                keep = _keep(q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUTS_B, stride_input, INPUT_LEN, HEADS)
                allowed = allowed & (keep if PAIRS == 1 else ~keep)
            count += tl.sum(tl.sum(allowed.to(tl.int32), 1), 0)
            in_range = _indices_in_range(q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUTS_B, stride_input, INPUT_LEN,
                                         INPUT_LENGTHS, HEADS) | ~inside
            out_of_range = tl.maximum(out_of_range, 1 - tl.min(tl.min(in_range.to(tl.int32), 1), 0))
    kind = tl.where(count == 0, 0, tl.where(count == TILE_M * TILE_N, 2, 1))
    kind = tl.where(out_of_range != 0, 3, kind)  # 3: OUT_OF_RANGE
    tl.store(Kinds + (tl.program_id(2) * tl.num_programs(0) + start_m) * tl.num_programs(1) + start_n, kind)


def _listed(rows, values, n_rows):
    """Per row, the count and the values of entries sorted by row: (n_rows,) and (n_rows, width)."""
    counts = torch.bincount(rows, minlength=n_rows)
    table = torch.zeros((n_rows, max(int(counts.max()), 1)), dtype=torch.int32, device=rows.device)
    within = torch.arange(rows.numel(), device=rows.device) - (torch.cumsum(counts, 0) - counts)[rows]
    table[rows, within] = values.to(torch.int32)
    return counts.to(torch.int32), table


def _entry_tables(rows, columns, kinds, n_rows):
    """The tables of tiles given as entries sorted by (row, column): FULL runs, PARTIAL indices."""
    full_rows, full_columns = rows[kinds == 2], columns[kinds == 2]
    begins = torch.ones_like(full_rows, dtype=torch.bool)
    begins[1:] = (full_rows[1:] != full_rows[:-1]) | (full_columns[1:] != full_columns[:-1] + 1)
    begins = torch.nonzero(begins).flatten()
    lengths = torch.diff(begins, append=begins.new_full((1,), full_rows.numel()))
    full_num, firsts = _listed(full_rows[begins], full_columns[begins], n_rows)
    runs = torch.stack([firsts, _listed(full_rows[begins], lengths, n_rows)[1]], dim=-1)
    return [(full_num, runs), _listed(rows[kinds == 1], columns[kinds == 1], n_rows)]


def _entries_tables(keys, kinds, heads, tiles_m, tiles_n):
    """Forward and backward tables, rows flat, of the sorted tile entries of `heads` heads."""
    head, tile = keys // (tiles_m * tiles_n), keys % (tiles_m * tiles_n)
    row, column = tile // tiles_n, tile % tiles_n
    transposed, order = torch.sort((head * tiles_n + column) * tiles_m + row)
    return {"forward": _entry_tables(head * tiles_m + row, column, kinds, heads * tiles_m),
            "backward": _entry_tables(transposed // tiles_m, transposed % tiles_m, kinds[order], heads * tiles_n)}


def _joined(tensors, shape):
    """Row chunks of one table, padded to the widest and joined, as (B, H, tiles, ...)."""
    width = max(t.shape[1] for t in tensors) if tensors[0].dim() > 1 else 0
    padded = [torch.nn.functional.pad(t, [0, 0] * (t.dim() - 2) + [0, width - t.shape[1]]) if t.dim() > 1 else t
              for t in tensors]
    joined = torch.cat(padded)
    return joined.view(*shape, *joined.shape[1:])


def _assembled(chunks, batch, heads, tiles_m, tiles_n):
    """The tables of `_entries_tables` chunks of consecutive heads, as (B, H, tiles, ...) tables."""
    tables = {"map_batch": batch, "map_heads": heads}
    for direction, tiles in (("forward", tiles_m), ("backward", tiles_n)):
        tables[direction] = [tuple(_joined([chunk[direction][t][i] for chunk in chunks], (batch, heads, tiles))
                                   for i in range(2)) for t in range(2)]
    return tables


def stack_inputs(inputs, device):
    """The runtime inputs as one int64 (inputs, rows, tokens) tensor, the batch stride (0 when every
    input has one row), the padded length, and each input's own length. A float input is held as
    the bits of its float64 values (the kernels load it with a bitcast)."""
    tensors = [torch.as_tensor(inputs[name]).to(device=device, dtype=torch.float64).view(torch.int64)
               if name in FLOAT_INPUTS else torch.as_tensor(inputs[name]).to(device=device, dtype=torch.int64)
               for name in INPUT_NAMES]
    tensors = [t.flatten(-BLOCK_INPUTS[name]) if name in BLOCK_INPUTS and t.dim() >= BLOCK_INPUTS[name] else t
               for name, t in zip(INPUT_NAMES, tensors)]  # a block input, as its reads index it
    tensors = [t if t.dim() == 2 else t[None] for t in tensors]
    if not tensors:
        return torch.zeros((1, 1, 1), dtype=torch.int64, device=device), 0, 1, torch.ones(1, dtype=torch.int64,
                                                                                            device=device)
    rows = max(t.shape[0] for t in tensors)
    tokens = max(t.shape[1] for t in tensors)
    stacked = torch.zeros((len(tensors), rows, tokens), dtype=torch.int64, device=device)
    for i, t in enumerate(tensors):
        stacked[i, :, :t.shape[1]] = t  # a one-row input serves every batch entry
    lengths = torch.tensor([t.shape[1] for t in tensors], dtype=torch.int64, device=device)
    return stacked, (tokens if rows > 1 else 0), tokens, lengths


def _map_extent(heads, inputs, batch, device):
    """Stacked inputs, and the block maps' batch entries and heads: one map per batch entry when
    the mask reads b or an input has a row per batch entry, per head when the mask reads h."""
    map_heads = heads if MASK_READS_HEAD else 1
    stacked = stack_inputs(inputs, device)
    batches = stacked[0].shape[1] if stacked[1] else (batch if MASK_READS_BATCH else 1)
    return stacked, batches, map_heads


def classify(seq_q, seq_k, heads, inputs, device, tile_m, tile_n, batch=1, pairs=0):
    """Tile kinds (map batch, map heads, tiles_m, tiles_n) on the device, tiles of tile_m x tile_n
    pairs (`classify_tiles`; `pairs` as there)."""
    (stacked, stride_b, length, lengths), batches, map_heads = _map_extent(heads, inputs, batch, device)
    tiles_m, tiles_n = triton.cdiv(seq_q, tile_m), triton.cdiv(seq_k, tile_n)
    kinds = torch.empty((batches * map_heads, tiles_m, tiles_n), dtype=torch.int8, device=device)
    classify_tiles[(tiles_m, tiles_n, batches * map_heads)](
        kinds, stacked, stacked.shape[1] * stacked.shape[2], stride_b, length, lengths, seq_q, seq_k, tile_m, tile_n,
        HEADS=heads, MAP_HEADS=map_heads, PAIRS=pairs, BLOCK_M=min(64, triton.next_power_of_2(tile_m)),
        BLOCK_N=min(64, triton.next_power_of_2(tile_n)))
    kinds = kinds.view(batches, map_heads, tiles_m, tiles_n)
    if bool((kinds == OUT_OF_RANGE).any()):
        raise IndexError("an input index is out of range at some pair of the matrix (masked or not); clamp it "
                         f"(the pattern reads {INPUT_READS})")
    return kinds


def tables_of(kinds):
    """The kernels' forward (by query tile) and backward (by key tile) tables of a tile map
    (map batch, map heads, tiles_m, tiles_n): its non-empty tiles as entries."""
    batch, heads, tiles_m, tiles_n = kinds.shape
    keys = torch.nonzero(kinds.flatten()).flatten()
    return _assembled([_entries_tables(keys, kinds.flatten()[keys], batch * heads, tiles_m, tiles_n)],
                      batch, heads, tiles_m, tiles_n)


def block_tables(seq_q, seq_k, heads, inputs, device, block_m=BLOCK[0], block_n=BLOCK[1], batch=1):
    """Block tables on the device: forward (by query tile) and backward (by key tile); one map per
    batch entry when the mask reads b or an input has a row per batch entry."""
    return tables_of(classify(seq_q, seq_k, heads, inputs, device, block_m, block_n, batch))


# -- routing: the selection stage on the device ---------------------------------------------------
# A routed pattern (ROUTE is not None) allows mask AND (selected OR keep). Before attention, on the
# device: `route_pool` summarizes each key block (and for qpool = mean each query block);
# `route_select` scores each query unit's candidate blocks (mask AND NOT keep has a pair there)
# against the summaries and keeps the best ROUTE["top"] in registers while it streams over the
# key blocks, so no units x blocks score matrix is ever stored (memory: units x top indices);
# then either `routed_entries` lists the tiles the chosen blocks reach, whose tables the kernels
# walk (tile-major; sorted lists of O(units x top) entries, never a tile map per head), or
# `gathered_lists` regroups them by key block for the gathered kernels (below). The selection is
# not differentiated: gradients flow through the attention of the chosen blocks.

POOLS = {"mean": 0, "max": 1, "last": 2, "min": 3}
NONE_CHOSEN = tl.constexpr(-1)  # a unit with fewer candidates than top: its remaining slots


@triton.jit
def route_pool(X, Out, N, BLOCKS, SIZE, POOL: tl.constexpr, CHUNK: tl.constexpr, HEAD_DIM: tl.constexpr,
               HEAD_DIM_P: tl.constexpr):
    """Out[(b, h), j] = the summary of rows [j * SIZE, (j + 1) * SIZE) of X[(b, h)], cut at N: their
    mean, channel-wise max or min, or the last row. X: contiguous (B * H, N, HEAD_DIM); Out:
    float32 (B * H, BLOCKS, HEAD_DIM_P), padded channels 0."""
    j = tl.program_id(0)
    head = tl.program_id(1)
    offs_d = tl.arange(0, HEAD_DIM_P)
    first = j * SIZE
    end = tl.minimum(first + SIZE, N)
    X_head = X + head.to(tl.int64) * N * HEAD_DIM
    if POOL == 2:
        summary = tl.load(X_head + (end - 1) * HEAD_DIM + offs_d, mask=offs_d < HEAD_DIM, other=0.0).to(tl.float32)
    else:
        fill = 0.0
        if POOL == 1:
            fill = float("-inf")
        if POOL == 3:
            fill = float("inf")
        summary = tl.full([HEAD_DIM_P], fill, tl.float32)
        for start in range(first, end, CHUNK):
            rows = start + tl.arange(0, CHUNK)
            mask = (rows < end)[:, None] & (offs_d < HEAD_DIM)[None, :]
            x = tl.load(X_head + rows[:, None] * HEAD_DIM + offs_d[None, :], mask=mask, other=fill).to(tl.float32)
            if POOL == 0:
                summary += tl.sum(x, 0)
            elif POOL == 1:
                summary = tl.maximum(summary, tl.max(x, 0))
            else:
                summary = tl.minimum(summary, tl.min(x, 0))
        if POOL == 0:
            summary = summary / (end - first).to(tl.float32)
    tl.store(Out + (head * BLOCKS + j) * HEAD_DIM_P + offs_d, tl.where(offs_d < HEAD_DIM, summary, 0.0))


@triton.jit
def _summary_scores(rows, low, high, MINMAX: tl.constexpr, PRECISION: tl.constexpr):
    """rows (U, D) against key-block summaries (J, D): rows . summary, or for min/max summaries
    Quest's bound sum_d max(q_d min_d, q_d max_d) = relu(q) . max + min(q, 0) . min. PRECISION
    as the attention's: "ieee" for float32 tensors; else "tf32" on the tensor cores (a float32
    ieee dot runs on FMAs, which spills kilobytes a thread at 128 channels on sm_90)."""
    if MINMAX:
        return (tl.dot(tl.maximum(rows, 0.0), tl.trans(high), input_precision=PRECISION)
                + tl.dot(tl.minimum(rows, 0.0), tl.trans(low), input_precision=PRECISION))
    return tl.dot(rows, tl.trans(high), input_precision=PRECISION)


@triton.jit
def _head_scores(QU, stride_unit, head_row, units, low, high, N_Q, UNITS, QBLOCK: tl.constexpr,
                 QPOOL_MAX: tl.constexpr, MINMAX: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr,
                 UNITS_P: tl.constexpr, CHUNK_J: tl.constexpr, PRECISION: tl.constexpr):
    """One head's scores of its units against a chunk of key blocks, (UNITS_P, CHUNK_J). QU holds
    a row per unit (the query itself per token, or the query block's mean), or for qpool = max
    the queries, whose scores' max over each unit is its score."""
    offs_d = tl.arange(0, HEAD_DIM_P)
    channels = (offs_d < HEAD_DIM)[None, :]
    if QPOOL_MAX:
        best = tl.full([UNITS_P, CHUNK_J], float("-inf"), tl.float32)
        for t in range(QBLOCK):
            rows = units * QBLOCK + t
            valid = rows < N_Q
            x = tl.load(QU + (head_row.to(tl.int64) * N_Q + rows[:, None]) * stride_unit + offs_d[None, :],
                        mask=valid[:, None] & channels, other=0.0).to(tl.float32)
            scores = _summary_scores(x, low, high, MINMAX, PRECISION)
            best = tl.maximum(best, tl.where(valid[:, None], scores, float("-inf")))
        return best
    x = tl.load(QU + (head_row.to(tl.int64) * UNITS + units[:, None]) * stride_unit + offs_d[None, :],
                mask=(units < UNITS)[:, None] & channels, other=0.0).to(tl.float32)
    return _summary_scores(x, low, high, MINMAX, PRECISION)


@triton.jit
def _candidates(CAND, cand_rows, map_row, tile, units, j0, blocks, off_b, off_h, N_Q, N_K, UNITS, BLOCKS,
                INPUTS_B, stride_input, INPUT_LEN, HEADS: tl.constexpr, BLOCK: tl.constexpr,
                PER_TOKEN: tl.constexpr, CHUNK_J: tl.constexpr, CHUNK_N: tl.constexpr):
    """Which (unit, block) pairs of the chunk of blocks from j0 are candidates: mask AND NOT keep
    has a pair there. CAND holds their kinds per (unit, block), exact; per token, per (tile of
    units, block), and a PARTIAL entry is decided row by row on the block's pairs."""
    valid = (units < UNITS)[:, None] & (blocks < BLOCKS)[None, :]
    if not PER_TOKEN:
        kind = tl.load(CAND + (map_row * cand_rows + units[:, None]) * BLOCKS + blocks[None, :], mask=valid, other=0)
        return valid & (kind != 0)
    row = CAND + (map_row * cand_rows + tile) * BLOCKS
    kinds = tl.load(row + blocks, mask=blocks < BLOCKS, other=0)
    candidate = valid & (kinds == 2)[None, :]
    q_pos = units[:, None]
    for c in range(CHUNK_J):
        block = j0 + c
        entry = tl.load(row + block, mask=block < BLOCKS, other=0)  # not `kind`: the compiler types names per function
        if entry == 1:
            end = tl.minimum((block + 1) * BLOCK, N_K)
            open_row = q_pos < 0
            for n0 in range(block * BLOCK, end, CHUNK_N):
                k_pos = (n0 + tl.arange(0, CHUNK_N))[None, :]
                pairs = _mask(q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUTS_B, stride_input, INPUT_LEN, HEADS)
                pairs = pairs & ~_keep(q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUTS_B, stride_input, INPUT_LEN,
                                       HEADS) & (k_pos < end)
                open_row = open_row | (tl.max(pairs.to(tl.int32), 1) > 0)[:, None]
            candidate = candidate | (open_row & (blocks == block)[None, :] & valid)
    return candidate


@triton.jit
def _pack(score, blocks):
    """(score, block) as one int64 ordered by score, then by the lower block: an order-preserving
    int32 of the float in the high word, 2**31 - 1 - block in the low one."""
    bits = (score + 0.0).to(tl.int32, bitcast=True)  # + 0.0: -0.0 ties with 0.0
    key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return (key.to(tl.int64) << 32) | (0x7FFFFFFF - blocks).to(tl.int64)


@triton.jit
def _unpack(packed):
    key = (packed >> 32).to(tl.int32)
    score = tl.where(key < 0, key ^ 0x7FFFFFFF, key).to(tl.float32, bitcast=True)
    return score, (0x7FFFFFFF - (packed & 0x7FFFFFFF)).to(tl.int32)


@triton.jit
def route_select(QU, stride_unit, LOW, HIGH, CAND, cand_rows, Chosen, INPUTS, stride_input, stride_input_b,
                 INPUT_LEN, top_p, N_Q, N_K, UNITS, BLOCKS,
                 HEADS: tl.constexpr, HEADS_KV: tl.constexpr, SHARE: tl.constexpr, MAP_HEADS: tl.constexpr,
                 MAP_BATCH: tl.constexpr, TOP: tl.constexpr, TOP_P: tl.constexpr, BLOCK: tl.constexpr,
                 QBLOCK: tl.constexpr, QPOOL_MAX: tl.constexpr, MINMAX: tl.constexpr, PER_TOKEN: tl.constexpr,
                 HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr, UNITS_P: tl.constexpr, KP: tl.constexpr,
                 CHUNK_J: tl.constexpr, CHUNK_N: tl.constexpr, BY_ROW: tl.constexpr, BY_HEADS: tl.constexpr,
                 PRECISION: tl.constexpr):
    """Chosen[(b, share group), unit] = the TOP candidate key blocks with the highest scores (summed
    over the SHARE heads of the group), best first, ties to the lower block, NONE_CHOSEN where
    fewer; TOP_P: only while the softmax mass of the unit's candidates before a block is below
    top_p. The best KP are kept packed in registers and merged with each chunk of blocks. The
    scores are the pooled q . k, or (BY_ROW >= 0) input BY_ROW's, a float block input of
    ([heads,] units, blocks)."""
    tile = tl.program_id(0)
    off_b = tl.program_id(1) // (HEADS // SHARE)
    group = tl.program_id(1) % (HEADS // SHARE)
    units = tile * UNITS_P + tl.arange(0, UNITS_P)
    offs_d = tl.arange(0, HEAD_DIM_P)
    INPUTS_B = INPUTS + off_b * stride_input_b
    best = tl.full([UNITS_P, KP], -9223372036854775808, tl.int64)  # below every packed score
    m_i = tl.full([UNITS_P], float("-inf"), tl.float32)
    l_i = tl.zeros([UNITS_P], tl.float32)
    for j0 in range(0, BLOCKS, CHUNK_J):
        blocks = j0 + tl.arange(0, CHUNK_J)
        scores = tl.zeros([UNITS_P, CHUNK_J], tl.float32)
        candidate = (units < 0)[:, None] & (blocks < 0)[None, :]
        for g in range(SHARE):
            off_h = group * SHARE + g
            if BY_ROW >= 0:  # the scores are an input's: float64 bits in the stack
                head = off_h if BY_HEADS else 0
                entry = (head * UNITS + units[:, None].to(tl.int64)) * BLOCKS + blocks[None, :]  # int64: H N N/B
                given = tl.load(INPUTS_B + BY_ROW * stride_input + entry,
                                mask=(units < UNITS)[:, None] & (blocks < BLOCKS)[None, :], other=0)
                scores += given.to(tl.float64, bitcast=True).to(tl.float32)
            else:
                kv_row = (off_b * HEADS_KV + off_h // (HEADS // HEADS_KV)) * BLOCKS + blocks
                summary = kv_row[:, None] * HEAD_DIM_P + offs_d[None, :]
                high = tl.load(HIGH + summary, mask=(blocks < BLOCKS)[:, None], other=0.0)
                low = high
                if MINMAX:
                    low = tl.load(LOW + summary, mask=(blocks < BLOCKS)[:, None], other=0.0)
                scores += _head_scores(QU, stride_unit, off_b * HEADS + off_h, units, low, high, N_Q, UNITS, QBLOCK,
                                       QPOOL_MAX, MINMAX, HEAD_DIM, HEAD_DIM_P, UNITS_P, CHUNK_J, PRECISION)
            map_row = 0
            if MAP_BATCH > 1:
                map_row = off_b * MAP_HEADS
            if MAP_HEADS > 1:
                map_row = map_row + off_h
            candidate = candidate | _candidates(CAND, cand_rows, map_row, tile, units, j0, blocks, off_b, off_h,
                                                N_Q, N_K, UNITS, BLOCKS, INPUTS_B, stride_input, INPUT_LEN, HEADS,
                                                BLOCK, PER_TOKEN, CHUNK_J, CHUNK_N)
        scores = tl.where(candidate, scores, float("-inf"))
        if TOP_P:  # the running log-sum-exp of the candidates' scores
            m_new = tl.maximum(m_i, tl.max(scores, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            l_i = l_i * tl.exp(m_i - m_safe) + tl.sum(tl.exp(scores - m_safe[:, None]), 1)
            m_i = m_new
        chunk_best = tl.topk(_pack(scores, blocks[None, :]), KP, dim=1)
        best = tl.topk(tl.reshape(tl.join(best, chunk_best), [UNITS_P, 2 * KP]), KP, dim=1)
    score, block = _unpack(best)
    rank = tl.arange(0, KP)[None, :]
    chosen = (score > float("-inf")) & (rank < TOP)
    if TOP_P:
        lse = m_i + tl.log(tl.where(l_i == 0.0, 1.0, l_i))
        mass = tl.where(chosen, tl.exp(score - lse[:, None]), 0.0)
        chosen = chosen & (tl.cumsum(mass, 1) - mass < top_p)
    out = Chosen + (tl.program_id(1) * UNITS + units[:, None]).to(tl.int64) * TOP + rank
    tl.store(out, tl.where(chosen, block, NONE_CHOSEN), mask=(units < UNITS)[:, None] & (rank < TOP))


def _shared_heads(heads, heads_kv):
    """Query heads one selection serves: 1, a GQA group, or all."""
    return {"head": 1, "group": heads // heads_kv, "all": heads}[ROUTE["share"]]


def route_candidates(seq_q, seq_k, heads, inputs, device, batch=1):
    """The routing's candidate kinds on the device (classify_tiles, mask AND NOT keep): per (unit,
    key block), or per token routing per (tile of ROUTE_UNITS tokens, key block)."""
    rows = ROUTE_UNITS if ROUTE["qblock"] == 1 else ROUTE["qblock"]
    return classify(seq_q, seq_k, heads, inputs, device, rows, ROUTE["block"], batch, pairs=2)


ROUTE_UNITS = 64  # query units a selection program scores: tokens, or 16 query blocks


def select(q, k, inputs, candidates):
    """The selection of contiguous q and k: int32 (B, H / shared heads, units, top), chosen key
    blocks best first, NONE_CHOSEN where a unit has fewer candidates. `candidates` as
    `route_candidates` returns them (map batch, map heads, rows, key blocks), or the analysis' same map."""
    batch, heads, seq_q, head_dim = q.shape
    heads_kv, seq_k = k.shape[1], k.shape[2]
    top, block, qblock = ROUTE["top"], ROUTE["block"], ROUTE["qblock"]
    head_dim_p = max(16, triton.next_power_of_2(head_dim))
    blocks = triton.cdiv(seq_k, block)
    chunk = min(64, triton.next_power_of_2(block))
    summaries = []
    pools = () if ROUTE["by"] else ("min", "max") if ROUTE["pool"] == "minmax" else (ROUTE["pool"],)
    for pool in pools:
        summary = torch.empty((batch * heads_kv, blocks, head_dim_p), device=q.device, dtype=torch.float32)
        route_pool[(blocks, batch * heads_kv)](k, summary, seq_k, blocks, block, POOL=POOLS[pool], CHUNK=chunk,
                                               HEAD_DIM=head_dim, HEAD_DIM_P=head_dim_p)
        summaries.append(summary)
    summaries = summaries or [k]  # by = NAME: nothing pooled (a placeholder the kernel never reads)
    per_token, qpool_max = qblock == 1, qblock > 1 and ROUTE["qpool"] == "max"
    units = triton.cdiv(seq_q, qblock)
    if per_token or qpool_max or ROUTE["by"]:
        rows, stride_unit = q, head_dim
    else:  # the query blocks' means
        rows = torch.empty((batch * heads, units, head_dim_p), device=q.device, dtype=torch.float32)
        route_pool[(units, batch * heads)](q, rows, seq_q, units, qblock, POOL=0, CHUNK=min(64, triton.next_power_of_2(
            qblock)), HEAD_DIM=head_dim, HEAD_DIM_P=head_dim_p)
        stride_unit = head_dim_p
    share = _shared_heads(heads, heads_kv)
    units_p = ROUTE_UNITS if per_token else 16
    kp = triton.next_power_of_2(top)
    chunk_j = max(16, kp)
    chosen = torch.empty((batch, heads // share, units, top), device=q.device, dtype=torch.int32)
    stacked, stride_b, length, _ = stack_inputs(inputs, q.device)
    route_select[(triton.cdiv(units, units_p), batch * (heads // share))](
        rows, stride_unit, summaries[0], summaries[-1], candidates, candidates.shape[2], chosen, stacked,
        stacked.shape[1] * stacked.shape[2], stride_b, length, float(ROUTE["top_p"] or 0.0), seq_q, seq_k, units,
        blocks, HEADS=heads, HEADS_KV=heads_kv, SHARE=share, MAP_HEADS=candidates.shape[1],
        MAP_BATCH=candidates.shape[0], TOP=top, TOP_P=ROUTE["top_p"] is not None, BLOCK=block, QBLOCK=qblock,
        QPOOL_MAX=qpool_max, MINMAX=ROUTE["pool"] == "minmax", PER_TOKEN=per_token, HEAD_DIM=head_dim,
        HEAD_DIM_P=head_dim_p, UNITS_P=units_p, KP=kp, CHUNK_J=chunk_j, CHUNK_N=chunk,
        BY_ROW=INPUT_NAMES.index(ROUTE["by"]) if ROUTE["by"] else -1, BY_HEADS=BLOCK_INPUTS.get(ROUTE["by"]) == 3,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32")
    return chosen


def _overlaps(length, tile, unit):
    """Per tile of `tile` positions: how many units of `unit` positions it overlaps (cut at length)."""
    first = torch.arange(triton.cdiv(length, tile)) * tile
    last = torch.clamp(first + tile, max=length) - 1
    return last // unit - first // unit + 1


def _summed(keys, weights=None, space=None):
    """The distinct keys, ascending, and per key the sum of its weights (its count without
    weights), the same on every run: a count over the keys' `space` (0 <= key < space) where it
    is not much larger than the keys, else a sort and a prefix sum."""
    if space is not None and space <= 4 * keys.numel():
        counts = torch.bincount(keys, minlength=space)
        distinct = torch.nonzero(counts).flatten()
        if weights is None:
            return distinct, counts[distinct]
        return distinct, torch.zeros_like(counts).scatter_add_(0, keys, weights)[distinct]
    keys, order = torch.sort(keys)
    last = torch.ones_like(keys, dtype=torch.bool)
    last[:-1] = keys[1:] != keys[:-1]
    if weights is None:
        totals = torch.nonzero(last).flatten() + 1
    else:
        totals = torch.cumsum(weights[order], 0)[last]
    return keys[last], torch.diff(totals, prepend=totals.new_zeros(1))


def _spans(unit, tile):
    """The most tiles of `tile` positions that `unit` consecutive positions overlap."""
    return (unit + tile - 2) // tile + 1


def _chosen_hits(groups, seq_q, seq_k, block_m, block_n):
    """The tiles the chosen blocks of `groups` (selections, units, top) reach, as keys (group *
    tiles_m + row) * tiles_n + column, ascending, and per tile how many chosen (unit, block) pairs
    lie over it: counted per (tile row, block), then per tile, both as sorted lists."""
    count, units, top = groups.shape
    qblock, block = ROUTE["qblock"], ROUTE["block"]
    tiles_m, tiles_n, blocks = triton.cdiv(seq_q, block_m), triton.cdiv(seq_k, block_n), triton.cdiv(seq_k, block)
    device = groups.device
    # (unit, block) -> (tile row, block), for each tile row the unit overlaps
    unit = torch.arange(units, device=device)
    last_row = (torch.clamp((unit + 1) * qblock, max=seq_q) - 1) // block_m
    rows = (unit * qblock // block_m)[:, None] + torch.arange(_spans(qblock, block_m), device=device)
    group = torch.arange(count, device=device).view(count, 1, 1, 1)
    keys = (group * tiles_m + rows[None, :, None, :]) * blocks + groups[..., None].to(torch.int64)
    live = (rows <= last_row[:, None])[None, :, None, :] & (groups >= 0)[..., None]
    row_blocks, counts = _summed(keys[live], space=count * tiles_m * blocks)
    # (tile row, block) -> (tile row, tile column), for each tile column the block overlaps
    row, chosen = row_blocks // blocks, row_blocks % blocks
    last_column = (torch.clamp((chosen + 1) * block, max=seq_k) - 1) // block_n
    columns = (chosen * block // block_n)[:, None] + torch.arange(_spans(block, block_n), device=device)
    live = columns <= last_column[:, None]
    return _summed((row[:, None] * tiles_n + columns)[live], counts[:, None].expand_as(columns)[live],
                   count * tiles_m * tiles_n)


def _kept_keys(static, kept, batch, heads, tiles_m, tiles_n):
    """The tiles where mask AND keep has pairs, for every (b, h) their map serves, as sorted keys
    ((b * heads + h) * tiles_m + row) * tiles_n + column."""
    map_batch, map_heads = static.shape[:2]
    map_b, map_h, row, column = torch.nonzero((kept != 0) & (static != 0)).unbind(1)
    b = map_b if map_batch > 1 else torch.arange(batch, device=static.device)[:, None, None]
    h = map_h if map_heads > 1 else torch.arange(heads, device=static.device)[:, None]
    return torch.sort((((b * heads + h) * tiles_m + row) * tiles_n + column).flatten())[0]


# tile entries built at once, at most (a chunk of heads): about 40 bytes of int64 temporaries
# each; a GPU takes larger chunks, since each chunk syncs with the host a few times
ENTRY_CHUNK = {"cpu": 1 << 20, "cuda": 1 << 23}


def routed_entries(chosen, static, kept, seq_q, seq_k, heads, block_m, block_n):
    """The tiles one selection visits, a chunk of heads at a time, as (first head, heads, keys,
    kinds): keys (head - first) * tiles + row * tiles_n + column ascending, heads counted b *
    heads + h. A tile is visited where the static map has pairs and a chosen block reaches it or
    keep has pairs; FULL where the static tile is FULL and every (unit, block) pair over it was
    chosen, or where keep allows all of it. `static`, `kept`: tile kinds of the mask and of mask
    AND keep (FULL only inside the lengths), (map batch, map heads, tiles_m, tiles_n) each,
    broadcastable to one another (keep may read h where the mask does not). Memory: O(units *
    top) entries and the kept tiles, never a tile map per head."""
    batch, shared, units, top = chosen.shape
    share, device = heads // shared, chosen.device
    static, kept = (maps.contiguous() for maps in torch.broadcast_tensors(static, kept))
    tiles_m, tiles_n = triton.cdiv(seq_q, block_m), triton.cdiv(seq_k, block_n)
    per_head = tiles_m * tiles_n
    map_batch, map_heads = static.shape[:2]
    kept_keys = _kept_keys(static, kept, batch, heads, tiles_m, tiles_n)
    groups = chosen.reshape(batch * shared, units, top)
    # entries one selection builds: its (unit, block, tile row, tile column) reaches at most, and
    # the tiles of the heads it serves
    reach = units * top * _spans(ROUTE["qblock"], block_m) * _spans(ROUTE["block"], block_n)
    units_over_row = _overlaps(seq_q, block_m, ROUTE["qblock"]).to(device)  # (unit, block) pairs a FULL tile needs
    blocks_over_column = _overlaps(seq_k, block_n, ROUTE["block"]).to(device)
    budget = ENTRY_CHUNK.get(device.type, ENTRY_CHUNK["cpu"])
    step = max(1, budget // (reach + share * min(reach, per_head)))  # selections a chunk takes
    starts = range(0, batch * shared, step)
    bounds = torch.tensor([start * share * per_head for start in starts] + [batch * heads * per_head], device=device)
    bounds = torch.searchsorted(kept_keys, bounds).tolist()  # where each chunk's kept tiles begin
    for i, start in enumerate(starts):
        part = groups[start:start + step]
        first, count = start * share, part.shape[0] * share
        group_keys, hits = _chosen_hits(part, seq_q, seq_k, block_m, block_n)
        # a shared selection serves `share` heads: its group g serves heads g * share + j
        group, tile = group_keys // per_head, group_keys % per_head
        chosen_keys = ((group * share)[:, None] + torch.arange(share, device=device)) * per_head + tile[:, None]
        kept_part = kept_keys[bounds[i]:bounds[i + 1]] - first * per_head
        keys, hits = _summed(torch.cat([chosen_keys.flatten(), kept_part]),
                             torch.cat([hits.repeat_interleave(share), hits.new_zeros(kept_part.numel())]),
                             count * per_head)
        head, tile = first + keys // per_head, keys % per_head
        row, column = tile // tiles_n, tile % tiles_n
        map_tile = (((head // heads % map_batch) * map_heads + head % heads % map_heads) * tiles_m + row) * tiles_n \
            + column
        static_kind, kept_kind = static.flatten()[map_tile], kept.flatten()[map_tile]
        full = (static_kind == 2) & ((hits == units_over_row[row] * blocks_over_column[column]) | (kept_kind == 2))
        reached = static_kind != 0  # each key is a tile a chosen block reaches, or a kept one
        yield first, count, keys[reached], torch.where(full, 2, 1).to(torch.int8)[reached]


def routed_kinds(chosen, static, kept, seq_q, seq_k, heads, block_m, block_n):
    """The tile map (B, H, tiles_m, tiles_n) of one selection, dense (`routed_entries`: for a
    FlexAttention BlockMask and the benchmarks; the kernels' tables never build it)."""
    shape = (chosen.shape[0], heads, triton.cdiv(seq_q, block_m), triton.cdiv(seq_k, block_n))
    tiles = torch.zeros(math.prod(shape), dtype=torch.int8, device=chosen.device)
    for first, _, keys, kinds in routed_entries(chosen, static, kept, seq_q, seq_k, heads, block_m, block_n):
        tiles[first * shape[2] * shape[3] + keys] = kinds
    return tiles.view(shape)


def routed_tile_tables(chosen, static, kept, seq_q, seq_k, heads, block_m, block_n):
    """The kernels' forward and backward tables (as `tables_of`) of one selection, from its tile
    entries a chunk of heads at a time: memory beyond the tables is a chunk's, never a tile map."""
    batch, tiles_m, tiles_n = chosen.shape[0], triton.cdiv(seq_q, block_m), triton.cdiv(seq_k, block_n)
    chunks = [_entries_tables(keys, kinds, count, tiles_m, tiles_n) for _, count, keys, kinds in
              routed_entries(chosen, static, kept, seq_q, seq_k, heads, block_m, block_n)]
    return _assembled(chunks, batch, heads, tiles_m, tiles_n)


def routed_tables(q, k, inputs, maps, block_m, block_n, schedule=None):
    """The kernels' tables for this q and k: the selection, and the tables of its tile map; or
    for the gathered schedule (`schedule` "gathered", or None and `gathers()`), the tables of mask
    AND keep with the selection regrouped by key block. `maps`: the candidate, static and kept
    kinds (`route_maps`, or the analysis' same maps)."""
    batch, heads, seq_q, _ = q.shape
    chosen = select(q, k, inputs, maps["candidates"])
    schedule = schedule or ("gathered" if gathers() else "tiles")
    if schedule not in ("gathered", "tiles"):
        raise ValueError(f"schedule must be 'gathered', 'tiles' or None, got {schedule!r}")
    if schedule == "gathered" and ROUTE["qblock"] != 1:
        raise ValueError("the gathered schedule is per-token routing's (qblock = 1); this pattern routes query blocks")
    if schedule == "gathered":
        lists = gathered_lists(chosen, triton.cdiv(k.shape[2], ROUTE["block"]), block_m)
        kept = maps["kept_tables"] if "kept_tables" in maps else tables_of(maps["kept"])  # cached by a caller
        return kept | {"chosen": chosen, "gathered": lists}
    tables = routed_tile_tables(chosen, maps["static"], maps["kept"], seq_q, k.shape[2], heads, block_m, block_n)
    return tables | {"chosen": chosen}


def route_maps(seq_q, seq_k, heads, inputs, device, block_m=BLOCK[0], block_n=BLOCK[1], batch=1):
    """What a selection's tables are built from, on the device: the candidates, and the tile
    kinds of the mask and of mask AND keep."""
    return {"candidates": route_candidates(seq_q, seq_k, heads, inputs, device, batch),
            "static": classify(seq_q, seq_k, heads, inputs, device, block_m, block_n, batch),
            "kept": classify(seq_q, seq_k, heads, inputs, device, block_m, block_n, batch, pairs=1)}


# -- per-token routing, key-block-major ("gathered") -----------------------------------------------
# Per-token routing scatters each tile row's choices over many key blocks, so a tile-major launch
# visits the union of its rows' blocks for a few rows each. The gathered schedule walks the key
# blocks instead: for each chosen block, the query rows that chose it, gathered BLOCK_M at a time
# (`gathered_lists`: a counting sort of the selection, O(N top)). Each (row, choice) gets one
# partial output and LSE; `merge_parts` combines them with the tile-major launch of mask AND keep
# (KEPT_ONLY), exactly: the chosen pairs (mask AND NOT keep) and the kept ones are disjoint.
# The backward is deterministic too: dK/dV per key tile over its blocks' gathered rows, dQ per
# (row, choice) slot, summed.

@triton.jit
def _gathered_rows(Order, Work, group, w, n_entries, WORK_ITEMS, ROUTE_TOP: tl.constexpr, BLOCK_M: tl.constexpr):
    """Work item w of a selection group: its key block (-1: none), and up to BLOCK_M (row, choice)
    entries that chose it, as the entry (row * ROUTE_TOP + choice), its row, and which lanes hold one."""
    item = Work + (group.to(tl.int64) * WORK_ITEMS + w) * 3
    block, first, end = tl.load(item), tl.load(item + 1), tl.load(item + 2)
    slots = first + tl.arange(0, BLOCK_M)
    live = slots < tl.where(block >= 0, end, first)  # an item past the group's holds none
    entries, rows = _entries(Order, group, slots, live, n_entries, ROUTE_TOP)
    return block, entries, rows, live


@triton.jit
def _work_item(Order, Work, N_Q, WORK_ITEMS, HEADS: tl.constexpr, BLOCK_M: tl.constexpr, ROUTE_TOP: tl.constexpr,
               ROUTE_SHARE: tl.constexpr):
    """The program's batch entry and head, its selection group's entry count, and its work item
    (`_gathered_rows`): grid (work items, batch * heads)."""
    off_b = tl.program_id(1) // HEADS
    off_h = tl.program_id(1) % HEADS
    group = off_b * (HEADS // ROUTE_SHARE) + off_h // ROUTE_SHARE
    n_entries = N_Q * ROUTE_TOP
    block, entries, rows, live = _gathered_rows(Order, Work, group, tl.program_id(0), n_entries, WORK_ITEMS,
                                                ROUTE_TOP, BLOCK_M)
    return off_b, off_h, n_entries, block, entries, rows, live


@triton.jit
def _entries(Order, group, slots, live, n_entries, ROUTE_TOP: tl.constexpr):
    """Slots `slots` of a selection group's entries sorted by block: each entry (row * ROUTE_TOP +
    choice) and its row; lanes not `live` read row 0, which the callers mask."""
    entries = tl.load(Order + group.to(tl.int64) * n_entries + slots, mask=live, other=0)
    return entries, entries // ROUTE_TOP


@triton.jit
def _chosen_pairs(q_pos, k_pos, live, block, off_b, off_h, N_Q, N_K, INPUTS_B, stride_input, INPUT_LEN,
                  HEADS: tl.constexpr, ROUTE_BLOCK: tl.constexpr):
    """The pairs a chosen block adds: mask AND NOT keep, inside the block and the lengths."""
    inside = live[:, None] & (k_pos // ROUTE_BLOCK == block) & (k_pos < N_K)
    allowed = _mask(q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUTS_B, stride_input, INPUT_LEN, HEADS)
    keep = _keep(q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUTS_B, stride_input, INPUT_LEN, HEADS)
    return inside & allowed & ~keep


@triton.jit
def gathered_forward(Q, K, V, Parts, PartLse, Order, Work, INPUTS, stride_input, stride_input_b, INPUT_LEN,
                     sm_scale, N_Q, N_K, WORK_ITEMS, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                     stride_vb, stride_vh, stride_vn,
                     HEADS: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
                     ROUTE_TOP: tl.constexpr, ROUTE_BLOCK: tl.constexpr, ROUTE_SHARE: tl.constexpr):
    """The partial output and LSE of each (row, choice) of one work item: its rows against the
    chosen block. Parts: float32 (B * H, N_Q * ROUTE_TOP, HEAD_DIM); PartLse (B * H, N_Q * ROUTE_TOP)."""
    off_b, off_h, n_entries, block, entries, rows, live = _work_item(Order, Work, N_Q, WORK_ITEMS, HEADS, BLOCK_M,
                                                                     ROUTE_TOP, ROUTE_SHARE)
    off_kvh = off_h // GROUP
    if block >= 0:
        q_pos = rows[:, None]
        offs_d = tl.arange(0, HEAD_DIM_P)
        q = _load_tile(Q + off_b * stride_qb + off_h * stride_qh, rows, tl.where(live, N_Q, 0), stride_qm,
                       HEAD_DIM, HEAD_DIM_P, True)
        K_head = K + off_b * stride_kb + off_kvh * stride_kh
        V_head = V + off_b * stride_vb + off_kvh * stride_vh
        INPUTS_B = INPUTS + off_b * stride_input_b
        qk_scale = sm_scale * LOG2E
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM_P], tl.float32)
        for n0 in range(block * ROUTE_BLOCK, tl.minimum((block + 1) * ROUTE_BLOCK, N_K), BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            k_pos = offs_n[None, :]
            k = _load_tile(K_head, offs_n, N_K, stride_kn, HEAD_DIM, HEAD_DIM_P, True)
            v = _load_tile(V_head, offs_n, N_K, stride_vn, HEAD_DIM, HEAD_DIM_P, True)
            qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)
            score = _logit2(qk * qk_scale, q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUTS_B, stride_input, INPUT_LEN,
                            HEADS)
            allowed = _chosen_pairs(q_pos, k_pos, live, block, off_b, off_h, N_Q, N_K, INPUTS_B, stride_input,
                                    INPUT_LEN, HEADS, ROUTE_BLOCK)
            acc, l_i, m_i = _online_softmax(acc, l_i, m_i, tl.where(allowed, score, float("-inf")), v, PRECISION)
        out, lse = _normalized(acc, l_i, m_i)
        slot = tl.program_id(1).to(tl.int64) * n_entries + entries
        tl.store(Parts + slot[:, None] * HEAD_DIM + offs_d[None, :], out,
                 mask=live[:, None] & (offs_d < HEAD_DIM)[None, :])
        tl.store(PartLse + slot, lse, mask=live)


@triton.jit
def gathered_backward_q(Q, K, V, DO, Lse, Delta, DQParts, Order, Work, INPUTS, stride_input, stride_input_b,
                        INPUT_LEN, sm_scale, N_Q, N_K, WORK_ITEMS, stride_qb, stride_qh, stride_qm,
                        stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
                        HEADS: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
                        ROUTE_TOP: tl.constexpr, ROUTE_BLOCK: tl.constexpr, ROUTE_SHARE: tl.constexpr):
    """dQ of each (row, choice) of one work item from its chosen block, into its own slot of
    DQParts (float32, as Parts): the slots are summed after, so no two programs write one row."""
    off_b, off_h, n_entries, block, entries, rows, live = _work_item(Order, Work, N_Q, WORK_ITEMS, HEADS, BLOCK_M,
                                                                     ROUTE_TOP, ROUTE_SHARE)
    off_kvh = off_h // GROUP
    if block >= 0:
        q_pos = rows[:, None]
        offs_d = tl.arange(0, HEAD_DIM_P)
        head = off_b * stride_qb + off_h * stride_qh
        q = _load_tile(Q + head, rows, tl.where(live, N_Q, 0), stride_qm, HEAD_DIM, HEAD_DIM_P, True)
        do = _load_tile(DO + head, rows, tl.where(live, N_Q, 0), stride_qm, HEAD_DIM, HEAD_DIM_P, True)
        lse2, delta = _row_statistics(Lse, Delta, (off_b * HEADS + off_h) * N_Q + rows, live)
        K_head = K + off_b * stride_kb + off_kvh * stride_kh
        V_head = V + off_b * stride_vb + off_kvh * stride_vh
        INPUTS_B = INPUTS + off_b * stride_input_b
        qk_scale = sm_scale * LOG2E
        dq = tl.zeros([BLOCK_M, HEAD_DIM_P], tl.float32)
        for n0 in range(block * ROUTE_BLOCK, tl.minimum((block + 1) * ROUTE_BLOCK, N_K), BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            k_pos = offs_n[None, :]
            k = _load_tile(K_head, offs_n, N_K, stride_kn, HEAD_DIM, HEAD_DIM_P, True)
            v = _load_tile(V_head, offs_n, N_K, stride_vn, HEAD_DIM, HEAD_DIM_P, True)
            p, ds = _probabilities(q, k, do, v, lse2, delta, q_pos, k_pos, off_b, off_h, N_Q, N_K, qk_scale,
                                   INPUTS_B, stride_input, INPUT_LEN, INPUTS, HEADS, False, False, PRECISION,
                                   LOGIT_IS_SCORE, 0, 1, 1)
            allowed = _chosen_pairs(q_pos, k_pos, live, block, off_b, off_h, N_Q, N_K, INPUTS_B, stride_input,
                                    INPUT_LEN, HEADS, ROUTE_BLOCK)
            dq += tl.dot(tl.where(allowed, ds, 0.0).to(k.dtype), k, input_precision=PRECISION)
        slot = tl.program_id(1).to(tl.int64) * n_entries + entries
        tl.store(DQParts + slot[:, None] * HEAD_DIM + offs_d[None, :], dq * sm_scale,
                 mask=live[:, None] & (offs_d < HEAD_DIM)[None, :])


@triton.jit
def gathered_backward_kv(Q, K, V, DO, Lse, Delta, DK, DV, Order, Offsets, INPUTS, stride_input, stride_input_b,
                         INPUT_LEN, sm_scale, N_Q, N_K, BLOCKS, stride_qb, stride_qh, stride_qm,
                         stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
                         HEADS: tl.constexpr, HEADS_KV: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
                         HEAD_DIM_P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         PRECISION: tl.constexpr, ROUTE_TOP: tl.constexpr, ROUTE_BLOCK: tl.constexpr,
                         ROUTE_SHARE: tl.constexpr):
    """dK and dV of one key tile from the chosen pairs: for each block the tile overlaps and each
    query head of the group, the gathered rows that chose it (Offsets: where each block's
    entries start in Order, per selection group)."""
    start_n = tl.program_id(0)
    off_b = tl.program_id(1) // HEADS_KV
    off_kvh = tl.program_id(1) % HEADS_KV
    offs_n = start_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM_P)
    k_pos = offs_n[None, :]
    k = _load_tile(K + off_b * stride_kb + off_kvh * stride_kh, offs_n, N_K, stride_kn, HEAD_DIM, HEAD_DIM_P, True)
    v = _load_tile(V + off_b * stride_vb + off_kvh * stride_vh, offs_n, N_K, stride_vn, HEAD_DIM, HEAD_DIM_P, True)
    INPUTS_B = INPUTS + off_b * stride_input_b
    qk_scale = sm_scale * LOG2E
    n_entries = N_Q * ROUTE_TOP
    dk = tl.zeros([BLOCK_N, HEAD_DIM_P], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM_P], tl.float32)
    first_block = start_n * BLOCK_N // ROUTE_BLOCK
    last_block = tl.minimum((tl.minimum((start_n + 1) * BLOCK_N, N_K) - 1) // ROUTE_BLOCK, BLOCKS - 1)
    for g in range(GROUP):
        off_h = off_kvh * GROUP + g
        group = (off_b * (HEADS // ROUTE_SHARE) + off_h // ROUTE_SHARE).to(tl.int64)
        head = off_b * stride_qb + off_h * stride_qh
        stats = (off_b * HEADS + off_h) * N_Q
        for block in range(first_block, last_block + 1):
            begin = tl.load(Offsets + group * (BLOCKS + 1) + block)
            end = tl.load(Offsets + group * (BLOCKS + 1) + block + 1)
            for s0 in range(begin, end, BLOCK_M):
                slots = s0 + tl.arange(0, BLOCK_M)
                live = slots < end
                _, rows = _entries(Order, group, slots, live, n_entries, ROUTE_TOP)
                q_pos = rows[:, None]
                q = _load_tile(Q + head, rows, tl.where(live, N_Q, 0), stride_qm, HEAD_DIM, HEAD_DIM_P, True)
                do = _load_tile(DO + head, rows, tl.where(live, N_Q, 0), stride_qm, HEAD_DIM, HEAD_DIM_P, True)
                lse2, delta = _row_statistics(Lse, Delta, stats + rows, live)
                p, ds = _probabilities(q, k, do, v, lse2, delta, q_pos, k_pos, off_b, off_h, N_Q, N_K, qk_scale,
                                       INPUTS_B, stride_input, INPUT_LEN, INPUTS, HEADS, False, False, PRECISION,
                                       LOGIT_IS_SCORE, 0, 1, 1)
                allowed = _chosen_pairs(q_pos, k_pos, live, block, off_b, off_h, N_Q, N_K, INPUTS_B, stride_input,
                                        INPUT_LEN, HEADS, ROUTE_BLOCK)
                dv += tl.dot(tl.trans(tl.where(allowed, p, 0.0).to(do.dtype)), do, input_precision=PRECISION)
                dk += tl.dot(tl.trans(tl.where(allowed, ds, 0.0).to(q.dtype)), q, input_precision=PRECISION)
    kv_mask = (offs_n < N_K)[:, None] & (offs_d < HEAD_DIM)[None, :]
    out = off_b * stride_kb + off_kvh * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :]
    tl.store(DK + out, dk * sm_scale, mask=kv_mask)
    tl.store(DV + out, dv, mask=kv_mask)


def gathers():
    """Whether this module's routed launches run the gathered schedule unless told: per-token
    routing (on MoBA's routing it visits 1.4-4.5x fewer tiles than the tile-major schedule,
    benchmarks/routing.py --schedules). attnlang's own kernels choose per length instead (the
    simulator's faster, `AttentionKernel.schedule_for`): with many small blocks (Quest) the
    merge of the partial outputs can cost more than the tiles it saves."""
    return ROUTE is not None and ROUTE["qblock"] == 1


def gathered_lists(chosen, blocks, block_m):
    """The selection regrouped by key block, on the device and with no host sync: per selection
    group, `order` (the entries row * top + choice, sorted by chosen block, then by row),
    `offsets` (B * groups, blocks + 1: where each block's entries start), and `work` (B * groups,
    items, 3: per program, its block (-1 past the group's items), its first entry and the block's
    end, of which it takes block_m; the items are an upper bound, cdiv(units * top, block_m) +
    blocks, so that the grid needs no count)."""
    batch, shared, units, top = chosen.shape
    flat = chosen.reshape(batch * shared, units * top).to(torch.int64)
    key = torch.where(flat >= 0, flat, blocks)  # NONE_CHOSEN sorts past the last block
    order = torch.sort(key, dim=1, stable=True).indices.to(torch.int32)
    counts = torch.zeros((batch * shared, blocks + 1), dtype=torch.int64, device=chosen.device)
    counts.scatter_add_(1, key, torch.ones_like(key))
    offsets = torch.nn.functional.pad(counts[:, :blocks].cumsum(1), (1, 0))
    chunks = (counts[:, :blocks] + block_m - 1) // block_m
    ends = chunks.cumsum(1)
    items = triton.cdiv(units * top, block_m) + blocks
    item = torch.arange(items, device=chosen.device).expand(batch * shared, items).contiguous()
    block = torch.searchsorted(ends, item, right=True)
    inside = torch.clamp(block, max=blocks - 1)
    first = offsets.gather(1, inside) + (item - ends.gather(1, inside) + chunks.gather(1, inside)) * block_m
    work = torch.stack([torch.where(block < blocks, block, -1), first, offsets.gather(1, inside + 1)], -1)
    return {"order": order, "offsets": offsets.to(torch.int32).contiguous(), "work": work.to(torch.int32).contiguous()}


def merge_parts(out, lse, parts, part_lse):
    """Output and LSE (float32) of the tile-map half (out, lse: the kept pairs) merged with the
    partial outputs and LSEs of each (row, choice), (B, H, N, top, D) and (B, H, N, top)."""
    lses = torch.cat([lse[..., None], part_lse], -1)
    total = torch.logsumexp(lses, -1)  # -inf where a row has no allowed pair
    weights = torch.exp(lses - torch.where(torch.isinf(total), 0.0, total)[..., None])
    merged = weights[..., 0, None] * out + torch.einsum("bhnt,bhntd->bhnd", weights[..., 1:], parts)
    return merged, total


# -- launch and autograd --------------------------------------------------------------------------

def launch_meta(tables, heads, heads_kv, head_dim, dtype, block_m, block_n, seq_q, seq_k):
    """The constexpr specialization of a launch. RAGGED: a length is not whole tiles, so PARTIAL
    tiles check the lengths (at most two variants per shape, as FlexAttention's IS_DIVISIBLE).
    ROUTE_*: the selection PARTIAL tiles read (tables of a routed pattern hold it: "chosen"; a
    gathered launch's tile-map half reads only keep: KEPT_ONLY)."""
    routed = "chosen" in tables
    top = (KEPT_ONLY if "gathered" in tables else ROUTE["top"]) if routed else 0
    return dict(HEADS=heads, GROUP=heads // heads_kv, MAP_HEADS=tables["map_heads"], MAP_BATCH=tables["map_batch"],
                HEAD_DIM=head_dim, HEAD_DIM_P=max(16, triton.next_power_of_2(head_dim)),
                BLOCK_M=block_m, BLOCK_N=block_n, RAGGED=seq_q % block_m != 0 or seq_k % block_n != 0,
                PRECISION="ieee" if dtype == torch.float32 else "tf32",
                ROUTE_TOP=top, ROUTE_QBLOCK=ROUTE["qblock"] if routed else 1,
                ROUTE_BLOCK=ROUTE["block"] if routed else 1,
                ROUTE_SHARE=heads // tables["chosen"].shape[1] if routed else 1)


def _table_arguments(tables, direction):
    (full_num, full_runs), (part_num, part_idx) = tables[direction]
    return [full_num, full_runs, full_runs.shape[-2], part_num, part_idx, part_idx.shape[-1]]


def _input_arguments(stacked_inputs, tables):
    """The inputs' arguments, then the selection (a placeholder for an unrouted pattern)."""
    stacked, stride_b, length, _ = stacked_inputs
    chosen = tables.get("chosen", stacked)
    return [stacked, stacked.shape[1] * stacked.shape[2], stride_b, length, chosen]


def tables_for(q, k, inputs, block_m, block_n, schedule=None):
    """The tables of this launch built on the device: the pattern's, or the selection's of q and k
    (`schedule` as `routed_tables` takes it)."""
    batch, heads, seq_q, _ = q.shape
    if ROUTE is None:
        return block_tables(seq_q, k.shape[2], heads, inputs, q.device, block_m, block_n, batch)
    maps = route_maps(seq_q, k.shape[2], heads, inputs, q.device, block_m, block_n, batch)
    return routed_tables(q, k, inputs, maps, block_m, block_n, schedule)


def forward(q, k, v, inputs, scale, block_m, block_n, tables=None, launch=None):
    """Output and LSE of contiguous q, k, v (no autograd); builds the tables if not given."""
    batch, heads, seq_q, head_dim = q.shape
    launch = launch or launch_for(block_m, block_n, head_dim, _capability(q.device), q.element_size(),
                                  len(INPUT_NAMES))
    heads_kv, seq_k = k.shape[1], k.shape[2]
    if tables is None:
        tables = tables_for(q, k, inputs, block_m, block_n)
    meta = launch_meta(tables, heads, heads_kv, head_dim, q.dtype, block_m, block_n, seq_q, seq_k)
    out = torch.empty_like(q, dtype=torch.float32 if "gathered" in tables else q.dtype)  # float32: merged after
    lse = torch.empty((batch, heads, seq_q), device=q.device, dtype=torch.float32)
    stacked = stack_inputs(inputs, q.device)
    attention_forward[(triton.cdiv(seq_q, block_m), batch * heads)](
        q, k, v, out, lse, *_table_arguments(tables, "forward"),
        *_input_arguments(stacked, tables), scale, seq_q, seq_k,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3], **meta, **launch["forward"])
    if "gathered" in tables:  # the chosen blocks, key-block-major, merged with the kept pairs' output
        lists, top = tables["gathered"], ROUTE["top"]
        parts = torch.zeros((batch * heads, seq_q * top, head_dim), device=q.device, dtype=torch.float32)
        part_lse = torch.full((batch * heads, seq_q * top), float("-inf"), device=q.device, dtype=torch.float32)
        gathered_forward[(lists["work"].shape[1], batch * heads)](
            q, k, v, parts, part_lse, lists["order"], lists["work"], *_input_arguments(stacked, tables)[:4], scale,
            seq_q, seq_k, lists["work"].shape[1], *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
            **_gathered_meta(meta), **launch["forward"])
        out, lse = merge_parts(out, lse, parts.view(batch, heads, seq_q, top, head_dim),
                               part_lse.view(batch, heads, seq_q, top))
        out = out.to(q.dtype)
    return out, lse, tables


def _gathered_meta(meta):
    """The specialization of the gathered kernels: a launch's, with the selection's top."""
    names = ("HEADS", "GROUP", "HEAD_DIM", "HEAD_DIM_P", "BLOCK_M", "BLOCK_N", "PRECISION", "ROUTE_BLOCK",
             "ROUTE_SHARE")
    return {name: meta[name] for name in names} | {"ROUTE_TOP": ROUTE["top"]}


def backward(q, k, v, out, lse, dout, dlse, inputs, scale, block_m, block_n, tables, launch=None):
    """dq, dk, dv of contiguous tensors, given the output gradient and (or None) the LSE's."""
    batch, heads, seq_q, head_dim = q.shape
    launch = launch or launch_for(block_m, block_n, head_dim, _capability(q.device), q.element_size(),
                                  len(INPUT_NAMES))
    heads_kv, seq_k = k.shape[1], k.shape[2]
    dout = torch.zeros_like(out) if dout is None else dout.contiguous()
    delta = (dout.float() * out.float()).sum(-1)
    if dlse is not None:
        delta = delta - dlse.float()
    delta = delta.contiguous()
    gathered = "gathered" in tables  # then the tile-map half's gradients are summed with the gathered ones
    dq, dk, dv = (torch.empty_like(x, dtype=torch.float32 if gathered else x.dtype) for x in (q, k, v))
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3])
    meta = launch_meta(tables, heads, heads_kv, head_dim, q.dtype, block_m, block_n, seq_q, seq_k)
    stacked = _input_arguments(stack_inputs(inputs, q.device), tables)
    attention_backward_kv[(triton.cdiv(seq_k, block_n), batch * heads_kv)](
        q, k, v, dout, lse, delta, dk, dv, *_table_arguments(tables, "backward"), *stacked, scale,
        seq_q, seq_k, *strides, HEADS_KV=heads_kv, **meta, **launch["backward_kv"])
    attention_backward_q[(triton.cdiv(seq_q, block_m), batch * heads)](
        q, k, v, dout, lse, delta, dq, *_table_arguments(tables, "forward"), *stacked, scale,
        seq_q, seq_k, *strides, **meta, **launch["backward_q"])
    if gathered:
        lists, top, items = tables["gathered"], ROUTE["top"], tables["gathered"]["work"].shape[1]
        dk_chosen, dv_chosen = torch.empty_like(dk), torch.empty_like(dv)  # every key row is stored
        gathered_backward_kv[(triton.cdiv(seq_k, block_n), batch * heads_kv)](
            q, k, v, dout, lse, delta, dk_chosen, dv_chosen, lists["order"], lists["offsets"], *stacked[:4], scale,
            seq_q, seq_k, lists["offsets"].shape[1] - 1, *strides, HEADS_KV=heads_kv, **_gathered_meta(meta),
            **launch["backward_kv"])
        dq_parts = torch.zeros((batch * heads, seq_q * top, head_dim), device=q.device, dtype=torch.float32)
        gathered_backward_q[(items, batch * heads)](
            q, k, v, dout, lse, delta, dq_parts, lists["order"], lists["work"], *stacked[:4], scale, seq_q, seq_k,
            items, *strides, **_gathered_meta(meta), **launch["backward_q"])
        dq = dq + dq_parts.view(batch, heads, seq_q, top, head_dim).sum(3)
        dk, dv = dk + dk_chosen, dv + dv_chosen
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
    return dq, dk, dv


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, inputs, scale, block_m, block_n, tables, launch):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out, lse, tables = forward(q, k, v, inputs, scale, block_m, block_n, tables, launch)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.arguments = (inputs, scale, block_m, block_n, tables, launch)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = backward(q, k, v, out, lse, dout, dlse, *ctx.arguments)
        return dq, dk, dv, None, None, None, None, None, None


# Opt-in shared memory one block may use, by compute capability (CUDA C++ Programming Guide,
# "Technical Specifications per Compute Capability"): what Triton checks before a launch.
SHARED_LIMITS = {70: 96 * 1024, 75: 64 * 1024, 80: 163 * 1024, 86: 99 * 1024, 87: 163 * 1024, 89: 99 * 1024,
                 90: 227 * 1024, 100: 227 * 1024, 120: 99 * 1024}
KERNELS = ("forward", "backward_kv", "backward_q")


def shared_bytes(kernel, block_m, block_n, head_dim, element_bytes=2, num_stages=2, capability=90, inputs=0):
    """Shared memory one program of `kernel` needs: a model of Triton's allocation, equal to the
    compiled metadata or above it (benchmarks/results/launch_configs.json; tests/test_targets.py
    checks it). The tiles a program keeps, the tiles its loop streams once per pipeline buffer
    (Hopper's pipeliner keeps num_stages of them, Ampere's num_stages - 1), the P or dS tile
    that feeds the second dot, dK/dV's LSE and delta rows, and for each runtime input a query-
    and a key-indexed int64 vector (their layout conversions go through shared memory)."""
    d = max(16, triton.next_power_of_2(head_dim))
    buffers = num_stages if capability >= 90 else max(1, num_stages - 1)
    if kernel == "forward":    # Q; K and V
        kept, streamed, rows = block_m * d, 2 * block_n * d, 0
    elif kernel == "backward_kv":  # K and V; Q and dO, with their LSE and delta
        kept, streamed, rows = 2 * block_n * d, 2 * block_m * d, 2 * block_m * 4
    else:                      # Q and dO; K and V
        kept, streamed, rows = 2 * block_m * d, 2 * block_n * d, 0
    vectors = inputs * (block_m + block_n) * 8
    return (kept + buffers * streamed + block_m * block_n) * element_bytes + buffers * rows + vectors


@functools.cache  # every launch asks; the answer depends on these numbers alone
def launch_for(block_m, block_n, head_dim=128, capability=None, element_bytes=2, inputs=0):
    """num_warps and num_stages of each kernel. Warps follow the tile a kernel holds in
    registers: 8 once its side is 128, else 4 (query rows for the forward and dQ; for dK/dV the
    larger side, since its P and dS tiles are BLOCK_M x BLOCK_N too), which keeps the
    accumulators in registers (benchmarks/launch_configs.py). Two stages (loads one tile ahead)
    where every kernel's shared memory fits the architecture's limit, else one; `capability`
    None (CPU, interpreter) takes Hopper's."""
    capability = capability or 90
    limit = SHARED_LIMITS.get(capability, min(SHARED_LIMITS.values()))
    fits = all(shared_bytes(kernel, block_m, block_n, head_dim, element_bytes, 2, capability, inputs) <= limit
               for kernel in KERNELS)
    stages = 2 if fits else 1

    def config(rows):
        return {"num_warps": 8 if rows >= 128 else 4, "num_stages": stages}
    return {"forward": config(block_m), "backward_kv": config(max(block_m, block_n)), "backward_q": config(block_m)}


def _capability(device):
    """major * 10 + minor of a CUDA device (None elsewhere: the interpreter ignores launch options)."""
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return major * 10 + minor


def attention(q, k, v, inputs=None, scale=None, return_lse=False, block_m=BLOCK[0], block_n=BLOCK[1], tables=None,
              launch=None, schedule=None):
    """Attention with this module's pattern. q: (B, H, N_q, D); k, v: (B, H_kv, N_k, D); inputs:
    name -> int tensor of one entry per token ((tokens,) or (B, tokens)). Differentiable.
    `tables` (as `block_tables` returns them) skips building them on the device, e.g. when a
    compiler's analysis has them; `launch` gives each kernel its num_warps and num_stages;
    `schedule` a routed pattern's ("gathered" or "tiles"; None: `gathers()`)."""
    inputs = dict(inputs or {})
    missing = [name for name in INPUT_NAMES if name not in inputs]
    if missing:
        raise ValueError(f"{PATTERN} needs input {missing[0]!r}: an int tensor with one entry per token")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if tables is None and schedule is not None:
        tables = tables_for(q.contiguous(), k.contiguous(), inputs, block_m, block_n, schedule)
    out, lse = _Attention.apply(q, k, v, inputs, scale, block_m, block_n, tables, launch)
    return (out, lse) if return_lse else out
