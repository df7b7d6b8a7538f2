"""One run per output folder (Deit and common_resnet on tiny Fashion-MNIST runs; FFCV in test_ffcv.py): a second
fresh run is refused, a concurrent process is refused naming the holder, a lock left by kill -9 does not block, and a
refused command or an evaluation leaves the run's files as they were."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flat_import import load_flat
from helpers import cli_error

from maxsup.cli import run_cli
from maxsup.training import FolderInUse, RunFolderLock, claim_run_folder
from maxsup.training import runfolder as runfolder_module

ROOT = Path(__file__).resolve().parents[1]
DEIT = load_flat(ROOT / "Deit", "main", ("engine", "datasets", "samplers"))
COMMON = load_flat(ROOT / "Conv" / "common_resnet", "train", ("presets", "utils", "sampler"))

DEIT_TINY = ["--data-set", "FMNIST", "--classes", "0,1", "--limit-per-class", "8", "--model", "vit_tiny_patch16_224",
             "--input-size", "28", "--model-kwargs", '{"patch_size": 7, "embed_dim": 16, "depth": 1, "num_heads": 2}',
             "--mixup", "0", "--cutmix", "0", "--aa", "none", "--reprob", "0", "--color-jitter", "0",
             "--eval-crop-ratio", "1.0", "--warmup-epochs", "0", "--num_workers", "0", "--print-freq", "0",
             "--device", "cpu", "--batch-size", "8", "--no-model-ema", "--loss", "maxsup"]
COMMON_TINY = ["--dataset", "fmnist", "--classes", "0,1", "--limit-per-class", "8", "--model", "cifar_resnet10",
               "--model-kwargs", "width=4", "--print-freq", "1000", "-b", "8", "-j", "0", "--loss", "maxsup",
               "--device", "cpu"]
#: trainer → (module, tiny argv, output flag, evaluation argv given a checkpoint, script)
TRAINERS = {
    "deit": (DEIT, DEIT_TINY, "--output_dir", lambda ckpt: ["--eval", "--resume", ckpt], ROOT / "Deit" / "main.py"),
    "common_resnet": (COMMON, COMMON_TINY, "--output-dir", lambda ckpt: ["--test-only", "--resume", ckpt],
                      ROOT / "Conv" / "common_resnet" / "train.py"),
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _no_launcher_env(monkeypatch):
    for var in ("SEEDS", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)


def _train(name: str, out: Path, *extra: str):
    module, tiny, flag, _, _ = TRAINERS[name]
    return run_cli(module.cli, [*tiny, "--epochs", "1", flag, str(out), *extra])


def _error_line(name: str, argv: list[str], capsys) -> str:
    return cli_error(capsys, TRAINERS[name][0].cli, argv, clear=True)


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of a run folder but the lock file, with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != "run.lock"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One finished 1-epoch run of each trainer."""
    out = {}
    for name in TRAINERS:
        folder = tmp_path_factory.mktemp(name) / "run"
        _train(name, folder)
        out[name] = folder
    return out


def _copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        if p.is_file() and p.name != "run.lock":
            (dst / p.name).write_bytes(p.read_bytes())
    return dst


@pytest.mark.parametrize("name", list(TRAINERS))
def test_second_fresh_run_is_refused_and_overwrite_starts_over(name, runs, tmp_path, capsys):
    out = _copy_run(runs[name], tmp_path / "run")
    before = _snapshot(out)
    module, tiny, flag, _, _ = TRAINERS[name]
    msg = _error_line(name, [*tiny, "--epochs", "1", flag, str(out)], capsys)
    assert f"{out} already holds a run" in msg and "--resume" in msg and "--overwrite" in msg, msg
    assert _snapshot(out) == before  # nothing rewritten, the checkpoint of the first run is intact
    _train(name, out, "--overwrite")
    log = [line for line in (out / "log.txt").read_text().splitlines() if line.strip()]
    assert len(log) == 1 and '"epoch": 0' in log[0]  # the new run's epoch only, not 0, 0


