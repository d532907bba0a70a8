"""What every native mechcausal model shares: token checks, hook detection, caches."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ._tl import ActivationCache, HookedRootModule


@dataclass
class WeightPanel:
    """One weight matrix of a native model, as :func:`mechcausal.plots.weight_blocks`
    draws it.

    Attributes:
        title: e.g. ``"layer 1, head 0: A"``.
        matrix: [rows, columns].
        xlabel, ylabel: axis names; label: the colour bar's.
        row_blocks, column_blocks: named index ranges ``(name, start, stop)`` drawn as
            block boundaries and tick labels (empty: plain numbered axes).
        wide: drawn in its own row below the others, across the figure's width.
    """

    title: str
    matrix: torch.Tensor
    xlabel: str
    ylabel: str
    label: str
    row_blocks: list[tuple[str, int, int]] = field(default_factory=list)
    column_blocks: list[tuple[str, int, int]] = field(default_factory=list)
    wide: bool = False


class NativeModel(HookedRootModule):
    """A TL ``HookedRootModule`` over one-hot tokens with a ``cfg`` (``d_vocab``, ``n_ctx``).

    ``forward(tokens)`` checks the tokens, then calls :meth:`logits`; ``logits`` does no
    data-dependent check, so it runs under ``torch.func.vmap`` (ensembles). Subclasses
    implement ``logits`` and ``weight_panels`` and call ``self.setup()`` at the end of
    ``__init__`` (TL requirement)."""

    cfg: Any

    def forward(self, tokens: torch.Tensor, all_positions: bool = False) -> torch.Tensor:
        """Logits [B, S] at the last position, or [B, L, S] with ``all_positions``."""
        return self.logits(self.check_tokens(tokens), all_positions)

    def logits(self, tokens: torch.Tensor, all_positions: bool = False) -> torch.Tensor:
        """:meth:`forward` on tokens already checked (long [B, L])."""
        raise NotImplementedError

    def weight_panels(self) -> list[WeightPanel]:
        """The model's weight matrices, split into named blocks, for plotting."""
        raise NotImplementedError

    def check_tokens(self, tokens: Any) -> torch.Tensor:
        """Validate before any computation: [B, L] ints in [0, S), 1 <= L <= n_ctx.

        A 1-D tensor is taken as one sequence. Returns a long tensor [B, L]."""
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"tokens must be a torch.Tensor, got {type(tokens).__name__}")
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise TypeError(f"tokens must be an integer tensor, got dtype {tokens.dtype}")
        if tokens.ndim == 1:
            tokens = tokens.unsqueeze(0)
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape [batch, pos], got {tuple(tokens.shape)}")
        if not 1 <= tokens.shape[1] <= self.cfg.n_ctx:
            raise ValueError(
                f"tokens have {tokens.shape[1]} positions; this model accepts 1..{self.cfg.n_ctx} "
                f"(n_ctx={self.cfg.n_ctx})"
            )
        if tokens.numel() and self._outside_vocabulary(tokens):
            bad = tokens[(tokens < 0) | (tokens >= self.cfg.d_vocab)][0].item()
            raise ValueError(
                f"tokens contain {bad}, outside the vocabulary [0, {self.cfg.d_vocab})"
            )
        return tokens.long()

    def _outside_vocabulary(self, tokens: torch.Tensor) -> bool:
        lowest, highest = torch.aminmax(tokens)  # one pass and one host sync
        return bool((lowest < 0) | (highest >= self.cfg.d_vocab))

    def hooks_active(self) -> bool:
        """True when any hook point has a hook attached (run_with_hooks, run_with_cache)."""
        return any(
            hp._forward_hooks or hp._backward_hooks or hp._forward_pre_hooks
            for hp in self.hook_dict.values()
        )

    def run_with_cache(self, *args: Any, remove_batch_dim: bool = False, **kwargs: Any):
        """Like ``HookedTransformer.run_with_cache``: returns ``(output, ActivationCache)``."""
        out, cache = super().run_with_cache(*args, remove_batch_dim=remove_batch_dim, **kwargs)
        if isinstance(cache, ActivationCache):
            return out, cache
        return out, ActivationCache(cache, self, has_batch_dim=not remove_batch_dim)


