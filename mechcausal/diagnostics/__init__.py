"""Diagnostics: each returns a small dataclass with ``.to_dict()`` and ``.plot()``."""

from .graph import GraphComparison, GraphEstimate, extract_graph
from .heads import HeadSplit, head_split
from .induction import (
    CausalInductionScore,
    InductionScores,
    causal_induction_score,
    estimator_agreement,
    induction_scores,
)
from .information import (
    InformationReport,
    chi2_mutual_information,
    gradient_at_init,
    information_report,
)
from .ood import Evaluation, OODReport, default_shifts, evaluate, ood_report
from .patching import ParentPatching, patch_parents

__all__ = [
    "CausalInductionScore",
    "Evaluation",
    "GraphComparison",
    "GraphEstimate",
    "HeadSplit",
    "InductionScores",
    "InformationReport",
    "OODReport",
    "ParentPatching",
    "causal_induction_score",
    "chi2_mutual_information",
    "extract_graph",
    "gradient_at_init",
    "head_split",
    "information_report",
    "default_shifts",
    "estimator_agreement",
    "evaluate",
    "induction_scores",
    "ood_report",
    "patch_parents",
]
