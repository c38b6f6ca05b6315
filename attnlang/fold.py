"""Constant folding and the algebraic identities that are safe for every input.

Constants are evaluated by the reference evaluator itself, so folding can never disagree
with the ground truth (floor division, hash, float corner cases).
"""

from __future__ import annotations

import math

from . import ir
from .errors import AttnlangError
from .ir import Const, Type

__all__ = ["fold_constants"]


def fold_constants(node: ir.Expr) -> ir.Expr:
    kids = ir.children(node)
    if not kids:
        return node
    folded = tuple(fold_constants(k) for k in kids)
    node = ir.replace_children(node, folded) if folded != kids else node
    if all(isinstance(k, Const) for k in folded) and not isinstance(node, ir.Load):
        return _evaluate_constant(node)
    return _simplify(node)


# Integer operators whose result can leave int64; folded with Python's exact ints to tell.
_EXACT_INT = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
              "**": lambda a, b: a ** b}


def _evaluate_constant(node: ir.Expr) -> Const:
    from .reference import evaluate_scalar
    if isinstance(node, ir.Binary) and node.type is Type.INT and node.op in _EXACT_INT:
        left, right = node.left.value, node.right.value
        if node.op == "**" and right > 64 and abs(left) > 1:
            raise AttnlangError("this constant expression overflows 64-bit integers", node.span)
        value = _EXACT_INT[node.op](left, right) if node.op != "**" or right >= 0 else None
        if value is not None and not -(2**63) <= value < 2**63:
            raise AttnlangError("this constant expression overflows 64-bit integers", node.span)
    value = evaluate_scalar(node)
    if node.type is Type.FLOAT and not math.isfinite(value):
        raise AttnlangError(f"this constant expression evaluates to {value}", node.span)
    if node.type is Type.INT and not -(2**63) <= value < 2**63:
        raise AttnlangError("this constant expression overflows 64-bit integers", node.span)
    return Const(value, node.type, node.span)


def _is(node: ir.Expr, value) -> bool:
    """Whether `node` is the constant `value` (True/False match bools only, 0/1 ints only)."""
    return (isinstance(node, Const) and node.value == value
            and (node.type is Type.BOOL) == isinstance(value, bool))


def _simplify(node: ir.Expr) -> ir.Expr:
    """Identities with one constant side; each holds for every value of the other side."""
    match node:
        case ir.Binary("and", left, right):
            if _is(left, False) or _is(right, False):
                return ir.FALSE
            if _is(left, True):
                return right
            if _is(right, True):
                return left
        case ir.Binary("or", left, right):
            if _is(left, True) or _is(right, True):
                return ir.TRUE
            if _is(left, False):
                return right
            if _is(right, False):
                return left
        case ir.Binary("+", left, right) if node.type is Type.INT:
            if _is(left, 0):
                return right
            if _is(right, 0):
                return left
        case ir.Binary("-", left, right) if node.type is Type.INT and _is(right, 0):
            return left
        case ir.Binary("*", left, right) if node.type is Type.INT:
            if _is(left, 1):
                return right
            if _is(right, 1):
                return left
        case ir.Select(Const(value=cond), then, orelse):
            return then if cond else orelse
        case ir.Unary("not", ir.Unary("not", inner)):
            return inner
    return node


# -- integer division of linear forms ----------------------------------------------------

def fold_linear(node: ir.Expr, ranges: dict[ir.Expr, tuple[float, float]]) -> ir.Expr:
    """Integer `%` and `//` by a positive constant of a sum of terms, bottom-up:
    `(a*d + r) % d -> r % d` and `(a*d + r) // d -> a + r // d` for any ints a and r, then
    `r % d -> r` and `r // d -> 0` where `ranges` (atom -> (lo, hi)) prove 0 <= r < d.
    What layouts need: a grid coordinate of a permuted position folds back to that coordinate."""
    kids = ir.children(node)
    if not kids:
        return node
    folded = tuple(fold_linear(k, ranges) for k in kids)
    node = ir.replace_children(node, folded) if folded != kids else node
    match node:
        case ir.Binary(op, left, Const(value=d)) if (op in ("%", "//") and node.type is Type.INT
                                                      and isinstance(d, int) and not isinstance(d, bool) and d > 0):
            return _fold_division(node, op, left, d, ranges)
    return node


