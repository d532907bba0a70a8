"""Data-averaged attention patterns read from ``blocks.{l}.attn.hook_pattern``.

Works for any TransformerLens-style model that exposes that hook: ours, exported
HookedTransformers and TransformerBridges alike."""

from __future__ import annotations

import torch

from .graphs import CausalGraph


def pattern_hook_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


@torch.no_grad()
def mean_attention(model, tokens: torch.Tensor, layer: int = 0, chunk: int = 4096) -> torch.Tensor:
    """Mean attention pattern of one layer over a batch: [n_heads, L, L] (query, key)."""
    name = pattern_hook_name(layer)
    total, count = None, 0
    for start in range(0, tokens.shape[0], chunk):
        part = tokens[start : start + chunk]
        _, cache = model.run_with_cache(part, names_filter=lambda n: n == name)
        pattern = cache[name].float().sum(0)
        total = pattern if total is None else total + pattern
        count += part.shape[0]
    return total / count


def parent_attention(mean_pattern: torch.Tensor, graph: CausalGraph) -> float:
    """Mean over edges (p -> i) of the best head's attention from i to p.

    Args:
        mean_pattern: [n_heads, L, L] data-averaged pattern; graph positions index it
            directly (graph nodes past L, such as a DAG's target node, are ignored).
    Returns: the Figure 9 statistic (1.0 = every child attends only to its parents).
    """
    length = mean_pattern.shape[-1]
    edges = [(p, i) for p, i in graph.edges if i < length]
    if not edges:
        return float("nan")
    parents = torch.tensor([p for p, _ in edges])
    children = torch.tensor([i for _, i in edges])
    best = mean_pattern[:, children, parents].max(0).values
    return best.mean().item()
