"""``run.compile``: each repeated block's forward compiled, graph-break free, shared across blocks.

The compiled code is checked with dynamo's ``aot_eager`` backend (the graphs dynamo captures and
AOTAutograd's forward/backward split, without inductor's minutes of C++ code generation on a CPU):
a graph break, a block compiled once per instance or a result that differs would show here.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch import nn
from torch._dynamo.utils import counters

from mpma.config import ConfigError
from mpma.engine import compiling
from mpma.engine.compiling import compile_repeated_blocks, repeated_blocks
from mpma.engine.distributed import DistEnv
from mpma.engine.trainer import Trainer

BLOCK_LISTS = ["vision.blocks", "text.encoder.encoder.layer", "fusion.layers", "mim_decoder.blocks"]


def _step(task, batch, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The summed loss of one task forward and every parameter's gradient."""
    task.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    result = task(batch, torch.Generator().manual_seed(seed))
    loss = sum(result.losses.values())
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in task.named_parameters() if p.grad is not None}


def test_repeated_blocks_are_every_block_of_every_stack(micro_config, build_task) -> None:
    model = build_task(micro_config("vision.depth=3")).model
    names = [name for name, _ in repeated_blocks(model)]
    assert names == [f"{stack}.{i}" for stack in BLOCK_LISTS
                     for i in range(len(model.get_submodule(stack)))]
    assert names.count("vision.blocks.2") == 1 and "vision.blocks.3" not in names


def test_compiled_blocks_match_eager_without_graph_breaks_and_compile_once_per_block_kind(
        micro_config, build_task, make_batch) -> None:
    config = micro_config("vision.depth=3", "fusion.depth=2")
    eager, compiled = build_task(config), build_task(config)
    batch = make_batch(n=4)
    loss, grads = _step(eager, batch)
    torch._dynamo.reset()
    counters.clear()
    names = compile_repeated_blocks(compiled.model, backend="aot_eager")
    assert len(names) == 3 + 1 + 2 + 1  # vision, text, fusion, decoder (micro: text and decoder depth 1)
    assert compile_repeated_blocks(compiled.model, backend="aot_eager") == names  # twice: left as it is
    compiled_loss, compiled_grads = _step(compiled, batch)
    assert dict(counters["graph_break"]) == {}
    # one graph per kind of block (Block at two shapes: encoder and decoder; BertLayer; FusionLayer),
    # not one per block: the 3 vision blocks share theirs. The last fusion layer adds two: it computes the
    # masked words for the pairs, and the CLS alone for the ITM negatives (models/fusion.py)
    assert counters["stats"]["unique_graphs"] == 4 + 2
    torch.testing.assert_close(compiled_loss, loss)
    assert compiled_grads.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(compiled_grads[name], grads[name], msg=name)
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # weight names unchanged


def test_a_module_without_repeated_blocks_compiles_nothing() -> None:
    assert compile_repeated_blocks(nn.Sequential(nn.Linear(2, 2), nn.ReLU())) == []


def test_run_compile_mode_reaches_torch_compile(micro_config, build_task, make_batch, tmp_path, monkeypatch) -> None:
    """``run.compile_mode`` is the mode every block is compiled with ("default": torch's own, no mode);
    with CUDA graphs each step tells torch a new step begins (its graphs may reuse the last one's memory)."""
    calls, step_marks = [], []

    def recording_compile(fn, **options):
        calls.append(options)
        return fn

    monkeypatch.setattr(compiling.torch, "compile", recording_compile)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: step_marks.append(1))
    batch = make_batch(n=4)
    for mode, expected, marks in [("default", {"backend": "inductor"}, 0),
                                  ("reduce-overhead", {"backend": "inductor", "mode": "reduce-overhead"}, 2)]:
        calls.clear()
        step_marks.clear()
        config = micro_config("run.compile=true", f"run.compile_mode={mode}")
        task = build_task(config)
        trainer = Trainer(task, task.loss_weights, [{"params": list(task.parameters()), "base_lr": 1e-3}],
                          config.optim, config.run, tmp_path / mode, DistEnv())
        assert calls and all(options == expected for options in calls)
        for _ in range(2):
            trainer.train_step(iter([batch]))
        assert len(step_marks) == marks
    with pytest.raises(ConfigError, match="run.compile_mode"):
        micro_config("run.compile_mode=fastest")
    with pytest.raises(ConfigError, match="add run.compile=true"):  # a mode that would silently do nothing
        micro_config("run.compile_mode=reduce-overhead")