def _fold_division(node: ir.Binary, op: str, dividend: ir.Expr, d: int, ranges) -> ir.Expr:
    match dividend:  # nested by positive constants: x // a // d == x // (a*d); x % (a*d) % d == x % d
        case ir.Binary("//", inner, Const(value=a)) if op == "//" and isinstance(a, int) and 0 < a < 2**31 > d:
            merged = ir.Binary("//", inner, Const(a * d, Type.INT), Type.INT, node.span)
            return _fold_division(merged, op, inner, a * d, ranges)
        case ir.Binary("%", inner, Const(value=m)) if op == "%" and isinstance(m, int) and m > 0 and m % d == 0:
            merged = ir.Binary("%", inner, Const(d, Type.INT), Type.INT, node.span)
            return _fold_division(merged, op, inner, d, ranges)
    terms, constant = _linear_form(dividend)
    if any(abs(c) >= 2**62 for c in (*terms.values(), constant)):
        return node  # the evaluators wrap at int64; exact-integer rewriting would not match them
    # c = d * (c - r) / d + r with r nearest zero: any split of c is exact, and a small r
    # keeps `x - y` as it is rather than `x + (d - 1) * y`
    nearest = {atom: (c % d if c % d <= d // 2 else c % d - d) for atom, c in terms.items()}
    quotient = {atom: (c - nearest[atom]) // d for atom, c in terms.items() if c != nearest[atom]}
    remainder = {atom: r for atom, r in nearest.items() if r}
    whole, rest = constant // d, constant % d
    lo, hi = _range(remainder, rest, ranges)
    in_period = 0 <= lo and hi < d
    reduced = _build(remainder, rest)
    if op == "%":
        if in_period:
            return reduced
        if quotient or whole or rest != constant:  # a multiple of d was dropped
            return ir.Binary("%", reduced, Const(d, Type.INT), Type.INT, node.span)
        return node
    if in_period:
        return _build(quotient, whole)
    if not quotient and not whole:
        return node
    return ir.Binary("+", _build(quotient, whole), ir.Binary("//", reduced, Const(d, Type.INT), Type.INT, node.span),
                     Type.INT, node.span)


def _linear_form(node: ir.Expr) -> tuple[dict[ir.Expr, int], int]:
    """`node` as {atom: coefficient} + constant; anything but +, -, negation and products
    with a constant is an atom."""
    match node:
        case Const(value=v) if node.type is Type.INT and not isinstance(v, bool):
            return {}, int(v)
        case ir.Binary("+" | "-", left, right) if node.type is Type.INT:
            (a, ca), (b, cb) = _linear_form(left), _linear_form(right)
            sign = 1 if node.op == "+" else -1
            merged = dict(a)
            for atom, c in b.items():
                merged[atom] = merged.get(atom, 0) + sign * c
            return {k: v for k, v in merged.items() if v}, ca + sign * cb
        case ir.Binary("*", left, Const(value=c)) | ir.Binary("*", Const(value=c), left) if (
                node.type is Type.INT and not isinstance(c, bool)):
            terms, constant = _linear_form(left)
            return {k: v * int(c) for k, v in terms.items() if v * int(c)}, constant * int(c)
        case ir.Unary("-", operand) if node.type is Type.INT:
            terms, constant = _linear_form(operand)
            return {k: -v for k, v in terms.items()}, -constant
    return {node: 1}, 0


def _range(terms: dict, constant: int, ranges) -> tuple[float, float]:
    lo = hi = float(constant)
    for atom, c in terms.items():
        if atom not in ranges:
            return -math.inf, math.inf
        a, b = ranges[atom]
        lo, hi = lo + min(c * a, c * b), hi + max(c * a, c * b)
    return lo, hi


def _build(terms: dict, constant: int) -> ir.Expr:
    expr = None
    for atom, c in terms.items():
        term = atom if abs(c) == 1 else ir.Binary("*", atom, Const(abs(c), Type.INT), Type.INT)
        if expr is None:
            expr = term if c > 0 else ir.Unary("-", term, Type.INT)
        else:
            expr = ir.Binary("+" if c > 0 else "-", expr, term, Type.INT)
    if expr is None:
        return Const(constant, Type.INT)
    if constant:
        expr = ir.Binary("+" if constant > 0 else "-", expr, Const(abs(constant), Type.INT), Type.INT)
    return expr
