"""Every subcommand against a table of user mistakes: exit status 2, one line on stderr
(``mechcausal: error: ...``) naming the flag, no traceback, and nothing written."""

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
    (["diagnose", "missing.pt"], "missing.pt"),
    (["diagnose", "notes.txt"], "notes.txt"),
    (["diagnose", "list.pt"], "list.pt"),
    (["diagnose"], "--lm"),
    (["diagnose", "list.pt", "--lm", "x"], "--lm"),
    (["diagnose", "--lm", "no-such-org/no-such-model"], "no-such-org/no-such-model"),
    (["diagnose", "--lm", "x", "--token-ids", "a,b"], "--token-ids"),
    (["diagnose", "list.pt", "--n-samples", "0"], "--n-samples"),
    (["diagnose", "list.pt", "--device", "gpu"], "device"),
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
