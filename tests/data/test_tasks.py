"""The in-context tasks: sampling law, targets, estimators, errors."""

import math

import pytest
import torch

import mechcausal as mc

N = 20_000
# mean of n terms 1(x=b) - P(x=b | past), each in [-1, 1] with variance <= 1/4: 5 sigma
BOUND = 5 * 0.5 / math.sqrt(N)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    "graph",
    [mc.CausalGraph.chain(8), mc.CausalGraph.icl_pairs(8), mc.CausalGraph.random_tree(8, seed=1)],
)
def test_tree_sampling_law(graph):
    task = mc.InContextTree(graph, vocab_size=4, alpha=0.5)
    batch = task.sample(N, generator=_gen())
    pi, tokens = batch.pi.double(), batch.tokens
    mu = mc.data.stationary_distribution(pi)
    rows = torch.arange(N)
    for i, parents in enumerate(graph.parents):
        law = mu if not parents else pi[rows, tokens[:, parents[0]]]
        residual = torch.nn.functional.one_hot(tokens[:, i], 4).double() - law
        assert residual.mean(0).abs().max() < BOUND, f"position {i}"
    # query uniform, target = pi[query]
    query = tokens[:, -1]
    assert (torch.bincount(query, minlength=4).double() / N - 0.25).abs().max() < BOUND
    assert torch.equal(batch.target, batch.pi[rows, query])
    assert torch.allclose(batch.target.sum(-1), torch.ones(N))


def test_dag_sampling_law_and_target():
    graph = mc.CausalGraph.two_parent(9)
    task = mc.InContextDAG(graph, vocab_size=3, alpha=0.5)
    batch = task.sample(N, generator=_gen(1))
    assert batch.tokens.shape == (N, 8) and set(batch.pi) == {0, 1, 2}
    assert batch.pi[2].shape == (N, 9, 3)
    rows = torch.arange(N)
    for i, parents in enumerate(graph.parents[:8]):
        law = batch.pi[len(parents)][rows, task._row_index(batch.tokens, parents)]
        residual = torch.nn.functional.one_hot(batch.tokens[:, i], 3).float() - law
        assert residual.mean(0).abs().max() < BOUND, f"position {i}"
    a, b = graph.parents[-1]
    expected = batch.pi[2][rows, batch.tokens[:, a] * 3 + batch.tokens[:, b]]
    assert torch.equal(batch.target, expected)


def _brute_force_tree(task, tokens, official):
    T, S = task.context_length, task.vocab_size
    out = torch.zeros(tokens.shape[0], S)
    for n, seq in enumerate(tokens.tolist()):
        counts = [0] * S
        for i, parents in enumerate(task.graph.parents):
            parent = parents[0] if parents else (T - 1 if official else None)
            if parent is not None and seq[parent] == seq[T]:
                counts[seq[i]] += 1
        total = sum(counts)
        out[n] = torch.tensor([(task.alpha + c) / (S * task.alpha + total) for c in counts])
    return out


@pytest.mark.parametrize("official", [False, True])
def test_tree_count_estimator_matches_recount(official):
    task = mc.InContextTree(mc.CausalGraph.random_tree(12, seed=5), vocab_size=3, alpha=0.1)
    tokens = task.sample(200, generator=_gen(2)).tokens
    fast = task.bayes(tokens, official_root_indexing=official)
    assert torch.allclose(fast, _brute_force_tree(task, tokens, official), atol=1e-6)


def _brute_force_dag(task, tokens, last_only):
    S = task.vocab_size
    target_parents = task.graph.parents[-1]
    key_t = target_parents[-1:] if last_only else target_parents
    out = torch.zeros(tokens.shape[0], S)
    for n, seq in enumerate(tokens.tolist()):
        counts = [0] * S
        for i, parents in enumerate(task.graph.parents[:-1]):
            key = parents[-1:] if last_only else parents
            if last_only and not parents:
                continue
            if len(key) == len(key_t) and [seq[p] for p in key] == [seq[p] for p in key_t]:
                counts[seq[i]] += 1
        total = sum(counts)
        out[n] = torch.tensor([(task.alpha + c) / (S * task.alpha + total) for c in counts])
    return out


def test_dag_estimators_match_recount():
    task = mc.InContextDAG(mc.CausalGraph.two_parent(15), vocab_size=3, alpha=0.1)
    tokens = task.sample(200, generator=_gen(3)).tokens
    assert torch.allclose(task.bayes(tokens), _brute_force_dag(task, tokens, False), atol=1e-6)
    assert torch.allclose(task.one_nn(tokens), _brute_force_dag(task, tokens, True), atol=1e-6)


def test_estimator_losses_order():
    """Count estimator beats unigram and uniform; on the DAG it beats one-NN too."""
    tree = mc.InContextTree(mc.CausalGraph.chain(20), 10, 0.1).estimator_losses(8192)
    assert tree["bayes"] < tree["uniform"] - 0.3 and tree["bayes"] < tree["unigram"]
    dag = mc.InContextDAG(mc.CausalGraph.two_parent(33), 5, 0.1).estimator_losses(8192)
    assert dag["bayes"] < dag["one_nn"] - 0.2 < dag["uniform"]


