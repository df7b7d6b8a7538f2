"""Preemption: SIGTERM / SIGUSR1 (Slurm's warning signals) and ``$MAXSUP_PREEMPT_SIGNALS`` set a flag; the trainer
checkpoints at the next step boundary (the flag is shared by :func:`maxsup.training.guards.step_guard`, so every rank
stops at the same step), or after the current epoch's checkpoint, and returns.

In a trainer's epoch loop::

    with Preemption() as preemption:
        for epoch in range(start_epoch, epochs):
            stats = train_one_epoch(..., preemption=preemption)
            if "preempted" in stats:                       # stopped at a step boundary
                save_checkpoint(..., partial=stats["preempted"])
                preemption.checkpointed(epoch, stats["preempted"]["step"], "rerun with --resume PATH")
                break
            ...evaluate, checkpoint, log...
            if preemption.stop_after_epoch(epoch, epochs, device):
                break
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterable
from typing import Any

import torch

from ..errors import UserError
from .distributed import all_reduce_sum

__all__ = ["PREEMPT_ENV", "PREEMPT_SIGNALS", "Preemption", "preempt_signals"]

PREEMPT_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name))


#: Extra preemption signals, comma-separated names such as ``USR2`` (set by :mod:`.launch` under submitit).
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
    recent instance entered (:mod:`.launch` and :func:`.sweep.run_seeds` read it after the trainer returned)."""

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

    def checkpointed(self, epoch: int, step: int, resume_hint: str) -> None:
        """The trainer wrote its mid-epoch checkpoint (``epoch``, after ``step`` batches) on the signal and stops:
        say how to continue (``resume_hint``, in the trainer's own words, e.g. "rerun with --resume PATH")."""
        print(f"Preempted: checkpoint written at epoch {epoch}, step {step}; {resume_hint} to continue", flush=True)
        self.stopped()

    def stop_after_epoch(self, epoch: int, epochs: int, device: torch.device | str = "cpu") -> bool:
        """Call on every rank after epoch ``epoch``'s checkpoint (of ``epochs``): True when a signal arrived on any
        rank during the epoch's evaluation or checkpoint (one all-reduce), then the trainer stops. A signal after
        the last epoch is not a preemption: the run is complete."""
        if not all_reduce_sum(torch.tensor([float(self.requested)], device=device)).item():
            return False
        print(f"Preempted: stopping after the checkpoint of epoch {epoch}", flush=True)
        if epoch + 1 < epochs:
            self.stopped()
        return True

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
