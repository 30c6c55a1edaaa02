"""Every configuration number and choice is range-checked when it is parsed (issue 13, item 1): the error
names the dotted key, the value and what is allowed; defaults, presets and the tests' micro config load."""

from __future__ import annotations

import dataclasses

import pytest

from mpma.cli import main
from mpma.config import (
    PRESET_DIR,
    Config,
    ConfigError,
    DecoderConfig,
    FinetuneConfig,
    OptimConfig,
    VisionConfig,
    config_from_dict,
    load_config,
    preset_names,
)
from tests.conftest import MICRO, MICRO_PRESET_YAML

FINETUNE_PRESETS = sorted(f"finetune/{p.stem}" for p in (PRESET_DIR / "finetune").glob("*.yaml"))


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads(name):
    assert isinstance(load_config(name), Config)


@pytest.mark.parametrize("name", FINETUNE_PRESETS)
def test_every_finetune_preset_loads(name):
    assert isinstance(load_config(name, cls=FinetuneConfig), FinetuneConfig)


def test_defaults_and_the_micro_config_load(tmp_path):
    Config(), FinetuneConfig(), load_config(None), load_config(None, cls=FinetuneConfig)
    load_config("tiny", MICRO)
    preset = tmp_path / "micro.yaml"
    preset.write_text(MICRO_PRESET_YAML)
    load_config(str(preset))
    # a saved configuration round-trips
    assert config_from_dict(load_config("base").to_dict()) == load_config("base")


