"""The ``mechcausal`` command: ``train``, ``reproduce`` (the paper's experiments, a
report and figures) and ``diagnose`` (every applicable diagnostic on a checkpoint).

``reproduce`` and ``diagnose`` import matplotlib and the experiments on first use, so
``train`` starts without them."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .checkpoint import save_checkpoint
from .config import TrainConfig
from .graphs import CausalGraph
from .models import DisentangledTransformer
from .tasks import InContextDAG, InContextTask, InContextTree
from .train import train

TREE_GRAPHS = ("chain", "icl", "random", "forest")
DAG_GRAPHS = ("markov", "two_parent")
# which preset family each graph trains with
PRESET_OF_GRAPH = {"chain": "chain", "icl": "icl", "random": "random", "forest": "figure9",
                   "markov": "two_parent", "two_parent": "two_parent"}


def build_graph(name: str, n: int, seed: int = 0, order: int = 2) -> CausalGraph:
    """The named graph over ``n`` nodes."""
    builders = {
        "chain": lambda: CausalGraph.chain(n),
        "icl": lambda: CausalGraph.icl_pairs(n),
        "random": lambda: CausalGraph.random_tree(n, seed=seed),
        "forest": lambda: CausalGraph.random_forest(n, seed=seed),
        "markov": lambda: CausalGraph.markov(n, order=order),
        "two_parent": lambda: CausalGraph.two_parent(n),
    }
    if name not in builders:
        raise ValueError(f"unknown graph {name!r}; expected one of {sorted(builders)}")
    return builders[name]()


def build_task(name: str, vocab_size: int, seq_len: int, alpha: float, seed: int = 0,
               order: int = 2) -> InContextTask:
    """Tree graphs get ``seq_len`` context nodes plus a query; DAG graphs get
    ``seq_len`` context nodes plus the target node."""
    if name in DAG_GRAPHS:
        return InContextDAG(build_graph(name, seq_len + 1, seed, order), vocab_size, alpha)
    return InContextTree(build_graph(name, seq_len, seed, order), vocab_size, alpha)


def _parse_heads(text: str) -> tuple[int, ...]:
    try:
        heads = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--heads must be comma-separated ints such as 1,1 or 2,1, got {text!r}"
        ) from None
    return heads


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a disentangled transformer on an in-context task")
    p.add_argument("--graph", choices=TREE_GRAPHS + DAG_GRAPHS, default="chain")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="S (default 10; 5 for two_parent/markov, 3 for forest)")
    p.add_argument("--seq-len", type=int, default=None,
                   help="T context tokens (default 20; 32 for two_parent/markov)")
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--order", type=int, default=2, help="parents per node for --graph markov")
    p.add_argument("--heads", type=_parse_heads, default=None,
                   help="heads per layer, e.g. 1,1 (default: max parents, then 1)")
    p.add_argument("--preset", choices=("quick", "paper"), default="quick")
    p.add_argument("--steps", type=int, default=None, help="override the preset's steps")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0, help="seeds the data, the init and random graphs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("runs/train"))
    p.add_argument("--no-progress", action="store_true")


def cmd_train(args: argparse.Namespace) -> int:
    is_dag = args.graph in DAG_GRAPHS
    default_vocab = 3 if args.graph == "forest" else 5 if is_dag else 10
    task = build_task(args.graph, args.vocab_size or default_vocab,
                      args.seq_len or (32 if is_dag else 20), args.alpha, args.seed, args.order)
    heads = args.heads or (task.graph.max_parents if is_dag else 1, 1)
    model = DisentangledTransformer.for_task(
        task, heads=heads, init="normal" if is_dag else "zeros", init_scale=1e-4, seed=args.seed
    )
    overrides = {k: v for k, v in {"steps": args.steps, "batch_size": args.batch_size,
                                   "lr": args.lr}.items() if v is not None}
    factory = TrainConfig.quick if args.preset == "quick" else TrainConfig.paper
    config = factory(PRESET_OF_GRAPH[args.graph], seed=args.seed, device=args.device,
                     progress=not args.no_progress, **overrides)
    print(f"task:  {task!r}")
    print(f"model: DisentangledTransformer(heads={heads}, widths={model.cfg.widths})")
    print(f"train: {config.preset}, {config.steps} steps of {config.batch_size}, "
          f"{config.optimizer} lr={config.lr}")
    history = train(model, task, config)
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = save_checkpoint(args.out / "checkpoint.pt", model, task, config, history)
    (args.out / "history.json").write_text(json.dumps(history.to_dict(), indent=1))
    final = history.final
    summary = {**final, "steps_per_second": history.steps_per_second,
               "wall_time": history.wall_time,
               "time_to_parent_attention_0.95": history.time_to_parent_attention(0.95)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"test loss        {final['test_loss']:.4f} nats")
    print(f"count estimator  {final['bayes_loss']:.4f} nats  (gap {final['gap']:+.4f})")
    print(f"unigram baseline {final['unigram_loss']:.4f} nats")
    print(f"parent attention {final['parent_attention']:.3f} (layer-1, mean over edges)")
    print(f"speed            {history.steps_per_second:.1f} steps/s, {history.wall_time:.1f} s")
    print(f"saved            {checkpoint}, {args.out / 'history.json'}")
    return 0


def _parse_setting(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as JSON when it parses (``steps=50``,
    ``heads=[2,1]``, ``lr=0.01``), else kept as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set takes KEY=VALUE, e.g. steps=50; got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _add_reproduce_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce", help="run the paper's experiments; write report.md, metrics.json, "
                          "figures/ and checkpoints/",
        description="Run the paper's experiments (default: all, quick scale) and write "
                    "DIR/report.md, DIR/metrics.json, DIR/figures/*.png, DIR/checkpoints/.")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--quick", dest="scale", action="store_const", const="quick",
                       help="our CPU recipes, minutes (default)")
    scale.add_argument("--paper", dest="scale", action="store_const", const="paper",
                       help="the official hyperparameters (hours on a CPU; use a GPU)")
    p.set_defaults(scale="quick")
    p.add_argument("--only", nargs="+", metavar="NAME", default=None,
                   help="run only these experiments (see --list)")
    p.add_argument("--out", type=Path, default=Path("reproduce"), metavar="DIR")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds random graphs, initialisation and data")
    p.add_argument("--set", dest="overrides", type=_parse_setting, action="append",
                   default=[], metavar="KEY=VALUE",
                   help="override a setting of the chosen experiments, e.g. --set steps=50")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    p.add_argument("--no-progress", action="store_true")


def cmd_reproduce(args: argparse.Namespace) -> int:
    from . import experiments

    if args.list:
        for name, experiment in experiments.EXPERIMENTS.items():
            print(f"{name:<20} {experiment.figure:<12} {experiment.description}")
        return 0
    if args.device != "cpu" and not args.device.startswith("cuda"):
        raise ValueError(f"--device must be cpu or cuda (cuda:N), got {args.device!r}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available here; use --device cpu")
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {str(args.out)!r} is a file; give a folder")
    # validate before announcing the run
    names = experiments.resolve_names(args.only)
    overrides = dict(args.overrides)
    experiments.check_overrides(names, overrides)
    command = "mechcausal " + " ".join(shlex.quote(a) for a in args.argv)
    print(f"reproduce ({args.scale} scale): {len(names)} experiments -> {args.out}")
    results = experiments.reproduce(
        names, args.scale, args.out, seed=args.seed, device=args.device,
        overrides=overrides, progress=not args.no_progress, command=command)
    held = sum(c.holds for r in results for c in r.claims)
    total = sum(len(r.claims) for r in results)
    print(f"{held} of {total} claims hold; report: {args.out / 'report.md'}")
    return 0


def _add_diagnose_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("diagnose", help="run every applicable diagnostic on a checkpoint",
                       description="Load a checkpoint (mechcausal train / reproduce), run "
                                   "every applicable diagnostic, print a summary, and write "
                                   "DIR/diagnosis.json and DIR/figures/*.png.")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="default: diagnose_<name> beside the checkpoint")
    p.add_argument("--n-samples", type=int, default=2048,
                   help="task samples per diagnostic")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")


def cmd_diagnose(args: argparse.Namespace) -> int:
    from .diagnose import diagnose, write_diagnosis

    if not args.checkpoint.is_file():
        raise ValueError(f"checkpoint {str(args.checkpoint)!r} does not exist")
    if args.n_samples < 1:
        raise ValueError(f"--n-samples must be >= 1, got {args.n_samples}")
    out = args.out or args.checkpoint.parent / f"diagnose_{args.checkpoint.stem}"
    diagnosis = diagnose(args.checkpoint, n_samples=args.n_samples, seed=args.seed,
                         device=args.device)
    for line in diagnosis.lines:
        print(line)
    for name, reason in diagnosis.skipped.items():
        print(f"{'skipped':<18} {name}: {reason}")
    paths = write_diagnosis(diagnosis, out)
    print(f"wrote {paths[0]} and {len(paths) - 1} figures under {out / 'figures'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mechcausal",
        description="How transformers learn causal structure: tasks, models, training.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_parser(sub)
    _add_reproduce_parser(sub)
    _add_diagnose_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    commands = {"train": cmd_train, "reproduce": cmd_reproduce, "diagnose": cmd_diagnose}
    try:
        return commands[args.command](args)
    except (ValueError, TypeError) as err:
        print(f"mechcausal: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
