"""The typed intermediate representation: the single thing every later stage consumes.

Parameters are bound, `let` and `use` are inlined, `grid` coordinates are lowered to `//`
and `%`, numeric promotions are explicit (`Cast`), and constants are folded. Nodes are
frozen, hashable dataclasses; `str(node)` is attnlang source that parses back to the same
IR. Consumers (reference evaluator, analysis, code generators) are visitors with one
method per node class in `NODE_TYPES`; a test checks that none is missing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

from .errors import Span

__all__ = [
    "Type", "BinaryOp", "UnaryOp", "Func", "ARITHMETIC", "COMPARISONS", "LOGIC", "Expr", "Const", "Var", "Load", "Cast", "Unary", "Binary", "Call", "Select",
    "NODE_TYPES", "VARIABLES", "RouteIR", "PatternIR", "Visitor", "children", "walk",
    "replace_children", "substitute", "TRUE", "FALSE", "float_inputs", "block_axes",
]


class Type(enum.Enum):
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"

    def __str__(self) -> str:
        return self.value

    @property
    def is_number(self) -> bool:
        return self is not Type.BOOL


# -- the op vocabulary, declared once ---------------------------------------------------------
#
# Every consumer's table (reference, intervals, export, Triton, derivative, closed forms,
# simulator cost, checker, printer) is keyed by these enums, and tests/test_ops.py runs every
# member through every consumer, so an operator cannot be forgotten or half-implemented.
# They are StrEnums: a member equals, hashes and prints as its source spelling.

class BinaryOp(enum.StrEnum):
    ADD = "+"
    SUB = "-"
    MUL = "*"
    DIV = "/"          # always float
    FLOOR_DIV = "//"   # floor division, Python's semantics
    MOD = "%"          # floor modulo, Python's semantics
    POW = "**"
    EQ = "=="
    NE = "!="
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="
    AND = "and"
    OR = "or"


ARITHMETIC = (BinaryOp.ADD, BinaryOp.SUB, BinaryOp.MUL, BinaryOp.DIV, BinaryOp.FLOOR_DIV, BinaryOp.MOD,
              BinaryOp.POW)
COMPARISONS = (BinaryOp.EQ, BinaryOp.NE, BinaryOp.LT, BinaryOp.LE, BinaryOp.GT, BinaryOp.GE)
LOGIC = (BinaryOp.AND, BinaryOp.OR)


class UnaryOp(enum.StrEnum):
    NEG = "-"
    NOT = "not"


class Func(enum.StrEnum):
    """The builtin functions as the IR holds them (`clamp` is lowered to `min`/`max`);
    arity and typing are in `attnlang.builtins.BUILTINS`."""

    ABS = "abs"
    MIN = "min"
    MAX = "max"
    FLOOR = "floor"
    CEIL = "ceil"
    LOG = "log"
    LOG2 = "log2"
    EXP = "exp"
    SQRT = "sqrt"
    TANH = "tanh"
    HASH = "hash"


# The names every body can use, and their types (LANGUAGE.md).
VARIABLES = {
    "q": Type.INT, "k": Type.INT, "h": Type.INT, "b": Type.INT,
    "n_q": Type.INT, "n_k": Type.INT, "heads": Type.INT, "score": Type.FLOAT,
}


def _span():
    return field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Expr:
    def __str__(self) -> str:
        from .printer import print_expr
        return print_expr(to_ast(self))


@dataclass(frozen=True, eq=True)
class Const(Expr):
    value: int | float | bool
    type: Type
    span: Span | None = _span()

    def __eq__(self, other):
        # 1 == 1.0 == True in Python; constants of different types are different nodes.
        return isinstance(other, Const) and self.type == other.type and (
            self.value == other.value or (self.value != self.value and other.value != other.value))

    def __hash__(self):
        return hash((Const, self.type, self.value))


@dataclass(frozen=True)
class Var(Expr):
    """A built-in name: q, k, h, b, n_q, n_k, heads, or score (the logit so far)."""

    name: str
    type: Type
    span: Span | None = _span()


@dataclass(frozen=True)
class Load(Expr):
    """`input[index]`: one value of a runtime input, per token (an int, or a float for
    `input NAME: float[tokens]`)."""

    input: str
    index: Expr
    span: Span | None = _span()
    type: Type = Type.INT


def float_inputs(pattern: "PatternIR") -> tuple[str, ...]:
    """The inputs the pattern reads as floats (`input NAME: float[tokens]`, or a float block input)."""
    roots = [pattern.mask, pattern.logit] + ([pattern.route.keep] if pattern.route else [])
    read = [n.input for root in roots for n in walk(root) if isinstance(n, Load) and n.type is Type.FLOAT]
    declared = list(pattern.declared_floats) + [b[0] for b in pattern.block_inputs if b[4] == "float"]
    return tuple(dict.fromkeys(read + declared))


def block_axes(pattern: "PatternIR") -> dict[str, int]:
    """Each block input's axes past the batch: ([heads,] query blocks, key blocks)."""
    return {name: 3 if per_head else 2 for name, _, _, per_head, _ in pattern.block_inputs}


