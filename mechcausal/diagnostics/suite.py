"""The diagnostics registry and the suite that runs every diagnostic that applies to a
model and its task (``mechcausal diagnose``, :func:`diagnose`).

A :class:`Diagnostic` is a name, a test of whether it applies to a :class:`Subject`
(a reason when it does not) and a function returning a :class:`Finding`: a JSON-ready
summary, one printable line and figures. :data:`DIAGNOSTICS` holds them in the order
they run; a new one is one :func:`register_diagnostic` call, and ``diagnose`` (the
function and the command) runs it from then on.

=====================================  ==============================================
diagnostic                             applies to
=====================================  ==============================================
model, task                            every model
graph recovery from layer-1 attention  every model (``hook_pattern``)
held-out losses vs estimators          every model
training curves                        subjects with a training history
weight blocks (A, W)                   native models (DisentangledTransformer, Reduced)
head split, per-head layer-1 panels    >= 2 parents per position; panels: >= 2 heads
gradient at init vs chi-squared MI     trees; DAGs whose exact MI is affordable
induction scores (layer x head)        models with n_ctx >= 4
causal induction score, OOD priors     tree tasks
edge patching                          every model (``hook_z``)
heads ranked by the mechanism          every model (``rank_heads``)
parent-token probes at every hook      every model (``probe_sweep``)
=====================================  ==============================================
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from .. import plots
from ..data.tasks import InContextTask, check_task
from ..models.base import check_sizes
from ..models.registry import describe_model, is_native
from ..ops import as_int, check_positive_int, format_number, register, to_json
from .graph import GraphEstimate, extract_graph
from .heads import HeadSplit, head_split, rank_heads
from .induction import causal_induction_score, induction_scores
from .information import information_report, mi_method
from .losses import heldout_losses, ood_report
from .patching import patch_parents
from .probing import probe_sweep


@dataclass
class Subject:
    """What the diagnostics examine, and results they share.

    Attributes:
        model: any model with TL hook names (ours, exported or standard TL models).
        task: the task it was trained on.
        history: its training :class:`~mechcausal.History`, or None.
        n_samples: fresh task samples per diagnostic.
        seed: seeds those samples.
    """

    model: Any
    task: InContextTask
    history: Any = None
    n_samples: int = 2048
    seed: int = 0
    _shared: dict[str, Any] = field(default_factory=dict, repr=False)

    def shared(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per subject: results several diagnostics read."""
        if key not in self._shared:
            self._shared[key] = compute()
        return self._shared[key]

    @property
    def graph_estimate(self) -> GraphEstimate:
        """Layer-1 graph estimate (data-averaged patterns), computed once."""
        return self.shared("graph", lambda: extract_graph(
            self.model, self.task, n_samples=self.n_samples, seed=self.seed))

    @property
    def losses(self) -> dict[str, float]:
        """Held-out losses (:func:`~mechcausal.diagnostics.losses.heldout_losses`)."""
        return self.shared("losses", lambda: heldout_losses(
            self.model, self.task, self.n_samples, self.seed))

    @property
    def n_slots(self) -> int:
        """The largest number of parents of a context position."""
        return max(len(ps) for ps in self.task.graph.parents[: self.task.context_length])

    @property
    def head_split(self) -> HeadSplit | None:
        """Layer-1 head split (graphs with >= 2 parents per position), computed once."""
        if self.n_slots < 2:
            return None
        return self.shared("head_split", lambda: head_split(
            self.model, self.task, n_samples=self.n_samples, seed=self.seed))


@dataclass
class Finding:
    """What one diagnostic found: a JSON-ready ``summary`` (None: figures only), one
    printable ``line`` and named ``figures``."""

    summary: Any
    line: str
    figures: dict[str, Figure] = field(default_factory=dict)


def _applies(subject: Subject) -> str | None:
    return None


@dataclass(frozen=True)
class Diagnostic:
    """A named diagnostic.

    Attributes:
        name: its key in the summary and the printed name.
        run: ``run(subject) -> Finding``.
        skip: ``skip(subject)`` is None when the diagnostic applies, else why not.
    """

    name: str
    run: Callable[[Subject], Finding]
    skip: Callable[[Subject], str | None] = _applies

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        for field_name in ("run", "skip"):
            if not callable(getattr(self, field_name)):
                raise TypeError(f"diagnostic {self.name!r}: {field_name} must be a function "
                                f"of the Subject, got {getattr(self, field_name)!r}")


