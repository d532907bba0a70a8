"""``mechcausal reproduce``: run experiments, write their figures and checkpoints, and
the report that sets each of our numbers next to the paper's."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import multiprocessing
import os
import platform
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .. import plots
from ..files import check_output_dir, write_text_atomically
from ..ops import check_positive_int, to_json, versions
from ..training.checkpoint import load_checkpoint, save_checkpoint
from ..ops import check_device_available
from .registry import (
    EXPERIMENTS,
    VERSION,
    Experiment,
    ExperimentResult,
    Scale,
    _check_scale,
    _run,
    check_overrides,
    resolve_names,
)


def write_result(result: ExperimentResult, out: str | Path) -> list[Path]:
    """Figures to ``out/figures/{name}.png`` and checkpoints to
    ``out/checkpoints/{name}.pt``; returns the paths written."""
    out = Path(out)
    paths = [plots.save_figure(figure, out / "figures" / f"{name}.png")
             for name, figure in result.figures.items()]
    paths += [save_checkpoint(out / "checkpoints" / f"{name}.pt", checkpoint.model,
                              checkpoint.task, checkpoint.config, checkpoint.history)
              for name, checkpoint in result.checkpoints.items()]
    return paths


def _duration(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)} min {rest:.0f} s" if minutes else f"{rest:.1f} s"


def _cell(text: str) -> str:
    """Table-safe text (a '|' would split the cell)."""
    return text.replace("|", "/")


def _status_lines(status: Mapping[str, str]) -> list[str]:
    """The report's account of what ran: finished, failed (why), never ran, kept from an
    earlier run; nothing when every experiment of this run finished."""
    if not status or all(state == "finished" for state in status.values()):
        return []
    groups: dict[str, list[str]] = {}
    for name, state in status.items():
        kind, _, detail = state.partition(": ")
        groups.setdefault(kind, []).append(f"{name} ({detail})" if detail else name)
    words = {"finished": "Finished", "failed": "Failed", "interrupted": "Interrupted while "
             "running", "not run": "Never ran", "earlier run": "Kept from an earlier run "
             "into this folder"}
    lines = ["**This report is partial.**" if any(k in groups for k in
                                                   ("failed", "interrupted", "not run"))
             else "**This report merges runs.**"]
    lines += [f"- {words.get(kind, kind)}: {', '.join(names)}" for kind, names in
              groups.items()]
    return [*lines, ""]


def report_markdown(results: Sequence[ExperimentResult], meta: Mapping[str, Any],
                    status: Mapping[str, str] | None = None) -> str:
    """The report: header, what ran (when not everything finished), one table row per
    claim, figures, settings. ``status``: experiment -> ``finished``, ``failed: why``,
    ``interrupted``, ``not run`` or ``earlier run: command``."""
    held = sum(claim.holds for r in results for claim in r.claims)
    total = sum(len(r.claims) for r in results)
    lines = [
        f"# mechcausal reproduce ({meta['scale']} scale)", "",
        f"`{meta['command']}`: mechcausal {meta['mechcausal']}, torch {meta['torch']}, "
        f"{meta['device']} ({meta['threads']} threads, {meta.get('jobs', 1)} "
        f"process{'es' * (meta.get('jobs', 1) > 1)}), seed {meta['seed']}, {meta['date']}; "
        f"total {_duration(meta['seconds'])}. {held} of {total} claims hold.", "",
        *_status_lines(status or {}),
        "Each row: the sizes it was measured at (S symbols, T context positions, the "
        "model's input length), a claim of the paper (with our pass criterion where it is "
        "a threshold), our number at this scale, the paper's or the official code's number (or what its "
        "figure shows), and whether ours meets the criterion. Quick scale uses our CPU "
        "recipes; paper scale the official hyperparameters.", "",
        "| experiment | sizes | claim | ours | paper / official | holds |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        for claim in result.claims:
            lines.append(f"| {result.name} | {_cell(result.sizes)} | {_cell(claim.claim)} | "
                         f"{_cell(claim.ours)} | {_cell(claim.paper)} | "
                         f"{'yes' if claim.holds else '**no**'} |")
    jobs = meta.get("jobs", 1)
    how = (f"in {jobs} processes at once, so the times overlap" if jobs > 1
           else "one after another in one process")
    lines += ["", "## Where the time went", "",
              f"Wall time of each experiment ({how}; total {_duration(meta['seconds'])}).",
              "", "| experiment | wall time | of the total | its process's peak RSS by then |",
              "|---|---|---|---|"]
    for result in results:
        share = result.seconds / meta["seconds"] if meta["seconds"] > 0 else 0.0
        lines.append(f"| {result.name} | {_duration(result.seconds)} | {share:.0%} | "
                     + (f"{result.peak_rss_mb:.0f} MB |" if result.peak_rss_mb is not None
                        else "not measured |"))
    lines += ["", "## Figures", ""]
    for result in results:
        experiment = EXPERIMENTS[result.name]
        lines += [f"### {result.name} ({experiment.figure}): {experiment.description}, "
                  f"{_duration(result.seconds)}", ""]
        lines += [f"![{name}](figures/{name}.png)" for name in result.figures]
        lines.append("")
    lines += ["## Settings", "", "| experiment | settings | training |", "|---|---|---|"]
    for result in results:
        config = result.metrics.get("train_config", {})
        training = ", ".join(f"{k}={config[k]}" for k in
                             ("steps", "batch_size", "optimizer", "lr", "weight_decay",
                              "adam_eps", "schedule", "data") if k in config)
        settings = ", ".join(f"{k}={v}" for k, v in result.settings.items())
        lines.append(f"| {result.name} | {_cell(settings)} | {_cell(training) or '-'} |")
    return "\n".join(lines) + "\n"


def schedule(names: Sequence[str], scale: Scale) -> list[list[str]]:
    """``names`` as units of work for ``reproduce(jobs=N)``: an experiment joins the
    unit of an experiment it reuses models of (one process, one cache); units longest
    first (by expected time), so the long one starts at once and the short ones fill
    the other processes."""
    units: list[list[str]] = []
    unit_of: dict[str, list[str]] = {}
    for name in names:
        unit = next((unit_of[r] for r in EXPERIMENTS[name].reuses if r in unit_of), None)
        if unit is None:
            unit = []
            units.append(unit)
        unit.append(name)
        unit_of[name] = unit
    return sorted(units, key=lambda unit: -sum(EXPERIMENTS[n].expected_seconds(scale)
                                                for n in unit))


def _ignore_interrupts() -> None:
    """Worker start-up: Ctrl-C is the parent's to handle (it stops the workers)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_unit(unit: Sequence[str], modules: Sequence[str], scale: Scale, seed: int,
              device: str, overrides: Mapping[str, Any] | None, threads: int,
              out: Path) -> list[ExperimentResult]:
    """One unit in a worker process: its experiments in turn, sharing one cache, each
    written to ``out`` here; returned without their checkpoints (a TL bridge's hooks do
    not pickle): the caller reads them back from the files. ``modules``: what registers
    the experiments (a fresh process knows only what its imports register)."""
    for module in modules:
        importlib.import_module(module)
    missing = [name for name in unit if name not in EXPERIMENTS]
    if missing:
        raise ValueError(f"experiment {missing[0]!r} is not registered when "
                         f"{', '.join(modules)} is imported: register it at import time, "
                         f"or use jobs=1")
    torch.set_num_threads(threads)
    cache: dict[Any, Any] = {}
    results = []
    for name in unit:
        result = _run(name, scale, seed, device, overrides, False, cache)
        write_result(result, out)
        results.append(dataclasses.replace(result, checkpoints=dict.fromkeys(result.checkpoints)))
    return results