# (override, the key the message starts with, a fragment of the message)
PRETRAIN_ERRORS = [
    ("optim.accumulate=0", "optim.accumulate", ">= 1"),
    ("optim.lr=-1", "optim.lr", ">= 0"),
    ("optim.lr=.nan", "optim.lr", ">= 0"),
    ("optim.head_lr_mult=0", "optim.head_lr_mult", "> 0"),
    ("optim.weight_decay=-0.1", "optim.weight_decay", ">= 0"),
    ("optim.beta1=1", "optim.beta1", "[0, 1)"),
    ("optim.beta2=-0.5", "optim.beta2", "[0, 1)"),
    ("optim.eps=0", "optim.eps", "> 0"),
    ("optim.steps=-5", "optim.steps", ">= 0"),
    ("optim.steps=0", "optim.steps", "pre-training steps"),
    ("optim.warmup_steps=-1", "optim.warmup_steps", ">= 0"),
    ("optim.min_lr_ratio=1.5", "optim.min_lr_ratio", "[0, 1]"),
    ("optim.decay_steps=-5", "optim.decay_steps", ">= 0"),
    ("optim.grad_clip=-1", "optim.grad_clip", ">= 0"),
    ("data.batch_size=0", "data.batch_size", ">= 1"),
    ("data.train_size=0", "data.train_size", ">= 1"),
    ("data.num_workers=-1", "data.num_workers", ">= 0"),
    ("data.seed=-3", "data.seed", ">= 0"),
    ("data.normal_fraction=2", "data.normal_fraction", "[0, 1]"),
    ("data.dataset=' '", "data.dataset", "non-empty"),
    ("run.log_every=0", "run.log_every", ">= 1"),
    ("run.checkpoint_every=0", "run.checkpoint_every", ">= 1"),
    ("run.keep_checkpoints=-1", "run.keep_checkpoints", ">= 0"),
    ("run.eval_size=0", "run.eval_size", ">= 1"),
    ("run.grounding_every=-1", "run.grounding_every", ">= 0"),
    ("run.threads=-2", "run.threads", ">= 0"),
    ("run.seed=-1", "run.seed", ">= 0"),
    ("run.precision=fp8", "run.precision", "fp32, bf16, fp16"),
    ("run.device=tpu", "run.device", "auto, cpu, cuda"),
    ("vision.mask_ratio=1.5", "vision.mask_ratio", "[0, 1)"),
    ("vision.mask_ratio=1", "vision.mask_ratio", "[0, 1)"),
    ("vision.mask_ratio=-0.1", "vision.mask_ratio", "[0, 1)"),
    ("vision.width=-16", "vision.width", ">= 1"),
    ("vision.width=130", "vision.width", "multiple of 4"),
    ("vision.heads=3", "vision.width", "128 is not divisible by vision.heads=3"),
    ("vision.heads=0", "vision.heads", ">= 1"),
    ("vision.depth=0", "vision.depth", ">= 1"),
    ("vision.patch_size=7", "vision.patch_size", "does not divide vision.image_size=64"),
    ("vision.image_size=0", "vision.image_size", ">= 1"),
    ("vision.channels=0", "vision.channels", ">= 1"),
    ("vision.mlp_ratio=0", "vision.mlp_ratio", "> 0"),
    ("vision.drop_path=1", "vision.drop_path", "[0, 1)"),
    ("vision.align_mask_ratio=1", "vision.align_mask_ratio", "[0, 1)"),
    ("vision.activation=relu", "vision.activation", "gelu, quick_gelu"),
    ("vision.norm_eps=0", "vision.norm_eps", "> 0"),
    ("text.width=130", "text.width", "not divisible by text.heads=4"),
    ("text.heads=0", "text.heads", ">= 1"),
    ("text.depth=0", "text.depth", ">= 1"),
    ("text.intermediate=0", "text.intermediate", ">= 1"),
    ("text.vocab_size=0", "text.vocab_size", ">= 1"),
    ("text.max_length=2", "text.max_length", ">= 4"),
    ("text.mask_ratio=1", "text.mask_ratio", "[0, 1)"),
    ("text.dropout=1", "text.dropout", "[0, 1)"),
    ("text.dropout=-0.1", "text.dropout", "[0, 1)"),
    ("text.model_type='BERT base'", "text.model_type", "transformers model type"),
    ("fusion.width=130", "fusion.width", "not divisible by fusion.heads=4"),
    ("fusion.depth=-1", "fusion.depth", ">= 0"),
    ("fusion.heads=-1", "fusion.heads", ">= 1"),
    ("fusion.mlp_ratio=-2", "fusion.mlp_ratio", "> 0"),
    ("fusion.memory_slots=-1", "fusion.memory_slots", ">= 0"),
    ("fusion.memory_layers=[2]", "fusion.memory_layers", "outside 0..1"),
    ("fusion.memory_layers=[0,0]", "fusion.memory_layers", "twice"),
    ("decoder.width=66", "decoder.width", "multiple of 4"),
    ("decoder.heads=3", "decoder.width", "64 is not divisible by decoder.heads=3"),
    ("decoder.depth=-1", "decoder.depth", ">= 0"),
    ("decoder.heads=0", "decoder.heads", ">= 1"),
    ("objectives.mlm=-1", "objectives.mlm", ">= 0"),
    ("objectives.itm=.inf", "objectives.itm", ">= 0"),
    ("objectives.align_dim=0", "objectives.align_dim", ">= 1"),
    ("objectives.align_pool=max", "objectives.align_pool", "cls, mean"),
    ("objectives.temperature=0", "objectives.temperature", "> 0"),
]


@pytest.mark.parametrize("override, key, fragment", PRETRAIN_ERRORS, ids=[e[0] for e in PRETRAIN_ERRORS])
def test_a_value_out_of_range_is_an_error_naming_the_key(override, key, fragment):
    with pytest.raises(ConfigError) as info:
        load_config("tiny", [override])
    message = str(info.value)
    assert message.startswith(key + ":"), message
    assert fragment in message, message


def test_every_loss_weight_zero_is_an_error():
    with pytest.raises(ConfigError, match="objectives: every loss weight"):
        load_config("tiny", [f"objectives.{name}=0" for name in ("mlm", "mim", "global_align", "local_align", "itm")])


