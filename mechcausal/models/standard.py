"""Standard TransformerLens models: the exact export of a disentangled transformer, and
learned-embedding transformers for the paper's Figure 8 comparison.

The model class is whichever the installed TransformerLens has: ``HookedTransformer``
on 2.x / 3.x, ``TransformerBridge.boot_native`` on 4.x (which removed
``HookedTransformer``). Both expose ``cfg``, ``run_with_cache``, ``run_with_hooks`` and
the TL hook names (``blocks.{l}.attn.hook_pattern`` [batch, head, query, key],
``blocks.{l}.attn.hook_z`` [batch, pos, head, d_head], ...).

Export layout (``to_transformer_lens``). The disentangled stream is a concatenation,
so it embeds into one stream of the final width ``D = widths[-1]``: coordinates
``[0, S)`` hold the one-hot token, ``[S, S + n_ctx)`` the one-hot position, and head
``h`` of layer ``l`` (input width ``d_l = widths[l]``) writes its output into
``[d_l (1 + h), d_l (2 + h))``, a block that is zero until then. Per head, with
``d_head = widths[-2]`` (the widest layer input) and every matrix zero outside the
blocks named here:

* ``W_Q[h][:d_l, :d_l] = A_h``, ``W_K[h][:d_l, :d_l] = I``, so ``q . k = x A_h y^T``
  on the layer's input block, unscaled;
* ``W_V[h][:d_l, :d_l] = I`` (the value is the whole input block) and
  ``W_O[h][:d_l, d_l (1 + h) : d_l (2 + h)] = I``;
* ``W_U`` is the readout (for ``readout="probability"``, the selector of the block the
  native model reads as probabilities); every bias is zero and frozen; no LayerNorm.

Layers with fewer than ``n_heads = max(heads)`` heads get all-zero padding heads: their
pattern is uniform and their output is zero.
"""

from __future__ import annotations

import contextlib
import random
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ..ops import as_float_dtype, check_positive_int, dtype_name
from ._tl import TL_VERSION
from .disentangled import DisentangledTransformer

__all__ = ["hooked_transformer_config", "standard_model", "to_transformer_lens"]

# HookedTransformer (TL 2.x/3.x) or TransformerBridge (TL 4.x); not imported at module
# level because which one exists depends on the installed TL.
TLModel = Any
TLConfig = Any


# ---------------------------------------------------------------------- TL backend
def _uses_bridge() -> bool:
    """False when TL has ``HookedTransformer`` (2.x/3.x), True when it only has
    ``TransformerBridge.boot_native`` (4.x); ImportError naming the version otherwise."""
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        pass
    else:
        return False
    try:
        from transformer_lens.model_bridge import TransformerBridge

        has_boot_native = hasattr(TransformerBridge, "boot_native")
    except ImportError:
        has_boot_native = False
    if not has_boot_native:
        raise ImportError(
            f"transformer-lens {TL_VERSION} has neither HookedTransformer (2.x/3.x) nor "
            f"TransformerBridge.boot_native (4.x); install transformer-lens>=2.18,<5"
        )
    return True


