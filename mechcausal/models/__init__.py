"""Models: the disentangled transformer, the reduced model (and the TL export)."""

from .base import NativeModel
from .disentangled import DisentangledConfig, DisentangledTransformer
from .hooked import hooked_transformer_config, standard_model, to_transformer_lens
from .reduced import ReducedConfig, ReducedModel

__all__ = ["DisentangledConfig", "DisentangledTransformer", "NativeModel", "ReducedConfig",
           "ReducedModel", "hooked_transformer_config", "standard_model", "to_transformer_lens"]
