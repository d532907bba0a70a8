"""One training loop for every model: cross-entropy against the task's target law.

``train(model, task, config)`` draws batches (fresh each step, or from a pool
resampled each epoch like the official code), evaluates on a fixed held-out set
(test loss, count-estimator loss, their gap, mean layer-1 attention on the true
parents) and returns a :class:`History`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import einops
import torch

from .allocator import keep_freed_memory
from .attention import mean_attention, parent_attention
from .checkpoint import save_checkpoint
from .config import TrainConfig
from .history import History
from .models.base import model_logits
from .prefetch import drawn_ahead
from .progress import progress_bar
from .short_softmax import log_softmax_last
from .tasks import Batch, InContextTask, cross_entropy


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; the model holds the last good weights."""


def check_compatible(model: torch.nn.Module, task: InContextTask) -> None:
    """Raise ValueError when the model's vocabulary or context does not fit the task."""
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise TypeError(f"model must have a TransformerLens-style cfg, got {type(model).__name__}")
    if cfg.d_vocab != task.vocab_size:
        raise ValueError(
            f"model vocabulary d_vocab={cfg.d_vocab} does not match task vocab_size="
            f"{task.vocab_size}; build the model with .for_task(task)"
        )
    if cfg.n_ctx < task.input_length:
        raise ValueError(
            f"model context n_ctx={cfg.n_ctx} is shorter than the task's input length "
            f"{task.input_length}; build the model with .for_task(task)"
        )


_SAMPLES_PER_DRAW = 4096
_PI_ENTRIES_PER_DRAW = 2**22  # transition-matrix floats drawn at once (16 MB)
# samples per draw when filling a pool: small enough that a draw between two batches
# (~10 ms) never outlasts the two batches queued ahead of the training thread
_POOL_CHUNK = _SAMPLES_PER_DRAW


