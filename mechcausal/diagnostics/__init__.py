"""Diagnostics: each returns a small dataclass with ``.to_dict()`` and ``.plot()``;
:func:`diagnose` runs every registered one that applies."""

from .attention import (
    all_patterns,
    mean_attention,
    parent_attention,
    pattern_hook,
    position_attention,
    z_hook,
)
from .circuit import InductionCircuit, induction_circuit
from .graph import GraphComparison, GraphEstimate, extract_graph
from .heads import HeadRanking, HeadSplit, head_split, rank_heads
from .induction import CausalInductionScore, InductionScores, causal_induction_score, induction_scores
from .information import (
    InformationReport,
    chi2_mutual_information,
    gradient_at_init,
    information_report,
)
from .losses import (
    Evaluation,
    answer_logits,
    answer_probs,
    OODReport,
    default_shifts,
    estimator_agreement,
    evaluate,
    heldout_losses,
    ood_report,
)
from .patching import ParentPatching, edge_effect, patch_parents
from .probing import ProbeResult, ProbeSweep, probe, probe_sweep
from .suite import (
    DIAGNOSTICS,
    Diagnosis,
    Diagnostic,
    Finding,
    Subject,
    diagnose,
    register_diagnostic,
    write_diagnosis,
)
from .views import AttentionView, show_attention

__all__ = [
    "AttentionView", "CausalInductionScore", "DIAGNOSTICS", "Diagnosis", "Diagnostic", "Evaluation",
    "Finding", "GraphComparison", "GraphEstimate", "HeadRanking", "HeadSplit",
    "InductionCircuit", "InductionScores", "InformationReport", "OODReport", "ParentPatching",
    "ProbeResult", "ProbeSweep", "Subject", "all_patterns", "answer_logits",
    "answer_probs", "causal_induction_score", "chi2_mutual_information",
    "default_shifts", "diagnose", "edge_effect", "estimator_agreement", "evaluate",
    "extract_graph", "gradient_at_init", "head_split", "heldout_losses",
    "induction_circuit", "induction_scores", "information_report", "mean_attention", "ood_report",
    "parent_attention", "patch_parents", "pattern_hook", "position_attention", "probe",
    "probe_sweep", "rank_heads", "register_diagnostic", "show_attention", "write_diagnosis", "z_hook",
]
