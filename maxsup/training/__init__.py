"""Training mechanics shared by the three trainers, each a small module re-exported here
(``from maxsup.training import atomic_save, Preemption, repair_log``):

* :mod:`.checkpoint` — atomic writes, weights-only checkpoint loading, RNG state capture and seeding;
* :mod:`.distributed` — torchrun setup (NCCL on CUDA, gloo on CPU) and the collectives the trainers need;
* :mod:`.guards` — non-finite losses and weights stop every rank, before a checkpoint is written;
* :mod:`.resume` — load and validate a checkpoint, restore state and RNG, repair the log, skip finished batches;
* :mod:`.preemption` — Slurm's warning signals become a checkpoint at a step boundary or after the epoch;
* :mod:`.sweep` — seed sweeps, one run folder per seed;
* :mod:`.runfolder` — one run per output folder: a lock that dies with the process, no silent restart over a run;
* :mod:`.runinfo` — ``--print-config``, the run record ``run.json`` with provenance, TensorBoard scalars;
* :mod:`.launch` — submitit: requeue on preemption and resume from the output folder;
* :mod:`.faults` — the fault-injection hook of the crash tests.

The library names no trainer, path or flag: each trainer passes its own (its name, its resume flag, the keys that
define a run).
"""

from .checkpoint import (
    atomic_path,
    atomic_save,
    atomic_write,
    load_checkpoint,
    rng_state,
    seed_everything,
    set_rng_state,
)
from .distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    cleanup_distributed,
    init_distributed,
    rank,
    resolve_device,
    world_size,
)
from .faults import kill_point
from .guards import NonFiniteError, check_finite_model, step_guard
from .preemption import PREEMPT_ENV, Preemption
from .resume import (
    Resumed,
    append_log,
    check_resume,
    open_resume,
    read_log,
    repair_log,
    restore_state,
    skip_done_batches,
)
from .runfolder import FolderInUse, RunFolderLock, check_new_run, claim_run_folder, holds_run
from .runinfo import (
    RUN_RECORD,
    ScalarWriter,
    add_run_args,
    alpha_schedule_of,
    launcher_world_size,
    print_config,
    recipe_fingerprint,
    write_run_record,
)
from .sweep import parse_seeds, run_seeds, seed_dir, seeded_args

__all__ = [
    "add_run_args", "all_reduce_sum", "alpha_schedule_of", "append_log", "atomic_path", "atomic_save", "atomic_write",
    "barrier", "check_finite_model", "check_new_run", "check_resume", "claim_run_folder", "cleanup_distributed",
    "DistInfo", "FolderInUse", "holds_run", "init_distributed", "kill_point", "launcher_world_size",
    "load_checkpoint", "NonFiniteError", "open_resume", "parse_seeds", "PREEMPT_ENV", "Preemption", "print_config",
    "rank", "read_log", "recipe_fingerprint", "repair_log", "resolve_device", "restore_state", "Resumed", "rng_state",
    "RUN_RECORD", "run_seeds", "RunFolderLock", "ScalarWriter", "seed_dir", "seed_everything", "seeded_args",
    "set_rng_state", "skip_done_batches", "step_guard", "world_size", "write_run_record",
]
