"""Graph extraction from layer-1 attention, its comparison metrics, and head splitting."""

import json

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

import mechcausal as mc
from mechcausal.diagnostics.graph import GraphEstimate, extract_graph, parents_from_weights
from mechcausal.diagnostics.heads import best_matching, head_split

GRAPHS = ("chain", "icl", "random")  # the quick-trained models of conftest.py


@pytest.fixture(scope="module")
def trained(quick_trained):
    """name -> (model, task) of the session's quick-trained models (S=10, T=20)."""
    return {name: quick_trained(name)[:2] for name in GRAPHS}


def _two_parent_model(T=16, S=5, slots=(0, 1), logit=30.0):
    """Heads (2, 1) for two_parent(T + 1); head h attends to parent slot ``slots[h]``
    (slot 0 = floor((i-1)/2), slot 1 = i-1) through the layer-1 position block."""
    task = mc.InContextDAG(mc.CausalGraph.two_parent(T + 1), vocab_size=S, alpha=0.1)
    model = mc.DisentangledTransformer.for_task(task, heads=(2, 1))
    with torch.no_grad():
        for head, slot in enumerate(slots):
            for i in range(1, T):
                parent = (i - 1) // 2 if slot == 0 else i - 1
                model.blocks[0].attn.A[head, S + i, S + parent] = logit
    return model, task


@pytest.mark.parametrize("name", list(GRAPHS))
def test_extract_graph_recovers_every_parent(trained, name):
    model, task = trained[name]
    estimate = extract_graph(model, task)
    result = estimate.compare(task.graph)
    print(f"{name}: parent acc {result.parent_accuracy}, precision {result.precision:.3f}, "
          f"recall {result.recall:.3f}, F1 {result.f1:.3f}, SHD {result.shd}, "
          f"parent attention {result.parent_attention:.3f}")
    assert result.parent_accuracy == 1.0
    assert result.recall == 1.0
    assert result.parent_attention > 0.9
    assert len(estimate.parents) == 20 and estimate.weights.shape == (21, 21)
    with_k = extract_graph(model, task, k=1).compare(task.graph)
    assert with_k.parent_accuracy == 1.0


def test_extract_graph_on_a_transformer_lens_export(trained):
    model, task = trained["chain"]
    ours = extract_graph(model, task, n_samples=512)
    theirs = extract_graph(mc.to_transformer_lens(model), task, n_samples=512)
    assert torch.allclose(ours.weights, theirs.weights, atol=1e-5)
    assert theirs.parents == ours.parents == task.graph.parents
    # the exported model has learned-embedding-style weights: no position block to read
    assert ours.compare(task.graph).position_parent_attention is not None
    assert theirs.compare(task.graph).position_parent_attention is None


def _official_statistic(model, graph):
    """The official notebook's Figure 9 number for one model, written out directly:
    A[0][0][S:, S:], causal mask, row softmax, mean of [i, p(i)] over the edges."""
    S = model.cfg.d_vocab
    block = model.A(0, 0)[S:, S:].detach()
    n = block.shape[0]
    masked = torch.where(torch.ones(n, n).tril().bool(), block, torch.tensor(float("-inf")))
    soft = torch.softmax(masked, dim=1)
    return torch.stack([soft[i, p] for p, i in graph.edges]).mean().item()


def test_position_attention_is_the_official_statistic(trained):
    model, task = trained["random"]
    matrix = mc.position_attention(model)
    n = task.input_length
    assert matrix.shape == (n, n)
    assert torch.allclose(matrix.sum(1), torch.ones(n), atol=1e-6)
    assert (matrix.triu(1) == 0).all()
    comparison = extract_graph(model, task, n_samples=512).compare(task.graph)
    assert comparison.position_parent_attention == pytest.approx(
        _official_statistic(model, task.graph), abs=1e-6)
    # two different quantities: a trained model pays its parent attention through the
    # position block, so both are high, but they are not equal
    assert comparison.position_parent_attention > 0.8 and comparison.parent_attention > 0.9
    assert comparison.position_parent_attention != pytest.approx(comparison.parent_attention,
                                                                 abs=1e-4)
    assert "position_parent_attention" in comparison.to_dict()


