"""A differential fuzzer: random attnlang programs, every consumer checked against another.

Programs are drawn over the whole language (hypothesis strategies) as a small AST of our
own, with our own typing rules and our own printer (minimal parentheses), so the parser and
the checker are under test too. Each program is then handed to the consumers:

    reference  `reference_mask` and the reference logit against two scalar evaluators
               written here: one over the IR, one over our own AST (the source-level
               meaning of let/use/grid/bias/score, so the lowering is checked as well);
    analysis   `analyze` tile by tile against the dense reference mask: FULL tiles all
               true, EMPTY all false (soundness), PARTIAL tiles that are really FULL or
               EMPTY counted (exactness, a statistic); `pairs(exact=True)` too;
    flex       `flex_mods` through `create_mask` against the reference mask, and
               `flex_attention` (with `create_block_mask` and with the analysis' `to_flex`)
               against `reference_attention`, in float64;
    kernel     `compile` (analysis tables) and the standalone module (tiles classified on
               the device): output, LSE, dq, dk, dv against float64 `reference_attention`.

A consumer that disagrees, or raises anything on a legal program, is a `Failure`. Errors the
language defines (an integer division by zero at run time, an input index out of range,
a constant that folds to an error) reject the program instead, as do programs whose result
is not defined (floor of NaN) or, for the kernels' float32 logit, depends on float precision.

CLI: `python -m tests.fuzz --minutes 30 [--seed S] [--checks reference,analysis,flex,kernel]`
runs rounds of every check until the time is up. Each failure is shrunk by hypothesis, then
reduced structurally (statements, helpers, sub-expressions, shapes: `reduce_failure`), and
printed with its program; a summary comes at the end, and the exit status is 1 if anything
failed. `tests/test_fuzz.py` is the CI profile.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before torch/triton are imported: CPU kernels

import argparse
import math
import re
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import cache

import numpy as np
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

import attnlang
from attnlang import EMPTY, FULL, PARTIAL, ir, reference
from attnlang.errors import AttnlangError

__all__ = ["CHECKS", "STATS", "Case", "Decl", "Expr", "Failure", "Program", "Rejected", "cases",
           "hypothesis_test", "main", "programs", "reduce_failure", "run_check"]

INT, FLOAT, BOOL = "int", "float", "bool"
COMPARISONS = ("==", "!=", "<", "<=", ">", ">=")
INT64_MAX = 2**63 - 1
BIG_INTS = (2**31 - 1, 2**31, 2**32 + 1, 2**40, 2**53 + 1, 2**62, -(2**31), -(2**53) - 3, INT64_MAX)
NICE_FLOATS = (0.5, 1.0, 2.0, 0.25, 1.5, 3.0, 10.0, 0.1, 100.0, 1e-3, 7.5)
BUILTIN_NAMES = ("q", "k", "h", "b", "n_q", "n_k", "heads")
POSITIVE_NAMES = ("n_q", "n_k", "heads")


# ------------------------------------------------------------------------------------------
# The generated language: our own tiny AST, typing rules and printer
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Expr:
    """A generated expression.

    op: "lit" (value), "name" (value: the name), "attr" (value: (q|k, axis)), "index" (value:
    input, args: (index,)), "call" (value: builtin), "pcall" (value: (pattern, arguments)),
    "neg", "not", "if" (args: cond, then, else) or a binary operator (args: left, right).
    type: "int", "float" or "bool", by the language's typing rules as this file states them.
    """

    op: str
    type: str
    args: tuple = ()
    value: object = None

    def __str__(self) -> str:
        return to_source(self)


def result_type(op: str, args: tuple, value=None) -> str:
    """The typing rules of README "Types", restated independently of the checker."""
    types = [a.type for a in args]
    if op in COMPARISONS or op in ("and", "or", "not", "pcall"):
        return BOOL
    if op == "/":
        return FLOAT
    if op == "**":  # int only for an int base and a non-negative int literal exponent
        base, exponent = args
        exact = base.type == INT and exponent.op == "lit" and exponent.type == INT and exponent.value >= 0
        return INT if exact else FLOAT
    if op == "call":
        if value in ("floor", "ceil", "hash"):
            return INT
        if value in ("log", "log2", "exp", "sqrt", "tanh"):
            return FLOAT
    if op == "if":
        types = types[1:]
        if types[0] == BOOL:
            return BOOL
    return FLOAT if FLOAT in types else INT


def lit(value) -> Expr:
    kind = BOOL if isinstance(value, bool) else INT if isinstance(value, int) else FLOAT
    return Expr("lit", kind, value=value)


def name(identifier: str, kind: str) -> Expr:
    return Expr("name", kind, value=identifier)


def node(op: str, *args: Expr, value=None) -> Expr:
    return Expr(op, result_type(op, args, value), tuple(args), value)


def call(func: str, *args: Expr) -> Expr:
    return node("call", *args, value=func)


# Binding strength, loosest first (README "Syntax").
_IF, _OR, _AND, _NOT, _CMP, _SUM, _PROD, _UNARY, _POW, _POSTFIX = range(10)
_LEVEL = {"or": _OR, "and": _AND, "+": _SUM, "-": _SUM, "*": _PROD, "/": _PROD, "//": _PROD, "%": _PROD,
          "**": _POW, **{op: _CMP for op in COMPARISONS}}
# What each side of a binary operator must bind at least as tightly as.
_SIDES = {_OR: (_OR, _AND), _AND: (_AND, _NOT), _CMP: (_SUM, _SUM), _SUM: (_SUM, _PROD),
          _PROD: (_PROD, _UNARY), _POW: (_POSTFIX, _UNARY)}


def to_source(expr: Expr) -> str:
    return _print(expr)[0]


def _wrap(expr: Expr, needed: int) -> str:
    text, level = _print(expr)
    return text if level >= needed else f"({text})"


def _literal(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int) else repr(float(value))


def _arguments(arguments) -> str:
    return ", ".join(to_source(e) if keyword is None else f"{keyword} = {to_source(e)}"
                     for keyword, e in arguments)


def _print(e: Expr) -> tuple[str, int]:
    """Source text with the fewest parentheses the grammar needs, and its binding level."""
    if e.op == "lit":
        text = _literal(e.value)
        return text, _UNARY if text.startswith("-") else _POSTFIX
    if e.op == "name":
        return e.value, _POSTFIX
    if e.op == "attr":
        return f"{e.value[0]}.{e.value[1]}", _POSTFIX
    if e.op == "index":
        return f"{e.value}[{to_source(e.args[0])}]", _POSTFIX
    if e.op == "call":
        return f"{e.value}({', '.join(to_source(a) for a in e.args)})", _POSTFIX
    if e.op == "pcall":
        return f"{e.value[0]}({_arguments(e.value[1])})", _POSTFIX
    if e.op == "neg":
        text = _wrap(e.args[0], _UNARY)
        return "-" + (" " if text.startswith("-") else "") + text, _UNARY
    if e.op == "not":
        return "not " + _wrap(e.args[0], _NOT), _NOT
    if e.op == "if":
        cond, then, orelse = (to_source(a) for a in e.args)
        return f"if {cond} then {then} else {orelse}", _IF
    level = _LEVEL[e.op]
    left, right = _SIDES[level]
    return f"{_wrap(e.args[0], left)} {e.op} {_wrap(e.args[1], right)}", level


@dataclass(frozen=True)
class Decl:
    """A generated pattern: parameters (name, type, default) and statements, as tuples:
    ("input", name), ("grid", axes, sizes), ("let", name, expr), ("mask", expr),
    ("bias", expr), ("score", expr), ("use", pattern, arguments), ("route", top, block, keep)."""

    name: str
    params: tuple
    body: tuple

    @property
    def source(self) -> str:
        params = ", ".join(f"{p} = {_literal(v)}" for p, _, v in self.params)
        lines = [f"pattern {self.name}({params}) {{"] + ["    " + _statement(s) for s in self.body] + ["}"]
        return "\n".join(lines) + "\n"


def _statement(s: tuple) -> str:
    kind = s[0]
    if kind == "input":
        return f"input {s[1]}: int[tokens]"
    if kind == "grid":
        return f"grid ({', '.join(s[1])}) = ({', '.join(to_source(e) for e in s[2])})"
    if kind == "let":
        return f"let {s[1]} = {to_source(s[2])}"
    if kind == "use":
        return f"use {s[1]}({_arguments(s[2])})"
    if kind == "route":
        keep = "" if s[3] is None else f", keep = {to_source(s[3])}"
        return f"route topk({s[1]}, block = {s[2]}{keep})"
    return f"{kind} {to_source(s[1])}"


@dataclass(frozen=True)
class Program:
    """Helper patterns (usable by main and by later helpers) and the pattern `main`."""

    helpers: tuple
    main: Decl

    @property
    def decls(self) -> dict:
        return {d.name: d for d in self.helpers + (self.main,)}

    @property
    def source(self) -> str:
        return "\n".join(d.source for d in self.helpers + (self.main,))

    def __repr__(self) -> str:
        return "Program(\n" + self.source + ")"


# ------------------------------------------------------------------------------------------
# The generator (hypothesis strategies)
# ------------------------------------------------------------------------------------------

def _ints(lo, hi):
    return st.integers(lo, hi)


# Standard-library patterns a program may `use` or call, with small, valid parameters.
STDLIB_ARGS = {
    "causal": {},
    "sliding_window": {"window": _ints(1, 20)},
    "streaming": {"window": _ints(1, 20), "sinks": _ints(0, 5)},
    "prefix_lm": {"prefix": _ints(0, 20)},
    "document": {},
    "dilated": {"window": _ints(1, 10), "dilation": _ints(1, 4)},
    "strided": {"stride": _ints(1, 10)},
    "alibi": {},
    "retention_decay": {},
    "softcap": {"cap": st.sampled_from([1.0, 5.0, 30.0, 2])},
    "cross_causal": {},
    "block_local": {"block": _ints(1, 16)},
    "duo": {"retrieval_heads": _ints(0, 3), "window": _ints(1, 16), "sinks": _ints(0, 4)},
    "longformer": {"window": _ints(1, 16), "global_tokens": _ints(0, 3)},
    "bigbird": {"block": _ints(1, 8), "window_blocks": _ints(0, 3), "global_blocks": _ints(0, 2),
                "random_blocks": _ints(0, 3), "seed": _ints(0, 9)},
    "longnet": {"segment": _ints(1, 8), "ratio": _ints(1, 3), "causal": st.booleans()},
    "swin": {"height": _ints(1, 8), "width": _ints(1, 8), "window": _ints(1, 4)},
    "swin_shifted": {"height": _ints(1, 8), "width": _ints(1, 8), "window": _ints(1, 4),
                     "shift": _ints(0, 3)},
    "halonet": {"height": _ints(1, 8), "width": _ints(1, 8), "block": _ints(1, 4), "halo": _ints(0, 2)},
    "neighborhood2d": {"height": _ints(1, 8), "width": _ints(1, 8), "kernel": _ints(1, 5)},
    "neighborhood3d": {"frames": _ints(1, 3), "height": _ints(1, 4), "width": _ints(1, 4),
                       "kernel_t": _ints(1, 3), "kernel_h": _ints(1, 3), "kernel_w": _ints(1, 3)},
    "radial": {"frames": _ints(1, 4), "frame_tokens": _ints(1, 16), "min_window": _ints(1, 4),
               "sink": st.booleans()},
}


@dataclass(frozen=True)
class Profile:
    """What a check's programs may contain."""

    route: bool = False         # a `route` statement (only static consumers handle it)
    tame_logits: bool = False   # bounded, smooth logits only (float32 kernels, with gradients)
    max_depth: int = 3


