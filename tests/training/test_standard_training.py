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
