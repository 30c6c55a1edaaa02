"""``mpma pretrain --resume key=value``: the settings a resumed run may change, and the record of the change.

A resumed run may change how it goes on (``optim.*``: a lower learning rate after a divergence, more
steps; ``run.*``: logging, checkpoints, threads, precision), never what its checkpoints hold or the
data it reads (``vision.*``, ``text.*``, ``fusion.*``, ``decoder.*``, ``objectives.*``, ``data.*``);
an override of those that repeats the run's own value is accepted, so the first command line can be
run again with ``--resume`` added.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mpma.config import Config, ConfigError, config_from_dict, parse_override
from mpma.engine.run_folder import changed_values

RESUMABLE_SECTIONS = ("optim", "run")
log = logging.getLogger("mpma")


def resume_config(saved: Config, overrides: list[str] | tuple[str, ...]) -> tuple[Config, dict[str, tuple]]:
    """The configuration of a resumed run: ``saved`` with ``key=value`` ``overrides`` of ``optim.*`` and
    ``run.*`` applied; returns it and ``{dotted key: (old, new)}`` of what changed.

    Raises:
        ConfigError: an override of another section that changes its value (it would change the model
            or the data the checkpoints were trained with), an unknown key or a value of the wrong
            type, named.
    """
    if not overrides:
        return saved, {}
    values = saved.to_dict()
    for text in overrides:
        path, value = parse_override(text)
        node = values
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"--resume {text}: unknown config key '{'.'.join(path)}'")
            node = node[part]
        node[path[-1]] = value
    config = config_from_dict(values)
    changes = changed_values(saved.to_dict(), config.to_dict())
    # the run's own value repeated (the first command line again, plus --resume) changes nothing: accepted
    refused = [key for key in changes if key.split(".")[0] not in RESUMABLE_SECTIONS]
    if refused:
        raise ConfigError(f"--resume: {', '.join(refused)} cannot change in a resumed run (the checkpoints were "
                          f"trained with the model and data of its config.json); only "
                          f"{', '.join(s + '.*' for s in RESUMABLE_SECTIONS)} may: drop the others, or start a "
                          "new run with another --out")
    return config, changes


def record_config_change(run_dir: Path, step: int, changes: dict[str, tuple]) -> None:
    """Say what a resumed run changed: a warning on the console and ``{"step", "config_change"}`` in log.jsonl."""
    described = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items())
    log.warning("resuming %s at step %d with changed settings (written to its config.json): %s", run_dir, step,
                described)
    record = {"step": step, "config_change": {key: {"from": old, "to": new} for key, (old, new) in changes.items()}}
    with (run_dir / "log.jsonl").open("a") as handle:
        handle.write(json.dumps(record) + "\n")
