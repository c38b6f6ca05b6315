"""The kernel template: block-sparse flash attention, forward and backward, with two
splice points per pattern — its mask and its logit (plus the logit's derivative).

Glossary of the generated source:
    q_pos, k_pos   int64 token positions of the tile, (BLOCK_M, 1) and (1, BLOCK_N)
    off_b, off_h   batch and (query) head of the program; off_kvh its key/value head
    score          the scaled q·k tile (float32); logit: the pattern's transform of it
    m_i, l_i, acc  running row max, row sum of exp, and output accumulator (online softmax)
    FULL_*/PART_*  block tables: per row of tiles a count, then tile indices, ascending
    MAP_HEADS      1 when the mask does not read h, else HEADS (rows of the block tables)
    GROUP          query heads per key/value head (grouped-query attention)
Full tiles are walked without evaluating the mask; partial tiles with it; empty tiles never.
Rows whose every key is masked give output 0 and LSE -inf, never NaN.
"""

from __future__ import annotations

import hashlib

from attnlang import ir
from attnlang.ir import Type

from .derivative import differentiate
from .triton_printer import jit_function

__all__ = ["generate_source", "KERNEL_VERSION"]

KERNEL_VERSION = 1

HELPERS = '''
HASH_SEED = tl.constexpr(0x9E3779B9)


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
    return tl.where(quotient - floored > 0.5, floored + 1.0, floored)


@triton.jit
def _ipow(x, POWER: tl.constexpr, LOW_BIT: tl.constexpr, BITS: tl.constexpr):
    """x ** POWER for a constant POWER >= 1 by repeated squaring (unrolled): exact signs for
    a negative x, and int powers wrap modulo 2**64 exactly as the reference's do."""
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
    """a ** b for floats, as C's pow: |a| ** b with the sign of a for odd integral b, NaN for
    a negative a and a fractional b, 1 for b == 0 or a == 1."""
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
def _load_rows(base, offs, length, stride, HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr):
    """Rows `offs` of a (tokens, head_dim) matrix; rows past `length` and padded columns read 0."""
    offs_d = tl.arange(0, HEAD_DIM_P)
    mask = (offs < length)[:, None] & (offs_d < HEAD_DIM)[None, :]
    return tl.load(base + offs[:, None] * stride + offs_d[None, :], mask=mask, other=0.0)


@triton.jit
def _hash_step(h, a):
    """One round of attnlang's hash: MurmurHash3's fmix32 of h XOR a, in 32 bits held in int64."""
    x = (h ^ (a & 0xFFFFFFFF)) & 0xFFFFFFFF
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & 0xFFFFFFFF
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & 0xFFFFFFFF
    return x ^ (x >> 16)
'''

