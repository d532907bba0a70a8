"""The ``mechcausal`` command: ``train``, ``reproduce`` (the paper's experiments, a
report and figures), ``diagnose`` (every applicable diagnostic on a checkpoint) and
``sweep`` (a grid of knobs as one study).

Argument parsing only: every subcommand is one library call. Graph families come from
:data:`~mechcausal.graphs.GRAPH_FAMILIES` and diagnostics from
:data:`~mechcausal.diagnostics.DIAGNOSTICS` when the command runs, so a registered
family or diagnostic is available here too. A user mistake ends with one line
``mechcausal: error: ...`` and exit status 2 (``--debug`` shows the traceback).
``reproduce`` imports the experiments on first use."""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .data.tasks import make_task
from .files import check_output_dir, write_text_atomically
from .graphs import GRAPH_FAMILIES, graph_family
from .ops import check_positive_int, format_number, to_json
from .models import DisentangledTransformer
from .training import NonFiniteLossError, TensorBoardLogger, TrainConfig, WandbLogger, train
from .ops import check_device_available


class _Parser(argparse.ArgumentParser):
    """argparse with mistakes answered in one line (``mechcausal: error: ...``, exit 2)
    instead of the usage text; ``--help`` still shows it."""

    def error(self, message: str):
        self.exit(2, f"mechcausal: error: {message} (see: {self.prog} --help)\n")


def _parse_heads(text: str) -> tuple[int, ...]:
    try:
        heads = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--heads must be comma-separated ints such as 1,1 or 2,1, got {text!r}"
        ) from None
    return heads


def _add_tracking_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tensorboard", default=None, metavar="LOGDIR",
                   help="log to TensorBoard event files under LOGDIR "
                        "(pip install 'mechcausal[tensorboard]')")
    p.add_argument("--wandb", default=None, metavar="PROJECT",
                   help="log to Weights & Biases project PROJECT (pip install "
                        "'mechcausal[wandb]')")
    p.add_argument("--wandb-mode", choices=("offline", "online"), default=None,
                   help="offline (default): runs under DIR/wandb (the --out folder), "
                        "'wandb sync' them later")


def _loggers(args: argparse.Namespace) -> list[Any]:
    """The tracking callbacks ``--tensorboard`` / ``--wandb`` ask for (wandb writes under
    the command's ``--out`` folder)."""
    loggers: list[Any] = []
    if args.wandb_mode is not None and args.wandb is None:
        raise ValueError("--wandb-mode applies to --wandb PROJECT, which was not given")
    if args.tensorboard is not None:
        if not args.tensorboard.strip():
            raise ValueError("--tensorboard needs a folder, got an empty string")
        loggers.append(TensorBoardLogger(args.tensorboard))
    if args.wandb is not None:
        loggers.append(WandbLogger(args.wandb, mode=args.wandb_mode or "offline",
                                   dir=args.out))
    return loggers


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    families = ", ".join(f"{name} ({family.description})"
                         for name, family in GRAPH_FAMILIES.items())
    p = sub.add_parser("train", help="train a disentangled transformer on an in-context task",
                       description=f"Train a disentangled transformer. Graph families: "
                                   f"{families}.")
    p.add_argument("--graph", choices=list(GRAPH_FAMILIES), default="chain")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="S (default: the family's, e.g. 10 for chain, 3 for forest)")
    p.add_argument("--seq-len", type=int, default=None,
                   help="T context tokens (default: the family's, e.g. 19 + the query = "
                        "input 20; 32 for two_parent)")
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--order", type=int, default=None,
                   help="parents per node, for families that take it (markov; default 2)")
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
    _add_tracking_arguments(p)


