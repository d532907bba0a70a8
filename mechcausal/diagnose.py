"""``mechcausal diagnose``: every diagnostic that applies to a saved model.

:func:`diagnose` takes a checkpoint (a path, native or standard-TL format, or a loaded
:class:`~mechcausal.checkpoint.Checkpoint`) and runs:

=====================================  ==============================================
diagnostic                             applies to
=====================================  ==============================================
graph recovery from layer-1 attention  every model (``hook_pattern``)
held-out losses vs estimators          every model
training curves                        checkpoints with a history
weight blocks (A, W)                   DisentangledTransformer, ReducedModel
per-head layer-1 panels, head split    >= 2 layer-1 heads; split: >= 2 parents
gradient at init vs chi-squared MI     trees; DAGs whose exact MI is affordable
induction scores (layer x head)        models with n_ctx >= 4
causal induction score, OOD priors     tree tasks
edge patching                          every model (``hook_z``)
=====================================  ==============================================

It returns a :class:`Diagnosis` (JSON-ready summary, printable lines, figures, and the
reason each skipped diagnostic was skipped); :func:`write_diagnosis` writes it out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from . import plots
from .checkpoint import Checkpoint
from .diagnostics import (
    causal_induction_score,
    extract_graph,
    head_split,
    induction_scores,
    information_report,
    ood_report,
    patch_parents,
)
from .diagnostics._common import to_json
from .diagnostics.information import mi_method
from .models import DisentangledTransformer, ReducedModel
from .models.base import model_logits
from .tasks import InContextDAG, InContextTask, InContextTree, cross_entropy
from .tl_checkpoint import load_any


@torch.no_grad()
def heldout_losses(model: torch.nn.Module, task: InContextTask, n_samples: int,
                   seed: int) -> dict[str, float]:
    """Cross-entropies (nats) on one held-out batch of ``n_samples`` sequences (seeded
    by ``seed``): ``model``, ``count_estimator``, ``unigram`` and, for DAG tasks,
    ``one_nn`` (the last-parent baseline)."""
    batch = task.sample(n_samples, generator=torch.Generator().manual_seed(seed))
    device = next(model.parameters()).device
    log_probs = torch.log_softmax(model_logits(model, batch.tokens.to(device)).float(), -1)
    losses = {"model": -(batch.target * log_probs.cpu()).sum(-1).mean().item(),
              "count_estimator": cross_entropy(task.bayes(batch.tokens), batch.target).item(),
              "unigram": cross_entropy(task.unigram(batch.tokens), batch.target).item()}
    if isinstance(task, InContextDAG):
        losses["one_nn"] = cross_entropy(task.one_nn(batch.tokens), batch.target).item()
    return losses


@dataclass
class Diagnosis:
    """What :func:`diagnose` found.

    Attributes:
        summary: JSON-ready results, one entry per diagnostic that ran.
        lines: a human-readable summary, one line per diagnostic.
        figures: name -> Figure.
        skipped: diagnostic -> why it does not apply.
    """

    summary: dict[str, Any] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    figures: dict[str, Figure] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, summary: Any, line: str) -> None:
        self.summary[name] = summary
        self.lines.append(f"{name:<18} {line}")

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary, "skipped": self.skipped, "figures": sorted(self.figures)}


def _describe(model: torch.nn.Module) -> str:
    cfg = model.cfg
    if isinstance(model, DisentangledTransformer):
        return f"DisentangledTransformer(heads={cfg.heads}, readout={cfg.readout})"
    if isinstance(model, ReducedModel):
        return "ReducedModel(A1, A2)"
    return (f"{type(model).__name__}(n_layers={cfg.n_layers}, n_heads={cfg.n_heads}, "
            f"d_model={cfg.d_model}, attn_only={cfg.attn_only})")


def _layer1_heads(diagnosis: Diagnosis, model: torch.nn.Module, task: InContextTask,
                  patterns: torch.Tensor, n_samples: int, seed: int) -> None:
    """Per-head panels (>= 2 heads) and the head split (>= 2 parents), whose slot
    masses the panels' titles carry."""
    n_slots = max(len(ps) for ps in task.graph.parents[: task.context_length])
    split = None
    if n_slots >= 2:
        split = head_split(model, task, n_samples=n_samples, seed=seed)
        diagnosis.add("head_split", split.to_dict(),
                      f"split score {split.split_score:.2f}, head -> slot {split.assignment}, "
                      f"every slot covered: {split.coverage}")
    else:
        diagnosis.skipped["head_split"] = "the graph has at most one parent per position"
    if patterns.shape[0] >= 2:
        diagnosis.figures["heads"] = plots.head_patterns(
            patterns, task.graph, slot_mass=split.mass if split is not None else None)
    else:
        diagnosis.skipped["heads"] = "layer 1 has one head"


