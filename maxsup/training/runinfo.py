"""What a run is and where it ran: the resolved-config dump (``--print-config``) and the run record.

Every trainer writes ``<output_dir>/run.json`` (:func:`write_run_record`) at start-up. It holds what
``python -m analysis.collect`` needs: the resolved config (its group key: every value that changes what is trained,
``analysis/pooling.py``), dataset, model, loss and α schedule, where the trainer's per-epoch log is and which of its
keys are top-1 / NLL / ECE, and the provenance of the run (git commit and whether the tree was dirty, torch / timm /
CUDA versions, device names, world size).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import UserError
from .checkpoint import atomic_write

__all__ = ["RUN_RECORD", "ScalarWriter", "add_run_args", "alpha_schedule_of", "is_launcher_main",
           "launcher_world_size", "print_config", "provenance", "recipe_fingerprint", "write_run_record"]

RUN_RECORD = "run.json"
REPO_ROOT = Path(__file__).resolve().parents[2]

def launcher_world_size() -> int:
    """The number of processes the launcher starts: torchrun's ``WORLD_SIZE`` (the shell launchers export their
    ``NPROC`` under that name for ``--print-config``), else 1."""
    text = os.environ.get("WORLD_SIZE", "1")
    try:
        ws = int(text)
    except ValueError:
        raise UserError(f"WORLD_SIZE={text!r} is not an integer") from None
    if ws < 1:
        raise UserError(f"WORLD_SIZE must be >= 1, got {ws}")
    return ws


def is_launcher_main() -> bool:
    """True on torchrun's rank 0 (or without torchrun): the one process that prints ``--print-config``."""
    return os.environ.get("RANK", "0") == "0"


def print_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Print ``config`` as one JSON object on stdout (rank 0 only) and return it."""
    cfg = dict(config)
    if is_launcher_main():
        sys.stdout.write(json.dumps(cfg, sort_keys=True, default=str) + "\n")
        sys.stdout.flush()
    return cfg


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def provenance(world_size: int, device: Any = None) -> dict[str, Any]:
    """Where and with what a run ran: git commit and dirty flag (tracked files only), library versions, devices."""
    import torch

    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    dev = str(device) if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if dev.startswith("cuda") and torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    else:
        names = [platform.processor() or platform.machine()]
    return {
        "git_commit": commit, "git_dirty": None if status is None else bool(status),
        "torch": torch.__version__, "timm": _version("timm"), "torchvision": _version("torchvision"),
        "ffcv": _version("ffcv"), "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()
        if torch.backends.cudnn.is_available() else None,
        "device": dev, "device_names": names, "world_size": world_size, "python": platform.python_version(),
        "hostname": socket.gethostname(), "argv": sys.argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _flat(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        if isinstance(value, Mapping) and key != "kwargs":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def recipe_fingerprint(config: Mapping[str, Any], not_recipe: Iterable[str] = ()) -> str:
    """8 hex digits identifying the recipe: every config key except the trainer's ``not_recipe`` keys (those that do
    not change what is trained: paths, logging, workers, the seed, the loss itself, the split of the global batch;
    matched on the whole dotted key, its last part, or a dotted entry's section: ``loss.options`` leaves out
    ``loss.options.beta``), so runs that differ only there fall into one group of ``analysis.collect``."""
    skip = frozenset(not_recipe)
    sections = tuple(f"{p}." for p in skip if "." in p)
    kept = {k: v for k, v in sorted(_flat(config).items())
            if k not in skip and k.rpartition(".")[2] not in skip and not k.startswith(sections)}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:8]


def add_run_args(parser: Any) -> None:
    """The run-level flags every argparse trainer shares: ``--seeds``, ``--print-config``, ``--tensorboard``
    (``parser``: an ``ArgumentParser`` or one of its argument groups)."""
    parser.add_argument("--seeds", default=None, type=str,
                        help="seed sweep, e.g. 0,3,7: one run per seed in <output dir>/seed<S> "
                             "(default: env SEEDS=N for seeds 0..N-1, else --seed)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved configuration as one JSON object and exit (reads no data)")
    parser.add_argument("--tensorboard", default="", type=str,
                        help="write each epoch's logged scalars to this TensorBoard folder (default: off)")


def alpha_schedule_of(criterion: Any) -> tuple[float, float] | None:
    """(α at the first epoch, α at the last) of a loss with an α schedule (``maxsup.AlphaSchedule``), else None."""
    schedule = getattr(criterion, "alpha_schedule", None)
    return (schedule.start, schedule.end) if schedule is not None else None


def write_run_record(output_dir: str | os.PathLike, *, trainer: str, config: Mapping[str, Any], dataset: str,
                     model: str, loss: str, alpha: tuple[float, float] | None, epochs: int, seed: int,
                     world_size: int, device: Any, log_file: str, metric_keys: Mapping[str, str],
                     not_recipe: Iterable[str] = (), recipe: str | None = None) -> dict[str, Any]:
    """Write ``<output_dir>/run.json`` atomically; returns it.

    ``metric_keys`` maps ``acc1`` / ``nll`` / ``ece`` to the keys of one line of ``log_file`` (JSON lines, one per
    epoch, with an ``epoch`` key counted from 0); ``alpha`` is (start, end) for losses with an α schedule;
    ``not_recipe``: the config keys left out of the recipe fingerprint (:func:`recipe_fingerprint`)."""
    record = {
        "trainer": trainer, "dataset": dataset, "model": model, "loss": loss,
        "alpha": list(alpha) if alpha is not None else None, "epochs": epochs, "seed": seed,
        "recipe": recipe or recipe_fingerprint(config, not_recipe), "log_file": log_file,
        "metric_keys": dict(metric_keys),
        "config": dict(config), "provenance": provenance(world_size, device),
    }
    atomic_write(Path(output_dir) / RUN_RECORD, json.dumps(record, indent=2, default=str) + "\n")
    return record


class ScalarWriter:
    """``--tensorboard DIR``: every numeric value of an epoch's log line as a TensorBoard scalar (tag = log key,
    step = epoch), through ``torch.utils.tensorboard``. Without a directory (or on ranks other than 0) it does
    nothing."""

    def __init__(self, log_dir: str | os.PathLike | None, enabled: bool = True):
        self.writer = None
        if log_dir and enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("--tensorboard needs the tensorboard package: pip install -e '.[train]'") from None
            self.writer = SummaryWriter(str(log_dir))

    def log(self, stats: Mapping[str, Any], step: int) -> None:
        if self.writer is None:
            return
        for key, value in stats.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
