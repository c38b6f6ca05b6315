"""FlexAttention mods in: a `mask_mod(b, h, q_idx, kv_idx)` (and a `score_mod`) as a Pattern.

`from_mask_mod` calls the function once on symbolic stand-ins for its arguments. Each
operation on them records an IR node instead of computing (Python operators directly, torch
functions through `__torch_function__`), so the function's own code is the program. The IR
is printed as attnlang source and checked like any pattern, so a user's mask_mod gets the
exact block analysis, the kernels and the export without being rewritten.

Covered: comparisons, `&` `|` `~` on booleans, `+ - * / // %` and unary minus, `abs`,
`torch.where`, `torch.minimum`/`maximum`, `torch.clamp`, the float functions
(`exp log log2 sqrt tanh`), casts (`.to`, `.int()`, `.long()`, `.float()`), and indexing a
captured 1-D integer tensor (document ids, per-batch prefix lengths). Anything else raises
an `AttnlangError` that names the operation.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from . import ir
from .errors import AttnlangError
from .ir import Type
from .parser import KEYWORDS

__all__ = ["from_mask_mod"]


class _Unsupported(AttnlangError):
    pass


class _Symbol:
    """A traced value: the IR that computes it. Python operators build IR nodes."""

    def __init__(self, expr: ir.Expr, tracer: "_Tracer"):
        self.expr, self.tracer = expr, tracer

    # -- arithmetic --
    def _binary(self, op, other, reverse=False):
        left, right = self.expr, self.tracer.lift(other)
        if reverse:
            left, right = right, left
        return _Symbol(_typed_binary(op, left, right), self.tracer)

    def __add__(self, o): return self._binary("+", o)
    def __radd__(self, o): return self._binary("+", o, True)
    def __sub__(self, o): return self._binary("-", o)
    def __rsub__(self, o): return self._binary("-", o, True)
    def __mul__(self, o): return self._binary("*", o)
    def __rmul__(self, o): return self._binary("*", o, True)
    def __truediv__(self, o): return self._binary("/", o)
    def __rtruediv__(self, o): return self._binary("/", o, True)
    def __floordiv__(self, o): return self._binary("//", o)
    def __rfloordiv__(self, o): return self._binary("//", o, True)
    def __mod__(self, o): return self._binary("%", o)
    def __rmod__(self, o): return self._binary("%", o, True)
    def __pow__(self, o): return self._binary("**", o)
    def __rpow__(self, o): return self._binary("**", o, True)

    def __neg__(self):
        return _Symbol(ir.Unary("-", self.expr, self.expr.type), self.tracer)

    def __abs__(self):
        return _Symbol(ir.Call("abs", (self.expr,), self.expr.type), self.tracer)

    # -- comparisons --
    def __eq__(self, o): return self._binary("==", o)  # noqa: E704
    def __ne__(self, o): return self._binary("!=", o)  # noqa: E704
    def __lt__(self, o): return self._binary("<", o)
    def __le__(self, o): return self._binary("<=", o)
    def __gt__(self, o): return self._binary(">", o)
    def __ge__(self, o): return self._binary(">=", o)
    __hash__ = object.__hash__

    # -- logic: FlexAttention writes `and`/`or`/`not` as `&`, `|`, `~` on bool tensors --
    def _logic(self, op, other, reverse=False):
        if self.expr.type is not Type.BOOL or self.tracer.lift(other).type is not Type.BOOL:
            raise _Unsupported(f"from_mask_mod: bitwise '{op}' on integers is not supported (only on booleans)")
        return self._binary("and" if op == "&" else "or", other, reverse)

    def __and__(self, o): return self._logic("&", o)
    def __rand__(self, o): return self._logic("&", o, True)
    def __or__(self, o): return self._logic("|", o)
    def __ror__(self, o): return self._logic("|", o, True)

    def __invert__(self):
        if self.expr.type is not Type.BOOL:
            raise _Unsupported("from_mask_mod: bitwise '~' on integers is not supported (only on booleans)")
        return _Symbol(ir.Unary("not", self.expr, Type.BOOL), self.tracer)

    def __bool__(self):
        raise _Unsupported("from_mask_mod: the mask_mod branches on a traced value (`if`, `and`, `or`, "
                           "`not` or a chained comparison); write torch.where(c, a, b), &, |, ~ instead")

    # -- casts and methods --
    def to(self, *args, **kwargs):
        import torch
        dtype = kwargs.get("dtype", args[0] if args else None)
        if isinstance(dtype, torch.dtype):
            return self._cast(Type.FLOAT if dtype.is_floating_point else Type.BOOL if dtype == torch.bool
                              else Type.INT)
        return self  # a device

    def _cast(self, target: Type):
        if target is self.expr.type:
            return self
        if target is Type.FLOAT and self.expr.type is Type.INT:
            return _Symbol(ir.Cast(self.expr), self.tracer)
        if target is Type.INT and self.expr.type is Type.FLOAT:  # torch truncates toward zero
            x = self.expr
            negative = ir.Binary("<", x, ir.Const(0.0, Type.FLOAT), Type.BOOL)
            return _Symbol(ir.Select(negative, ir.Call("ceil", (x,), Type.INT), ir.Call("floor", (x,), Type.INT),
                                     Type.INT), self.tracer)
        if target is Type.INT and self.expr.type is Type.BOOL:
            return _Symbol(ir.Select(self.expr, ir.Const(1, Type.INT), ir.Const(0, Type.INT), Type.INT), self.tracer)
        raise _Unsupported(f"from_mask_mod: a cast of {self.expr.type} to {target} is not supported")

    def int(self): return self._cast(Type.INT)
    def long(self): return self._cast(Type.INT)
    def float(self): return self._cast(Type.FLOAT)
    def double(self): return self._cast(Type.FLOAT)
    def bool(self): return self != 0
    def abs(self): return abs(self)
    def clamp(self, min=None, max=None): return _FUNCTIONS["clamp"](self, min, max)  # noqa: A002

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise _Unsupported(f"from_mask_mod: the method .{name}() is not supported")

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name == "__getitem__":
            return _index(*args)
        if name in _FUNCTIONS:
            return _FUNCTIONS[name](*args, **kwargs)
        raise _Unsupported(f"from_mask_mod: torch.{name} is not supported; supported: "
                           + ", ".join(sorted(_FUNCTIONS)) + ", indexing a captured 1-D int tensor")


def _typed_binary(op: str, left: ir.Expr, right: ir.Expr) -> ir.Expr:
    """The node for `left op right`, typed as the checker would (it re-checks the source)."""
    if op in ("==", "!=", "<", "<=", ">", ">=", "and", "or"):
        return ir.Binary(op, left, right, Type.BOOL)
    if op == "/":
        return ir.Binary(op, left, right, Type.FLOAT)
    if Type.BOOL in (left.type, right.type):
        raise _Unsupported(f"from_mask_mod: '{op}' on a boolean is not supported")
    result = Type.FLOAT if Type.FLOAT in (left.type, right.type) else Type.INT
    return ir.Binary(op, left, right, result)


def _where(cond, then, orelse):
    tracer = _tracer_of(cond, then, orelse)
    c, a, b = (tracer.lift(x) for x in (cond, then, orelse))
    result = a.type if a.type == b.type else Type.FLOAT
    return _Symbol(ir.Select(c, a, b, result), tracer)


def _call(name):
    def call(*args, **kwargs):
        tracer = _tracer_of(*args)
        exprs = [tracer.lift(a) for a in args]
        result = Type.FLOAT if name in ("exp", "log", "log2", "sqrt", "tanh") or Type.FLOAT in [e.type for e in exprs] \
            else Type.INT
        return _Symbol(ir.Call(name, tuple(exprs), result), tracer)
    return call


def _clamp(x, min=None, max=None):  # noqa: A002
    value = x
    if min is not None:
        value = _call("max")(value, min)
    if max is not None:
        value = _call("min")(value, max)
    return value


_FUNCTIONS = {
    "where": _where, "abs": lambda x: abs(x), "minimum": _call("min"), "maximum": _call("max"),
    "min": _call("min"), "max": _call("max"), "clamp": _clamp, "clip": _clamp,
    "exp": _call("exp"), "log": _call("log"), "log2": _call("log2"), "sqrt": _call("sqrt"), "tanh": _call("tanh"),
    "floor": _call("floor"), "ceil": _call("ceil"), "floor_divide": lambda a, b: a // b,
    "exp2": lambda x: 2.0 ** x, "pow": lambda a, b: a ** b,
    "remainder": lambda a, b: a % b, "logical_and": lambda a, b: a & b, "logical_or": lambda a, b: a | b,
    "logical_not": lambda a: ~a, "eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b, "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b,
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b, "div": lambda a, b: a / b,
    "neg": lambda a: -a, "__and__": lambda a, b: a & b, "__or__": lambda a, b: a | b,
}


def _tracer_of(*values) -> "_Tracer":
    for value in values:
        if isinstance(value, _Symbol):
            return value.tracer
    raise _Unsupported("from_mask_mod: an operation on constants only")


def _index(base, index):
    """`tensor[symbol]`: a read of a captured integer tensor, which becomes a runtime input."""
    import torch
    if isinstance(index, tuple) and len(index) == 1:
        index = index[0]
    if not isinstance(base, torch.Tensor) or not isinstance(index, _Symbol):
        raise _Unsupported("from_mask_mod: only a captured tensor indexed by a traced int is supported")
    return index.tracer.read(base, index)


class _Tracer:
    """Lifts constants, names captured tensors, and records them as the pattern's inputs."""

    def __init__(self, fn):
        self.fn = fn
        self.inputs: dict[str, object] = {}  # name -> captured tensor read by position

    def lift(self, value) -> ir.Expr:
        if isinstance(value, _Symbol):
            return value.expr
        if isinstance(value, bool | np.bool_):
            return ir.Const(bool(value), Type.BOOL)
        if isinstance(value, numbers.Integral):
            return ir.Const(int(value), Type.INT)
        if isinstance(value, numbers.Real):
            if not math.isfinite(value):
                raise _Unsupported(f"from_mask_mod: the constant {value} is not finite")
            return ir.Const(float(value), Type.FLOAT)
        import torch
        if isinstance(value, torch.Tensor) and value.dim() == 0:
            return self.lift(value.item())
        raise _Unsupported(f"from_mask_mod: a {type(value).__name__} operand is not supported")

    def read(self, tensor, index: _Symbol) -> _Symbol:
        import torch
        if tensor.dim() != 1:
            raise _Unsupported("from_mask_mod: only a 1-D tensor can be indexed")
        if index.expr.type is not Type.INT:
            raise _Unsupported(f"from_mask_mod: a tensor indexed by a {index.expr.type}")
        reads = {n.name for n in ir.walk(index.expr) if isinstance(n, ir.Var)}
        if reads <= {"h", "b", "heads"} and len(tensor) <= MAX_TABLE:
            # per head or per batch entry (ALiBi slopes, prefix lengths): its values, as constants
            return _Symbol(_table(tensor.tolist(), index.expr), self)
        if tensor.dtype.is_floating_point or tensor.dtype == torch.bool:
            raise _Unsupported("from_mask_mod: a tensor indexed by a position must hold integers "
                               f"(it becomes a runtime input), found {tensor.dtype}")
        name = self._name(tensor)
        self.inputs[name] = tensor
        return _Symbol(ir.Load(name, index.expr), self)

    def _name(self, tensor) -> str:
        for name, known in self.inputs.items():
            if known is tensor:
                return name
        code, closure = self.fn.__code__, self.fn.__closure__ or ()
        candidates = [n for n, cell in zip(code.co_freevars, closure) if _cell(cell) is tensor]
        candidates += [n for n in code.co_names if self.fn.__globals__.get(n) is tensor]
        for name in candidates + [f"input{len(self.inputs)}"]:
            if name.isidentifier() and name not in KEYWORDS and name not in ir.VARIABLES and name not in self.inputs:
                return name
        return f"input{len(self.inputs)}_"


