"""A fault-injection hook for the crash tests: ``MAXSUP_KILL_AT=step:N`` or ``save:N`` makes the process SIGKILL
itself right before its N-th training step, or inside its N-th checkpoint write (after the temporary file is written,
before it replaces the old checkpoint). Unset (the normal case), :func:`kill_point` only reads one variable."""

from __future__ import annotations

import os
import signal
import sys

__all__ = ["KILL_ENV", "kill_point"]

KILL_ENV = "MAXSUP_KILL_AT"
_counts: dict[str, int] = {}


def kill_point(kind: str) -> None:
    """Count one ``kind`` event ("step" or "save") and SIGKILL this process if ``$MAXSUP_KILL_AT`` names it."""
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    _counts[kind] = _counts.get(kind, 0) + 1
    want, _, n = spec.partition(":")
    if want == kind and n.isdigit() and _counts[kind] == int(n):
        print(f"{KILL_ENV}={spec}: SIGKILL", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
