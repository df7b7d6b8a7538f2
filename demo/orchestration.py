"""The demo's orchestration: subprocess jobs run in parallel with per-epoch progress and an ETA."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from recipe import ROOT

from maxsup.errors import UserError
from maxsup.training import atomic_write


# --------------------------------------------------------------------------------------------------------------------
# Jobs: subprocesses with progress
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class Job:
    """One or more commands run in sequence; ``epochs`` > 0 marks a training run whose progress is parsed."""

    name: str
    cmds: list[list[str]]
    log: Path
    epochs: int = 0
    weight: float = 1.0
    env: dict[str, str] = field(default_factory=dict)
    progress: float = 0.0  # 0..1
    status: str = "waiting"
    tail: deque = field(default_factory=lambda: deque(maxlen=25))
    proc: subprocess.Popen | None = None
    wall_s: float = 0.0
    cpu_s: float = 0.0


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DATA_PATH", None)  # Deit/train_with_MaxSup.sh switches to the ImageNet recipe when it is set
    env.pop("SEEDS", None)  # the demo runs one trainer per seed itself; SEEDS=N would make each one sweep N seeds
    # One intra-op thread per process: on a busy 2-core machine two spinning OpenMP threads per process are slower
    # (Conv/common_resnet/README.md); parallelism comes from running --jobs processes at once.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    # Deit/train_with_MaxSup.sh picks the checkout's .venv by itself; the demo's steps run under the demo's own
    # interpreter instead, so a demo started from any environment trains with that environment's packages.
    env.setdefault("PYTHON", sys.executable)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _parse_epoch(line: str) -> tuple[int, int, int] | None:
    """``Epoch: [e] [i/n] ...`` (both trainers' step lines) → (e, i, n)."""
    if not line.startswith("Epoch: ["):
        return None
    try:
        e, rest = line[len("Epoch: ["):].split("]", 1)
        i, n = rest.strip()[1:].split("]", 1)[0].split("/")
        return int(e), int(i), int(n)
    except ValueError:
        return None


def _wait_with_cpu(proc: subprocess.Popen) -> tuple[int, float]:
    """Wait for ``proc``; returns (exit code, CPU seconds of it and the children it waited for, e.g. loader
    workers). ``os.wait4`` gives per-process usage, which ``RUSAGE_CHILDREN`` cannot when jobs run in parallel."""
    if not hasattr(os, "wait4"):  # Windows
        return proc.wait(), float("nan")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime


def _run_job(job: Job) -> None:
    job.status, started, epoch = "running", time.time(), -1
    job.log.parent.mkdir(parents=True, exist_ok=True)
    with open(job.log, "w") as logf:
        for k, cmd in enumerate(job.cmds):
            logf.write("$ " + shlex.join(cmd) + "\n")
            logf.flush()
            t0 = time.time()
            job.proc = proc = subprocess.Popen(cmd, cwd=ROOT, env=_child_env(job.env), stdout=subprocess.PIPE,
                                               stderr=subprocess.STDOUT, text=True, bufsize=1)
            assert proc.stdout is not None
            for line in proc.stdout:
                logf.write(line)
                job.tail.append(line.rstrip())
                parsed = _parse_epoch(line) if job.epochs else None
                if parsed:
                    e, i, n = parsed
                    if e != epoch:  # one line per epoch: which run, its epoch, and its ETA
                        epoch, elapsed = e, time.time() - started
                        eta = _fmt_time(elapsed * (1 - job.progress) / job.progress) if job.progress else "estimating"
                        print(f"[{job.name}] epoch {e + 1}/{job.epochs} ({_fmt_time(elapsed)} elapsed, run ETA {eta})",
                              flush=True)
                    job.progress = min(1.0, (e + (i + 1) / max(n, 1)) / job.epochs)
            code, cpu = _wait_with_cpu(proc)
            job.wall_s += time.time() - t0
            job.cpu_s += cpu
            logf.write(f"# exit {code} after {time.time() - t0:.1f} s wall, {cpu:.1f} s CPU\n")
            if code != 0:
                job.status = f"failed (exit {code})"
                return
            if not job.epochs:
                job.progress = (k + 1) / len(job.cmds)
    job.progress, job.status = 1.0, "done"


def _fmt_time(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 60}:{seconds % 60:02d}"


def run_jobs(jobs: list[Job], parallel: int, phase: str, every: float = 10.0) -> None:
    """Run ``jobs`` ``parallel`` at a time, printing which run, its epoch and the ETA every ``every`` seconds."""
    if not jobs:
        return
    start, pending, running = time.time(), list(jobs), []
    try:
        _drive(jobs, pending, running, parallel, phase, every, start)
    except BaseException:  # a failed step or Ctrl-C: stop the other subprocesses of this phase too
        for job, t in running:
            if job.proc is not None and job.proc.poll() is None:
                job.proc.terminate()
            t.join(timeout=30)
        raise


def _drive(jobs: list[Job], pending: list[Job], running: list, parallel: int, phase: str, every: float,
           start: float) -> None:
    total = sum(j.weight for j in jobs)
    last_print = 0.0
    while pending or running:
        while pending and len(running) < parallel:
            job = pending.pop(0)
            print(f"[{phase}] start {job.name} → {job.log.parent}", flush=True)
            t = threading.Thread(target=_run_job, args=(job,), daemon=True)
            t.start()
            running.append((job, t))
        time.sleep(0.5)
        for job, t in list(running):
            if not t.is_alive():
                running.remove((job, t))
                if job.status != "done":
                    tail = "\n".join(job.tail)
                    print(f"[{phase}] {job.name} {job.status}; last lines of {job.log}:\n{tail}", file=sys.stderr)
                    raise UserError(f"{phase} step {job.name} {job.status}; its full output is in {job.log}")
                print(f"[{phase}] done {job.name} ({_fmt_time(time.time() - start)} into the phase)", flush=True)
                if job.epochs:  # a training run: its timing record, kept even if a later job fails or is killed
                    atomic_write(job.log.parent / "demo_time.json", f'{{"wall_s": {job.wall_s}, "cpu_s": {job.cpu_s}}}')
        now = time.time()
        if now - last_print >= every and running:
            last_print = now
            frac = sum(j.weight * j.progress for j in jobs) / total
            eta = (now - start) * (1 - frac) / frac if frac > 0.02 else float("nan")
            parts = []
            for job, _ in running:
                if job.epochs:
                    done = job.progress * job.epochs
                    parts.append(f"{job.name} epoch {min(int(done) + 1, job.epochs)}/{job.epochs} "
                                 f"({100 * job.progress:.0f}%)")
                else:
                    parts.append(f"{job.name} step {int(job.progress * len(job.cmds)) + 1}/{len(job.cmds)}")
            eta_s = _fmt_time(eta) if eta == eta else "estimating"
            print(f"[{phase} {_fmt_time(now - start)}] {' | '.join(parts)} | phase {100 * frac:.0f}% done, "
                  f"ETA {eta_s}", flush=True)