def test_position_attention_at_zero_init_is_uniform_over_earlier_positions():
    task = mc.make_task("chain")
    model = mc.DisentangledTransformer.for_task(task)
    matrix = mc.position_attention(model)
    expected = torch.ones(task.input_length, task.input_length).tril()
    assert torch.allclose(matrix, expected / expected.sum(1, keepdim=True))
    # mean over the chain's edges of 1 / (i + 1): the official trajectory's step-0 value
    comparison = extract_graph(model, task, n_samples=64).compare(task.graph)
    assert comparison.position_parent_attention == pytest.approx(0.14154, abs=1e-5)


def test_position_attention_of_the_reduced_model_and_its_disentangled_twin():
    task = mc.make_task("random", seq_len=8)
    reduced = mc.ReducedModel.for_task(task, beta0=1.0)
    with torch.no_grad():
        reduced.A1.copy_(torch.randn(reduced.A1.shape, generator=torch.Generator().manual_seed(0)))
    expected = torch.softmax(reduced.A1.detach().masked_fill(
        ~torch.ones(9, 9, dtype=torch.bool).tril(), float("-inf")), dim=-1)
    assert torch.allclose(mc.position_attention(reduced), expected, atol=1e-6)
    assert torch.allclose(mc.position_attention(reduced.to_disentangled()), expected, atol=1e-6)
    with pytest.raises(ValueError, match="layer must be 0"):
        mc.position_attention(reduced, layer=1)


def test_position_attention_refuses_models_without_a_position_block():
    with pytest.raises(TypeError, match="position -> position block.*Linear"):
        mc.position_attention(torch.nn.Linear(2, 2))
    model = mc.DisentangledTransformer.for_task(mc.make_task("chain"), heads=(2, 1))
    assert mc.position_attention(model, head=None).shape == (2, 20, 20)
    with pytest.raises(ValueError, match="head must be in 0..1"):
        mc.position_attention(model, head=2)
    with pytest.raises(ValueError, match="layer must be in 0..1"):
        mc.position_attention(model, layer=2)


def test_extract_graph_multi_parent_sums_heads():
    model, task = _two_parent_model()
    estimate = extract_graph(model, task, n_samples=256)
    assert estimate.graph == mc.CausalGraph(task.graph.parents[:16])
    result = estimate.compare(task.graph)  # T + 1 nodes: the target node is ignored
    assert (result.parent_accuracy, result.f1, result.shd) == (1.0, 1.0, 0)
    assert result.parent_attention == pytest.approx(1.0, abs=1e-6)
    data = json.loads(json.dumps(estimate.to_dict(), allow_nan=False))
    assert data["parents"][2] == [0, 1] and len(data["patterns"]) == 2
    fig = estimate.plot()
    assert fig.axes[0].get_ylabel() == "query position i" and len(fig.axes) == 2


def test_compare_metrics_on_a_known_wrong_graph():
    """True chain 0->1->2->3->4; estimate edges 0->1, 0->2, 2->3, 4 a root.
    TP = 2 {0->1, 2->3}, FP = 1 {0->2}, FN = 2 {1->2, 3->4}."""
    patterns = torch.zeros(1, 5, 5)
    patterns[0, 0, 0] = 1.0
    for child, parent in [(1, 0), (2, 0), (3, 2)]:
        patterns[0, child, parent], patterns[0, child, child] = 0.7, 0.3
    patterns[0, 4] = 0.2
    estimate = GraphEstimate(weights=patterns[0], patterns=patterns,
                             parents=((), (0,), (0,), (2,), ()), layer=0, combine="sum",
                             threshold=0.5, k=None)
    result = estimate.compare(mc.CausalGraph.chain(5))
    assert result.precision == pytest.approx(2 / 3)
    assert result.recall == pytest.approx(2 / 4)
    assert result.f1 == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))
    assert result.shd == 3
    assert result.parent_accuracy == pytest.approx(2 / 4)  # positions 1 and 3 of 1..4
    assert result.root_accuracy == 1.0
    # best-head attention on true edges: 0.7 (1<-0), 0 (2<-1), 0.7 (3<-2), 0.2 (4<-3)
    assert result.parent_attention == pytest.approx((0.7 + 0.0 + 0.7 + 0.2) / 4)
    row = result.table[2]
    assert row == {"position": 2, "true_parents": [1], "estimated_parents": [0],
                   "correct": False, "attention_on_true_parents": [0.0], "top_key": 0,
                   "top_weight": pytest.approx(0.7)}
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["shd"] == 3
    fig = result.plot()
    assert fig.axes[0].get_xlabel() == "key position j" and len(fig.axes) == 2


