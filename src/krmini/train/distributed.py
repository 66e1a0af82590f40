"""Data parallelism on PyTorch's own engine: torchrun starts the processes, we join and wrap.

    torchrun --nproc_per_node=N -m krmini.train --config small ...      (one machine)
    krmini train --nproc N --config small ...                           (the same, launched for you)

torchrun describes the job in the environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, …).
Each process builds the same model from the same seed, then:

- `ddp`  replicates it (DistributedDataParallel): gradients are averaged with an all-reduce;
- `fsdp` shards parameters, gradients and AdamW state across ranks (FSDP2 `fully_shard`, one
  unit per decoder block plus the root), gathering each block's weights only while it runs.

The global batch is fixed by the config (`batch_size × grad_accum` sequences per step); each rank
takes its own contiguous `batch_size / world_size` slice of every micro-batch. The run sees the same
samples in the same order whatever the number of processes, so a run saved on 2 ranks resumes on 1.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from krmini.device import pick_device
from krmini.errors import KrminiError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Only rank 0 logs, writes metrics and saves checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


SINGLE_PROCESS = DistContext()


def init_distributed(device_name: str) -> tuple[DistContext, torch.device]:
    """Join torchrun's process group if there is one; pick this rank's device.

    NCCL for CUDA (one GPU per local rank), gloo for CPU. Without torchrun (or with one process)
    this is a plain single-process run.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return SINGLE_PROCESS, pick_device(device_name)
    ctx = DistContext(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world)
    device = pick_device(device_name)
    if device.type == "cuda":
        if torch.cuda.device_count() <= ctx.local_rank:
            raise KrminiError(f"local rank {ctx.local_rank}: only {torch.cuda.device_count()} GPU(s) on this "
                              "node; use --nproc_per_node at most the GPU count")
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise KrminiError(f"device: {device.type} cannot run multi-process training; use cuda or cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return ctx, device


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def local_slice(batch_size: int, ctx: DistContext) -> tuple[int, int]:
    """(offset, size) of this rank's share of a global micro-batch of `batch_size` sequences."""
    if batch_size % ctx.world_size:
        raise KrminiError(f"train.batch_size: {batch_size} sequences per micro-batch cannot be split evenly "
                          f"over {ctx.world_size} processes; use a multiple of {ctx.world_size}")
    size = batch_size // ctx.world_size
    return ctx.rank * size, size


def wrap_model(model: torch.nn.Module, strategy: str, ctx: DistContext, device: torch.device) -> torch.nn.Module:
    """DDP or FSDP2 around an already-initialised model (weights loaded first on a resume)."""
    if not ctx.enabled:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)  # the root unit holds the embedding, final norm and (tied) head
    return model


def gradient_sync(model: torch.nn.Module, sync: bool):
    """Skip the gradient all-reduce / reduce-scatter on all but the last micro-batch of a step."""
    if hasattr(model, "no_sync"):  # DDP
        return contextlib.nullcontext() if sync else model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def mean_over_ranks(value: float, ctx: DistContext) -> float:
    if not ctx.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item() / ctx.world_size


def sum_over_ranks(values: list[float], ctx: DistContext) -> list[float]:
    if not ctx.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def launch(nproc: int, argv: list[str]) -> int:
    """`krmini train --nproc N …` (N checked by the parser): rerun the same command under torchrun."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "krmini.train", *argv]
    return subprocess.run(cmd, check=False).returncode
