"""Model and run folders: a damaged ``config.json`` / ``task.json`` is an error naming the file and the key
(issue 13, item 1), and loading a folder reads nothing outside it (item 3): planted ``*.init`` paths are
never followed; a 0.1.0 run that would need its ``text.init`` is refused with a pointer to
``mpma convert --upgrade``, which alone may read that folder's config.json (never its weights)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from mpma.cli import main
from mpma.config import ConfigError
from mpma.hub import from_pretrained, load_model
from mpma.hub.checks import FolderError
from mpma.hub.legacy import upgrade
from tests.reliability.micro_folders import (
    FIXTURES,
    OpenedFiles,
    copy_folder,
    edit_json,
    save_micro_models,
    trap_folder,
    write_image,
)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, micro_config, tokenizer):
    return save_micro_models(tmp_path_factory.mktemp("folder-models"), micro_config, tokenizer)


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(_params(a), _params(b), strict=True))


# ------------------------------------------------------------------------ damaged config.json / task.json


def _drop(key):
    return lambda meta: meta.pop(key)


def _set(path, value):
    def edit(meta):
        node = meta
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
    return edit


# (name, edit of config.json, a fragment of the message: the key)
CONFIG_EDITS = [
    ("no backbone", _drop("backbone"), "has no 'backbone'"),
    ("no vocab_size", _drop("vocab_size"), "has no 'vocab_size'"),
    ("no pad_token_id", _drop("pad_token_id"), "has no 'pad_token_id'"),
    ("vocab_size 0", _set(["vocab_size"], 0), "'vocab_size' must be an integer >= 1"),
    ("vocab_size text", _set(["vocab_size"], "many"), "'vocab_size' must be an integer >= 1"),
    ("pad outside", _set(["pad_token_id"], 10**6), "'pad_token_id' must be an integer in [0, vocab_size="),
    ("negative width", _set(["backbone", "vision", "width"], -16), "in 'backbone': vision.width: expected an integer >= 1"),
    ("width vs heads", _set(["backbone", "fusion", "heads"], 3), "in 'backbone': fusion.width: 32 is not divisible"),
    ("unknown key", _set(["backbone", "vision", "widht"], 3), "in 'backbone': unknown config key 'vision.widht'"),
    ("backbone list", _set(["backbone"], [1, 2]), "'backbone' must be a mapping"),
    ("text width", _set(["text_encoder", "hidden_size"], -5), "'text_encoder.hidden_size' must be an integer >= 1"),
    ("text heads", _set(["text_encoder", "num_attention_heads"], 3), "'text_encoder.hidden_size' 32 is not divisible"),
    ("text type", _set(["text_encoder", "model_type"], "nonsense"), "'text_encoder.model_type' is 'nonsense'"),
    ("text vocab", _set(["text_encoder", "vocab_size"], 3), "the text encoder embeds only 3"),
    ("text encoder list", _set(["text_encoder"], [1]), "'text_encoder' must be a mapping"),
    ("unknown head", _set(["backbone_modules"], ["align", "decoder"]), "'backbone_modules' must list heads among"),
    ("align flag", _set(["align_global"], "yes"), "'align_global' must be true or false"),
    ("preprocess size", _set(["preprocess", "image_size"], 0), "'preprocess.image_size' must be an integer >= 1"),
    ("preprocess std", _set(["preprocess", "std"], [0, 1, 1]), "'preprocess.std' must be 3 numbers > 0"),
]


@pytest.mark.parametrize("name, edit, fragment", CONFIG_EDITS, ids=[e[0] for e in CONFIG_EDITS])
def test_a_damaged_config_json_is_an_error_naming_the_folder_and_key(folders, tmp_path, name, edit, fragment):
    folder = copy_folder(folders["vqa"], tmp_path / "damaged")
    edit_json(folder / "config.json", edit)
    with pytest.raises((FolderError, ConfigError)) as info:
        load_model(folder)
    message = str(info.value)
    assert str(folder / "config.json") in message and fragment in message, message


TASK_EDITS = [
    ("no task", _drop("task"), "expected a mapping with a 'task' name"),
    ("unknown task", _set(["task"], "segmentation"), "unknown task 'segmentation'"),
    ("outputs", _set(["head", "outputs"], -1), "'head.outputs' must be an integer >= 1"),
    ("hidden", _set(["head", "hidden"], None), "'head.hidden' must be an integer >= 1"),
    ("classes", _set(["classes"], ["yes"]), "'head.outputs' is 5 but 'classes' lists 1"),
    ("head", _set(["head"], "fused"), "'head' must be a mapping"),
]


@pytest.mark.parametrize("name, edit, fragment", TASK_EDITS, ids=[e[0] for e in TASK_EDITS])
def test_a_damaged_task_json_is_an_error_naming_the_folder_and_key(folders, tmp_path, name, edit, fragment):
    folder = copy_folder(folders["vqa"], tmp_path / "damaged")
    edit_json(folder / "task.json", edit)
    with pytest.raises(FolderError) as info:
        load_model(folder)
    message = str(info.value)
    assert str(folder / "task.json") in message and fragment in message, message


def test_the_cli_reports_a_damaged_folder_without_a_traceback(folders, tmp_path, capsys):
    folder = copy_folder(folders["vqa"], tmp_path / "damaged")
    edit_json(folder / "config.json", _drop("vocab_size"))
    image = write_image(tmp_path / "x.png")
    assert main(["predict", "vqa", "--model", str(folder), "--image", str(image), "--question", "is it?"]) == 2
    err = capsys.readouterr().err
    assert f"{folder / 'config.json'} has no 'vocab_size'" in err and "Traceback" not in err


def test_a_config_json_that_is_not_a_mapping(folders, tmp_path):
    folder = copy_folder(folders["backbone"], tmp_path / "list")
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not an mpma model folder"):
        from_pretrained(folder)


# ------------------------------------------------------------------------ nothing outside the folder is read


@pytest.mark.parametrize("kind", ["backbone", "vqa"])
def test_planted_init_paths_are_never_followed(folders, tmp_path, kind):
    """text.init / vision.init planted into config.json: a missing path, and a folder whose config.json
    says another architecture and whose only weights are a booby-trapped pickle. Loading still works from
    the folder alone, gives the same weights, and opens nothing in the planted folder."""
    reference = load_model(folders[kind])
    marker = tmp_path / "unpickled"
    trap = trap_folder(tmp_path / "elsewhere", marker)
    opened = OpenedFiles.get()
    for planted in ("/nonexistent/text-encoder", str(trap)):
        folder = copy_folder(folders[kind], tmp_path / f"planted-{len(list(tmp_path.iterdir()))}")
        edit_json(folder / "config.json",
                  lambda meta: (meta["backbone"]["text"].update(init=planted), meta["backbone"]["vision"].update(init=planted)))
        opened.paths.clear()
        opened.recording = True
        try:
            loaded = load_model(folder)
        finally:
            opened.recording = False
        assert _same_weights(loaded.module, reference.module)
        assert loaded.config.text.init is None and loaded.config.vision.init is None
        assert opened.under(trap) == [] and not marker.exists()
        assert opened.under(folder)  # the recorder works: the folder's own files were opened


def test_a_0_1_0_run_with_a_planted_vision_init_loads_from_the_run_alone(tmp_path):
    run = copy_folder(FIXTURES / "finetune_vqa_run", tmp_path / "run")
    reference = load_model(FIXTURES / "finetune_vqa_run")
    edit_json(run / "backbone.json", lambda config: config["vision"].update(init="/nonexistent/clip"))
    assert _same_weights(load_model(run).module, reference.module)


@pytest.mark.parametrize("name, config_file", [("finetune_vqa_run", "backbone.json"), ("pretrain_run", "config.json")])
def test_a_0_1_0_run_that_needs_its_text_init_is_refused_with_the_upgrade_command(tmp_path, name, config_file, capsys):
    run = copy_folder(FIXTURES / name, tmp_path / name)
    edit_json(run / config_file, lambda config: config["text"].update(init="/nonexistent"))
    with pytest.raises(FolderError) as info:
        load_model(run)
    message = str(info.value)
    assert "text.init=/nonexistent" in message and f"mpma convert --upgrade {run}" in message
    assert main(["predict", "vqa", "--model", str(run), "--image", "x.png", "--question", "is it?"]) == 2
    assert "mpma convert --upgrade" in capsys.readouterr().err


def test_the_upgrade_reads_only_the_text_init_config_and_then_the_run_is_self_contained(tmp_path):
    """The fixture's text encoder is bert 16 x 1 layer, 2 heads: its architecture in a folder that also holds
    a booby-trapped pickle. The upgrade reads the config.json only; afterwards the folder is not needed."""
    run = copy_folder(FIXTURES / "finetune_vqa_run", tmp_path / "run")
    reference = load_model(FIXTURES / "finetune_vqa_run")
    marker = tmp_path / "unpickled"
    encoder = reference.backbone.text.encoder.config.to_dict()
    trap = trap_folder(tmp_path / "bert", marker, encoder)
    edit_json(run / "backbone.json", lambda config: config["text"].update(init=str(trap)))
    assert upgrade(run) == [run / "best"]
    assert not marker.exists()
    shutil.rmtree(trap)
    loaded = load_model(run)
    assert _same_weights(loaded.module, reference.module)
    assert loaded.backbone.text.encoder.config.num_attention_heads == encoder["num_attention_heads"]


def test_an_upgrade_whose_text_init_is_gone_says_what_to_restore(tmp_path):
    run = copy_folder(FIXTURES / "pretrain_run", tmp_path / "run")
    edit_json(run / "config.json", lambda config: config["text"].update(init="/nonexistent"))
    with pytest.raises(FileNotFoundError, match=r"recorded only in text.init=/nonexistent/config.json.*restore"):
        upgrade(run)


def test_a_0_1_0_zero_shot_run_without_weights_points_to_its_init(tmp_path):
    """Such a run kept no weights (it evaluated its --init): loading it would read another folder."""
    run = copy_folder(FIXTURES / "finetune_vqa_run", tmp_path / "run")
    shutil.rmtree(run / "best")
    edit_json(run / "config.json", lambda config: config.update(task="zero_shot_cls"))
    init = json.loads((run / "config.json").read_text())["init"]
    with pytest.raises(FileNotFoundError, match=rf"reads nothing outside it; load {init} instead"):
        load_model(run)


def test_a_text_init_folder_of_pickles_is_refused(tmp_path, micro_config, tokenizer):
    """Pre-training / create_model with text.init pointing at a folder with pytorch_model.bin only."""
    from mpma.models.convert import UnsafeCheckpointError
    from mpma.models.factory import create_model

    marker = tmp_path / "unpickled"
    trap = trap_folder(tmp_path / "bert", marker)
    with pytest.raises(UnsafeCheckpointError, match=rf"text.init {trap}: its weights are pickled \(pytorch_model.bin\)"):
        create_model(micro_config(f"text.init={trap}"), len(tokenizer), tokenizer.pad_token_id)
    assert not marker.exists()
    with pytest.raises(FileNotFoundError, match="text.init /nonexistent: not a folder"):
        create_model(micro_config("text.init=/nonexistent"), len(tokenizer), tokenizer.pad_token_id)
