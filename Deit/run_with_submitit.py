"""Launch Deit/main.py on Slurm through submitit, with automatic requeue and resume from ``output_dir``.

    python Deit/run_with_submitit.py --nodes 1 --ngpus 4 --partition gpu --job_dir ./jobs/deit_maxsup \\
        --data-path /data/imagenet --loss maxsup --mixup 0 --cutmix 0 --smoothing 0 --batch-size 256

On preemption or timeout, submitit's SIGUSR2 first makes main.py write ``<output_dir>/checkpoint.pth`` at the end of the
current accumulation group; then submitit calls ``RequeueTask.checkpoint`` (``maxsup.launch``), which requeues the job
with ``--resume`` pointing at it (see ``maxsup/launch.py``).
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import main as deit_main  # noqa: E402

from maxsup.cli import run_cli  # noqa: E402
from maxsup.launch import RequeueTask, add_slurm_args, submit  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser("Submitit for DeiT + MaxSup", parents=[deit_main.get_args_parser()])
    return add_slurm_args(parser).parse_args(argv)


def prepare(args: argparse.Namespace, checkpoint: str, resume: bool) -> argparse.Namespace:
    if resume:
        args.resume = checkpoint
    return args


def main(argv: list[str] | None = None):
    args = parse_args(argv)
    args.output_dir = args.output_dir or args.job_dir
    checkpoint = str(Path(args.output_dir) / "checkpoint.pth")
    task = RequeueTask(deit_main.main, functools.partial(prepare, args, checkpoint), checkpoint)
    return submit(task, args, name=f"deit_{args.loss}")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
