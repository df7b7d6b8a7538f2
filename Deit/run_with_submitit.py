"""Launch Deit/main.py on Slurm through submitit, with automatic requeue and resume from ``output_dir``.

    python Deit/run_with_submitit.py --nodes 1 --ngpus 4 --partition gpu --job_dir ./jobs/deit_maxsup \\
        --data-path /data/imagenet --loss maxsup --mixup 0 --cutmix 0 --smoothing 0 --batch-size 256

On preemption or timeout, submitit calls ``Trainer.checkpoint``, which requeues the job with ``--resume
<output_dir>/checkpoint.pth`` (written atomically at every epoch end).
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import main as deit_main  # noqa: E402

from maxsup.cli import run_cli  # noqa: E402
from maxsup.errors import UserError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser("Submitit for DeiT + MaxSup", parents=[deit_main.get_args_parser()])
    parser.add_argument("--ngpus", default=4, type=int, help="GPUs per node (default: 4)")
    parser.add_argument("--nodes", default=1, type=int, help="number of nodes (default: 1)")
    parser.add_argument("--timeout", default=2800, type=int, help="job time limit in minutes (default: 2800)")
    parser.add_argument("--job_dir", default="", type=str, help="submitit logs; also the default --output_dir")
    parser.add_argument("--partition", default="", type=str, help="Slurm partition (default: cluster default)")
    parser.add_argument("--comment", default="", type=str, help="Slurm comment")
    return parser.parse_args(argv)


class Trainer:
    """The picklable callable submitit runs on every task."""

    def __init__(self, args: argparse.Namespace):
        self.args = args

    def __call__(self) -> None:
        import submitit

        env = submitit.JobEnvironment()
        # torchrun-style variables, read by maxsup.distributed.init_distributed
        os.environ.update(RANK=str(env.global_rank), WORLD_SIZE=str(env.num_tasks),
                          LOCAL_RANK=str(env.local_rank), MASTER_ADDR=env.hostnames[0],
                          MASTER_PORT=os.environ.get("MASTER_PORT", "29500"))
        checkpoint = Path(self.args.output_dir) / "checkpoint.pth"
        if checkpoint.exists():
            self.args.resume = str(checkpoint)
        deit_main.main(self.args)

    def checkpoint(self):
        import submitit

        checkpoint = Path(self.args.output_dir) / "checkpoint.pth"
        if checkpoint.exists():
            self.args.resume = str(checkpoint)
        print("Requeuing", self.args)
        return submitit.helpers.DelayedSubmission(type(self)(self.args))


def main(argv: list[str] | None = None) -> None:
    import submitit

    args = parse_args(argv)
    if not args.job_dir:
        raise UserError("--job_dir is required (a folder visible from every node, for submitit logs)")
    job_dir = Path(args.job_dir)
    args.output_dir = args.output_dir or str(job_dir)
    executor = submitit.AutoExecutor(folder=job_dir / "%j", slurm_max_num_timeout=30)
    kwargs = {"slurm_partition": args.partition} if args.partition else {}
    if args.comment:
        kwargs["slurm_comment"] = args.comment
    executor.update_parameters(mem_gb=40 * args.ngpus, gpus_per_node=args.ngpus, tasks_per_node=args.ngpus,
                               cpus_per_task=10, nodes=args.nodes, timeout_min=args.timeout,
                               slurm_signal_delay_s=120, name=f"deit_{args.loss}", **kwargs)
    os.environ.setdefault("MASTER_PORT", str(29500 + uuid.uuid4().int % 1000))
    job = executor.submit(Trainer(args))
    print(f"Submitted job {job.job_id}; logs and checkpoints in {job_dir}")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
