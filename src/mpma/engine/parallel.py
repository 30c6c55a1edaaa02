"""Data parallelism beside DDP: FSDP2 (``torch.distributed.fsdp.fully_shard``) and its checkpoints.

``run.parallel=fsdp`` shards the parameters, gradients and AdamW moments of the trained module over
the ranks: every block of a ``nn.ModuleList`` (the vision blocks, the text encoder's layers, the
fusion layers, the MIM decoder blocks) becomes its own FSDP unit, all-gathered just before its
forward and freed after it, and the root (the task) holds what is left (embeddings, norms, heads).

Checkpoints stay in the one format DDP and single-process runs write: the full (gathered) weights
in ``model.safetensors`` and the full optimizer state in ``state.pt``, keyed by parameter index in
the optimizer's order, exactly as ``torch.optim.Optimizer.state_dict()`` keys it. Every rank takes
part in the gathering (:func:`full_state`); only rank 0 receives the tensors (on the CPU) and
writes them. On ``--resume`` every rank reads the full files and keeps its own shard
(:func:`load_full_state`). The files do not depend on ``run.parallel`` or the world size.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from mpma.engine.checkpoint import NonFiniteError, non_finite_tensors, optimizer_tensors
from mpma.models.factory import check_state_keys

_OPTIONS = dict(full_state_dict=True, cpu_offload=True)
_SCALARS = "_mpma_scalar_params"  # on a module: names of its 0-d parameters stored with shape (1,) for FSDP


def _lift_scalars(task: nn.Module) -> None:
    """``fully_shard`` cannot shard 0-d parameters (the alignment temperature): store each as a (1,)
    parameter, which the model's arithmetic broadcasts as it did the scalar. Checkpoints keep the
    0-d shape (:func:`full_state`, :func:`load_full_state`), so they load in any run."""
    for module in task.modules():
        names = [name for name, p in module.named_parameters(recurse=False) if p.ndim == 0]
        for name in names:
            old = getattr(module, name)
            setattr(module, name, nn.Parameter(old.detach().reshape(1), requires_grad=old.requires_grad))
        if names:
            setattr(module, _SCALARS, set(names))


def _scalar_names(module: nn.Module) -> set[str]:
    """Names (in ``module``) of the parameters :func:`_lift_scalars` stored with shape (1,)."""
    return {f"{prefix}.{name}" if prefix else name for prefix, sub in module.named_modules()
            for name in getattr(sub, _SCALARS, ())}


def _reshape_scalars(tensors: dict, names: set[str], shape: tuple[int, ...]) -> dict:
    """``tensors`` with the entries named in ``names`` (a tensor, or an optimizer state dict whose
    per-element tensors are reshaped, not its ``step``) viewed as ``shape``."""
    def fix(value):
        if isinstance(value, dict):
            return {k: v.reshape(shape) if torch.is_tensor(v) and k != "step" and v.numel() == 1 else v
                    for k, v in value.items()}
        return value.reshape(shape)

    return {k: fix(v) if k in names else v for k, v in tensors.items()}


def shard_units(module: nn.Module) -> list[nn.Module]:
    """The modules that become their own FSDP unit: every element of every ``nn.ModuleList`` of
    ``module`` that holds parameters, innermost lists first (a block inside a block is sharded first)."""
    units = []
    for sub in module.modules():
        if isinstance(sub, nn.ModuleList):
            units += [block for block in sub if any(True for _ in block.parameters())]
    depth = {id(m): name.count(".") for name, m in module.named_modules()}
    return sorted(units, key=lambda m: -depth[id(m)])


def shard(task: nn.Module, param_groups: list[dict], device: torch.device, world_size: int) -> list[dict]:
    """Apply FSDP2 in place: each unit of :func:`shard_units`, then ``task`` as the root.

    ``fully_shard`` replaces each parameter by a sharded ``DTensor`` parameter, so the optimizer must
    be built after it: the returned groups hold the new parameters (matched by name) with every
    other setting of ``param_groups`` kept.

    Args:
        task: the trained module, already on ``device``; modified in place.
        param_groups: AdamW groups built from ``task``'s parameters before sharding.
        device: this rank's device (its type selects the device mesh: ``cuda`` or ``cpu``/gloo).
        world_size: number of ranks.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    names = {id(p): name for name, p in task.named_parameters()}
    grouped = [[names[id(p)] for p in group["params"]] for group in param_groups]
    _lift_scalars(task)
    mesh = init_device_mesh(device.type, (world_size,))
    for unit in shard_units(task):
        fully_shard(unit, mesh=mesh)
    fully_shard(task, mesh=mesh)
    params = dict(task.named_parameters())
    return [{**group, "params": [params[n] for n in group_names]} for group, group_names in zip(param_groups, grouped)]


