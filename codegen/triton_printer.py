"""IR → Triton expressions, one method per IR node.

Inside a kernel, `q_pos` is a (BLOCK_M, 1) and `k_pos` a (1, BLOCK_N) int32 tile of token
positions, `off_h`/`off_b` the head and batch, `N_Q`/`N_K` the lengths, `score` the logit
tile. A spliced function starts by giving each variable it reads its integer type, once:
`q = q_pos.to(tl.int64)`, `h = tl.full([1, 1], off_h, tl.int64)` (a 1x1 tile that broadcasts),
so no operand is a bare Python int or bool and `(h + 1) * 50000 * 50000` wraps exactly as in
the reference. The type is int32 only where `IntegerFacts` proves that no integer of the
pattern leaves int32 for any length up to `MAX_TOKENS`.

Floats in a mask are float64, as in the reference, so a comparison of floats decides the
same way; the logit is float32 (a value, compared with a tolerance, on every tile). The
language's `//` and `%` are Python's; Triton's truncate, so they go through `_floordiv` and
`_mod` — except by a positive constant of a provably non-negative value, or by a power of
two (a shift and a mask are floor operations for any sign).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from attnlang import ir
from attnlang.builtins import hash_state
from attnlang.export import _ATOM, _COMPARE, _PRODUCT, _SUM, _UNARY, TorchPrinter, shared_subexpressions
from attnlang.intervals import Boxes, Interval, IntervalEvaluator
from attnlang.ir import Type

__all__ = ["TritonPrinter", "IntegerFacts", "jit_function", "SCALARS", "MAX_TOKENS", "MAX_HEADS"]

# scalar variables: the kernel argument each widens from
SCALARS = {"h": "off_h", "b": "off_b", "n_q": "N_Q", "n_k": "N_K", "heads": "HEADS"}
POSITIONS = {"q": "q_pos", "k": "k_pos"}
MAX_TOKENS = 2**27  # the longest sequence an int32 kernel is proven for (134M tokens)
MAX_HEADS = 2**16   # and the most heads and batch entries
Op, Func = ir.BinaryOp, ir.Func
# min/max propagate NaN, as numpy and torch do (Triton's default returns the other operand);
# floor/ceil give ints; hash is a chain of `_hash_step`s (visit_Call)
_FUNCTIONS = {Func.ABS: "tl.abs", Func.LOG: "tl.log", Func.LOG2: "tl.log2", Func.EXP: "tl.exp",
              Func.SQRT: "tl.sqrt", Func.TANH: "_tanh", Func.MIN: "tl.minimum", Func.MAX: "tl.maximum",
              Func.FLOOR: "tl.floor", Func.CEIL: "tl.ceil", Func.HASH: "_hash_step"}
_NAN_PROPAGATING = (Func.MIN, Func.MAX)
# the language's floor semantics (Python's), for ints and floats: Triton's // and % truncate
_INT_DIVISION = {Op.FLOOR_DIV: "_floordiv", Op.MOD: "_mod"}
_FLOAT_DIVISION = {Op.FLOOR_DIV: "_ffloordiv", Op.MOD: "_fmod"}
_LARGEST_UNROLLED_POWER = 64
_INT32 = (-(2**31), 2**31 - 1)


class _DomainEvaluator(IntervalEvaluator):
    """Interval bounds over every launch the kernel may see: any position below MAX_TOKENS,
    any head and batch entry below MAX_HEADS, any lengths."""

    _RANGES = {"q": (0, MAX_TOKENS - 1), "k": (0, MAX_TOKENS - 1), "h": (0, MAX_HEADS - 1),
               "b": (0, MAX_HEADS - 1), "n_q": (1, MAX_TOKENS), "n_k": (1, MAX_TOKENS), "heads": (1, MAX_HEADS)}

    def __init__(self):
        one = np.zeros(1, dtype=np.int64)
        super().__init__(Boxes(one, one, one, one, one), {})

    def visit_Var(self, node: ir.Var):
        if node.name in self._RANGES:
            lo, hi = self._RANGES[node.name]
            return Interval(np.float64(lo), np.float64(hi))
        return super().visit_Var(node)

    def visit_Load(self, node: ir.Load):  # input values are any int64
        return Interval(np.float64(-(2.0**63)), np.float64(2.0**63))


@dataclass
class IntegerFacts:
    """What is known of a pattern's integers over every launch (see `_DomainEvaluator`)."""

    roots: tuple[ir.Expr, ...]
    _bounds: dict = field(default_factory=dict)

    def bounds(self, node: ir.Expr) -> tuple[float, float]:
        if node not in self._bounds:
            interval = _DomainEvaluator().visit(node)
            self._bounds[node] = (float(np.min(interval.lo)), float(np.max(interval.hi)))
        return self._bounds[node]

    @property
    def int32(self) -> bool:
        """Whether every integer without an input read stays inside int32 (reads are int64)."""
        for root in self.roots:
            for node in ir.walk(root):
                if node.type is Type.INT and not any(isinstance(n, ir.Load) for n in ir.walk(node)):
                    lo, hi = self.bounds(node)
                    if lo < _INT32[0] or hi > _INT32[1]:
                        return False
        return True

    def nonnegative(self, node: ir.Expr) -> bool:
        return self.bounds(node)[0] >= 0


