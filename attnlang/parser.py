"""Source text → AST (`attnlang.ast`), with lark errors turned into `AttnlangError`s.

The grammar lives in `grammar.lark`; every alternative there has an alias, and
`_ToAst` has one method per alias.
"""

from __future__ import annotations

import functools
import math
import re
from importlib import resources

import lark
from lark import Transformer, v_args

from . import ast
from .errors import AttnlangError, Source, Span

__all__ = ["parse_source", "KEYWORDS"]

KEYWORDS = frozenset(
    "pattern let mask bias score grid input use route if then else and or not true false".split()
)

# What the terminals of the grammar are called in messages.
_TERMINAL_WORDS = {
    "NAME": "a name", "INT": "an integer", "FLOAT": "a number", "COMP_OP": "a comparison",
    "$END": "the end of the file", "SCORE": "'score'",
}

# Characters people bring from other languages, and what to write instead.
_CHARACTER_HINTS = {
    "&": "write 'and' instead of '&&' or '&'",
    "|": "write 'or' instead of '||' or '|'",
    "!": "write 'not' instead of '!'",
    "?": "write 'if C then A else B' instead of 'C ? A : B'",
    ";": "statements end at the next keyword; drop the ';'",
    "^": "write '**' for a power",
    "'": "strings are not part of the language",
    '"': "strings are not part of the language",
}

INPUT_DTYPES = ("int", "float")         # what `input NAME: DTYPE[tokens]` declares
BLOCK_INPUT_DTYPES = ("bool", "float")  # and `input NAME: DTYPE[blocks(BQ, BK)]`


@functools.cache
def _parser() -> lark.Lark:
    grammar = resources.files("attnlang").joinpath("grammar.lark").read_text()
    # The basic lexer reserves keywords everywhere; the contextual one would accept
    # `let` as a parameter name where no keyword fits.
    return lark.Lark(grammar, parser="lalr", lexer="basic", propagate_positions=True,
                     maybe_placeholders=True)


def parse_source(source: Source) -> ast.Module:
    """Parse a whole program; raise `AttnlangError` pointing at the first syntax error."""
    try:
        tree = _parser().parse(source.text)
    except lark.exceptions.UnexpectedCharacters as err:
        raise _character_error(source, err) from None
    except lark.exceptions.UnexpectedToken as err:
        raise _token_error(source, err) from None
    except lark.exceptions.UnexpectedEOF:  # pragma: no cover - LALR reports $END tokens
        raise AttnlangError("unexpected end of file", _end_span(source)) from None
    try:
        return _ToAst(source).transform(tree)
    except lark.exceptions.VisitError as err:
        if isinstance(err.orig_exc, AttnlangError):
            raise err.orig_exc from None
        raise
    except RecursionError:
        raise AttnlangError("expression nested too deeply", _end_span(source)) from None


def _chain(op: str, operands: list) -> ast.Expr:
    """`a op b op c ...` as nested `ast.Binary`s. A short chain nests to the left, as it
    reads; a longer one (generated patterns have thousands of terms) is split in halves, so
    every later stage recurses log(n) deep instead of n. `and` and `or` are associative, so
    the meaning is the same, and the printed form re-parses to the same tree."""
    if len(operands) <= ast.LEFT_DEEP_CHAIN:
        tree = operands[0]
        for right in operands[1:]:
            tree = ast.Binary(op, tree, right, _joined(tree.span, right.span))
        return tree
    middle = len(operands) // 2
    left, right = _chain(op, operands[:middle]), _chain(op, operands[middle:])
    return ast.Binary(op, left, right, _joined(left.span, right.span))


def _joined(first: Span | None, last: Span | None) -> Span | None:
    if first is None or last is None:
        return first or last
    return Span(first.line, first.column, last.end_line, last.end_column, first.source)


# -- error translation ---------------------------------------------------------------------

def _end_span(source: Source) -> Span:
    lines = source.text.splitlines() or [""]
    return Span(len(lines), len(lines[-1]) + 1, len(lines), len(lines[-1]) + 2, source)


def _character_error(source: Source, err: lark.exceptions.UnexpectedCharacters) -> AttnlangError:
    char = source.text[err.pos_in_stream]
    span = Span(err.line, err.column, err.line, err.column + 1, source)
    hint = _CHARACTER_HINTS.get(char)
    if char == "!" and source.text[err.pos_in_stream + 1: err.pos_in_stream + 2] == "=":
        hint = None
    message = f"unexpected character {char!r}"
    return AttnlangError(message + (f"; {hint}" if hint else ""), span)


def _describe_terminal(name: str) -> str:
    if name in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[name]
    for terminal in _parser().terminals:
        if terminal.name == name and isinstance(terminal.pattern, lark.lexer.PatternStr):
            return repr(terminal.pattern.value)
    return name.lower()


