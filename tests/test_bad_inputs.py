"""Every public constructor and diagnostic against wide, wrong-typed and out-of-range
arguments (hypothesis): each call either succeeds with finite results or raises
ValueError / TypeError whose message names the argument.

``CALLS`` is the register: one entry per public callable, its valid arguments at toy
size, and the arguments to draw. ``test_every_public_callable_is_registered`` fails
when a name exported from ``mechcausal`` is neither registered nor exempt (with the
reason), so the check grows with the API. ``MECHCAUSAL_FUZZ_EXAMPLES`` (default 30 per
callable; the slow test draws ten times as many) sets how many draws each gets.
"""

from __future__ import annotations

import atexit
import dataclasses
import importlib.util
import math
import os
import shutil
import tempfile
from pathlib import Path
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mechcausal as mc

EXAMPLES = int(os.environ.get("MECHCAUSAL_FUZZ_EXAMPLES", "30"))
STUDY = tempfile.mkdtemp(prefix="mechcausal-fuzz-sweep-")
atexit.register(shutil.rmtree, STUDY, ignore_errors=True)

# values a user might pass by mistake: wrong types, zero, negatives, NaN, inf, empty,
# huge, tensors and arbitrary objects
WIDE = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 12), st.just(-10**9),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.5, 1.5]),
    st.text(max_size=4), st.lists(st.integers(-2, 4), max_size=3),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.just(torch.zeros(2)), st.just(object()), st.just(()),
)

TASK = mc.make_task("chain", seq_len=4, vocab_size=3)
DAG = mc.make_task("two_parent", seq_len=5, vocab_size=3)
MODEL = mc.DisentangledTransformer.for_task(TASK, init="normal", init_scale=0.5, seed=0)
DAG_MODEL = mc.DisentangledTransformer.for_task(DAG, heads=(2, 1), init="normal",
                                                init_scale=0.5, seed=0)


@dataclasses.dataclass
class Call:
    """``function(**valid)`` succeeds; each name in ``fuzz`` is drawn from ``WIDE`` in
    turn (the others stay valid). ``names``: what an error may call the argument
    (default: its own name). ``slow``: arguments whose None is a valid default that
    does real work (``config=None`` trains 400 steps), not drawn."""

    function: Callable[..., Any]
    valid: dict[str, Any]
    fuzz: tuple[str, ...]
    names: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    slow: tuple[str, ...] = ()


def _config(**overrides: Any) -> mc.TrainConfig:
    return mc.TrainConfig(**{"steps": 2, "batch_size": 8, "eval_every": 2, "eval_samples": 8,
                             "progress": False, "prefetch": False, **overrides})


CONFIG_FIELDS = ("steps", "batch_size", "optimizer", "lr", "weight_decay", "momentum",
                 "adam_eps", "schedule", "warmup_steps", "eval_every", "eval_samples", "seed",
                 "device", "loss", "data", "pool_size", "layer", "prefetch", "progress")

