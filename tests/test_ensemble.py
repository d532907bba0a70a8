"""Ensembles: stacked members equal independent models; stacked sampling law."""

import math

import torch

import mechcausal as mc
from mechcausal.ensemble import Ensemble, train_ensemble
from mechcausal.tasks import sample_stacked


def _tasks():
    return [mc.InContextTree(mc.CausalGraph.random_forest(8, seed=s), 3, 0.3) for s in range(3)]


def test_stacked_sampling_follows_each_graph():
    n = 20_000
    tasks = _tasks()
    batch = sample_stacked(tasks, n, torch.Generator().manual_seed(0))
    assert batch.tokens.shape == (3, n, 9) and batch.target.shape == (3, n, 3)
    rows = torch.arange(n)
    for k, task in enumerate(tasks):
        pi, tokens = batch.pi[k].double(), batch.tokens[k]
        mu = mc.markov.stationary_distribution(pi)
        for i, parents in enumerate(task.graph.parents):
            law = mu if not parents else pi[rows, tokens[:, parents[0]]]
            residual = torch.nn.functional.one_hot(tokens[:, i], 3).double() - law
            assert residual.mean(0).abs().max() < 5 * 0.5 / math.sqrt(n), (k, i)
        assert torch.equal(batch.target[k], batch.pi[k][rows, tokens[:, -1]])


def test_ensemble_forward_and_gradients_equal_members():
    tasks = _tasks()
    members = [mc.DisentangledTransformer.for_task(t, heads=(2, 1), init="normal",
                                                   init_scale=0.5, seed=k, dtype=torch.float64)
               for k, t in enumerate(tasks)]
    ensemble = Ensemble(members)
    batch = sample_stacked(tasks, 16, torch.Generator().manual_seed(1))
    target = batch.target.double()
    logits = ensemble(batch.tokens)
    loss = -(target * torch.log_softmax(logits, -1)).sum(-1).mean(-1).sum()
    loss.backward()
    for k, member in enumerate(members):
        own = member(batch.tokens[k])
        assert torch.allclose(logits[k], own, atol=1e-12)
        member_loss = -(target[k] * torch.log_softmax(own, -1)).sum(-1).mean()
        grads = torch.autograd.grad(member_loss, list(member.parameters()))
        for (name, _), grad in zip(member.named_parameters(), grads):
            stacked = ensemble.stacked[name.replace(".", "__")].grad[k]
            assert torch.allclose(stacked, grad, atol=1e-12), name
    copy = ensemble.member(2)
    assert torch.equal(copy(batch.tokens[2]), members[2](batch.tokens[2]))


def test_train_ensemble_writes_ordinary_checkpoints(tmp_path):
    tasks = _tasks()
    ensemble = Ensemble([mc.DisentangledTransformer.for_task(t) for t in tasks])
    config = mc.TrainConfig(steps=20, batch_size=64, eval_every=10, eval_samples=64,
                            progress=False)
    histories = train_ensemble(ensemble, tasks, config, checkpoint_dir=tmp_path)
    assert len(histories) == 3 and all(h.eval_step == [0, 10, 20] for h in histories)
    assert all(h.train_loss[-1] < h.train_loss[0] for h in histories)
    loaded = mc.load_checkpoint(tmp_path / "member_001.pt")
    assert loaded.task == tasks[1]
    tokens = tasks[1].sample(4, generator=torch.Generator().manual_seed(0)).tokens
    assert torch.equal(loaded.model(tokens), ensemble.member(1)(tokens))


def test_ensemble_rejects_mismatched_members():
    import pytest

    with pytest.raises(ValueError, match="members must share sizes"):
        Ensemble([mc.DisentangledTransformer(3, 9), mc.DisentangledTransformer(3, 10)])


def test_train_ensemble_rejects_pool_data():
    import pytest

    tasks = _tasks()
    ensemble = Ensemble([mc.DisentangledTransformer.for_task(t) for t in tasks])
    with pytest.raises(ValueError, match="data='pool'"):
        train_ensemble(ensemble, tasks, mc.TrainConfig(data="pool", pool_size=2**10))
