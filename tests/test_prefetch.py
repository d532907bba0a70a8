"""Background batch drawing (same batches, same order, errors surface, threads stop)
and the allocator setting the CPU loop applies."""

import importlib
import os
import signal
import threading

import pytest
import torch

import mechcausal as mc
from mechcausal.forked_prefetch import ForkedPrefetcher, fork_available, ring_bytes
from mechcausal.prefetch import Prefetcher, drawn_ahead, prefetch_mode
from mechcausal.train import _batches

train_module = importlib.import_module("mechcausal.train")  # mc.train is the function


def test_prefetched_batches_equal_the_plain_stream():
    task = mc.InContextTree(mc.CausalGraph.random_tree(12, seed=3), vocab_size=6, alpha=0.1)
    config = mc.TrainConfig(batch_size=64)
    plain = _batches(task, config, torch.device("cpu"))
    with Prefetcher(_batches(task, config, torch.device("cpu"))) as ahead:
        for _ in range(10):
            a, b = next(plain), next(ahead)
            assert torch.equal(a.tokens, b.tokens)
            assert torch.equal(a.target, b.target)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_training_with_and_without_prefetch_is_identical(one_thread):
    """Bit-identical training. One intra-op thread in both runs: prefetching lowers the
    consumer's count by one, and with two threads the batch-sized reductions of the
    backward add in another order (results ~1e-7 apart)."""
    task = mc.InContextTree(mc.CausalGraph.chain(10), vocab_size=5, alpha=0.1)
    histories = []
    modes = (False, "thread") + (("process",) if fork_available(torch.device("cpu")) else ())
    for prefetch in modes:
        model = mc.DisentangledTransformer.for_task(task)
        config = mc.TrainConfig(steps=30, batch_size=128, eval_every=10, progress=False,
                                prefetch=prefetch)
        histories.append((mc.train(model, task, config), model))
    assert torch.get_num_threads() == 1
    (h0, m0), *others = histories
    for h1, m1 in others:
        assert h0.train_loss == h1.train_loss
        for p0, p1 in zip(m0.parameters(), m1.parameters()):
            assert torch.equal(p0, p1)


needs_fork = pytest.mark.skipif(not fork_available(torch.device("cpu")),
                                reason="forked batch workers need Linux")


def _forked(source, task, config, depth=8):
    return ForkedPrefetcher(source, (config.batch_size, task.input_length),
                            (config.batch_size, task.vocab_size), depth)


@needs_fork
@pytest.mark.parametrize("data", ["fresh", "pool"])
def test_forked_worker_draws_the_plain_stream(data):
    """The worker holds the same generator state: the same batches, in order, for fresh
    data and for pools; a batch stays valid after later ones are drawn (copied out)."""
    task = mc.InContextTree(mc.CausalGraph.random_tree(12, seed=3), vocab_size=6, alpha=0.1)
    config = mc.TrainConfig(batch_size=64, data=data, pool_size=256)
    plain = _batches(task, config, torch.device("cpu"))
    with _forked(_batches(task, config, torch.device("cpu")), task, config, depth=2) as ahead:
        drawn = [next(ahead) for _ in range(10)]
    for batch in drawn:
        expected = next(plain)
        assert torch.equal(batch.tokens, expected.tokens)
        assert torch.equal(batch.target, expected.target)


@needs_fork
def test_forked_worker_errors_and_death_reach_the_consumer():
    task = mc.InContextTree(mc.CausalGraph.chain(6), vocab_size=4, alpha=0.1)
    config = mc.TrainConfig(batch_size=8)

    def source():
        yield task.sample(8)
        raise RuntimeError("sampler broke")

    with _forked(source(), task, config) as ahead:
        assert len(next(ahead)) == 8
        with pytest.raises(RuntimeError, match="(?s)worker process failed.*sampler broke"):
            next(ahead)
    with _forked(_batches(task, config, torch.device("cpu")), task, config, depth=1) as ahead:
        next(ahead)
        os.kill(ahead._worker.pid, signal.SIGKILL)
        with pytest.raises(RuntimeError, match="exited .code -9. without an error message"):
            for _ in range(3):  # at most one batch was already waiting
                next(ahead)


