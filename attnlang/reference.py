"""The reference evaluator: the ground truth every other consumer is checked against.

`Evaluator` walks the IR (one method per node kind) over broadcast arrays: numpy for
masks (int64 positions, float64 arithmetic), torch for the logit transform so that
`score` stays differentiable. Attention is then computed densely, in float32 or float64.
Nothing here is fast; everything here is obviously right.
"""

from __future__ import annotations

import math
import operator

import numpy as np

from . import ir
from .builtins import hash_ints
from .errors import AttnlangError
from .ir import Type

__all__ = ["Evaluator", "evaluate_scalar", "mask_block", "reference_attention", "check_inputs"]


class _NumpyOps:
    """Array operations with Python semantics for `//` and `%` (numpy's are the same)."""

    name = "numpy"
    where = staticmethod(np.where)
    minimum = staticmethod(np.minimum)
    maximum = staticmethod(np.maximum)
    abs = staticmethod(np.abs)
    log = staticmethod(np.log)
    log2 = staticmethod(np.log2)
    exp = staticmethod(np.exp)
    sqrt = staticmethod(np.sqrt)
    tanh = staticmethod(np.tanh)

    @staticmethod
    def const(value, type_: Type):
        dtype = {Type.INT: np.int64, Type.FLOAT: np.float64, Type.BOOL: np.bool_}[type_]
        return np.asarray(value, dtype=dtype)

    @staticmethod
    def to_float(x):
        return np.asarray(x, dtype=np.float64)

    @staticmethod
    def floor(x):
        return np.floor(x).astype(np.int64)

    @staticmethod
    def ceil(x):
        return np.ceil(x).astype(np.int64)

    @staticmethod
    def any(x) -> bool:
        return bool(np.any(x))

    @staticmethod
    def hash(*args):
        return np.asarray(hash_ints(*args), dtype=np.int64)

    @staticmethod
    def take(values, index):
        return np.asarray(values)[index]

    @staticmethod
    def pow(a, b):
        return np.power(a, b)

    floordiv = staticmethod(np.floor_divide)


class _TorchOps:
    """The same operations on torch tensors (float64 for floats, int64 for ints)."""

    name = "torch"

    def __init__(self, device="cpu"):
        import torch
        self.torch = torch
        self.device = device
        self.where = torch.where
        self.minimum = torch.minimum
        self.maximum = torch.maximum
        self.abs = torch.abs
        self.log = torch.log
        self.log2 = torch.log2
        self.exp = torch.exp
        self.sqrt = torch.sqrt
        self.tanh = torch.tanh

    def const(self, value, type_: Type):
        dtype = {Type.INT: self.torch.int64, Type.FLOAT: self.torch.float64, Type.BOOL: self.torch.bool}[type_]
        return self.torch.tensor(value, dtype=dtype, device=self.device)

    def to_float(self, x):
        return x.to(self.torch.float64) if not x.is_floating_point() else x

    def floor(self, x):
        return self.torch.floor(x).to(self.torch.int64)

    def ceil(self, x):
        return self.torch.ceil(x).to(self.torch.int64)

    def any(self, x) -> bool:
        return bool(x.any())

    def hash(self, *args):
        arrays = [a.cpu().numpy() for a in args]
        return self.torch.from_numpy(np.asarray(hash_ints(*arrays), dtype=np.int64)).to(self.device)

    def take(self, values, index):
        return values[index]

    def pow(self, a, b):
        return self.torch.pow(a, b)

    def floordiv(self, a, b):
        # Python's floor division (floor_divide has no derivative; this one has slope 0)
        return self.torch.div(a, b, rounding_mode="floor")


