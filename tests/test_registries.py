"""Extension points: a graph family, a diagnostic and a model kind registered from
outside the package reach the CLI, the presets, ``diagnose`` and checkpoints; and the
package's layers import only the layers below them."""

import ast
import json
from pathlib import Path

import pytest
import torch

import mechcausal as mc
from mechcausal.cli import main as cli_main


@pytest.fixture
def skip_two_family():
    """A family that is not in the package: p(i) = i - 2."""
    family = mc.GraphFamily(
        "skip_two", lambda n, seed: mc.CausalGraph.from_parents([-1, -1][:n] + list(range(n - 2))),
        "tree", "skip-two chain", "p(i) = i - 2", vocab_size=4, seq_len=10,
        quick=dict(steps=300, batch_size=256, optimizer="adam", lr=0.1, schedule="cosine"),
        paper=dict(steps=2**10, batch_size=1024, optimizer="sgd", lr=1.0))
    mc.register_graph_family(family)
    yield family
    del mc.GRAPH_FAMILIES["skip_two"]


def test_a_registered_graph_family_reaches_the_cli_presets_and_tasks(skip_two_family,
                                                                      tmp_path, capsys):
    assert mc.CausalGraph.family("skip_two", 5).parents == ((), (), (0,), (1,), (2,))
    task = mc.make_task("skip_two")
    assert isinstance(task, mc.InContextTree) and task.context_length == 10
    assert mc.TrainConfig.quick("skip_two").steps == 300
    assert mc.TrainConfig.paper("skip_two").optimizer == "sgd"
    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    assert "skip_two" in capsys.readouterr().out
    out = tmp_path / "run"
    assert cli_main(["train", "--graph", "skip_two", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "parent attention" in printed
    summary = json.loads((out / "summary.json").read_text())
    # the graph is learned (seed 0: 0.82; uniform attention would give 0.18)
    assert summary["parent_attention"] >= 0.75
    assert mc.load_checkpoint(out / "checkpoint.pt").task.graph == mc.CausalGraph.family(
        "skip_two", 10)
    with pytest.raises(ValueError, match="already registered"):
        mc.register_graph_family(skip_two_family)


def test_unknown_families_and_parameters_are_named():
    with pytest.raises(ValueError, match="unknown graph family 'ring'; registered: chain"):
        mc.make_task("ring")
    with pytest.raises(ValueError, match="'chain' takes no parameter 'order'"):
        mc.CausalGraph.family("chain", 5, order=2)
    assert mc.CausalGraph.family("markov", 5, order=3).max_parents == 3
    assert cli_main(["train", "--graph", "chain", "--order", "2", "--steps", "1"]) == 2


@pytest.fixture
def depth_diagnostic():
    """A diagnostic that is not in the package: the graph's longest path to a root."""

    def longest_path(subject):
        depth = []
        for parents in subject.task.graph.parents:
            depth.append(1 + max((depth[p] for p in parents), default=-1))
        return mc.Finding({"depth": max(depth)}, f"longest path to a root: {max(depth)} edges")

    diagnostic = mc.register_diagnostic(mc.Diagnostic(
        "depth", longest_path,
        skip=lambda subject: None if subject.task.graph.edges else "the graph has no edges"))
    yield diagnostic
    del mc.DIAGNOSTICS["depth"]


def test_a_registered_diagnostic_appears_in_diagnose(depth_diagnostic, tmp_path, capsys):
    task = mc.InContextTree(mc.CausalGraph.chain(6), vocab_size=4)
    model = mc.DisentangledTransformer.for_task(task)
    path = mc.save_checkpoint(tmp_path / "ck.pt", model, task)
    assert cli_main(["diagnose", str(path), "--n-samples", "32"]) == 0
    assert "longest path to a root: 5 edges" in capsys.readouterr().out
    summary = json.loads((tmp_path / "diagnose_ck" / "diagnosis.json").read_text())
    assert summary["depth"] == {"depth": 5}
    roots = mc.InContextTree(mc.CausalGraph([()] * 6), vocab_size=4)
    result = mc.diagnose(mc.DisentangledTransformer.for_task(roots), roots, n_samples=32)
    assert result.skipped["depth"] == "the graph has no edges"


def test_a_registered_model_kind_checkpoints(tmp_path):
    """A model class of a user's own, registered once, saves and loads like ours."""

    class Shifted(mc.DisentangledTransformer):
        pass

    kind = mc.ModelKind(
        "shifted", lambda model: isinstance(model, Shifted), lambda model: model.cfg.to_dict(),
        lambda config: Shifted.from_config(mc.DisentangledConfig.from_dict(config)),
        lambda model: "Shifted")
    mc.MODEL_KINDS.pop("shifted", None)
    kinds = dict(mc.MODEL_KINDS)
    mc.MODEL_KINDS.clear()
    mc.MODEL_KINDS.update({"shifted": kind, **kinds})  # tried before its parent class
    try:
        task = mc.InContextTree(mc.CausalGraph.chain(5), vocab_size=3)
        model = Shifted(3, 6, init="normal", init_scale=0.5, seed=1)
        loaded = mc.load_checkpoint(mc.save_checkpoint(tmp_path / "s.pt", model, task)).model
        tokens = task.sample(4, generator=torch.Generator().manual_seed(0)).tokens
        assert type(loaded) is Shifted and torch.equal(loaded(tokens), model(tokens))
    finally:
        mc.MODEL_KINDS.clear()
        mc.MODEL_KINDS.update(kinds)


# ---------------------------------------------------------------------- layering
PACKAGE = Path(mc.__file__).parent
# each layer may import itself and the layers before it
LAYERS = ["ops", "files", "progress", "graphs", "data", "models", "plots", "diagnostics", "training",
          "experiments", "cli"]


def _layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "__init__"


def _imports(path: Path, module: str) -> set[str]:
    """The mechcausal modules ``path`` (module ``module``) imports, absolute names."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("mechcausal"):
                found.add(target)
                found.update(f"{target}.{alias.name}" for alias in node.names
                             if (PACKAGE / Path(*f"{target}.{alias.name}".split(".")[1:])
                                 ).with_suffix(".py").exists())
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("mechcausal"))
    return found


def test_no_module_imports_a_later_layer():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        own = _layer(module)
        if own == "__init__":
            continue
        for target in _imports(path, module):
            other = _layer(target)
            if target == "mechcausal" and path.name != "__init__.py":
                # `from .. import plots` names a module (checked on its own); the root
                # package itself imports every layer
                names = {a.name for node in ast.walk(ast.parse(path.read_text()))
                         if isinstance(node, ast.ImportFrom) and node.level == (
                             module.count(".")) and not node.module for a in node.names}
                if not all((PACKAGE / f"{name}.py").exists() or (PACKAGE / name).is_dir()
                           for name in names):
                    violations.append(f"{module} imports the root package")
                continue
            if other != own and (other not in LAYERS or LAYERS.index(other) > LAYERS.index(own)):
                violations.append(f"{module} imports {target}")
    assert violations == []


def test_registrations_are_checked_when_made():
    recipe = dict(steps=10)
    good = dict(build=lambda n, seed: mc.CausalGraph.chain(n), task="tree", description="d",
                rule="r", vocab_size=4, seq_len=5, quick=recipe, paper=recipe)
    with pytest.raises(ValueError, match="name must be a non-empty identifier"):
        mc.GraphFamily(5, **good)
    with pytest.raises(TypeError, match="build must be a function"):
        mc.GraphFamily("x", **{**good, "build": "chain"})
    with pytest.raises(ValueError, match="vocab_size must be >= 2, got 1"):
        mc.GraphFamily("x", **{**good, "vocab_size": 1})
    with pytest.raises(ValueError, match="init must be one of"):
        mc.GraphFamily("x", **{**good, "init": "bogus"})
    longer = mc.GraphFamily("x", **{**good, "build": lambda n, seed: mc.CausalGraph.chain(n + 3)})
    with pytest.raises(ValueError, match="build.5, .... must return a CausalGraph of 5 nodes, "
                                         "got 8 nodes"):
        longer.graph(5)
    mc.register_graph_family(mc.GraphFamily("typo_recipe", **{**good, "quick": {"stepz": 3}}))
    try:
        with pytest.raises(ValueError, match="quick preset 'typo_recipe' sets 'stepz', which "
                                             "is not a TrainConfig field"):
            mc.TrainConfig.quick("typo_recipe")
    finally:
        del mc.GRAPH_FAMILIES["typo_recipe"]
    with pytest.raises(TypeError, match="diagnostic 'x': run must be a function"):
        mc.Diagnostic("x", "abc")


def test_a_failing_diagnostic_is_reported_and_the_others_still_run():
    def broken(subject):
        raise RuntimeError("this diagnostic is broken")

    mc.register_diagnostic(mc.Diagnostic("broken", broken))
    mc.register_diagnostic(mc.Diagnostic("not_a_finding", lambda subject: None))
    try:
        task = mc.InContextTree(mc.CausalGraph.chain(6), vocab_size=4)
        model = mc.DisentangledTransformer.for_task(task).train()
        with pytest.warns(RuntimeWarning) as caught:
            result = mc.diagnose(model, task, n_samples=32)
        assert sorted(str(w.message).split(":")[0] for w in caught) == [
            "diagnostic 'broken' failed", "diagnostic 'not_a_finding' failed"]
        assert result.failed == {"broken": "RuntimeError: this diagnostic is broken",
                                 "not_a_finding": "TypeError: its run returned a NoneType, "
                                                  "not a Finding"}
        assert {"graph", "losses", "patching"} <= set(result.summary)
        assert model.training  # the caller's mode is left as it was
    finally:
        del mc.DIAGNOSTICS["broken"], mc.DIAGNOSTICS["not_a_finding"]
