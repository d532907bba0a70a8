"""Stationary distributions of batched transition matrices."""

from __future__ import annotations

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
    p = pi.to(torch.float64).clone()
    size = p.shape[-1]
    tiny = torch.finfo(torch.float64).tiny
    for k in range(size - 1, 0, -1):
        out_mass = p[..., k, :k].sum(-1, keepdim=True).clamp_min(tiny)  # [..., 1]
        p[..., :k, k] = p[..., :k, k] / out_mass
        p[..., :k, :k] = p[..., :k, :k] + p[..., :k, k : k + 1] * p[..., k : k + 1, :k]
    mu = torch.zeros(p.shape[:-1], dtype=torch.float64, device=p.device)
    mu[..., 0] = 1.0
    for k in range(1, size):
        mu[..., k] = (mu[..., :k] * p[..., :k, k]).sum(-1)
    return mu / mu.sum(-1, keepdim=True)