@dataclass
class _Scope:
    """What an expression may refer to at a point of a pattern body."""

    ints: list
    floats: list
    bools: list
    score_lets: list = field(default_factory=list)  # float lets that read `score`
    inputs: list = field(default_factory=list)
    axes: list = field(default_factory=list)
    patterns: list = field(default_factory=list)     # (name, params [(name, type)]) callable here
    positive: list = field(default_factory=lambda: list(POSITIVE_NAMES))
    allow_score: bool = False


class _Generator:
    """Draws programs. `pick` shrinks toward its first option, so options go simplest first."""

    def __init__(self, draw, profile: Profile):
        self.draw = draw
        self.profile = profile

    def pick(self, options):
        total = sum(weight for weight, _ in options)
        r = self.draw(st.integers(0, total - 1))
        for weight, value in options:
            if r < weight:
                return value
            r -= weight
        raise AssertionError

    def chance(self, percent: int) -> bool:
        return self.draw(st.integers(0, 99)) >= 100 - percent

    # -- leaves -------------------------------------------------------------------------

    def int_literal(self) -> Expr:
        kind = self.pick([(8, "small"), (1, "big")])
        if kind == "big":
            return lit(self.draw(st.sampled_from(BIG_INTS)))
        return lit(self.draw(st.integers(-12, 40)))

    def float_literal(self) -> Expr:
        kind = self.pick([(3, "nice"), (2, "any"), (1, "extreme")])
        if kind == "nice":
            value = self.draw(st.sampled_from(NICE_FLOATS)) * self.draw(st.sampled_from([1, -1]))
        elif kind == "any":
            value = round(self.draw(st.floats(-100, 100, allow_nan=False)), 3)
        else:
            value = self.draw(st.sampled_from([1e20, -1e30, 1e-30, 3e38, 1e300, 2.0**53 + 2, 0.0, -0.0]))
        return lit(float(value))

    def leaf(self, scope: _Scope, kind: str) -> Expr:
        if kind == INT:
            options = [(3, "name"), (3, "literal")] + [(2, "attr")] * bool(scope.axes)
            choice = self.pick(options)
            if choice == "literal":
                return self.int_literal()
            if choice == "attr":
                return Expr("attr", INT, value=(self.draw(st.sampled_from(["q", "k"])),
                                                 self.draw(st.sampled_from(scope.axes))))
            return name(self.draw(st.sampled_from(scope.ints)), INT)
        if kind == FLOAT:
            names = scope.floats + (["score"] * 3 + scope.score_lets if scope.allow_score else [])
            if names and self.chance(50):
                return name(self.draw(st.sampled_from(names)), FLOAT)
            return self.float_literal()
        if self.chance(50) and scope.bools:
            return name(self.draw(st.sampled_from(scope.bools)), BOOL)
        return lit(self.draw(st.booleans()))

    # -- expressions --------------------------------------------------------------------

    def expr(self, scope: _Scope, kind: str, depth: int) -> Expr:
        if depth <= 0 or self.chance(20):
            return self.leaf(scope, kind)
        return {INT: self.int_expr, FLOAT: self.float_expr, BOOL: self.bool_expr}[kind](scope, depth - 1)

    def number(self, scope, depth, float_percent=30) -> Expr:
        return self.expr(scope, FLOAT if self.chance(float_percent) else INT, depth)

    def divisor(self, scope, depth) -> Expr:
        """An int that is (almost always) nonzero: runtime division by zero is rejected."""
        choice = self.pick([(3, "literal"), (2, "positive"), (2, "abs"), (1, "max"), (1, "any")])
        if choice == "literal":
            return lit(self.draw(st.sampled_from([2, 3, 4, 5, 7, 1, -2, -3, 16, 2**33])))
        if choice == "positive":
            return name(self.draw(st.sampled_from(scope.positive)), INT)
        if choice == "abs":
            return node("+", call("abs", self.expr(scope, INT, depth)), lit(1))
        if choice == "max":
            return call("max", self.expr(scope, INT, depth), lit(1))
        return self.expr(scope, INT, depth)

    def index(self, scope, depth) -> Expr:
        """An input index: in range by construction, except rarely."""
        choice = self.pick([(4, "q"), (4, "k"), (2, "mod"), (1, "minmax"), (1, "load"), (1, "any")])
        if choice in ("q", "k"):
            return name(choice, INT)
        if choice == "mod":
            length = name(self.draw(st.sampled_from(["n_q", "n_k"])), INT)
            return node("%", self.expr(scope, INT, depth), length)
        if choice == "minmax":
            return call(self.draw(st.sampled_from(["min", "max"])), name("q", INT), name("k", INT))
        if choice == "load":
            return node("%", self.load(scope, depth), name("n_k", INT))
        return self.expr(scope, INT, depth)

    def load(self, scope, depth) -> Expr:
        index = self.index(replace(scope, allow_score=False), depth - 1)  # an index cannot read score
        return Expr("index", INT, (index,), self.draw(st.sampled_from(scope.inputs)))

    def int_expr(self, scope, depth) -> Expr:
        options = [(4, "arith"), (3, "divmod"), (1, "pow"), (1, "neg"), (2, "abs"), (2, "minmax"),
                   (1, "clamp"), (2, "floor"), (1, "hash"), (2, "if")] + [(3, "load")] * bool(scope.inputs)
        choice = self.pick(options)

        def sub(kind=INT):
            return self.expr(scope, kind, depth)

        if choice == "arith":
            return node(self.draw(st.sampled_from(["+", "-", "*"])), sub(), sub())
        if choice == "divmod":
            return node(self.draw(st.sampled_from(["//", "%"])), sub(), self.divisor(scope, depth))
        if choice == "pow":
            exponent = self.pick([(6, "small"), (1, "large")])
            value = self.draw(st.integers(0, 12) if exponent == "small" else st.integers(13, 70))
            return node("**", sub(), lit(value))
        if choice == "neg":
            return node("neg", sub())
        if choice == "abs":
            return call("abs", sub())
        if choice == "minmax":
            func = self.draw(st.sampled_from(["min", "max"]))
            return call(func, *[sub() for _ in range(self.draw(_ints(2, 3)))])
        if choice == "clamp":
            return call("clamp", sub(), sub(), sub())
        if choice == "floor":
            return call(self.draw(st.sampled_from(["floor", "ceil"])), self.number(scope, depth, 80))
        if choice == "hash":
            return call("hash", *[sub() for _ in range(self.draw(_ints(1, 3)))])
        if choice == "load":
            return self.load(scope, depth)
        return node("if", sub(BOOL), sub(), sub())

    def float_expr(self, scope, depth) -> Expr:
        choice = self.pick([(4, "arith"), (2, "div"), (1, "divmod"), (1, "pow"), (1, "neg"), (3, "func"),
                            (1, "minmax"), (2, "if")])
        if choice == "arith":  # at least one float operand
            left, right = self.expr(scope, FLOAT, depth), self.number(scope, depth, 50)
            if self.chance(50):
                left, right = right, left
            return node(self.draw(st.sampled_from(["+", "-", "*"])), left, right)
        if choice == "div":
            return node("/", self.number(scope, depth), self.number(scope, depth))
        if choice == "divmod":  # float // and %: zero divisors give inf/nan, not errors
            return node(self.draw(st.sampled_from(["//", "%"])), self.expr(scope, FLOAT, depth),
                        self.number(scope, depth, 50))
        if choice == "pow":
            shape = self.pick([(2, "float_base"), (1, "int_base"), (1, "negative_literal")])
            if shape == "float_base":
                exponent = self.pick([(2, "int_literal"), (2, "any")])
                if exponent == "int_literal":
                    right = lit(self.draw(_ints(0, 12)))
                else:
                    right = self.number(scope, depth, 50)
                return node("**", self.expr(scope, FLOAT, depth), right)
            if shape == "int_base":  # alibi's 2 ** (-8 * (h + 1) / heads), 2 ** (h + 1)
                return node("**", self.leaf(scope, INT), self.number(scope, depth, 50))
            return node("**", self.expr(scope, INT, depth), lit(-self.draw(_ints(1, 4))))
        if choice == "neg":
            return node("neg", self.expr(scope, FLOAT, depth))
        if choice == "func":
            func = self.draw(st.sampled_from(["log", "log2", "exp", "sqrt", "tanh", "abs"]))
            argument = self.expr(scope, FLOAT, depth) if func == "abs" else self.number(scope, depth, 50)
            return call(func, argument)
        if choice == "minmax":
            func = self.draw(st.sampled_from(["min", "max", "clamp"]))
            bounds = [self.number(scope, depth, 50) for _ in range(1 + (func == "clamp"))]
            args = [self.expr(scope, FLOAT, depth)] + bounds
            return call(func, *args)
        return node("if", self.expr(scope, BOOL, depth), self.expr(scope, FLOAT, depth),
                    self.number(scope, depth, 50))

    def bool_expr(self, scope, depth) -> Expr:
        options = [(5, "compare"), (3, "logic"), (1, "not"), (1, "bool_eq"), (1, "if")]
        options += [(2, "same_input")] * bool(scope.inputs) + [(1, "call")] * bool(scope.patterns)
        choice = self.pick(options)

        def sub():
            return self.expr(scope, BOOL, depth)

        if choice == "compare":
            op = self.draw(st.sampled_from(COMPARISONS))
            return node(op, self.number(scope, depth, 35), self.number(scope, depth, 35))
        if choice == "logic":
            return node(self.draw(st.sampled_from(["and", "or"])), sub(), sub())
        if choice == "not":
            return node("not", sub())
        if choice == "bool_eq":
            return node(self.draw(st.sampled_from(["==", "!="])), sub(), sub())
        if choice == "if":
            return node("if", sub(), sub(), sub())
        if choice == "same_input":  # doc[q] == doc[k]
            input_name = self.draw(st.sampled_from(scope.inputs))
            return node("==", Expr("index", INT, (name("q", INT),), input_name),
                        Expr("index", INT, (name("k", INT),), input_name))
        return self.pattern_call(scope)

    def pattern_call(self, scope) -> Expr:
        """`helper(args)` or a standard-library pattern, standing for its mask."""
        pattern, params = self.draw(st.sampled_from(scope.patterns))
        return Expr("pcall", BOOL, value=(pattern, self.arguments(pattern, params)))

    def arguments(self, pattern: str, params) -> tuple:
        """Constant arguments: positional first, then keywords; some left at their defaults."""
        arguments, keywords_only = [], False
        for param, kind in params:
            how = self.pick([(2, "default"), (2, "positional"), (2, "keyword")])
            if how == "default":
                keywords_only = True
                continue
            keywords_only = keywords_only or how == "keyword"
            arguments.append((param if keywords_only else None, self.constant(pattern, param, kind)))
        return tuple(arguments)

    def constant(self, pattern: str, param: str, kind: str) -> Expr:
        """A valid argument: the stdlib's small ranges, else a literal or constant expression."""
        strategy = STDLIB_ARGS.get(pattern, {}).get(param)
        if strategy is not None:
            return lit(self.draw(strategy))
        if kind == BOOL:
            return lit(self.draw(st.booleans()))
        if kind == FLOAT:
            if self.chance(70):
                return lit(self.draw(st.sampled_from(NICE_FLOATS)))
            return lit(self.draw(_ints(1, 9)))  # an int bound to a float parameter
        value = lit(self.draw(_ints(1, 12)))  # positive: helpers divide by their int parameter
        return node("+", value, lit(self.draw(_ints(1, 3)))) if self.chance(15) else value

    # -- logits -------------------------------------------------------------------------

    def positive_float(self) -> Expr:
        return lit(float(self.draw(st.sampled_from([1.0, 2.0, 5.0, 0.5, 10.0, 30.0, 3.0]))))

    def bounded(self, scope, depth) -> Expr:
        """A score-free number of modest size, for biases."""
        choice = self.pick([(2, "tanh"), (2, "alibi"), (2, "if"), (1, "mod"), (1, "log"), (1, "clamp"),
                            (1, "raw")])
        if choice == "tanh":
            return node("*", self.positive_float(), call("tanh", node("/", self.number(scope, depth, 50),
                                                                        self.positive_float())))
        if choice == "alibi":
            slope = node("**", lit(2), node("/", node("*", lit(-8), node("+", name("h", INT), lit(1))),
                                            name("heads", INT)))
            distance = self.draw(st.sampled_from([node("-", name("q", INT), name("k", INT)),
                                                  call("abs", node("-", name("q", INT), name("k", INT)))]))
            if self.chance(50):
                slope = self.positive_float()
            return node("*", node("neg", slope), distance)
        if choice == "if":
            return node("if", self.expr(scope, BOOL, depth), self.float_literal_small(),
                        self.float_literal_small())
        if choice == "mod":
            return node("*", node("%", self.expr(scope, INT, depth), lit(self.draw(_ints(2, 7)))), lit(0.5))
        if choice == "log":
            return call("log", node("+", call("abs", self.number(scope, depth, 50)), lit(1.0)))
        if choice == "clamp":
            return call("clamp", self.number(scope, depth, 50), lit(-4.0), lit(self.draw(_ints(0, 4))))
        return self.number(scope, depth, 50)

    def float_literal_small(self) -> Expr:
        return lit(float(self.draw(st.sampled_from([0.0, 1.0, -1.0, 2.5, -3.0, 0.5]))))

    def logit_expr(self, scope, depth, statement: str) -> Expr:
        """The expression of a `bias` or `score` statement (`score` is the logit so far)."""
        score = name("score", FLOAT)
        if statement == "bias":
            choice = self.pick([(6, "bounded"), (1, "score"), (1, "let")] if scope.score_lets else
                               [(6, "bounded"), (1, "score")])
            if choice == "score":  # bias reading the logit so far
                return self.draw(st.sampled_from([score, node("*", score, lit(0.5)), call("tanh", score)]))
            if choice == "let":
                return name(self.draw(st.sampled_from(scope.score_lets)), FLOAT)
            return self.bounded(scope, depth)
        options = [(3, "softcap"), (2, "scale"), (2, "plus"), (1, "if"), (1, "minmax"), (1, "fmod"),
                   (1, "pow"), (1, "general"), (1, "exp"), (1, "sqrt"), (1, "heads")]
        options += [(2, "let")] * bool(scope.score_lets)
        options += [(1, "floor"), (1, "raw")] * (not self.profile.tame_logits)
        choice = self.pick(options)
        c = self.positive_float()
        if choice == "softcap":
            return node("*", c, call("tanh", node("/", score, c)))
        if choice == "scale":
            return node(self.draw(st.sampled_from(["*", "/"])), score, c)
        if choice == "plus":
            return node("+", score, self.bounded(scope, depth))
        if choice == "if":
            return node("if", self.expr(scope, BOOL, depth), score, node("*", score, c))
        if choice == "minmax":
            func = self.draw(st.sampled_from(["max", "min", "clamp"]))
            return call(func, score, lit(-1.0), *([lit(2.0)] if func == "clamp" else []))
        if choice == "fmod":
            return node("%", score, c)
        if choice == "pow":
            return node("*", c, node("**", call("tanh", score), lit(self.draw(_ints(0, 12)))))
        if choice == "general":
            return node("*", c, call("tanh", node("/", self.expr(scope, FLOAT, depth), c)))
        if choice == "exp":
            return call("exp", node("/", score, lit(float(self.draw(st.sampled_from([2.0, 4.0, 8.0]))))))
        if choice == "sqrt":
            return call("sqrt", node("+", node("*", score, score), lit(1.0)))
        if choice == "heads":
            return node("*", score, node("/", node("+", name("h", INT), lit(1)), name("heads", INT)))
        if choice == "let":
            capped = node("*", c, call("tanh", name(scope.score_lets[0], FLOAT)))
            return self.draw(st.sampled_from([name(n, FLOAT) for n in scope.score_lets] + [capped]))
        if choice == "floor":
            return node("+", score, call("floor", score))
        return self.expr(scope, FLOAT, depth)

    # -- statements and patterns ------------------------------------------------------------

    def grid(self, scope) -> tuple:
        axes = self.draw(st.sampled_from([("y", "x"), ("r",), ("t", "y", "x")]))
        sizes = []
        for _ in axes:
            choice = self.pick([(6, "literal"), (1, "param"), (1, "runtime")])
            if choice == "literal":
                sizes.append(lit(self.draw(_ints(1, 8))))
            elif choice == "param" and "m" in scope.ints:
                sizes.append(name("m", INT))
            else:  # a size known only at run time, still positive
                sizes.append(node("+", node("//", name("n_k", INT), lit(4)), lit(1)))
        scope.axes = list(axes)
        return ("grid", axes, tuple(sizes))

    def body(self, scope: _Scope, statements: int, lets: list, main: bool) -> list:
        depth = self.profile.max_depth
        body = []
        for _ in range(statements):
            options = [(6, "mask"), (3, "let"), (3, "bias"), (3, "score"), (1, "mask_not")]
            options += [(2, "use")] * bool(scope.patterns)
            kind = self.pick(options)
            if kind == "mask":
                body.append(("mask", self.expr(scope, BOOL, depth)))
            elif kind == "mask_not":
                inner = node(self.draw(st.sampled_from(["and", "or"])), self.expr(scope, BOOL, depth),
                             self.expr(scope, BOOL, depth))
                body.append(("mask", node("not", inner)))
            elif kind == "let":
                let_name = f"{'a' if main else 'x'}{len(lets)}"
                lets.append(let_name)
                let_kind = self.pick([(3, INT), (2, BOOL), (2, FLOAT), (2, "score")])
                if let_kind == "score":
                    scope.allow_score = True
                    value = self.logit_expr(scope, depth, "score")
                    scope.allow_score = False
                    body.append(("let", let_name, value))
                    scope.score_lets.append(let_name)
                else:
                    body.append(("let", let_name, self.expr(scope, let_kind, depth)))
                    {INT: scope.ints, FLOAT: scope.floats, BOOL: scope.bools}[let_kind].append(let_name)
            elif kind in ("bias", "score"):
                scope.allow_score = True
                body.append((kind, self.logit_expr(scope, depth, kind)))
                scope.allow_score = False
            else:
                pattern, params = self.draw(st.sampled_from(scope.patterns))
                body.append(("use", pattern, self.arguments(pattern, params)))
        return body

    def helper(self, index: int, patterns: list) -> Decl:
        params = (("p", INT, self.draw(_ints(1, 9))),
                  ("r", FLOAT, float(self.draw(st.sampled_from(NICE_FLOATS)))),
                  ("on", BOOL, self.draw(st.booleans())))
        scope = _Scope(ints=list(BUILTIN_NAMES) + ["p"], floats=["r"], bools=["on"], patterns=list(patterns),
                       positive=list(POSITIVE_NAMES) + ["p"])
        body = []
        if self.chance(30):
            body.append(("input", "doc"))
            scope.inputs = ["doc"]
        if self.chance(20):
            body.append(self.grid(scope))
        body += self.body(scope, self.draw(_ints(1, 3)), [], main=False)
        return Decl(f"helper{index}", params, tuple(body))


