"""Closed forms for the number of allowed pairs, as a function of n = n_q = n_k and the parameters.

Derivation (no fitting): the pattern is lowered with its int parameters kept symbolic and
its mask turned into a sympy formula (`SympyPrinter`, one method per IR node). Each atom
must be one of
  - a linear bound on d = q - k (`q >= k`, `q - k < window`, `abs(q - k) <= w`),
  - a congruence on d (`(q - k) % stride == 0`),
  - a bound on k alone or on q alone (`k < sinks`, `q < global_tokens`),
  - block equality `q // B == k // B` (alone).
The formula goes to disjunctive normal form; inclusion–exclusion over its terms leaves
conjunctions, and each conjunction counts as a sum over d of the length of an interval of
k whose ends are max/min of lines in d. Those sums are split where the lines cross and
summed by sympy. Which line is active is read at a sample point with n large, so the
result holds for n >= `valid_from` (beyond every parameter-only bound).

Where the mask leaves that class (grids, hashes, inputs, per-head masks, logs), the growth
exponent is fitted to exact counts from the block map, and labelled as fitted.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from itertools import combinations

import sympy as sp

from . import ir
from .ir import Type

__all__ = ["Complexity", "derive_pairs", "SympyPrinter", "NotDerivable"]

n = sp.Symbol("n", integer=True, positive=True)
_q, _k, _d, _j = sp.symbols("q k d j", integer=True)


_Op, _Func = ir.BinaryOp, ir.Func
SYMPY_BINARY = {
    _Op.ADD: operator.add, _Op.SUB: operator.sub, _Op.MUL: operator.mul, _Op.DIV: operator.truediv,
    _Op.FLOOR_DIV: lambda a, b: sp.floor(a / b), _Op.MOD: sp.Mod, _Op.POW: operator.pow,
    _Op.EQ: sp.Eq, _Op.NE: sp.Ne, _Op.LT: sp.Lt, _Op.LE: sp.Le, _Op.GT: sp.Gt, _Op.GE: sp.Ge,
    _Op.AND: sp.And, _Op.OR: sp.Or,
}
# None: no closed form is derived through this function (the count is fitted instead)
SYMPY_FUNCTIONS = {_Func.ABS: sp.Abs, _Func.MIN: sp.Min, _Func.MAX: sp.Max, _Func.FLOOR: sp.floor,
                   _Func.CEIL: sp.ceiling, _Func.LOG: None, _Func.LOG2: None, _Func.EXP: None, _Func.SQRT: None,
                   _Func.TANH: None, _Func.HASH: None}


class NotDerivable(Exception):
    """The mask is outside the class the closed-form counter handles."""


@dataclass(frozen=True)
class Complexity:
    """How many (query, key) pairs a pattern allows at n_q = n_k = n.

    `method` is "derived" (then `pairs` is exact for n >= `valid_from`), "fitted" (then
    `exponent` is the slope of log pairs against log n over `fitted_lengths`), "bound"
    (routing: an upper bound in `big_o`) or "input-dependent" (no count without inputs).
    """

    pattern: str
    method: str
    big_o: str
    pairs: sp.Expr | None = None
    valid_from: int | None = None
    exponent: float | None = None
    fitted_lengths: tuple[int, ...] = ()
    reason: str = ""
    params: tuple[tuple[str, object], ...] = ()  # the pattern's bound values, defaults for evaluate

    def __str__(self) -> str:
        if self.method == "derived":
            return f"{self.pairs}   {self.big_o}   (derived, n >= {self.valid_from})"
        if self.method == "fitted":
            return f"{self.big_o}   (fitted: exponent {self.exponent:.3f} over n = " \
                   f"{', '.join(map(str, self.fitted_lengths))}; {self.reason})"
        return f"{self.big_o}   ({self.method}: {self.reason})"

    def evaluate(self, length: int, **params) -> int:
        """The derived count at n = `length` (parameters default to the pattern's)."""
        if self.pairs is None:
            raise ValueError(f"a {self.method} complexity has no closed form ({self.big_o}); "
                             "only a derived one can be evaluated")
        bound = {k: v for k, v in self.params if not isinstance(v, bool)}
        values = {sp.Symbol(k, integer=True, positive=True): v for k, v in {**bound, **params}.items()}
        return int(self.pairs.subs(values).subs(n, length))


# -- IR → sympy ------------------------------------------------------------------------------

class SympyPrinter(ir.Visitor):
    """IR → sympy, for masks over q, k, n_q = n_k = n and symbolic int parameters."""

    def __init__(self, params: dict):
        self.params = params  # name → value (int parameters become symbols)

    def visit_Const(self, node: ir.Const):
        if node.type is Type.BOOL:
            return sp.true if node.value else sp.false
        return sp.Integer(node.value) if node.type is Type.INT else sp.Rational(str(node.value))

    def visit_Var(self, node: ir.Var):
        if node.name == "q":
            return _q
        if node.name == "k":
            return _k
        if node.name in ("n_q", "n_k"):
            return n
        if node.name in self.params and node.type is Type.INT:
            return sp.Symbol(node.name, integer=True, positive=True)
        raise NotDerivable(f"the mask reads '{node.name}'")

    def visit_Load(self, node: ir.Load):
        raise NotDerivable(f"the mask reads runtime input '{node.input}'")

    def visit_Cast(self, node: ir.Cast):
        return self.visit(node.operand)

    def visit_Unary(self, node: ir.Unary):
        value = self.visit(node.operand)
        return sp.Not(value) if node.op == ir.UnaryOp.NOT else -value

    def visit_Binary(self, node: ir.Binary):
        a, b = self.visit(node.left), self.visit(node.right)
        return SYMPY_BINARY[node.op](a, b)

    def visit_Call(self, node: ir.Call):
        args = [self.visit(a) for a in node.args]
        if SYMPY_FUNCTIONS[node.func] is None:
            raise NotDerivable(f"the mask calls {node.func}")
        return SYMPY_FUNCTIONS[node.func](*args)

    def visit_Select(self, node: ir.Select):
        cond, then, orelse = (self.visit(c) for c in (node.cond, node.then, node.orelse))
        if node.type is Type.BOOL:
            return sp.Or(sp.And(cond, then), sp.And(sp.Not(cond), orelse))
        return sp.Piecewise((then, cond), (orelse, True))


# -- atoms -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Bound:
    """A linear bound `coefficient * variable <= rhs` on one of d, k, q (coefficient ±1)."""

    variable: str
    sign: int
    rhs: sp.Expr

    def negated(self) -> "_Bound":  # not (s*x <= r)  <=>  -s*x <= -r - 1 over the integers
        return _Bound(self.variable, -self.sign, -self.rhs - 1)


@dataclass(frozen=True)
class _Congruence:
    """d ≡ residue (mod modulus)."""

    modulus: sp.Expr
    residue: sp.Expr


@dataclass(frozen=True)
class _SameBlock:
    block: sp.Expr


def _linear_bounds(rel) -> list[_Bound]:
    """A linear relation as bounds `e <= 0` on d, k or q."""
    difference = rel.lhs - rel.rhs
    forms = {sp.Lt: [difference + 1], sp.Le: [difference], sp.Gt: [-difference + 1],
             sp.Ge: [-difference], sp.Eq: [difference, -difference]}
    if type(rel) not in forms:
        raise NotDerivable(f"unsupported relation {rel}")
    return [_bound_from(e) for e in forms[type(rel)]]


def _bound_from(expression: sp.Expr) -> _Bound:
    expression = sp.expand(expression)
    a, b = expression.coeff(_q), expression.coeff(_k)
    rest = sp.expand(expression - a * _q - b * _k)
    if rest.has(_q) or rest.has(_k) or a.free_symbols or b.free_symbols:
        raise NotDerivable(f"{expression} <= 0 is not linear in q and k")
    if a != 0 and b == -a and abs(a) == 1:
        return _Bound("d", int(a), -rest)
    if a == 0 and abs(b) == 1:
        return _Bound("k", int(b), -rest)
    if b == 0 and abs(a) == 1:
        return _Bound("q", int(a), -rest)
    raise NotDerivable(f"{expression} <= 0 mixes q and k other than through q - k")


def _atoms(formula) -> sp.Basic:
    """Replace every atom by a sympy Symbol standing for one of the atom classes above."""
    table: dict[sp.Symbol, object] = {}

    def symbol_for(atom) -> sp.Symbol:
        symbol = sp.Symbol(f"a{len(table)}")
        table[symbol] = atom
        return symbol

    def convert(expression):
        if expression in (sp.true, sp.false):
            return expression
        if isinstance(expression, (sp.And, sp.Or)):
            return type(expression)(*[convert(a) for a in expression.args])
        if isinstance(expression, sp.Not):
            return sp.Not(convert(expression.args[0]))
        if isinstance(expression, sp.Eq) and isinstance(expression.lhs, sp.floor) and isinstance(expression.rhs, sp.floor):
            return _same_block(expression, symbol_for)
        if isinstance(expression, (sp.Eq, sp.Ne)) and (expression.lhs.has(sp.Mod) or expression.rhs.has(sp.Mod)):
            atom = symbol_for(_congruence(expression))
            return atom if isinstance(expression, sp.Eq) else sp.Not(atom)
        if isinstance(expression, sp.Ne):
            return convert(sp.Or(sp.Lt(expression.lhs, expression.rhs), sp.Gt(expression.lhs, expression.rhs)))
        if isinstance(expression, sp.core.relational.Relational):
            if expression.has(sp.Abs):
                return convert(_without_abs(expression))
            return sp.And(*[symbol_for(b) for b in _linear_bounds(expression)])
        raise NotDerivable(f"unsupported atom {expression}")

    return convert(formula), table


def _without_abs(rel):
    """|x| < c  <=>  x < c and -x < c;  |x| > c  <=>  x > c or -x > c (Abs on one side)."""
    lhs, rhs, kind = rel.lhs, rel.rhs, type(rel)
    if isinstance(rhs, sp.Abs) and not isinstance(lhs, sp.Abs):
        lhs, rhs, kind = rhs, lhs, {sp.Lt: sp.Gt, sp.Le: sp.Ge, sp.Gt: sp.Lt, sp.Ge: sp.Le}[kind]
    if not isinstance(lhs, sp.Abs) or rhs.has(sp.Abs):
        raise NotDerivable(f"unsupported use of abs in {rel}")
    x = lhs.args[0]
    if kind in (sp.Lt, sp.Le):
        return sp.And(kind(x, rhs), kind(-x, rhs))
    return sp.Or(kind(x, rhs), kind(-x, rhs))


def _congruence(rel) -> _Congruence:
    mod_side, other = (rel.lhs, rel.rhs) if rel.lhs.has(sp.Mod) else (rel.rhs, rel.lhs)
    if not isinstance(mod_side, sp.Mod) or other.has(_q) or other.has(_k):
        raise NotDerivable(f"unsupported congruence {rel}")
    expression, modulus = mod_side.args
    bound = _bound_from(expression)  # reuse: a * (q - k) + c
    if bound.variable != "d" or modulus.has(_q) or modulus.has(_k):
        raise NotDerivable(f"unsupported congruence {rel}")
    # sign * d - rhs ≡ other  (mod m)   =>   d ≡ sign * (other + rhs)
    return _Congruence(modulus, bound.sign * (other + bound.rhs))


def _same_block(rel, symbol_for):
    left, right = rel.lhs.args[0], rel.rhs.args[0]
    block = sp.simplify(_q / left) if left.has(_q) else None
    if block is None or sp.simplify(_k / right) != block or block.has(_q) or block.has(_k):
        raise NotDerivable(f"unsupported block equality {rel}")
    return symbol_for(_SameBlock(block))


# -- counting ---------------------------------------------------------------------------------

class _Counter:
    """Counts lattice points of conjunctions of atoms, in the regime of one sample point."""

    def __init__(self, table: dict, sample: dict):
        self.table = table
        self.sample = sample

    def value(self, expression) -> float:
        return float(sp.sympify(expression).subs(self.sample))

    def count(self, literals: list) -> sp.Expr:
        bounds, congruences, blocks = [], [], []
        for literal in literals:
            negated = isinstance(literal, sp.Not)
            atom = self.table[literal.args[0] if negated else literal]
            if isinstance(atom, _Bound):
                bounds.append(atom.negated() if negated else atom)
            elif negated:
                raise NotDerivable("a negated congruence or block equality")
            elif isinstance(atom, _Congruence):
                congruences.append(atom)
            else:
                blocks.append(atom)
        if blocks:
            if len(blocks) > 1 or bounds or congruences:
                raise NotDerivable("block equality combined with other conditions")
            block = blocks[0].block  # full blocks of B², then the last partial block
            return block**2 * sp.floor(n / block) + sp.Mod(n, block) ** 2
        if len(congruences) > 1:
            raise NotDerivable("more than one congruence in one term")
        return self._sum_over_d(bounds, congruences[0] if congruences else None)

    def _sum_over_d(self, bounds: list[_Bound], congruence: _Congruence | None) -> sp.Expr:
        d_low = [-(n - 1)] + [b.rhs * -1 for b in bounds if b.variable == "d" and b.sign == -1]
        d_high = [n - 1] + [b.rhs for b in bounds if b.variable == "d" and b.sign == 1]
        # for a fixed d, k ranges over the intersection of its own bounds and q = k + d's
        k_low = [sp.Integer(0), -_d] + [-b.rhs for b in bounds if b.variable == "k" and b.sign == -1] \
            + [-b.rhs - _d for b in bounds if b.variable == "q" and b.sign == -1]
        k_high = [n - 1, n - 1 - _d] + [b.rhs for b in bounds if b.variable == "k" and b.sign == 1] \
            + [b.rhs - _d for b in bounds if b.variable == "q" and b.sign == 1]
        first = max(d_low, key=self.value)
        last = min(d_high, key=self.value)
        if self.value(first) > self.value(last):
            return sp.Integer(0)
        cuts = {first, last + 1}
        lines = k_low + [h + 1 for h in k_high]
        for a, b in combinations(lines, 2):
            slope = sp.expand(a - b).coeff(_d)
            if slope != 0:
                cut = sp.solve(sp.Eq(a, b), _d)[0]
                if self.value(first) < self.value(cut) <= self.value(last):
                    cuts.add(cut)
        cuts = sorted(cuts, key=self.value)
        total = sp.Integer(0)
        for start, stop in zip(cuts, cuts[1:]):
            middle = (self.value(start) + self.value(stop) - 1) / 2
            low = max(k_low, key=lambda e: float(e.subs(self.sample).subs(_d, middle)))
            high = min(k_high, key=lambda e: float(e.subs(self.sample).subs(_d, middle)))
            if float((high - low + 1).subs(self.sample).subs(_d, middle)) <= 0:
                continue
            total += self._sum(high - low + 1, start, stop - 1, congruence)
        return total

    @staticmethod
    def _sum(term, start, stop, congruence):
        if congruence is None:
            return sp.summation(term, (_d, start, stop))
        m, r = congruence.modulus, congruence.residue
        return sp.summation(term.subs(_d, m * _j + r), (_j, sp.ceiling((start - r) / m), sp.floor((stop - r) / m)))


def derive_pairs(pattern_ir_symbolic: ir.PatternIR, params: dict) -> tuple[sp.Expr, int]:
    """(closed form, smallest n it is claimed for) or NotDerivable."""
    if pattern_ir_symbolic.route is not None or pattern_ir_symbolic.inputs:
        raise NotDerivable("the mask depends on run-time content")
    formula = SympyPrinter(params).visit(pattern_ir_symbolic.mask)
    formula, table = _atoms(formula)
    parameter_values = {sp.Symbol(k, integer=True, positive=True): v for k, v in params.items()
                        if isinstance(v, int) and not isinstance(v, bool)}
    scale = 1 + sum(abs(v) for v in parameter_values.values())
    valid_from = 2 * scale + 1
    sample = {**parameter_values, n: 1000 * scale + 7}
    counter = _Counter(table, sample)
    dnf = sp.to_dnf(formula, simplify=False)
    if dnf in (sp.true, sp.false):
        return (n**2 if dnf == sp.true else sp.Integer(0)), 1
    terms = [list(t.args) if isinstance(t, sp.And) else [t] for t in (dnf.args if isinstance(dnf, sp.Or) else [dnf])]
    total = sp.Integer(0)
    for size in range(1, len(terms) + 1):  # inclusion–exclusion
        for chosen in combinations(terms, size):
            literals = list(dict.fromkeys(literal for term in chosen for literal in term))
            total += (-1) ** (size + 1) * counter.count(literals)
    return sp.simplify(sp.expand(total)), valid_from


def big_o(expression: sp.Expr, params: dict) -> str:
    """The leading term in n, constants dropped: O(n**2), O(n*window), O(n**2/stride)."""
    smooth = expression.replace(sp.floor, lambda x: x).replace(sp.ceiling, lambda x: x)
    smooth = smooth.replace(sp.Mod, lambda a, b: 0)
    smooth = sp.expand(smooth)
    degree = sp.degree(smooth, n) if smooth.has(n) else 0
    leading = sp.expand(smooth.coeff(n, degree)) if degree else smooth
    symbols = sorted(leading.free_symbols, key=str)
    if symbols and isinstance(leading, sp.Add):  # keep the monomials of highest total degree
        poly = sp.Poly(leading, *symbols) if all(not t.has(sp.Pow) or t.is_polynomial(*symbols) for t in leading.args) else None
        if poly is not None:
            top = max(sum(m) for m in poly.monoms())
            leading = sum(sp.Mul(*[s**e for s, e in zip(symbols, m)]) for m in poly.monoms() if sum(m) == top)
    _, factor = sp.Mul(leading).as_coeff_Mul()
    term = factor * n**degree if factor != 1 else n**degree
    return f"O({term})"


def fitted_exponent(counts: dict[int, float]) -> tuple[float, str]:
    """Least-squares slope of log pairs against log n, and a label that says it was fitted.

    A slope over a few lengths cannot tell n log n from n^1.2 or a transient from the
    asymptote, so the label states only what was measured.
    """
    xs = [math.log(k) for k in counts]
    ys = [math.log(max(v, 1.0)) for v in counts.values()]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return slope, f"~n^{slope:.2f} (fitted)"
