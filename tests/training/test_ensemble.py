"""Ensembles: stacked members equal independent models; stacked sampling law."""

import math
from dataclasses import replace

import pytest
import torch

import mechcausal as mc
from mechcausal import Ensemble
from mechcausal.data.tasks import sample_stacked


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
        mu = mc.data.stationary_distribution(pi)
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
            stacked = ensemble.stacked_parameters()[name].grad[k]
            assert torch.allclose(stacked, grad, atol=1e-12), name
    copy = ensemble.member(2)
    assert torch.equal(copy(batch.tokens[2]), members[2](batch.tokens[2]))


def test_train_ensemble_writes_ordinary_checkpoints(tmp_path):
    tasks = _tasks()
    ensemble = Ensemble([mc.DisentangledTransformer.for_task(t) for t in tasks])
    config = mc.TrainConfig(steps=20, batch_size=64, eval_every=10, eval_samples=64,
                            progress=False)
    histories = mc.train(ensemble, tasks, config, checkpoint=tmp_path)
    assert len(histories) == 3 and all(h.eval_step == [0, 10, 20] for h in histories)
    assert all(h.train_loss[-1] < h.train_loss[0] for h in histories)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"member_00{k}.pt" for k in range(3)]
    loaded = mc.load_checkpoint(tmp_path / "member_001.pt")
    assert loaded.task == tasks[1] and loaded.history.test_loss == histories[1].test_loss
    # member k trained with config.seed + k, and its checkpoint says so
    assert [mc.load_checkpoint(tmp_path / f"member_00{k}.pt").config.seed
            for k in range(3)] == [0, 1, 2]
    tokens = tasks[1].sample(4, generator=torch.Generator().manual_seed(0)).tokens
    assert torch.equal(loaded.model(tokens), ensemble.member(1)(tokens))
    with pytest.warns(DeprecationWarning, match="use mc.train"):
        mc.train_ensemble(ensemble, tasks, mc.TrainConfig(steps=2, eval_samples=8,
                                                          progress=False))


def test_ensemble_rejects_mismatched_members():
    with pytest.raises(ValueError, match=r"members\[1\] has n_ctx=10, members\[0\] 9; members must "
                                         "share d_vocab, n_ctx, heads"):
        Ensemble([mc.DisentangledTransformer(3, 9), mc.DisentangledTransformer(3, 10)])
    with pytest.raises(ValueError, match=r"members\[1\] is torch.float64, members\[0\] torch.float32"):
        Ensemble([mc.DisentangledTransformer(3, 9),
                  mc.DisentangledTransformer(3, 9).to(torch.float64)])
    # initialisations may differ: they are weights, not shapes
    Ensemble([mc.DisentangledTransformer(3, 9), mc.DisentangledTransformer(
        3, 9, init="normal", init_scale=0.5, seed=1)])


@pytest.mark.parametrize("loss, data", [("target", "fresh"), ("next_token", "fresh"),
                                        ("target", "pool")])
def test_ensemble_trains_exactly_as_separate_models(loss, data):
    """Member k of an ensemble is a single run with seed config.seed + k: the same
    losses at every step and the same weights (1e-6), for both losses and both data
    modes (float64: summation order is the only difference)."""
    tasks = _tasks()
    config = mc.TrainConfig(steps=12, batch_size=32, eval_every=6, eval_samples=64,
                            progress=False, loss=loss, data=data, pool_size=64, seed=3,
                            optimizer="adam", lr=0.05)

    def fresh(k):
        return mc.DisentangledTransformer.for_task(tasks[k], init="normal", init_scale=0.1,
                                                   seed=k, dtype=torch.float64)

    ensemble = Ensemble([fresh(k) for k in range(3)])
    together = mc.train(ensemble, tasks, config)
    for k in range(3):
        model = fresh(k)
        alone = mc.train(model, tasks[k], replace(config, seed=3 + k))
        assert torch.allclose(torch.tensor(together[k].train_loss),
                              torch.tensor(alone.train_loss), atol=1e-6, rtol=0)
        assert together[k].test_loss == pytest.approx(alone.test_loss, abs=1e-6)
        member = ensemble.member(k)
        for (name, p_alone), p_member in zip(model.named_parameters(), member.parameters()):
            assert torch.allclose(p_alone, p_member, atol=1e-6, rtol=0), name


def test_ensemble_rejects_other_kinds_and_wrong_task_lists():
    tasks = _tasks()
    with pytest.raises(TypeError, match=r"members\[0\] is a ReducedModel; an Ensemble stacks "
                                        "DisentangledTransformers"):
        Ensemble([mc.ReducedModel.for_task(tasks[0])])
    ensemble = Ensemble([mc.DisentangledTransformer.for_task(t) for t in tasks])
    with pytest.raises(TypeError, match="one task per member: pass a list of 3 tasks"):
        mc.train(ensemble, tasks[0], mc.TrainConfig(progress=False))
    with pytest.raises(ValueError, match="got 2 tasks for 3 members"):
        mc.train(ensemble, tasks[:2], mc.TrainConfig(progress=False))
    shorter = mc.InContextTree(mc.CausalGraph.chain(6), 3, 0.3)
    with pytest.raises(ValueError, match="task.1. has input length 7 and vocab_size 3, "
                                         "task.0. 9 and 3"):
        mc.train(ensemble, [tasks[0], shorter, tasks[2]], mc.TrainConfig(progress=False))
    assert ensemble(torch.zeros(3, 0, 9, dtype=torch.long)).shape == (3, 0, 3)
