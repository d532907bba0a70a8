"""Build tiny Hugging Face causal LMs with known attention heads (test fixtures).

    python tests/known_lms/build.py [--out tests/known_lms] [--threads 2] [--only NAME ...]

Pure torch + transformers + tokenizers (mechcausal only samples the chain task for
``llama_chain``). Deterministic: fixed seeds, deterministic algorithms, a fixed thread
count. Writes, under ``--out``:

* ``gpt2_induction/``  GPT2LMHeadModel trained on random repeated spans (induction).
* ``llama_induction/`` LlamaForCausalLM, same data.
* ``llama_chain/``     LlamaForCausalLM (3 layers) trained on the in-context chain task
  (``InContextTree(CausalGraph.chain(20), vocab_size=10, alpha=0.1)`` in the
  tokenizer's words ``w4``..``w13``, after BOS).
* ``ground_truth.json`` head scores from :mod:`ground_truth` (HF attentions only).

Each model folder holds ``model.safetensors`` + config + the shared word-level
tokenizer (V=64: ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, ``<unk>`` 3, ``w4``..``w63``
with ids 4..63; encoding prepends BOS like Llama).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers, processors  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as hf_logging  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ground_truth as gt  # noqa: E402

V = 64
PAD, BOS, EOS, UNK = 0, 1, 2, 3
FIRST_WORD = 4
N_POSITIONS = 128
SEQ_LEN = 96  # induction training sequences, BOS included
CHAIN_IDS = list(range(4, 14))  # the chain task's 10 symbols: words w4..w13


# tokenizer ----------------------------------------------------------------------------
def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": PAD, "<bos>": BOS, "<eos>": EOS, "<unk>": UNK}
    vocab.update({f"w{i}": i for i in range(FIRST_WORD, V)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", BOS)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        unk_token="<unk>", model_max_length=N_POSITIONS,
    )


def check_tokenizer(tok) -> None:
    assert len(tok) == V, len(tok)
    assert tok.encode("w5 w6") == [BOS, 5, 6], tok.encode("w5 w6")
    assert tok.encode("w5 w6", add_special_tokens=False) == [5, 6]
    assert tok("w63 w4")["input_ids"] == [BOS, 63, 4]
    assert tok.decode([5, 6]) == "w5 w6", tok.decode([5, 6])
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (
        BOS, EOS, PAD, UNK)


# data ---------------------------------------------------------------------------------
def repeated_spans(n: int, gen: torch.Generator, length: int = SEQ_LEN,
                   pmin: int = 6, pmax: int = 24) -> torch.Tensor:
    """[n, length]: BOS, random words, then from a random offset a random span of period
    P in [pmin, pmax] repeated to the end (at least two copies)."""
    base = torch.randint(FIRST_WORD, V, (n, length), generator=gen)
    period = torch.randint(pmin, pmax + 1, (n, 1), generator=gen)
    # start in [1, length - 2P]: the span and one full copy fit
    room = (length - 2 * period).clamp_min(1)
    start = 1 + (torch.rand((n, 1), generator=gen) * room).long()
    t = torch.arange(length).unsqueeze(0)
    src = torch.where(t >= start + period, start + (t - start) % period, t)
    tokens = base.gather(1, src)
    tokens[:, 0] = BOS
    return tokens


def chain_task():
    import mechcausal as mc

    return mc.InContextTree(mc.CausalGraph.chain(20), vocab_size=10, alpha=0.1).in_vocabulary(
        CHAIN_IDS, bos_token_id=BOS)


# training -----------------------------------------------------------------------------
def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(model, loss_fn, steps: int, lr: float, warmup: int, log_every: int,
          probe=None, name: str = "") -> None:
    model.set_attn_implementation("eager")  # the probes read attentions; fastest on CPU
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    model.train()
    t0 = time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        loss = loss_fn(model, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            extra = probe(model) if probe is not None else ""
            model.train()
            print(f"  [{name}] step {step + 1}/{steps} loss {loss.item():.4f} {extra}"
                  f"({time.time() - t0:.0f}s)", flush=True)


def next_token_loss(model, tokens: torch.Tensor) -> torch.Tensor:
    logits = model(tokens).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, V), tokens[:, 1:].reshape(-1))


def induction_probe(model) -> str:
    s = gt.hf_head_scores(model, gt.repeated_tokens(16, 20, seed=123))
    pm, pt = s["prefix_matching"], s["previous_token"]
    return f"max prefix {pm.max():.2f} (L{int(pm.argmax()) // pm.shape[1]}) max prev {pt.max():.2f} "


def chain_probe(task, tokens):
    def probe(model) -> str:
        s = gt.chain_head_scores(model, tokens)
        pm, pt = s["parent_match"], s["previous_token"]
        H = pm.shape[1]
        return (f"max prev {pt.max():.2f} (L{int(pt.argmax()) // H}) "
                f"max parent-match {pm.max():.2f} (L{int(pm.argmax()) // H}) ")
    return probe


# models -------------------------------------------------------------------------------
def gpt2_config(n_layer: int, n_head: int, n_embd: int, n_inner: int) -> GPT2Config:
    return GPT2Config(
        vocab_size=V, n_positions=N_POSITIONS, n_embd=n_embd, n_layer=n_layer,
        n_head=n_head, n_inner=n_inner, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, tie_word_embeddings=True,
    )


# Six frequencies whose cosine sum peaks sharply at 0: max over offsets -1, 1..126 of
# sum_f cos(w_f * offset) is 2.61 (vs 6 at offset 0); found by a seeded random search.
SEED_FREQUENCIES = (1.539, 1.81, 1.947, 2.309, 2.347, 3.023)


def build_gpt2_induction(seed: int = 0):
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(gpt2_config(4, 4, 48, 96))
    gen = torch.Generator().manual_seed(seed + 1)
    train(model, lambda m, step: next_token_loss(m, repeated_spans(32, gen)),
          steps=STEPS["gpt2_induction"], lr=2e-3, warmup=100, log_every=250,
          probe=induction_probe, name="gpt2_induction")
    return model


def build_llama_induction(seed: int = 0):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=V, hidden_size=48, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=N_POSITIONS,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, tie_word_embeddings=True,
        rope_theta=10000.0,
    )
    model = LlamaForCausalLM(config)
    gen = torch.Generator().manual_seed(seed + 1)
    train(model, lambda m, step: next_token_loss(m, repeated_spans(32, gen)),
          steps=STEPS["llama_induction"], lr=2e-3, warmup=100, log_every=250,
          probe=induction_probe, name="llama_induction")
    return model


def build_llama_chain(seed: int = 0):
    """3 layers of RoPE attention: learned absolute positions (GPT-2) did not find the
    previous-token head on this task within minutes; rotary ones find it in 500 steps."""
    task = chain_task()
    answer_ids = torch.tensor(CHAIN_IDS)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=N_POSITIONS,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    gen = torch.Generator().manual_seed(seed + 1)

    def loss_fn(m, step):
        batch = task.sample(128, generator=gen)
        logits = m(batch.tokens).logits  # [n, 1 + T + 1, V]
        logp = logits[:, -1].log_softmax(-1)[:, answer_ids]  # [n, S]
        last = -(batch.target * logp).sum(-1).mean()
        # next-token loss at every context position too (the same in-context estimation)
        ctx = torch.nn.functional.cross_entropy(
            logits[:, 1:-2].reshape(-1, V), batch.tokens[:, 2:-1].reshape(-1))
        return last + ctx

    probe_tokens = task.sample(256, generator=torch.Generator().manual_seed(999)).tokens
    train(model, loss_fn, steps=STEPS["llama_chain"], lr=3e-3, warmup=100, log_every=250,
          probe=chain_probe(task, probe_tokens), name="llama_chain")
    return model


STEPS = {"gpt2_induction": 3000, "llama_induction": 3000, "llama_chain": 1000}
BUILDERS = {
    "gpt2_induction": build_gpt2_induction,
    "llama_induction": build_llama_induction,
    "llama_chain": build_llama_chain,
}


# ground truth -------------------------------------------------------------------------
def as_table(t: torch.Tensor) -> list[list[float]]:
    return [[round(float(x), 4) for x in row] for row in t]


def measure(name: str, folder: Path) -> dict:
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager",
                                                 dtype=torch.float32)
    model.eval()
    scores = gt.hf_head_scores(model, gt.repeated_tokens(32, 20, seed=0))
    entry = {
        "class": type(model).__name__,
        "n_layers": model.config.num_hidden_layers,
        "n_heads": model.config.num_attention_heads,
        "repeated_tokens": {"n": 32, "k": 20, "seed": 0},
        "scores": {k: as_table(v) for k, v in scores.items()},
        "top": {k: gt.top_heads(v) for k, v in scores.items()},
    }
    if name == "llama_chain":
        tokens = chain_task().sample(1024, generator=torch.Generator().manual_seed(0)).tokens
        chain = gt.chain_head_scores(model, tokens)
        entry["chain_task"] = {
            "task": "InContextTree(CausalGraph.chain(20), vocab_size=10, alpha=0.1)"
                    f".in_vocabulary({CHAIN_IDS}, bos_token_id={BOS})",
            "sample": {"n": 1024, "seed": 0},
            "scores": {k: as_table(v) for k, v in chain.items()},
            "top": {k: gt.top_heads(v) for k, v in chain.items()},
        }
    return entry


def print_table(name: str, entry: dict) -> None:
    print(f"\n== {name} ({entry['class']}) ==")
    sections = [("repeated tokens n=32 k=20 seed=0", entry["scores"])]
    if "chain_task" in entry:
        sections.append(("chain task n=1024 seed=0", entry["chain_task"]["scores"]))
    for title, scores in sections:
        print(f"  {title}")
        for key, table in scores.items():
            rows = "  ".join(f"L{li}[" + " ".join(f"{x:.2f}" for x in row) + "]"
                             for li, row in enumerate(table))
            print(f"    {key:16s} {rows}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", choices=list(BUILDERS), default=list(BUILDERS))
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    hf_logging.set_verbosity_error()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()

    tok = build_tokenizer()
    check_tokenizer(tok)

    gt_path = out / "ground_truth.json"
    truth = json.loads(gt_path.read_text()) if gt_path.exists() else {}
    truth["tokenizer"] = {"vocab_size": V, "pad": PAD, "bos": BOS, "eos": EOS, "unk": UNK,
                          "words": f"w{FIRST_WORD}..w{V - 1} (id = number)",
                          "prepends_bos": True}
    for name in args.only:
        t0 = time.time()
        print(f"building {name} ...", flush=True)
        model = BUILDERS[name]()
        folder = out / name
        folder.mkdir(exist_ok=True)
        for stale in folder.iterdir():
            if stale.is_file():
                stale.unlink()
        model.save_pretrained(folder, safe_serialization=True)
        tok.save_pretrained(folder)
        loaded_tok = AutoTokenizer.from_pretrained(folder)
        check_tokenizer(loaded_tok)
        entry = measure(name, folder)
        entry["train_seconds"] = round(time.time() - t0, 1)
        truth[name] = entry
        print_table(name, entry)
    gt_path.write_text(json.dumps(truth, indent=1) + "\n")
    print(f"\ndone in {time.time() - start:.0f}s; wrote {gt_path}")


if __name__ == "__main__":
    main()
