"""Matplotlib figures, one function per figure kind, in one style.

Every function returns a pyplot-free :class:`matplotlib.figure.Figure` (nothing is
registered with pyplot, so figures are freed with their last reference and work under
any backend) drawn under :data:`STYLE` with constrained layout; :func:`save_figure`
writes it as a PNG. The diagnostics' ``.plot()`` methods draw with the same
``heatmap`` helper; wrap them in ``with style():`` for the same fonts.

Figure kinds (the paper's figure in brackets):

* :func:`graph_vs_attention`: true graph next to the learned layer-1 attention (2, 6).
* :func:`weight_blocks`: every ``A`` and the readout ``W`` of a disentangled or reduced
  model, split into token / position / head-output blocks (2, 6).
* :func:`loss_curves`: train and test loss against the count-estimator, unigram and
  any other baseline (one-NN), and parent attention, over training steps.
* :func:`parent_attention_by_position`: attention on the parent by position, mean and
  spread over many graphs, and the per-graph statistic against the official one (9).
* :func:`head_patterns`: one panel per head of a layer, parent slots marked (5, 7).
* :func:`attention_over_training`: snapshots of a layer's attention during training.
* :func:`attention_with_edges`, :func:`slot_mass`: the graph-estimate and head-split
  diagnostics' figures.
* :func:`gradient_vs_mi`: gradient at initialisation vs chi-squared MI, heatmaps and a
  scatter (the paper's mechanism).
* :func:`score_grid`: layer x head grids (induction scores of any TL model).
* :func:`bar_chart`, :func:`paired_lines`, :func:`grouped_bars`: the generic figures
  behind the causal-induction, patching and OOD diagnostics.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, ScalarFormatter

from .files import write_atomically
from .graphs import CausalGraph
from .models.base import NativeModel
from .ops import format_number

STYLE: dict[str, Any] = {
    "figure.dpi": 110,
    "savefig.dpi": 130,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "font.size": 8,
    "legend.fontsize": 7,
    "figure.titlesize": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
# line colours of estimator baselines, in the order they are drawn
_BASELINE_COLORS = ("black", "tab:gray", "tab:red", "tab:purple", "tab:brown")
# markers of parent slots 0, 1, 2, ... in head_patterns
_SLOT_MARKERS = ("o", "s", "^", "D", "v")

F = TypeVar("F", bound=Callable[..., Figure])


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Context in which figures get this module's fonts and sizes (:data:`STYLE`)."""
    with matplotlib.rc_context(STYLE):
        yield


def _styled(func: F) -> F:
    """Draw ``func``'s figure under :func:`style` (fonts are fixed when text is made)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with style():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _figure(ncols: int = 1, nrows: int = 1, width: float = 4.4,
            height: float = 3.6) -> tuple[Figure, list[Axes]]:
    """A constrained-layout Figure with ``nrows x ncols`` axes (row-major list)."""
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def heatmap(fig: Figure, ax: Axes, matrix: torch.Tensor, title: str, xlabel: str, ylabel: str,
            colorbar_label: str, cmap: str = "viridis") -> Any:
    """Draw ``matrix`` [rows, cols] on ``ax`` with labelled axes, whole-number ticks
    (rows and columns are positions, heads, layers or tokens) and a colorbar; square
    matrices get square cells. Returns the image."""
    rows, cols = matrix.shape
    image = ax.imshow(matrix.detach().cpu().float().numpy(), cmap=cmap,
                      aspect="equal" if rows == cols else "auto", interpolation="nearest")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.colorbar(image, ax=ax, label=colorbar_label)
    return image


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` (PNG by default, format from the suffix); creates the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with style():
        return write_atomically(path, lambda file: fig.savefig(file, format=path.suffix[1:]
                                                               or "png"))


def figure_pixels(fig: Figure, dpi: int = 100) -> np.ndarray:
    """``fig`` rendered as an RGB image [height, width, 3] (uint8), for trackers."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(dpi)
    with style():
        canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _matrix(values: torch.Tensor, name: str, ndim: tuple[int, ...] = (2,)) -> torch.Tensor:
    """Detached float CPU copy of ``values``; ValueError unless it has ``ndim`` dims."""
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(values).__name__}")
    if values.ndim not in ndim:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndim))} dims, "
                         f"got shape {tuple(values.shape)}")
    return values.detach().float().cpu()


