"""Import shim over TransformerLens 2.x / 3.x / 4.x (see shared TL_NOTES)."""

from __future__ import annotations

import importlib.metadata
import warnings

with warnings.catch_warnings():
    # TransformerLens imports datasets -> tqdm.auto, which warns in any notebook kernel
    # without ipywidgets although nothing here draws a bar
    warnings.filterwarnings("ignore", message="IProgress not found")
    from transformer_lens.hook_points import HookPoint

try:  # 3.x and 4.x
    from transformer_lens import HookedRootModule
except ImportError:  # 2.x
    from transformer_lens.hook_points import HookedRootModule  # type: ignore[no-redef]

from transformer_lens import ActivationCache

TL_VERSION: str = importlib.metadata.version("transformer-lens")

__all__ = ["ActivationCache", "HookPoint", "HookedRootModule", "TL_VERSION"]
