"""mechcausal: the in-context causal-structure task of Nichani, Damian & Lee (ICML 2024)
as TransformerLens-compatible models, fast training and diagnostics."""

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .graphs import CausalGraph
from .history import History
from .models import DisentangledConfig, DisentangledTransformer
from .tasks import Batch, InContextDAG, InContextTask, InContextTree, task_from_dict
from .train import NonFiniteLossError, train

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "CausalGraph",
    "Checkpoint",
    "History",
    "NonFiniteLossError",
    "TrainConfig",
    "load_checkpoint",
    "save_checkpoint",
    "train",
    "DisentangledConfig",
    "DisentangledTransformer",
    "InContextDAG",
    "InContextTask",
    "InContextTree",
    "task_from_dict",
]