CALLS: dict[str, Call] = {
    "CausalGraph": Call(mc.CausalGraph, {"parents": [(), (0,)]}, ("parents",)),
    "CausalGraph.chain": Call(mc.CausalGraph.chain, {"n": 3}, ("n",)),
    "CausalGraph.icl_pairs": Call(mc.CausalGraph.icl_pairs, {"n": 3}, ("n",)),
    "CausalGraph.random_tree": Call(mc.CausalGraph.random_tree, {"n": 3, "seed": 0},
                                    ("n", "seed")),
    "CausalGraph.random_forest": Call(mc.CausalGraph.random_forest,
                                      {"n": 3, "root_prob": 0.5, "seed": 0},
                                      ("n", "root_prob", "seed")),
    "CausalGraph.markov": Call(mc.CausalGraph.markov, {"n": 3, "order": 1}, ("n", "order")),
    "CausalGraph.two_parent": Call(mc.CausalGraph.two_parent, {"n": 3}, ("n",)),
    "DirichletPrior": Call(mc.DirichletPrior, {"alpha": 0.1}, ("alpha",)),
    "PermutationPrior": Call(mc.PermutationPrior, {"noise": 0.1}, ("noise",)),
    "SparsePrior": Call(mc.SparsePrior, {"support": 2, "alpha": 1.0}, ("support", "alpha")),
    "InContextTree": Call(mc.InContextTree, {"graph": TASK.graph, "vocab_size": 3,
                                             "alpha": 0.1, "prior": None},
                          ("graph", "vocab_size", "alpha", "prior")),
    "InContextDAG": Call(mc.InContextDAG, {"graph": DAG.graph, "vocab_size": 3, "alpha": 0.1},
                         ("graph", "vocab_size", "alpha")),
    "InVocabularyTask": Call(mc.InVocabularyTask, {"base": TASK, "token_ids": [5, 6, 7],
                                                   "bos_token_id": None},
                             ("base", "token_ids", "bos_token_id")),
    "make_task": Call(mc.make_task, {"family": "chain", "seq_len": 3, "vocab_size": 3,
                                     "alpha": 0.1, "seed": 0},
                      ("family", "seq_len", "vocab_size", "alpha", "seed")),
    "task.sample": Call(TASK.sample, {"n": 2, "generator": None, "device": None},
                        ("n", "generator", "device")),
    "task.with_prior": Call(TASK.with_prior, {"prior": mc.DirichletPrior(1.0)}, ("prior",)),
    "task.in_vocabulary": Call(TASK.in_vocabulary, {"token_ids": [3, 4, 5],
                                                    "bos_token_id": 0},
                               ("token_ids", "bos_token_id")),
    "task.bayes": Call(TASK.bayes, {"tokens": TASK.sample(2).tokens}, ("tokens",)),
    "sample_stacked": Call(mc.sample_stacked, {"tasks": [TASK, TASK], "n": 2},
                           ("tasks", "n")),
    "task_from_dict": Call(mc.task_from_dict, {"data": TASK.to_dict()}, ("data",),
                           {"data": ("data", "task", "kind", "graph")}),
    "DisentangledTransformer": Call(
        mc.DisentangledTransformer,
        {"vocab_size": 3, "n_ctx": 5, "heads": (1, 1), "init": "zeros", "init_scale": 1e-4,
         "seed": None, "readout": "softmax", "dtype": torch.float32, "smoothing": 0.1},
        ("vocab_size", "n_ctx", "heads", "init", "init_scale", "seed", "readout", "dtype",
         "smoothing")),
    "DisentangledTransformer.for_task": Call(mc.DisentangledTransformer.for_task,
                                             {"task": TASK}, ("task",)),
    "ReducedModel": Call(mc.ReducedModel, {"vocab_size": 3, "n_ctx": 5, "beta0": 0.0,
                                           "smoothing": 0.1, "dtype": torch.float32},
                         ("vocab_size", "n_ctx", "beta0", "smoothing", "dtype")),
    "model.A": Call(MODEL.A, {"layer": 0, "head": 0}, ("layer", "head")),
    "model.block_slices": Call(MODEL.block_slices, {"layer": 0}, ("layer",)),
    "Ensemble": Call(mc.Ensemble, {"members": [MODEL, MODEL]}, ("members",)),
    "TrainConfig": Call(_config, {}, CONFIG_FIELDS),
    "TrainConfig.quick": Call(mc.TrainConfig.quick, {"name": "chain"}, ("name",),
                              {"name": ("preset",)}),
    "TrainConfig.paper": Call(mc.TrainConfig.paper, {"name": "chain"}, ("name",),
                              {"name": ("preset",)}),
    "EarlyStopping": Call(mc.EarlyStopping, {"metric": "parent_attention", "threshold": 0.9,
                                             "mode": None}, ("metric", "threshold", "mode")),
    "AttentionSnapshots": Call(mc.AttentionSnapshots, {"every": 1, "layer": 0},
                               ("every", "layer")),
    "train": Call(lambda model, task, config: mc.train(model, task, config),
                  {"model": mc.DisentangledTransformer.for_task(TASK), "task": TASK,
                   "config": _config()}, ("model", "task", "config"), slow=("config",)),
    "extract_graph": Call(mc.extract_graph, {"model": MODEL, "task": TASK, "layer": 0,
                                             "n_samples": 8, "seed": 0, "k": None,
                                             "threshold": 0.5, "combine": "sum"},
                          ("model", "task", "layer", "n_samples", "seed", "k", "threshold",
                           "combine")),
    "position_attention": Call(mc.position_attention, {"model": MODEL, "layer": 0, "head": 0},
                               ("model", "layer", "head")),
    "induction_scores": Call(mc.induction_scores, {"model": MODEL, "seq_len": 4,
                                                   "n_batch": 2, "seed": 0},
                             ("model", "seq_len", "n_batch", "seed")),
    "induction_circuit": Call(mc.induction_circuit, {"model": MODEL, "task": TASK,
                                                     "n_candidates": 1, "n_sequences": 4,
                                                     "seed": 0, "batch_size": 2},
                              ("model", "task", "n_candidates", "n_sequences", "seed",
                               "batch_size")),
    "causal_induction_score": Call(mc.causal_induction_score,
                                   {"model": MODEL, "task": TASK, "layer": -1, "n_samples": 8,
                                    "seed": 0}, ("model", "task", "layer", "n_samples", "seed")),
    "estimator_agreement": Call(mc.estimator_agreement, {"model": MODEL, "task": TASK,
                                                         "n_samples": 8, "seed": 0},
                                ("model", "task", "n_samples", "seed")),
    "heldout_losses": Call(mc.heldout_losses, {"model": MODEL, "task": TASK, "n_samples": 8,
                                               "seed": 0}, ("model", "task", "n_samples", "seed")),
    "evaluate": Call(mc.evaluate, {"model": MODEL, "task": TASK, "n_samples": 8, "seed": 0,
                                   "name": "x"}, ("model", "task", "n_samples", "seed", "name")),
    "ood_report": Call(mc.ood_report, {"model": MODEL, "task": TASK, "shifts": None,
                                       "n_samples": 8, "seed": 0},
                       ("model", "task", "shifts", "n_samples", "seed")),
    "patch_parents": Call(mc.patch_parents, {"model": MODEL, "task": TASK, "layer": 0,
                                             "n_samples": 4, "seed": 0, "positions": None},
                          ("model", "task", "layer", "n_samples", "seed", "positions")),
    "head_split": Call(mc.head_split, {"model": DAG_MODEL, "task": DAG, "layer": 0,
                                       "n_samples": 8, "seed": 0},
                       ("model", "task", "layer", "n_samples", "seed")),
    "rank_heads": Call(mc.rank_heads, {"model": MODEL, "task": TASK, "n_samples": 8,
                                       "seed": 0, "patching": False, "n_patch": 4,
                                       "by": "parent_attention"},
                       ("model", "task", "n_samples", "seed", "patching", "n_patch", "by")),
    "probe": Call(mc.probe, {"model": MODEL, "task": TASK, "hook": "blocks.0.hook_resid_post",
                             "target": "token", "n_train": 16, "n_test": 8, "seed": 0},
                  ("model", "task", "hook", "target", "n_train", "n_test", "seed")),
    "probe_sweep": Call(mc.probe_sweep, {"model": MODEL, "task": TASK, "target": "token",
                                         "hooks": ["hook_embed"], "n_train": 16, "n_test": 8},
                        ("model", "task", "target", "hooks", "n_train", "n_test"),
                        {"hooks": ("hooks", "hook")}),
    "chi2_mutual_information": Call(mc.chi2_mutual_information,
                                    {"task": TASK, "n_pi": 4, "seed": 0, "n_mc": 16},
                                    ("task", "n_pi", "seed", "method", "n_mc", "max_states")),
    "gradient_at_init": Call(mc.gradient_at_init, {"task": TASK, "n_samples": 16, "beta0": 0.1,
                                                   "seed": 0, "chunk": 8},
                             ("task", "model", "n_samples", "beta0", "seed", "chunk")),
    "information_report": Call(mc.information_report, {"task": TASK, "n_pi": 4,
                                                       "n_samples": 16, "beta0": 0.1, "seed": 0},
                               ("task", "n_pi", "n_samples", "beta0", "seed")),
    "diagnose": Call(lambda model, task, n_samples, seed: mc.diagnose(
        model, task, n_samples=n_samples, seed=seed),
        {"model": MODEL, "task": TASK, "n_samples": 8, "seed": 0},
        ("task", "n_samples", "seed")),
    "sweep": Call(lambda grid, config, backend: mc.sweep(grid, config, out=STUDY,
                                                         backend=backend, progress=False),
                  {"grid": {"seed": [0], "seq_len": [3], "vocab_size": [3]},
                   "config": _config(), "backend": "local"}, ("grid", "config", "backend")),
    "load_checkpoint": Call(mc.load_checkpoint, {"path": None}, ("path", "device"),
                            {"path": ("path", "checkpoint")}),
    "save_checkpoint": Call(mc.save_checkpoint, {"path": None, "model": MODEL, "task": TASK},
                            ("path", "model", "task", "config", "history")),
}

