"""Activation patching of the first layer's edges: does position i read its parent?

For child position i and a source position j < i, the input is corrupted at j (a
different token), the corrupted run's layer-``layer`` head outputs (``hook_z``) at
position i are patched into the clean run, and the change of the final prediction is
measured. Only the edge j -> i changes, so a model that encodes the graph moves a lot
when j is a parent and hardly at all otherwise. The hooks are TransformerLens hook
names, so the same code patches ours, HookedTransformers and TransformerBridges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .. import plots
from ..data.tasks import InContextTask, check_task
from ..models.standard import is_tl_model, last_position_logits
from ..ops import as_int, check_bool, check_positive_int, seeded
from ..progress import progress_bar
from .attention import (
    check_heads,
    check_layer,
    head_name,
    heads_per_layer,
    stop_after,
    z_hook,
)
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
    heads: list[tuple[int, int]] = field(default_factory=list)

    @property
    def parent_dominates(self) -> bool:
        """True when, at every position, the parent edge matters more than any other."""
        return bool((self.kl_parent > self.kl_nonparent).all())

    def to_dict(self) -> dict[str, Any]:
        return {"positions": self.positions, "kl_parent": self.kl_parent.tolist(),
                "kl_nonparent": self.kl_nonparent.tolist(),
                "logit_diff_parent": self.logit_diff_parent.tolist(),
                "logit_diff_nonparent": self.logit_diff_nonparent.tolist(),
                "parent_dominates": self.parent_dominates,
                "heads": [head_name(*h) for h in self.heads]}

    def plot(self):
        heads = "+".join(head_name(*h) for h in self.heads)
        return plots.paired_lines(self.positions, {"parent": self.kl_parent,
                                                   "largest non-parent": self.kl_nonparent},
                                  xlabel="child position i", ylabel="KL(clean || patched), nats",
                                  title=f"patching edges j -> i at {heads}", log_y=True)


@torch.no_grad()
def edge_effect(model: torch.nn.Module, task: InContextTask, symbols: torch.Tensor,
                clean: torch.Tensor, source: int, child: int, layer: int | None,
                generator: torch.Generator, head: int | None = None, *,
                heads: list[tuple[int, int]] | None = None) -> tuple[float, float]:
    """(KL, top log-prob drop) of patching ``hook_z`` at ``child`` from a run whose
    ``source`` symbol was changed: every head of ``layer``, its ``head``, or the
    (layer, head) pairs ``heads`` (then ``layer`` is None); positions in the task's
    coordinates, ``clean`` the clean answer probabilities [B, S]."""
    check_task(task)
    context = task.context_length
    source, child = as_int(source, "source"), as_int(child, "child")
    if not 0 <= child < context:
        raise ValueError(f"child must be a context position in 0..{context - 1}, got {child}")
    if not 0 <= source < child:
        raise ValueError(f"source must be a position before child={child} (0..{child - 1}), "
                         f"got {source}")
    if heads is not None:
        if layer is not None or head is not None:
            raise ValueError("give heads=[(layer, head), ...] or layer (and head), not both")
        targets: list[tuple[int, int | None]] = list(check_heads(model, heads))
    else:
        layer = check_layer(model, layer)
        if head is not None:
            head = as_int(head, "head")
            count = heads_per_layer(model)[layer]
            if not 0 <= head < count:
                raise ValueError(f"head must be in 0..{count - 1} for layer {layer}, got {head}")
        targets = [(layer, head)]
    device = next(model.parameters()).device
    shift = torch.randint(1, task.vocab_size, (symbols.shape[0],), generator=generator)
    corrupted = symbols.clone()
    corrupted[:, source] = (corrupted[:, source] + shift.to(symbols.device)) % task.vocab_size
    names = {z_hook(layer) for layer, _ in targets}
    position = child + task.position_offset
    _, cache = model.run_with_cache(task.model_tokens(corrupted).to(device),
                                    names_filter=lambda n: n in names,
                                    **stop_after(model, max(layer for layer, _ in targets)))

    def patcher(layer: int) -> Any:
        chosen = [h for l, h in targets if l == layer]

        def patch(z: torch.Tensor, hook: Any) -> torch.Tensor:
            donor = cache[z_hook(layer)]
            for h in chosen:
                if h is None:
                    z[:, position] = donor[:, position]
                else:
                    z[:, position, h] = donor[:, position, h]
            return z
        return patch

    hooks = [(z_hook(layer), patcher(layer)) for layer in sorted({l for l, _ in targets})]
    clean_tokens = task.model_tokens(symbols).to(device)
    if is_tl_model(model):
        logits = last_position_logits(model, clean_tokens, hooks)
    else:
        logits = model.run_with_hooks(clean_tokens, fwd_hooks=hooks)
        logits = logits[:, -1] if logits.ndim == 3 else logits
    patched = torch.softmax(task.answer_logits(logits).float(), dim=-1).clamp_min(1e-30)
    clean = clean.clamp_min(1e-30)
    kl = (clean * (clean.log() - patched.log())).sum(-1).mean().clamp_min(0.0)  # >= 0 but for rounding
    top = clean.argmax(-1, keepdim=True)
    drop = (clean.gather(-1, top).log() - patched.gather(-1, top).log()).mean()
    return float(kl), float(drop)


def patch_parents(model: torch.nn.Module, task: InContextTask, layer: int = 0,
                  n_samples: int = 256, seed: int = 0,
                  positions: list[int] | None = None, *,
                  heads: list[tuple[int, int]] | None = None,
                  non_parents: int | None = None, progress: bool = False) -> ParentPatching:
    """Patch every edge j -> i (j < i) of layer ``layer`` (every head), or of the
    (layer, head) pairs ``heads`` (in a deep LM: the heads that attend to the parent),
    for the given child positions (default: every child position with an earlier
    non-parent) and compare parents with non-parents.

    Args:
        non_parents: compare each child's parents with this many of its earlier
            non-parents, spread evenly from the nearest (default: all of them). Each
            edge costs two forward passes of ``n_samples`` sequences: on a deep LM,
            a few positions and a few non-parents keep the cost in bounds.
        progress: a progress bar over the patched edges.
    """
    check_task(task)
    check_bool(progress, "progress")
    if non_parents is not None:
        non_parents = check_positive_int(non_parents, "non_parents")
    if heads is None:
        layer = check_layer(model, layer)
        heads = [(layer, head) for head in range(heads_per_layer(model)[layer])]
    else:
        heads = check_heads(model, heads)
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
    sources = {i: _sources(graph.parents[i], i, non_parents) for i in children}
    bar = progress_bar(sum(map(len, sources.values())), progress, "patching edges")
    for i in children:
        effects = {}
        for j in sources[i]:
            effects[j] = edge_effect(model, task, symbols, clean, j, i, None, gen, heads=heads)
            bar.update(1)
        parents = graph.parents[i]
        others = [effect for j, effect in effects.items() if j not in parents]
        rows["kl_p"].append(sum(effects[p][0] for p in parents) / len(parents))
        rows["ld_p"].append(sum(effects[p][1] for p in parents) / len(parents))
        rows["kl_n"].append(max(e[0] for e in others))
        rows["ld_n"].append(max(e[1] for e in others))
    bar.close()
    as_tensor = {k: torch.tensor(v) for k, v in rows.items()}
    return ParentPatching(list(children), as_tensor["kl_p"], as_tensor["kl_n"],
                          as_tensor["ld_p"], as_tensor["ld_n"], heads)


def _sources(parents: tuple[int, ...], child: int, non_parents: int | None) -> list[int]:
    """The parents of ``child`` and ``non_parents`` of its earlier non-parents (all when
    None), spread evenly from the nearest."""
    others = [j for j in range(child - 1, -1, -1) if j not in parents]
    if non_parents is not None and len(others) > non_parents:
        step = len(others) / non_parents
        others = [others[int(k * step)] for k in range(non_parents)]
    return sorted([*parents, *others])
