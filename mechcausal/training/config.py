"""Training configuration: :class:`TrainConfig` and its presets.

A preset is a graph family's recipe from :data:`~mechcausal.graphs.GRAPH_FAMILIES`
(``"chain"``, ``"two_parent"``, ...; its ``quick`` and ``paper`` fields), or one of the
recipes of other models below (``"mlp"``: the paper's Figure 8 standard transformer).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal


from ..graphs import GRAPH_FAMILIES
from ..ops import (
    as_int,
    check_choice,
    FLOAT32_MAX,
    check_device,
    check_float32,
    check_nonnegative_int,
    check_number,
    check_positive_int,
)

OptimizerName = Literal["sgd", "adam", "adamw"]
ScheduleName = Literal["cosine", "constant"]
DataMode = Literal["fresh", "pool"]
LossName = Literal["target", "next_token"]

# Recipes of models other than the disentangled transformer: scale -> TrainConfig fields.
MODEL_RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    # the paper's Figure 8: a standard transformer with MLPs on the chain
    "mlp": {"quick": dict(steps=1000, batch_size=256, optimizer="adamw", lr=1e-2,
                          weight_decay=2e-4, schedule="cosine"),
            "paper": dict(steps=2**12, batch_size=1024, optimizer="adamw", lr=1e-2,
                          weight_decay=2e-4, schedule="cosine", data="fresh")},
}
# the name the paper's figure gives a family's recipe
PRESET_ALIASES = {"figure9": "forest"}


def preset_fields(name: str, scale: str) -> dict[str, Any]:
    """``TrainConfig`` fields of preset ``name`` at ``scale`` (``"quick"`` / ``"paper"``)."""
    check_choice(scale, "scale", ("quick", "paper"))
    known = [*GRAPH_FAMILIES, *MODEL_RECIPES, *PRESET_ALIASES]
    if not isinstance(name, str):
        raise TypeError(f"unknown {scale} preset {name!r}: a preset is named by a string, "
                        f"one of {sorted(known)}")
    name = PRESET_ALIASES.get(name, name)
    if name in GRAPH_FAMILIES:
        values = dict(getattr(GRAPH_FAMILIES[name], scale))
    elif name in MODEL_RECIPES:
        values = dict(MODEL_RECIPES[name][scale])
    else:
        raise ValueError(f"unknown {scale} preset {name!r}; expected one of {sorted(known)}")
    unknown = sorted(set(values) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise ValueError(f"{scale} preset {name!r} sets {unknown[0]!r}, which is not a "
                         f"TrainConfig field")
    return values


@dataclass
class TrainConfig:
    """Everything the loop needs besides the model and the task.

    Attributes:
        steps: optimiser steps.
        batch_size: sequences per step (per member, for an ensemble).
        optimizer: ``"sgd"``, ``"adam"`` or ``"adamw"``.
        lr: peak learning rate.
        weight_decay: decoupled for AdamW, L2 for SGD/Adam.
        momentum: SGD momentum (the paper uses 0).
        adam_eps: Adam/AdamW epsilon. Larger values keep Adam from amplifying the tiny,
            noisy early gradients of the first layer into a spurious circuit.
        schedule: ``"cosine"`` decay to 0 over ``steps`` or ``"constant"``.
        warmup_steps: linear warm-up before the schedule.
        eval_every: steps between evaluations (plus one at the start and the end).
        eval_samples: size of the fixed held-out set.
        seed: seeds the data stream and the held-out set (ensemble member k: seed + k).
        device: where the model, the sampling and the optimiser run (``"cpu"``,
            ``"cuda"``, ``"cuda:1"``, ...).
        data: ``"fresh"`` samples every step, or ``"pool"``: pools of ``pool_size``
            sequences, each served once in order and then replaced (the official
            scheme; drawn a chunk at a time as the batches reach it, so it trains at the
            fresh-data rate and holds no pool in memory).
        pool_size: sequences per pool.
        progress: show a tqdm bar.
        prefetch: draw the next batches in a background thread while the model trains
            (the same batches in the same order as without).
        layer: attention layer whose parent attention is tracked.
        loss: ``"target"`` (the paper: cross-entropy against the target law at the
            last position) or ``"next_token"`` (a language model's loss: the next token
            at every position, the last position's next token being the task's answer,
            scored against its law). Evaluation always reports the target loss, the
            quantity the count estimator's loss is comparable with.
    """

    steps: int = 400
    batch_size: int = 256
    optimizer: OptimizerName = "adam"
    lr: float = 0.1
    weight_decay: float = 0.0
    momentum: float = 0.0
    adam_eps: float = 1e-8
    schedule: ScheduleName = "cosine"
    warmup_steps: int = 0
    eval_every: int = 100
    eval_samples: int = 2048
    seed: int = 0
    device: str = "cpu"
    data: DataMode = "fresh"
    pool_size: int = 2**16
    progress: bool = True
    prefetch: bool = True
    layer: int = 0
    loss: LossName = "target"
    preset: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "eval_samples", "pool_size"):
            setattr(self, name, check_positive_int(getattr(self, name), name))
        self.warmup_steps = check_nonnegative_int(self.warmup_steps, "warmup_steps")
        self.layer = check_nonnegative_int(self.layer, "layer")
        self.seed = as_int(self.seed, "seed")
        check_choice(self.optimizer, "optimizer", ("sgd", "adam", "adamw"))
        check_choice(self.schedule, "schedule", ("cosine", "constant"))
        check_choice(self.data, "data", ("fresh", "pool"))
        check_choice(self.loss, "loss", ("target", "next_token"))
        for name in ("progress", "prefetch"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        # float32's range: Adam's first step is lr / (1 - 0.9), so lr keeps a factor 10
        self.lr = check_float32(check_number(self.lr, "lr", low=0.0, low_open=True), "lr",
                                high=FLOAT32_MAX / 10)
        self.adam_eps = check_float32(check_number(self.adam_eps, "adam_eps", low=0.0,
                                                   low_open=True), "adam_eps")
        self.weight_decay = check_float32(check_number(self.weight_decay, "weight_decay",
                                                       low=0.0), "weight_decay")
        self.momentum = check_number(self.momentum, "momentum", low=0.0, high=1.0,
                                     high_open=True)
        self.device = check_device(self.device)
        if self.data == "pool" and self.pool_size < self.batch_size:
            raise ValueError(
                f"pool_size={self.pool_size} must be at least batch_size={self.batch_size}"
            )

    @classmethod
    def paper(cls, name: str, **overrides: Any) -> TrainConfig:
        """Official hyperparameters of preset ``name`` (a graph family such as
        ``"chain"``, ``"two_parent"``, ``"forest"`` (alias ``"figure9"``), or ``"mlp"``)."""
        return cls._preset("paper", name, overrides)

    @classmethod
    def quick(cls, name: str, **overrides: Any) -> TrainConfig:
        """Our recipe reaching the paper's qualitative result in CPU seconds."""
        return cls._preset("quick", name, overrides)

    @classmethod
    def _preset(cls, scale: str, name: str, overrides: dict) -> TrainConfig:
        values = {**preset_fields(name, scale), "preset": f"{scale}:{name}", **overrides}
        steps = check_positive_int(values.get("steps", 400), "steps")
        values.setdefault("eval_every", max(1, steps // 8))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        # written before prefetch was a plain switch: "thread" / "process" meant on
        if isinstance(values.get("prefetch"), str):
            values["prefetch"] = True
        return cls(**values)


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of ``config.lr`` at ``step`` (warm-up, then cosine or constant)."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    span = max(1, config.steps - config.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * (step - config.warmup_steps) / span))
