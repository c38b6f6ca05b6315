"""Interval evaluation of IR over many boxes of (head, query range, key range) at once.

For each box, `IntervalEvaluator` bounds every sub-expression: numbers by `[lo, hi]`
(float64 arrays, ±inf when unbounded) plus a flag for "may be NaN"; booleans by `lo`
(true everywhere in the box) and `hi` (true somewhere). Every rule is sound: the true
value at every point of the box lies inside.

Integers are bounded soundly over all of int64, not just below 2**53: an int bound is
rounded outward (floor/ceil, and two ulps beyond 2**53, where float64 no longer holds
every integer), and a bound that leaves int64 becomes the whole int64 range, because
integer arithmetic wraps at 64 bits in every consumer. A bound that comes out NaN (the
log of a negative number, inf - inf) means "unbounded, maybe NaN", never "false". Bounds are
tight when each variable occurs once (q and k vary independently over a box); where a
variable repeats, the analysis refines by splitting boxes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import ir
from .builtins import hash_ints
from .ir import Type

__all__ = ["Boxes", "Interval", "IntervalEvaluator", "RangeMinMax"]

INF = np.inf
HASH_RANGE = (0.0, float(2**31 - 1))


@dataclass
class Boxes:
    """Boxes of token positions, bounds inclusive: head `h`, q in [q_lo, q_hi], k in [k_lo, k_hi]."""

    h: np.ndarray
    q_lo: np.ndarray
    q_hi: np.ndarray
    k_lo: np.ndarray
    k_hi: np.ndarray

    def __len__(self) -> int:
        return len(self.q_lo)


@dataclass
class Interval:
    lo: np.ndarray
    hi: np.ndarray
    nan: np.ndarray | bool = False  # may be NaN somewhere in the box (floats)

    def __post_init__(self):
        # A NaN bound compares false with everything, which would read as "never true":
        # it stands for "anything, maybe NaN" instead.
        bad = np.isnan(self.lo) | np.isnan(self.hi)
        if np.any(bad):
            self.lo, self.hi = np.where(bad, -INF, self.lo), np.where(bad, INF, self.hi)
            self.nan = np.logical_or(self.nan, bad)

    @property
    def is_point(self):
        return self.lo == self.hi


class RangeMinMax:
    """Minimum and maximum of a 1-D int (or float) array over index ranges, many ranges at once.

    Prefix/suffix extrema inside blocks of `BLOCK` entries plus a sparse table over the
    blocks answer a range spanning blocks in O(1); a range inside one block is scanned
    (at most BLOCK entries). Memory is O(n + n/BLOCK log n): about 70 MB for a
    million-token input.
    """

    BLOCK = 8

    def __init__(self, values: np.ndarray):
        values = np.asarray(values)
        dtype = np.float64 if values.dtype.kind == "f" else np.int64
        self.values = values.astype(dtype)
        n = len(self.values)
        b = self.BLOCK
        blocks = -(-n // b)
        high, low = (np.inf, -np.inf) if dtype is np.float64 else (np.iinfo(np.int64).max, np.iinfo(np.int64).min)
        padded_min = np.full(blocks * b, high, dtype=dtype)
        padded_max = np.full(blocks * b, low, dtype=dtype)
        padded_min[:n] = padded_max[:n] = self.values
        grid_min, grid_max = padded_min.reshape(blocks, b), padded_max.reshape(blocks, b)
        self.prefix_min = np.minimum.accumulate(grid_min, axis=1).ravel()
        self.prefix_max = np.maximum.accumulate(grid_max, axis=1).ravel()
        self.suffix_min = np.minimum.accumulate(grid_min[:, ::-1], axis=1)[:, ::-1].ravel()
        self.suffix_max = np.maximum.accumulate(grid_max[:, ::-1], axis=1)[:, ::-1].ravel()
        self.table_min = [grid_min.min(axis=1)]
        self.table_max = [grid_max.max(axis=1)]
        while 2 ** len(self.table_min) <= blocks:
            step = 2 ** (len(self.table_min) - 1)
            last_min, last_max = self.table_min[-1], self.table_max[-1]
            self.table_min.append(np.minimum(last_min[:-step], last_min[step:]))
            self.table_max.append(np.maximum(last_max[:-step], last_max[step:]))

    def query(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Min and max over values[lo..hi] (inclusive, clipped to the array)."""
        n = len(self.values)
        lo = np.clip(np.asarray(lo, dtype=np.int64), 0, n - 1)
        hi = np.clip(np.asarray(hi, dtype=np.int64), 0, n - 1)
        lo, hi = np.broadcast_arrays(lo, hi)
        out_min = np.empty(lo.shape, dtype=self.values.dtype)
        out_max = np.empty(lo.shape, dtype=self.values.dtype)
        b = self.BLOCK
        first, last = lo // b, hi // b
        same = first == last
        if same.any():
            # inside one block: from its start (prefix), to its end (suffix), or scanned
            from_start = same & (lo % b == 0)
            to_end = same & ~from_start & (hi % b == b - 1)
            inner = same & ~from_start & ~to_end
            out_min[from_start], out_max[from_start] = self.prefix_min[hi[from_start]], self.prefix_max[hi[from_start]]
            out_min[to_end], out_max[to_end] = self.suffix_min[lo[to_end]], self.suffix_max[lo[to_end]]
            if inner.any():
                out_min[inner], out_max[inner] = self._scan(lo[inner], hi[inner])
        span = ~same
        if span.any():
            lo_s, hi_s, first_s, last_s = lo[span], hi[span], first[span], last[span]
            mins = np.minimum(self.suffix_min[lo_s], self.prefix_min[hi_s])
            maxs = np.maximum(self.suffix_max[lo_s], self.prefix_max[hi_s])
            inner = last_s - first_s > 1
            if inner.any():
                a, z = first_s[inner] + 1, last_s[inner] - 1
                inner_min, inner_max = self._blocks(a, z)
                mins[inner] = np.minimum(mins[inner], inner_min)
                maxs[inner] = np.maximum(maxs[inner], inner_max)
            out_min[span], out_max[span] = mins, maxs
        return out_min, out_max

    def _blocks(self, a, z):
        level = np.floor(np.log2(z - a + 1)).astype(np.int64)
        mins = np.empty(len(a), dtype=self.values.dtype)
        maxs = np.empty(len(a), dtype=self.values.dtype)
        for j in np.unique(level):
            sel = level == j
            left, right = a[sel], z[sel] - 2**j + 1
            mins[sel] = np.minimum(self.table_min[j][left], self.table_min[j][right])
            maxs[sel] = np.maximum(self.table_max[j][left], self.table_max[j][right])
        return mins, maxs

    def _scan(self, lo, hi):
        offsets = np.arange(int((hi - lo).max(initial=0)) + 1)  # ranges inside one block: short
        index = np.minimum(lo[:, None] + offsets, hi[:, None])
        window = self.values[index]
        return window.min(axis=1), window.max(axis=1)


