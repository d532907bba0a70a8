"""mechcausal: the in-context causal-structure task of Nichani, Damian & Lee (ICML 2024)
as TransformerLens-compatible models, fast training and diagnostics."""

from .algorithm1 import TwoStageHistory, train_two_stage
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .diagnostics import (
    CausalInductionScore,
    Evaluation,
    GraphComparison,
    GraphEstimate,
    HeadSplit,
    InductionScores,
    InformationReport,
    OODReport,
    ParentPatching,
    causal_induction_score,
    chi2_mutual_information,
    estimator_agreement,
    extract_graph,
    gradient_at_init,
    head_split,
    information_report,
    evaluate,
    induction_scores,
    ood_report,
    patch_parents,
)
from .ensemble import Ensemble, train_ensemble
from .graphs import CausalGraph
from .history import History
from .models import (
    DisentangledConfig,
    DisentangledTransformer,
    NativeModel,
    ReducedConfig,
    ReducedModel,
    hooked_transformer_config,
    standard_model,
    to_transformer_lens,
)
from .priors import DirichletPrior, PermutationPrior, SparsePrior
from .tasks import (
    Batch,
    InContextDAG,
    InContextTask,
    InContextTree,
    sample_stacked,
    task_from_dict,
)
from .train import NonFiniteLossError, train

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "CausalGraph",
    "CausalInductionScore",
    "Checkpoint",
    "DirichletPrior",
    "DisentangledConfig",
    "DisentangledTransformer",
    "Ensemble",
    "Evaluation",
    "GraphComparison",
    "GraphEstimate",
    "HeadSplit",
    "History",
    "InContextDAG",
    "InContextTask",
    "InContextTree",
    "InductionScores",
    "InformationReport",
    "NativeModel",
    "NonFiniteLossError",
    "OODReport",
    "ParentPatching",
    "PermutationPrior",
    "ReducedConfig",
    "ReducedModel",
    "SparsePrior",
    "TrainConfig",
    "TwoStageHistory",
    "causal_induction_score",
    "chi2_mutual_information",
    "estimator_agreement",
    "evaluate",
    "extract_graph",
    "gradient_at_init",
    "head_split",
    "hooked_transformer_config",
    "induction_scores",
    "information_report",
    "load_checkpoint",
    "ood_report",
    "patch_parents",
    "sample_stacked",
    "save_checkpoint",
    "standard_model",
    "task_from_dict",
    "to_transformer_lens",
    "train",
    "train_ensemble",
    "train_two_stage",
]
