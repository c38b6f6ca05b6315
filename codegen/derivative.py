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


Op, Func = ir.BinaryOp, ir.Func
F = Type.FLOAT


def _d_add(node, a, b, da, db):
    return _f("+", da, db)


def _d_sub(node, a, b, da, db):
    return _f("-", da, db)


def _d_mul(node, a, b, da, db):
    return _f("+", _f("*", da, _float(b)), _f("*", _float(a), db))


def _d_div(node, a, b, da, db):
    return _f("/", _f("-", _f("*", da, _float(b)), _f("*", _float(a), db)), _f("*", _float(b), _float(b)))


def _d_pow(node, a, b, da, db):
    """d(a^b) = b a^(b-1) da + a^b ln(a) db."""
    power_rule = _f("*", _f("*", _float(b), _f("**", _float(a), _f("-", _float(b), ONE))), da)
    if fold_constants(db) == ZERO:
        return power_rule
    log_a = ir.Call(Func.LOG, (_float(a),), F)
    return _f("+", power_rule, _f("*", _f("*", node, log_a), db))


def _d_mod(node, a, b, da, db):
    """a % c = a - c * floor(a / c): slope 1 in a, -floor(a / c) in c."""
    quotient = ir.Call(Func.FLOOR, (ir.Binary(Op.DIV, _float(a), _float(b), F),), Type.INT)
    return _f("-", da, _f("*", _float(quotient), db))


def _d_constant(node, *_):
    return ZERO


# One rule per operator. Comparisons and logic are bools and never reach their rule (a float
# operation is required); // is piecewise constant.
_BINARY_RULES = {Op.ADD: _d_add, Op.SUB: _d_sub, Op.MUL: _d_mul, Op.DIV: _d_div, Op.POW: _d_pow, Op.MOD: _d_mod,
                 Op.FLOOR_DIV: _d_constant, **{op: _d_constant for op in ir.COMPARISONS + ir.LOGIC}}


def _sign(x: ir.Expr) -> ir.Expr:
    negative = ir.Select(ir.Binary(Op.LT, x, ZERO, Type.BOOL), ir.Const(-1.0, F), ZERO, F)
    return ir.Select(ir.Binary(Op.GT, x, ZERO, Type.BOOL), ONE, negative, F)


def _d_abs(node, dx):  # sign(x): 0 at 0, as torch's
    return _f("*", _sign(node.args[0]), dx)


def _d_min_max(node, da, db):
    """The picked side's slope; at a tie half of each, as torch's."""
    a, b = node.args
    first = ir.Binary(Op.LT if node.func == Func.MIN else Op.GT, a, b, Type.BOOL)
    tie = ir.Binary(Op.EQ, a, b, Type.BOOL)
    shared = _f("*", ir.Const(0.5, F), _f("+", da, db))
    return ir.Select(first, da, ir.Select(tie, shared, db, F), F)


_CALL_RULES = {
    Func.ABS: _d_abs,
    Func.MIN: _d_min_max,
    Func.MAX: _d_min_max,
    Func.LOG: lambda node, dx: _f("/", dx, node.args[0]),
    Func.LOG2: lambda node, dx: _f("/", dx, _f("*", node.args[0], ir.Const(math.log(2.0), F))),
    Func.EXP: lambda node, dx: _f("*", node, dx),
    Func.SQRT: lambda node, dx: _f("/", dx, _f("*", ir.Const(2.0, F), node)),
    Func.TANH: lambda node, dx: _f("*", _f("-", ONE, _f("*", node, node)), dx),
    # ints: they do not depend on the score
    Func.FLOOR: _d_constant,
    Func.CEIL: _d_constant,
    Func.HASH: _d_constant,
}


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
        if node.op == ir.UnaryOp.NOT:
            return ZERO
        return _f("-", ZERO, self.visit(node.operand))

    def visit_Binary(self, node):
        if node.type is not Type.FLOAT:  # ints and bools do not depend on the score
            return ZERO
        return _BINARY_RULES[node.op](node, node.left, node.right, self.visit(node.left), self.visit(node.right))

    def visit_Call(self, node):
        if node.type is not Type.FLOAT:
            return ZERO
        return _CALL_RULES[node.func](node, *(self.visit(arg) for arg in node.args))

    def visit_Select(self, node):
        if node.type is not Type.FLOAT:
            return ZERO
        return ir.Select(node.cond, self.visit(node.then), self.visit(node.orelse), F)


def differentiate(logit: ir.Expr) -> ir.Expr:
    """d logit / d score, folded."""
    return fold_constants(Differentiator().visit(logit))