@contextlib.contextmanager
def _caller_rng_untouched() -> Iterator[None]:
    """Restore the global torch (CPU), ``random`` and numpy RNG states afterwards:
    building a TL model must not reseed or advance the caller's streams (TL<4 seeds
    all three; unseeded construction draws from torch's)."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def _make_config(device: torch.device | str, dtype: torch.dtype, **fields: Any) -> TLConfig:
    """A ``HookedTransformerConfig`` (TL<4) or ``TransformerBridgeConfig`` (TL 4) from
    field names the two share. The device is always explicit: both default to CUDA
    when it is available."""
    if _uses_bridge():
        from transformer_lens.config import TransformerBridgeConfig

        return TransformerBridgeConfig(
            **fields, tokenizer_prepends_bos=False, device=str(device), dtype=dtype
        )
    from transformer_lens import HookedTransformerConfig

    # seed in a HookedTransformerConfig seeds torch, random and numpy globally at once.
    with _caller_rng_untouched():
        return HookedTransformerConfig(
            **fields, default_prepend_bos=False, device=str(device), dtype=dtype
        )


def _build(cfg: TLConfig) -> TLModel:
    """Construct the model for ``cfg``; no tokenizer, no download."""
    with _caller_rng_untouched(), warnings.catch_warnings():
        # TL 3.x deprecates HookedTransformer; our own construction should not warn.
        warnings.filterwarnings(
            "ignore", message="HookedTransformer is deprecated", category=DeprecationWarning
        )
        if _uses_bridge():
            from transformer_lens.model_bridge import TransformerBridge

            return TransformerBridge.boot_native(cfg, device=cfg.device, dtype=cfg.dtype)
        from transformer_lens import HookedTransformer

        return HookedTransformer(cfg)


def _load_tl_state_dict(tl_model: TLModel, state_dict: dict[str, torch.Tensor]) -> None:
    """Load a state dict with HookedTransformer keys and shapes (``blocks.0.attn.W_Q``
    [H, D, d_head], ...) into either model class; strict: every weight is set."""
    if _uses_bridge():
        from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint

        tl_model.load_state_dict(convert_tl_checkpoint(state_dict, tl_model.cfg), strict=True)
    else:
        # Buffers (causal masks) keep their own values.
        tl_model.load_state_dict({**tl_model.state_dict(), **state_dict}, strict=True)


def _score_divisor(tl_model: TLModel) -> float:
    """What the model divides q . k by. 1 on TL<4 (``use_attn_scale=False``); TL 4.3's
    native attention ignores ``use_attn_scale=False`` and divides by sqrt(d_head), so
    read the divisor its attention module actually uses."""
    if not _uses_bridge():
        return 1.0
    return float(tl_model.blocks[0].attn.original_component.scale)


# ---------------------------------------------------------------------- export
def hooked_transformer_config(model: DisentangledTransformer) -> TLConfig:
    """Config of the exact attention-only export of ``model`` (see module docstring):
    ``HookedTransformerConfig`` on TL 2.x/3.x, ``TransformerBridgeConfig`` on TL 4.x.

    d_model = widths[-1], d_head = widths[-2], n_heads = max(heads), attention-only, no
    LayerNorm, unscaled scores (as configured; see ``to_transformer_lens`` for TL 4),
    standard position embeddings (they hold the one-hot position block), the model's
    dtype and device, no tokenizer."""
    if not isinstance(model, DisentangledTransformer):
        raise TypeError(f"expected a DisentangledTransformer, got {type(model).__name__}")
    cfg, weight = model.cfg, model.blocks[0].attn.A
    return _make_config(
        weight.device,
        weight.dtype,
        n_layers=cfg.n_layers,
        d_model=cfg.d_model,
        d_head=cfg.d_head,
        n_heads=cfg.n_heads,
        n_ctx=cfg.n_ctx,
        d_vocab=cfg.d_vocab,
        d_vocab_out=cfg.d_vocab,
        attn_only=True,
        normalization_type=None,
        use_attn_scale=False,
        positional_embedding_type="standard",
        act_fn=None,
        init_weights=False,  # every weight is overwritten
        model_name="disentangled-export",
    )


def _export_state_dict(
    model: DisentangledTransformer, query_scale: float
) -> dict[str, torch.Tensor]:
    """The block-structured weights in HookedTransformer format (see module docstring).

    Shapes with H = n_heads, D = d_model: ``embed.W_E`` [S, D], ``pos_embed.W_pos``
    [n_ctx, D], ``blocks.{l}.attn.W_Q/W_K/W_V`` [H, D, d_head], ``W_O`` [H, d_head, D],
    ``b_Q/b_K/b_V`` [H, d_head], ``b_O`` [D], ``unembed.W_U`` [D, S], ``b_U`` [S].
    ``query_scale`` multiplies W_Q to cancel a score divisor the model applies."""
    cfg = model.cfg
    S, n_ctx, D, d_head, H = cfg.d_vocab, cfg.n_ctx, cfg.d_model, cfg.d_head, cfg.n_heads
    like = {"dtype": model.blocks[0].attn.A.dtype, "device": model.blocks[0].attn.A.device}
    eye = torch.eye(max(S, n_ctx, d_head), **like)

    state = {
        "embed.W_E": torch.zeros(S, D, **like),
        "pos_embed.W_pos": torch.zeros(n_ctx, D, **like),
        "unembed.W_U": torch.zeros(D, S, **like),
        "unembed.b_U": torch.zeros(S, **like),
    }
    state["embed.W_E"][:, :S] = eye[:S, :S]
    state["pos_embed.W_pos"][:, S : S + n_ctx] = eye[:n_ctx, :n_ctx]
    if model.W_U is not None:
        state["unembed.W_U"].copy_(model.W_U.detach())
    else:  # probability readout: select the last layer's first-head token block
        start = cfg.widths[-2]
        state["unembed.W_U"][start : start + S] = eye[:S, :S]

    for layer, (n_real, d_in) in enumerate(zip(cfg.heads, cfg.widths)):
        W_Q, W_K, W_V = (torch.zeros(H, D, d_head, **like) for _ in range(3))
        W_O = torch.zeros(H, d_head, D, **like)
        A = model.blocks[layer].attn.A.detach()  # [n_real, d_in, d_in]
        W_Q[:n_real, :d_in, :d_in] = A * query_scale
        W_K[:n_real, :d_in, :d_in] = eye[:d_in, :d_in]
        W_V[:n_real, :d_in, :d_in] = eye[:d_in, :d_in]
        for head in range(n_real):
            start = d_in * (1 + head)
            W_O[head, :d_in, start : start + d_in] = eye[:d_in, :d_in]
        prefix = f"blocks.{layer}.attn."
        state |= {
            prefix + "W_Q": W_Q, prefix + "W_K": W_K, prefix + "W_V": W_V, prefix + "W_O": W_O,
            prefix + "b_Q": torch.zeros(H, d_head, **like),
            prefix + "b_K": torch.zeros(H, d_head, **like),
            prefix + "b_V": torch.zeros(H, d_head, **like),
            prefix + "b_O": torch.zeros(D, **like),
        }
    return state


def _is_bias(name: str) -> bool:
    """HookedTransformer names biases ``b_*``; the bridge's wrapped linears ``*.bias``."""
    leaf = name.rsplit(".", 1)[-1]
    return leaf == "bias" or leaf.startswith("b_")


