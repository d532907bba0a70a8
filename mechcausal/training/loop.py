"""The training loop, one for a single model and for an :class:`~mechcausal.Ensemble`.

``train(model, task, config)`` draws batches (fresh each step, or from a pool resampled
each epoch like the official code), evaluates on a fixed held-out set (test loss,
count-estimator loss, their gap, mean layer-1 attention on the true parents), calls
the callbacks and returns a :class:`History`; for an ensemble, ``task`` is one task per
member and it returns one History per member. Member k of an ensemble trains exactly
as a single model would with ``seed = config.seed + k``: the same batches, the same
held-out set, the same updates.

Non-finite losses: every step's loss is checked before its update is applied. When a
member's loss is NaN or infinite, no update is made from it, that member gets back its
weights of the step before (whose loss was finite; every parameter verified finite),
the checkpoint (if asked for) is written from those weights under its own name
(``NAME.failed.pt``: a finished run's checkpoint at ``NAME.pt`` stays), and
:class:`NonFiniteLossError` says which step, member and value, and what was restored.
A finite divergence (held-out loss far above the uniform predictor's for several
evaluations in a row) is recorded in ``History.warnings`` and warned about.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..data.tasks import Batch, InContextTask, check_task
from ..diagnostics.attention import graph_positions, mean_attention, parent_attention
from ..files import check_output_dir, check_output_file
from ..models.base import check_sizes, model_logits
from ..ops import as_int, check_instances, cross_entropy, log_softmax_last, target_cross_entropy
from .allocator import keep_freed_memory
from .batches import batches_per_draw, drawn_ahead, stacked_batches, task_batches
from .callbacks import Callback, Run
from .checkpoint import save_checkpoint
from ..ops import check_device_available
from .config import TrainConfig, lr_factor
from .ensemble import Ensemble
from .history import History
from ..progress import progress_bar

# a finite divergence: held-out loss this far above the uniform predictor's ...
DIVERGENCE_NATS = 1.0
# ... at this many evaluations in a row
DIVERGENCE_EVALUATIONS = 3
# the held-out set's generator seed, offset from the training data's
_HELD_OUT_SEED = 1_000_003


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; the model holds the last weights whose
    loss was finite (see the message, and ``step``, ``member``, ``loss``, ``histories``)."""

    def __init__(self, message: str, step: int, member: int | None, loss: float,
                 histories: list[History]):
        super().__init__(message)
        self.step, self.member, self.loss, self.histories = step, member, loss, histories

    def __reduce__(self) -> tuple:
        # whole across processes (a reproduce worker, a Ray task): the default pickles
        # only the message
        return type(self), (str(self), self.step, self.member, self.loss, self.histories)


