"""Per-head weight matrices of any TransformerLens-style model, in one layout, for the
scores that read weights rather than activations (copying, K-composition).

TransformerLens models (HookedTransformer, TransformerBridge) expose
``blocks[l].attn.W_Q / W_K / W_V / W_O``; grouped-query models hold fewer key/value heads,
which are repeated here so that head h reads the key/value head it shares. Our
disentangled transformer has no such factors: its exact TransformerLens export supplies
them (the first ``heads[l]`` heads of each layer are the native ones)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..models.disentangled import DisentangledTransformer
from ..models.standard import to_transformer_lens


@dataclass
class HeadWeights:
    """Weights of every layer (lists indexed by layer), detached, float32.

    Attributes:
        W_E: [d_vocab, d_model] token embedding.
        W_U: [d_model, d_vocab_out] unembedding.
        W_Q, W_K, W_V: per layer [n_heads, d_model, d_head] (key/value heads repeated
            for grouped-query attention).
        W_O: per layer [n_heads, d_head, d_model].
    """

    W_E: torch.Tensor
    W_U: torch.Tensor
    W_Q: list[torch.Tensor]
    W_K: list[torch.Tensor]
    W_V: list[torch.Tensor]
    W_O: list[torch.Tensor]


def _per_query_head(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[n_kv, ...] -> [n_heads, ...]: query head h uses key/value head h // group."""
    if weight.shape[0] == n_heads:
        return weight
    return weight.repeat_interleave(n_heads // weight.shape[0], dim=0)


@torch.no_grad()
def head_weights(model: Any) -> HeadWeights | None:
    """The model's :class:`HeadWeights`, or None when it has no per-head factors (the
    reduced model)."""
    if isinstance(model, DisentangledTransformer):
        model = to_transformer_lens(model)
    try:
        W_E, W_U = model.W_E, model.W_U
        attention = [block.attn for block in model.blocks]
        factors = {name: [getattr(attn, name) for attn in attention]
                   for name in ("W_Q", "W_K", "W_V", "W_O")}
    except (AttributeError, TypeError, NotImplementedError):
        return None

    def clean(weight: torch.Tensor) -> torch.Tensor:
        return weight.detach().float()

    n_heads = [q.shape[0] for q in factors["W_Q"]]
    return HeadWeights(
        W_E=clean(W_E), W_U=clean(W_U),
        W_Q=[clean(q) for q in factors["W_Q"]],
        W_K=[clean(_per_query_head(k, h)) for k, h in zip(factors["W_K"], n_heads)],
        W_V=[clean(_per_query_head(v, h)) for v, h in zip(factors["W_V"], n_heads)],
        W_O=[clean(o) for o in factors["W_O"]])
