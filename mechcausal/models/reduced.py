"""The paper's reduced model (Section 4), our reconstruction of its math.

Two parameters: ``A1`` [n_ctx, n_ctx] (position -> position) and ``A2`` [S, S]
(token -> token). With ``X`` [L, S] the one-hot tokens:

* layer 1 attends by position only and copies tokens: ``X~ = softmax(mask(A1)) X``;
* layer 2 attends from the query token ``s = x_q``: scores over keys ``k <= q`` are
  ``(X~ A2)[k, s]``, and the output is ``f = X^T softmax(scores)``, a probability vector
  used directly (its log is returned, mixed with ``smoothing / S`` uniform mass).

With ``A1 = adjacency * inf`` and ``A2 = beta * I``, ``beta -> inf``, ``f`` is the
in-context count estimator (an induction head). It is the disentangled transformer
with A restricted to the position block (layer 1) and to the (query token x layer-1
token) block (layer 2), read out as probabilities: :meth:`ReducedModel.to_disentangled`.

Hook points (B batch, L positions, S vocabulary):
``hook_embed`` [B, L, S]; ``blocks.{0,1}.attn.hook_attn_scores`` / ``hook_pattern``
[B, 1, L, L]; ``blocks.0.attn.hook_z`` [B, L, 1, S] (``X~``); ``blocks.1.attn.hook_z``
[B, L, 1, S] (``f`` at every query position).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import einops
import torch
from torch import nn

from ..ops import (as_float_dtype, check_layer_index, check_memory, check_number,
                   check_positive_int, dtype_name)
from ._tl import HookPoint
from .base import NativeModel, WeightPanel, probability_log_output, task_sizes
from .disentangled import BETA0_MAX, DisentangledTransformer, check_beta0  # noqa: F401




@dataclass
class ReducedConfig:
    """Sizes of a reduced model, with TransformerLens field names where they apply."""

    d_vocab: int
    n_ctx: int
    beta0: float = 0.0
    smoothing: float = 0.1
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    model_name: str = "reduced"
    n_layers: int = 2
    n_heads: int = 1
    attn_only: bool = True
    normalization_type: None = None

    def __post_init__(self) -> None:
        self.d_vocab = check_positive_int(self.d_vocab, "vocab_size")
        self.n_ctx = check_positive_int(self.n_ctx, "n_ctx")
        self.beta0 = check_beta0(self.beta0)
        self.smoothing = check_number(self.smoothing, "smoothing", low=0.0, high=1.0,
                                      high_open=True)
        self.dtype = as_float_dtype(self.dtype)

    def to_dict(self) -> dict[str, Any]:
        data = {k: asdict(self)[k] for k in ("d_vocab", "n_ctx", "beta0", "smoothing")}
        data["dtype"] = dtype_name(self.dtype)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReducedConfig:
        return cls(**data)


class _Attention(nn.Module):
    """Holds one layer's matrix ``A`` and its TL hook points."""

    def __init__(self, size: int):
        super().__init__()
        self.A = nn.Parameter(torch.zeros(size, size))
        self.hook_attn_scores = HookPoint()
        self.hook_pattern = HookPoint()
        self.hook_z = HookPoint()

    def attend(self, scores: torch.Tensor, mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """scores [B, L, L] (query, key), values [B, L, S] -> z [B, L, S] through the hooks."""
        scores = scores.masked_fill(~mask, float("-inf")).unsqueeze(1)
        pattern = self.hook_pattern(torch.softmax(self.hook_attn_scores(scores), dim=-1))
        z = torch.einsum("bhqk,bks->bqhs", pattern, values)
        return self.hook_z(z)[:, :, 0]


class _Block(nn.Module):
    def __init__(self, size: int):
        super().__init__()
        self.attn = _Attention(size)


class ReducedModel(NativeModel):
    """The reduced two-layer model; ``model(tokens)`` returns log f [B, S] at the last
    position (``all_positions=True``: [B, L, S]).

    Args:
        vocab_size: S.
        n_ctx: longest input (the task's input length).
        beta0: A2 starts at ``beta0 * I`` (Algorithm 1's fixed stage-1 value); A1 at 0.
        smoothing: uniform mass mixed into f before the log.
    """

    config_class = ReducedConfig

    def __init__(self, vocab_size: int, n_ctx: int, beta0: float = 0.0,
                 smoothing: float = 0.1, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.cfg = ReducedConfig(d_vocab=vocab_size, n_ctx=n_ctx, beta0=beta0,
                                 smoothing=smoothing, dtype=dtype)
        n_params = n_ctx**2 + vocab_size**2
        check_memory(self.cfg.dtype.itemsize * n_params + n_ctx**2, "cpu",
                     f"a ReducedModel with vocab_size={vocab_size}, n_ctx={n_ctx} "
                     f"({n_params:,} parameters)", "use a smaller vocab_size or n_ctx")
        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList([_Block(n_ctx), _Block(vocab_size)])
        self.register_buffer("mask", torch.ones(n_ctx, n_ctx, dtype=torch.bool).tril(),
                             persistent=False)
        self.init_two_stage(self.cfg.beta0)
        self.to(self.cfg.dtype)
        self.setup()

    @classmethod
    def for_task(cls, task: Any, beta0: float = 0.0, **kwargs: Any) -> ReducedModel:
        """Sized for a task: ``vocab_size = task.model_vocab_size`` (the task's symbols),
        ``n_ctx = task.input_length``."""
        vocab_size, n_ctx = task_sizes(task)
        return cls(vocab_size, n_ctx, beta0=beta0, **kwargs)

    @classmethod
    def from_config(cls, cfg: ReducedConfig) -> ReducedModel:
        return cls(cfg.d_vocab, cfg.n_ctx, cfg.beta0, cfg.smoothing, cfg.dtype)

    @property
    def A1(self) -> nn.Parameter:
        """Position -> position attention logits [n_ctx, n_ctx] (row = query)."""
        return self.blocks[0].attn.A

    def position_scores(self, layer: int = 0) -> torch.Tensor:
        """A1 as one head's position -> position logits [1, n_ctx, n_ctx]; only layer 0
        attends by position (layer 1 compares tokens)."""
        if check_layer_index(layer, 2) != 0:
            raise ValueError(f"layer must be 0: the reduced model's layer {layer} compares "
                             f"tokens, it has no position -> position block")
        return self.A1.unsqueeze(0)

    @property
    def A2(self) -> nn.Parameter:
        """Token -> token matrix [S, S]: score of key k for query token s is (X~ A2)[k, s]."""
        return self.blocks[1].attn.A

    def init_two_stage(self, beta0: float) -> None:
        """Algorithm 1's start: A1 = 0, A2 = beta0 * I (``beta0`` checked first: a
        refused value leaves the model as it was)."""
        beta0 = check_beta0(beta0)
        with torch.no_grad():
            self.A1.zero_()
            self.A2.copy_(beta0 * torch.eye(self.cfg.d_vocab))

    def stage_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Algorithm 1's parameter groups: stage 1 trains A1, stage 2 trains A2."""
        return {"stage1": [self.A1], "stage2": [self.A2]}

    def logits(self, tokens: torch.Tensor, all_positions: bool = False) -> torch.Tensor:
        """log f [B, S] at the last position (or [B, L, S]) of checked tokens [B, L]."""
        B, L = tokens.shape
        onehot = self.hook_embed(
            nn.functional.one_hot(tokens, self.cfg.d_vocab).to(self.A1.dtype)
        )  # [B, L, S]
        mask = self.mask[:L, :L]
        if all_positions or self.hooks_active():
            copied = self.blocks[0].attn.attend(self.A1[:L, :L].expand(B, L, L), mask, onehot)
            key_scores = copied @ self.A2  # [B, L(key), S(query token)]
            query_index = einops.repeat(tokens, "b q -> b k q", k=L)
            scores2 = torch.gather(key_scores, 2, query_index).transpose(1, 2)  # [B, q, k]
            probs = self.blocks[1].attn.attend(scores2, mask, onehot)
            if not all_positions:
                probs = probs[:, -1]
            return probability_log_output(probs, self.cfg.smoothing)
        # fast path: layer 1's pattern does not depend on the tokens, so it is computed
        # once, not per sequence; layer 2 runs for the last query only
        pattern1 = torch.softmax(self.A1[:L, :L].masked_fill(~mask, float("-inf")), dim=-1)
        copied = torch.einsum("qk,bks->bqs", pattern1, onehot)  # X~ [B, L, S]
        key_scores = copied @ self.A2[:, tokens[:, -1]].T.unsqueeze(-1)  # [B, L, 1]
        pattern2 = torch.softmax(key_scores[..., 0], dim=-1)  # [B, L]
        probs = torch.einsum("bk,bks->bs", pattern2, onehot)
        return probability_log_output(probs, self.cfg.smoothing)

    def to_disentangled(self) -> DisentangledTransformer:
        """The same function as a heads-(1, 1) disentangled transformer with the
        probability readout: layer-1 A = A1 on the position block, layer-2 A = A2^T on
        (query token block x layer-1 token block). Same patterns, same outputs."""
        S, n_ctx = self.cfg.d_vocab, self.cfg.n_ctx
        model = DisentangledTransformer(S, n_ctx, heads=(1, 1), readout="probability",
                                        smoothing=self.cfg.smoothing, dtype=self.cfg.dtype)
        width = model.cfg.widths[0]
        with torch.no_grad():
            model.blocks[0].attn.A[0, S:, S:] = self.A1
            model.blocks[1].attn.A[0, :S, width : width + S] = self.A2.T
        return model.to(self.A1.device)

    def weight_panels(self) -> list[WeightPanel]:
        """``A1`` [n_ctx, n_ctx] (position -> position) and ``A2`` [S, S] (token -> token)."""
        return [WeightPanel("A1 (layer 1)", self.A1.detach(), "key position", "query position",
                            "A1 entry"),
                WeightPanel("A2 (layer 2)", self.A2.detach(), "query token s",
                            "key's layer-1 token", "A2 entry")]

    def extra_repr(self) -> str:
        return f"vocab_size={self.cfg.d_vocab}, n_ctx={self.cfg.n_ctx}"
