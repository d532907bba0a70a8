"""Sweeps: a grid of task, model and training knobs as one study.

:func:`sweep` expands the grid to its product, checks every member before any training
(the task, the model and the config each member would get), groups the members of one
shape and one training recipe, and trains each group as one :class:`Ensemble` through
the one loop, member seeds kept (``train(..., seeds=)``): a member trains exactly as a
single run with its own seed, whichever group it lands in, so a resumed sweep and a
sweep on another backend give the same rows. A group runs in this process
(``backend="local"``) or as a Ray task (``backend="ray"``); either way it returns its
rows and its members' checkpoint payloads, and this process writes them, so Ray
workers need no shared file system.

A study folder is a record that can be trusted after a crash, a rerun or a changed
recipe. A member's key hashes its identity: its knobs, its full training config (seed
included; not the switches that leave the result unchanged: ``progress``, ``prefetch``,
``device``, ``preset``), its task and its model settings. ``out/study.json`` (the
manifest) names the study's members; another study into the same folder is refused
with what differs, unless ``replace=True`` (the other study's member files stay: their
keys differ). ``out/members/{key}.pt`` is an ordinary checkpoint, ``{key}.json`` its
identity and row (for reading only: on resume a member's row is recomputed from its
checkpoint, which must load and match the member). ``out/results.csv`` holds every
member of the study (``status``: ``finished`` or ``pending``), rewritten atomically
after each group.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from dataclasses import dataclass, fields, replace
from dataclasses import replace as _replace
from pathlib import Path
from typing import Any

import torch

from ..data.priors import DirichletPrior, check_prior
from ..data.tasks import InContextDAG, InContextTask, InContextTree, make_task
from ..diagnostics.graph import extract_graph
from ..files import check_output_dir, write_atomically, write_text_atomically
from ..graphs import CausalGraph
from ..models.disentangled import DisentangledTransformer
from ..ops import check_choice, check_instances, check_positive_int, to_json
from ..training.checkpoint import checkpoint_payload
from ..ops import check_device_available
from ..training.config import TrainConfig
from ..training.ensemble import Ensemble
from ..training.loop import train
from ..training.tracking import TrackingLogger, run_name

TASK_KNOBS = ("graph", "graph_seed", "vocab_size", "seq_len", "alpha", "prior", "heads",
              "init", "seed")
CONFIG_KNOBS = tuple(f.name for f in fields(TrainConfig) if f.name not in ("seed", "progress"))
METRICS = ("test_loss", "bayes_loss", "gap", "parent_attention", "position_parent_attention",
           "parent_accuracy", "f1", "wall_time")
# seed: the config's (TrainConfig.seed) unless the grid sets it
DEFAULTS = {"graph": "chain", "graph_seed": 0, "vocab_size": None, "seq_len": None,
            "alpha": 0.1, "prior": None, "heads": (1, 1), "init": None}
# TrainConfig fields and model settings that do not change a member's result
NOT_IDENTITY = ("progress", "prefetch", "device", "preset")
MANIFEST = "study.json"
MANIFEST_FORMAT = "mechcausal-study"


def recipe(config: TrainConfig) -> dict[str, Any]:
    """The fields of ``config`` that determine a result (all but :data:`NOT_IDENTITY`)."""
    return to_json({k: v for k, v in config.to_dict().items() if k not in NOT_IDENTITY})


def _model_settings(model: torch.nn.Module) -> dict[str, Any]:
    from ..models.registry import model_kind

    settings = model_kind(model).config(model)
    return to_json({k: v for k, v in settings.items() if k not in NOT_IDENTITY})


@dataclass
class Member:
    """One point of the grid, checked: its knobs, task, model and training config."""

    index: int
    knobs: dict[str, Any]
    task: InContextTask
    model: DisentangledTransformer
    config: TrainConfig

    @cached_property
    def identity(self) -> dict[str, Any]:
        """Everything that determines its result: knobs, task, model settings, recipe."""
        return {"knobs": to_json(_plain(self.knobs)), "task": to_json(self.task.to_dict()),
                "model": _model_settings(self.model), "config": recipe(self.config)}

    @cached_property
    def key(self) -> str:
        """A name for its files, fixed by its identity."""
        text = json.dumps(self.identity, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def group(self) -> str:
        """Members with the same group train as one ensemble: same sizes, same model
        shape and the same recipe (seeds aside)."""
        cfg = self.model.cfg.to_dict()
        cfg.pop("seed", None)
        recipe = {k: v for k, v in self.config.to_dict().items() if k != "seed"}
        return json.dumps(to_json([self.task.kind, self.task.vocab_size,
                                   self.task.input_length, cfg, recipe]), sort_keys=True)


def _plain(knobs: Mapping[str, Any]) -> dict[str, Any]:
    """Knobs as JSON-ready values (a CausalGraph as its parents, a prior as its dict)."""
    plain = {}
    for name, value in knobs.items():
        if isinstance(value, CausalGraph):
            value = [list(p) for p in value.parents]
        elif hasattr(value, "to_dict"):
            value = value.to_dict()
        plain[name] = value
    return plain


def _check_knob(name: Any) -> None:
    if name not in TASK_KNOBS and name not in CONFIG_KNOBS:
        raise ValueError(f"grid: unknown knob {name!r}; task and model knobs: "
                         f"{', '.join(TASK_KNOBS)}; or a TrainConfig field")


def expand_grid(grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]]
                ) -> list[dict[str, Any]]:
    """The members of ``grid``: the product of a dict's lists, in the grid's order (last
    knob fastest), or a list of member dicts as given (knobs that vary together)."""
    if isinstance(grid, Sequence) and not isinstance(grid, (str, bytes)) and grid and all(
            isinstance(member, Mapping) for member in grid):
        for member in grid:
            for name in member:
                _check_knob(name)
        return [dict(member) for member in grid]
    if not isinstance(grid, Mapping) or not grid:
        raise TypeError(f"grid must be a non-empty dict of knob -> list of values (or a "
                        f"list of member dicts), got {grid!r}")
    for name, values in grid.items():
        _check_knob(name)
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise TypeError(f"grid[{name!r}] must be a non-empty list of values, got "
                            f"{values!r}")
    names = list(grid)
    return [dict(zip(names, combination)) for combination in
            itertools.product(*(grid[name] for name in names))]


def _task(knobs: dict[str, Any]) -> InContextTask:
    graph = knobs["graph"]
    if isinstance(graph, CausalGraph):
        kind = InContextTree if graph.is_tree else InContextDAG
        task = kind(graph, knobs["vocab_size"] or (10 if graph.is_tree else 5), knobs["alpha"])
    else:
        task = make_task(graph, knobs["seq_len"], knobs["vocab_size"], knobs["alpha"],
                         knobs["graph_seed"])
    prior = knobs["prior"]
    if prior is not None:
        if not hasattr(task, "with_prior"):
            raise ValueError(f"prior={prior!r}: the {task.kind} task of graph "
                             f"{knobs['graph'] if isinstance(knobs['graph'], str) else 'given'!r} "
                             f"has no prior knob (a DAG task draws each node's law from its "
                             f"parents' tables); prior applies to tree tasks")
        if isinstance(prior, (int, float)) and not isinstance(prior, bool):
            prior = DirichletPrior(float(prior))
        task = task.with_prior(check_prior(prior, "grid['prior']"))
    return task


def build_member(index: int, knobs: Mapping[str, Any], config: TrainConfig) -> Member:
    """The member ``knobs`` describe; ValueError / TypeError naming the knob and value."""
    full = {**DEFAULTS, "seed": config.seed, **knobs}
    for name, value in knobs.items():
        try:
            if name in CONFIG_KNOBS:
                replace(config, **{name: value})
        except (ValueError, TypeError) as error:
            raise type(error)(f"grid knob {name}={value!r}: {error}") from None
    try:
        task = _task(full)
        init = full["init"] or ("normal" if task.kind == "dag" else "zeros")
        model = DisentangledTransformer.for_task(task, heads=tuple(full["heads"]),
                                                 init=init, seed=full["seed"])
        member_config = replace(config, **{k: v for k, v in knobs.items()
                                           if k in CONFIG_KNOBS},
                                seed=full["seed"])
    except (ValueError, TypeError) as error:
        given = ", ".join(f"{k}={v!r}" for k, v in knobs.items() if k in TASK_KNOBS)
        raise type(error)(f"grid member {index} ({given}): {error}") from None
    return Member(index, dict(knobs), task, model, member_config)


def run_group(members: list[Member], loggers: Sequence[TrackingLogger] = (),
              study: str | None = None) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Train ``members`` (one group) as one ensemble; returns, per member, its row and
    its checkpoint payload (written by the caller). Each logger tracks member k as a
    run named by its knobs, with them as its config (``study``: the wandb group)."""
    config = members[0].config
    tasks = [m.task for m in members]
    ensemble = Ensemble([m.model for m in members])
    names = [f"{run_name(m.knobs, 'member')}-{m.key[:6]}" for m in members]
    callbacks = [logger.for_members(names, [_plain(m.knobs) for m in members], group=study)
                 for logger in loggers]
    started = time.perf_counter()
    histories = train(ensemble, tasks, config, callbacks=callbacks,
                      seeds=[m.config.seed for m in members])
    wall = time.perf_counter() - started
    results = []
    for k, (member, history) in enumerate(zip(members, histories)):
        model = ensemble.member(k)
        row = member_row(member, model, history, wall / len(members))
        results.append((row, checkpoint_payload(model, member.task, member.config, history)))
    return results


