"""The paper's experiments, registered in :data:`~mechcausal.experiments.EXPERIMENTS`:
one function per figure, and its settings at each scale."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from typing import Any

import torch
from matplotlib.figure import Figure

from .. import plots
from ..data.tasks import InContextDAG, InContextTask, InContextTree
from ..diagnostics import (
    causal_induction_score,
    extract_graph,
    head_split,
    heldout_losses,
    induction_scores,
    information_report,
    ood_report,
)
from ..graphs import GRAPH_FAMILIES, CausalGraph
from ..models import DisentangledTransformer, ReducedModel, standard_model
from ..ops import format_number
from ..training import Checkpoint, History, TrainConfig, load_checkpoint, train, train_two_stage
from .registry import Claim, Experiment, ExperimentResult, RunContext, register_experiment
from .sweeps import sweep

# the official Figure 9 statistic (shared/PAPER.md): mean +/- sd over 20 graphs
FIG9_OFFICIAL = (0.837, 0.054)
# the official recipe run end to end by `mechcausal reproduce --paper --only
# fig9_many_graphs`, seed 0 (benchmarks/README.md has the run)
FIG9_OFFICIAL_RECIPE_HERE = "0.820 +/- 0.055 (mechcausal --paper, seed 0)"
# our criteria, stated in the report next to each claim
PARENT_ATTENTION_MIN = 0.95
GAP_MAX = 0.1  # nats between the model's test loss and the count estimator's
SPLIT_MIN = 0.8  # each slot's own head: attention on that slot, averaged
INDUCTION_MIN = 0.5  # layer-2 attention on parent-matched positions (0.10-0.18 if uniform)


def _fmt(value: float | None, digits: int = 3) -> str:
    return format_number(value, f".{digits}f")


def _graph_metrics(model: torch.nn.Module, task: InContextTask, ctx: RunContext,
                   k: int | None = None) -> tuple[dict[str, Any], torch.Tensor]:
    """Layer-1 graph recovery (parent accuracy, F1, SHD, attention on parents) and the
    per-head data-averaged patterns [H, L, L] it was read from."""
    estimate = extract_graph(model, task, n_samples=ctx.settings["eval_samples"],
                             seed=ctx.seed, k=k)
    comparison = estimate.compare(task.graph)
    metrics = {key: getattr(comparison, key) for key in
               ("parent_accuracy", "f1", "shd", "parent_attention")}
    metrics["estimated_parents"] = comparison.estimated_parents
    return metrics, estimate.patterns


def _train_tree(ctx: RunContext, graph: CausalGraph, preset: str
                ) -> tuple[DisentangledTransformer, InContextTree, TrainConfig, History]:
    """A heads-(1, 1) disentangled transformer trained on ``graph`` (cached per
    task and config within one ``reproduce`` run)."""
    task = InContextTree(graph, ctx.settings["vocab_size"], ctx.settings["alpha"])
    config = ctx.train_config(preset)
    key = ("tree", task, tuple(sorted(config.to_dict().items())))
    if key not in ctx.cache:
        model = DisentangledTransformer.for_task(task, seed=ctx.seed)
        ctx.cache[key] = (model, train(model, task, config))
    model, history = ctx.cache[key]
    return model, task, config, history


# ---------------------------------------------------------------------- experiments
# the graph families of Figures 2 and 6 (and of the theory experiment)
SINGLE_PARENT_FAMILIES = ("chain", "icl", "random")


def _single_parent(graph_name: str) -> Callable[[RunContext], ExperimentResult]:
    """Figures 2 and 6: one graph, heads (1, 1), zero init."""
    family = GRAPH_FAMILIES[graph_name]
    label = family.description

    def run(ctx: RunContext) -> ExperimentResult:
        s = ctx.settings
        model, task, config, history = _train_tree(ctx, family.graph(s["seq_len"], ctx.seed),
                                                   graph_name)
        graph, patterns = _graph_metrics(model, task, ctx)
        losses = heldout_losses(model, task, s["eval_samples"], ctx.seed)
        induction = causal_induction_score(model, task, n_samples=s["eval_samples"],
                                           seed=ctx.seed)
        gap = losses["model"] - losses["count_estimator"]
        metrics = {**graph, "losses": losses, "gap": gap,
                   "causal_induction_mass": induction.mass,
                   "train_seconds": history.wall_time, "train_config": config.to_dict()}
        claims = [
            Claim(f"{label}: layer-1 attention recovers every parent (parent accuracy)",
                  _fmt(graph["parent_accuracy"], 2), "1.0 (Fig. 2, 6)",
                  graph["parent_accuracy"] == 1.0),
            Claim(f"{label}: mean layer-1 attention on the true parent "
                  f"(>= {PARENT_ATTENTION_MIN})", _fmt(graph["parent_attention"]),
                  "~1 (Fig. 2, 6)", graph["parent_attention"] >= PARENT_ATTENTION_MIN),
            Claim(f"{label}: test loss near the count estimator (gap < {GAP_MAX} nats)",
                  f"{_fmt(losses['model'])} vs {_fmt(losses['count_estimator'])} "
                  f"(unigram {_fmt(losses['unigram'])})", "loss -> estimator (Fig. 2)",
                  gap < GAP_MAX),
            Claim(f"{label}: layer 2 is an induction head: query attention on positions "
                  f"whose parent token equals the query (>= {INDUCTION_MIN})",
                  _fmt(induction.mass), "-> 1 (theory: induction head)",
                  induction.mass >= INDUCTION_MIN),
        ]
        figures = {
            f"{ctx.name}_graph": plots.graph_vs_attention(
                task.graph, patterns, title=f"{label}: true graph vs learned layer-1 attention"),
            f"{ctx.name}_weights": plots.weight_blocks(
                model, title=f"{label}: trained A and W by block (cf. paper Fig. 2)"),
            f"{ctx.name}_loss": plots.loss_curves(history, title=f"{label}: training"),
        }
        return ctx.result(task, metrics, claims, figures,
                          {ctx.name: Checkpoint(model, task, config, history)})

    return run


def _two_parent(ctx: RunContext) -> ExperimentResult:
    """Figures 5 and 7: pa(i) = {floor((i-1)/2), i-1}, heads (2, 1), normal init."""
    s = ctx.settings
    task = InContextDAG(CausalGraph.two_parent(s["seq_len"] + 1), s["vocab_size"], s["alpha"])
    model = DisentangledTransformer.for_task(task, heads=tuple(s["heads"]), init="normal",
                                             init_scale=s["init_scale"], seed=ctx.seed)
    config = ctx.train_config("two_parent")
    history = train(model, task, config)
    split = head_split(model, task, n_samples=s["eval_samples"], seed=ctx.seed)
    graph, patterns = _graph_metrics(model, task, ctx)
    losses = heldout_losses(model, task, s["eval_samples"], ctx.seed)
    slots = ", ".join(f"H{h}->slot {slot} ({split.mass[h, slot].item():.2f})"
                      for h, slot in enumerate(split.assignment))
    own_mass = min((split.mass[h, slot].item() for slot, h in enumerate(split.matching)
                    if h is not None), default=0.0)
    metrics = {**graph, "losses": losses, "split": split.to_dict(),
               "train_seconds": history.wall_time, "train_config": config.to_dict()}
    claims = [
        Claim(f"two parents: each parent slot claimed by a distinct layer-1 head with "
              f"mass >= {SPLIT_MIN}", f"{slots}; split {split.split_score:.2f}",
              "one head per parent (Fig. 5)", split.coverage and own_mass >= SPLIT_MIN),
        Claim("two parents: test loss below the one-NN baseline",
              f"{_fmt(losses['model'])} vs one-NN {_fmt(losses['one_nn'])} "
              f"(count estimator {_fmt(losses['count_estimator'])})",
              "below one-NN, near Bayes (Fig. 5)", losses["model"] < losses["one_nn"]),
    ]
    figures = {
        "fig5_two_parent_heads": plots.head_patterns(
            patterns, task.graph, slot_mass=split.mass,
            title="two parents: layer-1 heads and parent slots (cf. paper Fig. 5)"),
        "fig5_two_parent_weights": plots.weight_blocks(
            model, title="two parents: trained A and W by block (cf. paper Fig. 7)"),
        "fig5_two_parent_loss": plots.loss_curves(
            history, {"one-NN": losses["one_nn"]}, title="two parents: training"),
    }
    return ctx.result(task, metrics, claims, figures,
                      {"fig5_two_parent": Checkpoint(model, task, config, history)})


def _mlp(ctx: RunContext) -> ExperimentResult:
    """Figure 8: a standard TL transformer with learned embeddings and MLPs."""
    s = ctx.settings
    task = InContextTree(CausalGraph.chain(s["seq_len"]), s["vocab_size"], s["alpha"])
    model = standard_model(task, n_layers=2, n_heads=1, d_model=s["d_model"],
                           attn_only=False, seed=ctx.seed)
    config = ctx.train_config("mlp")
    history = train(model, task, config)
    graph, patterns = _graph_metrics(model, task, ctx)
    losses = heldout_losses(model, task, s["eval_samples"], ctx.seed)
    scores = induction_scores(model, seed=ctx.seed)
    metrics = {**graph, "losses": losses, "induction_scores": scores.to_dict(),
               "train_seconds": history.wall_time, "train_config": config.to_dict()}
    claims = [
        Claim("with MLPs (standard transformer): layer-1 attention shows the chain "
              "(parent accuracy)",
              f"{_fmt(graph['parent_accuracy'], 2)} (attention {_fmt(graph['parent_attention'])})",
              "graph visible in layer 1 (Fig. 8)", graph["parent_accuracy"] == 1.0),
    ]
    figures = {
        "fig8_mlp_graph": plots.graph_vs_attention(
            task.graph, patterns, title="with MLPs: true graph vs layer-1 attention"),
        "fig8_mlp_induction": scores.plot(),
        "fig8_mlp_loss": plots.loss_curves(history, title="with MLPs: training"),
    }
    return ctx.result(task, metrics, claims, figures,
                      {"fig8_mlp": Checkpoint(model, task, config, history)})


def _edge_values(patterns: torch.Tensor, graph: CausalGraph) -> torch.Tensor:
    """[T] the best head's attention from each position to its parent in ``patterns``
    [H, L, L]; NaN at roots."""
    values = torch.full((graph.n,), math.nan)
    for parent, child in graph.edges:
        values[child] = patterns[:, child, parent].max()
    return values


def _recipe(config: TrainConfig) -> str:
    decay = f" weight decay {config.weight_decay:g}," if config.weight_decay else ""
    return (f"{config.optimizer} lr {config.lr:g},{decay} {config.schedule}, {config.steps} "
            f"steps of {config.batch_size}, {config.data} data")


def _mean_sd(per_graph: torch.Tensor) -> tuple[float, float]:
    """Mean and population sd (the official notebook's ``jnp.std``) over the graphs that
    have an edge (NaN, shown as n/a, when none has)."""
    defined = per_graph[~per_graph.isnan()]
    if not len(defined):
        return math.nan, math.nan
    return defined.mean().item(), defined.std(correction=0).item()


def _many_graphs(ctx: RunContext) -> ExperimentResult:
    """Figure 9: one model per random forest, trained as one batched ensemble; both
    statistics per graph: the official one (softmax of layer 1's position -> position
    block of A, no data) and the data-averaged attention on the parent."""
    s = ctx.settings
    n_graphs = s["n_graphs"]
    graph_seeds = range(ctx.seed * n_graphs, (ctx.seed + 1) * n_graphs)
    config = ctx.train_config("figure9")
    # one sweep member per graph, graph k trained with seed config.seed + k: the sweep
    # trains them as one ensemble
    study = [{"graph": "forest", "graph_seed": g, "seed": config.seed + k,
              "seq_len": s["seq_len"], "vocab_size": s["vocab_size"], "alpha": s["alpha"]}
             for k, g in enumerate(graph_seeds)]
    with tempfile.TemporaryDirectory(prefix="mechcausal-fig9-") as folder:
        rows = sweep(study, config, out=folder, resume=False, progress=False)
        trained = [load_checkpoint(path) for path in rows["checkpoint"]]
    members = [checkpoint.model for checkpoint in trained]
    tasks = [checkpoint.task for checkpoint in trained]
    histories = [checkpoint.history for checkpoint in trained]
    # attention from each position to its parent, NaN at roots: [G, T] per statistic
    official = torch.full((n_graphs, s["seq_len"]), math.nan)
    averaged = torch.full((n_graphs, s["seq_len"]), math.nan)
    for g, (member, task) in enumerate(zip(members, tasks)):
        estimate = extract_graph(member, task, n_samples=s["eval_samples"], seed=ctx.seed)
        official[g] = _edge_values(estimate.position_patterns, task.graph)
        averaged[g] = _edge_values(estimate.patterns, task.graph)
    per_graph = {"position_parent_attention": torch.nanmean(official, 1),
                 "parent_attention": torch.nanmean(averaged, 1)}
    (mean, sd), (data_mean, data_sd) = (_mean_sd(v) for v in per_graph.values())
    ref_mean, ref_sd = FIG9_OFFICIAL
    metrics = {"position_parent_attention": {"per_graph": per_graph["position_parent_attention"],
                                             "mean": mean, "sd": sd, "by_position": official},
               "parent_attention": {"per_graph": per_graph["parent_attention"],
                                    "mean": data_mean, "sd": data_sd, "by_position": averaged},
               "graph_seeds": list(graph_seeds),
               "final_test_loss": [h.final["test_loss"] for h in histories],
               "bayes_loss": [h.bayes_loss for h in histories],
               "train_seconds": histories[0].wall_time, "train_config": config.to_dict()}
    recipe = _recipe(config)
    claims = [
        Claim(f"{n_graphs} random graphs: the official statistic (softmax of layer 1's "
              f"position block of A, at the parent), mean +/- sd over graphs (>= official "
              f"- 2 sd); ours: {recipe}",
              f"{_fmt(mean)} +/- {_fmt(sd)}",
              f"{ref_mean} +/- {ref_sd} (paper Fig. 9); the official recipe run here: "
              f"{FIG9_OFFICIAL_RECIPE_HERE}",
              mean >= ref_mean - 2 * ref_sd),
        # our quick recipe aims past the official result; the official recipe is checked
        # for the two statistics agreeing
        Claim(f"{n_graphs} random graphs: layer-1 attention on the parent averaged over "
              f"data (>= {PARENT_ATTENTION_MIN}); ours: {recipe}",
              f"{_fmt(data_mean)} +/- {_fmt(data_sd)}",
              "not reported (the paper reports the statistic above)",
              data_mean >= PARENT_ATTENTION_MIN) if ctx.scale == "quick" else
        Claim(f"{n_graphs} random graphs: layer-1 attention on the parent averaged over "
              f"data, within 2 sd of the official statistic's mean; ours: {recipe}",
              f"{_fmt(data_mean)} +/- {_fmt(data_sd)} (official statistic {_fmt(mean)})",
              "not reported (the paper reports the statistic above)",
              abs(data_mean - mean) <= 2 * sd),
    ]
    figures = {
        "fig9_many_graphs": plots.parent_attention_by_position(
            official, FIG9_OFFICIAL, statistic="position attention",
            title=f"the official statistic over {n_graphs} random graphs: softmax of "
                  f"layer 1's position block of A (cf. paper Fig. 9)"),
        "fig9_example_graph": plots.graph_vs_attention(
            tasks[0].graph, extract_graph(members[0], tasks[0], n_samples=s["eval_samples"],
                                          seed=ctx.seed).patterns,
            title=f"random graph (seed {graph_seeds[0]}): true graph vs layer-1 attention"),
    }
    checkpoints = {f"fig9_graph{g:02d}": checkpoint for g, checkpoint in enumerate(trained)}
    return ctx.result(tasks[0], metrics, claims, figures, checkpoints)


def _theory(ctx: RunContext) -> ExperimentResult:
    """The mechanism: -dL/dA1 at Algorithm 1's start vs chi-squared MI, on trees."""
    s = ctx.settings
    metrics: dict[str, Any] = {}
    claims: list[Claim] = []
    figures: dict[str, Figure] = {}
    for graph_name in SINGLE_PARENT_FAMILIES:
        family = GRAPH_FAMILIES[graph_name]
        label = family.description
        task = InContextTree(family.graph(s["seq_len"], ctx.seed), s["vocab_size"], s["alpha"])
        report = information_report(task, n_pi=s["n_pi"], n_samples=s["n_samples"],
                                    beta0=s["beta0"], seed=ctx.seed)
        rows = sum(1 for ps in report.parents if ps)
        metrics[graph_name] = {key: getattr(report, key) for key in (
            "gradient_agreement", "mi_agreement", "mean_spearman", "gradient_argmax",
            "mi_argmax")} | {"scored_rows": rows}
        claims.append(Claim(
            f"{label}: per-row argmax of -dL/dA1 at init and of chi2 MI is the parent",
            f"gradient {_fmt(report.gradient_agreement, 2)}, MI "
            f"{_fmt(report.mi_agreement, 2)} of {rows} rows "
            f"(Spearman {_fmt(report.mean_spearman, 2)})",
            "1.0 (theory: gradient ~ chi2 MI, which peaks at p(i))",
            report.gradient_agreement == 1.0 and report.mi_agreement == 1.0))
        figures[f"theory_{graph_name}"] = plots.gradient_vs_mi(
            report, title=f"{label}: gradient at initialisation vs chi-squared MI")
    return ctx.result(task, metrics, claims, figures, {})


def _algorithm1(ctx: RunContext) -> ExperimentResult:
    """Algorithm 1 (our reconstruction) on the chain: the reduced model (the theory's
    object) and, for comparison, the disentangled transformer through the same stages."""
    s = ctx.settings
    task = InContextTree(CausalGraph.chain(s["seq_len"]), s["vocab_size"], s["alpha"])
    config = ctx.train_config(None)
    reduced = ReducedModel.for_task(task)
    stages = train_two_stage(reduced, task, config, config, beta0=s["beta0"])
    disentangled = DisentangledTransformer.for_task(task)
    disentangled_stages = train_two_stage(disentangled, task, config, config, beta0=s["beta0"])
    # the reduced model's layer-1 pattern is softmax(mask(A1)) whatever the data
    graph, patterns = _graph_metrics(reduced, task, ctx)
    children, parents = zip(*((i, p) for p, i in task.graph.edges))
    on_parent = patterns[0, list(children), list(parents)]
    losses = heldout_losses(reduced, task, s["eval_samples"], ctx.seed)
    gap = losses["model"] - losses["count_estimator"]
    compare = heldout_losses(disentangled, task, s["eval_samples"], ctx.seed)
    compare_gap = compare["model"] - compare["count_estimator"]
    compare_attention = disentangled_stages.stage1.parent_attention[-1]
    metrics = {**graph, "a1_parent_min": on_parent.min().item(),
               "a1_parent_mean": on_parent.mean().item(), "losses": losses, "gap": gap,
               "disentangled": {"losses": compare, "gap": compare_gap,
                                "parent_attention": compare_attention},
               "beta0": s["beta0"], "train_config": config.to_dict(),
               "train_seconds": stages.stage1.wall_time + stages.stage2.wall_time}
    claims = [
        Claim("Algorithm 1, reduced model, stage 1: softmax(A1)[i, p(i)] on every edge "
              "(>= 0.99)", f"min {on_parent.min().item():.3f}, mean {on_parent.mean().item():.3f}",
              "-> 1 (theory)", on_parent.min().item() >= 0.99),
        Claim("Algorithm 1, reduced model, stage 2: loss below the unigram baseline",
              f"{_fmt(losses['model'])} vs unigram {_fmt(losses['unigram'])}",
              "below unigram (theory)", losses["model"] < losses["unigram"]),
        Claim(f"Algorithm 1, reduced model, stage 2: loss near the count estimator "
              f"(gap < {GAP_MAX} nats)",
              f"{_fmt(losses['model'])} vs {_fmt(losses['count_estimator'])} (gap {gap:+.3f})",
              "-> estimator (theory)", gap < GAP_MAX),
        Claim(f"Algorithm 1, disentangled transformer: loss near the count estimator "
              f"(gap < {GAP_MAX} nats)",
              f"{_fmt(compare['model'])} vs {_fmt(compare['count_estimator'])} "
              f"(gap {compare_gap:+.3f}; layer-1 attention on parents {compare_attention:.3f})",
              "-> estimator (theory)", compare_gap < GAP_MAX),
    ]
    figures = {
        "algorithm1_graph": plots.graph_vs_attention(
            task.graph, patterns, title="Algorithm 1: true graph vs softmax(A1) after stage 1"),
        "algorithm1_weights": plots.weight_blocks(reduced,
                                                  title="Algorithm 1: reduced model A1, A2"),
        "algorithm1_loss": plots.loss_curves([stages.stage1, stages.stage2],
                                             title="Algorithm 1: stage 1 (A1), stage 2 (A2)"),
    }
    checkpoints = {
        "algorithm1_reduced": Checkpoint(reduced, task, config, stages.stage2),
        "algorithm1_disentangled": Checkpoint(disentangled, task, config,
                                              disentangled_stages.stage2),
    }
    return ctx.result(task, metrics, claims, figures, checkpoints)


def _ood(ctx: RunContext) -> ExperimentResult:
    """Out of distribution: the chain model on transition priors it never saw."""
    s = ctx.settings
    model, task, config, history = _train_tree(ctx, CausalGraph.chain(s["seq_len"]), "chain")
    report = ood_report(model, task, n_samples=s["eval_samples"], seed=ctx.seed)
    metrics = {"evaluations": report.to_dict()["evaluations"], "train_config": config.to_dict()}
    # ood_report evaluates the training prior first, then each shifted prior
    tested = [f"the training prior Dirichlet({task.alpha})"] + [
        f"the unseen {e.name} prior" for e in report.evaluations[1:]]
    claims = [
        Claim(f"chain model on {name}: at most {GAP_MAX} nats worse than the count estimator",
              f"gap {e.gap:+.3f} ({_fmt(e.model_loss)} vs {_fmt(e.bayes_loss)})",
              "tracks the estimator (theory: OOD)", e.gap < GAP_MAX)
        for name, e in zip(tested, report.evaluations)
    ]
    return ctx.result(task, metrics, claims, {"ood": report.plot()},
                      {"ood_chain": Checkpoint(model, task, config, history)})


# ---------------------------------------------------------------------- registry
# official sizes: seq_len = 19 context positions, input 20 with the query (shared/PAPER.md)
_TREE = dict(vocab_size=10, seq_len=19, alpha=0.1)
# The official runs measure test loss on 2^16 held-out samples (shared/PAPER.md)
_PAPER_EVAL = dict(eval_samples=2**16)
# Two parents, quick: a shorter context (T=16) and the two_parent quick preset (Adam,
# constant lr 0.03); the official AdamW lr 1e-2 with cosine decay split none of our
# seeds within 8000 steps at T=12.
_TWO_PARENT = dict(vocab_size=5, alpha=0.1, heads=(2, 1), init_scale=1e-4)

# seconds: at quick scale measured on 2 cores, one thread per experiment with the other
# core busy (as reproduce --jobs 2 runs them); at paper scale estimated from the steps
for _experiment in (
    Experiment("fig2_chain", "Fig. 2", "in-context Markov chain: layer 1 learns p(i) = i-1",
               _single_parent("chain"), {**_TREE, "eval_samples": 2048}, {**_TREE, **_PAPER_EVAL},
               seconds={"quick": 12, "paper": 700}),
    Experiment("fig2_icl", "Fig. 6", "in-context (x, f(x)) pairs",
               _single_parent("icl"), {**_TREE, "eval_samples": 2048}, {**_TREE, **_PAPER_EVAL},
               seconds={"quick": 10, "paper": 700}),
    Experiment("fig2_random", "Fig. 6", "random tree (seeded by --seed)",
               _single_parent("random"), {**_TREE, "eval_samples": 2048},
               {**_TREE, **_PAPER_EVAL},
               seconds={"quick": 10, "paper": 700}),
    Experiment("fig5_two_parent", "Fig. 5, 7", "two parents per node, two layer-1 heads",
               _two_parent,
               {**_TWO_PARENT, "seq_len": 16, "eval_samples": 4096},
               {**_TWO_PARENT, "seq_len": 32, **_PAPER_EVAL},
               seconds={"quick": 45, "paper": 1500}),
    Experiment("fig8_mlp", "Fig. 8", "standard transformer with MLPs on the chain",
               _mlp, {**_TREE, "d_model": 64, "steps": 500, "eval_samples": 2048},
               {**_TREE, "d_model": 64, **_PAPER_EVAL},
               seconds={"quick": 46, "paper": 900}),
    Experiment("fig9_many_graphs", "Fig. 9", "20 random graphs, one batched ensemble",
               _many_graphs,
               {"vocab_size": 3, "seq_len": 19, "alpha": 0.1, "n_graphs": 20,
                "eval_samples": 2048},
               {"vocab_size": 3, "seq_len": 19, "alpha": 0.1, "n_graphs": 20,
                "eval_samples": 2**14},
               seconds={"quick": 200, "paper": 3400}),
    Experiment("theory_gradient_mi", "theory", "gradient at init vs chi-squared MI on trees",
               _theory, {**_TREE, "n_pi": 64, "n_samples": 2**13, "beta0": 0.1},
               {**_TREE, "n_pi": 1024, "n_samples": 2**16, "beta0": 0.1}, trains=False,
               seconds={"quick": 1, "paper": 30}),
    # Algorithm 1 is our reconstruction: no official hyperparameters; "paper" runs longer
    Experiment("algorithm1_reduced", "Algorithm 1", "two-stage training of the reduced model",
               _algorithm1,
               {**_TREE, "steps": 150, "batch_size": 1024, "optimizer": "adam", "lr": 0.1,
                "beta0": 1.0, "eval_samples": 2048},
               {**_TREE, "steps": 2000, "batch_size": 1024, "optimizer": "adam", "lr": 0.1,
                "beta0": 1.0, **_PAPER_EVAL},
               seconds={"quick": 6, "paper": 80}),
    Experiment("ood", "theory", "the chain model on unseen transition priors",
               _ood, {**_TREE, "eval_samples": 2048}, {**_TREE, **_PAPER_EVAL},
               reuses=("fig2_chain",),
               seconds={"quick": 1, "paper": 60}),
):
    register_experiment(_experiment)
del _experiment
