"""FlexAttention export: the pattern's IR printed as torch `mask_mod` / `score_mod` source.

The source is a small, readable Python module (see `flex_source`); `flex_mods` executes
it and returns the two functions. Integers stay int64 and floats are computed in float64,
as in the reference evaluator, so the exported mask equals the reference bit for bit;
the score is cast back to its own dtype at the end.
"""

from __future__ import annotations

import numpy as np

from . import ir
from .errors import AttnlangError
from .ir import Type
from .reference import has_batch_axis
from .routing import refuse_mods

__all__ = ["TorchPrinter", "flex_source", "flex_mods"]

# Python's binding strengths for the operators the printer emits, loosest first.
_COMPARE, _OR, _AND, _SUM, _PRODUCT, _UNARY, _POWER, _ATOM = range(8)
Op, Func = ir.BinaryOp, ir.Func
_BINARY = {
    Op.EQ: ("==", _COMPARE), Op.NE: ("!=", _COMPARE), Op.LT: ("<", _COMPARE), Op.LE: ("<=", _COMPARE),
    Op.GT: (">", _COMPARE), Op.GE: (">=", _COMPARE),
    Op.OR: ("|", _OR), Op.AND: ("&", _AND),
    Op.ADD: ("+", _SUM), Op.SUB: ("-", _SUM),
    Op.MUL: ("*", _PRODUCT), Op.DIV: ("/", _PRODUCT), Op.FLOOR_DIV: ("//", _PRODUCT), Op.MOD: ("%", _PRODUCT),
    Op.POW: ("**", _POWER),
}
_FUNCTIONS = {Func.ABS: "torch.abs", Func.LOG: "torch.log", Func.LOG2: "torch.log2", Func.EXP: "torch.exp",
              Func.SQRT: "torch.sqrt", Func.TANH: "torch.tanh", Func.MIN: "_min", Func.MAX: "_max",
              Func.HASH: "_hash", Func.FLOOR: "torch.floor", Func.CEIL: "torch.ceil"}
# Each variable a mod reads is bound once at its top, as an int64 tensor (FlexAttention may pass
# int32 indices; n_q, n_k and heads are the lengths and head count the mods were made for), so
# integer arithmetic wraps at 64 bits as in the reference and no operand is a Python scalar.
_PROLOGUE = {"q": "q = q_idx.to(torch.int64)", "k": "k = kv_idx.to(torch.int64)",
             "h": "h = h.to(torch.int64)", "b": "b = b.to(torch.int64)"}
_CONSTANTS = ("n_q", "n_k", "heads")

_HEADER = '''\
import torch


def _tensor(x):
    return x if isinstance(x, torch.Tensor) else torch.tensor(x)


def _float(x):
    return _tensor(x).to(torch.float64)


def _min(a, b):
    return torch.minimum(_tensor(a), _tensor(b))


def _max(a, b):
    return torch.maximum(_tensor(a), _tensor(b))


def _hash(*values):
    """attnlang's hash: MurmurHash3's fmix32 over each value, seeded, shifted right by 1."""
    h = torch.tensor(0x9E3779B9, dtype=torch.int64)
    for v in values:
        h = h ^ (_tensor(v).to(torch.int64) & 0xFFFFFFFF)
        h = h ^ (h >> 16)
        h = (h * 0x85EBCA6B) & 0xFFFFFFFF
        h = h ^ (h >> 13)
        h = (h * 0xC2B2AE35) & 0xFFFFFFFF
        h = h ^ (h >> 16)
    return h >> 1
'''


class TorchPrinter(ir.Visitor):
    """IR → a torch expression over `b, h, q_idx, kv_idx` (and `score`); one method per node."""

    def __init__(self, constants: dict, names: dict | None = None):
        self.constants = constants  # n_q, n_k, heads
        self.names = names or {}  # shared subexpressions already bound to a local name

    def print(self, node: ir.Expr) -> str:
        return self.visit(node)[0]

    def visit(self, node: ir.Expr):
        if node in self.names:
            return self.names[node], _ATOM
        return super().visit(node)

    def _wrap(self, node: ir.Expr, level: int, strict: bool = False) -> str:
        text, own = self.visit(node)
        return f"({text})" if own < level or (strict and own == level) else text

    def visit_Const(self, node: ir.Const):
        if node.type is Type.BOOL:
            return ("True" if node.value else "False"), _ATOM
        text = repr(float(node.value)) if node.type is Type.FLOAT else str(int(node.value))
        return text, (_UNARY if text.startswith("-") else _ATOM)

    def visit_Var(self, node: ir.Var):
        return node.name, _ATOM

    def visit_Load(self, node: ir.Load):
        return f"input_{node.input}[{self.print(node.index)}]", _ATOM

    def visit_Cast(self, node: ir.Cast):
        return f"_float({self.print(node.operand)})", _ATOM

    def visit_Unary(self, node: ir.Unary):
        symbol = "~" if node.op == ir.UnaryOp.NOT else "-"
        return symbol + self._wrap(node.operand, _UNARY), _UNARY

    def visit_Binary(self, node: ir.Binary):
        symbol, level = _BINARY[node.op]
        if node.op == Op.POW:
            return f"{self._wrap(node.left, _POWER, strict=True)} ** {self._wrap(node.right, _UNARY)}", _POWER
        strict_left = level == _COMPARE
        return f"{self._wrap(node.left, level, strict_left)} {symbol} {self._wrap(node.right, level, True)}", level

    def visit_Call(self, node: ir.Call):
        args = ", ".join(self.print(a) for a in node.args)
        if node.func in (Func.FLOOR, Func.CEIL):
            return f"{_FUNCTIONS[node.func]}({args}).to(torch.int64)", _ATOM
        return f"{_FUNCTIONS[node.func]}({args})", _ATOM

    def visit_Select(self, node: ir.Select):
        then, orelse = self._branch(node.then), self._branch(node.orelse)
        return f"torch.where({self.print(node.cond)}, {then}, {orelse})", _ATOM

    def _branch(self, node: ir.Expr) -> str:
        # two Python-float branches would make a float32 tensor: give constants float64, as the reference
        if isinstance(node, ir.Const) and node.type is Type.FLOAT:
            return f"_float({float(node.value)!r})"
        return self.print(node)


