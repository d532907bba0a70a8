"""Export to HookedTransformer / TransformerBridge: exactness on random sizes and weights,
TL's own caching and patching, padding heads, frozen biases, missing-TL errors, and
standard learned-embedding models."""

import random
import re
import sys
import types
import warnings
from functools import partial

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mechcausal.models._tl import TL_VERSION
from mechcausal.models.base import probability_log_output
from mechcausal.models.disentangled import DisentangledTransformer
from mechcausal.models.standard import hooked_transformer_config, standard_model, to_transformer_lens

pytestmark = pytest.mark.tl

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one intra-op thread is fastest, and on a busy 2-core
    machine torch's default pool spins (TL 4's patching test went from 0.2 s to 12 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """Max abs difference within the dtype's tolerance, relative to the values' size
    when they exceed 1 (random logits reach tens; float32 rounding scales with them)."""
    scale = max(1.0, expected.abs().max().item())
    error = (actual - expected).abs().max().item()
    assert error <= TOLERANCE[dtype] * scale, f"error {error:.3g} at scale {scale:.3g}"


def _model(vocab, n_ctx, heads, scale=0.5, seed=0, dtype=torch.float64, readout="softmax"):
    return DisentangledTransformer(vocab, n_ctx, heads, init="normal", init_scale=scale,
                                   seed=seed, dtype=dtype, readout=readout)


def _tokens(vocab, batch, length, seed=0):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def _is_bias(name: str) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return leaf == "bias" or leaf.startswith("b_")


# Layouts up to three layers whose final width is at most 24 x the embedding width
# (e.g. (3, 2, 1)); wider ones only slow the test down.
head_layouts = st.lists(st.integers(1, 3), min_size=1, max_size=3).map(tuple).filter(
    lambda heads: np.prod([1 + h for h in heads]) <= 24
)


@settings(max_examples=25, deadline=None)
@given(
    vocab=st.integers(2, 12),
    n_ctx=st.integers(2, 24),
    heads=head_layouts,
    scale=st.floats(0.01, 1.0),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    readout=st.sampled_from(["softmax", "probability"]),
    data=st.data(),
)
def test_export_matches_native_logits_and_patterns(vocab, n_ctx, heads, scale, seed, dtype,
                                                   readout, data):
    """Softmax readout: last-position logits equal; probability readout: the exported
    logits are the probabilities the native model takes the smoothed log of."""
    model = _model(vocab, n_ctx, heads, scale, seed, dtype, readout)
    exported = to_transformer_lens(model)
    assert all(p.dtype == dtype and p.device == model.blocks[0].attn.A.device
               for p in exported.parameters())
    length = data.draw(st.integers(1, n_ctx), label="length")
    tokens = _tokens(vocab, 3, length, seed)

    with torch.no_grad():
        native_logits, native_cache = model.run_with_cache(tokens)
        logits, cache = exported.run_with_cache(
            tokens, names_filter=lambda name: name.endswith("attn.hook_pattern")
        )
    assert logits.shape == (3, length, vocab)
    if readout == "probability":
        logits = probability_log_output(logits, model.cfg.smoothing)
    _assert_close(logits[:, -1], native_logits, dtype)
    for layer, n_real in enumerate(heads):
        name = f"blocks.{layer}.attn.hook_pattern"
        _assert_close(cache[name][:, :n_real], native_cache[name], dtype)


