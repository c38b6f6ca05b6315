"""Every operator and builtin × every consumer.

The vocabulary is declared once (`attnlang.ir.BinaryOp`, `UnaryOp`, `Func`). Each consumer's
table must hold every member, and each member runs through every consumer on a sample
program — in a mask and in a logit — where the reference, the analysis (tile by tile), the
FlexAttention export and the interpreted kernels (forward and backward, which exercises the
derivative) must agree. Adding an op means adding it to the enum, which fails here until
every consumer and a sample handle it.
"""

import numpy as np
import pytest
import torch
from torch.nn.attention.flex_attention import flex_attention

import attnlang
from attnlang import builtins, complexity, export, intervals, ir, printer, reference, simulator
from attnlang.codegen import derivative, triton_printer

from .test_exactness import assert_flex_mask, assert_sound
from .test_kernels import check_against_reference

Op, Func = ir.BinaryOp, ir.Func

# member -> (mask expression, logit statement) that use it
SAMPLES = {
    Op.ADD: ("q + k * 2 < 50", "score score + q * 0.01"),
    Op.SUB: ("q - k < 7", "score score - k * 0.02"),
    Op.MUL: ("q * 3 >= k * 2", "score score * (1.0 + k * 0.01)"),
    Op.DIV: ("q / 3 >= k / 4.5", "score score / (1.5 + q * 0.01)"),
    Op.FLOOR_DIV: ("(q - 20) // 8 == (k - 20) // 8", "score score + (score // 0.5) * 0.25"),
    Op.MOD: ("(q - k) % 5 != 2", "score score % 0.75 + (q - 30) % 4"),
    Op.POW: ("(q - k) ** 2 < 60 and 1.5 ** (k * 0.1) < 3.0", "score (score * 0.3) ** 3.0 + 2.0 ** (score * 0.1)"),
    Op.EQ: ("q // 8 == k // 8", "score if score == score then score else 0.0"),
    Op.NE: ("q != k", "score if q != k then score else score * 0.5"),
    Op.LT: ("k < q", "score if score < 0.0 then score * 0.5 else score"),
    Op.LE: ("k <= q", "score if score <= 0.25 then score else 0.25"),
    Op.GT: ("q > k", "score if score > 0.0 then score else score * 0.25"),
    Op.GE: ("q >= k", "score if score >= -0.5 then score else -0.5"),
    Op.AND: ("q >= k and q - k < 12", "score if score > 0.0 and q > k then score else score * 0.5"),
    Op.OR: ("q - k < 4 or k < 3", "score if score > 1.0 or q < k then score * 2.0 else score"),
    ir.UnaryOp.NEG: ("-q <= -k", "score -score"),
    ir.UnaryOp.NOT: ("not (k > q)", "score if not (score > 0.5) then score else 0.5"),
    Func.ABS: ("abs(q - k) < 9", "score abs(score) + abs(q - k) * 0.01"),
    Func.MIN: ("min(q, 30) >= k", "score min(score, 1.0)"),
    Func.MAX: ("max(q, 10) >= k", "score max(score, -0.5)"),
    Func.FLOOR: ("floor(q * 0.5) >= k", "score score + floor(score) * 0.1"),
    Func.CEIL: ("ceil(q * 0.7) >= k", "score score + ceil(score) * 0.1"),
    Func.LOG: ("log(q + 1.0) >= log(k + 1.0)", "score log(abs(score) + 1.0)"),
    Func.LOG2: ("log2(q + 1.0) + 0.5 >= log2(k + 1.0)", "score log2(abs(score) + 1.0)"),
    Func.EXP: ("exp(q * 0.1) >= exp(k * 0.1)", "score exp(score * 0.5)"),
    Func.SQRT: ("sqrt(q * 1.0) + 1.0 >= sqrt(k * 1.0)", "score sqrt(score * score + 1.0)"),
    Func.TANH: ("tanh((q - k) * 0.3) > -0.5", "score 5.0 * tanh(score / 5.0)"),
    Func.HASH: ("hash(q // 4, k // 4) % 3 != 0", "bias (hash(q, k) % 7) * 0.1"),
}
MEMBERS = list(Op) + list(ir.UnaryOp) + list(Func)