def _point(value) -> Interval:
    value = np.float64(value)
    return Interval(value, value)


def _unknown_number() -> Interval:
    return Interval(np.float64(-INF), np.float64(INF), True)


def _hull(*corners):
    """The interval spanning the corner values; a NaN corner (inf - inf, 0 * inf) makes it
    unbounded and possibly NaN."""
    lo, hi = corners[0], corners[0]
    for corner in corners[1:]:
        lo, hi = np.fmin(lo, corner), np.fmax(hi, corner)
    nan = np.isnan(corners[0])
    for corner in corners[1:]:
        nan = nan | np.isnan(corner)
    if np.any(nan):
        lo, hi = np.where(nan, -INF, lo), np.where(nan, INF, hi)
    return Interval(lo, hi, nan)


def _bool(must, may) -> Interval:
    return Interval(np.asarray(must, dtype=np.float64), np.asarray(may, dtype=np.float64))


Op = ir.BinaryOp
_ARITHMETIC_RULES = {Op.ADD: "_add", Op.SUB: "_sub", Op.MUL: "_mul", Op.DIV: "_div", Op.FLOOR_DIV: "_floordiv",
                     Op.MOD: "_mod", Op.POW: "_pow"}
# builtin -> the method bounding it
_CALL_RULES = {f: f"_call_{f.value}" for f in ir.Func}
INT64_LO, INT64_HI = -float(2**63), float(2**63)  # 2**63 - 1 is not a float64: 2**63 bounds it
EXACT_FLOAT_INTS = float(2**53)  # below this every integer is a float64


