"""What the diagnostics share: reading any TL-style model (attention patterns per
layer, output probabilities), argument checks, JSON conversion and heatmaps."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..attention import mean_attention
from ..models.base import model_logits
from ..tasks import InContextTask


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


def to_json(value: Any) -> Any:
    """Tensors, tuples and floats to JSON-ready lists and numbers (NaN -> None)."""
    if isinstance(value, torch.Tensor):
        return to_json(value.tolist())
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def heatmap(fig, ax, matrix: torch.Tensor, title: str, xlabel: str, ylabel: str,
            colorbar_label: str, cmap: str = "viridis"):
    """Draw ``matrix`` [rows, cols] on ``ax`` with labelled axes, whole-number ticks
    (rows and columns are positions, heads, layers or tokens) and a colorbar; square
    matrices get square cells."""
    from matplotlib.ticker import MaxNLocator

    rows, cols = matrix.shape
    image = ax.imshow(matrix.detach().cpu().float().numpy(), cmap=cmap,
                      aspect="equal" if rows == cols else "auto", interpolation="nearest")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.colorbar(image, ax=ax, label=colorbar_label)
    return image


def new_figure(n_panels: int = 1):
    """A pyplot-free Figure (safe in any backend) with ``n_panels`` side-by-side axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2 * n_panels, 4.4), layout="constrained")
    axes = [fig.add_subplot(1, n_panels, k + 1) for k in range(n_panels)]
    return fig, axes


def fraction(numerator: int, denominator: int) -> float:
    """numerator / denominator, NaN when there is nothing to count."""
    return numerator / denominator if denominator else float("nan")


def check_positive_int(value: Any, name: str) -> int:
    """Return ``value`` if it is an int >= 1, else raise ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_task(task: Any) -> InContextTask:
    """Return ``task`` if it is an in-context task, else raise TypeError."""
    if not isinstance(task, InContextTask):
        raise TypeError(
            f"task must be an InContextTree or InContextDAG, got {type(task).__name__}"
        )
    return task


def layer_attention(model: Any, task: InContextTask, layer: int, n_samples: int,
                    seed: int) -> torch.Tensor:
    """Per-head attention of ``layer`` averaged over ``n_samples`` fresh task samples:
    [n_heads, L, L] (query, key), L = ``task.input_length``.

    Raises ValueError when the model's ``cfg`` (if it has one) cannot take the task's
    tokens or has no such layer."""
    check_task(task)
    check_positive_int(n_samples, "n_samples")
    cfg = getattr(model, "cfg", None)
    if cfg is not None:
        if not 0 <= layer < cfg.n_layers:
            raise ValueError(f"layer must be in 0..{cfg.n_layers - 1} for this model, got {layer}")
        if cfg.n_ctx < task.input_length:
            raise ValueError(
                f"model n_ctx={cfg.n_ctx} is shorter than the task's input length "
                f"{task.input_length}"
            )
        if cfg.d_vocab < task.vocab_size:
            raise ValueError(
                f"model d_vocab={cfg.d_vocab} is smaller than the task's vocab_size "
                f"{task.vocab_size}"
            )
    tokens = task.sample(n_samples, generator=torch.Generator().manual_seed(seed)).tokens
    device = next(iter(model.parameters())).device
    return mean_attention(model, tokens.to(device), layer=layer).cpu()