def _describe_expected(expected: set[str]) -> str:
    words = sorted({_describe_terminal(name) for name in expected})
    if len(words) > 6:
        words = words[:6] + ["..."]
    return ", ".join(words)


def _token_error(source: Source, err: lark.exceptions.UnexpectedToken) -> AttnlangError:
    token = err.token
    if token.type == "$END":
        span = _end_span(source)
        return AttnlangError(f"unexpected end of file; expected {_describe_expected(err.expected)}",
                             span, note="is a '}' or ')' missing?")
    span = _token_span(source, token)
    value = str(token)
    previous = _previous_token_text(source, token)
    if token.type in ("NAME", "INT", "FLOAT") and previous is not None \
            and re.fullmatch(r"\d[\d.eE+-]*|\.\d[\d.eE+-]*", previous):
        whole = Span(span.line, span.column - len(previous), span.end_line, span.end_column, source)
        return AttnlangError(f"bad literal '{previous}{value}'", whole)
    if value in KEYWORDS and "NAME" in err.expected:
        return AttnlangError(f"'{value}' is a keyword and cannot be used as a name", span)
    if value == "=" and "COMP_OP" in err.expected:
        if source.text[token.end_pos: token.end_pos + 1] == ">":
            return AttnlangError("unknown operator '=>'; did you mean '>='?", span)
        return AttnlangError("'=' binds a name; to compare, write '=='", span)
    found = "end of file" if token.type == "$END" else repr(value)
    return AttnlangError(f"unexpected {found}; expected {_describe_expected(err.expected)}", span)


def _token_span(source: Source, token: lark.Token) -> Span:
    end_line = token.end_line or token.line
    end_column = token.end_column or token.column + len(str(token))
    return Span(token.line, token.column, end_line, end_column, source)


def _previous_token_text(source: Source, token: lark.Token) -> str | None:
    """The text glued to the left of `token` (no space between), if any."""
    start = token.start_pos
    if start is None or start == 0 or source.text[start - 1].isspace():
        return None
    match = re.search(r"[\w.]+$", source.text[:start])
    return match.group(0) if match else None


# -- tree → AST ----------------------------------------------------------------------------

def _meta_span(source: Source, meta) -> Span | None:
    if getattr(meta, "empty", True):
        return None
    return Span(meta.line, meta.column, meta.end_line, meta.end_column, source)


def _doc_comment(source: Source, line: int) -> str:
    """The `#` comment lines directly above line `line`, without the `#`."""
    lines = source.text.splitlines()
    doc: list[str] = []
    index = line - 2
    while index >= 0 and lines[index].lstrip().startswith("#"):
        doc.append(lines[index].lstrip()[1:].strip())
        index -= 1
    return "\n".join(reversed(doc))


