"""Out-of-distribution evaluation: the trained model against the count estimator on
tasks whose transition matrices come from other priors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..priors import DirichletPrior, PermutationPrior, SparsePrior, TransitionPrior
from ..tasks import InContextTask, InContextTree
from .induction import estimator_agreement


@dataclass
class Evaluation:
    """One task: model and count-estimator cross-entropies (nats), their gap, and the
    KL from the estimator to the model."""

    name: str
    model_loss: float
    bayes_loss: float
    kl: float

    @property
    def gap(self) -> float:
        return self.model_loss - self.bayes_loss

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "model_loss": self.model_loss, "bayes_loss": self.bayes_loss,
                "gap": self.gap, "kl": self.kl}


@dataclass
class OODReport:
    """Evaluations on the training prior and on each shifted prior."""

    evaluations: list[Evaluation] = field(default_factory=list)

    def __getitem__(self, name: str) -> Evaluation:
        for evaluation in self.evaluations:
            if evaluation.name == name:
                return evaluation
        raise KeyError(f"no evaluation named {name!r}; have {[e.name for e in self.evaluations]}")

    def to_dict(self) -> dict[str, Any]:
        return {"evaluations": [e.to_dict() for e in self.evaluations]}

    def plot(self):
        from ..plots import grouped_bars

        return grouped_bars([e.name for e in self.evaluations],
                            {"model": [e.model_loss for e in self.evaluations],
                             "count estimator": [e.bayes_loss for e in self.evaluations]},
                            ylabel="cross-entropy (nats)", title="out-of-distribution priors")


def evaluate(model: torch.nn.Module, task: InContextTask, n_samples: int = 4096,
             seed: int = 0, name: str = "task") -> Evaluation:
    """Model vs count estimator on ``task`` (any prior)."""
    scores = estimator_agreement(model, task, n_samples=n_samples, seed=seed)
    return Evaluation(name, scores["model_loss"], scores["bayes_loss"], scores["kl"])


def default_shifts() -> dict[str, TransitionPrior]:
    """The shifted priors of :func:`ood_report`."""
    return {"dirichlet(1.0)": DirichletPrior(1.0), "dirichlet(0.03)": DirichletPrior(0.03),
            "permutation": PermutationPrior(noise=0.0), "sparse(2)": SparsePrior(support=2)}


def ood_report(model: torch.nn.Module, task: InContextTree,
               shifts: dict[str, TransitionPrior] | None = None, n_samples: int = 4096,
               seed: int = 0) -> OODReport:
    """Evaluate on the training task and on each shifted prior (same graph and sizes)."""
    if not isinstance(task, InContextTree):
        raise TypeError(f"ood_report needs an InContextTree, got {type(task).__name__}")
    report = OODReport([evaluate(model, task, n_samples, seed, name="train prior")])
    for name, prior in (shifts or default_shifts()).items():
        report.evaluations.append(evaluate(model, task.with_prior(prior), n_samples, seed, name))
    return report
