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
  is the weighted sum of pattern rows scattered onto tokens
  (:mod:`~mechcausal.models.pattern_mixing`).

Forward and backward are written out in one autograd function
(:class:`TwoLayerLastStream`): one node instead of ~60 small ones per step, and every
[B, L, L] pass chosen by hand. Used only when no hooks are attached; tested equal to
the dense forward in values and gradients; runs under ``torch.func.vmap`` (ensembles).
First-order only: asking for a second derivative raises (the dense path has them).
"""

from __future__ import annotations

import einops
import torch
from torch import nn

from .pattern_mixing import ExpPattern, Mixing, exp_pattern, exp_table_fits, mix, mix_backward


def score_table(A: torch.Tensor, vocab_size: int, length: int) -> torch.Tensor:
    """First-layer scores of every (query token, query position, key token, key
    position). Future keys are not masked here
    (:func:`~mechcausal.models.pattern_mixing.future_keys`): the exponential of
    ``-inf`` takes a slow path, so the exponentiated table is masked by a product.

    Args:
        A: [..., d0, d0], token block first, then position block.
    Returns:
        [..., S, L, S, L]; flattened, in the order of :func:`table_index`.
    """
    S, L = vocab_size, length
    tok, pos = slice(0, S), slice(S, S + L)
    return (
        einops.rearrange(A[..., tok, tok], "... xq xk -> ... xq 1 xk 1")
        + einops.rearrange(A[..., tok, pos], "... xq k -> ... xq 1 1 k")
        + einops.rearrange(A[..., pos, tok], "... q xk -> ... 1 q xk 1")
        + einops.rearrange(A[..., pos, pos], "... q k -> ... 1 q 1 k")
    )


def score_table_grad(grad_table: torch.Tensor, n_ctx: int) -> torch.Tensor:
    """The adjoint of :func:`score_table`: grad_table [..., S, L, S, L] (zero at
    future keys) -> the gradient of A [..., S + n_ctx, S + n_ctx] (zero beyond position L)."""
    pad = n_ctx - grad_table.shape[-3]
    token_rows = torch.cat([grad_table.sum((-3, -1)),
                            nn.functional.pad(grad_table.sum((-3, -2)), (0, pad))], dim=-1)
    position_rows = torch.cat([grad_table.sum((-4, -1)),
                               nn.functional.pad(grad_table.sum((-4, -2)), (0, pad))], dim=-1)
    return torch.cat([token_rows, nn.functional.pad(position_rows, (0, 0, 0, pad))], dim=-2)


def table_index(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """tokens [B, L] -> long [B, L, L], the flat :func:`score_table` index of each
    (query, key) pair. Independent of the parameters."""
    L = tokens.shape[-1]
    pairs = vocab_size * L
    # int32 arithmetic, then widened (index_select and scatter_add want long): 1.35x
    # faster on CPU than the broadcast add in int64
    dtype = torch.int32 if pairs * pairs <= torch.iinfo(torch.int32).max else torch.long
    token_position = tokens.to(dtype) * L + torch.arange(L, dtype=dtype, device=tokens.device)
    return (token_position.unsqueeze(-1) * pairs + token_position.unsqueeze(-2)).long()


def read_keys(block: torch.Tensor, tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """A stream block's dot product with each key's one-hot (token, position) pair:
    block [..., S + n_ctx], tokens long [B, L] broadcastable to [..., L] -> [..., L]."""
    S, L = vocab_size, tokens.shape[-1]
    key_tokens = tokens.expand(*block.shape[:-1], L)
    return block[..., :S].gather(-1, key_tokens) + block[..., S:S + L]


def write_keys(weights: torch.Tensor, tokens: torch.Tensor, vocab_size: int,
               n_ctx: int) -> torch.Tensor:
    """The adjoint of :func:`read_keys`, a weighted sum of the keys' one-hot pairs:
    weights [..., L] -> [..., S + n_ctx] (token bins, then positions), with ``tokens``
    (long, broadcastable to ``weights``) the keys' tokens."""
    S, L = vocab_size, weights.shape[-1]
    # new_zeros: batched under vmap, so the in-place writes below are allowed there
    out = weights.new_zeros(*weights.shape[:-1], S + n_ctx)
    out[..., S:S + L] = weights
    return out.scatter_add_(-1, tokens.expand_as(weights), weights)


