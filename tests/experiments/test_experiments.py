"""The named experiments, `mechcausal reproduce` and `mechcausal diagnose`, shrunk to
smoke-test size through settings overrides (seconds, not minutes)."""

import json

import matplotlib.image
import numpy as np
import pytest
import torch

import mechcausal as mc
import mechcausal.experiments as ex
from mechcausal.cli import main as cli_main
from mechcausal.experiments.registry import _accepted_keys

# every experiment at toy size: a few steps on 6 positions, small sample counts
TINY = {"steps": 4, "batch_size": 32, "seq_len": 6, "eval_samples": 64, "n_graphs": 2,
        "n_pi": 4, "n_samples": 128, "d_model": 16}

EXPECTED_METRICS = {
    "fig2_chain": {"parent_accuracy", "parent_attention", "f1", "shd", "losses", "gap",
                   "causal_induction_mass", "train_config"},
    "fig2_icl": {"parent_accuracy", "parent_attention", "losses", "gap"},
    "fig2_random": {"parent_accuracy", "parent_attention", "losses", "gap"},
    "fig5_two_parent": {"split", "losses", "parent_attention", "train_config"},
    "fig8_mlp": {"parent_accuracy", "parent_attention", "induction_scores", "losses"},
    "fig9_many_graphs": {"position_parent_attention", "parent_attention", "graph_seeds"},
    "theory_gradient_mi": {"chain", "icl", "random"},
    "algorithm1_reduced": {"a1_parent_min", "a1_parent_mean", "losses"},
    "ood": {"evaluations"},
}


def not_blank(path) -> bool:
    return float(np.var(matplotlib.image.imread(path)[..., :3])) > 1e-3


def test_registry_names_and_scales():
    assert list(ex.EXPERIMENTS) == list(EXPECTED_METRICS)
    for experiment in ex.EXPERIMENTS.values():
        assert experiment.quick and experiment.paper


@pytest.mark.parametrize("name, preset", [("fig2_chain", "chain"), ("fig2_random", "random"),
                                          ("fig5_two_parent", "two_parent"),
                                          ("fig8_mlp", "mlp"), ("fig9_many_graphs", "figure9")])
def test_paper_scale_uses_official_hyperparameters(name, preset):
    ctx = ex.RunContext(name, "paper", ex.experiment_settings(name, "paper"))
    config, official = ctx.train_config(preset), mc.TrainConfig.paper(preset)
    for key in ("steps", "batch_size", "optimizer", "lr", "weight_decay", "schedule", "data"):
        assert getattr(config, key) == getattr(official, key), key
    assert config.eval_samples == 2**16 or name == "fig9_many_graphs"


def test_bad_input_errors_name_the_valid_choices():
    with pytest.raises(ValueError, match="unknown experiment 'fig3'.*fig2_chain.*ood"):
        ex.run_experiment("fig3")
    with pytest.raises(ValueError, match="unknown setting 'n_graphs' for fig2_chain"):
        ex.run_experiment("fig2_chain", overrides={"n_graphs": 3})
    with pytest.raises(ValueError, match="scale must be one of"):
        ex.run_experiment("fig2_chain", scale="huge")


@pytest.mark.parametrize("name", list(EXPECTED_METRICS))
def test_every_experiment_runs_tiny(name):
    result = ex.run_experiment(name, overrides={k: v for k, v in TINY.items()
                                                if k in _accepted_keys(ex.EXPERIMENTS[name])},
                               progress=False)
    assert EXPECTED_METRICS[name] <= set(result.metrics)
    assert result.claims and all(isinstance(c.holds, bool) for c in result.claims)
    assert result.figures
    json.dumps(result.to_dict())  # JSON-ready (NaN -> null)
    assert result.sizes.startswith("S=")


