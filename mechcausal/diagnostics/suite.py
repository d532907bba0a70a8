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
graph recovery from the parent heads   every model (``hook_pattern``)
held-out losses vs estimators          every model
training curves                        subjects with a training history
weight blocks (A, W)                   native models (DisentangledTransformer, Reduced)
head split, per-head panels            >= 2 parents per position; panels: >= 2 heads
gradient at init vs chi-squared MI     trees; DAGs whose exact MI is affordable
induction scores (layer x head)        models with n_ctx >= 4
causal induction score, OOD priors     tree tasks
the circuit (parent head -> reader)    tree tasks, parent heads below the reader
edge patching                          every model (``hook_z``)
heads ranked by the mechanism          every model (``rank_heads``)
parent-token probes at every hook      every model (``probe_sweep``)
=====================================  ==============================================

Which heads each one reads is the :class:`Subject`'s: on a model of at most two layers
the paper's (layer 0 for the parent, the last layer for the induction head), on a
deeper one those :func:`rank_heads` ranks first, or those the caller names; every line
and summary says which (``L{layer}H{head}``, counted from 0).
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
from ..files import write_text_atomically
from ..models.base import check_sizes
from ..models.registry import describe_model, is_native
from ..ops import as_int, check_bool, check_positive_int, format_number, register, to_json
from ..progress import progress_bar
from .attention import check_heads, check_layer, head_name, heads_per_layer
from .circuit import induction_circuit
from .graph import GraphEstimate, extract_graph
from .heads import HeadRanking, HeadSplit, head_split, rank_heads
from .induction import causal_induction_score, induction_scores
from .information import information_report, mi_method
from .losses import heldout_losses, ood_report
from .patching import patch_parents
from .probing import default_hooks, probe_sweep