def _in_process(names: Sequence[str], scale: Scale, seed: int, device: str,
                overrides: Mapping[str, Any] | None, progress: bool, out: Path,
                log: Callable[[str], None], status: dict[str, str]
                ) -> Iterator[list[ExperimentResult]]:
    cache: dict[Any, Any] = {}
    for k, name in enumerate(names, 1):
        log(f"[{k}/{len(names)}] {name}: {EXPERIMENTS[name].description}")
        status[name] = "running"
        result = _run(name, scale, seed, device, overrides, progress, cache)
        write_result(result, out)
        yield [result]


def _in_workers(names: Sequence[str], scale: Scale, seed: int, device: str,
                overrides: Mapping[str, Any] | None, jobs: int, out: Path,
                log: Callable[[str], None], status: dict[str, str]
                ) -> Iterator[list[ExperimentResult]]:
    """Units in ``jobs`` fresh processes (spawned: no forked torch thread pools); yields
    each unit's results as it finishes.

    The longest unit gets every core's thread, the others ``cores // jobs`` each: while
    the short ones run the cores are oversubscribed (idle OpenMP threads sleep instead of
    spinning: ``OMP_WAIT_POLICY=PASSIVE``), and once they are done the long one has the
    whole machine (benchmarks/README.md: a minute faster than one thread each). A unit
    that fails is reported at once; the units running then still finish and are
    reported, the queued ones are dropped, and the first error is raised at the end.
    Ctrl-C stops every worker.
    """
    units = schedule(names, scale)
    modules = sorted({_module_of(EXPERIMENTS[name]) for name in names})
    cores = torch.get_num_threads()
    threads = [cores] + [max(1, cores // jobs)] * (len(units) - 1)
    log(f"{len(names)} experiments in {jobs} processes ({cores} threads for the longest, "
        f"{threads[-1]} for the others): " + "; ".join(", ".join(unit) for unit in units))
    context = multiprocessing.get_context("spawn")
    with _environment(OMP_WAIT_POLICY="PASSIVE"):
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context,
                                   initializer=_ignore_interrupts)
        futures = {pool.submit(_run_unit, unit, modules, scale, seed, device, overrides,
                               n_threads, out): unit
                   for unit, n_threads in zip(units, threads)}
    for unit in units[:jobs]:  # the first units start at once, the next as one ends
        status.update(dict.fromkeys(unit, "running"))
    started = jobs

    def next_starts() -> None:
        nonlocal started
        if started < len(units) and failure is None:
            status.update(dict.fromkeys(units[started], "running"))
            started += 1

    failure: BaseException | None = None
    try:
        for future in as_completed(futures):
            if future.cancelled():
                continue
            error = future.exception()
            if error is not None:
                log(f"      {', '.join(futures[future])}: failed: {error}")
                for name in futures[future]:  # which of the unit's failed is not known
                    status[name] = f"failed: {_first_line(error)}"
                failure = failure or error
                for queued in futures:
                    queued.cancel()  # the running ones finish
                continue
            results = future.result()
            next_starts()
            for result in results:
                result.checkpoints = {name: load_checkpoint(out / "checkpoints" / f"{name}.pt")
                                      for name in result.checkpoints}
            yield results
    except BaseException:
        _stop(pool)
        raise
    pool.shutdown()
    if failure is not None:
        raise failure


def _module_of(experiment: Experiment) -> str:
    """The module whose import registers ``experiment`` in a fresh process; ValueError
    for one defined in this session (``__main__``, a notebook)."""
    module = getattr(experiment.run, "__module__", None)
    if module in (None, "__main__"):
        raise ValueError(f"experiment {experiment.name!r} runs a function defined in this "
                         f"session, which another process cannot import: use jobs=1, or "
                         f"register it in a module")
    return module


def _stop(pool: ProcessPoolExecutor) -> None:
    """End the workers now: queued units dropped, running ones killed."""
    processes = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join()


@contextlib.contextmanager
def _environment(**variables: str) -> Iterator[None]:
    """``variables`` set in ``os.environ`` for the block (processes spawned in it inherit
    them), an existing setting of the user's kept."""
    added = {key: value for key, value in variables.items() if key not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def reproduce(names: Iterable[str] | None = None, scale: Scale = "quick",
              out: str | Path = "reproduce", seed: int = 0, device: str = "cpu",
              overrides: Mapping[str, Any] | None = None, progress: bool = True,
              command: str | None = None, log: Callable[[str], None] = print,
              jobs: int = 1) -> list[ExperimentResult]:
    """Run experiments and write ``out/report.md``, ``out/metrics.json``,
    ``out/figures/*.png`` and ``out/checkpoints/*.pt``.

    The report and metrics are rewritten after every experiment, so an interrupted run
    keeps what it finished, and once more when a run fails or is interrupted: both then
    say which experiments finished, which failed (and why), and which never ran
    (``metrics.json``'s ``status``). Rerunning a subset into a folder that holds an
    earlier report of the same scale merges with it: the earlier run's other
    experiments stay in ``report.md`` and ``metrics.json``, marked as from that run
    (their figures and checkpoints are still there). Arguments as
    :func:`run_experiment`; ``names`` None runs
    all; ``command`` is quoted in the report; ``log`` receives one line per step (with
    the time left, estimated from the experiments' expected times and the pace so far).
    ``jobs`` > 1 runs independent experiments in that many processes at once (the
    threads split between them, training progress bars off); the results are the same
    as in one process.
    """
    names = resolve_names(names)
    _check_scale(scale)
    check_overrides(names, overrides)
    check_device_available(device, "device")
    jobs = min(check_positive_int(jobs, "jobs"), len(schedule(names, scale)))
    out = check_output_dir(out, "out")  # before any work; created with the first results
    earlier = _earlier_results(out, scale, names)
    meta: dict[str, Any] = {
        "command": command or f"reproduce --{scale}", "scale": scale, "seed": seed,
        "device": device if device != "cpu" else f"cpu ({platform.machine()})",
        "threads": torch.get_num_threads(), "jobs": jobs, **versions(),
        "experiments_version": VERSION,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "overrides": dict(overrides or {}), "seconds": 0.0,
    }
    results: list[ExperimentResult] = []
    status = dict.fromkeys(names, "not run")
    started = time.perf_counter()
    finished = (_in_process(names, scale, seed, device, overrides, progress, out, log, status)
                if jobs <= 1 else
                _in_workers(names, scale, seed, device, overrides, jobs, out, log, status))

    def write() -> None:
        meta["seconds"] = time.perf_counter() - started
        _write_report(out, results, meta, status, earlier, names)

    try:
        for unit in finished:  # each result's figures and checkpoints already written
            results.extend(unit)
            results.sort(key=lambda r: names.index(r.name))
            status.update(dict.fromkeys((r.name for r in unit), "finished"))
            write()
            for result in unit:
                verdicts = ", ".join("holds" if c.holds else "DOES NOT HOLD"
                                     for c in result.claims)
                log(f"      {result.name}: {_duration(result.seconds)}; claims: {verdicts}")
            log(f"      {len(results)}/{len(names)} done, {_duration(meta['seconds'])} so far"
                + _time_left(names, results, scale, meta["seconds"], jobs))
    except BaseException as error:
        how = ("interrupted" if isinstance(error, KeyboardInterrupt)
               else f"failed: {_first_line(error)}")
        for name, state in status.items():
            if state == "running":
                status[name] = how
        write()
        raise
    return results


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0][:200] if text else type(error).__name__).replace("|", "/")


