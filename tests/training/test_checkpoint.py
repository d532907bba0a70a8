"""Checkpoints: one format for every model kind, sizes checked on save and load, one
error for every unreadable file, atomic writes that survive a kill."""

import os
import pickle
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import mechcausal as mc
from mechcausal.training.checkpoint import FORMAT_VERSION


def _chain_task(n=6, vocab=4):
    return mc.InContextTree(mc.CausalGraph.chain(n), vocab_size=vocab)


def _tokens(task, n=5):
    return task.sample(n, generator=torch.Generator().manual_seed(0)).tokens


def _logits(model, tokens):
    logits = model(tokens)
    return logits[:, -1] if logits.ndim == 3 else logits


def test_every_native_kind_round_trips_with_equal_logits(tmp_path):
    task = _chain_task()
    dag = mc.InContextDAG(mc.CausalGraph.two_parent(9), vocab_size=3)
    ensemble = mc.Ensemble([mc.DisentangledTransformer.for_task(task, init="normal",
                                                                init_scale=0.3, seed=s)
                            for s in range(2)])
    cases = {
        "disentangled": (mc.DisentangledTransformer.for_task(dag, heads=(2, 1), init="normal",
                                                             init_scale=0.3, seed=1), dag),
        "probability_readout": (mc.DisentangledTransformer.for_task(
            task, readout="probability", init="normal", init_scale=0.3, seed=2), task),
        "reduced": (mc.ReducedModel.for_task(task, beta0=0.7), task),
        "member": (ensemble.member(1), task),
    }
    with torch.no_grad():
        cases["reduced"][0].A1.normal_()
    for name, (model, model_task) in cases.items():
        path = mc.save_checkpoint(tmp_path / f"{name}.pt", model, model_task)
        loaded = mc.load_checkpoint(path)
        tokens = _tokens(model_task)
        assert type(loaded.model) is type(model), name
        assert torch.equal(loaded.model(tokens), model(tokens)), name
        assert loaded.task == model_task and loaded.config is None and loaded.history is None


@pytest.mark.tl
def test_standard_tl_model_trained_with_checkpoint_round_trips(tmp_path):
    """The paper's Figure 8 model kind (HookedTransformer on TL 3.x, TransformerBridge on
    TL 4.x) through mc.train(checkpoint=) and mc.load_checkpoint: equal logits."""
    task = _chain_task(8, 5)
    model = mc.standard_model(task, n_layers=2, n_heads=2, d_model=16, attn_only=False)
    config = mc.TrainConfig(steps=5, batch_size=16, eval_samples=32, progress=False,
                            lr=1e-2, optimizer="adamw")
    history = mc.train(model, task, config, checkpoint=tmp_path / "standard.pt")
    loaded = mc.load_checkpoint(tmp_path / "standard.pt")
    tokens = _tokens(task)
    assert type(loaded.model) is type(model)
    assert torch.allclose(_logits(loaded.model, tokens), _logits(model, tokens), atol=1e-6)
    assert loaded.history.test_loss == history.test_loss and loaded.config == config
    exported = mc.to_transformer_lens(mc.DisentangledTransformer.for_task(
        task, init="normal", init_scale=0.3, seed=3))
    loaded = mc.load_checkpoint(mc.save_checkpoint(tmp_path / "export.pt", exported, task))
    assert torch.allclose(_logits(loaded.model, tokens), _logits(exported, tokens), atol=1e-6)


def test_sizes_are_checked_on_save_and_on_load(tmp_path):
    task = _chain_task()
    with pytest.raises(ValueError, match="d_vocab=5 does not match task vocab_size=4"):
        mc.save_checkpoint(tmp_path / "bad.pt", mc.DisentangledTransformer(5, 7), task)
    assert not (tmp_path / "bad.pt").exists()
    path = mc.save_checkpoint(tmp_path / "ok.pt", mc.DisentangledTransformer.for_task(task), task)
    payload = torch.load(path, weights_only=True)
    payload["task"]["vocab_size"] = 6  # a hand-edited task
    torch.save(payload, path)
    with pytest.raises(mc.CheckpointError, match=f"{path}: model vocabulary d_vocab=4 does "
                                                 f"not match task vocab_size=6"):
        mc.load_checkpoint(path)
    with pytest.raises(TypeError, match="Linear is not a model kind mechcausal knows"):
        mc.save_checkpoint(tmp_path / "x.pt", torch.nn.Linear(2, 2), task)


