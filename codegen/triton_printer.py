"""IR → Triton expressions, one method per IR node.

Inside a kernel, `q_pos` is a (BLOCK_M, 1) and `k_pos` a (1, BLOCK_N) int64 tile of token
positions, `off_h`/`off_b` the head and batch, `N_Q`/`N_K` the lengths, `score` the scaled
q·k tile. Every integer is int64 — the scalars too: a spliced function starts by widening
the ones it reads (`h = tl.full([1, 1], off_h, tl.int64)`, a 1x1 tile that broadcasts), so `(h + 1) * 50000 * 50000` wraps
exactly as the reference does, never at 32 bits, and no operand is a bare Python int or bool.

Floats in a mask are float64, as in the reference, so a comparison of floats decides the
same way; the logit is float32 (it is a value, compared with a tolerance, and runs on every
tile). Triton's `//` and `%` truncate toward zero, so the language's floor semantics go
through `_floordiv`/`_mod`.
"""

from __future__ import annotations

from attnlang import ir
from attnlang.export import _ATOM, _COMPARE, _PRODUCT, _SUM, _UNARY, TorchPrinter, shared_subexpressions
from attnlang.ir import Type

__all__ = ["TritonPrinter", "jit_function", "SCALARS"]

_POSITIONS = {"q": "q_pos", "k": "k_pos", "score": "score"}
# scalar variables: the local name a spliced function gives each, and the kernel argument it widens
SCALARS = {"h": "off_h", "b": "off_b", "n_q": "N_Q", "n_k": "N_K", "heads": "HEADS"}
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


class TritonPrinter(TorchPrinter):
    """The torch printer's precedence and naming, with Triton's spelling of each node.

    `wide=True` prints floats as float64 (masks); otherwise float32 (the logit).
    """

    def __init__(self, names: dict | None = None, wide: bool = False):
        super().__init__({}, names)
        self.wide = wide

    def visit_Const(self, node: ir.Const):
        if node.type is Type.FLOAT and self.wide:
            # a bare Python float next to a float64 tensor keeps its double value
            return repr(float(node.value)), (_UNARY if node.value < 0 else _ATOM)
        return super().visit_Const(node)

    def visit_Var(self, node: ir.Var):
        return _POSITIONS.get(node.name, node.name), _ATOM

    def visit_Load(self, node: ir.Load):
        index = self.print(node.index)
        name = node.input
        return (f"tl.load(IN_{name} + off_b * stride_{name} + {index}, "
                f"mask=({index} >= 0) & ({index} < len_{name}), other=0).to(tl.int64)"), _ATOM

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
            return f"{_INT_DIVISION[node.op]}({self.print(a)}, {self.print(b)})", _ATOM
        if node.op in _FLOAT_DIVISION:
            return f"{_FLOAT_DIVISION[node.op]}({self.print(a)}, {self.print(b)})", _ATOM
        if node.op == Op.POW:
            return self._power(a, b, node.type)
        return super().visit_Binary(node)

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
            return f"{function}({args[0]}).to(tl.int64)", _ATOM
        if node.func == Func.HASH:
            state = "HASH_SEED"
            for arg in args:
                state = f"{function}({state}, {arg})"
            return f"({state} >> 1)", _ATOM
        if node.func in _NAN_PROPAGATING:
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


def _scalar_prologue(body: ir.Expr) -> list[str]:
    """Widen the scalar variables the body reads to int64 tensors, once, at the top."""
    used = {n.name for n in ir.walk(body) if isinstance(n, ir.Var)}
    return [f"    {name} = tl.full([1, 1], {argument}, tl.int64)" for name, argument in SCALARS.items() if name in used]


def jit_function(name: str, params: str, body: ir.Expr, origin: str = "", wide: bool = False) -> str:
    """A @triton.jit function returning `body`; shared subexpressions become locals."""
    names: dict = {}
    lines = ["@triton.jit", f"def {name}({params}):"]
    if origin:
        lines.append(f"    # {origin}")
    lines += _scalar_prologue(body)
    for index, node in enumerate(shared_subexpressions(body)):
        lines.append(f"    t{index} = {TritonPrinter(names, wide).print(node)}")
        names[node] = f"t{index}"
    lines.append(f"    return {TritonPrinter(names, wide).print(body)}")
    return "\n".join(lines) + "\n"
