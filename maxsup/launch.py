"""Slurm launching through submitit, shared by the trainers' ``run_with_submitit.py`` scripts.

A :class:`RequeueTask` runs one trainer entry point on every Slurm task, with torchrun's environment variables set
from submitit's job environment (``maxsup.distributed.init_distributed`` reads them). On preemption or timeout
submitit calls :meth:`RequeueTask.checkpoint`, which requeues the same task; the trainer then resumes from
``checkpoint.pth`` in its output folder (written atomically at every epoch end, and at a step boundary when the
trainer receives SIGTERM/SIGUSR1).
"""

from __future__ import annotations

import argparse
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import UserError

__all__ = ["add_slurm_args", "RequeueTask", "submit"]


def add_slurm_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The launcher flags (names as in DeiT's run_with_submitit.py)."""
    g = parser.add_argument_group("slurm (submitit)")
    g.add_argument("--ngpus", default=4, type=int, help="GPUs (= tasks) per node (default: 4)")
    g.add_argument("--nodes", default=1, type=int, help="number of nodes (default: 1)")
    g.add_argument("--timeout", default=2800, type=int, help="job time limit in minutes (default: 2800)")
    g.add_argument("--job_dir", default="", type=str, help="submitit logs; also the default output folder")
    g.add_argument("--partition", default="", type=str, help="Slurm partition (default: cluster default)")
    g.add_argument("--comment", default="", type=str, help="Slurm comment")
    g.add_argument("--cluster", default=None, choices=["slurm", "local", "debug"],
                   help="submitit executor (default: slurm when available, else local; debug runs in this process)")
    return parser


class RequeueTask:
    """Picklable callable: ``run(prepare(checkpoint_exists))`` on every task; requeues itself on preemption.

    ``prepare(resume: bool)`` returns the trainer's input (args or argv), pointing ``--resume`` at the output
    folder's checkpoint when one exists."""

    def __init__(self, run: Callable[[Any], Any], prepare: Callable[[bool], Any], checkpoint_path: str):
        self.run, self.prepare, self.checkpoint_path = run, prepare, checkpoint_path

    def __call__(self) -> Any:
        import submitit

        env = submitit.JobEnvironment()
        os.environ.update(RANK=str(env.global_rank), WORLD_SIZE=str(env.num_tasks), LOCAL_RANK=str(env.local_rank),
                          MASTER_ADDR=env.hostnames[0], MASTER_PORT=os.environ.get("MASTER_PORT", "29500"))
        return self.run(self.prepare(Path(self.checkpoint_path).is_file()))

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit

        print(f"Requeuing; the next run resumes from {self.checkpoint_path}", flush=True)
        return submitit.helpers.DelayedSubmission(type(self)(self.run, self.prepare, self.checkpoint_path))


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
                               slurm_signal_delay_s=120, name=name, **kwargs)
    os.environ.setdefault("MASTER_PORT", str(29500 + uuid.uuid4().int % 1000))
    job = executor.submit(task)
    print(f"Submitted job {job.job_id}; logs in {args.job_dir}")
    return job