def probability_log_output(probs: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Log of a probability readout mixed with a little uniform mass: [..., S] -> [..., S].

    The reduced model reads attention-weighted one-hot tokens as probabilities, so a
    token absent from the context gets probability 0 and the cross-entropy against a
    Dirichlet target (positive everywhere) would be infinite. Mixing in
    ``smoothing / S`` keeps it finite and differentiable (our reconstruction's choice;
    ``smoothing=0`` gives the bare readout)."""
    size = probs.shape[-1]
    return torch.log((1.0 - smoothing) * probs + smoothing / size)


def model_logits(model: torch.nn.Module, tokens: torch.Tensor,
                 all_positions: bool = False) -> torch.Tensor:
    """Logits [B, S] at the last position, or [B, L, S]: native models are asked for
    what is needed, TL models (which return every position) are sliced."""
    if isinstance(model, NativeModel):
        return model(tokens, all_positions=all_positions)
    logits = model(tokens)
    if logits.ndim == tokens.ndim:  # [B, S]: a module that answers at the last position
        if all_positions:
            raise ValueError(f"{type(model).__name__} returns logits {list(logits.shape)} at "
                             f"the last position only; every position's ([B, L, S]) is "
                             f"needed here (loss='next_token')")
        return logits
    return logits if all_positions else logits[:, -1]


def task_sizes(task: Any) -> tuple[int, int]:
    """``(task.model_vocab_size, task.input_length)``: what a model for ``task`` must take;
    TypeError for anything that is not an in-context task."""
    sizes = (getattr(task, "model_vocab_size", None), getattr(task, "input_length", None))
    if not all(isinstance(size, int) for size in sizes):
        raise TypeError(f"task must be an in-context task (mc.make_task, mc.InContextTree, "
                        f"mc.InContextDAG), got {type(task).__name__}")
    return sizes


def check_sizes(model: Any, task: Any, exact_vocabulary: bool = False) -> None:
    """Raise when ``model``'s ``cfg`` cannot take ``task``'s inputs: a context
    ``n_ctx`` shorter than ``task.input_length``, or a vocabulary ``d_vocab`` smaller than
    ``task.model_vocab_size`` (``exact_vocabulary``: other than it, as training on the
    task's own symbols needs), or, for a task written in an LM's vocabulary, a symbol's
    id outside the vocabulary or one of the tokenizer's special tokens (named). Reads only
    ints of the task, so models stay independent of tasks."""
    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(cfg, "d_vocab") or not hasattr(cfg, "n_ctx"):
        raise TypeError(f"model must have a TransformerLens-style cfg (d_vocab, n_ctx), "
                        f"got {type(model).__name__}")
    ids = getattr(task, "answer_ids", None)
    ids = [] if ids is None else ids.tolist()
    outside = [int(i) for i in ids if int(i) >= cfg.d_vocab]
    if outside:
        raise ValueError(f"the task's token id {outside[0]} is outside the model's vocabulary "
                         f"(d_vocab={cfg.d_vocab})")
    special = set(getattr(getattr(model, "tokenizer", None), "all_special_ids", None) or ())
    reserved = [int(i) for i in ids if int(i) in special]
    if reserved:
        raise ValueError(f"the task's token id {reserved[0]} is a special token of the model's "
                         f"tokenizer (special ids {sorted(special)}); write each symbol as "
                         f"an ordinary token")
    needed = task.model_vocab_size
    if exact_vocabulary and cfg.d_vocab != needed:
        raise ValueError(f"model vocabulary d_vocab={cfg.d_vocab} does not match task "
                         f"vocab_size={needed}; build the model with .for_task(task)")
    if cfg.d_vocab < needed:
        raise ValueError(f"model vocabulary d_vocab={cfg.d_vocab} is smaller than the "
                         f"task's {needed} tokens; build the model with .for_task(task)")
    if cfg.n_ctx < task.input_length:
        raise ValueError(f"model context n_ctx={cfg.n_ctx} is shorter than the task's input "
                         f"length {task.input_length}; build the model with .for_task(task)")


@torch.no_grad()
def model_probs(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Predicted distribution at the last position, [B, S] (float32)."""
    return torch.softmax(model_logits(model, tokens).float(), dim=-1)
