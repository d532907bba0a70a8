"""Activation patching of the first layer's edges: does position i read its parent?

For child position i and a source position j < i, the input is corrupted at j (a
different token), the corrupted run's layer-``layer`` head outputs (``hook_z``) at
position i are patched into the clean run, and the change of the final prediction is
measured. Only the edge j -> i changes, so a model that encodes the graph moves a lot
when j is a parent and hardly at all otherwise. The hooks are TransformerLens hook
names, so the same code patches ours, HookedTransformers and TransformerBridges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .. import plots
from ..data.tasks import InContextTask, check_task
from ..ops import as_int, check_positive_int, seeded
from .attention import check_layer, z_hook
from .losses import answer_probs


@dataclass
class ParentPatching:
    """Per child position: effect of patching the edge from its parents vs. others.

    Attributes:
        positions: the child positions examined: non-roots with at least one earlier
            non-parent position (position 1 of a chain has none: nothing to compare).
        kl_parent: [P] mean over parents of E[KL(clean || patched)] (nats).
        kl_nonparent: [P] the largest such effect over non-parent sources j < i.
        logit_diff_parent / logit_diff_nonparent: [P] the same for the drop of the
            clean prediction's top log-probability.
    """

    positions: list[int]
    kl_parent: torch.Tensor
    kl_nonparent: torch.Tensor
    logit_diff_parent: torch.Tensor
    logit_diff_nonparent: torch.Tensor

    @property
    def parent_dominates(self) -> bool:
        """True when, at every position, the parent edge matters more than any other."""
        return bool((self.kl_parent > self.kl_nonparent).all())

    def to_dict(self) -> dict[str, Any]:
        return {"positions": self.positions, "kl_parent": self.kl_parent.tolist(),
                "kl_nonparent": self.kl_nonparent.tolist(),
                "logit_diff_parent": self.logit_diff_parent.tolist(),
                "logit_diff_nonparent": self.logit_diff_nonparent.tolist(),
                "parent_dominates": self.parent_dominates}

    def plot(self):
        return plots.paired_lines(self.positions, {"parent": self.kl_parent,
                                             "largest non-parent": self.kl_nonparent},
                            xlabel="child position i", ylabel="KL(clean || patched), nats",
                            title="patching layer-1 edges j -> i", log_y=True)


@torch.no_grad()
def edge_effect(model: torch.nn.Module, task: InContextTask, symbols: torch.Tensor,
                clean: torch.Tensor, source: int, child: int, layer: int,
                generator: torch.Generator, head: int | None = None) -> tuple[float, float]:
    """(KL, top log-prob drop) of patching ``layer``'s ``hook_z`` at ``child`` (one head,
    or all) from a run whose ``source`` symbol was changed; positions in the task's
    coordinates, ``clean`` the clean answer probabilities [B, S]."""
    device = next(model.parameters()).device
    shift = torch.randint(1, task.vocab_size, (symbols.shape[0],), generator=generator)
    corrupted = symbols.clone()
    corrupted[:, source] = (corrupted[:, source] + shift.to(symbols.device)) % task.vocab_size
    name = z_hook(layer)
    position = child + task.position_offset
    _, cache = model.run_with_cache(task.model_tokens(corrupted).to(device),
                                    names_filter=lambda n: n == name)
    donor = cache[name][:, position] if head is None else cache[name][:, position, head]

    def patch(z, hook):
        if head is None:
            z[:, position] = donor
        else:
            z[:, position, head] = donor
        return z

    logits = model.run_with_hooks(task.model_tokens(symbols).to(device), fwd_hooks=[(name, patch)])
    logits = logits[:, -1] if logits.ndim == 3 else logits
    patched = torch.softmax(task.answer_logits(logits).float(), dim=-1).clamp_min(1e-30)
    clean = clean.clamp_min(1e-30)
    kl = (clean * (clean.log() - patched.log())).sum(-1).mean().clamp_min(0.0)  # >= 0 but for rounding
    top = clean.argmax(-1, keepdim=True)
    drop = (clean.gather(-1, top).log() - patched.gather(-1, top).log()).mean()
    return float(kl), float(drop)


def patch_parents(model: torch.nn.Module, task: InContextTask, layer: int = 0,
                  n_samples: int = 256, seed: int = 0,
                  positions: list[int] | None = None) -> ParentPatching:
    """Patch every edge j -> i (j < i) of layer ``layer`` for the given child positions
    (default: every child position with an earlier non-parent) and compare parents with
    non-parents."""
    check_task(task)
    layer = check_layer(model, layer)
    graph = task.graph
    def comparable(i: int) -> bool:  # a child with an earlier non-parent to compare with
        return bool(graph.parents[i]) and len(graph.parents[i]) < i

    if positions is None:
        children = [i for i in range(task.context_length) if comparable(i)]
    elif isinstance(positions, (str, bytes)) or not hasattr(positions, "__iter__"):
        raise TypeError(f"positions must be a list of child positions, got {positions!r}")
    else:
        children = [as_int(i, "positions") for i in positions]
    if not children:
        raise ValueError("positions must name at least one child position (got none: "
                         "nothing would be tested)" if positions is not None else
                         "positions: the task's graph has no child with an earlier "
                         "non-parent position, so no parent edge can be compared")
    for i in children:
        if not 0 <= i < task.context_length or not comparable(i):
            raise ValueError(f"positions must be context positions with a parent and an "
                             f"earlier non-parent to compare it with, got {i}")
    gen = seeded(seed)
    tokens = task.sample(check_positive_int(n_samples, "n_samples"), generator=gen).tokens
    symbols = task.symbols(tokens)
    clean = answer_probs(model, task, tokens)
    rows: dict[str, list[float]] = {"kl_p": [], "kl_n": [], "ld_p": [], "ld_n": []}
    for i in children:
        effects = {j: edge_effect(model, task, symbols, clean, j, i, layer, gen)
                   for j in range(i)}
        parents = graph.parents[i]
        others = [effects[j] for j in range(i) if j not in parents]
        rows["kl_p"].append(sum(effects[p][0] for p in parents) / len(parents))
        rows["ld_p"].append(sum(effects[p][1] for p in parents) / len(parents))
        rows["kl_n"].append(max(e[0] for e in others))
        rows["ld_n"].append(max(e[1] for e in others))
    as_tensor = {k: torch.tensor(v) for k, v in rows.items()}
    return ParentPatching(list(children), as_tensor["kl_p"], as_tensor["kl_n"],
                          as_tensor["ld_p"], as_tensor["ld_n"])