KERNELS = '''
@triton.jit
def _forward_tile(acc, l_i, m_i, q, K, V, start_n, q_pos, off_b, off_h, N_Q, N_K, sm_scale,
                  stride_kn, stride_vn, INPUT_PARAMS
                  HEADS: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr,
                  PARTIAL: tl.constexpr, PRECISION: tl.constexpr):
    # -- load the key/value tile --
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k_pos = offs_n[None, :].to(tl.int64)
    k = _load_rows(K, offs_n, N_K, stride_kn, HEAD_DIM, HEAD_DIM_P)
    v = _load_rows(V, offs_n, N_K, stride_vn, HEAD_DIM, HEAD_DIM_P)
    # -- compute the logits --
    score = tl.dot(q, tl.trans(k), input_precision=PRECISION) * sm_scale
    logit = _logit(score, q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUT_ARGS HEADS)
    allowed = k_pos < N_K
    if PARTIAL:
        allowed = allowed & _mask(q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUT_ARGS HEADS)
    logit = tl.where(allowed, logit, float("-inf"))
    # -- online softmax: a row with nothing allowed yet keeps m_i = -inf and sums 0 --
    m_new = tl.maximum(m_i, tl.max(logit, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp(logit - m_safe[:, None])
    alpha = tl.exp(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, l_i, m_new


@triton.jit
def attention_forward(Q, K, V, Out, Lse, FULL_NUM, FULL_IDX, full_width, PART_NUM, PART_IDX, part_width,
                      INPUT_PARAMS sm_scale, N_Q, N_K,
                      stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                      stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
                      HEADS: tl.constexpr, GROUP: tl.constexpr, MAP_HEADS: tl.constexpr, MAP_BATCH: tl.constexpr,
                      HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    start_m = tl.program_id(0)
    off_b = tl.program_id(1) // HEADS
    off_h = tl.program_id(1) % HEADS
    off_kvh = off_h // GROUP
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_P)
    q_pos = offs_m[:, None].to(tl.int64)
    q_mask = (offs_m < N_Q)[:, None] & (offs_d < HEAD_DIM)[None, :]
    q = _load_rows(Q + off_b * stride_qb + off_h * stride_qh, offs_m, N_Q, stride_qm, HEAD_DIM, HEAD_DIM_P)
    K_head = K + off_b * stride_kb + off_kvh * stride_kh
    V_head = V + off_b * stride_vb + off_kvh * stride_vh
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_P], tl.float32)
    # which row of the block tables: per head only if the mask reads h, per batch only for per-batch inputs
    row = ((off_b if MAP_BATCH > 1 else 0) * MAP_HEADS + (off_h if MAP_HEADS > 1 else 0)) * tl.num_programs(0) + start_m
    # -- full tiles: no mask --
    for i in range(tl.load(FULL_NUM + row)):
        start_n = tl.load(FULL_IDX + row * full_width + i) * BLOCK_N
        acc, l_i, m_i = _forward_tile(acc, l_i, m_i, q, K_head, V_head, start_n, q_pos, off_b, off_h, N_Q, N_K,
                                      sm_scale, stride_kn, stride_vn, INPUT_ARGS
                                      HEADS, BLOCK_N, HEAD_DIM, HEAD_DIM_P, False, PRECISION)
    # -- partial tiles: the pattern's mask --
    for i in range(tl.load(PART_NUM + row)):
        start_n = tl.load(PART_IDX + row * part_width + i) * BLOCK_N
        acc, l_i, m_i = _forward_tile(acc, l_i, m_i, q, K_head, V_head, start_n, q_pos, off_b, off_h, N_Q, N_K,
                                      sm_scale, stride_kn, stride_vn, INPUT_ARGS
                                      HEADS, BLOCK_N, HEAD_DIM, HEAD_DIM_P, True, PRECISION)
    # -- epilogue: fully masked rows give 0 and -inf --
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), m_i + tl.log(tl.where(empty, 1.0, l_i)))
    tl.store(Out + off_b * stride_ob + off_h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :],
             out.to(Out.dtype.element_ty), mask=q_mask)
    tl.store(Lse + (off_b * HEADS + off_h) * N_Q + offs_m, lse, mask=offs_m < N_Q)


@triton.jit
def _backward_tile(q, do, lse, delta, k, v, q_pos, k_pos, off_b, off_h, N_Q, N_K, sm_scale, INPUT_PARAMS
                   HEADS: tl.constexpr, PARTIAL: tl.constexpr, PRECISION: tl.constexpr):
    """Recompute the probabilities of one tile; return them and dS (w.r.t. the raw score)."""
    score = tl.dot(q, tl.trans(k), input_precision=PRECISION) * sm_scale
    logit = _logit(score, q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUT_ARGS HEADS)
    allowed = (k_pos < N_K) & (q_pos < N_Q)
    if PARTIAL:
        allowed = allowed & _mask(q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUT_ARGS HEADS)
    lse_safe = tl.where(lse == float("-inf"), 0.0, lse)
    p = tl.where(allowed, tl.exp(logit - lse_safe[:, None]), 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    ds = p * (dp - delta[:, None])
    ds = tl.where(allowed, ds * _dlogit(score, q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUT_ARGS HEADS), 0.0)
    return p, ds


@triton.jit
def attention_backward_kv(Q, K, V, DO, Lse, Delta, DK, DV, FULL_NUM, FULL_IDX, full_width, PART_NUM, PART_IDX,
                          part_width, INPUT_PARAMS sm_scale, N_Q, N_K,
                          stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                          stride_vb, stride_vh, stride_vn,
                          HEADS: tl.constexpr, HEADS_KV: tl.constexpr, GROUP: tl.constexpr,
                          MAP_HEADS: tl.constexpr, MAP_BATCH: tl.constexpr,
                          HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """dK and dV of one key tile: the query tiles of the transposed tables, every head of the group."""
    start_n = tl.program_id(0)
    off_b = tl.program_id(1) // HEADS_KV
    off_kvh = tl.program_id(1) % HEADS_KV
    offs_n = start_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM_P)
    k_pos = offs_n[None, :].to(tl.int64)
    kv_mask = (offs_n < N_K)[:, None] & (offs_d < HEAD_DIM)[None, :]
    k = _load_rows(K + off_b * stride_kb + off_kvh * stride_kh, offs_n, N_K, stride_kn, HEAD_DIM, HEAD_DIM_P)
    v = _load_rows(V + off_b * stride_vb + off_kvh * stride_vh, offs_n, N_K, stride_vn, HEAD_DIM, HEAD_DIM_P)
    dk = tl.zeros([BLOCK_N, HEAD_DIM_P], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM_P], tl.float32)
    for g in range(GROUP):
        off_h = off_kvh * GROUP + g
        row = ((off_b if MAP_BATCH > 1 else 0) * MAP_HEADS + (off_h if MAP_HEADS > 1 else 0)) * tl.num_programs(0) + start_n
        for stage in range(2):  # 0: full tiles, 1: partial tiles
            count = tl.load(FULL_NUM + row) if stage == 0 else tl.load(PART_NUM + row)
            for i in range(count):
                if stage == 0:
                    start_m = tl.load(FULL_IDX + row * full_width + i) * BLOCK_M
                else:
                    start_m = tl.load(PART_IDX + row * part_width + i) * BLOCK_M
                offs_m = start_m + tl.arange(0, BLOCK_M)
                q_pos = offs_m[:, None].to(tl.int64)
                head = off_b * stride_qb + off_h * stride_qh
                q = _load_rows(Q + head, offs_m, N_Q, stride_qm, HEAD_DIM, HEAD_DIM_P)
                do = _load_rows(DO + head, offs_m, N_Q, stride_qm, HEAD_DIM, HEAD_DIM_P)
                rows = (off_b * HEADS + off_h) * N_Q + offs_m
                lse = tl.load(Lse + rows, mask=offs_m < N_Q, other=float("-inf"))
                delta = tl.load(Delta + rows, mask=offs_m < N_Q, other=0.0)
                if stage == 0:
                    p, ds = _backward_tile(q, do, lse, delta, k, v, q_pos, k_pos, off_b, off_h, N_Q, N_K, sm_scale,
                                           INPUT_ARGS HEADS, False, PRECISION)
                else:
                    p, ds = _backward_tile(q, do, lse, delta, k, v, q_pos, k_pos, off_b, off_h, N_Q, N_K, sm_scale,
                                           INPUT_ARGS HEADS, True, PRECISION)
                dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
                dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
    out = off_b * stride_kb + off_kvh * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :]
    tl.store(DK + out, (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def attention_backward_q(Q, K, V, DO, Lse, Delta, DQ, FULL_NUM, FULL_IDX, full_width, PART_NUM, PART_IDX,
                         part_width, INPUT_PARAMS sm_scale, N_Q, N_K,
                         stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                         stride_vb, stride_vh, stride_vn,
                         HEADS: tl.constexpr, GROUP: tl.constexpr, MAP_HEADS: tl.constexpr, MAP_BATCH: tl.constexpr,
                         HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """dQ of one query tile, over the key tiles of the forward tables (no atomics: deterministic)."""
    start_m = tl.program_id(0)
    off_b = tl.program_id(1) // HEADS
    off_h = tl.program_id(1) % HEADS
    off_kvh = off_h // GROUP
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_P)
    q_pos = offs_m[:, None].to(tl.int64)
    q_mask = (offs_m < N_Q)[:, None] & (offs_d < HEAD_DIM)[None, :]
    head = off_b * stride_qb + off_h * stride_qh
    q = _load_rows(Q + head, offs_m, N_Q, stride_qm, HEAD_DIM, HEAD_DIM_P)
    do = _load_rows(DO + head, offs_m, N_Q, stride_qm, HEAD_DIM, HEAD_DIM_P)
    rows = (off_b * HEADS + off_h) * N_Q + offs_m
    lse = tl.load(Lse + rows, mask=offs_m < N_Q, other=float("-inf"))
    delta = tl.load(Delta + rows, mask=offs_m < N_Q, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM_P], tl.float32)
    row = ((off_b if MAP_BATCH > 1 else 0) * MAP_HEADS + (off_h if MAP_HEADS > 1 else 0)) * tl.num_programs(0) + start_m
    for stage in range(2):
        count = tl.load(FULL_NUM + row) if stage == 0 else tl.load(PART_NUM + row)
        for i in range(count):
            if stage == 0:
                start_n = tl.load(FULL_IDX + row * full_width + i) * BLOCK_N
            else:
                start_n = tl.load(PART_IDX + row * part_width + i) * BLOCK_N
            offs_n = start_n + tl.arange(0, BLOCK_N)
            k_pos = offs_n[None, :].to(tl.int64)
            k = _load_rows(K + off_b * stride_kb + off_kvh * stride_kh, offs_n, N_K, stride_kn, HEAD_DIM, HEAD_DIM_P)
            v = _load_rows(V + off_b * stride_vb + off_kvh * stride_vh, offs_n, N_K, stride_vn, HEAD_DIM, HEAD_DIM_P)
            if stage == 0:
                p, ds = _backward_tile(q, do, lse, delta, k, v, q_pos, k_pos, off_b, off_h, N_Q, N_K, sm_scale,
                                       INPUT_ARGS HEADS, False, PRECISION)
            else:
                p, ds = _backward_tile(q, do, lse, delta, k, v, q_pos, k_pos, off_b, off_h, N_Q, N_K, sm_scale,
                                       INPUT_ARGS HEADS, True, PRECISION)
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    tl.store(DQ + head + offs_m[:, None] * stride_qm + offs_d[None, :], (dq * sm_scale).to(DQ.dtype.element_ty),
             mask=q_mask)
'''


