"""Where training runs: one process on CPU/GPU, or several under ``torchrun`` (DDP).

``torchrun --nproc_per_node N stages/train_teacher.py ...`` sets ``WORLD_SIZE``/``RANK``; the
training loop then wraps the model in ``DistributedDataParallel`` (gloo on CPU, nccl on GPU).
Every rank draws the same epoch order and augments the same global batch from the stage seed,
then trains on its own slice of it, so N processes take the same optimisation steps as one
(up to float summation order and, on CPU, per-rank BatchNorm statistics: SyncBatchNorm needs GPUs).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from pipeline_lib.config import Device, Precision


@dataclass(frozen=True)
class Context:
    """This process's place in the run."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, prints and writes outputs; the others only train."""
        return self.rank == 0


def resolve_device(device: Device) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda was asked for but torch sees no GPU; use auto or cpu")
    if device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively: its oneDNN has bf16 kernels (AVX-512 or newer).
    Elsewhere (an AVX2-only CPU) bf16 is emulated, and a bf16 autocast step is about 12x slower
    than float32."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def use_bf16(setting: Precision, device: torch.device) -> bool:
    """Whether training on ``device`` runs under bf16 autocast.

    Every GPU run does. On a CPU, ``auto`` -> where :func:`native_bf16`; ``true`` and ``false``
    force it (``true`` warns where bf16 is emulated).
    """
    if device.type == "cuda":
        return True
    if setting == "auto":
        return native_bf16()
    if setting is True and not native_bf16():
        warnings.warn(
            "bf16: true on a CPU without native bf16 (no AVX-512 here): autocast is emulated, "
            "about 12x slower than float32; bf16: auto picks float32 on such a machine",
            stacklevel=2,
        )
    return bool(setting)


def setup(device: Device = "auto") -> Context:
    """Join the ``torchrun`` process group if there is one; one process otherwise."""
    dev = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size(), dev)
    return Context(0, 1, dev)


def wrap(model: nn.Module, ctx: Context) -> nn.Module:
    """``model`` on its device, in DDP when several processes train it."""
    model = model.to(ctx.device, memory_format=torch.channels_last)
    if ctx.world_size == 1:
        return model
    if ctx.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return nn.parallel.DistributedDataParallel(model, device_ids=[ctx.device.index])
    return nn.parallel.DistributedDataParallel(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The trained module inside a DDP wrapper (itself otherwise)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def shard(n: int, ctx: Context) -> slice:
    """This rank's contiguous slice of a global batch of ``n`` (sizes differ by at most one)."""
    base, extra = divmod(n, ctx.world_size)
    start = ctx.rank * base + min(ctx.rank, extra)
    return slice(start, start + base + (ctx.rank < extra))


def sync_buffers(module: nn.Module, ctx: Context) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts them before each forward, so after the last training step each rank holds
    the statistics of its own slice; validation must see one model, or the ranks would score
    differently and could disagree about early stopping.
    """
    if ctx.world_size > 1:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def teardown() -> None:
    """Leave the process group (a no-op for one process)."""
    if dist.is_initialized():
        dist.destroy_process_group()
