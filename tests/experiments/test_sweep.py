"""mc.sweep: a grid as one study, grouped into ensembles, resumable, the same rows in
this process and on Ray; the CLI over a TOML grid; the study's figure."""

import json
import math
from dataclasses import replace

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import torch

import mechcausal as mc
import mechcausal.experiments.sweeps as sweep_module
from mechcausal import plots
from mechcausal.cli import main

CONFIG = mc.TrainConfig.quick("random", steps=30, batch_size=64, eval_every=15,
                              eval_samples=128, progress=False)
GRID = {"graph": ["chain", "random"], "seed": [0, 1, 2], "seq_len": [6], "vocab_size": [4]}
METRICS = ["test_loss", "bayes_loss", "gap", "parent_attention", "parent_accuracy", "f1"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    return out, mc.sweep(GRID, CONFIG, out=out, progress=False)


def test_every_member_gets_a_row_with_finite_metrics_and_a_checkpoint(study):
    out, results = study
    assert len(results) == 6
    assert list(results["graph"]) == ["chain"] * 3 + ["random"] * 3
    assert list(results["seed"]) == [0, 1, 2] * 2
    assert np.isfinite(results[METRICS + ["wall_time"]].to_numpy(dtype=float)).all()
    for row in results.itertuples():
        loaded = mc.load_checkpoint(row.checkpoint)
        assert loaded.config.seed == row.seed and loaded.task.context_length == 6
    assert pd.read_csv(out / "results.csv")[METRICS].equals(results[METRICS])


def test_a_member_trains_exactly_as_a_single_run_with_its_seed(study):
    _, results = study
    row = results.iloc[4]  # random tree, seed 1: the fifth member of a six-member ensemble
    task = mc.make_task("random", seq_len=6, vocab_size=4, seed=0)
    model = mc.DisentangledTransformer.for_task(task, seed=1)
    history = mc.train(model, task, replace(CONFIG, seed=1, progress=False))
    assert row["test_loss"] == pytest.approx(history.final["test_loss"], abs=1e-6)
    assert row["gap"] == pytest.approx(history.final["gap"], abs=1e-6)


def test_a_killed_sweep_resumes_with_the_members_it_had_not_finished(tmp_path, monkeypatch):
    grid = {**GRID, "lr": [0.1, 0.05]}  # two recipes: two groups of six
    trained = []
    real = sweep_module.run_group

    def killed_after_one_group(members, *args):
        if trained:
            raise KeyboardInterrupt  # the sweep is killed during its second group
        trained.extend(members)
        return real(members, *args)

    monkeypatch.setattr(sweep_module, "run_group", killed_after_one_group)
    with pytest.raises(KeyboardInterrupt):
        mc.sweep(grid, CONFIG, out=tmp_path, progress=False)
    assert len(trained) == 6
    written = pd.read_csv(tmp_path / "results.csv")  # every member, the finished marked
    assert len(written) == 12 and (written["status"] == "finished").sum() == 6
    assert written.loc[written["status"] == "pending", "test_loss"].isna().all()

    def counted(members, *args):
        trained.extend(members)
        return real(members, *args)

    monkeypatch.setattr(sweep_module, "run_group", counted)
    results = mc.sweep(grid, CONFIG, out=tmp_path, progress=False)
    assert len(trained) == 12 and len(results) == 12  # only the other six trained
    assert results["lr"].tolist() == [0.1, 0.05] * 6
    trained.clear()
    mc.sweep(grid, CONFIG, out=tmp_path, progress=False)
    assert trained == []


SMALL = {"graph": ["chain"], "seed": [0, 1], "seq_len": [5], "vocab_size": [3]}
TINY = mc.TrainConfig(steps=4, batch_size=16, eval_every=2, eval_samples=32, progress=False)


def _counting(monkeypatch):
    """run_group, counting the members it trains."""
    trained, real = [], sweep_module.run_group

    def counted(members, *args):
        trained.extend(m.index for m in members)
        return real(members, *args)

    monkeypatch.setattr(sweep_module, "run_group", counted)
    return trained


def test_a_changed_recipe_is_another_study_refused_unless_replaced(tmp_path, monkeypatch):
    """The members' keys cover the whole recipe: a study with another config into the
    same folder is refused (naming what differs), and with replace=True trains its own
    members, beside the first study's files; going back reuses the first study's."""
    trained = _counting(monkeypatch)
    first = mc.sweep(SMALL, TINY, out=tmp_path, progress=False)
    files = sorted(p.name for p in (tmp_path / "members").iterdir())
    other = replace(TINY, steps=6, lr=0.05)
    for resume in (True, False):
        with pytest.raises(ValueError, match=r"another study .*lr 0.1 -> 0.05, steps 4 -> 6.*replace=True"):
            mc.sweep(SMALL, other, out=tmp_path, progress=False, resume=resume)
    with pytest.raises(ValueError, match=r"grid of 2 members -> 1"):
        mc.sweep({**SMALL, "seed": [0]}, TINY, out=tmp_path, progress=False)
    assert sorted(p.name for p in (tmp_path / "members").iterdir()) == files
    assert pd.read_csv(tmp_path / "results.csv")["test_loss"].tolist() == pytest.approx(
        first["test_loss"].tolist())
    trained.clear()
    second = mc.sweep(SMALL, other, out=tmp_path, progress=False, replace=True)
    assert trained == [0, 1]  # nothing of the 4-step study was taken for the 6-step one
    fresh = mc.sweep(SMALL, other, out=tmp_path / "fresh", progress=False)
    assert second[METRICS].equals(fresh[METRICS])
    assert set(files) < {p.name for p in (tmp_path / "members").iterdir()}  # nothing lost
    trained.clear()
    back = mc.sweep(SMALL, TINY, out=tmp_path, progress=False, replace=True)
    assert trained == [] and back[METRICS].equals(first[METRICS])
    assert len(pd.read_csv(tmp_path / "results.csv")) == 2


def test_a_folder_with_a_study_but_no_manifest_is_not_overwritten(tmp_path):
    (tmp_path / "results.csv").write_text("member,test_loss\n0,1.0\n")
    with pytest.raises(ValueError, match="without a manifest"):
        mc.sweep(SMALL, TINY, out=tmp_path, progress=False)
    assert (tmp_path / "results.csv").read_text() == "member,test_loss\n0,1.0\n"
    assert not (tmp_path / "study.json").exists()


def test_the_configs_seed_reaches_every_member(tmp_path):
    results = mc.sweep({"graph": ["chain"], "seq_len": [5], "vocab_size": [3]},
                       replace(TINY, seed=7), out=tmp_path, progress=False)
    loaded = mc.load_checkpoint(results["checkpoint"][0])
    assert loaded.config.seed == 7
    task = mc.make_task("chain", seq_len=5, vocab_size=3)
    model = mc.DisentangledTransformer.for_task(task, seed=7)
    alone = mc.train(model, task, replace(TINY, seed=7))
    assert results["test_loss"][0] == pytest.approx(alone.final["test_loss"], abs=1e-6)


def test_resume_recomputes_rows_from_checkpoints_and_retrains_a_broken_one(tmp_path,
                                                                            monkeypatch):
    first = mc.sweep(SMALL, TINY, out=tmp_path, progress=False)
    keys = first["key"].tolist()
    record = tmp_path / "members" / f"{keys[0]}.json"
    edited = json.loads(record.read_text())
    edited["row"].update(test_loss=-5.0, parent_attention=0.99)
    record.write_text(json.dumps(edited))
    (tmp_path / "members" / f"{keys[1]}.pt").write_bytes(b"not a checkpoint")
    trained = _counting(monkeypatch)
    again = mc.sweep(SMALL, TINY, out=tmp_path, progress=False)
    assert trained == [1]  # the garbage checkpoint is not a finished member
    assert again[METRICS].equals(first[METRICS])  # the edited record is not read
    mc.load_checkpoint(tmp_path / "members" / f"{keys[1]}.pt")


def test_sweep_arguments_that_contradict_or_do_not_fit_are_refused(tmp_path):
    with pytest.raises(ValueError, match="address='auto' applies to backend='ray'"):
        mc.sweep(SMALL, TINY, out=tmp_path, address="auto", progress=False)
    with pytest.raises(ValueError, match=r"grid member 0 .*prior=1.0: .*dag task .*no prior"):
        mc.sweep({"graph": ["two_parent"], "prior": [1.0]}, TINY, out=tmp_path,
                 progress=False)
    with pytest.raises(TypeError, match="replace must be True or False"):
        mc.sweep(SMALL, TINY, out=tmp_path, replace="yes")
    assert list(tmp_path.iterdir()) == []


def test_smaller_groups_give_the_same_rows(study, tmp_path):
    _, whole = study
    split = mc.sweep(GRID, CONFIG, out=tmp_path, progress=False, max_group=4)
    assert np.allclose(split[METRICS].to_numpy(dtype=float),
                       whole[METRICS].to_numpy(dtype=float), atol=1e-6)
    with pytest.raises(ValueError, match="max_group must be a positive int"):
        mc.sweep(GRID, CONFIG, out=tmp_path, progress=False, max_group=0)


def test_a_knob_that_does_not_fit_fails_before_any_training(tmp_path):
    with pytest.raises(ValueError, match=r"grid member 1 \(graph='chain', seq_len=0\).*seq_len"):
        mc.sweep({"graph": ["chain"], "seq_len": [5, 0]}, CONFIG, out=tmp_path, progress=False)
    with pytest.raises(ValueError, match="grid knob lr=-1.0"):
        mc.sweep({"lr": [0.1, -1.0]}, CONFIG, out=tmp_path, progress=False)
    with pytest.raises(ValueError, match="unknown knob 'colour'"):
        mc.sweep({"colour": [1]}, CONFIG, out=tmp_path, progress=False)
    assert not (tmp_path / "members").exists()


def test_the_same_grid_on_ray_gives_the_same_rows(study, tmp_path, extra):
    ray = extra("ray", "ray")
    _, local = study
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = mc.sweep(GRID, CONFIG, out=tmp_path, backend="ray", progress=False)
    finally:
        ray.shutdown()
    assert remote[["graph", "seed"]].equals(local[["graph", "seed"]])
    assert np.allclose(remote[METRICS].to_numpy(dtype=float),
                       local[METRICS].to_numpy(dtype=float), atol=1e-6)


def test_the_sweep_command_runs_a_grid_file(tmp_path, capsys):
    assert main(["sweep", "--example"]) == 0
    example = capsys.readouterr().out
    assert "[grid]" in example and "[config]" in example
    grid = tmp_path / "grid.toml"
    grid.write_text('[config]\npreset = "random"\nsteps = 10\nbatch_size = 32\n'
                    'eval_every = 10\neval_samples = 64\n\n'
                    '[grid]\ngraph = ["chain", "icl"]\nseq_len = [6]\nvocab_size = [4]\n')
    assert main(["sweep", str(grid), "--out", str(tmp_path / "study"), "--no-progress"]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "parent_attention" in printed and "icl" in printed
    assert "ensemble" not in captured.err  # --no-progress silences the training bars too
    assert len(pd.read_csv(tmp_path / "study" / "results.csv")) == 2
    # another recipe into the same folder: refused, then replaced on request
    grid.write_text(grid.read_text().replace("steps = 10", "steps = 5\nseed = 9"))
    assert main(["sweep", str(grid), "--out", str(tmp_path / "study"), "--no-progress"]) == 2
    assert "seed 0 -> 9" in capsys.readouterr().err
    assert main(["sweep", str(grid), "--out", str(tmp_path / "study"), "--no-progress",
                 "--replace"]) == 0
    capsys.readouterr()
    written = pd.read_csv(tmp_path / "study" / "results.csv")
    assert [mc.load_checkpoint(p).config.seed for p in written["checkpoint"]] == [9, 9]
    grid.write_text("[grid\n")
    assert main(["sweep", str(grid), "--out", str(tmp_path / "other")]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_the_study_figure(study, tmp_path):
    _, results = study
    fig = plots.sweep_summary(results, x="seed", y="parent_attention", hue="graph")
    path = plots.save_figure(fig, tmp_path / "study.png")
    assert float(np.var(matplotlib.image.imread(path)[..., :3])) > 1e-3
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2  # one per graph
    chain = results[results["graph"] == "chain"].sort_values("seed")["parent_attention"]
    assert np.allclose(lines[0].get_ydata(), chain.to_numpy())
    with pytest.raises(ValueError, match="'colour' is not a column"):
        plots.sweep_summary(results, x="colour")


def test_member_seeds_of_an_ensemble_are_kept():
    tasks = [mc.make_task("random", seq_len=5, vocab_size=3, seed=g) for g in range(2)]
    config = mc.TrainConfig(steps=6, batch_size=16, eval_every=3, eval_samples=32,
                            progress=False)
    ensemble = mc.Ensemble([mc.DisentangledTransformer.for_task(t) for t in tasks])
    histories = mc.train(ensemble, tasks, config, seeds=[9, 4])
    alone = mc.train(mc.DisentangledTransformer.for_task(tasks[1]), tasks[1],
                     replace(config, seed=4))
    assert histories[1].test_loss == pytest.approx(alone.test_loss, abs=1e-6)
    with pytest.raises(ValueError, match="got 1 seeds for 2 members"):
        mc.train(ensemble, tasks, config, seeds=[1])
    with pytest.raises(ValueError, match="seeds= gives an Ensemble"):
        mc.train(mc.DisentangledTransformer.for_task(tasks[0]), tasks[0], config, seeds=[1])
    assert math.isfinite(histories[0].final["test_loss"]) and torch.is_grad_enabled()
