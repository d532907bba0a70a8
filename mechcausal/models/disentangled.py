"""The paper's disentangled transformer (the official code's CatFormer) with TL hooks.

The residual stream is a concatenation: ``h0 = [onehot(x_i) ; onehot(i)]`` of width
``S + n_ctx``; layer ``l`` with ``H_l`` heads outputs ``[h ; attn_1(h) ; ... ; attn_H(h)]``
where ``attn(h; A) = softmax(mask(h A h^T)) h`` (causal mask including the diagonal,
no 1/sqrt(d) scaling, the whole stream as values). The readout at the last position is
``h_L W``.

Hook points (TransformerLens names; shapes with B batch, L positions, d_l the stream
width entering layer l, H_l that layer's heads):

* ``hook_embed`` [B, L, S] token block, ``hook_pos_embed`` [B, L, n_ctx] position block
* ``blocks.{l}.hook_resid_pre`` [B, L, d_l]
* ``blocks.{l}.attn.hook_attn_scores`` [B, H_l, L, L] (masked entries -inf)
* ``blocks.{l}.attn.hook_pattern`` [B, H_l, L, L]
* ``blocks.{l}.attn.hook_z`` [B, L, H_l, d_l]
* ``blocks.{l}.hook_attn_out`` [B, L, H_l * d_l] (the block this layer appends)
* ``blocks.{l}.hook_resid_post`` [B, L, (1 + H_l) d_l]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import einops
import torch
from torch import nn

from ..ops import (as_float_dtype, as_int, check_choice, check_layer_index, check_memory,
                   check_number, check_positive_int, dtype_name)
from ._tl import HookPoint
from .base import NativeModel, WeightPanel, probability_log_output, task_sizes
from .fastpath import two_layer_last_stream

InitKind = Literal["zeros", "normal"]
Readout = Literal["softmax", "probability"]


# beyond this the second layer's scores (beta0 times numbers in [0, 1]) leave float32's
# range inside a softmax: inf - inf is NaN
BETA0_MAX = 1e4


def check_beta0(beta0: Any) -> float:
    """``beta0`` as a float in [-BETA0_MAX, BETA0_MAX]; ValueError / TypeError naming it."""
    return check_number(beta0, "beta0", low=-BETA0_MAX, high=BETA0_MAX)

@dataclass
class DisentangledConfig:
    """Sizes of a disentangled transformer, with TransformerLens field names.

    ``d_model`` is the final stream width and ``n_heads`` the most heads of any layer,
    so TL utilities that read a ``cfg`` see consistent numbers."""

    d_vocab: int
    n_ctx: int
    heads: tuple[int, ...] = (1, 1)
    init: InitKind = "zeros"
    init_scale: float = 1e-4
    readout: Readout = "softmax"
    smoothing: float = 0.1
    seed: int | None = None
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    model_name: str = "disentangled"
    attn_only: bool = True
    normalization_type: None = None
    positional_embedding_type: str = "standard"
    use_attn_scale: bool = False
    n_key_value_heads: None = None
    act_fn: None = None
    d_mlp: None = None
    widths: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.d_vocab = check_positive_int(self.d_vocab, "vocab_size")
        self.n_ctx = check_positive_int(self.n_ctx, "n_ctx")
        if (isinstance(self.heads, (str, bytes)) or not isinstance(self.heads, Sequence)
                or not self.heads or any(isinstance(h, bool) or not isinstance(h, int) or h < 1
                                         for h in self.heads)):
            raise ValueError(f"heads must be a non-empty sequence of positive ints (heads per "
                             f"layer), e.g. (1, 1) or (2, 1); got {self.heads!r}")
        self.heads = tuple(int(h) for h in self.heads)
        check_choice(self.init, "init", ("zeros", "normal"))
        check_choice(self.readout, "readout", ("softmax", "probability"))
        self.smoothing = check_number(self.smoothing, "smoothing", low=0.0, high=1.0,
                                      high_open=True)
        self.init_scale = check_number(self.init_scale, "init_scale", low=0.0)
        if self.seed is not None:
            self.seed = as_int(self.seed, "seed")
        self.dtype = as_float_dtype(self.dtype)
        heads = self.heads
        widths = [self.d_vocab + self.n_ctx]
        for h in heads:
            widths.append(widths[-1] * (1 + h))
        self.widths = tuple(widths)

    @property
    def n_layers(self) -> int:
        return len(self.heads)

    @property
    def n_heads(self) -> int:
        return max(self.heads)

    @property
    def d_model(self) -> int:
        return self.widths[-1]

    @property
    def d_head(self) -> int:
        """Widest layer input (each head's value is that layer's whole stream)."""
        return self.widths[-2]

    @property
    def d_vocab_out(self) -> int:
        return self.d_vocab

    def to_dict(self) -> dict[str, Any]:
        """The constructor arguments, JSON-ready."""
        data = asdict(self)
        data.pop("widths")
        data["heads"] = list(self.heads)
        data["dtype"] = dtype_name(self.dtype)
        for key in ("attn_only", "normalization_type", "positional_embedding_type",
                    "use_attn_scale", "n_key_value_heads", "act_fn", "d_mlp"):
            data.pop(key)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DisentangledConfig:
        return cls(**data)


class DisentangledAttention(nn.Module):
    """One layer's heads: ``softmax(mask(h A_h h^T)) h`` per head.

    Parameters: ``A`` [H, d, d] (row index = query stream, column = key stream)."""

    def __init__(self, n_heads: int, width: int, n_ctx: int):
        super().__init__()
        self.A = nn.Parameter(torch.zeros(n_heads, width, width))
        self.register_buffer(
            "mask", torch.ones(n_ctx, n_ctx, dtype=torch.bool).tril(), persistent=False
        )
        self.hook_attn_scores = HookPoint()
        self.hook_pattern = HookPoint()
        self.hook_z = HookPoint()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h [B, L, d] -> z [B, L, H, d]."""
        L = h.shape[1]
        query = torch.einsum("bqd,hde->bhqe", h, self.A)
        scores = torch.einsum("bhqe,bke->bhqk", query, h)
        scores = scores.masked_fill(~self.mask[:L, :L], float("-inf"))
        scores = self.hook_attn_scores(scores)
        pattern = self.hook_pattern(torch.softmax(scores, dim=-1))
        return self.hook_z(torch.einsum("bhqk,bkd->bqhd", pattern, h))

    def last_query(self, h: torch.Tensor) -> torch.Tensor:
        """Heads' outputs at the last position only (no hooks): h [B, L, d] -> [B, H, d].

        Equal to ``forward(h)[:, -1]``: the last row of a causal pattern sees every key."""
        query = torch.einsum("bd,hde->bhe", h[:, -1], self.A)
        # broadcast-and-sum rather than batched [1, d] x [d, L] matmuls (slow on CPU)
        pattern = torch.softmax((query.unsqueeze(2) * h.unsqueeze(1)).sum(-1), dim=-1)
        return (pattern.unsqueeze(-1) * h.unsqueeze(1)).sum(2)


