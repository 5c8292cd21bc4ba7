"""Processes of a run: one by default, several under `accelerate launch` or `torchrun` (DDP).

accelerate reads the launcher's environment (RANK, WORLD_SIZE, ...), starts the process group (gloo on CPU,
NCCL on GPUs) and picks each process's device. On top of it, peso needs four things:
- training: each process takes its share of every global batch; the model is wrapped in DDP by accelerate,
  which averages gradients, so the loss is scaled to make that average the global batch's mean (`shard_rows`);
- evaluation: users are split into contiguous shards, one per process, and gathered back in order, so every
  user is decoded once and none is dropped (a DistributedSampler pads or drops to equal shard sizes);
- files: only the main process writes (`peso.io` asks `is_main`); every process reads;
- logs: only the main process prints and shows progress bars.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch
from accelerate import Accelerator, PartialState

from peso.errors import PesoError
from peso.io import is_main

__all__ = ["all_sum", "barrier", "device", "gather_rows", "is_main", "rank", "shard", "shard_rows", "world"]


def _cpu() -> bool:
    # torchrun sets no accelerate flag: without GPUs, the processes must be told they are CPU ones (gloo)
    return (
        os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
        or not torch.cuda.is_available()
    )


SHARDED = {
    "ACCELERATE_USE_FSDP": "FSDP",
    "ACCELERATE_USE_DEEPSPEED": "DeepSpeed",
    "ACCELERATE_USE_MEGATRON_LM": "Megatron-LM",
}


@functools.cache
def state() -> PartialState:
    for flag, name in SHARDED.items():  # what `accelerate launch` sets from its config
        if os.environ.get(flag, "").lower() in ("1", "true", "yes"):
            raise PesoError(
                "accelerate config",
                f"{name} is not supported by peso ({flag} is set)",
                "use a DDP config (configs/accelerate/gpu-ddp.yaml): only the adapter and item rows train,"
                " so sharding their optimizer state saves little (docs/distributed.md)",
            )
    return PartialState(cpu=_cpu())


def world() -> int:
    return state().num_processes


def rank() -> int:
    return state().process_index


def device() -> torch.device:
    return state().device


def barrier() -> None:
    if world() > 1:
        state().wait_for_everyone()


def shard(n: int) -> np.ndarray:
    """This process's indices of n items: contiguous shards, sizes differing by at most one, none dropped."""
    return np.array_split(np.arange(n), world())[rank()]


def gather_rows(local: np.ndarray) -> np.ndarray:
    """Concatenate every process's rows in rank order (the inverse of `shard`)."""
    if world() == 1:
        return local
    parts: list[np.ndarray | None] = [None] * world()
    torch.distributed.all_gather_object(parts, local)  # our own arrays between our processes
    return np.concatenate(parts, axis=0)


def all_sum(*values: float) -> list[float]:
    """Sum scalars over processes (float64, on the process group's device)."""
    if world() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device())
    torch.distributed.all_reduce(t)
    return t.tolist()


def shard_rows(rows: np.ndarray) -> tuple[np.ndarray, bool]:
    """This process's segment rows of a global batch (interleaved, so that lengths stay alike), and whether
    it has any: a process with none must still take part in the backward pass, on a dummy row with weight 0."""
    mine = rows[rank() :: world()]
    return (mine, True) if len(mine) else (rows[:1], False)


@functools.cache
def _accelerator() -> Accelerator:
    state()
    return Accelerator(cpu=_cpu())


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model for training: itself in one process, DDP across several (parameters in sync from rank 0)."""
    if world() == 1:
        return model
    return _accelerator().prepare_model(model, device_placement=False)


def unwrap(wrapped: torch.nn.Module) -> None:
    """Drop accelerate's reference to a wrapped model (the parameters are the model's own, already updated)."""
    if world() > 1:
        _accelerator().free_memory()
