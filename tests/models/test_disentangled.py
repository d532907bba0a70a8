"""DisentangledTransformer: the paper's formula, TL hooks, masking, fast path, errors."""

import pytest
import torch

import mechcausal as mc
from mechcausal.models._tl import ActivationCache
from mechcausal.models.fastpath import score_table, table_index, two_layer_last_stream
from mechcausal.models.pattern_mixing import exp_table_fits

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


def _loss_and_grads(model, logits, seed=0):
    target = torch.softmax(torch.randn(logits.shape, dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(seed)), -1)
    loss = -(target * torch.log_softmax(logits, -1)).sum(-1).mean()
    return loss, torch.autograd.grad(loss, list(model.parameters()))


def _assert_fast_equals_full(model, tokens, **fast_kwargs):
    fast_loss, fast_grads = _loss_and_grads(model, model.readout(
        two_layer_last_stream(model, tokens, **fast_kwargs)) if fast_kwargs else model(tokens))
    full_loss, full_grads = _loss_and_grads(model, model(tokens, all_positions=True)[:, -1])
    assert torch.allclose(fast_loss, full_loss, atol=1e-12)
    for a, b in zip(fast_grads, full_grads):
        assert torch.allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("heads", [(1, 1), (2, 1), (1, 2), (2, 3), (3, 2, 1)])
def test_fast_path_equals_hooked_path_in_values_and_gradients(heads):
    """The hook-free forward evaluates the last layer at the last query only (for two
    layers, with a hand-written backward); logits and every gradient equal the full
    path's to 1e-12 (float64)."""
    model = _model(heads=heads)
    _assert_fast_equals_full(model, _tokens(model))


@pytest.mark.parametrize("exp_table", [True, False])
def test_fast_path_both_exponentials_equal_hooked_path(exp_table):
    """Layer-1 exponentials taken once on the score table, or per gathered row: both
    exact. Shorter inputs than n_ctx leave the unused positions' gradient at zero."""
    model = _model(heads=(2, 2), scale=1.0)
    tokens = _tokens(model, length=5)
    _assert_fast_equals_full(model, tokens, exp_table=exp_table)
    loss = model(tokens).logsumexp(-1).sum()
    (grad_A1,) = torch.autograd.grad(loss, [model.blocks[0].attn.A])
    unused = model.cfg.d_vocab + 5
    assert grad_A1[:, :unused, :unused].abs().max() > 0
    assert grad_A1[:, unused:].abs().max() == 0 and grad_A1[:, :, unused:].abs().max() == 0


def test_second_derivatives_raise_on_the_fast_path_and_match_on_the_dense_path():
    """The hand-written backward is first order: create_graph=True through it raises
    (rather than returning a Hessian without the terms of the saved intermediates);
    the dense path's Hessian-vector product is symmetric as a Hessian must be."""
    model = _model(heads=(2, 1))
    tokens = _tokens(model)
    params = list(model.parameters())
    with pytest.raises(RuntimeError, match="first-order backward only"):
        torch.autograd.grad(model(tokens).logsumexp(-1).sum(), params, create_graph=True)
    u, v = ([torch.randn_like(p) for p in params] for _ in range(2))

    def hessian_vector(direction):
        loss = model(tokens, all_positions=True)[:, -1].logsumexp(-1).sum()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((g * d).sum() for g, d in zip(grads, direction))
        return torch.autograd.grad(dot, params)

    u_hv = sum((a * b).sum() for a, b in zip(u, hessian_vector(v)))
    v_hu = sum((a * b).sum() for a, b in zip(v, hessian_vector(u)))
    assert torch.allclose(u_hv, v_hu, atol=1e-10)


@pytest.mark.parametrize("S, L", [(10, 21), (300, 300)])
def test_table_index_addresses_each_query_key_pair(S, L):
    """The flat index of (x_q, q, x_k, k) in the [S, L, S, L] table, built in int32 when
    S L S L fits it and in int64 beyond (300 x 300: 8.1e9 entries)."""
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, S, (2, L), generator=gen)
    index = table_index(tokens, S)
    q = torch.arange(L).view(1, L, 1)
    k = torch.arange(L).view(1, 1, L)
    expected = ((tokens.unsqueeze(-1) * L + q) * S + tokens.unsqueeze(-2)) * L + k
    assert index.dtype == torch.long and torch.equal(index, expected)
    if S == 10:  # and it reads the score of that pair
        A = torch.randn(1, S + L, S + L, generator=gen)
        scores = score_table(A, S, L).reshape(-1)[index]
        h = torch.cat([torch.nn.functional.one_hot(tokens, S).float(),
                       torch.eye(L).expand(2, L, L)], dim=-1)
        assert torch.allclose(scores, h @ A[0] @ h.transpose(1, 2), atol=1e-5)


def test_exp_table_is_used_only_where_it_fits():
    """exp(table - group max) is taken once only when every row keeps a normal sum; a
    score spread beyond float32's range (~87 nats) falls back to per-row softmax, and
    the model's logits stay finite and equal to the dense path."""
    model = _model(dtype=torch.float32, scale=0.5)
    S, L = model.cfg.d_vocab, model.cfg.n_ctx
    A = model.blocks[0].attn.A
    assert bool(exp_table_fits(score_table(A.detach(), S, L)))
    with torch.no_grad():
        A[0, S + 3, S + 1] = 200.0  # query position 3 attends to key position 1
    table = score_table(A.detach(), S, L)
    assert not bool(exp_table_fits(table))
    assert bool(exp_table_fits(table.double()))  # float64 reaches ~700 nats
    tokens = _tokens(model)
    fast, full = model(tokens), model(tokens, all_positions=True)[:, -1]
    assert torch.isfinite(fast).all()
    assert torch.allclose(fast, full, atol=1e-5)


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