# the optional extras' entry points, fuzzed where the extra is installed (CI installs them)
EXTRA_CALLS: dict[str, tuple[str, Call]] = {
    "TensorBoardLogger": ("tensorboard", Call(
        mc.TensorBoardLogger, {"logdir": os.path.join(STUDY, "tb"), "step_every": 1,
                               "images": True}, ("logdir", "step_every", "images"))),
    "WandbLogger": ("wandb", Call(
        mc.WandbLogger, {"project": "fuzz", "mode": "offline", "name": None, "tags": (),
                         "config": None, "step_every": 1, "images": True},
        ("project", "mode", "name", "tags", "config", "step_every", "images"))),
    "show_attention": ("circuitsvis", Call(
        mc.show_attention, {"model": MODEL, "tokens": torch.tensor([0, 1, 2]), "layer": 0,
                            "labels": None}, ("model", "tokens", "layer", "labels"))),
}
MISSING_EXTRAS = {name: f"its extra ({module}) is not installed"
                  for name, (module, _) in EXTRA_CALLS.items()
                  if importlib.util.find_spec(module) is None}
CALLS.update({name: call for name, (_, call) in EXTRA_CALLS.items()
              if name not in MISSING_EXTRAS})

# exported names that are not called with user arguments directly, and why
EXEMPT = {
    **MISSING_EXTRAS, "TrackingLogger": "a base class (its subclasses are registered)",
    "Batch": "a record of tensors the samplers build", "Callback": "a base class",
    "Checkpoint": "a record load_checkpoint returns", "CheckpointError": "an exception",
    "NonFiniteLossError": "an exception", "NativeModel": "a base class",
    "Run": "the loop's state handed to callbacks", "History": "a record the loop fills",
    "TwoStageHistory": "a record", "Diagnosis": "a record diagnose returns",
    "Diagnostic": "a registry entry (register_diagnostic checks it)",
    "Finding": "a record a diagnostic returns", "GraphFamily": "a registry entry (checked "
    "by register_graph_family)", "ModelKind": "a registry entry", "InContextTask": "a base "
    "class", "DisentangledConfig": "built and checked by DisentangledTransformer",
    "ReducedConfig": "built and checked by ReducedModel",
    "register_diagnostic": "tests/test_registries.py", "register_graph_family":
    "tests/test_registries.py", "register_model_kind": "tests/test_registries.py",
    "edge_effect": "the inner step of patch_parents and rank_heads, which check for it",
    "hooked_transformer_config": "needs TransformerLens (tests/models/test_export.py)",
    "to_transformer_lens": "needs TransformerLens (tests/models/test_export.py)",
    "standard_model": "needs TransformerLens (tests/training/test_standard_training.py)",
    "load_lm": "needs saved LMs (tests/models/test_pretrained.py)",
    "train_ensemble": "deprecated alias of train", "train_two_stage": "tests/training",
}
RESULT_TYPES = {"CausalInductionScore", "GraphComparison", "GraphEstimate", "HeadRanking",
                "HeadSplit", "InductionCircuit", "InductionScores", "InformationReport", "OODReport",
                "ParentPatching", "ProbeResult", "ProbeSweep", "Evaluation", "AttentionView"}


