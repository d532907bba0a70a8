"""Experiment tracking as callbacks of the one loop: TensorBoard and Weights & Biases.

Both loggers record, for every member of a run (a single model is one tracked run; an
Ensemble gives one tracked run per member, so members overlay in the tracker's UI):

* every ``step_every``-th step s: ``train/loss`` (the loss of the s-th update's batch,
  taken before that update) and ``train/lr`` (its learning rate);
* every evaluation (step 0 included): ``eval/test_loss``, ``eval/gap`` (held-out loss
  minus the count estimator's), ``eval/parent_attention`` and, with ``images=True``, an
  image ``attention/layer_{l}`` of the data-averaged attention of ``config.layer`` with
  the true parents marked: the graph emerging;
* the run's config: the :class:`TrainConfig` fields, the task's sizes and, in a sweep,
  the member's knobs (TensorBoard's HParams dashboard with the final metrics; wandb's
  run config and tags).

:func:`~mechcausal.sweep` gives each member its name and knobs through
:meth:`TrackingLogger.for_members`; the same method serves a hand-written ensemble.
"""

from __future__ import annotations

import copy
import importlib.util
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import plots
from ..ops import check_bool, check_choice, check_positive_int
from .callbacks import Callback, Run

_SCALAR_TYPES = (bool, int, float, str)


def _require(module: str, extra: str, name: str) -> None:
    """ImportError naming the extra to install, at construction (not mid-training)."""
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"{name} needs {module}: pip install 'mechcausal[{extra}]'")


def run_name(knobs: Mapping[str, Any], fallback: str) -> str:
    """A readable, file-safe name from a member's knobs (``graph=chain,seed=3``);
    ``fallback`` when that would be empty or long."""
    parts = []
    for key, value in knobs.items():
        if isinstance(value, (list, tuple)) and all(isinstance(v, _SCALAR_TYPES) for v in value):
            shown = "-".join(map(str, value))  # heads=(2, 1) -> heads=2-1
        elif isinstance(value, _SCALAR_TYPES) or value is None:
            shown = value
        else:
            shown = type(value).__name__
        parts.append(f"{key}={shown}")
    name = re.sub(r"[^A-Za-z0-9_.,=+-]", "_", ",".join(parts))
    return name if 0 < len(name) <= 96 else fallback


def _scalar(value: Any) -> bool | int | float | str:
    """A config value as a tracker accepts it (lists and objects as text)."""
    return value if isinstance(value, _SCALAR_TYPES) else str(value)


