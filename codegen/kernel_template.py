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
    MAP_HEADS      HEADS when the mask reads h, else 1 (rows of the block tables)
    MAP_BATCH      batch entries with their own block map (the mask reads b, or per-batch inputs)
    GROUP          query heads per key/value head (grouped-query attention)
    INPUTS         the runtime inputs stacked: int64 (inputs, rows, tokens); the pattern reads
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

# <attnlang:pattern>
PATTERN = "dense()"
MASK_READS_HEAD = False
MASK_READS_BATCH = False
INPUT_NAMES = ()
INPUT_READS = ""
BLOCK = (64, 64)


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
def _forward_tiles(acc, l_i, m_i, q, K_head, V_head, NUM, IDX, width, row, q_pos, off_b, off_h, N_Q, N_K,
                   qk_scale, INPUTS_B, stride_input, INPUT_LEN, stride_kn, stride_vn,
                   HEADS: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr,
                   PARTIAL: tl.constexpr, BOUNDED: tl.constexpr, PRECISION: tl.constexpr):
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
                allowed = _mask(q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUTS_B, stride_input, INPUT_LEN, HEADS)
                if BOUNDED:  # rows past N_Q are never stored: only the keys need the bound
                    allowed = allowed & (k_pos < N_K)
                score = tl.where(allowed, score, float("-inf"))
            # -- online softmax: a row with nothing allowed yet keeps m_i = -inf and sums 0 --
            m_new = tl.maximum(m_i, tl.max(score, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(score - m_safe[:, None])
            alpha = tl.math.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
    return acc, l_i, m_i


@triton.jit
def attention_forward(Q, K, V, Out, Lse, FULL_NUM, FULL_IDX, full_width, PART_NUM, PART_IDX, part_width,
                      INPUTS, stride_input, stride_input_b, INPUT_LEN, sm_scale, N_Q, N_K,
                      stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                      stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
                      HEADS: tl.constexpr, GROUP: tl.constexpr, MAP_HEADS: tl.constexpr, MAP_BATCH: tl.constexpr,
                      HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, RAGGED: tl.constexpr, PRECISION: tl.constexpr):
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
    qk_scale = sm_scale * LOG2E
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_P], tl.float32)
    row = _table_row(start_m, off_b, off_h, MAP_HEADS, MAP_BATCH)
    # -- full tiles: no mask, no bounds --
    acc, l_i, m_i = _forward_tiles(acc, l_i, m_i, q, K_head, V_head, FULL_NUM, FULL_IDX, full_width, row, q_pos,
                                   off_b, off_h, N_Q, N_K, qk_scale, INPUTS_B, stride_input, INPUT_LEN,
                                   stride_kn, stride_vn, HEADS, BLOCK_N, HEAD_DIM, HEAD_DIM_P, False, False,
                                   PRECISION)
    # -- partial tiles: the pattern's mask --
    acc, l_i, m_i = _forward_tiles(acc, l_i, m_i, q, K_head, V_head, PART_NUM, PART_IDX, part_width, row, q_pos,
                                   off_b, off_h, N_Q, N_K, qk_scale, INPUTS_B, stride_input, INPUT_LEN,
                                   stride_kn, stride_vn, HEADS, BLOCK_N, HEAD_DIM, HEAD_DIM_P, True, RAGGED,
                                   PRECISION)
    # -- epilogue: fully masked rows give 0 and -inf; the LSE back in natural units --
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(tl.where(empty, 1.0, l_i))) / LOG2E)
    q_mask = (offs_m < N_Q)[:, None] & (offs_d < HEAD_DIM)[None, :]
    tl.store(Out + off_b * stride_ob + off_h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :],
             out.to(Out.dtype.element_ty), mask=q_mask)
    tl.store(Lse + (off_b * HEADS + off_h) * N_Q + offs_m, lse, mask=offs_m < N_Q)


