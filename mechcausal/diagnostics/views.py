"""Notebook views of attention: circuitsvis's interactive ``attention_heads``, offline.

circuitsvis renders every view twice, with its bundled JavaScript inline and with an
``import`` from a CDN, and its notebook hook picks one by probing the network (a
one-second ``urlopen`` per display, and the CDN copy whenever a network is there). We
always hand the notebook the inline copy: the view works on an offline machine, in an
exported notebook and in a saved HTML file, and nothing is fetched. ``pip install
'mechcausal[viz]'``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..files import check_output_file, write_text_atomically
from .attention import check_layer, check_model, pattern_hook


@dataclass(frozen=True)
class AttentionView:
    """An interactive attention view: shows itself in a notebook; ``html`` is the
    self-contained fragment (the circuitsvis script inline), ``save`` a page."""

    html: str
    tokens: tuple[str, ...]
    layer: int

    def _repr_html_(self) -> str:
        return self.html

    def __str__(self) -> str:
        return self.html

    def save(self, path: str | Path) -> Path:
        """Write a standalone HTML page (atomically); returns its path."""
        path = check_output_file(path, "path")
        return write_text_atomically(path, f"<!DOCTYPE html>\n<html><head><meta charset="
                                           f"\"utf-8\"><title>layer {self.layer} attention"
                                           f"</title></head><body>\n{self.html}\n</body></html>\n")


def _token_ids(model: Any, tokens: Any) -> torch.Tensor:
    """``tokens`` as a [1, L] long tensor the model accepts (a string goes through the
    model's tokenizer)."""
    if isinstance(tokens, str):
        if getattr(model, "tokenizer", None) is None:
            raise TypeError("tokens is a string but the model has no tokenizer: pass token "
                            "ids ([L] or [1, L])")
        ids = model.to_tokens(tokens)
        if ids.shape[-1] > model.cfg.n_ctx:
            raise ValueError(f"tokens has {ids.shape[-1]} positions after tokenizing, more "
                             f"than the model's n_ctx = {model.cfg.n_ctx}")
        return ids
    try:
        ids = torch.as_tensor(tokens)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"tokens must be token ids ([L] or [1, L]) or a string, got "
                        f"{type(tokens).__name__}") from None
    if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.is_complex():
        raise TypeError(f"tokens must be integer token ids, got dtype {ids.dtype}")
    if ids.ndim == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.ndim != 1 or ids.numel() == 0:
        raise ValueError(f"tokens must be one sequence of token ids, [L] or [1, L], got shape "
                         f"{tuple(ids.shape)}")
    vocab, context = model.cfg.d_vocab, model.cfg.n_ctx
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise ValueError(f"tokens must be ids in 0..{vocab - 1} (the model's d_vocab), got "
                         f"values {int(ids.min())}..{int(ids.max())}")
    if ids.numel() > context:
        raise ValueError(f"tokens has {ids.numel()} positions, more than the model's n_ctx "
                         f"= {context}")
    return ids.long()[None]


def _labels(model: Any, ids: torch.Tensor, labels: Sequence[str] | None) -> list[str]:
    """One label per position: ``labels``, the tokenizer's strings, or ``<id>``."""
    length = ids.shape[1]
    if labels is not None:
        if isinstance(labels, str) or not isinstance(labels, Sequence) or len(labels) != length:
            raise ValueError(f"labels must be a list of {length} strings (one per position), "
                             f"got {labels!r}")
        return [str(label) for label in labels]
    if getattr(model, "tokenizer", None) is not None:
        return list(model.to_str_tokens(ids[0]))
    return [f"<{token}>" for token in ids[0].tolist()]


@torch.no_grad()
def show_attention(model: Any, tokens: Any, layer: int = 0,
                   labels: Sequence[str] | None = None) -> AttentionView:
    """circuitsvis's ``attention_heads`` view of one sequence's attention in ``layer``,
    every head, working offline.

    Args:
        model: ours, a HookedTransformer or a TransformerBridge.
        tokens: one sequence: token ids [L] or [1, L] (e.g. ``task.sample(1).tokens``), or
            a string for a model with a tokenizer.
        layer: 0-based (negative counts from the end).
        labels: one label per position (default: the tokenizer's strings, or ``<id>``
            for a model without one, e.g. ``<3>`` for symbol 3).

    Returns:
        An :class:`AttentionView` (displays in a notebook; ``.html``, ``.save(path)``).
    """
    if importlib.util.find_spec("circuitsvis") is None:
        raise ImportError("show_attention needs circuitsvis: pip install 'mechcausal[viz]'")
    from circuitsvis.attention import attention_heads

    check_model(model)
    layer = check_layer(model, layer)
    ids = _token_ids(model, tokens)
    shown = _labels(model, ids, labels)
    name = pattern_hook(layer)
    was_training = model.training
    model.eval()
    try:
        _, cache = model.run_with_cache(ids.to(next(model.parameters()).device),
                                        names_filter=lambda hook: hook == name)
    finally:
        model.train(was_training)
    pattern = cache[name][0].float().cpu()  # [H, L, L] (query, key)
    heads = [f"L{layer}H{head}" for head in range(pattern.shape[0])]
    # inside the page's <script>, "</" would end it early; "<\/" is the same JS string
    rendered = attention_heads(attention=pattern.numpy(),
                               tokens=[label.replace("</", "<\\/") for label in shown],
                               attention_head_names=heads)
    return AttentionView(rendered.local_src, tuple(shown), layer)


__all__ = ["AttentionView", "show_attention"]
