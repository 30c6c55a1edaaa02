"""Activation checkpointing (run.activation_checkpointing): the same losses and gradients, with the
blocks' activations recomputed in the backward pass instead of kept."""

from __future__ import annotations

import pytest
import torch


def _losses_and_grads(task, batch) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    task.zero_grad(set_to_none=True)
    result = task(batch, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    sum(result.losses.values()).backward()
    grads = {name: p.grad.clone() for name, p in task.named_parameters() if p.grad is not None}
    return {k: float(v) for k, v in result.losses.items()}, grads


@pytest.mark.parametrize("overrides", [(), ("vision.drop_path=0.2",)], ids=["plain", "drop_path"])
def test_checkpointing_keeps_losses_and_gradients(micro_config, build_task, make_batch, overrides) -> None:
    batch = make_batch(n=6)
    task = build_task(micro_config(*overrides)).train()
    torch.manual_seed(3)
    plain_losses, plain_grads = _losses_and_grads(task, batch)
    task.model.set_grad_checkpointing(True)
    torch.manual_seed(3)
    checkpointed_losses, checkpointed_grads = _losses_and_grads(task, batch)
    assert checkpointed_losses == pytest.approx(plain_losses, rel=1e-5)
    assert plain_grads.keys() == checkpointed_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def _forward_calls(task, batch) -> dict[str, int]:
    """How often the first vision block, text layer and fusion layer run in one forward + backward."""
    calls = {"vision": 0, "text": 0, "fusion": 0}
    modules = {"vision": task.model.vision.blocks[0], "fusion": task.model.fusion.layers[0],
               "text": task.model.text.encoder.encoder.layer[0].intermediate}  # inside the HF layer

    def counting(key, forward):  # torch runs no module hooks while it recomputes: count in forward itself
        def wrapped(*args, **kwargs):
            calls[key] += 1
            return forward(*args, **kwargs)
        return wrapped

    for key, module in modules.items():
        module.forward = counting(key, module.forward)
    try:
        result = task(batch, torch.Generator().manual_seed(0))
        sum(result.losses.values()).backward()
    finally:
        for module in modules.values():
            del module.forward
    return calls


def test_checkpointed_blocks_run_again_in_the_backward_pass(micro_config, build_task, make_batch) -> None:
    batch = make_batch(n=4)
    task = build_task(micro_config()).train()
    plain = _forward_calls(task, batch)
    task.model.set_grad_checkpointing(True)
    checkpointed = _forward_calls(task, batch)
    for key in plain:  # each forward of a checkpointed block is replayed once in the backward pass
        assert checkpointed[key] == 2 * plain[key], (key, plain, checkpointed)
    task.model.set_grad_checkpointing(False)
    assert _forward_calls(task, batch) == plain
    with torch.no_grad():  # nothing to recompute without gradients
        task.model.set_grad_checkpointing(True)
        task(batch, torch.Generator().manual_seed(0))


def test_the_config_switch_reaches_the_model(micro_config, tmp_path) -> None:
    from mpma.pipelines.pretraining import run_pretraining

    config = micro_config("optim.steps=2", "run.activation_checkpointing=true", "run.checkpoint_every=2")
    run_pretraining(config, tmp_path / "run", progress=False)
    import json

    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["run"]["activation_checkpointing"] is True
