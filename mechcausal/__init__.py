"""mechcausal: the in-context causal-structure task of Nichani, Damian & Lee (ICML 2024)
as TransformerLens-compatible models, fast training and diagnostics."""

from .algorithm1 import TwoStageHistory, train_two_stage
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .graphs import CausalGraph
from .history import History
from .models import (
    DisentangledConfig,
    DisentangledTransformer,
    NativeModel,
    ReducedConfig,
    ReducedModel,
)
from .tasks import Batch, InContextDAG, InContextTask, InContextTree, task_from_dict
from .train import NonFiniteLossError, train

__version__ = "0.1.0"

__all__ = [
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
    "train",
    "train_two_stage",
    "DisentangledConfig",
    "DisentangledTransformer",
    "InContextDAG",
    "InContextTask",
    "InContextTree",
    "task_from_dict",
]