def _short_ticks(axis: Any) -> None:
    """A shared power-of-ten exponent for tiny values (gradients are ~1e-4)."""
    formatter = ScalarFormatter()
    formatter.set_powerlimits((-2, 3))
    axis.set_major_formatter(formatter)


def _edges_below(graph: CausalGraph, length: int) -> list[tuple[int, int]]:
    """(parent, child) edges whose child is one of the first ``length`` positions
    (a DAG task's target node is a graph node but not an input position)."""
    return [(p, i) for p, i in graph.edges if i < length]


def _mark_edges(ax: Axes, edges: Sequence[tuple[int, int]], label: str = "true parent",
                marker: str = "o", color: str = "white") -> None:
    """Open markers at (key = parent, query = child) cells."""
    if edges:
        parents, children = zip(*edges)
        ax.scatter(parents, children, s=36, marker=marker, facecolors="none",
                   edgecolors=color, linewidths=1.0, label=label)


# ---------------------------------------------------------------------- graphs
@_styled
def graph_vs_attention(graph: CausalGraph, attention: torch.Tensor, layer: int = 0,
                       title: str = "") -> Figure:
    """True causal graph (left) next to a layer's data-averaged attention (right).

    Args:
        graph: the task's graph; node i is input position i (a DAG task's extra target
            node and a tree task's query position have no row of edges here).
        attention: [L, L] (query, key) or [H, L, L] per head, summed over heads so a
            key that two heads share shows the total attention it receives.
        layer: 0-based layer the attention came from (titles say "layer 1" for 0).
    """
    weights = _matrix(attention, "attention", (2, 3))
    if weights.ndim == 3:
        weights = weights.sum(0)
    length = weights.shape[-1]
    edges = _edges_below(graph, length)
    truth = torch.zeros(length, length)
    for parent, child in edges:
        truth[child, parent] = 1.0
    fig, (left, right) = _figure(2)
    image = heatmap(fig, left, truth, "true causal graph", "parent position j",
                    "child position i", "edge j -> i", cmap="Greys")
    image.colorbar.set_ticks([0, 1])
    image = heatmap(fig, right, weights, f"L{layer} attention (mean over data)",
                    "key position j", "query position i", "attention")
    image.set_clim(0.0, max(1.0, float(weights.max())))
    _mark_edges(right, edges)
    if edges:
        right.legend(loc="upper right", framealpha=0.8)
    if title:
        fig.suptitle(title)
    return fig


@_styled
def attention_with_edges(weights: torch.Tensor, title: str,
                         true_edges: Sequence[tuple[int, int]] = (),
                         found_edges: Sequence[tuple[int, int]] = (),
                         label: str = "mean attention") -> Figure:
    """One [L, L] (query, key) attention map with (parent, child) edges marked: true
    edges as cyan rings, estimated ones as red crosses (drawn first, so the rings stay
    visible on top)."""
    fig, (ax,) = _figure(width=5.2, height=4.4)
    heatmap(fig, ax, _matrix(weights, "weights"), title, "key position j", "query position i",
            label)
    if found_edges:
        ax.scatter(*zip(*found_edges), s=24, marker="x", color="red", label="estimated")
    if true_edges:
        ax.scatter(*zip(*true_edges), s=80, facecolors="none", edgecolors="cyan",
                   linewidths=1.4, label="true")
    if true_edges or found_edges:
        ax.legend(loc="upper right", fontsize="small")
    return fig


@_styled
def slot_mass(mass: torch.Tensor, title: str) -> Figure:
    """Head x parent-slot attention mass (``HeadSplit.mass`` [H, R]) in [0, 1], values
    written in the cells."""
    mass = _matrix(mass, "mass")
    fig, (ax,) = _figure(width=5.2, height=4.4)
    image = heatmap(fig, ax, mass, title, "parent slot r (r-th parent in sorted order)", "head",
                    "mean attention on slot", cmap="magma")
    image.set_clim(0, 1)  # masses are fractions: autoscaling would fake contrast
    for (head, slot), value in _cells(mass):
        ax.text(slot, head, f"{value:.2f}", ha="center", va="center",
                color="black" if value > 0.5 else "white")
    ax.set_xticks(range(mass.shape[1]))
    ax.set_yticks(range(mass.shape[0]))
    return fig


