"""What a training run records."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

@dataclass
class History:
    """What a run recorded; every list is JSON-ready.

    ``train_loss[k]`` is the loss of step ``k``; ``eval_*`` lists line up with
    ``eval_step``. ``bayes_loss``/``unigram_loss`` are the count estimator's and the
    in-context unigram baseline's losses on the same held-out set."""

    train_loss: list[float] = field(default_factory=list)
    eval_step: list[int] = field(default_factory=list)
    eval_time: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    parent_attention: list[float] = field(default_factory=list)
    bayes_loss: float = float("nan")
    unigram_loss: float = float("nan")
    wall_time: float = 0.0
    steps_per_second: float = float("nan")

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
            if value >= threshold:
                return seconds
        return None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["gap"] = self.gap
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
