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
from ..data.tasks import InContextTask
from ..models.base import model_probs
from .attention import z_hook


@dataclass
class ParentPatching:
    """Per child position: effect of patching the edge from its parents vs. others.

    Attributes:
        positions: the child positions examined (non-roots).
        kl_parent: [P] mean over parents of E[KL(clean || patched)] (nats).
        kl_nonparent: [P] the largest such effect over non-parent sources j < i
            (NaN where i has no non-parent source).
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
        other = torch.nan_to_num(self.kl_nonparent, nan=-1.0)
        return bool((self.kl_parent > other).all())

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
def _edge_effect(model, tokens, clean_probs, source: int, child: int, layer: int,
                 generator: torch.Generator) -> tuple[float, float]:
    """(KL, top log-prob drop) of patching z[child] from a run corrupted at ``source``."""
    vocab = model.cfg.d_vocab
    shift = torch.randint(1, vocab, (tokens.shape[0],), generator=generator).to(tokens.device)
    corrupted = tokens.clone()
    corrupted[:, source] = (corrupted[:, source] + shift) % vocab
    name = z_hook(layer)
    _, cache = model.run_with_cache(corrupted, names_filter=lambda n: n == name)
    donor = cache[name][:, child]

    def patch(z, hook):
        z[:, child] = donor
        return z

    logits = model.run_with_hooks(tokens, fwd_hooks=[(name, patch)])
    logits = logits[:, -1] if logits.ndim == 3 else logits
    patched = torch.softmax(logits.float(), dim=-1).clamp_min(1e-30)
    clean = clean_probs.clamp_min(1e-30)
    kl = (clean * (clean.log() - patched.log())).sum(-1).mean()
    top = clean.argmax(-1, keepdim=True)
    drop = (clean.gather(-1, top).log() - patched.gather(-1, top).log()).mean()
    return float(kl), float(drop)


def patch_parents(model: torch.nn.Module, task: InContextTask, layer: int = 0,
                  n_samples: int = 256, seed: int = 0,
                  positions: list[int] | None = None) -> ParentPatching:
    """Patch every edge j -> i (j < i) of layer ``layer`` for the given child positions
    (default: every non-root context position) and compare parents with non-parents."""
    graph = task.graph
    children = positions if positions is not None else [
        i for i in range(task.context_length) if graph.parents[i]]
    for i in children:
        if not 0 <= i < task.context_length or not graph.parents[i]:
            raise ValueError(f"positions must be non-root context positions, got {i}")
    gen = torch.Generator().manual_seed(seed)
    tokens = task.sample(n_samples, generator=gen).tokens.to(next(model.parameters()).device)
    clean = model_probs(model, tokens)
    rows: dict[str, list[float]] = {"kl_p": [], "kl_n": [], "ld_p": [], "ld_n": []}
    for i in children:
        effects = {j: _edge_effect(model, tokens, clean, j, i, layer, gen) for j in range(i)}
        parents = graph.parents[i]
        others = [effects[j] for j in range(i) if j not in parents]
        rows["kl_p"].append(sum(effects[p][0] for p in parents) / len(parents))
        rows["ld_p"].append(sum(effects[p][1] for p in parents) / len(parents))
        rows["kl_n"].append(max((e[0] for e in others), default=float("nan")))
        rows["ld_n"].append(max((e[1] for e in others), default=float("nan")))
    as_tensor = {k: torch.tensor(v) for k, v in rows.items()}
    return ParentPatching(list(children), as_tensor["kl_p"], as_tensor["kl_n"],
                          as_tensor["ld_p"], as_tensor["ld_n"])