def _corrupt_files(tmp_path):
    good = mc.save_checkpoint(tmp_path / "good.pt",
                              mc.DisentangledTransformer.for_task(_chain_task()), _chain_task())
    data = good.read_bytes()
    files = {"truncated": data[: len(data) // 2], "empty": b"",
             "text": b"just some notes\n", "list pickle": pickle.dumps([1, 2, 3])}
    paths = {}
    for name, content in files.items():
        paths[name] = tmp_path / f"{name.replace(' ', '_')}.pt"
        paths[name].write_bytes(content)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    paths["foreign dict"] = foreign
    paths["missing"] = tmp_path / "missing.pt"
    paths["a folder"] = tmp_path
    return paths


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("case", ["truncated", "empty", "text", "list pickle", "foreign dict",
                                  "missing", "a folder"])
def test_unreadable_files_raise_checkpoint_error_naming_the_path(tmp_path, case):
    path = _corrupt_files(tmp_path)[case]
    with pytest.raises(mc.CheckpointError, match=str(path)) as caught:
        mc.load_checkpoint(path)
    assert isinstance(caught.value, ValueError)  # the CLI answers it in one line


def test_an_interrupted_save_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    task = _chain_task()
    path = mc.save_checkpoint(tmp_path / "ck.pt", mc.DisentangledTransformer.for_task(task), task)
    before = path.read_bytes()

    def broken_save(obj, handle):
        handle.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        mc.save_checkpoint(path, mc.DisentangledTransformer.for_task(task, init="normal"), task)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["ck.pt"]


_KILLED_WRITER = textwrap.dedent("""
    import sys, time, torch
    import mechcausal as mc
    task = mc.InContextTree(mc.CausalGraph.chain(6), vocab_size=4)
    model = mc.DisentangledTransformer.for_task(task, init="normal")
    real_save = torch.save
    def slow_save(obj, handle):
        handle.write(b"x" * 4096)
        handle.flush()
        print("writing", flush=True)
        time.sleep(60)
    torch.save = slow_save
    mc.save_checkpoint(sys.argv[1], model, task)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="unnamed temporary files: Linux")
def test_a_save_killed_midway_leaves_the_previous_file_and_no_temporary(tmp_path):
    task = _chain_task()
    path = mc.save_checkpoint(tmp_path / "ck.pt", mc.DisentangledTransformer.for_task(task), task)
    before = path.read_bytes()
    writer = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        writer.kill()
    assert writer.returncode == -signal.SIGKILL
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["ck.pt"]
    assert mc.load_checkpoint(path).task == task


def test_files_get_the_permissions_of_the_json_beside_them(tmp_path):
    task = _chain_task()
    path = mc.save_checkpoint(tmp_path / "ck.pt", mc.DisentangledTransformer.for_task(task), task)
    beside = tmp_path / "history.json"
    beside.write_text("{}")
    assert os.stat(path).st_mode == os.stat(beside).st_mode


def test_version_1_files_still_load(tmp_path):
    """Files written before the one format (``model_class`` and the standard_model
    arguments) load through the same entry point."""
    task = _chain_task()
    model = mc.DisentangledTransformer.for_task(task, init="normal", init_scale=0.2, seed=4)
    old = {"format_version": 1, "model_class": "DisentangledTransformer",
           "model_config": model.cfg.to_dict(), "task": task.to_dict(),
           "state_dict": model.state_dict(), "train_config": None, "history": None}
    torch.save(old, tmp_path / "v1.pt")
    loaded = mc.load_checkpoint(tmp_path / "v1.pt")
    assert torch.equal(loaded.model(_tokens(task)), model(_tokens(task)))
    assert FORMAT_VERSION == 2


def test_the_dtype_a_model_was_moved_to_is_kept(tmp_path):
    task = _chain_task()
    model = mc.DisentangledTransformer.for_task(task, init="normal", init_scale=0.3).to(
        torch.float64)
    loaded = mc.load_checkpoint(mc.save_checkpoint(tmp_path / "f64.pt", model, task)).model
    assert next(loaded.parameters()).dtype == torch.float64
    assert torch.equal(loaded(_tokens(task)), model(_tokens(task)))


def test_hand_edited_weights_and_bad_arguments_are_refused(tmp_path):
    task = _chain_task()
    path = mc.save_checkpoint(tmp_path / "ck.pt", mc.DisentangledTransformer.for_task(task), task)
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["blocks.0.attn.A"][0, 0, 0] = float("nan")
    torch.save(payload, path)
    with pytest.raises(mc.CheckpointError, match="weight blocks.0.attn.A holds NaN"):
        mc.load_checkpoint(path)
    payload["state_dict"]["blocks.0.attn.A"] = torch.zeros(1, 3, 3)
    torch.save(payload, path)
    with pytest.raises(mc.CheckpointError, match="size mismatch for blocks.0.attn.A"):
        mc.load_checkpoint(path)
    with pytest.raises(TypeError, match="path must be a path"):
        mc.load_checkpoint(5)
    with pytest.raises(ValueError, match="device='gpu'"):
        mc.load_checkpoint(path, device="gpu")
