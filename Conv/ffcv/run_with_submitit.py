"""Launch Conv/ffcv/main.py on Slurm through submitit, with automatic requeue and resume.

    python Conv/ffcv/run_with_submitit.py --nodes 1 --ngpus 8 --partition gpu --job_dir jobs/rn50_maxsup \\
        --config-file Conv/ffcv/configs/rn50_paper_200ep.yaml --data.train_dataset=/data/ffcv/train.ffcv \\
        --data.val_dataset=/data/ffcv/val.ffcv --logging.folder=runs/rn50_maxsup

The launcher's own flags (``--ngpus``, ``--nodes``, ...) come first or anywhere; everything else is the trainer's
config (``--config-file`` and dotted overrides). ``--logging.folder`` defaults to ``--job_dir``. A requeued job
continues with ``--training.resume=auto``; SIGTERM/SIGUSR1 make the trainer checkpoint at the next step boundary first.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from maxsup.cli import ArgumentParser, run_cli
from maxsup.training.launch import add_slurm_args, launch_argv

_spec = importlib.util.spec_from_file_location("ffcv_main", Path(__file__).with_name("main.py"))
ffcv_main = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ffcv_main)


def main(argv: list[str] | None = None):
    parser = add_slurm_args(ArgumentParser("Submitit for Conv/ffcv + MaxSup"))
    args, config_argv = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.job_dir and not any(a.startswith("--logging.folder") for a in config_argv):
        config_argv = [*config_argv, f"--logging.folder={args.job_dir}"]
    cfg = ffcv_main.load_config(config_argv)  # refuse a bad config now, not after the job waited in the queue
    return launch_argv(ffcv_main.main, config_argv, args, cfg.logging.folder, checkpoint_file="checkpoint.pth",
                       resume_flag=ffcv_main.RESUME_FLAG,
                       overwrite_flag=ffcv_main.OVERWRITE_FLAG, name=f"ffcv_{cfg.loss.name}")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