# -- backward -------------------------------------------------------------------------------------

@triton.jit
def _probabilities(q, k, do, v, lse2, delta, q_pos, k_pos, off_b, off_h, N_Q, N_K, qk_scale, INPUTS_B,
                   stride_input, INPUT_LEN, HEADS: tl.constexpr, PARTIAL: tl.constexpr, BOUNDED: tl.constexpr,
                   PRECISION: tl.constexpr, LOGIT_IS_SCORE: tl.constexpr):
    """Recompute the probabilities of one tile; return them and dS (w.r.t. the natural score)."""
    qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)
    score = qk * qk_scale
    if not LOGIT_IS_SCORE:
        score = _logit2(score, q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUTS_B, stride_input, INPUT_LEN, HEADS)
    p = tl.math.exp2(score - lse2[:, None])
    if PARTIAL:
        allowed = _mask(q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUTS_B, stride_input, INPUT_LEN, HEADS)
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
                       qk_scale, INPUTS_B, stride_input, INPUT_LEN, stride_qm,
                       HEADS: tl.constexpr, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr,
                       HEAD_DIM_P: tl.constexpr, PARTIAL: tl.constexpr, BOUNDED: tl.constexpr,
                       PRECISION: tl.constexpr, LOGIT_IS_SCORE: tl.constexpr):
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
                                   stride_input, INPUT_LEN, HEADS, PARTIAL, BOUNDED, PRECISION, LOGIT_IS_SCORE)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
    return dk, dv


