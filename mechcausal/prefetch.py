"""Draw training batches ahead while the model trains: in a background thread, or
(:func:`drawn_ahead`) in a forked worker process where one is available.

Sampling a batch costs about half of a CPU training step; torch releases the GIL inside
its kernels, so a second thread sampling the next batches runs on the other core while
the step runs. The producer is the only user of its iterator (and of that iterator's
generator), so the batches and their order are exactly those of the plain loop.
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

import torch

from .forked_prefetch import (ForkedPrefetcher, fork_available, ring_bytes,
                              shared_memory_fits)
from .tasks import Batch

Item = TypeVar("Item")

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
def maybe_prefetched(source: Iterator[Item], enabled: bool,
                     depth: int = 2) -> Iterator[Iterator[Item]]:
    """``source`` drawn ``depth`` items ahead by a :class:`Prefetcher` when ``enabled``,
    else as is; the thread (if any) stops when the block exits."""
    if not enabled:
        yield source
        return
    with Prefetcher(source, depth) as ahead:
        yield ahead


@contextlib.contextmanager
def drawn_ahead(source: Iterator[Batch], prefetch: bool | str, device: torch.device,
                tokens_shape: tuple[int, ...], target_shape: tuple[int, ...],
                depth: int) -> Iterator[Iterator[Batch]]:
    """``source``'s batches drawn ``depth`` ahead as ``prefetch`` asks (see
    ``TrainConfig.prefetch``; :func:`prefetch_mode`)."""
    mode = prefetch_mode(prefetch, device, ring_bytes(tokens_shape, target_shape, depth))
    if mode == "process":
        with ForkedPrefetcher(source, tokens_shape, target_shape, depth) as ahead:
            yield ahead
    else:
        with maybe_prefetched(source, mode == "thread", depth) as ahead:
            yield ahead


def prefetch_mode(prefetch: bool | str, device: torch.device, nbytes: int) -> str | None:
    """The way ``TrainConfig.prefetch`` draws ahead: ``"process"``, ``"thread"`` or None
    (not at all). ``True`` is the forked worker where it is available and its ``nbytes``
    of shared memory fit, else the thread; an explicit "process" that cannot run is an
    error."""
    if prefetch is False:
        return None
    if prefetch == "thread":
        return "thread"
    possible = fork_available(device)
    fits = possible and shared_memory_fits(nbytes)
    if prefetch is True:
        return "process" if fits else "thread"
    if not possible:
        raise ValueError(f"prefetch='process' needs Linux and a CPU device, got {sys.platform} "
                         f"and {device}; use prefetch='thread'")
    if not fits:
        raise ValueError(f"prefetch='process' needs {nbytes / 2**20:.0f} MB of shared memory, "
                         f"more than half of what /dev/shm has free; use prefetch='thread' "
                         f"or a smaller batch")
    return "process"
