"""Pictures for papers: block maps (and, later, speedup curves), with matplotlib.

matplotlib is an optional dependency (`pip install attnlang[plot]`); a clear error says
so when it is missing.
"""

from __future__ import annotations

import numpy as np

from .errors import AttnlangError
from .reference import EMPTY, FULL, PARTIAL

__all__ = ["plot_block_map"]

COLORS = {EMPTY: "#f4f4f4", PARTIAL: "#f2a541", FULL: "#1f4e79"}


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise AttnlangError("drawing a PNG needs matplotlib: pip install 'attnlang[plot]'") from None
    return plt


def plot_block_map(block_map, path, title: str = "", heads=None) -> None:
    """Save the block map as a PNG: one panel per head shown, full / partial / empty tiles."""
    plt = _pyplot()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    heads = list(heads) if heads is not None else [0]
    heads = [h for h in heads if h < block_map.kinds.shape[0]] or [0]
    figure, axes = plt.subplots(1, len(heads), figsize=(4.2 * len(heads) + 0.8, 4.6), squeeze=False)
    cmap = ListedColormap([COLORS[EMPTY], COLORS[PARTIAL], COLORS[FULL]])
    extent = (0, block_map.seq_k, block_map.seq_q, 0)
    for axis, head in zip(axes[0], heads):
        axis.imshow(block_map.kinds[head], cmap=cmap, vmin=0, vmax=2, interpolation="nearest", extent=extent)
        axis.set_xlabel("key position")
        axis.set_ylabel("query position")
        if len(heads) > 1 or block_map.kinds.shape[0] > 1:
            axis.set_title(f"head {head}", fontsize=10)
    counts = block_map.counts
    legend = [Patch(color=COLORS[FULL], label=f"full ({counts['full']:,})"),
              Patch(color=COLORS[PARTIAL], label=f"partial ({counts['partial']:,})"),
              Patch(facecolor=COLORS[EMPTY], edgecolor="#999999", label=f"empty ({counts['empty']:,})")]
    figure.legend(handles=legend, loc="lower center", ncol=3, frameon=False, fontsize=9)
    figure.suptitle(f"{title}\n{block_map.seq_q} x {block_map.seq_k} tokens, "
                    f"{block_map.block_q} x {block_map.block_k} tiles, tile density {block_map.tile_density:.3f}",
                    fontsize=10)
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    figure.savefig(path, dpi=150)
    plt.close(figure)