def cmd_train(args: argparse.Namespace) -> int:
    family = graph_family(args.graph)
    params = {}
    if args.order is not None:
        if "order" not in family.params:
            raise ValueError(f"--order applies to graph families with an order (markov), "
                             f"not {args.graph!r}")
        params["order"] = args.order
    task = make_task(args.graph, args.seq_len, args.vocab_size, args.alpha, args.seed,
                     **params)
    heads = args.heads or ((task.graph.max_parents, 1) if family.task == "dag" else (1, 1))
    model = DisentangledTransformer.for_task(task, heads=heads, init=family.init,
                                             init_scale=1e-4, seed=args.seed)
    overrides = {k: v for k, v in {"steps": args.steps, "batch_size": args.batch_size,
                                   "lr": args.lr}.items() if v is not None}
    factory = TrainConfig.quick if args.preset == "quick" else TrainConfig.paper
    config = factory(args.graph, seed=args.seed, device=args.device,
                     progress=not args.no_progress, **overrides)
    check_device_available(config.device, "--device")
    out = check_output_dir(args.out, "--out")
    loggers = _loggers(args)
    print(f"task:  {task!r}")
    print(f"model: DisentangledTransformer(heads={model.cfg.heads}, widths={model.cfg.widths})")
    print(f"train: {config.preset}, {config.steps} steps of {config.batch_size}, "
          f"{config.optimizer} lr={config.lr}")
    checkpoint = out / "checkpoint.pt"
    # a run that fails writes checkpoint.failed.pt and none of these: the files of a
    # finished run in --out stay together
    history = train(model, task, config, checkpoint=checkpoint, callbacks=loggers)
    final = history.final
    summary = {**final, "steps_per_second": history.steps_per_second,
               "wall_time": history.wall_time,
               "time_to_parent_attention_0.95": history.time_to_parent_attention(0.95)}
    not_computed = {}
    if final.get("parent_attention") is None or not math.isfinite(final["parent_attention"]):
        not_computed["parent_attention"] = "the graph has no edges: no parent to attend to"
    if not_computed:  # a statistic with nothing to count is null, with its reason
        summary["not_computed"] = not_computed
    for name, data in (("history.json", history.to_dict()), ("summary.json", summary)):
        write_text_atomically(out / name, json.dumps(to_json(data), indent=1, allow_nan=False))
    print(f"test loss        {final['test_loss']:.4f} nats")
    print(f"count estimator  {final['bayes_loss']:.4f} nats  (gap {final['gap']:+.4f})")
    print(f"unigram baseline {final['unigram_loss']:.4f} nats")
    print(f"parent attention {format_number(final['parent_attention'])} (layer-1, mean over "
          f"edges{'; ' + not_computed['parent_attention'] if not_computed else ''})")
    print(f"speed            {history.steps_per_second or 0:.1f} steps/s, "
          f"{history.wall_time:.1f} s")
    for warning in history.warnings:
        print(f"warning          {warning}")
    print(f"saved            {checkpoint}, {out / 'history.json'}")
    return 0


def _parse_setting(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as JSON when it parses (``steps=50``,
    ``heads=[2,1]``, ``lr=0.01``), else as a float (``lr=nan``), else kept as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set takes KEY=VALUE, e.g. steps=50; got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        pass
    try:  # nan and inf as Python spells them: numbers, so that they are checked as numbers
        return key, float(value)
    except ValueError:
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
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="run independent experiments in N processes at once (default: "
                        "one per CPU core, up to 2, on the CPU; 1 on a GPU)")


def cmd_reproduce(args: argparse.Namespace) -> int:
    from . import experiments

    if args.list:
        for name, experiment in experiments.EXPERIMENTS.items():
            print(f"{name:<20} {experiment.figure:<12} {experiment.description}")
        return 0
    # validate before announcing the run
    names = experiments.resolve_names(args.only)
    overrides = dict(args.overrides)
    experiments.check_overrides(names, overrides)
    check_device_available(args.device, "--device")
    out = check_output_dir(args.out, "--out")
    command = "mechcausal " + " ".join(shlex.quote(a) for a in args.argv)
    jobs = check_positive_int(args.jobs, "--jobs") if args.jobs is not None else (
        1 if args.device != "cpu" else max(1, min(2, torch.get_num_threads())))
    print(f"reproduce ({args.scale} scale): {len(names)} experiments -> {out}")
    results = experiments.reproduce(
        names, args.scale, out, seed=args.seed, device=args.device,
        overrides=overrides, progress=not args.no_progress, command=command, jobs=jobs,
        log=lambda line: print(line, flush=True))
    held = sum(c.holds for r in results for c in r.claims)
    total = sum(len(r.claims) for r in results)
    print(f"{held} of {total} claims hold; report: {out / 'report.md'}")
    return 0


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--token-ids must be comma-separated ints such as 10,11,12, got {text!r}") from None


