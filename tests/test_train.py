"""Training: quick presets recover the graph; NaN handling; checkpoints; configs."""

import json
import os

import pytest
import torch

import mechcausal as mc
from mechcausal.cli import main as cli_main


@pytest.mark.parametrize("name", ["chain", "icl", "random"])
def test_quick_preset_recovers_the_graph(name, quick_trained):
    """S=10, T=20: parent attention >= 0.95 and the test loss nearer the count
    estimator than the in-context unigram baseline."""
    _, _, history = quick_trained(name)
    final = history.final
    assert final["parent_attention"] >= 0.95, final
    loss = final["test_loss"]
    assert abs(loss - final["bayes_loss"]) < abs(loss - final["unigram_loss"]), final
    assert history.train_loss[-1] < history.train_loss[0]


def test_pool_data_mode_and_history_fields():
    task = mc.InContextTree(mc.CausalGraph.chain(6), vocab_size=4)
    model = mc.DisentangledTransformer.for_task(task)
    config = mc.TrainConfig(steps=12, batch_size=16, data="pool", pool_size=64, eval_every=4,
                            eval_samples=64, progress=False)
    history = mc.train(model, task, config)
    assert history.eval_step == [0, 4, 8, 12]
    assert len(history.train_loss) == 12 and len(history.gap) == 4
    assert history.steps_per_second > 0
    data = history.to_dict()
    assert mc.History.from_dict(json.loads(json.dumps(data))).test_loss == history.test_loss


def test_nonfinite_loss_stops_with_last_good_weights(tmp_path):
    task = mc.InContextTree(mc.CausalGraph.chain(6), vocab_size=4)
    model = mc.DisentangledTransformer.for_task(task)
    calls = {"n": 0}

    def poison(h, hook):
        calls["n"] += 1
        return h * float("nan") if calls["n"] > 7 else h

    model.add_perma_hook("blocks.0.hook_resid_pre", poison)
    config = mc.TrainConfig(steps=20, batch_size=8, eval_every=3, eval_samples=8, progress=False)
    path = tmp_path / "run.pt"
    with pytest.raises(mc.NonFiniteLossError, match=r"at step \d+; the model was restored"):
        mc.train(model, task, config, checkpoint=path)
    model.reset_hooks(including_permanent=True)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    saved = mc.load_checkpoint(path)
    assert all(torch.isfinite(p).all() for p in saved.model.parameters())
    assert len(saved.history.train_loss) < 20


def test_checkpoint_roundtrip_is_exact_and_atomic(tmp_path):
    task = mc.InContextDAG(mc.CausalGraph.two_parent(9), vocab_size=3)
    model = mc.DisentangledTransformer.for_task(task, heads=(2, 1), init="normal",
                                                init_scale=0.3, seed=1)
    config = mc.TrainConfig(steps=3, batch_size=8, eval_samples=8, progress=False)
    history = mc.train(model, task, config, checkpoint=tmp_path / "ck.pt")
    assert os.listdir(tmp_path) == ["ck.pt"]
    loaded = mc.load_checkpoint(tmp_path / "ck.pt")
    tokens = task.sample(5, generator=torch.Generator().manual_seed(0)).tokens
    assert torch.equal(loaded.model(tokens), model(tokens))
    assert loaded.task == task and loaded.config == config
    assert loaded.history.test_loss == history.test_loss


def test_size_mismatch_and_bad_config_errors():
    task = mc.InContextTree(mc.CausalGraph.chain(6), vocab_size=4)
    with pytest.raises(ValueError, match="d_vocab=5 does not match task vocab_size=4"):
        mc.train(mc.DisentangledTransformer(5, 7), task, mc.TrainConfig(progress=False))
    with pytest.raises(ValueError, match="n_ctx=6 is shorter than the task's input length 7"):
        mc.train(mc.DisentangledTransformer(4, 6), task, mc.TrainConfig(progress=False))
    with pytest.raises(ValueError, match="optimizer must be one of"):
        mc.TrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="lr must be a finite number > 0, got -1"):
        mc.TrainConfig(lr=-1)
    with pytest.raises(ValueError, match="unknown paper preset 'nope'"):
        mc.TrainConfig.paper("nope")


def test_paper_presets_hold_the_official_hyperparameters():
    chain = mc.TrainConfig.paper("chain")
    assert (chain.optimizer, chain.lr, chain.steps, chain.batch_size, chain.weight_decay,
            chain.schedule, chain.data, chain.pool_size) == ("sgd", 1.0, 2**17, 1024, 0.0,
                                                             "cosine", "pool", 2**20)
    two = mc.TrainConfig.paper("two_parent")
    assert (two.optimizer, two.lr, two.weight_decay, two.steps) == ("adamw", 1e-2, 1e-4, 2**16)
    assert mc.TrainConfig.paper("figure9").steps == 2**14
    mlp = mc.TrainConfig.paper("mlp")
    assert (mlp.optimizer, mlp.weight_decay, mlp.steps) == ("adamw", 2e-4, 2**12)
    assert mc.TrainConfig.from_dict(chain.to_dict()) == chain


def test_cli_train_writes_checkpoint_and_history(tmp_path, capsys):
    code = cli_main(["train", "--graph", "chain", "--vocab-size", "4", "--seq-len", "6",
                     "--steps", "5", "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "parent attention" in printed and "count estimator" in printed
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {"test_loss", "bayes_loss", "gap", "parent_attention"} <= set(summary)
    assert mc.load_checkpoint(tmp_path / "checkpoint.pt").task.vocab_size == 4


def test_cli_reports_bad_arguments(capsys):
    assert cli_main(["train", "--alpha", "0", "--steps", "1", "--no-progress"]) == 2
    assert "alpha must be a finite number > 0, got 0.0" in capsys.readouterr().err
