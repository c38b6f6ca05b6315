"""`input w: float[tokens]`: per-token floats (predictor scores, calibrated sink weights) in masks,
biases and scores, the same in the analysis, the reference, the export and the kernels."""

import os
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import attnlang
from attnlang import AttnlangError
from attnlang.reference import classify_tiles

SOURCE = """pattern weighted(window = 24, threshold = 1.0) {
    input w: float[tokens]
    mask q >= k and (q - k < window or w[k] > threshold)
    bias w[k] * 0.5 - abs(w[q])
}"""


@pytest.fixture(scope="module")
def weighted():
    return attnlang.parse(SOURCE)["weighted"]


def test_a_float_input_is_declared_printed_and_checked(weighted):
    assert "input w: float[tokens]" in str(weighted.ir)
    with pytest.raises(AttnlangError, match="an input holds ints or floats, one per token: write 'int' or 'float'"):
        attnlang.parse("pattern p() { input w: bool[tokens] }")
    with pytest.raises(AttnlangError, match="input 'w' holds NaN at token 3"):
        weighted.analyze(8, block=4, inputs={"w": [0.0, 1.0, 2.0, float("nan"), 0, 0, 0, 0]})
    with pytest.raises(AttnlangError, match="input 'w' must hold numbers"):
        weighted.analyze(2, block=4, inputs={"w": np.array(["a", "b"])})


@settings(max_examples=40, deadline=None)
@given(seq=st.integers(5, 150), block=st.sampled_from([4, 8, 16, 32]), window=st.integers(1, 40),
       threshold=st.floats(-2.0, 2.0), seed=st.integers(0, 999))
def test_the_block_map_of_a_float_mask_equals_brute_force(weighted, seq, block, window, threshold, seed):
    pattern = weighted.bind(window=window, threshold=threshold)
    w = np.random.default_rng(seed).normal(size=seq) * 1.5
    expected = classify_tiles(pattern.ir, seq, seq, 1, block, block, {"w": w})
    np.testing.assert_array_equal(pattern.analyze(seq, block=block, inputs={"w": w}).kinds, expected)


def test_the_exported_mods_read_the_floats(weighted):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    n = 48
    w = torch.randn(n, dtype=torch.float64) * 1.5
    q, k, v = (torch.randn(1, 2, n, 8, dtype=torch.float64) for _ in range(3))
    mask_mod, score_mod = weighted.flex_mods(n, n, 2, inputs={"w": w})
    block_mask = create_block_mask(mask_mod, 1, 2, n, n, device="cpu", BLOCK_SIZE=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # eager flex_attention on CPU
        out = flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask)
    torch.testing.assert_close(out, weighted.reference_attention(q, k, v, inputs={"w": w}), rtol=1e-9, atol=1e-9)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1")
def test_the_kernel_reads_the_floats_forward_and_backward(weighted):
    n = 70
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(n, generator=gen) * 1.5
    q, k, v = (torch.randn(1, 2, n, 16, generator=gen, requires_grad=True) for _ in range(3))
    out = weighted.compile(block=16)(q, k, v, inputs={"w": w})
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
    expected_out = weighted.reference_attention(qd, kd, vd, inputs={"w": w})
    expected = torch.autograd.grad(expected_out, (qd, kd, vd), grad.double())
    torch.testing.assert_close(out.double(), expected_out, rtol=1e-4, atol=1e-4)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a.double(), b, rtol=1e-3, atol=1e-3)
