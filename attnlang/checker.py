"""AST → IR: names, types, arity, parameters, `let`, `grid`, `input`, `use`, `route`.

`lower_pattern` reads as the pipeline: bind parameters, lower the body (one method per
statement and per expression node), fold constants. Every error carries the span of
the offending token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Protocol

from . import ast, ir
from .builtins import BUILTINS
from .errors import AttnlangError, Span, did_you_mean
from .fold import fold_constants
from .ir import Type

__all__ = ["lower_pattern", "coerce_param", "param_type", "PatternScope"]

class PatternScope(Protocol):
    """Where `use NAME` and `NAME(...)` look patterns up (a `Module`)."""

    def resolve(self, name: str) -> ast.PatternDecl | None: ...

    def visible_names(self) -> list[str]: ...

ROUTE_POOLS = ("mean", "max", "minmax", "last")  # a key block's summary (docs/language.md, Routing)
ROUTE_QPOOLS = ("mean", "max")                    # a query block's score
ROUTE_SHARES = ("head", "group", "all")           # how many heads one selection serves


def lower_pattern(decl: ast.PatternDecl, params: dict, scope: PatternScope,
                  _stack: tuple[str, ...] = (), symbolic: bool = False) -> ir.PatternIR:
    """Check `decl` with `params` (name → value, defaults filled in) and lower it to IR.

    With `symbolic`, int and float parameters stay `Var`s named after them instead of
    being folded in (for closed forms); bool parameters are still bound.
    """
    lowering = _Lowering(decl, params, scope, _stack + (decl.name,), symbolic)
    for stmt in decl.body:
        lowering.statement(stmt)
    return lowering.result()


def param_type(param: ast.Param) -> Type:
    return {ast.IntLit: Type.INT, ast.FloatLit: Type.FLOAT, ast.BoolLit: Type.BOOL}[type(param.default)]


def coerce_param(decl: ast.PatternDecl, name: str, value, span: Span | None = None):
    """`value` as the type of parameter `name` of `decl`, or an `AttnlangError` saying why not."""
    params = {p.name: p for p in decl.params}
    if name not in params:
        hint = did_you_mean(name, params)
        known = ", ".join(params) or "none"
        raise AttnlangError(f"pattern '{decl.name}' has no parameter '{name}'{hint} "
                            f"(its parameters: {known})", span)
    expected = param_type(params[name])
    ok = {
        Type.BOOL: isinstance(value, bool),
        Type.INT: isinstance(value, int) and not isinstance(value, bool),
        Type.FLOAT: isinstance(value, int | float) and not isinstance(value, bool),
    }[expected]
    if hasattr(value, "item") and not ok:  # numpy / torch scalars
        return coerce_param(decl, name, value.item(), span)
    if not ok:
        raise AttnlangError(f"parameter '{name}' of '{decl.name}' expects {expected}, "
                            f"got {type(value).__name__} {value!r}", span)
    return float(value) if expected is Type.FLOAT else value


@dataclass
class _Let:
    value: ir.Expr
    span: Span | None
    score_span: Span | None  # where the let's value reads `score`, if it does


@dataclass
class _Grid:
    axes: dict[str, tuple[ir.Expr, ir.Expr | None]] = field(default_factory=dict)  # divisor, modulus
    sizes: tuple[tuple[str, ir.Expr], ...] = ()  # axis -> size, in declaration order


def _suggest(value, choices) -> str:
    return did_you_mean(value.id, choices) if isinstance(value, ast.Name) else ""


class _Lowering:
    """Lowers the statements of one pattern body, in order."""

    def __init__(self, decl, params, scope: PatternScope, stack, symbolic=False):
        self.decl = decl
        self.scope = scope
        self.symbolic = symbolic
        self.stack = stack
        self.params = {p.name: (param_type(p), params[p.name]) for p in decl.params}
        self.lets: dict[str, _Let] = {}
        self.inputs: list[str] = []
        self.input_types: dict[str, Type] = {}
        self.block_inputs: dict[str, tuple[str, int, int, bool, str]] = {}
        self.grid: _Grid | None = None
        self.masks: list[ir.Expr] = []
        self.logit: ir.Expr = ir.Var("score", Type.FLOAT)
        self.route: ir.RouteIR | None = None
        self.score_allowed = False
        self.score_span: Span | None = None  # first `score` read in the current statement
        self._check_params()

    def _check_params(self):
        seen = set()
        for p in self.decl.params:
            if p.name in seen:
                raise AttnlangError(f"parameter '{p.name}' is declared twice", p.span)
            seen.add(p.name)
            self._check_new_name(p.name, p.span, "a parameter")

    def result(self) -> ir.PatternIR:
        mask = ir.TRUE
        for m in self.masks:
            mask = m if mask == ir.TRUE else ir.Binary("and", mask, m, Type.BOOL, m.span)
        return ir.PatternIR(
            name=self.decl.name,
            params=tuple((name, value) for name, (_, value) in self.params.items()),
            mask=fold_constants(mask),
            logit=fold_constants(self.logit),
            inputs=tuple(self.inputs),
            route=self.route,
            grid=self.grid.sizes if self.grid else (),
            span=self.decl.span,
            block_inputs=tuple(self.block_inputs.values()),
            declared_floats=tuple(name for name, kind in self.input_types.items() if kind is Type.FLOAT),
        )

    # -- statements -------------------------------------------------------------------

    def statement(self, stmt: ast.Stmt):
        getattr(self, "stmt_" + type(stmt).__name__)(stmt)

    def stmt_Let(self, stmt: ast.Let):
        self._check_new_name(stmt.name, stmt.span, "a let")
        if stmt.name in self.lets:
            raise AttnlangError(f"'{stmt.name}' is already defined (line {self.lets[stmt.name].span.line})",
                                stmt.span)
        value, score_span = self._lower_allowing_score(stmt.value)
        self.lets[stmt.name] = _Let(value, stmt.span, score_span)

    def stmt_Mask(self, stmt: ast.Mask):
        expr = self.expr(stmt.expr)
        if expr.type is not Type.BOOL:
            raise AttnlangError(f"mask expects a boolean expression, found {expr.type}", _span_of(stmt.expr))
        self.masks.append(expr)

    def stmt_Bias(self, stmt: ast.Bias):
        # `score` inside a bias is the logit so far, as inside a score statement
        bias = ir.substitute(self._logit_expr(stmt.expr, "bias"), {ir.Var("score", Type.FLOAT): self.logit})
        self.logit = ir.Binary("+", self.logit, bias, Type.FLOAT, stmt.span)

    def stmt_Score(self, stmt: ast.Score):
        new = self._logit_expr(stmt.expr, "score")
        self.logit = ir.substitute(new, {ir.Var("score", Type.FLOAT): self.logit})

    def stmt_Grid(self, stmt: ast.Grid):
        if self.grid is not None:
            raise AttnlangError("a pattern has at most one grid", stmt.span)
        if len(stmt.axes) != len(stmt.sizes):
            raise AttnlangError(f"grid has {len(stmt.axes)} axes but {len(stmt.sizes)} sizes", stmt.span)
        sizes = []
        for axis, size_ast in zip(stmt.axes, stmt.sizes):
            size = fold_constants(self.expr(size_ast))
            if size.type is not Type.INT:
                raise AttnlangError(f"grid size of axis '{axis}' must be an int, found {size.type}",
                                    _span_of(size_ast))
            if isinstance(size, ir.Const) and size.value <= 0:
                raise AttnlangError(f"grid size of axis '{axis}' must be positive, found {size.value}",
                                    _span_of(size_ast))
            sizes.append(size)
        if len(set(stmt.axes)) != len(stmt.axes):
            raise AttnlangError("grid axes must have different names", stmt.span)
        grid = _Grid(sizes=tuple(zip(stmt.axes, sizes)))
        stride: ir.Expr = ir.Const(1, Type.INT)
        # Row-major: the last axis varies fastest. The first axis is not wrapped, so tokens
        # past the grid's end continue along it (e.g. extra frames of a video).
        for index in range(len(stmt.axes) - 1, -1, -1):
            modulus = sizes[index] if index > 0 else None
            grid.axes[stmt.axes[index]] = (stride, modulus)
            stride = fold_constants(ir.Binary("*", stride, sizes[index], Type.INT))
        self.grid = grid

    def stmt_Input(self, stmt: ast.Input):
        self._check_new_name(stmt.name, stmt.span, "an input")
        if stmt.name in self.lets:
            raise AttnlangError(f"'{stmt.name}' is already a let", stmt.span)
        if stmt.name in self.inputs:
            raise AttnlangError(f"input '{stmt.name}' is declared twice", stmt.span)
        self.inputs.append(stmt.name)
        self.input_types[stmt.name] = Type.FLOAT if stmt.dtype == "float" else Type.INT
        if stmt.extent == "blocks":
            sizes = [self._constant_int(size, "a block input's block size", minimum=1) for size in stmt.blocks]
            self.block_inputs[stmt.name] = (stmt.name, sizes[0], sizes[-1], stmt.per_head, stmt.dtype)

    def stmt_Use(self, stmt: ast.Use):
        used = self._inline_pattern(stmt.name, stmt.args, stmt.kwargs, stmt.span)
        if used.mask != ir.TRUE:
            self.masks.append(used.mask)
        self.logit = ir.substitute(used.logit, {ir.Var("score", Type.FLOAT): self.logit})
        if used.route is not None:
            self._set_route(used.route, stmt.span)

    def stmt_Route(self, stmt: ast.Route):
        if stmt.func not in ("topk", "top_p"):
            raise AttnlangError(f"unknown routing '{stmt.func}'{did_you_mean(stmt.func, ['topk', 'top_p'])}; "
                                "attnlang routes with topk(K, block = B, qblock = 1, pool = mean, qpool = mean, "
                                "share = head, keep = EXPR) or top_p(P, max = K, block = B, ...)",
                                stmt.span)
        options = ["block", "pool", "keep", "qblock", "qpool", "share", "by"]
        if stmt.func == "topk":
            bound = self._bind_arguments("topk", ["top"] + options, stmt.args, stmt.kwargs, stmt.span,
                                         required=["top", "block"])
            top, top_p = self._constant_int(bound["top"], "top", minimum=1), None
        else:
            bound = self._bind_arguments("top_p", ["p", "max"] + options, stmt.args, stmt.kwargs, stmt.span,
                                         required=["p", "max", "block"])
            top, top_p = self._constant_int(bound["max"], "max", minimum=1), self._probability(bound["p"])
        region = self._region(bound["block"])
        block = math.prod(region) if region else self._constant_int(bound["block"], "block", minimum=1)
        qblock = None
        if "qblock" in bound:
            qblock = self._constant_int(bound["qblock"], "qblock", minimum=1)
            if qblock not in (1, block):
                raise AttnlangError(f"qblock must be 1 (route every query token) or the block ({block}), got {qblock}",
                                    _span_of(bound["qblock"]))
            qblock = None if qblock == block else qblock
        pool, qpool, share = (self._route_option(bound, name, choices) for name, choices in
                              (("pool", ROUTE_POOLS), ("qpool", ROUTE_QPOOLS), ("share", ROUTE_SHARES)))
        if qpool != "mean" and qblock == 1:
            raise AttnlangError("qpool pools the queries of a block: it needs qblock = block, not 1",
                                _span_of(bound["qpool"]))
        keep = ir.FALSE
        if "keep" in bound:
            keep = fold_constants(self.expr(bound["keep"]))
            if keep.type is not Type.BOOL:
                raise AttnlangError(f"keep expects a boolean expression, found {keep.type}",
                                    _span_of(bound["keep"]))
        by = self._route_scores(bound, qblock or block, block, region)
        self._set_route(ir.RouteIR(top, block, pool, keep, qblock=qblock, qpool=qpool, share=share, top_p=top_p,
                                   region=region, by=by, span=stmt.span), stmt.span)

    def _route_scores(self, bound: dict, units: int, block: int, region) -> str | None:
        """`by = NAME`: the routing's scores are a float block input of blocks(units, block)."""
        if "by" not in bound:
            return None
        value = bound["by"]
        name = value.id if isinstance(value, ast.Name) else None
        if name not in self.block_inputs or self.block_inputs[name][4] != "float":
            raise AttnlangError(f"by names the routing's scores: a float block input, e.g. input s: "
                                f"float[heads, blocks({units}, {block})]", _span_of(value))
        _, bq, bk, _, _ = self.block_inputs[name]
        if (bq, bk) != (units, block) or region is not None:
            why = " (grid regions are not blocks of tokens)" if region else ""
            raise AttnlangError(f"the scores '{name}' are of blocks({bq}, {bk}), but the routing's units and blocks "
                                f"are ({units}, {block}) tokens{why}", _span_of(value))
        for option in ("pool", "qpool"):
            if option in bound:
                raise AttnlangError(f"{option} summarizes q and k for the scores, which by = {name} gives: drop it",
                                    _span_of(bound[option]))
        return name

    def _region(self, value) -> tuple[int, ...] | None:
        """`block = (a, b, ...)`: a region of the grid, one positive size per axis."""
        if not isinstance(value, ast.Tuple):
            return None
        if self.grid is None:
            raise AttnlangError("a block of (a, b, ...) is a region of the pattern's grid: declare "
                                "grid (A, B, ...) = (SA, SB, ...) before the route", value.span)
        if len(value.items) != len(self.grid.axes):
            raise AttnlangError(f"the region has {len(value.items)} sizes but the grid has {len(self.grid.axes)} "
                                f"axes ({', '.join(self.grid.axes)})", value.span)
        return tuple(self._constant_int(item, "a region size", minimum=1) for item in value.items)

    def _probability(self, expr_ast) -> float:
        value = fold_constants(self.expr(expr_ast))
        if not (isinstance(value, ir.Const) and value.type in (Type.FLOAT, Type.INT) and 0 < value.value <= 1):
            raise AttnlangError(f"top_p's P must be a constant in (0, 1], found {value}", _span_of(expr_ast))
        return float(value.value)

    @staticmethod
    def _route_option(bound: dict, name: str, choices: tuple[str, ...]) -> str:
        if name not in bound:
            return choices[0]
        value = bound[name]
        if not isinstance(value, ast.Name) or value.id not in choices:
            raise AttnlangError(f"{name} must be one of {', '.join(choices)}{_suggest(value, choices)}",
                                _span_of(value))
        return value.id

    def _set_route(self, route: ir.RouteIR, span):
        if self.route is not None:
            raise AttnlangError("a pattern routes at most once", span)
        self.route = route

    # -- helpers for statements -------------------------------------------------------

    def _check_new_name(self, name: str, span, what: str):
        if name in ir.VARIABLES:
            raise AttnlangError(f"'{name}' is a built-in name and cannot be {what}", span)
        if name in BUILTINS:
            raise AttnlangError(f"'{name}' is a built-in function and cannot be {what}", span)
        if what != "a parameter" and name in self.params:
            raise AttnlangError(f"'{name}' is already a parameter", span)
        if what != "an input" and name in self.inputs:
            raise AttnlangError(f"'{name}' is already an input", span)

    def _lower_allowing_score(self, expr_ast) -> tuple[ir.Expr, Span | None]:
        saved = (self.score_allowed, self.score_span)
        self.score_allowed, self.score_span = True, None
        try:
            return self.expr(expr_ast), self.score_span
        finally:
            self.score_allowed, self.score_span = saved

    def _logit_expr(self, expr_ast, statement: str) -> ir.Expr:
        value, _ = self._lower_allowing_score(expr_ast)
        if not value.type.is_number:
            raise AttnlangError(f"{statement} expects a number, found {value.type}", _span_of(expr_ast))
        return _to_float(value)

    def _constant_int(self, expr_ast, what: str, minimum: int) -> int:
        value = fold_constants(self.expr(expr_ast))
        if not isinstance(value, ir.Const) or value.type is not Type.INT:
            raise AttnlangError(f"{what} must be a constant int (a literal or parameter), found {value}",
                                _span_of(expr_ast))
        if value.value < minimum:
            raise AttnlangError(f"{what} must be at least {minimum}, found {value.value}", _span_of(expr_ast))
        return int(value.value)

    def _bind_arguments(self, callee: str, names: list[str], args, kwargs, span,
                        required: list[str]) -> dict[str, ast.Expr]:
        if len(args) > len(names):
            raise AttnlangError(f"{callee} takes at most {len(names)} arguments ({', '.join(names)}), "
                                f"got {len(args) + len(kwargs)}", _span_of(args[len(names)]))
        bound = dict(zip(names, args))
        for kw in kwargs:
            if kw.name not in names:
                raise AttnlangError(f"{callee} has no argument '{kw.name}'{did_you_mean(kw.name, names)}",
                                    kw.span)
            if kw.name in bound:
                raise AttnlangError(f"argument '{kw.name}' of {callee} is given twice", kw.span)
            bound[kw.name] = kw.value
        missing = [n for n in required if n not in bound]
        if missing:
            raise AttnlangError(f"{callee} needs argument '{missing[0]}'", span)
        return bound

    def _inline_pattern(self, name: str, args, kwargs, span) -> ir.PatternIR:
        """Lower pattern `name` with the given arguments (for `use` and for calls)."""
        if name in self.stack:
            cycle = " -> ".join(self.stack[self.stack.index(name):] + (name,))
            raise AttnlangError(f"recursive use of pattern '{name}' ({cycle})", span)
        decl = self.scope.resolve(name)
        if decl is None:
            raise AttnlangError(f"unknown pattern '{name}'{did_you_mean(name, self._known_patterns())}",
                                span)
        names = [p.name for p in decl.params]
        bound = self._bind_arguments(f"pattern '{name}'", names, args, kwargs, span, required=[])
        params = {p.name: p.default.value for p in decl.params}
        forwarded = {}  # symbolic lowering: arguments that are expressions of our own parameters
        for param_name, value_ast in bound.items():
            value = fold_constants(self.expr(value_ast))
            if self.symbolic and not isinstance(value, ir.Const) and self._of_parameters_only(value):
                if value.type is Type.BOOL:  # closed forms bind bools: one formula cannot cover both
                    raise AttnlangError(f"bool argument '{param_name}' of pattern '{name}' depends on parameters",
                                        _span_of(value_ast))
                forwarded[param_name] = value
                value = fold_constants(ir.substitute(value, self._parameter_values()))
            if not isinstance(value, ir.Const):
                raise AttnlangError(f"argument '{param_name}' of pattern '{name}' must be a compile-time "
                                    f"constant, found {value}", _span_of(value_ast))
            params[param_name] = coerce_param(decl, param_name, value.value, _span_of(value_ast))
        if forwarded:
            used = self._inline_forwarded(decl, params, forwarded)
        else:
            used = lower_pattern(decl, params, self.scope, self.stack)
        for input_name in used.inputs:
            if input_name not in self.inputs:
                self.inputs.append(input_name)
        for input_name in ir.float_inputs(used):
            self.input_types[input_name] = Type.FLOAT
        for block_input in used.block_inputs:
            self.block_inputs[block_input[0]] = block_input
        return used

    def _of_parameters_only(self, value: ir.Expr) -> bool:
        """Whether `value` reads nothing but this pattern's (symbolic) parameters."""
        variables = [n for n in ir.walk(value) if isinstance(n, ir.Var | ir.Load)]
        return all(isinstance(n, ir.Var) and n.name in self.params for n in variables)

    def _parameter_values(self) -> dict[ir.Expr, ir.Expr]:
        return {ir.Var(name, kind): ir.Const(value, kind) for name, (kind, value) in self.params.items()
                if kind is not Type.BOOL}

    def _inline_forwarded(self, decl, params: dict, forwarded: dict) -> ir.PatternIR:
        """The callee lowered symbolically, its parameters bound to our expressions (the ones
        forwarded) or to their values: `s2attn(group)` keeps `group` a symbol of the caller."""
        used = lower_pattern(decl, params, self.scope, self.stack, symbolic=True)
        bindings = {}
        for param in decl.params:
            kind = param_type(param)
            if kind is Type.BOOL:
                continue
            value = forwarded.get(param.name, ir.Const(params[param.name], kind))
            bindings[ir.Var(param.name, kind)] = _to_float(value) if kind is Type.FLOAT else value
        route = used.route and replace(used.route, keep=ir.substitute(used.route.keep, bindings))
        return replace(used, mask=ir.substitute(used.mask, bindings), logit=ir.substitute(used.logit, bindings),
                       route=route)

    def _known_patterns(self) -> list[str]:
        return self.scope.visible_names()

    # -- expressions ------------------------------------------------------------------

    def expr(self, node: ast.Expr) -> ir.Expr:
        return getattr(self, "expr_" + type(node).__name__)(node)

    def expr_Tuple(self, node: ast.Tuple):
        raise AttnlangError("a tuple (a, b, ...) is only a route's block: a region of the grid", node.span)

    def expr_IntLit(self, node: ast.IntLit):
        return ir.Const(node.value, Type.INT, node.span)

    def expr_FloatLit(self, node: ast.FloatLit):
        return ir.Const(node.value, Type.FLOAT, node.span)

    def expr_BoolLit(self, node: ast.BoolLit):
        return ir.Const(node.value, Type.BOOL, node.span)

    def expr_Name(self, node: ast.Name):
        name = node.id
        if name in self.lets:
            let = self.lets[name]
            if let.score_span is not None:
                self._read_score(node.span, via=f"let '{name}' reads score (line {let.score_span.line})")
            return let.value
        if name in self.params:
            kind, value = self.params[name]
            if self.symbolic and kind is not Type.BOOL:
                return ir.Var(name, kind, node.span)
            return ir.Const(value, kind, node.span)
        if name == "score":
            self._read_score(node.span)
            return ir.Var("score", Type.FLOAT, node.span)
        if name in ir.VARIABLES:
            return ir.Var(name, ir.VARIABLES[name], node.span)
        if name in self.block_inputs:
            return self._block_read(self.block_inputs[name], node.span)
        if name in self.inputs:
            raise AttnlangError(f"input '{name}' holds one value per token; index it: {name}[q] or {name}[k]",
                                node.span)
        if name in BUILTINS:
            raise AttnlangError(f"'{name}' is a function; call it: {name}(...)", node.span)
        if self.scope.resolve(name) is not None:
            raise AttnlangError(f"'{name}' is a pattern; call it to use its mask: {name}()", node.span)
        candidates = list(self.lets) + list(self.params) + list(ir.VARIABLES) + self.inputs
        raise AttnlangError(f"unknown name '{name}'{did_you_mean(name, candidates)}", node.span)

    @staticmethod
    def _block_read(block_input, span) -> ir.Expr:
        """A block input's value at the pair's blocks: its flattened (heads, query blocks, key
        blocks) entry ((h * QB + q // BQ) * KB + k // BK); a bool one as `!= 0`."""
        name, bq, bk, per_head, dtype = block_input
        def int_(value):
            return ir.Const(value, Type.INT)
        def var(n):
            return ir.Var(n, Type.INT)
        def div(a, b):
            return ir.Binary("//", a, b, Type.INT)
        key_blocks = div(ir.Binary("+", var("n_k"), int_(bk - 1), Type.INT), int_(bk))
        row = div(var("q"), int_(bq))
        if per_head:
            query_blocks = div(ir.Binary("+", var("n_q"), int_(bq - 1), Type.INT), int_(bq))
            row = ir.Binary("+", ir.Binary("*", var("h"), query_blocks, Type.INT), row, Type.INT)
        index = ir.Binary("+", ir.Binary("*", row, key_blocks, Type.INT), div(var("k"), int_(bk)), Type.INT)
        value_type = Type.FLOAT if dtype == "float" else Type.INT
        load = ir.Load(name, fold_constants(index), span, value_type)
        return load if dtype == "float" else ir.Binary("!=", load, int_(0), Type.BOOL, span)

    def _read_score(self, span, via: str | None = None):
        if not self.score_allowed:
            raise AttnlangError("'score' is only available inside score and bias statements", span, note=via)
        if self.score_span is None:
            self.score_span = span

    def expr_Attr(self, node: ast.Attr):
        if node.base not in ("q", "k"):
            raise AttnlangError(f"only q and k have grid coordinates, not '{node.base}'", node.span)
        if self.grid is None:
            raise AttnlangError(f"'{node.base}.{node.attr}' needs a grid statement before it, "
                                f"e.g. grid ({node.attr}, x) = (height, width)", node.span)
        if node.attr not in self.grid.axes:
            hint = did_you_mean(node.attr, self.grid.axes)
            raise AttnlangError(f"the grid has no axis '{node.attr}'{hint} "
                                f"(axes: {', '.join(self.grid.axes)})", node.span)
        divisor, modulus = self.grid.axes[node.attr]
        coordinate: ir.Expr = ir.Var(node.base, Type.INT, node.span)
        if divisor != ir.Const(1, Type.INT):
            coordinate = ir.Binary("//", coordinate, divisor, Type.INT, node.span)
        if modulus is not None:
            coordinate = ir.Binary("%", coordinate, modulus, Type.INT, node.span)
        return coordinate

    def expr_Index(self, node: ast.Index):
        if node.name in self.block_inputs:
            raise AttnlangError(f"'{node.name}' is a block input: write its name alone for its value at the pair's "
                                "blocks", node.span)
        if node.name not in self.inputs:
            if node.name in self.lets or node.name in self.params or node.name in ir.VARIABLES:
                raise AttnlangError(f"'{node.name}' is not an input and cannot be indexed", node.span)
            hint = did_you_mean(node.name, self.inputs)
            raise AttnlangError(f"unknown input '{node.name}'{hint}; declare it: input {node.name}: int[tokens]",
                                node.span)
        index = self.expr(node.index)
        if index.type is not Type.INT:
            raise AttnlangError(f"an input is indexed by an int, found {index.type}", _span_of(node.index))
        if any(isinstance(n, ir.Var) and n.name == "score" for n in ir.walk(index)):
            # the index range is checked before attention runs, so it cannot depend on the scores
            raise AttnlangError("an input index cannot depend on score", _span_of(node.index))
        return ir.Load(node.name, index, node.span, self.input_types.get(node.name, Type.INT))

    def expr_Call(self, node: ast.Call):
        if node.func in BUILTINS:
            return self._builtin_call(node)
        if self.scope.resolve(node.func) is not None:
            used = self._inline_pattern(node.func, node.args, node.kwargs, node.span)
            if used.route is not None:
                raise AttnlangError(f"pattern '{node.func}' routes by content, so its mask is not an "
                                    "expression; include it with 'use'", node.span)
            return used.mask
        candidates = list(BUILTINS) + self._known_patterns()
        raise AttnlangError(f"unknown function '{node.func}'{did_you_mean(node.func, candidates)}", node.span)

    def _builtin_call(self, node: ast.Call) -> ir.Expr:
        builtin = BUILTINS[node.func]
        if node.kwargs:
            raise AttnlangError(f"{node.func} takes no keyword arguments", node.kwargs[0].span)
        count = len(node.args)
        if count < builtin.min_args or (builtin.max_args is not None and count > builtin.max_args):
            raise AttnlangError(f"{node.func} takes {builtin.describe_arity()}, got {count}", node.span)
        args = [self.expr(a) for a in node.args]
        for arg, arg_ast in zip(args, node.args):
            if not arg.type.is_number:
                raise AttnlangError(f"{node.func} expects numbers, found {arg.type}", _span_of(arg_ast))
            if builtin.int_args and arg.type is not Type.INT:
                raise AttnlangError(f"{node.func} expects ints, found {arg.type}", _span_of(arg_ast))
        result_type = builtin.result_type([a.type for a in args])
        if builtin.result == "same":
            args = [_to_float(a) if result_type is Type.FLOAT else a for a in args]
        elif builtin.result == "float":
            args = [_to_float(a) for a in args]
        if node.func == "clamp":  # sugar: clamp(x, lo, hi) = min(max(x, lo), hi)
            x, lo, hi = args
            inner = ir.Call("max", (x, lo), result_type, node.span)
            return ir.Call("min", (inner, hi), result_type, node.span)
        if node.func in ("min", "max") and len(args) > 2:  # n-ary → nested binary
            result = args[0]
            for arg in args[1:]:
                result = ir.Call(node.func, (result, arg), result_type, node.span)
            return result
        if node.func in ("floor", "ceil") and args[0].type is Type.INT:
            return args[0]
        return ir.Call(node.func, tuple(args), result_type, node.span)

    def expr_Unary(self, node: ast.Unary):
        operand = self.expr(node.operand)
        if node.op == "not":
            if operand.type is not Type.BOOL:
                raise AttnlangError(f"'not' expects a bool, found {operand.type}", _span_of(node.operand))
            return ir.Unary("not", operand, Type.BOOL, node.span)
        if not operand.type.is_number:
            raise AttnlangError(f"unary '-' expects a number, found {operand.type}", _span_of(node.operand))
        return ir.Unary("-", operand, operand.type, node.span)

    def expr_Binary(self, node: ast.Binary):
        left, right = self.expr(node.left), self.expr(node.right)
        op = ir.BinaryOp(node.op)
        if op in ir.LOGIC:
            for value, side in ((left, node.left), (right, node.right)):
                if value.type is not Type.BOOL:
                    raise AttnlangError(f"'{node.op}' expects bools, found {value.type}", _span_of(side))
            return ir.Binary(node.op, left, right, Type.BOOL, node.span)
        if op in ir.COMPARISONS:
            return self._comparison(node, left, right)
        return self._arithmetic(node, left, right)

    def _comparison(self, node, left, right):
        if left.type is Type.BOOL or right.type is Type.BOOL:
            if left.type == right.type and node.op in ("==", "!="):
                return ir.Binary(node.op, left, right, Type.BOOL, node.span)
            wrong = node.left if left.type is Type.BOOL else node.right
            if left.type != right.type:
                raise AttnlangError(f"'{node.op}' cannot compare a bool with a number", _span_of(node))
            raise AttnlangError(f"'{node.op}' expects numbers, found bool", _span_of(wrong))
        left, right = _promote(left, right)
        return ir.Binary(node.op, left, right, Type.BOOL, node.span)

    def _arithmetic(self, node, left, right):
        for value, side in ((left, node.left), (right, node.right)):
            if not value.type.is_number:
                raise AttnlangError(f"'{node.op}' expects numbers, found bool", _span_of(side))
        op = node.op
        if op in ("/", "//", "%") and _is_zero(fold_constants(right)):
            raise AttnlangError(f"division by zero ('{op}' by a constant 0)", _span_of(node.right))
        if op == "/":
            return ir.Binary("/", _to_float(left), _to_float(right), Type.FLOAT, node.span)
        if op == "**":
            # int ** int stays int only for a literal, non-negative exponent (as in Python,
            # where 2 ** -1 is a float); otherwise the power is float.
            exact = (left.type is Type.INT and isinstance(node.right, ast.IntLit) and node.right.value >= 0)
            if exact:
                return ir.Binary("**", left, right, Type.INT, node.span)
            return ir.Binary("**", _to_float(left), _to_float(right), Type.FLOAT, node.span)
        left, right = _promote(left, right)
        return ir.Binary(op, left, right, left.type, node.span)

    def expr_IfExpr(self, node: ast.IfExpr):
        cond = self.expr(node.cond)
        if cond.type is not Type.BOOL:
            raise AttnlangError(f"'if' expects a bool condition, found {cond.type}", _span_of(node.cond))
        then, orelse = self.expr(node.then), self.expr(node.orelse)
        if (then.type is Type.BOOL) != (orelse.type is Type.BOOL):
            raise AttnlangError(f"both branches of 'if' must have the same type, found {then.type} "
                                f"and {orelse.type}", _span_of(node.orelse))
        then, orelse = _promote(then, orelse)
        return ir.Select(cond, then, orelse, then.type, node.span)


def _span_of(node) -> Span | None:
    return getattr(node, "span", None)


def _is_zero(expr: ir.Expr) -> bool:
    return isinstance(expr, ir.Const) and expr.type.is_number and expr.value == 0


def _to_float(expr: ir.Expr) -> ir.Expr:
    if expr.type is Type.FLOAT:
        return expr
    return ir.Cast(expr, Type.FLOAT, getattr(expr, "span", None))


def _promote(left: ir.Expr, right: ir.Expr) -> tuple[ir.Expr, ir.Expr]:
    if Type.FLOAT in (left.type, right.type):
        return _to_float(left), _to_float(right)
    return left, right
