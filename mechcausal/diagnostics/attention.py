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
from ..models.standard import is_tl_model
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


def heads_per_layer(model: Any) -> list[int]:
    """The number of heads of each layer (ours may differ per layer: ``cfg.heads``)."""
    heads = getattr(model.cfg, "heads", None)
    if heads is not None:
        return [int(h) for h in heads]
    return [int(model.cfg.n_heads)] * int(model.cfg.n_layers)


def head_name(layer: int, head: int) -> str:
    """``L{layer}H{head}``, both counted from 0: the one way heads are named."""
    return f"L{layer}H{head}"


def model_device(model: Any) -> torch.device:
    return next(iter(model.parameters())).device


@torch.no_grad()
def reduce_patterns(model: Any, tokens: torch.Tensor, reduce: Any,
                    layers: list[int] | None = None) -> None:
    """Run ``tokens`` once (up to the last of ``layers``, default all) and hand each of
    those layers' patterns [B, H_l, L, L] to ``reduce(layer, pattern)`` as it is
    computed; nothing is cached, so memory holds one layer's pattern at a time."""
    layers = list(range(model.cfg.n_layers)) if layers is None else layers

    def hook_for(layer: int) -> Any:
        def hook(pattern: torch.Tensor, hook: Any) -> None:
            reduce(layer, pattern[:, : heads_per_layer(model)[layer]].float())
        return hook

    model.run_with_hooks(tokens, fwd_hooks=[(pattern_hook(layer), hook_for(layer))
                                            for layer in layers],
                         **stop_after(model, max(layers)))


def stop_after(model: Any, layer: int) -> dict[str, Any]:
    """Keyword arguments that end a TransformerLens model's forward pass after ``layer``
    (its ``stop_at_layer``): a statistic of layer 3 of a 12-layer LM need not run the
    other eight layers, nor the unembedding (the largest matrix of a small LM). Empty for
    our models (two small layers and a small readout)."""
    return {"stop_at_layer": layer + 1} if is_tl_model(model) else {}


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
        _, cache = model.run_with_cache(part, names_filter=lambda n: n == name,
                                        **stop_after(model, layer))
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


def check_heads(model: Any, heads: Any, name: str = "heads") -> list[tuple[int, int]]:
    """``heads`` as a non-empty list of (layer, head) pairs the model has (layers may
    be negative, counted from the end); ValueError naming the head that does not exist."""
    if isinstance(heads, (str, bytes)) or not hasattr(heads, "__iter__"):
        raise TypeError(f"{name} must be a list of (layer, head) pairs such as [(1, 0)], "
                        f"got {heads!r}")
    counts = heads_per_layer(check_model(model))
    checked = []
    for item in heads:
        if isinstance(item, (str, bytes)) or not hasattr(item, "__len__") or len(item) != 2:
            raise TypeError(f"{name} must be a list of (layer, head) pairs such as [(1, 0)], "
                            f"got {heads!r}")
        layer = check_layer(model, item[0], f"{name} layer")
        head = as_int(item[1], f"{name} head")
        if not 0 <= head < counts[layer]:
            raise ValueError(f"{name}: layer {layer} has heads 0..{counts[layer] - 1}, "
                             f"got head {head} ({head_name(layer, head)})")
        checked.append((layer, head))
    if not checked:
        raise ValueError(f"{name} must name at least one (layer, head), got {heads!r}")
    return checked


def heads_attention(model: Any, task: InContextTask, heads: list[tuple[int, int]],
                    n_samples: int, seed: int) -> torch.Tensor:
    """Attention of the given (layer, head) pairs averaged over ``n_samples`` fresh task
    samples: [len(heads), L, L] (query, key) over the task's positions."""
    by_layer = {layer: layer_attention(model, task, layer, n_samples, seed)
                for layer in sorted({layer for layer, _ in heads})}
    return torch.stack([by_layer[layer][head] for layer, head in heads])