def _stdlib_patterns():
    """(name, [(param, type)]) of the standard-library patterns the generator may call."""
    lib = attnlang.stdlib()
    kinds = {bool: BOOL, int: INT, float: FLOAT}
    return [(n, [(p, kinds[type(v)]) for p, v in lib[n].defaults.items()]) for n in STDLIB_ARGS]


@st.composite
def programs(draw, profile: Profile = Profile()):
    """A strategy for whole programs: optional helpers, then `pattern main(...)`."""
    gen = _Generator(draw, profile)
    stdlib = draw(st.lists(st.sampled_from(_stdlib_patterns()), max_size=3, unique_by=lambda p: p[0]))
    callable_patterns = list(stdlib)
    helpers = []
    for index in range(draw(_ints(0, 2))):
        helper = gen.helper(index, callable_patterns)
        helpers.append(helper)
        callable_patterns.append((helper.name, [(p, kind) for p, kind, _ in helper.params]))
    params = (("w", INT, draw(st.one_of(_ints(-5, 20), st.sampled_from(BIG_INTS)))),
              ("m", INT, draw(_ints(1, 9))),
              ("f", FLOAT, float(draw(st.sampled_from(NICE_FLOATS + (-2.5, 0.0))))),
              ("flag", BOOL, draw(st.booleans())))
    scope = _Scope(ints=list(BUILTIN_NAMES) + ["w", "m"], floats=["f"], bools=["flag"],
                   patterns=callable_patterns,
                   positive=list(POSITIVE_NAMES) + ["m"])
    body = []
    for input_name in draw(st.lists(st.sampled_from(["doc", "seg"]), max_size=2, unique=True)):
        body.append(("input", input_name))
        scope.inputs.append(input_name)
    if gen.chance(25):
        body.append(gen.grid(scope))
    body += gen.body(scope, draw(_ints(1, 6)), [], main=True)
    if profile.route and gen.chance(5):
        keep = gen.expr(scope, BOOL, 2) if gen.chance(70) else None
        body.append(("route", draw(_ints(1, 3)), draw(_ints(1, 16)), keep))
    return Program(tuple(helpers), Decl("main", params, tuple(body)))


