"""d(logit)/d(score): the IR of a pattern's logit transform, differentiated symbolically.

One rule per IR node kind; the result is folded, so `score + bias` gives 1 and softcap's
`cap * tanh(score / cap)` gives `cap * ((1 - tanh(score / cap)**2) * (1 / cap))` folded.
The backward kernels multiply dS by it.
"""

from __future__ import annotations

import math

from attnlang import ir
from attnlang.fold import fold_constants
from attnlang.ir import Type

__all__ = ["differentiate", "Differentiator"]

SCORE = ir.Var("score", Type.FLOAT)
ZERO, ONE = ir.Const(0.0, Type.FLOAT), ir.Const(1.0, Type.FLOAT)
ZERO_INT = ir.Const(0, Type.INT)


def _f(op, a, b):
    """A float operation with the identities of a derivative applied (0 + x, 0 * x, 1 * x, 0 / x)."""
    a, b = fold_constants(a), fold_constants(b)
    zero_a, zero_b = a in (ZERO, ZERO_INT), b in (ZERO, ZERO_INT)
    if op == "+" and (zero_a or zero_b):
        return _float(b if zero_a else a)
    if op == "-" and zero_b:
        return _float(a)
    if op == "-" and zero_a:
        return ir.Unary("-", _float(b), Type.FLOAT)
    if op == "*" and (zero_a or zero_b):
        return ZERO
    if op == "*" and (a == ONE or b == ONE):
        return _float(b if a == ONE else a)
    if op == "/" and zero_a:
        return ZERO
    return ir.Binary(op, _float(a), _float(b), Type.FLOAT)


def _float(expr: ir.Expr) -> ir.Expr:
    return expr if expr.type is Type.FLOAT else ir.Cast(expr, Type.FLOAT)


def _sign(x: ir.Expr) -> ir.Expr:
    negative = ir.Select(ir.Binary("<", x, ZERO, Type.BOOL), ir.Const(-1.0, Type.FLOAT), ZERO, Type.FLOAT)
    return ir.Select(ir.Binary(">", x, ZERO, Type.BOOL), ONE, negative, Type.FLOAT)


class Differentiator(ir.Visitor):
    """visit(node) → d node / d score, as float IR."""

    def visit_Const(self, node):
        return ZERO

    def visit_Var(self, node):
        return ONE if node == SCORE else ZERO

    def visit_Load(self, node):
        return ZERO

    def visit_Cast(self, node):
        return self.visit(node.operand)

    def visit_Unary(self, node):
        if node.op == "not":
            return ZERO
        return _f("-", ZERO, self.visit(node.operand))

    def visit_Binary(self, node):
        if node.type is not Type.FLOAT:  # ints and bools do not depend on the score
            return ZERO
        a, b = node.left, node.right
        da, db = self.visit(a), self.visit(b)
        if node.op == "+":
            return _f("+", da, db)
        if node.op == "-":
            return _f("-", da, db)
        if node.op == "*":
            return _f("+", _f("*", da, _float(b)), _f("*", _float(a), db))
        if node.op == "/":
            return _f("/", _f("-", _f("*", da, _float(b)), _f("*", _float(a), db)), _f("*", _float(b), _float(b)))
        if node.op == "**":  # d(a^b) = b a^(b-1) da + a^b ln(a) db
            power_rule = _f("*", _f("*", _float(b), _f("**", _float(a), _f("-", _float(b), ONE))), da)
            if fold_constants(db) == ZERO:
                return power_rule
            log_a = ir.Call("log", (_float(a),), Type.FLOAT)
            return _f("+", power_rule, _f("*", _f("*", node, log_a), db))
        if node.op == "%":  # a % c = a - c * floor(a / c): slope 1 in a, -floor(a / c) in c
            quotient = ir.Call("floor", (ir.Binary("/", _float(a), _float(b), Type.FLOAT),), Type.INT)
            return _f("-", da, _f("*", _float(quotient), db))
        return ZERO  # // is piecewise constant

    def visit_Call(self, node):
        if node.type is not Type.FLOAT:
            return ZERO
        x = node.args[0]
        dx = self.visit(x)
        if node.func == "abs":  # sign(x): 0 at 0, as torch's
            return _f("*", _sign(x), dx)
        if node.func in ("min", "max"):  # the picked side's slope; a tie shares it, as torch's
            a, b = node.args
            da, db = self.visit(a), self.visit(b)
            first = ir.Binary("<" if node.func == "min" else ">", a, b, Type.BOOL)
            tie = ir.Binary("==", a, b, Type.BOOL)
            shared = _f("*", ir.Const(0.5, Type.FLOAT), _f("+", da, db))
            return ir.Select(first, da, ir.Select(tie, shared, db, Type.FLOAT), Type.FLOAT)
        if node.func == "log":
            return _f("/", dx, x)
        if node.func == "log2":
            return _f("/", dx, _f("*", x, ir.Const(math.log(2.0), Type.FLOAT)))
        if node.func == "exp":
            return _f("*", node, dx)
        if node.func == "sqrt":
            return _f("/", dx, _f("*", ir.Const(2.0, Type.FLOAT), node))
        if node.func == "tanh":
            return _f("*", _f("-", ONE, _f("*", node, node)), dx)
        raise TypeError(f"no derivative for {node.func}")

    def visit_Select(self, node):
        if node.type is not Type.FLOAT:
            return ZERO
        return ir.Select(node.cond, self.visit(node.then), self.visit(node.orelse), Type.FLOAT)


def differentiate(logit: ir.Expr) -> ir.Expr:
    """d logit / d score, folded."""
    return fold_constants(Differentiator().visit(logit))
