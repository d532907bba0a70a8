"""DisentangledTransformer: the paper's formula, TL hooks, masking, fast path, errors."""

import pytest
import torch

import mechcausal as mc
from mechcausal._tl import ActivationCache

pytestmark = pytest.mark.tl


def _model(vocab=5, n_ctx=7, heads=(1, 1), scale=0.5, seed=0, dtype=torch.float64):
    return mc.DisentangledTransformer(vocab, n_ctx, heads, init="normal", init_scale=scale,
                                      seed=seed, dtype=dtype)


def _tokens(model, batch=6, length=None, seed=0):
    length = length or model.cfg.n_ctx
    return torch.randint(0, model.cfg.d_vocab, (batch, length),
                         generator=torch.Generator().manual_seed(seed))


def _paper_forward(model, tokens):
    """h0 = [onehot(x); onehot(i)]; h <- [h; softmax(mask(h A h^T)) h for each head]."""
    S, n_ctx = model.cfg.d_vocab, model.cfg.n_ctx
    outs = []
    for seq in tokens:
        L = len(seq)
        h = torch.cat([torch.eye(S, dtype=torch.float64)[seq],
                       torch.eye(n_ctx, dtype=torch.float64)[:L]], dim=1)
        for block in model.blocks:
            heads = []
            for A in block.attn.A.detach():
                scores = h @ A @ h.T
                scores = scores + torch.triu(torch.full((L, L), float("-inf"),
                                                        dtype=torch.float64), diagonal=1)
                heads.append(torch.softmax(scores, dim=1) @ h)
            h = torch.cat([h] + heads, dim=1)
        outs.append(h[-1] @ model.W_U.detach())
    return torch.stack(outs)


@pytest.mark.parametrize("heads", [(1, 1), (2, 1), (3, 2, 1), (1,)])
def test_matches_paper_formula(heads):
    model = _model(heads=heads)
    tokens = _tokens(model)
    assert torch.allclose(model(tokens), _paper_forward(model, tokens), atol=1e-10)
    assert model.cfg.d_model == model.cfg.widths[-1] == 12 * torch.tensor(
        [1 + h for h in heads]).prod().item()


def test_shorter_inputs_use_leading_positions():
    model = _model()
    tokens = _tokens(model, length=4)
    assert torch.allclose(model(tokens), _paper_forward(model, tokens), atol=1e-10)


@pytest.mark.parametrize("heads", [(1, 1), (2, 1), (3, 2, 1)])
def test_fast_path_equals_hooked_path_in_values_and_gradients(heads):
    """The hook-free forward evaluates the last layer at the last query only; logits
    and every gradient equal the full path's to 1e-12 (float64)."""
    model = _model(heads=heads)
    tokens = _tokens(model)
    target = torch.softmax(torch.randn(tokens.shape[0], 5, dtype=torch.float64), -1)

    def loss_and_grads(logits):
        loss = -(target * torch.log_softmax(logits, -1)).sum(-1).mean()
        grads = torch.autograd.grad(loss, list(model.parameters()))
        return loss, grads

    fast_loss, fast_grads = loss_and_grads(model(tokens))
    full_loss, full_grads = loss_and_grads(model(tokens, all_positions=True)[:, -1])
    assert torch.allclose(fast_loss, full_loss, atol=1e-12)
    for a, b in zip(fast_grads, full_grads):
        assert torch.allclose(a, b, atol=1e-12)