@dataclass
class PrintContext:
    """How a pattern's functions are printed: integer width, input order, integer facts."""

    int_type: str = "tl.int64"
    inputs: tuple[str, ...] = ()
    facts: IntegerFacts | None = None


class TritonPrinter(TorchPrinter):
    """The torch printer's precedence and naming, with Triton's spelling of each node.

    `wide=True` prints floats as float64 (masks); otherwise float32 (the logit).
    """

    def __init__(self, names: dict | None = None, wide: bool = False, context: PrintContext | None = None):
        super().__init__({}, names)
        self.wide = wide
        self.context = context or PrintContext()

    def visit_Const(self, node: ir.Const):
        if node.type is Type.FLOAT and self.wide:
            # a bare Python float next to a float64 tensor keeps its double value
            return repr(float(node.value)), (_UNARY if node.value < 0 else _ATOM)
        return super().visit_Const(node)

    def visit_Var(self, node: ir.Var):
        return node.name, _ATOM

    def visit_Load(self, node: ir.Load):
        # a constant index gets a 1x1 tile, like every other operand, so the load is one too
        index = (f"tl.full([1, 1], {node.index.value}, tl.int32)" if isinstance(node.index, ir.Const)
                 else self.print(node.index))
        row = self.context.inputs.index(node.input)
        offset = f"{row} * stride_input + " if row else ""
        # the mask keeps padding lanes (past n_q or n_k, outside the proof of range) in memory
        load = f"tl.load(INPUTS_B + {offset}{index}, mask=({index} >= 0) & ({index} < INPUT_LEN), other=0)"
        if node.type is Type.FLOAT:  # float64 bits in the int64 stack
            float_type = "tl.float64" if self.wide else "tl.float32"
            load += ".to(tl.float64, bitcast=True)" + ("" if self.wide else f".to({float_type})")
        return load, _ATOM

    def visit_Cast(self, node: ir.Cast):
        float_type = "tl.float64" if self.wide else "tl.float32"
        return f"{self._wrap(node.operand, _ATOM)}.to({float_type})", _ATOM

    def visit_Unary(self, node: ir.Unary):
        if node.op == ir.UnaryOp.NOT:
            # a comparison: its parent wraps it, so `(x) == 0 == y` or `(x) == 0 & y` cannot occur
            return f"{self._wrap(node.operand, _ATOM)} == 0", _COMPARE
        return "-" + self._wrap(node.operand, _UNARY), _UNARY

    def visit_Binary(self, node: ir.Binary):
        a, b = node.left, node.right
        if node.op in _INT_DIVISION and node.type is Type.INT:
            return self._int_division(node.op, a, b)
        if node.op in _FLOAT_DIVISION:
            return f"{_FLOAT_DIVISION[node.op]}({self.print(a)}, {self.print(b)})", _ATOM
        if node.op == Op.POW:
            return self._power(a, b, node.type)
        return super().visit_Binary(node)

    def _int_division(self, op: ir.BinaryOp, a: ir.Expr, b: ir.Expr):
        if isinstance(b, ir.Const) and b.value > 0:
            divisor = int(b.value)
            if divisor & (divisor - 1) == 0:  # floor by a power of two, for any sign
                if op == Op.FLOOR_DIV:
                    return f"{self._wrap(a, _SUM)} >> {divisor.bit_length() - 1}", _SUM - 1
                return f"{self._wrap(a, _SUM)} & {divisor - 1}", _SUM - 1
            facts = self.context.facts
            if facts is not None and facts.nonnegative(a):  # truncation is floor here
                return f"{self._wrap(a, _PRODUCT)} {op.value} {divisor}", _PRODUCT
        return f"{_INT_DIVISION[op]}({self.print(a)}, {self.print(b)})", _ATOM

    def _power(self, base: ir.Expr, exponent: ir.Expr, result: Type):
        """Integral constant exponents by repeated squaring (negative bases stay exact), others
        by `_fpow`, which gives pow's sign for integral exponents and NaN for fractional ones."""
        if isinstance(exponent, ir.Const) and float(exponent.value).is_integer() \
                and abs(exponent.value) <= _LARGEST_UNROLLED_POWER:
            power = int(exponent.value)
            if power == 0:  # x ** 0 is 1 for every x, NaN included; keep x's shape
                one = "1" if result is Type.INT else "1.0"
                return f"{self._wrap(base, _PRODUCT)} * 0 + {one}", _SUM
            if power == 1:
                return self.visit(base)
            if power == 2:
                factor = self._wrap(base, _PRODUCT, True)
                return f"{factor} * {factor}", _PRODUCT
            magnitude = abs(power)
            low_bit = (magnitude & -magnitude).bit_length() - 1
            text = f"_ipow({self.print(base)}, {magnitude}, {low_bit}, {magnitude.bit_length()})"
            return (f"1.0 / {text}", _PRODUCT) if power < 0 else (text, _ATOM)
        if isinstance(base, ir.Const) and base.value == 2:
            return f"tl.exp2({self.print(exponent)})", _ATOM
        return f"_fpow({self.print(base)}, {self.print(exponent)})", _ATOM

    def visit_Call(self, node: ir.Call):
        args = [self.print(a) for a in node.args]
        function = _FUNCTIONS[node.func]
        if node.func in (Func.FLOOR, Func.CEIL):
            return f"{function}({args[0]}).to({self.context.int_type})", _ATOM
        if node.func == Func.HASH:
            # leading constant arguments are mixed in here, so every _hash_step takes a tensor
            constants = 0
            while isinstance(node.args[constants], ir.Const):
                constants += 1
            state = str(hash_state(*(int(a.value) for a in node.args[:constants])))
            for arg in args[constants:]:  # the hash mixes 32 bits of each argument, held in int64
                state = f"{function}({state}, {arg})"
            return f"({state} >> 1)", _ATOM
        if node.func in _NAN_PROPAGATING and node.type is Type.FLOAT:
            return f"{function}({', '.join(args)}, propagate_nan=tl.PropagateNan.ALL)", _ATOM
        return f"{function}({', '.join(args)})", _ATOM

    def visit_Select(self, node: ir.Select):
        then, orelse = (self._branch(node.then), self._branch(node.orelse))
        return f"tl.where({self.print(node.cond)}, {then}, {orelse})", _ATOM

    def _branch(self, node: ir.Expr) -> str:
        # two constant branches would make a float32 (or a Python) value: give them their type
        if isinstance(node, ir.Const) and node.type is Type.FLOAT and self.wide:
            return f"tl.full([1, 1], {float(node.value)!r}, tl.float64)"
        return self.print(node)


