"""Launch Conv/common_resnet/train.py on Slurm through submitit, with automatic requeue and resume.

    python Conv/common_resnet/run_with_submitit.py --nodes 1 --ngpus 8 --partition gpu --job_dir jobs/rn50_maxsup \\
        --dataset imagefolder --data-path /data/imagenet --model resnet50 --loss maxsup -b 32 --lr 0.1 --epochs 90

Every flag of train.py is accepted. ``--output-dir`` defaults to ``--job_dir``. On preemption or timeout the job is
requeued with ``--resume <output-dir>/checkpoint.pth``; SIGTERM/SIGUSR1 make train.py checkpoint at the next step
boundary first (README.md, "Resume").
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import train  # noqa: E402

from maxsup.cli import ArgumentParser, run_cli  # noqa: E402
from maxsup.training.launch import launch_argparse  # noqa: E402


def main(argv: list[str] | None = None):
    parser = ArgumentParser("Submitit for common_resnet + MaxSup", parents=[train.get_args_parser(add_help=False)])
    return launch_argparse(train.main, parser, argv, output_key="output_dir", resume_key="resume",
                           overwrite_key="overwrite",
                           checkpoint_file="checkpoint.pth", name=lambda args: f"common_resnet_{args.loss}",
                           unset=("", "."))


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