def _input_params(pattern: ir.PatternIR) -> str:
    """The runtime inputs' pointer, batch stride and length, as parameters and as arguments alike."""
    return "".join(f"IN_{name}, stride_{name}, len_{name}, " for name in pattern.inputs)


def generate_source(pattern: ir.PatternIR, source_tag: str = "") -> str:
    """The whole kernel module for one pattern: header, helpers, splice functions, kernels."""
    params = _input_params(pattern)
    signature = f"q_pos, k_pos, off_b, off_h, N_Q, N_K, {params}HEADS: tl.constexpr"
    score_signature = "score, " + signature
    mask = pattern.mask if pattern.mask != ir.TRUE else ir.Binary(
        ">=", ir.Var("k", Type.INT), ir.Const(0, Type.INT), Type.BOOL)
    origin = f"from {source_tag}" if source_tag else ""
    spliced = [
        jit_function("_mask", signature, mask, origin, wide=True),
        jit_function("_logit", score_signature, pattern.logit, origin),
        jit_function("_dlogit", score_signature, differentiate(pattern.logit), "d logit / d score"),
    ]
    kernels = KERNELS.replace("INPUT_PARAMS", params).replace("INPUT_ARGS", params)
    params_text = ", ".join(f"{k}={v!r}" for k, v in pattern.params)
    digest = hashlib.sha256((str(pattern) + kernels).encode()).hexdigest()[:12]
    header = (f'"""Triton kernels generated by attnlang for pattern {pattern.name}({params_text}).\n\n'
              f"mask:  {pattern.mask}\nlogit: {pattern.logit}\n"
              f"inputs: {', '.join(pattern.inputs) or 'none'}   kernel version {KERNEL_VERSION}, "
              f"id {digest}\n\nNeeds only torch and triton.\n\"\"\"\n\n"
              "import triton\nimport triton.language as tl\n")
    return "\n".join([header, HELPERS, *spliced, kernels])