def _cell(cell):
    try:
        return cell.cell_contents
    except ValueError:
        return None


def _variables(tracer: _Tracer, names: tuple[str, ...]) -> list[_Symbol]:
    return [_Symbol(ir.Var(n, ir.VARIABLES[n]), tracer) for n in names]


def _trace(fn, tracer: _Tracer, names: tuple[str, ...], expected: Type) -> ir.Expr:
    try:
        result = fn(*_variables(tracer, names))
    except AttnlangError:
        raise
    except Exception as error:  # the mod did something tracing cannot follow
        raise AttnlangError(f"from_mask_mod: tracing {getattr(fn, '__name__', 'the mod')} failed: "
                            f"{type(error).__name__}: {error}") from None
    expr = tracer.lift(result)
    if expected is Type.BOOL and expr.type is not Type.BOOL:
        raise AttnlangError(f"from_mask_mod: the mask_mod returns {expr.type}, not a bool")
    return expr


def from_mask_mod(mask_mod=None, score_mod=None, *, name: str = "traced"):
    """A `Pattern` from a FlexAttention `mask_mod(b, h, q_idx, kv_idx)` and/or
    `score_mod(score, b, h, q_idx, kv_idx)`.

    A captured 1-D integer tensor indexed by a position (`doc[q_idx]`) becomes an input of
    the pattern, named as the variable that holds it; `pattern.default_inputs` keeps its
    values, and every call that takes `inputs=` uses them when given none. A tensor indexed
    by the head or batch alone (ALiBi slopes, per-sequence prefix lengths) is inlined as
    constants.
    """
    from .pattern import parse
    if not (name.isidentifier() and name not in KEYWORDS):
        raise AttnlangError(f"from_mask_mod: name must be an identifier, got {name!r}")
    if mask_mod is None and score_mod is None:
        raise AttnlangError("from_mask_mod: give a mask_mod, a score_mod or both")
    statements = []
    inputs: dict = {}
    for fn, names, expected, keyword in ((mask_mod, ("b", "h", "q", "k"), Type.BOOL, "mask"),
                                         (score_mod, ("score", "b", "h", "q", "k"), Type.FLOAT, "score")):
        if fn is None:
            continue
        tracer = _Tracer(fn)
        tracer.inputs = dict(inputs)
        expr = _trace(fn, tracer, names, expected)
        inputs.update(tracer.inputs)
        statements.append(f"    {keyword} {expr}")
    declarations = [f"    input {n}: int[tokens]" for n in inputs]
    source = f"pattern {name}() {{\n" + "\n".join(declarations + statements) + "\n}\n"
    pattern = parse(source, filename=f"<from_mask_mod {name}>")[name]
    pattern.default_inputs = {n: t.detach().cpu().numpy().astype(np.int64) for n, t in inputs.items()}
    return pattern


MAX_TABLE = 4096  # the most entries of a per-head or per-batch tensor inlined as constants


def _table(values: list, index: ir.Expr) -> ir.Expr:
    """`values[index]` as `if index == 0 then v0 else if ...`: exact for ints and floats."""
    floating = any(isinstance(v, float) for v in values)
    kind = Type.FLOAT if floating else Type.INT
    consts = [ir.Const(float(v) if floating else int(v), kind) for v in values]
    expr = consts[-1]
    for position in range(len(consts) - 2, -1, -1):
        is_here = ir.Binary("==", index, ir.Const(position, Type.INT), Type.BOOL)
        expr = ir.Select(is_here, consts[position], expr, kind)
    return expr
