"""What the three trainers do when something goes wrong, written once.

* :func:`step_guard` — one all-reduce per step tells every rank whether any rank saw a non-finite loss (then all stop
  together with :class:`NonFiniteError`, instead of one rank raising while the others hang in the next collective)
  and whether any rank received a preemption signal (then all checkpoint at this step boundary and exit).
* :func:`check_finite_model` — before a checkpoint is written: the last step of an epoch can leave NaN weights behind
  a finite loss, and they must never replace the last good ``checkpoint.pth``.
* :func:`check_resume` — ``--resume`` continues *the same run*: a checkpoint of another trainer, or one whose
  defining arguments (model, classes, loss and its options, epochs) differ, is refused with every difference named.
* :func:`read_log` / :func:`truncate_log` / :func:`append_log` — JSON-lines logs that survive a kill: appended after
  the checkpoint, and cut back to the checkpoint's epoch (and past any torn last line) on resume.
* :class:`Preemption` — SIGTERM / SIGUSR1 (Slurm's warning signals) set a flag that :func:`step_guard` shares.
  ``$MAXSUP_PREEMPT_SIGNALS`` adds signals (``maxsup.launch`` adds submitit's preemption signal, SIGUSR2).
* :func:`run_seeds` — a seed sweep that stops after a preempted run instead of starting the next seed.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import atomic_write
from .distributed import all_reduce_sum
from .errors import UserError

__all__ = ["NonFiniteError", "step_guard", "check_finite_model", "checkpoint_trainer", "check_resume", "read_log",
           "truncate_log", "append_log", "Preemption", "PREEMPT_SIGNALS", "PREEMPT_ENV", "preempt_signals",
           "run_seeds"]


class NonFiniteError(UserError):
    """The loss or the weights became NaN/inf; the last good checkpoint was left untouched."""


def _nonfinite_message(what: str, epoch: int, step: int, lr_flag: str, clip_flag: str) -> str:
    return (f"{what} at epoch {epoch}, step {step}: training diverged and stopped before writing a checkpoint (the "
            f"last good checkpoint is unchanged); resume from it with a lower {lr_flag} or with gradient clipping "
            f"({clip_flag})")


def step_guard(loss: torch.Tensor, epoch: int, step: int, *, stop_requested: bool = False, lr_flag: str = "--lr",
               clip_flag: str = "--clip-grad") -> bool:
    """Call once per step, after the forward pass, on every rank. Raises :class:`NonFiniteError` on every rank if
    any rank's loss is not finite; returns True on every rank if any rank asked to stop (preemption).

    One collective of two numbers per step (none in a single process); ``loss`` stays on its device."""
    flags = torch.stack([(~torch.isfinite(loss.detach().float())).any().float(),
                         torch.tensor(float(stop_requested), device=loss.device)])
    bad, stop = all_reduce_sum(flags).tolist()
    if bad:
        value = loss.detach().float().item()
        what = f"the loss is {value}" if not torch.isfinite(torch.tensor(value)) else \
            f"the loss is not finite on {int(bad)} rank(s)"
        raise NonFiniteError(_nonfinite_message(what, epoch, step, lr_flag, clip_flag))
    return bool(stop)


def check_finite_model(model: nn.Module, epoch: int, step: int, *, lr_flag: str = "--lr",
                       clip_flag: str = "--clip-grad") -> None:
    """Raise :class:`NonFiniteError` (on every rank) if any floating parameter or buffer of ``model`` is NaN/inf.
    Call on every rank right before a checkpoint is written."""
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    device = tensors[0].device if tensors else torch.device("cpu")
    bad = torch.zeros((), device=device)
    for t in tensors:
        bad += (~torch.isfinite(t.detach())).any().float()
    if all_reduce_sum(bad.reshape(1)).item():
        raise NonFiniteError(_nonfinite_message("the weights are not finite", epoch, step, lr_flag, clip_flag))


# ---------------------------------------------------------------------------------------------------------- resume
#: How each trainer's args look in its checkpoints (for checkpoints written before the ``trainer`` entry existed).
def checkpoint_trainer(ckpt: Mapping[str, Any]) -> str | None:
    """The trainer that wrote ``ckpt`` (its ``trainer`` entry, else recognised from the shape of its args)."""
    if isinstance(ckpt.get("trainer"), str):
        return ckpt["trainer"]
    args = ckpt.get("args")
    if isinstance(args, Mapping):
        if isinstance(args.get("train"), Mapping) and isinstance(args.get("loss"), Mapping):
            return "Conv/ffcv/main.py"
        if "data_set" in args:
            return "Deit/main.py"
        if "dataset" in args and "lr_scheduler" in args:
            return "Conv/common_resnet/train.py"
    return None


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _show(value: Any) -> str:
    return value if isinstance(value, str) else _canonical(value)


def check_resume(ckpt: Mapping[str, Any], path: str | os.PathLike, trainer: str, saved: Mapping[str, Any],
                 current: Mapping[str, Any], keys: Iterable[str], flag: Callable[[str], str] | None = None,
                 required: Iterable[str] = ("model", "optimizer", "epoch")) -> None:
    """Refuse to ``--resume`` a checkpoint that cannot continue this run, with one sentence.

    ``saved`` / ``current``: the checkpoint's and this run's values of the defining ``keys`` (keys missing on either
    side are not compared, so older checkpoints still resume). ``flag`` turns a key into the flag a user types."""
    flag = flag or (lambda k: "--" + k.replace("_", "-"))
    theirs = checkpoint_trainer(ckpt)
    if theirs != trainer:
        who = f"written by {theirs}" if theirs else "not written by any trainer of this repository"
        raise UserError(f"{path} was {who}, not by {trainer}; --resume only continues a run of the same trainer "
                        f"(to start a new run from its weights, use --finetune)")
    missing = [k for k in required if k not in ckpt]
    if missing:
        raise UserError(f"{path} is not a complete {trainer} training checkpoint (missing {', '.join(missing)}); "
                        f"resume needs a checkpoint.pth written by a training run (to start from its weights, use "
                        f"--finetune)")
    diffs = [f"{flag(k)} {_show(saved[k])} → {_show(current[k])}" for k in keys
             if k in saved and k in current and _canonical(saved[k]) != _canonical(current[k])]
    if diffs:
        raise UserError(f"cannot resume {path}: it was trained with other arguments ({'; '.join(diffs)}); resume "
                        f"with the original values, or start a new run from its weights with --finetune")


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


def truncate_log(path: str | os.PathLike, last_epoch: int) -> list[dict[str, Any]]:
    """Keep the records of epochs ``<= last_epoch`` (the checkpoint's), dropping later ones and a torn last line,
    so a resumed run re-logs exactly the epochs it repeats. Returns the kept records."""
    path = Path(path)
    kept = [r for r in read_log(path) if r.get("epoch", -1) <= last_epoch]
    if path.is_file():
        atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


def append_log(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Append one JSON line (call after the checkpoint of the same epoch is written)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------------------------- signals
PREEMPT_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name))


#: Extra preemption signals, comma-separated names such as ``USR2`` (set by ``maxsup.launch`` under submitit).
PREEMPT_ENV = "MAXSUP_PREEMPT_SIGNALS"


def preempt_signals() -> tuple[int, ...]:
    """SIGTERM, SIGUSR1 and the signals named in ``$MAXSUP_PREEMPT_SIGNALS``."""
    extra = []
    for name in filter(None, (n.strip().upper() for n in os.environ.get(PREEMPT_ENV, "").split(","))):
        sig = getattr(signal, name if name.startswith("SIG") else "SIG" + name, None)
        if sig is None:
            raise UserError(f"{PREEMPT_ENV}={os.environ[PREEMPT_ENV]!r}: no signal named {name} on this system")
        extra.append(sig)
    return tuple(dict.fromkeys((*PREEMPT_SIGNALS, *extra)))


class Preemption:
    """Remembers that SIGTERM or SIGUSR1 arrived; the training loop checks :attr:`requested` at each step boundary
    (through :func:`step_guard`, so every rank stops at the same step), writes a checkpoint, calls :meth:`stopped`
    and returns.

    Use as a context manager around training; the previous handlers are restored on exit. :attr:`last` is the most
    recent instance entered (``maxsup.launch`` and :func:`run_seeds` read it after the trainer returned)."""

    last: Preemption | None = None

    def __init__(self, signals: Iterable[int] | None = None):
        self.signals = tuple(signals) if signals is not None else preempt_signals()
        self.requested = False
        self.signal: int | None = None  # the first signal received
        self.did_stop = False  # the trainer stopped early because of it (the same on every rank)
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        self.signal = self.signal or signum
        print(f"received {signal.Signals(signum).name}: writing a checkpoint at the next step boundary, then exiting",
              file=sys.stderr, flush=True)

    def stopped(self) -> None:
        """The trainer calls this (on every rank) when it stops early on the signal, after its checkpoint."""
        self.did_stop = True

    def __enter__(self) -> Preemption:
        Preemption.last = self
        for s in self.signals:
            try:
                self._previous[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (e.g. inside a test runner thread): no handler, no preemption
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)  # None: set outside Python
        self._previous.clear()


def run_seeds(seeds: Iterable[int], run: Callable[[int], Any], where: Callable[[int], Any]) -> dict[str, Any]:
    """``{"seed<S>": run(S)}`` for each seed in turn; after a run that stopped on a preemption signal, the sweep
    stops too, saying so in one line (``where(S)``: that run's output folder, to resume it)."""
    seeds, results = list(seeds), {}
    for i, seed in enumerate(seeds):
        Preemption.last = None
        results[f"seed{seed}"] = run(seed)
        if Preemption.last is not None and Preemption.last.did_stop:
            rest = ",".join(map(str, seeds[i + 1:]))
            print(f"preempted: seed sweep stopped during seed {seed} (checkpoint in {where(seed)}); resume it with "
                  f"--resume{f', then run the remaining seeds with --seeds {rest}' if rest else ''}", file=sys.stderr,
                  flush=True)
            break
    return results