def test_figure9_reports_the_official_statistic_of_each_member():
    overrides = {"steps": 20, "batch_size": 32, "eval_samples": 64, "seq_len": 8, "n_graphs": 3}
    result = ex.run_experiment("fig9_many_graphs", overrides=overrides, progress=False)
    official = result.metrics["position_parent_attention"]
    averaged = result.metrics["parent_attention"]
    for g in range(3):
        checkpoint = result.checkpoints[f"fig9_graph{g:02d}"]
        S, graph = checkpoint.task.vocab_size, checkpoint.task.graph
        if not graph.edges:
            continue
        soft = torch.softmax(checkpoint.model.A(0, 0)[S:, S:].detach().masked_fill(
            ~torch.ones(9, 9, dtype=torch.bool).tril(), float("-inf")), dim=-1)
        by_hand = torch.stack([soft[i, p] for p, i in graph.edges]).mean().item()
        assert official["per_graph"][g].item() == pytest.approx(by_hand, abs=1e-6)
    per_graph = official["per_graph"][~official["per_graph"].isnan()]
    assert official["sd"] == pytest.approx(per_graph.std(correction=0).item(), abs=1e-6)
    assert averaged["mean"] != pytest.approx(official["mean"], abs=1e-6)
    assert "official statistic" in result.claims[0].claim
    assert "averaged over data" in result.claims[1].claim


def test_reproduce_cli_writes_report_metrics_figures_checkpoints(tmp_path, capsys):
    out = tmp_path / "repro"
    code = cli_main(["reproduce", "--quick", "--only", "fig2_chain", "--out", str(out),
                     "--no-progress", "--set", "steps=5", "--set", "seq_len=6",
                     "--set", "eval_samples=64", "--set", "batch_size=32"])
    assert code == 0
    report = (out / "report.md").read_text()
    assert "| experiment | sizes | claim | ours | paper / official | holds |" in report
    assert "| fig2_chain | S=10, T=6 + query = input 7 |" in report
    assert report.count("| fig2_chain |") >= 3
    assert "steps=5" in report
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["meta"]["scale"] == "quick"
    assert metrics["meta"]["overrides"] == {"steps": 5, "seq_len": 6, "eval_samples": 64,
                                            "batch_size": 32}
    chain = metrics["experiments"]["fig2_chain"]
    assert EXPECTED_METRICS["fig2_chain"] <= set(chain["metrics"])
    assert {"claim", "ours", "paper", "holds"} == set(chain["claims"][0])
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == ["fig2_chain_graph.png", "fig2_chain_loss.png", "fig2_chain_weights.png"]
    assert all(not_blank(out / "figures" / name) for name in figures)
    checkpoint = mc.load_checkpoint(out / "checkpoints" / "fig2_chain.pt")
    assert checkpoint.task.context_length == 6 and checkpoint.history.eval_step[-1] == 5


