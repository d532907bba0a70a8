"""Draw training batches in a forked worker process while the model trains.

A sampling *thread* (:class:`~mechcausal.prefetch.Prefetcher`) shares the GIL with the
training thread: both hand it over at every small op, and a thread blocked on it
waits for its wake-up. Measured on this project's 2-core machine, a sampling thread
at the training loop's pace slowed a one-thread training step by 22 %, the same
sampling in another process by 13 %; ``mc.train`` ran 1.04-1.17x faster with the
worker than with the thread (benchmarks/README.md).

The worker is a fork of the training process, so it holds the same sampler and the
same generator state and draws exactly the batches the plain loop would, in order.
It writes each batch's tokens and target into a ring of shared-memory slots; the
consumer copies a batch out (a few hundred KB) and frees its slot at once, so a
batch stays valid however long it is kept. Only the tokens and the target travel:
the training loss reads nothing else (``Batch.pi`` comes back empty).

Linux and CPU only (:func:`fork_available`): macOS and Windows have no safe fork,
and a forked child cannot use CUDA.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import traceback
import warnings
from collections.abc import Iterator

import torch

from .tasks import Batch

_ERROR = 1  # a slot's status when the worker failed (0: the slot holds a batch)
_POLL_S = 0.5  # how often a waiting consumer checks that the worker is alive


def fork_available(device: torch.device) -> bool:
    """Whether batches for ``device`` can be drawn in a forked worker."""
    return (device.type == "cpu" and sys.platform.startswith("linux")
            and "fork" in multiprocessing.get_all_start_methods())


def ring_bytes(tokens_shape: tuple[int, ...], target_shape: tuple[int, ...],
               depth: int) -> int:
    """Shared memory a :class:`ForkedPrefetcher` allocates (int64 tokens, float32
    targets, a status byte per slot)."""
    return depth * (8 * math.prod(tokens_shape) + 4 * math.prod(target_shape) + 1)


def shared_memory_fits(nbytes: int) -> bool:
    """Whether ``nbytes`` fit in half of /dev/shm's free space: a container's small
    /dev/shm (64 MB under Docker by default) would otherwise kill the process with
    SIGBUS when a slot is first written."""
    try:
        stats = os.statvfs("/dev/shm")
    except OSError:
        return False
    return nbytes <= stats.f_bavail * stats.f_frsize // 2


class ForkedPrefetcher:
    """Iterate ``source`` (endless batches, :class:`Batch` with tokens long of
    ``tokens_shape`` and target float32 of ``target_shape``) in a forked worker,
    ``depth`` ahead.

    Use as a context manager (or call :meth:`close`): the worker is killed on close.
    An exception raised by ``source`` in the worker is re-raised by ``next()`` as a
    RuntimeError carrying its traceback; a worker that dies is reported, not waited on.
    The consumer's intra-op threads are lowered by one until close (the worker takes
    a core), as with the thread prefetcher.
    """

    def __init__(self, source: Iterator[Batch], tokens_shape: tuple[int, ...],
                 target_shape: tuple[int, ...], depth: int = 8):
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._tokens = torch.empty(depth, *tokens_shape, dtype=torch.long).share_memory_()
        self._target = torch.empty(depth, *target_shape).share_memory_()
        self._status = torch.zeros(depth, dtype=torch.uint8).share_memory_()
        context = multiprocessing.get_context("fork")
        self._free = context.Semaphore(depth)
        self._filled = context.Semaphore(0)
        self._errors_out, errors_in = context.Pipe(duplex=False)
        self._next_slot = 0
        self._consumer_threads = torch.get_num_threads()
        self._worker = context.Process(target=self._produce,
                                       args=(source, errors_in, os.getpid()),
                                       daemon=True, name="mechcausal-batches")
        with warnings.catch_warnings():
            # Python >= 3.12 warns on every fork of a multi-threaded process. The child
            # runs only one-thread torch CPU ops on memory it owns and takes no lock that
            # another thread of ours could hold (torch's DataLoader forks the same way).
            warnings.filterwarnings("ignore", message=r".*use of fork\(\) may lead to deadlocks",
                                    category=DeprecationWarning)
            self._worker.start()
        errors_in.close()
        torch.set_num_threads(max(1, self._consumer_threads - 1))
        self._closed = False

    def _produce(self, source: Iterator[Batch], errors_in, trainer: int) -> None:
        """The worker's loop: fill the next free slot, until the trainer is gone."""
        torch.set_num_threads(1)
        slot = 0
        try:
            for batch in source:
                if not self._claim_slot(trainer):
                    return
                self._tokens[slot].copy_(batch.tokens)
                self._target[slot].copy_(batch.target)
                self._filled.release()
                slot = (slot + 1) % len(self._status)
        except BaseException:  # handed to the consumer, which re-raises it
            errors_in.send(traceback.format_exc())
            if self._claim_slot(trainer):
                self._status[slot] = _ERROR
                self._filled.release()

    def _claim_slot(self, trainer: int) -> bool:
        """Wait for a free slot; False once the trainer process has died (killed before
        it could close us, the worker would otherwise wait forever as an orphan)."""
        while not self._free.acquire(timeout=_POLL_S):
            if os.getppid() != trainer:
                return False
        return True

    def __iter__(self) -> ForkedPrefetcher:
        return self

    def __next__(self) -> Batch:
        if self._closed:
            raise RuntimeError("the batch worker was closed")
        while not self._filled.acquire(timeout=_POLL_S):
            if not self._worker.is_alive():
                raise RuntimeError(f"the batch worker process exited (code "
                                   f"{self._worker.exitcode}) without an error message")
        slot = self._next_slot
        if self._status[slot] == _ERROR:
            raise RuntimeError("drawing batches in the worker process failed:\n"
                               + self._errors_out.recv())
        batch = Batch(self._tokens[slot].clone(), self._target[slot].clone(),
                      pi=torch.empty(0))
        self._free.release()
        self._next_slot = (slot + 1) % len(self._status)
        return batch

    def close(self) -> None:
        """Kill the worker and give the consumer its threads back. Idempotent."""
        if not self._closed:
            self._closed = True
            self._worker.kill()
            self._worker.join()
            self._errors_out.close()
            torch.set_num_threads(self._consumer_threads)

    def __enter__(self) -> ForkedPrefetcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