Op = ir.BinaryOp
# numpy and torch give Python's floor semantics to // and % on their own
_BINARY = {
    Op.ADD: operator.add, Op.SUB: operator.sub, Op.MUL: operator.mul, Op.DIV: operator.truediv,
    Op.FLOOR_DIV: None, Op.MOD: operator.mod, Op.POW: None,  # None: the ops' own (pow, floordiv)
    Op.EQ: operator.eq, Op.NE: operator.ne, Op.LT: operator.lt, Op.LE: operator.le,
    Op.GT: operator.gt, Op.GE: operator.ge,
    Op.AND: operator.and_, Op.OR: operator.or_,  # no short-circuit: arrays are evaluated whole
}


# the method of the numpy/torch ops object that computes each builtin
_FUNCTIONS = {ir.Func.ABS: "abs", ir.Func.MIN: "minimum", ir.Func.MAX: "maximum", ir.Func.FLOOR: "floor",
              ir.Func.CEIL: "ceil", ir.Func.LOG: "log", ir.Func.LOG2: "log2", ir.Func.EXP: "exp",
              ir.Func.SQRT: "sqrt", ir.Func.TANH: "tanh", ir.Func.HASH: "hash"}


class Evaluator(ir.Visitor):
    """Evaluates IR expressions over broadcast arrays.

    `env` maps built-in variable names to arrays (or scalars); `inputs` maps input names
    to 1-D integer arrays. Integer division or modulo by zero is an `AttnlangError` at the
    dividing expression; float arithmetic follows IEEE (inf, nan), as in the kernels.
    """

    def __init__(self, env: dict, inputs: dict | None = None, ops=None):
        self.env = env
        self.inputs = inputs or {}
        self.ops = ops or _NumpyOps()

    def visit_Const(self, node: ir.Const):
        return self.ops.const(node.value, node.type)

    def visit_Var(self, node: ir.Var):
        if node.name not in self.env:
            raise AttnlangError(f"'{node.name}' has no value here", node.span)
        return self.env[node.name]

    def visit_Load(self, node: ir.Load):
        values = self.inputs[node.input]
        index = self.visit(node.index)
        length = values.shape[-1]
        if self.ops.any((index < 0) | (index >= length)):
            raise AttnlangError(f"index out of range for input '{node.input}' (length {length})", node.span)
        return self.ops.take(values, index)

    def visit_Cast(self, node: ir.Cast):
        return self.ops.to_float(self.visit(node.operand))

    def visit_Unary(self, node: ir.Unary):
        value = self.visit(node.operand)
        return ~value if node.op == ir.UnaryOp.NOT else -value

    def visit_Binary(self, node: ir.Binary):
        op = node.op
        left, right = self.visit(node.left), self.visit(node.right)
        if op in (Op.FLOOR_DIV, Op.MOD) and node.type is Type.INT and self.ops.any(right == 0):
            raise AttnlangError(f"integer {'division' if op == Op.FLOOR_DIV else 'modulo'} by zero", node.span)
        with np.errstate(all="ignore"):
            if op == Op.FLOOR_DIV:
                return self.ops.floordiv(left, right)
            if op == Op.POW:
                if node.type is Type.INT and self.ops.any(right < 0):
                    raise AttnlangError("negative exponent of an int power", node.span)
                return self.ops.pow(left, right)
            return _BINARY[op](left, right)

    def visit_Call(self, node: ir.Call):
        args = [self.visit(a) for a in node.args]
        with np.errstate(all="ignore"):
            return getattr(self.ops, _FUNCTIONS[node.func])(*args)

    def visit_Select(self, node: ir.Select):
        return self.ops.where(self.visit(node.cond), self.visit(node.then), self.visit(node.orelse))


def evaluate_scalar(node: ir.Expr):
    """Evaluate a node whose children are all constants, as a Python scalar."""
    value = Evaluator({}).visit(node)
    value = np.asarray(value).item()
    return {Type.INT: int, Type.FLOAT: float, Type.BOOL: bool}[node.type](value)


# -- masks ---------------------------------------------------------------------------------