def batch_loss(logits: torch.Tensor, batch: Batch, kind: str = "target",
               answer_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Mean loss over a batch, per leading member dimension.

    ``"target"``: logits [..., B, S] at the last position (over the task's symbols)
    against ``batch.target`` [..., B, S] (the paper's loss). ``"next_token"``: logits
    [..., B, L, V] at every position, each position's next token predicted, the last
    position's next token being the task's answer, scored against its law
    ``batch.target`` on the answer's ids (``answer_ids``; default the symbols 0..S-1): a
    language model's objective whose last term is the paper's loss. Returns [...]
    (a 0-dim tensor for a single model)."""
    # in float32 at least (a float16 model's loss), in float64 for a float64 model
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    target = batch.target.to(logits.dtype)
    if kind == "next_token":
        log_probs = log_softmax_last(logits)
        following = log_probs[..., :-1, :].gather(-1, batch.tokens[..., 1:].unsqueeze(-1))
        last = log_probs[..., -1, :]
        last = last[..., answer_ids.to(last.device)] if answer_ids is not None else (
            last[..., : target.shape[-1]])
        answer = (target * last).sum(-1)  # [..., B]
        return -(following.squeeze(-1).sum(-1) + answer).mean(-1) / logits.shape[-2]
    return target_cross_entropy(logits, target).mean(-1)


def loss_fn(model: torch.nn.Module, batch: Batch, kind: str = "target",
            task: InContextTask | None = None) -> torch.Tensor:
    """:func:`batch_loss` of one model (any model :func:`~mechcausal.models.model_logits`
    reads) on ``batch``: a 0-dim tensor. With ``task``, the model answers through the
    task's ids (``task.answer_logits``, ``task.answer_ids``: an LM's vocabulary)."""
    logits = model_logits(model, batch.tokens, all_positions=kind == "next_token")
    if kind == "target" and task is not None:
        logits = task.answer_logits(logits)
    return batch_loss(logits, batch, kind, task.answer_ids if task is not None else None)


def make_optimizer(params: list[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser named by ``config``."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay,
                                eps=config.adam_eps)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay,
                             eps=config.adam_eps)


# ---------------------------------------------------------------------- what is trained
class _Single:
    """One model and its task, as a run of one member."""

    is_ensemble = False

    def __init__(self, model: torch.nn.Module, task: InContextTask,
                 params: list[torch.nn.Parameter]):
        self.model, self.tasks, self.params = model, [task], params
        self.seeds: list[int] | None = None  # the config's seed

    def losses(self, batch: Batch, kind: str) -> torch.Tensor:
        """[1]: the model's loss on ``batch``."""
        return loss_fn(self.model, batch, kind, self.tasks[0]).unsqueeze(0)

    @staticmethod
    def part(tensor: torch.Tensor, member: int) -> torch.Tensor:
        return tensor

    def member(self, member: int) -> torch.nn.Module:
        return self.model

    def member_seeds(self, config: TrainConfig) -> list[int]:
        return [config.seed]

    def batches(self, config: TrainConfig, device: torch.device) -> Iterator[Batch]:
        return task_batches(self.tasks[0], config, config.seed, device)

    def save(self, path: Path, config: TrainConfig, histories: list[History],
             failed: bool = False) -> list[Path]:
        """The checkpoint at ``path``; a failed run's at ``failed_path(path)``."""
        path = failed_path(path) if failed else path
        return [save_checkpoint(path, self.model, self.tasks[0], config, histories[0])]


class _Stacked:
    """An ensemble's members, each with its task."""

    is_ensemble = True

    def __init__(self, ensemble: Ensemble, tasks: list[InContextTask],
                 seeds: list[int] | None = None):
        self.model, self.tasks, self.seeds = ensemble, tasks, seeds
        self.params = list(ensemble.stacked_parameters().values())

    def member_seeds(self, config: TrainConfig) -> list[int]:
        """Member k's seed: ``seeds[k]``, or ``config.seed + k``."""
        if self.seeds is not None:
            return list(self.seeds)
        return [config.seed + k for k in range(len(self.tasks))]

    def losses(self, batch: Batch, kind: str) -> torch.Tensor:
        """[N]: each member's loss on its part of ``batch``."""
        logits = self.model(batch.tokens, all_positions=kind == "next_token")
        task = self.tasks[0]  # the members' tasks share their token ids (checked)
        if kind == "target":
            logits = task.answer_logits(logits)
        return batch_loss(logits, batch, kind, task.answer_ids)

    @staticmethod
    def part(tensor: torch.Tensor, member: int) -> torch.Tensor:
        return tensor[member]

    def member(self, member: int) -> torch.nn.Module:
        return self.model.member(member)

    def batches(self, config: TrainConfig, device: torch.device) -> Iterator[Batch]:
        return stacked_batches(self.tasks, config, device, self.member_seeds(config))

    def save(self, folder: Path, config: TrainConfig, histories: list[History],
             failed: bool = False) -> list[Path]:
        """Member k's checkpoint holds the config it trained with: its own seed
        (``seeds[k]``, or ``config.seed + k``). A failed run's go to
        ``member_{k:03d}.failed.pt``."""
        seeds = self.member_seeds(config)
        paths = [folder / f"member_{k:03d}.pt" for k in range(len(self.tasks))]
        return [save_checkpoint(failed_path(path) if failed else path, self.model.member(k),
                                task, replace(config, seed=seeds[k]), history)
                for k, (path, task, history) in enumerate(zip(paths, self.tasks, histories))]


def failed_path(path: Path) -> Path:
    """Where a failed run's checkpoint goes instead of ``path`` (``run.pt`` ->
    ``run.failed.pt``): a finished run's checkpoint is never replaced by a failed one's."""
    return path.with_name(f"{path.stem}.failed{path.suffix or '.pt'}")


def _trainee(model: Any, task: Any, parameters: Iterable[torch.nn.Parameter] | None,
             seeds: Sequence[int] | None = None):
    """What ``train`` was given, checked: a :class:`_Single` or a :class:`_Stacked`."""
    if seeds is not None and not isinstance(model, Ensemble):
        raise ValueError("seeds= gives an Ensemble's members their seeds; a single model "
                         "trains with config.seed")
    if isinstance(model, Ensemble):
        if parameters is not None:
            raise ValueError("parameters= selects the parameters of a single model; an "
                             "Ensemble trains all of its stacked parameters")
        if isinstance(task, InContextTask) or not isinstance(task, Sequence):
            raise TypeError(f"an Ensemble trains one task per member: pass a list of "
                            f"{len(model)} tasks, got {type(task).__name__}")
        tasks = [check_task(t, f"task[{k}]") for k, t in enumerate(task)]
        if len(tasks) != len(model):
            raise ValueError(f"got {len(tasks)} tasks for {len(model)} members; pass one "
                             f"per member")
        for k, t in enumerate(tasks):
            try:
                check_sizes(model, t, exact_vocabulary=t.answer_ids is None)
            except ValueError as error:
                raise ValueError(f"task[{k}]: {error}") from None
            if (t.input_length, t.vocab_size) != (tasks[0].input_length, tasks[0].vocab_size):
                raise ValueError(f"task[{k}] has input length {t.input_length} and vocab_size "
                                 f"{t.vocab_size}, task[0] {tasks[0].input_length} and "
                                 f"{tasks[0].vocab_size}: an ensemble's batches are stacked, so "
                                 f"its tasks must share both")
            ids, first = t.answer_ids, tasks[0].answer_ids
            if (ids is None) != (first is None) or (ids is not None and not torch.equal(ids, first)):
                raise ValueError(f"task[{k}] has other token ids than task[0]; an ensemble's "
                                 f"members answer through the same ids")
        if seeds is not None:
            if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence):
                raise TypeError(f"seeds must be a list of one int per member, got {seeds!r}")
            seeds = [as_int(s, f"seeds[{k}]") for k, s in enumerate(seeds)]
            if len(seeds) != len(model):
                raise ValueError(f"got {len(seeds)} seeds for {len(model)} members; pass one "
                                 f"per member")
        return _Stacked(model, tasks, seeds)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch model (ours, a TL model or an Ensemble), "
                        f"got {type(model).__name__}")
    check_task(task)
    # a model answers its own symbols directly; an LM through the task's token ids
    check_sizes(model, task, exact_vocabulary=task.answer_ids is None)
    if parameters is None:
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("no trainable parameters: every parameter of the model has "
                             "requires_grad=False")
        return _Single(model, task, params)
    if isinstance(parameters, torch.Tensor) or not isinstance(parameters, Iterable):
        raise TypeError(f"parameters must be an iterable of the model's parameters, got "
                        f"{type(parameters).__name__}")
    own = {id(p) for p in model.parameters()}
    params = list(parameters)
    if not params:
        raise ValueError("parameters= is empty: pass some of the model's parameters, or None "
                         "for all of them")
    for k, param in enumerate(params):
        if id(param) not in own:
            raise ValueError(f"parameters[{k}] (shape {tuple(param.shape)}) is not a parameter "
                             f"of this model")
        if not param.requires_grad:
            raise ValueError(f"parameters[{k}] (shape {tuple(param.shape)}) has "
                             f"requires_grad=False")
    return _Single(model, task, params)


