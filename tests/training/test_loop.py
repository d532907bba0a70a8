"""The training loop: quick presets recover the graph; the non-finite policy; callbacks;
output paths checked before work; configs; the train command."""

import json
import math
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
    with pytest.raises(mc.NonFiniteLossError,
                       match=r"at step \d+; no update was made from it; the model was restored"):
        mc.train(model, task, config, checkpoint=path)
    model.reset_hooks(including_permanent=True)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not path.exists()  # a failed run has its own file
    saved = mc.load_checkpoint(tmp_path / "run.failed.pt")
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
    assert capsys.readouterr().err == ("mechcausal: error: alpha must be a finite number > 0, "
                                       "got 0.0\n")
    for argv in (["train", "--graph", "nope"], ["train", "--steps", "abc"],
                 ["train", "--heads", "1,,1"], ["reproduce", "--set", "steps"]):
        with pytest.raises(SystemExit) as stopped:
            cli_main(argv)
        error = capsys.readouterr().err
        assert stopped.value.code == 2 and error.count("\n") == 1, (argv, error)
        assert error.startswith("mechcausal: error: "), error


# ---------------------------------------------------------------------- non-finite policy
def _all_finite(model):
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


@pytest.mark.parametrize("eval_every", [1, 10])
@pytest.mark.parametrize("members", [1, 3])
def test_exploding_lr_restores_finite_weights_and_saves_them(tmp_path, eval_every, members):
    """lr=1e30: the error names the step, the member(s), the value and what was
    restored; every restored parameter and the saved checkpoint's weights are finite."""
    task = mc.InContextTree(mc.CausalGraph.chain(6), vocab_size=4)
    config = mc.TrainConfig(steps=50, batch_size=64, eval_every=eval_every, lr=1e30,
                            optimizer="sgd", schedule="constant", prefetch=False,
                            eval_samples=64, progress=False)
    if members == 1:
        model, tasks, path = mc.DisentangledTransformer.for_task(task), task, tmp_path / "div.pt"
    else:
        model = mc.Ensemble([mc.DisentangledTransformer.for_task(task) for _ in range(members)])
        tasks, path = [task] * members, tmp_path / "members"
    with pytest.raises(mc.NonFiniteLossError) as caught:
        mc.train(model, tasks, config, checkpoint=path)
    error = caught.value
    message = str(error)
    assert f"at step {error.step}" in message and "restored to its" in message
    assert "saved to" in message and "lower lr (config.lr=1e+30)" in message
    assert "nan" in message or "inf" in message
    if members > 1:
        assert error.member is not None and "member" in message and f"of {members}" in message
    assert _all_finite(model)
    files = ([tmp_path / "div.failed.pt"] if members == 1
             else sorted(path.glob("member_*.failed.pt")))
    assert str(files[0]) in message and not list(tmp_path.glob("**/div.pt"))
    assert len(files) == members
    for file in files:
        loaded = mc.load_checkpoint(file)
        assert _all_finite(loaded.model)
        assert len(loaded.history.train_loss) == error.step


def test_nan_at_step_zero_says_the_initial_weights_are_to_blame():
    task = mc.InContextTree(mc.CausalGraph.chain(6), vocab_size=4)
    model = mc.DisentangledTransformer.for_task(task, init="normal", init_scale=1e37, seed=0)
    with pytest.raises(mc.NonFiniteLossError, match="at step 0; .*initial weights"):
        mc.train(model, task, mc.TrainConfig(steps=5, eval_samples=16, progress=False))
    model = mc.DisentangledTransformer.for_task(task)
    with torch.no_grad():
        model.blocks[0].attn.A[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="parameter blocks.0.attn.A holds NaN or infinite "
                                         "values before training"):
        mc.train(model, task, mc.TrainConfig(steps=5, eval_samples=16, progress=False))


def test_adam_eps_that_underflows_is_refused_before_training():
    task = mc.InContextTree(mc.CausalGraph.chain(6), vocab_size=4)
    model = mc.DisentangledTransformer.for_task(task, dtype=torch.float16)
    with pytest.raises(ValueError, match="adam_eps=1e-08 is 0 in torch.float16"):
        mc.train(model, task, mc.TrainConfig(steps=5, eval_samples=16, progress=False))


