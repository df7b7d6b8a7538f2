"""maxsup.training: guards, resume checks, logs, preemption, seed sweeps, fault injection and the durability of
checkpoint writes (fast, in process)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from maxsup.errors import UserError
from maxsup.training import (
    PREEMPT_ENV,
    NonFiniteError,
    Preemption,
    append_log,
    atomic_save,
    atomic_write,
    check_finite_model,
    check_resume,
    faults,
    load_checkpoint,
    read_log,
    repair_log,
    rng_state,
    run_seeds,
    set_rng_state,
    skip_done_batches,
    step_guard,
)


def test_step_guard_names_epoch_step_and_remedies():
    assert step_guard(torch.tensor(2.5), 0, 0) is False
    assert step_guard(torch.tensor(2.5), 0, 0, stop_requested=True) is True
    with pytest.raises(NonFiniteError) as exc:
        step_guard(torch.tensor(float("nan")), 3, 17, lr_flag="--lr.lr", clip_flag="--training.clip_grad_norm")
    msg = str(exc.value)
    assert "the loss is nan at epoch 3, step 17" in msg and "--lr.lr" in msg
    assert "--training.clip_grad_norm" in msg and "last good checkpoint is unchanged" in msg
    assert isinstance(exc.value, UserError)  # run_cli prints it as one error line


def test_finite_model_check_sees_parameters_and_buffers():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    check_finite_model(model, 0, 5)
    model[1].running_var[0] = float("inf")  # a buffer only: the loss could still look finite
    with pytest.raises(NonFiniteError, match="weights are not finite at epoch 1, step 9"):
        check_finite_model(model, 1, 9)


def test_resume_check_names_trainer_and_each_difference(tmp_path):
    ckpt = {"trainer": "Deit/main.py", "model": {}, "optimizer": {}, "epoch": 0}
    with pytest.raises(UserError, match=r"was written by Deit/main.py, not by Conv/ffcv/main.py.*--finetune"):
        check_resume(ckpt, "c.pth", "Conv/ffcv/main.py", {}, {}, [])
    saved = {"loss": "maxsup", "epochs": 4, "alpha_end": 0.2, "model_kwargs": ["width=8"], "lr": 0.1}
    current = {"loss": "ce", "epochs": 6, "alpha_end": 0.2, "model_kwargs": ("width=8",), "lr": 0.5}
    with pytest.raises(UserError) as exc:
        check_resume(ckpt, "c.pth", "Deit/main.py", saved, current, ["loss", "epochs", "alpha_end", "model_kwargs"])
    msg = str(exc.value)
    assert '--loss maxsup → ce' in msg and "--epochs 4 → 6" in msg
    assert "alpha" not in msg and "model-kwargs" not in msg and "--lr" not in msg  # equal (list == tuple) or free
    check_resume(ckpt, "c.pth", "Deit/main.py", saved, {**saved, "lr": 0.5}, list(saved)[:4])  # same run: fine
    # checkpoints written before the trainer entry existed: the trainer recognises its own args
    old = {"model": {}, "optimizer": {}, "epoch": 0, "args": {"data_set": "IMNET"}}
    check_resume(old, "c.pth", "deit", {}, {}, [], recognise=lambda a: "data_set" in a)
    with pytest.raises(UserError, match="c.pth was not written by any trainer of this repository, not by ffcv.*"
                                        "--training.finetune"):
        check_resume(old, "c.pth", "ffcv", {}, {}, [], recognise=lambda a: "train" in a,
                     new_run_hint="--training.finetune")
    with pytest.raises(UserError, match=r"not a complete deit training checkpoint \(missing optimizer, epoch\)"):
        check_resume({"trainer": "deit", "model": {}}, "x.pth", "deit", {}, {}, [])


def test_log_truncation_drops_later_epochs_and_a_torn_line(tmp_path):
    log = tmp_path / "log.txt"
    for epoch in range(4):
        append_log(log, {"epoch": epoch, "loss": 1.0 / (epoch + 1)})
    with open(log, "a") as f:
        f.write('{"epoch": 4, "lo')  # a kill during the append
    assert [r["epoch"] for r in read_log(log)] == [0, 1, 2, 3]
    kept = repair_log(log, 1)
    assert [r["epoch"] for r in kept] == [0, 1] and log.read_text().count("\n") == 2
    # the checkpoint's own record of its epoch replaces the log's (or restores one a kill lost before the append)
    assert repair_log(log, 1, {"epoch": 1, "loss": 0.25}) == [{"epoch": 0, "loss": 1.0}, {"epoch": 1, "loss": 0.25}]
    assert read_log(log)[-1] == {"epoch": 1, "loss": 0.25}
    assert repair_log(log, -1) == [] and log.read_text() == ""  # a fresh start (after --overwrite)
    assert repair_log(tmp_path / "none.txt", -1) == [] and not (tmp_path / "none.txt").exists()
    log.write_text('{"epoch": 0}\nnot json\n{"epoch": 1}\n')  # damage in the middle is not a kill: say where
    with pytest.raises(UserError, match=r"log.txt:2 is not a JSON record"):
        read_log(log)


def test_atomic_writes_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_save({"a": torch.ones(2)}, tmp_path / "c.pth")
        atomic_write(tmp_path / "args.json", "{}\n")
        os.umask(0o077)
        atomic_write(tmp_path / "private.json", "{}\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "c.pth").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "args.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["args.json", "c.pth", "private.json"]


class _OnAnotherDevice:
    """Stands in for an RNG tensor loaded onto a GPU: only ``.cpu()`` gives something torch/numpy accept."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor, self.moved = tensor, False

    def cpu(self) -> torch.Tensor:
        self.moved = True
        return self.tensor


