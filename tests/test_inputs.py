"""Inputs beyond `int[tokens]`: per-token floats (`input w: float[tokens]`: calibrated sink
weights, predictor scores) and block inputs (`input m: bool[heads, blocks(BQ, BK)]`, a block
mask as FlashInfer's BSR API takes it; `float[...]` block scores, also as a routing's `by`),
the same in the analysis, the reference, the export and the kernels."""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import attnlang
from attnlang import AttnlangError
from attnlang.reference import classify_tiles

from .conftest import needs_interpreter

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


def assert_kernel_matches_the_reference(pattern, inputs, gen, seq=70, **options):
    """The kernel's output and dq, dk, dv against the float64 reference, on these inputs."""
    q, k, v = (torch.randn(1, 2, seq, 16, generator=gen, requires_grad=True) for _ in range(3))
    out = pattern.compile(block=16, **options)(q, k, v, inputs=inputs)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
    expected_out = pattern.reference_attention(qd, kd, vd, inputs=inputs)
    expected = torch.autograd.grad(expected_out, (qd, kd, vd), grad.double())
    torch.testing.assert_close(out.double(), expected_out, rtol=1e-4, atol=1e-4)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a.double(), b, rtol=1e-3, atol=1e-3)


@needs_interpreter
def test_the_kernel_reads_the_floats_forward_and_backward(weighted):
    gen = torch.Generator().manual_seed(0)
    assert_kernel_matches_the_reference(weighted, {"w": torch.randn(70, generator=gen) * 1.5}, gen)


BLOCKS = """pattern bsr(bq = 32, bk = 16) {
    input m: bool[heads, blocks(bq, bk)]
    input s: float[blocks(bq, bk)]
    mask m and q >= k
    bias s
}"""