@triton.jit
def attention_backward_kv(Q, K, V, DO, Lse, Delta, DK, DV, FULL_NUM, FULL_IDX, full_width, PART_NUM, PART_IDX,
                          part_width, INPUTS, stride_input, stride_input_b, INPUT_LEN, sm_scale, N_Q, N_K,
                          stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                          stride_vb, stride_vh, stride_vn,
                          HEADS: tl.constexpr, HEADS_KV: tl.constexpr, GROUP: tl.constexpr,
                          MAP_HEADS: tl.constexpr, MAP_BATCH: tl.constexpr,
                          HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, RAGGED: tl.constexpr,
                          PRECISION: tl.constexpr):
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
        dk, dv = _backward_kv_tiles(dk, dv, k, v, Q + head, DO + head, Lse + stats, Delta + stats, FULL_NUM,
                                    FULL_IDX, full_width, row, k_pos, off_b, off_h, N_Q, N_K, qk_scale, INPUTS_B,
                                    stride_input, INPUT_LEN, stride_qm, HEADS, BLOCK_M, HEAD_DIM, HEAD_DIM_P,
                                    False, False, PRECISION, LOGIT_IS_SCORE)
        dk, dv = _backward_kv_tiles(dk, dv, k, v, Q + head, DO + head, Lse + stats, Delta + stats, PART_NUM,
                                    PART_IDX, part_width, row, k_pos, off_b, off_h, N_Q, N_K, qk_scale, INPUTS_B,
                                    stride_input, INPUT_LEN, stride_qm, HEADS, BLOCK_M, HEAD_DIM, HEAD_DIM_P,
                                    True, RAGGED, PRECISION, LOGIT_IS_SCORE)
    kv_mask = (offs_n < N_K)[:, None] & (offs_d < HEAD_DIM)[None, :]
    out = off_b * stride_kb + off_kvh * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :]
    tl.store(DK + out, (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _backward_q_tiles(dq, q, do, lse2, delta, K_head, V_head, NUM, IDX, width, row, q_pos, off_b, off_h, N_Q,
                      N_K, qk_scale, INPUTS_B, stride_input, INPUT_LEN, stride_kn, stride_vn,
                      HEADS: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr,
                      PARTIAL: tl.constexpr, BOUNDED: tl.constexpr, PRECISION: tl.constexpr,
                      LOGIT_IS_SCORE: tl.constexpr):
    """dQ of one query tile from the key tiles of one forward table."""
    for i in range(tl.load(NUM + row)):
        first, count = _table_entry(IDX, width, row, i, PARTIAL)
        for j in range(count):
            offs_n = (first + j) * BLOCK_N + tl.arange(0, BLOCK_N)
            k_pos = offs_n[None, :]
            k = _load_tile(K_head, offs_n, N_K, stride_kn, HEAD_DIM, HEAD_DIM_P, BOUNDED)
            v = _load_tile(V_head, offs_n, N_K, stride_vn, HEAD_DIM, HEAD_DIM_P, BOUNDED)
            p, ds = _probabilities(q, k, do, v, lse2, delta, q_pos, k_pos, off_b, off_h, N_Q, N_K, qk_scale, INPUTS_B,
                                   stride_input, INPUT_LEN, HEADS, PARTIAL, BOUNDED, PRECISION, LOGIT_IS_SCORE)
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    return dq


@triton.jit
def attention_backward_q(Q, K, V, DO, Lse, Delta, DQ, FULL_NUM, FULL_IDX, full_width, PART_NUM, PART_IDX,
                         part_width, INPUTS, stride_input, stride_input_b, INPUT_LEN, sm_scale, N_Q, N_K,
                         stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                         stride_vb, stride_vh, stride_vn,
                         HEADS: tl.constexpr, GROUP: tl.constexpr, MAP_HEADS: tl.constexpr, MAP_BATCH: tl.constexpr,
                         HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, RAGGED: tl.constexpr,
                         PRECISION: tl.constexpr):
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
    qk_scale = sm_scale * LOG2E
    dq = tl.zeros([BLOCK_M, HEAD_DIM_P], tl.float32)
    row = _table_row(start_m, off_b, off_h, MAP_HEADS, MAP_BATCH)
    dq = _backward_q_tiles(dq, q, do, lse2, delta, K_head, V_head, FULL_NUM, FULL_IDX, full_width, row, q_pos,
                           off_b, off_h, N_Q, N_K, qk_scale, INPUTS_B, stride_input, INPUT_LEN, stride_kn,
                           stride_vn, HEADS, BLOCK_N, HEAD_DIM, HEAD_DIM_P, False, False, PRECISION,
                           LOGIT_IS_SCORE)
    dq = _backward_q_tiles(dq, q, do, lse2, delta, K_head, V_head, PART_NUM, PART_IDX, part_width, row, q_pos,
                           off_b, off_h, N_Q, N_K, qk_scale, INPUTS_B, stride_input, INPUT_LEN, stride_kn,
                           stride_vn, HEADS, BLOCK_N, HEAD_DIM, HEAD_DIM_P, True, RAGGED, PRECISION,
                           LOGIT_IS_SCORE)
    q_mask = (offs_m < N_Q)[:, None] & (offs_d < HEAD_DIM)[None, :]
    tl.store(DQ + head + offs_m[:, None] * stride_qm + offs_d[None, :], (dq * sm_scale).to(DQ.dtype.element_ty),
             mask=q_mask)


# -- block tables on the device -------------------------------------------------------------------

@triton.jit
def classify_tiles(Kinds, INPUTS, stride_input, stride_input_b, INPUT_LEN, INPUT_LENGTHS, N_Q, N_K,
                   HEADS: tl.constexpr, MAP_HEADS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Kinds[(b, h), m, n] = 0 empty / 1 partial / 2 full, by evaluating the mask on the tile. A
    tile cut by a ragged end is partial; OUT_OF_RANGE where an input index leaves its input."""
    start_m = tl.program_id(0)
    start_n = tl.program_id(1)
    off_b = tl.program_id(2) // MAP_HEADS
    off_h = tl.program_id(2) % MAP_HEADS
    q_pos = (start_m * BLOCK_M + tl.arange(0, BLOCK_M))[:, None]
    k_pos = (start_n * BLOCK_N + tl.arange(0, BLOCK_N))[None, :]
    INPUTS_B = INPUTS + off_b * stride_input_b
    inside = (q_pos < N_Q) & (k_pos < N_K)
    allowed = _mask(q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUTS_B, stride_input, INPUT_LEN, HEADS) & inside
    count = tl.sum(tl.sum(allowed.to(tl.int32), 1), 0)
    kind = tl.where(count == 0, 0, tl.where(count == BLOCK_M * BLOCK_N, 2, 1))
    in_range = _indices_in_range(q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUTS_B, stride_input, INPUT_LEN,
                                 INPUT_LENGTHS, HEADS) | ~inside
    kind = tl.where(tl.min(tl.min(in_range.to(tl.int32), 1), 0) == 0, 3, kind)  # 3: OUT_OF_RANGE
    tl.store(Kinds + (tl.program_id(2) * tl.num_programs(0) + start_m) * tl.num_programs(1) + start_n, kind)


def _indices(selected):
    """Per-row counts and ascending column indices of the selected tiles."""
    counts = selected.sum(-1).to(torch.int32)
    order = torch.argsort((~selected).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return counts.contiguous(), order[..., :max(int(counts.max()), 1)].contiguous()


def _runs(selected):
    """Per-row counts and (first, count) runs of adjacent selected tiles."""
    before = torch.nn.functional.pad(selected[..., :-1], (1, 0))
    after = torch.nn.functional.pad(selected[..., 1:], (0, 1))
    counts, firsts = _indices(selected & ~before)
    _, lasts = _indices(selected & ~after)
    return counts, torch.stack([firsts, lasts - firsts + 1], dim=-1).contiguous()


def _kernel_tables(kinds):
    return [_runs(kinds == 2), _indices(kinds == 1)]


def stack_inputs(inputs, device):
    """The runtime inputs as one int64 (inputs, rows, tokens) tensor, the batch stride (0 when every
    input has one row), the padded length, and each input's own length."""
    tensors = [torch.as_tensor(inputs[name]).to(device=device, dtype=torch.int64) for name in INPUT_NAMES]
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


def block_tables(seq_q, seq_k, heads, inputs, device, block_m=BLOCK[0], block_n=BLOCK[1], batch=1):
    """Block tables on the device: forward (by query tile) and backward (by key tile); one map per
    batch entry when the mask reads b or an input has a row per batch entry."""
    map_heads = heads if MASK_READS_HEAD else 1
    stacked, stride_b, length, lengths = stack_inputs(inputs, device)
    batches = stacked.shape[1] if stride_b else (batch if MASK_READS_BATCH else 1)
    tiles_m, tiles_n = triton.cdiv(seq_q, block_m), triton.cdiv(seq_k, block_n)
    kinds = torch.empty((batches * map_heads, tiles_m, tiles_n), dtype=torch.int8, device=device)
    classify_tiles[(tiles_m, tiles_n, batches * map_heads)](
        kinds, stacked, stacked.shape[1] * stacked.shape[2], stride_b, length, lengths, seq_q, seq_k,
        HEADS=heads, MAP_HEADS=map_heads, BLOCK_M=block_m, BLOCK_N=block_n)
    kinds = kinds.view(batches, map_heads, tiles_m, tiles_n)
    if bool((kinds == OUT_OF_RANGE).any()):
        raise IndexError("an input index is out of range at some pair of the matrix (masked or not); clamp it "
                         f"(the pattern reads {INPUT_READS})")
    transposed = kinds.transpose(-1, -2).contiguous()
    return {"forward": _kernel_tables(kinds), "backward": _kernel_tables(transposed),
            "map_batch": batches, "map_heads": map_heads}


# -- launch and autograd --------------------------------------------------------------------------

def launch_meta(tables, heads, heads_kv, head_dim, dtype, block_m, block_n, seq_q, seq_k):
    """The constexpr specialization of a launch. RAGGED: a length is not whole tiles, so PARTIAL
    tiles check the lengths (at most two variants per shape, as FlexAttention's IS_DIVISIBLE)."""
    return dict(HEADS=heads, GROUP=heads // heads_kv, MAP_HEADS=tables["map_heads"], MAP_BATCH=tables["map_batch"],
                HEAD_DIM=head_dim, HEAD_DIM_P=max(16, triton.next_power_of_2(head_dim)),
                BLOCK_M=block_m, BLOCK_N=block_n, RAGGED=seq_q % block_m != 0 or seq_k % block_n != 0,
                PRECISION="ieee" if dtype == torch.float32 else "tf32")


def _table_arguments(tables, direction):
    (full_num, full_runs), (part_num, part_idx) = tables[direction]
    return [full_num, full_runs, full_runs.shape[-2], part_num, part_idx, part_idx.shape[-1]]


def _input_arguments(stacked_inputs):
    stacked, stride_b, length, _ = stacked_inputs
    return [stacked, stacked.shape[1] * stacked.shape[2], stride_b, length]


def forward(q, k, v, inputs, scale, block_m, block_n, tables=None, launch=None):
    """Output and LSE of contiguous q, k, v (no autograd); builds the tables if not given."""
    batch, heads, seq_q, head_dim = q.shape
    launch = launch or launch_for(block_m, block_n, head_dim, _capability(q.device), q.element_size(),
                                  len(INPUT_NAMES))
    heads_kv, seq_k = k.shape[1], k.shape[2]
    if tables is None:
        tables = block_tables(seq_q, seq_k, heads, inputs, q.device, block_m, block_n, batch)
    meta = launch_meta(tables, heads, heads_kv, head_dim, q.dtype, block_m, block_n, seq_q, seq_k)
    out = torch.empty_like(q)
    lse = torch.empty((batch, heads, seq_q), device=q.device, dtype=torch.float32)
    attention_forward[(triton.cdiv(seq_q, block_m), batch * heads)](
        q, k, v, out, lse, *_table_arguments(tables, "forward"), *_input_arguments(stack_inputs(inputs, q.device)),
        scale, seq_q, seq_k, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3], **meta,
        **launch["forward"])
    return out, lse, tables


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
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3])
    meta = launch_meta(tables, heads, heads_kv, head_dim, q.dtype, block_m, block_n, seq_q, seq_k)
    stacked = _input_arguments(stack_inputs(inputs, q.device))
    attention_backward_kv[(triton.cdiv(seq_k, block_n), batch * heads_kv)](
        q, k, v, dout, lse, delta, dk, dv, *_table_arguments(tables, "backward"), *stacked, scale,
        seq_q, seq_k, *strides, HEADS_KV=heads_kv, **meta, **launch["backward_kv"])
    attention_backward_q[(triton.cdiv(seq_q, block_m), batch * heads)](
        q, k, v, dout, lse, delta, dq, *_table_arguments(tables, "forward"), *stacked, scale,
        seq_q, seq_k, *strides, **meta, **launch["backward_q"])
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
              launch=None):
    """Attention with this module's pattern. q: (B, H, N_q, D); k, v: (B, H_kv, N_k, D); inputs:
    name -> int tensor of one entry per token ((tokens,) or (B, tokens)). Differentiable.
    `tables` (as `block_tables` returns them) skips building them on the device, e.g. when a
    compiler's analysis has them; `launch` gives each kernel its num_warps and num_stages."""
    inputs = dict(inputs or {})
    missing = [name for name in INPUT_NAMES if name not in inputs]
    if missing:
        raise ValueError(f"{PATTERN} needs input {missing[0]!r}: an int tensor with one entry per token")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    out, lse = _Attention.apply(q, k, v, inputs, scale, block_m, block_n, tables, launch)
    return (out, lse) if return_lse else out
