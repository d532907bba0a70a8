"""Training: the configuration, the one loop (models and ensembles), batches, callbacks,
histories, checkpoints and Algorithm 1."""

from .algorithm1 import TwoStageHistory, train_two_stage
from .callbacks import AttentionSnapshots, Callback, EarlyStopping, Run
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .ensemble import Ensemble
from .history import History
from .loop import NonFiniteLossError, train, train_ensemble
from .tracking import TensorBoardLogger, TrackingLogger, WandbLogger

__all__ = ["AttentionSnapshots", "Callback", "Checkpoint", "CheckpointError", "EarlyStopping",
           "Ensemble", "History", "NonFiniteLossError", "Run", "TensorBoardLogger", "TrackingLogger",
           "TrainConfig", "TwoStageHistory", "WandbLogger",
           "load_checkpoint", "save_checkpoint", "train", "train_ensemble", "train_two_stage"]