def _check_ready(trainee: _Single | _Stacked, config: TrainConfig,
                 weights: bool = True) -> None:
    """Errors that would otherwise show only at the first steps."""
    if config.layer >= trainee.model.cfg.n_layers:
        raise ValueError(f"config.layer={config.layer}: the model has "
                         f"{trainee.model.cfg.n_layers} layers (0..{trainee.model.cfg.n_layers - 1})")
    dtype = trainee.params[0].dtype
    if config.optimizer != "sgd" and torch.tensor(config.adam_eps, dtype=dtype).item() == 0:
        raise ValueError(f"adam_eps={config.adam_eps:g} is 0 in {dtype} (smallest positive "
                         f"{torch.finfo(dtype).smallest_normal:g}): Adam would divide by zero "
                         f"at the first step; use adam_eps >= {torch.finfo(dtype).eps:g} or a "
                         f"wider dtype")
    for param in trainee.params if weights else ():
        if not bool(torch.isfinite(param).all()):
            name = next(n for n, p in trainee.model.named_parameters() if p is param)
            raise ValueError(f"parameter {name} holds NaN or infinite values before "
                             f"training; re-initialise the model")


def _output(checkpoint: Any, is_ensemble: bool) -> Path | None:
    """The checkpoint path (a file; an ensemble's: a folder of member files), checked
    before any work."""
    if checkpoint is None:
        return None
    if is_ensemble:
        return check_output_dir(checkpoint, "checkpoint")
    return check_output_file(checkpoint, "checkpoint")


