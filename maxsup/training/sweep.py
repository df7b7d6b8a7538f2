"""Seed sweeps: ``--seeds 0,3,7`` (or ``SEEDS=N``) runs one training per seed, one after the other, each in its own
folder ``<output dir>/seed<S>``; a preempted run stops the sweep."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import UserError
from .preemption import Preemption

__all__ = ["parse_seeds", "seed_dir", "seeded_args", "run_seeds"]


def parse_seeds(text: str | None, env: Mapping[str, str] | None = None) -> list[int] | None:
    """``--seeds 0,3,7`` → [0, 3, 7]; without ``--seeds``, ``SEEDS=N`` in the environment → [0 … N−1]
    (the meaning ``make demo`` gives it); neither → None (a single run with ``--seed``)."""
    env = os.environ if env is None else env
    if text:
        try:
            seeds = [int(s) for s in text.split(",") if s.strip()]
        except ValueError:
            raise UserError(f"--seeds must be a comma list of integers like 0,3,7, got {text!r}") from None
        if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise UserError(f"--seeds needs distinct non-negative integers, got {text!r}")
        return seeds
    n = env.get("SEEDS", "").strip()
    if not n:
        return None
    if not n.isdigit() or int(n) < 1:
        raise UserError(f"SEEDS must be a positive integer (seeds 0..SEEDS-1), got {n!r}")
    return list(range(int(n)))


def seed_dir(output_dir: str, seed: int) -> str:
    """Run folder of one seed of a sweep: ``<output_dir>/seed<seed>`` ("" stays "": no folder)."""
    return str(Path(output_dir) / f"seed{seed}") if output_dir else ""


def seeded_args(args: argparse.Namespace, seed: int, seed_key: str, folder_keys: Iterable[str],
                clear: Iterable[str] = ()) -> argparse.Namespace:
    """A copy of an argparse trainer's ``args`` for one seed: ``seed_key`` set to ``seed``, every folder in
    ``folder_keys`` (output, TensorBoard, …) moved to its ``seed<S>`` subfolder, the ``clear`` keys (the sweep's
    own flag) set to None."""
    values = {**vars(args), seed_key: seed, **{k: None for k in clear}}
    values.update({k: seed_dir(getattr(args, k), seed) for k in folder_keys})
    return argparse.Namespace(**values)


def run_seeds(seeds: Iterable[int], run: Callable[[int], Any], output_dir: str, resume_hint: str) -> dict[str, Any]:
    """``{"seed<S>": run(S)}`` for each seed in turn; after a run that stopped on a preemption signal the sweep
    stops too, saying so in one line: where that run's checkpoint is (``seed_dir(output_dir, S)``) and how to
    continue (``resume_hint``, the trainer's resume flag, e.g. "--resume" or "--training.resume=auto")."""
    seeds, results = list(seeds), {}
    for i, seed in enumerate(seeds):
        Preemption.last = None
        results[f"seed{seed}"] = run(seed)
        if Preemption.last is not None and Preemption.last.did_stop:
            rest = ",".join(map(str, seeds[i + 1:]))
            then = f", then run the remaining seeds with --seeds {rest}" if rest else ""
            print(f"preempted: seed sweep stopped during seed {seed} (checkpoint in {seed_dir(output_dir, seed)}); "
                  f"resume it with {resume_hint}{then}",
                  file=sys.stderr, flush=True)
            break
    return results
