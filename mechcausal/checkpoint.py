"""Checkpoints: weights + model config + task + train config + history, one file.

Written atomically (temporary file in the same folder, then ``os.replace``), and
loadable with ``torch.load(weights_only=True)``: nothing but tensors and JSON types.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import TrainConfig
from .history import History
from .models import DisentangledTransformer, ReducedModel
from .tasks import InContextTask, task_from_dict

FORMAT_VERSION = 1
MODEL_CLASSES: dict[str, Any] = {
    "DisentangledTransformer": DisentangledTransformer,
    "ReducedModel": ReducedModel,
}


@dataclass
class Checkpoint:
    """A loaded checkpoint: ready-to-use model and task, and how they were trained."""

    model: torch.nn.Module
    task: InContextTask
    config: TrainConfig | None
    history: History | None


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` without ever leaving a half-written file there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def checkpoint_payload(model_class: str, model_config: dict[str, Any],
                       model: torch.nn.Module, task: InContextTask,
                       config: TrainConfig | None, history: History | None) -> dict[str, Any]:
    """The dict a checkpoint file holds: tensors and JSON types only."""
    return {
        "format_version": FORMAT_VERSION,
        "model_class": model_class,
        "model_config": model_config,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "task": task.to_dict(),
        "train_config": config.to_dict() if config is not None else None,
        "history": history.to_dict() if history is not None else None,
    }


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    task: InContextTask,
    config: TrainConfig | None = None,
    history: History | None = None,
) -> Path:
    """Write a checkpoint atomically; returns its path."""
    name = type(model).__name__
    if name not in MODEL_CLASSES:
        raise TypeError(f"cannot checkpoint a {name}; supported: {sorted(MODEL_CLASSES)}")
    payload = checkpoint_payload(name, model.cfg.to_dict(), model, task, config, history)
    return atomic_save(payload, path)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`."""
    payload = torch.load(Path(path), map_location=device, weights_only=True)
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {version!r}, this mechcausal reads {FORMAT_VERSION}")
    cls = MODEL_CLASSES.get(payload["model_class"])
    if cls is None:
        raise ValueError(f"{path}: unknown model class {payload['model_class']!r}")
    model = cls.from_config(cls.config_class.from_dict(payload["model_config"]))
    model.load_state_dict(payload["state_dict"])
    model.to(device)
    config = payload["train_config"]
    history = payload["history"]
    return Checkpoint(
        model=model,
        task=task_from_dict(payload["task"]),
        config=TrainConfig.from_dict(config) if config is not None else None,
        history=History.from_dict(history) if history is not None else None,
    )
