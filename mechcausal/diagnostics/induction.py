"""Induction heads: TL-style scores on repeated random tokens, for any TL model, and the
paper's generalisation (attention to positions whose *parent* token matches the query).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .. import plots
from ..data.tasks import InContextTask, InContextTree, check_task
from ..models.base import check_sizes
from ..ops import as_int, check_positive_int, seeded
from .attention import all_patterns, check_layer, check_model


@dataclass
class InductionScores:
    """Per-head scores on ``[r, r]`` sequences (``r``: k random tokens, distinct when
    the vocabulary allows, so every induction target is unique).

    Attributes:
        previous_token: [n_layers, n_heads] mean attention from q to q - 1 (q >= 1).
        induction: [n_layers, n_heads] mean attention from q in the second copy to
            q - k + 1, the token after the previous occurrence of x_q.
        half_length: k.
    Heads a layer does not have (unequal heads per layer) hold NaN."""

    previous_token: torch.Tensor
    induction: torch.Tensor
    half_length: int

    def top_induction_head(self) -> tuple[int, int]:
        """(layer, head) with the highest induction score."""
        flat = torch.nan_to_num(self.induction, nan=-1.0).argmax().item()
        return divmod(int(flat), self.induction.shape[1])

    def to_dict(self) -> dict[str, Any]:
        return {"previous_token": self.previous_token.tolist(),
                "induction": self.induction.tolist(), "half_length": self.half_length}

    def plot(self):
        return plots.score_grid({"previous-token": self.previous_token, "induction": self.induction},
                          title=f"induction scores (repeated random tokens, k={self.half_length})")


@torch.no_grad()
def induction_scores(model: torch.nn.Module, seq_len: int | None = None, n_batch: int = 64,
                     seed: int = 0) -> InductionScores:
    """Previous-token and induction scores of every head, no tokenizer needed.

    Args:
        model: ours, a HookedTransformer or a TransformerBridge; needs ``cfg.d_vocab``,
            ``cfg.n_ctx`` and ``blocks.{l}.attn.hook_pattern``.
        seq_len: total length 2k (default: the longest even length <= n_ctx).
        n_batch: sequences averaged.
    """
    n_ctx, vocab = check_model(model).cfg.n_ctx, model.cfg.d_vocab
    seq_len = (n_ctx // 2) * 2 if seq_len is None else as_int(seq_len, "seq_len")
    n_batch = check_positive_int(n_batch, "n_batch")
    seed = as_int(seed, "seed")
    if seq_len % 2 or not 4 <= seq_len <= n_ctx:
        raise ValueError(f"seq_len must be even and in 4..{n_ctx} (n_ctx), got {seq_len}")
    k = seq_len // 2
    gen = seeded(seed)
    if vocab >= k:  # distinct tokens make each induction target unique
        half = torch.rand((n_batch, vocab), generator=gen).argsort(-1)[:, :k]
    else:
        half = torch.randint(0, vocab, (n_batch, k), generator=gen)
    tokens = torch.cat([half, half], dim=1).to(next(model.parameters()).device)
    patterns = all_patterns(model, tokens)  # per layer [B, H_l, L, L]
    shape = (len(patterns), max(p.shape[1] for p in patterns))
    previous = torch.full(shape, float("nan"))
    induction = torch.full(shape, float("nan"))
    queries = torch.arange(1, seq_len)
    second = torch.arange(k, seq_len)
    for layer, pattern in enumerate(patterns):
        mean = pattern.float().mean(0).cpu()  # [H, L, L]
        heads = mean.shape[0]
        previous[layer, :heads] = mean[:, queries, queries - 1].mean(-1)
        induction[layer, :heads] = mean[:, second, second - k + 1].mean(-1)
    return InductionScores(previous, induction, k)


@dataclass
class CausalInductionScore:
    """Last-layer attention from the query onto positions whose parent token equals the
    query token (the in-context estimator's support), against the ideal 1.0.

    Attributes:
        mass: mean over samples with at least one such position of the attention mass
            the best last-layer head puts on them.
        per_head: [n_heads] the same per head.
        ideal: 1.0 (all attention on matching positions).
        coverage: fraction of samples that had a matching position."""

    mass: float
    per_head: torch.Tensor
    ideal: float
    coverage: float

    def to_dict(self) -> dict[str, Any]:
        return {"mass": self.mass, "per_head": self.per_head.tolist(), "ideal": self.ideal,
                "coverage": self.coverage}

    def plot(self):
        return plots.bar_chart(self.per_head, ideal=self.ideal, xlabel="last-layer head",
                         ylabel="attention on parent-matched positions",
                         title="causal induction score")


def matched_positions(task: InContextTask, symbols: torch.Tensor) -> torch.Tensor:
    """[B, T + 1] bool over a tree task's positions: context position i is a non-root
    whose parent's symbol equals the query's (the in-context estimator's support)."""
    parents = task.graph.parent_array().to(symbols.device)
    T = task.context_length
    safe = parents.clamp_min(0)
    matched = (symbols[:, safe] == symbols[:, T : T + 1]) & (parents >= 0)
    return torch.cat([matched, torch.zeros_like(matched[:, :1])], dim=1)


@torch.no_grad()
def causal_induction_score(model: torch.nn.Module, task: InContextTree, layer: int = -1,
                           n_samples: int = 2048, seed: int = 0) -> CausalInductionScore:
    """The paper's induction head, generalised to trees: where does the last layer look?"""
    check_task(task)
    if task.kind != "tree":
        raise TypeError(f"causal_induction_score needs a tree task (InContextTree), got "
                        f"{type(task).__name__}")
    layer = check_layer(model, layer)
    check_sizes(model, task)
    batch = task.sample(check_positive_int(n_samples, "n_samples"),
                        generator=seeded(seed))
    tokens = batch.tokens.to(next(model.parameters()).device)
    # [B, H, L] from the query, keys in the task's positions
    pattern = all_patterns(model, tokens)[layer][:, :, -1, task.position_offset:].float()
    matched = matched_positions(task, task.symbols(batch.tokens).to(tokens.device))
    has_match = matched.any(-1)
    if not bool(has_match.any()):
        raise ValueError(f"n_samples={n_samples}: no sample has a context position whose "
                         f"parent token equals the query, so there is nothing to score; "
                         f"draw more samples")
    mass = (pattern * matched[:, None].float()).sum(-1)[has_match]  # [B', H]
    per_head = mass.mean(0).cpu()
    return CausalInductionScore(
        mass=float(mass.max(-1).values.mean()),
        per_head=per_head, ideal=1.0, coverage=float(has_match.float().mean()))


__all__ = ["CausalInductionScore", "InductionScores", "causal_induction_score",
           "induction_scores"]