def shared_subexpressions(root: ir.Expr) -> list[ir.Expr]:
    """Compound subtrees that occur more than once, children before parents.

    A subtree inside a repeated subtree is counted once per distinct place, so naming the
    outer one does not also name everything inside it.
    """
    counts: dict[ir.Expr, int] = {}
    order: list[ir.Expr] = []

    def count(node):
        if not ir.children(node):
            return
        counts[node] = counts.get(node, 0) + 1
        if counts[node] == 1:
            for child in ir.children(node):
                count(child)
            order.append(node)  # post-order: children first

    count(root)
    return [node for node in order if counts[node] > 1]


def _prologue(body: ir.Expr, constants: dict) -> list[str]:
    used = {n.name for n in ir.walk(body) if isinstance(n, ir.Var)}
    lines = [f"    {line}" for name, line in _PROLOGUE.items() if name in used]
    for name in _CONSTANTS:
        if name not in used:
            continue
        if constants.get(name) is None:
            raise AttnlangError(f"the pattern uses '{name}': give it to flex_mods "
                                f"(seq_q, seq_k and heads bind n_q, n_k and heads)")
        lines.append(f"    {name} = torch.tensor({int(constants[name])})")
    return lines


def _function(name: str, signature: str, body: ir.Expr, constants: dict, result: str = "{}") -> list[str]:
    names: dict[ir.Expr, str] = {}
    lines = [f"def {name}({signature}):"] + _prologue(body, constants)
    for index, node in enumerate(shared_subexpressions(body)):
        lines.append(f"    t{index} = {TorchPrinter(constants, names).print(node)}")
        names[node] = f"t{index}"
    lines.append(f"    return {result.format(TorchPrinter(constants, names).print(body))}")
    return lines


def flex_source(pattern: ir.PatternIR, seq_q: int | None = None, seq_k: int | None = None,
                heads: int | None = None, static_only: bool = False) -> str:
    """A Python module defining `mask_mod(b, h, q_idx, kv_idx)` and `score_mod(score, b, h, q_idx, kv_idx)`.

    Runtime inputs (`doc[...]`) are module globals that `flex_mods` binds; subexpressions
    used twice are computed once, into `t0`, `t1`, ... A routing pattern is refused unless
    `static_only` (its static candidates: the routing's selection is not in the mods).
    """
    if not static_only:
        refuse_mods(pattern)
    constants = {"n_q": seq_q, "n_k": seq_k, "heads": heads}
    params = ", ".join(f"{k}={v!r}" for k, v in pattern.params)
    lines = [f'"""FlexAttention mods of attnlang pattern {pattern.name}({params})."""', "", _HEADER]
    floats, blocks = ir.float_inputs(pattern), ir.block_axes(pattern)
    for name in pattern.inputs:
        kind = "float (float64)" if name in floats else "int (int64)"
        where = "(heads, query blocks, key blocks) entry, flattened" if name in blocks else "token"
        lines.append(f"input_{name} = None  # runtime input '{name}': one {kind} per {where}\n")
    mask = pattern.mask
    if isinstance(mask, ir.Const):  # FlexAttention wants a tensor even from a constant mask
        mask = ir.Binary(">=" if mask.value else "<", ir.Var("q", Type.INT), ir.Const(0, Type.INT), Type.BOOL)
    lines += [""] + _function("mask_mod", "b, h, q_idx, kv_idx", mask, constants) + ["", ""]
    # _float: a constant logit is a Python float, which has no .to
    result = "{}" if pattern.logit == ir.Var("score", Type.FLOAT) else "_float({}).to(score.dtype)"
    lines += _function("score_mod", "score, b, h, q_idx, kv_idx", pattern.logit, constants, result) + [""]
    return "\n".join(lines)


def flex_mods(pattern: ir.PatternIR, seq_q: int | None = None, seq_k: int | None = None,
              heads: int | None = None, inputs: dict | None = None, static_only: bool = False):
    """(mask_mod, score_mod) for FlexAttention, executed from `flex_source`. A routing pattern's
    selection depends on the tensors: refused unless `static_only` (its static candidates)."""
    import torch
    if not static_only:
        refuse_mods(pattern)
    namespace: dict = {}
    source = flex_source(pattern, seq_q, seq_k, heads, static_only=True)
    exec(compile(source, f"<attnlang:{pattern.name}>", "exec"), namespace)
    floats, blocks = ir.float_inputs(pattern), ir.block_axes(pattern)
    for name in pattern.inputs:
        if inputs is None or name not in inputs:
            raise AttnlangError(f"pattern '{pattern.name}' needs input '{name}' for its mask_mod")
        dtype = torch.float64 if name in floats else torch.int64  # floats are computed in float64
        value = inputs[name]
        if has_batch_axis(pattern, name, value):
            raise AttnlangError(f"input '{name}' has a row per batch entry, but the exported mods read one row (they "
                                f"do not index b): export once per entry with inputs={{'{name}': {name}[b]}}")
        value = value.to(dtype) if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value), dtype=dtype)
        namespace[f"input_{name}"] = value.reshape(-1) if name in blocks else value  # as its reads index it
    return namespace["mask_mod"], namespace["score_mod"]