# ------------------------------------------------------------------------------------------
# Scalar semantics: Python ints with int64 wrap-around, float64 (or float32) IEEE floats
# ------------------------------------------------------------------------------------------

class RuntimeFault(Exception):
    """An error the language defines at run time: integer division by zero, index out of range."""


class Undefined(Exception):
    """A result the language does not define (floor or ceil of NaN, inf or a float beyond int64)."""


def wrap64(x: int) -> int:
    return ((x + 2**63) % 2**64) - 2**63


def attn_hash(*values: int) -> int:
    """README's hash, from its text: fmix32 of h XOR (a mod 2^32) per argument, then h >> 1."""
    mask = 0xFFFFFFFF
    h = 0x9E3779B9
    for a in values:
        x = h ^ (a & mask)
        x ^= x >> 16
        x = (x * 0x85EBCA6B) & mask
        x ^= x >> 13
        x = (x * 0xC2B2AE35) & mask
        h = x ^ (x >> 16)
    return h >> 1


class Scalar:
    """The primitive operations on typed scalars; `F` is the float type (np.float64 or np.float32)."""

    def __init__(self, float_type=np.float64):
        self.F = float_type

    def to(self, value, kind: str):
        return self.F(value) if kind == FLOAT else value

    def to_int(self, x) -> int:
        if not np.isfinite(x) or not -(2.0**63) <= float(x) < 2.0**63:
            raise Undefined(f"float {x} has no int value")
        return int(x)

    def binary(self, op: str, a, a_type: str, b, b_type: str, result: str):
        if op == "and":
            return bool(a) & bool(b)
        if op == "or":
            return bool(a) | bool(b)
        if op in COMPARISONS:
            if FLOAT in (a_type, b_type):
                a, b = self.F(a), self.F(b)
            return bool({"==": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op])
        if result == INT:
            if op == "+":
                return wrap64(a + b)
            if op == "-":
                return wrap64(a - b)
            if op == "*":
                return wrap64(a * b)
            if op in ("//", "%"):
                if b == 0:
                    raise RuntimeFault(f"integer {'division' if op == '//' else 'modulo'} by zero")
                return wrap64(a // b) if op == "//" else a % b
            if op == "**":
                return wrap64(pow(a, b, 2**64))
        a, b = self.F(a), self.F(b)
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "/":
            return a / b
        if op == "//":
            return np.floor_divide(a, b)
        if op == "%":
            return np.remainder(a, b)
        if op == "**":
            return np.power(a, b)
        raise ValueError(op)

    def negate(self, a, kind):
        return wrap64(-a) if kind == INT else -a

    def builtin(self, func: str, args: list, arg_types: list, result: str):
        if func == "hash":
            return attn_hash(*args)
        if func in ("floor", "ceil"):
            if arg_types[0] == INT:
                return args[0]
            return self.to_int(np.floor(args[0]) if func == "floor" else np.ceil(args[0]))
        if func in ("log", "log2", "exp", "sqrt", "tanh"):
            return getattr(np, func)(self.F(args[0]))
        if result == FLOAT:
            args = [self.F(a) for a in args]
        if func == "abs":
            return np.abs(args[0]) if result == FLOAT else wrap64(abs(args[0]))
        if func == "clamp":
            args = [self.builtin("max", args[:2], arg_types, result), args[2]]
            func = "min"
        combine = {"min": (np.minimum, min), "max": (np.maximum, max)}[func][result != FLOAT]
        value = args[0]
        for a in args[1:]:  # NaN propagates, as in IEEE 754-2019 minimum/maximum (and numpy)
            value = combine(value, a)
        return value

    def load(self, env, input_name: str, index: int):
        values = env["inputs"][input_name]
        if not 0 <= index < len(values):
            raise RuntimeFault(f"index {index} out of range for input '{input_name}'")
        return values[index]


class IREvaluator(Scalar):
    """Evaluates IR at one point. Everything is evaluated (no short circuit), as the reference does."""

    def visit(self, n: ir.Expr, env: dict):
        if isinstance(n, ir.Const):
            return self.to(n.value, n.type.value) if n.type is not ir.Type.INT else int(n.value)
        if isinstance(n, ir.Var):
            return env[n.name]
        if isinstance(n, ir.Load):
            return self.load(env, n.input, self.visit(n.index, env))
        if isinstance(n, ir.Cast):
            return self.F(self.visit(n.operand, env))
        if isinstance(n, ir.Unary):
            value = self.visit(n.operand, env)
            return (not value) if n.op == "not" else self.negate(value, n.type.value)
        if isinstance(n, ir.Binary):
            a, b = self.visit(n.left, env), self.visit(n.right, env)
            return self.binary(n.op, a, n.left.type.value, b, n.right.type.value, n.type.value)
        if isinstance(n, ir.Call):
            args = [self.visit(a, env) for a in n.args]
            return self.builtin(n.func, args, [a.type.value for a in n.args], n.type.value)
        if isinstance(n, ir.Select):
            cond, then, orelse = (self.visit(c, env) for c in (n.cond, n.then, n.orelse))
            return then if cond else orelse
        raise TypeError(n)


@dataclass
class _Frame:
    """One pattern body being evaluated: its parameters, lets and grid."""

    params: dict
    lets: dict = field(default_factory=dict)
    grid: tuple | None = None
    score: object = None


class SourceEvaluator(Scalar):
    """The meaning of a generated program, from our AST: what the lowering must preserve.

    `let` is a named expression (evaluated where it is used, `score` there being the logit
    so far), `grid` coordinates are row-major, masks are ANDed, `bias E` adds E and `score E`
    replaces the logit, `score` inside E being the logit so far (README "The language").
    A used standard-library pattern means what its IR means.
    """

    def __init__(self, program: Program, float_type=np.float64):
        super().__init__(float_type)
        self.decls = program.decls
        self.ir_evaluator = IREvaluator(float_type)

    def mask(self, env: dict, pattern: str = "main", params: dict | None = None) -> bool:
        return self._run(pattern, params, env, None, want_logit=False)

    def logit(self, env: dict, score, pattern: str = "main", params: dict | None = None):
        return self._run(pattern, params, env, self.F(score), want_logit=True)

    def _bind(self, pattern: str, arguments, frame: _Frame, env: dict) -> dict:
        declared = _pattern_params(pattern, self.decls)
        values = {p: v for p, _, v in declared}
        names = [p for p, _, _ in declared]
        for position, (keyword, value) in enumerate(arguments):
            param = keyword or names[position]
            kind = next(k for p, k, _ in declared if p == param)
            value = self.eval(value, frame, env)
            values[param] = float(value) if kind == FLOAT else value
        return values

    def _run(self, pattern: str, params, env, score, want_logit: bool):
        if pattern not in self.decls:  # the standard library: its IR is its meaning
            lowered = _stdlib_ir(pattern, tuple(sorted(params.items())))
            if want_logit:
                return self.ir_evaluator.visit(lowered.logit, {**env, "score": score})
            return self.ir_evaluator.visit(lowered.mask, env)
        decl = self.decls[pattern]
        if params is None:
            params = {p: v for p, _, v in decl.params}
        frame = _Frame({p: self.to(params[p], kind) for p, kind, _ in decl.params})
        allowed, logit = True, score
        for stmt in decl.body:
            kind = stmt[0]
            if kind == "let":
                frame.lets[stmt[1]] = stmt[2]
            elif kind == "grid":
                frame.grid = (stmt[1], stmt[2])
            elif kind == "mask" and not want_logit:
                allowed = bool(self.eval(stmt[1], frame, env)) & allowed
            elif kind in ("bias", "score") and want_logit:
                frame.score = logit
                value = self.F(self.eval(stmt[1], frame, env))
                logit = logit + value if kind == "bias" else value
            elif kind == "use":
                values = self._bind(stmt[1], stmt[2], frame, env)
                if want_logit:
                    logit = self._run(stmt[1], values, env, logit, True)
                else:
                    allowed = self._run(stmt[1], values, env, None, False) & allowed
        return logit if want_logit else allowed

    def coordinate(self, frame: _Frame, env: dict, base: str, axis: str) -> int:
        axes, size_exprs = frame.grid
        sizes = [self.eval(s, frame, env) for s in size_exprs]
        position = axes.index(axis)
        stride = 1
        for size in sizes[position + 1:]:
            stride = wrap64(stride * size)
        value = env[base]
        if stride != 1:
            value = self.binary("//", value, INT, stride, INT, INT)
        if position > 0:
            value = self.binary("%", value, INT, sizes[position], INT, INT)
        return value

    def eval(self, e: Expr, frame: _Frame, env: dict):
        op = e.op
        if op == "lit":
            return self.to(e.value, e.type)
        if op == "name":
            if e.value in frame.lets:
                return self.eval(frame.lets[e.value], frame, env)
            if e.value in frame.params:
                return frame.params[e.value]
            if e.value == "score":
                return frame.score
            return env[e.value]
        if op == "attr":
            return self.coordinate(frame, env, *e.value)
        if op == "index":
            return self.load(env, e.value, self.eval(e.args[0], frame, env))
        if op == "pcall":
            pattern, arguments = e.value
            return self._run(pattern, self._bind(pattern, arguments, frame, env), env, None, False)
        args = [self.eval(a, frame, env) for a in e.args]
        types = [a.type for a in e.args]
        if op == "call":
            return self.builtin(e.value, args, types, e.type)
        if op == "neg":
            return self.negate(args[0], e.type)
        if op == "not":
            return not args[0]
        if op == "if":
            return self.to(args[1], e.type) if args[0] else self.to(args[2], e.type)
        return self.binary(op, args[0], types[0], args[1], types[1], e.type)


def _pattern_params(pattern: str, decls: dict) -> list:
    if pattern in decls:
        return list(decls[pattern].params)
    kinds = {bool: BOOL, int: INT, float: FLOAT}
    return [(p, kinds[type(v)], v) for p, v in attnlang.stdlib()[pattern].defaults.items()]


@cache
def _stdlib_ir(pattern: str, params: tuple) -> ir.PatternIR:
    return attnlang.stdlib()[pattern].bind(**dict(params)).ir


# ------------------------------------------------------------------------------------------
# Cases: a program with shapes and inputs
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    program: Program
    seq_q: int
    seq_k: int
    heads: int
    batch: int = 1
    batch_index: int = 0        # which batch row reference/analysis look at
    block: tuple = (16, 16)
    heads_kv: int | None = None
    input_style: str = "docs"
    per_batch_inputs: bool = False
    seed: int = 0

    def __repr__(self) -> str:
        return (f"Case(seq_q={self.seq_q}, seq_k={self.seq_k}, heads={self.heads}, heads_kv={self.heads_kv}, "
                f"batch={self.batch}, batch_index={self.batch_index}, block={self.block}, "
                f"inputs={self.input_style}{' per batch' if self.per_batch_inputs else ''}, "
                f"seed={self.seed})\n"
                + self.program.source)


CHECK_PROFILES = {
    "reference": Profile(route=True),
    "analysis": Profile(route=True),
    "flex": Profile(),
    "kernel": Profile(tame_logits=True),
}


@st.composite
def cases(draw, check: str):
    """A case for `check`: shapes and tiles sized for it (kernels: at most 48 tokens)."""
    program = draw(programs(CHECK_PROFILES[check]))
    limit = {"reference": 64, "analysis": 160, "flex": 64, "kernel": 48}[check]
    seq_q, seq_k = draw(_ints(1, limit)), draw(_ints(1, limit))
    if draw(st.booleans()):
        seq_k = seq_q
    heads = draw(_ints(1, 3))
    batch = draw(_ints(1, 2))
    if check == "analysis":
        block = (draw(_ints(1, 48)), draw(_ints(1, 48)))
    else:
        block = (draw(st.sampled_from([16, 32])), draw(st.sampled_from([16, 32])))
    heads_kv = draw(st.sampled_from([d for d in range(1, heads + 1) if heads % d == 0]))
    return Case(program, seq_q, seq_k, heads, batch, draw(_ints(0, batch - 1)), block, heads_kv,
                draw(st.sampled_from(["docs", "small", "big", "const"])), batch > 1 and draw(st.booleans()),
                draw(_ints(0, 2**16)))


def make_inputs(case: Case, names, one_dimensional: bool = False) -> dict:
    """Runtime inputs for the declared names: (tokens,) or, per batch, (batch, tokens) int64."""
    rng = np.random.default_rng(case.seed)
    length = max(case.seq_q, case.seq_k)
    rows = case.batch if case.per_batch_inputs and not one_dimensional else 1
    inputs = {}
    for input_name in names:
        if case.input_style == "docs":
            values = np.sort(rng.integers(0, 4, size=(rows, length)), axis=1)
        elif case.input_style == "small":
            values = rng.integers(-3, 4, size=(rows, length))
        elif case.input_style == "big":
            values = rng.choice(np.array([0, 1, -1, 2**31 - 1, 2**31, 2**32 + 1, 2**53 + 1, -(2**40), 2**62]),
                                size=(rows, length))
        else:
            values = np.full((rows, length), int(rng.integers(-2, 3)))
        inputs[input_name] = values.astype(np.int64) if rows > 1 else values[0].astype(np.int64)
    return inputs


def input_rows(inputs: dict, batch_index: int) -> dict:
    """The inputs one batch row sees, as Python int lists (for the scalar evaluators)."""
    return {n: [int(x) for x in (v[batch_index] if v.ndim == 2 else v)] for n, v in inputs.items()}


# ------------------------------------------------------------------------------------------
# Outcomes
# ------------------------------------------------------------------------------------------

class Rejected(Exception):
    """The program or case is not a test: an error the language defines, or undefined results."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Failure(AssertionError):
    """A consumer disagreed with another, or raised on a legal program."""

    def __init__(self, check: str, consumer: str, symptom: str, case: Case | None = None, detail: str = ""):
        self.check, self.consumer, self.symptom = check, consumer, symptom
        self.case, self.detail = case, detail
        super().__init__(self.report())

    @property
    def signature(self) -> str:
        """Consumer and symptom with the numbers taken out: one line per kind of failure."""
        return f"{self.consumer}: {re.sub(r'-?[0-9][0-9.e+-]*', 'N', self.symptom)[:160]}"

    def report(self) -> str:
        lines = [f"FAILURE [{self.check}] {self.consumer}: {self.symptom}"]
        if self.detail:
            lines.append(self.detail.rstrip())
        if self.case is not None:
            lines.append(repr(self.case).rstrip())
        return "\n".join(lines)


@dataclass
class Stats:
    """Counters over a run: programs per check, rejections, and analysis exactness."""

    ran: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    tiles: int = 0
    inexact_tiles: int = 0
    inexact_programs: int = 0
    analysed_programs: int = 0


STATS = Stats()

# Check-time errors a legal-looking program may still get: constant folding is the reference's.
_EXPECTED_CHECK_ERRORS = re.compile(r"overflows 64-bit|evaluates to (nan|inf|-inf)|division by zero|"
                                    r"modulo by zero|does not fit in 64 bits|is too large")
_EXPECTED_RUNTIME_ERRORS = re.compile(r"division by zero|modulo by zero|index out of range")


def consumer_call(check: str, consumer: str, case: Case, fn, *args, expected_errors: bool = False, **kwargs):
    """Call a consumer; any exception is a failure. An AttnlangError is too, unless the caller
    handles it (`expected_errors`: the parser and the reference, which define the errors)."""
    try:
        return fn(*args, **kwargs)
    except AttnlangError as err:
        if expected_errors:
            raise
        raise Failure(check, consumer, f"AttnlangError on a legal program: {str(err).splitlines()[0]}", case,
                      str(err)) from None
    except (Rejected, Failure):
        raise
    except Exception as err:  # every other exception on a legal program is a bug
        raise Failure(check, consumer, f"raised {_describe(err)}", case,
                      "".join(traceback.format_exception(err, chain=False)[-4:])[-800:]) from err


def _describe(err: Exception) -> str:
    """`Type: first line`, and for errors torch wraps (dynamo), the error it wrapped."""
    lines = str(err).splitlines() or [""]
    text = f"{type(err).__name__}: {lines[0][:200]}"
    wrapped = [line.strip() for line in lines if "debug context:" in line]
    return text + (f" ({wrapped[0][:200]})" if wrapped else "")


def build(check: str, case: Case):
    """Parse and check the program; a rejection of a program the generator thinks legal is a failure."""
    try:
        module = consumer_call(check, "parser/checker", case, attnlang.parse, case.program.source,
                               "fuzz.attn", expected_errors=True)
        return module["main"]
    except AttnlangError as err:
        if _EXPECTED_CHECK_ERRORS.search(str(err)):
            raise Rejected("constant folding error") from None
        raise Failure(check, "parser/checker", f"rejects a legal program: {str(err).splitlines()[0]}", case,
                      str(err)) from None


def reference_masks(check: str, case: Case, pattern, inputs: dict, batches) -> np.ndarray:
    """The reference mask for each batch index: (len(batches), heads, seq_q, seq_k)."""
    masks = []
    for b in batches:
        try:
            mask = consumer_call(check, "reference_mask", case, pattern.reference_mask, case.seq_q,
                                 case.seq_k, case.heads, inputs, batch=b, static_only=pattern.is_routed,
                                 expected_errors=True)
        except AttnlangError as err:
            if _EXPECTED_RUNTIME_ERRORS.search(str(err)):
                raise Rejected("runtime error") from None
            raise Failure(check, "reference_mask", f"AttnlangError on a legal program: {err}", case) from None
        if mask.shape != (case.heads, case.seq_q, case.seq_k) or mask.dtype != np.bool_:
            raise Failure(check, "reference_mask", f"shape {mask.shape} dtype {mask.dtype}", case)
        masks.append(mask)
    return np.stack(masks)


class _UndefinedFinder(reference.Evaluator):
    """The reference evaluator, stopping where floor/ceil meet a float without an int value."""

    def visit_Call(self, n):
        if n.func in ("floor", "ceil") and n.args[0].type is ir.Type.FLOAT:
            x = np.asarray(self.visit(n.args[0]), dtype=np.float64)
            if not np.all(np.isfinite(x) & (np.abs(x) < 2.0**63)):
                raise Undefined("floor/ceil of a float without an int value")
        return super().visit_Call(n)


def reject_undefined(case: Case, pattern, inputs: dict, batches, logit: bool) -> None:
    """Reject cases where the mask (or logit) takes floor/ceil of NaN, inf or beyond int64."""
    roots = [pattern.ir.mask] + ([pattern.ir.logit] if logit else [])
    if not any(isinstance(n, ir.Call) and n.func in ("floor", "ceil") for r in roots for n in ir.walk(r)):
        return
    rng = np.random.default_rng(case.seed)
    for b in batches:
        checked = reference.check_inputs(pattern.ir, inputs, max(case.seq_q, case.seq_k), b)
        env = {"q": np.arange(case.seq_q)[None, :, None], "k": np.arange(case.seq_k)[None, None, :],
               "h": np.arange(case.heads)[:, None, None], "b": np.int64(b), "n_q": np.int64(case.seq_q),
               "n_k": np.int64(case.seq_k), "heads": np.int64(case.heads),
               "score": rng.normal(size=(case.heads, case.seq_q, case.seq_k)) * 2}
        try:
            for root in roots:
                _UndefinedFinder(env, checked).visit(root)
        except Undefined:
            raise Rejected("undefined (floor of nan/inf)") from None
        except AttnlangError:
            raise Rejected("runtime error") from None


# ------------------------------------------------------------------------------------------
# Check 1: the reference against the scalar evaluators (and the lowering against our AST)
# ------------------------------------------------------------------------------------------

def _same_float(a, b, rtol=1e-9) -> bool:
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= rtol * max(1.0, abs(a), abs(b))


def check_reference(case: Case) -> dict:
    check = "reference"
    pattern = build(check, case)
    inputs = make_inputs(case, pattern.inputs)
    b = case.batch_index
    ref = reference_masks(check, case, pattern, inputs, [b])[0]
    rows = input_rows(inputs, b)
    by_ir, by_source = IREvaluator(), SourceEvaluator(case.program)
    rng = np.random.default_rng(case.seed)
    points = [(0, 0, 0), (case.heads - 1, case.seq_q - 1, case.seq_k - 1)]
    points += [(int(rng.integers(case.heads)), int(rng.integers(case.seq_q)), int(rng.integers(case.seq_k)))
               for _ in range(24)]
    has_logit = pattern.ir.logit != ir.Var("score", ir.Type.FLOAT)
    if has_logit:
        import torch
        scores = torch.randn(b + 1, case.heads, case.seq_q, case.seq_k, dtype=torch.float64,
                             generator=torch.Generator().manual_seed(case.seed)) * 3
        length = max(case.seq_q, case.seq_k)
        per_batch = [reference.check_inputs(pattern.ir, inputs, length, i) for i in range(b + 1)]
        try:  # the reference's own logit transform (private, but the thing under test)
            logits = consumer_call(check, "reference logit", case, reference._logits, pattern.ir, scores,
                                   case.heads, per_batch, expected_errors=True)
        except AttnlangError as err:
            if not _EXPECTED_RUNTIME_ERRORS.search(str(err)):
                raise Failure(check, "reference logit", f"AttnlangError on a legal program: {err}",
                              case) from None
            has_logit = False
    for h, q, k in points:
        env = {"q": q, "k": k, "h": h, "b": b, "n_q": case.seq_q, "n_k": case.seq_k, "heads": case.heads,
               "inputs": rows}
        where = f"at b={b} h={h} q={q} k={k}"
        try:
            mine = by_ir.visit(pattern.ir.mask, env)
        except Undefined:
            continue
        except RuntimeFault as err:  # the reference evaluates this very IR, everywhere
            raise Failure(check, "reference_mask", f"gives a mask where the IR has a runtime error: {err}",
                          case, where) from None
        try:  # folding may drop an erroring subexpression (`x // 0 == 1 and false`): not a failure
            meant = by_source.mask(env)
        except (Undefined, RuntimeFault):
            continue
        if mine != meant:
            raise Failure(check, "checker (lowering)", "the IR's mask differs from the program's meaning",
                          case, f"{where}: IR {mine}, source {meant}\nIR mask: {pattern.ir.mask}")
        if bool(ref[h, q, k]) != mine:
            raise Failure(check, "reference_mask", "differs from the scalar evaluator", case,
                          f"{where}: reference {bool(ref[h, q, k])}, scalar {mine}\n"
                          f"IR mask: {pattern.ir.mask}")
        if not has_logit:
            continue
        score = float(scores[b, h, q, k])
        try:
            mine = by_ir.visit(pattern.ir.logit, {**env, "score": np.float64(score)})
            meant = by_source.logit(env, score)
        except (Undefined, RuntimeFault):
            continue
        got = float(logits[b, h, q, k])
        if not _same_float(mine, meant):
            raise Failure(check, "checker (lowering)", "the IR's logit differs from the program's meaning",
                          case,
                          f"{where} score={score!r}: IR {float(mine)!r}, source {float(meant)!r}\n"
                          f"IR logit: {pattern.ir.logit}")
        if not _same_float(got, mine):
            raise Failure(check, "reference logit", "differs from the scalar evaluator", case,
                          f"{where} score={score!r}: reference {got!r}, scalar {float(mine)!r}\n"
                          f"IR logit: {pattern.ir.logit}")
    return {}


# ------------------------------------------------------------------------------------------
# Check 2: analysis soundness, tile by tile
# ------------------------------------------------------------------------------------------

_KIND_NAMES = {EMPTY: "EMPTY", PARTIAL: "PARTIAL", FULL: "FULL"}


def tile_kinds(mask: np.ndarray, block_q: int, block_k: int) -> np.ndarray:
    """EMPTY/PARTIAL/FULL of each tile of a dense (heads, seq_q, seq_k) mask (in-range pairs only)."""
    heads, seq_q, seq_k = mask.shape
    tq, tk = -(-seq_q // block_q), -(-seq_k // block_k)
    pad = ((0, 0), (0, tq * block_q - seq_q), (0, tk * block_k - seq_k))
    shape = (heads, tq, block_q, tk, block_k)
    any_true = np.pad(mask, pad, constant_values=False).reshape(shape).any(axis=(2, 4))
    all_true = np.pad(mask, pad, constant_values=True).reshape(shape).all(axis=(2, 4))
    return np.where(all_true, FULL, np.where(any_true, PARTIAL, EMPTY)).astype(np.int8)


def reject_logit_errors(check: str, case: Case, pattern, inputs: dict, b: int) -> None:
    """Reject a program whose logit has a runtime error (say an input index out of range): it is
    not legal, though its mask alone evaluates."""
    if pattern.ir.logit == ir.Var("score", ir.Type.FLOAT):
        return
    import torch
    length = max(case.seq_q, case.seq_k)
    per_batch = [reference.check_inputs(pattern.ir, inputs, length, i) for i in range(b + 1)]
    scores = torch.zeros(b + 1, case.heads, case.seq_q, case.seq_k, dtype=torch.float64)
    try:
        consumer_call(check, "reference logit", case, reference._logits, pattern.ir, scores, case.heads,
                      per_batch, expected_errors=True)
    except AttnlangError as err:
        if _EXPECTED_RUNTIME_ERRORS.search(str(err)):
            raise Rejected("runtime error") from None
        raise Failure(check, "reference logit", f"AttnlangError on a legal program: {err}", case) from None


def check_analysis(case: Case) -> dict:
    check = "analysis"
    pattern = build(check, case)
    inputs = make_inputs(case, pattern.inputs)
    b = case.batch_index
    ref = reference_masks(check, case, pattern, inputs, [b])[0]
    reject_logit_errors(check, case, pattern, inputs, b)  # the analysis checks every input index
    reject_undefined(case, pattern, inputs, [b], logit=False)
    bq, bk = case.block
    block_map = consumer_call(check, "analysis", case, pattern.analyze, case.seq_q, case.seq_k,
                              heads=case.heads, block=(bq, bk), inputs=inputs, batch=b)
    kinds = block_map.kinds
    truth = tile_kinds(ref, bq, bk)
    if kinds.shape[1:] != truth.shape[1:] or kinds.shape[0] not in (1, case.heads):
        raise Failure(check, "analysis", f"kinds shape {kinds.shape}, expected (1 or {case.heads},) "
                      f"+ {truth.shape[1:]}", case)
    claimed = np.broadcast_to(kinds, truth.shape)
    unsound = ((claimed == FULL) & (truth != FULL)) | ((claimed == EMPTY) & (truth != EMPTY))
    if unsound.any():
        h, i, j = (int(x) for x in np.argwhere(unsound)[0])
        tile = ref[h, i * bq:(i + 1) * bq, j * bk:(j + 1) * bk]
        witness = np.argwhere(tile != (claimed[h, i, j] == FULL))[0]
        q, k = i * bq + int(witness[0]), j * bk + int(witness[1])
        raise Failure(check, "analysis", f"unsound {_KIND_NAMES[int(claimed[h, i, j])]} tile "
                      f"(truly {_KIND_NAMES[int(truth[h, i, j])]})", case,
                      f"{int(unsound.sum())} unsound tiles; first: head {h}, q tile {i}, k tile {j}; "
                      f"mask(b={b}, h={h}, q={q}, k={k}) = {bool(ref[h, q, k])}\nIR mask: {pattern.ir.mask}")
    considered = truth[:kinds.shape[0]]
    inexact = int(((kinds == PARTIAL) & (considered != PARTIAL)).sum())
    pairs = consumer_call(check, "analysis pairs", case, block_map.pairs, exact=True)
    expected = int(ref[:kinds.shape[0]].sum())
    if pairs != expected:
        raise Failure(check, "analysis pairs", f"pairs(exact=True) = {pairs}, the mask allows {expected}",
                      case)
    STATS.tiles += kinds.size
    STATS.inexact_tiles += inexact
    STATS.inexact_programs += bool(inexact)
    STATS.analysed_programs += 1
    return {"tiles": kinds.size, "inexact": inexact}


# ------------------------------------------------------------------------------------------
# Attention comparisons (flex and kernels)
# ------------------------------------------------------------------------------------------

def _qkv(case: Case, dtype, requires_grad: bool):
    import torch
    gen = torch.Generator().manual_seed(case.seed)
    heads_kv = case.heads_kv or case.heads
    shapes = [(case.batch, case.heads, case.seq_q, 16)] + [(case.batch, heads_kv, case.seq_k, 16)] * 2
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).requires_grad_(requires_grad)
            for s in shapes]


def _compare(check, consumer, case, what, got, expected, rows=None, rtol=2e-4, atol=2e-5, detail=""):
    """Raise a Failure naming the first (batch, head, row) where `got` is not close to `expected`."""
    import torch
    got, expected = got.detach().double(), expected.detach().double()
    if rows is not None:
        got, expected = torch.where(rows, got, 0.0), torch.where(rows, expected, 0.0)
    bad = ~torch.isclose(got, expected, rtol=rtol, atol=atol, equal_nan=True)
    if bad.any():
        index = tuple(int(x) for x in torch.nonzero(bad)[0])
        kind = "NaN/inf" if not torch.isfinite(got[index]) else "mismatch"
        raise Failure(check, consumer, f"{what} {kind}", case,
                      f"{int(bad.sum())} elements differ; first at {index}: got {float(got[index])!r}, "
                      f"expected {float(expected[index])!r}{detail}")


def _reference_attention(check, case, pattern, q, k, v, inputs):
    import torch
    try:
        out, lse = consumer_call(check, "reference_attention", case, pattern.reference_attention, q, k, v,
                                 inputs=inputs, return_lse=True, expected_errors=True)
    except AttnlangError as err:
        if _EXPECTED_RUNTIME_ERRORS.search(str(err)):
            raise Rejected("runtime error") from None
        raise Failure(check, "reference_attention", f"AttnlangError on a legal program: {err}",
                      case) from None
    if not torch.isfinite(out).all():
        raise Rejected("non-finite reference attention (NaN/inf logits)")
    return out, lse


def _program_summary(pattern) -> str:
    return f"\nIR mask: {pattern.ir.mask}\nIR logit: {pattern.ir.logit}"


# ------------------------------------------------------------------------------------------
# Check 3: FlexAttention export
# ------------------------------------------------------------------------------------------

def _flex_with_lse(flex_attention, *args, **kwargs):
    """FlexAttention's output and LSE (`return_aux` where torch has it, else `return_lse`)."""
    try:
        from torch.nn.attention.flex_attention import AuxRequest
    except ImportError:
        return flex_attention(*args, return_lse=True, **kwargs)
    out, aux = flex_attention(*args, return_aux=AuxRequest(lse=True), **kwargs)
    return out, aux.lse


def check_flex(case: Case) -> dict:
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, create_mask, flex_attention
    check = "flex"
    pattern = build(check, case)
    if pattern.is_routed:
        raise Rejected("routed")
    inputs = make_inputs(case, pattern.inputs, one_dimensional=True)  # flex mods read 1-D inputs
    ref = reference_masks(check, case, pattern, inputs, range(case.batch))
    reject_undefined(case, pattern, inputs, range(case.batch), logit=True)
    B, H, Q, K = case.batch, case.heads, case.seq_q, case.seq_k
    summary = _program_summary(pattern)
    mask_mod, score_mod = consumer_call(check, "flex_mods", case, pattern.flex_mods, Q, K, H, inputs)
    exported = consumer_call(check, "flex mask_mod (create_mask)", case, create_mask, mask_mod, B, H, Q, K,
                             device="cpu").numpy()
    if exported.shape != ref.shape or (exported != ref).any():
        where = np.argwhere(exported != ref)[0] if exported.shape == ref.shape else None
        raise Failure(check, "flex mask_mod", "differs from the reference mask", case,
                      f"shape {exported.shape}; first difference (b, h, q, k) = {where}{summary}")
    q, k, v = _qkv(case, torch.float64, requires_grad=False)
    reject_float64_sensitive(case, pattern, inputs, ref, _scores(case, q, k))
    ref_out, ref_lse = _reference_attention(check, case, pattern, q, k, v, inputs)
    rows = torch.from_numpy(ref.any(-1))
    gqa = {"enable_gqa": True} if (case.heads_kv or H) != H else {}
    block_masks = {"create_block_mask": lambda: create_block_mask(mask_mod, B, H, Q, K, device="cpu")}
    if not any(isinstance(n, ir.Var) and n.name == "b" for n in ir.walk(pattern.ir.mask)):
        block_masks["analysis to_flex"] = lambda: pattern.analyze(Q, K, heads=H, block=32,
                                                                  inputs=inputs).to_flex(mask_mod)
    for source, make in block_masks.items():
        block_mask = consumer_call(check, f"flex block mask ({source})", case, make)
        out, lse = consumer_call(check, f"flex_attention ({source})", case, _flex_with_lse, flex_attention,
                                 q, k, v, score_mod=score_mod, block_mask=block_mask, **gqa)
        consumer = f"flex_attention ({source})"
        _compare(check, consumer, case, "output", out, ref_out, rows[..., None], 1e-7, 1e-9, summary)
        _compare(check, consumer, case, "lse", lse, ref_lse, rows, 1e-7, 1e-9, summary)
    return {}


# ------------------------------------------------------------------------------------------
# Check 4: the Triton kernels (interpreter, float32)
# ------------------------------------------------------------------------------------------

def reject_precision_sensitive(case: Case, pattern, inputs: dict, ref: np.ndarray, scores) -> None:
    """Reject cases whose logit moves beyond the tolerance when computed in float32, as the kernels
    do (docs/language.md "Precision"; their masks are float64, as in the reference), or whose slope
    in `score` (above 8) would magnify float32 rounding in the gradients beyond it."""
    f64, f32 = IREvaluator(np.float64), IREvaluator(np.float32)
    for env, score in _allowed_samples(case, pattern, inputs, ref, scores):
        try:
            exact, above, below = (float(f64.visit(pattern.ir.logit, {**env, "score": np.float64(s)}))
                                   for s in (score, score + 1e-4, score - 1e-4))
            rough = float(f32.visit(pattern.ir.logit, {**env, "score": np.float32(score)}))
        except (Undefined, RuntimeFault):
            raise Rejected("logit undefined") from None
        close = abs(rough - exact) <= 1e-5 * (1 + abs(exact))
        if not (math.isfinite(exact) and abs(exact) < 1e4 and close):
            raise Rejected("logit depends on float precision")
        if not abs(above - below) <= 2e-4 * 8:  # float32 errors in dq/dk grow with the slope
            raise Rejected("logit too steep for float32 gradients")


def reject_float64_sensitive(case: Case, pattern, inputs: dict, ref: np.ndarray, scores) -> None:
    """Reject cases whose float64 logit is so large that its rounding (|logit| * 2^-52) exceeds
    the flex comparison's tolerance: `bias 2147483648.0` is shift-invariant in exact arithmetic
    only. FlexAttention and the reference then round differently, both correctly."""
    f64 = IREvaluator(np.float64)
    for env, score in _allowed_samples(case, pattern, inputs, ref, scores):
        try:
            logit = float(f64.visit(pattern.ir.logit, {**env, "score": np.float64(score)}))
        except (Undefined, RuntimeFault):
            raise Rejected("logit undefined") from None
        if not abs(logit) < 1e5:
            raise Rejected("logit too large for float64 agreement")


def _allowed_samples(case: Case, pattern, inputs: dict, ref: np.ndarray, scores, limit: int = 300):
    """Up to `limit` allowed pairs per batch entry, as (environment, score) for the evaluators;
    nothing when the logit is the score itself."""
    if pattern.ir.logit == ir.Var("score", ir.Type.FLOAT):
        return
    with np.errstate(all="ignore"):
        for b in range(case.batch):
            rng = np.random.default_rng(case.seed + b)
            base = {"b": b, "n_q": case.seq_q, "n_k": case.seq_k, "heads": case.heads,
                    "inputs": input_rows(inputs, b)}
            allowed = np.argwhere(ref[b])
            for h, q, k in allowed[rng.permutation(len(allowed))[:limit]]:
                yield {**base, "h": int(h), "q": int(q), "k": int(k)}, float(scores[b, h, q, k])


def _scores(case: Case, q, k) -> np.ndarray:
    """The scaled q·k of every pair, float64 (keys repeated over the query heads they serve)."""
    group = case.heads // (case.heads_kv or case.heads)
    return (q.detach().double() @ k.detach().double().repeat_interleave(group, 1).transpose(-1, -2)
            / math.sqrt(q.shape[-1])).numpy()


def _grads(loss, tensors):
    """d loss / d tensors; zeros for a tensor the loss does not depend on (a logit without `score`)."""
    import torch
    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, tensors)]