@_styled
def attention_over_training(steps: Sequence[int], patterns: Sequence[torch.Tensor],
                            graph: CausalGraph, layer: int = 0, max_panels: int = 6,
                            title: str = "") -> Figure:
    """A layer's data-averaged attention at several points of training, left to right
    (``AttentionSnapshots``): the causal graph emerging.

    Args:
        steps: the training step of each snapshot.
        patterns: one [H, L, L] or [L, L] (query, key) per snapshot; heads are summed.
        graph: the task's graph, its edges marked on every panel.
        max_panels: at most this many panels, evenly spaced, first and last included.
    """
    if len(steps) != len(patterns) or not patterns:
        raise ValueError(f"need one pattern per step, got {len(patterns)} patterns for "
                         f"{len(steps)} steps")
    count = min(len(patterns), max(1, max_panels))
    chosen = sorted({round(k * (len(patterns) - 1) / max(1, count - 1)) for k in range(count)})
    fig, axes = _figure(len(chosen), width=3.0, height=3.2)
    for ax, index in zip(axes, chosen):
        weights = _matrix(patterns[index], "pattern", (2, 3))
        weights = weights.sum(0) if weights.ndim == 3 else weights
        # one colour scale for every panel, one colour bar for the figure
        image = ax.imshow(weights.numpy(), cmap="viridis", vmin=0.0, vmax=1.0,
                          interpolation="nearest")
        ax.set(title=f"step {steps[index]}", xlabel="key position j")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        _mark_edges(ax, _edges_below(graph, weights.shape[-1]), color="tab:red")
    axes[0].set_ylabel("query position i")
    fig.colorbar(image, ax=axes, label=f"L{layer} attention", shrink=0.8)
    fig.suptitle(title or f"L{layer} attention during training "
                          f"(mean over held-out data; red circles: true parents)")
    return fig


# ---------------------------------------------------------------------- weights
def _block_axis(ax: Axes, blocks: Sequence[tuple[str, int, int]], axis: str) -> None:
    """Block boundaries as thin lines and block names as tick labels on one axis."""
    centres = [(start + stop - 1) / 2 for _, start, stop in blocks]
    names = [name for name, _, _ in blocks]
    draw = ax.axvline if axis == "x" else ax.axhline
    for _, start, _ in blocks[1:]:
        draw(start - 0.5, color="black", lw=0.6)
    if axis == "x":
        ax.set_xticks(centres, names, rotation=90)
    else:
        ax.set_yticks(centres, names)


def _signed_heatmap(fig: Figure, ax: Axes, matrix: torch.Tensor, title: str, xlabel: str,
                    ylabel: str, label: str) -> None:
    """Heatmap on a diverging map centred at 0 (weights have either sign)."""
    image = heatmap(fig, ax, matrix, title, xlabel, ylabel, label, cmap="RdBu_r")
    bound = max(float(matrix.abs().max()), 1e-12)
    image.set_clim(-bound, bound)


@_styled
def weight_blocks(model: Any, title: str = "") -> Figure:
    """Every weight matrix of a native model, split into named blocks.

    Draws ``model.weight_panels()`` (:class:`~mechcausal.models.WeightPanel`):
    disentangled transformer: one panel per (layer, head) with ``A(layer, head)``
    [d_l, d_l] (rows: query stream, columns: key stream) over blocks ``tok`` / ``pos`` /
    ``L{l}H{h}.tok`` / ..., and below it ``W^T`` [S, d_L] over the final stream's blocks
    (no W panel for the probability readout); reduced model: ``A1`` [n_ctx, n_ctx]
    (position -> position) and ``A2`` [S, S] (token -> token). Diverging colours centred
    at 0 (the paper's Figures 2 and 6 show the same blocks).
    """
    if not isinstance(model, NativeModel):
        raise TypeError(f"weight_blocks needs a native mechcausal model (a "
                        f"DisentangledTransformer or ReducedModel), got {type(model).__name__}")
    panels = model.weight_panels()
    top = [panel for panel in panels if not panel.wide]
    wide = [panel for panel in panels if panel.wide]
    ncols = max(2, len(top))
    height = 4.9 if any(panel.row_blocks for panel in top) else 3.6
    fig = Figure(figsize=(4.6 * ncols, height + 2.9 * len(wide)), layout="constrained")
    grid = fig.add_gridspec(1 + len(wide), ncols,
                            height_ratios=(5,) + (2.5,) * len(wide) if wide else None)
    axes = [fig.add_subplot(grid[0, k]) for k in range(len(top))]
    axes += [fig.add_subplot(grid[1 + k, :]) for k in range(len(wide))]
    for ax, panel in zip(axes, top + wide):
        _signed_heatmap(fig, ax, panel.matrix.float().cpu(), panel.title, panel.xlabel,
                        panel.ylabel, panel.label)
        if panel.column_blocks:
            _block_axis(ax, panel.column_blocks, "x")
        if panel.row_blocks:
            _block_axis(ax, panel.row_blocks, "y")
    if title:
        fig.suptitle(title)
    return fig


