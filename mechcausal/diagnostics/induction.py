"""Induction heads: TL-style scores on repeated random tokens, for any TL model, and the
paper's generalisation (attention to positions whose *parent* token matches the query).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import plots
from ..data.tasks import InContextTask, InContextTree, check_task
from ..models.base import check_sizes
from ..ops import as_int, check_bool, check_choice, check_positive_int, seeded, to_json
from ..progress import progress_bar
from .attention import (
    check_heads,
    check_layer,
    check_model,
    head_name,
    heads_per_layer,
    model_device,
    reduce_patterns,
)
from .weights import head_weights


SCORES = ("previous_token", "induction", "duplicate_token", "copying")
_AUTO = "auto"


@dataclass
class InductionScores:
    """Per-head scores on BOS + ``r`` + ``r`` (``r``: k random ordinary tokens, distinct
    when the vocabulary allows, so every induction target is unique), the convention of
    TransformerLens users and Olsson et al. (2022). Positions below count from the first
    token of ``r``; a BOS token, when used, sits before it.

    Attributes:
        rows: one dict per head that exists (a layer with fewer heads has fewer rows):
            ``layer``, ``head``, ``name`` (``L{layer}H{head}``, both from 0) and
            - ``previous_token``: mean attention from q to q - 1 (q >= 1);
            - ``induction`` (prefix matching): from q in the second copy to q - k + 1,
              the token after the earlier occurrence of x_q;
            - ``duplicate_token``: from q in the second copy to q - k, the earlier
              occurrence of x_q itself;
            - ``copying``: the OV circuit's eigenvalue score sum(lambda) / sum(|lambda|)
              of ``W_U W_O W_V W_E`` over the ordinary tokens (1: the head raises the
              logit of the token it attends to; LayerNorm left out, as in Olsson et
              al.), or None for a model without those weights;
            and ``{score}_se``: the standard error of each attention score over the
            sequences.
        half_length: k.
        n_sequences: sequences averaged.
        bos_token_id: the BOS token put first, or None.
        tokens: [n_sequences, (1) + 2k] the sequences scored (to check the scores
            elsewhere, e.g. against a Hugging Face model's own attentions).
    """

    rows: list[dict[str, Any]]
    half_length: int
    n_sequences: int
    bos_token_id: int | None
    tokens: torch.Tensor

    def top(self, n: int = 1, score: str = "induction") -> list[tuple[int, int]]:
        """The ``n`` heads with the highest ``score``, best first, as (layer, head)."""
        check_choice(score, "score", SCORES)
        n = check_positive_int(n, "n")
        ranked = sorted((row for row in self.rows if row[score] is not None),
                        key=lambda row: -row[score])
        return [(row["layer"], row["head"]) for row in ranked[:n]]

    def score(self, layer: int, head: int, score: str = "induction") -> float | None:
        """One head's ``score``; KeyError for a head the model does not have."""
        check_choice(score, "score", SCORES)
        for row in self.rows:
            if (row["layer"], row["head"]) == (layer, head):
                return row[score]
        raise KeyError(f"the model has no head {head_name(layer, head)}")

    def grid(self, score: str) -> torch.Tensor:
        """[n_layers, max heads] of ``score`` for display (NaN marks a head a layer does
        not have, or a score not computed)."""
        check_choice(score, "score", SCORES)
        layers = 1 + max(row["layer"] for row in self.rows)
        heads = 1 + max(row["head"] for row in self.rows)
        grid = torch.full((layers, heads), float("nan"))
        for row in self.rows:
            if row[score] is not None:
                grid[row["layer"], row["head"]] = row[score]
        return grid

    def to_dict(self) -> dict[str, Any]:
        return to_json({"rows": self.rows, "half_length": self.half_length,
                        "n_sequences": self.n_sequences, "bos_token_id": self.bos_token_id,
                        "top_induction": [head_name(*h) for h in self.top(3, "induction")],
                        "top_previous_token": [head_name(*h)
                                               for h in self.top(3, "previous_token")]})

    def plot(self):
        bos = "BOS + " if self.bos_token_id is not None else ""
        return plots.score_grid({"previous-token": self.grid("previous_token"),
                                 "induction (prefix matching)": self.grid("induction"),
                                 "duplicate-token": self.grid("duplicate_token")},
                                title=f"induction scores on {bos}r + r (k={self.half_length}, "
                                      f"{self.n_sequences} sequences)")


def model_bos(model: Any) -> int | None:
    """The BOS id of ``model``'s tokenizer (TransformerLens puts it before every text),
    or None for a model without a tokenizer or one without a BOS token."""
    bos = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    return None if bos is None else int(bos)


def ordinary_tokens(model: Any, token_ids: Any = None) -> torch.Tensor:
    """The ids random sequences are drawn from: ``token_ids`` if given (checked against
    ``d_vocab``), else every id of the vocabulary but the tokenizer's special ones."""
    vocab = model.cfg.d_vocab
    if token_ids is not None:
        if isinstance(token_ids, (str, bytes)) or not hasattr(token_ids, "__iter__"):
            raise TypeError(f"token_ids must be a list of token ids, got {token_ids!r}")
        ids = [as_int(t, "token_ids entry") for t in token_ids]
        if len(ids) < 2 or any(not 0 <= t < vocab for t in ids):
            raise ValueError(f"token_ids must hold at least 2 ids in 0..{vocab - 1} (d_vocab), "
                             f"got {ids}")
        return torch.tensor(sorted(set(ids)))
    special = set(getattr(getattr(model, "tokenizer", None), "all_special_ids", None) or ())
    return torch.tensor([t for t in range(vocab) if t not in special])


def repeated_sequences(pool: torch.Tensor, n: int, k: int, bos: int | None,
                       generator: torch.Generator) -> torch.Tensor:
    """[n, (bos) + 2k]: BOS (if given) + r + r, r drawn from ``pool`` (without
    replacement when the pool holds k ids or more)."""
    if len(pool) >= k:
        half = pool[torch.rand((n, len(pool)), generator=generator).topk(k, dim=-1).indices]
    else:
        half = pool[torch.randint(0, len(pool), (n, k), generator=generator)]
    tokens = torch.cat([half, half], dim=1)
    if bos is None:
        return tokens
    return torch.cat([torch.full((n, 1), bos, dtype=tokens.dtype), tokens], dim=1)


@torch.no_grad()
def induction_scores(model: torch.nn.Module, seq_len: int | None = None, n_batch: int = 32,
                     seed: int = 0, *, bos_token_id: int | None | str = _AUTO,
                     token_ids: Any = None, batch_size: int = 8,
                     progress: bool = False) -> InductionScores:
    """Previous-token, prefix-matching (induction), duplicate-token and copying scores of
    every head of any TransformerLens-style model (ours, HookedTransformer, bridge).

    Args:
        model: needs ``cfg.d_vocab``, ``cfg.n_ctx`` and ``blocks.{l}.attn.hook_pattern``.
        seq_len: length 2k of ``r + r`` (default: 2 * min(50, room in n_ctx)).
        n_batch: sequences averaged (the standard error of each score is reported).
        bos_token_id: a BOS to put first; default: the model tokenizer's BOS (none
            without a tokenizer); None: no BOS.
        token_ids: the ids to draw ``r`` from (default: every id but special tokens).
        batch_size: sequences per forward pass (bounds memory: one layer's pattern of
            ``batch_size`` sequences is held at a time).
        progress: show a progress bar.
    """
    n_ctx = check_model(model).cfg.n_ctx
    bos = model_bos(model) if bos_token_id == _AUTO else (
        None if bos_token_id is None else as_int(bos_token_id, "bos_token_id"))
    if bos is not None and not 0 <= bos < model.cfg.d_vocab:
        raise ValueError(f"bos_token_id must be in 0..{model.cfg.d_vocab - 1}, got {bos}")
    room = n_ctx - (bos is not None)
    seq_len = 2 * min(50, room // 2) if seq_len is None else as_int(seq_len, "seq_len")
    if seq_len % 2 or not 4 <= seq_len <= room:
        raise ValueError(f"seq_len must be even and in 4..{room} (n_ctx {n_ctx}"
                         f"{', less the BOS' if bos is not None else ''}), got {seq_len}")
    n_batch = check_positive_int(n_batch, "n_batch")
    batch_size = check_positive_int(batch_size, "batch_size")
    check_bool(progress, "progress")
    pool = ordinary_tokens(model, token_ids)
    k, offset = seq_len // 2, int(bos is not None)
    tokens = repeated_sequences(pool, n_batch, k, bos, seeded(seed))
    queries = torch.arange(offset + 1, offset + seq_len)
    second = torch.arange(offset + k, offset + seq_len)
    targets = {"previous_token": (queries, queries - 1), "induction": (second, second - k + 1),
               "duplicate_token": (second, second - k)}
    per_sequence: dict[tuple[int, str], list[torch.Tensor]] = {}

    def reduce(layer: int, pattern: torch.Tensor) -> None:
        for name, (rows, cols) in targets.items():  # [B, H]
            per_sequence.setdefault((layer, name), []).append(
                pattern[:, :, rows.to(pattern.device), cols.to(pattern.device)].mean(-1).cpu())

    device = model_device(model)
    bar = progress_bar(n_batch, progress, "induction scores")
    for start in range(0, n_batch, batch_size):
        reduce_patterns(model, tokens[start : start + batch_size].to(device), reduce)
        bar.update(min(batch_size, n_batch - start))
    bar.close()
    copying = copying_scores(model, pool)
    rows = []
    for layer, n_heads in enumerate(heads_per_layer(model)):
        values = {name: torch.cat(per_sequence[(layer, name)]) for name in targets}  # [N, H]
        for head in range(n_heads):
            row: dict[str, Any] = {"layer": layer, "head": head, "name": head_name(layer, head)}
            for name, value in values.items():
                row[name] = value[:, head].mean().item()
                row[f"{name}_se"] = (value[:, head].std().item() / math.sqrt(n_batch)
                                     if n_batch > 1 else None)
            row["copying"] = None if copying is None else copying[layer][head]
            rows.append(row)
    return InductionScores(rows, k, n_batch, bos, tokens)


def copying_scores(model: Any, pool: torch.Tensor) -> list[list[float]] | None:
    """[layer][head] eigenvalue copying score of the OV circuit over the tokens of
    ``pool`` (see :class:`InductionScores`); None without the weights to read it."""
    weights = head_weights(model)
    if weights is None:
        return None
    pool = pool.to(weights.W_E.device)
    # nonzero eigenvalues of W_E[pool] W_V W_O W_U[:, pool] are those of the small
    # [d_head, d_head] matrix W_O (W_U[:, pool] W_E[pool]) W_V
    through_vocab = weights.W_U[:, pool] @ weights.W_E[pool]  # [d_model, d_model]
    scores = []
    for layer, n_heads in enumerate(heads_per_layer(model)):
        W_V, W_O = weights.W_V[layer], weights.W_O[layer]
        row = []
        for head in range(n_heads):
            eigenvalues = torch.linalg.eigvals((W_O[head] @ through_vocab @ W_V[head]).double())
            total = eigenvalues.abs().sum().item()
            row.append(eigenvalues.real.sum().item() / total if total > 0 else 0.0)
        scores.append(row)
    return scores


@dataclass
class CausalInductionScore:
    """Attention from the query onto positions whose parent token equals the query token
    (the in-context estimator's support), against the ideal 1.0, for the heads read
    (by default every head of the last layer).

    Attributes:
        mass: mean over samples with at least one such position of the attention mass
            the best of the heads puts on them.
        per_head: [n heads read] the same per head.
        ideal: 1.0 (all attention on matching positions).
        coverage: fraction of samples that had a matching position.
        heads: the (layer, head) pairs read, in the order of ``per_head``."""

    mass: float
    per_head: torch.Tensor
    ideal: float
    coverage: float
    heads: list[tuple[int, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"mass": self.mass, "per_head": self.per_head.tolist(), "ideal": self.ideal,
                "coverage": self.coverage, "heads": [head_name(*h) for h in self.heads]}

    def plot(self):
        fig = plots.bar_chart(self.per_head, ideal=self.ideal, xlabel="head",
                              ylabel="attention on parent-matched positions",
                              title="causal induction score")
        fig.axes[0].set_xticks(range(len(self.heads)), [head_name(*h) for h in self.heads])
        return fig


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
                           n_samples: int = 2048, seed: int = 0, *,
                           heads: list[tuple[int, int]] | None = None) -> CausalInductionScore:
    """The paper's induction head, generalised to trees: where do ``layer``'s heads (or
    the (layer, head) pairs ``heads``; in a deep LM, e.g. ``rank_heads(model, task,
    by="causal_induction").top(1)``) look from the query?"""
    check_task(task)
    if task.kind != "tree":
        raise TypeError(f"causal_induction_score needs a tree task (InContextTree), got "
                        f"{type(task).__name__}")
    if heads is None:
        layer = check_layer(model, layer)
        heads = [(layer, head) for head in range(heads_per_layer(model)[layer])]
    else:
        heads = check_heads(model, heads)
    check_sizes(model, task)
    batch = task.sample(check_positive_int(n_samples, "n_samples"),
                        generator=seeded(seed))
    tokens = batch.tokens.to(model_device(model))
    from_query: dict[int, list[torch.Tensor]] = {}  # layer -> [B, H_l, L] over task keys

    def keep(layer: int, pattern: torch.Tensor) -> None:
        from_query.setdefault(layer, []).append(pattern[:, :, -1, task.position_offset:])

    for start in range(0, len(tokens), 512):
        reduce_patterns(model, tokens[start : start + 512], keep,
                        sorted({layer for layer, _ in heads}))
    pattern = torch.stack([torch.cat(from_query[layer])[:, head] for layer, head in heads],
                          dim=1)  # [B, heads read, L]
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
        per_head=per_head, ideal=1.0, coverage=float(has_match.float().mean()), heads=heads)


__all__ = ["CausalInductionScore", "InductionScores", "causal_induction_score",
           "induction_scores"]
