"""What a training run records."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class History:
    """What a run recorded; every field is JSON-ready.

    ``train_loss[k]`` is the loss of step ``k`` (one entry per update applied);
    ``eval_*`` lists line up with ``eval_step``. ``bayes_loss`` / ``unigram_loss`` /
    ``uniform_loss`` are the count estimator's, the in-context unigram baseline's and
    the uniform predictor's losses on the same held-out set.

    Attributes:
        warnings: what the loop noticed but did not stop for (a finite divergence: the
            held-out loss far above the uniform predictor's for several evaluations).
        stop_reason: why the run ended before ``steps`` (a callback's ``run.stop``), or
            None when it ran to the end.
        wall_time: seconds of training (evaluations excluded).
        steps_per_second: updates per second of ``wall_time``; None before any update.
    """

    train_loss: list[float] = field(default_factory=list)
    eval_step: list[int] = field(default_factory=list)
    eval_time: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    parent_attention: list[float] = field(default_factory=list)
    bayes_loss: float = math.nan
    unigram_loss: float = math.nan
    uniform_loss: float = math.nan
    wall_time: float = 0.0
    steps_per_second: float | None = None
    warnings: list[str] = field(default_factory=list)
    stop_reason: str | None = None

    @property
    def gap(self) -> list[float]:
        """Test loss minus the count estimator's, per evaluation."""
        return [loss - self.bayes_loss for loss in self.test_loss]

    @property
    def final(self) -> dict[str, float]:
        """Last evaluation: test loss, bayes loss, gap, unigram loss, parent attention."""
        if not self.test_loss:
            return {}
        return {
            "step": self.eval_step[-1],
            "test_loss": self.test_loss[-1],
            "bayes_loss": self.bayes_loss,
            "gap": self.gap[-1],
            "unigram_loss": self.unigram_loss,
            "parent_attention": self.parent_attention[-1],
        }

    def time_to_parent_attention(self, threshold: float = 0.95) -> float | None:
        """Seconds of training until an evaluation first saw parent attention >= threshold."""
        for seconds, value in zip(self.eval_time, self.parent_attention):
            if value is not None and value >= threshold:  # None / NaN: nothing to count
                return seconds
        return None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["gap"] = self.gap
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("steps_per_second"), float) and math.isnan(
                values["steps_per_second"]):
            values["steps_per_second"] = None  # older files wrote NaN for "not measured"
        return cls(**values)
