"""One meaning everywhere: regressions for programs on which a consumer disagreed with the
reference, and the semantics the contract leaves open, decided once (docs/language.md).

Each test is named after the defect it pins down. Kernels run under the interpreter (fp32)
against the float64 reference; the analysis is checked tile by tile against the dense mask;
the FlexAttention export through `create_mask` and `flex_attention`.
"""

import numpy as np
import pytest
import torch
from torch.nn.attention.flex_attention import create_mask

import attnlang
from attnlang import ir
from attnlang.ir import Type
from attnlang.reference import Evaluator, _TorchOps
from attnlang.codegen.derivative import differentiate
from attnlang.codegen.runtime import load_module

from .test_kernels import check_against_reference


def pattern(body: str, name: str = "p", extra: str = ""):
    return attnlang.parse(f"{extra}\npattern {name}() {{\n{body}\n}}")[name]


def assert_sound(p, seq_q, seq_k, heads=1, block=(16, 16), inputs=None, batch=0):
    """Every FULL tile is all-allowed and every EMPTY tile all-masked in the reference."""
    bm = p.analyze(seq_q, seq_k, heads, block, inputs, batch=batch)
    mask = p.reference_mask(seq_q, seq_k, heads, inputs, batch=batch)
    bq, bk = block
    for h, i, j in np.ndindex(*bm.kinds.shape):
        tile = mask[h if bm.kinds.shape[0] > 1 else 0, i * bq:(i + 1) * bq, j * bk:(j + 1) * bk]
        kind = bm.kinds[h, i, j]
        assert not (kind == attnlang.EMPTY and tile.any()), f"EMPTY tile {(h, i, j)} holds allowed pairs"
        assert not (kind == attnlang.FULL and not tile.all()), f"FULL tile {(h, i, j)} holds masked pairs"
    return bm


def assert_flex_mask(p, seq_q, seq_k, heads=2, batch=1, inputs=None):
    mask_mod, _ = p.flex_mods(seq_q, seq_k, heads, inputs)
    got = create_mask(mask_mod, batch, heads, seq_q, seq_k, device="cpu").numpy()
    for b in range(batch):
        np.testing.assert_array_equal(got[b], p.reference_mask(seq_q, seq_k, heads, inputs, batch=b))


def standalone_error(p, q, k, v, inputs=None):
    kernel = p.compile(heads=q.shape[1], head_dim=q.shape[-1], block=16, layout="row-major")
    module = load_module(kernel.standalone_source(),
                         p.slug, interpret=True)
    return (module.attention(q, k, v, inputs=inputs) - p.reference_attention(q, k, v, inputs=inputs)).abs().max()


# -- §1: the defects -----------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    "mask (not (q > k)) == (k > 5)",
    "mask not (q > k + 3)\nmask k < 30",
    "use causal()\nmask not (q - k > 8)",
])
def test_triton_not_binds_as_a_comparison(body):
    check_against_reference(pattern(body), 40, 40)


def test_analysis_nan_bound_in_if_is_not_false():
    assert_sound(pattern("mask (if q > k then log(0.0 - 1.0 - q) else 5.0) > 1.0"), 64, 64)


def test_analysis_sound_above_two_to_the_53():
    bm = assert_sound(pattern("mask 2**60 + k > 2**60 + 3"), 16, 16)
    assert bm.kinds[0, 0, 0] == attnlang.PARTIAL
    assert_sound(pattern("mask 9007199254740993 - k * 3 < 9007199254740993 - 20"), 48, 48)
    assert_sound(pattern("mask (q + 2**55) // 3 == (k + 2**55) // 3"), 48, 48)


@pytest.mark.parametrize("body", [
    "mask q >= k\nscore (score * 0.25) ** 9.0",
    "mask q >= k\nscore score + (score - 3.5) ** -1.0",
    "mask (k - q) ** 9 < 1",
    "mask (q - k) ** 3 > -8 and (k - 20) ** 0 == 1",
])
def test_triton_power_any_exponent(body):
    check_against_reference(pattern(body), 40, 37)


def test_int64_through_head_and_batch_in_kernels():
    check_against_reference(pattern("mask q >= k and (h + 1) * 50000 * 50000 > 0"), 40, 40)
    check_against_reference(pattern("mask q >= k or (b + 1) * 3000000000 * 3000000000 < 0"), 40, 40, batch=2)


