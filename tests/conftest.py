"""Shared fixtures: a quick-trained chain model, trained once per test session."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

import mechcausal as mc  # noqa: E402


@pytest.fixture(scope="session")
def trained_chain():
    """(model, task, history): TrainConfig.quick('chain') at S=10, T=20, alpha=0.1."""
    torch.manual_seed(0)
    task = mc.InContextTree(mc.CausalGraph.chain(20), vocab_size=10, alpha=0.1)
    model = mc.DisentangledTransformer.for_task(task)
    history = mc.train(model, task, mc.TrainConfig.quick("chain", progress=False))
    model.eval()
    return model, task, history
