"""The syntax tree of a pattern program, as the parser builds it.

Every node is a frozen dataclass with a `span` (where it came from) that takes no part
in equality, so `parse(print(tree)) == tree` compares structure only. The checker
(`attnlang.checker`) turns this tree into the typed IR; nothing else consumes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import Span
from .ir import ARITHMETIC, COMPARISONS, LOGIC

__all__ = [
    "Node", "Expr", "IntLit", "FloatLit", "BoolLit", "Name", "Attr", "Index", "Keyword", "Call",
    "Unary", "Binary", "IfExpr", "Tuple", "Stmt", "Let", "Mask", "Bias", "Score", "Grid", "Input", "Use",
    "Route", "Param", "PatternDecl", "Module", "ARITHMETIC_OPS", "COMPARISON_OPS", "LOGICAL_OPS", "LEFT_DEEP_CHAIN",
]

# the surface spellings of the IR's operator vocabulary (attnlang.ir declares it once)
ARITHMETIC_OPS = tuple(op.value for op in ARITHMETIC)
COMPARISON_OPS = tuple(op.value for op in COMPARISONS)
LOGICAL_OPS = tuple(op.value for op in LOGIC)
# Operands of an and/or chain that stay nested to the left, as written; a longer chain is
# nested in halves (parser) and printed so that it re-parses to the same tree (printer).
LEFT_DEEP_CHAIN = 32


def _span():
    return field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Node:
    pass


# -- expressions ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Expr(Node):
    pass


@dataclass(frozen=True)
class IntLit(Expr):
    value: int
    span: Span | None = _span()


@dataclass(frozen=True)
class FloatLit(Expr):
    value: float
    span: Span | None = _span()


@dataclass(frozen=True)
class BoolLit(Expr):
    value: bool
    span: Span | None = _span()


@dataclass(frozen=True)
class Name(Expr):
    id: str
    span: Span | None = _span()


@dataclass(frozen=True)
class Attr(Expr):
    """`q.y`: the coordinate of a token on the pattern's grid."""

    base: str
    attr: str
    span: Span | None = _span()


@dataclass(frozen=True)
class Index(Expr):
    """`doc[q]`: a load from a declared runtime input."""

    name: str
    index: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class Keyword(Node):
    name: str
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class Tuple(Expr):
    """`(a, b, ...)`: only as a keyword argument's value (route's `block = (a, b)`, a grid region)."""

    items: tuple[Expr, ...]
    span: Span | None = _span()


@dataclass(frozen=True)
class Call(Expr):
    """A builtin (`min(a, b)`) or a pattern used as its mask (`streaming(1024, 4)`)."""

    func: str
    args: tuple[Expr, ...] = ()
    kwargs: tuple[Keyword, ...] = ()
    span: Span | None = _span()


@dataclass(frozen=True)
class Unary(Expr):
    op: str  # "-" or "not"
    operand: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class Binary(Expr):
    op: str  # one of ARITHMETIC_OPS, COMPARISON_OPS, LOGICAL_OPS
    left: Expr
    right: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class IfExpr(Expr):
    cond: Expr
    then: Expr
    orelse: Expr
    span: Span | None = _span()


# -- statements ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Stmt(Node):
    pass


@dataclass(frozen=True)
class Let(Stmt):
    name: str
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class Mask(Stmt):
    expr: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class Bias(Stmt):
    expr: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class Score(Stmt):
    expr: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class Grid(Stmt):
    axes: tuple[str, ...]
    sizes: tuple[Expr, ...]
    span: Span | None = _span()


@dataclass(frozen=True)
class Input(Stmt):
    name: str
    dtype: str = "int"
    extent: str = "tokens"
    span: Span | None = _span()
    # a block input (`bool[heads, blocks(BQ, BK)]`): its block sizes, and whether it has a head axis
    blocks: tuple[Expr, ...] = ()
    per_head: bool = False


@dataclass(frozen=True)
class Use(Stmt):
    name: str
    args: tuple[Expr, ...] = ()
    kwargs: tuple[Keyword, ...] = ()
    span: Span | None = _span()


@dataclass(frozen=True)
class Route(Stmt):
    func: str
    args: tuple[Expr, ...] = ()
    kwargs: tuple[Keyword, ...] = ()
    span: Span | None = _span()


# -- declarations --------------------------------------------------------------------------

@dataclass(frozen=True)
class Param(Node):
    name: str
    default: IntLit | FloatLit | BoolLit
    span: Span | None = _span()


@dataclass(frozen=True)
class PatternDecl(Node):
    name: str
    params: tuple[Param, ...]
    body: tuple[Stmt, ...]
    span: Span | None = _span()
    doc: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True)
class Module(Node):
    patterns: tuple[PatternDecl, ...]