def member_row(member: Member, model: torch.nn.Module, history: Any,
               wall_time: float | None) -> dict[str, Any]:
    """``member``'s row from its trained model and history (the same numbers whether it
    just trained or was read back from its checkpoint)."""
    comparison = extract_graph(model, member.task, n_samples=member.config.eval_samples,
                               seed=member.config.seed).compare(member.task.graph)
    final = history.final
    return {"member": member.index, "key": member.key, **_plain(member.knobs),
            "test_loss": final["test_loss"], "bayes_loss": final["bayes_loss"],
            "gap": final["gap"], "parent_attention": comparison.parent_attention,
            "position_parent_attention": comparison.position_parent_attention,
            "parent_accuracy": comparison.parent_accuracy, "f1": comparison.f1,
            "wall_time": wall_time}


def _finished(out: Path, member: Member) -> dict[str, Any] | None:
    """``member``'s row recomputed from its checkpoint, if ``out`` holds one that loads,
    was trained to the end, and matches the member (task, model settings, recipe);
    None otherwise (the member is trained again). Only the wall time, which a
    checkpoint does not hold, is read from the record beside it."""
    from ..training.checkpoint import CheckpointError, load_checkpoint

    checkpoint = out / "members" / f"{member.key}.pt"
    if not checkpoint.is_file():
        return None
    try:
        loaded = load_checkpoint(checkpoint)
    except CheckpointError:
        return None
    history = loaded.history
    if (loaded.config is None or history is None
            or recipe(loaded.config) != member.identity["config"]
            or to_json(loaded.task.to_dict()) != member.identity["task"]
            or not isinstance(loaded.model, DisentangledTransformer)
            or _model_settings(loaded.model) != member.identity["model"]
            or history.stop_reason is not None
            or len(history.train_loss) != member.config.steps or not history.test_loss):
        return None
    wall_time = None
    try:
        saved = json.loads((out / "members" / f"{member.key}.json").read_text())
        value = saved["row"]["wall_time"]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            wall_time = float(value)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    row = member_row(member, loaded.model, history, wall_time)
    return {**row, "checkpoint": str(checkpoint)}