# ---------------------------------------------------------------------- training
@_styled
def loss_curves(history: Any,
                baselines: Mapping[str, float] | None = None, title: str = "") -> Figure:
    """Loss (left) and layer-1 attention on the true parents (right) over steps.

    Args:
        history: one run, or consecutive stages (Algorithm 1) drawn end to end with a
            dotted line where each later stage starts.
        baselines: extra horizontal lines, name -> loss in nats (e.g. ``{"one-NN":
            1.60}``), drawn after the count estimator and unigram lines of the last
            stage's held-out set.
    """
    stages = list(history) if isinstance(history, (list, tuple)) else [history]
    if not stages or not all(hasattr(h, "test_loss") for h in stages):
        raise TypeError("history must be a History or a non-empty sequence of Histories")
    fig, (loss_ax, attention_ax) = _figure(2, width=4.8)
    offset = 0
    for k, stage in enumerate(stages):
        first = k == 0
        loss_ax.plot(range(offset + 1, offset + len(stage.train_loss) + 1), stage.train_loss,
                     color="tab:blue", alpha=0.35, lw=0.8, label="train batch" if first else None)
        evals = [offset + step for step in stage.eval_step]
        loss_ax.plot(evals, stage.test_loss, "o-", color="tab:orange", ms=3,
                     label="test (held out)" if first else None)
        attention_ax.plot(evals, stage.parent_attention, "o-", color="tab:green", ms=3)
        if not first:
            for ax in (loss_ax, attention_ax):
                ax.axvline(offset, ls=":", color="tab:gray", lw=1)
                # at the bottom: legends and curves sit at the top
                ax.annotate(f"stage {k + 1}", (offset, 0.0), xycoords=("data", "axes fraction"),
                            xytext=(3, 4), textcoords="offset points", color="tab:gray")
        offset += stage.eval_step[-1] if stage.eval_step else len(stage.train_loss)
    last = stages[-1]
    lines = {"count estimator": last.bayes_loss, "unigram": last.unigram_loss,
             **(baselines or {})}
    for (name, value), color in zip(lines.items(), _BASELINE_COLORS):
        if math.isfinite(value):
            loss_ax.axhline(value, ls="--", lw=1, color=color, label=f"{name} ({value:.3f})")
    loss_ax.set(xlabel="step", ylabel="cross-entropy (nats)", title="loss")
    loss_ax.legend(loc="best")
    attention_ax.set(xlabel="step", ylabel="mean attention on true parents",
                     title="layer-1 attention on parents", ylim=(0.0, 1.02))
    if title:
        fig.suptitle(title)
    return fig


