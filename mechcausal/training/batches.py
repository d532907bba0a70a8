"""Training batches: fresh samples every step, or a pool resampled after each pass (the
official scheme); one stream per member; drawn ahead in a background thread.

Sampling a batch costs about half of a CPU training step. torch releases the GIL inside
its kernels, so a thread sampling the next batches runs on the other core while the
step runs (benchmarks/README.md: 1.2x over drawing in turn). The thread is the only
user of its streams and their generators, so the batches and their order are exactly
those drawn without it.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

import torch

from ..data.tasks import Batch, InContextTask
from .config import TrainConfig

Item = TypeVar("Item")

SAMPLES_PER_DRAW = 4096
PI_ENTRIES_PER_DRAW = 2**22  # transition-matrix floats drawn at once (16 MB)
# samples per draw when filling a pool: small enough that a draw between two batches
# never outlasts the batches queued ahead of the training thread
POOL_CHUNK = SAMPLES_PER_DRAW
_EMPTY = torch.empty(0)


def batches_per_draw(task: InContextTask, config: TrainConfig) -> int:
    """Fresh-data batches drawn by one sampler call: several, so the sampler's ~200
    small ops (and, when drawn ahead, its hold on the GIL, which slows the training
    thread) are paid once for all."""
    return max(1, min(SAMPLES_PER_DRAW // config.batch_size,
                      PI_ENTRIES_PER_DRAW // (config.batch_size * task.vocab_size**2)))


def _compact(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Tokens in the smallest integer type that holds them (a pool of 2^20 sequences of
    21 tokens is 176 MB as int64, 22 MB as uint8)."""
    return tokens.to(torch.uint8) if vocab_size <= 256 else tokens.to(torch.int32)


def task_batches(task: InContextTask, config: TrainConfig, seed: int,
                 device: torch.device) -> Iterator[Batch]:
    """Endless training batches of one task on ``device``, drawn with a generator
    seeded by ``seed``: fresh (several batches per sampler call) or from pools."""
    generator = torch.Generator(device=device).manual_seed(seed)
    if config.data == "fresh":
        per_draw = batches_per_draw(task, config)
        while True:
            yield from task.sample(per_draw * config.batch_size, generator=generator,
                                   device=device).split(config.batch_size)
    per_pool = config.pool_size // config.batch_size
    chunk = max(config.batch_size, POOL_CHUNK)
    starts = range(0, config.pool_size, chunk)

    def draw(start: int) -> tuple[torch.Tensor, torch.Tensor]:
        part = task.sample(min(chunk, config.pool_size - start), generator=generator,
                           device=device)
        return _compact(part.tokens, task.model_vocab_size), part.target

    parts = [draw(start) for start in starts]
    every = max(1, per_pool // len(starts))
    while True:
        tokens = torch.cat([t for t, _ in parts])
        target = torch.cat([y for _, y in parts])
        parts = []
        for k in range(per_pool):
            rows = slice(k * config.batch_size, (k + 1) * config.batch_size)
            yield Batch(tokens[rows].long(), target[rows], pi=_EMPTY)
            # the next pool, a chunk at a time between this one's batches: the
            # prefetching thread then draws it behind training instead of stalling the
            # loop for seconds; the generator's draws, and so the pools, are unchanged
            if k % every == 0 and len(parts) < len(starts):
                parts.append(draw(starts[len(parts)]))
        parts += [draw(start) for start in starts[len(parts):]]


def stacked_batches(tasks: Sequence[InContextTask], config: TrainConfig,
                    device: torch.device, seeds: Sequence[int] | None = None
                    ) -> Iterator[Batch]:
    """Endless batches of several members, tokens [N, B, L] and target [N, B, S]:
    member k's are exactly those :func:`task_batches` draws for ``tasks[k]`` with seed
    ``seeds[k]`` (default ``config.seed + k``), so an ensemble member trains on a single
    run's data."""
    if seeds is None:
        seeds = [config.seed + k for k in range(len(tasks))]
    streams = [task_batches(task, config, seed, device) for task, seed in zip(tasks, seeds)]
    while True:
        batches = [next(stream) for stream in streams]
        yield Batch(torch.stack([b.tokens for b in batches]),
                    torch.stack([b.target for b in batches]), pi=_EMPTY)


_DONE = object()


class Prefetcher(Generic[Item]):
    """Iterate ``source`` in a daemon thread, ``depth`` items ahead of the consumer.

    Use as a context manager (or call :meth:`close`) so the thread stops with the loop.
    An exception raised by ``source`` is re-raised by ``next()`` in the consumer.

    The producer gets one core: it runs its torch ops on one intra-op thread, and the
    consumer's thread count is lowered by one until :meth:`close` restores it (two
    OpenMP teams spinning on the same cores slow both down many times over).

    Args:
        source: an iterator of items (e.g. endless batches).
        depth: items drawn ahead; 2 keeps one ready while the next is drawn.
    """

    def __init__(self, source: Iterator[Item], depth: int = 2):
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._consumer_threads = torch.get_num_threads()
        torch.set_num_threads(max(1, self._consumer_threads - 1))
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(source,),
                                        daemon=True, name="mechcausal-prefetch")
        self._thread.start()

    def _produce(self, source: Iterator[Item]) -> None:
        torch.set_num_threads(1)
        try:
            for item in source:
                if not self._put(item):
                    return
        except BaseException as error:  # handed to the consumer, which re-raises it
            self._put(error)
            return
        self._put(_DONE)

    def _put(self, item: object) -> bool:
        """Block until there is room or the consumer closed us; False when closed."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Prefetcher[Item]:
        return self

    def __next__(self) -> Item:
        item = self._queue.get()
        if item is _DONE:
            self._queue.put(_DONE)  # room: we just took an item; later calls stop too
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop the producer, wait for it (it finishes the item it is drawing) and give
        the consumer its threads back. Idempotent."""
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            torch.set_num_threads(self._consumer_threads)

    def __enter__(self) -> Prefetcher[Item]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextlib.contextmanager
def drawn_ahead(source: Iterator[Item], enabled: bool,
                depth: int = 2) -> Iterator[Iterator[Item]]:
    """``source`` drawn ``depth`` items ahead by a :class:`Prefetcher` when ``enabled``,
    else as is; the thread (if any) stops when the block exits."""
    if not enabled:
        yield source
        return
    with Prefetcher(source, depth) as ahead:
        yield ahead
