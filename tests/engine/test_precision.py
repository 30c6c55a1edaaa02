"""run.precision: the host's bf16 capabilities and the resolution of ``auto``."""

from __future__ import annotations

import pytest
import torch

from mpma.engine import precision
from mpma.engine.distributed import DistEnv
from mpma.engine.precision import cpu_bf16_features, cpu_bf16_matmul_speedup, resolve_precision
from mpma.engine.trainer import Trainer, parameter_groups

CPU = torch.device("cpu")


@pytest.mark.parametrize("name", ["fp32", "bf16"])
def test_explicit_precisions_are_kept(name: str) -> None:
    assert resolve_precision(name, CPU) == name


def test_unknown_precision_and_fp16_on_cpu_are_refused() -> None:
    with pytest.raises(ValueError, match="run.precision must be auto, fp32, bf16 or fp16"):
        resolve_precision("fp8", CPU)
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        resolve_precision("fp16", CPU)


def test_features_are_read_from_this_host() -> None:
    features = cpu_bf16_features()
    assert set(features) == {"avx512_bf16", "amx_tile", "mkldnn_bf16", "native"}
    assert all(isinstance(v, bool) for v in features.values())
    assert features["native"] == (features["mkldnn_bf16"] and (features["avx512_bf16"] or features["amx_tile"]))


def test_matmul_probe_returns_a_positive_ratio() -> None:
    assert cpu_bf16_matmul_speedup(size=32, calls=1) > 0


@pytest.mark.parametrize(("native", "speedup", "expected"), [
    (False, 10.0, "fp32"),  # no native bf16: never bf16, whatever a probe says
    (True, precision.CPU_BF16_MIN_SPEEDUP + 1, "bf16"),
    (True, precision.CPU_BF16_MIN_SPEEDUP - 0.5, "fp32"),  # native but not paying
])
def test_auto_on_cpu_needs_native_bf16_that_pays(monkeypatch, native: bool, speedup: float, expected: str) -> None:
    monkeypatch.setattr(precision, "cpu_bf16_features", lambda: {"native": native})
    monkeypatch.setattr(precision, "cpu_bf16_matmul_speedup", lambda: speedup)
    assert resolve_precision("auto", CPU) == expected


def test_auto_on_cpu_keeps_small_models_in_fp32(monkeypatch) -> None:
    monkeypatch.setattr(precision, "cpu_bf16_features", lambda: {"native": True})
    monkeypatch.setattr(precision, "cpu_bf16_matmul_speedup", lambda: 100.0)
    limit = precision.CPU_BF16_MIN_PARAMETERS
    assert resolve_precision("auto", CPU, parameters=limit - 1) == "fp32"
    assert resolve_precision("auto", CPU, parameters=limit) == "bf16"
    assert resolve_precision("bf16", CPU, parameters=1) == "bf16"  # an explicit choice is never overridden


@pytest.mark.parametrize("supported", [True, False])
def test_auto_on_cuda_follows_the_gpu_bf16_support(monkeypatch, supported: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    assert resolve_precision("auto", torch.device("cuda")) == ("bf16" if supported else "fp32")


def test_trainer_resolves_auto_and_autocasts_accordingly(monkeypatch, micro_config, build_task, tmp_path) -> None:
    config = micro_config("run.precision=auto")
    task = build_task(config)
    groups = parameter_groups(task, config.optim, set(), set())
    monkeypatch.setattr(precision, "CPU_BF16_MIN_PARAMETERS", 0)  # the micro model counts as large here
    for speedup, expected, dtype in [(100.0, "bf16", torch.bfloat16), (1.0, "fp32", None)]:
        monkeypatch.setattr(precision, "cpu_bf16_features", lambda: {"native": True})
        monkeypatch.setattr(precision, "cpu_bf16_matmul_speedup", lambda s=speedup: s)
        trainer = Trainer(task, task.loss_weights, groups, config.optim, config.run, tmp_path, DistEnv())
        assert (trainer.precision, trainer.autocast_dtype) == (expected, dtype)