def test_batch_dependent_mask_without_inputs():
    p = pattern("mask (q - k) % 4 != 1 or b == 0")
    check_against_reference(p, 40, 37, batch=2)
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, n, 16, generator=gen) for n in (40, 37, 37))
    assert standalone_error(p, q, k, v) < 1e-5
    assert_sound(p, 40, 37, batch=1)


def test_derivative_of_float_mod():
    check_against_reference(pattern("mask q >= k\nscore score % 0.5"), 40, 37)
    check_against_reference(pattern("mask q >= k\nscore 3.0 % (score * score + 0.5)"), 40, 37)


@pytest.mark.parametrize("body", [
    "mask q - k < abs(n_k - n_q)",
    "mask if q > k then true else k > 3",
    "mask false",
    "mask not (n_q == n_k)",
    "mask q >= k and (h + 1) * 50000 * 50000 > 0",
    "mask heads == 2 and n_q > n_k",
])
def test_flex_export_without_python_scalars(body):
    assert_flex_mask(pattern(body), 30, 23)


def test_bias_reads_the_logit_so_far_and_use_inlines():
    module = attnlang.parse("""
pattern inner() { bias score }
pattern direct() { score score * 3.0
 bias score }
pattern used() { score score * 3.0
 use inner() }
""")
    s = ir.Var("score", Type.FLOAT)
    assert module["direct"].ir.logit == module["used"].ir.logit
    value = Evaluator({"score": torch.tensor(2.0, dtype=torch.float64)}, ops=_TorchOps()).visit(
        module["direct"].ir.logit)
    assert float(value) == 12.0 and s in set(ir.walk(module["direct"].ir.logit))


@pytest.mark.parametrize("body", [
    "mask k < hash(h * n_k, 500536, heads * 7) % 3",
    "mask 0.1 == n_k or q <= k or -n_q >= h",
    "mask hash(q, 5) % 4 == 0 or hash(5, k) % 3 == 1",
])
def test_kernels_on_scalar_only_operands(body):
    check_against_reference(pattern(body), 40, 37)


# -- §2: the semantics left open ------------------------------------------------------------

def test_int64_overflow_wraps_in_every_consumer():
    p = pattern("mask (q + 1) * 4611686018427387904 * 2 + k >= 0")  # (q + 1) * 2**63 wraps to 0 or -2**63
    mask = p.reference_mask(40, 37)
    assert mask.any() and not mask.all()
    assert_sound(p, 40, 37)
    assert_flex_mask(p, 40, 37)
    check_against_reference(p, 40, 37)


def test_input_index_out_of_range_is_an_error_everywhere():
    p = pattern("input doc: int[tokens]\nmask q >= 1 and doc[q - 1] == doc[k]")
    doc = np.zeros(40, dtype=np.int64)
    for run in (lambda: p.reference_mask(40, 40, inputs={"doc": doc}),
                lambda: p.analyze(40, 40, 1, 16, inputs={"doc": doc}),
                lambda: p.compile(heads=2, head_dim=16, block=16)(*(torch.randn(1, 2, 40, 16),) * 3,
                                                                  inputs={"doc": doc})):
        with pytest.raises(attnlang.AttnlangError, match="index out of range for input 'doc'"):
            run()
    with pytest.raises(IndexError, match="out of range"):
        standalone_error(p, *(torch.randn(1, 2, 40, 16),) * 3, inputs={"doc": torch.from_numpy(doc)})
    clamped = pattern("input doc: int[tokens]\nmask doc[clamp(q - 1, 0, n_q - 1)] == doc[k]")
    assert clamped.analyze(40, 40, 1, 16, inputs={"doc": doc}).counts["full"] == 9


def test_input_index_cannot_read_score():
    with pytest.raises(attnlang.AttnlangError, match="index cannot depend on score"):
        pattern("input doc: int[tokens]\nmask q >= k\nbias doc[floor(score)] * 1.0")


def test_nan_in_min_and_max_propagates():
    p = pattern("mask min(q * 1.0, sqrt(k - 5.0)) < 3.0 or max(k * 1.0, log(q - 20.0)) > 30.0")
    mask = p.reference_mask(40, 37)
    assert not mask[:, :, :5].any()  # NaN rows of sqrt are masked, not min(q, NaN) = q
    assert_sound(p, 40, 37)
    assert_flex_mask(p, 40, 37)
    check_against_reference(p, 40, 37)


