"""Pretrained causal language models as TransformerLens models, loaded offline-safe.

:func:`load_lm` reads a local folder written by Hugging Face ``save_pretrained`` (or a hub
name already in the local Hugging Face cache) with ``local_files_only=True``: it never
touches the network. The result is the installed TL's model class, with the HF weights
unchanged so that its logits equal the HF model's:

* TL 4.x: ``TransformerBridge.boot_transformers(path, hf_model=..., tokenizer=...)``
  (raw HF weights, eager attention so hooks see the patterns);
* TL 2.x / 3.x: a ``HookedTransformer`` built from the folder's config, its weights
  loaded without LayerNorm folding or centring (``from_pretrained`` would fold and
  centre them, which shifts the logits).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..ops import as_float_dtype
from ._tl import TL_VERSION
from .standard import _uses_bridge

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")



@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """TL 3.x deprecates HookedTransformer and HF warns about generation settings: our
    own loading should not print either."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        yield


def _hf_model(name_or_path: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """The Hugging Face model and tokenizer (None when the folder has none), local only."""
    import transformers

    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            name_or_path, local_files_only=True, dtype=dtype, attn_implementation="eager")
    except OSError as error:
        if Path(name_or_path).is_dir():
            raise ValueError(f"{name_or_path!r} is a folder but not a saved causal LM "
                             f"(save_pretrained writes config.json and the weights): "
                             f"{str(error).splitlines()[0]}") from None
        raise ValueError(
            f"{name_or_path!r} is not available offline: it is neither a folder nor in the "
            f"local Hugging Face cache, and mechcausal never downloads. Get the weights "
            f"first on a machine with network access (huggingface-cli download "
            f"{name_or_path}, or AutoModelForCausalLM.from_pretrained(...).save_pretrained("
            f"folder)) and pass that folder") from None
    model.eval()
    tokenizer = None
    folder = Path(name_or_path)
    if not folder.is_dir() or any((folder / f).exists() for f in _TOKENIZER_FILES):
        with contextlib.suppress(OSError, ValueError):
            tokenizer = transformers.AutoTokenizer.from_pretrained(name_or_path,
                                                                   local_files_only=True)
    return model, tokenizer


def _folder_tl3_reads(name_or_path: str, scratch: str) -> str:
    """The folder as TL 3.x can read it: a neutral name (TL 3.x takes "llama" / "gemma" in
    a path for a hub name and ignores the folder's config) whose config.json has the
    ``n_ctx`` that TL 3.x's GPT-2 converter reads (transformers >= 5 no longer writes it).
    A hub name is returned as it is."""
    source = Path(name_or_path)
    if not source.is_dir():
        return name_or_path
    folder = Path(scratch) / "model"
    folder.mkdir()
    for item in source.iterdir():
        if item.name != "config.json":
            (folder / item.name).symlink_to(item.resolve())
    config = json.loads((source / "config.json").read_text())
    if "n_ctx" not in config and "n_positions" in config:
        config["n_ctx"] = config["n_positions"]
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def _hooked_transformer(name_or_path: str, hf_model: Any, tokenizer: Any,
                        device: str, dtype: torch.dtype) -> Any:
    """TL 2.x / 3.x: a HookedTransformer with the HF weights as they are."""
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    with tempfile.TemporaryDirectory() as scratch:
        folder = _folder_tl3_reads(name_or_path, scratch)
        cfg = loading.get_pretrained_model_config(folder, hf_cfg=hf_model.config.to_dict(),
                                                  fold_ln=False, device=device, dtype=dtype)
        model = HookedTransformer(cfg, tokenizer, move_to_device=True)
        state_dict = loading.get_pretrained_state_dict(folder, cfg, hf_model=hf_model,
                                                       dtype=dtype)
    model.load_and_process_state_dict(state_dict, fold_ln=False, center_writing_weights=False,
                                      center_unembed=False, fold_value_biases=False,
                                      refactor_factored_attn_matrices=False)
    return model


def load_lm(name_or_path: str | os.PathLike, device: str | torch.device | None = None,
            dtype: torch.dtype | str | None = None) -> Any:
    """A pretrained causal LM as a TL model (``TransformerBridge`` on TL 4.x,
    ``HookedTransformer`` on 2.x / 3.x), in eval mode, logits equal to the HF model's.

    Args:
        name_or_path: a folder written by ``save_pretrained`` (model, and the tokenizer
            if it has one), or a hub name already in the local Hugging Face cache.
        device: default ``"cpu"``.
        dtype: default float32.

    Raises:
        ValueError: the weights are not available offline (the message says how to get
            them), or the folder holds no causal LM.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be a hub name or a folder, got {name_or_path!r}")
    name_or_path = str(name_or_path)
    dtype = torch.float32 if dtype is None else as_float_dtype(dtype)
    device = "cpu" if device is None else str(device)
    with _quiet():
        hf_model, tokenizer = _hf_model(name_or_path, dtype)
        if not _uses_bridge():
            return _hooked_transformer(name_or_path, hf_model, tokenizer, device, dtype).eval()
        if tokenizer is None:
            raise ValueError(f"{name_or_path!r} has no tokenizer files; transformer-lens "
                             f"{TL_VERSION} needs one: save the tokenizer with "
                             f"tokenizer.save_pretrained into the same folder")
        from transformer_lens.model_bridge import TransformerBridge

        model = TransformerBridge.boot_transformers(name_or_path, hf_model=hf_model,
                                                    tokenizer=tokenizer, device=device,
                                                    dtype=dtype)
    return model.eval()
