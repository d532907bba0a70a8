"""Training batches: fresh samples every step, or pools served once each (the official
scheme); one stream per member; drawn ahead in a background thread.

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
# sequences per draw of a pool: a pool is drawn a chunk at a time, as its batches reach it
POOL_CHUNK = SAMPLES_PER_DRAW
_EMPTY = torch.empty(0)


def batches_per_draw(task: InContextTask, config: TrainConfig) -> int:
    """Fresh-data batches drawn by one sampler call: several, so the sampler's ~200
    small ops (and, when drawn ahead, its hold on the GIL, which slows the training
    thread) are paid once for all."""
    return max(1, min(SAMPLES_PER_DRAW // config.batch_size,
                      PI_ENTRIES_PER_DRAW // (config.batch_size * task.vocab_size**2)))


def task_batches(task: InContextTask, config: TrainConfig, seed: int,
                 device: torch.device) -> Iterator[Batch]:
    """Endless training batches of one task on ``device``, drawn with a generator
    seeded by ``seed``: fresh (several batches per sampler call) or pools."""
    generator = torch.Generator(device=device).manual_seed(seed)
    if config.data == "fresh":
        per_draw = batches_per_draw(task, config)
        while True:
            yield from task.sample(per_draw * config.batch_size, generator=generator,
                                   device=device).split(config.batch_size)
    yield from _pool_batches(task, config, generator, device)


def _pool_batches(task: InContextTask, config: TrainConfig, generator: torch.Generator,
                  device: torch.device) -> Iterator[Batch]:
    """Pools of ``pool_size`` sequences, each served once, in order, in batches (the
    official scheme; the rows past a pool's last whole batch are dropped).

    A pool is the chunks of ``max(batch_size, POOL_CHUNK)`` sequences drawn in turn, and
    a batch needs only the chunk it lies in: chunks are drawn as the batches reach them.
    The batches are those of a pool drawn whole, but nothing waits for a whole pool (the
    first step of a run started only after a 2^20-sequence pool was drawn) and no pool
    is held (one per ensemble member: gigabytes)."""
    chunk = max(config.batch_size, POOL_CHUNK)
    sizes = [min(chunk, config.pool_size - start) for start in range(0, config.pool_size, chunk)]
    per_pool = config.pool_size // config.batch_size
    while True:
        chunks = iter(sizes)
        part = task.sample(next(chunks), generator=generator, device=device)
        tokens, target = part.tokens, part.target  # drawn, not yet served
        for _ in range(per_pool):
            while len(tokens) < config.batch_size:
                part = task.sample(next(chunks), generator=generator, device=device)
                tokens, target = torch.cat([tokens, part.tokens]), torch.cat([target, part.target])
            yield Batch(tokens[: config.batch_size], target[: config.batch_size], pi=_EMPTY)
            tokens, target = tokens[config.batch_size :], target[config.batch_size :]
        for size in chunks:  # the dropped tail: drawn all the same, so the next pool is
            task.sample(size, generator=generator, device=device)  # the one drawn whole


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