def check_kernel(case: Case) -> dict:
    import torch

    from attnlang.codegen.runtime import load_module
    check = "kernel"
    pattern = build(check, case)
    if pattern.is_routed:
        raise Rejected("routed")
    inputs = make_inputs(case, pattern.inputs)
    ref = reference_masks(check, case, pattern, inputs, range(case.batch))
    reject_undefined(case, pattern, inputs, range(case.batch), logit=True)
    q, k, v = _qkv(case, torch.float32, requires_grad=True)
    heads_kv = case.heads_kv or case.heads
    scores = _scores(case, q, k)
    reject_precision_sensitive(case, pattern, inputs, ref, scores)
    summary = _program_summary(pattern)
    grad_out = torch.randn(case.batch, case.heads, case.seq_q, 16,
                           generator=torch.Generator().manual_seed(case.seed))
    q64, k64, v64 = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    ref_out, ref_lse = _reference_attention(check, case, pattern, q64, k64, v64, inputs)
    ref_grads = _grads((ref_out * grad_out.double()).sum(), (q64, k64, v64))
    if not all(torch.isfinite(g).all() for g in ref_grads):
        raise Rejected("non-finite reference gradients")
    kernel = consumer_call(check, "kernel compile", case, pattern.compile, heads=case.heads, head_dim=16,
                           heads_kv=heads_kv, block=case.block)
    tensors = {n: torch.from_numpy(a) for n, a in inputs.items()}

    def run_kernel():
        return kernel(q, k, v, inputs=inputs, return_lse=True)

    def run_standalone():  # the module `attnlang compile -o` writes: row-major tokens
        row_major = pattern.compile(heads=case.heads, head_dim=16, heads_kv=heads_kv, block=case.block,
                                    layout="row-major")
        module = load_module(row_major.standalone_source(), f"fuzz_{pattern.slug[:40]}", interpret=True)
        return module.attention(q, k, v, inputs=tensors, return_lse=True)

    for consumer, run in (("kernel (analysis tables)", run_kernel),
                          ("standalone kernel (device tables)", run_standalone)):
        out, lse = consumer_call(check, consumer, case, run)
        grads = consumer_call(check, consumer + " backward", case, _grads, (out * grad_out).sum(), (q, k, v))
        _compare(check, consumer, case, "output", out, ref_out, detail=summary)
        finite = torch.isfinite(ref_lse)
        if not torch.equal(torch.isfinite(lse), finite):
            index = tuple(int(x) for x in torch.nonzero(torch.isfinite(lse) != finite)[0])
            raise Failure(check, consumer, "LSE finite where the reference row is fully masked (or not)",
                          case,
                          f"at {index}: got {float(lse[index])}, expected {float(ref_lse[index])}{summary}")
        _compare(check, consumer, case, "lse", torch.where(finite, lse.double(), 0.0),
                 torch.where(finite, ref_lse, 0.0), detail=summary)
        for letter, got, expected in zip("qkv", grads, ref_grads):
            _compare(check, consumer, case, f"d{letter}", got, expected, detail=summary)
    return {}