def _manifest(config: TrainConfig, members: list[Member]) -> dict[str, Any]:
    return {"format": MANIFEST_FORMAT, "version": 1, "config": recipe(config),
            "members": [{"key": m.key, "knobs": to_json(_plain(m.knobs))} for m in members]}


def _difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """What differs between two manifests, in a few words."""
    parts = []
    old_config, new_config = old.get("config"), new["config"]
    if isinstance(old_config, dict):
        changed = [f"{k} {old_config.get(k)!r} -> {new_config.get(k)!r}"
                   for k in sorted(set(old_config) | set(new_config))
                   if old_config.get(k) != new_config.get(k)]
        if changed:
            parts.append("config " + ", ".join(changed[:4]) + (" ..." if len(changed) > 4 else ""))
    old_members = old.get("members") if isinstance(old.get("members"), list) else []
    old_knobs = [m.get("knobs") if isinstance(m, dict) else None for m in old_members]
    new_knobs = [m["knobs"] for m in new["members"]]
    if old_knobs != new_knobs:
        if len(old_knobs) != len(new_knobs):
            parts.append(f"grid of {len(old_knobs)} members -> {len(new_knobs)}")
        else:
            i = next(i for i, (a, b) in enumerate(zip(old_knobs, new_knobs)) if a != b)
            parts.append(f"grid member {i} {json.dumps(old_knobs[i])} -> {json.dumps(new_knobs[i])}")
    if not parts:
        parts.append("the members' task or model settings")
    return "; ".join(parts)


