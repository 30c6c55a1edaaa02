"""The FSDP helpers that run in one process: which blocks become units, the 0-d parameter workaround,
and the ``run.parallel`` setting (the 2-process runs are in test_fsdp.py)."""

from __future__ import annotations

import pytest
import torch

from mpma.config import ConfigError
from mpma.engine import parallel
from mpma.models.factory import WeightsMismatchError, check_state_keys


def test_every_encoder_fusion_and_decoder_block_is_a_unit(micro_config, build_task) -> None:
    task = build_task(micro_config("vision.depth=2", "fusion.depth=2", "decoder.depth=2"))
    model = task.model
    units = {id(u) for u in parallel.shard_units(task)}
    blocks = [*model.vision.blocks, *model.fusion.layers, *model.mim_decoder.blocks]
    lists = [m for m in model.text.encoder.modules() if isinstance(m, torch.nn.ModuleList)]
    assert lists and all(id(layer) in units for layer in lists[0])  # the text encoder's layers
    assert all(id(block) in units for block in blocks)
    assert len(units) == len(blocks) + len(lists[0])
    assert id(task) not in units and id(model) not in units  # the root is sharded last, by parallel.shard


def test_scalar_parameters_are_lifted_and_checkpointed_as_scalars(micro_config, build_task) -> None:
    task = build_task(micro_config())
    before = float(task.model.align.logit_scale().detach())
    parallel._lift_scalars(task)
    assert task.model.align.log_inv_temperature.shape == (1,)
    assert float(task.model.align.logit_scale().detach()) == pytest.approx(before)
    names = parallel._scalar_names(task.model)
    assert names == {"align.log_inv_temperature"}
    weights = parallel._reshape_scalars(dict(task.model.state_dict()), names, ())
    assert weights["align.log_inv_temperature"].shape == ()
    moments = {"align.log_inv_temperature": {"step": torch.tensor(3.0), "exp_avg": torch.ones(1)}}
    fixed = parallel._reshape_scalars(moments, names, ())["align.log_inv_temperature"]
    assert fixed["exp_avg"].shape == () and fixed["step"].shape == ()


def test_state_dict_view_shows_the_gathered_weights(micro_config, build_task) -> None:
    model = build_task(micro_config()).model
    full = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    with parallel.state_dict_view(model, full):
        assert all(torch.equal(v, full[k]) for k, v in model.state_dict().items())
    assert not all(torch.equal(v, full[k]) for k, v in model.state_dict().items())  # the hook is gone


def test_sharded_key_check_names_what_does_not_match(micro_config, build_task) -> None:
    model = build_task(micro_config()).model
    weights = dict(model.state_dict())
    weights.pop("vision.cls_token")
    weights["extra"] = torch.zeros(1)
    with pytest.raises(WeightsMismatchError, match=r"ckpt does not match the sharded model: 1 missing keys: "
                                                  r"vision.cls_token; 1 unexpected keys: extra"):
        check_state_keys(model, weights, "ckpt", described="the sharded model")


def test_run_parallel_is_validated(micro_config) -> None:
    assert micro_config().run.parallel == "ddp"
    assert micro_config("run.parallel=fsdp").run.parallel == "fsdp"
    with pytest.raises(ConfigError, match="run.parallel"):
        micro_config("run.parallel=zero3")
    with pytest.raises(ConfigError, match="run.precision=bf16"):
        micro_config("run.parallel=fsdp", "run.precision=fp16")
