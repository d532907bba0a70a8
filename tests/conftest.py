"""Shared fixtures: quick-trained models, each trained once per test session."""

import importlib
import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

import mechcausal as mc  # noqa: E402

QUICK_GRAPHS = {
    "chain": mc.CausalGraph.chain(20),
    "icl": mc.CausalGraph.icl_pairs(20),
    "random": mc.CausalGraph.random_tree(20, seed=0),
}


@pytest.fixture(scope="session")
def extra():
    """``extra(module, name)`` -> the imported module of an optional extra; skips the test
    when it is not installed, or fails it when MECHCAUSAL_REQUIRE_EXTRAS=1 (CI installs
    every extra, so none of those tests may skip there)."""

    def get(module, name):
        if os.environ.get("MECHCAUSAL_REQUIRE_EXTRAS") == "1":
            return importlib.import_module(module)
        return pytest.importorskip(module, reason=f"an extra: pip install 'mechcausal[{name}]'")

    return get


@pytest.fixture(scope="session")
def quick_trained():
    """name -> (model, task, history) for 'chain', 'icl', 'random': TrainConfig.quick(name)
    at S=10, T=20, alpha=0.1, trained on first use."""
    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(0)
            task = mc.InContextTree(QUICK_GRAPHS[name], vocab_size=10, alpha=0.1)
            model = mc.DisentangledTransformer.for_task(task)
            history = mc.train(model, task, mc.TrainConfig.quick(name, progress=False))
            cache[name] = (model.eval(), task, history)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def trained_chain(quick_trained):
    """(model, task, history) of the quick chain preset."""
    return quick_trained("chain")