def _parse_heads(text: str) -> list[tuple[int, int]]:
    """``"3.1,4.0"`` -> [(3, 1), (4, 0)]."""
    try:
        heads = [tuple(int(part) for part in item.split(".")) for item in text.split(",")]
    except ValueError:
        heads = []
    if not heads or any(len(head) != 2 for head in heads):
        raise argparse.ArgumentTypeError(
            f"heads must be LAYER.HEAD pairs separated by commas, such as 3.1,4.0; got {text!r}")
    return heads


def _parse_words(text: str) -> list[str]:
    """``" A, B"`` -> [" A", " B"]: words are kept as written (leading spaces matter)."""
    words = text.split(",")
    if not all(words):
        raise argparse.ArgumentTypeError(f"words must be non-empty and separated by commas, "
                                         f"got {text!r}")
    return words


def _add_diagnose_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "diagnose", help="run every applicable diagnostic on a checkpoint or a language model",
        description="Run every applicable diagnostic, print a summary, and write "
                    "DIR/diagnosis.json and DIR/figures/*.png: on a checkpoint (mechcausal "
                    "train / reproduce, mc.save_checkpoint), or with --lm on a pretrained "
                    "language model given the paper's task written in its vocabulary.")
    p.add_argument("checkpoint", type=Path, nargs="?", default=None)
    p.add_argument("--lm", default=None, metavar="NAME_OR_PATH",
                   help="a causal LM: a folder written by save_pretrained, or a hub name in "
                        "the local cache (nothing is downloaded)")
    p.add_argument("--graph", choices=list(GRAPH_FAMILIES), default="chain",
                   help="with --lm: the task's graph family")
    p.add_argument("--vocab-size", type=int, default=None, help="with --lm: S symbols")
    p.add_argument("--seq-len", type=int, default=None, help="with --lm: T context tokens")
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--token-ids", type=_parse_ids, default=None,
                   help="with --lm: the LM token id of each symbol (default 0..S-1)")
    p.add_argument("--bos", type=int, default=None, metavar="ID",
                   help="with --lm: a token id to put before every sequence (default: the "
                        "tokenizer's BOS when it prepends one)")
    p.add_argument("--words", type=_parse_words, default=None, metavar="W1,W2,...",
                   help="with --lm: each symbol as a word of the LM's tokenizer (one token "
                        "each), in place of --token-ids")
    p.add_argument("--layer", type=int, default=None,
                   help="read the graph and patching from every head of this layer "
                        "(default: layer 0 on two-layer models, else the heads that "
                        "rank_heads ranks first)")
    p.add_argument("--heads", type=_parse_heads, default=None, metavar="L.H,...",
                   help="read the graph and patching from these heads (e.g. 3.1,4.0)")
    p.add_argument("--induction-heads", type=_parse_heads, default=None, metavar="L.H,...",
                   help="read causal induction from these heads")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="default: diagnose_<name> beside the checkpoint (or here for --lm)")
    p.add_argument("--n-samples", type=int, default=512,
                   help="task samples per diagnostic")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")