def test_rng_restore_moves_every_tensor_to_the_cpu():
    state = rng_state()
    expected = (torch.rand(3), np.random.rand(3))
    wrapped = dict(state, torch=_OnAnotherDevice(state["torch"]))
    wrapped["numpy"] = [*state["numpy"][:1], _OnAnotherDevice(state["numpy"][1]), *state["numpy"][2:]]
    set_rng_state(wrapped)
    assert wrapped["torch"].moved and wrapped["numpy"][1].moved
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])


def test_checkpoints_load_on_the_cpu(tmp_path, monkeypatch):
    atomic_save({"w": torch.ones(1)}, tmp_path / "c.pth")
    seen = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: seen.append(kw.get("map_location")) or real(*a, **kw))
    load_checkpoint(tmp_path / "c.pth")
    assert seen == ["cpu"]


def test_kill_inside_a_checkpoint_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "checkpoint.pth"
    atomic_save({"epoch": 0}, path)
    before = path.read_bytes()
    code = ("import torch; from maxsup.training import atomic_save; "
            f"atomic_save({{'epoch': 1}}, {str(path)!r}); atomic_save({{'epoch': 2}}, {str(path)!r})")
    env = {**os.environ, faults.KILL_ENV: "save:2"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert load_checkpoint(path)["epoch"] == 1  # the first write landed, the second died before os.replace
    assert path.read_bytes() != before


def test_preemption_signal_sets_the_flag_and_restores_the_handler():
    previous = signal.getsignal(signal.SIGUSR1)
    with Preemption() as p:
        assert not p.requested
        os.kill(os.getpid(), signal.SIGUSR1)
        assert p.requested
    assert signal.getsignal(signal.SIGUSR1) == previous


def test_fault_hook_counts_steps(monkeypatch):
    faults.reset()
    monkeypatch.setenv(faults.KILL_ENV, "step:3:USR1")
    with Preemption() as p:
        faults.kill_point("step")
        faults.kill_point("save")
        faults.kill_point("step")
        assert not p.requested
        faults.kill_point("step")
        assert p.requested
    faults.reset()


def test_extra_preemption_signal_from_the_environment(monkeypatch):
    """maxsup.training.launch adds submitit's SIGUSR2 this way: it then sets the flag instead of submitit's handler
    running."""
    sentinel = []
    previous = signal.signal(signal.SIGUSR2, lambda *a: sentinel.append("outer"))
    try:
        monkeypatch.setenv(PREEMPT_ENV, "USR2")
        with Preemption() as p:
            os.kill(os.getpid(), signal.SIGUSR2)
            assert p.requested and p.signal == signal.SIGUSR2 and not sentinel
        os.kill(os.getpid(), signal.SIGUSR2)  # the outer handler is back
        assert sentinel == ["outer"]
        monkeypatch.setenv(PREEMPT_ENV, "USR9")
        with pytest.raises(UserError, match="no signal named USR9"):
            Preemption()
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_preempted_epoch_skips_the_batches_already_trained_on_and_restores_their_rng():
    torch.manual_seed(0)
    partial = {"step": 3, "rng": rng_state()}
    expected = torch.rand(2)
    torch.manual_seed(123)  # whatever ran in between
    batches, first = skip_done_batches(range(10), partial)
    assert first == 3 and list(batches) == list(range(3, 10))
    assert torch.equal(torch.rand(2), expected)
    batches, first = skip_done_batches([7, 8], None)
    assert first == 0 and list(batches) == [7, 8]


def test_preemption_after_an_epoch_stops_the_sweep_and_says_how_to_resume(capsys):
    def run(seed: int) -> int:
        with Preemption() as p:
            p.requested = seed == 3  # the signal arrives during seed 3
            assert p.stop_after_epoch(0, 2) is (seed == 3)
        return seed

    assert run_seeds([1, 3, 5], run, "out", "--training.resume=auto") == {"seed1": 1, "seed3": 3}
    err = capsys.readouterr().err
    assert "seed sweep stopped during seed 3 (checkpoint in out/seed3); resume it with --training.resume=auto, then " \
           "run the remaining seeds with --seeds 5" in err
    with Preemption() as p:  # a signal after the last epoch: the run is complete, not preempted
        p.requested = True
        assert p.stop_after_epoch(1, 2) and not p.did_stop


@pytest.mark.parametrize("content", [b"", b"epoch: 3\nnot a checkpoint\n", b"\x80\x02}q\x00."[:3]])
def test_empty_text_or_cut_files_are_one_sentence_naming_the_checkpoint(content, tmp_path):
    path = tmp_path / "checkpoint.pth"
    path.write_bytes(content)
    # one sentence naming the file: empty (0 bytes), text (not a checkpoint at all) or a cut pickle (unreadable)
    named = rf"^(checkpoint )?{path} (is empty|is not a torch checkpoint|is not a readable torch checkpoint)"
    with pytest.raises(UserError, match=named):
        load_checkpoint(path)