def _check_study(out: Path, manifest: dict[str, Any], replace_study: bool) -> None:
    """ValueError when ``out`` holds another study (unless ``replace_study``)."""
    if replace_study:
        return
    path = out / MANIFEST
    if not path.exists():
        if (out / "results.csv").exists() or (out / "members").exists():
            raise ValueError(f"out {str(out)!r} holds a study without a manifest ({MANIFEST}; "
                             f"written by an older mechcausal or by hand), which this one "
                             f"would overwrite; pass replace=True (CLI: --replace) to replace "
                             f"it, or choose another folder")
        return
    try:
        old = json.loads(path.read_text())
        if not isinstance(old, dict) or old.get("format") != MANIFEST_FORMAT:
            raise ValueError("not a study manifest")
    except (OSError, ValueError) as error:
        raise ValueError(f"out {str(out)!r}: {MANIFEST} is unreadable ({error}); pass "
                         f"replace=True (CLI: --replace) to replace that study") from None
    old_keys = [m.get("key") if isinstance(m, dict) else None for m in old.get("members", [])]
    if old_keys != [m["key"] for m in manifest["members"]]:
        raise ValueError(f"out {str(out)!r} holds another study (differs in: "
                         f"{_difference(old, manifest)}); pass replace=True (CLI: --replace) "
                         f"to make the folder hold this one (the other study's member files "
                         f"stay under members/), or choose another folder")


