"""Chi-squared mutual information between positions and the gradient at initialisation."""

import itertools
import json

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

import mechcausal as mc
from mechcausal.diagnostics import information as info
from mechcausal.data.sampling import stationary_distribution

TREES = {
    "chain": mc.CausalGraph.chain(20),
    "icl": mc.CausalGraph.icl_pairs(20),
    "random_tree_0": mc.CausalGraph.random_tree(20, seed=0),
    "random_tree_1": mc.CausalGraph.random_tree(20, seed=1),
}


def _normalised(pi):
    """float64 rows summing to 1, so exact formulas agree to rounding error."""
    pi = pi.to(torch.float64)
    return pi / pi.sum(-1, keepdim=True)


def _brute_force_mi(n_positions, vocab, prob_fn):
    """Chi-squared MI [T, T] (j < i) by summing the law over all S**T sequences."""
    joint = torch.zeros(n_positions, n_positions, vocab, vocab, dtype=torch.float64)
    for seq in itertools.product(range(vocab), repeat=n_positions):
        p = prob_fn(seq)
        for i, j in itertools.product(range(n_positions), repeat=2):
            joint[i, j, seq[i], seq[j]] += p
    marg = joint.sum(-1, keepdim=True) * joint.sum(-2, keepdim=True)
    ratio = torch.where(marg > 0, joint**2 / marg, torch.zeros_like(joint))
    return (ratio.sum((-2, -1)) - 1).tril(-1)


def test_tree_mi_is_exact_against_enumeration():
    """S=3, T=4 with a branch (0 -> 1 -> 3, 0 -> 2), one fixed pi: every pair exact."""
    graph = mc.CausalGraph.from_parents([-1, 0, 0, 1])
    task = mc.InContextTree(graph, vocab_size=3, alpha=0.5)
    pi = _normalised(task.sample_transitions(1, torch.Generator().manual_seed(3)))
    mu = stationary_distribution(pi)[0]
    parent = graph.parent_array().tolist()

    def prob(seq):
        out = 1.0
        for i, p in enumerate(parent):
            out *= mu[seq[i]] if p < 0 else pi[0, seq[p], seq[i]]
        return out

    expected = _brute_force_mi(4, 3, prob)
    got = info.chi2_mi_given_pi(task, pi)[0]
    assert got.shape == (5, 5)
    assert torch.allclose(got[:4, :4], expected, atol=1e-12, rtol=0)
    assert torch.all(got[4] == 0) and torch.all(got[:, 4] == 0)  # the query is independent
    assert torch.all(got.triu() == 0)