def _native_head_patching(model, corrupted, clean_cache, metric):
    """Patch each real head's ``hook_z`` [batch, pos, head, d_l] at one position with its
    clean value: [n_layers, pos, max heads], padding entries the unpatched metric."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    result = torch.full((n_layers, corrupted.shape[1], n_heads), metric(model(corrupted)).item(),
                        dtype=torch.float64)

    def patch(z, hook, pos, head):
        z[:, pos, head] = clean_cache[hook.name][:, pos, head]
        return z

    for layer, n_real in enumerate(model.cfg.heads):
        name = f"blocks.{layer}.attn.hook_z"
        for pos in range(corrupted.shape[1]):
            for head in range(n_real):
                hook = partial(patch, pos=pos, head=head)
                result[layer, pos, head] = metric(
                    model.run_with_hooks(corrupted, fwd_hooks=[(name, hook)])
                ).item()
    return result


@pytest.mark.parametrize("heads", [(1, 1), (2, 1), (3, 2, 1)])
def test_tl_cache_and_head_patching_agree_with_native(heads):
    from transformer_lens import patching

    model = _model(4, 5, heads, scale=1.0, seed=3)
    exported = to_transformer_lens(model).eval()  # TL 4.3's patching requires eval mode
    clean, corrupted = _tokens(4, 3, 5, seed=1), _tokens(4, 3, 5, seed=2)
    target = _tokens(4, 3, 1, seed=4)[:, 0]

    def metric(last_logits):  # [batch, S] -> mean log-probability of the target
        return last_logits.log_softmax(-1)[torch.arange(3), target].mean()

    _, clean_cache = exported.run_with_cache(clean)
    tl_result = patching.get_act_patch_attn_head_out_by_pos(
        exported, corrupted, clean_cache, lambda logits: metric(logits[:, -1])
    )
    _, native_clean_cache = model.run_with_cache(clean)
    native_result = _native_head_patching(model, corrupted, native_clean_cache, metric)
    assert tl_result.shape == (len(heads), 5, max(heads))
    _assert_close(tl_result.double(), native_result, torch.float32)


@pytest.mark.parametrize("heads", [(3, 1), (1, 2, 3)])
def test_padding_heads_have_zero_output(heads):
    model = _model(3, 4, heads, seed=5)
    exported = to_transformer_lens(model)
    tokens = _tokens(3, 2, 4)
    _, cache = exported.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_z"))
    padding = {layer: n_real for layer, n_real in enumerate(heads) if n_real < max(heads)}
    assert padding
    for layer, n_real in padding.items():
        assert torch.all(exported.blocks[layer].attn.W_O[n_real:] == 0)
        assert torch.all(cache[f"blocks.{layer}.attn.hook_z"][:, :, n_real:] == 0)

    def scramble_padding(z, hook, n_real):  # arbitrary values in padding heads only
        z[:, :, n_real:] = torch.randn_like(z[:, :, n_real:])
        return z

    hooks = [(f"blocks.{layer}.attn.hook_z", partial(scramble_padding, n_real=n_real))
             for layer, n_real in padding.items()]
    with torch.no_grad():
        assert torch.equal(exported.run_with_hooks(tokens, fwd_hooks=hooks), exported(tokens))


def test_biases_are_zero_and_frozen_weights_trainable():
    heads = (2, 1)
    exported = to_transformer_lens(_model(3, 4, heads))
    frozen = [name for name, p in exported.named_parameters() if not p.requires_grad]
    assert frozen == [name for name, _ in exported.named_parameters() if _is_bias(name)]
    assert len(frozen) >= 4 * len(heads)  # b_Q, b_K, b_V, b_O per layer (+ b_U on TL<4)
    for name, value in exported.state_dict().items():
        if _is_bias(name):
            assert torch.all(value == 0), name


def test_config_fields_and_dtype():
    model = _model(5, 7, (3, 2, 1), dtype=torch.float32)
    cfg = hooked_transformer_config(model)
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head) == (3, 3, 288, 144)
    assert (cfg.d_vocab, cfg.d_vocab_out, cfg.n_ctx) == (5, 5, 7)
    assert cfg.attn_only and cfg.normalization_type is None
    assert cfg.dtype == torch.float32 and str(cfg.device) == "cpu"
    with pytest.raises(TypeError, match="DisentangledTransformer"):
        hooked_transformer_config(torch.nn.Linear(2, 2))


def test_export_emits_no_deprecation_warning():
    model = _model(3, 4, (1, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        to_transformer_lens(model)


def test_missing_tl_classes_raise_naming_the_version(monkeypatch):
    """A TL with neither class: ``from transformer_lens import HookedTransformer`` and
    ``import transformer_lens.model_bridge`` both fail. The cached submodules go too:
    ``from package import name`` falls back to ``sys.modules["package.name"]``, which on
    TL 3.x is the module ``transformer_lens.HookedTransformer``."""
    model = _model(3, 4, (1, 1))
    monkeypatch.setitem(sys.modules, "transformer_lens", types.ModuleType("transformer_lens"))
    for cached in ("transformer_lens.HookedTransformer", "transformer_lens.model_bridge"):
        monkeypatch.delitem(sys.modules, cached, raising=False)
    for build in (to_transformer_lens, hooked_transformer_config):
        with pytest.raises(ImportError, match=re.escape(f"transformer-lens {TL_VERSION}")):
            build(model)
    with pytest.raises(ImportError, match=re.escape(TL_VERSION)):
        standard_model(types.SimpleNamespace(vocab_size=3, input_length=4))


TASK = types.SimpleNamespace(vocab_size=5, input_length=9)


@pytest.mark.parametrize("attn_only", [True, False])
def test_standard_model_builds_runs_and_trains(attn_only):
    model = standard_model(TASK, n_layers=2, n_heads=2, d_model=16, attn_only=attn_only)
    assert (model.cfg.d_vocab, model.cfg.n_ctx, model.cfg.n_heads) == (5, 9, 2)
    assert bool(model.cfg.attn_only) == attn_only
    tokens = _tokens(5, 3, 9)
    logits, cache = model.run_with_cache(tokens, names_filter="blocks.0.attn.hook_pattern")
    assert logits.shape == (3, 9, 5)
    pattern = cache["blocks.0.attn.hook_pattern"]
    assert pattern.shape == (3, 2, 9, 9)
    assert torch.allclose(pattern.sum(-1), torch.ones(3, 2, 9))
    assert torch.all(pattern.triu(1) == 0)
    params = dict(model.named_parameters())
    assert all(p.requires_grad for p in params.values())
    model(tokens).logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in params.values())
    assert any("mlp" in name for name in params) != attn_only


def test_standard_model_seeding_leaves_caller_rng_alone():
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    first = standard_model(TASK, d_model=8, seed=1)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])
    same = standard_model(TASK, d_model=8, seed=1)
    other = standard_model(TASK, d_model=8, seed=2)
    for (name, a), b in zip(first.named_parameters(), same.parameters()):
        assert torch.equal(a, b), name
    assert not all(torch.equal(a, c) for a, c in zip(first.parameters(), other.parameters()))


def test_standard_model_rejects_bad_sizes():
    with pytest.raises(ValueError, match="divisible"):
        standard_model(TASK, n_heads=3, d_model=16)
    with pytest.raises(ValueError, match="task.vocab_size"):
        standard_model(types.SimpleNamespace(vocab_size=0, input_length=4))
