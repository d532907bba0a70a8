"""``mechcausal reproduce``: run experiments, write their figures and checkpoints, and
the report that sets each of our numbers next to the paper's."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .. import plots
from ..files import check_output_dir, write_text_atomically
from ..ops import to_json, versions
from ..training.checkpoint import save_checkpoint
from ..training.config import check_device_available
from .registry import (
    EXPERIMENTS,
    VERSION,
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


def report_markdown(results: Sequence[ExperimentResult], meta: Mapping[str, Any]) -> str:
    """The report: header, one table row per claim, figures, settings."""
    held = sum(claim.holds for r in results for claim in r.claims)
    total = sum(len(r.claims) for r in results)
    lines = [
        f"# mechcausal reproduce ({meta['scale']} scale)", "",
        f"`{meta['command']}`: mechcausal {meta['mechcausal']}, torch {meta['torch']}, "
        f"{meta['device']} ({meta['threads']} threads), seed {meta['seed']}, {meta['date']}; "
        f"total {_duration(meta['seconds'])}. {held} of {total} claims hold.", "",
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


def reproduce(names: Iterable[str] | None = None, scale: Scale = "quick",
              out: str | Path = "reproduce", seed: int = 0, device: str = "cpu",
              overrides: Mapping[str, Any] | None = None, progress: bool = True,
              command: str | None = None,
              log: Callable[[str], None] = print) -> list[ExperimentResult]:
    """Run experiments and write ``out/report.md``, ``out/metrics.json``,
    ``out/figures/*.png`` and ``out/checkpoints/*.pt``.

    The report and metrics are rewritten after every experiment, so an interrupted run
    keeps what it finished. Arguments as :func:`run_experiment`; ``names`` None runs
    all; ``command`` is quoted in the report; ``log`` receives one line per step.
    """
    names = resolve_names(names)
    _check_scale(scale)
    check_overrides(names, overrides)
    check_device_available(device, "device")
    out = check_output_dir(out, "out")  # before any work; created with the first results
    meta: dict[str, Any] = {
        "command": command or f"reproduce --{scale}", "scale": scale, "seed": seed,
        "device": device if device != "cpu" else f"cpu ({platform.machine()})",
        "threads": torch.get_num_threads(), **versions(), "experiments_version": VERSION,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "overrides": dict(overrides or {}), "seconds": 0.0,
    }
    cache: dict[Any, Any] = {}
    results: list[ExperimentResult] = []
    started = time.perf_counter()
    for k, name in enumerate(names, 1):
        log(f"[{k}/{len(names)}] {name}: {EXPERIMENTS[name].description}")
        result = _run(name, scale, seed, device, overrides, progress, cache)
        write_result(result, out)
        results.append(result)
        meta["seconds"] = time.perf_counter() - started
        write_text_atomically(out / "report.md", report_markdown(results, meta))
        write_text_atomically(out / "metrics.json", json.dumps(
            to_json({"meta": meta, "experiments": {r.name: r.to_dict() for r in results}}),
            indent=1))
        verdicts = ", ".join("holds" if c.holds else "DOES NOT HOLD" for c in result.claims)
        log(f"      {_duration(result.seconds)}; claims: {verdicts}")
    return results