def to_transformer_lens(model: DisentangledTransformer) -> TLModel:
    """Exact export of a disentangled transformer to a standard TL model.

    Returns a ``HookedTransformer`` (TL 2.x/3.x) or a ``TransformerBridge`` built by
    ``boot_native`` (TL 4.x), attention-only, on ``model``'s dtype and device. For
    tokens [B, L] (L <= n_ctx) its logits [B, L, S] at the last position equal
    ``model(tokens)`` [B, S], and ``blocks.{l}.attn.hook_pattern`` [B, n_heads, L, L]
    restricted to the first ``heads[l]`` heads equals the native one. With
    ``readout="probability"`` the readout is no matrix: the exported logits are the
    probabilities the native model reads (the last layer's first-head token block), and
    ``probability_log_output(logits, model.cfg.smoothing)`` (``models.base``) equals
    its output. Weights are copies (training either model leaves the other alone);
    biases are zero and frozen (``requires_grad=False``).

    On TL 4.x ``W_Q`` holds ``A * sqrt(d_head)``, cancelling the scaling that
    ``boot_native`` applies regardless of ``use_attn_scale``; ``hook_attn_scores``
    there holds the post-softmax pattern (read ``hook_pattern``), and TL's patching
    functions need ``.eval()`` first."""
    tl_model = _build(hooked_transformer_config(model))
    state_dict = _export_state_dict(model, query_scale=_score_divisor(tl_model))
    _load_tl_state_dict(tl_model, state_dict)
    for name, param in tl_model.named_parameters():
        if _is_bias(name):
            param.requires_grad_(False)
    return tl_model


# ---------------------------------------------------------------------- standard models
def standard_model(
    task: Any,
    n_layers: int = 2,
    n_heads: int = 1,
    d_model: int = 64,
    d_head: int | None = None,
    attn_only: bool = True,
    d_mlp: int | None = None,
    seed: int = 0,
    act_fn: str = "relu",
) -> TLModel:
    """A randomly initialised standard transformer for an in-context task.

    A ``HookedTransformer`` (TL 2.x/3.x) or ``TransformerBridge.boot_native`` model
    (TL 4.x) with learned token and position embeddings, ``d_vocab = d_vocab_out =
    task.vocab_size``, ``n_ctx = task.input_length``, attention-only or (``attn_only=
    False``) with ``act_fn`` MLPs of width ``d_mlp`` (default 4 d_model), as in the
    paper's Figure 8. No LayerNorm (``normalization_type=None``), like the official
    Figure 8 model; scores are scaled by 1/sqrt(d_head) (TL's default, the only
    behaviour of TL 4.3). TL's default init, seeded by ``seed`` without touching the
    caller's global RNGs; CPU, float32, no tokenizer. ``model(tokens)`` with tokens
    [B, L] returns logits [B, L, d_vocab]; all parameters are trainable.

    Args:
        task: anything with int ``model_vocab_size`` (or ``vocab_size``) and
            ``input_length`` (only these are read): a task, or a task written in an LM's
            vocabulary (then the model's vocabulary holds every id up to the largest).
        d_head: per-head width; default ``d_model // n_heads``.
    """
    vocab_size = getattr(task, "model_vocab_size", getattr(task, "vocab_size", None))
    n_ctx = getattr(task, "input_length", None)
    for name, value in {"task.vocab_size": vocab_size, "task.input_length": n_ctx,
                        "n_layers": n_layers, "n_heads": n_heads, "d_model": d_model}.items():
        check_positive_int(value, name)
    if d_head is None:
        if d_model % n_heads:
            raise ValueError(
                f"d_model={d_model} is not divisible by n_heads={n_heads}; pass d_head"
            )
        d_head = d_model // n_heads
    cfg = _make_config(
        "cpu",
        torch.float32,
        n_layers=n_layers,
        d_model=d_model,
        d_head=d_head,
        n_heads=n_heads,
        n_ctx=n_ctx,
        d_vocab=vocab_size,
        d_vocab_out=vocab_size,
        attn_only=attn_only,
        d_mlp=d_mlp if d_mlp is not None else 4 * d_model,
        act_fn=act_fn,
        normalization_type=None,
        positional_embedding_type="standard",
        seed=seed,
        init_weights=True,
        model_name="standard",
    )
    return _build(cfg)


