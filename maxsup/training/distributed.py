"""Distributed setup from the launcher's environment (torchrun, or srun/submitit through
:mod:`maxsup.training.launch`): NCCL on CUDA, gloo on CPU.

The trainers call :func:`init_distributed` before they claim their output folder
(:func:`maxsup.training.claim_run_folder`), so that a refusal on rank 0 reaches every rank; calling it again later
returns the same setup."""

from __future__ import annotations

import builtins
import functools
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import UserError

__all__ = ["DistInfo", "resolve_device", "init_distributed", "cleanup_distributed", "rank", "world_size", "barrier",
           "all_reduce_sum", "print_silenced"]


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    distributed: bool = False
    device: torch.device = torch.device("cpu")


def resolve_device(name: str | None) -> torch.device:
    """``--device`` as a ``torch.device``: None picks CUDA when available, else the CPU.

    A name torch does not parse (``gpu``), or a device this machine lacks (``cuda`` without a GPU, ``cuda:3`` on a
    2-GPU machine, ``mps`` off Apple silicon), raises :class:`UserError` here, before anything is read or written,
    instead of a RuntimeError at the first ``.to(device)``."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name} was requested but no CUDA device is available; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                            f"cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name} was requested but MPS is not available here; use --device cpu")
    return dev


def init_distributed(device: str | None = None, quiet_non_main: bool = True) -> DistInfo:
    """Initialise the process group from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK).

    ``device``: "cuda", "cpu" or None (CUDA when available). Without torchrun's variables this is a single process.
    Non-main ranks have ``print`` silenced unless ``quiet_non_main`` is False (``print(..., force=True)`` still prints).
    Idempotent: a second call (the trainers call it before claiming the run folder and again in their run) returns
    the same ranks and device and silences nothing twice.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolve_device(device)  # a typo or a missing GPU: one error line before the process group
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return DistInfo(device=torch.device("cuda:0" if device == "cuda" else device))
    r, ws, lr = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    if device.startswith("cuda"):
        torch.cuda.set_device(lr)
        dev, backend = torch.device("cuda", lr), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=r, world_size=ws)
    if quiet_non_main and r != 0:
        _silence_print()
    return DistInfo(rank=r, world_size=ws, local_rank=lr, distributed=True, device=dev)


def _silence_print() -> None:
    builtin_print = builtins.print
    if getattr(builtin_print, "_maxsup_main_only", False):  # already silenced: a second wrapper would drop force=True
        return

    @functools.wraps(builtin_print)  # keeps __module__/__name__: numba (ffcv) looks builtins up by those
    def print_main_only(*args, force: bool = False, **kwargs):
        if force:
            builtin_print(*args, **kwargs)

    print_main_only._maxsup_main_only = True
    builtins.print = print_main_only


def print_silenced() -> bool:
    """Whether :func:`init_distributed` silenced ``print`` in this process (a rank > 0): a line that every rank must
    show, such as rank 0's refusal of the run folder, is then printed with ``force=True``."""
    return getattr(builtins.print, "_maxsup_main_only", False)


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum across ranks (no-op in a single process); returns the tensor."""
    if world_size() > 1:
        if dist.get_backend() == "nccl" and not tensor.is_cuda:  # NCCL reduces device tensors only
            on_device = tensor.cuda()
            dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
            tensor.copy_(on_device.cpu())
        else:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def cleanup_distributed() -> None:
    """Destroy the process group before the interpreter exits; a process that exits with gloo's threads still alive
    can abort with "terminate called without an active exception"."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
