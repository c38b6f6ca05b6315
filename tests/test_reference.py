"""The reference evaluator against independent implementations (FlexAttention, torch)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from torch.nn.attention.flex_attention import AuxRequest, create_mask, flex_attention

import attnlang
from attnlang import ir

from .flex_mods import MODS, torch_hash

LENGTHS = [(200, 200), (333, 333), (130, 257), (257, 130)]
HEADS = 3


def doc_ids(length: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.integers(0, 7, size=length))


@pytest.fixture(scope="module")
def lib():
    return attnlang.stdlib()


def test_every_stdlib_pattern_has_a_mask_mod(lib):
    assert sorted(MODS) == sorted(lib.names())


@pytest.mark.parametrize("name", sorted(MODS))
@pytest.mark.parametrize("seq_q, seq_k", LENGTHS, ids=[f"{a}x{b}" for a, b in LENGTHS])
def test_reference_mask_equals_flex_create_mask(lib, name, seq_q, seq_k):
    params, factory = MODS[name]
    pattern = lib[name].bind(**params)
    inputs = {"doc": doc_ids(max(seq_q, seq_k))} if pattern.inputs else None
    mine = pattern.reference_mask(seq_q, seq_k, heads=HEADS, inputs=inputs, static_only=True)
    mod = factory(pattern.params, seq_q, seq_k, HEADS, inputs)
    theirs = create_mask(mod, 1, HEADS, seq_q, seq_k, device="cpu")[0].numpy()
    assert mine.shape == (HEADS, seq_q, seq_k)
    mismatch = np.argwhere(mine != theirs)
    assert mismatch.size == 0, f"first mismatch at (head, q, k) = {tuple(mismatch[0])}"
    assert 0 < mine.sum(), "the test parameters should give a non-empty mask"


def test_hash_matches_an_independent_implementation():
    from attnlang.builtins import hash_ints
    values = np.array([-5, 0, 1, 2**31, 2**40 + 3, 123456789])
    for a in values:
        for b in values:
            assert hash_ints(a, b) == int(torch_hash(int(a), int(b)))
    assert 0 <= hash_ints(values, 3).min() and hash_ints(values, 3).max() < 2**31


# -- attention ---------------------------------------------------------------------------

def _flex_score_mod(pattern):
    """The score mods of the stdlib's logit patterns, by hand."""
    heads = 4
    if pattern.name == "alibi":
        return lambda s, b, h, q, k: s - (2.0 ** (-8.0 * (h.double() + 1) / heads)) * (q - k)
    if pattern.name == "retention_decay":
        return lambda s, b, h, q, k: s + torch.log(1 - 2.0 ** (-5.0 - h.double())) * (q - k)
    if pattern.name == "softcap":
        cap = pattern.params["cap"]
        return lambda s, b, h, q, k: cap * torch.tanh(s / cap)
    return None


@pytest.mark.parametrize("name", ["causal", "alibi", "retention_decay", "softcap", "sliding_window",
                                  "cross_causal", "document"])
