"""One timing rule for every trainer's epoch record (paper Table 16: time per epoch of CE, LS and MaxSup).

Each epoch's log record gains three keys, measured the same way in all three trainers:

- ``train_seconds``: wall clock of the training loop, from just before its first batch is requested until its last
  step has finished on the device (CUDA is synchronised before the clock is read, so queued kernels are counted).
  Data loading inside the loop is included (it is part of what an epoch costs); evaluation and checkpoint writes are
  not. On an epoch resumed mid-way it covers the resumed part only.
- ``eval_seconds``: wall clock of the epoch's evaluation passes (val, extra test sets, EMA), same synchronisation.
- ``train_images_per_s``: images trained in that loop (all processes together) ÷ ``train_seconds``. No step is left
  out (no "skip the first iteration"): the first epoch's number includes warm-up costs such as FFCV's JIT or
  ``torch.compile``, which is what that epoch really cost.

``--estimate`` lines (``maxsup.estimate``) carry the same keys, projected from timed steps.
"""

from __future__ import annotations

import time

import torch

__all__ = ["TIMING_KEYS", "Stopwatch", "synced_clock", "train_timing"]

#: The wall-clock keys of an epoch's log record: they differ between otherwise identical runs.
TIMING_KEYS = ("train_seconds", "eval_seconds", "train_images_per_s")


def synced_clock(device: torch.device | str | None = None) -> float:
    """``time.perf_counter()`` in seconds, after waiting for the work queued on ``device`` (CUDA only)."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class Stopwatch:
    """Started on construction; ``seconds()`` is the synchronised wall clock since then, in seconds."""

    def __init__(self, device: torch.device | str | None = None):
        self.device = device
        self.start = synced_clock(device)

    def seconds(self) -> float:
        return synced_clock(self.device) - self.start


def train_timing(images: int, seconds: float) -> dict[str, float]:
    """``{"train_seconds": seconds, "train_images_per_s": images / seconds}``.

    Args:
        images: images trained in the timed loop, summed over all processes.
        seconds: the loop's wall clock (a ``Stopwatch`` around it).
    """
    seconds = max(float(seconds), 1e-9)  # a clock that read 0 (coarse timers) must not divide by zero
    return {"train_seconds": seconds, "train_images_per_s": images / seconds}