class DisentangledBlock(nn.Module):
    """Appends its heads' outputs to the stream: [B, L, d] -> [B, L, (1 + H) d]."""

    def __init__(self, n_heads: int, width: int, n_ctx: int):
        super().__init__()
        self.attn = DisentangledAttention(n_heads, width, n_ctx)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.hook_resid_pre(h)
        z = self.attn(h)
        appended = self.hook_attn_out(einops.rearrange(z, "b l h d -> b l (h d)"))
        return self.hook_resid_post(torch.cat([h, appended], dim=-1))


class DisentangledTransformer(NativeModel):
    """Attention-only disentangled transformer of the paper, a TL ``HookedRootModule``.

    Args:
        vocab_size: S, tokens are 0..S-1.
        n_ctx: longest input (the task's input length; sets the position block width).
        heads: heads per layer, e.g. ``(1, 1)``, ``(2, 1)``, ``(3, 2, 1)``.
        init: ``"zeros"`` (official single-parent runs: every A and W start at 0) or
            ``"normal"`` (official multi-parent runs: ``init_scale * N(0, 1)``).
        init_scale: standard deviation for ``init="normal"``.
        seed: seeds the ``"normal"`` init.
        readout: ``"softmax"`` (official CatFormer): logits = h_L W at the output
            positions; ``"probability"`` (the reduced model's readout, no W): the token
            block of the last layer's first head, an attention-weighted average of
            one-hot tokens, read as probabilities; the model returns their log.
        smoothing: for ``"probability"``, the uniform mass mixed in so the log stays
            finite (see :func:`~mechcausal.models.base.probability_log_output`).

    ``model(tokens)`` returns logits [B, S] at the last position; ``all_positions=True``
    returns [B, L, S].
    """

    config_class = DisentangledConfig

    def __init__(
        self,
        vocab_size: int,
        n_ctx: int,
        heads: Sequence[int] = (1, 1),
        init: InitKind = "zeros",
        init_scale: float = 1e-4,
        seed: int | None = None,
        readout: Readout = "softmax",
        dtype: torch.dtype = torch.float32,
        smoothing: float = 0.1,
    ):
        super().__init__()
        self.cfg = DisentangledConfig(
            d_vocab=vocab_size, n_ctx=n_ctx, heads=heads, init=init,
            init_scale=init_scale, seed=seed, readout=readout, dtype=dtype,
            smoothing=smoothing,
        )
        widths = self.cfg.widths
        n_params = sum(h * w * w for h, w in zip(self.cfg.heads, widths)) + widths[-1] * vocab_size
        check_memory(self.cfg.dtype.itemsize * (n_params + n_ctx**2) + len(widths) * n_ctx**2,
                     "cpu", f"a DisentangledTransformer with vocab_size={vocab_size}, "
                     f"n_ctx={n_ctx}, heads={self.cfg.heads} ({n_params:,} parameters)",
                     "use a smaller vocab_size, n_ctx or fewer heads")
        self.hook_embed = HookPoint()
        self.hook_pos_embed = HookPoint()
        self.blocks = nn.ModuleList(
            DisentangledBlock(h, widths[layer], n_ctx) for layer, h in enumerate(self.cfg.heads)
        )
        self.W_U = (
            nn.Parameter(torch.zeros(widths[-1], vocab_size)) if readout == "softmax" else None
        )
        self.register_buffer("position_onehot", torch.eye(n_ctx), persistent=False)
        self.reset_parameters()
        self.to(self.cfg.dtype)
        self.setup()

    @classmethod
    def from_config(cls, cfg: DisentangledConfig) -> DisentangledTransformer:
        return cls(cfg.d_vocab, cfg.n_ctx, cfg.heads, cfg.init, cfg.init_scale, cfg.seed,
                   cfg.readout, cfg.dtype, cfg.smoothing)

    @classmethod
    def for_task(
        cls,
        task: Any,
        heads: Sequence[int] = (1, 1),
        init: InitKind = "zeros",
        init_scale: float = 1e-4,
        seed: int | None = None,
        **kwargs: Any,
    ) -> DisentangledTransformer:
        """Sized for a task: ``vocab_size = task.model_vocab_size`` (the task's symbols),
        ``n_ctx = task.input_length``."""
        vocab_size, n_ctx = task_sizes(task)
        return cls(vocab_size, n_ctx, heads, init, init_scale, seed, **kwargs)

    def reset_parameters(self) -> None:
        """Re-initialise every parameter according to ``cfg.init``."""
        gen = None
        if self.cfg.seed is not None:
            gen = torch.Generator().manual_seed(self.cfg.seed)
        with torch.no_grad():
            for param in self.parameters():
                if self.cfg.init == "zeros":
                    param.zero_()
                else:
                    noise = torch.randn(param.shape, generator=gen, dtype=torch.float64)
                    param.copy_(noise * self.cfg.init_scale)

    # ------------------------------------------------------------------ forward
    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, L] -> h0 [B, L, S + n_ctx] (through hook_embed / hook_pos_embed)."""
        B, L = tokens.shape
        dtype = self.position_onehot.dtype
        token_block = self.hook_embed(nn.functional.one_hot(tokens, self.cfg.d_vocab).to(dtype))
        position_block = self.hook_pos_embed(self.position_onehot[:L].expand(B, L, self.cfg.n_ctx))
        return torch.cat([token_block, position_block], dim=-1)

    def logits(self, tokens: torch.Tensor, all_positions: bool = False,
               exp_table: bool | None = None) -> torch.Tensor:
        """Logits [B, S] at the last position, or [B, L, S] with ``all_positions``, of
        checked tokens [B, L] (``forward`` checks them first).

        Without hooks attached (the fast path), the last layer is evaluated at the last
        position only and, for two layers, the stream is never built densely
        (:mod:`~mechcausal.models.fastpath`): the same logits, several times faster to
        train; ``exp_table`` is its switch (None: decided from the weights, a host
        sync; pass a bool under ``torch.func.vmap``). With hooks, every layer runs
        densely at every position, so caches hold full activations."""
        dense = all_positions or self.hooks_active()
        if self.cfg.n_layers == 2 and not dense:
            return self.readout(two_layer_last_stream(self, tokens, exp_table))
        h = self.embed(tokens)
        if dense:
            for block in self.blocks:
                h = block(h)
            return self.readout(h if all_positions else h[:, -1])
        for block in self.blocks[:-1]:
            h = block(h)
        appended = self.blocks[-1].attn.last_query(h)
        return self.readout(
            torch.cat([h[:, -1], einops.rearrange(appended, "b h d -> b (h d)")], dim=-1)
        )

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        """Final stream [..., d_L] -> logits (softmax readout) or log-probabilities
        (probability readout) [..., S]."""
        if self.W_U is not None:
            if h.ndim == 2:  # [B, d] x [d, S], S ~ 10: the transposed product, with
                # W^T contiguous so that W's gradient is not an N = S product either,
                # runs forward and backward ~2x faster on CPU (MKL's small-N kernels)
                return (self.W_U.T.contiguous() @ h.T).T
            return h @ self.W_U
        start = self.cfg.widths[-2]  # the last layer's first head block, token part first
        return probability_log_output(h[..., start : start + self.cfg.d_vocab], self.cfg.smoothing)

    # ------------------------------------------------------------------ inspection
    def A(self, layer: int, head: int = 0) -> torch.Tensor:
        """That head's attention matrix [d_l, d_l] in the paper's block order: token
        block, position block, then earlier heads' outputs in order."""
        layer, head = as_int(layer, "layer"), as_int(head, "head")
        if not 0 <= layer < self.cfg.n_layers:
            raise ValueError(f"layer must be in 0..{self.cfg.n_layers - 1}, got {layer}")
        if not 0 <= head < self.cfg.heads[layer]:
            raise ValueError(
                f"head must be in 0..{self.cfg.heads[layer] - 1} for layer {layer}, got {head}"
            )
        return self.blocks[layer].attn.A[head]

    def position_scores(self, layer: int = 0) -> torch.Tensor:
        """Every head's position -> position block of ``A`` at ``layer``: [H, n_ctx, n_ctx]
        (row = query position, column = key position): the attention logits the heads
        would give with the token and earlier-head blocks ignored. At layer 0 this is the
        official code's ``A[0][h][S:, S:]``."""
        position = self.block_slices(check_layer_index(layer, self.cfg.n_layers))["position"]
        return self.blocks[layer].attn.A[:, position, position]

    @property
    def W(self) -> torch.Tensor | None:
        """The paper's readout matrix [d_L, S] (``W_U``); None for the probability readout."""
        return self.W_U

    def stage_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Algorithm 1's parameter groups: ``"stage1"`` the first layer's A,
        ``"stage2"`` every later layer's A and the readout W."""
        later = [block.attn.A for block in self.blocks[1:]]
        return {"stage1": [self.blocks[0].attn.A],
                "stage2": later + ([self.W_U] if self.W_U is not None else [])}

    def init_two_stage(self, beta0: float) -> None:
        """Algorithm 1's start: every parameter 0, except the second layer's
        (query token block x first-layer token block) = beta0 * I for each head and,
        with the softmax readout, W = I from the last layer's first-head token block
        (with W = 0 the output would not depend on the first layer, nor its gradient)."""
        beta0 = check_beta0(beta0)  # before any weight changes
        if self.cfg.n_layers < 2:
            raise ValueError(f"Algorithm 1 needs >= 2 layers, this model has {self.cfg.n_layers}")
        S, width = self.cfg.d_vocab, self.cfg.widths[0]
        with torch.no_grad():
            for param in self.parameters():
                param.zero_()
            for head in range(self.cfg.heads[0]):
                start = width * (1 + head)
                self.blocks[1].attn.A[:, :S, start : start + S] = beta0 * torch.eye(S)
            if self.W_U is not None:
                last = self.cfg.widths[-2]
                self.W_U[last : last + S] = torch.eye(S)

    def block_slices(self, layer: int) -> dict[str, slice]:
        """Named column ranges of the stream entering ``layer``: ``token``, ``position``
        and ``L{l}H{h}`` for every earlier head's output (``layer`` in 0..n_layers;
        ``n_layers`` is the final stream the readout reads)."""
        layer = as_int(layer, "layer")
        if not 0 <= layer <= self.cfg.n_layers:
            raise ValueError(f"layer must be in 0..{self.cfg.n_layers} (n_layers: the final "
                             f"stream), got {layer}")
        S, n_ctx, widths = self.cfg.d_vocab, self.cfg.n_ctx, self.cfg.widths
        names = {"token": slice(0, S), "position": slice(S, S + n_ctx)}
        for earlier in range(layer):
            width = widths[earlier]
            for h in range(self.cfg.heads[earlier]):
                start = width * (1 + h)
                names[f"L{earlier}H{h}"] = slice(start, start + width)
        return names

    def stream_blocks(self, layer: int) -> list[tuple[str, int, int]]:
        """Named column ranges ``(name, start, stop)`` of the stream entering ``layer``
        (``layer = n_layers``: the final stream), finer than :meth:`block_slices`: a
        head's output block is split into the blocks of the stream it copies, e.g.
        ``L0H0.tok`` and ``L0H0.pos``."""
        blocks: list[tuple[str, int, int]] = []
        for name, span in self.block_slices(layer).items():
            if name in ("token", "position"):
                blocks.append((name[:3], span.start, span.stop))
                continue
            source = int(name[1:name.index("H")])  # L{l}H{h}: a layer-l head's output
            blocks += [(f"{name}.{sub}", span.start + start, span.start + stop)
                       for sub, start, stop in self.stream_blocks(source)]
        return blocks

    def weight_panels(self) -> list[WeightPanel]:
        """One panel per (layer, head) with ``A(layer, head)`` [d_l, d_l] over the
        stream's blocks (rows: query stream, columns: key stream), then the readout
        ``W^T`` [S, d_L] across the final stream's blocks (none for the probability
        readout)."""
        panels = []
        for layer, n_heads in enumerate(self.cfg.heads):
            blocks = self.stream_blocks(layer)
            for head in range(n_heads):
                # block names are the model's: L0H0 = layer-1 head 0's output
                xlabel = ("key stream block (L0H0: output of layer-1 head 0)" if layer
                          else "key stream block")
                panels.append(WeightPanel(
                    f"layer {layer + 1}, head {head}: A", self.A(layer, head).detach(),
                    xlabel, "query stream block", "A entry", blocks, blocks))
        if self.W_U is not None:
            panels.append(WeightPanel(
                "readout W (transposed)", self.W_U.detach().T, "final stream block",
                "output token", "W entry", [], self.stream_blocks(self.cfg.n_layers), wide=True))
        return panels

    def extra_repr(self) -> str:
        return (f"vocab_size={self.cfg.d_vocab}, n_ctx={self.cfg.n_ctx}, "
                f"heads={self.cfg.heads}, widths={self.cfg.widths}")