def block_tensors(seed, heads, seq, bq, bk, density=0.5):
    gen = torch.Generator().manual_seed(seed)
    grid = (-(-seq // bq), -(-seq // bk))
    return {"m": torch.rand(heads, *grid, generator=gen) < density, "s": torch.randn(*grid, generator=gen)}


def dense_block_reference(inputs, q, k, v, bq, bk):
    """Attention with the block mask and bias spread over the pairs by hand."""
    seq = q.shape[2]
    allowed = inputs["m"].repeat_interleave(bq, 1)[:, :seq].repeat_interleave(bk, 2)[:, :, :seq]
    allowed = allowed & torch.ones(seq, seq, dtype=torch.bool).tril()
    bias = inputs["s"].double().repeat_interleave(bq, 0)[:seq].repeat_interleave(bk, 1)[:, :seq]
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5 + bias
    probs = torch.softmax(scores.masked_fill(~allowed, -float("inf")), -1).nan_to_num(0.0)
    return probs @ v


@settings(max_examples=40, deadline=None)
@given(seq=st.integers(5, 150), bq=st.sampled_from([8, 16, 32]), bk=st.sampled_from([8, 16, 32]),
       tile=st.sampled_from([8, 16, 32]), seed=st.integers(0, 999), density=st.floats(0.0, 1.0))
def test_a_block_mask_is_the_block_map_itself(seq, bq, bk, tile, seed, density):
    pattern = attnlang.parse(BLOCKS)["bsr"].bind(bq=bq, bk=bk)
    inputs = block_tensors(seed, 2, seq, bq, bk, density)
    flat = {"m": inputs["m"].numpy().reshape(-1).astype(np.int64), "s": inputs["s"].numpy().reshape(-1)}
    block_map = pattern.analyze(seq, heads=2, block=tile, inputs=inputs)
    np.testing.assert_array_equal(block_map.kinds, classify_tiles(pattern.ir, seq, seq, 2, tile, tile, flat))
    if tile <= min(bq, bk):  # each tile inside one block: read off the mask, nothing evaluated
        assert block_map.stats["sampling"] == 0 and block_map.stats["exact"] == 0


def test_the_reference_and_the_export_spread_the_blocks_over_their_pairs():
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    pattern = attnlang.parse(BLOCKS)["bsr"]
    seq = 75
    inputs = block_tensors(1, 2, seq, 32, 16)
    q, k, v = (torch.randn(1, 2, seq, 8, dtype=torch.float64) for _ in range(3))
    expected = dense_block_reference(inputs, q, k, v, 32, 16)
    torch.testing.assert_close(pattern.reference_attention(q, k, v, inputs=inputs), expected, rtol=1e-9, atol=1e-9)
    mask_mod, score_mod = pattern.flex_mods(seq, seq, 2, inputs=inputs)
    block_mask = create_block_mask(mask_mod, 1, 2, seq, seq, device="cpu", BLOCK_SIZE=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # eager flex_attention on CPU
        out = flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask)
    finite = pattern.reference_mask(seq, seq, 2, inputs=inputs).any(-1)[None, :, :, None]
    torch.testing.assert_close(torch.where(torch.from_numpy(finite), out, 0.0), expected, rtol=1e-9, atol=1e-9)


def test_a_block_input_of_the_wrong_shape_says_which():
    pattern = attnlang.parse(BLOCKS)["bsr"]
    inputs = block_tensors(1, 2, 75, 32, 16)
    inputs["m"] = inputs["m"].transpose(1, 2)
    with pytest.raises(AttnlangError, match=r"input 'm' is a block input of blocks\(32, 16\): at 75 x 75 tokens it is "
                                            r"\(\[batch, \]2, 3, 5\).*got shape \(2, 5, 3\)"):
        pattern.analyze(75, heads=2, block=16, inputs=inputs)


@needs_interpreter
def test_the_kernel_reads_block_inputs():
    pattern = attnlang.parse(BLOCKS)["bsr"]
    seq = 75
    inputs = block_tensors(2, 2, seq, 32, 16)
    q, k, v = (torch.randn(1, 2, seq, 16) for _ in range(3))
    out = pattern.compile(block=16)(q, k, v, inputs=inputs)
    torch.testing.assert_close(out.double(), dense_block_reference(inputs, q.double(), k.double(), v.double(), 32, 16),
                               rtol=1e-4, atol=1e-4)


ROUTED_BY = """pattern predicted(block = 8, top = 2) {
    input s: float[heads, blocks(1, block)]
    mask q >= k
    route topk(top, block = block, qblock = 1, by = s, keep = q // block == k // block)
}"""


@settings(max_examples=30, deadline=None)
@given(seq=st.integers(9, 80), top=st.integers(1, 3), seed=st.integers(0, 999), ties=st.booleans())
def test_routing_by_a_score_input_takes_its_best_blocks(seq, top, seed, ties):
    pattern = attnlang.parse(ROUTED_BY)["predicted"].bind(top=top)
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(2, seq, -(-seq // 8), generator=gen, dtype=torch.float64)
    if ties:
        scores = scores.round()
    q, k = (torch.randn(1, 2, seq, 4, generator=gen, dtype=torch.float64) for _ in range(2))
    expected = np.zeros((2, seq, seq), dtype=bool)
    for h in range(2):  # by hand: the best `top` earlier blocks of each token, ties to the lower, and its own
        for t in range(seq):
            own = t // 8
            chosen = sorted(range(own), key=lambda j: (-float(scores[h, t, j]), j))[:top]
            for j in chosen + [own]:
                expected[h, t, j * 8:(j + 1) * 8] = True
    expected &= np.tril(np.ones((seq, seq), dtype=bool))
    np.testing.assert_array_equal(pattern.reference_mask(seq, seq, 2, inputs={"s": scores}, q=q, k=k), expected)


def test_by_must_name_float_block_scores_of_the_routing_blocks():
    with pytest.raises(AttnlangError, match=r"by names the routing's scores: a float block input"):
        attnlang.parse("pattern p() { input s: bool[blocks(1, 8)]\n route topk(2, block = 8, qblock = 1, by = s) }")
    with pytest.raises(AttnlangError, match=r"the scores 's' are of blocks\(8, 8\), but the routing's units and blocks "
                                            r"are \(1, 8\)"):
        attnlang.parse("pattern p() { input s: float[blocks(8)]\n route topk(2, block = 8, qblock = 1, by = s) }")


@needs_interpreter
def test_the_routed_kernel_selects_by_the_score_input():
    pattern = attnlang.parse(ROUTED_BY)["predicted"].bind(block=16)
    gen = torch.Generator().manual_seed(0)
    assert_kernel_matches_the_reference(pattern, {"s": torch.randn(2, 70, 5, generator=gen)}, gen)


@needs_interpreter
def test_a_block_mask_per_batch_entry_gives_each_entry_its_own_tables():
    pattern = attnlang.parse("pattern p() { input m: bool[blocks(16)]\n mask m }")["p"]
    mask = torch.zeros(2, 2, 2, dtype=torch.bool)
    mask[0, 0, 0] = mask[1, 1, 1] = True  # entry 0 attends in block (0, 0), entry 1 in block (1, 1)
    q, k, v = (torch.randn(2, 1, 32, 16) for _ in range(3))
    out = pattern.compile(block=16)(q, k, v, inputs={"m": mask})
    expected = pattern.reference_attention(q.double(), k.double(), v.double(), inputs={"m": mask})
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(AttnlangError, match="has a row per batch entry, but the exported mods read one row"):
        pattern.flex_mods(32, 32, 1, inputs={"m": mask})


def test_inputs_that_would_be_read_wrongly_are_refused():
    predicted = attnlang.parse(ROUTED_BY)["predicted"]
    q = k = v = torch.randn(1, 2, 40, 4, dtype=torch.float64)
    with pytest.raises(AttnlangError, match=r"it is \(\[batch, \]2, 40, 5\).*got shape \(1, 40, 5\)"):
        predicted.reference_attention(q, k, v, inputs={"s": torch.randn(1, 40, 5)})  # one head's scores for two
    scores = torch.randn(2, 40, 5)
    scores[0, 3, 1] = float("inf")
    with pytest.raises(AttnlangError, match="every score must be finite"):
        predicted.reference_attention(q, k, v, inputs={"s": scores})
    unread = attnlang.parse("pattern p() { input w: float[tokens]\n mask q >= k }")["p"]
    assert "input w: float[tokens]" in str(unread.ir)
    assert unread.analyze(8, block=4, inputs={"w": [0.5] * 8}).counts["full"] == 1


REGIONS_WITH_INPUTS = """pattern r(top = 2) {
    input d: int[tokens]
    input w: float[tokens]
    grid (y, x) = (8, 12)
    mask d[q] == d[k]
    bias w[k]
    route topk(top, block = (4, 4), keep = d[q] == 0 and q.y // 4 == k.y // 4)
}"""


@needs_interpreter
@pytest.mark.parametrize("qblock, schedule", [("", None), (", qblock = 1", "gathered"), (", qblock = 1", "tiles")])
def test_grid_regions_route_with_inputs_in_token_order(qblock, schedule):
    """The region layout permutes q, k and v; the inputs stay in token order, read at each
    position's token, in the mask, the bias and the routing's keep."""
    pattern = attnlang.parse(REGIONS_WITH_INPUTS.replace("(4, 4),", "(4, 4)" + qblock + ","))["r"]
    gen = torch.Generator().manual_seed(3)
    inputs = {"d": (torch.arange(96) >= 40).long(), "w": torch.randn(96, generator=gen, dtype=torch.float64)}
    assert_kernel_matches_the_reference(pattern, inputs, gen, seq=96, route_schedule=schedule)
    mask = pattern.reference_mask(96, 96, 2, inputs=inputs, q=torch.randn(1, 2, 96, 8), k=torch.randn(1, 2, 96, 8))
    assert not mask[:, :40, 40:].any() and not mask[:, 40:, :40].any()  # the documents, in token order


@needs_interpreter
def test_new_inputs_every_step_keep_a_bounded_cache():
    """A training loop gives new documents every step: the kernel keeps the tables of recent
    inputs only, and a cached entry still serves its inputs."""
    kernel = attnlang.stdlib()["document"].compile(block=16)
    q = k = v = torch.randn(1, 1, 32, 16)
    first = {"doc": torch.tensor([0] * 5 + [1] * 27)}
    expected = kernel(q, k, v, first)
    for step in range(kernel._tables.limit + 4):
        kernel(q, k, v, {"doc": (torch.arange(32) >= step + 1).long()})
    assert len(kernel._tables) == kernel._tables.limit
    torch.testing.assert_close(kernel(q, k, v, first), expected)