def _prologue(body: ir.Expr, int_type: str) -> list[str]:
    """Give each variable the body reads its integer type, once, at the top."""
    used = {n.name for n in ir.walk(body) if isinstance(n, ir.Var)}
    hashed = any(isinstance(n, ir.Call) and n.func == Func.HASH for n in ir.walk(body))
    width = "tl.int64" if hashed else int_type  # the hash's 32-bit arithmetic needs 64-bit room
    # positions are int32 tiles already
    lines = [f"    {name} = {argument}" + ("" if width == "tl.int32" else f".to({width})")
             for name, argument in POSITIONS.items() if name in used]
    lines += [f"    {name} = tl.full([1, 1], {argument}, {width})" for name, argument in SCALARS.items() if name in used]
    return lines


LINE_WIDTH = 110


def _definition(name: str, params: str, width: int = LINE_WIDTH) -> list[str]:
    """`def name(params):`, its parameters wrapped under the first one past `width`."""
    head, indent = f"def {name}(", " " * (len(name) + 5)
    lines, line = [], head
    for index, param in enumerate(params.split(", ")):
        piece = param + (", " if index < params.count(", ") else "):")
        if len(line) + len(piece.rstrip()) > width and line.strip() != head.strip():
            lines.append(line.rstrip())
            line = indent
        line += piece
    return lines + [line]


