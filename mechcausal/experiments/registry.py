"""The experiments registry: what an experiment is, what it receives and returns, and
how its settings are resolved and run.

Each experiment runs at a *scale*: ``"quick"`` (our CPU recipes, minutes on a laptop)
or ``"paper"`` (the official hyperparameters of ``TrainConfig.paper``; hours on a CPU,
meant for a GPU). It returns an :class:`ExperimentResult`: JSON-ready metrics, the
paper's claims with our number, the paper's or official number and whether ours meets
the stated criterion, matplotlib figures and in-memory checkpoints.

An experiment's settings (task sizes, training steps, sample counts) come from its
table for the scale; ``overrides`` replace any of them, e.g. ``{"steps": 20,
"seq_len": 6}`` shrinks an experiment to a smoke test. :data:`EXPERIMENTS` lists them
(the paper's: :mod:`mechcausal.experiments.paper`); :func:`register_experiment` adds one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from matplotlib.figure import Figure

from ..data.tasks import InContextTask
from ..graphs import check_nodes
from ..models.disentangled import check_beta0
from ..ops import (check_concentration, check_number, check_positive_int, register,
                   to_json)
from ..training.checkpoint import Checkpoint
from ..training.config import TrainConfig

Scale = Literal["quick", "paper"]
SCALES: tuple[str, ...] = ("quick", "paper")
# bump when a preset changes what an experiment measures
VERSION = 1

# TrainConfig fields an experiment's settings may set; the rest come from the preset
TRAIN_KEYS = ("steps", "batch_size", "optimizer", "lr", "weight_decay", "adam_eps", "schedule")


# ---------------------------------------------------------------------- results
@dataclass
class Claim:
    """One row of the report: a statement of the paper and how our run compares.

    Attributes:
        claim: the statement, with our pass criterion where it is a threshold.
        ours: our number(s), formatted.
        paper: the paper's or the official code's number, or what its figure shows.
        holds: whether our number meets the criterion.
    """

    claim: str
    ours: str
    paper: str
    holds: bool

    def to_dict(self) -> dict[str, Any]:
        return {"claim": self.claim, "ours": self.ours, "paper": self.paper,
                "holds": bool(self.holds)}


@dataclass
class ExperimentResult:
    """What one experiment produced.

    Attributes:
        name, scale: which experiment at which scale.
        settings: the resolved settings (table for the scale plus overrides).
        metrics: JSON-ready numbers (and the train configs used).
        claims: report rows.
        figures: name -> Figure (file stem under ``figures/``).
        checkpoints: name -> model, task, config, history (file stem under
            ``checkpoints/``).
        seconds: wall time of the experiment.
        sizes: the task's sizes in words (vocabulary, context, input length).
        peak_rss_mb: the peak resident memory of the process that ran it, by its end
            (None: not measurable on this platform).
    """

    name: str
    scale: str
    settings: dict[str, Any]
    metrics: dict[str, Any]
    claims: list[Claim]
    figures: dict[str, Figure] = field(default_factory=dict)
    checkpoints: dict[str, Checkpoint] = field(default_factory=dict)
    seconds: float = 0.0
    sizes: str = ""
    peak_rss_mb: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return to_json({
            "name": self.name, "scale": self.scale, "version": VERSION,
            "settings": self.settings, "metrics": self.metrics,
            "claims": [claim.to_dict() for claim in self.claims],
            "figures": sorted(self.figures), "checkpoints": sorted(self.checkpoints),
            "seconds": self.seconds, "sizes": self.sizes, "peak_rss_mb": self.peak_rss_mb,
        })

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExperimentResult:
        """A result read back from ``metrics.json`` (figures and checkpoints by name
        only: they stay in their files); KeyError / TypeError for another layout."""
        return cls(name=data["name"], scale=data["scale"], settings=dict(data["settings"]),
                   metrics=dict(data["metrics"]),
                   claims=[Claim(c["claim"], c["ours"], c["paper"], bool(c["holds"]))
                           for c in data["claims"]],
                   figures=dict.fromkeys(data.get("figures", [])),
                   checkpoints=dict.fromkeys(data.get("checkpoints", [])),
                   seconds=float(data.get("seconds") or 0.0), sizes=str(data.get("sizes", "")),
                   peak_rss_mb=data.get("peak_rss_mb"))


def task_sizes(task: InContextTask) -> str:
    """``S=10, T=19 + query = input 20`` (a tree task) or ``S=5, input 32 (T=32, target
    node 32)`` (a DAG task): what a report row was measured at."""
    if task.kind == "dag":
        return (f"S={task.vocab_size}, input {task.input_length} (T={task.context_length}, "
                f"target node {task.context_length})")
    return f"S={task.vocab_size}, T={task.context_length} + query = input {task.input_length}"


# ---------------------------------------------------------------------- context
@dataclass
class RunContext:
    """What an experiment function receives.

    Attributes:
        name, scale: the experiment and its scale.
        settings: resolved settings.
        seed: seeds graphs, initialisation, data and evaluation samples.
        device: where training runs.
        progress: show training progress bars.
        cache: trained models shared between experiments of one ``reproduce`` run
            (``ood`` reuses ``fig2_chain``'s model when the settings agree).
    """

    name: str
    scale: Scale
    settings: dict[str, Any]
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    cache: dict[Any, Any] = field(default_factory=dict)

    def train_config(self, preset: str | None) -> TrainConfig:
        """The named preset at this scale (``None``: ``TrainConfig`` defaults), with the
        settings' training fields, seed, device and held-out size applied."""
        fields = {key: self.settings[key] for key in TRAIN_KEYS if key in self.settings}
        common = dict(seed=self.seed, device=self.device, progress=self.progress,
                      eval_samples=self.settings["eval_samples"])
        if preset is None:
            return TrainConfig(**fields, **common,
                               eval_every=max(1, fields.get("steps", 400) // 8))
        factory = TrainConfig.quick if self.scale == "quick" else TrainConfig.paper
        return factory(preset, **fields, **common)

    def result(self, task: InContextTask, metrics: dict[str, Any], claims: list[Claim],
               figures: dict[str, Figure], checkpoints: dict[str, Checkpoint]) -> ExperimentResult:
        """An :class:`ExperimentResult` of this experiment (timing filled in later);
        ``task`` (one of the experiment's tasks) gives the sizes the report states."""
        return ExperimentResult(self.name, self.scale, dict(self.settings), metrics, claims,
                                figures, checkpoints, sizes=task_sizes(task))


# ---------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Experiment:
    """A named experiment: what it shows, how to run it, its settings per scale.

    Attributes:
        trains: accepts the TRAIN_KEYS overrides.
        reuses: experiments whose trained models (``RunContext.cache``) this one reuses
            when they ran before it in the same process; ``reproduce(jobs=N)`` keeps them
            in one process.
        seconds: the expected wall time per scale (measured on 2 CPU cores; the paper
            scale's from its training work), for ``reproduce``'s schedule and ETA.
    """

    name: str
    figure: str
    description: str
    run: Callable[[RunContext], ExperimentResult]
    quick: Mapping[str, Any]
    paper: Mapping[str, Any]
    trains: bool = True
    reuses: tuple[str, ...] = ()
    seconds: Mapping[str, float] = field(default_factory=lambda: {"quick": 10.0, "paper": 600.0})

    def settings(self, scale: Scale) -> dict[str, Any]:
        return dict(self.quick if scale == "quick" else self.paper)

    def expected_seconds(self, scale: Scale) -> float:
        return float(self.seconds.get(scale, 1.0))


EXPERIMENTS: dict[str, Experiment] = {}


def register_experiment(experiment: Experiment, replace: bool = False) -> Experiment:
    """Add ``experiment`` to :data:`EXPERIMENTS` (``reproduce`` runs them in order);
    ``replace=True`` overwrites one of the same name."""
    return register(EXPERIMENTS, experiment, Experiment, "experiment", replace)


def _check_scale(scale: Any) -> Scale:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    return scale


def resolve_names(names: Iterable[str] | None) -> list[str]:
    """``names`` in the registry's order (all when None); ValueError listing the valid
    names for an unknown one."""
    if names is None:
        return list(EXPERIMENTS)
    names = list(names)
    unknown = [name for name in names if name not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"unknown experiment {unknown[0]!r}; valid names: "
                         f"{', '.join(EXPERIMENTS)}")
    return [name for name in EXPERIMENTS if name in names]


def _accepted_keys(experiment: Experiment) -> set[str]:
    """Settings an override may set: the experiment's own, plus the training fields
    for experiments that train through a preset."""
    keys = set(experiment.quick) | set(experiment.paper)
    return keys | set(TRAIN_KEYS) if experiment.trains else keys


def check_overrides(names: Sequence[str], overrides: Mapping[str, Any] | None) -> None:
    """ValueError for an override no experiment in ``names`` has."""
    accepted = set().union(*(_accepted_keys(EXPERIMENTS[name]) for name in names))
    unknown = sorted(set(overrides or {}) - accepted)
    if unknown:
        raise ValueError(f"unknown setting {unknown[0]!r} for {', '.join(names)}; "
                         f"settings: {', '.join(sorted(accepted))}")
    # values checked now, not when their experiment's turn comes
    TrainConfig(**{key: value for key, value in (overrides or {}).items() if key in TRAIN_KEYS})
    for key, value in (overrides or {}).items():
        check = _SETTING_CHECKS.get(key)
        if check is not None:
            check(value, key)


def _check_vocab_size(value: Any, name: str) -> None:
    if check_positive_int(value, name) < 2:
        raise ValueError(f"{name} must be >= 2, got {value}")


def _check_heads(value: Any, name: str) -> None:
    if (isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value
            or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in value)):
        raise ValueError(f"{name} must be a list of positive ints (heads per layer), got "
                         f"{value!r}")


# the settings that are not TrainConfig fields, each with its check
_SETTING_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "seq_len": check_nodes, "vocab_size": _check_vocab_size, "n_graphs": check_positive_int,
    "n_pi": check_positive_int, "n_samples": check_positive_int, "d_model": check_positive_int,
    "eval_samples": check_positive_int, "alpha": check_concentration,
    "beta0": lambda value, name: check_beta0(value), "heads": _check_heads,
    "init_scale": lambda value, name: check_number(value, name, low=0.0),
}


def experiment_settings(name: str, scale: Scale = "quick",
                        overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The settings ``name`` runs with: its table for ``scale``, then those
    ``overrides`` it accepts (others are left to other experiments)."""
    experiment = EXPERIMENTS[resolve_names([name])[0]]
    accepted = _accepted_keys(experiment)
    return experiment.settings(_check_scale(scale)) | {
        key: value for key, value in (overrides or {}).items() if key in accepted}


def run_experiment(name: str, scale: Scale = "quick", seed: int = 0, device: str = "cpu",
                   overrides: Mapping[str, Any] | None = None, progress: bool = True,
                   cache: dict[Any, Any] | None = None) -> ExperimentResult:
    """Run one named experiment; see :data:`EXPERIMENTS` and the module notes.

    Args:
        name: e.g. ``"fig2_chain"``.
        scale: ``"quick"`` or ``"paper"``.
        seed: seeds random graphs, initialisation, data and evaluation.
        device: ``"cpu"`` or ``"cuda"`` (training; diagnostics sample on the CPU).
        overrides: settings to replace (a key this experiment lacks: ValueError).
        progress: training progress bars.
        cache: share trained models between experiments (see :class:`RunContext`).
    """
    check_overrides(resolve_names([name]), overrides)
    return _run(name, _check_scale(scale), seed, device, overrides, progress,
                cache if cache is not None else {})


def _run(name: str, scale: Scale, seed: int, device: str,
         overrides: Mapping[str, Any] | None, progress: bool,
         cache: dict[Any, Any]) -> ExperimentResult:
    """Run ``name`` with the overrides it accepts (checked by the caller), timed."""
    ctx = RunContext(name, scale, experiment_settings(name, scale, overrides), seed, device,
                     progress, cache)
    started = time.perf_counter()
    result = EXPERIMENTS[name].run(ctx)
    result.seconds = time.perf_counter() - started
    result.peak_rss_mb = peak_rss_mb()
    return result


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far, in MB (None where the platform has no
    ``resource`` module to tell)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20