# ---------------------------------------------------------------------- many graphs
@_styled
def parent_attention_by_position(values: torch.Tensor,
                                 reference: tuple[float, float] | None = None,
                                 title: str = "", statistic: str = "attention") -> Figure:
    """The paper's Figure 9: attention from each position to its parent over graphs.

    Args:
        values: [G, T] attention from position i to p(i) in graph g's trained model,
            NaN where i is a root of graph g.
        reference: (mean, sd) of the official per-graph statistic, drawn as a band.
        statistic: what ``values`` measure, for the axis labels.

    Left: every graph's values (dots, jittered sideways), mean +/- sd over the graphs
    having an edge at that position. Right: the per-graph statistic (mean over that
    graph's edges), sorted, with our mean and the reference band.
    """
    values = _matrix(values, "values").numpy()
    n_graphs, n_positions = values.shape
    has_edge = ~np.isnan(values)
    filled = np.where(has_edge, values, 0.0)
    count = has_edge.sum(0)
    mean = filled.sum(0) / np.maximum(count, 1)
    # sd over the graphs with an edge at the position (0 where only one graph has one)
    sd = np.sqrt((np.where(has_edge, values - mean, 0.0) ** 2).sum(0) / np.maximum(count - 1, 1))
    fig, (by_position, by_graph) = _figure(2, width=4.8)
    positions = np.arange(n_positions)
    jitter = np.linspace(-0.25, 0.25, n_graphs)
    for g in range(n_graphs):
        mask = has_edge[g]
        by_position.scatter(positions[mask] + jitter[g], values[g][mask], s=7,
                            color="tab:blue", alpha=0.35,
                            label="one graph's edge" if g == 0 else None)
    defined = count > 0
    by_position.plot(positions[defined], mean[defined], "o-", color="black", ms=3,
                     label="mean over graphs")
    by_position.fill_between(positions[defined], (mean - sd)[defined], (mean + sd)[defined],
                             color="black", alpha=0.15, label="+/- 1 sd")
    by_position.set(xlabel="position i", ylabel=f"{statistic} from i to its parent p(i)",
                    title="by position", ylim=(0.0, 1.02))
    by_position.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_position.legend(loc="lower left")
    edges = has_edge.sum(1)
    # a graph without edges (possible for tiny random forests) has no statistic
    per_graph = np.where(edges > 0, filled.sum(1) / np.maximum(edges, 1), np.nan)
    order = np.argsort(-np.nan_to_num(per_graph, nan=-1.0))
    by_graph.bar(range(n_graphs), per_graph[order], color="tab:blue")
    if (edges > 0).any():
        ours = float(per_graph[edges > 0].mean())
        by_graph.axhline(ours, color="tab:blue", lw=1.2, label=f"ours {ours:.3f}")
    if reference is not None:
        ref_mean, ref_sd = reference
        by_graph.axhspan(ref_mean - ref_sd, ref_mean + ref_sd, color="tab:orange", alpha=0.25)
        by_graph.axhline(ref_mean, color="tab:orange", lw=1.2,
                         label=f"official {ref_mean:.3f} +/- {ref_sd:.3f}")
    # headroom above 1 keeps the legend off the bars
    by_graph.set(xlabel="graph (sorted)", ylabel=f"mean {statistic} on parents",
                 title="per graph", ylim=(0.0, 1.25), yticks=np.linspace(0, 1, 6),
                 xticks=range(n_graphs))
    by_graph.set_xticklabels([str(int(g)) for g in order], fontsize=6)
    by_graph.legend(loc="upper center", ncol=2)
    if title:
        fig.suptitle(title)
    return fig


# ---------------------------------------------------------------------- heads
@_styled
def head_patterns(patterns: torch.Tensor, graph: CausalGraph, layer: int = 0,
                  slot_mass: torch.Tensor | None = None, title: str = "") -> Figure:
    """One panel per head: data-averaged attention, parent slots marked.

    Args:
        patterns: [H, L, L] one layer's data-averaged attention per head.
        graph: the task's graph; for every position with the graph's maximal number R
            of parents, its r-th parent (sorted) is marked with the r-th marker.
        layer: 0-based layer (titles say "layer 1" for 0).
        slot_mass: optional [H, R] attention of each head on each slot
            (``HeadSplit.mass``), written into the titles.
    """
    patterns = _matrix(patterns, "patterns", (3,))
    n_heads, length, _ = patterns.shape
    parents = graph.parents[:length]
    n_slots = max((len(ps) for ps in parents), default=0)
    fig, axes = _figure(n_heads)
    for head, ax in enumerate(axes):
        name = f"L{layer}H{head}"
        if slot_mass is not None:
            masses = ", ".join(f"{v:.2f}" for v in slot_mass[head].tolist())
            name += f"\nmass on slots: {masses}"
        image = heatmap(fig, ax, patterns[head], name, "key position j", "query position i",
                        "attention")
        image.set_clim(0.0, 1.0)
        for slot in range(n_slots):
            edges = [(ps[slot], i) for i, ps in enumerate(parents) if len(ps) == n_slots]
            _mark_edges(ax, edges, f"parent slot {slot}", _SLOT_MARKERS[slot % len(_SLOT_MARKERS)],
                        ("white", "tab:red", "tab:cyan")[slot % 3])
        if n_slots:
            ax.legend(loc="upper right", framealpha=0.8)
    if title:
        fig.suptitle(title)
    return fig