STANDALONE = '''

# ---------------------------------------------------------------------------------------
# Standalone runtime: block tables filled on the device, autograd, a one-call entry point.
# ---------------------------------------------------------------------------------------

import math

import torch

OUT_OF_RANGE = 3  # the tile kind classify_tiles reports for an input index out of range


@triton.jit
def classify_tiles(Kinds, INPUT_PARAMS N_Q, N_K, HEADS: tl.constexpr, MAP_HEADS: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Kinds[(b, h), m, n] = 0 empty / 1 partial / 2 full, by evaluating the mask on the tile."""
    start_m = tl.program_id(0)
    start_n = tl.program_id(1)
    off_b = tl.program_id(2) // MAP_HEADS
    off_h = tl.program_id(2) % MAP_HEADS
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = start_n * BLOCK_N + tl.arange(0, BLOCK_N)
    q_pos = offs_m[:, None].to(tl.int64)
    k_pos = offs_n[None, :].to(tl.int64)
    inside = (q_pos < N_Q) & (k_pos < N_K)
    allowed = _mask(q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUT_ARGS HEADS) & inside
    count = tl.sum(tl.sum(allowed.to(tl.int32), 1), 0)
    total = tl.sum(tl.sum(inside.to(tl.int32), 1), 0)
    kind = tl.where(count == 0, 0, tl.where(count == total, 2, 1))
    # an input index out of range anywhere in the tile is an error, reported by block_tables
    in_range = _indices_in_range(q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUT_ARGS HEADS) | ~inside
    kind = tl.where(tl.min(tl.min(in_range.to(tl.int32), 1), 0) == 0, 3, kind)  # OUT_OF_RANGE
    tl.store(Kinds + (tl.program_id(2) * tl.num_programs(0) + start_m) * tl.num_programs(1) + start_n, kind)


def _tables_from_kinds(kinds, kind):
    """Per-row counts and ascending indices (FlexAttention layout) of the tiles of `kind`."""
    selected = kinds == kind
    counts = selected.sum(-1).to(torch.int32)
    order = torch.argsort((~selected).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return counts.contiguous(), order.contiguous()


def block_tables(seq_q, seq_k, heads, inputs, device, block_m=BLOCK_M_DEFAULT, block_n=BLOCK_N_DEFAULT, batch=1):
    """Block tables on the device: forward (by query tile) and backward (by key tile); one map per
    batch entry when the mask reads b or an input has a row per batch entry."""
    map_heads = heads if MASK_READS_HEAD else 1
    batches = max([t.shape[0] for t in inputs.values()] + [batch if MASK_READS_BATCH else 1])
    tiles_m, tiles_n = triton.cdiv(seq_q, block_m), triton.cdiv(seq_k, block_n)
    kinds = torch.empty((batches * map_heads, tiles_m, tiles_n), dtype=torch.int8, device=device)
    classify_tiles[(tiles_m, tiles_n, batches * map_heads)](kinds, *_input_arguments(inputs), seq_q, seq_k,
                                                            HEADS=heads, MAP_HEADS=map_heads,
                                                            BLOCK_M=block_m, BLOCK_N=block_n)
    kinds = kinds.view(batches, map_heads, tiles_m, tiles_n)
    if bool((kinds == OUT_OF_RANGE).any()):
        raise IndexError("an input index is out of range at some pair of the matrix (masked or not); "
                         "clamp it (the pattern reads " + INDEX_EXPRESSIONS + ")")
    transposed = kinds.transpose(-1, -2).contiguous()
    return {"forward": [_tables_from_kinds(kinds, 2), _tables_from_kinds(kinds, 1)],
            "backward": [_tables_from_kinds(transposed, 2), _tables_from_kinds(transposed, 1)],
            "map_batch": batches, "map_heads": map_heads}


def _input_arguments(inputs):
    arguments = []
    for name in INPUT_NAMES:
        tensor = inputs[name]
        arguments += [tensor, tensor.shape[-1] if tensor.shape[0] > 1 else 0, tensor.shape[-1]]
    return arguments


def _meta(tables, heads, heads_kv, head_dim, dtype, block_m, block_n):
    return dict(HEADS=heads, GROUP=heads // heads_kv, MAP_HEADS=tables["map_heads"], MAP_BATCH=tables["map_batch"],
                HEAD_DIM=head_dim, HEAD_DIM_P=max(16, triton.next_power_of_2(head_dim)),
                BLOCK_M=block_m, BLOCK_N=block_n, PRECISION="ieee" if dtype == torch.float32 else "tf32")


def _table_arguments(tables, direction):
    (full_num, full_idx), (part_num, part_idx) = tables[direction]
    return [full_num, full_idx, full_idx.shape[-1], part_num, part_idx, part_idx.shape[-1]]


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, inputs, scale, block_m, block_n, tables):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        batch, heads, seq_q, head_dim = q.shape
        heads_kv, seq_k = k.shape[1], k.shape[2]
        if tables is None:
            tables = block_tables(seq_q, seq_k, heads, inputs, q.device, block_m, block_n, batch)
        meta = _meta(tables, heads, heads_kv, head_dim, q.dtype, block_m, block_n)
        out = torch.empty_like(q)
        lse = torch.empty((batch, heads, seq_q), device=q.device, dtype=torch.float32)
        attention_forward[(triton.cdiv(seq_q, block_m), batch * heads)](
            q, k, v, out, lse, *_table_arguments(tables, "forward"), *_input_arguments(inputs), scale, seq_q, seq_k,
            *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3], **meta)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.tables, ctx.inputs, ctx.scale, ctx.meta = tables, inputs, scale, meta
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        batch, heads, seq_q, _ = q.shape
        heads_kv, seq_k = k.shape[1], k.shape[2]
        dout = torch.zeros_like(out) if dout is None else dout.contiguous()
        delta = (dout.float() * out.float()).sum(-1)
        if dlse is not None:
            delta = delta - dlse.float()
        delta = delta.contiguous()
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3])
        meta = ctx.meta
        inputs = _input_arguments(ctx.inputs)
        attention_backward_kv[(triton.cdiv(seq_k, meta["BLOCK_N"]), batch * heads_kv)](
            q, k, v, dout, lse, delta, dk, dv, *_table_arguments(ctx.tables, "backward"), *inputs, ctx.scale,
            seq_q, seq_k, *strides, HEADS_KV=heads_kv, **meta)
        attention_backward_q[(triton.cdiv(seq_q, meta["BLOCK_M"]), batch * heads)](
            q, k, v, dout, lse, delta, dq, *_table_arguments(ctx.tables, "forward"), *inputs, ctx.scale,
            seq_q, seq_k, *strides, **meta)
        return dq, dk, dv, None, None, None, None, None


def attention(q, k, v, inputs=None, scale=None, return_lse=False, block_m=BLOCK_M_DEFAULT, block_n=BLOCK_N_DEFAULT,
              tables=None):
    """PATTERN_LABEL attention. q: (B, H, N_q, D); k, v: (B, H_kv, N_k, D); inputs: name -> int tensor
    of one entry per token ((tokens,) or (B, tokens)). Differentiable. `tables` (as returned by
    block_tables) skips building them on the device, e.g. when a compiler's analysis has them."""
    inputs = dict(inputs or {})
    missing = [name for name in INPUT_NAMES if name not in inputs]
    if missing:
        raise ValueError(f"this pattern needs input {missing[0]!r}: an int tensor with one entry per token")
    inputs = {name: (t if t.dim() == 2 else t[None]).to(device=q.device, dtype=torch.int64).contiguous()
              for name, t in ((n, torch.as_tensor(inputs[n])) for n in INPUT_NAMES)}
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    out, lse = _Attention.apply(q, k, v, inputs, scale, block_m, block_n, tables)
    return (out, lse) if return_lse else out
'''


