"""Pretrained LMs, offline: randomly initialised Hugging Face models saved locally with
save_pretrained (a GPT-2 and a Llama-style model), loaded with mc.load_lm, equal the HF
model; every diagnostic runs on them with the task written in their vocabulary."""

import json
import math

import pytest
import torch

import mechcausal as mc

pytestmark = pytest.mark.tl
transformers = pytest.importorskip("transformers")  # a dependency of transformer-lens

VOCAB = 64


def _tokenizer():
    """A word-level tokenizer over "<0>" .. "<63>" (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    core = Tokenizer(models.WordLevel(vocab={f"<{i}>": i for i in range(VOCAB)}, unk_token="<0>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<0>",
                                                bos_token="<1>", eos_token="<2>",
                                                pad_token="<3>")


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def saved_lm(request, tmp_path_factory):
    """(folder, HF model): a tiny random model of each architecture, saved like a real one."""
    torch.manual_seed(0)
    if request.param == "gpt2":
        config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=40, n_embd=32, n_layer=2,
                                         n_head=2, bos_token_id=1, eos_token_id=2)
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=2, num_attention_heads=2,
                                          num_key_value_heads=2, max_position_embeddings=40,
                                          bos_token_id=1, eos_token_id=2)
        model = transformers.LlamaForCausalLM(config)
    # the folder's name holds the architecture, as real checkpoints' names do
    folder = tmp_path_factory.mktemp(f"tiny-{request.param}")
    model.save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    return folder, model.eval()


def test_load_lm_equals_the_hugging_face_model(saved_lm):
    folder, hf = saved_lm
    lm = mc.load_lm(folder)
    tokens = torch.randint(0, VOCAB, (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf(tokens, use_cache=False).logits
        assert (lm(tokens) - expected).abs().max().item() <= 1e-4
    assert not lm.training and lm.cfg.d_vocab == VOCAB


def test_every_diagnostic_runs_on_the_lm_in_its_vocabulary(saved_lm):
    folder, _ = saved_lm
    lm = mc.load_lm(folder)
    task = mc.InContextTree(mc.CausalGraph.chain(10), vocab_size=5)
    for bos in (None, 1):
        view = task.in_vocabulary([20, 21, 30, 31, 40], bos_token_id=bos)
        result = mc.diagnose(lm, view, n_samples=64)
        assert result.failed == {}
        assert {"graph", "losses", "causal_induction", "ood", "patching", "heads_ranking",
                "probes"} <= set(result.summary)
        for key in ("model", "count_estimator", "kl"):
            assert math.isfinite(result.summary["losses"][key])
        # positions are the task's: 10 context positions and the query, BOS or not
        graph = result.summary["graph"]
        assert len(graph["true_parents"]) == 10 and len(graph["weights"]) == 11
        estimate = mc.extract_graph(lm, view, n_samples=64)
        assert estimate.patterns.shape[-2:] == (11, 11)
        # position 1 has no earlier non-parent to compare its parent with
        assert mc.patch_parents(lm, view, n_samples=16).positions == list(range(2, 10))
        ranking = mc.rank_heads(lm, view, n_samples=64, patching=True, n_patch=16)
        assert len(ranking.rows) == 4
        assert all(math.isfinite(row[key]) for row in ranking.rows
                   for key in ("parent_attention", "causal_induction", "patching"))


def test_a_name_that_is_not_available_offline_says_how_to_get_it():
    with pytest.raises(ValueError, match="not available offline.*huggingface-cli download"):
        mc.load_lm("no-such-organisation/no-such-model")


def test_diagnose_cli_on_a_saved_lm(saved_lm, tmp_path, capsys):
    from mechcausal.cli import main

    folder, _ = saved_lm
    out = tmp_path / "diagnosis"
    code = main(["diagnose", "--lm", str(folder), "--graph", "chain", "--vocab-size", "5",
                 "--seq-len", "10", "--token-ids", "20,21,30,31,40", "--bos", "1",
                 "--n-samples", "32", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "failed" not in printed and "parent" in printed
    summary = json.loads((out / "diagnosis.json").read_text())
    assert len(summary["graph"]["true_parents"]) == 10 and summary["failed"] == {}
    assert any(out.joinpath("figures").glob("*.png"))


def test_diagnose_cli_answers_a_missing_lm_in_one_line(capsys):
    from mechcausal.cli import main

    assert main(["diagnose", "--lm", "no-such-organisation/no-such-model"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not available offline" in err[0]
