"""Multi-head graph splitting: which first-layer head attends to which parent slot.

With k parents per position and k first-layer heads, the paper predicts that each head
specialises in one parent "slot" (e.g. for ``pa(i) = {floor((i-1)/2), i-1}`` one head
attends to ``floor((i-1)/2)``, the other to ``i-1``). :func:`head_split` measures it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import torch

from .. import plots
from ..data.tasks import InContextTask, check_task
from ..models.base import check_sizes
from ..ops import check_bool, check_choice, check_positive_int, seeded, to_json
from ..progress import progress_bar
from .attention import head_name, heads_per_layer, layer_attention, model_device, reduce_patterns
from .induction import matched_positions
from .losses import answer_probs
from .patching import edge_effect

# permutations tried by the exact one-to-one matching; 8 heads x 8 slots is 40320
_MAX_MATCHINGS = 10**5


@dataclass
class HeadSplit:
    """Attention of each head of one layer on each parent slot.

    Slot r is the r-th parent in sorted order of every context position that has the
    graph's maximal number R of parents; positions with fewer parents are left out,
    because for them a parent's slot is ambiguous (in ``two_parent``, pa(1) = {0} is
    both ``floor(0/2)`` and ``1 - 1``).

    Attributes:
        mass: [n_heads, R] mean over those positions and over data of head h's
            attention from a position to its slot-r parent (each entry in [0, 1]).
        assignment: per head, the slot it attends to most (``argmax_r mass[h, r]``).
        matching: per slot, the head of the best one-to-one matching of slots to
            distinct heads (maximal total mass); None for a slot left unmatched when
            there are fewer heads than slots.
        coverage: every slot is some head's ``assignment``.
        split_score: ``(1/R) * sum_r mass[matching[r], r]`` (unmatched slots count 0),
            in [0, 1]; 1 = each slot has its own head putting all its attention there;
            two heads that both attend only to slot 1 of two score 0.5.
        n_positions: context positions averaged over (those with R parents).
        layer: the attention layer read.
    """

    mass: torch.Tensor
    assignment: tuple[int, ...]
    matching: tuple[int | None, ...]
    coverage: bool
    split_score: float
    n_positions: int
    layer: int

    def to_dict(self) -> dict[str, Any]:
        return to_json({
            "mass": self.mass, "assignment": self.assignment, "matching": self.matching,
            "coverage": self.coverage, "split_score": self.split_score,
            "n_positions": self.n_positions, "layer": self.layer,
        })

    def plot(self):
        """Heatmap head x slot of the attention mass, values written in the cells."""
        return plots.slot_mass(self.mass, f"L{self.layer}: split score "
                                          f"{self.split_score:.2f}, coverage {self.coverage}")


def best_matching(mass: torch.Tensor) -> tuple[tuple[int | None, ...], float]:
    """Exact maximum-weight one-to-one matching of slots to heads by enumeration.

    Args:
        mass: [n_heads, n_slots].
    Returns:
        (head matched to each slot or None, total matched mass).
    """
    n_heads, n_slots = mass.shape
    pairs = min(n_heads, n_slots)
    if math.perm(max(n_heads, n_slots), pairs) > _MAX_MATCHINGS:
        raise ValueError(
            f"mass has shape {tuple(mass.shape)}: too many heads x slots for the exact "
            f"matching (more than {_MAX_MATCHINGS} candidate matchings)"
        )
    # pair each item of the smaller side (rows of `table`) with a distinct one of the larger
    slots_smaller = n_slots <= n_heads
    table = (mass.T if slots_smaller else mass).tolist()
    chosen = max(
        itertools.permutations(range(len(table[0])), len(table)),
        key=lambda picks: sum(row[c] for row, c in zip(table, picks)),
    )
    total = sum(row[c] for row, c in zip(table, chosen))
    if slots_smaller:
        return tuple(chosen), total
    return tuple(chosen.index(r) if r in chosen else None for r in range(n_slots)), total


def head_split(
    model: Any,
    task: InContextTask,
    layer: int = 0,
    n_samples: int = 2048,
    seed: int = 0,
) -> HeadSplit:
    """How ``layer``'s heads divide the parent slots of a multi-parent graph.

    Args:
        model: exposes ``blocks.{layer}.attn.hook_pattern`` through ``run_with_cache``.
        task: its graph must give some context position at least 2 parents.
        layer: attention layer to read (the paper: the first, 0).
        n_samples: fresh sequences averaged over (seeded by ``seed``).

    Returns:
        :class:`HeadSplit` (``mass`` [n_heads, R]).
    """
    check_task(task)
    parents = task.graph.parents[: task.context_length]
    n_slots = max(len(ps) for ps in parents)
    if n_slots < 2:
        raise ValueError(
            f"head_split needs a multi-parent graph, but task.graph gives its context "
            f"positions at most max_parents={n_slots} parent(s)"
        )
    children = [i for i, ps in enumerate(parents) if len(ps) == n_slots]
    patterns = layer_attention(model, task, layer, n_samples, seed)  # [H, L, L]
    child_index = torch.tensor(children).unsqueeze(1)  # [P, 1]
    slot_parents = torch.tensor([parents[i] for i in children])  # [P, R]
    mass = patterns[:, child_index, slot_parents].mean(1)  # [H, P, R] -> [H, R]
    assignment = tuple(mass.argmax(1).tolist())
    matching, total = best_matching(mass)
    return HeadSplit(
        mass=mass,
        assignment=assignment,
        matching=matching,
        coverage=set(assignment) >= set(range(n_slots)),
        split_score=total / n_slots,
        n_positions=len(children),
        layer=layer,
    )


# ---------------------------------------------------------------------- ranking
@dataclass
class HeadRanking:
    """Every (layer, head) of a model scored by the paper's mechanism on a task, best
    first: on a many-layer LM, "the heads that carry the graph" in place of "layer 1".

    Attributes:
        rows: one dict per head, sorted by ``by`` (descending): ``layer``, ``head``,
            ``parent_attention`` (its data-averaged attention from each position to its
            true parents, mean over edges), ``causal_induction`` (tree tasks: its
            attention from the query onto positions whose parent's symbol is the
            query's; None for DAGs), ``patching`` (with ``patching=True``: the mean
            KL(clean || patched) of the answer when this head's output at a child is
            patched from a run with the parent changed; else None).
        by: the sort key.
    """

    rows: list[dict[str, Any]]
    by: str

    def top(self, k: int = 1) -> list[tuple[int, int]]:
        """The first ``k`` (layer, head) pairs."""
        return [(row["layer"], row["head"]) for row in self.rows[:k]]

    def grid(self, key: str) -> torch.Tensor:
        """[n_layers, n_heads] of ``key`` (NaN where a row has None)."""
        layers = 1 + max(row["layer"] for row in self.rows)
        heads = 1 + max(row["head"] for row in self.rows)
        grid = torch.full((layers, heads), math.nan)
        for row in self.rows:
            if row[key] is not None:
                grid[row["layer"], row["head"]] = row[key]
        return grid

    def to_dict(self) -> dict[str, Any]:
        return to_json({"rows": self.rows, "by": self.by})

    def plot(self):
        """Layer x head grids of the scores."""
        keys = [key for key in ("parent_attention", "causal_induction", "patching")
                if any(row[key] is not None for row in self.rows)]
        labels = {"parent_attention": "attention on the true parents",
                  "causal_induction": "causal induction (query)", "patching": "patching KL"}
        return plots.score_grid({labels[key]: self.grid(key) for key in keys},
                                title="heads scored by the mechanism")


@torch.no_grad()
def rank_heads(model: Any, task: InContextTask, n_samples: int = 1024, seed: int = 0,
               patching: bool = False, n_patch: int = 128,
               by: str = "parent_attention", *, batch_size: int = 256,
               progress: bool = False) -> HeadRanking:
    """Score every head of ``model`` on ``task`` (see :class:`HeadRanking`); positions
    are the task's (a BOS token skipped), so this runs on LMs with an in-vocabulary task.

    Args:
        n_samples: sequences for the attention scores.
        patching: also patch each head's output at every child position (costly:
            layers x heads x children x 2 forward passes of ``n_patch`` sequences).
        by: ``"parent_attention"``, ``"causal_induction"`` or ``"patching"``.
        batch_size: sequences per forward pass (bounds memory: one layer's pattern of
            ``batch_size`` sequences is held at a time).
        progress: a progress bar over the forward passes (and the patched heads).
    """
    check_task(task)
    check_sizes(model, task)
    check_positive_int(n_samples, "n_samples")
    check_positive_int(n_patch, "n_patch")
    check_bool(patching, "patching")
    check_choice(by, "by", ("parent_attention", "causal_induction", "patching"))
    batch_size = check_positive_int(batch_size, "batch_size")
    check_bool(progress, "progress")
    if by == "causal_induction" and task.kind != "tree":
        raise ValueError("by='causal_induction' needs a tree task")
    if by == "patching" and not patching:
        raise ValueError("by='patching' needs patching=True")
    graph, T, offset = task.graph, task.context_length, task.position_offset
    edges = [(p, i) for p, i in graph.edges if i < T]
    if not edges:
        raise ValueError("the task's graph has no edges: there is nothing to rank heads by")
    parents = torch.tensor([p for p, _ in edges])
    children = torch.tensor([i for _, i in edges])
    batch = task.sample(n_samples, generator=seeded(seed))
    symbols = task.symbols(batch.tokens)
    tree = task.kind == "tree"
    n_layers = model.cfg.n_layers
    heads = heads_per_layer(model)
    on_parents = [torch.zeros(count) for count in heads]
    on_matched = [torch.zeros(count) for count in heads]
    matched_rows = 0
    starts = range(0, batch.tokens.shape[0], batch_size)
    bar = progress_bar(len(starts) + (sum(heads) if patching else 0), progress, "rank heads")
    for start in starts:
        tokens = batch.tokens[start : start + batch_size].to(model_device(model))
        matched = matched_positions(task, symbols[start : start + batch_size]) if tree else None
        if tree:
            has_match = matched.any(-1)
            matched_rows += int(has_match.sum())

        def reduce(layer: int, pattern: torch.Tensor) -> None:
            pattern = pattern.cpu()[:, :, offset:, offset:]  # task positions
            on_parents[layer] += pattern[:, :, children, parents].sum((0, 2))
            if tree:
                from_query = pattern[:, :, T, : T + 1]  # [B, H, T + 1]
                mass = (from_query * matched[:, None].float()).sum(-1)  # [B, H]
                on_matched[layer] += mass[has_match].sum(0)

        reduce_patterns(model, tokens, reduce)
        bar.update(1)
    effects = _patching_effects(model, task, n_patch, seed, heads, bar) if patching else None
    bar.close()
    rows = []
    for layer in range(n_layers):
        parent = on_parents[layer] / (n_samples * len(edges))
        for head in range(parent.shape[0]):
            rows.append({
                "layer": layer, "head": head, "name": head_name(layer, head),
                "parent_attention": parent[head].item(),
                "causal_induction": (on_matched[layer][head].item() / matched_rows
                                     if tree and matched_rows else None),
                "patching": effects[layer][head] if effects is not None else None})
    rows.sort(key=lambda row: -(row[by] if row[by] is not None else -math.inf))
    return HeadRanking(rows, by)


def _patching_effects(model: Any, task: InContextTask, n_samples: int, seed: int,
                      heads: list[int], bar: Any) -> list[list[float]]:
    """[layer][head]: mean over child positions and their parents of the KL of patching
    that head's ``hook_z`` at the child from a run with the parent's symbol changed."""
    generator = seeded(seed)
    tokens = task.sample(check_positive_int(n_samples, "n_patch"), generator=generator).tokens
    symbols = task.symbols(tokens)
    clean = answer_probs(model, task, tokens)
    edges = [(p, i) for p, i in task.graph.edges if i < task.context_length]

    def effect(layer: int, head: int) -> float:
        total = sum(edge_effect(model, task, symbols, clean, p, i, layer, generator, head)[0]
                    for p, i in edges)
        bar.update(1)
        return total / len(edges)

    return [[effect(layer, head) for head in range(n_heads)]
            for layer, n_heads in enumerate(heads)]
