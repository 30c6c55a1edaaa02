"""``run.compile``: ``torch.compile`` each repeated block of a model, not the task around it.

A whole pre-training task does not compile into one graph: its per-step randomness (masks, ITM
negatives drawn from a ``torch.Generator``) and host reads break the graph, and the frames resumed
after each break recompile until dynamo's limit, after which they run eagerly (measured on an H200:
the compiled base step was no faster than the eager one, 0.202 s against 0.190 s, after 186 s of
compilation). The blocks are where the kernels are: every child of an ``nn.ModuleList`` (the vision
blocks, the text encoder's layers, the fusion layers, the MIM decoder's blocks) is a pure tensor
function, compiled without a break, and blocks of one class share the compiled code, so a 12-block
encoder compiles once. Only each block's ``forward`` is compiled: hooks (FSDP2's, DDP's gradient
hooks) stay outside the compiled code, and the weights keep their names.
"""

from __future__ import annotations

import torch
from torch import nn


def repeated_blocks(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(dotted name, block)`` for every child of every ``nn.ModuleList`` inside ``module``."""
    return [(f"{name}.{index}" if name else str(index), block)
            for name, child in module.named_modules() if isinstance(child, nn.ModuleList)
            for index, block in enumerate(child)]


CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # the torch.compile modes that replay CUDA graphs


def compile_options(mode: str = "default", backend: str = "inductor") -> dict:
    """``torch.compile`` keyword arguments for ``run.compile_mode`` (inductor's modes; "default" adds none)."""
    return {"backend": backend} if mode == "default" else {"backend": backend, "mode": mode}


def compile_repeated_blocks(module: nn.Module, backend: str = "inductor", mode: str = "default") -> list[str]:
    """Replace each repeated block's ``forward`` by its ``torch.compile``d version (lazily compiled on
    the first call); returns the blocks' names (empty when ``module`` has none). A block compiled
    before (its instance holds its own ``forward``) is left as it is. ``mode``: ``run.compile_mode``
    ("reduce-overhead": each block replayed as a CUDA graph on a GPU)."""
    blocks = repeated_blocks(module)
    for _, block in blocks:
        if "forward" not in vars(block):
            block.forward = torch.compile(block.forward, **compile_options(mode, backend))
    return [name for name, _ in blocks]
