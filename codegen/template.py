"""A pattern's kernel module: `kernel_template.py` with its two marked regions replaced.

The template is a real, linted Python module (dense attention as it stands). A pattern
contributes only its constants and five functions, printed from the IR and tagged with the
source line of their statement: `_mask`, `_logit2` (the logit in log2 units, so the kernels'
softmax runs on exp2 with the scale folded into one multiply), `_dlogit` (its derivative,
for the backward), `_indices_in_range` (for the device-side tile classifier) and `_keep`
(a routing pattern's `keep`: pairs allowed whatever the selection).
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

from attnlang import ir
from attnlang.fold import fold_constants
from attnlang.ir import Type

from .derivative import differentiate
from .triton_printer import IntegerFacts, PrintContext, jit_function

__all__ = ["standalone_source", "statement_origins", "log2_logit", "KERNEL_VERSION", "TEMPLATE"]

KERNEL_VERSION = 2
TEMPLATE = Path(__file__).with_name("kernel_template.py")
SCORE = ir.Var("score", Type.FLOAT)
_LOG2E, _LN2 = ir.Const(1 / math.log(2), Type.FLOAT), ir.Const(math.log(2), Type.FLOAT)
_SIGNATURE = "q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUTS_B, stride_input, INPUT_LEN, HEADS: tl.constexpr"
_RANGE_SIGNATURE = ("q_pos, k_pos, off_b, off_h, N_Q, N_K, INPUTS_B, stride_input, INPUT_LEN, INPUT_LENGTHS, "
                    "HEADS: tl.constexpr")


def _reads_score(node: ir.Expr) -> bool:
    return any(n == SCORE for n in ir.walk(node))


def log2_logit(logit: ir.Expr) -> ir.Expr:
    """`logit * log2(e)` as an expression of the log2-unit score `score * log2(e)`.

    Linear structure is kept, so a bias costs one multiply of its own and the identity none:
    `score + B` → `score + B * log2(e)`, `c * x` → `c * (x in log2 units)`; anything else reads
    the natural score back (`score * ln 2`) and is scaled once at the end.
    """
    def scaled(node: ir.Expr) -> ir.Expr:
        if node == SCORE:
            return SCORE
        if not _reads_score(node):
            return ir.Binary("*", _float(node), _LOG2E, Type.FLOAT)
        match node:
            case ir.Binary("+" | "-", left, right):
                return ir.Binary(node.op, scaled(left), scaled(right), Type.FLOAT)
            case ir.Binary("*", left, right) if not _reads_score(left):
                return ir.Binary("*", _float(left), scaled(right), Type.FLOAT)
            case ir.Binary("*" | "/", left, right) if not _reads_score(right):
                return ir.Binary(node.op, scaled(left), _float(right), Type.FLOAT)
            case ir.Unary("-", operand):
                return ir.Unary("-", scaled(operand), Type.FLOAT)
            case ir.Select(cond, then, orelse) if not _reads_score(cond):
                return ir.Select(cond, scaled(then), scaled(orelse), Type.FLOAT)
        natural = ir.substitute(node, {SCORE: ir.Binary("*", SCORE, _LN2, Type.FLOAT)})
        return ir.Binary("*", natural, _LOG2E, Type.FLOAT)

    return fold_constants(scaled(logit))


def _float(node: ir.Expr) -> ir.Expr:
    return node if node.type is Type.FLOAT else ir.Cast(node, Type.FLOAT)


def _dlogit_log2(logit: ir.Expr) -> ir.Expr:
    """d logit / d score (natural units), as an expression of the log2-unit score."""
    return fold_constants(ir.substitute(differentiate(logit), {SCORE: ir.Binary("*", SCORE, _LN2, Type.FLOAT)}))


def _index_conditions(pattern: ir.PatternIR) -> ir.Expr:
    from attnlang.analysis import input_index_ranges
    lengths = {name: ir.Var(f"len_{i}", Type.INT) for i, name in enumerate(pattern.inputs)}
    conditions = [in_range for _, in_range in input_index_ranges(pattern, lengths)]
    condition = conditions[0] if conditions else ir.Binary(">=", ir.Var("k", Type.INT), ir.Const(0, Type.INT),
                                                           Type.BOOL)
    for in_range in conditions[1:]:
        condition = ir.Binary("and", condition, in_range, Type.BOOL)
    return condition


def _range_function(pattern: ir.PatternIR, context: PrintContext) -> str:
    """`_indices_in_range`: every input index inside its own input (lengths read once)."""
    lengths = tuple(f"len_{i} = tl.load(INPUT_LENGTHS + {i})" for i in range(len(pattern.inputs)))
    return jit_function("_indices_in_range", _RANGE_SIGNATURE, _index_conditions(pattern),
                        "every input index inside its input", wide=True, context=context, preamble=lengths)


def statement_origins(decl) -> dict[str, str]:
    """Where a pattern's mask, logit and routing come from: `file:line` of each statement that
    makes them (`mask` and `use` for the mask, `bias`, `score` and `use` for the logit)."""
    from attnlang import ast
    kinds = {"mask": (ast.Mask, ast.Use), "logit": (ast.Bias, ast.Score, ast.Use), "route": (ast.Route,)}
    origins = {}
    for part, types in kinds.items():
        lines = [str(s.span.line) for s in decl.body if isinstance(s, types) and s.span is not None]
        if lines and decl.span is not None:
            origins[part] = f"from {decl.span.filename}:{', '.join(lines)}"
    return origins


def _pattern_region(pattern: ir.PatternIR, block: tuple[int, int], origins: dict[str, str]) -> str:
    from attnlang.analysis import input_index_ranges, pairs_depend_on
    mask = _tile_condition(pattern.mask)
    keep = _tile_condition(pattern.route.keep if pattern.route else ir.FALSE)
    logit2, dlogit = log2_logit(pattern.logit), _dlogit_log2(pattern.logit)
    facts = IntegerFacts((mask, keep, logit2, dlogit))
    context = PrintContext("tl.int32" if facts.int32 else "tl.int64", tuple(pattern.inputs), facts)
    reads = ", ".join(str(load) for load, _ in input_index_ranges(
        pattern, {name: ir.Const(0, Type.INT) for name in pattern.inputs}))
    constants = [
        f"PATTERN = {_label(pattern)!r}",
        f"MASK_READS_HEAD = {pairs_depend_on(pattern, 'h')}",
        f"MASK_READS_BATCH = {pairs_depend_on(pattern, 'b')}",
        f"INPUT_NAMES = {tuple(pattern.inputs)!r}",
        f"FLOAT_INPUTS = {ir.float_inputs(pattern)!r}",
        f"BLOCK_INPUTS = {ir.block_axes(pattern)!r}",
        f"INPUT_READS = {reads!r}",
        f"BLOCK = {tuple(block)!r}",
        f"ROUTE = {_route_constant(pattern.route)}",
    ]
    mask_origin = origins.get("mask", "no mask statement: every pair")
    logit_origin = origins.get("logit", "no bias or score statement: the scaled q.k") + ", in log2 units"
    functions = [
        jit_function("_mask", _SIGNATURE, mask, mask_origin, wide=True, context=context),
        # a logit of positions alone (or a constant) still fills the whole tile
        jit_function("_logit2", "score, " + _SIGNATURE, logit2, logit_origin, context=context,
                     result="{}" if _reads_score(logit2) else "{} + tl.zeros_like(score)"),
        jit_function("_dlogit", "score, " + _SIGNATURE, dlogit, "d logit / d score", context=context),
        _range_function(pattern, context),
        jit_function("_keep", _SIGNATURE, keep, origins.get("route", "no route: nothing kept beyond the selection"),
                     wide=True, context=context),
    ]
    identity = pattern.logit == SCORE
    return "\n".join(constants) + "\n\n\n" + "\n\n".join(functions) + (
        f"\n\nLOGIT_IS_SCORE = tl.constexpr({identity})  # True: _logit2 is the identity and _dlogit 1")


def _tile_condition(condition: ir.Expr) -> ir.Expr:
    """A constant condition as a comparison, so that it fills the tile (every pair has k >= 0)."""
    if condition in (ir.TRUE, ir.FALSE):
        return ir.Binary(">=" if condition == ir.TRUE else "<", ir.Var("k", Type.INT), ir.Const(0, Type.INT),
                         Type.BOOL)
    return condition


def _route_constant(route: ir.RouteIR | None) -> str:
    """The routing's options as the module reads them (docs/language.md, Routing), or None."""
    if route is None:
        return "None"
    options = dict(top=route.top, block=route.block, qblock=route.query_block, pool=route.pool, qpool=route.qpool,
                   share=route.share, top_p=route.top_p, by=route.by)
    return "dict(" + ", ".join(f"{name}={value!r}" for name, value in options.items()) + ")"


