"""Reading any TL-style model: attention patterns per layer, output probabilities."""

from __future__ import annotations

import torch

from ..models.base import model_logits


def pattern_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


@torch.no_grad()
def all_patterns(model: torch.nn.Module, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Every layer's attention pattern, a list of [B, H_l, L, L] (query, key)."""
    names = {pattern_name(layer) for layer in range(model.cfg.n_layers)}
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    return [cache[pattern_name(layer)] for layer in range(model.cfg.n_layers)]


@torch.no_grad()
def model_probs(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Predicted distribution at the last position, [B, S]."""
    return torch.softmax(model_logits(model, tokens).float(), dim=-1)
