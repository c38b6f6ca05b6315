"""The differential fuzzer's CI profile: a bounded run of every check of `tests/fuzz.py`.

Each check draws whole programs (helpers, `use`, `let`, `grid`, inputs, per-head and
per-batch masks, chains of `score`/`bias`) and compares one consumer with another: the
reference with scalar evaluators, the analysis with the dense mask, the FlexAttention export
and the Triton kernels with `reference_attention`. `python -m tests.fuzz --minutes 30` runs the
same checks for longer; `HYPOTHESIS_PROFILE=thorough` runs ten times more examples here.
"""

import numpy as np
import pytest
from hypothesis import settings
from hypothesis.internal.conjecture import engine

from attnlang.builtins import hash_ints

from .fuzz import FLOAT, INT, Decl, attn_hash, call, hypothesis_test, lit, name, node, to_source

# Examples per check: about a minute in all on 2 cores (kernels run interpreted), plus up to a
# minute of shrinking per check that fails.
EXAMPLES = {"reference": 300, "analysis": 300, "flex": 25, "kernel": 15}


@pytest.mark.parametrize("check", list(EXAMPLES))
def test_fuzz(check, monkeypatch):
    # hypothesis shrinks for up to 5 minutes; a kernel case takes a second or two to replay
    monkeypatch.setattr(engine, "MAX_SHRINKING_SECONDS", 60)
    scale = settings.default.max_examples / 60  # the "ci" profile has 60 examples
    hypothesis_test(check, max(1, round(EXAMPLES[check] * scale)), database=settings.default.database)()


q, k, h = name("q", INT), name("k", INT), name("h", INT)


@pytest.mark.parametrize(
    "expr, text",
    [
        (node("neg", node("**", lit(2), lit(2))), "-2 ** 2"),
        (node("**", lit(-2), lit(2)), "(-2) ** 2"),
        (node("**", lit(2), node("**", lit(3), lit(2))), "2 ** 3 ** 2"),
        (node("**", node("**", lit(2), lit(3)), lit(2)), "(2 ** 3) ** 2"),
        (node("**", lit(2), lit(-1)), "2 ** -1"),
        (node("-", q, node("-", k, lit(1))), "q - (k - 1)"),
        (node("-", node("-", q, k), lit(1)), "q - k - 1"),
        (node("*", q, node("neg", k)), "q * -k"),
        (node("==", node("<", q, k), node("<", k, h)), "(q < k) == (k < h)"),
        (node("not", node("and", node("<", q, k), node("<", k, h))), "not (q < k and k < h)"),
        (
            node("and", node("not", node("<", q, k)), node("or", node("<", k, h), node("<", h, q))),
            "not q < k and (k < h or h < q)",
        ),
        (node("+", node("if", node("<", q, k), q, k), lit(1)), "(if q < k then q else k) + 1"),
        (call("max", node("if", node("<", q, k), q, k), lit(1)), "max(if q < k then q else k, 1)"),
        (node("neg", node("neg", q)), "- -q"),
    ],
)
def test_printer_uses_minimal_parentheses(expr, text):
    assert to_source(expr) == text


@pytest.mark.parametrize(
    "expr, kind",
    [
        (node("**", q, lit(3)), INT),
        (node("**", q, lit(-3)), FLOAT),
        (node("**", q, node("+", lit(1), lit(2))), FLOAT),
        (node("/", q, k), FLOAT),
        (call("floor", lit(2.5)), INT),
        (call("min", q, lit(1.0)), FLOAT),
        (node("if", node("<", q, k), q, lit(1.5)), FLOAT),
        (call("hash", q, k), INT),
    ],
)
def test_typing_rules(expr, kind):
    assert expr.type == kind


def test_hash_matches_the_builtin():
    values = [0, 1, -1, 2**31, 2**32 + 5, -(2**40), 2**62, 123456789]
    for a in values:
        for b in values[:4]:
            assert attn_hash(a, b) == hash_ints(np.int64(a), np.int64(b))


def test_a_program_prints_as_source():
    decl = Decl(
        "main",
        (("w", INT, 3), ("f", FLOAT, 0.5)),
        (
            ("input", "doc"),
            ("grid", ("y", "x"), (lit(4), name("w", INT))),
            ("mask", node(">=", q, k)),
            ("score", node("*", lit(2.0), call("tanh", node("/", name("score", FLOAT), lit(2.0))))),
        ),
    )
    assert decl.source == (
        "pattern main(w = 3, f = 0.5) {\n    input doc: int[tokens]\n    grid (y, x) = (4, w)\n"
        "    mask q >= k\n    score 2.0 * tanh(score / 2.0)\n}\n"
    )