@dataclass(frozen=True)
class Cast(Expr):
    """An int promoted to float where it meets a float (explicit so printers need no rules)."""

    operand: Expr
    type: Type = Type.FLOAT
    span: Span | None = _span()


@dataclass(frozen=True)
class Unary(Expr):
    op: UnaryOp
    operand: Expr
    type: Type
    span: Span | None = _span()

    def __post_init__(self):
        object.__setattr__(self, "op", UnaryOp(self.op))  # a spelling becomes its member


@dataclass(frozen=True)
class Binary(Expr):
    """Arithmetic (+ - * / // % **), comparison (== != < <= > >=) or logic (and, or).

    `//` and `%` have Python's floor semantics, for negative operands too.
    """

    op: BinaryOp
    left: Expr
    right: Expr
    type: Type
    span: Span | None = _span()

    def __post_init__(self):
        object.__setattr__(self, "op", BinaryOp(self.op))


@dataclass(frozen=True)
class Call(Expr):
    """A builtin function (`attnlang.builtins.BUILTINS`); clamp is lowered to min/max."""

    func: Func
    args: tuple[Expr, ...]
    type: Type
    span: Span | None = _span()

    def __post_init__(self):
        object.__setattr__(self, "func", Func(self.func))


@dataclass(frozen=True)
class Select(Expr):
    """`if cond then then else orelse`."""

    cond: Expr
    then: Expr
    orelse: Expr
    type: Type
    span: Span | None = _span()


NODE_TYPES = (Const, Var, Load, Cast, Unary, Binary, Call, Select)

TRUE = Const(True, Type.BOOL)
FALSE = Const(False, Type.BOOL)


@dataclass(frozen=True)
class RouteIR:
    """`route topk(top, block = B, qblock = B | 1, pool = mean, qpool = mean, share = head,
    keep = EXPR)`: content-based block routing (docs/language.md, Routing)."""

    top: int
    block: int
    pool: str
    keep: Expr
    qblock: int | None = None  # query granularity: None is `block`; 1 routes every query token
    qpool: str = "mean"        # a query block's score: its mean query's, or the max over its queries
    share: str = "head"        # one selection per head, per GQA group, or for all heads
    top_p: float | None = None  # `top_p(P, max = top)`: the fewest best blocks whose softmax mass reaches P
    # `block = (a, b, ...)`: a region of the pattern's grid (block = a * b * ...); its tokens are
    # contiguous only in the region layout (attnlang.layout.region_layout), where it routes
    region: tuple[int, ...] | None = None
    # `by = NAME`: a float block input of blocks(units, block) whose values are the scores
    by: str | None = None
    span: Span | None = _span()

    @property
    def query_block(self) -> int:
        return self.block if self.qblock is None else self.qblock

    def options(self) -> str:
        """The non-default options as source: `, qblock = 1, pool = max`."""
        parts = [f", qblock = {self.qblock}" if self.qblock is not None else "",
                 f", pool = {self.pool}" if self.pool != "mean" else "",
                 f", qpool = {self.qpool}" if self.qpool != "mean" else "",
                 f", share = {self.share}" if self.share != "head" else "",
                 f", by = {self.by}" if self.by else ""]
        return "".join(parts)


