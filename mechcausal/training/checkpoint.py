"""Checkpoints: one format for every model kind the package builds or exports.

A checkpoint file holds the model's kind and JSON config (see
:mod:`mechcausal.models.registry`), its weights, the task, the train config and the
history: tensors and JSON types only, so ``torch.load(weights_only=True)`` reads it and
nothing is guessed on load. Sizes are checked against the task on save and on load.
Files are written atomically (:func:`mechcausal.files.write_atomically`).

Layout (``FORMAT_VERSION`` 2)::

    {"format": "mechcausal-checkpoint", "format_version": 2,
     "model_kind": "disentangled" | "reduced" | "transformer_lens" | ...,
     "model_config": {...}, "state_dict": {...}, "task": {...},
     "train_config": {...} | None, "history": {...} | None,
     "versions": {"mechcausal": ..., "torch": ..., "transformer_lens": ...}}

Version-1 files (written before this layout, with ``model_class`` instead of
``model_kind``, standard TL models by their ``standard_model`` arguments) are read too.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.tasks import InContextTask, check_task, task_from_dict
from ..files import check_output_file, write_atomically
from ..models.base import check_sizes
from ..models.registry import kind_named, model_kind
from ..models.standard import tl_model_class
from ..ops import versions
from ..ops import check_device_available
from .config import TrainConfig
from .history import History

FORMAT = "mechcausal-checkpoint"
FORMAT_VERSION = 2
# version 1's model_class names, and the kinds they are now
_V1_CLASSES = {"DisentangledTransformer": "disentangled", "ReducedModel": "reduced"}


class CheckpointError(ValueError):
    """A file is not a readable mechcausal checkpoint, or does not fit together (a model
    whose sizes do not fit its task); the message names the path and what is wrong."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: ready-to-use model and task, and how they were trained."""

    model: torch.nn.Module
    task: InContextTask
    config: TrainConfig | None
    history: History | None


def checkpoint_payload(model: torch.nn.Module, task: InContextTask,
                       config: TrainConfig | None = None,
                       history: History | None = None) -> dict[str, Any]:
    """What a checkpoint file holds (see the module notes); TypeError for a model kind
    the registry does not know, ValueError when its sizes do not fit ``task``."""
    check_task(task)
    kind = model_kind(model)
    check_sizes(model, task, exact_vocabulary=task.answer_ids is None)
    if config is not None and not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig or None, got {type(config).__name__}")
    if history is not None and not isinstance(history, History):
        raise TypeError(f"history must be a History or None, got {type(history).__name__}")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_kind": kind.name,
        "model_config": kind.config(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "task": task.to_dict(),
        "train_config": config.to_dict() if config is not None else None,
        "history": history.to_dict() if history is not None else None,
        "versions": versions(),
    }


def save_checkpoint(path: str | Path, model: torch.nn.Module, task: InContextTask,
                    config: TrainConfig | None = None,
                    history: History | None = None) -> Path:
    """Write ``model`` (any registered kind: ``DisentangledTransformer``,
    ``ReducedModel``, an ensemble member, a standard or exported TL model), its task,
    config and history to ``path`` atomically; returns the path."""
    path = check_output_file(path, "path")
    payload = checkpoint_payload(model, task, config, history)
    return write_atomically(path, lambda handle: torch.save(payload, handle))


def _read(path: Path) -> dict[str, Any]:
    """The payload dict of ``path``; CheckpointError for anything else."""
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty (0 bytes)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch's unpickler fails on garbage in any
        # way (KeyError, EOFError, UnpicklingError, ...); its advice, weights_only=False,
        # is what a checkpoint never needs
        raise CheckpointError(f"{path} is not a readable mechcausal checkpoint (truncated, "
                              f"corrupt or another kind of file): {_detail(error)}") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} is not a mechcausal checkpoint: it holds a "
                              f"{type(payload).__name__}, not a checkpoint dict")
    version = payload.get("format_version")
    if version == 1 and "model_class" in payload:
        return _from_version_1(path, payload)
    if payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a mechcausal checkpoint (no "
                              f"'format': {FORMAT!r} entry; keys: {sorted(map(str, payload))[:8]})")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version!r}; this "
                              f"mechcausal reads versions 1 and {FORMAT_VERSION}")
    return payload


def _detail(error: BaseException, lines: int = 1) -> str:
    """The first ``lines`` lines of an error, without terminal colour codes; of torch's
    weights-only unpickler, only the cause it names (its advice is for other files)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
    shown = " ".join(line.strip() for line in text.splitlines()[:lines] if line.strip())
    return f"{type(error).__name__}: {shown[:300]}" if shown else type(error).__name__


def _from_version_1(path: Path, payload: dict[str, Any]) -> dict[str, Any]:
    """A version-1 payload in the version-2 layout."""
    name = payload["model_class"]
    config = payload.get("model_config")
    if name == "StandardTransformer":  # config: the standard_model() arguments
        try:
            task = task_from_dict(payload["task"])
            config = {**{field: config[field] for field in
                         ("n_layers", "n_heads", "d_model", "d_head", "attn_only", "d_mlp",
                          "act_fn")},
                      "n_ctx": task.input_length, "d_vocab": task.vocab_size,
                      "d_vocab_out": task.vocab_size, "normalization_type": None,
                      "use_attn_scale": True, "positional_embedding_type": "standard",
                      "dtype": "float32", "tl_class": tl_model_class()}
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{path}: a version-1 standard TL checkpoint with an "
                                  f"unreadable config ({error})") from None
        kind = "transformer_lens"
    elif name in _V1_CLASSES:
        kind = _V1_CLASSES[name]
    else:
        raise CheckpointError(f"{path}: unknown model class {name!r} in a version-1 file")
    return {**payload, "format": FORMAT, "format_version": FORMAT_VERSION,
            "model_kind": kind, "model_config": config}


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (or by ``mechcausal train``,
    ``reproduce``, ``mc.train(..., checkpoint=...)``), on ``device``.

    Raises:
        CheckpointError: the file is missing, empty, truncated, corrupt, of another
            format, or its parts do not fit together; the message names the path.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a path (str or os.PathLike), got {path!r}")
    check_device_available(device, "device")
    path = Path(path)
    payload = _read(path)
    try:
        task = task_from_dict(payload["task"])
        kind = kind_named(payload["model_kind"])
        if not isinstance(payload["model_config"], dict):
            raise ValueError(f"model_config must be a dict, got "
                             f"{type(payload['model_config']).__name__}")
        model = kind.build(payload["model_config"])
        check_sizes(model, task, exact_vocabulary=task.answer_ids is None)
        state = payload["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(f"state_dict must be a dict, got {type(state).__name__}")
        weights = {name for name, _ in model.named_parameters()}  # buffers may hold -inf
        for name, tensor in state.items():
            if (name in weights and isinstance(tensor, torch.Tensor)
                    and not bool(torch.isfinite(tensor).all())):
                raise ValueError(f"weight {name} holds NaN or infinite values")
        model.load_state_dict(state)
        config = payload.get("train_config")
        history = payload.get("history")
        config = TrainConfig.from_dict(config) if config is not None else None
        history = History.from_dict(history) if history is not None else None
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as error:
        if isinstance(error, KeyError):
            what = f"missing entry {error}"
        elif isinstance(error, RuntimeError):  # load_state_dict: the keys and shapes
            what = _detail(error, lines=3)
        else:
            what = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines()[0][:300]
        raise CheckpointError(f"{path}: {what}") from None
    if torch.device(device).type != "cpu":  # built on CPU; TL prints a line on every move
        model.to(device)
    return Checkpoint(model=model, task=task, config=config, history=history)
