"""The official code's measured training trajectory as a regression target.

The official JAX chain recipe (S=10, input 20, SGD lr 1 with cosine decay over 2^17
steps, batch 1024, a pool of 2^20 sequences resampled every 1024 steps, zero init) was
run on this project's CPU machine; its layer-1 attention on the parent and held-out loss
at steps 0, 1024, ..., 5120 are in ``tests/fixtures/official_chain_trajectory.json`` (the
only copy of those numbers in the repository). ``TrainConfig.paper("chain")`` must
follow it: the slow plateau, then the phase change between steps 3072 and 4096.
"""

import json
from pathlib import Path

import pytest

import mechcausal as mc

OFFICIAL = json.loads((Path(__file__).parents[1] / "fixtures" /
                       "official_chain_trajectory.json").read_text())
ATTENTION_TOL = 0.01
LOSS_TOL = 0.02
STOP = 4096


class StopAfter(mc.Callback):
    """Stop at the first evaluation at or past ``step`` (the schedule keeps its full
    2^17-step horizon, as in the official run, which was stopped the same way)."""

    def __init__(self, step: int):
        self.step = step

    def on_eval(self, run: mc.Run) -> None:
        if run.step >= self.step:
            run.stop(f"stopped after {run.step} steps")


def official_task() -> mc.InContextTree:
    recipe = OFFICIAL["recipe"]
    assert recipe["dag"] == "chain" and recipe["seq_len_input"] == 20
    graph = mc.CausalGraph.chain(recipe["context_positions"])
    return mc.InContextTree(graph, vocab_size=recipe["vocab_size"], alpha=recipe["alpha"])


def test_the_official_preset_is_the_recipe_the_trajectory_was_measured_with():
    recipe, config = OFFICIAL["recipe"], mc.TrainConfig.paper("chain")
    assert (config.optimizer, config.lr, config.batch_size) == (
        recipe["optimizer"], recipe["lr"], recipe["batch_size"])
    assert (config.schedule, config.steps, config.data, config.pool_size) == (
        "cosine", 2**17, "pool", 2**20)
    assert config.weight_decay == 0.0
    model = mc.DisentangledTransformer.for_task(official_task())
    assert model.cfg.init == recipe["init"] == "zeros"
    assert all((p == 0).all() for p in model.parameters())
    assert official_task().input_length == recipe["seq_len_input"]


@pytest.mark.slow
def test_paper_chain_follows_the_official_trajectory():
    task = official_task()
    model = mc.DisentangledTransformer.for_task(task, seed=0)
    config = mc.TrainConfig.paper("chain", eval_every=1024, eval_samples=4096, seed=0,
                                  progress=False)
    history = mc.train(model, task, config, callbacks=[StopAfter(STOP)])
    ours = dict(zip(history.eval_step, zip(history.parent_attention, history.test_loss)))
    checked = [r for r in OFFICIAL["records"] if r["step"] <= STOP]
    assert [r["step"] for r in checked] == [0, 1024, 2048, 3072, 4096]
    for record in checked:
        attention, loss = ours[record["step"]]
        assert attention == pytest.approx(record["parent_attention"], abs=ATTENTION_TOL), record
        assert loss == pytest.approx(record["heldout_loss"], abs=LOSS_TOL), record
