"""FlexAttention mods in: `from_mask_mod` against mask_mods and score_mods written here,
independently of attnlang, as people write them for FlexAttention."""

import numpy as np
import pytest
import torch
from torch.nn.attention.flex_attention import create_mask, flex_attention

import attnlang

SEQ_Q, SEQ_K, HEADS = 70, 53, 4
DOC = torch.tensor(np.sort(np.random.default_rng(0).integers(0, 5, size=SEQ_Q)))
SLOPES = torch.tensor([2.0 ** (-8 * (h + 1) / HEADS) for h in range(HEADS)])
PREFIX = torch.tensor([9, 30])  # per batch entry


def causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def sliding_window(b, h, q_idx, kv_idx):
    return (q_idx >= kv_idx) & (q_idx - kv_idx <= 16)


def prefix_lm(b, h, q_idx, kv_idx):
    return (kv_idx <= q_idx) | (kv_idx < 12)


def prefix_per_sequence(b, h, q_idx, kv_idx):
    return (kv_idx <= q_idx) | (kv_idx < PREFIX[b])


def document(b, h, q_idx, kv_idx):
    return (DOC[q_idx] == DOC[kv_idx]) & (q_idx >= kv_idx)


def dilated(b, h, q_idx, kv_idx):
    return (torch.abs(q_idx - kv_idx) < 24) & ((q_idx - kv_idx) % 3 == 0)


def neighborhood_2d(b, h, q_idx, kv_idx):
    width, radius = 8, 2
    qy, qx, ky, kx = q_idx // width, q_idx % width, kv_idx // width, kv_idx % width
    cy = torch.clamp(qy, radius, 8 - 1 - radius)
    cx = torch.clamp(qx, radius, width - 1 - radius)
    return (torch.abs(ky - cy) <= radius) & (torch.abs(kx - cx) <= radius)


def per_head(b, h, q_idx, kv_idx):
    near = torch.where(h < 2, q_idx - kv_idx < 8, q_idx - kv_idx < 30)
    return near & (q_idx >= kv_idx) & ~(kv_idx == 5)


def mixed(b, h, q_idx, kv_idx):
    return torch.minimum(q_idx, kv_idx * 2) >= torch.maximum(kv_idx - 3, q_idx // 2)


def alibi(score, b, h, q_idx, kv_idx):
    return score - SLOPES[h] * (q_idx - kv_idx)


def softcap(score, b, h, q_idx, kv_idx):
    return 20.0 * torch.tanh(score / 20.0)


MASKS = [causal, sliding_window, prefix_lm, prefix_per_sequence, document, dilated, neighborhood_2d, per_head,
         mixed]


@pytest.mark.parametrize("mask_mod", MASKS, ids=lambda f: f.__name__)
def test_translated_mask_equals_create_mask(mask_mod):
    pattern = attnlang.from_mask_mod(mask_mod, name=mask_mod.__name__)
    expected = create_mask(mask_mod, 2, HEADS, SEQ_Q, SEQ_K, device="cpu").numpy()
    for b in range(2):
        np.testing.assert_array_equal(pattern.reference_mask(SEQ_Q, SEQ_K, HEADS, batch=b), expected[b])
    block_map = pattern.analyze(SEQ_Q, SEQ_K, HEADS, (16, 16))  # sound: FULL tiles all-allowed
    mask = pattern.reference_mask(SEQ_Q, SEQ_K, HEADS)
    for h, i, j in zip(*np.nonzero(block_map.kinds == attnlang.FULL)):
        assert mask[h if block_map.kinds.shape[0] > 1 else 0, i * 16:(i + 1) * 16, j * 16:(j + 1) * 16].all()


@pytest.mark.parametrize("score_mod", [alibi, softcap], ids=lambda f: f.__name__)
def test_translated_score_mod_equals_flex_attention(score_mod):
    pattern = attnlang.from_mask_mod(causal, score_mod, name=score_mod.__name__)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, HEADS, n, 16, generator=gen, dtype=torch.float64) for n in (SEQ_Q, SEQ_K, SEQ_K))
    expected = flex_attention(q, k, v, score_mod=score_mod, block_mask=_block_mask(causal))
    torch.testing.assert_close(pattern.reference_attention(q, k, v), expected, rtol=1e-8, atol=1e-8)


def _block_mask(mask_mod):
    from torch.nn.attention.flex_attention import create_block_mask
    return create_block_mask(mask_mod, None, None, SEQ_Q, SEQ_K, device="cpu", BLOCK_SIZE=16)


def test_captured_tensor_becomes_an_input_named_as_its_variable():
    pattern = attnlang.from_mask_mod(document, name="docs")
    assert pattern.inputs == ("DOC",) and "DOC[q] == DOC[k]" in str(pattern.ir)
    other = np.zeros(SEQ_Q, dtype=np.int64)
    assert pattern.reference_mask(SEQ_Q, SEQ_Q, inputs={"DOC": other})[0].sum() == SEQ_Q * (SEQ_Q + 1) // 2


def test_translated_mask_runs_in_the_kernel():
    from .test_kernels import check_against_reference
    check_against_reference(attnlang.from_mask_mod(document, alibi, name="doc_alibi"), SEQ_Q, SEQ_Q, heads=HEADS)


@pytest.mark.parametrize("mod, message", [
    (lambda b, h, q, k: torch.sin(q * 1.0) > 0, "torch.sin is not supported"),
    (lambda b, h, q, k: (q & 3) == 0, "bitwise '&' on integers"),
    (lambda b, h, q, k: q > k if q > 3 else q < k, "branches on a traced value"),
    (lambda b, h, q, k: q - k, "returns int, not a bool"),
    (lambda b, h, q, k: SLOPES[q] > 0.5, "must hold integers"),
])
def test_unsupported_operations_are_named(mod, message):
    with pytest.raises(attnlang.AttnlangError, match=message):
        attnlang.from_mask_mod(mod)
