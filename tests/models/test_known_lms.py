"""The LM path against language models whose heads are known.

The models under tests/known_lms/ (built by tests/known_lms/build.py, pure torch +
transformers) are a GPT-2-shaped and a Llama-shaped 4-layer model trained on BOS +
random spans repeated (they form previous-token and induction heads) and a 3-layer
Llama trained on the chain task in its tokenizer's words. Ground truth comes from the
Hugging Face model's own ``output_attentions`` (tests/known_lms/ground_truth.py), never
from mechcausal or TransformerLens.
"""

import json
import shutil
import socket
import sys
from pathlib import Path

import pytest
import torch

import mechcausal as mc
from mechcausal.ops import to_json

pytestmark = pytest.mark.tl
transformers = pytest.importorskip("transformers")  # a dependency of transformer-lens

FOLDER = Path(__file__).resolve().parents[1] / "known_lms"
sys.path.insert(0, str(FOLDER))
import ground_truth as gt  # noqa: E402

INDUCTION_MODELS = ["gpt2_induction", "llama_induction"]
CHAIN_IDS = list(range(4, 14))


def _hf(name: str):
    return transformers.AutoModelForCausalLM.from_pretrained(
        FOLDER / name, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def lms():
    """name -> (TL model from mc.load_lm, HF model), loaded once."""
    return {name: (mc.load_lm(FOLDER / name), _hf(name))
            for name in INDUCTION_MODELS + ["llama_chain"]}


def _grid(scores: mc.InductionScores, score: str) -> torch.Tensor:
    return scores.grid(score)


@pytest.mark.parametrize("name", INDUCTION_MODELS)
def test_induction_scores_match_the_hugging_face_attentions(lms, name):
    lm, hf = lms[name]
    scores = mc.induction_scores(lm, n_batch=32, seq_len=40)
    assert scores.bos_token_id == 1  # the tokenizer prepends BOS: sequences start with it
    assert bool((scores.tokens[:, 0] == 1).all())
    truth = gt.hf_head_scores(hf, scores.tokens)  # same sequences, HF's own attentions
    for ours, theirs in (("induction", "prefix_matching"), ("previous_token", "previous_token"),
                         ("duplicate_token", "duplicate_token")):
        assert (_grid(scores, ours) - truth[theirs]).abs().max() <= 0.02, (ours, name)
    best = divmod(int(truth["prefix_matching"].argmax()), truth["prefix_matching"].shape[1])
    assert scores.top(1) == [best]
    assert truth["prefix_matching"].max() >= 0.5  # the model really has an induction head
    # ordinary tokens only: BOS and the other special tokens never appear after position 0
    assert int(scores.tokens[:, 1:].min()) >= 4


def test_copying_scores_equal_the_eigenvalues_of_the_hugging_face_ov_circuit(lms):
    """Olsson et al.'s copying score from GPT-2's own weights (Conv1D layout: c_attn holds
    [W_Q | W_K | W_V], c_proj holds W_O), over the ordinary tokens."""
    lm, hf = lms["gpt2_induction"]
    scores = mc.induction_scores(lm, n_batch=2, seq_len=8)
    d, n_heads = hf.config.n_embd, hf.config.n_head
    d_head = d // n_heads
    embed = hf.transformer.wte.weight.detach()[4:].double()  # ordinary tokens' rows
    for row in scores.rows:
        attention = hf.transformer.h[row["layer"]].attn
        heads = slice(row["head"] * d_head, (row["head"] + 1) * d_head)
        W_V = attention.c_attn.weight.detach()[:, 2 * d:][:, heads].double()
        W_O = attention.c_proj.weight.detach()[heads].double()
        eigenvalues = torch.linalg.eigvals(embed @ W_V @ W_O @ embed.T)
        expected = (eigenvalues.real.sum() / eigenvalues.abs().sum()).item()
        assert row["copying"] == pytest.approx(expected, abs=1e-4), row["name"]


@pytest.mark.parametrize("name", INDUCTION_MODELS)
def test_induction_scores_agree_with_transformer_lens_head_detector(lms, name):
    """TL's 'mul' score divides by every row (first copy and BOS included): it is ours
    times k / (2k + 1) on BOS + r + r."""
    head_detector = pytest.importorskip("transformer_lens.head_detector")
    lm, hf = lms[name]
    scores = mc.induction_scores(lm, n_batch=8, seq_len=30)
    k = scores.half_length
    attentions = gt.attentions(hf, scores.tokens)  # [layers, n, heads, L, L]
    for layer, head in scores.top(2) + scores.top(1, "previous_token"):
        tl_scores = [head_detector.compute_head_attention_similarity_score(
            attentions[layer, i, head], head_detector.get_induction_head_detection_pattern(
                scores.tokens[i].cpu()), exclude_bos=False, exclude_current_token=False,
            error_measure="mul") for i in range(len(scores.tokens))]
        expected = sum(tl_scores) / len(tl_scores) * (2 * k + 1) / k
        assert scores.score(layer, head) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("name", INDUCTION_MODELS)
def test_the_circuit_pairs_a_previous_token_head_with_the_induction_head(lms, name):
    lm, hf = lms[name]
    circuit = mc.induction_circuit(lm, n_sequences=32, seq_len=40, n_candidates=4)
    truth = gt.hf_head_scores(hf, gt.repeated_tokens(32, 20, seed=1))
    (writer, reader), = circuit.top(1)
    # an induction head by the truth (llama_induction has four in L2, 0.84-0.91 each)
    assert truth["prefix_matching"][reader] >= 0.5, (reader, circuit.to_dict())
    assert writer[0] < reader[0]
    # uniform attention would give about 0.05 here; previous-token heads share the job
    assert truth["previous_token"][writer] >= 0.2, (writer, truth["previous_token"])
    assert circuit.rows[0]["k_composition"] > 0
    # the previous-token heads of the writer's layer together carry most of the induction
    # head's attention (gpt2_induction's four layer-1 heads share the job at 0.25 each,
    # and feed L3 through a frozen L2: one alone carries little)
    joint = next(row for row in circuit.joint
                 if row["reader"] == f"L{reader[0]}H{reader[1]}"
                 and row["writer_layer"] == writer[0])
    assert joint["attention_clean"] >= 0.5 and joint["removed"] >= 0.5, joint
    assert joint["removed"] > circuit.rows[0]["removed"]


def _chain_truth(hf, n=1024):
    task = mc.InContextTree(mc.CausalGraph.chain(20), vocab_size=10, alpha=0.1).in_vocabulary(
        CHAIN_IDS, bos_token_id=1)
    tokens = task.sample(n, generator=torch.Generator().manual_seed(7)).tokens
    return task, gt.chain_head_scores(hf, tokens)


def test_rank_heads_and_diagnose_name_the_chain_models_true_heads(lms, tmp_path):
    """llama_chain: one parent head (L0H2, 0.99 on the parent) and four layer-1 heads that
    all read it (0.82-0.86 each from the query on parent-matched positions): the reader
    we name must be one of the best, and every head's score must match the truth."""
    lm, hf = lms["llama_chain"]
    task, truth = _chain_truth(hf)
    parent = divmod(int(truth["previous_token"].argmax()), truth["previous_token"].shape[1])
    ranking = mc.rank_heads(lm, task, n_samples=1024)
    assert ranking.top(1) == [parent]
    for row in ranking.rows:  # other samples than the truth's: within sampling error
        assert row["parent_attention"] == pytest.approx(
            float(truth["previous_token"][row["layer"], row["head"]]), abs=0.03), row
        assert row["causal_induction"] == pytest.approx(
            float(truth["parent_match"][row["layer"], row["head"]]), abs=0.03), row
    by_induction = mc.rank_heads(lm, task, n_samples=1024, by="causal_induction")
    induction = by_induction.top(1)[0]
    assert truth["parent_match"][induction] >= truth["parent_match"].max() - 0.03
    assert induction[0] > parent[0]
    diagnosis = mc.diagnose(lm, task, n_samples=256)
    assert diagnosis.failed == {}
    assert diagnosis.summary["graph"]["heads"] == [f"L{parent[0]}H{parent[1]}"]
    read = diagnosis.summary["causal_induction"]["heads"]
    assert len(read) == 1 and read[0].startswith(f"L{induction[0]}H")
    assert diagnosis.summary["graph"]["parent_accuracy"] >= 0.9
    # the circuit: the parent head feeds the layer-1 readers through their keys
    circuit = diagnosis.summary["circuit"]
    assert circuit["rows"][0]["writer"] == f"L{parent[0]}H{parent[1]}"
    assert circuit["rows"][0]["removed"] >= 0.5, circuit["rows"][0]
    assert circuit["rows"][0]["loss_patched"] > circuit["rows"][0]["loss_clean"]
    assert "NaN" not in json.dumps(to_json(diagnosis.to_dict()))
    # the CLI on the saved folder, words written in the tokenizer's vocabulary
    from mechcausal.cli import main

    out = tmp_path / "d"
    code = main(["diagnose", "--lm", str(FOLDER / "llama_chain"), "--graph", "chain",
                 "--vocab-size", "10", "--seq-len", "20",
                 "--words", ",".join(f"w{i}" for i in CHAIN_IDS), "--n-samples", "256",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    summary = json.loads((out / "diagnosis.json").read_text())
    assert summary["graph"]["heads"] == [f"L{parent[0]}H{parent[1]}"]
    assert summary["heads_ranking"]["top"] == f"L{parent[0]}H{parent[1]}"


def test_words_give_the_right_ids_on_a_bos_prepending_tokenizer(lms):
    lm, _ = lms["llama_chain"]
    tokenizer = lm.tokenizer
    assert tokenizer.encode("w5")[0] == 1  # the trap: [BOS, id] with special tokens
    base = mc.InContextTree(mc.CausalGraph.chain(10), vocab_size=5)
    view = base.in_vocabulary(words=[f"w{i}" for i in range(4, 9)], tokenizer=tokenizer)
    assert view.answer_ids.tolist() == [4, 5, 6, 7, 8] and view.bos_token_id == 1
    with pytest.raises(ValueError, match=r"'w4 w5' is 2 tokens \[4, 5\]"):
        base.in_vocabulary(words=["w4 w5", "w6", "w7", "w8", "w9"], tokenizer=tokenizer)
    special = base.in_vocabulary([2, 5, 6, 7, 8], bos_token_id=1)  # 2 is EOS
    with pytest.raises(ValueError, match="token id 2 is a special token"):
        mc.rank_heads(lm, special, n_samples=8)
    outside = base.in_vocabulary([4, 5, 6, 7, 640], bos_token_id=1)
    with pytest.raises(ValueError, match="token id 640 is outside"):
        mc.extract_graph(lm, outside, n_samples=8)


def test_a_tokenizer_less_folder_loads_with_the_hugging_face_logits(lms, tmp_path):
    folder = tmp_path / "weights_only"
    folder.mkdir()
    for file in ("config.json", "model.safetensors"):
        shutil.copy(FOLDER / "llama_induction" / file, folder / file)
    lm = mc.load_lm(folder)
    assert lm.tokenizer is None
    tokens = gt.repeated_tokens(2, 10, seed=0)
    with torch.no_grad():
        expected = lms["llama_induction"][1](tokens).logits
        assert (lm(tokens) - expected).abs().max() <= 1e-4
    # no tokenizer: no BOS is assumed
    assert mc.induction_scores(lm, n_batch=2, seq_len=8).bos_token_id is None


def test_load_lm_makes_no_network_call(monkeypatch):
    """With the switches a user may not have set, sockets made to fail: a folder loads,
    an uncached hub name fails with our message (not a connection error)."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    lm = mc.load_lm(FOLDER / "llama_chain")
    assert lm.cfg.n_layers == 3
    with pytest.raises(ValueError, match="not available offline"):
        mc.load_lm("no-such-organisation/no-such-model")
    assert attempts == []
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False  # restored


@pytest.mark.parametrize("path, message", [
    ("config_only_file", "is a file"),
    ("empty_folder", "no config.json"),
    ("tokenizer_only", "tokenizer files only"),
])
def test_a_folder_that_is_not_a_causal_lm_gets_one_sentence(tmp_path, path, message):
    target = tmp_path / path
    if path == "config_only_file":
        target.write_text("{}")
    elif path == "empty_folder":
        target.mkdir()
    else:
        target.mkdir()
        shutil.copy(FOLDER / "llama_chain" / "tokenizer.json", target / "tokenizer.json")
    with pytest.raises(ValueError, match=message):
        mc.load_lm(target)


def test_load_lm_refuses_a_device_that_does_not_exist():
    with pytest.raises(ValueError, match="device='banana'"):
        mc.load_lm(FOLDER / "llama_chain", device="banana")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            mc.load_lm(FOLDER / "llama_chain", device="cuda")
