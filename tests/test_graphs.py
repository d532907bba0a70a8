"""CausalGraph: constructors, properties, serialisation, validation."""

import math

import pytest
import torch

import mechcausal as mc


def test_chain_icl_markov_two_parent_parents():
    assert mc.CausalGraph.chain(4).parents == ((), (0,), (1,), (2,))
    assert mc.CausalGraph.icl_pairs(5).parents == ((), (0,), (), (2,), ())
    assert mc.CausalGraph.markov(4, order=2).parents == ((), (0,), (0, 1), (1, 2))
    assert mc.CausalGraph.two_parent(6).parents == ((), (0,), (0, 1), (1, 2), (1, 3), (2, 4))


def test_from_parents_accepts_ints_and_lists():
    g = mc.CausalGraph.from_parents([-1, 0, [0, 1], 1])
    assert g.parents == ((), (0,), (0, 1), (1,))
    assert g.roots == (0,)
    assert g.max_parents == 2 and not g.is_tree
    assert mc.CausalGraph.from_parents([-1, 0, 0]).is_tree


def test_adjacency_rows_are_children():
    g = mc.CausalGraph.from_parents([-1, 0, [0, 1]])
    expected = torch.tensor([[0, 0, 0], [1, 0, 0], [1, 1, 0]], dtype=torch.float32)
    assert torch.equal(g.adjacency(), expected)
    assert g.edges == ((0, 1), (0, 2), (1, 2))


def test_equality_hash_dict_roundtrip_and_repr():
    g = mc.CausalGraph.random_tree(15, seed=3)
    again = mc.CausalGraph.from_dict(g.to_dict())
    assert again == g and hash(again) == hash(g)
    assert g != mc.CausalGraph.chain(15)
    assert "CausalGraph(0:root, 1<-0" in repr(mc.CausalGraph.chain(3))


def test_random_constructors_are_seeded():
    assert mc.CausalGraph.random_tree(30, seed=1) == mc.CausalGraph.random_tree(30, seed=1)
    assert mc.CausalGraph.random_tree(30, seed=1) != mc.CausalGraph.random_tree(30, seed=2)
    assert mc.CausalGraph.random_forest(30, seed=4) == mc.CausalGraph.random_forest(30, seed=4)


def test_random_tree_parent_law_is_uniform_on_root_and_earlier():
    """Position 4 has 5 outcomes {root, 0..3}: each frequency within 5 sigma of 1/5."""
    n_graphs = 4000
    counts = [0] * 5
    for seed in range(n_graphs):
        ps = mc.CausalGraph.random_tree(5, seed=seed).parents[4]
        counts[ps[0] + 1 if ps else 0] += 1
    sigma = math.sqrt(0.2 * 0.8 / n_graphs)
    for c in counts:
        assert abs(c / n_graphs - 0.2) < 5 * sigma


def test_random_forest_root_fraction():
    """Non-initial positions are roots with probability root_prob (5 sigma bound)."""
    n_graphs, n = 400, 20
    roots = sum(len(mc.CausalGraph.random_forest(n, 0.3, seed=s).roots) - 1 for s in range(n_graphs))
    trials = n_graphs * (n - 1)
    assert abs(roots / trials - 0.3) < 5 * math.sqrt(0.3 * 0.7 / trials)
    assert mc.CausalGraph.random_forest(n, 0.0, seed=0).roots == (0,)


@pytest.mark.parametrize(
    "parents, message",
    [
        ([(), (1,)], "position 1 has parent 1"),
        ([(), (), (3,)], "position 2 has parent 3"),
        ([(), (-2,)], "negative parent -2"),
        ([(), (0,), (0, 0)], "duplicate parents (0, 0)"),
    ],
)
def test_invalid_parents_name_position_and_value(parents, message):
    with pytest.raises(ValueError) as err:
        mc.CausalGraph(parents)
    assert message in str(err.value)


def test_wrong_types_are_rejected():
    with pytest.raises(TypeError, match="position 1"):
        mc.CausalGraph([(), 0])
    with pytest.raises(TypeError, match="0.5"):
        mc.CausalGraph([(), (0.5,)])
    with pytest.raises(ValueError, match="-3"):
        mc.CausalGraph.from_parents([-1, -3])
    with pytest.raises(ValueError, match="got 0"):
        mc.CausalGraph.chain(0)
    with pytest.raises(ValueError, match="root_prob"):
        mc.CausalGraph.random_forest(5, root_prob=1.5)
    with pytest.raises(ValueError, match="at least one position"):
        mc.CausalGraph([])


def test_parent_array_only_for_trees():
    assert mc.CausalGraph.chain(3).parent_array().tolist() == [-1, 0, 1]
    with pytest.raises(ValueError, match="max_parents=2"):
        mc.CausalGraph.two_parent(4).parent_array()