def _start_holder(name: str, out: Path) -> subprocess.Popen:
    """A real second trainer process on ``out`` (long enough to still run while the test needs it)."""
    _, tiny, flag, _, script = TRAINERS[name]
    proc = subprocess.Popen([sys.executable, str(script), *tiny, "--epochs", "10000", flag, str(out)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (out / "run.json").exists():  # written once the run has claimed the folder and checked its inputs
        if proc.poll() is not None:
            pytest.fail(f"the holder exited early: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the holder did not start within 240 s")
        time.sleep(0.2)
    return proc


@pytest.mark.parametrize("name", list(TRAINERS))
def test_concurrent_run_on_the_same_folder_is_refused_naming_pid_and_host(name, tmp_path, capsys):
    out = tmp_path / "run"
    proc = _start_holder(name, out)
    try:
        _, tiny, flag, _, _ = TRAINERS[name]
        msg = _error_line(name, [*tiny, "--epochs", "1", flag, str(out), "--overwrite"], capsys)
        assert f"{out} is in use by another run (PID {proc.pid} on {socket.gethostname()})" in msg, msg
        assert proc.poll() is None  # the holder runs on, untouched
    finally:
        proc.kill()
        proc.wait()


def test_lock_of_a_killed_run_does_not_block(tmp_path):
    out = tmp_path / "run"
    proc = _start_holder("deit", out)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / "run.lock").read_text().split()[0] == str(proc.pid)  # left behind, but no longer locked
    _train("deit", out, "--overwrite")
    assert (out / "checkpoint.pth").is_file()


@pytest.mark.parametrize("name", list(TRAINERS))
def test_refused_resume_leaves_the_run_untouched(name, runs, tmp_path, capsys):
    out = _copy_run(runs[name], tmp_path / "run")
    before = _snapshot(out)
    _, tiny, flag, _, _ = TRAINERS[name]
    msg = _error_line(name, [*tiny, "--epochs", "3", flag, str(out), "--resume", str(out / "checkpoint.pth")],
                      capsys)
    assert "cannot resume" in msg and "--epochs 1 → 3" in msg, msg
    assert _snapshot(out) == before  # args.json and run.json still describe the finished run


@pytest.mark.parametrize("name", list(TRAINERS))
def test_evaluation_writes_nothing_into_the_run_folder(name, runs, tmp_path, capsys):
    out = _copy_run(runs[name], tmp_path / "run")
    before = _snapshot(out)
    _, tiny, flag, evaluate, _ = TRAINERS[name]
    stats = run_cli(TRAINERS[name][0].cli, [*tiny, flag, str(out), *evaluate(str(out / "checkpoint.pth"))])
    assert 0.0 <= stats["acc1"] <= 100.0
    assert _snapshot(out) == before and sorted(p.name for p in out.iterdir()) == sorted(before)


# ---------------------------------------------------------------------------------------------- the lock itself
def test_lock_records_holder_and_refuses_a_second_holder(tmp_path):
    with RunFolderLock(tmp_path / "run") as lock:
        assert lock.path.read_text() == f"{os.getpid()} {socket.gethostname()}\n"
        with pytest.raises(FolderInUse, match=rf"in use by another run \(PID {os.getpid()} on "):
            RunFolderLock(tmp_path / "run").acquire()  # a second open file: flock refuses it like another process
    RunFolderLock(tmp_path / "run").acquire().release()  # released: free again


def test_fallback_without_flock_treats_a_dead_local_holder_as_stale(tmp_path, monkeypatch):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(runfolder_module.fcntl, "flock", no_flock)
    folder = tmp_path / "run"
    folder.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (folder / "run.lock").write_text(f"{dead.stdout.strip()} {socket.gethostname()}\n")  # a kill -9 left it
    with RunFolderLock(folder) as lock:
        assert lock.path.read_text().split()[0] == str(os.getpid())
        with pytest.raises(FolderInUse, match="delete .*run.lock"):
            RunFolderLock(folder).acquire()  # a live holder on this host
    assert not (folder / "run.lock").exists()  # the fallback's lock file goes with its run
    (folder / "run.lock").write_text("1 some-other-host\n")  # cannot be checked from here: refused, with the remedy
    with pytest.raises(FolderInUse, match=r"PID 1 on some-other-host.*delete"):
        RunFolderLock(folder).acquire()


def test_only_the_first_process_claims_and_evaluations_claim_nothing(tmp_path, monkeypatch):
    (tmp_path / "run.json").write_text("{}")
    kw = dict(resume_from=None, resume_hint="--resume", overwrite_hint="--overwrite")
    monkeypatch.setenv("RANK", "1")
    with claim_run_folder(tmp_path, ["run.json"], overwrite=False, **kw):
        assert not (tmp_path / "run.lock").exists()
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(Exception, match="already holds a run"):
        with claim_run_folder(tmp_path, ["run.json"], overwrite=False, **kw):
            pass
    assert not (tmp_path / "run.lock").exists()  # refused before taking the lock
    with claim_run_folder(tmp_path, ["run.json"], overwrite=False, **{**kw, "resume_from": tmp_path / "c.pth"}):
        assert (tmp_path / "run.lock").read_text().startswith(str(os.getpid()))


# ------------------------------------------------------------------------- launchers without torchrun's agent
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _refused_command(name: str, out: Path) -> tuple[list[str], str]:
    """A fresh 1-epoch run of trainer ``name`` into ``out``, and how that trainer says to resume or overwrite."""
    if name == "ffcv":  # refused before its .beton files are opened: these need not exist
        missing = out.parent / "missing.beton"
        return ([str(ROOT / "Conv" / "ffcv" / "main.py"), f"--data.train_dataset={missing}",
                 f"--data.val_dataset={missing}", f"--logging.folder={out}", "--training.device=cpu",
                 "--training.epochs=1"],
                "continue it with --training.resume=auto, start a new output folder, or pass --training.overwrite=true")
    _, tiny, flag, _, script = TRAINERS[name]
    return ([str(script), *tiny, "--epochs", "1", flag, str(out)],
            f"continue it with --resume {out / 'checkpoint.pth'}, start a new output folder, or pass --overwrite")


@pytest.mark.parametrize("name", [*TRAINERS, pytest.param("ffcv", marks=pytest.mark.ffcv)])
def test_refusal_on_rank_0_ends_every_rank_under_srun_or_submitit(name, tmp_path):
    """srun / submitit start every rank as its own task with torchrun's variables set and no agent to stop the others
    when rank 0 refuses: rank 1 must not wait in the rendezvous until the 30-minute gloo/NCCL timeout, but exit with
    rank 0's line."""
    if name == "ffcv":
        pytest.importorskip("ffcv")
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text('{"trainer": "an earlier run"}\n')
    before = _snapshot(out)
    argv, hint = _refused_command(name, out)
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, *argv],
                              env={**ENV, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        errs = [p.communicate(timeout=150)[1] for p in procs]  # minutes, not the rendezvous timeout
    except subprocess.TimeoutExpired:
        pytest.fail(f"a rank still waits after rank 0 refused {out}; poll: {[p.poll() for p in procs]}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    lines = [e.strip().splitlines() for e in errs]
    want = f"error: {out} already holds a run (run.json); {hint} to start it over"
    assert [p.returncode for p in procs] == [2, 2] and lines == [[want], [want]], lines
    assert _snapshot(out) == before and sorted(q.name for q in out.iterdir()) == ["run.json"]
