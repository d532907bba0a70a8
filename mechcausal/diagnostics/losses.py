"""Held-out losses: a model against the in-context count estimator and the baselines
on fresh samples, on the training prior and out of distribution (tasks whose
transition matrices come from other priors)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .. import plots
from ..data.priors import (
    DirichletPrior,
    PermutationPrior,
    SparsePrior,
    TransitionPrior,
    check_prior,
)
from ..data.tasks import InContextTask, InContextTree, check_task
from ..models.base import check_sizes, model_logits
from ..models.standard import is_tl_model, last_position_logits
from ..ops import check_positive_int, cross_entropy, seeded


# sequences per forward pass when answering: bounds an LM's activations, not its logits
_ANSWER_CHUNK = 512


@torch.no_grad()
def answer_logits(model: torch.nn.Module, task: InContextTask,
                  tokens: torch.Tensor) -> torch.Tensor:
    """The model's answer to the task on ``tokens`` (the task's model input): logits at
    the last position over the S symbols, [B, S] (an LM's restricted to the task's ids)."""
    device = next(model.parameters()).device
    parts = []
    for start in range(0, tokens.shape[0], _ANSWER_CHUNK):
        chunk = tokens[start : start + _ANSWER_CHUNK].to(device)
        logits = (last_position_logits(model, chunk) if is_tl_model(model) else
                  model_logits(model, chunk))
        parts.append(task.answer_logits(logits))
    return torch.cat(parts)


@torch.no_grad()
def answer_probs(model: torch.nn.Module, task: InContextTask,
                 tokens: torch.Tensor) -> torch.Tensor:
    """:func:`answer_logits` as a distribution over the S symbols, [B, S] (float32)."""
    return torch.softmax(answer_logits(model, task, tokens).float(), dim=-1)


@torch.no_grad()
def heldout_losses(model: torch.nn.Module, task: InContextTask, n_samples: int = 4096,
                   seed: int = 0) -> dict[str, float]:
    """Cross-entropies (nats) against the true target law on ``n_samples`` fresh
    sequences (seeded by ``seed``): ``model``, ``count_estimator``, ``unigram`` and, for
    DAG tasks, ``one_nn`` (the last-parent baseline); and ``kl``, the mean
    KL(count estimator || model)."""
    check_task(task)
    check_positive_int(n_samples, "n_samples")
    check_sizes(model, task)
    batch = task.sample(n_samples, generator=seeded(seed))
    log_model = torch.log_softmax(answer_logits(model, task, batch.tokens).cpu().double(), -1)
    target = batch.target.double()
    bayes = task.bayes(batch.tokens).double()
    losses = {"model": -(target * log_model).sum(-1).mean().item(),
              "count_estimator": cross_entropy(bayes, target).item(),
              "unigram": cross_entropy(task.unigram(batch.tokens), batch.target).item()}
    if task.kind == "dag":
        losses["one_nn"] = cross_entropy(task.one_nn(batch.tokens), batch.target).item()
    losses["kl"] = (bayes * (bayes.log() - log_model)).sum(-1).mean().item()
    return losses


def estimator_agreement(model: torch.nn.Module, task: InContextTask, n_samples: int = 4096,
                        seed: int = 0) -> dict[str, float]:
    """How close the model is to the in-context count estimator on fresh samples:
    ``kl`` = mean KL(count estimator || model) and the two cross-entropies against the
    true target, ``model_loss`` and ``bayes_loss`` (nats); see :func:`heldout_losses`."""
    losses = heldout_losses(model, task, n_samples, seed)
    return {"kl": losses["kl"], "model_loss": losses["model"],
            "bayes_loss": losses["count_estimator"]}


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
        return plots.grouped_bars([e.name for e in self.evaluations],
                            {"model": [e.model_loss for e in self.evaluations],
                             "count estimator": [e.bayes_loss for e in self.evaluations]},
                            ylabel="cross-entropy (nats)", title="out-of-distribution priors")


def evaluate(model: torch.nn.Module, task: InContextTask, n_samples: int = 4096,
             seed: int = 0, name: str = "task") -> Evaluation:
    """Model vs count estimator on ``task`` (any prior)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a string (the evaluation's label), got {name!r}")
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
    check_task(task)
    if task.kind != "tree":
        raise TypeError(f"ood_report needs a tree task (InContextTree), got "
                        f"{type(task).__name__}")
    if shifts is None:
        shifts = default_shifts()
    if not isinstance(shifts, dict) or not shifts:
        raise TypeError(f"shifts must be a non-empty dict of name -> prior (e.g. "
                        f"{{'Dirichlet(1.0)': mc.DirichletPrior(1.0)}}), got {shifts!r}")
    shifted = {str(name): task.with_prior(check_prior(prior, f"shifts[{name!r}]"))
               for name, prior in shifts.items()}  # every prior checked before any work
    report = OODReport([evaluate(model, task, n_samples, seed, name="train prior")])
    for name, shifted_task in shifted.items():
        report.evaluations.append(evaluate(model, shifted_task, n_samples, seed, name))
    return report