def test_parent_rule_threshold_roots_and_k():
    weights = torch.tensor([
        [1.0, 0.0, 0.0, 0.0],
        [0.9, 0.1, 0.0, 0.0],
        [0.3, 0.3, 0.4, 0.0],  # no earlier key reaches 0.5: a root
        [0.1, 0.5, 0.3, 0.1],
    ])
    assert parents_from_weights(weights, 4) == ((), (0,), (), (1,))
    assert parents_from_weights(weights, 4, k=2) == ((), (0,), (), (1, 2))
    assert parents_from_weights(weights, 4, threshold=0.25) == ((), (0,), (0, 1), (1, 2))


def test_head_split_on_a_hand_built_two_parent_model():
    model, task = _two_parent_model()
    split = head_split(model, task, n_samples=256)
    print(f"head_split: mass {split.mass.tolist()}, score {split.split_score:.4f}")
    assert split.mass.shape == (2, 2)
    assert split.mass[0, 0] >= 0.8 and split.mass[1, 1] >= 0.8
    assert split.assignment == (0, 1) and split.matching == (0, 1)
    assert split.coverage
    assert split.split_score == pytest.approx(1.0, abs=1e-3)
    assert split.n_positions == 14  # positions 2..15; pa(1) = {0} has one parent
    data = json.loads(json.dumps(split.to_dict(), allow_nan=False))
    assert data["coverage"] is True
    fig = split.plot()
    assert fig.axes[0].get_ylabel() == "head" and len(fig.axes) == 2


def test_trained_two_parent_heads_split_the_parents():
    """Figure 5: with heads (2, 1), training gives each parent slot its own layer-1 head.
    Measured with this seed: masses 0.907 / 0.870 (model and data seeds 1-3: 0.87-0.92);
    ~30 s."""
    task = mc.InContextDAG(mc.CausalGraph.two_parent(17), vocab_size=5, alpha=0.1)
    model = mc.DisentangledTransformer.for_task(task, heads=(2, 1), init="normal",
                                                init_scale=1e-4, seed=0)
    history = mc.train(model, task, mc.TrainConfig.quick("two_parent", progress=False,
                                                         eval_samples=512))
    split = head_split(model, task, n_samples=2048, seed=1)
    own = [split.mass[head, slot].item() for slot, head in enumerate(split.matching)]
    print(f"trained two-parent split: mass {split.mass.tolist()}, own {own}, "
          f"loss {history.final['test_loss']:.4f}")
    assert split.coverage and sorted(split.assignment) == [0, 1]
    assert min(own) >= 0.8


def test_head_split_both_heads_on_one_slot():
    model, task = _two_parent_model(slots=(1, 1))
    split = head_split(model, task, n_samples=256)
    assert split.assignment == (1, 1)
    assert not split.coverage
    assert split.split_score == pytest.approx(0.5, abs=1e-3)


def test_best_matching_with_fewer_heads_than_slots():
    matching, total = best_matching(torch.tensor([[0.2, 0.7, 0.1]]))
    assert matching == (None, 0, None) and total == pytest.approx(0.7)
    matching, total = best_matching(torch.tensor([[0.6, 0.5], [0.9, 0.1], [0.0, 0.2]]))
    assert matching == (1, 0) and total == pytest.approx(1.4)


def test_bad_arguments(trained):
    model, task = trained["chain"]
    with pytest.raises(ValueError, match="max_parents=1"):
        head_split(model, task)
    with pytest.raises(ValueError, match="layer"):
        extract_graph(model, task, layer=2)
    with pytest.raises(ValueError, match="k must"):
        extract_graph(model, task, k=0)
    with pytest.raises(ValueError, match="threshold"):
        extract_graph(model, task, threshold=0.0)
    with pytest.raises(ValueError, match="combine"):
        extract_graph(model, task, combine="median")
    with pytest.raises(ValueError, match="n_ctx"):
        extract_graph(model, mc.InContextTree(mc.CausalGraph.chain(30), vocab_size=10))
    estimate = extract_graph(model, task, n_samples=64)
    with pytest.raises(ValueError, match="n=5 nodes"):
        estimate.compare(mc.CausalGraph.chain(5))