def _information(diagnosis: Diagnosis, task: InContextTask, seed: int) -> None:
    """Gradient at init vs chi-squared MI, where the MI is exact (cheap)."""
    if isinstance(task, InContextDAG) and mi_method(task) == "monte_carlo":
        diagnosis.skipped["information"] = ("exact chi-squared MI of this DAG is too large; "
                                            "call mc.information_report(task) for Monte Carlo")
        return
    report = information_report(task, n_pi=64, n_samples=2**13, seed=seed)
    diagnosis.add("information", report.to_dict(),
                  f"argmax = parent: gradient {report.gradient_agreement:.2f}, "
                  f"MI {report.mi_agreement:.2f}; mean Spearman {report.mean_spearman:.2f} "
                  "(the task's theory, not the trained weights)")
    diagnosis.figures["information"] = plots.gradient_vs_mi(report)


def _tree_only(diagnosis: Diagnosis, model: torch.nn.Module, task: InContextTask,
               n_samples: int, seed: int) -> None:
    """Causal induction score and OOD priors (they read a tree's single parents)."""
    if not isinstance(task, InContextTree):
        for name in ("causal_induction", "ood"):
            diagnosis.skipped[name] = "needs a tree task (one parent per position)"
        return
    induction = causal_induction_score(model, task, n_samples=n_samples, seed=seed)
    diagnosis.add("causal_induction", induction.to_dict(),
                  f"last-layer attention on parent-matched positions {induction.mass:.3f} "
                  f"(ideal 1.0)")
    report = ood_report(model, task, n_samples=n_samples, seed=seed)
    diagnosis.add("ood", report.to_dict(), ", ".join(
        f"{e.name} {e.gap:+.3f}" for e in report.evaluations) + " (gap to estimator, nats)")
    with plots.style():
        diagnosis.figures["causal_induction"] = induction.plot()
        diagnosis.figures["ood"] = report.plot()


def diagnose(checkpoint: Checkpoint | str | Path, n_samples: int = 2048, seed: int = 0,
             device: str = "cpu") -> Diagnosis:
    """Run every applicable diagnostic (see the module table) on a checkpoint.

    Args:
        checkpoint: a path (either checkpoint format) or a loaded ``Checkpoint``.
        n_samples: fresh task samples per diagnostic (patching uses 256).
        seed: seeds those samples.
        device: where the model runs when loaded from a path.
    """
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = load_any(checkpoint, device)
    model, task, history = checkpoint.model, checkpoint.task, checkpoint.history
    model.eval()
    diagnosis = Diagnosis()
    diagnosis.add("model", _describe(model), _describe(model))
    diagnosis.add("task", repr(task), repr(task))

    estimate = extract_graph(model, task, n_samples=n_samples, seed=seed)
    comparison = estimate.compare(task.graph)
    diagnosis.add("graph", comparison.to_dict(),
                  f"parent accuracy {comparison.parent_accuracy:.2f}, F1 {comparison.f1:.2f}, "
                  f"SHD {comparison.shd}, attention on parents {comparison.parent_attention:.3f}")
    diagnosis.figures["graph"] = plots.graph_vs_attention(task.graph, estimate.patterns)

    losses = heldout_losses(model, task, n_samples, seed)
    gap = losses["model"] - losses["count_estimator"]
    diagnosis.add("losses", losses, ", ".join(f"{k} {v:.3f}" for k, v in losses.items())
                  + f" (gap to estimator {gap:+.3f} nats)")
    if history is not None and history.eval_step:
        baselines = {"one-NN": losses["one_nn"]} if "one_nn" in losses else None
        diagnosis.figures["loss"] = plots.loss_curves(history, baselines)
    else:
        diagnosis.skipped["loss"] = "the checkpoint has no training history"

    if isinstance(model, (DisentangledTransformer, ReducedModel)):
        diagnosis.figures["weights"] = plots.weight_blocks(model)
    else:
        diagnosis.skipped["weights"] = "no block structure: a standard TL model"

    _layer1_heads(diagnosis, model, task, estimate.patterns, n_samples, seed)
    _information(diagnosis, task, seed)

    if model.cfg.n_ctx >= 4:
        scores = induction_scores(model, seed=seed)
        layer, head = scores.top_induction_head()
        diagnosis.add("induction_scores", scores.to_dict(),
                      f"top induction head: layer {layer + 1} head {head} "
                      f"({scores.induction[layer, head].item():.2f}), previous-token "
                      f"{scores.previous_token.nan_to_num(-1).max().item():.2f} (max)")
        diagnosis.figures["induction_scores"] = scores.plot()
    else:
        diagnosis.skipped["induction_scores"] = "n_ctx < 4: no repeated sequence fits"

    _tree_only(diagnosis, model, task, n_samples, seed)

    patching = patch_parents(model, task, n_samples=256, seed=seed)
    diagnosis.add("patching", patching.to_dict(),
                  f"parent edge matters more than any other at every position: "
                  f"{patching.parent_dominates}")
    diagnosis.figures["patching"] = patching.plot()
    return diagnosis


def write_diagnosis(diagnosis: Diagnosis, out: str | Path) -> list[Path]:
    """``out/diagnosis.json`` and ``out/figures/{name}.png``; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = out / "diagnosis.json"
    summary.write_text(json.dumps(to_json(diagnosis.to_dict()), indent=1))
    return [summary] + [plots.save_figure(figure, out / "figures" / f"{name}.png")
                        for name, figure in diagnosis.figures.items()]
