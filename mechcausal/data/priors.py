"""Priors over transition matrices, for training (Dirichlet) and out-of-distribution
evaluation (other concentrations, random permutations, sparse rows)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..ops import check_concentration, check_number, check_positive_int
from .sampling import dirichlet_sample, stationary_distribution


@dataclass(frozen=True)
class DirichletPrior:
    """Rows iid symmetric Dirichlet(alpha) (the paper's prior)."""

    alpha: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", check_concentration(self.alpha, "alpha"))

    def sample(self, n: int, size: int, generator=None, device=None) -> torch.Tensor:
        """[n, size, size] row-stochastic float32."""
        return dirichlet_sample(self.alpha, (n, size), size, generator, device)

    def stationary(self, pi: torch.Tensor) -> torch.Tensor:
        return stationary_distribution(pi)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "dirichlet", **asdict(self)}


@dataclass(frozen=True)
class PermutationPrior:
    """A uniformly random permutation per sample, mixed with ``noise`` uniform mass:
    ``pi = (1 - noise) P + noise / S``. Doubly stochastic, so mu_pi is uniform."""

    noise: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise", check_number(self.noise, "noise", low=0.0, high=1.0))

    def sample(self, n: int, size: int, generator=None, device=None) -> torch.Tensor:
        keys = torch.rand((n, size), generator=generator, device=device)
        perm = torch.nn.functional.one_hot(keys.argsort(-1), size).float()
        return (1.0 - self.noise) * perm + self.noise / size

    def stationary(self, pi: torch.Tensor) -> torch.Tensor:
        return torch.full(pi.shape[:-1], 1.0 / pi.shape[-1], dtype=torch.float64,
                          device=pi.device)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "permutation", **asdict(self)}


@dataclass(frozen=True)
class SparsePrior:
    """Each row puts Dirichlet(alpha) mass on ``support`` random tokens, 0 elsewhere."""

    support: int = 2
    alpha: float = 1.0

    def __post_init__(self) -> None:
        check_positive_int(self.support, "support")
        object.__setattr__(self, "alpha", check_concentration(self.alpha, "alpha"))

    def sample(self, n: int, size: int, generator=None, device=None) -> torch.Tensor:
        if self.support > size:
            raise ValueError(f"support={self.support} exceeds the vocabulary size {size}")
        keys = torch.rand((n, size, size), generator=generator, device=device)
        chosen = keys.argsort(-1)[..., : self.support]
        weights = dirichlet_sample(self.alpha, (n, size), self.support, generator, device)
        return torch.zeros(n, size, size, device=device).scatter_(-1, chosen, weights)

    def stationary(self, pi: torch.Tensor) -> torch.Tensor:
        return stationary_distribution(pi)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "sparse", **asdict(self)}


TransitionPrior = DirichletPrior | PermutationPrior | SparsePrior
PRIOR_CLASSES = (DirichletPrior, PermutationPrior, SparsePrior)


def check_prior(prior: Any, name: str = "prior") -> TransitionPrior:
    """``prior`` if it is one of the transition priors; TypeError naming them otherwise."""
    if not isinstance(prior, PRIOR_CLASSES):
        raise TypeError(f"{name} must be a transition prior (mc.DirichletPrior(alpha), "
                        f"mc.PermutationPrior(noise) or mc.SparsePrior(support)), got "
                        f"{prior!r} of type {type(prior).__name__}")
    return prior
PRIORS = {"dirichlet": DirichletPrior, "permutation": PermutationPrior, "sparse": SparsePrior}


def prior_from_dict(data: dict[str, Any]) -> TransitionPrior:
    """Inverse of ``prior.to_dict()``."""
    data = dict(data)
    kind = data.pop("kind", None)
    if kind not in PRIORS:
        raise ValueError(f"unknown prior kind {kind!r}; expected one of {sorted(PRIORS)}")
    return PRIORS[kind](**data)
