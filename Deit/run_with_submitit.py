"""Launch Deit/main.py on Slurm through submitit, with automatic requeue and resume from ``output_dir``.

    python Deit/run_with_submitit.py --nodes 1 --ngpus 4 --partition gpu --job_dir ./jobs/deit_maxsup \\
        --data-path /data/imagenet --loss maxsup --mixup 0 --cutmix 0 --smoothing 0 --batch-size 256

On preemption or timeout, submitit's SIGUSR2 first makes main.py write ``<output_dir>/checkpoint.pth`` at the end of the
current accumulation group; then submitit calls ``RequeueTask.checkpoint``, which requeues the job with ``--resume``
pointing at it (see ``maxsup/training/launch.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import main as deit_main  # noqa: E402

from maxsup.cli import ArgumentParser, run_cli  # noqa: E402
from maxsup.training.launch import launch_argparse  # noqa: E402


def main(argv: list[str] | None = None):
    parser = ArgumentParser("Submitit for DeiT + MaxSup", parents=[deit_main.get_args_parser()])
    return launch_argparse(deit_main.main, parser, argv, output_key="output_dir", resume_key="resume",
                           overwrite_key="overwrite",
                           checkpoint_file="checkpoint.pth", name=lambda args: f"deit_{args.loss}")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
