"""Stationary distributions of batched transition matrices."""

from __future__ import annotations

import einops
import torch


def stationary_distribution(pi: torch.Tensor) -> torch.Tensor:
    """Stationary law mu with ``mu @ pi = mu`` for a batch of row-stochastic matrices.

    Uses Grassmann-Taksar-Heyman state reduction: it only adds and multiplies
    non-negative numbers, so it stays accurate for nearly reducible chains (where an
    eigen-solver or ``solve`` loses the answer to cancellation) and never returns a
    negative entry. For a reducible chain it returns one of its stationary laws.

    Args:
        pi: [..., S, S] rows summing to 1.

    Returns:
        [..., S] float64, non-negative, summing to 1.
    """
    if pi.ndim < 2 or pi.shape[-1] != pi.shape[-2]:
        raise ValueError(f"pi must have shape [..., S, S], got {tuple(pi.shape)}")
    # batch dimensions last: every slice below is then a contiguous run of the batch,
    # about 3x faster than [..., k, k] slices of small matrices
    p = einops.rearrange(pi.to(torch.float64), "... i j -> i j (...)").clone(
        memory_format=torch.contiguous_format)  # a copy even where the view is contiguous
    size = p.shape[0]
    tiny = torch.finfo(torch.float64).tiny
    for k in range(size - 1, 0, -1):
        out_mass = p[k, :k].sum(0).clamp_min_(tiny)  # [batch]
        column = p[:k, k].div_(out_mass)
        p[:k, :k].addcmul_(column.unsqueeze(1), p[k : k + 1, :k])
    mu = torch.zeros(size, p.shape[-1], dtype=torch.float64, device=p.device)
    mu[0] = 1.0
    for k in range(1, size):
        mu[k] = (mu[:k] * p[:k, k]).sum(0)
    mu = mu / mu.sum(0, keepdim=True)
    return einops.rearrange(mu, "s b -> b s").reshape(*pi.shape[:-1])
