"""Typed configuration: one dataclass per concern, YAML presets and dotted overrides.

- :mod:`mpma.config.base`: the generic machinery (dict <-> dataclass with type checks that name the
  key, presets in ``mpma/presets/``, ``key.sub=value`` overrides, removed keys);
- :mod:`mpma.config.errors`: :class:`ConfigError`, raised by all of them;
- :mod:`mpma.config.checks`: the range checks every section runs when it is built (positive counts,
  rates and ratios in range, widths divisible by heads, known choices); messages name the dotted key,
  the value and what is allowed;
- :mod:`mpma.config.pretrain`: :class:`Config`, the pre-training run, and its sections;
- :mod:`mpma.config.finetune`: :class:`FinetuneConfig`, the fine-tuning run, and its sections.
"""

from mpma.config.base import (
    PRESET_DIR,
    RemovedConfigKeyWarning,
    config_from_dict,
    drop_removed_keys,
    load_config,
    overrides_to_dict,
    parse_override,
    preset_names,
    removed_keys,
)
from mpma.config.errors import ConfigError
from mpma.config.finetune import FinetuneConfig, HeadConfig, TaskDataConfig
from mpma.config.pretrain import (
    Config,
    DataConfig,
    DecoderConfig,
    FusionConfig,
    ObjectivesConfig,
    OptimConfig,
    RunConfig,
    TextConfig,
    VisionConfig,
)

__all__ = [
    "PRESET_DIR", "ConfigError", "RemovedConfigKeyWarning", "config_from_dict", "drop_removed_keys", "load_config",
    "overrides_to_dict", "parse_override", "preset_names", "removed_keys",
    "Config", "DataConfig", "DecoderConfig", "FusionConfig", "ObjectivesConfig", "OptimConfig", "RunConfig",
    "TextConfig", "VisionConfig",
    "FinetuneConfig", "HeadConfig", "TaskDataConfig",
]
