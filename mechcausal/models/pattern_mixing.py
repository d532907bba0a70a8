"""Layer 2 reading layer 1's attention pattern: forward and hand-written backward.

In the two-layer fast path (:mod:`~mechcausal.models.fastpath`) every [B, L, L]
tensor is layer 1's pattern ``P_h`` (one per layer-1 head h), used twice by the last
query's layer-2 heads g:

* ``scores[g, l] = base[g, l] + sum_h sum_k P_h[l, k] key_read[h, g, k]``, then
  ``weights = softmax(scores)`` over the keys l;
* ``mixed[h, g, k] = sum_l weights[g, l] P_h[l, k]``.

Written with autograd's generic ops, the backward of these lines walks [B, L, L]
tensors about a dozen times, allocating most of them. By hand: two vector-matrix
products, then the softmax backward of a rank-two update: one batched product adding
the two outer products to the row term (one pass writing [B, L, L]), then the product
with ``E`` in place. ``P`` is never normalised either: with ``E = exp(scores)`` and
row sums ``r``, ``P = E / r`` is only ever applied to vectors, so ``1 / r`` goes onto
the vectors.

The score table's exponential is taken once on its S·L·S·L entries rather than on
every [B, L, L] gather, when that fits the dtype (:func:`exp_table_fits`); otherwise
the gathered scores go through a softmax.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import einops
import torch

from ..ops import softmax_last


def exp_table_fits(table: torch.Tensor) -> torch.Tensor:
    """Whether ``exp(table - group max)`` keeps every attention row's sum a normal number.

    ``table`` [..., S, L, S, L] (query token, query position, key token, key position);
    the group max is taken over all keys, future ones included (conservative). A row
    of query (x, q) always holds its own key (x, q), so its sum is at least
    ``exp(table[x, q, x, q] - max)``; that must stay above the dtype's smallest normal
    number, with a margin of e^8. Returns a 0-dim bool tensor."""
    group_max = table.flatten(-2).amax(-1)  # [..., S, L]
    # table[..., x, q, x, q]: pair the tokens (-> [..., L, L, S]), then the positions
    diagonal = table.diagonal(dim1=-4, dim2=-2).diagonal(dim1=-3, dim2=-2)  # [..., S, L]
    limit = -math.log(torch.finfo(table.dtype).tiny) - 8.0
    return (group_max - diagonal < limit).all()


@functools.lru_cache(maxsize=16)
def future_keys(length: int, device: torch.device) -> torch.Tensor:
    """bool [L, 1, L] (query position, 1, key position): True where the key comes
    after the query, so the causal mask hides it."""
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    return ~einops.rearrange(causal, "q k -> q 1 k")


class ExpPattern(NamedTuple):
    """Layer-1 patterns as ``P = unnormalised * inv_rowsum`` (row-wise)."""

    unnormalised: torch.Tensor  # [H1, B, L, L]
    inv_rowsum: torch.Tensor  # [H1, B, 1, L]: 1 / row sums, laid out to scale row vectors


def exp_pattern(table: torch.Tensor, index: torch.Tensor, exp_table: bool) -> ExpPattern:
    """table [H1, S, L, S, L] (future keys not yet masked), index long [B, L, L] into
    one head's flattened table -> the layer-1 patterns of the batch."""
    heads1, L = table.shape[0], table.shape[-1]
    flat_index = index.reshape(-1)
    future = future_keys(L, table.device)
    if exp_table:
        group_max = table.flatten(-2).amax(-1, keepdim=True).unsqueeze(-1)
        # masked by a product: exp(-inf) is several times slower than exp(finite)
        exp_scores = (table - group_max).exp_().mul_(~future)
        unnormalised = _gather_heads(exp_scores, flat_index).view(heads1, *index.shape)
    else:  # already normalised: the row sums below are 1
        scores = _gather_heads(table, flat_index).view(heads1, *index.shape)
        unnormalised = torch.softmax(scores.masked_fill_(future.squeeze(-2), float("-inf")), dim=-1)
    # row sums as a product with a ones vector: 2.4x faster on CPU than .sum(-1)
    ones = torch.ones(L, 1, dtype=unnormalised.dtype, device=unnormalised.device)
    row_sums = torch.matmul(unnormalised, ones).transpose(-1, -2)  # [H1, B, 1, L]
    return ExpPattern(unnormalised, row_sums.reciprocal_())