DIAGNOSTICS: dict[str, Diagnostic] = {}


def register_diagnostic(diagnostic: Diagnostic, replace: bool = False) -> Diagnostic:
    """Add ``diagnostic`` to :data:`DIAGNOSTICS` (run after those already there);
    ``replace=True`` overwrites one of the same name in place."""
    return register(DIAGNOSTICS, diagnostic, Diagnostic, "diagnostic", replace)


@dataclass
class Diagnosis:
    """What :func:`diagnose` found.

    Attributes:
        summary: JSON-ready results, one entry per diagnostic that ran with a summary.
        lines: a human-readable summary, one line per diagnostic.
        figures: name -> Figure.
        skipped: diagnostic -> why it does not apply.
        failed: diagnostic -> the error it raised (the others still ran).
    """

    summary: dict[str, Any] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    figures: dict[str, Figure] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, finding: Finding) -> None:
        if finding.summary is not None:
            self.summary[name] = finding.summary
        if finding.line:
            self.lines.append(f"{name:<18} {finding.line}")
        self.figures.update(finding.figures)

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary, "skipped": self.skipped, "failed": self.failed,
                "figures": sorted(self.figures)}


def diagnose(model: Any, task: InContextTask | None = None, history: Any = None, *,
             n_samples: int = 2048, seed: int = 0) -> Diagnosis:
    """Run every registered diagnostic that applies (see the module table).

    Args:
        model: the model, or a loaded checkpoint (``mc.load_checkpoint(path)``: anything
            with ``model``, ``task`` and ``history`` attributes) when ``task`` is None.
        task: the task the model was trained on.
        history: its training history, for the training curves.
        n_samples: fresh task samples per diagnostic (patching uses 256).
        seed: seeds those samples.
    """
    if task is None:
        if not all(hasattr(model, name) for name in ("model", "task", "history")):
            raise TypeError(f"diagnose needs a task, or a loaded checkpoint in place of the "
                            f"model; got a {type(model).__name__} and no task")
        model, task, history = model.model, model.task, model.history
    check_task(task)
    check_sizes(model, task)
    subject = Subject(model, task, history, check_positive_int(n_samples, "n_samples"),
                      as_int(seed, "seed"))
    diagnosis = Diagnosis()
    was_training = model.training
    model.eval()
    try:
        for diagnostic in list(DIAGNOSTICS.values()):
            _run_one(diagnostic, subject, diagnosis)
    finally:
        model.train(was_training)
    return diagnosis


def _run_one(diagnostic: Diagnostic, subject: Subject, diagnosis: Diagnosis) -> None:
    """Run one diagnostic into ``diagnosis``; an error is recorded under ``failed`` (and
    warned about), so that one broken diagnostic does not cost the others' results."""
    try:
        reason = diagnostic.skip(subject)
        if reason is not None:
            diagnosis.skipped[diagnostic.name] = str(reason)
            return
        finding = diagnostic.run(subject)
        if not isinstance(finding, Finding):
            raise TypeError(f"its run returned a {type(finding).__name__}, not a Finding")
    except Exception as error:  # noqa: BLE001 - reported, with the diagnostic's name
        message = f"{type(error).__name__}: {error}"
        diagnosis.failed[diagnostic.name] = message
        warnings.warn(f"diagnostic {diagnostic.name!r} failed: {message}", RuntimeWarning,
                      stacklevel=3)
        return
    diagnosis.add(diagnostic.name, finding)


