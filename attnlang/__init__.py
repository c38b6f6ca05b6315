"""attnlang: a compiler for attention patterns.

Write a mask and score modification as a small program; attnlang checks it, evaluates it
exactly (the reference), and hands one typed IR to the analysis and code generators.

    >>> import attnlang
    >>> window = attnlang.stdlib()["streaming"].bind(window=4, sinks=1)
    >>> window.reference_mask(6, 6)[0].astype(int)
    array([[1, 0, 0, 0, 0, 0],
           [1, 1, 0, 0, 0, 0],
           [1, 1, 1, 0, 0, 0],
           [1, 1, 1, 1, 0, 0],
           [1, 1, 1, 1, 1, 0],
           [1, 0, 1, 1, 1, 1]])
"""

from .analysis import EMPTY, FULL, PARTIAL, BlockMap
from .errors import AttnlangError, AttnlangWarning
from .ir import PatternIR
from .mask_mod import from_mask_mod
from .pattern import Module, Pattern, attention, check_module, load, parse, stdlib, stdlib_dir
from .simulator import simulate

__all__ = ["AttnlangError", "AttnlangWarning", "Module", "Pattern", "PatternIR", "BlockMap", "EMPTY", "PARTIAL", "FULL",
           "parse", "load", "stdlib", "stdlib_dir", "check_module", "from_mask_mod",
           "attention", "simulate"]
__version__ = "0.1.0"