def test_official_root_indexing_costs_a_little():
    """PAPER.md: counting roots as transitions out of x_{T-1} inflates the loss by
    about 0.01-0.03 nats at S=10, T=20 (here the icl graph, half roots)."""
    task = mc.InContextTree(mc.CausalGraph.icl_pairs(20), 10, 0.1)
    ours = task.bayes_loss(2**14, seed=0)
    official = task.bayes_loss(2**14, seed=0, official_root_indexing=True)
    assert 0.0 < official - ours < 0.1


def test_sampling_is_reproducible_and_sizes():
    task = mc.InContextTree(mc.CausalGraph.chain(6), 5, 0.1)
    a, b = task.sample(64, generator=_gen(9)), task.sample(64, generator=_gen(9))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.pi, b.pi)
    assert task.input_length == 7 and task.context_length == 6
    assert a.tokens.dtype == torch.long and a.tokens.shape == (64, 7)
    assert mc.task_from_dict(task.to_dict()) == task


def test_task_errors_name_values():
    chain = mc.CausalGraph.chain(5)
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            mc.InContextTree(chain, 4, bad)
    with pytest.raises(ValueError, match="vocab_size must be >= 2, got 1"):
        mc.InContextTree(chain, 1)
    with pytest.raises(ValueError, match="max_parents=2"):
        mc.InContextTree(mc.CausalGraph.two_parent(5), 4)
    task = mc.InContextTree(chain, 4)
    with pytest.raises(ValueError, match="contains 4, outside the vocabulary"):
        task.bayes(torch.tensor([[0, 1, 2, 3, 4, 0]]))
    with pytest.raises(ValueError, match=r"shape \[n, 6\]"):
        task.bayes(torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="n must be a positive int"):
        task.sample(0)


def test_batch_split_keeps_samples_in_order():
    tree = mc.InContextTree(mc.CausalGraph.chain(6), vocab_size=4)
    batch = tree.sample(10, generator=torch.Generator().manual_seed(0))
    parts = batch.split(4)
    assert [len(p) for p in parts] == [4, 4, 2]
    assert torch.equal(torch.cat([p.tokens for p in parts]), batch.tokens)
    assert torch.equal(torch.cat([p.pi for p in parts]), batch.pi)
    dag = mc.InContextDAG(mc.CausalGraph.from_parents([[], [0], [0, 1]]), vocab_size=3)
    dag_batch = dag.sample(5, generator=torch.Generator().manual_seed(0))
    dag_parts = dag_batch.split(3)
    for k, pi in dag_batch.pi.items():
        assert torch.equal(torch.cat([p.pi[k] for p in dag_parts]), pi)
    with pytest.raises(ValueError, match="size"):
        batch.split(0)


@pytest.mark.parametrize("bos", [None, 7])
def test_a_task_in_an_lm_vocabulary_maps_tokens_positions_and_estimators(bos):
    tree = mc.InContextTree(mc.CausalGraph.random_tree(8, seed=2), vocab_size=4, alpha=0.1)
    ids = [30, 10, 40, 20]
    view = tree.in_vocabulary(ids, bos_token_id=bos)
    offset = 0 if bos is None else 1
    assert view.input_length == tree.input_length + offset and view.position_offset == offset
    assert view.model_vocab_size == 41 and view.kind == "tree" and view.base is tree
    ours = view.sample(64, generator=torch.Generator().manual_seed(3))
    base = tree.sample(64, generator=torch.Generator().manual_seed(3))
    assert torch.equal(view.symbols(ours.tokens), base.tokens)  # the same draws, rewritten
    assert torch.equal(ours.tokens[:, offset:], torch.tensor(ids)[base.tokens])
    if bos is not None:
        assert bool((ours.tokens[:, 0] == bos).all())
    assert torch.equal(ours.target, base.target)
    for estimator in ("bayes", "unigram", "uniform"):
        assert torch.equal(getattr(view, estimator)(ours.tokens), getattr(tree, estimator)(base.tokens))
    logits = torch.randn(5, 50)
    assert torch.equal(view.answer_logits(logits), logits[:, ids])
    assert mc.task_from_dict(view.to_dict()) == view
    assert view.with_prior(mc.DirichletPrior(1.0)).base.prior == mc.DirichletPrior(1.0)
    with pytest.raises(ValueError, match="not one of the task's token ids"):
        view.symbols(torch.full((1, view.input_length), bos if bos is not None else 11))


def test_in_vocabulary_rejects_bad_ids():
    task = mc.InContextTree(mc.CausalGraph.chain(5), vocab_size=3)
    with pytest.raises(ValueError, match="token_ids must be 3 distinct ints"):
        task.in_vocabulary([1, 1, 2])
    with pytest.raises(ValueError, match="token_ids must be 3 distinct ints"):
        task.in_vocabulary([1, 2])
    with pytest.raises(ValueError, match="bos_token_id must be an int >= 0 that is not one"):
        task.in_vocabulary([1, 2, 3], bos_token_id=2)
    with pytest.raises(TypeError, match="token_ids must be a sequence"):
        task.in_vocabulary("abc")
    dag = mc.InContextDAG(mc.CausalGraph.two_parent(9), vocab_size=3).in_vocabulary([5, 6, 7])
    batch = dag.sample(16, generator=torch.Generator().manual_seed(0))
    assert dag.kind == "dag" and torch.equal(
        dag.one_nn(batch.tokens), dag.base.one_nn(dag.symbols(batch.tokens)))
