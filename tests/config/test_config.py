"""Configuration: presets, dotted overrides, type checks that name the key, round trips."""

from __future__ import annotations

import json

import pytest

from mpma.config import (
    PRESET_DIR,
    Config,
    ConfigError,
    DataConfig,
    FinetuneConfig,
    RemovedConfigKeyWarning,
    config_from_dict,
    load_config,
    overrides_to_dict,
    parse_override,
    preset_names,
)

PRESETS = ["tiny", "small", "base", "tiny_m3ae", "base_m3ae", "tiny_grounding"]


def test_every_documented_preset_exists() -> None:
    assert set(PRESETS) <= set(preset_names())


@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads_and_is_consistent(name: str) -> None:
    config = load_config(name)
    assert isinstance(config, Config)
    assert config.vision.image_size % config.vision.patch_size == 0
    assert config.vision.width % config.vision.heads == 0
    assert config.text.width % config.text.heads == 0
    assert config.fusion.width % config.fusion.heads == 0
    assert config.decoder.width % config.decoder.heads == 0
    assert 0 < config.vision.mask_ratio < 1 and 0 < config.text.mask_ratio < 1


def test_preset_shapes_match_the_design() -> None:
    base = load_config("base")
    assert (base.vision.image_size, base.vision.patch_size, base.vision.width, base.vision.depth) == (224, 16, 768, 12)
    assert (base.text.model_type, base.text.width, base.text.depth) == ("roberta", 768, 12)
    assert (base.fusion.width, base.fusion.depth, base.fusion.memory_slots) == (768, 6, 64)
    assert (base.decoder.width, base.decoder.depth) == (384, 4)
    assert base.optim.head_lr_mult == 5.0
    tiny = load_config("tiny")
    assert tiny.vision.image_size == 64 and tiny.vision.patch_size == 8


def test_the_grounding_preset_is_tiny_at_twice_the_steps_on_the_plain_cosine_schedule() -> None:
    child, tiny = load_config("tiny_grounding"), load_config("tiny")
    # twice the 700 steps tiny had when its figures were recorded (tiny: 900 since 2026-12-05)
    assert child.optim.steps == 1400 and tiny.optim.steps == 900 and child.objectives.local_patch_to_token == 0
    assert child.optim.decay_steps == 0 < tiny.optim.decay_steps  # the schedule its recorded figures ran with
    assert child.vision == tiny.vision and child.text == tiny.text and child.fusion == tiny.fusion
    assert child.data == tiny.data and child.run == tiny.run and child.objectives == tiny.objectives
    assert {k: v for k, v in vars(child.optim).items() if k not in ("steps", "decay_steps")} == {
        k: v for k, v in vars(tiny.optim).items() if k not in ("steps", "decay_steps")}


@pytest.mark.parametrize("ablation, parent", [("tiny_m3ae", "tiny"), ("base_m3ae", "base")])
def test_m3ae_presets_extend_their_parent(ablation: str, parent: str) -> None:
    child, base = load_config(ablation), load_config(parent)
    assert child.fusion.memory_slots == 0
    assert child.objectives.global_align == 0 and child.objectives.local_align == 0
    assert child.objectives.mlm > 0 and child.objectives.mim > 0 and child.objectives.itm > 0
    # everything else is inherited
    assert child.vision == base.vision and child.text == base.text and child.optim == base.optim


def test_nested_overrides_of_every_type() -> None:
    config = load_config("tiny", [
        "optim.lr=3.0e-4", "optim.steps=12", "text.whole_word=true", "fusion.memory_layers=[0]",
        "vision.init=null", "objectives.align_pool=cls", "optim.min_lr_ratio=0",
    ])
    assert config.optim.lr == pytest.approx(3e-4)
    assert config.optim.steps == 12
    assert config.text.whole_word is True
    assert config.fusion.memory_layers == [0]
    assert config.vision.init is None
    assert config.objectives.align_pool == "cls"
    assert isinstance(config.optim.min_lr_ratio, float)  # an int given for a float field becomes a float
    # untouched keys keep the preset's values
    assert config.vision.width == load_config("tiny").vision.width


@pytest.mark.parametrize("text, value", [("1e-4", 1e-4), ("3E-5", 3e-5), ("2e3", 2000.0), ("1.0e-4", 1e-4), (".5", 0.5)])
def test_scientific_notation_overrides(text: str, value: float) -> None:
    # YAML 1.1 reads "1e-4" as a string; the documented override `optim.lr=1e-4` must still work.
    assert load_config("tiny", [f"optim.lr={text}"]).optim.lr == pytest.approx(value)


