"""Reading attention from any TransformerLens-style model: hook names, every layer's
pattern, data-averaged patterns and the parent-attention statistic; and, for our models,
the weights-only position attention of the official Figure 9 statistic.

Works for any model that exposes ``blocks.{l}.attn.hook_pattern`` through
``run_with_cache(tokens, names_filter=...)``: ours, exported HookedTransformers and
TransformerBridges alike."""

from __future__ import annotations

from typing import Any

import torch

from ..data.tasks import InContextTask, check_task
from ..graphs import CausalGraph
from ..models.base import check_sizes
from ..ops import as_int, check_layer_index, check_positive_int, seeded


def pattern_hook(layer: int) -> str:
    """``blocks.{layer}.attn.hook_pattern``: [batch, head, query, key]."""
    return f"blocks.{layer}.attn.hook_pattern"


def z_hook(layer: int) -> str:
    """``blocks.{layer}.attn.hook_z``: [batch, pos, head, d_head]."""
    return f"blocks.{layer}.attn.hook_z"


def graph_positions(pattern: torch.Tensor, task: InContextTask) -> torch.Tensor:
    """A pattern [..., L', L'] over model positions -> over the task's positions
    [..., L, L]: the rows and columns of a leading BOS token dropped (attention that lands
    on it is left out, so rows may then sum to less than 1)."""
    offset = task.position_offset
    return pattern[..., offset:, offset:] if offset else pattern


def check_layer(model: Any, layer: Any, name: str = "layer") -> int:
    """``layer`` as a 0-based index into ``model.cfg.n_layers`` layers (negative values
    count from the end, as in Python); ValueError naming the valid range."""
    return check_layer_index(layer, check_model(model).cfg.n_layers, name)


def check_model(model: Any) -> Any:
    """``model`` if it is a TransformerLens-style model (a ``cfg`` with ``n_layers``,
    ``d_vocab`` and ``n_ctx``: ours, HookedTransformers, TransformerBridges)."""
    cfg = getattr(model, "cfg", None)
    if not isinstance(model, torch.nn.Module) or not all(
            hasattr(cfg, key) for key in ("n_layers", "d_vocab", "n_ctx")):
        raise TypeError(f"model must be a TransformerLens-style model (ours, a "
                        f"HookedTransformer or a TransformerBridge), got {type(model).__name__}")
    return model


@torch.no_grad()
def all_patterns(model: Any, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Every layer's attention pattern, a list of [B, H_l, L, L] (query, key)."""
    names = [pattern_hook(layer) for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    return [cache[name] for name in names]


@torch.no_grad()
def mean_attention(model: Any, tokens: torch.Tensor, layer: int = 0,
                   chunk: int = 4096) -> torch.Tensor:
    """Mean attention pattern of one layer over a batch: [n_heads, L, L] (query, key)."""
    name = pattern_hook(layer)
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
    Returns: the Figure 9 statistic (1.0 = every child attends only to its parents);
        NaN for a graph without edges.
    """
    length = mean_pattern.shape[-1]
    edges = [(p, i) for p, i in graph.edges if i < length]
    if not edges:
        return float("nan")
    parents = torch.tensor([p for p, _ in edges])
    children = torch.tensor([i for _, i in edges])
    best = mean_pattern[:, children, parents].max(0).values
    return best.mean().item()


def has_position_scores(model: Any) -> bool:
    """Whether ``model`` has position -> position attention logits of its own (our
    disentangled transformer and reduced model; not learned-embedding TL models)."""
    return callable(getattr(model, "position_scores", None))


def position_attention(model: Any, layer: int = 0, head: int | None = 0) -> torch.Tensor:
    """The official Figure 9 statistic's matrix: a head's position -> position block of
    A (``A[layer][head][S:, S:]`` in the official notebook), causally masked and
    softmaxed over each row's keys. It reads weights only, no data: the attention a
    query at position i would pay to position j if tokens played no part. Compare
    :func:`layer_attention`, the attention actually paid, averaged over data.

    Args:
        model: a :class:`~mechcausal.DisentangledTransformer` or
            :class:`~mechcausal.ReducedModel` (an ensemble's ``member(k)``).
        layer: the attention layer (the official statistic: 0).
        head: that layer's head, or None for every head.

    Returns:
        [n_ctx, n_ctx] (query, key) rows summing to 1, or [H, n_ctx, n_ctx] for
        ``head=None``; on the CPU.
    """
    if not has_position_scores(model):
        raise TypeError(
            f"position_attention needs a model whose attention logits have a position -> "
            f"position block (DisentangledTransformer, ReducedModel, or an ensemble's "
            f"member(k)), got {type(model).__name__}; for other models use the "
            f"data-averaged attention (extract_graph, parent_attention)")
    with torch.no_grad():
        scores = model.position_scores(layer).detach().cpu()  # [H, n, n]
    if head is not None:
        head = as_int(head, "head")
        if not 0 <= head < scores.shape[0]:
            raise ValueError(f"head must be in 0..{scores.shape[0] - 1} for layer {layer}, "
                             f"got {head}")
        scores = scores[head]
    n = scores.shape[-1]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    return torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)


def layer_attention(model: Any, task: InContextTask, layer: int, n_samples: int,
                    seed: int) -> torch.Tensor:
    """Per-head attention of ``layer`` averaged over ``n_samples`` fresh task samples:
    [n_heads, L, L] (query, key) over the task's positions (L = ``task.base.input_length``:
    a BOS token's row and column are dropped).

    Raises ValueError when the model cannot take the task's tokens or has no such layer."""
    check_task(task)
    check_positive_int(n_samples, "n_samples")
    layer = check_layer(model, layer)
    check_sizes(model, task)
    tokens = task.sample(n_samples, generator=seeded(seed)).tokens
    device = next(iter(model.parameters())).device
    return graph_positions(mean_attention(model, tokens.to(device), layer=layer).cpu(), task)
