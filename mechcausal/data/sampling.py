"""Random draws that honour a ``torch.Generator`` on any device, and stationary laws.

``torch.distributions.Dirichlet`` ignores generators, so a seeded batch would depend
on the global RNG. These samplers use only ``torch.rand``/``torch.randn`` with the
caller's generator, and work in log space because Dirichlet(0.1) components
routinely underflow float32.
"""

from __future__ import annotations

import math

import einops
import torch

from ..ops import softmax_last


# rejection rounds before log_gamma_sample gives up (see there)
_MAX_ROUNDS = 200


def _uniform_open(shape: tuple[int, ...], generator, device, dtype) -> torch.Tensor:
    """Uniform on (0, 1]: ``1 - rand`` never returns 0, so its log is finite."""
    return 1.0 - torch.rand(shape, generator=generator, device=device, dtype=dtype)


def log_gamma_sample(
    concentration: float,
    shape: tuple[int, ...],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Log of Gamma(concentration, 1) draws of shape ``shape``.

    Marsaglia-Tsang for shape ``a + 1 >= 1`` (vectorised rejection: one pass over
    everything, then the few rejected entries again), boosted to ``a`` by
    ``G_a = G_{a+1} * U^{1/a}``, done as a sum of logs so that nothing underflows."""
    if not concentration > 0:
        raise ValueError(f"concentration must be > 0, got {concentration}")
    d = concentration + 1.0 - 1.0 / 3.0
    c = 1.0 / (9.0 * d) ** 0.5
    log_d = math.log(d)

    def propose(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(count, generator=generator, device=device, dtype=dtype)
        u = _uniform_open((count,), generator, device, dtype)
        v = torch.add(1.0, x, alpha=c).pow_(3)
        log_v = torch.log(v)
        # accept when log u < x^2 / 2 + d (1 - v + log v); in place, one buffer per term.
        # v <= 0 (reject) needs no test of its own: its log, so its bound, is NaN or
        # -inf, which no log u is below; the value it leaves is replaced below
        bound = (log_v - v).add_(1.0).mul_(d).addcmul_(x, x, value=0.5)
        accept = u.log_() < bound
        return log_v.add_(log_d), accept

    numel = math.prod(shape)
    out, accept = propose(numel)
    pending = (~accept).nonzero().squeeze(-1)
    # each round accepts > 95% of proposals, so a round left over after this many
    # means the arithmetic broke (a concentration outside float32's reach), not bad luck
    for _ in range(_MAX_ROUNDS):
        if pending.numel() == 0:
            break
        value, ok = propose(pending.numel())
        out[pending[ok]] = value[ok]
        pending = pending[~ok]
    else:
        if pending.numel() > 0:
            raise ValueError(f"Gamma({concentration:g}) sampling accepted no draw for "
                             f"{pending.numel()} entries in {_MAX_ROUNDS} rounds: the "
                             f"concentration is outside what {dtype} arithmetic can sample")
    boost = _uniform_open((numel,), generator, device, dtype).log_().div_(concentration)
    return out.add_(boost).reshape(shape)


def dirichlet_sample(
    alpha: float,
    shape: tuple[int, ...],
    size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Symmetric Dirichlet(alpha * 1_size) draws, float32, shape ``[*shape, size]``.

    Components below float32's range come out as exact zeros, which is harmless for
    sampling and for the stationary law (computed in float64 by GTH)."""
    log_gamma = log_gamma_sample(alpha, (*shape, size), generator, device)
    return softmax_last(log_gamma)


def cumulative(probabilities: torch.Tensor) -> torch.Tensor:
    """Cumulative sums [..., S] of probability rows for :func:`categorical_from_cdf`,
    the last entry set to 2: the true last sum is 1 up to rounding, and a cap above
    every uniform in (0, 1] keeps the count of sums below a uniform in 0..S-1 (the
    category that clamping the count would give, without a clamp per draw)."""
    cdf = torch.cumsum(probabilities, -1)
    cdf[..., -1] = 2.0
    return cdf


def categorical_from_cdf(cdf: torch.Tensor, uniform: torch.Tensor,
                         out: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse-CDF sampling: ``cdf`` [..., S] from :func:`cumulative`, ``uniform``
    [...] in (0, 1]; returns long [...] in 0..S-1, the number of cumulative sums below
    the uniform (written into ``out`` when given)."""
    # counted, not binary-searched: a search's branches mispredict on fresh data
    return torch.sum(cdf < uniform.unsqueeze(-1), -1, out=out)


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
