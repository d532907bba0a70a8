"""Models: the disentangled transformer, the reduced model, standard TL models (the
exact export and learned-embedding transformers), and the registry of model kinds."""

from .base import NativeModel, WeightPanel, model_logits, model_probs
from .disentangled import DisentangledConfig, DisentangledTransformer
from .pretrained import load_lm
from .reduced import ReducedConfig, ReducedModel
from .registry import (
    MODEL_KINDS,
    ModelKind,
    describe_model,
    is_native,
    kind_named,
    model_kind,
    register_model_kind,
)
from .standard import hooked_transformer_config, standard_model, to_transformer_lens

__all__ = ["DisentangledConfig", "DisentangledTransformer", "MODEL_KINDS", "ModelKind",
           "NativeModel", "ReducedConfig", "ReducedModel", "WeightPanel", "describe_model",
           "hooked_transformer_config", "is_native", "kind_named", "load_lm", "model_kind",
           "model_logits",
           "model_probs", "register_model_kind", "standard_model", "to_transformer_lens"]