@pytest.mark.parametrize("seq_q, seq_k", [(96, 96), (70, 45), (45, 70)])
def test_reference_attention_equals_flex_attention(lib, name, seq_q, seq_k):
    params, factory = MODS[name]
    pattern = lib[name].bind(**params)
    torch.manual_seed(0)
    q = torch.randn(2, 4, seq_q, 16, dtype=torch.float64)
    k = torch.randn(2, 4, seq_k, 16, dtype=torch.float64)
    v = torch.randn(2, 4, seq_k, 16, dtype=torch.float64)
    inputs = {"doc": doc_ids(max(seq_q, seq_k))} if pattern.inputs else None
    out, lse = pattern.reference_attention(q, k, v, inputs=inputs, return_lse=True)
    mod = factory(pattern.params, seq_q, seq_k, 4, inputs)
    mask = create_mask(mod, None, None, seq_q, seq_k, device="cpu")
    score_mod = _flex_score_mod(pattern)
    # FlexAttention's eager path has no block mask here; apply the mask as a score mod too
    def both(s, b, h, qi, ki):
        s = score_mod(s, b, h, qi, ki) if score_mod else s
        return torch.where(mask[0, 0, qi, ki], s, -math.inf)
    expected, aux = flex_attention(q, k, v, score_mod=both, return_aux=AuxRequest(lse=True))
    expected_lse = aux.lse
    rows = mask[0, 0].any(-1)  # FlexAttention leaves fully masked rows undefined in eager mode
    torch.testing.assert_close(out[:, :, rows], expected[:, :, rows], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(lse[:, :, rows], expected_lse[:, :, rows], rtol=1e-9, atol=1e-9)


def test_fully_masked_rows_give_zero_output_and_no_nan_gradients(lib):
    pattern = lib["cross_causal"]  # with n_q > n_k the first n_q - n_k queries see nothing
    q = torch.randn(1, 2, 40, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 25, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 25, 8, dtype=torch.float64, requires_grad=True)
    out, lse = pattern.reference_attention(q, k, v, return_lse=True)
    assert torch.all(out[:, :, :15] == 0) and torch.all(torch.isneginf(lse[:, :, :15]))
    assert torch.all(torch.isfinite(lse[:, :, 15:]))
    (out.sum() + lse[:, :, 15:].sum()).backward()
    for name, t in (("q", q), ("k", k), ("v", v)):
        assert torch.isfinite(t.grad).all(), name
    assert torch.all(q.grad[:, :, :15] == 0)


def test_softcap_gradients_match_autograd_of_a_direct_formula(lib):
    pattern = lib["softcap"].bind(cap=2.0)
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 2, 33, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    pattern.reference_attention(q, k, v).square().sum().backward()
    mine = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    scores = 2.0 * torch.tanh((q @ k.transpose(-1, -2)) / math.sqrt(8) / 2.0)
    scores = scores.masked_fill(~torch.ones(33, 33, dtype=torch.bool).tril(), -math.inf)
    (torch.softmax(scores, -1) @ v).square().sum().backward()
    for got, t in zip(mine, (q, k, v)):
        torch.testing.assert_close(got, t.grad)


def test_grouped_query_attention_shares_key_heads(lib):
    pattern = lib["duo"].bind(retrieval_heads=1, window=5, sinks=1)
    torch.manual_seed(2)
    q = torch.randn(1, 4, 30, 8, dtype=torch.float64)
    k = torch.randn(1, 2, 30, 8, dtype=torch.float64)
    v = torch.randn(1, 2, 30, 8, dtype=torch.float64)
    grouped = pattern.reference_attention(q, k, v)
    expanded = pattern.reference_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1))
    torch.testing.assert_close(grouped, expanded)


def test_float32_inputs_compute_in_float32_and_stay_close_to_float64(lib):
    pattern = lib["alibi"]
    torch.manual_seed(3)
    q, k, v = (torch.randn(1, 4, 50, 16) for _ in range(3))
    out32 = pattern.reference_attention(q, k, v)
    out64 = pattern.reference_attention(q.double(), k.double(), v.double())
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out64, rtol=1e-5, atol=1e-5)


def test_bf16_inputs_return_bf16(lib):
    q = torch.randn(1, 1, 20, 16, dtype=torch.bfloat16)
    assert lib["causal"].reference_attention(q, q, q).dtype == torch.bfloat16


# -- routing --------------------------------------------------------------------------------

def test_routing_selects_the_best_pooled_blocks_plus_kept_ones(lib):
    pattern = lib["moba"].bind(block=4, top=1)
    n, d = 16, 4
    q = torch.zeros(1, 1, n, d, dtype=torch.float64)
    k = torch.zeros(1, 1, n, d, dtype=torch.float64)
    q[..., 0] = 1.0                   # every query block pools to e0
    k[0, 0, 0:4, 0] = 1.0             # key block 0 scores 1
    k[0, 0, 4:8, 0] = 3.0             # key block 1 scores 3 (the best past block)
    k[0, 0, 8:12, 0] = 2.0            # key block 2 scores 2
    mask = pattern.reference_mask(n, n, q=q, k=k)[0]
    causal = np.tril(np.ones((n, n), dtype=bool))
    blocks = np.zeros((4, 4), dtype=bool)
    blocks[0, 0] = True               # own block only (no other candidate is causal-allowed)
    blocks[1, [0, 1]] = True          # block 0 is the only candidate
    blocks[2, [1, 2]] = True          # block 1 beats block 0
    blocks[3, [1, 3]] = True          # block 1 beats blocks 0 and 2
    expected = causal & np.kron(blocks, np.ones((4, 4), dtype=bool)).astype(bool)
    assert (mask == expected).all()