class TwoLayerLastStream(torch.autograd.Function):
    """``apply(A1 [H1, d0, d0], A2 [H2, d1, d1], tokens [B, L], vocab_size, exp_table)``
    -> (the final stream at the last position [B, d2], then intermediates kept for
    the backward). ``exp_table``: see :func:`~mechcausal.models.pattern_mixing.exp_table_fits`
    (None: decide from A1, which needs a host sync, so not under vmap)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(A1, A2, tokens, vocab_size, exp_table):
        S, (B, L) = vocab_size, tokens.shape
        heads2, d0 = A2.shape[0], A1.shape[-1]
        n_ctx = d0 - S
        index = table_index(tokens, S)
        table = score_table(A1, S, L)
        if exp_table is None:  # a host sync: not under vmap
            exp_table = bool(exp_table_fits(table))
        pattern = exp_pattern(table, index, exp_table)
        last_row = pattern.unnormalised[:, :, -1] * pattern.inv_rowsum[:, :, 0, -1:]  # [H1, B, L]
        # the stream at the last position, one d0-block at a time: its own one-hot
        # (token, position) pair is the keys' sum weighted one-hot at the last key, then
        # each layer-1 head's output. Blocks stay in a leading dimension throughout.
        last_key = nn.functional.one_hot(torch.full_like(tokens[:1, 0], L - 1), L)
        blocks = torch.cat([last_key.to(A1.dtype).expand(1, B, L), last_row])  # [1 + H1, B, L]
        stream = einops.rearrange(write_keys(blocks, tokens, S, n_ctx), "k b d -> b (k d)")
        # the own block is one-hot, so its product with A2 is two of A2's rows: only
        # the heads' blocks go through a matmul
        A2_rows = einops.rearrange(A2, "g d e -> d (g e)")  # [d1, H2 d1]
        own_rows = A2_rows.index_select(0, tokens[:, -1]) + A2_rows[S + L - 1]
        query = torch.addmm(own_rows, stream[:, d0:], A2_rows[d0:])  # [B, H2 d1]
        key_tokens = tokens.unsqueeze(-2)  # [B, 1, L], broadcast over layer-2 heads
        reads = read_keys(einops.rearrange(query, "b (g k d) -> k b g d", g=heads2, d=d0),
                          key_tokens, S)  # [1 + H1, B, H2, L]
        mixing = mix(pattern, reads[1:], reads[0])
        appended = write_keys(torch.cat([mixing.weights.unsqueeze(0), mixing.mixed]),
                              key_tokens, S, n_ctx)  # [1 + H1, B, H2, d0]
        out = torch.cat([stream, einops.rearrange(appended, "k b g d -> b (g k d)")], dim=-1)
        return (out, index, *pattern, last_row, stream, reads[1:], *mixing)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, A2, tokens, vocab_size, _ = inputs
        ctx.vocab_size = vocab_size
        ctx.save_for_backward(A2, tokens, *output[1:])
        ctx.mark_non_differentiable(*output[1:])
        # the intermediates get no gradient: unmaterialised, autograd does not fill a
        # zero tensor for each one (a [B, L, L] long among them) every step
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad_out, *_):
        if torch.is_grad_enabled():  # create_graph=True (or torch.func.grad): the saved
            raise RuntimeError(      # intermediates are not tracked, a 2nd derivative would be wrong
                "the fast path of DisentangledTransformer has a first-order backward only "
                "(no create_graph=True, no torch.func.grad); for second derivatives use the "
                "dense path: model(tokens, all_positions=True)[:, -1], or attach a hook")
        A2, tokens, index, unnormalised, inv_rowsum, last_row, stream, key_read, *mixing = (
            ctx.saved_tensors)
        pattern, mixing = ExpPattern(unnormalised, inv_rowsum), Mixing(*mixing)
        S, (heads1, _, L, _) = ctx.vocab_size, unnormalised.shape
        heads2, d1 = A2.shape[0], A2.shape[-1]
        d0 = d1 // (1 + heads1)
        n_ctx = d0 - S
        key_tokens = tokens.unsqueeze(-2)

        grad_reads = read_keys(einops.rearrange(grad_out[:, d1:], "b (g k d) -> k b g d",
                                                g=heads2, d=d0), key_tokens, S)
        grad_scores, grad_key_read, grad_base = mix_backward(
            pattern, key_read, mixing, grad_reads[0], grad_reads[1:])
        grad_query = einops.rearrange(
            write_keys(torch.cat([grad_base.unsqueeze(0), grad_key_read]), key_tokens, S, n_ctx),
            "k b g d -> b (g k d)")
        # A2's own-block rows (last token, last position) get grad_query's rows and sum
        token_rows = torch.zeros(S, grad_query.shape[-1], dtype=grad_query.dtype,
                                 device=grad_query.device).index_add(0, tokens[:, -1], grad_query)
        position_rows = nn.functional.pad(grad_query.sum(0, keepdim=True), (0, 0, L - 1, n_ctx - L))
        head_rows = stream[:, d0:].T @ grad_query
        grad_A2 = einops.rearrange(torch.cat([token_rows, position_rows, head_rows]),
                                   "d (g e) -> g d e", g=heads2)
        A2_head_rows = einops.rearrange(A2, "g d e -> d (g e)")[d0:]
        grad_heads = grad_out[:, d0:d1] + grad_query @ A2_head_rows.T  # [B, H1 d0]
        grad_last_row = read_keys(einops.rearrange(grad_heads, "b (h d) -> h b d", d=d0),
                                  tokens, S)  # [H1, B, L]
        # the last row is also a softmax of gathered scores: add its backward there
        grad_scores[:, :, -1] += last_row * (
            grad_last_row - (last_row * grad_last_row).sum(-1, keepdim=True))
        grad_table = torch.zeros(heads1, S * L * S * L, dtype=grad_scores.dtype,
                                 device=grad_scores.device).scatter_add(
            -1, index.reshape(1, -1).expand(heads1, -1), grad_scores.reshape(heads1, -1))
        grad_A1 = score_table_grad(grad_table.view(heads1, S, L, S, L), n_ctx)
        return grad_A1, grad_A2, None, None, None


def two_layer_last_stream(model, tokens: torch.Tensor,
                          exp_table: bool | None = None) -> torch.Tensor:
    """The final stream at the last position, [B, d2], of a two-layer
    :class:`DisentangledTransformer`; equal to the dense forward's ``h[:, -1]``.

    ``exp_table``: exponentiate layer 1's score table once per step (see
    :func:`~mechcausal.models.pattern_mixing.exp_table_fits`). None decides from the
    parameters on CPU (a host sync) and takes a softmax per row elsewhere, where the
    exponential is cheap. Pass a bool under ``vmap``."""
    if exp_table is None and tokens.device.type != "cpu":
        exp_table = False
    return TwoLayerLastStream.apply(model.blocks[0].attn.A, model.blocks[1].attn.A, tokens,
                                    model.cfg.d_vocab, exp_table)[0]