def _lm_subject(args: argparse.Namespace) -> tuple[Any, Any]:
    """The LM and the task in its vocabulary, from --lm and the task flags."""
    from .models import load_lm

    if args.words is not None and args.token_ids is not None:
        raise ValueError("give --words or --token-ids, not both")
    task = make_task(args.graph, args.seq_len, args.vocab_size, args.alpha, args.seed)
    model = load_lm(args.lm, device=args.device)
    tokenizer = model.tokenizer
    if args.words is not None:
        if tokenizer is None:
            raise ValueError(f"--words needs a tokenizer, and {args.lm} has none: give "
                             f"--token-ids")
        return model, task.in_vocabulary(words=args.words, tokenizer=tokenizer,
                                         bos_token_id=args.bos)
    ids = args.token_ids
    if ids is None:  # the first ordinary tokens
        special = set(getattr(tokenizer, "all_special_ids", None) or ()) | {args.bos}
        ids = [i for i in range(model.cfg.d_vocab) if i not in special][: task.vocab_size]
    return model, task.in_vocabulary(ids, bos_token_id=args.bos, tokenizer=tokenizer)


def cmd_diagnose(args: argparse.Namespace) -> int:
    from .diagnostics import diagnose, write_diagnosis
    from .training import load_checkpoint

    if (args.checkpoint is None) == (args.lm is None):
        raise ValueError("give a checkpoint or --lm NAME_OR_PATH (one of them)")
    if args.checkpoint is not None:  # a checkpoint holds its task: task flags contradict it
        given = [flag for flag, value in (("--vocab-size", args.vocab_size),
                                          ("--seq-len", args.seq_len),
                                          ("--token-ids", args.token_ids), ("--bos", args.bos),
                                          ("--words", args.words))
                 if value is not None]
        given += [flag for flag in ("--graph", "--alpha")
                  if any(a == flag or a.startswith(flag + "=") for a in args.argv)]
        if given:
            raise ValueError(f"{given[0]} applies to --lm; a checkpoint brings its own task "
                             f"(drop {', '.join(given)})")
    if args.n_samples < 1:
        raise ValueError(f"--n-samples must be >= 1, got {args.n_samples}")
    check_device_available(args.device, "--device")
    if args.lm is not None:
        default_out = Path(f"diagnose_lm_{Path(args.lm).name or 'model'}")
    else:
        default_out = args.checkpoint.parent / f"diagnose_{args.checkpoint.stem}"
    chosen = dict(layer=args.layer, heads=args.heads, induction_heads=args.induction_heads,
                  progress=not args.no_progress)
    if args.layer is not None and args.heads is not None:
        raise ValueError("give --layer or --heads, not both")
    out = check_output_dir(args.out or default_out, "--out")
    if args.lm is not None:
        model, task = _lm_subject(args)
        diagnosis = diagnose(model, task, n_samples=args.n_samples, seed=args.seed, **chosen)
    else:
        diagnosis = diagnose(load_checkpoint(args.checkpoint, args.device),
                             n_samples=args.n_samples, seed=args.seed, **chosen)
    for line in diagnosis.lines:
        print(line)
    for name, reason in diagnosis.skipped.items():
        print(f"{'skipped':<18} {name}: {reason}")
    for name, reason in diagnosis.failed.items():
        print(f"{'failed':<18} {name}: {reason}")
    paths = write_diagnosis(diagnosis, out)
    print(f"wrote {paths[0]} and {len(paths) - 1} figures under {out / 'figures'}")
    return 1 if diagnosis.failed else 0


EXAMPLE_GRID = """\
# A mechcausal sweep: every list under [grid] is a knob, the study is their product.
# Run it with: mechcausal sweep grid.toml --out study [--backend ray]

[config]                # the recipe every member starts from
preset = "random"       # TrainConfig.quick(preset); scale = "paper" for the official one
scale = "quick"
steps = 300             # any TrainConfig field overrides the preset
batch_size = 512

[grid]                  # task and model knobs: graph, graph_seed, vocab_size, seq_len,
                        # alpha, prior (a Dirichlet concentration), heads, init, seed;
                        # and any TrainConfig field (lr, optimizer, steps, ...)
graph = ["chain", "icl", "random"]
seed = [0, 1, 2]
vocab_size = [5, 10]
"""


