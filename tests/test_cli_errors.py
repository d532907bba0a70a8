"""Every subcommand against a table of user mistakes: exit status 2, one line on stderr
(``mechcausal: error: ...``) naming the flag, no traceback, and nothing written."""

import json
import os

import pytest
import torch

from mechcausal.cli import main

# (arguments, what the line must name: the flag or the setting it sets)
BAD = [
    (["train", "--vocab-size", "0"], "vocab_size"),
    (["train", "--seq-len", "-1"], "seq_len"),
    (["train", "--alpha", "nan"], "alpha"),
    (["train", "--alpha", "-1"], "alpha"),
    (["train", "--heads", "0,1"], "heads"),
    (["train", "--heads", "x"], "--heads"),
    (["train", "--steps", "0"], "steps"),
    (["train", "--steps", "abc"], "--steps"),
    (["train", "--device", "gpu"], "device"),
    (["train", "--graph", "nope"], "--graph"),
    (["train", "--preset", "nope"], "--preset"),
    (["train", "--seed", "x"], "--seed"),
    (["train", "--out", "/proc/mechcausal-test"], "--out"),
    (["train", "--nope"], "--nope"),
    (["reproduce", "--only", "nope"], "experiment"),
    (["reproduce", "--set", "steps=abc"], "steps"),
    (["reproduce", "--set", "lr=nan"], "lr"),
    (["reproduce", "--set", "nope=1"], "nope"),
    (["reproduce", "--set", "steps"], "--set"),
    (["reproduce", "--device", "tpu"], "device"),
    (["reproduce", "--quick", "--paper"], "--paper"),
    (["reproduce", "--jobs", "0"], "--jobs"),
    (["reproduce", "--jobs", "two"], "--jobs"),
    (["train", "--wandb-mode", "online"], "--wandb"),
    (["train", "--tensorboard", ""], "--tensorboard"),
    (["sweep", "grid.toml", "--out", "s", "--wandb-mode", "online"], "--wandb"),
    (["sweep", "grid.toml", "--out", "s", "--address", "auto"], "--address"),
    (["sweep", "grid.toml", "--out", "s", "--device", "cpu"], "--device"),  # [config] cuda
    (["sweep", "grid.toml", "--out", "s", "--backend", "local", "--address", "x:1"],
     "--address"),
    (["diagnose", "missing.pt"], "missing.pt"),
    (["diagnose", "notes.txt"], "notes.txt"),
    (["diagnose", "list.pt"], "list.pt"),
    (["diagnose"], "--lm"),
    (["diagnose", "list.pt", "--lm", "x"], "--lm"),
    (["diagnose", "--lm", "no-such-org/no-such-model"], "no-such-org/no-such-model"),
    (["diagnose", "--lm", "x", "--token-ids", "a,b"], "--token-ids"),
    (["diagnose", "list.pt", "--n-samples", "0"], "--n-samples"),
    (["diagnose", "list.pt", "--device", "gpu"], "device"),
    (["diagnose", "list.pt", "--vocab-size", "99", "--token-ids", "5,6"], "--vocab-size"),
    (["diagnose", "list.pt", "--graph", "icl"], "--graph"),
    (["diagnose", "--lm", "x", "--heads", "1-0"], "--heads"),
    (["diagnose", "--lm", "x", "--induction-heads", "1"], "--induction-heads"),
    (["diagnose", "--lm", "x", "--layer", "1", "--heads", "1.0"], "--layer or --heads"),
    (["diagnose", "--lm", "x", "--words", "a,,b"], "--words"),
    (["diagnose", "list.pt", "--words", "a,b"], "--words"),
    (["train", "--alpha", "1e39"], "alpha"),
    (["train", "--alpha", "1e-39"], "alpha"),
    (["train", "--lr", "1e38"], "lr"),
    (["train", "--seq-len", "1000000000000"], "seq_len"),
    (["reproduce", "--set", "seq_len=-3"], "seq_len"),
    (["reproduce", "--set", "alpha=1e39"], "alpha"),
    (["nope"], "nope"),
]
if not torch.cuda.is_available():
    BAD.append((["train", "--device", "cuda"], "--device"))


@pytest.mark.parametrize("argv, named", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_a_user_mistake_is_one_line_and_writes_nothing(argv, named, tmp_path, monkeypatch,
                                                       capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    torch.save([1, 2], tmp_path / "list.pt")
    (tmp_path / "grid.toml").write_text('[config]\ndevice = "cuda"\nsteps = 1\n\n'
                                        '[grid]\nseed = [0]\n')
    before = sorted(os.listdir(tmp_path))
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own usage errors
        code = exit_.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured
    assert len(lines) == 1 and lines[0].startswith("mechcausal: error: "), lines
    assert named in lines[0], lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert sorted(os.listdir(tmp_path)) == before


def _strict_json(path):
    """json.loads that refuses NaN / Infinity, which are not JSON."""
    def refuse(constant):
        raise ValueError(f"{path} holds a bare {constant}")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_every_json_file_the_cli_writes_is_strict_json(tmp_path, capsys):
    """A graph without edges (icl over one position) has no parent attention: null with
    its reason, never a bare NaN, in every file train, sweep and diagnose write."""
    run = tmp_path / "run"
    assert main(["train", "--graph", "icl", "--seq-len", "1", "--steps", "2",
                 "--batch-size", "8", "--out", str(run), "--no-progress"]) == 0
    assert "parent attention n/a" in capsys.readouterr().out
    summary = _strict_json(run / "summary.json")
    assert summary["parent_attention"] is None and "no edges" in \
        summary["not_computed"]["parent_attention"]
    grid = tmp_path / "grid.toml"
    grid.write_text('[config]\nsteps = 2\nbatch_size = 8\neval_every = 2\neval_samples = 16\n'
                    '\n[grid]\ngraph = ["icl"]\nseq_len = [1]\nvocab_size = [3]\n')
    assert main(["sweep", str(grid), "--out", str(tmp_path / "study"), "--no-progress"]) == 0
    assert main(["diagnose", str(run / "checkpoint.pt"), "--n-samples", "64",
                 "--out", str(tmp_path / "diagnosis")]) in (0, 1)
    written = sorted(tmp_path.rglob("*.json"))
    assert {"summary.json", "history.json", "study.json"} <= {p.name for p in written}
    for path in written:
        _strict_json(path)