def write_diagnosis(diagnosis: Diagnosis, out: str | Path) -> list[Path]:
    """``out/diagnosis.json`` and ``out/figures/{name}.png``; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = out / "diagnosis.json"
    summary.write_text(json.dumps(to_json(diagnosis.to_dict()), indent=1))
    return [summary] + [plots.save_figure(figure, out / "figures" / f"{name}.png")
                        for name, figure in diagnosis.figures.items()]


# ---------------------------------------------------------------------- the diagnostics
def _model(subject: Subject) -> Finding:
    description = describe_model(subject.model)
    return Finding(description, description)


def _task(subject: Subject) -> Finding:
    return Finding(repr(subject.task), repr(subject.task))


def _graph(subject: Subject) -> Finding:
    estimate = subject.graph_estimate
    comparison = estimate.compare(subject.task.graph)
    undefined = "".join(f"; {name} n/a: {why}" for name, why in comparison.undefined.items()
                        if name != "position_parent_attention")
    position = ("" if comparison.position_parent_attention is None else
                f", official statistic {comparison.position_parent_attention:.3f}")
    return Finding(
        comparison.to_dict(),
        f"parent accuracy {format_number(comparison.parent_accuracy, '.2f')}, F1 "
        f"{format_number(comparison.f1, '.2f')}, SHD {comparison.shd}, attention on parents "
        f"{format_number(comparison.parent_attention)}{position}{undefined}",
        {"graph": plots.graph_vs_attention(subject.task.graph, estimate.patterns)})


def _losses(subject: Subject) -> Finding:
    losses = subject.losses
    gap = losses["model"] - losses["count_estimator"]
    shown = ", ".join(f"{k} {v:.3f}" for k, v in losses.items() if k != "kl")
    return Finding(losses, f"{shown} (gap to estimator {gap:+.3f} nats; "
                           f"KL(estimator || model) {losses['kl']:.3f})")


def _training(subject: Subject) -> Finding:
    losses = subject.losses
    baselines = {"one-NN": losses["one_nn"]} if "one_nn" in losses else None
    return Finding(None, "", {"loss": plots.loss_curves(subject.history, baselines)})


def _no_history(subject: Subject) -> str | None:
    history = subject.history
    return None if history is not None and history.eval_step else "no training history"


def _weights(subject: Subject) -> Finding:
    return Finding(None, "", {"weights": plots.weight_blocks(subject.model)})


def _head_split(subject: Subject) -> Finding:
    split = subject.head_split
    return Finding(split.to_dict(), f"split score {split.split_score:.2f}, head -> slot "
                                    f"{split.assignment}, every slot covered: {split.coverage}")


def _head_panels(subject: Subject) -> Finding:
    split = subject.head_split
    return Finding(None, "", {"heads": plots.head_patterns(
        subject.graph_estimate.patterns, subject.task.graph,
        slot_mass=split.mass if split is not None else None)})


def _information(subject: Subject) -> Finding:
    report = information_report(subject.task.base, n_pi=64, n_samples=2**13, seed=subject.seed)
    return Finding(report.to_dict(),
                   f"argmax = parent: gradient {report.gradient_agreement:.2f}, MI "
                   f"{report.mi_agreement:.2f}; mean Spearman "
                   f"{format_number(report.mean_spearman, '.2f')} "
                   "(the task's theory, not the trained weights)",
                   {"information": plots.gradient_vs_mi(report)})


def _induction_scores(subject: Subject) -> Finding:
    scores = induction_scores(subject.model, seed=subject.seed)
    layer, head = scores.top_induction_head()
    return Finding(scores.to_dict(),
                   f"top induction head: layer {layer + 1} head {head} "
                   f"({scores.induction[layer, head].item():.2f}), previous-token "
                   f"{scores.previous_token.nan_to_num(-1).max().item():.2f} (max)",
                   {"induction_scores": scores.plot()})


def _causal_induction(subject: Subject) -> Finding:
    score = causal_induction_score(subject.model, subject.task, n_samples=subject.n_samples,
                                   seed=subject.seed)
    return Finding(score.to_dict(), f"last-layer attention on parent-matched positions "
                                    f"{score.mass:.3f} (ideal 1.0)",
                   {"causal_induction": score.plot()})


def _ood(subject: Subject) -> Finding:
    report = ood_report(subject.model, subject.task, n_samples=subject.n_samples,
                        seed=subject.seed)
    return Finding(report.to_dict(), ", ".join(f"{e.name} {e.gap:+.3f}"
                                               for e in report.evaluations)
                   + " (gap to estimator, nats)", {"ood": report.plot()})


def _patching(subject: Subject) -> Finding:
    patching = patch_parents(subject.model, subject.task, n_samples=256, seed=subject.seed)
    return Finding(patching.to_dict(), f"parent edge matters more than any other at every "
                                       f"position: {patching.parent_dominates}",
                   {"patching": patching.plot()})


def _heads_ranking(subject: Subject) -> Finding:
    ranking = rank_heads(subject.model, subject.task, n_samples=subject.n_samples,
                         seed=subject.seed)
    best = ranking.rows[0]
    shown = "; ".join(f"L{row['layer']}H{row['head']} {row['parent_attention']:.2f}"
                      for row in ranking.rows[:3])
    induction = max((row for row in ranking.rows if row["causal_induction"] is not None),
                    key=lambda row: row["causal_induction"], default=None)
    line = f"attention on the true parents: {shown}"
    if induction is not None:
        line += (f"; causal induction at the query: L{induction['layer']}H{induction['head']} "
                 f"{induction['causal_induction']:.2f}")
    return Finding({**ranking.to_dict(), "top": [best["layer"], best["head"]]}, line,
                   {"heads_ranking": ranking.plot()})


def _probes(subject: Subject) -> Finding:
    slots = range(subject.n_slots) if subject.n_slots > 1 else [None]
    n_train = max(64, min(subject.n_samples, 2048))
    sweeps = {slot: probe_sweep(subject.model, subject.task, "parent_token", n_train=n_train,
                                n_test=max(32, n_train // 2), seed=subject.seed, slot=slot)
              for slot in slots}
    parts = []
    for slot, sweep in sweeps.items():
        best = max(sweep.results, key=lambda r: r.selectivity)
        label = "parent" if slot is None else f"parent slot {slot}"
        parts.append(f"{label}: best at {best.hook} (accuracy {best.accuracy:.2f}, "
                     f"selectivity {best.selectivity:+.2f})")
    figures = {f"probe_parent{'' if slot is None else f'_slot{slot}'}": sweep.plot()
               for slot, sweep in sweeps.items()}
    return Finding({("parent_token" if slot is None else f"parent_token_slot{slot}"):
                    sweep.to_dict() for slot, sweep in sweeps.items()},
                   "; ".join(parts), figures)


def _needs_edges(subject: Subject) -> str | None:
    return None if subject.n_slots else "no context position has a parent"


def _needs_tree(subject: Subject) -> str | None:
    if subject.task.kind != "tree":
        return "needs a tree task (one parent per position)"
    return _needs_edges(subject)


def _information_skip(subject: Subject) -> str | None:
    if not subject.n_slots:
        return _needs_edges(subject)
    if subject.task.kind == "dag" and mi_method(subject.task) == "monte_carlo":
        return ("exact chi-squared MI of this DAG is too large; call "
                "mc.information_report(task) for Monte Carlo")
    return None


for _diagnostic in (
    Diagnostic("model", _model),
    Diagnostic("task", _task),
    Diagnostic("graph", _graph),
    Diagnostic("losses", _losses),
    Diagnostic("training", _training, _no_history),
    Diagnostic("weights", _weights,
               lambda s: None if is_native(s.model) else "no block structure: a standard TL model"),
    Diagnostic("head_split", _head_split,
               lambda s: None if s.n_slots >= 2 else "the graph has at most one parent per position"),
    Diagnostic("heads", _head_panels,
               lambda s: None if s.graph_estimate.patterns.shape[0] >= 2 else "layer 1 has one head"),
    Diagnostic("information", _information, _information_skip),
    Diagnostic("induction_scores", _induction_scores,
               lambda s: None if s.model.cfg.n_ctx >= 4 else "n_ctx < 4: no repeated sequence fits"),
    Diagnostic("causal_induction", _causal_induction, _needs_tree),
    Diagnostic("ood", _ood, lambda s: None if s.task.kind == "tree" else (
        "needs a tree task (one parent per position)")),
    Diagnostic("patching", _patching, _needs_edges),
    Diagnostic("heads_ranking", _heads_ranking, _needs_edges),
    Diagnostic("probes", _probes, _needs_edges),
):
    register_diagnostic(_diagnostic)
del _diagnostic