@needs_fork
def test_forked_worker_stops_on_close_and_threads_are_restored():
    task = mc.InContextTree(mc.CausalGraph.chain(6), vocab_size=4, alpha=0.1)
    config = mc.TrainConfig(batch_size=8)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        ahead = _forked(_batches(task, config, torch.device("cpu")), task, config)
        assert torch.get_num_threads() == 1
        next(ahead)
        ahead.close()
        ahead.close()
        assert not ahead._worker.is_alive() and torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="closed"):
            next(ahead)
    finally:
        torch.set_num_threads(threads)


def test_prefetch_mode_is_checked():
    with pytest.raises(ValueError, match="prefetch must be True, False, 'thread' or 'process', "
                                         "got 'fork'"):
        mc.TrainConfig(prefetch="fork")
    with pytest.raises(ValueError, match="prefetch must be"):
        mc.TrainConfig(prefetch=1)
    assert not fork_available(torch.device("cuda"))
    with pytest.raises(ValueError, match="prefetch='process' needs Linux and a CPU device"):
        with drawn_ahead(iter(()), "process", torch.device("meta"), (1, 2), (1, 2), depth=1):
            pass


@needs_fork
def test_prefetch_mode_falls_back_to_the_thread_beyond_shared_memory():
    """True picks the worker only where its ring fits in half of /dev/shm's free space
    (a small container /dev/shm would kill the process with SIGBUS); an explicit
    'process' then says why it cannot run."""
    cpu = torch.device("cpu")
    paper = ring_bytes((1024, 21), (1024, 10), depth=8)
    assert paper == 8 * (1024 * 21 * 8 + 1024 * 10 * 4 + 1)
    assert prefetch_mode(True, cpu, paper) == "process"
    huge = 2**60
    assert prefetch_mode(True, cpu, huge) == "thread"
    assert prefetch_mode(True, torch.device("meta"), paper) == "thread"
    assert prefetch_mode(False, cpu, paper) is None
    assert prefetch_mode("thread", cpu, huge) == "thread"
    with pytest.raises(ValueError, match="needs 1099511627776 MB of shared memory"):
        prefetch_mode("process", cpu, huge)


def test_errors_of_the_source_reach_the_consumer():
    def source():
        yield 1
        raise RuntimeError("sampler broke")

    with Prefetcher(source()) as ahead:
        assert next(ahead) == 1
        with pytest.raises(RuntimeError, match="sampler broke"):
            next(ahead)


def test_finite_source_stops_and_close_ends_the_thread():
    before = threading.active_count()
    ahead = Prefetcher(iter(range(5)), depth=1)
    assert list(ahead) == [0, 1, 2, 3, 4]
    with pytest.raises(StopIteration):
        next(ahead)
    ahead.close()
    endless = Prefetcher(iter(int, 1))  # never exhausted: close must still stop it
    next(endless)
    endless.close()
    assert threading.active_count() == before


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="depth must be >= 1, got 0"):
        Prefetcher(iter(()), depth=0)


def test_allocator_thresholds_apply_on_glibc_linux():
    import platform
    import sys

    from mechcausal.allocator import keep_freed_memory

    on_glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is on_glibc
    assert keep_freed_memory() is on_glibc  # idempotent


def test_consumer_threads_are_lowered_while_prefetching_and_restored():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        ahead = Prefetcher(iter(range(3)))
        assert torch.get_num_threads() == 1
        ahead.close()
        ahead.close()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_pools_are_drawn_between_batches_with_unchanged_contents(monkeypatch):
    """data='pool': the next pool is drawn a chunk at a time while the current one is
    served; every pool still equals the chunks drawn in one go from the same generator."""
    monkeypatch.setattr(train_module, "_POOL_CHUNK", 96)
    task = mc.InContextTree(mc.CausalGraph.chain(8), vocab_size=4, alpha=0.1)
    config = mc.TrainConfig(batch_size=32, data="pool", pool_size=256, seed=5)
    calls = []
    sample = task.sample
    monkeypatch.setattr(task, "sample", lambda n, **kw: calls.append(n) or sample(n, **kw))
    stream = _batches(task, config, torch.device("cpu"))
    head = [next(stream).tokens for _ in range(2)]
    assert calls == [96, 96, 64, 96]  # the first pool, and already a chunk of the next
    served = torch.cat(head + [next(stream).tokens for _ in range(3 * 256 // 32 - 2)])
    generator = torch.Generator().manual_seed(5)
    expected = torch.cat([task.sample(n, generator=generator).tokens
                          for _ in range(3) for n in (96, 96, 64)])
    assert torch.equal(served, expected)