def _earlier_results(out: Path, scale: str, names: Sequence[str]
                     ) -> list[tuple[ExperimentResult, dict[str, Any]]]:
    """The finished experiments of an earlier report in ``out`` that this run does not
    redo (to merge with), with that run's meta; ValueError when it is of another scale
    (one report holds one scale). A missing or unreadable metrics.json: nothing."""
    path = out / "metrics.json"
    try:
        data = json.loads(path.read_text())
        meta, experiments = data["meta"], data["experiments"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if not isinstance(meta, dict) or not isinstance(experiments, dict):
        return []
    if meta.get("scale") != scale:
        raise ValueError(f"out {str(out)!r} holds a {meta.get('scale')}-scale report; a "
                         f"{scale}-scale run would mix scales in it: choose another folder")
    status = data.get("status") if isinstance(data.get("status"), dict) else {}
    kept = []
    for name, entry in experiments.items():
        if name in names or name not in EXPERIMENTS:
            continue
        try:
            result = ExperimentResult.from_dict(entry)
        except (KeyError, TypeError, ValueError):
            continue
        run = entry.get("run") if isinstance(entry.get("run"), dict) else {
            k: meta.get(k) for k in ("command", "seed", "date")}
        if str(status.get(name, "finished")).startswith(("finished", "earlier run")):
            kept.append((result, run))
    return kept


def _write_report(out: Path, results: Sequence[ExperimentResult], meta: dict[str, Any],
                  status: Mapping[str, str],
                  earlier: Sequence[tuple[ExperimentResult, dict[str, Any]]],
                  names: Sequence[str]) -> None:
    """report.md and metrics.json: this run's results and status, merged with the
    earlier run's other experiments (in registry order)."""
    run = {k: meta[k] for k in ("command", "seed", "date")}
    entries = [(r, run) for r in results] + list(earlier)
    order = {name: k for k, name in enumerate(EXPERIMENTS)}

    def place(name: str) -> int:
        return order.get(name, len(order))

    entries.sort(key=lambda entry: place(entry[0].name))
    every = {name: status[name] for name in names}
    for result, earlier_run in earlier:
        every[result.name] = f"earlier run: `{earlier_run.get('command')}`"
    every = {name: every[name] for name in sorted(every, key=place)}
    merged = [r for r, _ in entries]
    write_text_atomically(out / "report.md", report_markdown(merged, meta, every))
    write_text_atomically(out / "metrics.json", json.dumps(to_json({
        "meta": meta, "status": every,
        "experiments": {r.name: {**r.to_dict(), "run": how} for r, how in entries}}),
        indent=1, allow_nan=False))


def _time_left(names: Sequence[str], results: Sequence[ExperimentResult], scale: Scale,
               elapsed: float, jobs: int) -> str:
    """``, about N left``: the run replayed on ``jobs`` processes in the order units are
    handed out, finished experiments at their measured times, the others at their
    expected times scaled by how the finished ones compared with theirs."""
    seconds = {result.name: result.seconds for result in results}
    if len(seconds) == len(names):
        return ""
    expected_done = sum(EXPERIMENTS[name].expected_seconds(scale) for name in seconds)
    pace = sum(seconds.values()) / expected_done if expected_done > 0 else 1.0
    units = schedule(names, scale) if jobs > 1 else [[name] for name in names]
    free = [0.0] * jobs  # when each process is next free
    for unit in units:
        process = min(range(jobs), key=free.__getitem__)
        free[process] += sum(seconds.get(name, pace * EXPERIMENTS[name].expected_seconds(scale))
                             for name in unit)
    return f", about {_duration(max(0.0, max(free) - elapsed))} left"
