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
