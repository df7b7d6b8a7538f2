"""``--estimate N``: time N training steps of a trainer's real loop and project the recipe's run time.

A trainer builds everything as for a real run (model, batch, resolution, AMP, compile, DDP), wraps its training
loader in :class:`StepClock`, runs its own epoch function over it, and prints :func:`estimate_record` as one JSON
line (as ``--print-config`` does). Nothing is written into the output folder. The record uses the epoch-record keys
of ``maxsup.timing`` (``train_seconds``, ``train_images_per_s``; ``eval_seconds`` is not measured: null), marked
``"estimate": true``, so ``analysis.collect`` can tell it from a measured epoch.

>>> clock = StepClock(loader, steps=20, accum_steps=1, device=device)
>>> train_one_epoch(model, criterion, clock, ...)          # the trainer's own loop: warm-up + 20 steps
>>> print_estimate(estimate_record(clock, trainer="deit", steps_per_epoch=len(loader), ...))

``--estimate-synthetic`` replaces the dataset by generated images of the recipe's resolution
(:class:`SyntheticImages`, or :class:`SyntheticBatches` already on the device for FFCV), and the epoch length by the
size of the dataset's train split (:func:`train_split_size`).
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import Dataset

from .errors import UserError
from .timing import synced_clock

__all__ = ["StepClock", "SyntheticBatches", "SyntheticImages", "WARMUP_STEPS", "add_estimate_args", "check_estimate",
           "device_name", "estimate_record", "pop_estimate_flags", "print_estimate", "train_split_size"]

#: Steps run before the clock starts: cuDNN autotuning, the allocator's first growth, torch.compile's first graphs.
WARMUP_STEPS = 3

#: Train split sizes (images, classes, images per class when every class has the same count) of the datasets whose
#: epoch length ``--estimate-synthetic`` projects without reading them. Folder datasets are taken as ImageNet-1k.
TRAIN_SPLITS: dict[str, tuple[int, int, int | None]] = {
    "imagenet": (1_281_167, 1000, None), "imagefolder": (1_281_167, 1000, None), "folder": (1_281_167, 1000, None),
    "imagenet32": (1_281_167, 1000, None), "imagenet64": (1_281_167, 1000, None),
    "fmnist": (60_000, 10, 6000), "cifar10": (50_000, 10, 5000), "cifar100": (50_000, 100, 500),
}


def add_estimate_args(parser: Any) -> None:
    """``--estimate N`` and ``--estimate-synthetic`` (``parser``: an ArgumentParser or one of its groups)."""
    parser.add_argument("--estimate", default=0, type=int, metavar="N",
                        help=f"time N training steps (after {WARMUP_STEPS} warm-up steps) of this exact recipe, print "
                             "one JSON line (seconds per step, projected seconds per epoch and for the run, GPU-hours) "
                             "and exit without writing anything (default: 0 = train)")
    parser.add_argument("--estimate-synthetic", action="store_true",
                        help="with --estimate: generated images at the recipe's resolution instead of the dataset; "
                             "the epoch length is the dataset's train split size (folders: ImageNet-1k)")


def check_estimate(steps: int, synthetic: bool, flag: str = "--estimate") -> None:
    """Refuse a negative step count, and ``--estimate-synthetic`` without ``--estimate``."""
    if steps < 0:
        raise UserError(f"{flag} must be >= 1 (0 = train), got {steps}")
    if synthetic and not steps:
        raise UserError(f"{flag}-synthetic needs {flag} N (the number of steps to time)")


def pop_estimate_flags(argv: list[str]) -> tuple[list[str], int, bool]:
    """For config-file trainers (FFCV): take ``--estimate N`` / ``--estimate=N`` and ``--estimate-synthetic`` out of
    ``argv``. Returns (the other arguments, N or 0, synthetic), checked by :func:`check_estimate`."""
    rest, steps, synthetic = [], 0, False
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--estimate-synthetic":
            synthetic = True
        elif arg == "--estimate" or arg.startswith("--estimate="):
            text = arg.partition("=")[2] if "=" in arg else (args.pop(0) if args else "")
            try:
                steps = int(text)
            except ValueError:
                raise UserError(f"--estimate needs a number of steps, got {text!r}") from None
        else:
            rest.append(arg)
    check_estimate(steps, synthetic)
    return rest, steps, synthetic


def train_split_size(dataset: str, classes: Iterable[Any] | None = None,
                     limit_per_class: int | None = None) -> tuple[int, int]:
    """(images, classes) of ``dataset``'s train split, for ``--estimate-synthetic``'s epoch length.

    ``classes`` / ``limit_per_class`` select a subset; only datasets with equal class counts can project one."""
    if dataset not in TRAIN_SPLITS:
        raise UserError(f"--estimate-synthetic does not know the size of {dataset!r}'s train split (known: "
                        f"{', '.join(sorted(TRAIN_SPLITS))}); name the data instead of --estimate-synthetic")
    images, k, per_class = TRAIN_SPLITS[dataset]
    if classes is None and limit_per_class is None:
        return images, k
    if per_class is None:
        raise UserError(f"{dataset}'s classes differ in size, so --estimate-synthetic cannot size a class subset; "
                        f"name the data instead")
    n_classes = len(list(classes)) if classes is not None else k
    return n_classes * min(per_class, limit_per_class or per_class), n_classes


class SyntheticImages(Dataset):
    """``n`` generated items: one fixed standard-normal image (3, size, size), float32, and label ``i % num_classes``.

    The same tensor for every index: the loader's cost is collation alone, no decoding or augmentation."""

    def __init__(self, n: int, size: int, num_classes: int, seed: int = 0):
        self.n, self.num_classes = n, num_classes
        self.image = torch.randn(3, size, size, generator=torch.Generator().manual_seed(seed))
        self.classes = [str(c) for c in range(num_classes)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.image, i % self.num_classes


class SyntheticBatches:
    """``n_batches`` batches made once on ``device``: uint8 (B, 3, H, W) images as FFCV's pipeline hands them over
    (or float32 standard-normal with ``dtype=torch.float32``) and int64 (B,) labels.

    ``output_size`` (H, W) may be changed between epochs, as FFCV's decoder's is (progressive resizing)."""

    def __init__(self, n_batches: int, batch_size: int, num_classes: int, output_size: tuple[int, int],
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.uint8, seed: int = 0):
        self.n_batches, self.batch_size, self.num_classes = n_batches, batch_size, num_classes
        self.output_size, self.device, self.dtype, self.seed = tuple(output_size), torch.device(device), dtype, seed
        self._cache: tuple[tuple[int, int], torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.n_batches

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cache is None or self._cache[0] != self.output_size:
            g = torch.Generator().manual_seed(self.seed)
            shape = (self.batch_size, 3, *self.output_size)
            images = (torch.randint(0, 256, shape, generator=g, dtype=torch.uint8) if self.dtype == torch.uint8
                      else torch.randn(shape, generator=g).to(self.dtype))
            labels = torch.randint(0, self.num_classes, (self.batch_size,), generator=g)
            self._cache = (self.output_size, images.to(self.device), labels.to(self.device))
        return self._cache[1], self._cache[2]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(self.n_batches):
            images, labels = self._batch()
            yield images.clone(), labels  # a fresh tensor per step, as a loader's would be


class StepClock:
    """The first ``(warmup + steps) × accum_steps`` batches of ``batches``, timing the last ``steps`` optimizer steps.

    The clock starts (device synchronised) when the first timed batch is requested and stops when the loop asks
    for the batch after the last one, i.e. after the last step's work: the timed span is exactly ``steps`` steps of
    the consuming loop, data loading included. ``len()`` is the number of batches it yields, so loops that skip an
    incomplete accumulation group by ``len`` see none."""

    def __init__(self, batches: Iterable, steps: int, accum_steps: int = 1, device: torch.device | str | None = None,
                 warmup: int = WARMUP_STEPS):
        if steps < 1:
            raise UserError(f"--estimate must be >= 1, got {steps}")
        self.batches, self.steps, self.warmup, self.accum_steps = batches, steps, warmup, accum_steps
        self.device = device
        self.n_batches = (warmup + steps) * accum_steps
        have = len(batches) if hasattr(batches, "__len__") else None
        if have is not None and have < self.n_batches:
            raise UserError(f"--estimate {steps} needs {self.n_batches} batches ({warmup} warm-up + {steps} timed "
                            f"steps × {accum_steps} accumulation steps) but one epoch of the data has {have}; lower "
                            f"--estimate or use --estimate-synthetic")
        self.start: float | None = None
        self.stop: float | None = None

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> Iterator[Any]:
        it = iter(self.batches)
        for i in range(self.n_batches):
            if i == self.warmup * self.accum_steps:
                self.start = synced_clock(self.device)
            try:
                batch = next(it)
            except StopIteration:
                return
            yield batch
        self.stop = synced_clock(self.device)

    @property
    def seconds_per_step(self) -> float:
        """Mean wall clock of one optimizer step (``accum_steps`` batches), in seconds."""
        if self.start is None or self.stop is None:
            raise RuntimeError("StepClock: the loop did not consume every batch; no timing")
        return (self.stop - self.start) / self.steps


def device_name(device: torch.device | str) -> str:
    """"NVIDIA H100 80GB HBM3" for a CUDA device, the processor's model name (or "cpu") otherwise."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:  # Linux names the CPU model here; platform.processor() often says only "x86_64"
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or device.type


def estimate_record(clock: StepClock, *, trainer: str, steps_per_epoch: int, epochs: int, world_size: int,
                    total_batch_size: int, device: torch.device | str, data: str, **extra: Any) -> dict[str, Any]:
    """The ``--estimate`` JSON object. Times are seconds; ``gpu_hours`` = run seconds × processes / 3600.

    Args:
        steps_per_epoch: optimizer steps in one epoch of the recipe (the trainer's own count).
        total_batch_size: images per optimizer step over all processes (batch × processes × accumulation).
        data: what was read: a path, a dataset name, or "synthetic".
        extra: recipe fields worth keeping beside the timing (model, loss, resolution, ...).
    """
    per_step = clock.seconds_per_step
    epoch_seconds = per_step * steps_per_epoch
    total = epoch_seconds * epochs
    return {
        "estimate": True, "trainer": trainer, "device": device_name(device), "device_type": torch.device(device).type,
        "world_size": world_size, "data": data, **extra,
        "warmup_steps": clock.warmup, "steps": clock.steps, "accum_steps": clock.accum_steps,
        "total_batch_size": total_batch_size, "seconds_per_step": per_step, "steps_per_epoch": steps_per_epoch,
        "epochs": epochs, "train_seconds": epoch_seconds, "eval_seconds": None,
        "train_images_per_s": total_batch_size / per_step if per_step > 0 else math.inf,
        "seconds_total": total, "gpu_hours": total * world_size / 3600.0,
    }


def print_estimate(record: dict[str, Any]) -> dict[str, Any]:
    """Print ``record`` as one JSON line on stdout (rank 0 of a torchrun launch only) and return it."""
    if os.environ.get("RANK", "0") == "0":
        sys.stdout.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        sys.stdout.flush()
    return record
