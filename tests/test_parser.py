"""Parser and printer: the grammar accepts LANGUAGE.md, prints canonically, round-trips."""

import string

import pytest
from hypothesis import given, strategies as st

import attnlang
from attnlang import ast
from attnlang.errors import Source
from attnlang.parser import parse_source
from attnlang.printer import print_module, print_pattern

from .strategies import PROGRAM_HEADER, typed_exprs, wrap_mask


def parse_tree(text: str) -> ast.Module:
    return parse_source(Source(text, "t.attn"))


def test_newlines_are_not_significant():
    one_line = parse_tree("pattern p(r = 2) { mask q >= k and q - k < r }")
    many_lines = parse_tree("pattern p(r = 2)\n{\n  mask q >= k\n    and q - k\n < r\n}\n")
    assert one_line == many_lines


def test_score_is_both_a_statement_and_a_name():
    tree = parse_tree("pattern p(cap = 30.0) { mask q >= k score cap * tanh(score / cap) }")
    mask, score = tree.patterns[0].body
    assert isinstance(score, ast.Score)
    assert score.expr.right.args[0].left == ast.Name("score")


def test_precedence_follows_python():
    expr = parse_tree("pattern p() { bias -2 ** 2 * 3 + 1 }").patterns[0].body[0].expr
    # ((-(2 ** 2)) * 3) + 1
    assert expr == ast.Binary("+", ast.Binary("*", ast.Unary("-", ast.Binary("**", ast.IntLit(2), ast.IntLit(2))),
                                              ast.IntLit(3)), ast.IntLit(1))


def test_negative_literal_is_a_literal():
    expr = parse_tree("pattern p() { bias (-3) ** 2 }").patterns[0].body[0].expr
    assert expr == ast.Binary("**", ast.IntLit(-3), ast.IntLit(2))


def test_if_then_else_binds_loosest():
    expr = parse_tree("pattern p() { mask if q > k then true else q == k or k == 0 }").patterns[0].body[0].expr
    assert isinstance(expr, ast.IfExpr) and expr.orelse.op == "or"


def test_doc_comment_is_kept():
    tree = parse_tree("# first line\n# second line\npattern p() { mask true }")
    assert tree.patterns[0].doc == "first line\nsecond line"


def test_spans_point_at_tokens():
    tree = parse_tree("pattern p() {\n    mask q >= kk\n}")
    right = tree.patterns[0].body[0].expr.right
    assert (right.span.line, right.span.column, right.span.end_column) == (2, 15, 17)


def test_stdlib_prints_and_reparses_to_the_same_tree():
    for path in sorted(attnlang.stdlib_dir().glob("*.attn")):
        tree = parse_tree(path.read_text())
        assert parse_tree(print_module(tree)) == tree, path.name


def test_printed_source_is_canonical():
    text = "pattern p(w=3){mask q>=k and(q-k<w or k<4)}"
    assert print_pattern(parse_tree(text).patterns[0]) == (
        "pattern p(w = 3) {\n    mask q >= k and (q - k < w or k < 4)\n}\n")


@given(typed_exprs("bool"))
def test_random_trees_print_and_reparse_to_the_same_tree(expr):
    decl = wrap_mask(expr)
    text = print_pattern(decl)
    assert parse_tree(text).patterns[0] == decl


def _lower(text: str):
    try:
        return attnlang.parse(text, "t.attn")["t"].ir
    except attnlang.AttnlangError as err:
        return ("error", err.message)


@given(typed_exprs("bool"))
def test_random_trees_print_and_reparse_to_the_same_ir(expr):
    text = print_pattern(wrap_mask(expr))
    lowered = _lower(text)
    if isinstance(lowered, tuple):  # e.g. a constant division by zero: an error both ways
        assert lowered == _lower(text)
        return
    # the IR prints as source that lowers to the same IR again
    again = _lower(PROGRAM_HEADER + f"    mask {lowered.mask}\n}}\n")
    assert again == lowered


# -- ill-formed programs ----------------------------------------------------------------------

VALID = [path.read_text() for path in sorted(attnlang.stdlib_dir().glob("*.attn"))]
NOISE = list("(){}[],.:=<>!&|+-*/%#^;?'\"\n ") + ["==", "**", "//", "mask", "let", "use", "q", "1", "2.5",
                                                    "if", "then", "else", "score", "pattern", "and"]


@st.composite
def mutated_programs(draw):
    text = draw(st.sampled_from(VALID))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["delete", "insert", "replace"]))
        if action == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 12)):]
        elif action == "insert":
            text = text[:at] + draw(st.sampled_from(NOISE)) + text[at:]
        else:
            text = text[:at] + draw(st.sampled_from(NOISE)) + text[at + 1:]
    return text


def _assert_error_inside(text: str):
    try:
        attnlang.parse(text, "t.attn")
    except attnlang.AttnlangError as err:
        lines = text.splitlines() or [""]
        assert err.line is not None and 1 <= err.line <= len(lines) + 1, (err.line, len(lines))
        line_text = lines[err.line - 1] if err.line <= len(lines) else ""
        assert 1 <= err.column <= len(line_text) + 2, (err.column, line_text)
        assert str(err).startswith(f"t.attn:{err.line}:{err.column}: error: ")


@given(mutated_programs())
def test_mutated_programs_fail_only_with_positioned_errors(text):
    _assert_error_inside(text)


@given(st.text(alphabet=string.ascii_letters + string.digits + "(){}[],.:=<>+-*/%# \n", max_size=80))
def test_random_text_fails_only_with_positioned_errors(text):
    _assert_error_inside(text)


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_empty_programs_are_empty_modules(text):
    assert attnlang.parse(text).names() == []