def _batches_per_draw(task: InContextTask, config: TrainConfig) -> int:
    """Fresh-data batches drawn by one sampler call: several, so the sampler's ~200
    small ops (and, when prefetching, its hold on the GIL, which slows the training
    thread) are paid once for all."""
    return max(1, min(_SAMPLES_PER_DRAW // config.batch_size,
                      _PI_ENTRIES_PER_DRAW // (config.batch_size * task.vocab_size**2)))


def _batches(task: InContextTask, config: TrainConfig, device: torch.device) -> Iterator[Batch]:
    """Endless training batches on ``device`` drawn with a generator seeded by config."""
    generator = torch.Generator(device=device).manual_seed(config.seed)
    if config.data == "fresh":
        per_draw = _batches_per_draw(task, config)
        while True:
            yield from task.sample(per_draw * config.batch_size, generator=generator,
                                   device=device).split(config.batch_size)
    per_pool = config.pool_size // config.batch_size
    chunk = max(config.batch_size, _POOL_CHUNK)
    starts = range(0, config.pool_size, chunk)

    def draw(start: int) -> tuple[torch.Tensor, torch.Tensor]:
        part = task.sample(min(chunk, config.pool_size - start), generator=generator,
                           device=device)
        return part.tokens, part.target

    parts = [draw(start) for start in starts]
    every = max(1, per_pool // len(starts))
    while True:
        tokens = torch.cat([t for t, _ in parts])
        target = torch.cat([y for _, y in parts])
        parts = []
        for k in range(per_pool):
            rows = slice(k * config.batch_size, (k + 1) * config.batch_size)
            yield Batch(tokens[rows], target[rows], pi=torch.empty(0))
            # the next pool, a chunk at a time between this one's batches: a prefetching
            # thread then draws it behind training instead of stalling the loop for
            # seconds; the generator's draws, and so the pools, are unchanged
            if k % every == 0 and len(parts) < len(starts):
                parts.append(draw(starts[len(parts)]))
        parts += [draw(start) for start in starts[len(parts):]]


def _batch_stream(task: InContextTask, config: TrainConfig, device: torch.device):
    """The training batches, drawn ahead as ``config.prefetch`` asks (a context manager)."""
    # room for two draws: the next one is drawn while a whole one waits in the
    # queue (with room for one batch only, the loop waited ~5 % of its time)
    return drawn_ahead(_batches(task, config, device), config.prefetch, device,
                       (config.batch_size, task.input_length),
                       (config.batch_size, task.vocab_size),
                       depth=2 * _batches_per_draw(task, config))


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


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of ``config.lr`` at ``step`` (warm-up, then cosine or constant)."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    span = max(1, config.steps - config.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * (step - config.warmup_steps) / span))


def target_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``-sum_s target_s log softmax(logits)_s`` per row: logits, target [..., S] -> [...]."""
    return -(target * log_softmax_last(logits)).sum(-1)


def loss_fn(model: torch.nn.Module, batch: Batch, kind: str = "target") -> torch.Tensor:
    """``"target"``: cross-entropy of the last-position prediction against
    ``batch.target`` (the paper's loss). ``"next_token"``: mean next-token
    cross-entropy over every position (a language-model objective)."""
    if kind == "next_token":
        logits = model_logits(model, batch.tokens, all_positions=True)[:, :-1]
        return torch.nn.functional.cross_entropy(
            einops.rearrange(logits.float(), "b l s -> (b l) s"),
            einops.rearrange(batch.tokens[:, 1:], "b l -> (b l)"),
        )
    logits = model_logits(model, batch.tokens)
    return target_cross_entropy(logits.float(), batch.target).mean()


@torch.no_grad()
def evaluate(model: torch.nn.Module, task: InContextTask, batch: Batch,
             layer: int = 0) -> dict[str, float]:
    """Test loss and mean parent attention of ``model`` on a fixed batch."""
    was_training = model.training
    model.eval()
    try:
        test_loss = loss_fn(model, batch).item()
        pattern = mean_attention(model, batch.tokens, layer=layer)
    finally:
        model.train(was_training)
    return {"test_loss": test_loss, "parent_attention": parent_attention(pattern, task.graph)}


def train(
    model: torch.nn.Module,
    task: InContextTask,
    config: TrainConfig | None = None,
    parameters: Iterable[torch.nn.Parameter] | None = None,
    checkpoint: str | Path | None = None,
) -> History:
    """Train ``model`` on ``task``; returns the :class:`History`.

    Args:
        model: maps tokens [B, L] to logits [B, S] at the last position and exposes
            ``blocks.{layer}.attn.hook_pattern``.
        task: an :class:`InContextTree` or :class:`InContextDAG` the model is sized for.
        config: defaults to ``TrainConfig()``.
        parameters: the parameters to optimise (default: all that require grad); the
            others are frozen during the run and unfrozen afterwards.
        checkpoint: if given, the final model, task, config and history are written
            there atomically; also written (last good weights) before a
            :class:`NonFiniteLossError` is raised.

    Raises:
        NonFiniteLossError: a step produced a NaN/inf loss. No update is made from it;
            the model is restored to its weights at the last evaluation.

    On CPU this raises glibc's malloc thresholds for the process
    (:func:`~mechcausal.allocator.keep_freed_memory`): a step's large tensors are then
    reused instead of being unmapped and page-faulted in again every step.
    """
    config = config or TrainConfig()
    check_compatible(model, task)
    device = torch.device(config.device)
    if device.type == "cpu":
        keep_freed_memory()
    if any(p.device != device for p in model.parameters()):
        model.to(device)  # TL 4 bridges print a line on every .to(), so only when needed
    params = [p for p in (parameters if parameters is not None else model.parameters())
              if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: every parameter has requires_grad=False")
    chosen = {id(p) for p in params}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in chosen]
    for p in frozen:
        p.requires_grad_(False)
    try:
        return _run(model, task, config, params, checkpoint, device)
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _run(model: torch.nn.Module, task: InContextTask, config: TrainConfig,
         params: list[torch.nn.Parameter], checkpoint: str | Path | None,
         device: torch.device) -> History:
    """The loop of :func:`train` over ``params``."""
    optimizer = make_optimizer(params, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))

    eval_gen = torch.Generator(device=device).manual_seed(config.seed + 1_000_003)
    held_out = task.sample(config.eval_samples, generator=eval_gen, device=device)
    history = History(
        bayes_loss=cross_entropy(task.bayes(held_out.tokens), held_out.target).item(),
        unigram_loss=cross_entropy(task.unigram(held_out.tokens), held_out.target).item(),
    )
    step_losses = torch.zeros(config.steps, device=device)
    good = {"step": 0, "state": {}}
    clock = {"seconds": 0.0}

    def record(step: int) -> None:
        metrics = evaluate(model, task, held_out, layer=config.layer)
        history.eval_step.append(step)
        history.eval_time.append(clock["seconds"])
        history.test_loss.append(metrics["test_loss"])
        history.parent_attention.append(metrics["parent_attention"])
        good["step"] = step
        good["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def finish(steps_done: int) -> None:
        history.train_loss = step_losses[:steps_done].tolist()
        history.wall_time = clock["seconds"]
        if clock["seconds"] > 0:
            history.steps_per_second = steps_done / clock["seconds"]
        if checkpoint is not None:
            save_checkpoint(checkpoint, model, task, config, history)

    record(0)
    bar = progress_bar(config.steps, config.progress, "train")
    model.train()
    try:
        with _batch_stream(task, config, device) as batches:
            for step in range(config.steps):
                started = time.perf_counter()
                loss = loss_fn(model, next(batches), config.loss)
                # one host sync per step: cheap next to a step, and no NaN update is ever applied
                if not torch.isfinite(loss):
                    model.load_state_dict(good["state"])
                    finish(step)
                    saved = f" and saved to {checkpoint}" if checkpoint is not None else ""
                    raise NonFiniteLossError(
                        f"loss became {loss.item()} at step {step}; the model was restored to its "
                        f"weights at step {good['step']}{saved}; lower lr or check the inputs"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                step_losses[step] = loss.detach()
                clock["seconds"] += time.perf_counter() - started
                if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
                    record(step + 1)
                    bar.set_postfix(loss=f"{history.test_loss[-1]:.3f}",
                                    gap=f"{history.gap[-1]:.3f}",
                                    parent=f"{history.parent_attention[-1]:.3f}")
                bar.update(1)
    finally:
        bar.close()
    finish(config.steps)
    return history