# ------------------------------------------------------------------------------------------
# Running checks: from pytest and from the command line
# ------------------------------------------------------------------------------------------

CHECKS = {"reference": check_reference, "analysis": check_analysis, "flex": check_flex,
          "kernel": check_kernel}


def run_check(check: str, case: Case) -> None:
    """Run one check on one case inside a hypothesis test: rejections become `reject()`, and an
    exception no consumer raised (a bug of this file) a Failure that shows the case."""
    try:
        with np.errstate(all="ignore"):
            CHECKS[check](case)
    except Rejected as why:
        STATS.rejected[(check, why.reason)] += 1
        reject()
    except Failure:
        raise
    except Exception as err:
        raise Failure(check, "fuzzer itself", _describe(err), case,
                      "".join(traceback.format_exception(err)[-4:])[-800:]) from err
    STATS.ran[check] += 1


def hypothesis_test(check: str, max_examples: int, seed: int | None = None, database=None, quiet=False):
    """A hypothesis test function running `check` on `max_examples` cases."""
    from hypothesis import Verbosity
    from hypothesis import seed as hypothesis_seed

    @settings(max_examples=max_examples, deadline=None, database=database, report_multiple_bugs=True,
              suppress_health_check=list(HealthCheck),
              verbosity=Verbosity.quiet if quiet else Verbosity.normal)
    @given(case=cases(check))
    def test(case):
        run_check(check, case)

    return hypothesis_seed(seed)(test) if seed is not None else test


