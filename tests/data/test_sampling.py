"""Dirichlet draws and stationary laws against exact values."""

import math

import pytest
import torch

from mechcausal.data.sampling import (categorical_from_cdf, cumulative, dirichlet_sample,
                                      log_gamma_sample, stationary_distribution)


def test_gamma_mean_and_variance():
    """Gamma(a) has mean a and variance a; check both within 5 standard errors."""
    n = 200_000
    gen = torch.Generator().manual_seed(0)
    for a in (0.1, 1.0, 3.0):
        x = log_gamma_sample(a, (n,), gen, dtype=torch.float64).exp()
        assert abs(x.mean().item() - a) < 5 * math.sqrt(a / n)
        # var of the sample variance ~ (m4 - var^2)/n with m4 = 3a^2 + 6a for Gamma
        se_var = math.sqrt((3 * a * a + 6 * a - a * a) / n)
        assert abs(x.var().item() - a) < 5 * se_var


def test_dirichlet_moments_and_generator():
    alpha, size, n = 0.1, 10, 50_000
    draws = dirichlet_sample(alpha, (n,), size, torch.Generator().manual_seed(1))
    assert torch.allclose(draws.sum(-1), torch.ones(n), atol=1e-5)
    assert (draws >= 0).all()
    a0 = alpha * size
    var = (1 / size) * (1 - 1 / size) / (a0 + 1)
    assert (draws.mean(0) - 1 / size).abs().max() < 5 * math.sqrt(var / n)
    assert abs(draws[:, 0].var().item() - var) < 0.1 * var
    again = dirichlet_sample(alpha, (n,), size, torch.Generator().manual_seed(1))
    assert torch.equal(draws, again)


@pytest.mark.parametrize("batch", [(500,), (4, 3), (1,), ()])
def test_stationary_distribution_is_invariant(batch):
    """Any leading batch shape, float32 or float64; the input is left unchanged (the
    elimination works on a copy even where the batch-last view is already contiguous)."""
    pi = dirichlet_sample(0.1, (*batch, 7), 7, torch.Generator().manual_seed(2)).double()
    original = pi.clone()
    mu = stationary_distribution(pi)
    assert torch.equal(pi, original)
    assert mu.shape == (*batch, 7) and (mu >= 0).all()
    assert torch.allclose(mu.sum(-1), torch.ones(batch, dtype=torch.float64))
    assert torch.allclose(torch.einsum("...s,...st->...t", mu, pi), mu, atol=1e-10)
    assert torch.allclose(stationary_distribution(pi.float()), mu, atol=1e-6)


def test_stationary_distribution_nearly_reducible_exact():
    """Two-state chain: mu = (q, p) / (p + q), even when p, q are 1e-15."""
    for p, q in [(1e-15, 3e-15), (0.3, 0.6), (1e-12, 0.5)]:
        pi = torch.tensor([[1 - p, p], [q, 1 - q]], dtype=torch.float64)
        mu = stationary_distribution(pi)
        expected = torch.tensor([q, p], dtype=torch.float64) / (p + q)
        assert torch.allclose(mu, expected, rtol=1e-9, atol=0)


def test_stationary_distribution_block_chain_has_no_negative_entries():
    eps = 1e-14
    block = torch.tensor([[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 0.2, 0.8], [0, 0, 0.8, 0.2]],
                         dtype=torch.float64)
    coupling = torch.full((4, 4), eps, dtype=torch.float64)
    pi = block + coupling
    pi = pi / pi.sum(-1, keepdim=True)
    mu = stationary_distribution(pi)
    assert (mu >= 0).all() and abs(mu.sum().item() - 1) < 1e-12
    assert torch.allclose(mu @ pi, mu, atol=1e-15)
    # symmetric coupling between doubly stochastic blocks: the uniform law
    assert torch.allclose(mu, torch.full((4,), 0.25, dtype=torch.float64), atol=1e-6)


def test_categorical_from_capped_cdf_is_the_clamped_count():
    """The capped cumulative sums give exactly the inverse-CDF category with the count
    clamped to S - 1, including uniforms of 1 (above a last sum rounded below 1),
    uniforms equal to a cumulative sum, and rows with exact zeros; ``out`` writes in
    place into a view."""
    S, n = 10, 20_000
    gen = torch.Generator().manual_seed(3)
    probs = dirichlet_sample(0.1, (n,), S, gen)
    sums = torch.cumsum(probs, -1)
    uniform = 1.0 - torch.rand(n, generator=gen)
    uniform[:100] = 1.0
    uniform[100:200] = sums[100:200, 4]  # ties: a sum equal to the uniform is not below it
    clamped = (sums < uniform.unsqueeze(-1)).sum(-1).clamp_max(S - 1)
    assert (sums[:, -1] < 1.0).any()  # rounding below 1 occurs, so the cap matters
    assert torch.equal(categorical_from_cdf(cumulative(probs), uniform), clamped)
    rows = torch.zeros(2, n, dtype=torch.long)
    categorical_from_cdf(cumulative(probs), uniform, out=rows[1])
    assert torch.equal(rows[1], clamped) and not rows[0].any()