def test_dag_elimination_is_exact_against_enumeration():
    graph = mc.CausalGraph([(), (0,), (0, 1), (1, 2), (0, 3), (2, 4)])
    task = mc.InContextDAG(graph, vocab_size=3, alpha=0.3)
    drawn = task.sample(2, generator=torch.Generator().manual_seed(1)).pi
    pi = {k: _normalised(v) for k, v in drawn.items()}
    got = info.chi2_mi_given_pi(task, pi, method="exact")
    for n in range(2):
        def prob(seq, n=n):
            out = 1.0
            for i, ps in enumerate(graph.parents[:5]):
                row = 0
                for p in ps:
                    row = row * 3 + seq[p]
                out *= float(pi[len(ps)][n, row, seq[i]])
            return out

        assert torch.allclose(got[n], _brute_force_mi(5, 3, prob), atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", ["chain", "icl"])
def test_elimination_agrees_with_tree_closed_form(name):
    task = mc.InContextTree(TREES[name], vocab_size=10, alpha=0.1)
    pi = task.sample_transitions(8, torch.Generator().manual_seed(0))
    closed = info.chi2_mi_given_pi(task, pi)
    eliminated = info._eliminate(info._conditionals(task, pi), 10)
    assert torch.allclose(closed[:, :20, :20], eliminated, atol=1e-12, rtol=0)


def test_monte_carlo_close_to_exact_on_two_parent_graph():
    """Measured error of the Monte Carlo estimator where elimination is exact
    (two_parent, T=12, S=5, alpha=0.1, frontier width 4). chi2 MI counts every
    near-deterministic pair of rare symbols fully, and n_mc samples miss symbols of
    probability << 1/n_mc, so the error falls slowly (about 1/sqrt(n_mc)). Measured at
    n_mc=2048 over 128 draws of pi: mean signed error over pairs -0.001, largest
    |error| of a pair's pi-averaged MI 0.056 (values 0.07..1.18)."""
    task = mc.InContextDAG(mc.CausalGraph.two_parent(13), vocab_size=5, alpha=0.1)
    exact = info.chi2_mutual_information(task, n_pi=128, method="exact")
    estimate = info.chi2_mutual_information(task, n_pi=128, method="monte_carlo", n_mc=2048)
    below = torch.ones(12, 12, dtype=torch.bool).tril(-1)
    error = (estimate - exact)[below]
    print(f"MC error: mean {error.mean():+.4f}, max |.| {error.abs().max():.4f}, "
          f"exact range {exact[below].min():.3f}..{exact[below].max():.3f}")
    assert abs(error.mean()) < 0.02
    assert error.abs().max() < 0.15


def test_mi_is_zero_between_components_of_a_forest():
    graph = mc.CausalGraph.random_forest(14, root_prob=0.4, seed=3)
    task = mc.InContextTree(graph, vocab_size=4, alpha=0.1)
    root = list(range(graph.n))
    for i, ps in enumerate(graph.parents):
        root[i] = root[ps[0]] if ps else i
    assert len(set(root)) > 1, "the forest should have several components"
    mi = info.chi2_mutual_information(task, n_pi=64)
    for i, j in itertools.combinations(range(graph.n), 2):
        i, j = max(i, j), min(i, j)
        if root[i] != root[j]:
            assert mi[i, j] == 0.0, (j, i)
        else:
            assert mi[i, j] > 0.0, (j, i)


@pytest.mark.parametrize("name", ["chain", "random_tree_0", "random_tree_1"])
def test_data_processing_inequality_per_pi(name):
    """For every draw of pi: I(x_p(i); x_i) >= I(x_j; x_i) for every earlier j, in
    particular the grandparent."""
    task = mc.InContextTree(TREES[name], vocab_size=10, alpha=0.1)
    mi = info.chi2_mi_given_pi(task, task.sample_transitions(64, torch.Generator().manual_seed(1)))
    parent = TREES[name].parent_array().tolist()
    checked = 0
    for i, p in enumerate(parent):
        if p < 0:
            continue
        assert torch.all(mi[:, i, p : p + 1] >= mi[:, i, :i] - 1e-9), i
        if parent[p] >= 0:
            assert torch.all(mi[:, i, p] >= mi[:, i, parent[p]] - 1e-9)
            checked += 1
    assert checked > 0


@pytest.mark.parametrize("name", list(TREES))
def test_gradient_and_mi_peak_at_the_parent(name, record_property):
    """S=10, T=20, alpha=0.1: per non-root row, argmax over j < i of both -dL/dA1 at
    init (2**14 samples) and of chi2 MI is the parent."""
    graph = TREES[name]
    task = mc.InContextTree(graph, vocab_size=10, alpha=0.1)
    report = info.information_report(task, n_pi=256, n_samples=2**14, beta0=0.1)
    rows = [i for i, ps in enumerate(graph.parents) if ps]
    assert [report.gradient_argmax[i] for i in rows] == [graph.parents[i][0] for i in rows]
    assert [report.mi_argmax[i] for i in rows] == [graph.parents[i][0] for i in rows]
    assert report.gradient_agreement == 1.0 and report.mi_agreement == 1.0
    assert -1.0 <= report.mean_spearman <= 1.0
    record_property("mean_spearman", report.mean_spearman)
    print(f"{name}: mean Spearman(gradient, MI) = {report.mean_spearman:.3f}")


def test_two_parent_dag_argmax_is_a_parent():
    task = mc.InContextDAG(mc.CausalGraph.two_parent(13), vocab_size=5, alpha=0.1)
    report = info.information_report(task, n_pi=128, n_samples=2**13)
    assert report.mi_agreement == 1.0 and report.gradient_agreement == 1.0
    print(f"two_parent T=12: mean Spearman = {report.mean_spearman:.3f}")


def test_disentangled_gradient_equals_reduced():
    task = mc.InContextTree(mc.CausalGraph.random_tree(7, seed=2), vocab_size=4, alpha=0.3)
    reduced = info.gradient_at_init(task, "reduced", n_samples=300, chunk=128, seed=5)
    twin = info.gradient_at_init(task, "disentangled", n_samples=300, chunk=128, seed=5)
    assert reduced.shape == (8, 8)
    assert torch.allclose(reduced, twin, atol=1e-12, rtol=0)
    assert torch.all(reduced.triu(1) == 0)  # the causal mask: no gradient above the diagonal
    assert reduced.abs().max() > 0


def test_spearman_with_ties():
    assert info.average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [2.5, 0.0, 2.5, 1.0]
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    assert info.spearman(x, x**3) == pytest.approx(1.0)
    assert info.spearman(x, -x) == pytest.approx(-1.0)
    # ranks x = 0..4, y = [0, 1.5, 1.5, 4, 3]: Pearson of those by hand
    y = torch.tensor([1.0, 2.0, 2.0, 9.0, 5.0])
    rx = torch.arange(5.0) - 2
    ry = torch.tensor([0, 1.5, 1.5, 4, 3]) - 2
    assert info.spearman(x, y) == pytest.approx((rx @ ry / (rx.norm() * ry.norm())).item())
    assert torch.isnan(torch.tensor(info.spearman(x, torch.ones(5))))


def test_report_to_dict_and_plot():
    task = mc.InContextTree(mc.CausalGraph.chain(6), vocab_size=4, alpha=0.1)
    report = info.information_report(task, n_pi=16, n_samples=256)
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert len(data["mutual_information"]) == 7 and data["mi_agreement"] == 1.0
    fig = report.plot()
    heatmaps = [ax for ax in fig.axes if ax.get_xlabel() == "key position j"]
    assert len(heatmaps) == 2 and len(fig.axes) == 5  # two heatmaps, two colorbars, a scatter
    assert all(ax.get_ylabel() == "query position i" for ax in heatmaps)


def test_bad_arguments():
    tree = mc.InContextTree(mc.CausalGraph.chain(5), vocab_size=3)
    with pytest.raises(ValueError, match="method"):
        info.chi2_mutual_information(tree, method="sampling")
    with pytest.raises(ValueError, match="n_pi"):
        info.chi2_mutual_information(tree, n_pi=0)
    with pytest.raises(ValueError, match="model"):
        info.gradient_at_init(tree, model="gpt2")
    with pytest.raises(ValueError, match="pi must be a tensor"):
        info.chi2_mi_given_pi(tree, torch.ones(2, 4, 4) / 4)
    with pytest.raises(TypeError, match="task"):
        info.chi2_mutual_information("chain")
    dag = mc.InContextDAG(mc.CausalGraph.two_parent(13), vocab_size=5)
    with pytest.raises(ValueError, match="max_states"):
        info.chi2_mutual_information(dag, n_pi=2, method="exact", max_states=100)
