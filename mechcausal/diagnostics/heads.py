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
from ..ops import to_json
from .attention import layer_attention

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
        return plots.slot_mass(self.mass, f"layer {self.layer + 1}: split score "
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
