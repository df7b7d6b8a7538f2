"""Slurm launching through submitit, shared by the trainers' ``run_with_submitit.py`` scripts.

A :class:`RequeueTask` runs one trainer entry point on every Slurm task, with torchrun's environment variables set
from submitit's job environment (:func:`maxsup.training.distributed.init_distributed` reads them).
:func:`launch_argparse` (argparse trainers) and :func:`launch_argv` (config-file trainers) are a whole
``run_with_submitit.py``: parse, point the output folder at ``--job_dir`` when unset, submit, and on requeue resume
from the output folder's checkpoint with the trainer's own resume flag.

Preemption and time limit: Slurm sends submitit's signal (SIGUSR2, ``--signal=USR2@<--signal_delay_s>``) ahead of the
time limit, and on preemption. Inside the training loop :class:`RequeueTask` makes that signal the trainer's
:class:`~maxsup.training.preemption.Preemption` flag (``$MAXSUP_PREEMPT_SIGNALS``), so the trainer finishes its
current step (or accumulation group), writes a mid-epoch checkpoint and returns; then the signal is handed back to
submitit's own handler, which calls :meth:`RequeueTask.checkpoint` and requeues the job, and the requeued job resumes
from that checkpoint. Outside the loop (data loading, final evaluation) submitit handles the signal directly, and the
job resumes from the last epoch checkpoint. SIGTERM / SIGUSR1 also checkpoint at a step boundary, then the job ends
without a requeue (Slurm requeues a preempted job itself when the partition's PreemptMode is REQUEUE).
"""

from __future__ import annotations

import argparse
import functools
import inspect
import os
import signal
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UserError
from .preemption import PREEMPT_ENV, Preemption

__all__ = ["add_slurm_args", "RequeueTask", "submit", "launch_argparse", "launch_argv"]


def add_slurm_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The launcher flags (names as in DeiT's run_with_submitit.py)."""
    g = parser.add_argument_group("slurm (submitit)")
    g.add_argument("--ngpus", default=4, type=int, help="GPUs (= tasks) per node (default: 4)")
    g.add_argument("--nodes", default=1, type=int, help="number of nodes (default: 1)")
    g.add_argument("--timeout", default=2800, type=int, help="job time limit in minutes (default: 2800)")
    g.add_argument("--job_dir", default="", type=str, help="submitit logs; also the default output folder")
    g.add_argument("--partition", default="", type=str, help="Slurm partition (default: cluster default)")
    g.add_argument("--comment", default="", type=str, help="Slurm comment")
    g.add_argument("--signal_delay_s", default=180, type=int,
                   help="seconds before the time limit at which Slurm signals the job, which then checkpoints at the "
                        "next step boundary; allow one step (accumulation group) plus a checkpoint write "
                        "(default: 180)")
    g.add_argument("--cluster", default=None, choices=["slurm", "local", "debug"],
                   help="submitit executor (default: slurm when available, else local; debug runs in this process)")
    return parser


class RequeueTask:
    """Picklable callable: ``run(prepare(checkpoint_exists))`` on every task; requeues itself on preemption.

    ``prepare(resume: bool)`` returns the trainer's input (args or argv), pointing ``--resume`` at the output
    folder's checkpoint when one exists. ``restart(input)``: the input of a requeued job that finds no checkpoint
    (stopped before its first one) with the trainer's overwrite flag set: it starts its own run over, which a fresh
    run into a folder holding a run (its ``run.json``) may only do explicitly."""

    def __init__(self, run: Callable[[Any], Any], prepare: Callable[[bool], Any], checkpoint_path: str,
                 restart: Callable[[Any], Any] | None = None, requeued: bool = False):
        self.run, self.prepare, self.checkpoint_path = run, prepare, checkpoint_path
        self.restart, self.requeued = restart, requeued

    def __call__(self) -> Any:
        import submitit

        env = submitit.JobEnvironment()
        os.environ.update(RANK=str(env.global_rank), WORLD_SIZE=str(env.num_tasks), LOCAL_RANK=str(env.local_rank),
                          MASTER_ADDR=env.hostnames[0], MASTER_PORT=os.environ.get("MASTER_PORT", "29500"))
        usr = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)  # SIGUSR2 unless $SUBMITIT_PREEMPT_SIGNAL
        before = os.environ.get(PREEMPT_ENV)
        extra = [n for n in (before or "").split(",") if n]
        os.environ[PREEMPT_ENV] = ",".join(dict.fromkeys([*extra, usr.name]))  # the trainer's Preemption catches it
        Preemption.last = None
        try:
            resume = Path(self.checkpoint_path).is_file()
            task_input = self.prepare(resume)
            if self.requeued and not resume and self.restart is not None:
                task_input = self.restart(task_input)
            result = self.run(task_input)
        finally:  # (the debug executor runs in the submitting process)
            if before is None:
                os.environ.pop(PREEMPT_ENV, None)
            else:
                os.environ[PREEMPT_ENV] = before
        preemption = Preemption.last
        if preemption is not None and preemption.did_stop and preemption.signal == usr:
            # the step-boundary checkpoint is written; submitit's handler (restored by Preemption) requeues the job
            print(f"{usr.name}: checkpoint written, handing over to submitit to requeue", file=sys.stderr, flush=True)
            signal.raise_signal(usr)
        return result

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit

        print(f"Requeuing; the next run resumes from {self.checkpoint_path}", flush=True)
        return submitit.helpers.DelayedSubmission(type(self)(self.run, self.prepare, self.checkpoint_path,
                                                             self.restart, requeued=True))