@pytest.mark.parametrize("logit", [
    "abs(score)", "min(score, 0.0)", "max(score, score * 1.0)", "min(score * 2.0, 1.0)", "score % 0.5",
    "3.0 % (score + 4.0)",
])
def test_derivatives_match_autograd_at_kinks_and_ties(logit):
    p = pattern(f"score {logit}")
    points = torch.tensor([-1.5, -0.25, 0.0, 0.5, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    value = Evaluator({"score": points}, ops=_TorchOps()).visit(p.ir.logit)
    expected, = torch.autograd.grad(value.sum(), points)
    got = Evaluator({"score": points.detach()}, ops=_TorchOps()).visit(differentiate(p.ir.logit))
    torch.testing.assert_close(torch.broadcast_to(torch.as_tensor(got, dtype=torch.float64), points.shape), expected)


def test_a_let_reads_the_logit_of_the_statement_that_uses_it():
    p = pattern("let doubled = score * 2.0\nscore score + 1.0\nbias doubled")
    value = Evaluator({"score": torch.tensor(3.0, dtype=torch.float64)}, ops=_TorchOps()).visit(p.ir.logit)
    assert float(value) == (3.0 + 1.0) + (3.0 + 1.0) * 2.0


# -- found by the differential fuzzer (tests/fuzz.py) -----------------------------------------

@pytest.mark.parametrize("body", [
    "score 0.5", "score q * 1.0", "score h * 1.0", "mask q >= k\nscore 1.0",
])
def test_fuzz_logit_without_score_fills_the_tile(body):
    p = pattern(body)
    check_against_reference(p, 40, 37)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, 16, generator=gen, dtype=torch.float64) for n in (40, 37, 37))
    from torch.nn.attention.flex_attention import flex_attention
    _, score_mod = p.flex_mods(40, 37, 2)
    block_mask = p.analyze(40, 37, 2, (16, 16)).to_flex()
    torch.testing.assert_close(flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask),
                               p.reference_attention(q, k, v))


def test_fuzz_hash_with_leading_constants():
    check_against_reference(pattern("mask hash(-9, 16, k) % 2 == 0\nbias tanh(hash(-9, 16, k) / 1.0)"), 40, 37)


def test_fuzz_float_against_a_constant_index_load():
    p = pattern("input doc: int[tokens]\nmask 0.0 < doc[1] or q >= k")
    for doc in (np.zeros(40, dtype=np.int64), np.ones(40, dtype=np.int64)):
        check_against_reference(p, 40, 37, inputs={"doc": doc})


def test_fuzz_nested_input_read_in_the_standalone_classifier():
    p = pattern("input doc: int[tokens]\ninput seg: int[tokens]\nmask seg[doc[k] % n_k] == 0 or q >= k")
    doc, seg = torch.arange(40) % 7, torch.arange(40) % 2
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, 16, generator=gen) for n in (40, 37, 37))
    assert standalone_error(p, q, k, v, inputs={"doc": doc, "seg": seg}) < 1e-5


def test_fuzz_float_floor_division_by_zero():
    p = pattern("mask 1.0 // q >= 0.0 and (0.0 - 1.0) // (k * 1.0) < 0.0")
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 3, n, 16, generator=gen) for n in (34, 16, 16))
    assert standalone_error(p, q, k, v) < 1e-5
    check_against_reference(p, 34, 16)


def test_fuzz_logit_slope_not_finite_on_padded_columns():
    # A padded column's score is 0, where this slope is 0 * NaN (score % score): ds must be 0 there.
    p = pattern("bias tanh((score % score * abs(b) + log2(heads // 16)) / 30.0)")
    check_against_reference(p, 3, 3, block=32)
    check_against_reference(p, 40, 37)


def test_fuzz_exported_select_of_float_constants_is_float64():
    """Found by the fuzzer: `torch.where(c, 6.0, 2.0)` is float32, so tanh of it lost 3e-7."""
    p = attnlang.parse("""pattern m() { input doc: int[tokens]
    bias 0.5 * tanh(abs(if doc[q] == doc[k] then 6.0 else 2.0) / 0.5) }""")["m"]
    doc = np.array([0, 0, 1, 1, 1])
    _, score_mod = p.flex_mods(5, 5, 1, {"doc": doc})
    got = score_mod(torch.zeros((), dtype=torch.float64), 0, 0, torch.tensor(0), torch.tensor(3))
    assert got.dtype == torch.float64 and float(got) == 0.5 * np.tanh(4.0)