def test_later_override_wins_and_lists_replace() -> None:
    config = load_config("tiny", ["optim.steps=5", "optim.steps=7", "fusion.memory_layers=[0, 1]"])
    assert config.optim.steps == 7
    assert config.fusion.memory_layers == [0, 1]


@pytest.mark.parametrize("override, key", [
    ("vision.widht=3", "vision.widht"),
    ("visoin.width=3", "visoin"),
    ("optim.nested.x=1", "optim.nested"),
])
def test_unknown_keys_are_errors_naming_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"'{key}'") as info:
        load_config("tiny", [override])
    assert "unknown" in str(info.value)


@pytest.mark.parametrize("override, key", [
    ("optim.lr=abc", "optim.lr"),
    ("vision.width=1.5", "vision.width"),
    ("vision.width=true", "vision.width"),  # a bool is not an int
    ("text.whole_word=3", "text.whole_word"),
    ("fusion.memory_layers=[a]", "fusion.memory_layers[0]"),
    ("fusion.memory_layers=3", "fusion.memory_layers"),
    ("vision=3", "vision"),
    ("objectives.align_pool=[1]", "objectives.align_pool"),
    ("objectives.end_weights=3", "objectives.end_weights"),
    ("objectives.end_weights={mim: abc}", "objectives.end_weights.mim"),
    ("objectives.end_weights={mim: -1}", "objectives.end_weights.mim"),
    ("objectives.end_weights={mlm_loss: 1}", "objectives.end_weights"),
])
def test_wrong_types_are_errors_naming_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("tiny", [override])
    assert str(info.value).startswith(key + ":"), str(info.value)


@pytest.mark.parametrize("overrides", [
    ["objectives.end_weights={local_align: 1.0, mim: 0}"],
    ["objectives.end_weights.local_align=1.0", "objectives.end_weights.mim=0"],
])
def test_end_weights_read_as_a_mapping_and_survive_the_saved_config(overrides: list[str]) -> None:
    config = load_config("tiny", overrides)
    assert config.objectives.end_weights == {"local_align": 1.0, "mim": 0.0}
    assert config_from_dict(json.loads(json.dumps(config.to_dict()))).objectives.end_weights == {"local_align": 1.0,
                                                                                                  "mim": 0.0}
    assert load_config("tiny").objectives.end_weights is None  # constant weights by default


def test_end_weight_of_a_switched_off_loss_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"objectives.end_weights.mim: objectives.mim is 0"):
        load_config("tiny", ["objectives.mim=0", "objectives.end_weights={mim: 1}"])


@pytest.mark.parametrize("text", ["optim.lr", "=3"])
def test_malformed_overrides(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_override(text)


def test_override_values_are_yaml() -> None:
    assert parse_override("a.b=[0,1]") == (["a", "b"], [0, 1])
    assert parse_override("a=null") == (["a"], None)
    assert parse_override("a=x=y") == (["a"], "x=y")  # only the first '=' splits
    assert overrides_to_dict(["a.b=1", "a.c=2", "d=3"]) == {"a": {"b": 1, "c": 2}, "d": 3}


def test_unknown_preset_and_missing_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="nosuchpreset"):
        load_config("nosuchpreset")
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))


