"""Pictures of a mask in the terminal: token level when small, tile level when large."""

from __future__ import annotations

import numpy as np

from .reference import EMPTY, FULL, PARTIAL

__all__ = ["render_tokens", "render_tiles", "TOKEN_LEGEND", "TILE_LEGEND"]

_TOKEN_CELLS = {True: "█", False: "·"}
_TILE_CELLS = {FULL: "█", PARTIAL: "▒", EMPTY: "·"}
TOKEN_LEGEND = "█ allowed   · masked"
TILE_LEGEND = "█ full   ▒ partial   · empty"


def _cell_width(columns: int) -> int:
    # Terminal cells are about twice as tall as wide: doubling keeps squares square
    # while the picture still fits in 132 columns.
    return 2 if columns <= 64 else 1


def _frame(rows: list[str], columns: int, width: int, row_label) -> str:
    ruler = "".join(("|" if c % 8 == 0 else " ") * width for c in range(columns))
    label_width = max(len(row_label(len(rows) - 1)), 1)
    lines = [" " * (label_width + 1) + ruler]
    for index, row in enumerate(rows):
        label = row_label(index) if index % 8 == 0 else ""
        lines.append(f"{label:>{label_width}} {row}")
    return "\n".join(lines)


def render_tokens(mask: np.ndarray) -> str:
    """One cell per (query, key): a 2-D bool array."""
    columns = mask.shape[1]
    width = _cell_width(columns)
    rows = ["".join(_TOKEN_CELLS[bool(v)] * width for v in row) for row in mask]
    return _frame(rows, columns, width, lambda i: f"q{i}")


def render_tiles(kinds: np.ndarray, block_q: int) -> str:
    """One cell per tile: a 2-D int8 array of EMPTY / PARTIAL / FULL."""
    columns = kinds.shape[1]
    width = _cell_width(columns)
    rows = ["".join(_TILE_CELLS[int(v)] * width for v in row) for row in kinds]
    return _frame(rows, columns, width, lambda i: f"q{i * block_q}")
