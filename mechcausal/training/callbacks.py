"""Callbacks of the training loop: what a run exposes to them, and the built-ins.

A callback subclasses :class:`Callback` and overrides any of ``on_train_start``,
``on_step`` (after every update), ``on_eval`` (after every evaluation, the one at step 0
included), ``on_train_end`` and ``on_train_error`` (training raised: a NaN, Ctrl-C,
another callback); each receives the :class:`Run`. ``run.stop(reason)``
ends training after the current step; the reason lands in ``History.stop_reason``.

    class HeadMasses(mc.Callback):            # e.g. track a diagnostic during training
        def on_eval(self, run):
            self.masses.append(mc.head_split(run.model, run.task).mass)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import plots
from ..data.tasks import Batch, InContextTask
from ..diagnostics.attention import mean_attention
from ..ops import (as_int, check_choice, check_nonnegative_int, check_number,
                   check_positive_int)
from .config import TrainConfig
from .history import History


@dataclass
class Run:
    """What callbacks see of a training run.

    Attributes:
        model: the model being trained (an :class:`~mechcausal.Ensemble` for ensembles).
        tasks: the member tasks (one for a single model).
        histories: the member histories, filled as training goes.
        config: the :class:`TrainConfig`.
        held_out: per member, the fixed held-out batch evaluations use.
        member_model: ``member_model(k)`` -> member k as an ordinary model (the model
            itself for a single model; a copy for an ensemble).
        is_ensemble: whether ``model`` is an ensemble.
        step: updates applied so far.
        loss: the last step's training loss per member ([N] tensor on the device; read
            it only when needed: ``.tolist()`` waits for the device).
        lr: the learning rate of the last step's update.
        evaluations: per member, the latest evaluation: ``step``, ``test_loss``,
            ``gap``, ``parent_attention`` and ``pattern`` (the data-averaged attention of
            ``config.layer`` on the held-out set, [H, L, L]).
        stop_reason: set by :meth:`stop`.
    """

    model: Any
    tasks: list[InContextTask]
    histories: list[History]
    config: TrainConfig
    held_out: list[Batch]
    member_model: Callable[[int], torch.nn.Module]
    is_ensemble: bool = False
    step: int = 0
    loss: torch.Tensor | None = None
    lr: float | None = None
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str | None = None

    @property
    def task(self) -> Any:
        """The task (ensembles: the list of member tasks)."""
        return self.tasks if self.is_ensemble else self.tasks[0]

    @property
    def history(self) -> Any:
        """The :class:`History` (ensembles: one per member)."""
        return self.histories if self.is_ensemble else self.histories[0]

    @property
    def n_members(self) -> int:
        return len(self.tasks)

    def stop(self, reason: str = "stopped by a callback") -> None:
        """End training after the current step (and its evaluation, if one is due)."""
        self.stop_reason = str(reason)


class Callback:
    """Base class: override the hooks you need; each receives the :class:`Run`."""

    def on_train_start(self, run: Run) -> None:
        """Before the first evaluation (step 0)."""

    def on_step(self, run: Run) -> None:
        """After each update (``run.step`` counts them)."""

    def on_eval(self, run: Run) -> None:
        """After each evaluation (``run.evaluations`` holds it)."""

    def on_train_end(self, run: Run) -> None:
        """After the last step and evaluation (not when training fails)."""

    def on_train_error(self, run: Run, error: BaseException) -> None:
        """Training is raising ``error`` (after ``on_train_start`` was called, possibly
        before this callback's own): release what the callback holds; the error
        propagates after every callback's ``on_train_error``."""


_METRICS = {"parent_attention": "max", "test_loss": "min", "gap": "min"}


class EarlyStopping(Callback):
    """Stop at the first evaluation where ``metric`` reaches ``threshold`` (every member
    of an ensemble).

    Args:
        metric: ``"parent_attention"`` (stop at or above), ``"test_loss"`` or ``"gap"``
            (test loss minus the count estimator's; stop at or below).
        threshold: the value to reach.
        mode: ``"max"`` (at or above) or ``"min"`` (at or below); default by metric.
    """

    def __init__(self, metric: str = "parent_attention", threshold: float = 0.95,
                 mode: str | None = None):
        self.metric = check_choice(metric, "metric", tuple(_METRICS))
        self.threshold = check_number(threshold, "threshold")
        self.mode = check_choice(mode if mode is not None else _METRICS[metric], "mode",
                                 ("max", "min"))
        self.stopped_at: int | None = None

    def _reached(self, value: float) -> bool:
        return value >= self.threshold if self.mode == "max" else value <= self.threshold

    def on_train_start(self, run: Run) -> None:
        self.stopped_at = None

    def on_eval(self, run: Run) -> None:
        values = [evaluation[self.metric] for evaluation in run.evaluations]
        if all(self._reached(value) for value in values):
            self.stopped_at = run.step
            shown = ", ".join(f"{value:.4g}" for value in values)
            run.stop(f"EarlyStopping: {self.metric} {shown} reached "
                     f"{'>=' if self.mode == 'max' else '<='} {self.threshold:g} at step "
                     f"{run.step}")


class AttentionSnapshots(Callback):
    """A layer's data-averaged attention on the held-out set at every ``every``-th
    evaluation: the graph emerging in layer 1 during training (the paper's dynamics).

    Args:
        every: keep every ``every``-th evaluation (1: each one, step 0 included).
        layer: attention layer (0: the first).

    After training: ``steps`` (the evaluation steps kept) and ``patterns``, one tensor
    per kept evaluation, [H, L, L] for a single model or [N, H, L, L] for an ensemble;
    :meth:`plot` draws them side by side with the true parents marked.
    """

    def __init__(self, every: int = 1, layer: int = 0):
        self.every = check_positive_int(every, "every")
        self.layer = check_nonnegative_int(layer, "layer")
        self.steps: list[int] = []
        self.patterns: list[torch.Tensor] = []
        self._evaluations = 0
        self._graphs: list[Any] = []

    def on_train_start(self, run: Run) -> None:
        if self.layer >= run.model.cfg.n_layers:
            raise ValueError(f"AttentionSnapshots(layer={self.layer}): the model has "
                             f"{run.model.cfg.n_layers} layers")
        self.steps, self.patterns, self._evaluations = [], [], 0
        self._graphs = [task.graph for task in run.tasks]

    def on_eval(self, run: Run) -> None:
        self._evaluations += 1
        if (self._evaluations - 1) % self.every:
            return
        per_member = []
        for k, evaluation in enumerate(run.evaluations):
            if self.layer == run.config.layer:
                per_member.append(evaluation["pattern"])
            else:
                per_member.append(mean_attention(run.member_model(k), run.held_out[k].tokens,
                                                 layer=self.layer).cpu())
        self.steps.append(run.step)
        self.patterns.append(torch.stack(per_member) if run.is_ensemble else per_member[0])

    def plot(self, member: int = 0, max_panels: int = 6, steps: list[int] | None = None,
             title: str = ""):
        """Snapshots of one member side by side, heads summed, true parents marked: the
        ones at ``steps`` (each the snapshot nearest to it), or up to ``max_panels``
        evenly spaced ones, the first and last included."""
        if not self.patterns:
            raise ValueError("no snapshots recorded: pass the callback to mc.train first")
        members = len(self._graphs)
        if not 0 <= as_int(member, "member") < members:
            raise ValueError(f"member must be in 0..{members - 1}, got {member}")
        if steps is not None:
            steps = [as_int(step, "steps entry") for step in steps]
        chosen = range(len(self.steps)) if steps is None else sorted({
            min(range(len(self.steps)), key=lambda k: abs(self.steps[k] - step))
            for step in steps})
        patterns = [self.patterns[k] if self.patterns[k].ndim == 3 else self.patterns[k][member]
                    for k in chosen]
        return plots.attention_over_training([self.steps[k] for k in chosen], patterns,
                                             self._graphs[member], layer=self.layer,
                                             max_panels=max_panels, title=title)

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "layer": self.layer,
                "patterns": [pattern.tolist() for pattern in self.patterns]}
