"""Causal-graph extraction from data-averaged first-layer attention.

:func:`extract_graph` reads ``blocks.{layer}.attn.hook_pattern`` (any model with
``run_with_cache(tokens, names_filter=...)``: ours, HookedTransformers, bridges),
averages it over fresh samples of the task, and turns each context position's row into
a parent set; :meth:`GraphEstimate.compare` scores that against a true
:class:`~mechcausal.graphs.CausalGraph` (parent accuracy, edge precision / recall / F1,
structural Hamming distance, attention on the parents: averaged over data, and the
official Figure 9 statistic read from the weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .. import plots
from ..data.tasks import InContextTask
from ..graphs import CausalGraph
from ..ops import check_number, check_positive_int, format_number, to_json
from .attention import (
    check_heads,
    check_layer,
    graph_positions,
    has_position_scores,
    head_name,
    heads_attention,
    heads_per_layer,
    layer_attention,
    parent_attention,
    position_attention,
)

HeadCombine = Literal["sum", "max", "mean"]


# ---------------------------------------------------------------- comparison
@dataclass
class GraphComparison:
    """An estimated graph scored against the true one over the T context positions.

    A statistic with nothing to count is None, never a stand-in number, and
    ``undefined`` says why (``to_dict`` carries both).

    Attributes:
        parent_accuracy: fraction of true non-root positions whose estimated parent set
            equals the true one exactly (None when the graph has no edges).
        root_accuracy: fraction of true roots estimated as roots (position 0 counts).
        precision, recall, f1: over edges (parent, child); precision is None with no
            estimated edge, recall None with no true edge; ``f1 = 2TP / (2TP + FP + FN)``
            (None when neither graph has an edge).
        shd: structural Hamming distance = edges to add plus edges to delete. Every edge
            points forward in position order, so reversals cannot occur; a wrong single
            parent costs 2 (one missing, one extra edge).
        parent_attention: mean over true edges of the best head's attention from child
            to parent, **averaged over data** (the attention the model actually pays).
        position_parent_attention: the **official Figure 9 statistic**: the same mean
            over edges of the best head's :func:`position_attention` (softmax of the
            position -> position block of A, no data); None for models without such a
            block (learned-embedding TL models, language models).
        undefined: field -> why it is None.
        n_true_edges, n_estimated_edges: edge counts.
        weights: [L, L] the estimate's head-combined attention (for plotting).
        true_parents, estimated_parents: per context position.
        table: one dict per context position (position, true and estimated parents,
            whether they agree, best-head attention on each true parent, top key and its
            combined weight).
    """

    parent_accuracy: float | None
    root_accuracy: float | None
    precision: float | None
    recall: float | None
    f1: float | None
    shd: int
    parent_attention: float | None
    position_parent_attention: float | None
    n_true_edges: int
    n_estimated_edges: int
    weights: torch.Tensor
    true_parents: tuple[tuple[int, ...], ...]
    estimated_parents: tuple[tuple[int, ...], ...]
    table: list[dict[str, Any]]
    undefined: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return to_json({
            "undefined": self.undefined,
            "parent_accuracy": self.parent_accuracy, "root_accuracy": self.root_accuracy,
            "precision": self.precision, "recall": self.recall, "f1": self.f1,
            "shd": self.shd, "parent_attention": self.parent_attention,
            "position_parent_attention": self.position_parent_attention,
            "n_true_edges": self.n_true_edges, "n_estimated_edges": self.n_estimated_edges,
            "weights": self.weights, "true_parents": self.true_parents,
            "estimated_parents": self.estimated_parents, "table": self.table,
        })

    def plot(self):
        """Combined attention with true edges (cyan rings) and estimated edges (red x)."""
        return plots.attention_with_edges(
            self.weights, f"parent acc {format_number(self.parent_accuracy, '.2f')}, F1 "
                          f"{format_number(self.f1, '.2f')}, SHD {self.shd}",
            true_edges=[(p, i) for i, ps in enumerate(self.true_parents) for p in ps],
            found_edges=[(p, i) for i, ps in enumerate(self.estimated_parents) for p in ps],
            label="mean attention (heads combined)")


# ---------------------------------------------------------------- estimate
@dataclass
class GraphEstimate:
    """Parents read from one layer's data-averaged attention.

    Attributes:
        weights: [L, L] head-combined attention (row = query i, column = key j).
        patterns: [n_heads, L, L] per-head data-averaged attention.
        parents: one sorted tuple per context position 0..T-1 (position 0 is always
            ``()``); for DAG tasks the target node T is not an input and has no entry.
        layer, combine, threshold, k: the settings that produced it.
        heads: the (layer, head) pairs read, in the order of ``patterns``.
        position_patterns: [n_heads, L, L] the layer's weights-only
            :func:`position_attention` (the official Figure 9 statistic's matrices), or
            None for a model without a position -> position block.
    """

    weights: torch.Tensor
    patterns: torch.Tensor
    parents: tuple[tuple[int, ...], ...]
    layer: int
    combine: str
    threshold: float
    k: int | None
    position_patterns: torch.Tensor | None = None
    heads: list[tuple[int, int]] = field(default_factory=list)

    @property
    def roots(self) -> tuple[int, ...]:
        """Context positions estimated to have no parent."""
        return tuple(i for i, ps in enumerate(self.parents) if not ps)

    @property
    def graph(self) -> CausalGraph:
        """The estimate as a :class:`CausalGraph` over the context positions."""
        return CausalGraph(self.parents)

    def compare(self, graph: CausalGraph) -> GraphComparison:
        """Score against the true ``graph`` (T nodes, or T + 1 for a DAG task whose
        last node is the target: only the first T nodes are compared)."""
        if not isinstance(graph, CausalGraph):
            raise TypeError(f"graph must be a CausalGraph, got {type(graph).__name__}")
        T = len(self.parents)
        if graph.n not in (T, T + 1):
            raise ValueError(
                f"graph has n={graph.n} nodes; this estimate covers {T} context positions, "
                f"so expected a graph of {T} (tree task) or {T + 1} (DAG task) nodes"
            )
        true = graph.parents[:T]
        true_edges = {(p, i) for i, ps in enumerate(true) for p in ps}
        found_edges = {(p, i) for i, ps in enumerate(self.parents) for p in ps}
        hits = len(true_edges & found_edges)
        children = [i for i, ps in enumerate(true) if ps]
        roots = [i for i, ps in enumerate(true) if not ps]
        best_head = self.patterns.max(0).values  # [L, L]
        table = [
            {
                "position": i,
                "true_parents": list(true[i]),
                "estimated_parents": list(self.parents[i]),
                "correct": true[i] == self.parents[i],
                "attention_on_true_parents": [best_head[i, p].item() for p in true[i]],
                "top_key": int(self.weights[i, :i].argmax()) if i else None,
                "top_weight": self.weights[i, :i].max().item() if i else None,
            }
            for i in range(T)
        ]
        n_true, n_found = len(true_edges), len(found_edges)
        undefined: dict[str, str] = {}

        def ratio(name: str, numerator: int, denominator: int, why: str) -> float | None:
            if denominator:
                return numerator / denominator
            undefined[name] = why
            return None

        no_edge = "the true graph has no edge"
        attention = {}
        for name, patterns in (("parent_attention", self.patterns),
                               ("position_parent_attention", self.position_patterns)):
            if patterns is None:
                undefined[name] = "the model has no position -> position attention block"
            elif not n_true:
                undefined[name] = no_edge
            else:
                attention[name] = parent_attention(patterns, CausalGraph(true))
        return GraphComparison(
            parent_accuracy=ratio("parent_accuracy",
                                  sum(true[i] == self.parents[i] for i in children),
                                  len(children), no_edge),
            root_accuracy=ratio("root_accuracy", sum(not self.parents[i] for i in roots),
                                len(roots), "the true graph has no root"),
            precision=ratio("precision", hits, n_found, "no edge was estimated"),
            recall=ratio("recall", hits, n_true, no_edge),
            f1=ratio("f1", 2 * hits, n_true + n_found, "neither graph has an edge"),
            shd=len(true_edges ^ found_edges),
            parent_attention=attention.get("parent_attention"),
            position_parent_attention=attention.get("position_parent_attention"),
            n_true_edges=n_true,
            n_estimated_edges=n_found,
            weights=self.weights,
            true_parents=tuple(true),
            estimated_parents=self.parents,
            table=table,
            undefined=undefined,
        )

    def to_dict(self) -> dict[str, Any]:
        return to_json({
            "weights": self.weights, "patterns": self.patterns, "parents": self.parents,
            "roots": self.roots, "layer": self.layer, "combine": self.combine,
            "threshold": self.threshold, "k": self.k,
            "position_patterns": self.position_patterns, "heads": self.head_names,
        })

    @property
    def head_names(self) -> list[str]:
        """The heads read, as ``L{layer}H{head}``."""
        return [head_name(layer, head) for layer, head in self.heads]

    def plot(self):
        """Combined attention with the estimated edges marked (red x)."""
        return plots.attention_with_edges(
            self.weights, f"{'+'.join(self.head_names)} attention ({self.combine} over heads)",
            found_edges=[(p, i) for i, ps in enumerate(self.parents) for p in ps])


_COMBINE = {
    "sum": lambda patterns: patterns.sum(0),
    "max": lambda patterns: patterns.max(0).values,
    "mean": lambda patterns: patterns.mean(0),
}


def _check_combine(combine: Any) -> str:
    if not isinstance(combine, str) or combine not in _COMBINE:
        raise ValueError(f"combine must be one of {tuple(_COMBINE)}, got {combine!r}")
    return combine


def combine_heads(patterns: torch.Tensor, combine: HeadCombine) -> torch.Tensor:
    """[n_heads, L, L] -> [L, L]: ``sum`` (a row holds one unit per head), ``max`` or
    ``mean`` over heads."""
    return _COMBINE[_check_combine(combine)](patterns)


def parents_from_weights(weights: torch.Tensor, n_context: int, threshold: float = 0.5,
                         k: int | None = None) -> tuple[tuple[int, ...], ...]:
    """Parent sets of positions 0..n_context-1 from combined attention ``weights`` [L, L].

    Position i is a root when no earlier key j < i gets weight >= ``threshold`` (so
    position 0 always is). Otherwise its parents are every key j < i with weight >=
    ``threshold`` (``k=None``), or its ``min(k, i)`` heaviest keys j < i (``k`` given)."""
    parents: list[tuple[int, ...]] = []
    for i in range(n_context):
        row = weights[i, :i]
        if i == 0 or row.max() < threshold:
            parents.append(())
        elif k is None:
            parents.append(tuple((row >= threshold).nonzero().flatten().tolist()))
        else:
            parents.append(tuple(sorted(row.topk(min(k, i)).indices.tolist())))
    return tuple(parents)


def extract_graph(
    model: Any,
    task: InContextTask,
    layer: int = 0,
    n_samples: int = 2048,
    seed: int = 0,
    k: int | None = None,
    threshold: float = 0.5,
    combine: HeadCombine = "sum",
    heads: list[tuple[int, int]] | None = None,
) -> GraphEstimate:
    """Estimate the causal graph from ``layer``'s attention averaged over fresh samples.

    The estimate never reads ``task.graph``; the task only supplies samples.

    Heads are combined by ``combine``: ``"sum"`` (default) gives each key the total
    attention it receives from all heads, so in a multi-parent graph whose parents are
    split between heads every parent still gets about one full unit (``"mean"`` would
    dilute it to 1/n_heads, and ``"max"`` keeps only the strongest head's share of a key
    that several heads attend to). With one head the three agree.

    Parent rule (truth-free): a context position i is a **root** when no earlier key
    j < i holds at least ``threshold`` of combined attention (default 0.5: half a
    head's attention; attention spread over earlier keys or kept on itself reads as
    "no parent"). Otherwise, with ``k=None``, its parents are all keys j < i holding
    at least ``threshold`` (variable parent counts; a per-key threshold rather than
    "smallest top set with cumulative mass >= 0.5", which would keep only one of two
    parents that two heads attend to equally); with ``k`` given, its ``min(k, i)``
    heaviest keys. Pass ``k=task.graph.max_parents`` to use the truth's parent count.
    Limitation: a root that concentrates its attention on one earlier position (trained
    models sometimes do) is indistinguishable from a child of that position.

    Args:
        model: exposes ``blocks.{layer}.attn.hook_pattern`` [batch, head, query, key]
            through ``run_with_cache(tokens, names_filter=...)``.
        task: supplies ``n_samples`` sequences (seeded by ``seed``).
        layer: attention layer to read (the paper: the first, 0).
        k: parents per non-root position, or None for the threshold rule.
        threshold: combined attention a key needs to count as a parent (> 0).
        combine: ``"sum"``, ``"max"`` or ``"mean"`` over heads.
        heads: read only these (layer, head) pairs (in a deep LM, the head that attends
            to the parent, e.g. ``rank_heads(model, task).top(1)``) in place of every
            head of ``layer``.

    Returns:
        :class:`GraphEstimate` with ``weights`` [L, L], ``patterns`` [H, L, L] and one
        parent tuple per context position.
    """
    _check_combine(combine)
    if k is not None:
        check_positive_int(k, "k")
    threshold = check_number(threshold, "threshold", low=0.0, low_open=True)
    if heads is None:
        layer = check_layer(model, layer)
        heads = [(layer, head) for head in range(heads_per_layer(model)[layer])]
        patterns = layer_attention(model, task, layer, n_samples, seed)
    else:
        heads = check_heads(model, heads)
        layer = heads[0][0]
        patterns = heads_attention(model, task, heads, n_samples, seed)
    weights = combine_heads(patterns, combine)
    position_patterns = None
    if has_position_scores(model) and {h[0] for h in heads} == {layer}:
        # the model's n_ctx may exceed the task's input: causal rows make cropping exact
        length = task.input_length
        position_patterns = graph_positions(
            position_attention(model, layer, head=None)[[h for _, h in heads], :length,
                                                        :length], task)
    return GraphEstimate(
        weights=weights,
        patterns=patterns,
        parents=parents_from_weights(weights, task.context_length, threshold, k),
        layer=layer,
        heads=heads,
        combine=combine,
        threshold=float(threshold),
        k=k,
        position_patterns=position_patterns,
    )
