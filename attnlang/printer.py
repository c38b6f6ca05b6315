"""AST → canonical source text.

Parentheses come from one precedence table, so the printed text re-parses to the same
tree (`parse(print(tree)) == tree`, a property test).
"""

from __future__ import annotations

from . import ast

__all__ = ["print_module", "print_pattern", "print_expr"]

# Binding strength, loosest first; mirrors grammar.lark.
_IF, _OR, _AND, _NOT, _COMPARE, _SUM, _PRODUCT, _UNARY, _POWER, _POSTFIX = range(10)

_BINARY_PRECEDENCE = {
    "or": _OR, "and": _AND,
    **{op: _COMPARE for op in ast.COMPARISON_OPS},
    "+": _SUM, "-": _SUM,
    "*": _PRODUCT, "/": _PRODUCT, "//": _PRODUCT, "%": _PRODUCT,
    "**": _POWER,
}

INDENT = "    "


def print_module(module: ast.Module) -> str:
    return "\n".join(print_pattern(p) for p in module.patterns)


def print_pattern(decl: ast.PatternDecl) -> str:
    params = ", ".join(f"{p.name} = {print_expr(p.default)}" for p in decl.params)
    lines = [f"pattern {decl.name}({params}) {{"]
    lines += [INDENT + _print_stmt(stmt) for stmt in decl.body]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _print_arguments(args, kwargs) -> str:
    parts = [print_expr(a) for a in args] + [f"{k.name} = {print_expr(k.value)}" for k in kwargs]
    return ", ".join(parts)


def _print_stmt(stmt: ast.Stmt) -> str:
    match stmt:
        case ast.Let(name, value):
            return f"let {name} = {print_expr(value)}"
        case ast.Mask(expr):
            return f"mask {print_expr(expr)}"
        case ast.Bias(expr):
            return f"bias {print_expr(expr)}"
        case ast.Score(expr):
            return f"score {print_expr(expr)}"
        case ast.Grid(axes, sizes):
            return f"grid ({', '.join(axes)}) = ({', '.join(print_expr(s) for s in sizes)})"
        case ast.Input(name, dtype, "blocks", _, blocks, per_head):
            return f"input {name}: {dtype}[{'heads, ' if per_head else ''}blocks({', '.join(map(print_expr, blocks))})]"
        case ast.Input(name, dtype, extent):
            return f"input {name}: {dtype}[{extent}]"
        case ast.Use(name, args, kwargs):
            return f"use {name}({_print_arguments(args, kwargs)})"
        case ast.Route(func, args, kwargs):
            return f"route {func}({_print_arguments(args, kwargs)})"
    raise TypeError(f"not a statement: {stmt!r}")


def print_expr(expr: ast.Expr) -> str:
    return _print(expr)[0]


def _literal_precedence(value) -> int:
    # A negative literal prints as `-3`, which parses as a unary minus.
    return _UNARY if value < 0 or str(value).startswith("-") else _POSTFIX


def _print(expr: ast.Expr) -> tuple[str, int]:
    """The text of `expr` and how tightly it binds."""
    match expr:
        case ast.IntLit(value):
            return str(value), _literal_precedence(value)
        case ast.FloatLit(value):
            return repr(float(value)), _literal_precedence(value)
        case ast.BoolLit(value):
            return ("true" if value else "false"), _POSTFIX
        case ast.Name(id):
            return id, _POSTFIX
        case ast.Attr(base, attr):
            return f"{base}.{attr}", _POSTFIX
        case ast.Index(name, index):
            return f"{name}[{print_expr(index)}]", _POSTFIX
        case ast.Call(func, args, kwargs):
            return f"{func}({_print_arguments(args, kwargs)})", _POSTFIX
        case ast.Unary("-", operand):
            return "-" + _wrap(operand, _UNARY, strict=False), _UNARY
        case ast.Unary("not", operand):
            return "not " + _wrap(operand, _NOT, strict=False), _NOT
        case ast.Binary(op, left, right):
            return _print_binary(op, left, right), _BINARY_PRECEDENCE[op]
        case ast.IfExpr(cond, then, orelse):
            return f"if {print_expr(cond)} then {print_expr(then)} else {print_expr(orelse)}", _IF
        case ast.Tuple(items):
            return f"({', '.join(print_expr(item) for item in items)})", _POSTFIX
    raise TypeError(f"not an expression: {expr!r}")


def _print_binary(op: str, left: ast.Expr, right: ast.Expr) -> str:
    level = _BINARY_PRECEDENCE[op]
    if op == "**":  # right associative; the exponent may be a unary minus
        lhs = _wrap(left, _POWER, strict=True)
        rhs = _wrap(right, _UNARY, strict=False)
    elif level == _COMPARE:  # comparisons do not chain
        lhs = _wrap(left, _COMPARE, strict=True)
        rhs = _wrap(right, _COMPARE, strict=True)
    else:  # left associative; a long and/or spine in parentheses, as the parser nests it
        lhs = _wrap(left, level, strict=op in ast.LOGICAL_OPS and _spine(op, left) + 1 > ast.LEFT_DEEP_CHAIN)
        rhs = _wrap(right, level, strict=True)
    return f"{lhs} {op} {rhs}"


def _spine(op: str, expr: ast.Expr) -> int:
    """Operands along the left spine of `op` nodes from `expr` (1 when it is not one)."""
    count = 1
    while isinstance(expr, ast.Binary) and expr.op == op:
        count, expr = count + 1, expr.left
    return count


def _wrap(expr: ast.Expr, level: int, strict: bool) -> str:
    """Print `expr` in a position that needs binding strength `level` (`strict`: more than)."""
    text, own = _print(expr)
    needs_parens = own < level or (strict and own == level)
    return f"({text})" if needs_parens else text
