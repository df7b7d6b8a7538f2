"""Resume: continue *the same run* from its ``checkpoint.pth``, exactly where it stopped.

A trainer resumes in four calls, each taking what is trainer-specific as a parameter:

* :func:`open_resume` — load the checkpoint (weights only) and refuse one that cannot continue this run: written by
  another trainer, incomplete, or with other defining arguments (every difference named, in the caller's flag
  spelling).
* :func:`restore_state` — load the optimizer, scheduler, loss, scaler, … state dicts the checkpoint holds and its RNG
  state; returns the epoch to start at and the mid-epoch progress of a preempted epoch.
* :func:`repair_log` — cut the JSON-lines log back to the checkpoint's epoch (a kill may leave it behind or ahead, or
  end it with a torn line), so the resumed run re-logs exactly the epochs it repeats.
* :func:`skip_done_batches` — inside the preempted epoch: draw and drop the batches already trained on (the same
  per-epoch seeds give the same batches), then restore the RNG state of that moment.

:func:`append_log` writes one record (after the checkpoint of the same epoch).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from .checkpoint import atomic_write, load_checkpoint, set_rng_state

__all__ = ["Resumed", "check_resume", "open_resume", "restore_state", "read_log", "repair_log", "append_log",
           "skip_done_batches"]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _show(value: Any) -> str:
    return value if isinstance(value, str) else _canonical(value)


def check_resume(ckpt: Mapping[str, Any], path: str | os.PathLike, trainer: str, saved: Mapping[str, Any],
                 current: Mapping[str, Any], keys: Iterable[str], flag: Callable[[str], str] | None = None,
                 required: Iterable[str] = ("model", "optimizer", "epoch"),
                 recognise: Callable[[Mapping[str, Any]], bool] | None = None,
                 new_run_hint: str = "--finetune") -> None:
    """Refuse to resume a checkpoint that cannot continue this run, with one sentence.

    ``trainer``: the name this trainer writes into its checkpoints' ``trainer`` entry. ``recognise(args)`` says
    whether the ``args`` of a checkpoint written before that entry existed look like this trainer's (without it such
    checkpoints are refused). ``saved`` / ``current``: the checkpoint's and this run's values of the defining
    ``keys`` (keys missing on either side are not compared, so older checkpoints still resume). ``flag`` turns a key
    into the flag a user types; ``new_run_hint``: how to start a new run from the checkpoint's weights."""
    flag = flag or (lambda k: "--" + k.replace("_", "-"))
    theirs = ckpt.get("trainer") if isinstance(ckpt.get("trainer"), str) else None
    args = ckpt.get("args")
    if theirs is None and recognise is not None and isinstance(args, Mapping) and recognise(args):
        theirs = trainer
    if theirs != trainer:
        who = f"written by {theirs}" if theirs else "not written by any trainer of this repository"
        raise UserError(f"{path} was {who}, not by {trainer}; resume only continues a run of the same trainer "
                        f"(to start a new run from its weights, use {new_run_hint})")
    missing = [k for k in required if k not in ckpt]
    if missing:
        raise UserError(f"{path} is not a complete {trainer} training checkpoint (missing {', '.join(missing)}); "
                        f"resume needs a checkpoint.pth written by a training run (to start from its weights, use "
                        f"{new_run_hint})")
    diffs = [f"{flag(k)} {_show(saved[k])} → {_show(current[k])}" for k in keys
             if k in saved and k in current and _canonical(saved[k]) != _canonical(current[k])]
    if diffs:
        raise UserError(f"cannot resume {path}: it was trained with other arguments ({'; '.join(diffs)}); resume "
                        f"with the original values, or start a new run from its weights with {new_run_hint}")


def open_resume(path: str | os.PathLike, trainer: str, current: Mapping[str, Any], keys: Iterable[str],
                saved: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None, **check: Any) -> dict[str, Any]:
    """Load ``path`` (on the CPU, weights only) and :func:`check_resume` it; returns the checkpoint.

    ``saved(ckpt)`` gives the checkpoint's values of ``keys`` (default: its ``args`` entry); ``check``: the other
    arguments of :func:`check_resume` (``flag``, ``required``, ``recognise``, ``new_run_hint``)."""
    ckpt = load_checkpoint(path)
    theirs = saved(ckpt) if saved is not None else ckpt.get("args")
    check_resume(ckpt, path, trainer, theirs if isinstance(theirs, Mapping) else {}, current, keys, **check)
    return ckpt


@dataclass
class Resumed:
    """Where a resumed run continues: the first epoch to run, and the progress inside it of a preempted epoch
    (``{"step": batches already trained on, …}``, the trainer's own running sums), or None."""

    start_epoch: int = 0
    partial: dict[str, Any] | None = None

    def describe(self, path: str | os.PathLike) -> str:
        where = f", step {self.partial['step']}" if self.partial else ""
        return f"Resumed from {path} at epoch {self.start_epoch}{where}"


def restore_state(ckpt: Mapping[str, Any], stateful: Mapping[str, Any], rng: bool = True) -> Resumed:
    """Load ``stateful[key].load_state_dict(ckpt[key])`` for every object given (None: skipped, e.g. no scaler on
    CPU) whose entry the checkpoint holds (None entries are skipped too), then the RNG state (``ckpt["rng"]``).

    The model is the caller's to load (its strict load names the architecture). Returns the epoch after the
    checkpoint's ``epoch`` and its ``partial`` progress."""
    for key, obj in stateful.items():
        if obj is not None and ckpt.get(key) is not None:
            obj.load_state_dict(ckpt[key])
    if rng and ckpt.get("rng") is not None:
        set_rng_state(ckpt["rng"])
    return Resumed(int(ckpt["epoch"]) + 1, ckpt.get("partial"))


# ---------------------------------------------------------------------------------------------------------- logs
def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a JSON-lines log (empty if the file does not exist). A torn last line — a kill during the append —
    is ignored; a broken line elsewhere is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text()
    lines = text.split("\n")
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines):  # no newline after it: the append was cut short
                break
            raise UserError(f"{path}:{i} is not a JSON record; fix or remove that line") from None
    return records


def repair_log(path: str | os.PathLike, last_epoch: int,
               last_record: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Make the log end exactly at epoch ``last_epoch`` (the checkpoint's; -1 for a fresh start): records of later
    epochs and a torn last line are dropped. ``last_record``: the record of ``last_epoch`` as the checkpoint stored
    it, which replaces (or restores, after a kill between checkpoint and append) the log's own. Returns the kept
    records; a missing log stays missing unless there is a record to write."""
    path = Path(path)
    kept = [r for r in read_log(path) if r.get("epoch", -1) < last_epoch]
    if last_record is not None:
        kept.append(dict(last_record))
    else:
        kept += [r for r in read_log(path) if r.get("epoch", -1) == last_epoch]
    if path.is_file() or kept:
        atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


def append_log(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Append one JSON line (call after the checkpoint of the same epoch is written)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------------------------- batches
def skip_done_batches(loader: Iterable[Any], partial: Mapping[str, Any] | None) -> tuple[Iterator[Any], int]:
    """``(iterator over loader, index of its next batch)``. Inside a preempted epoch (``partial``) the first
    ``partial["step"]`` batches are drawn and dropped — the per-epoch seeds make them the batches trained on before —
    and the RNG state of that moment (``partial["rng"]``, if stored) is restored, so the epoch continues as if never
    interrupted."""
    batches = iter(loader)
    first = int((partial or {}).get("step", 0))
    for _ in range(first):
        next(batches)
    if partial and partial.get("rng") is not None:
        set_rng_state(partial["rng"])
    return batches, first