# -- reducing a failure ----------------------------------------------------------------------
#
# Hypothesis shrinks the choice sequence; on slow checks (flex, kernels) its budget runs out with
# unused helpers and statements still in the program. `reduce_failure` then works on the program
# itself: it drops statements and helpers, replaces sub-expressions by a child of the same type or
# by a leaf, and shrinks the shapes, keeping each change that fails with the same signature.

_LEAVES = {INT: (lit(0), lit(1), name("q", INT), name("k", INT)), FLOAT: (lit(0.0), lit(1.0)),
           BOOL: (lit(True), lit(False))}


def _subexpressions(e: Expr, path=()):
    yield path, e
    for i, child in enumerate(e.args):
        yield from _subexpressions(child, path + (i,))


def _replace(e: Expr, path: tuple, new: Expr) -> Expr:
    if not path:
        return new
    args = list(e.args)
    args[path[0]] = _replace(args[path[0]], path[1:], new)
    return Expr(e.op, e.type, tuple(args), e.value)


def _simpler(e: Expr):
    """Same-typed expressions simpler than `e`: its children, then leaves."""
    for child in e.args:
        if child.type == e.type:
            yield child
    if e.args or e.op == "pcall":
        yield from _LEAVES[e.type]


def _with_body(program: Program, index: int, body: tuple) -> Program:
    decls = list(program.helpers) + [program.main]
    decls[index] = Decl(decls[index].name, decls[index].params, body)
    return Program(tuple(decls[:-1]), decls[-1])