def wrap_ddp(task: nn.Module, device: torch.device, find_unused_parameters: bool) -> nn.Module:
    """``task`` in ``DistributedDataParallel`` (one device per process: ``device`` on GPU, none on CPU)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(task, device_ids=ids, find_unused_parameters=find_unused_parameters)


@contextmanager
def gradient_sync(module: nn.Module, sharded: bool, skip: bool) -> Iterator[None]:
    """While active, skip (``skip=True``: a micro-batch of gradient accumulation) or run the gradient
    reduce-scatter (FSDP) or all-reduce (DDP) of the backward passes.

    Args:
        module: the FSDP root when ``sharded``, else the DDP wrapper (or a plain module when not ``skip``).
    """
    if sharded:
        module.set_requires_gradient_sync(not skip)
        yield
    elif skip:
        with module.no_sync():
            yield
    else:
        yield


def param_names(task: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Names (in ``task``) of the optimizer's parameters, in the optimizer's order (its state index)."""
    names = {id(p): name for name, p in task.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def full_state(weights_module: nn.Module, task: nn.Module,
               optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Gather the full weights of ``weights_module`` and the full optimizer state (a collective:
    every rank must call it). Rank 0 receives CPU tensors; the other ranks empty dicts.

    Returns:
        (weights named as in ``weights_module.state_dict()``, optimizer state in the
        ``Optimizer.state_dict()`` layout: ``{"state": {index: {...}}, "param_groups": [...]}``).
    """
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    options = StateDictOptions(**_OPTIONS)
    weights = get_model_state_dict(weights_module, options=options)
    weights = _reshape_scalars(weights, _scalar_names(weights_module), ())
    by_name = get_optimizer_state_dict(task, optimizer, options=options)
    by_name["state"] = _reshape_scalars(by_name.get("state", {}), _scalar_names(task), ())
    if not by_name["state"]:
        return weights, {}
    index = {name: i for i, name in enumerate(param_names(task, optimizer))}
    return weights, {
        "state": {index[name]: value for name, value in by_name["state"].items()},
        "param_groups": [{**group, "params": [index[n] for n in group["params"]]}
                         for group in by_name["param_groups"]],
    }


def load_full_state(weights_module: nn.Module, task: nn.Module, optimizer: torch.optim.Optimizer,
                    weights: dict[str, torch.Tensor], optimizer_state: dict, source: str) -> None:
    """Load full weights and a full ``Optimizer.state_dict()``-layout state into sharded modules
    (every rank passes the full tensors and keeps its shard; a collective).

    Raises:
        WeightsMismatchError: the weights do not match ``weights_module`` (names every key).
    """
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    weights = _reshape_scalars(weights, _scalar_names(weights_module), (1,))
    check_state_keys(weights_module, weights, source, described="the sharded model")
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(weights_module, weights, options=options)
    names = param_names(task, optimizer)
    by_name = {
        "state": _reshape_scalars({names[int(i)]: value for i, value in optimizer_state["state"].items()},
                                  _scalar_names(task), (1,)),
        "param_groups": [{**group, "params": [names[int(i)] for i in group["params"]]}
                         for group in optimizer_state["param_groups"]],
    }
    set_optimizer_state_dict(task, optimizer, by_name, options=options)


def check_finite(weights: dict[str, torch.Tensor], optimizer_state: dict) -> None:
    """Raise ``NonFiniteError`` on every rank when rank 0's gathered tensors hold NaN or inf (a collective).

    Args:
        weights, optimizer_state: as :func:`full_state` returned them (empty on ranks other than 0).
    """
    import torch.distributed as dist

    bad = [non_finite_tensors(weights) or non_finite_tensors(optimizer_tensors(optimizer_state))]
    dist.broadcast_object_list(bad, src=0)
    if bad[0]:
        raise NonFiniteError(f"non-finite values in {', '.join(bad[0])}")


@contextmanager
def state_dict_view(module: nn.Module, weights: dict[str, torch.Tensor]) -> Iterator[None]:
    """While active, ``module.state_dict()`` holds ``weights`` (the gathered full tensors) in place of
    its shards, so the code that writes model folders from ``state_dict()`` writes the full weights."""

    def full(_module: nn.Module, state: dict, prefix: str, _metadata: dict) -> None:
        for key in [k for k in state if k.startswith(prefix)]:
            state[key] = weights[key[len(prefix):]]

    handle = module.register_state_dict_post_hook(full)
    try:
        yield
    finally:
        handle.remove()


def full_norm(value: torch.Tensor) -> float:
    """A gradient norm as a float, gathering it first when it is a ``DTensor`` (FSDP)."""
    full = getattr(value, "full_tensor", None)
    return float(full() if full is not None else value)