def test_cache_keys_and_shapes_follow_tl_names():
    model = _model(heads=(2, 1))
    tokens = _tokens(model, batch=3)
    logits, cache = model.run_with_cache(tokens)
    assert isinstance(cache, ActivationCache)
    B, L, d0, d1 = 3, 7, 12, 36
    expected = {
        "hook_embed": (B, L, 5),
        "hook_pos_embed": (B, L, 7),
        "blocks.0.hook_resid_pre": (B, L, d0),
        "blocks.0.attn.hook_attn_scores": (B, 2, L, L),
        "blocks.0.attn.hook_pattern": (B, 2, L, L),
        "blocks.0.attn.hook_z": (B, L, 2, d0),
        "blocks.0.hook_attn_out": (B, L, 2 * d0),
        "blocks.0.hook_resid_post": (B, L, d1),
        "blocks.1.hook_resid_pre": (B, L, d1),
        "blocks.1.attn.hook_pattern": (B, 1, L, L),
        "blocks.1.attn.hook_z": (B, L, 1, d1),
        "blocks.1.hook_resid_post": (B, L, 2 * d1),
    }
    for name, shape in expected.items():
        assert tuple(cache[name].shape) == shape, name
    assert torch.isinf(cache["blocks.0.attn.hook_attn_scores"][0, 0, 0, 1])
    assert torch.allclose(cache["blocks.0.attn.hook_pattern"].sum(-1),
                          torch.ones(B, 2, L, dtype=torch.float64))
    assert torch.allclose(logits, model(tokens), atol=1e-12)
    assert not model.hooks_active()


def test_causal_masking_every_hook():
    """Changing tokens after position i leaves every hook at positions <= i unchanged."""
    model = _model(heads=(2, 1))
    tokens = _tokens(model, batch=4)
    _, clean = model.run_with_cache(tokens)
    for i in range(model.cfg.n_ctx - 1):
        changed = tokens.clone()
        changed[:, i + 1:] = (changed[:, i + 1:] + 1) % model.cfg.d_vocab
        _, cache = model.run_with_cache(changed)
        for name, value in clean.items():
            if "pattern" in name or "scores" in name:
                a, b = value[:, :, : i + 1, : i + 1], cache[name][:, :, : i + 1, : i + 1]
            else:
                a, b = value[:, : i + 1], cache[name][:, : i + 1]
            assert torch.equal(a, b), (name, i)
        assert not torch.equal(cache["hook_embed"], clean["hook_embed"])


def test_zero_ablating_a_head_changes_the_output():
    model = _model(heads=(2, 1))
    tokens = _tokens(model)

    def ablate_head_1(z, hook):
        z[:, :, 1] = 0.0
        return z

    clean = model(tokens)
    ablated = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", ablate_head_1)])
    assert (clean - ablated).abs().max() > 1e-3
    assert torch.allclose(model(tokens), clean)  # hooks removed afterwards


def test_A_block_order_and_slices():
    model = _model(heads=(2, 1))
    A = model.A(1, 0)
    assert A.shape == (36, 36)
    slices = model.block_slices(1)
    assert list(slices) == ["token", "position", "L0H0", "L0H1"]
    assert slices["L0H1"] == slice(24, 36)
    with pytest.raises(ValueError, match="head must be in 0..0 for layer 1, got 1"):
        model.A(1, 1)


def test_zero_init_and_all_positions():
    model = mc.DisentangledTransformer(4, 5)
    assert all((p == 0).all() for p in model.parameters())
    out = model(torch.zeros(2, 5, dtype=torch.long), all_positions=True)
    assert out.shape == (2, 5, 4)


def test_for_task_and_bad_inputs():
    task = mc.InContextTree(mc.CausalGraph.chain(6), vocab_size=4)
    model = mc.DisentangledTransformer.for_task(task)
    assert model.cfg.n_ctx == 7 and model.cfg.d_vocab == 4
    with pytest.raises(ValueError, match="contain 4, outside the vocabulary"):
        model(torch.tensor([[0, 1, 4]]))
    with pytest.raises(ValueError, match="8 positions; this model accepts 1..7"):
        model(torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="integer tensor"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="heads must be"):
        mc.DisentangledTransformer(4, 5, heads=(1, 0))
    with pytest.raises(ValueError, match="init must be"):
        mc.DisentangledTransformer(4, 5, init="xavier")
