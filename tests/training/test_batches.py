"""Training batches: the same batches drawn ahead or not, pools drawn between batches
with unchanged contents, ensemble members' streams, errors surface, threads stop; and
the allocator setting the CPU loop applies."""

import importlib
import threading

import pytest
import torch

import mechcausal as mc
from mechcausal.training.batches import Prefetcher, stacked_batches, task_batches

batches_module = importlib.import_module("mechcausal.training.batches")


def _batches(task, config, device):
    return task_batches(task, config, config.seed, device)


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
    for prefetch in (False, True):
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

    from mechcausal.training.allocator import keep_freed_memory

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


def test_a_pool_is_drawn_as_its_batches_reach_it_with_unchanged_contents(monkeypatch):
    """data='pool': a chunk is drawn when the batches reach it, never a whole pool ahead;
    every pool equals the chunks drawn in one go from the same generator, served once in
    order, and the rows past a pool's last whole batch are dropped (but drawn, so the
    next pool is the same as one drawn whole)."""
    monkeypatch.setattr(batches_module, "POOL_CHUNK", 96)
    task = mc.InContextTree(mc.CausalGraph.chain(8), vocab_size=4, alpha=0.1)
    config = mc.TrainConfig(batch_size=32, data="pool", pool_size=250, seed=5)
    calls = []
    sample = task.sample
    monkeypatch.setattr(task, "sample", lambda n, **kw: calls.append(n) or sample(n, **kw))
    stream = _batches(task, config, torch.device("cpu"))
    head = [next(stream).tokens for _ in range(3)]
    assert calls == [96]  # three batches from the first chunk, nothing drawn ahead
    per_pool = 250 // 32  # 7 batches: rows 224..249 of each pool are dropped
    served = torch.cat(head + [next(stream).tokens for _ in range(3 * per_pool - 3)])
    generator = torch.Generator().manual_seed(5)
    pools = [torch.cat([task.sample(n, generator=generator).tokens for n in (96, 96, 58)])
             for _ in range(3)]
    assert torch.equal(served, torch.cat([pool[: per_pool * 32] for pool in pools]))


def test_stacked_batches_are_each_members_own_stream():
    """Member k of a stacked stream draws exactly the batches of a single run seeded
    config.seed + k (fresh data and pools), so an ensemble member is a single run."""
    tasks = [mc.InContextTree(mc.CausalGraph.random_forest(7, seed=s), 3, 0.3) for s in range(3)]
    for data in ("fresh", "pool"):
        config = mc.TrainConfig(batch_size=16, data=data, pool_size=64, seed=4)
        stacked = stacked_batches(tasks, config, torch.device("cpu"))
        singles = [task_batches(task, config, 4 + k, torch.device("cpu"))
                   for k, task in enumerate(tasks)]
        for _ in range(6):
            batch = next(stacked)
            assert batch.tokens.shape == (3, 16, 8) and batch.target.shape == (3, 16, 3)
            for k, single in enumerate(singles):
                expected = next(single)
                assert torch.equal(batch.tokens[k], expected.tokens)
                assert torch.equal(batch.target[k], expected.target)


