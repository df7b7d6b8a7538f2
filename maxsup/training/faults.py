"""A fault-injection hook for the crash tests: ``MAXSUP_KILL_AT=step:N`` or ``save:N`` makes the process SIGKILL
itself right before its N-th training step (counted from 1 over the whole run), or inside its N-th checkpoint write
(after the temporary file is written, before it replaces the old checkpoint). A third field names another signal:
``step:N:USR1`` simulates Slurm's preemption warning. Unset (the normal case), :func:`kill_point` only reads one
environment variable."""

from __future__ import annotations

import os
import signal
import sys

__all__ = ["KILL_ENV", "kill_point", "reset"]

KILL_ENV = "MAXSUP_KILL_AT"
_counts: dict[str, int] = {}
_spec: list[str] = [""]


def kill_point(kind: str) -> None:
    """Count one ``kind`` event ("step" or "save") and SIGKILL this process if ``$MAXSUP_KILL_AT`` names it."""
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    if spec != _spec[0]:  # a new setting (e.g. the next in-process test run) counts from zero
        _spec[0] = spec
        _counts.clear()
    _counts[kind] = _counts.get(kind, 0) + 1
    want, n, sig = (spec.split(":") + ["KILL"])[:3]
    if want == kind and n.isdigit() and _counts[kind] == int(n):
        print(f"{KILL_ENV}={spec}: SIG{sig}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), getattr(signal, f"SIG{sig}"))


def reset() -> None:
    """Count from zero again (for several runs in one process, e.g. tests)."""
    _spec[0] = ""
    _counts.clear()