@given(st.integers(1, 4), st.integers(2, 9), st.integers(10, 70), st.integers(0, 1000))
def test_routing_keeps_at_most_top_extra_blocks_inside_the_static_mask(top, block, n, seed):
    pattern = attnlang.stdlib()["moba"].bind(block=block, top=top)
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 2, n, 4, generator=gen, dtype=torch.float64)
    k = torch.randn(1, 2, n, 4, generator=gen, dtype=torch.float64)
    routed = pattern.reference_mask(n, n, heads=2, q=q, k=k)
    static = pattern.reference_mask(n, n, heads=2, static_only=True)
    assert not (routed & ~static).any()
    blocks = -(-n // block)
    padded = np.zeros((2, n, blocks * block), dtype=bool)
    padded[:, :, :n] = routed
    per_token = padded.reshape(2, n, blocks, block).any(-1)  # MoBA routes every query token
    for token in range(n):
        extra = per_token[:, token].copy()
        extra[:, token // block] = False  # the kept own block
        assert (extra.sum(-1) <= top).all()


def test_routing_mask_needs_content(lib):
    with pytest.raises(attnlang.AttnlangError, match="pass q= and k="):
        lib["moba"].reference_mask(16, 16)


# -- arguments -------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"seq_q": 0, "seq_k": 4}, "seq_q must be a positive int"),
    ({"seq_q": 4, "seq_k": 4.5}, "seq_k must be a positive int"),
    ({"seq_q": 4, "seq_k": 4, "heads": 0}, "heads must be a positive int"),
])
def test_bad_lengths_are_named(lib, kwargs, message):
    with pytest.raises(attnlang.AttnlangError, match=message):
        lib["causal"].reference_mask(**kwargs)


@pytest.mark.parametrize("inputs, message", [
    (None, "needs input 'doc'"),
    ({"doc": np.zeros(5, dtype=np.int64)}, "has 5 entries but the sequence has 8 tokens"),
    ({"doc": np.zeros(8), "seg": np.zeros(8, dtype=int)}, "has no input 'seg'"),
    ({"doc": np.zeros(8, dtype=np.float32)}, "must hold integers"),
    ({"doc": np.zeros((2, 2, 8), dtype=int)}, "must be 1-D"),
])
def test_bad_inputs_are_named(lib, inputs, message):
    with pytest.raises(attnlang.AttnlangError, match=message):
        lib["document"].reference_mask(8, 8, inputs=inputs)


def test_per_batch_inputs_pick_their_row(lib):
    docs = np.array([[0] * 4 + [1] * 4, [0] * 8])
    first = lib["document"].reference_mask(8, 8, inputs={"doc": docs}, batch=0)
    second = lib["document"].reference_mask(8, 8, inputs={"doc": docs}, batch=1)
    assert not first[0, 5, 2] and second[0, 5, 2]


def test_out_of_range_input_index_is_an_error():
    module = attnlang.parse("pattern p() {\n    input seg: int[tokens]\n    mask seg[q + 1] == seg[k]\n}", "t.attn")
    with pytest.raises(attnlang.AttnlangError, match="index out of range for input 'seg'") as info:
        module["p"].reference_mask(4, 4, inputs={"seg": [0, 0, 1, 1]})
    assert info.value.line == 3


def test_runtime_integer_division_by_zero_is_an_error():
    module = attnlang.parse("pattern p() {\n    mask q // (k - 2) == 0\n}", "t.attn")
    with pytest.raises(attnlang.AttnlangError, match="integer division by zero"):
        module["p"].reference_mask(4, 4)


def test_evaluator_has_a_method_for_every_ir_node():
    from attnlang.reference import Evaluator
    for node_type in ir.NODE_TYPES:
        assert hasattr(Evaluator, "visit_" + node_type.__name__), node_type
