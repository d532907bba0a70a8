"""The training fast path of a two-layer disentangled transformer.

The stream entering layer 2 is a concatenation of blocks whose features are either
one-hot (token, position) or attention-weighted one-hots (each first-layer head's
token bins [B, L, S] and its pattern [B, L, L]). Layer 2 is needed at the last
position only. So every layer-2 score is a sum of gathers and short dot products over
those blocks, and its output is their attention-weighted sums: no tensor of the full
stream width is built at every position, which is what makes the dense forward slow
(memory traffic, not arithmetic). Used only when no hooks are attached; tested equal
to the dense forward in values and gradients.
"""

from __future__ import annotations

import einops
import torch
from torch import nn


def _weighted_sum(weights: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """weights [..., L], features [..., L, w] -> [..., w], as a broadcast product and a
    sum (faster than tiny batched matmuls on CPU)."""
    return (weights.unsqueeze(-1) * features).sum(-2)


def first_layer(A: torch.Tensor, tokens: torch.Tensor, vocab_size: int,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First-layer patterns and token bins, reading ``A`` [H, d0, d0] by index.

    With ``h_i = [e_{x_i}; e_i]`` the score ``h_q A h_k^T`` is
    ``A[x_q, x_k] + A[x_q, S+k] + A[S+q, x_k] + A[S+q, S+k]``.

    Returns:
        pattern: [H, B, L, L]; token_bins: [H, B, L, S] (attention summed per token).
    """
    B, L = tokens.shape
    n_heads = A.shape[0]
    positions = torch.arange(L, device=tokens.device)
    query = A[:, tokens] + A[:, vocab_size + positions].unsqueeze(1)  # [H, B, L, d0]
    key_tokens = einops.repeat(tokens, "b k -> h b q k", h=n_heads, q=L)
    scores = query[..., :vocab_size].gather(-1, key_tokens) + query[..., vocab_size:vocab_size + L]
    pattern = torch.softmax(scores.masked_fill(~mask[:L, :L], float("-inf")), dim=-1)
    bins = torch.zeros(n_heads, B, L, vocab_size, dtype=pattern.dtype, device=tokens.device)
    return pattern, bins.scatter_add(-1, key_tokens, pattern)


def two_layer_last_stream(model, tokens: torch.Tensor) -> torch.Tensor:
    """The final stream at the last position, [B, d2], of a two-layer
    :class:`DisentangledTransformer`; equal to the dense forward's ``h[:, -1]``."""
    S, n_ctx = model.cfg.d_vocab, model.cfg.n_ctx
    B, L = tokens.shape
    pad = n_ctx - L  # position columns L..n_ctx-1 are never attended
    attn1, attn2 = model.blocks[0].attn, model.blocks[1].attn
    pattern, bins = first_layer(attn1.A, tokens, S, attn1.mask)  # [H1, B, L, L], [H1, B, L, S]
    heads1 = pattern.shape[0]

    onehot_last = nn.functional.one_hot(tokens[:, -1], S).to(pattern.dtype)
    position_last = torch.zeros(B, n_ctx, dtype=pattern.dtype, device=tokens.device)
    position_last[:, L - 1] = 1.0
    first_last = torch.cat([bins[:, :, -1], nn.functional.pad(pattern[:, :, -1], (0, pad))], -1)
    stream_last = torch.cat(
        [onehot_last, position_last, einops.rearrange(first_last, "h b d -> b (h d)")], dim=-1
    )  # [B, d1]

    query = torch.einsum("bd,gde->bge", stream_last, attn2.A)  # [B, H2, d1]
    heads2 = query.shape[1]
    d0 = S + n_ctx
    q_blocks = einops.rearrange(query[..., d0:], "b g (h d) -> h b g d", h=heads1)
    key_tokens = einops.repeat(tokens, "b k -> b g k", g=heads2)
    scores = query[..., :S].gather(-1, key_tokens) + query[..., S:S + L]  # [B, H2, L]
    scores = scores + torch.einsum("hbls,hbgs->bgl", bins, q_blocks[..., :S])
    scores = scores + torch.einsum("hblk,hbgk->bgl", pattern, q_blocks[..., S:S + L])
    weights = torch.softmax(scores, dim=-1)  # [B, H2, L]

    token_out = torch.zeros(B, heads2, S, dtype=weights.dtype, device=tokens.device)
    token_out = token_out.scatter_add(-1, key_tokens, weights)
    position_out = nn.functional.pad(weights, (0, pad))
    bins_out = _weighted_sum(weights.unsqueeze(0), bins.unsqueeze(2))  # [H1, B, H2, S]
    pattern_out = _weighted_sum(weights.unsqueeze(0), pattern.unsqueeze(2))  # [H1, B, H2, L]
    first_out = torch.cat([bins_out, nn.functional.pad(pattern_out, (0, pad))], dim=-1)
    appended = torch.cat(
        [token_out, position_out, einops.rearrange(first_out, "h b g d -> b g (h d)")], dim=-1
    )  # [B, H2, d1]
    return torch.cat([stream_last, einops.rearrange(appended, "b g d -> b (g d)")], dim=-1)