class _Scramble(mc.Callback):
    """Sets the readout to large random values after every step: a finite divergence."""

    def on_step(self, run):
        with torch.no_grad():
            run.model.W_U.copy_(50 * torch.randn(run.model.W_U.shape,
                                                 generator=torch.Generator().manual_seed(run.step)))


def test_a_finite_divergence_is_a_warning_in_the_history():
    task = mc.InContextTree(mc.CausalGraph.chain(6), vocab_size=4)
    model = mc.DisentangledTransformer.for_task(task)
    config = mc.TrainConfig(steps=8, batch_size=32, eval_every=2, eval_samples=64,
                            progress=False)
    with pytest.warns(RuntimeWarning, match="training diverged: held-out loss"):
        history = mc.train(model, task, config, callbacks=[_Scramble()])
    assert len(history.warnings) == 1
    assert "3 evaluations in a row (steps 2, 4, 6)" in history.warnings[0]
    assert history.uniform_loss == pytest.approx(math.log(4))
    healthy = mc.train(mc.DisentangledTransformer.for_task(task), task, config)
    assert healthy.warnings == []


# ---------------------------------------------------------------------- callbacks
class _Counter(mc.Callback):
    def __init__(self):
        self.calls = {"start": 0, "step": 0, "eval": 0, "end": 0}

    def on_train_start(self, run):
        self.calls["start"] += 1

    def on_step(self, run):
        self.calls["step"] += 1

    def on_eval(self, run):
        self.calls["eval"] += 1

    def on_train_end(self, run):
        self.calls["end"] += 1


def test_early_stopping_stops_at_the_first_evaluation_at_the_threshold(trained_chain):
    _, task, reference = trained_chain
    # the quick chain run's own trajectory tells where the threshold is first reached
    config = mc.TrainConfig.quick("chain", progress=False)
    threshold = 0.6
    first = next(step for step, value in zip(reference.eval_step, reference.parent_attention)
                 if value >= threshold)
    counter = _Counter()
    stopper = mc.EarlyStopping("parent_attention", threshold)
    model = mc.DisentangledTransformer.for_task(task)
    torch.manual_seed(0)
    history = mc.train(model, task, config, callbacks=[stopper, counter])
    assert history.eval_step[-1] == first == stopper.stopped_at
    assert all(value < threshold for value in history.parent_attention[:-1])
    assert history.parent_attention[-1] >= threshold
    assert len(history.train_loss) == first and counter.calls["step"] == first
    assert counter.calls == {"start": 1, "step": first, "eval": len(history.eval_step), "end": 1}
    assert history.stop_reason.startswith("EarlyStopping: parent_attention")
    with pytest.raises(ValueError, match="metric must be one of"):
        mc.EarlyStopping("accuracy")


def test_early_stopping_waits_for_every_member_of_an_ensemble():
    tasks = [mc.InContextTree(mc.CausalGraph.chain(10), vocab_size=5)] * 2
    ensemble = mc.Ensemble([mc.DisentangledTransformer.for_task(t) for t in tasks])
    config = mc.TrainConfig.quick("chain", batch_size=256, eval_every=10, eval_samples=256,
                                  progress=False)
    histories = mc.train(ensemble, tasks, config,
                         callbacks=[mc.EarlyStopping("parent_attention", 0.9)])
    assert min(h.parent_attention[-1] for h in histories) >= 0.9
    assert histories[0].eval_step[-1] < config.steps
    assert all(min(h.parent_attention[k] for h in histories) < 0.9
               for k in range(len(histories[0].eval_step) - 1))


def test_attention_snapshots_record_one_pattern_per_evaluation():
    task = mc.InContextTree(mc.CausalGraph.chain(8), vocab_size=5)
    snapshots = mc.AttentionSnapshots()
    every_other = mc.AttentionSnapshots(every=2, layer=1)
    model = mc.DisentangledTransformer.for_task(task)
    history = mc.train(model, task, mc.TrainConfig(steps=40, batch_size=128, eval_every=10,
                                                   eval_samples=256, progress=False),
                       callbacks=[snapshots, every_other])
    assert snapshots.steps == history.eval_step == [0, 10, 20, 30, 40]
    assert len(snapshots.patterns) == 5 and snapshots.patterns[0].shape == (1, 9, 9)
    for pattern, parent in zip(snapshots.patterns, history.parent_attention):
        edges = torch.arange(1, 8)
        assert pattern[0, edges, edges - 1].mean().item() == pytest.approx(parent, abs=1e-6)
    assert torch.allclose(snapshots.patterns[0].sum(-1), torch.ones(1, 9))
    assert every_other.steps == [0, 20, 40]
    held_out = task.sample(256, generator=torch.Generator().manual_seed(1_000_003))
    expected = mc.diagnostics.mean_attention(model, held_out.tokens, layer=1)
    assert torch.allclose(every_other.patterns[-1], expected, atol=1e-6)
    figure = snapshots.plot()
    assert len(figure.axes) >= 5


