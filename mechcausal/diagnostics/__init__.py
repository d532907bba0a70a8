"""Diagnostics: each returns a small dataclass with ``.to_dict()`` and ``.plot()``."""

from .induction import (
    CausalInductionScore,
    InductionScores,
    causal_induction_score,
    estimator_agreement,
    induction_scores,
)
from .ood import Evaluation, OODReport, default_shifts, evaluate, ood_report
from .patching import ParentPatching, patch_parents

__all__ = [
    "CausalInductionScore",
    "Evaluation",
    "InductionScores",
    "OODReport",
    "ParentPatching",
    "causal_induction_score",
    "default_shifts",
    "estimator_agreement",
    "evaluate",
    "induction_scores",
    "ood_report",
    "patch_parents",
]