def standalone_source(pattern: ir.PatternIR, block: tuple[int, int], source_tag: str = "") -> str:
    """A module that needs only torch and triton: the kernels, a device-side tile classifier
    that fills the block tables, and `attention(q, k, v, inputs=None, scale=None)`."""
    from attnlang.analysis import input_index_ranges, mask_depends_on_batch, mask_depends_on_head
    params = _input_params(pattern)
    label = f"{pattern.name}({', '.join(f'{k}={v!r}' for k, v in pattern.params)})"
    runtime = (STANDALONE.replace("INPUT_PARAMS", params).replace("INPUT_ARGS", params)
               .replace("BLOCK_M_DEFAULT", str(block[0])).replace("BLOCK_N_DEFAULT", str(block[1]))
               .replace("MASK_READS_HEAD", str(mask_depends_on_head(pattern)))
               .replace("MASK_READS_BATCH", str(mask_depends_on_batch(pattern)))
               .replace("INPUT_NAMES", repr(tuple(pattern.inputs))).replace("PATTERN_LABEL", label))
    in_range = _indices_in_range_function(pattern)
    runtime = runtime.replace("INDEX_EXPRESSIONS", repr(", ".join(
        str(load) for load, _ in input_index_ranges(pattern, {n: ir.Const(0, Type.INT) for n in pattern.inputs}))))
    return generate_source(pattern, source_tag) + "\n" + in_range + runtime


def _indices_in_range_function(pattern: ir.PatternIR) -> str:
    """`_indices_in_range`: whether every input index of the pattern is inside its input."""
    from attnlang.analysis import input_index_ranges
    lengths = {name: ir.Var(f"len_{name}", Type.INT) for name in pattern.inputs}
    condition = ir.Binary(">=", ir.Var("k", Type.INT), ir.Const(0, Type.INT), Type.BOOL)
    for _, in_range in input_index_ranges(pattern, lengths):
        condition = ir.Binary("and", condition, in_range, Type.BOOL)
    signature = f"q_pos, k_pos, off_b, off_h, N_Q, N_K, {_input_params(pattern)}HEADS: tl.constexpr"
    return jit_function("_indices_in_range", signature, condition, "every input index inside its input", wide=True)