# ---------------------------------------------------------------------- output paths
class _NoWork(mc.Callback):
    def on_train_start(self, run):
        raise AssertionError("training started although the output path is bad")


def _bad_paths(tmp_path):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("x")
    read_only = "/proc/mechcausal/run.pt"  # not writable even as root
    return {"a folder": (folder, "is a folder"),
            "a file as parent": (a_file / "ck.pt", "is a file, not a folder"),
            "read-only": (read_only, "cannot write in")}


@pytest.mark.parametrize("case", ["a folder", "a file as parent", "read-only"])
def test_bad_checkpoint_paths_fail_before_any_work(tmp_path, case):
    path, message = _bad_paths(tmp_path)[case]
    task = mc.InContextTree(mc.CausalGraph.chain(6), vocab_size=4)
    model = mc.DisentangledTransformer.for_task(task)
    with pytest.raises(ValueError, match=f"checkpoint .*{message}"):
        mc.train(model, task, mc.TrainConfig(steps=10**6, progress=False),
                 callbacks=[_NoWork()], checkpoint=path)
    ensemble = mc.Ensemble([mc.DisentangledTransformer.for_task(task)] * 2)
    a_file = tmp_path / "a_file.txt"
    with pytest.raises(ValueError, match="checkpoint .*is a file; give a folder"):
        mc.train(ensemble, [task, task], mc.TrainConfig(steps=10**6, progress=False),
                 callbacks=[_NoWork()], checkpoint=a_file)


