"""Pictures for papers: block maps (and, later, speedup curves), with matplotlib.

matplotlib is an optional dependency (`pip install attnlang[plot]`); a clear error says
so when it is missing.
"""

from __future__ import annotations


from .errors import AttnlangError
from .reference import EMPTY, FULL, PARTIAL

__all__ = ["plot_block_map", "plot_speedups"]

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


def plot_speedups(series: dict, path, hardware: str, backward: bool) -> None:
    """Simulated speedup over dense against sequence length, one line per pattern.

    `series` maps a pattern label to a list of SimResult. Dashed lines: the tile-count bound.
    """
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    for index, (label, results) in enumerate(series.items()):
        color = f"C{index % 10}"
        lengths = [r.seq for r in results]
        axis.plot(lengths, [r.speedup for r in results], marker="o", color=color, label=label)
        axis.plot(lengths, [r.upper_bound for r in results], linestyle="--", color=color, alpha=0.5)
    axis.set_xscale("log", base=2)
    axis.set_yscale("log", base=2)
    axis.set_xlabel("sequence length (tokens)")
    axis.set_ylabel("speedup over dense attention")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8, frameon=False)
    direction = "forward + backward" if backward else "forward"
    axis.set_title(f"simulated speedup on {hardware} ({direction}); dashed: tile-count bound", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=150)
    plt.close(figure)