# ---------------------------------------------------------------------- theory
@_styled
def gradient_vs_mi(report: Any, title: str = "") -> Figure:
    """Chi-squared MI and ``-dL/dA1`` at initialisation (heatmaps, j < i), and each
    scored pair (i, j) of the two as a scatter, true parents in red.

    Args:
        report: an :class:`~mechcausal.diagnostics.InformationReport` (any object with
            ``mutual_information`` and ``gradient`` [L, L], ``parents``,
            ``mi_agreement``, ``gradient_agreement`` and ``mean_spearman``).
    """
    mi = _matrix(report.mutual_information, "mutual_information")
    gradient = _matrix(report.gradient, "gradient")
    below = torch.ones_like(mi, dtype=torch.bool).tril(-1)
    edges = [(p, i) for i, ps in enumerate(report.parents) for p in ps]
    fig, (mi_ax, gradient_ax, scatter_ax) = _figure(3, width=4.6)
    fig.get_layout_engine().set(wspace=0.08)
    for ax, matrix, name, label in (
        (mi_ax, mi, f"chi2 MI (argmax = parent: {report.mi_agreement:.2f})",
         "E_pi[I(x_j; x_i)]"),
        (gradient_ax, gradient,
         f"-dL/dA1 at init (argmax = parent: {report.gradient_agreement:.2f})", "-dL/dA1[i, j]"),
    ):
        image = heatmap(fig, ax, torch.where(below, matrix, torch.nan), name,
                        "key position j", "query position i", label)
        _short_ticks(image.colorbar.ax.yaxis)
        _mark_edges(ax, edges, color="tab:red")
        if edges:
            ax.legend(loc="upper right", framealpha=0.8)
    rows = sorted({i for _, i in edges})
    pairs = [(i, j) for i in rows for j in range(i)]
    is_parent = [j in report.parents[i] for i, j in pairs]
    for flag, color, label in ((False, "tab:gray", "other key j < i"),
                               (True, "tab:red", "parent of i")):
        chosen = [pair for pair, parent in zip(pairs, is_parent) if parent == flag]
        if chosen:
            scatter_ax.scatter([float(mi[i, j]) for i, j in chosen],
                               [float(gradient[i, j]) for i, j in chosen],
                               s=10, color=color, alpha=0.7, label=label)
    scatter_ax.set(xlabel="chi2 mutual information", ylabel="-dL/dA1 at init",
                   title="per pair (mean row Spearman "
                         f"{format_number(report.mean_spearman, '.2f')})")
    _short_ticks(scatter_ax.yaxis)
    scatter_ax.legend(loc="lower right")
    if title:
        fig.suptitle(title)
    return fig


# ---------------------------------------------------------------------- probes
@_styled
def probe_by_position(result: Any, title: str = "") -> Figure:
    """A probe's held-out accuracy at each task position (``ProbeResult``), with its
    control task's accuracy and chance; positions without a label are left out."""
    fig, (ax,) = _figure(width=5.4)
    positions = [i for i, v in enumerate(result.per_position) if v is not None]
    values = [result.per_position[i] for i in positions]
    ax.bar(positions, values, color="tab:blue", label=f"probe (mean {result.accuracy:.2f})")
    ax.axhline(result.control_accuracy, ls="--", color="tab:red",
               label=f"control task {result.control_accuracy:.2f}")
    ax.axhline(result.chance, ls=":", color="black", label=f"chance {result.chance:.2f}")
    ax.set(xlabel="position i", ylabel="held-out accuracy", ylim=(0.0, 1.12),
           title=title or f"{result.target} at {result.hook}"
                          + (f" (head {result.head})" if result.head is not None else ""))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="upper right", ncol=3)
    return fig


@_styled
def probe_sweep(results: Sequence[Any], title: str = "") -> Figure:
    """Probe accuracy and its control's at each hook in forward order (``ProbeSweep``):
    where a target becomes linearly readable, layer by layer."""
    fig, (ax,) = _figure(width=max(5.0, 0.9 * len(results) + 2.0))
    x = np.arange(len(results))
    ax.plot(x, [r.accuracy for r in results], "o-", color="tab:blue", label="probe")
    ax.plot(x, [r.control_accuracy for r in results], "s--", color="tab:red",
            label="control task")
    ax.plot(x, [r.chance for r in results], ":", color="black", label="chance")
    ax.set_xticks(x, [r.hook.replace("blocks.", "L").replace(".hook_", " ") for r in results],
                  rotation=30, ha="right")
    ax.set(ylabel="held-out accuracy", ylim=(0.0, 1.05),
           title=title or f"where {results[0].target} is linearly readable" if results else title)
    ax.legend(loc="best")
    return fig


