"""Models: the disentangled transformer (and, later, the reduced model and TL export)."""

from .disentangled import DisentangledConfig, DisentangledTransformer

__all__ = ["DisentangledConfig", "DisentangledTransformer"]
