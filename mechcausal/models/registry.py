"""Model kinds: how each kind of model the package builds or exports is recognised,
described, written down as a JSON-ready config and rebuilt from it.

Checkpoints, ``diagnose`` and the experiments dispatch through :data:`MODEL_KINDS`
instead of telling models apart themselves; a new kind is one
:func:`register_model_kind` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..ops import dtype_name, register
from . import standard
from .base import NativeModel
from .disentangled import DisentangledConfig, DisentangledTransformer
from .reduced import ReducedConfig, ReducedModel


@dataclass(frozen=True)
class ModelKind:
    """One kind of model.

    Attributes:
        name: stored in checkpoints (``"disentangled"``, ``"reduced"``,
            ``"transformer_lens"``).
        matches: whether a model is of this kind.
        config: the model's JSON-ready config, enough for ``build`` to rebuild its
            architecture.
        build: a model of that architecture (weights to be loaded) from ``config``.
        describe: a one-line description.
    """

    name: str
    matches: Callable[[nn.Module], bool]
    config: Callable[[Any], dict[str, Any]]
    build: Callable[[dict[str, Any]], nn.Module]
    describe: Callable[[Any], str]


MODEL_KINDS: dict[str, ModelKind] = {}


def register_model_kind(kind: ModelKind, replace: bool = False) -> ModelKind:
    """Add ``kind`` to :data:`MODEL_KINDS` (``replace=True`` overwrites one of the same
    name); kinds are tried in registration order."""
    return register(MODEL_KINDS, kind, ModelKind, "model kind", replace)


def model_kind(model: Any) -> ModelKind:
    """The registered kind of ``model``; TypeError naming the supported kinds."""
    for kind in MODEL_KINDS.values():
        if kind.matches(model):
            return kind
    raise TypeError(f"{type(model).__name__} is not a model kind mechcausal knows; "
                    f"supported: {', '.join(MODEL_KINDS)}")


def kind_named(name: Any) -> ModelKind:
    """The registered kind called ``name``; ValueError listing them."""
    if name not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {name!r}; registered: {', '.join(MODEL_KINDS)}")
    return MODEL_KINDS[name]


def describe_model(model: Any) -> str:
    """One line: the model's class and the sizes that tell it apart."""
    return model_kind(model).describe(model)


def _native_config(model: NativeModel) -> dict[str, Any]:
    """A native model's config, with the dtype its weights have now (``.to(dtype)``
    after construction leaves ``cfg.dtype`` behind)."""
    return {**model.cfg.to_dict(), "dtype": dtype_name(next(model.parameters()).dtype)}


def is_native(model: Any) -> bool:
    """A mechcausal model (block-structured weights, fast path), not a standard TL one."""
    return isinstance(model, NativeModel)


register_model_kind(ModelKind(
    "disentangled",
    lambda model: isinstance(model, DisentangledTransformer),
    _native_config,
    lambda config: DisentangledTransformer.from_config(DisentangledConfig.from_dict(config)),
    lambda model: (f"DisentangledTransformer(heads={model.cfg.heads}, "
                   f"readout={model.cfg.readout})"),
))
register_model_kind(ModelKind(
    "reduced",
    lambda model: isinstance(model, ReducedModel),
    _native_config,
    lambda config: ReducedModel.from_config(ReducedConfig.from_dict(config)),
    lambda model: "ReducedModel(A1, A2)",
))
register_model_kind(ModelKind(
    "transformer_lens",
    standard.is_tl_model,
    standard.architecture,
    standard.from_architecture,
    lambda model: (f"{type(model).__name__}(n_layers={model.cfg.n_layers}, "
                   f"n_heads={model.cfg.n_heads}, d_model={model.cfg.d_model}, "
                   f"attn_only={model.cfg.attn_only})"),
))