@dataclass(frozen=True)
class PatternIR:
    """A checked pattern with its parameters bound.

    `mask` is the conjunction of every `mask` statement (TRUE when there is none).
    `logit` is the final logit as an expression of `Var("score")`, the scaled q·k:
    each `bias E` adds E, each `score E` replaces it, in source order.
    """

    name: str
    params: tuple[tuple[str, int | float | bool], ...]
    mask: Expr
    logit: Expr
    inputs: tuple[str, ...] = ()
    route: RouteIR | None = None
    # `grid (A, B) = (SA, SB)`: axis names and sizes, outermost first (the coordinates are
    # already lowered to `//` and `%` of q and k in mask and logit; layouts read the grid)
    grid: tuple[tuple[str, Expr], ...] = ()
    span: Span | None = _span()
    # `input m: bool[heads, blocks(BQ, BK)]`: (name, BQ, BK, per head, dtype) of each block input,
    # read as a per-token input of its flattened values (index lowered in mask and logit)
    block_inputs: tuple[tuple[str, int, int, bool, str], ...] = ()
    declared_floats: tuple[str, ...] = ()  # `input NAME: float[tokens]`, read or not
    # a laid-out pattern's row-major (seq_q, seq_k): its positions read the inputs at their
    # tokens, so the inputs keep the row-major lengths and order (`attnlang.layout.apply`)
    input_lengths: tuple[int, int] | None = None

    def with_mask(self, mask: Expr) -> "PatternIR":
        """This pattern with `mask` alone (no routing, no grid), its logit and inputs as they are:
        a routing's static, candidate or kept part."""
        return replace(self, mask=mask, route=None, grid=())

    @property
    def param_dict(self) -> dict:
        return dict(self.params)

    def uses(self, name: str) -> bool:
        """Whether the mask, logit or routing refers to built-in variable `name`."""
        roots = [self.mask, self.logit] + ([self.route.keep] if self.route else [])
        return any(isinstance(n, Var) and n.name == name for root in roots for n in walk(root))

    def __str__(self) -> str:
        args = ", ".join(f"{k} = {_literal_text(v)}" for k, v in self.params)
        lines = [f"pattern {self.name}({args}) {{"]
        floats, blocks = float_inputs(self), {b[0]: b for b in self.block_inputs}
        for name in self.inputs:
            if name in blocks:
                _, bq, bk, per_head, dtype = blocks[name]
                lines.append(f"    input {name}: {dtype}[{'heads, ' if per_head else ''}blocks({bq}, {bk})]")
            else:
                lines.append(f"    input {name}: {'float' if name in floats else 'int'}[tokens]")
        lines.append(f"    mask {self.mask}")
        if self.logit != Var("score", Type.FLOAT):
            lines.append(f"    score {self.logit}")
        if self.route:
            r = self.route
            selector = f"topk({r.top}" if r.top_p is None else f"top_p({r.top_p!r}, max = {r.top}"
            block = f"({', '.join(map(str, r.region))})" if r.region else r.block
            lines.append(f"    route {selector}, block = {block}{r.options()}, keep = {r.keep})")
        return "\n".join(lines + ["}"]) + "\n"


def _literal_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


# -- traversal -----------------------------------------------------------------------------

def children(node: Expr) -> tuple[Expr, ...]:
    match node:
        case Const() | Var():
            return ()
        case Load(_, index):
            return (index,)
        case Cast(operand) | Unary(_, operand):
            return (operand,)
        case Binary(_, left, right):
            return (left, right)
        case Call(_, args):
            return args
        case Select(cond, then, orelse):
            return (cond, then, orelse)
    raise TypeError(f"not an IR node: {node!r}")


def replace_children(node: Expr, new: tuple[Expr, ...]) -> Expr:
    """A copy of `node` with its children replaced (same order as `children`)."""
    match node:
        case Const() | Var():
            return node
        case Load():
            return Load(node.input, new[0], node.span, node.type)
        case Cast():
            return Cast(new[0], node.type, node.span)
        case Unary():
            return Unary(node.op, new[0], node.type, node.span)
        case Binary():
            return Binary(node.op, new[0], new[1], node.type, node.span)
        case Call():
            return Call(node.func, tuple(new), node.type, node.span)
        case Select():
            return Select(new[0], new[1], new[2], node.type, node.span)
    raise TypeError(f"not an IR node: {node!r}")


def walk(node: Expr):
    """Every node of the tree, parents before children."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed(children(current)))


def substitute(node: Expr, replacements: dict[Expr, Expr]) -> Expr:
    """Replace every occurrence of a key node by its value (used to compose score transforms)."""
    if node in replacements:
        return replacements[node]
    kids = children(node)
    if not kids:
        return node
    return replace_children(node, tuple(substitute(c, replacements) for c in kids))


class Visitor:
    """Base of IR consumers: `visit(node)` calls `visit_<NodeClass>(node)`."""

    def visit(self, node: Expr):
        return getattr(self, "visit_" + type(node).__name__)(node)


# -- printing (IR → AST → text) ------------------------------------------------------------

def to_ast(node: Expr):
    """The AST expression that prints as this IR node (casts are implicit in the source)."""
    from . import ast
    match node:
        case Const(value, Type.BOOL):
            return ast.BoolLit(bool(value))
        case Const(value, Type.INT):
            return ast.IntLit(int(value))
        case Const(value, Type.FLOAT):
            return ast.FloatLit(float(value))
        case Var(name):
            return ast.Name(name)
        case Load(name, index):
            return ast.Index(name, to_ast(index))
        case Cast(operand):
            return to_ast(operand)
        case Unary(op, operand):
            return ast.Unary(op, to_ast(operand))
        case Binary(op, left, right):
            return ast.Binary(op, to_ast(left), to_ast(right))
        case Call(func, args):
            return ast.Call(func, tuple(to_ast(a) for a in args))
        case Select(cond, then, orelse):
            return ast.IfExpr(to_ast(cond), to_ast(then), to_ast(orelse))
    raise TypeError(f"not an IR node: {node!r}")