# on models of more than two layers, edge patching reads this many child positions and
# compares each one's parents with this many non-parents
_DEEP_PATCHED_CHILDREN = 4
_DEEP_PATCHED_NON_PARENTS = 3


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
    n_samples: int = 512
    seed: int = 0
    parent_heads_given: list[tuple[int, int]] | None = None
    induction_heads_given: list[tuple[int, int]] | None = None
    _shared: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def ranking(self) -> HeadRanking:
        """Every head scored by the mechanism (:func:`rank_heads`), computed once."""
        return self.shared("ranking", lambda: rank_heads(
            self.model, self.task, n_samples=self.n_samples, seed=self.seed))

    @property
    def deep(self) -> bool:
        """More than two layers: the mechanism's heads are found, not assumed."""
        return self.model.cfg.n_layers > 2

    @property
    def parent_heads(self) -> list[tuple[int, int]]:
        """The heads read for the graph, patching and head split: as given, else every
        head of layer 0 (two-layer models, the paper's layer 1), else the head that
        :func:`rank_heads` ranks first by attention on the true parents."""
        if self.parent_heads_given is not None:
            return self.parent_heads_given
        if not self.deep or not self.n_slots:
            return [(0, head) for head in range(heads_per_layer(self.model)[0])]
        return self.ranking.top(max(1, self.n_slots))

    @property
    def induction_heads(self) -> list[tuple[int, int]]:
        """The heads read for causal induction: as given, else every head of the last
        layer (two-layer models), else the head ranked first by causal induction."""
        if self.induction_heads_given is not None:
            return self.induction_heads_given
        last = self.model.cfg.n_layers - 1
        if not self.deep or self.task.kind != "tree":
            return [(last, head) for head in range(heads_per_layer(self.model)[last])]
        best = max(self.ranking.rows, key=lambda row: row["causal_induction"])
        return [(best["layer"], best["head"])]

    def shared(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per subject: results several diagnostics read."""
        if key not in self._shared:
            self._shared[key] = compute()
        return self._shared[key]

    @property
    def graph_estimate(self) -> GraphEstimate:
        """Layer-1 graph estimate (data-averaged patterns), computed once."""
        return self.shared("graph", lambda: extract_graph(
            self.model, self.task, n_samples=self.n_samples, seed=self.seed,
            heads=self.parent_heads))

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
            self.model, self.task, layer=self.parent_heads[0][0], n_samples=self.n_samples,
            seed=self.seed))


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
             n_samples: int = 512, seed: int = 0, layer: int | None = None,
             heads: list[tuple[int, int]] | None = None,
             induction_heads: list[tuple[int, int]] | None = None,
             progress: bool = False) -> Diagnosis:
    """Run every registered diagnostic that applies (see the module table). Every
    printed line and summary names the heads it read (``L{layer}H{head}``, from 0).

    Which heads: the graph, edge patching and head split read ``heads`` (or every head
    of ``layer``); by default every head of layer 0 on a model of at most two layers
    (the paper's first layer), and on a deeper model the head(s) that :func:`rank_heads`
    ranks first by attention on the true parents. Causal induction reads
    ``induction_heads``; by default the last layer's heads (two layers) or the head
    ranked first by causal induction.

    Args:
        model: the model, or a loaded checkpoint (``mc.load_checkpoint(path)``: anything
            with ``model``, ``task`` and ``history`` attributes) when ``task`` is None.
        task: the task the model was trained on.
        history: its training history, for the training curves.
        n_samples: fresh task samples per diagnostic (patching uses at most 256): 512
            puts the standard error of a mean attention below about 0.01 and of a
            held-out loss below about 0.05 nats; raise it for finer comparisons.
        seed: seeds those samples.
        layer, heads: the heads that attend to the parent (give one of them).
        induction_heads: the heads that read it (the paper's second layer).
        progress: a progress bar over the diagnostics.
    """
    if task is None:
        if not all(hasattr(model, name) for name in ("model", "task", "history")):
            raise TypeError(f"diagnose needs a task, or a loaded checkpoint in place of the "
                            f"model; got a {type(model).__name__} and no task")
        model, task, history = model.model, model.task, model.history
    check_task(task)
    check_sizes(model, task)
    check_bool(progress, "progress")
    if layer is not None and heads is not None:
        raise ValueError(f"give layer={layer!r} or heads={heads!r}, not both")
    if layer is not None:
        layer = check_layer(model, layer)
        heads = [(layer, head) for head in range(heads_per_layer(model)[layer])]
    subject = Subject(model, task, history, check_positive_int(n_samples, "n_samples"),
                      as_int(seed, "seed"),
                      None if heads is None else check_heads(model, heads),
                      None if induction_heads is None else check_heads(
                          model, induction_heads, "induction_heads"))
    diagnosis = Diagnosis()
    was_training = model.training
    model.eval()
    diagnostics = list(DIAGNOSTICS.values())
    bar = progress_bar(len(diagnostics), progress, "diagnose")
    try:
        for diagnostic in diagnostics:
            bar.set_postfix_str(diagnostic.name)
            _run_one(diagnostic, subject, diagnosis)
            bar.update(1)
    finally:
        bar.close()
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
    summary = write_text_atomically(
        out / "diagnosis.json", json.dumps(to_json(diagnosis.to_dict()), indent=1,
                                           allow_nan=False))
    return [summary] + [plots.save_figure(figure, out / "figures" / f"{name}.png")
                        for name, figure in diagnosis.figures.items()]


# ---------------------------------------------------------------------- the diagnostics
def _model(subject: Subject) -> Finding:
    description = describe_model(subject.model)
    return Finding(description, description)


def _task(subject: Subject) -> Finding:
    return Finding(repr(subject.task), repr(subject.task))


def _heads_text(heads: list[tuple[int, int]]) -> str:
    return "+".join(head_name(*h) for h in heads)


def _graph(subject: Subject) -> Finding:
    estimate = subject.graph_estimate
    comparison = estimate.compare(subject.task.graph)
    undefined = "".join(f"; {name} n/a: {why}" for name, why in comparison.undefined.items()
                        if name != "position_parent_attention")
    position = ("" if comparison.position_parent_attention is None else
                f", official statistic {comparison.position_parent_attention:.3f}")
    return Finding(
        {**comparison.to_dict(), "heads": estimate.head_names},
        f"{_heads_text(estimate.heads)}: parent accuracy "
        f"{format_number(comparison.parent_accuracy, '.2f')}, F1 "
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
    induction = scores.top(1, "induction")[0]
    previous = scores.top(1, "previous_token")[0]
    return Finding(scores.to_dict(),
                   f"top induction head {head_name(*induction)} "
                   f"({scores.score(*induction, 'induction'):.2f}), top previous-token head "
                   f"{head_name(*previous)} ({scores.score(*previous, 'previous_token'):.2f})",
                   {"induction_scores": scores.plot()})


def _causal_induction(subject: Subject) -> Finding:
    heads = subject.induction_heads
    score = causal_induction_score(subject.model, subject.task, n_samples=subject.n_samples,
                                   seed=subject.seed, heads=heads)
    return Finding(score.to_dict(), f"{_heads_text(heads)}: attention from the query on "
                                    f"parent-matched positions {score.mass:.3f} (ideal 1.0)",
                   {"causal_induction": score.plot()})


def _circuit(subject: Subject) -> Finding:
    circuit = induction_circuit(subject.model, subject.task,
                                writers=subject.parent_heads, readers=subject.induction_heads,
                                seed=subject.seed)
    best = circuit.rows[0]
    return Finding(circuit.to_dict(),
                   f"{best['writer']} -> {best['reader']}: patching the writer on the "
                   f"reader's keys removes {100 * best['removed']:.0f}% of its attention on "
                   f"parent-matched positions (loss {best['loss_clean']:.3f} -> "
                   f"{best['loss_patched']:.3f} nats)",
                   {"circuit": circuit.plot()})


def _ood(subject: Subject) -> Finding:
    report = ood_report(subject.model, subject.task, n_samples=subject.n_samples,
                        seed=subject.seed)
    return Finding(report.to_dict(), ", ".join(f"{e.name} {e.gap:+.3f}"
                                               for e in report.evaluations)
                   + " (gap to estimator, nats)", {"ood": report.plot()})


def _patching(subject: Subject) -> Finding:
    heads = subject.parent_heads
    graph, context = subject.task.graph, subject.task.context_length
    children = [i for i in range(context) if graph.parents[i] and len(graph.parents[i]) < i]
    deep = {}
    if subject.deep:  # each edge is two passes of a deep model: a spread of them
        step = max(1, len(children) // _DEEP_PATCHED_CHILDREN)
        deep = {"positions": children[::-1][::step][:_DEEP_PATCHED_CHILDREN][::-1],
                "non_parents": _DEEP_PATCHED_NON_PARENTS}
    patching = patch_parents(subject.model, subject.task, n_samples=min(256, subject.n_samples),
                             seed=subject.seed, heads=heads, **deep)
    return Finding(patching.to_dict(), f"{_heads_text(heads)}: the parent edge matters more "
                                       f"than any other at every position: "
                                       f"{patching.parent_dominates}",
                   {"patching": patching.plot()})


def _heads_ranking(subject: Subject) -> Finding:
    ranking = subject.ranking
    best = ranking.rows[0]
    shown = "; ".join(f"L{row['layer']}H{row['head']} {row['parent_attention']:.2f}"
                      for row in ranking.rows[:3])
    induction = max((row for row in ranking.rows if row["causal_induction"] is not None),
                    key=lambda row: row["causal_induction"], default=None)
    line = f"attention on the true parents: {shown}"
    if induction is not None:
        line += (f"; causal induction at the query: L{induction['layer']}H{induction['head']} "
                 f"{induction['causal_induction']:.2f}")
    return Finding({**ranking.to_dict(), "top": head_name(best["layer"], best["head"])}, line,
                   {"heads_ranking": ranking.plot()})


def _probes(subject: Subject) -> Finding:
    slots = range(subject.n_slots) if subject.n_slots > 1 else [None]
    n_train = max(64, min(subject.n_samples, 2048))
    hooks = None
    if subject.deep:  # the stream after each layer: where the parent becomes readable
        hooks = [name for name in default_hooks(subject.model)
                 if name == "hook_embed" or name.endswith("hook_resid_post")]
    sweeps = {slot: probe_sweep(subject.model, subject.task, "parent_token", hooks,
                                n_train=n_train, n_test=max(32, n_train // 2),
                                seed=subject.seed, slot=slot)
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


def _circuit_skip(subject: Subject) -> str | None:
    reason = _needs_tree(subject)
    if reason is None and not any(w[0] < r[0] for w in subject.parent_heads
                                  for r in subject.induction_heads):
        reason = "the parent heads are not in an earlier layer than the induction heads"
    return reason


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
               lambda s: None if s.graph_estimate.patterns.shape[0] >= 2 else "the graph reads one head"),
    Diagnostic("information", _information, _information_skip),
    Diagnostic("induction_scores", _induction_scores,
               lambda s: None if s.model.cfg.n_ctx >= 4 else "n_ctx < 4: no repeated sequence fits"),
    Diagnostic("causal_induction", _causal_induction, _needs_tree),
    Diagnostic("circuit", _circuit, _circuit_skip),
    Diagnostic("ood", _ood, lambda s: None if s.task.kind == "tree" else (
        "needs a tree task (one parent per position)")),
    Diagnostic("patching", _patching, _needs_edges),
    Diagnostic("heads_ranking", _heads_ranking, _needs_edges),
    Diagnostic("probes", _probes, _needs_edges),
):
    register_diagnostic(_diagnostic)
del _diagnostic