def test_cli_train_out_checked_before_training(tmp_path, capsys):
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("x")
    assert cli_main(["train", "--steps", "1000000", "--out", str(a_file), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--out" in error and "is a file; give a folder" in error


def test_train_rejects_what_is_not_a_config_or_task():
    task = mc.InContextTree(mc.CausalGraph.chain(6), vocab_size=4)
    model = mc.DisentangledTransformer.for_task(task)
    with pytest.raises(TypeError, match="config must be a TrainConfig"):
        mc.train(model, task, {"steps": 5})
    with pytest.raises(TypeError, match="task must be an InContextTree or InContextDAG, got "
                                        "NoneType"):
        mc.train(model, None, mc.TrainConfig(progress=False))
    with pytest.raises(ValueError, match="config.layer=5: the model has 2 layers"):
        mc.train(model, task, mc.TrainConfig(layer=5, progress=False))
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda'"):
        mc.TrainConfig(device="gpu")
    with pytest.raises(TypeError, match="lr must be a number, got '0.1'"):
        mc.TrainConfig(lr="0.1")


def test_parameters_must_be_the_models_own_and_trainable():
    task = mc.InContextTree(mc.CausalGraph.chain(6), vocab_size=4)
    model, other = (mc.DisentangledTransformer.for_task(task) for _ in range(2))
    config = mc.TrainConfig(steps=1, eval_samples=8, progress=False)
    with pytest.raises(ValueError, match=r"parameters\[0\] \(shape \(44, 4\)\) is not a "
                                         "parameter of this model"):
        mc.train(model, task, config, parameters=other.parameters())
    with pytest.raises(ValueError, match="parameters= is empty"):
        mc.train(model, task, config, parameters=[])
    with pytest.raises(TypeError, match="parameters must be an iterable"):
        mc.train(model, task, config, parameters=torch.zeros(3))


def test_a_float64_model_trains_on_a_float64_loss():
    task = mc.InContextTree(mc.CausalGraph.chain(6), vocab_size=4)
    model = mc.DisentangledTransformer.for_task(task, init="normal", init_scale=0.3, seed=0,
                                                dtype=torch.float64)
    batch = task.sample(16, generator=torch.Generator().manual_seed(0))
    loss = mc.training.loop.loss_fn(model, batch)
    assert loss.dtype == torch.float64
    logits = model(batch.tokens)
    exact = -(batch.target.double() * torch.log_softmax(logits, -1)).sum(-1).mean()
    assert abs(loss.item() - exact.item()) < 1e-14


def test_the_divergence_warning_points_at_the_callers_line():
    task = mc.InContextTree(mc.CausalGraph.chain(6), vocab_size=4)
    config = mc.TrainConfig(steps=8, batch_size=32, eval_every=2, eval_samples=64,
                            progress=False)
    with pytest.warns(RuntimeWarning, match="training diverged") as caught:
        mc.train(mc.DisentangledTransformer.for_task(task), task, config, callbacks=[_Scramble()])
    assert caught[0].filename == __file__


def test_attention_snapshots_plot_checks_its_arguments():
    task = mc.InContextTree(mc.CausalGraph.chain(6), vocab_size=4)
    snapshots = mc.AttentionSnapshots()
    mc.train(mc.DisentangledTransformer.for_task(task), task,
             mc.TrainConfig(steps=4, eval_every=2, eval_samples=16, progress=False),
             callbacks=[snapshots])
    with pytest.raises(ValueError, match="member must be in 0..0, got 1"):
        snapshots.plot(member=1)
    with pytest.raises(TypeError, match="steps entry must be an int"):
        snapshots.plot(steps=["a"])
    assert len(snapshots.plot(steps=[0, 4]).axes) == 3  # two panels and their colour bar


# ---------------------------------------------------------------------- nothing lost
def test_a_failed_run_never_replaces_a_finished_runs_checkpoint(tmp_path):
    task = mc.InContextTree(mc.CausalGraph.chain(6), vocab_size=4)
    config = mc.TrainConfig(steps=4, batch_size=16, eval_every=2, eval_samples=32,
                            progress=False)
    path = tmp_path / "run.pt"
    finished = mc.train(mc.DisentangledTransformer.for_task(task), task, config,
                        checkpoint=path)
    broken = mc.DisentangledTransformer.for_task(task, init="normal", init_scale=1e37)
    with pytest.raises(mc.NonFiniteLossError, match="run.failed.pt"):
        mc.train(broken, task, config, checkpoint=path)
    assert mc.load_checkpoint(path).history.test_loss == finished.test_loss
    assert mc.load_checkpoint(tmp_path / "run.failed.pt").history.train_loss == []


def test_cli_a_failed_rerun_keeps_the_finished_run(tmp_path, capsys):
    """`train --out d` finished, then a run into d that fails: checkpoint.pt, summary.json
    and history.json still describe the finished run; the failed one has its own file."""
    base = ["train", "--graph", "chain", "--vocab-size", "4", "--seq-len", "6",
            "--steps", "4", "--out", str(tmp_path), "--no-progress"]
    assert cli_main(base) == 0
    before = {name: (tmp_path / name).read_bytes()
              for name in ("checkpoint.pt", "summary.json", "history.json")}
    assert cli_main([*base, "--lr", "1e30"]) == 2
    assert "checkpoint.failed.pt" in capsys.readouterr().err
    for name, data in before.items():
        assert (tmp_path / name).read_bytes() == data, name
    mc.load_checkpoint(tmp_path / "checkpoint.failed.pt")


def test_train_two_stage_checks_both_stages_before_touching_the_model(tmp_path):
    task = mc.InContextTree(mc.CausalGraph.chain(5), vocab_size=3)
    model = mc.ReducedModel.for_task(task)
    with torch.no_grad():
        model.A1.fill_(0.25)
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    good = mc.TrainConfig(steps=2, batch_size=8, eval_samples=8, progress=False)
    for stage2, beta0, checkpoint, named in (
            (mc.TrainConfig(steps=2, layer=5, progress=False), 0.1, None, "stage2: .*layer"),
            ({"steps": 2}, 0.1, None, "stage2 must be a TrainConfig"),
            (good, float("nan"), None, "beta0"),
            (good, 0.1, tmp_path, "checkpoint")):
        with pytest.raises((ValueError, TypeError), match=named):
            mc.train_two_stage(model, task, good, stage2, beta0=beta0, checkpoint=checkpoint)
        for name, p in model.named_parameters():
            assert torch.equal(p, start[name]), name
    with pytest.raises(ValueError, match="beta0"):
        mc.DisentangledTransformer.for_task(task).init_two_stage(float("nan"))