class TrackingLogger(Callback):
    """Shared part of the tracking callbacks: what is logged and when; subclasses say
    where (``_open``, ``_scalars``, ``_image``, ``_close``).

    Args:
        name: the run name of a single model (an ensemble's members are
            ``{name}_{k:03d}``, or ``member_{k:03d}``; in a sweep, named by their knobs).
        step_every: log the training loss and learning rate every this many steps.
        images: log the attention image at each evaluation.
    """

    def __init__(self, *, name: str | None = None, step_every: int = 1, images: bool = True):
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"name must be a non-empty string or None, got {name!r}")
        self.name = name
        self.step_every = check_positive_int(step_every, "step_every")
        self.images = check_bool(images, "images")
        self.names: list[str] | None = None
        self.member_configs: list[dict[str, Any]] | None = None
        self.tags: tuple[str, ...] = ()
        self.group: str | None = None
        self.run_configs: list[dict[str, Any]] = []
        self._runs: list[Any] = []

    def for_members(self, names: Sequence[str], configs: Sequence[Mapping[str, Any]],
                    group: str | None = None) -> TrackingLogger:
        """A copy of this logger for an ensemble whose member k is tracked as
        ``names[k]`` with ``configs[k]`` added to its config (a sweep: its knobs)."""
        if len(names) != len(configs):
            raise ValueError(f"got {len(names)} names for {len(configs)} configs")
        member_logger = copy.copy(self)
        member_logger.names = [str(name) for name in names]
        member_logger.member_configs = [dict(config) for config in configs]
        member_logger.group = group
        member_logger._runs = []
        return member_logger

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, run: Run) -> None:
        if self.names is not None and len(self.names) != run.n_members:
            raise ValueError(f"{type(self).__name__} was given {len(self.names)} member "
                             f"names for a run of {run.n_members} members")
        self.run_configs = [self._config(k, run) for k in range(run.n_members)]
        self._runs = [self._open(k, self._name(k, run), config)
                      for k, config in enumerate(self.run_configs)]

    def on_step(self, run: Run) -> None:
        if run.step % self.step_every:
            return
        for k, loss in enumerate(run.loss.tolist()):
            self._scalars(k, {"train/loss": loss, "train/lr": run.lr}, run.step)

    def on_eval(self, run: Run) -> None:
        layer = run.config.layer
        for k, evaluation in enumerate(run.evaluations):
            self._scalars(k, {f"eval/{name}": evaluation[name]
                              for name in ("test_loss", "gap", "parent_attention")}, run.step)
            if self.images:
                figure = plots.attention_over_training(
                    [run.step], [evaluation["pattern"]], run.tasks[k].graph, layer=layer,
                    title=f"layer-{layer + 1} attention (held-out mean; red: true parents)")
                self._image(k, f"attention/layer_{layer}", plots.figure_pixels(figure),
                            run.step)
        self._flush()

    def on_train_end(self, run: Run) -> None:
        for k, evaluation in enumerate(run.evaluations):
            self._close(k, {f"final/{name}": evaluation[name]
                            for name in ("test_loss", "gap", "parent_attention")}, run.step)
        self._runs = []

    def on_train_error(self, run: Run, error: BaseException) -> None:
        """Close every run opened, marked failed where the tracker has that."""
        for k in range(len(self._runs)):
            self._abort(k)
        self._runs = []

    def __getstate__(self) -> dict[str, Any]:
        # a logger travels to Ray workers before it opens anything; open writers stay
        state = dict(self.__dict__)
        state["_runs"] = []
        return state

    # ------------------------------------------------------------------ what a run is
    def _name(self, k: int, run: Run) -> str | None:
        """Member k's run name (None: a single model's run with no name given)."""
        if self.names is not None:
            return self.names[k]
        if run.is_ensemble:
            return f"{self.name}_{k:03d}" if self.name is not None else f"member_{k:03d}"
        return self.name

    def _config(self, k: int, run: Run) -> dict[str, bool | int | float | str]:
        task = run.tasks[k]
        config = {**run.config.to_dict(), "task": task.kind, "vocab_size": task.vocab_size,
                  "input_length": task.input_length}
        if run.is_ensemble and self.member_configs is None:
            config["member"] = k
        config.update(self.member_configs[k] if self.member_configs is not None else {})
        return {key: _scalar(value) for key, value in config.items()}

    # ------------------------------------------------------------------ where it goes
    def _open(self, k: int, name: str | None, config: dict[str, Any]) -> Any:
        raise NotImplementedError

    def _scalars(self, k: int, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def _image(self, k: int, tag: str, pixels: np.ndarray, step: int) -> None:
        raise NotImplementedError

    def _flush(self) -> None:
        """Make what was logged readable now (a run that fails later keeps it)."""

    def _close(self, k: int, final: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def _abort(self, k: int) -> None:
        raise NotImplementedError


class TensorBoardLogger(TrackingLogger):
    """Log a run to TensorBoard event files (``pip install 'mechcausal[tensorboard]'``).

    Args:
        logdir: the folder (``tensorboard --logdir LOGDIR``). Each tracked run gets a
            folder of its own in it: ``LOGDIR/{name}`` (default ``run``), an
            ensemble's member k ``LOGDIR/member_{k:03d}``, a sweep's member
            ``LOGDIR/{knobs}``; a folder that already holds a run is never written
            into again (the next run goes to ``{folder}_1``, ``_2``, ...), so
            TensorBoard never merges two runs' curves.
        name: the run's folder name (see :class:`TrackingLogger`).
        step_every: log the training loss and learning rate every this many steps.
        images: log the layer's attention image at each evaluation.

    The config and final metrics go to the HParams dashboard (``final/test_loss``,
    ``final/gap``, ``final/parent_attention``): a sweep's phase table, sortable.
    """

    def __init__(self, logdir: str | Path, *, name: str | None = None, step_every: int = 1,
                 images: bool = True):
        _require("tensorboard", "tensorboard", "TensorBoardLogger")
        if not isinstance(logdir, (str, Path)) or not str(logdir).strip():
            raise TypeError(f"logdir must be a folder path, got {logdir!r}")
        super().__init__(name=name, step_every=step_every, images=images)
        # absolute: a Ray worker may start in another working directory
        self.logdir = Path(logdir).absolute()

    def _open(self, k: int, name: str | None, config: dict[str, Any]) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        folder = _unused(self.logdir / (name or "run"))
        writer = SummaryWriter(log_dir=str(folder))
        writer.add_text("config", "\n".join(f"    {key} = {value}"
                                            for key, value in config.items()), 0)
        return writer

    def _scalars(self, k: int, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self._runs[k].add_scalar(tag, value, step)

    def _image(self, k: int, tag: str, pixels: np.ndarray, step: int) -> None:
        self._runs[k].add_image(tag, pixels, step, dataformats="HWC")

    def _flush(self) -> None:
        for writer in self._runs:
            writer.flush()

    def _close(self, k: int, final: dict[str, float], step: int) -> None:
        from torch.utils.tensorboard.summary import hparams

        writer = self._runs[k]
        # written into the member's own event file: SummaryWriter.add_hparams would open
        # a second run folder per call
        for summary in hparams(self.run_configs[k], final):
            writer.file_writer.add_summary(summary)
        for tag, value in final.items():
            writer.add_scalar(tag, value, step)
        writer.close()

    def _abort(self, k: int) -> None:
        self._runs[k].close()


def _unused(folder: Path) -> Path:
    """``folder``, or ``{folder}_1``, ``_2``, ... : the first without event files."""
    candidate, k = folder, 0
    while candidate.is_dir() and any(candidate.glob("events.out.tfevents.*")):
        k += 1
        candidate = folder.with_name(f"{folder.name}_{k}")
    return candidate


class WandbLogger(TrackingLogger):
    """Log a run to Weights & Biases (``pip install 'mechcausal[wandb]'``).

    Args:
        project: the wandb project.
        mode: ``"offline"`` (default: files under ``dir``, ``wandb sync`` later),
            ``"online"`` or ``"disabled"``.
        dir: where wandb writes its ``wandb/`` folder (default: the working directory
            at construction).
        name: the run name of a single model (see :class:`TrackingLogger`; default:
            wandb's).
        tags: tags of every run (a sweep adds each member's ``knob=value`` tags).
        config: extra config entries of every run (the run's own entries win a clash).
        step_every: log the training loss and learning rate every this many steps.
        images: log the layer's attention image at each evaluation.
        **init_kwargs: passed on to ``wandb.init`` (``entity``, ``notes``, ...).
    """

    def __init__(self, project: str, mode: str = "offline", *, dir: str | Path | None = None,
                 name: str | None = None, tags: Sequence[str] = (),
                 config: Mapping[str, Any] | None = None, step_every: int = 1,
                 images: bool = True, **init_kwargs: Any):
        _require("wandb", "wandb", "WandbLogger")
        if not isinstance(project, str) or not project:
            raise TypeError(f"project must be a non-empty string, got {project!r}")
        if (isinstance(tags, str) or not isinstance(tags, Sequence)
                or not all(isinstance(tag, str) for tag in tags)):
            raise TypeError(f"tags must be a list of strings, got {tags!r}")
        if config is not None and not isinstance(config, Mapping):
            raise TypeError(f"config must be a dict, got {type(config).__name__}")
        super().__init__(name=name, step_every=step_every, images=images)
        self.project = project
        self.mode = check_choice(mode, "mode", ("offline", "online", "disabled"))
        # absolute: a Ray worker may start in another working directory
        self.dir = Path.cwd() if dir is None else Path(dir).absolute()
        self.tags = tuple(tags)
        self.extra_config = dict(config or {})
        self.init_kwargs = init_kwargs

    def _open(self, k: int, name: str | None, config: dict[str, Any]) -> Any:
        import wandb

        self.dir.mkdir(parents=True, exist_ok=True)
        knob_tags = ([f"{key}={value}"[:64] for key, value in self.member_configs[k].items()]
                     if self.member_configs is not None else [])
        return wandb.init(project=self.project, mode=self.mode, dir=str(self.dir), name=name,
                          group=self.group, tags=[*self.tags, *knob_tags],
                          config={**self.extra_config, **config}, reinit="create_new",
                          **self.init_kwargs)

    def _scalars(self, k: int, values: dict[str, float], step: int) -> None:
        self._runs[k].log(values, step=step)

    def _image(self, k: int, tag: str, pixels: np.ndarray, step: int) -> None:
        import wandb

        self._runs[k].log({tag: wandb.Image(pixels)}, step=step)

    def _close(self, k: int, final: dict[str, float], step: int) -> None:
        wandb_run = self._runs[k]
        wandb_run.summary.update(final)
        wandb_run.finish()

    def _abort(self, k: int) -> None:
        self._runs[k].finish(exit_code=1)


__all__ = ["TensorBoardLogger", "TrackingLogger", "WandbLogger", "run_name"]
