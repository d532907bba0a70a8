"""The mistakes users reported, one by one: each is refused early with an error that
names the argument (the classes they belong to are fuzzed in test_bad_inputs.py)."""

from types import SimpleNamespace

import pytest
import torch

import mechcausal as mc

TASK = mc.make_task("chain", seq_len=6, vocab_size=4)
MODEL = mc.DisentangledTransformer.for_task(TASK)

REFUSED = [
    # silent before: a result from an argument that means nothing
    (lambda: mc.induction_scores(MODEL, n_batch=0), ValueError, "n_batch"),
    (lambda: mc.induction_scores(MODEL, seq_len=0), ValueError, "seq_len"),
    (lambda: mc.patch_parents(MODEL, TASK, positions=[]), ValueError, "positions"),
    (lambda: MODEL.block_slices(-1), ValueError, "layer"),
    (lambda: mc.DisentangledTransformer(4, 7, init="normal", init_scale=float("inf")),
     ValueError, "init_scale"),
    (lambda: mc.ReducedModel(4, 7, beta0=float("nan")), ValueError, "beta0"),
    (lambda: mc.TrainConfig(adam_eps=float("inf")), ValueError, "adam_eps"),
    (lambda: mc.Ensemble([mc.ReducedModel(4, 7)]), TypeError, "members"),
    # unclear before: a raw error from deep inside
    (lambda: mc.CausalGraph(None), TypeError, "parents"),
    (lambda: mc.CausalGraph.random_forest(8, root_prob="x"), TypeError, "root_prob"),
    (lambda: mc.DirichletPrior("a"), TypeError, "alpha"),
    (lambda: mc.PermutationPrior("x"), TypeError, "noise"),
    (lambda: TASK.with_prior("x"), TypeError, "prior"),
    (lambda: TASK.sample(4, generator="x"), TypeError, "generator"),
    (lambda: mc.sample_stacked([], 4), ValueError, "tasks"),
    (lambda: mc.task_from_dict({}), ValueError, "kind"),
    (lambda: mc.DisentangledTransformer(4, 7, heads=2), ValueError, "heads"),
    (lambda: mc.DisentangledTransformer(4, 7, dtype="int8"), ValueError, "dtype"),
    (lambda: mc.DisentangledTransformer(4, 7, seed=1.5), TypeError, "seed"),
    (lambda: mc.TrainConfig(lr="0.1"), TypeError, "lr"),
    (lambda: mc.TrainConfig(seed="a"), TypeError, "seed"),
    (lambda: mc.TrainConfig(device="gpu"), ValueError, "device"),
    (lambda: mc.train(MODEL, TASK, mc.TrainConfig(layer=5, steps=1)), ValueError, "layer"),
    (lambda: mc.train(MODEL, None, mc.TrainConfig(steps=1)), TypeError, "task"),
    (lambda: mc.train(MODEL, TASK, {"steps": 5}), TypeError, "config"),
    (lambda: mc.causal_induction_score(MODEL, TASK, layer=5), ValueError, "layer"),
    (lambda: mc.patch_parents(MODEL, TASK, layer=4), ValueError, "layer"),
    (lambda: mc.ood_report(MODEL, TASK, shifts={"x": "bad"}), TypeError, "shifts"),
    (lambda: mc.InContextTree(mc.CausalGraph.chain(5), vocab_size=10**5).sample(1),
     ValueError, "vocab_size=100000.*GB"),
    # issue 26: silent, a hang, or an allocator failure before
    (lambda: TASK.bayes(TASK.sample(2).tokens, official_root_indexing="no"), TypeError,
     "official_root_indexing must be True or False"),
    (lambda: TASK.estimator_losses(n_samples=8, chunk=0), ValueError, "chunk"),
    (lambda: TASK.in_vocabulary([0, 1, 2, 10**11]), ValueError, "token_ids entry"),
    (lambda: TASK.in_vocabulary([0, 1, 2, 3], bos_token_id=10**11), ValueError, "bos_token_id"),
    (lambda: mc.CausalGraph.chain(10**12), ValueError, "n=1,000,000,000,000 positions"),
    (lambda: mc.make_task("chain", seq_len=10**9), ValueError, "seq_len"),
    (lambda: mc.InContextTree(mc.CausalGraph.chain(5), alpha=1e39), ValueError,
     r"alpha=1e\+39 is outside \[1e-30, 1e\+30\]"),
    (lambda: mc.InContextDAG(mc.CausalGraph.two_parent(5), alpha=1e-39), ValueError, "alpha"),
    (lambda: mc.DirichletPrior(1e39), ValueError, "alpha"),
    (lambda: mc.TrainConfig(lr=1e38), ValueError, r"lr=1e\+38 is above 3.4e\+37"),
    (lambda: mc.TrainConfig(lr=1e-39), ValueError, "lr=.*smallest normal"),
    (lambda: mc.TrainConfig(weight_decay=1e39), ValueError, "weight_decay"),
    (lambda: mc.DisentangledTransformer.for_task(TASK).init_two_stage(float("nan")),
     ValueError, "beta0"),
    (lambda: mc.ReducedModel(4, 7).init_two_stage(float("inf")), ValueError, "beta0"),
]


