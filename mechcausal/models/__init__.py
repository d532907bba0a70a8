"""Models: the disentangled transformer, the reduced model (and the TL export)."""

from .base import NativeModel
from .disentangled import DisentangledConfig, DisentangledTransformer
from .reduced import ReducedConfig, ReducedModel

__all__ = ["DisentangledConfig", "DisentangledTransformer", "NativeModel", "ReducedConfig",
           "ReducedModel"]