def _add_sweep_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="train a grid of tasks, models and recipes as one study",
                       description="Train every member of a grid file (TOML; --example "
                                   "prints one) and write DIR/results.csv and one checkpoint "
                                   "per member under DIR/members/.")
    p.add_argument("grid", type=Path, nargs="?", default=None, metavar="GRID.toml")
    p.add_argument("--out", type=Path, default=None, metavar="DIR")
    p.add_argument("--backend", choices=("local", "ray"), default="local")
    p.add_argument("--address", default=None,
                   help="with --backend ray: 'auto' or HOST:PORT of a running cluster "
                        "(default: start a local Ray)")
    p.add_argument("--device", default=None,
                   help="cpu or cuda (default: [config] device, else cpu)")
    p.add_argument("--no-resume", action="store_true",
                   help="train every member again, even those DIR already holds")
    p.add_argument("--replace", action="store_true",
                   help="let this study replace another one DIR holds (its member files "
                        "stay)")
    p.add_argument("--example", action="store_true", help="print a commented grid file")
    p.add_argument("--no-progress", action="store_true")
    _add_tracking_arguments(p)


def _read_grid(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(grid, config table) of a grid file."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    try:
        data = tomllib.loads(path.read_text())
    except OSError as error:
        raise ValueError(f"cannot read the grid file {str(path)!r}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"grid file {str(path)!r} is not valid TOML: {error}") from None
    unknown = sorted(set(data) - {"grid", "config"})
    if unknown or not isinstance(data.get("grid"), dict):
        raise ValueError(f"grid file {str(path)!r} needs a [grid] table (and optionally "
                         f"[config]); found {sorted(data)}")
    return data["grid"], data.get("config", {})


def cmd_sweep(args: argparse.Namespace) -> int:
    from .experiments.sweeps import METRICS, sweep

    if args.example:
        print(EXAMPLE_GRID, end="")
        return 0
    if args.grid is None or args.out is None:
        raise ValueError("give a grid file and --out DIR (mechcausal sweep --example prints "
                         "a grid file to start from)")
    if args.address is not None and args.backend != "ray":
        raise ValueError(f"--address applies to --backend ray, not {args.backend}")
    loggers = _loggers(args)  # the flags before the files
    grid, table = _read_grid(args.grid)
    table = dict(table)
    preset, scale = table.pop("preset", None), table.pop("scale", "quick")
    if scale not in ("quick", "paper"):
        raise ValueError(f"[config] scale must be 'quick' or 'paper', got {scale!r}")
    if args.device is not None and table.get("device", args.device) != args.device:
        raise ValueError(f"--device {args.device} contradicts [config] device = "
                         f"{table['device']!r} in {args.grid}; give one of them")
    device = args.device or table.get("device", "cpu")
    check_device_available(device, "--device" if args.device else "[config] device")
    fields = {**table, "device": device}
    if args.no_progress:  # the members' training bars too
        fields["progress"] = False
    if preset is None:
        config = TrainConfig(**fields)
    else:
        factory = TrainConfig.quick if scale == "quick" else TrainConfig.paper
        config = factory(preset, **fields)
    results = sweep(grid, config, out=args.out, backend=args.backend, address=args.address,
                    resume=not args.no_resume, progress=not args.no_progress,
                    loggers=loggers, replace=args.replace)
    shown = [c for c in (*grid, *METRICS) if c in results.columns]
    print(results[shown].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"wrote {args.out / 'results.csv'} and {len(results)} checkpoints under "
          f"{args.out / 'members'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(
        prog="mechcausal",
        description="How transformers learn causal structure: tasks, models, training.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error instead of one line")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_parser(sub)
    _add_reproduce_parser(sub)
    _add_diagnose_parser(sub)
    _add_sweep_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    commands = {"train": cmd_train, "reproduce": cmd_reproduce, "diagnose": cmd_diagnose,
                "sweep": cmd_sweep}
    try:
        return commands[args.command](args)
    except (ValueError, TypeError, NonFiniteLossError, OSError, ImportError) as err:
        if args.debug:
            raise
        text = str(err).splitlines()[0] if str(err) else repr(err)
        print(f"mechcausal: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mechcausal: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
