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
import io
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..ops import as_float_dtype, check_device_available
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


# huggingface_hub reads these switches once, at import; both the environment (for code
# that reads it later) and the imported constants are held for the duration of a load.
_OFFLINE_ENVIRONMENT = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                        "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1"}
_OFFLINE_CONSTANTS = ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY",
                      "HF_HUB_DISABLE_UPDATE_CHECK")


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Hugging Face's offline and no-telemetry switches on, then restored: without them
    ``from_pretrained(..., local_files_only=True)`` still looks hosts up (huggingface_hub
    fetches a user-agent registry)."""
    saved_environment = {key: os.environ.get(key) for key in _OFFLINE_ENVIRONMENT}
    os.environ.update(_OFFLINE_ENVIRONMENT)
    try:
        from huggingface_hub import constants
    except ImportError:  # transformers without huggingface_hub: nothing else to switch
        constants = None
    saved_constants = {key: getattr(constants, key) for key in _OFFLINE_CONSTANTS
                       if hasattr(constants, key)}
    for key in saved_constants:
        setattr(constants, key, True)
    try:
        yield
    finally:
        for key, value in saved_constants.items():
            setattr(constants, key, value)
        for key, value in saved_environment.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _no_loading_bars() -> Iterator[None]:
    """transformers' weight-loading progress bars off, then as they were."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def _check_source(name_or_path: str) -> None:
    """One clear sentence for a path that cannot hold a saved causal LM."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        raise ValueError(f"name_or_path={name_or_path!r} is a file; load_lm needs the folder "
                         f"that save_pretrained wrote (config.json and the weights)")
    if path.is_dir() and not (path / "config.json").is_file():
        held = "tokenizer files only" if any((path / f).exists() for f in _TOKENIZER_FILES) \
            else "no config.json"
        raise ValueError(f"name_or_path={name_or_path!r} is a folder with {held}: not a saved "
                         f"causal LM (save_pretrained writes config.json and the weights)")


def _hf_model(name_or_path: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """The Hugging Face model and tokenizer (None when the folder has none), local only."""
    import transformers

    _check_source(name_or_path)
    is_folder = Path(name_or_path).expanduser().is_dir()
    if not is_folder and (name_or_path.startswith((".", "/", "~")) or
                          name_or_path.count("/") > 1 or os.sep in name_or_path.replace("/", "")):
        raise ValueError(f"name_or_path={name_or_path!r}: no such folder (a hub name is "
                         f"'organisation/model')")
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            name_or_path, local_files_only=True, dtype=dtype, attn_implementation="eager")
    except Exception as error:  # noqa: BLE001 - transformers raises many kinds; one sentence
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        if is_folder:
            raise ValueError(f"name_or_path={name_or_path!r} is a folder but not a causal LM "
                             f"that transformers can load offline: {reason}") from None
        raise ValueError(
            f"{name_or_path!r} is not available offline: it is neither a folder nor in the "
            f"local Hugging Face cache, and mechcausal never downloads. Get the weights "
            f"first on a machine with network access (huggingface-cli download "
            f"{name_or_path}, or AutoModelForCausalLM.from_pretrained(...).save_pretrained("
            f"folder)) and pass that folder") from None
    model.eval()
    tokenizer = None
    folder = Path(name_or_path).expanduser()
    if not is_folder or any((folder / f).exists() for f in _TOKENIZER_FILES):
        with contextlib.suppress(Exception):  # a model without a usable tokenizer loads
            tokenizer = transformers.AutoTokenizer.from_pretrained(name_or_path,
                                                                   local_files_only=True)
    return model, tokenizer


def _id_tokenizer(vocab_size: int) -> Any:
    """A tokenizer whose words are the ids themselves ("<0>" .. "<V-1>"), built in memory."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = {f"<{i}>": i for i in range(vocab_size)}
    core = Tokenizer(models.WordLevel(vocab=words, unk_token="<0>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<0>")


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
        inner = getattr(hf_model.config, "n_inner", None)
        if inner is not None and not cfg.attn_only:  # TL 3.x's GPT-2 reader takes 4 * d_model
            cfg.d_mlp = inner
        if tokenizer is None:  # else HookedTransformer loads one by the config's name
            cfg.tokenizer_name = None
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

    Nothing touches the network: Hugging Face's offline switches are held for the
    duration of the load (no download, no DNS lookup, no telemetry).

    Args:
        name_or_path: a folder written by ``save_pretrained`` (a tokenizer saved beside
            the weights is attached as ``model.tokenizer``; a weights-only folder loads
            without one: our tasks need only ids), or a hub name already in the local
            Hugging Face cache.
        device: a device this machine has (default ``"cpu"``).
        dtype: default float32.

    Raises:
        ValueError: the weights are not available offline (the message says how to get
            them), the path holds no causal LM, or ``device`` does not exist here.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be a hub name or a folder, got {name_or_path!r}")
    name_or_path = str(name_or_path)
    dtype = torch.float32 if dtype is None else as_float_dtype(dtype)
    device = str(check_device_available("cpu" if device is None else device))
    # transformers' loading bar and TL's "Moving model to device" line are not ours to show
    with _quiet(), offline(), contextlib.redirect_stdout(io.StringIO()), _no_loading_bars():
        hf_model, tokenizer = _hf_model(name_or_path, dtype)
        if not _uses_bridge():
            return _hooked_transformer(name_or_path, hf_model, tokenizer, device, dtype).eval()
        from transformer_lens.model_bridge import TransformerBridge

        # without a tokenizer the bridge tries to build one from the folder (and fails
        # for Llama): it gets a stand-in, dropped again, since ids are all we need
        stand_in = tokenizer or _id_tokenizer(hf_model.config.vocab_size)
        model = TransformerBridge.boot_transformers(name_or_path, hf_model=hf_model,
                                                    tokenizer=stand_in, device=device,
                                                    dtype=dtype)
        if tokenizer is None:
            model.tokenizer = None
        return model.to(device).eval()