def _gather_heads(table: torch.Tensor, flat_index: torch.Tensor) -> torch.Tensor:
    """table [H1, ...] flattened per head, gathered at flat_index [M] -> [H1, M]."""
    # one 1-D index_select per head: 1.6x faster on CPU than one on the [H1, N] table
    rows = [head.reshape(-1).index_select(0, flat_index) for head in table.unbind(0)]
    return rows[0].unsqueeze(0) if len(rows) == 1 else torch.stack(rows)


class Mixing(NamedTuple):
    weights: torch.Tensor  # [B, H2, L] layer-2 pattern of the last query
    mixed: torch.Tensor  # [H1, B, H2, L]
    pattern_read: torch.Tensor  # [H1, B, H2, L]: (P_h key_read_hg)[l]
    row_weights: torch.Tensor  # [H1, B, H2, L]: weights / row sums


def mix(pattern: ExpPattern, key_read: torch.Tensor, base: torch.Tensor) -> Mixing:
    """key_read [H1, B, H2, L], base [B, H2, L] -> layer 2's weights and mixed patterns
    (see the module docstring), with what :func:`mix_backward` needs."""
    unnormalised, inv_rowsum = pattern
    # a vector-matrix product with the transposed matrix is several times faster on
    # CPU than the matrix-vector product
    pattern_read = torch.matmul(key_read, unnormalised.transpose(-1, -2)) * inv_rowsum
    weights = softmax_last(base + pattern_read.sum(0))
    row_weights = weights * inv_rowsum
    return Mixing(weights, torch.matmul(row_weights, unnormalised), pattern_read, row_weights)


def mix_backward(pattern: ExpPattern, key_read: torch.Tensor, mixing: Mixing,
                 grad_weights: torch.Tensor, grad_mixed: torch.Tensor,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`mix` given those of ``weights`` [B, H2, L] and ``mixed``
    [H1, B, H2, L]: (layer-1 scores [H1, B, L, L], key_read, base)."""
    unnormalised, inv_rowsum = pattern
    weights, _, pattern_read, row_weights = mixing
    grad_mixed = grad_mixed.contiguous()  # batched matmuls loop over stride-0 inputs
    # through mixed: d weights[g, l] += sum_h (P_h grad_mixed_hg)[l]
    pattern_grad = torch.matmul(grad_mixed, unnormalised.transpose(-1, -2)) * inv_rowsum
    grad_weights = grad_weights + pattern_grad.sum(0)
    grad_base = weights * (grad_weights - (weights * grad_weights).sum(-1, keepdim=True))
    score_rows = grad_base * inv_rowsum  # [H1, B, H2, L]
    grad_key_read = torch.matmul(score_rows, unnormalised)
    # d P_h[l, k] = sum_g weights[g, l] grad_mixed[g, k] + grad_base[g, l] key_read[g, k];
    # softmax backward: d s = P * (d P - rowsum(P * d P)), with P = E / r
    row_dot = (weights * pattern_grad + grad_base * pattern_read).sum(2)  # [H1, B, L]
    # d P as one batched product of rank 2 H2 (inner dimension: the pairs (g, term)),
    # added to the row term: one pass writing [B, L, L] instead of 3 H2 + 1
    left = einops.rearrange(torch.stack([row_weights, score_rows]), "t h b g l -> (h b) l (g t)")
    right = einops.rearrange(torch.stack([grad_mixed, key_read]), "t h b g k -> (h b) (g t) k")
    row_term = einops.rearrange(-row_dot * inv_rowsum.squeeze(-2), "h b l -> (h b) l 1")
    grad_rows = torch.baddbmm(row_term.expand(-1, -1, unnormalised.shape[-1]), left, right)
    return grad_rows.view_as(unnormalised).mul_(unnormalised), grad_key_read, grad_base