def _with_params(program: Program, index: int, params: tuple) -> Program:
    decls = list(program.helpers) + [program.main]
    decls[index] = Decl(decls[index].name, params, decls[index].body)
    return Program(tuple(decls[:-1]), decls[-1])


_SIMPLE_VALUES = {INT: 1, FLOAT: 1.0, BOOL: True}


def _candidate_programs(program: Program):
    for index in range(len(program.helpers)):  # drop a helper
        yield Program(program.helpers[:index] + program.helpers[index + 1:], program.main)
    decls = list(program.helpers) + [program.main]
    for index, decl in enumerate(decls):  # drop a parameter, or give it a simple value
        for position, (param, kind, value) in enumerate(decl.params):
            yield _with_params(program, index, decl.params[:position] + decl.params[position + 1:])
            if value != _SIMPLE_VALUES[kind]:
                simple = (param, kind, _SIMPLE_VALUES[kind])
                params = decl.params[:position] + (simple,) + decl.params[position + 1:]
                yield _with_params(program, index, params)
    for index, decl in enumerate(decls):  # drop a statement
        for position in range(len(decl.body)):
            yield _with_body(program, index, decl.body[:position] + decl.body[position + 1:])
    for index, decl in enumerate(decls):  # simplify an expression of a statement
        for position, stmt in enumerate(decl.body):
            slot = {"let": 2, "mask": 1, "bias": 1, "score": 1}.get(stmt[0])
            if slot is None:
                continue
            for path, sub in _subexpressions(stmt[slot]):
                for simpler in _simpler(sub):
                    new = stmt[:slot] + (_replace(stmt[slot], path, simpler),) + stmt[slot + 1:]
                    yield _with_body(program, index, decl.body[:position] + (new,) + decl.body[position + 1:])


def _candidate_cases(case: Case):
    for program in _candidate_programs(case.program):
        yield replace(case, program=program)
    shapes = [{"seq_q": case.seq_q // 2}, {"seq_q": case.seq_q - 1}, {"seq_k": case.seq_k // 2},
              {"seq_k": case.seq_k - 1}, {"heads": 1, "heads_kv": 1},
              {"batch": 1, "batch_index": 0, "per_batch_inputs": False}]
    for change in shapes:
        if all(v >= 1 for v in change.values() if isinstance(v, int) and not isinstance(v, bool)) and any(
                getattr(case, key) != value for key, value in change.items()):
            yield replace(case, **change)


def _fails_the_same(check: str, case: Case, signature: str) -> Failure | None:
    try:
        with np.errstate(all="ignore"):
            CHECKS[check](case)
    except Failure as failure:
        return failure if failure.signature == signature else None
    except Exception:  # noqa: BLE001 - a rejected or broken candidate is simply not a reduction
        return None
    return None


def reduce_failure(failure: Failure, seconds: float = 90.0) -> Failure:
    """A smaller case failing with the same signature (greedy, until nothing helps or time is up)."""
    if failure.case is None:
        return failure
    deadline = time.monotonic() + seconds
    best, progress = failure, True
    while progress and time.monotonic() < deadline:
        progress = False
        for candidate in _candidate_cases(best.case):
            if time.monotonic() >= deadline:
                break
            smaller = _fails_the_same(best.check, candidate, failure.signature)
            if smaller is not None and len(repr(candidate)) <= len(repr(best.case)):
                best, progress = smaller, True
                break
    return best


# Examples per round of the CLI: 5-40 s of work each; kernels, where most bugs live, get the most.
ROUND_EXAMPLES = {"reference": 100, "analysis": 80, "flex": 20, "kernel": 20}


def _failures_of(error: BaseException) -> list:
    if hasattr(error, "exceptions"):  # an exception group: several distinct bugs
        return [f for e in error.exceptions for f in _failures_of(e)]
    return [error]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long to run (default 30)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the first round (default: random)")
    parser.add_argument("--checks", default=",".join(CHECKS),
                        help="comma-separated subset of " + ",".join(CHECKS))
    parser.add_argument("--shrink-seconds", type=float, default=40.0,
                        help="time limit of hypothesis' shrinking of one failure (default 40)")
    parser.add_argument("--reduce-seconds", type=float, default=90.0,
                        help="time limit of the structural reduction that follows it (default 90)")
    args = parser.parse_args(argv)
    checks = [c.strip() for c in args.checks.split(",") if c.strip()]
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        parser.error(f"unknown check {unknown[0]!r} (checks: {', '.join(CHECKS)})")
    try:  # hypothesis shrinks for up to 5 minutes by default; kernels make that long
        from hypothesis.internal.conjecture import engine
        engine.MAX_SHRINKING_SECONDS = args.shrink_seconds
    except (ImportError, AttributeError):
        pass
    import warnings
    warnings.filterwarnings("ignore")
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(3), "little")
    print(f"attnlang fuzzer: checks {', '.join(checks)}, {args.minutes:g} minutes, seed {seed}", flush=True)
    start, deadline = time.monotonic(), time.monotonic() + 60 * args.minutes
    symptoms: set[str] = set()
    seen: dict[tuple, int] = {}  # (signature, shape of the reduced program) -> times found
    failures: list[Failure] = []
    rounds = 0
    while time.monotonic() < deadline:
        for check in checks:
            if time.monotonic() >= deadline:
                break
            round_seed = seed + rounds
            try:
                hypothesis_test(check, ROUND_EXAMPLES[check], round_seed, quiet=True)()
            except BaseException as error:  # noqa: BLE001 - report everything, keep fuzzing
                if isinstance(error, KeyboardInterrupt):
                    deadline = 0
                    break
                for failure in _failures_of(error):
                    if not isinstance(failure, Failure):
                        failure = Failure(check, "fuzzer itself", f"{type(failure).__name__}: {failure}",
                                          None,
                                          "".join(traceback.format_exception(failure)[-8:]))
                    # a symptom seen before gets a quick reduction: a new shape may be a new bug
                    first = failure.signature not in symptoms
                    symptoms.add(failure.signature)
                    budget = args.reduce_seconds if first else args.reduce_seconds / 3
                    budget = min(budget, max(10.0, deadline - time.monotonic()))
                    failure = reduce_failure(failure, budget)
                    key = (failure.signature, _shape(failure))
                    seen[key] = seen.get(key, 0) + 1
                    if seen[key] == 1:
                        failures.append(failure)
                        print("\n" + failure.report() + f"\n(check {check}, round seed {round_seed})\n",
                              flush=True)
                    else:
                        print(f"  again: {failure.signature}", flush=True)
        rounds += 1
        counts = " | ".join(f"{c} {STATS.ran[c]} ran, {_rejected(c)} rejected" for c in checks)
        minutes = (time.monotonic() - start) / 60
        print(f"[{minutes:5.1f} min] round {rounds}: {counts} | {len(failures)} distinct failures",
              flush=True)
    print(_summary(checks, failures, seen, time.monotonic() - start))
    return 1 if failures else 0


def _shape(failure: Failure) -> str:
    """The reduced program's IR with its numbers taken out: tells apart failures of one symptom."""
    if failure.case is None:
        return ""
    try:
        lowered = attnlang.parse(failure.case.program.source)["main"].ir
    except Exception:  # noqa: BLE001 - a program the checker rejects is its own shape
        return failure.case.program.source
    return re.sub(r"-?[0-9][0-9.e+-]*", "N", f"{lowered.mask} | {lowered.logit}")


def _rejected(check: str) -> int:
    return sum(n for (c, _), n in STATS.rejected.items() if c == check)


def _summary(checks, failures, seen, seconds) -> str:
    lines = ["", "=" * 88, f"summary after {seconds / 60:.1f} minutes"]
    for check in checks:
        reasons = ", ".join(f"{r} {n}" for (c, r), n in sorted(STATS.rejected.items()) if c == check)
        lines.append(f"  {check:10s} {STATS.ran[check]:6d} programs checked; rejected: {reasons or 'none'}")
    if STATS.analysed_programs:
        lines.append(f"  analysis exactness: {STATS.inexact_tiles} of {STATS.tiles} tiles PARTIAL but truly "
                     f"FULL/EMPTY, in {STATS.inexact_programs} of {STATS.analysed_programs} programs")
    lines.append(f"  {len(failures)} distinct failures:")
    for f in failures:
        lines.append(f"    {seen[(f.signature, _shape(f))]:4d} x [{f.check}] {f.signature}")
        if f.case is not None:
            lines += ["           " + line for line in repr(f.case).splitlines()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