def test_every_public_callable_is_registered():
    registered = {name.split(".")[0] for name in CALLS}
    missing = [name for name in mc.__all__ if callable(getattr(mc, name))
               and name not in registered | set(EXEMPT) | RESULT_TYPES]
    assert not missing, f"register these in CALLS or EXEMPT (with the reason): {missing}"


def _numbers(value: Any, top: bool = True) -> list[float]:
    """The numbers a result states: its scalars (in dataclasses, dicts, lists), and its
    entries when the result is itself a tensor. Matrix fields of a result object may
    mark undefined entries NaN (documented per field: e.g. keys j >= i)."""
    if isinstance(value, torch.Tensor):
        if top and value.is_floating_point():
            return value.detach().double().flatten().tolist()
        return []
    if isinstance(value, float):
        return [value]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _numbers(v, top)]
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _numbers(v, top)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _numbers({f.name: getattr(value, f.name) for f in dataclasses.fields(value)},
                        top=False)
    return []


def _call(entry: Call, argument: str, value: Any, tmp_path) -> None:
    if value is None and argument in entry.slow:
        return
    kwargs = dict(entry.valid)
    for key in ("path",):
        if key in kwargs and kwargs[key] is None:
            kwargs[key] = tmp_path / "model.pt"
    if entry.function is mc.load_checkpoint:
        mc.save_checkpoint(tmp_path / "model.pt", MODEL, TASK)
    kwargs[argument] = value
    try:
        result = entry.function(**kwargs)
    except (ValueError, TypeError) as error:
        names = entry.names.get(argument, (argument,))
        message = str(error)
        assert any(name in message for name in names), (
            f"{argument}={value!r}: {type(error).__name__} does not name the argument: "
            f"{message}")
        return
    bad = [x for x in _numbers(result) if not math.isfinite(x)]
    assert not bad, f"{argument}={value!r} gave a result with non-finite numbers {bad[:3]}"