def _callbacks(callbacks: Any) -> list[Callback]:
    return check_instances(callbacks, "callbacks", Callback, "mc.Callback (subclass)")


def check_train(model: Any, task: Any, config: Any = None, callbacks: Any = (),
                checkpoint: Any = None, parameters: Any = None, seeds: Any = None,
                weights: bool = True) -> tuple[TrainConfig, Any, torch.device, Path | None,
                                               list[Callback]]:
    """Every check :func:`train` makes before it changes anything (``weights``: also
    that the parameters are finite); returns what it needs. For callers that must
    check a run before they change the model (``train_two_stage``)."""
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig (e.g. mc.TrainConfig(steps=100) or "
                        f"mc.TrainConfig.quick('chain')), got {type(config).__name__}")
    trainee = _trainee(model, task, parameters, seeds)
    device = check_device_available(config.device, "config.device")
    output = _output(checkpoint, trainee.is_ensemble)
    callbacks = _callbacks(callbacks)
    _check_ready(trainee, config, weights)
    return config, trainee, device, output, callbacks


# ---------------------------------------------------------------------- the loop
def train(
    model: torch.nn.Module,
    task: InContextTask | Sequence[InContextTask],
    config: TrainConfig | None = None,
    callbacks: Iterable[Callback] = (),
    checkpoint: str | Path | None = None,
    parameters: Iterable[torch.nn.Parameter] | None = None,
    seeds: Sequence[int] | None = None,
) -> History | list[History]:
    """Train ``model`` on ``task``; returns its :class:`History` (for an Ensemble, one
    per member).

    Args:
        model: a native model, a standard TL model (logits [B, S] at the last position
            or [B, L, S]; layer ``config.layer`` exposes ``hook_pattern``), or an
            :class:`~mechcausal.Ensemble`.
        task: the :class:`InContextTree` or :class:`InContextDAG` the model is sized for;
            for an ensemble, a sequence of one task per member (same sizes).
        config: defaults to ``TrainConfig()``.
        callbacks: :class:`~mechcausal.Callback` instances (``EarlyStopping``,
            ``AttentionSnapshots``, your own).
        checkpoint: where to write the final model, task, config and history
            (atomically; checked before the first step), only when the run completes or
            a callback stops it: a run that fails (:class:`NonFiniteLossError`) writes
            its restored weights to ``NAME.failed.pt`` instead, so that a finished run's
            checkpoint is never replaced by a failed one; an interrupted run writes
            nothing. For an ensemble, a folder: member k goes to ``member_{k:03d}.pt``
            (``member_{k:03d}.failed.pt``), an ordinary checkpoint recording its seed.
        parameters: the parameters to optimise (single models; default all that require
            grad); the others are frozen during the run and unfrozen afterwards.
        seeds: an Ensemble's per-member seeds (default ``config.seed + k``): member k then
            trains exactly as a single run with ``config.seed = seeds[k]``, wherever it
            sits in the ensemble.

    Raises:
        NonFiniteLossError: a step produced a NaN/inf loss (see the module notes).

    On CPU this raises glibc's malloc thresholds for the process
    (:func:`~mechcausal.training.allocator.keep_freed_memory`): a step's large tensors
    are then reused instead of being unmapped and page-faulted in again every step.
    """
    config, trainee, device, output, callbacks = check_train(
        model, task, config, callbacks, checkpoint, parameters, seeds)
    if device.type == "cpu":
        keep_freed_memory()
    if any(p.device != device for p in model.parameters()):
        model.to(device)  # TL 4 bridges print a line on every .to(), so only when needed
    chosen = {id(p) for p in trainee.params}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in chosen]
    for p in frozen:
        p.requires_grad_(False)
    try:
        histories = _Loop(trainee, config, device, callbacks, output).run()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return histories if trainee.is_ensemble else histories[0]