def _input_kind(pattern: ir.PatternIR, name: str, length: int) -> str:
    """What input `name` is, for a message: "an int array of 70 tokens", "a float block array"."""
    blocks = {b[0]: b for b in pattern.block_inputs}
    if name in blocks:
        return f"a {blocks[name][4]} array of blocks ({blocks[name][1]} x {blocks[name][2]} tokens)"
    return f"{'a float' if name in ir.float_inputs(pattern) else 'an int'} array of {length} tokens"


def check_inputs(pattern: ir.PatternIR, inputs: dict | None, length: int, batch: int | None = None,
                 lengths: tuple[int, int] | None = None, heads: int | None = None) -> dict:
    """Validate runtime inputs against the pattern's declarations; return int64 arrays (float64
    for the inputs it reads as floats).

    Each input is a 1-D array of at least `length` entries (one per token) or, with a
    batch, a 2-D array (batch, tokens) from which row `batch` is taken. A block input
    (`bool[heads, blocks(BQ, BK)]`) is ([batch,] [heads,] query blocks, key blocks) at
    `lengths` (seq_q, seq_k; default both `length`) and `heads` (one map per head, when known),
    returned flattened as its reads index it. A routing's `by` scores must be finite.
    """
    if pattern.input_lengths is not None:  # a laid-out pattern: inputs are in token order
        lengths, length = pattern.input_lengths, max(pattern.input_lengths)
    inputs = dict(inputs or {})
    missing = [name for name in pattern.inputs if name not in inputs]
    if missing:
        raise AttnlangError(f"pattern '{pattern.name}' needs input '{missing[0]}' "
                            f"({_input_kind(pattern, missing[0], length)}): pass inputs={{'{missing[0]}': ...}}")
    unknown = [name for name in inputs if name not in pattern.inputs]
    if unknown:
        declared = ", ".join(pattern.inputs) or "none"
        raise AttnlangError(f"pattern '{pattern.name}' has no input '{unknown[0]}' (its inputs: {declared})")
    checked = {}
    floats = ir.float_inputs(pattern)
    blocks = {block_input[0]: block_input for block_input in pattern.block_inputs}
    for name in pattern.inputs:
        array = _as_float_array(inputs[name], name) if name in floats else _as_int_array(inputs[name], name)
        if name in blocks:
            checked[name] = _block_values(pattern, array, blocks[name], lengths or (length, length), batch, heads)
            if pattern.route is not None and pattern.route.by == name and not np.isfinite(checked[name]).all():
                raise AttnlangError(f"input '{name}' scores the routing (by = {name}): every score must be finite, "
                                    "found inf (leave a block out with keep or the mask instead)")
            continue
        if array.ndim == 2:
            row = 0 if batch is None else batch
            if row >= array.shape[0]:
                raise AttnlangError(f"input '{name}' has {array.shape[0]} rows; batch {row} was asked for")
            array = array[row]
        if array.ndim != 1:
            raise AttnlangError(f"input '{name}' must be 1-D (tokens) or 2-D (batch, tokens), "
                                f"got shape {tuple(array.shape)}")
        if array.shape[0] < length:
            raise AttnlangError(f"input '{name}' has {array.shape[0]} entries but the sequence has "
                                f"{length} tokens")
        checked[name] = array
    return checked


