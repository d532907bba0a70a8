"""Induction scores, the causal induction score, edge patching and OOD evaluation."""

import json

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
    assert scores.score(0, 0, "previous_token") >= 0.9, scores.to_dict()
    assert scores.score(1, 0, "induction") >= 0.9, scores.to_dict()
    assert scores.top(1) == [(1, 0)] and scores.top(1, "previous_token") == [(0, 0)]
    random_model = mc.DisentangledTransformer(50, 40, heads=(2, 1), init="normal",
                                              init_scale=0.02, seed=0)
    random_scores = induction_scores(random_model, n_batch=32)
    assert max(row["previous_token"] for row in random_scores.rows) <= 0.2
    assert max(row["induction"] for row in random_scores.rows) <= 0.2
    # layer 1 has one head: no row stands for the missing one, nothing is NaN
    assert [(row["layer"], row["head"]) for row in random_scores.rows] == [(0, 0), (0, 1), (1, 0)]
    with pytest.raises(KeyError, match="L1H1"):
        random_scores.score(1, 1)
    assert "NaN" not in json.dumps(random_scores.to_dict())


@pytest.mark.tl  # the circuit is read through the TransformerLens export
def test_hand_built_circuit_is_found_and_patching_its_path_removes_the_induction():
    """The previous-token head L0H0 feeds the induction head L1H0 through its keys:
    patching that path alone removes nearly all of the induction attention."""
    circuit = mc.induction_circuit(_hand_built_induction_model())
    (writer, reader), = circuit.top(1)
    assert (writer, reader) == ((0, 0), (1, 0)), circuit.to_dict()
    row = circuit.rows[0]
    assert row["attention_clean"] >= 0.9 and row["removed"] >= 0.9, row


@pytest.mark.tl  # the circuit is read through the TransformerLens export
def test_trained_chain_is_an_induction_circuit(trained_chain):
    model, task, _ = trained_chain
    scores = induction_scores(model, n_batch=64)
    assert scores.top(1) == [(1, 0)], scores.to_dict()
    causal = causal_induction_score(model, task)
    assert causal.mass >= 0.6, causal.to_dict()  # measured 0.73: finite beta smooths
    assert causal.heads == [(1, 0)]
    agreement = estimator_agreement(model, task)
    assert agreement["kl"] < 0.1, agreement
    # the paper's circuit: the layer-1 parent head feeds the layer-2 head's keys
    circuit = mc.induction_circuit(model, task, n_sequences=128)
    assert circuit.top(1) == [((0, 0), (1, 0))], circuit.to_dict()
    row = circuit.rows[0]
    assert row["removed"] >= 0.5 and row["loss_patched"] > row["loss_clean"] + 0.1, row


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