def test_yaml_file_with_base(tmp_path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("base: tiny\noptim: {steps: 3}\nfusion: {memory_slots: 2}\n")
    config = load_config(str(path), ["optim.lr=0.001"])
    tiny = load_config("tiny")
    assert (config.optim.steps, config.fusion.memory_slots, config.optim.lr) == (3, 2, 0.001)
    assert config.vision == tiny.vision and config.optim.warmup_steps == tiny.optim.warmup_steps
    path.write_text("vision: {widht: 3}\n")
    with pytest.raises(ConfigError, match="vision.widht"):
        load_config(str(path))


def test_defaults_without_a_preset() -> None:
    assert load_config(None) == Config()


@pytest.mark.parametrize("name", PRESETS)
def test_resolved_config_round_trips(name: str, tmp_path) -> None:
    config = load_config(name, ["fusion.memory_layers=[0]", "optim.steps=9"])
    assert config_from_dict(config.to_dict()) == config
    config.save(tmp_path / "config.json")
    assert config_from_dict(json.loads((tmp_path / "config.json").read_text())) == config


def test_config_from_dict_checks_types() -> None:
    values = load_config("tiny").to_dict()
    values["data"]["batch_size"] = "8"
    with pytest.raises(ConfigError, match="data.batch_size"):
        config_from_dict(values)
    with pytest.raises(ConfigError, match="data.unknown"):
        config_from_dict({"data": {"unknown": 1}})
    # other roots (task configs) use the same machinery
    assert config_from_dict({"batch_size": 4}, DataConfig).batch_size == 4


def test_base_preset_builds_the_paper_scale_model_on_meta() -> None:
    torch = pytest.importorskip("torch")
    from mpma.models.mpma import MPMAModel

    config = load_config("base")
    with torch.device("meta"):
        model = MPMAModel(config, vocab_size=50265, pad_token_id=1)
    n = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for p in model.vision.parameters())
    text = sum(p.numel() for p in model.text.parameters())
    assert 85e6 < vision < 88e6  # ViT-B/16
    assert 120e6 < text < 127e6  # RoBERTa-base without the pooler
    assert n > 250e6
    assert model.fusion.layers[0].memory.memory.shape == (1, 64, 768)
    assert len(model.fusion.layers) == 6 and len(model.mim_decoder.blocks) == 4
    assert all(p.device.type == "meta" for p in model.parameters())


# ------------------------------------------------------------------ the package layout and removed keys


def test_presets_are_found_beside_the_package() -> None:
    assert PRESET_DIR.is_dir() and (PRESET_DIR / "tiny.yaml").is_file()
    assert PRESET_DIR.parent.name == "mpma"


def test_public_names_of_the_config_package() -> None:
    import mpma.config as config

    for name in ["Config", "load_config", "config_from_dict", "ConfigError", "FinetuneConfig", "HeadConfig",
                 "TaskDataConfig", "OptimConfig", "RunConfig", "VisionConfig", "TextConfig", "FusionConfig",
                 "DecoderConfig", "ObjectivesConfig", "DataConfig", "overrides_to_dict", "parse_override",
                 "preset_names"]:
        assert hasattr(config, name), name
    assert FinetuneConfig().optim.lr == pytest.approx(3e-4)  # fine-tuning's own optimiser defaults


def test_saved_config_with_a_removed_key_loads_with_a_warning(tmp_path) -> None:
    config = load_config("tiny", ["run.eval_size=32"])
    old = config.to_dict()
    old["data"]["val_size"] = 32  # written by versions before run.eval_size replaced it
    with pytest.warns(RemovedConfigKeyWarning, match=r"data\.val_size.*removed.*run\.eval_size"):
        assert config_from_dict(old) == config
    assert old["data"]["val_size"] == 32  # the caller's dict is not modified
    # the same file passed as a preset (``preset=RUN/config.json``, ``--config RUN/config.json``)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(old))
    with pytest.warns(RemovedConfigKeyWarning, match="data.val_size"):
        assert load_config(str(path), ["optim.steps=5"]).optim.steps == 5


def test_removed_keys_are_not_dropped_silently_nor_accepted_as_overrides() -> None:
    with pytest.raises(ConfigError, match=r"data\.val_size.*removed.*run\.eval_size"):
        load_config("tiny", ["data.val_size=100"])
    assert not hasattr(Config().data, "val_size")
    # other unknown keys stay errors, in saved configs too
    with pytest.raises(ConfigError, match="data.val_sizes"):
        config_from_dict({"data": {"val_sizes": 3}})


def test_a_removed_key_of_one_root_is_alive_in_another() -> None:
    # fine-tuning's data.val_size (validation cases) is a live key: no warning, no error
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = load_config(None, ["data.val_size=7"], cls=FinetuneConfig)
        assert config.data.val_size == 7
        assert config_from_dict(config.to_dict(), FinetuneConfig) == config


def test_presets_hold_no_removed_key() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", RemovedConfigKeyWarning)
        for name in preset_names():
            load_config(name)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_drop_path_must_be_a_rate(rate: float) -> None:
    with pytest.raises(ConfigError, match="vision.drop_path"):
        load_config("tiny", [f"vision.drop_path={rate}"])
    assert load_config("tiny", ["vision.drop_path=0.1"]).vision.drop_path == pytest.approx(0.1)