def submit(task: RequeueTask, args: argparse.Namespace, name: str) -> Any:
    """Submit ``task`` with the resources of ``args`` (see :func:`add_slurm_args`); returns the submitit job."""
    import submitit

    if not args.job_dir:
        raise UserError("--job_dir is required (a folder visible from every node, for submitit logs)")
    executor = submitit.AutoExecutor(folder=Path(args.job_dir) / "%j", cluster=args.cluster,
                                     slurm_max_num_timeout=30)
    kwargs = {"slurm_partition": args.partition} if args.partition else {}
    if args.comment:
        kwargs["slurm_comment"] = args.comment
    executor.update_parameters(mem_gb=40 * args.ngpus, gpus_per_node=args.ngpus, tasks_per_node=args.ngpus,
                               cpus_per_task=10, nodes=args.nodes, timeout_min=args.timeout,
                               slurm_signal_delay_s=args.signal_delay_s, name=name, **kwargs)
    os.environ.setdefault("MASTER_PORT", str(29500 + uuid.uuid4().int % 1000))
    # the job unpickles the task by reference: the trainer's folder (its modules) and the repository must be importable
    # there (Slurm and the local executor pass this environment on)
    folders = [str(Path(inspect.getfile(task.run)).resolve().parent), str(Path(__file__).resolve().parents[2])]
    old = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([*folders, *old]))
    job = executor.submit(task)
    print(f"Submitted job {job.job_id}; logs in {args.job_dir}")
    return job


def _set_resume(args: argparse.Namespace, resume_key: str, checkpoint: str, resume: bool) -> argparse.Namespace:
    if resume:
        setattr(args, resume_key, checkpoint)
    return args


def _set_overwrite(overwrite_key: str, args: argparse.Namespace) -> argparse.Namespace:
    setattr(args, overwrite_key, True)
    return args


def _add_resume_flag(argv: list[str], resume_flag: str, resume: bool) -> list[str]:
    return [*argv, resume_flag] if resume else list(argv)


def _add_flag(flag: str, argv: list[str]) -> list[str]:
    return [*argv, flag]


def launch_argparse(run: Callable[[argparse.Namespace], Any], parser: argparse.ArgumentParser,
                    argv: list[str] | None, *, output_key: str, resume_key: str, overwrite_key: str,
                    checkpoint_file: str, name: Callable[[argparse.Namespace], str],
                    unset: tuple[str, ...] = ("",)) -> Any:
    """Submit an argparse trainer: ``parser`` (the trainer's flags) gets the Slurm flags; the output folder
    (``args.<output_key>``) defaults to ``--job_dir`` when its value is in ``unset``; a requeued job runs with
    ``args.<resume_key>`` = ``<output folder>/<checkpoint_file>`` once that file exists, else (stopped before its first
    checkpoint) with ``args.<overwrite_key>`` set. ``name(args)``: the job's name."""
    args = add_slurm_args(parser).parse_args(argv)
    if getattr(args, output_key) in unset and args.job_dir:
        setattr(args, output_key, args.job_dir)
    checkpoint = str(Path(getattr(args, output_key)) / checkpoint_file)
    task = RequeueTask(run, functools.partial(_set_resume, args, resume_key, checkpoint), checkpoint,
                       functools.partial(_set_overwrite, overwrite_key))
    return submit(task, args, name=name(args))


def launch_argv(run: Callable[[list[str]], Any], argv: list[str], args: argparse.Namespace, output_dir: str, *,
                checkpoint_file: str, resume_flag: str, overwrite_flag: str, name: str) -> Any:
    """Submit a trainer that takes its own command line (``run(argv)``; ``args``: the Slurm flags parsed with
    :func:`add_slurm_args`); a requeued job appends ``resume_flag`` (e.g. ``--training.resume=auto``) once
    ``<output_dir>/<checkpoint_file>`` exists, else ``overwrite_flag`` (it stopped before its first checkpoint)."""
    checkpoint = str(Path(output_dir) / checkpoint_file)
    task = RequeueTask(run, functools.partial(_add_resume_flag, list(argv), resume_flag), checkpoint,
                       functools.partial(_add_flag, overwrite_flag))
    return submit(task, args, name=name)