def has_batch_axis(pattern: ir.PatternIR, name: str, value) -> bool:
    """Whether input `name` was given one row per batch entry: `(batch, tokens)`, or a block
    input with a leading batch axis (`(batch, [heads,] query blocks, key blocks)`)."""
    ndim = np.ndim(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
    return ndim == ir.block_axes(pattern).get(name, 1) + 1


def _block_values(pattern: ir.PatternIR, array: np.ndarray, block_input, lengths: tuple[int, int], batch: int | None,
                  heads: int | None) -> np.ndarray:
    """A block input's entries for one batch entry, flattened (heads, query blocks, key blocks)."""
    name, bq, bk, per_head, dtype = block_input
    grid = (-(-lengths[0] // bq), -(-lengths[1] // bk))
    core = ir.block_axes(pattern)[name]
    per_entry = grid[0] * grid[1] * ((heads or 0) if per_head else 1)
    whole_maps = not per_entry and array.size % (grid[0] * grid[1]) == 0  # heads not known here
    if array.ndim == 1 and array.size and (array.size == per_entry or whole_maps):
        return array  # already flattened (a checked input, checked again)
    axes = (f"{heads or 'heads'}, " if per_head else "") + f"{grid[0]}, {grid[1]}"
    wrong_heads = per_head and heads is not None and array.ndim >= 3 and array.shape[-3] != heads
    if array.ndim not in (core, core + 1) or array.shape[-2:] != grid or wrong_heads:
        raise AttnlangError(f"input '{name}' is a block input of blocks({bq}, {bk}): at {lengths[0]} x {lengths[1]} "
                            f"tokens it is ([batch, ]{axes}), ceil(tokens / block) blocks per side; got shape "
                            f"{tuple(array.shape)}")
    if array.ndim == core + 1:
        row = 0 if batch is None else batch
        if row >= array.shape[0]:
            raise AttnlangError(f"input '{name}' has {array.shape[0]} batch entries; batch {row} was asked for")
        array = array[row]
    return np.ascontiguousarray(array).reshape(-1)


def _as_array(value, name: str, kinds: str, what: str) -> np.ndarray:
    """`value` (array-like or torch tensor) as numpy, its dtype one of numpy's `kinds`."""
    array = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
    if array.dtype.kind not in kinds:
        raise AttnlangError(f"input '{name}' must hold {what}, got dtype {array.dtype}")
    return array


def _as_float_array(value, name: str) -> np.ndarray:
    array = _as_array(value, name, "iubf", "numbers (a float input)").astype(np.float64)
    if np.isnan(array).any():
        raise AttnlangError(f"input '{name}' holds NaN at token {int(np.flatnonzero(np.isnan(array))[0])}: "
                            "a float input needs a value (inf allowed) for every token")
    return array


def _as_int_array(value, name: str) -> np.ndarray:
    return _as_array(value, name, "iub", "integers").astype(np.int64)


def mask_block(pattern: ir.PatternIR, q_range: range, k_range: range, heads: int, seq_q: int,
               seq_k: int, inputs: dict | None = None, batch: int = 0,
               head_range: range | None = None) -> np.ndarray:
    """The static mask on a block of (head, query, key) positions, as a bool array.

    Shape `(len(head_range), len(q_range), len(k_range))`; `head_range` defaults to all
    heads. `inputs` must already be checked (`check_inputs`). Evaluating a block rather
    than the whole matrix lets callers bound memory and decide single tiles exactly.
    """
    head_range = range(heads) if head_range is None else head_range
    env = {
        "q": np.arange(q_range.start, q_range.stop, dtype=np.int64)[None, :, None],
        "k": np.arange(k_range.start, k_range.stop, dtype=np.int64)[None, None, :],
        "h": np.arange(head_range.start, head_range.stop, dtype=np.int64)[:, None, None],
        "b": np.int64(batch), "n_q": np.int64(seq_q), "n_k": np.int64(seq_k),
        "heads": np.int64(heads),
    }
    value = Evaluator(env, inputs).visit(pattern.mask)
    return np.broadcast_to(value, (len(head_range), len(q_range), len(k_range)))


# -- attention -----------------------------------------------------------------------------

def _logits(pattern: ir.PatternIR, scores, heads: int, inputs_per_batch: list[dict]):
    """Apply the pattern's logit transform to raw scaled scores `(B, H, Nq, Nk)`."""
    import torch
    if pattern.logit == ir.Var("score", Type.FLOAT):
        return scores
    batch, _, seq_q, seq_k = scores.shape
    ops = _TorchOps(scores.device)
    rows = []
    for b in range(batch):
        env = {
            "q": torch.arange(seq_q, device=scores.device)[None, :, None],
            "k": torch.arange(seq_k, device=scores.device)[None, None, :],
            "h": torch.arange(heads, device=scores.device)[:, None, None],
            "b": torch.tensor(b), "n_q": torch.tensor(seq_q), "n_k": torch.tensor(seq_k),
            "heads": torch.tensor(heads), "score": scores[b],
        }
        inputs = {name: torch.from_numpy(v) for name, v in inputs_per_batch[b].items()}
        value = Evaluator(env, inputs, ops).visit(pattern.logit)
        rows.append(torch.broadcast_to(value, scores.shape[1:]).to(scores.dtype))
    return torch.stack(rows)


def _pool_blocks(x, block: int):
    """Mean of each block of `block` tokens along dim 2 (a ragged last block too)."""
    import torch
    batch, heads, length, dim = x.shape
    blocks = math.ceil(length / block)
    padded = torch.zeros(batch, heads, blocks * block, dim, dtype=x.dtype, device=x.device)
    padded[:, :, :length] = x
    counts = torch.clamp(length - torch.arange(blocks, device=x.device) * block, max=block)
    return padded.view(batch, heads, blocks, block, dim).sum(3) / counts[None, None, :, None].to(x.dtype)


def routed_mask(route: ir.RouteIR, static, keep, q, k, selection=None, scores=None):
    """The final mask of a routing pattern: static AND (selected blocks OR keep).

    For each (batch, head, query unit: a block of `route.query_block` tokens, or one token),
    the candidates are the key blocks holding at least one pair that the static mask allows
    and `keep` does not already allow; the `top` candidates with the highest score are
    selected (ties go to the lower block index; `attnlang.routing.select_blocks` defines the
    scores of each `pool`, `qpool` and `share`). `static`, `keep`: bool tensors `(B, H, Nq, Nk)`.
    `selection`: bool `(B, H, units, key blocks)` to use instead (a kernel's own, say);
    `scores`: the `by = NAME` input's, `(B, H, units, key blocks)`.
    """
    import torch

    from .routing import select_blocks
    block, unit = route.block, route.query_block
    batch, heads, seq_q, seq_k = static.shape
    units, nkb = -(-seq_q // unit), -(-seq_k // block)
    open_pairs = static & ~keep
    padded = torch.zeros(batch, heads, units * unit, nkb * block, dtype=torch.bool, device=static.device)
    padded[:, :, :seq_q, :seq_k] = open_pairs
    candidates = padded.view(batch, heads, units, unit, nkb, block).any(5).any(3)
    if selection is None:
        selected = select_blocks(route, candidates, q, k, scores)
    else:
        selected = selection.to(static.device) & candidates
    token_level = selected.repeat_interleave(unit, 2).repeat_interleave(block, 3)[:, :, :seq_q, :seq_k]
    return static & (token_level | keep)


def reference_attention(pattern: ir.PatternIR, q, k, v, inputs=None, scale=None, return_lse=False, selection=None):
    """Dense softmax attention with the pattern's mask and logit transform.

    q: (B, H, Nq, D); k, v: (B, Hkv, Nk, D) with Hkv dividing H (grouped-query attention).
    Computed in float64 for float64 inputs, else float32; returned in q's dtype. A fully
    masked row gives output 0 and LSE -inf, and gradients 0, never NaN. A routing pattern
    selects its blocks from q and k, or takes `selection`: bool (B, H, query units, key blocks).
    """
    import torch
    _check_qkv(q, k, v)
    batch, heads, seq_q, dim = q.shape
    heads_kv, seq_k = k.shape[1], k.shape[2]
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = 1.0 / math.sqrt(dim) if scale is None else float(scale)
    inputs_per_batch = [check_inputs(pattern, inputs, max(seq_q, seq_k), b, (seq_q, seq_k), heads)
                        for b in range(batch)]

    static = np.stack([mask_block(pattern, range(seq_q), range(seq_k), heads, seq_q, seq_k,
                                  inputs_per_batch[b], batch=b) for b in range(batch)])
    allowed = torch.from_numpy(np.ascontiguousarray(static)).to(q.device)
    group = heads // heads_kv
    k_full = k.repeat_interleave(group, dim=1).to(acc)
    v_full = v.repeat_interleave(group, dim=1).to(acc)
    scores = (q.to(acc) @ k_full.transpose(-1, -2)) * scale
    if pattern.route is not None:
        keep = np.stack([_keep_mask(pattern, seq_q, seq_k, heads, inputs_per_batch[b], b) for b in range(batch)])
        from .routing import input_scores
        routing_scores = input_scores(pattern.route, inputs_per_batch, seq_q, seq_k, heads)
        allowed = routed_mask(pattern.route, allowed, torch.from_numpy(keep).to(q.device), q, k, selection,
                              routing_scores)
    logits = _logits(pattern, scores, heads, inputs_per_batch).to(acc)
    logits = logits.masked_fill(~allowed, -math.inf)
    lse = torch.logsumexp(logits, dim=-1)
    finite = torch.isfinite(lse)
    safe_lse = torch.where(finite, lse, torch.zeros_like(lse))
    probs = torch.where(allowed, torch.exp(logits - safe_lse[..., None]), torch.zeros_like(logits))
    out = (probs @ v_full).to(q.dtype)
    lse = torch.where(finite, lse, torch.full_like(lse, -math.inf))
    return (out, lse) if return_lse else out


def _keep_mask(pattern: ir.PatternIR, seq_q, seq_k, heads, inputs, batch) -> np.ndarray:
    keep_only = pattern.with_mask(pattern.route.keep)
    return np.ascontiguousarray(mask_block(keep_only, range(seq_q), range(seq_k), heads, seq_q, seq_k,
                                           inputs, batch=batch))


def _check_qkv(q, k, v):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise AttnlangError(f"{name} must be (batch, heads, tokens, head_dim), got shape {tuple(t.shape)}")
    if k.shape != v.shape:
        raise AttnlangError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise AttnlangError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree on batch and head_dim")
    if q.shape[1] % k.shape[1]:
        raise AttnlangError(f"k/v heads ({k.shape[1]}) must divide q heads ({q.shape[1]})")


# -- tiles, by brute force -----------------------------------------------------------------

EMPTY, PARTIAL, FULL = 0, 1, 2


def classify_tiles(pattern: ir.PatternIR, seq_q: int, seq_k: int, heads: int, block_q: int, block_k: int,
                   inputs: dict | None = None, batch: int = 0) -> np.ndarray:
    """Tile kinds (EMPTY / PARTIAL / FULL) by evaluating every pair: the oracle for the analysis.

    Returns int8 `(heads, ceil(seq_q / block_q), ceil(seq_k / block_k))`; a ragged tile is
    classified by its in-range pairs only. Works one row of tiles at a time, so memory is
    O(heads * block_q * seq_k) while time stays O(seq_q * seq_k).
    """
    rows, cols = -(-seq_q // block_q), -(-seq_k // block_k)
    kinds = np.empty((heads, rows, cols), dtype=np.int8)
    pad = cols * block_k - seq_k
    for row in range(rows):
        q_range = range(row * block_q, min(seq_q, (row + 1) * block_q))
        band = mask_block(pattern, q_range, range(seq_k), heads, seq_q, seq_k, inputs, batch)
        allowed = np.pad(band, ((0, 0), (0, 0), (0, pad)), constant_values=False)
        allowed = allowed.reshape(heads, len(q_range), cols, block_k)
        any_allowed = allowed.any(axis=(1, 3))
        # padding counts as allowed for the all-test: only in-range pairs decide FULL
        covered = np.pad(band, ((0, 0), (0, 0), (0, pad)), constant_values=True)
        all_allowed = covered.reshape(heads, len(q_range), cols, block_k).all(axis=(1, 3))
        kinds[:, row] = np.where(all_allowed, FULL, np.where(any_allowed, PARTIAL, EMPTY))
    return kinds