# ---------------------------------------------------------------------- rebuilding
# The cfg fields that fix a standard TL model's architecture (its weights aside); both
# HookedTransformerConfig and TransformerBridgeConfig have them.
ARCHITECTURE_FIELDS = ("n_layers", "d_model", "d_head", "n_heads", "n_ctx", "d_vocab",
                       "d_vocab_out", "attn_only", "d_mlp", "act_fn", "normalization_type",
                       "use_attn_scale", "positional_embedding_type")


def tl_model_class() -> str:
    """``"TransformerBridge"`` (TL 4.x) or ``"HookedTransformer"`` (TL 2.x / 3.x)."""
    return "TransformerBridge" if _uses_bridge() else "HookedTransformer"


def is_tl_model(model: Any) -> bool:
    """Whether ``model`` is a model of the installed TL's class (standard or exported)."""
    if _uses_bridge():
        from transformer_lens.model_bridge import TransformerBridge as model_class
    else:
        from transformer_lens import HookedTransformer as model_class
    return isinstance(model, model_class)


def architecture(model: TLModel) -> dict[str, Any]:
    """JSON-ready description that :func:`from_architecture` rebuilds ``model``'s
    architecture from: :data:`ARCHITECTURE_FIELDS`, the dtype and the TL model class."""
    fields = {name: getattr(model.cfg, name) for name in ARCHITECTURE_FIELDS}
    dtype = next(model.parameters()).dtype
    return {**fields, "dtype": dtype_name(dtype), "tl_class": tl_model_class()}


def from_architecture(description: dict[str, Any]) -> TLModel:
    """A model of :func:`architecture`'s description on CPU, weights uninitialised (to be
    loaded). ValueError when it was written by another TL model class: the two classes
    name and shape their weights differently."""
    saved = description.get("tl_class")
    if saved != tl_model_class():
        raise ValueError(f"the model is a {saved} (saved with transformer-lens "
                         f"{'4.x' if saved == 'TransformerBridge' else '2.x/3.x'}); this "
                         f"environment has transformer-lens {TL_VERSION}, whose models are "
                         f"{tl_model_class()}s")
    fields = {name: description[name] for name in ARCHITECTURE_FIELDS}
    return _build(_make_config("cpu", as_float_dtype(description["dtype"]), **fields,
                               init_weights=False, model_name="standard"))


class _FinalResidualReached(Exception):
    """Raised by a hook to end a forward pass once the last residual stream is known."""


def last_position_logits(model: TLModel, tokens: torch.Tensor,
                         fwd_hooks: Sequence[tuple[str, Any]] = ()) -> torch.Tensor:
    """A TL model's logits at the last position only, [B, d_vocab_out], with
    ``fwd_hooks`` active: the final residual stream is read at its last position and
    unembedded there, so a large vocabulary costs one row per sequence, not [B, L, V]
    (4096 sequences of 21 tokens of GPT-2 would be 17 GB of logits)."""
    name = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    final = {}

    def keep(resid: torch.Tensor, hook: Any) -> None:
        final["resid"] = resid[:, -1:]
        raise _FinalResidualReached

    try:
        model.run_with_hooks(tokens, fwd_hooks=[*fwd_hooks, (name, keep)])
    except _FinalResidualReached:
        pass
    final_norm = getattr(model, "ln_final", None)  # absent without normalisation (TL 3.x)
    resid = final["resid"] if final_norm is None else final_norm(final["resid"])
    return model.unembed(resid)[:, -1]