def _fuzz(name: str, examples: int, tmp_path) -> None:
    entry = CALLS[name]

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(argument=st.sampled_from(entry.fuzz), value=WIDE)
    def check(argument, value):
        _call(entry, argument, value, tmp_path)

    check()


@pytest.mark.parametrize("name", list(CALLS))
def test_wide_arguments_give_a_result_or_a_clear_error(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a drawn text path (save_checkpoint's) lands here
    _fuzz(name, EXAMPLES, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CALLS))
def test_wide_arguments_many_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fuzz(name, 10 * EXAMPLES, tmp_path)


@pytest.mark.parametrize("name", list(CALLS))
def test_valid_arguments_succeed(name, tmp_path):
    """The register's valid arguments are valid: a failing fuzz case is the fuzzed
    argument's fault."""
    entry = CALLS[name]
    kwargs = {k: (tmp_path / "model.pt" if v is None and k == "path" else v)
              for k, v in entry.valid.items()}
    if entry.function is mc.load_checkpoint:
        mc.save_checkpoint(tmp_path / "model.pt", MODEL, TASK)
    entry.function(**kwargs)


@pytest.mark.parametrize("build, argument", [
    (lambda: mc.InContextTree(mc.CausalGraph.chain(3), vocab_size=10**5).sample(1),
     "vocab_size"),
    (lambda: mc.DisentangledTransformer(10**6, 5), "vocab_size"),
    (lambda: mc.DisentangledTransformer(3, 10**6), "n_ctx"),
    (lambda: mc.ReducedModel(3, 10**6), "n_ctx"),
])
def test_sizes_beyond_memory_are_refused_with_the_figure(build, argument):
    with pytest.raises(ValueError, match=rf"{argument}.*GB"):
        build()


# ---------------------------------------------------------------------- stateful: one study folder
_STUDY_GRIDS = [
    {"graph": ["chain"], "seq_len": [3], "vocab_size": [2], "lr": [0.1, 0.05]},  # two groups
    {"graph": ["chain"], "seq_len": [3], "vocab_size": [2], "seed": [0, 1]},
]
_STUDY_CONFIGS = [mc.TrainConfig(steps=2, batch_size=8, eval_every=2, eval_samples=16,
                                 progress=False)]
# another seed and held-out size: another study under either grid (grid 1 sets the seed)
_STUDY_CONFIGS.append(dataclasses.replace(_STUDY_CONFIGS[0], seed=3, eval_samples=24))
_STUDY_METRICS = ["test_loss", "bayes_loss", "gap", "parent_attention", "parent_accuracy",
                  "f1"]
_FRESH: dict[tuple[int, int], Any] = {}  # (grid, config) -> a fresh sweep's rows


def _fresh_rows(g: int, c: int) -> Any:
    if (g, c) not in _FRESH:
        folder = tempfile.mkdtemp(prefix="mechcausal-fresh-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _FRESH[g, c] = mc.sweep(_STUDY_GRIDS[g], _STUDY_CONFIGS[c], out=folder,
                                progress=False)[_STUDY_METRICS]
    return _FRESH[g, c]


def test_a_study_folder_through_reruns_kills_and_other_studies():
    """Random sequences of sweeps (grid g, config c), kills mid-study, garbage
    checkpoints and other studies into one folder: the rows a sweep reports always
    equal a fresh sweep's of the same (g, c), another study is refused unless replaced,
    and no finished member's checkpoint is ever lost."""
    import numpy as np
    from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

    import mechcausal.experiments.sweeps as sweeps

    class Study(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.out = tempfile.mkdtemp(prefix="mechcausal-study-")
            self.holds: tuple[int, int] | None = None  # the study the folder holds
            self.finished: set[str] = set()  # member checkpoints written, not broken

        def teardown(self):
            shutil.rmtree(self.out, ignore_errors=True)

        def _sweep(self, g: int, c: int, replace: bool, kill: bool = False):
            real = sweeps.run_group
            groups = []

            def run(members, *args):
                if kill and groups:
                    raise KeyboardInterrupt  # killed during the second group
                groups.append(members)
                return real(members, *args)

            sweeps.run_group = run
            try:
                return mc.sweep(_STUDY_GRIDS[g], _STUDY_CONFIGS[c], out=self.out,
                                progress=False, replace=replace)
            finally:
                sweeps.run_group = real
                self.finished |= {p.name for p in
                                  (Path(self.out) / "members").glob("*.pt")}

        @rule(g=st.integers(0, 1), c=st.integers(0, 1), replace=st.booleans())
        def sweep(self, g, c, replace):
            other = self.holds not in (None, (g, c))
            if other and not replace:
                with pytest.raises(ValueError, match="another study"):
                    self._sweep(g, c, replace)
                return
            rows = self._sweep(g, c, replace)
            self.holds = (g, c)
            assert np.allclose(rows[_STUDY_METRICS].to_numpy(dtype=float),
                               _fresh_rows(g, c).to_numpy(dtype=float), atol=1e-6,
                               equal_nan=True)

        @rule(c=st.integers(0, 1))
        def kill_mid_study(self, c):
            if self.holds not in (None, (0, c)):
                return
            try:
                self._sweep(0, c, False, kill=True)
            except KeyboardInterrupt:
                pass
            self.holds = (0, c)

        @rule(k=st.integers(0, 9))
        def break_a_checkpoint(self, k):
            files = sorted((Path(self.out) / "members").glob("*.pt"))
            if files:
                broken = files[k % len(files)]
                broken.write_bytes(b"garbage")
                self.finished.discard(broken.name)

        @invariant()
        def no_finished_member_is_lost(self):
            members = Path(self.out) / "members"
            assert all((members / name).is_file() for name in self.finished)

    Study.TestCase.settings = settings(max_examples=6, stateful_step_count=5, deadline=None,
                                       database=None, suppress_health_check=list(HealthCheck))
    Study.TestCase().runTest()
