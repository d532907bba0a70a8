"""Algorithm 1 of the paper (our reconstruction): two-stage training.

Stage 1: from ``A1 = 0`` with the second layer fixed at ``beta0 * I`` (small), train the
first layer only. Stage 2: freeze the first layer, train the second (and the readout,
if the model has one). The official scripts train everything jointly (``mc.train``);
this is the procedure the theory analyses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.tasks import InContextTask
from .config import TrainConfig
from .history import History
from ..models.disentangled import check_beta0
from .loop import check_train, train


@dataclass
class TwoStageHistory:
    """The two runs of Algorithm 1."""

    stage1: History
    stage2: History

    def to_dict(self) -> dict[str, Any]:
        return {"stage1": self.stage1.to_dict(), "stage2": self.stage2.to_dict()}


def train_two_stage(
    model: torch.nn.Module,
    task: InContextTask,
    stage1: TrainConfig,
    stage2: TrainConfig,
    beta0: float = 0.1,
    checkpoint: str | Path | None = None,
) -> TwoStageHistory:
    """Run Algorithm 1 on a model with ``init_two_stage`` and ``stage_parameters``
    (:class:`ReducedModel`, :class:`DisentangledTransformer`).

    The model is first reset to Algorithm 1's start (``init_two_stage(beta0)``);
    stage 1 optimises ``stage_parameters()["stage1"]`` with ``stage1``'s settings,
    then stage 2 optimises ``["stage2"]`` with ``stage2``'s. ``checkpoint`` receives
    the model after stage 2.

    Every argument of both stages is checked before the model is touched: a mistake
    in ``stage2`` (or ``beta0``, or ``checkpoint``) leaves the model as it was."""
    for needed in ("init_two_stage", "stage_parameters"):
        if not hasattr(model, needed):
            raise TypeError(f"{type(model).__name__} has no {needed}(); Algorithm 1 needs "
                            "a ReducedModel or a DisentangledTransformer")
    beta0 = check_beta0(beta0)
    if getattr(getattr(model, "cfg", None), "n_layers", 2) < 2:
        raise ValueError(f"Algorithm 1 needs >= 2 layers, this model has {model.cfg.n_layers}")
    groups = model.stage_parameters()
    for name, config, params, output in (("stage1", stage1, groups["stage1"], None),
                                         ("stage2", stage2, groups["stage2"], checkpoint)):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"{name} must be a TrainConfig, got {type(config).__name__}")
        try:  # the weights are reset below, so only the arguments are checked
            check_train(model, task, config, checkpoint=output, parameters=params,
                        weights=False)
        except (ValueError, TypeError) as error:
            raise type(error)(f"{name}: {error}") from None
    model.init_two_stage(beta0)
    first = train(model, task, stage1, parameters=groups["stage1"])
    second = train(model, task, stage2, parameters=groups["stage2"], checkpoint=checkpoint)
    return TwoStageHistory(first, second)