def _label(pattern: ir.PatternIR) -> str:
    return f"{pattern.name}({', '.join(f'{k}={v!r}' for k, v in pattern.params)})"


def _replace_region(text: str, name: str, body: str, keep_markers: bool = True) -> str:
    """Replace what lies between the lines `# <attnlang:NAME>` and `# </attnlang:NAME>`."""
    pattern = re.compile(rf"(# <attnlang:{name}>\n).*?(# </attnlang:{name}>\n)", re.S)
    if len(pattern.findall(text)) != 1:
        raise RuntimeError(f"the kernel template must hold exactly one '{name}' region")
    body = body.rstrip("\n") + "\n"
    return pattern.sub(lambda m: (m.group(1) + body + m.group(2)) if keep_markers else body, text)


def standalone_source(pattern: ir.PatternIR, block: tuple[int, int], origins: dict[str, str] | None = None) -> str:
    """The kernel module of `pattern`: needs only torch and triton. It holds the kernels, a
    device-side tile classifier that fills the block tables, and `attention(q, k, v, ...)`.
    `origins` (from `statement_origins`) tags the spliced functions with their source lines."""
    template = TEMPLATE.read_text()
    region = _pattern_region(pattern, block, origins or {})
    digest = hashlib.sha256((template + region).encode()).hexdigest()[:12]
    header = "\n".join([
        f"# Triton kernels generated by attnlang for pattern {_label(pattern)}.",
        f"# mask:   {pattern.mask}",
        f"# logit:  {pattern.logit}",
        f"# inputs: {', '.join(pattern.inputs) or 'none'}    kernel version {KERNEL_VERSION}, id {digest}",
        "# Needs only torch and triton. The glossary below names every symbol.",
    ])
    return _replace_region(_replace_region(template, "pattern", region), "header", header, keep_markers=False)
