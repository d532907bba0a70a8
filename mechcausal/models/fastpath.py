"""The training fast path of a two-layer disentangled transformer.

Three facts make the paper's model cheap to train, all exact:

* Layer 1 reads one-hot (token, position) pairs, so its score
  ``h_q A h_k^T = A[x_q, x_k] + A[x_q, S+k] + A[S+q, x_k] + A[S+q, S+k]`` is one entry
  of a table indexed by ``(x_q, q, x_k, k)``: S·L·S·L entries (44,100 at S=10, L=21),
  built from A once per step, causal mask folded in. The scores are one gather from
  it: no [B, L, d] query tensor, no separate mask pass.
* Only the last position's prediction enters the loss, so layer 2 runs for that
  query alone.
* Layer 1's token bins (attention summed per token) are never needed at every
  position: a layer-2 query's dot product with a bin row equals the pattern row
  times the query read at the key tokens, and the attention-weighted sum of bin rows
  is the weighted sum of pattern rows scattered onto tokens. So every [B, L, L] pass
  is one of: the gather, the softmax, and two mat-vecs (and their gradients).

Used only when no hooks are attached; tested equal to the dense forward in values and
gradients. Pure functional ops, so it also runs under ``torch.func.vmap`` (ensembles).
"""

from __future__ import annotations

import einops
import torch
from torch import nn


def score_table(A: torch.Tensor, vocab_size: int, length: int) -> torch.Tensor:
    """First-layer scores of every (query token, query position, key token, key
    position), the causal mask as ``-inf``.

    Args:
        A: [H, d0, d0], token block first, then position block.
    Returns:
        [H, S * L * S * L], flat in the order of :func:`table_index`.
    """
    S, L = vocab_size, length
    tok, pos = slice(0, S), slice(S, S + L)
    table = (
        einops.rearrange(A[:, tok, tok], "h xq xk -> h xq 1 xk 1")
        + einops.rearrange(A[:, tok, pos], "h xq k -> h xq 1 1 k")
        + einops.rearrange(A[:, pos, tok], "h q xk -> h 1 q xk 1")
        + einops.rearrange(A[:, pos, pos], "h q k -> h 1 q 1 k")
    )
    causal = torch.ones(L, L, dtype=torch.bool, device=A.device).tril()
    table = table.masked_fill(~einops.rearrange(causal, "q k -> 1 1 q 1 k"), float("-inf"))
    return einops.rearrange(table, "h xq q xk k -> h (xq q xk k)")


def table_index(tokens: torch.Tensor, vocab_size: int, last_only: bool = False) -> torch.Tensor:
    """tokens [B, L] -> long [B, L, L] (``last_only``: [B, 1, L]), the flat
    :func:`score_table` index of each (query, key) pair. Independent of the parameters."""
    B, L = tokens.shape
    positions = torch.arange(L, device=tokens.device)
    token_position = tokens * L + positions  # [B, L]: (x_i, i) flattened
    queries = token_position[:, -1:] if last_only else token_position
    return queries.unsqueeze(-1) * (vocab_size * L) + token_position.unsqueeze(-2)


def token_bins(weights: torch.Tensor, key_tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Attention summed per key token: weights [..., L] -> [..., S], with
    ``key_tokens`` (long, broadcastable to ``weights``) the keys' tokens."""
    zeros = torch.zeros(*weights.shape[:-1], vocab_size, dtype=weights.dtype,
                        device=weights.device)
    return zeros.scatter_add(-1, key_tokens.expand_as(weights), weights)


def first_layer_pattern(table: torch.Tensor, tokens: torch.Tensor, vocab_size: int,
                        last_only: bool = False) -> torch.Tensor:
    """Layer-1 attention patterns [H, B, L, L] of tokens [B, L] from their
    :func:`score_table` [H, S*L*S*L] (``last_only``: the last query's row, [H, B, 1, L])."""
    index = table_index(tokens, vocab_size, last_only)
    # index_select, not advanced indexing: several times faster forward and backward on CPU
    flat = table.index_select(-1, index.view(-1))
    return torch.softmax(flat.view(table.shape[0], *index.shape), dim=-1)


def two_layer_last_stream(model, tokens: torch.Tensor) -> torch.Tensor:
    """The final stream at the last position, [B, d2], of a two-layer
    :class:`DisentangledTransformer`; equal to the dense forward's ``h[:, -1]``."""
    S, n_ctx = model.cfg.d_vocab, model.cfg.n_ctx
    B, L = tokens.shape
    d0 = S + n_ctx
    pad = n_ctx - L  # position columns L..n_ctx-1 are never attended
    table = score_table(model.blocks[0].attn.A, S, L)  # built once, read twice
    pattern = first_layer_pattern(table, tokens, S)  # [H1, B, L, L]
    heads1 = pattern.shape[0]

    # the stream at the last position: token, position, each layer-1 head's (bins, pattern).
    # The last row is recomputed (cheap) rather than sliced: a slice's backward writes a
    # zero tensor of the full pattern's size and adds it to the pattern's gradient.
    last_row = first_layer_pattern(table, tokens, S, last_only=True)[:, :, 0]  # [H1, B, L]
    first_last = torch.cat(
        [token_bins(last_row, tokens, S), nn.functional.pad(last_row, (0, pad))], dim=-1)
    position_last = torch.zeros(B, n_ctx, dtype=pattern.dtype, device=tokens.device)
    position_last[:, L - 1] = 1.0
    stream_last = torch.cat(
        [token_bins(torch.ones_like(tokens[:, -1:], dtype=pattern.dtype), tokens[:, -1:], S),
         position_last,
         einops.rearrange(first_last, "h b d -> b (h d)")], dim=-1,
    )  # [B, d1]

    query = torch.einsum("bd,gde->bge", stream_last, model.blocks[1].attn.A)  # [B, H2, d1]
    heads2 = query.shape[1]
    key_tokens = einops.repeat(tokens, "b k -> b g k", g=heads2)
    scores = query[..., :S].gather(-1, key_tokens) + query[..., S:S + L]  # [B, H2, L]
    # layer-1 head h's features at key l, (bins[l], pattern[l]), dotted with the query:
    # sum_k pattern[l, k] * (query_bins[x_k] + query_pattern[k])
    q_heads = einops.rearrange(query[..., d0:], "b g (h d) -> h b g d", h=heads1)
    per_key = (q_heads[..., :S].gather(-1, key_tokens.expand(heads1, -1, -1, -1))
               + q_heads[..., S:S + L])  # [H1, B, H2, L]
    # mat-vecs as broadcast products and sums: a batched matmul's backward builds each
    # [L, L] gradient as an outer product, several times slower on CPU
    pattern_g = pattern.unsqueeze(2)  # [H1, B, 1, L, L]
    scores = scores + (pattern_g * per_key.unsqueeze(-2)).sum((0, -1))
    weights = torch.softmax(scores, dim=-1)  # [B, H2, L]

    # [H1, B, H2, L]: sum_l weights[l] pattern[l, k]
    pattern_out = (pattern_g * weights.unsqueeze(-1)).sum(-2)
    first_out = torch.cat([token_bins(pattern_out, key_tokens, S),
                           nn.functional.pad(pattern_out, (0, pad))], dim=-1)
    appended = torch.cat(
        [token_bins(weights, key_tokens, S), nn.functional.pad(weights, (0, pad)),
         einops.rearrange(first_out, "h b g d -> b g (h d)")], dim=-1,
    )  # [B, H2, d1]
    return torch.cat([stream_last, einops.rearrange(appended, "b g d -> b (g d)")], dim=-1)
