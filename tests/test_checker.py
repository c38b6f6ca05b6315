"""Lowering to IR: binding, let, grid, use, pattern calls, score composition, types."""

import numpy as np
import pytest

import attnlang
from attnlang import ir
from attnlang.ir import Type


def lower(text: str, name: str = "p"):
    return attnlang.parse(text, "t.attn")[name]


def test_parameters_are_bound_and_folded():
    pattern = lower("pattern p(window = 4) { mask q - k < window * 2 }")
    assert str(pattern.ir.mask) == "q - k < 8"
    assert str(pattern.bind(window=10).ir.mask) == "q - k < 20"


def test_bind_checks_names_and_types():
    pattern = attnlang.stdlib()["sliding_window"]
    with pytest.raises(attnlang.AttnlangError, match="no parameter 'windw'; did you mean 'window'"):
        pattern.bind(windw=3)
    with pytest.raises(attnlang.AttnlangError, match="expects int, got float 2.5"):
        pattern.bind(window=2.5)
    with pytest.raises(attnlang.AttnlangError, match="expects int, got bool"):
        pattern.bind(window=True)
    assert attnlang.stdlib()["softcap"].bind(cap=20).params == {"cap": 20.0}


def test_bind_returns_a_new_pattern():
    base = attnlang.stdlib()["sliding_window"]
    small = base.bind(window=8)
    assert base.params == {"window": 4096} and small.params == {"window": 8}
    assert small.label == "sliding_window(window=8)" and small.slug == "sliding_window_window_8"


def test_let_is_inlined_in_order():
    pattern = lower("pattern p() {\n let a = q - k\n let c = a * 2\n mask c < 6 and a >= 0\n}")
    assert str(pattern.ir.mask) == "(q - k) * 2 < 6 and q - k >= 0"


def test_grid_lowers_to_floor_division_and_modulo():
    pattern = lower("pattern p(h2 = 3, w = 5) {\n grid (t, y, x) = (2, h2, w)\n mask q.t == k.t and q.y == k.y and q.x == k.x\n}")
    assert str(pattern.ir.mask) == "q // 15 == k // 15 and q // 5 % 3 == k // 5 % 3 and q % 5 == k % 5"
    mask = pattern.reference_mask(30, 30)[0]
    assert (mask == np.eye(30, dtype=bool)).all()


def test_use_inlines_masks_and_score_in_order():
    program = """
    pattern base(cap = 2.0) {
        mask q >= k
        score cap * tanh(score / cap)
    }
    pattern p() {
        bias 1.0
        use base(cap = 4.0)
        mask q - k < 3
    }
    """
    pattern = lower(program)
    assert str(pattern.ir.mask) == "q >= k and q - k < 3"
    assert str(pattern.ir.logit) == "4.0 * tanh((score + 1.0) / 4.0)"


def test_use_reaches_the_standard_library_and_local_patterns_shadow_it():
    assert str(lower("pattern p() { use streaming(8, 2) }").ir.mask) == "q >= k and (q - k < 8 or k < 2)"
    local = "pattern causal() { mask true }\npattern p() { use causal() }"
    assert lower(local).ir.mask == ir.TRUE


def test_a_pattern_called_in_an_expression_is_its_mask():
    pattern = lower("pattern p() { mask causal() or k < 2 }")
    assert str(pattern.ir.mask) == "q >= k or k < 2"


def test_inputs_of_used_patterns_are_carried():
    pattern = lower("pattern p() { use document() }")
    assert pattern.inputs == ("doc",)


def test_route_is_carried_by_use():
    pattern = lower("pattern p() { use moba(block = 8, top = 2) }")
    assert pattern.is_routed and (pattern.ir.route.top, pattern.ir.route.block) == (2, 8)


def test_promotions_are_explicit_casts():
    pattern = lower("pattern p() { mask q / 2 < k }")
    left = pattern.ir.mask.left
    assert left.op == "/" and isinstance(left.left, ir.Cast) and left.type is Type.FLOAT
    assert isinstance(pattern.ir.mask.right, ir.Cast)


def test_int_power_needs_a_literal_exponent():
    assert lower("pattern p() { mask q ** 2 < k }").ir.mask.left.type is Type.INT
    assert lower("pattern p(e = 2) { mask q ** e < k }").ir.mask.left.type is Type.FLOAT


def test_floor_division_and_modulo_follow_python_for_negative_operands():
    pattern = lower("pattern p() { mask (q - k) // 3 == -1 and (q - k) % 3 == 2 }")
    mask = pattern.reference_mask(8, 8)[0]
    for q in range(8):
        for k in range(8):
            assert mask[q, k] == ((q - k) // 3 == -1 and (q - k) % 3 == 2)


def test_hash_is_the_same_in_folding_and_evaluation():
    folded = lower("pattern p() { mask k == hash(3, 4) % 7 }").ir.mask.right
    from attnlang.builtins import hash_ints
    assert folded == ir.Const(hash_ints(3, 4) % 7, Type.INT)


def test_bool_parameters_fold_away():
    longnet = attnlang.stdlib()["longnet"]
    assert "q >= k" in str(longnet.ir.mask)
    assert "q >= k" not in str(longnet.bind(causal=False).ir.mask)


def test_ir_is_hashable_and_patterns_compare_by_ir():
    a = attnlang.stdlib()["sliding_window"].bind(window=8)
    b = lower("pattern p(w = 8) { mask q >= k and q - k < w }")
    assert hash(a.ir.mask) == hash(b.ir.mask) and a.ir.mask == b.ir.mask
    assert len({a.ir.mask, b.ir.mask}) == 1


def test_constants_of_different_types_differ():
    assert ir.Const(1, Type.INT) != ir.Const(1.0, Type.FLOAT)
    assert ir.Const(1, Type.INT) != ir.Const(True, Type.BOOL)


def test_depends_on_head():
    lib = attnlang.stdlib()
    assert lib["duo"].depends_on_head and lib["alibi"].depends_on_head
    assert not lib["causal"].depends_on_head


def test_pattern_ir_prints_as_source():
    text = str(attnlang.stdlib()["softcap"].ir)
    assert text == "pattern softcap(cap = 30.0) {\n    mask q >= k\n    score 30.0 * tanh(score / 30.0)\n}\n"
    again = lower(text.replace("softcap", "p", 1))
    assert again.ir.mask == attnlang.stdlib()["softcap"].ir.mask
