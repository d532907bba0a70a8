"""The reduced model: exact embedding in the disentangled model; Algorithm 1."""

import pytest
import torch

import mechcausal as mc


def _random_reduced(vocab=6, n_ctx=9, seed=0, dtype=torch.float64):
    model = mc.ReducedModel(vocab, n_ctx, dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.A1.copy_(torch.randn(n_ctx, n_ctx, generator=gen, dtype=torch.float64) * 2)
        model.A2.copy_(torch.randn(vocab, vocab, generator=gen, dtype=torch.float64) * 2)
    return model


def _tokens(vocab, n_ctx, batch=16, seed=1):
    return torch.randint(0, vocab, (batch, n_ctx), generator=torch.Generator().manual_seed(seed))


def _paper_reduced(model, tokens):
    """f = X^T softmax(X~ A2 e_s), X~ = softmax(mask(A1)) X, for each sequence."""
    S = model.cfg.d_vocab
    out = []
    for seq in tokens:
        L = len(seq)
        X = torch.eye(S, dtype=torch.float64)[seq]
        mask = torch.triu(torch.full((L, L), float("-inf"), dtype=torch.float64), 1)
        X_tilde = torch.softmax(model.A1.detach()[:L, :L] + mask, dim=1) @ X
        f = X.T @ torch.softmax(X_tilde @ model.A2.detach()[:, seq[-1]], dim=0)
        out.append(torch.log((1 - model.cfg.smoothing) * f + model.cfg.smoothing / S))
    return torch.stack(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reduced_matches_formula_and_disentangled(seed):
    model = _random_reduced(seed=seed)
    tokens = _tokens(6, 9, seed=seed)
    assert torch.allclose(model(tokens), _paper_reduced(model, tokens), atol=1e-10)
    twin = model.to_disentangled()
    assert torch.allclose(twin(tokens), model(tokens), atol=1e-10)
    assert torch.allclose(twin(tokens, all_positions=True), model(tokens, all_positions=True),
                          atol=1e-10)
    _, ours = model.run_with_cache(tokens)
    _, theirs = twin.run_with_cache(tokens)
    for layer in (0, 1):
        name = f"blocks.{layer}.attn.hook_pattern"
        assert torch.allclose(ours[name], theirs[name], atol=1e-10), name


def test_reduced_to_disentangled_float32_within_1e6():
    model = _random_reduced(vocab=10, n_ctx=21, seed=5, dtype=torch.float32)
    tokens = _tokens(10, 21, batch=64, seed=5)
    probs = model(tokens).exp()
    assert torch.allclose(probs.sum(-1), torch.ones(64), atol=1e-5)
    assert (model.to_disentangled()(tokens).exp() - probs).abs().max() < 1e-6


def test_reduced_fast_path_gradients_equal_hooked_path():
    model = _random_reduced()
    tokens = _tokens(6, 9)
    fast = torch.autograd.grad(model(tokens).sum(), [model.A1, model.A2])
    full = torch.autograd.grad(model(tokens, all_positions=True)[:, -1].sum(),
                               [model.A1, model.A2])
    for a, b in zip(fast, full):
        assert torch.allclose(a, b, atol=1e-12)


def test_cache_names_and_two_stage_groups():
    model = mc.ReducedModel(4, 5, beta0=0.5)
    assert torch.equal(model.A2, 0.5 * torch.eye(4)) and (model.A1 == 0).all()
    _, cache = model.run_with_cache(torch.zeros(2, 5, dtype=torch.long))
    assert cache["blocks.0.attn.hook_pattern"].shape == (2, 1, 5, 5)
    assert cache["blocks.1.attn.hook_z"].shape == (2, 5, 1, 4)
    groups = model.stage_parameters()
    assert groups["stage1"][0] is model.A1 and groups["stage2"][0] is model.A2


def test_algorithm1_on_the_chain():
    """Stage 1 puts softmax(A1)[i, p(i)] >= 0.9 on every non-root row; after stage 2 the
    test loss is below the in-context unigram baseline."""
    task = mc.InContextTree(mc.CausalGraph.chain(20), vocab_size=10, alpha=0.1)
    model = mc.ReducedModel.for_task(task)
    stage = dict(batch_size=1024, optimizer="adam", lr=0.1, progress=False)
    result = mc.train_two_stage(model, task, mc.TrainConfig(steps=150, **stage),
                                mc.TrainConfig(steps=150, **stage), beta0=1.0)
    L = task.input_length
    masked = model.A1.detach().masked_fill(~torch.ones(L, L, dtype=torch.bool).tril(), -torch.inf)
    rows = torch.softmax(masked, dim=-1)
    on_parent = torch.tensor([rows[i, p].item() for p, i in task.graph.edges])
    assert on_parent.min() >= 0.9, on_parent
    final = result.stage2.final
    assert final["test_loss"] < final["unigram_loss"], final
    assert all(p.requires_grad for p in model.parameters())


def test_algorithm1_on_the_disentangled_model_moves_only_its_groups():
    task = mc.InContextTree(mc.CausalGraph.chain(6), vocab_size=4)
    model = mc.DisentangledTransformer.for_task(task, heads=(1, 1))
    model.init_two_stage(0.5)
    S, d1 = 4, model.cfg.widths[1]
    assert torch.equal(model.W_U[d1 : d1 + S], torch.eye(S))
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    mc.train(model, task, mc.TrainConfig(steps=5, batch_size=32, eval_samples=32, progress=False),
             parameters=model.stage_parameters()["stage1"])
    moved = {name for name, p in model.named_parameters() if not torch.equal(start[name], p)}
    assert moved == {"blocks.0.attn.A"}