class _Loop:
    """One run of :func:`train` (state shared by its steps, evaluations and failure)."""

    def __init__(self, trainee: _Single | _Stacked, config: TrainConfig,
                 device: torch.device, callbacks: list[Callback], output: Path | None):
        self.trainee, self.config, self.device = trainee, config, device
        self.callbacks, self.output = callbacks, output
        params = trainee.params
        self.optimizer = make_optimizer(params, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, config))
        # the weights of the step before (their loss was finite), and of the last
        # evaluation (verified finite): where a member goes back when its loss is not
        self.previous = [p.detach().clone() for p in params]
        self.verified = [p.detach().clone() for p in params]
        self.verified_step = 0
        self.held_out = [
            task.sample(config.eval_samples, device=device, generator=torch.Generator(
                device=device).manual_seed(seed + _HELD_OUT_SEED))
            for seed, task in zip(trainee.member_seeds(config), trainee.tasks)]
        self.histories = [History(
            bayes_loss=cross_entropy(task.bayes(held.tokens), held.target).item(),
            unigram_loss=cross_entropy(task.unigram(held.tokens), held.target).item(),
            uniform_loss=math.log(task.vocab_size),
        ) for task, held in zip(trainee.tasks, self.held_out)]
        self.step_losses = torch.zeros(config.steps, len(trainee.tasks), device=device,
                                       dtype=torch.float64)
        self.seconds = 0.0
        self.diverging = [0] * len(trainee.tasks)
        self.run_state = Run(trainee.model, trainee.tasks, self.histories, config,
                             self.held_out, trainee.member, trainee.is_ensemble)

    # ------------------------------------------------------------------ steps
    def run(self) -> list[History]:
        try:
            return self._run()
        except BaseException as error:
            for callback in self.callbacks:
                try:
                    callback.on_train_error(self.run_state, error)
                except Exception as cleanup:  # noqa: BLE001 - the training error matters more
                    warnings.warn(f"{type(callback).__name__}.on_train_error failed: "
                                  f"{cleanup!r}", RuntimeWarning, stacklevel=2)
            raise

    def _run(self) -> list[History]:
        run, config = self.run_state, self.config
        for callback in self.callbacks:
            callback.on_train_start(run)
        self.evaluate(0)
        bar = progress_bar(config.steps, config.progress,
                           "ensemble" if self.trainee.is_ensemble else "train")
        self.trainee.model.train()
        try:
            with drawn_ahead(self.trainee.batches(config, self.device), config.prefetch,
                             depth=2 * batches_per_draw(self.trainee.tasks[0], config)) as batches:
                for step in range(config.steps):
                    if run.stop_reason is not None:
                        break
                    started = time.perf_counter()  # waiting for a batch counts as training
                    self.step(step, next(batches), started)
                    bar.update(1)
                    if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
                        self.evaluate(step + 1)
                        bar.set_postfix(self.postfix())
                if run.stop_reason is not None and (not self.histories[0].eval_step or
                                                    self.histories[0].eval_step[-1] != run.step):
                    self.evaluate(run.step)  # a stop between evaluations
        finally:
            bar.close()
        self.finish()
        for callback in self.callbacks:
            callback.on_train_end(run)
        return self.histories

    def step(self, step: int, batch: Batch, started: float) -> None:
        losses = self.trainee.losses(batch, self.config.loss)  # [N]
        # one host sync per step, before the update: no NaN update is ever applied
        finite = torch.isfinite(losses)
        if not bool(finite.all()):
            bad = (~finite).nonzero().flatten().tolist()
            value = losses[bad[0]].item()
            self.fail(step, bad, f"loss became {value}", value)
        for previous, param in zip(self.previous, self.trainee.params):
            previous.copy_(param.detach())
        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        self.optimizer.step()
        self.run_state.lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.step_losses[step] = losses.detach()
        self.seconds += time.perf_counter() - started
        self.run_state.step = step + 1
        self.run_state.loss = losses.detach()
        for callback in self.callbacks:
            callback.on_step(self.run_state)

    # ------------------------------------------------------------------ evaluations
    @torch.no_grad()
    def evaluate(self, step: int) -> None:
        """Held-out loss and parent attention of every member at ``step``."""
        evaluations, problems = [], {}
        for k, held in enumerate(self.held_out):
            model = self.trainee.member(k)
            was_training = model.training
            model.eval()
            try:
                test_loss = loss_fn(model, held, "target", self.trainee.tasks[k]).item()
                pattern = graph_positions(mean_attention(model, held.tokens,
                                                         layer=self.config.layer).cpu(),
                                          self.trainee.tasks[k])
            finally:
                model.train(was_training)
            if not math.isfinite(test_loss):
                problems[k] = (f"held-out loss became {test_loss}", test_loss)
            elif not all(bool(torch.isfinite(self.trainee.part(p, k)).all())
                         for p in self.trainee.params):
                problems[k] = (f"a parameter became NaN or infinite (held-out loss "
                               f"{test_loss:.4g})", test_loss)
            evaluations.append((test_loss, pattern))
        if problems:
            first = min(problems)
            self.fail(step, sorted(problems), *problems[first])
        self.run_state.evaluations = []
        for k, (task, history, (test_loss, pattern)) in enumerate(
                zip(self.trainee.tasks, self.histories, evaluations)):
            history.eval_step.append(step)
            history.eval_time.append(self.seconds)
            history.test_loss.append(test_loss)
            history.parent_attention.append(parent_attention(pattern, task.graph))
            self.check_divergence(k, step)
            self.run_state.evaluations.append({
                "step": step, "test_loss": test_loss, "gap": history.gap[-1],
                "parent_attention": history.parent_attention[-1], "pattern": pattern})
        for param, verified in zip(self.trainee.params, self.verified):
            verified.copy_(param.detach())
        self.verified_step = step
        for callback in self.callbacks:
            callback.on_eval(self.run_state)

    def check_divergence(self, member: int, step: int) -> None:
        """Warn (once) when the held-out loss has stayed far above the uniform
        predictor's for several evaluations: training diverged without a NaN."""
        history = self.histories[member]
        above = history.test_loss[-1] > history.uniform_loss + DIVERGENCE_NATS
        self.diverging[member] = self.diverging[member] + 1 if above else 0
        if self.diverging[member] == DIVERGENCE_EVALUATIONS:
            who = f" (member {member})" if self.trainee.is_ensemble else ""
            steps = ", ".join(map(str, history.eval_step[-DIVERGENCE_EVALUATIONS:]))
            message = (f"training diverged{who}: held-out loss {history.test_loss[-1]:.3f} nats "
                       f"at step {step}, more than {DIVERGENCE_NATS:g} nat above the uniform "
                       f"predictor's {history.uniform_loss:.3f} at {DIVERGENCE_EVALUATIONS} "
                       f"evaluations in a row (steps {steps}); lower lr "
                       f"(config.lr={self.config.lr:g})")
            history.warnings.append(message)
            # the caller of mc.train: above here, evaluate, its no_grad wrapper, _run, run,
            # train
            warnings.warn(message, RuntimeWarning, stacklevel=7)

    def postfix(self) -> dict[str, str]:
        if not self.trainee.is_ensemble:
            history = self.histories[0]
            return {"loss": f"{history.test_loss[-1]:.3f}", "gap": f"{history.gap[-1]:.3f}",
                    "parent": f"{history.parent_attention[-1]:.3f}"}
        parent = [history.parent_attention[-1] for history in self.histories]
        return {"parent": f"{sum(parent) / len(parent):.3f}", "min": f"{min(parent):.3f}"}

    # ------------------------------------------------------------------ ending
    def finish(self, failed: bool = False) -> list[Path]:
        steps_done = self.run_state.step
        for k, history in enumerate(self.histories):
            history.train_loss = self.step_losses[:steps_done, k].tolist()
            history.wall_time = self.seconds
            history.steps_per_second = (steps_done / self.seconds
                                        if steps_done and self.seconds > 0 else None)
            history.stop_reason = self.run_state.stop_reason
        if self.output is None:
            return []
        return self.trainee.save(self.output, self.config, self.histories, failed)

    def fail(self, step: int, bad: list[int], what: str, value: float) -> None:
        """Give the members in ``bad`` back their last weights whose loss was finite
        (verified finite), save, and raise :class:`NonFiniteLossError`."""
        part = self.trainee.part
        restored = {}
        for k in bad:
            for param, previous in zip(self.trainee.params, self.previous):
                part(param, k).detach().copy_(part(previous, k))
            restored[k] = max(step - 1, 0)
            if not all(bool(torch.isfinite(part(p, k)).all()) for p in self.trainee.params):
                for param, verified in zip(self.trainee.params, self.verified):
                    part(param, k).detach().copy_(part(verified, k))
                restored[k] = self.verified_step
        saved = self.finish(failed=True)
        member = bad[0]
        who = (f" (member{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} of "
               f"{len(self.histories)})" if self.trainee.is_ensemble else "")
        if restored[member] == 0 and step <= 1:
            cause = ("the initial weights give a non-finite value: check the initialisation "
                     "(init_scale) and the inputs" if step == 0 else
                     f"the first update made it non-finite: lower lr (config.lr="
                     f"{self.config.lr:g}) or check the inputs")
            restored_text = "its initial weights (every parameter finite)"
        else:
            which = (f"the update of step {restored[member]}" if restored[member] == step - 1
                     else f"an update after step {restored[member]}")
            cause = (f"{which} made it non-finite: lower lr (config.lr={self.config.lr:g}) "
                     f"or check the inputs")
            restored_text = (f"its weights at step {restored[member]}, whose loss was finite "
                             f"(every parameter verified finite)")
        where = f" and saved to {', '.join(map(str, saved))}" if saved else ""
        raise NonFiniteLossError(
            f"{what} at step {step}{who}; no update was made from it; the "
            f"model was restored to {restored_text}{where}; {cause}",
            step, member if self.trainee.is_ensemble else None, value, self.histories)


def train_ensemble(ensemble: Ensemble, tasks: Sequence[InContextTask],
                   config: TrainConfig | None = None,
                   checkpoint_dir: str | Path | None = None) -> list[History]:
    """Deprecated: ``mc.train(ensemble, tasks, config, checkpoint=checkpoint_dir)``."""
    warnings.warn("mc.train_ensemble is deprecated: use mc.train(ensemble, tasks, config, "
                  "checkpoint=folder), the one loop", DeprecationWarning, stacklevel=2)
    return train(ensemble, tasks, config, checkpoint=checkpoint_dir)