def _ray_runner(address: str | None, device: torch.device, loggers: Sequence[TrackingLogger],
                study: str) -> Callable[[list[list[Member]]], Any]:
    """Run groups as Ray tasks (one GPU each when the device is CUDA); yields each group's
    results as it finishes."""
    try:
        import ray
    except ImportError:
        raise ValueError("backend='ray' needs Ray: pip install 'mechcausal[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    remote = ray.remote(num_gpus=1 if device.type == "cuda" else 0)(run_group)

    def run(groups: list[list[Member]]):
        pending = {remote.remote(group, loggers, study): group for group in groups}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            group = pending.pop(done[0])
            try:
                results = ray.get(done[0])
            except ray.exceptions.RayTaskError as error:
                # the member's own error, not Ray's coloured "ray::run_group()" wrapper
                cause = getattr(error, "cause", None)
                if isinstance(cause, BaseException):
                    raise cause from None
                raise
            yield group, results

    return run


def _local_runner(loggers: Sequence[TrackingLogger], study: str
                  ) -> Callable[[list[list[Member]]], Any]:
    def run(groups: list[list[Member]]):
        for group in groups:
            yield group, run_group(group, loggers, study)

    return run


def sweep(grid: Mapping[str, Sequence[Any]], config: TrainConfig, *, out: str | Path,
          backend: str = "local", address: str | None = None, resume: bool = True,
          progress: bool = True, max_group: int | None = None,
          loggers: Sequence[TrackingLogger] = (), replace: bool = False) -> Any:
    """Train every member of ``grid`` and return a ``pandas.DataFrame``, one row each.

    Args:
        grid: knob -> list of values, the product being the study (or a list of member
            dicts, for knobs that vary together). Task and model knobs:
            ``graph`` (a registered family name or a :class:`CausalGraph`),
            ``graph_seed``, ``vocab_size``, ``seq_len``, ``alpha``, ``prior`` (a prior,
            or a number: a Dirichlet concentration), ``heads``, ``init``, ``seed``
            (initialisation and data; default ``config.seed``); and any
            :class:`TrainConfig` field.
        config: the recipe every member starts from (e.g. ``TrainConfig.quick("chain")``).
        out: the study's folder (checked before any training).
        backend: ``"local"`` (this process) or ``"ray"`` (each group a Ray task).
        address: with Ray: None starts a local Ray, ``"auto"`` or ``"HOST:PORT"`` joins
            a running cluster.
        resume: reuse the members whose checkpoint ``out`` already holds, when it loads
            and matches the member (knobs, task, model settings, recipe); their rows are
            recomputed from it.
        progress: a bar over members (False also silences the members' training bars).
        max_group: split groups into ensembles of at most this many members (so that
            Ray can spread one shape over several workers; rows do not change).
        loggers: :class:`~mechcausal.TensorBoardLogger` / :class:`~mechcausal.WandbLogger`
            instances; every member becomes a tracked run named by its knobs, with its
            knobs as config (and, in wandb, as tags and the study folder's name as the
            group). On Ray the workers write the tracking files: give a folder every
            worker sees, or wandb online.
        replace: let this study replace another one ``out`` holds (otherwise refused,
            naming what differs). Nothing is deleted: members are keyed by their
            identity, so the other study's member files stay beside this one's.

    Returns:
        A DataFrame with the knobs, ``test_loss``, ``bayes_loss``, ``gap``,
        ``parent_attention`` (data-averaged), ``position_parent_attention`` (the
        official Figure 9 statistic), ``parent_accuracy``, ``f1``, ``wall_time`` and
        ``checkpoint`` and ``status`` of every member, in grid order; also written to
        ``out/results.csv``.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    check_choice(backend, "backend", ("local", "ray"))
    for name, value in (("resume", resume), ("progress", progress), ("replace", replace)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")
    if address is not None and backend != "ray":
        raise ValueError(f"address={address!r} applies to backend='ray', not {backend!r}")
    if not progress:
        config = _replace(config, progress=False)
    if max_group is not None:
        check_positive_int(max_group, "max_group")
    device = check_device_available(config.device, "config.device")
    loggers = check_instances(loggers, "loggers", TrackingLogger,
                              "mc.TensorBoardLogger or mc.WandbLogger")
    out = check_output_dir(out, "out")
    members = [build_member(i, knobs, config) for i, knobs in enumerate(expand_grid(grid))]
    manifest = _manifest(config, members)
    _check_study(out, manifest, replace)
    runner = (_ray_runner(address, device, loggers, out.name) if backend == "ray"
              else _local_runner(loggers, out.name))
    # everything checked: the folder now holds this study
    write_text_atomically(out / MANIFEST, json.dumps(manifest, indent=1, allow_nan=False))
    rows: dict[int, dict[str, Any]] = {}
    todo: dict[str, list[Member]] = {}
    for member in members:
        done = _finished(out, member) if resume else None
        if done is not None:
            rows[member.index] = done
        else:
            todo.setdefault(member.group, []).append(member)
    _write_results(out, members, rows, pd)
    bar = tqdm(total=len(members), initial=len(rows), desc="sweep", unit="member",
               disable=not progress)
    size = max_group or len(members)
    groups = [group[start : start + size] for group in todo.values()
              for start in range(0, len(group), size)]
    try:
        for group, results in runner(groups):
            for member, (row, payload) in zip(group, results):
                folder = out / "members"
                path = write_atomically(folder / f"{member.key}.pt",
                                        lambda handle, p=payload: torch.save(p, handle))
                write_text_atomically(folder / f"{member.key}.json", json.dumps(
                    to_json({**member.identity, "row": row}), indent=1, allow_nan=False))
                rows[member.index] = {**row, "checkpoint": str(path)}
            bar.update(len(group))
            _write_results(out, members, rows, pd)
    finally:
        bar.close()
    return _write_results(out, members, rows, pd)


def _write_results(out: Path, members: list[Member], rows: dict[int, dict[str, Any]],
                   pd: Any) -> Any:
    """Every member's row (a pending member: its knobs, no metrics) to results.csv."""
    knobs = list(dict.fromkeys(name for m in members for name in m.knobs))
    columns = ["member", "key", *knobs, *METRICS, "checkpoint", "status"]
    table = []
    for member in members:
        row = rows.get(member.index)
        if row is None:
            row = {"member": member.index, "key": member.key, **_plain(member.knobs),
                   "status": "pending"}
        else:
            row = {**row, "status": "finished"}
        table.append(to_json(row))
    frame = pd.DataFrame(table, columns=columns)
    write_text_atomically(out / "results.csv", frame.to_csv(index=False))
    return frame


__all__ = ["CONFIG_KNOBS", "METRICS", "TASK_KNOBS", "Member", "build_member", "expand_grid",
           "run_group", "sweep"]