@pytest.mark.parametrize("call, error, named", REFUSED,
                         ids=[f"{i}-{named}" for i, (_, _, named) in enumerate(REFUSED)])
def test_a_reported_mistake_is_refused_by_name(call, error, named):
    with pytest.raises(error, match=named):
        call()


def test_a_string_dtype_is_read_as_the_dtype_it_names():
    model = mc.DisentangledTransformer(4, 7, dtype="float64")
    assert model.cfg.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in model.parameters())


def test_a_model_with_more_symbols_than_the_task_answers_on_the_task_symbols():
    """Accepted on purpose: as for a language model, a model with a larger vocabulary is
    read on the task's symbols 0..S-1, renormalised; its loss is a real cross-entropy."""
    big = mc.DisentangledTransformer(6, TASK.input_length)
    scores = mc.estimator_agreement(big, TASK, n_samples=64)
    # zero weights: uniform over the task's 4 symbols, whatever the two extra ones do
    assert scores["model_loss"] == pytest.approx(torch.log(torch.tensor(4.0)).item(), abs=1e-5)


def test_float16_adam_names_the_eps_underflow_and_a_nan_parameter_is_named():
    model = mc.DisentangledTransformer.for_task(TASK, dtype=torch.float16)
    with pytest.raises(ValueError, match="adam_eps=1e-08 is 0 in torch.float16"):
        mc.train(model, TASK, mc.TrainConfig(steps=1, optimizer="adam", progress=False))
    broken = mc.DisentangledTransformer.for_task(TASK)
    with torch.no_grad():
        broken.blocks[0].attn.A[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="parameter blocks.0.attn.A holds NaN"):
        mc.train(broken, TASK, mc.TrainConfig(steps=1, progress=False))


class _LastPosition(torch.nn.Module):
    """A custom module answering at the last position only: logits [B, S]."""

    def __init__(self, task):
        super().__init__()
        self.cfg = SimpleNamespace(d_vocab=task.vocab_size, n_ctx=task.input_length,
                                   n_layers=1)
        self.table = torch.nn.Embedding(task.vocab_size, task.vocab_size)

    def forward(self, tokens):
        return self.table(tokens[:, -1])


def test_a_custom_module_with_last_position_logits_is_read_as_such():
    """[B, S] logits (a form mc.train accepts) are the answer, not a sequence to slice."""
    model = _LastPosition(TASK)
    losses = mc.heldout_losses(model, TASK, n_samples=64, seed=3)
    batch = TASK.sample(64, generator=torch.Generator().manual_seed(3))
    log_model = torch.log_softmax(model(batch.tokens).double(), -1)
    expected = -(batch.target.double() * log_model).sum(-1).mean().item()
    assert losses["model"] == pytest.approx(expected, abs=1e-6)
    assert mc.estimator_agreement(model, TASK, n_samples=64, seed=3)["model_loss"] == \
        pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match=r"last position only.*next_token"):
        mc.models.model_logits(model, batch.tokens, all_positions=True)