# ---------------------------------------------------------------------- generic
def _cells(values: torch.Tensor) -> Iterator[tuple[tuple[int, int], float]]:
    """((row, column), value) of every non-NaN entry."""
    for row in range(values.shape[0]):
        for column in range(values.shape[1]):
            value = values[row, column].item()
            if value == value:  # skip NaN
                yield (row, column), value


@_styled
def score_grid(grids: Mapping[str, torch.Tensor], title: str = "") -> Figure:
    """Layer x head heatmaps in [0, 1], values written in each cell (NaN = no such
    head); one panel per named grid [n_layers, n_heads]."""
    fig, axes = _figure(len(grids), width=3.4, height=3.0)
    for ax, (name, grid) in zip(axes, grids.items()):
        values = _matrix(grid, name)
        image = heatmap(fig, ax, values, name, "head", "layer", "score")
        image.set_clim(0.0, 1.0)
        for (layer, head), value in _cells(values):
            ax.text(head, layer, f"{value:.2f}", ha="center", va="center",
                    color="white" if value < 0.6 else "black")
        ax.set_xticks(range(values.shape[1]))
        ax.set_yticks(range(values.shape[0]), [f"L{layer}" for layer in range(values.shape[0])])
    if title:
        fig.suptitle(title)
    return fig


@_styled
def bar_chart(values: torch.Tensor | Sequence[float], ideal: float | None = None,
              xlabel: str = "", ylabel: str = "", title: str = "") -> Figure:
    """One bar per entry, with an optional dashed ideal line."""
    fig, (ax,) = _figure()
    heights = [float(v) for v in values]
    ax.bar(range(len(heights)), heights, color="tab:blue")
    if ideal is not None:
        ax.axhline(ideal, ls="--", color="black", lw=1, label="ideal")
        # headroom above the ideal line for the legend
        ax.set_ylim(0.0, 1.2 * max([ideal, *heights]))
        ax.legend(loc="upper right")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, xticks=range(len(heights)))
    return fig


