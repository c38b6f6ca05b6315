"""Triton code generation and runtime for attnlang patterns.

Consumes `attnlang.ir.PatternIR` and the analysis' block map; holds nothing yet that
the language stages depend on.
"""
