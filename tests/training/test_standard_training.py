"""Standard learned-embedding TL models (the paper's Figure 8) trained by mc.train."""

import pytest
import torch

import mechcausal as mc

pytestmark = pytest.mark.tl


@pytest.mark.parametrize("attn_only, steps", [(True, 450), (False, 700)])
def test_standard_model_learns_the_chain_in_layer_1(attn_only, steps):
    """Layer-1 attention on the parent >= 0.8 for the attention-only model and for the
    Figure 8 variant with MLPs. Measured over model and data seeds 0-3: 0.970-0.981
    (attention only, 450 steps) and 0.955-0.963 (MLPs, 700 steps); at 300 and 500
    steps the cosine schedule ends before every seed has switched (0.81 and 0.76)."""
    task = mc.InContextTree(mc.CausalGraph.chain(20), vocab_size=10, alpha=0.1)
    model = mc.standard_model(task, n_layers=2, n_heads=1, d_model=64, attn_only=attn_only)
    config = mc.TrainConfig.quick("mlp", steps=steps, progress=False)
    history = mc.train(model, task, config)
    assert history.final["parent_attention"] >= 0.8, history.final
    assert history.final["test_loss"] < history.final["unigram_loss"]


def test_next_token_loss_runs_on_every_position():
    task = mc.InContextTree(mc.CausalGraph.chain(8), vocab_size=5)
    model = mc.standard_model(task, n_layers=1, d_model=16)
    config = mc.TrainConfig(steps=30, batch_size=64, lr=1e-2, loss="next_token",
                            eval_samples=64, progress=False)
    history = mc.train(model, task, config)
    assert history.train_loss[-1] < history.train_loss[0]
    assert all(torch.isfinite(torch.tensor(history.test_loss)))


def test_a_standard_model_trained_as_an_lm_on_the_task_in_its_vocabulary():
    """Next-token training on the chain written in LM ids (BOS first): rank_heads puts a
    layer-1 head on the true parent first (>= 0.8), and the next-token answer at the query,
    restricted to the task's ids, is within 0.15 nats of the count estimator."""
    base = mc.InContextTree(mc.CausalGraph.chain(20), vocab_size=10, alpha=0.1)
    task = base.in_vocabulary([7 + 3 * s for s in range(10)], bos_token_id=1)
    model = mc.standard_model(task, n_layers=2, n_heads=2, d_model=64, attn_only=True, seed=0)
    config = mc.TrainConfig.quick("mlp", steps=500, loss="next_token", progress=False)
    mc.train(model, task, config)
    top = mc.rank_heads(model, task).rows[0]
    assert top["layer"] == 0 and top["parent_attention"] >= 0.8, top
    agreement = mc.estimator_agreement(model, task)
    assert agreement["model_loss"] - agreement["bayes_loss"] <= 0.15, agreement


def test_the_next_token_loss_ends_with_the_tasks_answer():
    """loss="next_token": the mean over positions of -log p(next token), the last
    position's next token being the answer, scored against its law."""
    task = mc.InContextTree(mc.CausalGraph.chain(5), vocab_size=3)
    batch = task.sample(4, generator=torch.Generator().manual_seed(0))
    logits = torch.randn(4, 6, 3, generator=torch.Generator().manual_seed(1))
    log_probs = torch.log_softmax(logits, -1)
    expected = -(log_probs[:, :-1].gather(-1, batch.tokens[:, 1:, None]).squeeze(-1).sum(1)
                 + (batch.target * log_probs[:, -1]).sum(-1)) / 6
    loss = mc.training.loop.batch_loss(logits, batch, "next_token")
    assert torch.allclose(loss, expected.mean())