def _int_bounds(x: Interval) -> Interval:
    """Outward-rounded bounds of an int expression, widened to all of int64 where they leave it."""
    lo, hi = np.floor(x.lo), np.ceil(x.hi)
    big_lo, big_hi = np.abs(lo) >= EXACT_FLOAT_INTS, np.abs(hi) >= EXACT_FLOAT_INTS
    if np.any(big_lo) or np.any(big_hi):
        # float64 results are within an ulp of the exact one there (pow: within one, plus its own)
        lo = np.where(big_lo, np.nextafter(np.nextafter(lo, -INF), -INF), lo)
        hi = np.where(big_hi, np.nextafter(np.nextafter(hi, INF), INF), hi)
        wraps = (lo < INT64_LO) | (hi > INT64_HI)
        lo, hi = np.where(wraps, INT64_LO, lo), np.where(wraps, INT64_HI, hi)
    return Interval(lo, hi)


class IntervalEvaluator(ir.Visitor):
    """Bounds of IR expressions over `Boxes`; one method per IR node kind."""

    def visit(self, node: ir.Expr) -> Interval:
        # a subexpression that occurs several times (a layout's `q // B` in every coordinate)
        # is bounded once per evaluation: nodes are immutable values, the memo lives with `self`
        if node not in self._memo:
            bounds = super().visit(node)
            self._memo[node] = _int_bounds(bounds) if node.type is Type.INT else bounds
        return self._memo[node]

    def __init__(self, boxes: Boxes, constants: dict, inputs: dict[str, RangeMinMax] | None = None):
        self.boxes = boxes
        self.constants = constants  # n_q, n_k, heads
        self.inputs = inputs or {}
        self._memo: dict[ir.Expr, Interval] = {}

    # leaves
    def visit_Const(self, node: ir.Const):
        return _point(float(node.value))

    def visit_Var(self, node: ir.Var):
        b = self.boxes
        if node.name == "q":
            return Interval(b.q_lo.astype(np.float64), b.q_hi.astype(np.float64))
        if node.name == "k":
            return Interval(b.k_lo.astype(np.float64), b.k_hi.astype(np.float64))
        if node.name == "h":
            h = b.h.astype(np.float64)
            return Interval(h, h)
        if node.name in self.constants:
            return _point(self.constants[node.name])
        if node.name == "b":  # the block map is shared by every batch entry
            return Interval(np.float64(0), np.float64(INF))
        return _unknown_number()

    def visit_Load(self, node: ir.Load):
        index = self.visit(node.index)
        table = self.inputs[node.input]
        lo = np.where(np.isfinite(index.lo), index.lo, 0).astype(np.int64)
        hi = np.where(np.isfinite(index.hi), index.hi, len(table.values) - 1).astype(np.int64)
        lo, hi = np.broadcast_arrays(lo, hi)
        mins, maxs = table.query(lo, hi)
        return Interval(mins.astype(np.float64), maxs.astype(np.float64))

    def visit_Cast(self, node: ir.Cast):
        return self.visit(node.operand)

    def visit_Unary(self, node: ir.Unary):
        x = self.visit(node.operand)
        if node.op == ir.UnaryOp.NOT:
            return Interval(1.0 - x.hi, 1.0 - x.lo)
        return Interval(-x.hi, -x.lo, x.nan)

    def visit_Select(self, node: ir.Select):
        cond = self.visit(node.cond)
        then, orelse = self.visit(node.then), self.visit(node.orelse)
        always, never = cond.lo == 1, cond.hi == 0
        lo = np.where(always, then.lo, np.where(never, orelse.lo, np.minimum(then.lo, orelse.lo)))
        hi = np.where(always, then.hi, np.where(never, orelse.hi, np.maximum(then.hi, orelse.hi)))
        nan = np.where(always, then.nan, np.where(never, orelse.nan, np.logical_or(then.nan, orelse.nan)))
        return Interval(lo, hi, nan)

    # operators
    def visit_Binary(self, node: ir.Binary):
        op = node.op
        a = self.visit(node.left)
        b = self.visit(node.right)
        if op in ir.LOGIC:
            combine = np.minimum if op == Op.AND else np.maximum
            return Interval(combine(a.lo, b.lo), combine(a.hi, b.hi))
        if op in ir.COMPARISONS:
            return self._compare(op, a, b)
        with np.errstate(all="ignore"):
            return getattr(self, _ARITHMETIC_RULES[op])(a, b, node)

    def _compare(self, op: ir.BinaryOp, a: Interval, b: Interval) -> Interval:
        # A NaN compares false with everything except through `!=`, so it can only
        # spoil "true everywhere" for ==, <, <=, >, >=, and "false everywhere" never
        # (its points make != true, which ~must_eq already allows).
        nan = np.logical_or(a.nan, b.nan)
        if op in (Op.GT, Op.GE):
            a, b, op = b, a, {Op.GT: Op.LT, Op.GE: Op.LE}[op]
        if op == Op.LT:
            return _bool((a.hi < b.lo) & ~nan, a.lo < b.hi)
        if op == Op.LE:
            return _bool((a.hi <= b.lo) & ~nan, a.lo <= b.hi)
        must_eq = (a.lo == a.hi) & (b.lo == b.hi) & (a.lo == b.lo) & ~nan
        may_eq = (a.lo <= b.hi) & (b.lo <= a.hi)
        if op == Op.EQ:
            return _bool(must_eq, may_eq)
        return _bool(~may_eq, ~must_eq)

    # inf - inf in a bound gives NaN: such a bound becomes unbounded (and possibly NaN)
    def _add(self, a, b, node):
        return _with_nan(_bounds(a.lo + b.lo, a.hi + b.hi), a, b)

    def _sub(self, a, b, node):
        return _with_nan(_bounds(a.lo - b.hi, a.hi - b.lo), a, b)

    def _mul(self, a, b, node):
        return _with_nan(_hull(a.lo * b.lo, a.lo * b.hi, a.hi * b.lo, a.hi * b.hi), a, b)

    def _div(self, a, b, node):
        spans_zero = (b.lo <= 0) & (b.hi >= 0)
        result = _with_nan(_hull(a.lo / b.lo, a.lo / b.hi, a.hi / b.lo, a.hi / b.hi), a, b)
        return _widen_where(result, spans_zero)

    def _floordiv(self, a, b, node):
        spans_zero = (b.lo <= 0) & (b.hi >= 0)
        corners = [np.floor_divide(x, y) for x in (a.lo, a.hi) for y in (b.lo, b.hi)]
        result = _with_nan(_hull(*corners), a, b)
        # exact for operands below 2**53; beyond, the rounded quotient may cross an integer
        inexact = np.maximum(np.abs(a.lo), np.abs(a.hi)) >= EXACT_FLOAT_INTS
        result = Interval(np.where(inexact, result.lo - 1, result.lo), np.where(inexact, result.hi + 1, result.hi),
                          result.nan)
        return _widen_where(result, spans_zero)

    def _mod(self, a, b, node):
        # x % c for a constant c != 0: monotone inside one period of c, else anywhere in it
        c = b.lo
        point = (b.lo == b.hi) & (b.lo != 0)
        same_period = point & (np.floor_divide(a.lo, c) == np.floor_divide(a.hi, c))
        lo_mod, hi_mod = np.mod(a.lo, c), np.mod(a.hi, c)
        period_lo = np.where(c > 0, 0.0, c + 1 if node.type is Type.INT else c)
        period_hi = np.where(c > 0, c - 1 if node.type is Type.INT else c, 0.0)
        lo = np.where(same_period, lo_mod, period_lo)
        hi = np.where(same_period, hi_mod, period_hi)
        # a non-constant divisor: |x % y| < |y|
        bound = np.maximum(np.abs(b.lo), np.abs(b.hi))
        lo = np.where(point, lo, -bound)
        hi = np.where(point, hi, bound)
        return _widen_where(_with_nan(Interval(lo, hi), a, b), (b.lo <= 0) & (b.hi >= 0) & ~point)

    def _pow(self, a, b, node):
        if node.type is Type.INT:  # non-negative integer literal exponent
            e = b.lo
            odd = np.mod(e, 2) == 1
            lo_e, hi_e = np.power(a.lo, e), np.power(a.hi, e)
            straddles = (a.lo < 0) & (a.hi > 0)
            lo = np.where(odd, lo_e, np.where(straddles, 0.0, np.minimum(lo_e, hi_e)))
            hi = np.where(odd, hi_e, np.maximum(lo_e, hi_e))
            return Interval(lo, hi)
        positive = a.lo > 0
        corners = _hull(*[np.power(x, y) for x in (a.lo, a.hi) for y in (b.lo, b.hi)])
        exact = (a.lo == a.hi) & (b.lo == b.hi)
        point = np.power(a.lo, b.lo)
        lo = np.where(exact, point, np.where(positive, corners.lo, -INF))
        hi = np.where(exact, point, np.where(positive, corners.hi, INF))
        nan = np.where(exact, np.isnan(point), np.where(positive, _or(a.nan, b.nan), True))
        return Interval(np.where(np.isnan(lo), -INF, lo), np.where(np.isnan(hi), INF, hi), nan)

    # builtin functions
    def visit_Call(self, node: ir.Call):
        args = [self.visit(a) for a in node.args]
        with np.errstate(all="ignore"):
            return getattr(self, _CALL_RULES[node.func])(*args)

    def _call_abs(self, x):
        straddles = (x.lo < 0) & (x.hi > 0)
        lo = np.where(straddles, 0.0, np.minimum(np.abs(x.lo), np.abs(x.hi)))
        return Interval(lo, np.maximum(np.abs(x.lo), np.abs(x.hi)), x.nan)

    def _call_min(self, a, b):
        return Interval(np.minimum(a.lo, b.lo), np.minimum(a.hi, b.hi), _or(a.nan, b.nan))

    def _call_max(self, a, b):
        return Interval(np.maximum(a.lo, b.lo), np.maximum(a.hi, b.hi), _or(a.nan, b.nan))

    def _call_floor(self, x):
        return Interval(np.floor(x.lo), np.floor(x.hi), x.nan)

    def _call_ceil(self, x):
        return Interval(np.ceil(x.lo), np.ceil(x.hi), x.nan)

    def _monotone(self, fn, x, domain_lo=-INF):
        outside = x.lo < domain_lo  # part of the box is outside the domain: NaN there
        lo = np.where(outside, -INF, fn(np.maximum(x.lo, domain_lo)))
        return Interval(lo, fn(x.hi), _or(x.nan, outside))

    def _call_log(self, x):
        return self._monotone(np.log, x, 0.0)

    def _call_log2(self, x):
        return self._monotone(np.log2, x, 0.0)

    def _call_sqrt(self, x):
        return self._monotone(np.sqrt, x, 0.0)

    def _call_exp(self, x):
        return self._monotone(np.exp, x)

    def _call_tanh(self, x):
        return self._monotone(np.tanh, x)

    def _call_hash(self, *args):
        points = np.logical_and.reduce([np.broadcast_to(a.lo == a.hi, np.shape(self.boxes.q_lo)) for a in args])
        lo = np.full(len(self.boxes), HASH_RANGE[0])
        hi = np.full(len(self.boxes), HASH_RANGE[1])
        if points.any():
            values = [np.broadcast_to(a.lo, points.shape)[points].astype(np.int64) for a in args]
            exact = np.asarray(hash_ints(*values), dtype=np.float64)
            lo[points] = hi[points] = exact
        return Interval(lo, hi)


def _bounds(lo, hi) -> Interval:
    bad = np.isnan(lo) | np.isnan(hi)
    if np.any(bad):
        return Interval(np.where(bad, -INF, lo), np.where(bad, INF, hi), bad)
    return Interval(lo, hi)


def _or(a, b):
    return np.logical_or(a, b)


def _with_nan(result: Interval, a: Interval, b: Interval) -> Interval:
    return Interval(result.lo, result.hi, np.logical_or(result.nan, np.logical_or(a.nan, b.nan)))


def _widen_where(result: Interval, where) -> Interval:
    """Unbounded, possibly-NaN where `where` holds (e.g. a divisor interval containing 0)."""
    return Interval(np.where(where, -INF, result.lo), np.where(where, INF, result.hi),
                    np.logical_or(result.nan, where))
