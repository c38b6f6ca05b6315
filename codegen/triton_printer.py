"""IR → Triton expressions, one method per IR node.

Inside a kernel, `q_pos` is a (BLOCK_M, 1) and `k_pos` a (1, BLOCK_N) int64 tile of token
positions, `off_h`/`off_b` the head and batch, `N_Q`/`N_K` the lengths, `score` the scaled
q·k tile. Integers are int64 (no silent wrap-around); floats are float32. Triton's `//` and
`%` truncate toward zero, so the language's floor semantics go through `_floordiv`/`_mod`.
"""

from __future__ import annotations

from attnlang import ir
from attnlang.export import _ATOM, _PRODUCT, _UNARY, TorchPrinter, shared_subexpressions
from attnlang.ir import Type

__all__ = ["TritonPrinter", "jit_function"]

_VARIABLES = {"q": "q_pos", "k": "k_pos", "h": "off_h", "b": "off_b", "n_q": "N_Q", "n_k": "N_K",
              "heads": "HEADS", "score": "score"}
_FUNCTIONS = {"abs": "tl.abs", "min": "tl.minimum", "max": "tl.maximum", "log": "tl.log", "log2": "tl.log2",
              "exp": "tl.exp", "sqrt": "tl.sqrt", "tanh": "_tanh"}


class TritonPrinter(TorchPrinter):
    """The torch printer's precedence and naming, with Triton's spelling of each node."""

    def __init__(self, names: dict | None = None):
        super().__init__({}, names)

    def visit_Var(self, node: ir.Var):
        return _VARIABLES[node.name], _ATOM

    def visit_Load(self, node: ir.Load):
        index = self.print(node.index)
        name = node.input
        return (f"tl.load(IN_{name} + off_b * stride_{name} + {index}, "
                f"mask=({index} >= 0) & ({index} < len_{name}), other=0).to(tl.int64)"), _ATOM

    def visit_Cast(self, node: ir.Cast):
        # `x * 1.0` converts tensors, runtime scalars and constexprs alike (`.to` needs a tensor)
        return f"{self._wrap(node.operand, _PRODUCT)} * 1.0", _PRODUCT

    def visit_Unary(self, node: ir.Unary):
        if node.op == "not":
            return f"({self.print(node.operand)}) == 0", _ATOM - 1  # compares: wrap when nested
        return "-" + self._wrap(node.operand, _UNARY), _UNARY

    def visit_Binary(self, node: ir.Binary):
        a, b = node.left, node.right
        if node.op in ("//", "%") and node.type is Type.INT:
            helper = "_floordiv" if node.op == "//" else "_mod"
            return f"{helper}({self.print(a)}, {self.print(b)})", _ATOM
        if node.op == "//":
            return f"tl.floor({self._wrap(a, _PRODUCT)} / {self._wrap(b, _PRODUCT, True)})", _ATOM
        if node.op == "%":
            return f"_fmod({self.print(a)}, {self.print(b)})", _ATOM
        if node.op == "**":
            return self._power(a, b, node.type)
        return super().visit_Binary(node)

    def _power(self, base: ir.Expr, exponent: ir.Expr, result: Type):
        if isinstance(exponent, ir.Const) and float(exponent.value).is_integer() and 0 <= exponent.value <= 8:
            if exponent.value == 0:
                return ("1" if result is Type.INT else "1.0"), _ATOM
            factor = self._wrap(base, _PRODUCT, True)
            return " * ".join([factor] * int(exponent.value)), _PRODUCT
        if isinstance(base, ir.Const) and base.value == 2:
            return f"tl.exp2({self.print(exponent)})", _ATOM
        # a ** b = 2 ** (b log2 a): NaN for a negative base, as with a fractional exponent
        return f"tl.exp2({self._wrap(exponent, _PRODUCT)} * tl.log2({self.print(base)}))", _ATOM

    def visit_Call(self, node: ir.Call):
        args = [self.print(a) for a in node.args]
        if node.func in ("floor", "ceil"):
            return f"tl.{node.func}({args[0]}).to(tl.int64)", _ATOM
        if node.func == "hash":
            state = "HASH_SEED"
            for arg in args:
                state = f"_hash_step({state}, {arg})"
            return f"({state} >> 1)", _ATOM
        return f"{_FUNCTIONS[node.func]}({', '.join(args)})", _ATOM

    def visit_Select(self, node: ir.Select):
        return f"tl.where({self.print(node.cond)}, {self.print(node.then)}, {self.print(node.orelse)})", _ATOM


def jit_function(name: str, params: str, body: ir.Expr, origin: str = "") -> str:
    """A @triton.jit function returning `body`; shared subexpressions become locals."""
    names: dict = {}
    lines = ["@triton.jit", f"def {name}({params}):"]
    if origin:
        lines.append(f"    # {origin}")
    for index, node in enumerate(shared_subexpressions(body)):
        lines.append(f"    t{index} = {TritonPrinter(names).print(node)}")
        names[node] = f"t{index}"
    lines.append(f"    return {TritonPrinter(names).print(body)}")
    return "\n".join(lines) + "\n"