def _named_subexpressions(body: ir.Expr) -> list[ir.Expr]:
    """Subtrees that get a local: those used twice, and every input read (a load is a statement
    of its own, which keeps lines short), children before parents."""
    shared = set(shared_subexpressions(body))
    named, seen = [], set()
    for node in _post_order(body):
        if node not in seen and (node in shared or isinstance(node, ir.Load)):
            named.append(node)
            seen.add(node)
    return named


def _post_order(node: ir.Expr):
    for child in ir.children(node):
        yield from _post_order(child)
    yield node


def jit_function(name: str, params: str, body: ir.Expr, origin: str = "", wide: bool = False,
                 context: PrintContext | None = None, preamble: tuple[str, ...] = (), result: str = "{}") -> str:
    """A @triton.jit function returning `body`; shared subexpressions and input reads become
    locals. `preamble` lines come first (after the origin comment)."""
    context = context or PrintContext()
    names: dict = {}
    lines = ["@triton.jit", *_definition(name, params)]
    if origin:
        lines.append(f"    # {origin}")
    lines += [f"    {line}" for line in preamble] + _prologue(body, context.int_type)
    named = _named_subexpressions(body)
    if len(f"    return {TritonPrinter({n: 't' for n in named}, wide, context).print(body)}") > LINE_WIDTH:
        named += [n for n in _chain_operands(body) if n not in named]  # one line per conjunct
    for index, node in enumerate(named):
        lines.append(f"    t{index} = {TritonPrinter(names, wide, context).print(node)}")
        names[node] = f"t{index}"
    lines.append(f"    return {result.format(TritonPrinter(names, wide, context).print(body))}")
    return "\n".join(lines) + "\n"


def _chain_operands(node: ir.Expr) -> list[ir.Expr]:
    """The compound operands of the top-level chain of one operator (`a and b and c`,
    `x + y - z`), left to right: each gets a line of its own when the return is too long."""
    if not isinstance(node, ir.Binary):
        return []
    family = (Op.ADD, Op.SUB) if node.op in (Op.ADD, Op.SUB) else (node.op,)

    def operands(part):
        if isinstance(part, ir.Binary) and part.op in family:
            return operands(part.left) + operands(part.right)
        return [part]
    return [n for n in operands(node.left) + operands(node.right) if ir.children(n)]
