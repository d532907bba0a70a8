"""Tracking callbacks: what TensorBoard's own reader and a wandb offline run directory
hold after a run equals the run's History; a sweep names and tags every member; the
circuitsvis view is self-contained and never probes the network."""

import glob
import json
import struct
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import mechcausal as mc
from mechcausal.training.config import lr_factor

TASK = mc.make_task("chain", seq_len=6, vocab_size=4, seed=0)
CONFIG = mc.TrainConfig.quick("chain", steps=24, batch_size=64, eval_every=8,
                              eval_samples=128, progress=False)


def _model(seed=0):
    return mc.DisentangledTransformer.for_task(TASK, seed=seed)


def _events(logdir, extra):
    """TensorBoard's reader over ``logdir``: tag -> [(step, value)] and the images."""
    accumulator = extra("tensorboard.backend.event_processing.event_accumulator", "tensorboard")
    reader = accumulator.EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0})
    reader.Reload()
    scalars = {tag: [(event.step, event.value) for event in reader.Scalars(tag)]
               for tag in reader.Tags()["scalars"]}
    return scalars, reader


def _hparams(logdir, extra):
    """The HParams session (config and final metrics) TensorBoard reads from ``logdir``."""
    loader = extra("tensorboard.backend.event_processing.event_file_loader", "tensorboard")
    from tensorboard.plugins.hparams import plugin_data_pb2

    for path in Path(logdir).glob("events.out.tfevents.*"):
        for event in loader.EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "hparams":
                    data = plugin_data_pb2.HParamsPluginData.FromString(
                        value.metadata.plugin_data.content)
                    if data.WhichOneof("data") == "session_start_info":
                        info = data.session_start_info.hparams
                        return {key: info[key].WhichOneof("kind") and getattr(
                            info[key], info[key].WhichOneof("kind")) for key in info}
    return None


def test_tensorboard_event_files_hold_the_runs_scalars_and_images(tmp_path, extra):
    extra("tensorboard", "tensorboard")
    model = _model()
    history = mc.train(model, TASK, CONFIG, callbacks=[mc.TensorBoardLogger(tmp_path)])
    scalars, reader = _events(tmp_path / "run", extra)
    assert [step for step, _ in scalars["eval/parent_attention"]] == history.eval_step
    for tag, values in (("eval/parent_attention", history.parent_attention),
                        ("eval/test_loss", history.test_loss), ("eval/gap", history.gap)):
        assert [value for _, value in scalars[tag]] == pytest.approx(values, abs=1e-6)
    assert [step for step, _ in scalars["train/loss"]] == list(range(1, CONFIG.steps + 1))
    assert [value for _, value in scalars["train/loss"]] == pytest.approx(
        history.train_loss, rel=1e-6)
    assert [value for _, value in scalars["train/lr"]] == pytest.approx(
        [CONFIG.lr * lr_factor(step, CONFIG) for step in range(CONFIG.steps)], rel=1e-6)
    images = reader.Images(f"attention/layer_{CONFIG.layer}")
    assert [image.step for image in images] == history.eval_step
    assert images[0].width > 100 and images[0].height > 100
    assert [step for step, _ in scalars["final/test_loss"]] == [CONFIG.steps]
    hparams = _hparams(tmp_path / "run", extra)
    assert hparams["lr"] == pytest.approx(CONFIG.lr) and hparams["task"] == "tree"
    assert hparams["input_length"] == TASK.input_length


def test_an_ensemble_logs_one_tensorboard_run_per_member(tmp_path, extra):
    extra("tensorboard", "tensorboard")
    ensemble = mc.Ensemble([_model(0), _model(1)])
    histories = mc.train(ensemble, [TASK, TASK], CONFIG, seeds=[0, 1],
                         callbacks=[mc.TensorBoardLogger(tmp_path, images=False, step_every=4)])
    for k, history in enumerate(histories):
        scalars, reader = _events(tmp_path / f"member_{k:03d}", extra)
        assert [v for _, v in scalars["eval/test_loss"]] == pytest.approx(history.test_loss,
                                                                          abs=1e-6)
        assert [step for step, _ in scalars["train/loss"]] == list(range(4, CONFIG.steps + 1, 4))
        assert reader.Tags()["images"] == []
    assert histories[0].test_loss[-1] != histories[1].test_loss[-1]