def test_reproduce_cli_rejects_unknown_names(tmp_path, capsys):
    assert cli_main(["reproduce", "--only", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown experiment 'nope'" in err and "fig9_many_graphs" in err
    assert cli_main(["reproduce", "--device", "tpu", "--out", str(tmp_path)]) == 2
    assert "--device='tpu': device must be 'cpu', 'cuda'" in capsys.readouterr().err
    not_checkpoint = tmp_path / "notes.pt"
    not_checkpoint.write_text("not a checkpoint")
    assert cli_main(["diagnose", str(not_checkpoint)]) == 2
    assert "is not a readable mechcausal checkpoint" in capsys.readouterr().err


def test_reproduce_cli_set_needs_key_value():
    with pytest.raises(SystemExit):
        cli_main(["reproduce", "--set", "steps"])


def test_diagnose_cli_on_tiny_checkpoint(tmp_path, capsys):
    task = mc.InContextTree(mc.CausalGraph.chain(6), vocab_size=4)
    model = mc.DisentangledTransformer.for_task(task)
    config = mc.TrainConfig(steps=5, batch_size=32, eval_samples=64, progress=False)
    history = mc.train(model, task, config)
    path = mc.save_checkpoint(tmp_path / "tiny.pt", model, task, config, history)
    assert cli_main(["diagnose", str(path), "--n-samples", "64"]) == 0
    printed = capsys.readouterr().out
    assert "parent accuracy" in printed and "skipped" in printed
    out = tmp_path / "diagnose_tiny"
    summary = json.loads((out / "diagnosis.json").read_text())
    assert {"graph", "losses", "information", "induction_scores", "causal_induction", "ood",
            "patching", "skipped"} <= set(summary)
    figures = {p.stem for p in (out / "figures").iterdir()}
    assert {"graph", "loss", "weights", "information", "induction_scores", "patching"} <= figures
    assert not_blank(out / "figures" / "weights.png")
    assert cli_main(["diagnose", str(tmp_path / "missing.pt")]) == 2


def test_diagnose_two_heads_dag():
    task = mc.InContextDAG(mc.CausalGraph.two_parent(7), vocab_size=3)
    model = mc.DisentangledTransformer.for_task(task, heads=(2, 1), init="normal", seed=0)
    result = mc.diagnose(model, task, n_samples=64)
    assert "head_split" in result.summary and "heads" in result.figures
    assert "one_nn" in result.summary["losses"]
    assert {"training", "causal_induction", "ood"} <= set(result.skipped)


@pytest.mark.tl
def test_reproduce_writes_a_figure8_checkpoint_that_load_checkpoint_reads(tmp_path):
    """The standard TL model of Figure 8 goes through the one checkpoint format."""
    out = tmp_path / "repro"
    ex.reproduce(["fig8_mlp"], out=out, overrides={"steps": 3, "seq_len": 6, "d_model": 16,
                                                   "eval_samples": 32, "batch_size": 16},
                 progress=False, log=lambda line: None)
    loaded = mc.load_checkpoint(out / "checkpoints" / "fig8_mlp.pt")
    assert mc.models.model_kind(loaded.model).name == "transformer_lens"
    assert loaded.task.context_length == 6 and loaded.history.eval_step[-1] == 3
    tokens = loaded.task.sample(4, generator=torch.Generator().manual_seed(0)).tokens
    assert torch.isfinite(loaded.model(tokens)).all()
    assert mc.diagnose(loaded, n_samples=32).summary["model"].startswith(
        type(loaded.model).__name__)


def test_the_schedule_keeps_reused_models_in_one_process_and_starts_long_ones_first():
    units = ex.schedule(list(ex.EXPERIMENTS), "quick")
    assert ["fig2_chain", "ood"] in units
    assert sorted(name for unit in units for name in unit) == sorted(ex.EXPERIMENTS)
    expected = [sum(ex.EXPERIMENTS[n].expected_seconds("quick") for n in unit) for unit in units]
    assert expected == sorted(expected, reverse=True)


def _numbers(value, key=""):
    """The numbers in a JSON-ready result, wall times left out."""
    if isinstance(value, dict):
        return [x for k, v in sorted(value.items()) if "seconds" not in k and "time" not in k
                for x in _numbers(v, k)]
    if isinstance(value, list):
        return [x for v in value for x in _numbers(v, key)]
    return [float(value)] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def test_reproduce_in_two_processes_gives_the_results_of_one(tmp_path):
    names = ["fig2_chain", "fig8_mlp", "theory_gradient_mi", "ood"]  # fig8: a TL model
    overrides = {"steps": 6, "batch_size": 32, "seq_len": 6, "eval_samples": 64, "n_pi": 4,
                 "n_samples": 128, "d_model": 16}
    lines = {1: [], 2: []}
    results = {jobs: ex.reproduce(names, out=tmp_path / str(jobs), overrides=overrides,
                                  progress=False, jobs=jobs, log=lines[jobs].append)
               for jobs in (1, 2)}
    assert [r.name for r in results[2]] == names
    for one, two in zip(results[1], results[2]):
        assert [c.to_dict() for c in one.claims] == [c.to_dict() for c in two.claims]
        # one process has 2 threads, the other 1: sums in another order
        assert _numbers(two.to_dict()["metrics"]) == pytest.approx(
            _numbers(one.to_dict()["metrics"]), rel=1e-5, abs=1e-7)
    assert any(line.startswith("4 experiments in 2 processes") for line in lines[2])
    assert any("left" in line for line in lines[2]) and "4/4 done" in lines[2][-1]
    for one, two in zip(results[1], results[2]):  # checkpoints read back from the files
        assert one.checkpoints.keys() == two.checkpoints.keys()
        for name, checkpoint in two.checkpoints.items():
            for (key, a), b in zip(one.checkpoints[name].model.state_dict().items(),
                                   checkpoint.model.state_dict().values()):
                assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (name, key)
    report = (tmp_path / "2" / "report.md").read_text()
    assert report.index("| fig2_chain |") < report.index("| fig8_mlp |") < \
        report.index("| theory_gradient_mi |") < report.index("| ood |")


def test_a_failing_experiment_in_a_worker_keeps_the_others_results(tmp_path):
    import failing_experiment  # noqa: F401 - registers "failing_on_purpose" (and so in workers)

    lines = []
    try:
        with pytest.raises(ValueError, match="fails on purpose"):
            ex.reproduce(["fig2_chain", "failing_on_purpose"], out=tmp_path, jobs=2,
                         overrides={"steps": 4, "batch_size": 32, "seq_len": 6,
                                    "eval_samples": 64}, progress=False, log=lines.append)
    finally:
        del ex.EXPERIMENTS["failing_on_purpose"]
    assert any("failing_on_purpose: failed: this experiment fails" in line for line in lines)
    assert "| fig2_chain |" in (tmp_path / "report.md").read_text()


def test_an_experiment_defined_in_a_session_cannot_go_to_a_worker(tmp_path):
    def local(ctx):
        raise AssertionError("never runs")

    local.__module__ = "__main__"  # as in a notebook
    ex.register_experiment(ex.Experiment("session_only", "-", "local", local, {}, {},
                                         trains=False))
    try:
        with pytest.raises(ValueError, match="'session_only'.*use jobs=1"):
            ex.reproduce(["theory_gradient_mi", "session_only"], out=tmp_path, jobs=2,
                         progress=False, log=lambda line: None)
    finally:
        del ex.EXPERIMENTS["session_only"]


def _fake_runs(outcomes):
    """report._run replaced: an experiment's result is a number (one claim), or the
    exception it raises."""
    def run(name, scale, seed, device, overrides, progress, cache):
        outcome = outcomes[name]
        if isinstance(outcome, BaseException):
            raise outcome
        return ex.ExperimentResult(name, scale, {"seed": seed}, {"value": outcome},
                                   [ex.Claim(f"{name} claim", f"{outcome}", "-", True)])
    return run


def _strict(path):
    def refuse(constant):
        raise ValueError(f"{path}: bare {constant} is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_an_interrupted_or_failed_reproduce_says_what_ran_and_a_rerun_merges(tmp_path,
                                                                             monkeypatch):
    import mechcausal.experiments.report as report_module

    names = ["fig2_chain", "fig2_icl", "fig2_random"]
    monkeypatch.setattr(report_module, "_run", _fake_runs(
        {"fig2_chain": 1.5, "fig2_icl": KeyboardInterrupt(), "fig2_random": 3.0}))
    with pytest.raises(KeyboardInterrupt):
        ex.reproduce(names, out=tmp_path, progress=False, log=lambda line: None)
    report = (tmp_path / "report.md").read_text()
    assert "**This report is partial.**" in report
    assert "- Finished: fig2_chain" in report and "- Never ran: fig2_random" in report
    assert "- Interrupted while running: fig2_icl" in report
    assert _strict(tmp_path / "metrics.json")["status"] == {
        "fig2_chain": "finished", "fig2_icl": "interrupted", "fig2_random": "not run"}

    monkeypatch.setattr(report_module, "_run", _fake_runs(
        {"fig2_icl": ValueError("broke on purpose"), "fig2_random": 3.0}))
    with pytest.raises(ValueError, match="on purpose"):
        ex.reproduce(["fig2_icl", "fig2_random"], out=tmp_path, progress=False,
                     log=lambda line: None, command="second")
    report = (tmp_path / "report.md").read_text()
    assert "- Failed: fig2_icl (broke on purpose)" in report
    assert "| fig2_chain claim | 1.5 |" in report  # the first run's row is kept
    metrics = _strict(tmp_path / "metrics.json")
    assert metrics["status"]["fig2_chain"].startswith("earlier run")
    assert metrics["status"]["fig2_random"] == "not run"

    monkeypatch.setattr(report_module, "_run", _fake_runs({"fig2_icl": 2.5,
                                                           "fig2_random": 3.0}))
    ex.reproduce(["fig2_random", "fig2_icl"], out=tmp_path, progress=False,
                 log=lambda line: None, command="third")
    metrics = _strict(tmp_path / "metrics.json")
    assert list(metrics["experiments"]) == names  # merged, in the registry's order
    assert metrics["experiments"]["fig2_chain"]["metrics"] == {"value": 1.5}
    assert metrics["experiments"]["fig2_icl"]["run"]["command"] == "third"
    report = (tmp_path / "report.md").read_text()
    assert "**This report merges runs.**" in report and "| fig2_random claim | 3.0 |" in report
    with pytest.raises(ValueError, match="quick-scale report; a paper-scale run would mix"):
        ex.reproduce(["fig2_icl"], scale="paper", out=tmp_path, progress=False)
