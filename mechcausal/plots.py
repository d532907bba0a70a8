"""Matplotlib figures, one function per kind, in one style. Each returns a Figure."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch

STYLE = {"figure.dpi": 110, "axes.titlesize": 11, "axes.labelsize": 10, "font.size": 9}


def _figure(ncols: int = 1, width: float = 4.2, height: float = 3.4):
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, list(axes[0])


def score_grid(grids: dict[str, torch.Tensor], title: str = "") -> plt.Figure:
    """Layer x head heatmaps with values written in each cell (NaN = no such head)."""
    fig, axes = _figure(len(grids), width=3.6, height=3.0)
    for ax, (name, grid) in zip(axes, grids.items()):
        values = grid.detach().float().cpu()
        image = ax.imshow(values.numpy(), vmin=0, vmax=1, cmap="viridis")
        for (layer, head), v in _cells(values):
            ax.text(head, layer, f"{v:.2f}", ha="center", va="center",
                    color="white" if v < 0.6 else "black")
        ax.set(title=name, xlabel="head", ylabel="layer",
               xticks=range(values.shape[1]), yticks=range(values.shape[0]))
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _cells(values: torch.Tensor):
    for layer in range(values.shape[0]):
        for head in range(values.shape[1]):
            v = values[layer, head].item()
            if v == v:  # skip NaN
                yield (layer, head), v


def bar_chart(values: torch.Tensor | Sequence[float], ideal: float | None = None,
              xlabel: str = "", ylabel: str = "", title: str = "") -> plt.Figure:
    """One bar per entry, with an optional dashed ideal line."""
    fig, (ax,) = _figure()
    heights = [float(v) for v in values]
    ax.bar(range(len(heights)), heights, color="tab:blue")
    if ideal is not None:
        ax.axhline(ideal, ls="--", color="black", lw=1, label="ideal")
        ax.legend()
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, xticks=range(len(heights)))
    fig.tight_layout()
    return fig


def paired_lines(x: Sequence[int], series: dict[str, torch.Tensor], xlabel: str = "",
                 ylabel: str = "", title: str = "") -> plt.Figure:
    """Several named series against the same x, with markers."""
    fig, (ax,) = _figure(width=5.0)
    for name, values in series.items():
        ax.plot(list(x), [float(v) for v in values], marker="o", ms=3, label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend()
    fig.tight_layout()
    return fig


def grouped_bars(groups: Sequence[str], series: dict[str, Sequence[float]], ylabel: str = "",
                 title: str = "") -> plt.Figure:
    """Side-by-side bars: one group per label, one bar per series."""
    fig, (ax,) = _figure(width=max(4.2, 1.2 * len(groups)))
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        offsets = [g + (k - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(offsets, [float(v) for v in values], width=width, label=name)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=20, ha="right")
    ax.set(ylabel=ylabel, title=title)
    ax.legend()
    fig.tight_layout()
    return fig
