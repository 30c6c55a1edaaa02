"""A model's size is estimated from its configuration and refused before allocation when it would not fit
(issue 13, item 2): ``estimate_parameters`` against real counts, ``max_params`` and the available memory in
``create_model``, ``from_pretrained`` / ``load_model``, ``mpma predict --max-params`` and ``mpma convert --max-params``."""

from __future__ import annotations

import time

import pytest
import torch

from mpma.cli import main
from mpma.config import load_config
from mpma.hub import load_model
from mpma.models import size
from mpma.models.factory import create_model
from mpma.models.mpma import MPMAModel
from mpma.models.size import ModelTooLargeError, available_memory, estimate_parameters
from tests.conftest import MICRO
from tests.reliability.micro_folders import copy_folder, edit_json, save_micro_models, write_image


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def folders(tmp_path_factory, micro_config, tokenizer):
    return save_micro_models(tmp_path_factory.mktemp("size-models"), micro_config, tokenizer)


@pytest.mark.parametrize("preset, overrides", [
    ("tiny", MICRO),
    ("tiny", [*MICRO, "text.model_type=roberta", "vision.pre_norm=true", "fusion.depth=2", "fusion.memory_layers=[1]"]),
    ("tiny", [*MICRO, "objectives.global_align=0", "objectives.mim=0", "vision.mlp_ratio=2.5"]),
    ("tiny", []),
    ("tiny_m3ae", []),
], ids=["micro", "micro-roberta", "micro-no-global-no-mim", "tiny", "tiny_m3ae"])
def test_the_estimate_matches_the_real_count(preset, overrides, tokenizer):
    config = load_config(preset, overrides)
    pad = tokenizer.pad_token_id
    model = MPMAModel(config, len(tokenizer), pad)
    assert estimate_parameters(config, len(tokenizer), pad_token_id=pad) == pytest.approx(count(model), rel=0.1)
    assert estimate_parameters(config, len(tokenizer), pad_token_id=pad) == count(model)  # in fact exact


def test_the_estimate_follows_heads_and_a_saved_text_encoder(micro_config, tokenizer):
    config = micro_config()
    model = MPMAModel(config, len(tokenizer), tokenizer.pad_token_id, heads={"align"}, align_parts=(True, False))
    saved = model.text.encoder.config.to_dict()
    assert estimate_parameters(config, len(tokenizer), {"align"}, saved, align_parts=(True, False)) == count(model)
    wider = {**saved, "hidden_size": 64, "intermediate_size": 128}
    assert estimate_parameters(config, len(tokenizer), {"align"}, wider, align_parts=(True, False)) > count(model)


def test_create_model_refuses_above_max_params(micro_config, tokenizer):
    config = micro_config()
    n = estimate_parameters(config, len(tokenizer))
    assert count(create_model(config, len(tokenizer), tokenizer.pad_token_id, max_params=n)) == n  # the limit itself is fine
    with pytest.raises(ModelTooLargeError, match=rf"{n:,} parameters, above the limit of {n - 1:,}"):
        create_model(config, len(tokenizer), tokenizer.pad_token_id, max_params=n - 1)


def test_create_model_refuses_what_the_memory_cannot_hold(micro_config, tokenizer, monkeypatch):
    monkeypatch.setattr(size, "available_memory", lambda: 100_000)  # 100 kB
    with pytest.raises(ModelTooLargeError, match="more than the 0.0 GiB of memory available"):
        create_model(micro_config(), len(tokenizer), tokenizer.pad_token_id)
    monkeypatch.setattr(size, "available_memory", lambda: None)  # unknown: no check
    create_model(micro_config(), len(tokenizer), tokenizer.pad_token_id)


def test_available_memory_reads_meminfo(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       1000 kB\nMemAvailable:    512 kB\n")
    monkeypatch.setattr(size, "MEMINFO", meminfo)
    assert available_memory() == 512 * 1024
    monkeypatch.setattr(size, "MEMINFO", tmp_path / "missing")
    assert available_memory() is None


@pytest.mark.parametrize("width", [16384, 10**9])
def test_a_folder_describing_a_huge_model_is_refused_before_allocation(folders, tmp_path, width, monkeypatch):
    folder = copy_folder(folders["vqa"], tmp_path / "huge")
    edit_json(folder / "config.json", lambda meta: meta["backbone"]["vision"].update(width=width))
    monkeypatch.setattr(size, "available_memory", lambda: 2 * 2**30)  # a 2 GiB machine, whatever this one has
    start = time.monotonic()
    with pytest.raises(ModelTooLargeError) as info:
        load_model(folder)
    assert time.monotonic() - start < 5  # refused from the config, nothing was built
    message = str(info.value)
    assert str(folder / "config.json") in message and "memory available" in message and "parameters" in message


def test_max_params_passes_through_load_model(folders):
    n = count(load_model(folders["vqa"]).module)
    load_model(folders["vqa"], max_params=n)
    with pytest.raises(ModelTooLargeError, match="above the limit"):
        load_model(folders["vqa"], max_params=n - 1)


def test_predict_max_params(folders, tmp_path, capsys):
    image = write_image(tmp_path / "x.png")
    args = ["predict", "vqa", "--model", str(folders["vqa"]), "--image", str(image), "--question", "is there a nodule?"]
    assert main([*args, "--max-params", "1e3"]) == 2
    err = capsys.readouterr().err
    assert "above the limit of 1,000" in err and "Traceback" not in err
    assert main([*args, "--max-params", "1e9"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*args, "--max-params", "-5"])
    assert "positive whole number" in capsys.readouterr().err


def test_convert_max_params(folders, tmp_path, capsys):
    assert main(["convert", "--run", str(folders["backbone"]), "--out", str(tmp_path / "out"), "--max-params", "500"]) == 2
    assert "above the limit of 500" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(["convert", "--run", str(folders["backbone"]), "--out", str(tmp_path / "out"), "--max-params", "5e8"]) == 0