def _wandb_records(run_dir):
    """The records of a wandb offline run file (``run-*.wandb``): wandb's LevelDB-style
    log of 32 KiB blocks, each record a 7-byte header (crc, length, type) and a
    protobuf ``Record``; read here so the test needs no network and no wandb API."""
    from wandb.proto import wandb_internal_pb2

    raw = Path(glob.glob(str(run_dir / "run-*.wandb"))[0]).read_bytes()
    assert raw[:4] == b":W&B"
    position, pending = 7, b""
    while position + 7 <= len(raw):
        left = 32768 - position % 32768
        if left < 7:
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", raw[position : position + 7])
        position += 7
        if position + length > len(raw):  # still being written
            return
        pending += raw[position : position + length]
        position += length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _finished_records(run_dir, timeout_s=60.0):
    """The run file's records once its exit record is on disk: wandb's writer may still
    be flushing when ``finish()`` returns (seen on a loaded machine)."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = list(_wandb_records(run_dir))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or \
                time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def _wandb_run(run_dir):
    """(history rows by step, config, run record, summary) of an offline run."""
    history, summary, run = {}, {}, None
    for record in _finished_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {"/".join(item.nested_key) or item.key: json.loads(item.value_json)
                   for item in record.history.item}
            history.setdefault(row["_step"], {}).update(row)
        elif kind == "run":
            run = record.run
        elif kind == "summary":
            summary.update({item.key: json.loads(item.value_json)
                            for item in record.summary.update if item.key})
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    return history, config, run, summary


def test_a_wandb_offline_run_directory_holds_the_runs_metrics_and_config(tmp_path, extra):
    extra("wandb", "wandb")
    history = mc.train(_model(), TASK, CONFIG, callbacks=[mc.WandbLogger(
        "mechcausal-test", mode="offline", dir=tmp_path, name="chain-run", tags=["unit"])])
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    rows, config, run, summary = _wandb_run(run_dir)
    assert run.display_name == "chain-run" and list(run.tags) == ["unit"]
    assert [rows[step]["eval/parent_attention"] for step in history.eval_step] == pytest.approx(
        history.parent_attention, abs=1e-6)
    assert [rows[step]["train/loss"] for step in range(1, CONFIG.steps + 1)] == pytest.approx(
        history.train_loss, rel=1e-6)
    assert all(rows[step][f"attention/layer_{CONFIG.layer}/_type"] == "image-file"
               for step in history.eval_step)
    assert config["lr"] == pytest.approx(CONFIG.lr) and config["steps"] == CONFIG.steps
    assert summary["final/test_loss"] == pytest.approx(history.final["test_loss"], abs=1e-6)


def test_a_sweep_tracks_each_member_named_and_tagged_by_its_knobs(tmp_path, extra):
    extra("tensorboard", "tensorboard")
    extra("wandb", "wandb")
    config = replace(CONFIG, steps=8, eval_every=8)
    grid = {"graph": ["chain"], "seed": [0, 1], "seq_len": [6], "vocab_size": [4]}
    results = mc.sweep(grid, config, out=tmp_path / "study", progress=False, loggers=[
        mc.TensorBoardLogger(tmp_path / "tb", images=False),
        mc.WandbLogger("mechcausal-test", dir=tmp_path / "wb", images=False)])
    for row in results.itertuples():
        (folder,) = (tmp_path / "tb").glob(f"graph=chain,seed={row.seed},*")
        scalars, _ = _events(folder, extra)
        assert scalars["eval/test_loss"][-1][1] == pytest.approx(row.test_loss, abs=1e-6)
    runs = [_wandb_run(run_dir) for run_dir in (tmp_path / "wb" / "wandb").glob("offline-run-*")]
    assert sorted(config["seed"] for _, config, _, _ in runs) == [0, 1]
    for _, config_of_run, run, _ in runs:
        assert f"seed={config_of_run['seed']}" in run.tags and "graph=chain" in run.tags
        assert run.run_group == "study" and run.display_name.startswith("graph=chain")


def test_a_second_run_never_writes_into_the_first_ones_folder(tmp_path, extra):
    extra("tensorboard", "tensorboard")
    logger = mc.TensorBoardLogger(tmp_path, name="chain", images=False)
    first = mc.train(_model(0), TASK, CONFIG, callbacks=[logger])
    second = mc.train(_model(1), TASK, CONFIG, callbacks=[logger])
    for folder, history in (("chain", first), ("chain_1", second)):
        scalars, _ = _events(tmp_path / folder, extra)
        assert [step for step, _ in scalars["train/loss"]] == list(range(1, CONFIG.steps + 1))
        assert [v for _, v in scalars["eval/test_loss"]] == pytest.approx(history.test_loss,
                                                                          abs=1e-6)


def test_a_failed_run_closes_its_tracked_runs(tmp_path, extra):
    """A NaN mid-run: the loggers close (wandb marks the run failed), keep what was
    logged, and the logger can be shipped to a Ray worker again."""
    extra("tensorboard", "tensorboard")
    extra("wandb", "wandb")
    import pickle

    tensorboard = mc.TensorBoardLogger(tmp_path / "tb", images=False)
    wandb_logger = mc.WandbLogger("mechcausal-test", dir=tmp_path / "wb", images=False)
    model = _model()
    diverging = replace(CONFIG, optimizer="sgd", lr=1e30, warmup_steps=0)
    with pytest.raises(mc.NonFiniteLossError) as failure:
        mc.train(model, TASK, diverging, callbacks=[tensorboard, wandb_logger])
    assert tensorboard._runs == [] and wandb_logger._runs == []
    scalars, _ = _events(tmp_path / "tb" / "run", extra)
    assert [step for step, _ in scalars["eval/test_loss"]] == [0]  # the evaluation before
    (run_dir,) = (tmp_path / "wb" / "wandb").glob("offline-run-*")
    exits = [r.exit.exit_code for r in _finished_records(run_dir)
             if r.WhichOneof("record_type") == "exit"]
    assert exits == [1]
    pickle.loads(pickle.dumps(tensorboard))
    again = pickle.loads(pickle.dumps(failure.value))  # whole across processes
    assert again.step == failure.value.step and str(again) == str(failure.value)


def test_tracking_arguments_are_checked_when_the_logger_is_made(tmp_path, extra):
    extra("tensorboard", "tensorboard")
    extra("wandb", "wandb")
    with pytest.raises(ValueError, match="step_every"):
        mc.TensorBoardLogger(tmp_path, step_every=0)
    with pytest.raises(ValueError, match="mode"):
        mc.WandbLogger("p", mode="cloud")
    with pytest.raises(TypeError, match="loggers"):
        mc.sweep({"seed": [0]}, CONFIG, out=tmp_path / "s", loggers=["tensorboard"])


# ---------------------------------------------------------------------- notebook view
def test_show_attention_is_offline_html_with_the_bundled_script(monkeypatch, tmp_path, extra):
    extra("circuitsvis", "viz")

    def no_network(*args, **kwargs):
        raise AssertionError("show_attention probed the network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    model = _model().eval()
    tokens = torch.tensor([3, 1, 0, 2, 2, 1, 3])
    view = mc.show_attention(model, tokens, layer=0)
    html = view._repr_html_()
    assert "CircuitsVis.render" in html and "AttentionHeads" in html
    assert len(html) > 100_000  # the bundled circuitsvis script, inline
    assert "unpkg.com" not in html and 'from "http' not in html and "src=\"http" not in html
    assert view.tokens == ("<3>", "<1>", "<0>", "<2>", "<2>", "<1>", "<3>")
    assert '"<3>"' in html and "L0H0" in html
    page = view.save(tmp_path / "view.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and html in page


def test_show_attention_shows_the_models_own_pattern(extra):
    circuitsvis_render = extra("circuitsvis.utils.render", "viz")
    model = _model().eval()
    tokens = TASK.sample(1, generator=torch.Generator().manual_seed(0)).tokens
    captured = {}
    real = circuitsvis_render.convert_props

    def capture(props):
        captured.update(props)
        return real(props)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(circuitsvis_render, "convert_props", capture)
        mc.show_attention(model, tokens, layer=-1)
    _, cache = model.run_with_cache(tokens)
    expected = cache["blocks.1.attn.hook_pattern"][0]
    assert torch.allclose(torch.as_tensor(captured["attention"]), expected, atol=1e-6)
    assert captured["attentionHeadNames"] == [f"L1H{h}" for h in range(expected.shape[0])]


def test_show_attention_rejects_what_is_not_one_sequence(extra):
    extra("circuitsvis", "viz")
    model = _model()
    with pytest.raises(ValueError, match="one sequence"):
        mc.show_attention(model, torch.zeros(2, TASK.input_length, dtype=torch.long))
    with pytest.raises(ValueError, match=r"ids in 0\.\.3"):
        mc.show_attention(model, torch.tensor([0, 7]))
    with pytest.raises(TypeError, match="integer token ids"):
        mc.show_attention(model, torch.rand(5))
    with pytest.raises(ValueError, match="labels"):
        mc.show_attention(model, torch.tensor([0, 1]), labels=["a"])
    with pytest.raises(ValueError, match="layer"):
        mc.show_attention(model, torch.tensor([0, 1]), layer=5)


def test_the_train_command_logs_to_tensorboard(tmp_path, extra, capsys):
    extra("tensorboard", "tensorboard")
    from mechcausal.cli import main

    assert main(["train", "--graph", "chain", "--seq-len", "6", "--vocab-size", "4",
                 "--steps", "6", "--batch-size", "32", "--out", str(tmp_path / "run"),
                 "--tensorboard", str(tmp_path / "tb"), "--no-progress"]) == 0
    history = mc.load_checkpoint(tmp_path / "run" / "checkpoint.pt").history
    scalars, _ = _events(tmp_path / "tb" / "run", extra)
    assert [value for _, value in scalars["eval/test_loss"]] == pytest.approx(
        history.test_loss, abs=1e-6)


def test_show_attention_labels_cannot_end_the_pages_script(extra):
    extra("circuitsvis", "viz")
    view = mc.show_attention(_model(), torch.tensor([0, 1]), labels=["</script><b>", "x"])
    script = view.html[view.html.index("<script"):]
    assert script.count("</script>") == 1 and view.tokens[0] == "</script><b>"
