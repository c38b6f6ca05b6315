"""Hypothesis strategies: random well-typed attnlang expressions, as AST trees.

Trees use the names of `PROGRAM_HEADER` (int parameter `w`, float `f`, bool `flag`, input
`doc`) and every built-in variable, so a tree wrapped by `wrap_mask` is a checkable pattern.
"""

from hypothesis import strategies as st

from attnlang import ast

PROGRAM_HEADER = "pattern t(w = 5, f = 0.5, flag = true) {\n    input doc: int[tokens]\n"
PARAMS = (ast.Param("w", ast.IntLit(5)), ast.Param("f", ast.FloatLit(0.5)), ast.Param("flag", ast.BoolLit(True)))

INT_NAMES = ["q", "k", "h", "b", "n_q", "n_k", "heads", "w"]
POSITION_NAMES = ["q", "k"]


def wrap_mask(expr: ast.Expr) -> ast.PatternDecl:
    return ast.PatternDecl("t", PARAMS, (ast.Input("doc"), ast.Mask(expr)))


def _negate(expr: ast.Expr) -> ast.Expr:
    """Unary minus as the parser builds it: `-3` is the literal -3, not a negation."""
    if isinstance(expr, ast.IntLit | ast.FloatLit) and expr.value >= 0:
        return type(expr)(-expr.value)
    return ast.Unary("-", expr)


def _leaf(kind: str):
    if kind == "int":
        return st.one_of(st.integers(-40, 40).map(ast.IntLit), st.sampled_from(INT_NAMES).map(ast.Name))
    if kind == "float":
        floats = st.floats(-100, 100, allow_nan=False).map(lambda x: round(x, 3))
        return st.one_of(floats.map(ast.FloatLit), st.just(ast.Name("f")))
    return st.one_of(st.booleans().map(ast.BoolLit), st.just(ast.Name("flag")))


def typed_exprs(kind: str, depth: int = 4):
    """A strategy for well-typed expressions of `kind` ("int", "float" or "bool")."""
    if depth == 0:
        return _leaf(kind)
    sub = lambda k: typed_exprs(k, depth - 1)  # noqa: E731
    number = st.one_of(sub("int"), sub("float"))
    if kind == "int":
        branches = [
            st.tuples(st.sampled_from(["+", "-", "*", "//", "%"]), sub("int"), sub("int"))
            .map(lambda t: ast.Binary(*t)),
            st.tuples(sub("int"), st.integers(0, 3)).map(lambda t: ast.Binary("**", t[0], ast.IntLit(t[1]))),
            sub("int").map(_negate),
            st.tuples(st.sampled_from(["abs"]), sub("int")).map(lambda t: ast.Call(t[0], (t[1],))),
            st.tuples(st.sampled_from(["min", "max"]), st.lists(sub("int"), min_size=2, max_size=3))
            .map(lambda t: ast.Call(t[0], tuple(t[1]))),
            st.tuples(sub("int"), sub("int"), sub("int")).map(lambda t: ast.Call("clamp", t)),
            st.tuples(st.sampled_from(["floor", "ceil"]), sub("float")).map(lambda t: ast.Call(t[0], (t[1],))),
            st.lists(sub("int"), min_size=1, max_size=3).map(lambda xs: ast.Call("hash", tuple(xs))),
            st.sampled_from(POSITION_NAMES).map(lambda p: ast.Index("doc", ast.Name(p))),
            st.tuples(sub("bool"), sub("int"), sub("int")).map(lambda t: ast.IfExpr(*t)),
        ]
    elif kind == "float":
        branches = [
            st.tuples(st.sampled_from(["+", "-", "*", "/"]), number, number)
            .filter(lambda t: "float" in (_kind(t[1]), _kind(t[2])) or t[0] == "/")
            .map(lambda t: ast.Binary(*t)),
            st.tuples(number, number).map(lambda t: ast.Binary("**", t[0], t[1]))
            .filter(lambda e: not isinstance(e.right, ast.IntLit) or _kind(e.left) == "float"),
            sub("float").map(_negate),
            st.tuples(st.sampled_from(["log", "log2", "exp", "sqrt", "tanh"]), number)
            .map(lambda t: ast.Call(t[0], (t[1],))),
            st.tuples(sub("bool"), sub("float"), sub("float")).map(lambda t: ast.IfExpr(*t)),
        ]
    else:
        branches = [
            st.tuples(st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), number, number)
            .map(lambda t: ast.Binary(*t)),
            st.tuples(st.sampled_from(["and", "or"]), sub("bool"), sub("bool")).map(lambda t: ast.Binary(*t)),
            st.tuples(st.sampled_from(["==", "!="]), sub("bool"), sub("bool")).map(lambda t: ast.Binary(*t)),
            sub("bool").map(lambda x: ast.Unary("not", x)),
            st.tuples(sub("bool"), sub("bool"), sub("bool")).map(lambda t: ast.IfExpr(*t)),
        ]
    return st.one_of(_leaf(kind), *branches)


def _kind(expr: ast.Expr) -> str:
    """The static type of a generated tree (enough for the filters above)."""
    match expr:
        case ast.IntLit() | ast.Index():
            return "int"
        case ast.FloatLit():
            return "float"
        case ast.BoolLit():
            return "bool"
        case ast.Name(id):
            return {"f": "float", "flag": "bool"}.get(id, "int")
        case ast.Unary("-", operand):
            return _kind(operand)
        case ast.Unary():
            return "bool"
        case ast.Binary(op, left, right):
            if op in ("and", "or", "==", "!=", "<", "<=", ">", ">="):
                return "bool"
            if op in ("/",):
                return "float"
            if op == "**":
                exact = _kind(left) == "int" and isinstance(right, ast.IntLit) and right.value >= 0
                return "int" if exact else "float"
            return "float" if "float" in (_kind(left), _kind(right)) else "int"
        case ast.Call(func, args):
            if func in ("floor", "ceil", "hash"):
                return "int"
            if func in ("log", "log2", "exp", "sqrt", "tanh"):
                return "float"
            return "float" if any(_kind(a) == "float" for a in args) else "int"
        case ast.IfExpr(_, then, orelse):
            return "float" if "float" in (_kind(then), _kind(orelse)) else _kind(then)
    raise TypeError(expr)
