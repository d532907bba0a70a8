"""mechcausal: the in-context causal-structure task of Nichani, Damian & Lee (ICML 2024)
as TransformerLens-compatible models, fast training and diagnostics."""

from .algorithm1 import TwoStageHistory, train_two_stage
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .diagnostics import (
    CausalInductionScore,
    Evaluation,
    InductionScores,
    OODReport,
    ParentPatching,
    causal_induction_score,
    estimator_agreement,
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
    "CausalInductionScore",
    "DirichletPrior",
    "Ensemble",
    "Evaluation",
    "InductionScores",
    "OODReport",
    "ParentPatching",
    "PermutationPrior",
    "SparsePrior",
    "causal_induction_score",
    "estimator_agreement",
    "evaluate",
    "induction_scores",
    "ood_report",
    "patch_parents",
    "Batch",
    "CausalGraph",
    "Checkpoint",
    "History",
    "NativeModel",
    "NonFiniteLossError",
    "ReducedConfig",
    "ReducedModel",
    "TwoStageHistory",
    "TrainConfig",
    "load_checkpoint",
    "save_checkpoint",
    "hooked_transformer_config",
    "standard_model",
    "to_transformer_lens",
    "sample_stacked",
    "train",
    "train_ensemble",
    "train_two_stage",
    "DisentangledConfig",
    "DisentangledTransformer",
    "InContextDAG",
    "InContextTask",
    "InContextTree",
    "task_from_dict",
]