FINETUNE_ERRORS = [
    ("epochs=-1", "epochs", ">= 0"),
    ("warmup_fraction=1", "warmup_fraction", "[0, 1)"),
    ("task=''", "task", "non-empty"),
    ("init=' '", "init", "non-empty"),
    ("preset=''", "preset", "non-empty"),
    ("data.val_fraction=-0.1", "data.val_fraction", "[0, 1)"),  # 0 is allowed: no validation hold-out
    ("data.val_fraction=1", "data.val_fraction", "[0, 1)"),
    ("head.label_smoothing=1.5", "head.label_smoothing", "[0, 1)"),
    ("data.fraction=0", "data.fraction", "(0, 1]"),
    ("data.fraction=1.5", "data.fraction", "(0, 1]"),
    ("data.batch_size=0", "data.batch_size", ">= 1"),
    ("data.eval_batch_size=0", "data.eval_batch_size", ">= 1"),
    ("data.train_size=0", "data.train_size", ">= 1"),
    ("data.val_size=0", "data.val_size", ">= 1"),
    ("data.test_size=-4", "data.test_size", ">= 1"),
    ("data.num_workers=-1", "data.num_workers", ">= 0"),
    ("head.vqa_loss=mse", "head.vqa_loss", "bce, ce"),
    ("head.answer_vocab=test", "head.answer_vocab", "train, all_splits"),
    ("head.pool=max", "head.pool", "cls, mean, slot"),
    ("head.image_mode=frozen", "head.image_mode", "finetune, linear_probe"),
    ("head.hidden_mult=0", "head.hidden_mult", "> 0"),
    ("head.rerank_k=-1", "head.rerank_k", ">= 0"),
    ("head.prompt='a chest radiograph'", "head.prompt", "{label}"),
    ("optim.lr=-1", "optim.lr", ">= 0"),
    ("optim.accumulate=0", "optim.accumulate", ">= 1"),
    ("optim.steps=-5", "optim.steps", ">= 0"),
    ("run.log_every=0", "run.log_every", ">= 1"),
    ("run.precision=half", "run.precision", "fp32, bf16, fp16"),
]


@pytest.mark.parametrize("override, key, fragment", FINETUNE_ERRORS, ids=[e[0] for e in FINETUNE_ERRORS])
def test_a_finetune_value_out_of_range_is_an_error_naming_the_key(override, key, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override], cls=FinetuneConfig)
    message = str(info.value)
    assert message.startswith(key + ":") and fragment in message, message


@pytest.mark.parametrize("override", [
    "vision.mask_ratio=0", "text.mask_ratio=0", "decoder.depth=0", "fusion.memory_slots=0", "optim.warmup_steps=0",
    "optim.grad_clip=0", "optim.weight_decay=0", "optim.min_lr_ratio=1", "run.keep_checkpoints=0", "run.threads=0",
    "optim.lr=0", "fusion.depth=0",
    "run.grounding_every=0", "text.dropout=0", "data.normal_fraction=0", "objectives.mlm=0", "vision.align_mask_ratio=0",
    "text.model_type=roberta", "run.device=cuda", "run.precision=bf16",
])
def test_the_edges_that_mean_something_are_accepted(override):
    load_config("tiny", [override])


@pytest.mark.parametrize("override", ["optim.steps=0", "epochs=0", "data.fraction=1", "head.vqa_loss=ce",
                                      "head.pool=mean", "head.pool=slot", "head.image_mode=linear_probe", "head.answer_vocab=all_splits"])
def test_finetune_edges_that_mean_something_are_accepted(override):
    load_config(None, [override], cls=FinetuneConfig)


def test_a_saved_configuration_is_checked_too():
    values = load_config("tiny").to_dict()
    values["run"]["checkpoint_every"] = 0
    with pytest.raises(ConfigError, match=r"^run\.checkpoint_every: .*got 0"):
        config_from_dict(values)


def test_sections_built_in_code_are_checked():
    with pytest.raises(ConfigError, match="optim.accumulate"):
        OptimConfig(accumulate=0)
    with pytest.raises(ConfigError, match="vision.patch_size"):
        VisionConfig(image_size=32, patch_size=5)
    with pytest.raises(ConfigError, match="vision.mask_ratio"):
        dataclasses.replace(VisionConfig(), mask_ratio=1.5)
    DecoderConfig(width=16, depth=0, heads=2)  # a decoder without blocks is allowed


def test_the_cli_prints_the_error_and_exits_2(tmp_path, capsys):
    assert main(["pretrain", "--out", str(tmp_path / "run"), "--config", "tiny", "optim.accumulate=0"]) == 2
    err = capsys.readouterr().err
    assert "optim.accumulate: expected an integer >= 1" in err and "Traceback" not in err
