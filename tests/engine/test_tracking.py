"""Experiment tracking (run.report_to): the setting, and TensorBoard event files read back with TensorBoard's own reader.

The TensorBoard tests skip when the ``track`` extra is not installed; the wandb test when wandb is not.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from mpma.config import ConfigError, load_config
from mpma.config.checks import report_targets
from mpma.engine.tracking import TENSORBOARD_DIR, Tracker, flatten

MICRO_FT = ["data.train_size=24", "data.val_size=8", "data.test_size=12", "data.batch_size=8", "epochs=2"]


def read_events(run_dir: Path):
    """TensorBoard's own reader over the run's event files (scalars and images loaded in full)."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(run_dir / TENSORBOARD_DIR), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


@pytest.mark.parametrize("value, expected", [
    ("none", []), ("tensorboard", ["tensorboard"]), ("tensorboard, wandb", ["tensorboard", "wandb"]),
    (["wandb", "TensorBoard", "wandb"], ["wandb", "tensorboard"]), ([], []), ("", []),
])
def test_report_to_accepts_a_list_or_a_comma_string(value, expected):
    assert report_targets("run.report_to", value) == expected


@pytest.mark.parametrize("override, message", [
    ("run.report_to=mlflow", "run.report_to: unknown tracker 'mlflow'; expected .* none, tensorboard, wandb"),
    ("run.report_to=[none,wandb]", "'none' cannot be combined"),
    ("run.report_to=3", "run.report_to: expected"),
])
def test_report_to_is_checked(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", [override])


def test_report_to_round_trips_through_the_config():
    config = load_config("tiny", ["run.report_to=tensorboard,wandb"])
    assert config.run.report_to == ["tensorboard", "wandb"]
    assert load_config("tiny").run.report_to == []


def test_flatten_keeps_finite_numbers_of_nested_records():
    record = {"step": 3, "lr": 0.1, "val": {"acc": 0.5, "closed": {"acc": 1}, "name": "x", "nan": float("nan")}}
    assert flatten(record) == {"lr": 0.1, "val/acc": 0.5, "val/closed/acc": 1.0}


def test_no_tracker_writes_nothing(tmp_path):
    tracker = Tracker(tmp_path, [])
    tracker.log_record({"step": 1, "loss": 1.0})
    assert not tracker.active and not any(tmp_path.iterdir())


def test_missing_extras_are_one_line_naming_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[track\]"') as error:
        Tracker(tmp_path, ["tensorboard"])
    assert "\n" not in str(error.value)
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match="pip install wandb"):
        Tracker(tmp_path, ["wandb"])


def test_a_run_without_the_extra_stops_with_one_error_line(tmp_path, monkeypatch, capsys, micro_preset_text):
    from mpma.cli import main

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    preset = tmp_path / "micro.yaml"
    preset.write_text(micro_preset_text)
    assert main(["finetune", "img_cls", "--out", str(tmp_path / "ft"), "--no-progress", f"preset={preset}",
                 *MICRO_FT, "run.report_to=tensorboard"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: run.report_to=tensorboard needs the \"track\" extra: pip install -e")
    assert not (tmp_path / "ft" / "log.jsonl").exists()  # stopped before training


def test_records_and_images_are_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    tracker = Tracker(tmp_path, ["tensorboard"])
    for step in (1, 2):
        tracker.log_record({"step": step, "lr": 1e-3 * step, "loss": 2.0 / step, "mlm": 1.0 / step, "samples_per_s": 50.0})
    tracker.log_record({"step": 2, "epoch": 1, "val": {"accuracy": 0.75}})
    tracker.log_images({"map": np.zeros((8, 12), np.uint8)}, 2)
    tracker.close()
    events = read_events(tmp_path)
    tags = events.Tags()
    assert {"train/loss", "train/mlm", "train/lr", "train/samples_per_s", "val/accuracy", "epoch"} <= set(tags["scalars"])
    assert [(e.step, e.value) for e in events.Scalars("train/mlm")] == [(1, 1.0), (2, 0.5)]
    assert events.Scalars("val/accuracy")[0].value == pytest.approx(0.75)
    image = events.Images("images/map")[0]
    assert (image.step, image.width, image.height) == (2, 12, 8)


@pytest.mark.slow
def test_pretraining_writes_every_loss_term_lr_throughput_and_checkpoint_images(tmp_path, micro_config, tokenizer_dir):
    pytest.importorskip("tensorboard")
    from mpma.pipelines.pretraining import run_pretraining

    config = micro_config("optim.steps=4", "optim.warmup_steps=1", "run.log_every=1", "run.checkpoint_every=2",
                          "run.threads=1", "run.eval_size=8", f"text.tokenizer={tokenizer_dir}",
                          "run.report_to=tensorboard")
    run_pretraining(config, tmp_path / "run", progress=False)
    events = read_events(tmp_path / "run")
    scalars = set(events.Tags()["scalars"])
    terms = {"loss", "mlm", "mim", "global_align", "local_align", "itm"}
    assert {f"train/{t}" for t in terms} | {"train/lr", "train/samples_per_s"} <= scalars
    assert [e.step for e in events.Scalars("train/mlm")] == [1, 2, 3, 4]
    images = set(events.Tags()["images"])
    assert {"images/reconstructions", "images/alignment_0", "images/alignment_1"} <= images
    assert [e.step for e in events.Images("images/alignment_0")] == [2, 4]  # at each checkpoint


def test_finetuning_writes_training_and_validation_metrics(tmp_path, micro_preset_text):
    pytest.importorskip("tensorboard")
    from mpma.cli import main

    preset = tmp_path / "micro.yaml"
    preset.write_text(micro_preset_text)
    out = tmp_path / "ft"
    assert main(["finetune", "img_cls", "--out", str(out), "--no-progress", f"preset={preset}", *MICRO_FT,
                 "run.report_to=tensorboard", "run.log_every=1"]) == 0
    events = read_events(out)
    scalars = set(events.Tags()["scalars"])
    assert {"train/task", "train/loss", "train/lr", "train/samples_per_s", "epoch"} <= scalars
    val = sorted(tag for tag in scalars if tag.startswith("val/"))
    assert val and [e.value for e in events.Scalars("epoch")] == [1.0, 2.0]


def test_wandb_runs_offline_into_the_run_folder(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "online")  # overridden: the tracker never goes online
    tracker = Tracker(tmp_path, ["wandb"], config={"run": {"seed": 0}})
    tracker.log_record({"step": 1, "loss": 1.5})
    tracker.close()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert runs and any(runs[0].rglob("*.wandb"))
