"""Every figure function of mechcausal.plots draws something (pixel variance of the
saved PNG), on tiny inputs, and rejects bad input with a clear error."""

import math

import matplotlib.image
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import mechcausal as mc
from mechcausal import plots


def assert_not_blank(fig: Figure, tmp_path, name: str) -> None:
    """Save as PNG, read it back, and require real contrast (a blank canvas has 0)."""
    path = plots.save_figure(fig, tmp_path / f"{name}.png")
    pixels = matplotlib.image.imread(path)[..., :3]
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert float(np.var(pixels)) > 1e-3, f"{name} looks blank"


def _random_model(heads=(1, 1), readout="softmax") -> mc.DisentangledTransformer:
    return mc.DisentangledTransformer(4, 6, heads=heads, init="normal", init_scale=1.0, seed=0,
                                      readout=readout)


def _history(steps: int = 20) -> mc.History:
    return mc.History(train_loss=[2.0 - 0.02 * k for k in range(steps)],
                      eval_step=[0, steps // 2, steps], eval_time=[0.0, 0.1, 0.2],
                      test_loss=[2.0, 1.8, 1.7], parent_attention=[0.1, 0.6, 0.9],
                      bayes_loss=1.6, unigram_loss=2.1)


def test_graph_vs_attention(tmp_path):
    graph = mc.CausalGraph.chain(5)
    attention = torch.softmax(torch.randn(2, 6, 6, generator=torch.Generator().manual_seed(0)), -1)
    assert_not_blank(plots.graph_vs_attention(graph, attention, title="t"), tmp_path, "graph")
    fig = plots.graph_vs_attention(graph, attention[0])
    assert [ax.get_title() for ax in fig.axes[:1]] == ["true causal graph"]
    with pytest.raises(ValueError, match="attention must have 2 or 3 dims"):
        plots.graph_vs_attention(graph, torch.ones(6))
    with pytest.raises(TypeError, match="torch.Tensor"):
        plots.graph_vs_attention(graph, [[1.0]])


@pytest.mark.parametrize("heads", [(1, 1), (2, 1)])
def test_weight_blocks_disentangled(tmp_path, heads):
    model = _random_model(heads)
    fig = plots.weight_blocks(model)
    # one A panel per head plus W, each with a colorbar
    n_panels = sum(heads) + 1
    assert len(fig.axes) == 2 * n_panels
    labels = {t.get_text() for ax in fig.axes for t in ax.get_xticklabels()}
    assert {"tok", "pos", "L0H0.tok", "L0H0.pos"} <= labels
    assert_not_blank(fig, tmp_path, f"weights_{len(heads)}")


def test_weight_blocks_probability_readout_and_reduced(tmp_path):
    fig = plots.weight_blocks(_random_model(readout="probability"))
    assert len(fig.axes) == 4  # two A panels + colorbars, no W
    reduced = mc.ReducedModel(4, 6)
    with torch.no_grad():
        reduced.A1.normal_(generator=torch.Generator().manual_seed(0))
    assert_not_blank(plots.weight_blocks(reduced), tmp_path, "reduced")
    with pytest.raises(TypeError, match="DisentangledTransformer or ReducedModel"):
        plots.weight_blocks(torch.nn.Linear(2, 2))


def test_loss_curves(tmp_path):
    fig = plots.loss_curves(_history(), {"one-NN": 1.9}, title="t")
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(text.startswith("one-NN") for text in legend)
    assert any(text.startswith("count estimator") for text in legend)
    assert_not_blank(fig, tmp_path, "loss")
    staged = plots.loss_curves([_history(), _history()])
    assert any(t.get_text() == "stage 2" for t in staged.axes[0].texts)
    with pytest.raises(TypeError, match="History"):
        plots.loss_curves([])


def test_parent_attention_by_position(tmp_path):
    values = torch.rand(5, 8, generator=torch.Generator().manual_seed(0))
    values[:, 0] = math.nan
    values[1, 3:] = math.nan
    fig = plots.parent_attention_by_position(values, reference=(0.837, 0.054))
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert any("official 0.837" in text for text in legend)
    assert_not_blank(fig, tmp_path, "fig9")


def test_head_patterns(tmp_path):
    graph = mc.CausalGraph.two_parent(7)
    patterns = torch.softmax(torch.randn(2, 6, 6, generator=torch.Generator().manual_seed(0)), -1)
    fig = plots.head_patterns(patterns, graph, slot_mass=torch.tensor([[0.9, 0.1], [0.2, 0.7]]))
    assert "0.90, 0.10" in fig.axes[0].get_title()
    assert_not_blank(fig, tmp_path, "heads")
    with pytest.raises(ValueError, match="3 dims"):
        plots.head_patterns(patterns[0], graph)


def test_gradient_vs_mi(tmp_path):
    task = mc.InContextTree(mc.CausalGraph.chain(5), vocab_size=4)
    report = mc.information_report(task, n_pi=4, n_samples=256)
    fig = plots.gradient_vs_mi(report)
    assert len(fig.axes) == 5  # two heatmaps + colorbars + scatter
    assert_not_blank(fig, tmp_path, "information")


def test_generic_figures(tmp_path):
    grid = torch.tensor([[0.2, math.nan], [0.9, 0.4]])
    assert_not_blank(plots.score_grid({"induction": grid}), tmp_path, "grid")
    assert_not_blank(plots.bar_chart([0.3, 0.8], ideal=1.0), tmp_path, "bars")
    assert_not_blank(plots.paired_lines([1, 2, 3], {"a": [1, 2, 3], "b": [3, 2, 1]}),
                     tmp_path, "lines")
    assert_not_blank(plots.grouped_bars(["x", "y"], {"m": [1, 2], "b": [2, 1]}),
                     tmp_path, "grouped")


def test_style_applies_and_figures_are_pyplot_free():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    fig = plots.bar_chart([1.0])
    assert plt.get_fignums() == before  # nothing left in pyplot's registry
    assert fig.axes[0].title.get_fontsize() == plots.STYLE["axes.titlesize"]
