"""The builtin functions of the language, each declared once: arity, typing, semantics.

Every consumer (checker, constant folder, reference evaluator, code generators) reads
this table instead of restating what a function is. `hash` is defined here exactly,
because the analysis, the reference and the kernels must agree on it bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .ir import Type

__all__ = ["Builtin", "BUILTINS", "hash_ints", "hash_state", "HASH_SEED"]


@dataclass(frozen=True)
class Builtin:
    name: str
    min_args: int
    max_args: int | None  # None: any number from min_args on
    result: str  # "same": the promoted argument type; "float"; "int"
    int_args: bool = False  # arguments must be int (hash)
    doc: str = ""

    def result_type(self, arg_types: list[Type]) -> Type:
        if self.result == "float":
            return Type.FLOAT
        if self.result == "int":
            return Type.INT
        return Type.FLOAT if Type.FLOAT in arg_types else Type.INT

    def describe_arity(self) -> str:
        if self.max_args == self.min_args:
            n = self.min_args
            return f"{n} argument" + ("s" if n != 1 else "")
        if self.max_args is None:
            return f"at least {self.min_args} arguments"
        return f"{self.min_args} to {self.max_args} arguments"


BUILTINS: dict[str, Builtin] = {b.name: b for b in [
    Builtin("abs", 1, 1, "same", doc="absolute value"),
    Builtin("min", 2, None, "same", doc="smallest argument"),
    Builtin("max", 2, None, "same", doc="largest argument"),
    Builtin("clamp", 3, 3, "same", doc="clamp(x, lo, hi) = min(max(x, lo), hi)"),
    Builtin("floor", 1, 1, "int", doc="largest integer <= x"),
    Builtin("ceil", 1, 1, "int", doc="smallest integer >= x"),
    Builtin("log", 1, 1, "float", doc="natural logarithm"),
    Builtin("log2", 1, 1, "float", doc="base-2 logarithm"),
    Builtin("exp", 1, 1, "float", doc="e ** x"),
    Builtin("sqrt", 1, 1, "float", doc="square root"),
    Builtin("tanh", 1, 1, "float", doc="hyperbolic tangent"),
    Builtin("hash", 1, None, "int", int_args=True,
            doc="hash(a, b, ...): a fixed 32-bit integer mix, in [0, 2**31)"),
]}


# -- hash ----------------------------------------------------------------------------------
#
# hash(a1, ..., an):
#     h = HASH_SEED
#     for each a: h = fmix32(h XOR (a mod 2**32))      (all arithmetic modulo 2**32)
#     return h >> 1                                     (so the result is a non-negative int31)
# fmix32 is MurmurHash3's finalizer: x ^= x >> 16; x *= 0x85EBCA6B; x ^= x >> 13;
# x *= 0xC2B2AE35; x ^= x >> 16. Only 32-bit xor, shift and multiply: cheap in a kernel.

HASH_SEED = 0x9E3779B9
_M1, _M2 = 0x85EBCA6B, 0xC2B2AE35


def _fmix32(x):
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(_M1)
    x = x ^ (x >> np.uint32(13))
    x = x * np.uint32(_M2)
    return x ^ (x >> np.uint32(16))


def hash_state(*args: int) -> int:
    """The 32-bit state of the hash after mixing in `args` (before the final shift)."""
    h = np.uint32(HASH_SEED)
    with np.errstate(over="ignore"):
        for a in args:
            h = _fmix32(h ^ np.uint32(a & 0xFFFFFFFF))
    return int(h)


def hash_ints(*args):
    """`hash` on numpy int arrays or Python ints (broadcast); returns int64 values."""
    arrays = [np.asarray(a, dtype=np.int64).astype(np.uint32) for a in args]
    with np.errstate(over="ignore"):
        h = np.full(np.broadcast_shapes(*(a.shape for a in arrays)), HASH_SEED, dtype=np.uint32)
        for a in arrays:
            h = _fmix32(h ^ a)
    result = (h >> np.uint32(1)).astype(np.int64)
    return int(result) if result.ndim == 0 else result


# -- scalar semantics, for constant folding ------------------------------------------------

SCALAR = {
    "abs": abs,
    "min": min,
    "max": max,
    "floor": math.floor,
    "ceil": math.ceil,
    "log": math.log,
    "log2": math.log2,
    "exp": math.exp,
    "sqrt": math.sqrt,
    "tanh": math.tanh,
    "hash": hash_ints,
}