@_styled
def paired_lines(x: Sequence[int], series: Mapping[str, torch.Tensor | Sequence[float]],
                 xlabel: str = "", ylabel: str = "", title: str = "",
                 log_y: bool = False) -> Figure:
    """Several named series against the same x, with markers (``log_y``: values that
    span orders of magnitude; a linear axis when none is positive)."""
    fig, (ax,) = _figure(width=5.0)
    positive = False
    for name, values in series.items():
        values = [float(v) for v in values]
        positive |= any(v > 0 for v in values)
        ax.plot(list(x), values, marker="o", ms=3, label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if log_y and positive:
        ax.set_yscale("log")
    if all(isinstance(v, int) for v in x):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    return fig


@_styled
def grouped_bars(groups: Sequence[str], series: Mapping[str, Sequence[float]],
                 ylabel: str = "", title: str = "") -> Figure:
    """Side-by-side bars: one group per label, one bar per series, values on top."""
    fig, (ax,) = _figure(width=max(4.4, 1.2 * len(groups)))
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        offsets = [g + (k - (len(series) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(offsets, [float(v) for v in values], width=width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=6)
    ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right")
    ax.set(ylabel=ylabel, title=title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: bars fill the axes
    return fig


# ---------------------------------------------------------------------- sweeps
@_styled
def sweep_summary(results: Any, x: str, y: str = "parent_attention", hue: str | None = None,
                  col: str | None = None, title: str = "") -> Figure:
    """A study's phase diagram: mean +/- sd of ``y`` over the rows sharing each value of
    ``x`` (seeds, typically), every row as a faint dot, one line (categories: one marker
    with error bars) per ``hue`` value, one panel per ``col`` value.

    Args:
        results: the DataFrame :func:`mechcausal.sweep` returns (or any with those
            columns).
        x, y, hue, col: column names; ``x`` is placed by its sorted values (numbers on a
            numeric axis, anything else as categories).
    """
    for name in (x, y, hue, col):
        if name is not None and name not in results.columns:
            raise ValueError(f"{name!r} is not a column of results; columns: "
                             f"{', '.join(map(str, results.columns))}")
    panels = sorted(results[col].unique(), key=str) if col else [None]
    fig, axes = _figure(len(panels), width=4.4, height=3.4)
    xs = sorted(results[x].unique(), key=lambda v: (isinstance(v, str), v))
    numeric = all(isinstance(v, (int, float, np.integer, np.floating)) for v in xs)
    place = {v: (float(v) if numeric else i) for i, v in enumerate(xs)}
    for ax, panel in zip(axes, panels):
        part = results if col is None else results[results[col] == panel]
        groups = sorted(part[hue].unique(), key=str) if hue else [None]
        for g, group in enumerate(groups):
            rows = part if hue is None else part[part[hue] == group]
            stats = rows.groupby(x)[y].agg(["mean", "std", "count"]).reset_index()
            stats = stats.sort_values(x, key=lambda c: c.map(place))
            # categories side by side within a hue; numbers at their value
            shift = 0.0 if numeric else 0.15 * (g - (len(groups) - 1) / 2)
            where = stats[x].map(place).to_numpy(dtype=float) + shift
            mean = stats["mean"].to_numpy(dtype=float)
            spread = np.nan_to_num(stats["std"].to_numpy(dtype=float))  # one seed: no spread
            label = None if hue is None else f"{hue}={group}"
            if numeric:
                (line,) = ax.plot(where, mean, "o-", ms=4, label=label)
                ax.fill_between(where, mean - spread, mean + spread, alpha=0.2,
                                color=line.get_color())
            else:  # no line between categories
                line = ax.errorbar(where, mean, yerr=spread, fmt="o", ms=5, capsize=3,
                                   label=label).lines[0]
            # every row too: a mean and sd hide a study that splits in two
            ax.scatter(rows[x].map(place).to_numpy(dtype=float) + shift, rows[y], s=9,
                       alpha=0.35, color=line.get_color(), linewidths=0)
        ax.set(xlabel=x, ylabel=f"{y} (mean +/- sd)",
               title="" if panel is None else f"{col}={panel}")
        if not numeric:
            ax.set_xticks(list(place.values()), [str(v) for v in xs])
        elif all(float(v).is_integer() for v in xs):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if hue is not None:
            ax.legend()
    if title:
        fig.suptitle(title)
    return fig


@_styled
def circuit_pairs(rows: Sequence[Mapping[str, Any]], k_composition: torch.Tensor | None,
                  head_names: Sequence[str], title: str = "") -> Figure:
    """Left: for each (writer -> reader) pair, the reader's induction attention clean and
    with the path patched (the gap is what the path carries), K-composition written
    beside it. Right (with ``k_composition`` [heads, heads]): K-composition of every
    pair, writers as rows, readers as columns."""
    panels = 2 if k_composition is not None else 1
    fig, axes = _figure(panels, width=5.2, height=max(3.0, 0.45 * len(rows) + 1.6))
    ax = axes[0]
    labels = [f"{row['writer']} -> {row['reader']}" for row in rows][::-1]
    clean = [row["attention_clean"] for row in rows][::-1]
    patched = [row["attention_patched"] for row in rows][::-1]
    positions = range(len(rows))
    ax.barh(positions, clean, color="tab:blue", alpha=0.35, label="clean")
    ax.barh(positions, patched, color="tab:blue", label="writer patched (keys only)")
    for y, row in zip(positions, rows[::-1]):
        text = f"{100 * row['removed']:.0f}% removed"
        if row["k_composition"] is not None:
            text += f", K-comp {row['k_composition']:.2f}"
        ax.text(max(row["attention_clean"], 0.02) + 0.02, y, text, va="center", fontsize=8)
    ax.set_yticks(list(positions), labels)
    ax.set_xlim(0.0, 1.45)
    ax.set(xlabel="reader's induction attention", title="strongest paths")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, fontsize=8)
    if k_composition is not None:
        image = heatmap(fig, axes[1], k_composition, "K-composition (writer -> reader keys)",
                        "reader head", "writer head", "K-composition", cmap="magma")
        ticks = range(len(head_names))
        step = max(1, len(head_names) // 16)
        axes[1].set_xticks(list(ticks)[::step], list(head_names)[::step], rotation=90)
        axes[1].set_yticks(list(ticks)[::step], list(head_names)[::step])
        image.set_clim(0.0, max(float(k_composition.max()), 1e-6))
    if title:
        fig.suptitle(title)
    return fig