# each consumer's table, and which part of the vocabulary it must cover
BINARY_TABLES = {
    "reference": reference._BINARY,
    "intervals": {**intervals._ARITHMETIC_RULES, **{op: "_compare" for op in ir.COMPARISONS},
                  **{op: "logic" for op in ir.LOGIC}},
    "export": export._BINARY,
    "derivative": derivative._BINARY_RULES,
    "closed forms": complexity.SYMPY_BINARY,
    "simulator cost": simulator.OP_COST,
    "source printer": {ir.BinaryOp(op): level for op, level in printer._BINARY_PRECEDENCE.items()},
}
FUNCTION_TABLES = {
    "reference": reference._FUNCTIONS,
    "intervals": intervals._CALL_RULES,
    "export": export._FUNCTIONS,
    "triton": triton_printer._FUNCTIONS,
    "derivative": derivative._CALL_RULES,
    "closed forms": complexity.SYMPY_FUNCTIONS,
    "simulator cost": simulator.CALL_COST,
    "constant folding": builtins.SCALAR,
    "checker (arity, types)": builtins.BUILTINS,
}


def test_every_member_has_a_sample():
    assert set(SAMPLES) == set(MEMBERS)


@pytest.mark.parametrize("consumer", sorted(BINARY_TABLES))
def test_every_binary_operator_in_every_consumer_table(consumer):
    missing = set(Op) - set(BINARY_TABLES[consumer])
    assert not missing, f"{consumer} has no rule for {sorted(missing)}"


@pytest.mark.parametrize("consumer", sorted(FUNCTION_TABLES))
def test_every_builtin_in_every_consumer_table(consumer):
    missing = set(Func) - set(FUNCTION_TABLES[consumer])
    assert not missing, f"{consumer} has no rule for {sorted(missing)}"


def test_interval_rules_exist():
    for rule in list(intervals._ARITHMETIC_RULES.values()) + list(intervals._CALL_RULES.values()):
        assert callable(getattr(intervals.IntervalEvaluator, rule)), rule


def test_the_surface_builtins_are_the_ir_builtins_plus_sugar():
    assert set(builtins.BUILTINS) == set(Func) | {"clamp"}  # clamp is lowered to min/max


def _sample(member):
    mask, logit = SAMPLES[member]
    return attnlang.parse(f"pattern p() {{\n    mask {mask}\n    {logit}\n}}")["p"]


@pytest.mark.parametrize("member", MEMBERS, ids=str)
def test_reference_analysis_and_export_agree(member):
    p = _sample(member)
    assert_sound(p, 45, 38, heads=2, block=(16, 8))
    assert_flex_mask(p, 45, 38)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, 16, generator=gen, dtype=torch.float64) for n in (45, 38, 38))
    mask_mod, score_mod = p.flex_mods(45, 38, 2)
    block_mask = p.analyze(45, 38, 2, (16, 16)).to_flex()
    got = flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask)
    expected = p.reference_attention(q, k, v)
    rows = torch.from_numpy(p.reference_mask(45, 38, 2).any(-1))[None]
    torch.testing.assert_close(got[rows], expected[rows], rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("member", MEMBERS, ids=str)
def test_kernels_agree(member):
    check_against_reference(_sample(member), 40, 37)


def test_derivative_rules_match_autograd():
    """Every float rule of the derivative against torch's autograd on the sample logits."""
    points = torch.linspace(-2.3, 2.9, 23, dtype=torch.float64)
    for member, (_, logit) in SAMPLES.items():
        p = _sample(member)
        env = {"q": torch.tensor(33), "k": torch.tensor(20), "h": torch.tensor(0), "b": torch.tensor(0)}
        score = points.clone().requires_grad_(True)
        value = reference.Evaluator({**env, "score": score}, ops=reference._TorchOps()).visit(p.ir.logit)
        expected, = torch.autograd.grad(value.sum(), score, allow_unused=True)
        expected = torch.zeros_like(points) if expected is None else expected
        slope = derivative.differentiate(p.ir.logit)
        got = reference.Evaluator({**env, "score": points}, ops=reference._TorchOps()).visit(slope)
        got = torch.broadcast_to(torch.as_tensor(got, dtype=torch.float64), points.shape)
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-12, atol=1e-12, err_msg=str(member))
