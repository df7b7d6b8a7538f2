"""maxsup.timing and maxsup.estimate: the epoch-record timing rule and the --estimate step clock."""

from __future__ import annotations

import json

import pytest
import torch

from maxsup.errors import UserError
from maxsup.estimate import (
    StepClock,
    SyntheticBatches,
    estimate_record,
    pop_estimate_flags,
    print_estimate,
    train_split_size,
)
from maxsup.timing import Stopwatch, train_timing


def test_train_timing_is_images_over_seconds():
    assert train_timing(96, 2.0) == {"train_seconds": 2.0, "train_images_per_s": 48.0}
    assert train_timing(10, 0.0)["train_images_per_s"] > 0  # a coarse clock reading 0 does not divide by zero
    assert Stopwatch("cpu").seconds() >= 0


def test_step_clock_times_only_the_steps_after_the_warm_up(monkeypatch):
    """A fake clock: each of the 2 warm-up steps × 2 batches takes 5 s, each of the 3 timed steps × 2 batches 1 s."""
    import maxsup.estimate as est

    now = [0.0]
    monkeypatch.setattr(est, "synced_clock", lambda device=None: now[0])
    clock = StepClock(list(range(20)), steps=3, accum_steps=2, warmup=2)
    assert len(clock) == 10
    seen = []
    for i, b in enumerate(clock):
        seen.append(b)
        now[0] += 5.0 if i < 4 else 1.0
    assert seen == list(range(10))
    assert clock.seconds_per_step == 2.0  # two 1 s batches per step; the warm-up is not counted
    rec = estimate_record(clock, trainer="t", steps_per_epoch=100, epochs=3, world_size=4, total_batch_size=64,
                          device="cpu", data="synthetic", loss="maxsup")
    assert rec["estimate"] is True and rec["eval_seconds"] is None and rec["loss"] == "maxsup"
    assert rec["train_seconds"] == pytest.approx(100 * clock.seconds_per_step)
    assert rec["gpu_hours"] == pytest.approx(rec["seconds_total"] * 4 / 3600)
    assert rec["train_images_per_s"] == pytest.approx(64 / clock.seconds_per_step)


def test_step_clock_refuses_too_little_data_and_an_unfinished_loop():
    with pytest.raises(UserError, match="needs 8 batches .* has 5"):
        StepClock(list(range(5)), steps=5, accum_steps=1, warmup=3)
    clock = StepClock(list(range(10)), steps=2, warmup=1)
    next(iter(clock))
    with pytest.raises(RuntimeError, match="did not consume"):
        _ = clock.seconds_per_step


def test_flags_split_sizes_and_synthetic_batches(capsys):
    assert pop_estimate_flags(["--a=1", "--estimate", "7", "--estimate-synthetic"]) == (["--a=1"], 7, True)
    assert pop_estimate_flags(["--estimate=3"]) == ([], 3, False)
    with pytest.raises(UserError, match="needs --estimate N"):
        pop_estimate_flags(["--estimate-synthetic"])
    with pytest.raises(UserError, match="must be >= 1"):
        pop_estimate_flags(["--estimate=-2"])
    assert train_split_size("imagenet") == (1_281_167, 1000)
    assert train_split_size("fmnist", classes=[0, 2, 4], limit_per_class=100) == (300, 3)
    with pytest.raises(UserError, match="classes differ in size"):
        train_split_size("imagenet", classes=[1, 2])
    with pytest.raises(UserError, match="name the data"):
        train_split_size("cars")
    batches = SyntheticBatches(3, 4, 10, (8, 8))
    images, labels = next(iter(batches))
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 8, 8) and labels.max() < 10 and len(batches) == 3
    batches.output_size = (16, 16)  # progressive resizing, as FFCV's decoder
    assert next(iter(batches))[0].shape == (4, 3, 16, 16)
    print_estimate({"estimate": True, "b": 1})
    assert json.loads(capsys.readouterr().out) == {"b": 1, "estimate": True}