@v_args(meta=True)
class _ToAst(Transformer):
    """One method per grammar alias; each returns the AST node of that name."""

    def __init__(self, source: Source):
        super().__init__()
        self.source = source

    def _span(self, meta) -> Span | None:
        return _meta_span(self.source, meta)

    def _token_span(self, token) -> Span:
        return _token_span(self.source, token)

    # program structure
    def start(self, meta, patterns):
        return ast.Module(tuple(patterns))

    def pattern(self, meta, children):
        name, *rest = children
        params = tuple(p for p in rest if isinstance(p, ast.Param))
        body = tuple(s for s in rest if isinstance(s, ast.Stmt))
        span = self._token_span(name)
        return ast.PatternDecl(str(name), params, body, span, _doc_comment(self.source, meta.line))

    def param(self, meta, children):
        name, default = children
        return ast.Param(str(name), default, self._token_span(name))

    # literals
    def int_lit(self, meta, children):
        return self._int(children[0], negative=False)

    def neg_int_lit(self, meta, children):
        return self._int(children[1], negative=True, start=children[0])

    def float_lit(self, meta, children):
        return self._float(children[0], negative=False)

    def neg_float_lit(self, meta, children):
        return self._float(children[1], negative=True, start=children[0])

    def true_lit(self, meta, children):
        return ast.BoolLit(True, self._span(meta))

    def false_lit(self, meta, children):
        return ast.BoolLit(False, self._span(meta))

    def _literal_span(self, token, start):
        span = self._token_span(token)
        if start is not None:
            span = Span(start.line, start.column, span.end_line, span.end_column, self.source)
        return span

    def _int(self, token, negative, start=None):
        span = self._literal_span(token, start)
        text = str(token)
        if len(text) > 1 and text.startswith("0"):
            raise AttnlangError(f"bad literal '{text}': integers have no leading zeros", span)
        value = -int(text) if negative else int(text)
        if not -(2**63) <= value < 2**63:
            raise AttnlangError(f"integer literal {text} does not fit in 64 bits", span)
        return ast.IntLit(value, span)

    def _float(self, token, negative, start=None):
        span = self._literal_span(token, start)
        value = float(str(token))
        if math.isinf(value):
            raise AttnlangError(f"float literal {token} is too large", span)
        return ast.FloatLit(-value if negative else value, span)

    # statements
    def let(self, meta, children):
        name, value = children
        return ast.Let(str(name), value, self._span(meta))

    def mask(self, meta, children):
        return ast.Mask(children[0], self._span(meta))

    def bias(self, meta, children):
        return ast.Bias(children[0], self._span(meta))

    def score(self, meta, children):
        return ast.Score(children[1], self._span(meta))

    def grid(self, meta, children):
        names, sizes = children
        return ast.Grid(tuple(str(n) for n in names), tuple(sizes), self._span(meta))

    def names(self, meta, children):
        return list(children)

    def exprs(self, meta, children):
        return list(children)

    def input(self, meta, children):
        name, dtype, extent = children
        if str(dtype) not in INPUT_DTYPES:
            raise AttnlangError(f"an input holds ints or floats, one per token: write 'int' or 'float', not '{dtype}'",
                                self._token_span(dtype))
        if str(extent) != "tokens":
            raise AttnlangError(f"inputs have one entry per token: write '[tokens]', not '[{extent}]'",
                                self._token_span(extent))
        return ast.Input(str(name), str(dtype), span=self._span(meta))

    def block_input(self, meta, children):
        name, dtype, heads, extent, sizes = children
        if str(dtype) not in BLOCK_INPUT_DTYPES:
            raise AttnlangError(f"a block input holds bools (a block mask) or floats (block scores): write 'bool' or "
                                f"'float', not '{dtype}'", self._token_span(dtype))
        if heads is not None and str(heads) != "heads":
            raise AttnlangError(f"a block input's first axis is 'heads' (one map per head), not '{heads}'",
                                self._token_span(heads))
        if str(extent) != "blocks" or len(sizes) not in (1, 2):
            raise AttnlangError("a block input is indexed by blocks: write [blocks(BQ, BK)] or [heads, blocks(BQ, "
                                "BK)] (BQ query tokens by BK key tokens; blocks(B) for square ones)",
                                self._token_span(extent))
        return ast.Input(str(name), str(dtype), "blocks", self._span(meta), tuple(sizes), heads is not None)

    def use(self, meta, children):
        name, arguments = children
        args, kwargs = arguments or ((), ())
        return ast.Use(str(name), args, kwargs, self._span(meta))

    def route(self, meta, children):
        name, arguments = children
        args, kwargs = arguments or ((), ())
        return ast.Route(str(name), args, kwargs, self._span(meta))

    def arguments(self, meta, children):
        args = [c for c in children if not isinstance(c, ast.Keyword)]
        kwargs = [c for c in children if isinstance(c, ast.Keyword)]
        seen_keyword = False
        for child in children:
            if isinstance(child, ast.Keyword):
                seen_keyword = True
            elif seen_keyword:
                raise AttnlangError("a positional argument cannot follow a keyword argument",
                                    getattr(child, "span", None))
        return tuple(args), tuple(kwargs)

    def keyword(self, meta, children):
        name, value = children
        return ast.Keyword(str(name), value, self._token_span(name))

    def keyword_tuple(self, meta, children):
        name, *items = children
        return ast.Keyword(str(name), ast.Tuple(tuple(items), self._span(meta)), self._token_span(name))

    # expressions
    def if_expr(self, meta, children):
        return ast.IfExpr(*children, span=self._span(meta))

    def or_op(self, meta, children):
        return _chain("or", children)

    def and_op(self, meta, children):
        return _chain("and", children)

    def not_op(self, meta, children):
        return ast.Unary("not", children[0], self._span(meta))

    def compare(self, meta, children):
        if len(children) > 3:
            raise AttnlangError("comparisons do not chain; write 'a < b and b < c'",
                                self._token_span(children[3]))
        left, op, right = children
        return ast.Binary(str(op), left, right, self._span(meta))

    def binary(self, meta, children):
        left, op, right = children
        return ast.Binary(str(op), left, right, self._span(meta))

    def neg(self, meta, children):
        operand = children[1]
        # A minus glued to a number is a negative literal, so the tree of `-3` is IntLit(-3).
        if isinstance(operand, ast.IntLit | ast.FloatLit) and operand.value >= 0:
            return type(operand)(-operand.value, self._span(meta))
        return ast.Unary("-", operand, self._span(meta))

    def call(self, meta, children):
        name, arguments = children
        args, kwargs = arguments or ((), ())
        return ast.Call(str(name), args, kwargs, self._span(meta))

    def index(self, meta, children):
        name, index = children
        return ast.Index(str(name), index, self._span(meta))

    def attr(self, meta, children):
        base, attr = children
        return ast.Attr(str(base), str(attr), self._span(meta))

    def name(self, meta, children):
        return ast.Name(str(children[0]), self._span(meta))
