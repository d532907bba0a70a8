"""Checkpoints of standard TransformerLens models (the paper's Figure 8), next to the
native ones of :mod:`mechcausal.checkpoint`.

:func:`mechcausal.save_checkpoint` takes the native models only; a model built by
:func:`~mechcausal.models.standard_model` is saved here in the same payload layout
(weights, task, train config, history; ``torch.load(weights_only=True)``-safe) with
``model_class = "StandardTransformer"`` and the ``standard_model`` arguments read from
its ``cfg``, so it is rebuilt exactly on load. :func:`save_any` and :func:`load_any`
dispatch between the two formats.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from .checkpoint import (
    FORMAT_VERSION,
    MODEL_CLASSES,
    Checkpoint,
    atomic_save,
    checkpoint_payload,
    load_checkpoint,
    save_checkpoint,
)
from .config import TrainConfig
from .history import History
from .models import standard_model
from .tasks import task_from_dict

STANDARD_CLASS = "StandardTransformer"
# the standard_model() arguments that its cfg records under the same names
_STANDARD_FIELDS = ("n_layers", "n_heads", "d_model", "d_head", "attn_only", "d_mlp", "act_fn")


def _standard_arguments(model: torch.nn.Module) -> dict[str, Any]:
    """``standard_model`` keyword arguments that rebuild ``model``'s architecture."""
    cfg = model.cfg
    arguments = {name: getattr(cfg, name) for name in _STANDARD_FIELDS}
    arguments["seed"] = getattr(cfg, "seed", None) or 0
    return arguments


def save_any(path: str | Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` atomically: native models through
    :func:`~mechcausal.save_checkpoint`, anything else as a standard TL model."""
    model = checkpoint.model
    if type(model).__name__ in MODEL_CLASSES:
        return save_checkpoint(path, model, checkpoint.task, checkpoint.config,
                               checkpoint.history)
    if not hasattr(getattr(model, "cfg", None), "d_model"):
        raise TypeError(f"cannot checkpoint a {type(model).__name__}: expected a native "
                        f"model ({sorted(MODEL_CLASSES)}) or a standard_model() TL model")
    payload = checkpoint_payload(STANDARD_CLASS, _standard_arguments(model), model,
                                 checkpoint.task, checkpoint.config, checkpoint.history)
    return atomic_save(payload, path)


def load_any(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint of either format (see :func:`save_any`)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError):
        # torch's own message suggests weights_only=False, which a checkpoint never needs
        raise ValueError(f"{path} is not a mechcausal checkpoint: torch.load(weights_only="
                         f"True) cannot read it") from None
    if not isinstance(payload, dict) or payload.get("model_class") != STANDARD_CLASS:
        return load_checkpoint(path, device)
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {payload.get('format_version')!r}, "
                         f"this mechcausal reads {FORMAT_VERSION}")
    task = task_from_dict(payload["task"])
    model = standard_model(task, **payload["model_config"])
    model.load_state_dict(payload["state_dict"])
    if torch.device(device).type != "cpu":  # built on CPU; TL prints a line on every move
        model.to(device)
    config, history = payload["train_config"], payload["history"]
    return Checkpoint(
        model=model,
        task=task,
        config=TrainConfig.from_dict(config) if config is not None else None,
        history=History.from_dict(history) if history is not None else None,
    )
