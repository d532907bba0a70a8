"""Induction scores, the causal induction score, edge patching and OOD evaluation."""

import pytest
import torch

import mechcausal as mc
from mechcausal.diagnostics import (
    causal_induction_score,
    estimator_agreement,
    induction_scores,
    ood_report,
    patch_parents,
)


def _hand_built_induction_model(vocab=50, n_ctx=40, strength=30.0):
    """Layer 1: previous-token head (position block); layer 2: attends to keys whose
    previous token equals the query token (query token block x layer-1 token block)."""
    model = mc.DisentangledTransformer(vocab, n_ctx, heads=(1, 1))
    width = model.cfg.widths[0]
    with torch.no_grad():
        for i in range(1, n_ctx):
            model.blocks[0].attn.A[0, vocab + i, vocab + i - 1] = strength
        model.blocks[1].attn.A[0, :vocab, width : width + vocab] = strength * torch.eye(vocab)
    return model


def test_hand_built_heads_score_high_and_random_low():
    scores = induction_scores(_hand_built_induction_model(), n_batch=32)
    assert scores.previous_token[0, 0] >= 0.9, scores.to_dict()
    assert scores.induction[1, 0] >= 0.9, scores.to_dict()
    assert scores.top_induction_head() == (1, 0)
    random_model = mc.DisentangledTransformer(50, 40, heads=(2, 1), init="normal",
                                              init_scale=0.02, seed=0)
    random_scores = induction_scores(random_model, n_batch=32)
    assert torch.nan_to_num(random_scores.previous_token, nan=0).max() <= 0.2
    assert torch.nan_to_num(random_scores.induction, nan=0).max() <= 0.2
    assert torch.isnan(random_scores.induction[1, 1])  # layer 2 has one head


def test_trained_chain_is_an_induction_circuit(trained_chain):
    model, task, _ = trained_chain
    scores = induction_scores(model, n_batch=64)
    assert scores.top_induction_head() == (1, 0), scores.to_dict()
    causal = causal_induction_score(model, task)
    assert causal.mass >= 0.6, causal.to_dict()  # measured 0.73: finite beta smooths
    agreement = estimator_agreement(model, task)
    assert agreement["kl"] < 0.1, agreement


def test_patching_the_parent_edge_moves_the_output_most(trained_chain):
    model, task, _ = trained_chain
    result = patch_parents(model, task, n_samples=128, positions=[3, 8, 14, 19])
    assert result.parent_dominates, result.to_dict()
    assert (result.kl_parent > 5 * result.kl_nonparent).all(), result.to_dict()


def test_ood_priors_stay_near_the_count_estimator(trained_chain):
    """Trained on Dirichlet(0.1); Dirichlet(1.0) and random permutation chains stay within
    0.1 nats of the count estimator."""
    model, task, _ = trained_chain
    report = ood_report(model, task, n_samples=4096)
    for name in ("dirichlet(1.0)", "permutation"):
        assert report[name].gap < 0.1, report.to_dict()


def test_errors_name_the_values():
    model = _hand_built_induction_model(vocab=5, n_ctx=9)
    with pytest.raises(ValueError, match="seq_len must be even and in 4..9"):
        induction_scores(model, seq_len=10)
    dag = mc.InContextDAG(mc.CausalGraph.two_parent(6), 3)
    with pytest.raises(TypeError, match="InContextTree"):
        causal_induction_score(model, dag)
