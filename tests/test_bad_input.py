"""Bad values, corrupt files and OS errors (issue 24, items 2-5): each is one ``error:`` line and a non-zero exit,
alike in the three trainers, the FFCV writer and the analysis scripts, and a failed write never costs the last good
checkpoint. Tiny generated images and models only."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flat_import import load_flat, load_flat_modules
from helpers import cli_error, load_ffcv_main
from PIL import Image

import maxsup.training.checkpoint as checkpoint_mod
from maxsup.cli import run_cli
from maxsup.data.zipcache import parse_map
from maxsup.errors import UserError
from maxsup.training import atomic_save, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}

resnet_train = load_flat(ROOT / "Conv" / "common_resnet", "train", ("presets", "utils", "sampler"))
deit_main = load_flat_modules(ROOT / "Deit", ("main", "engine", "datasets", "samplers"))["main"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _error_line(fn, argv, capsys) -> str:
    """Run ``fn`` through run_cli; assert one ``error:`` line on stderr and a non-zero exit; return the line."""
    return cli_error(capsys, fn, argv, clear=True)


def _image_folder(root: Path, per_class: int = 6, size: int = 16, classes: int = 2) -> Path:
    """``root/{train,val}/c<k>/<i>.png``: random RGB images, ``per_class`` per class and split."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for k in range(classes):
            folder = root / split / f"c{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def _jpeg_with_garbage_inside(path: Path) -> None:
    """A JPEG that starts with SOI and ends with EOI (so a head/tail check passes) but does not decode."""
    path.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF" + os.urandom(64) + b"\xff\xd9")


RESNET_TINY = ["--model", "cifar_resnet10", "--model-kwargs", "width=4", "--print-freq", "1000", "--epochs", "1",
               "--train-crop-size", "16", "--val-crop-size", "16", "--lr", "0.01"]
DEIT_TINY = ["--model", "vit_tiny_patch16_224", "--input-size", "16",
             "--model-kwargs", '{"patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2}',
             "--batch-size", "4", "--mixup", "0", "--cutmix", "0", "--aa", "none", "--reprob", "0",
             "--color-jitter", "0", "--eval-crop-ratio", "1.0", "--warmup-epochs", "0", "--lr", "1e-3",
             "--unscale-lr", "--num_workers", "0", "--print-freq", "0", "--epochs", "1"]


# --------------------------------------------------------------------------------------------------------------------
# 4. checkpoint files that are empty, text or not a checkpoint; failed writes keep the last good one
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content, what", [(b"", "empty"), (b"epoch 3 top1 77.1\n", "not a torch checkpoint"),
                                           (b"\x89PNG\r\n\x1a\n" + bytes(40), "not a torch checkpoint"),
                                           (b"PK\x03\x04" + bytes(30), "not a readable torch checkpoint")])
def test_unreadable_checkpoint_is_a_user_error_naming_the_path(content, what, tmp_path):
    bad = tmp_path / "ckpt.pth"
    bad.write_bytes(content)
    with pytest.raises(UserError) as exc:
        load_checkpoint(bad)
    assert str(bad) in str(exc.value) and what in str(exc.value) and len(str(exc.value).splitlines()) == 1


@pytest.mark.parametrize("legacy", [False, True])
def test_real_checkpoints_pass_the_sniffing(legacy, tmp_path):
    """The up-front check must not refuse torch's zip format nor its pre-1.6 pickle format."""
    path = tmp_path / "ok.pth"
    torch.save({"model": {"w": torch.arange(3.0)}, "epoch": 2}, path, _use_new_zipfile_serialization=not legacy)
    assert load_checkpoint(path)["epoch"] == 2


@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_ckpts")
    (root / "empty.pth").write_bytes(b"")
    (root / "text.pth").write_text("hello, I am a text file\n")
    return {"empty": root / "empty.pth", "text": root / "text.pth"}


@pytest.mark.parametrize("kind", ["empty", "text"])
def test_common_resnet_resume_from_unreadable_checkpoint_is_one_line(kind, bad_checkpoints, tmp_path, capsys):
    msg = _error_line(resnet_train.cli, ["--dataset", "fmnist", "--classes", "0,1", "--limit-per-class", "4",
                                         *RESNET_TINY, "-j", "0", "--resume", str(bad_checkpoints[kind]),
                                         "--output-dir", str(tmp_path / "out")], capsys)
    assert str(bad_checkpoints[kind]) in msg


@pytest.mark.parametrize("kind", ["empty", "text"])
def test_deit_resume_from_unreadable_checkpoint_is_one_line(kind, bad_checkpoints, tmp_path, capsys):
    data = _image_folder(tmp_path / "data", per_class=4)
    msg = _error_line(deit_main.cli, ["--data-set", "FOLDER", "--data-path", str(data), *DEIT_TINY,
                                      "--resume", str(bad_checkpoints[kind]), "--output_dir", str(tmp_path / "o")],
                      capsys)
    assert str(bad_checkpoints[kind]) in msg


class _FullDisk(io.RawIOBase):
    """A writable file object whose disk is full: every ``write`` raises ENOSPC."""

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_during_checkpoint_write_is_one_line_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch,
                                                                                         capsys):
    path = tmp_path / "checkpoint.pth"
    good = {"model": {"w": torch.arange(4.0)}, "epoch": 3}
    atomic_save(good, path)
    real_open = open

    def full_open(file, mode="r", *args, **kwargs):  # the temporary checkpoint file lands on a full disk
        f = real_open(file, mode, *args, **kwargs)
        if "w" in mode:
            f.close()
            return _FullDisk()
        return f

    monkeypatch.setattr(checkpoint_mod, "open", full_open, raising=False)
    msg = _error_line(lambda: atomic_save({"model": {"w": torch.zeros(4)}, "epoch": 4}, path), None, capsys)
    assert str(path) in msg and "space" in msg, msg
    monkeypatch.undo()
    again = load_checkpoint(path)
    assert again["epoch"] == 3 and torch.equal(again["model"]["w"], good["model"]["w"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth"]  # no temporary file left


def test_torch_writer_failure_names_the_file_and_other_errors_stay_bugs(tmp_path):
    from maxsup.io_errors import write_failed

    path = tmp_path / "checkpoint.pth"
    torch_msg = ("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file data/3: file "
                 "write failed")
    err = write_failed(path, RuntimeError(torch_msg))
    assert isinstance(err, UserError) and str(path) in str(err) and "free space" in str(err)
    assert write_failed(path, RuntimeError("a bug in __reduce__")) is None  # re-raised as it is


@pytest.mark.parametrize("code, hint", [(errno.ENOSPC, "free space"), (errno.EROFS, "read-only"),
                                        (errno.EACCES, "permission"), (errno.ENOTDIR, "not a folder"),
                                        (errno.EEXIST, "not a folder")])
def test_os_errors_at_the_top_level_are_one_line_naming_the_path(code, hint, capsys):
    def fail():
        raise OSError(code, os.strerror(code), "/runs/exp1/checkpoint.pth")

    msg = _error_line(fail, None, capsys)
    assert "/runs/exp1/checkpoint.pth" in msg and hint in msg, msg


def test_output_dir_that_is_a_file_is_one_line_in_common_resnet(tmp_path, capsys):
    target = tmp_path / "out"
    target.write_text("not a folder")
    msg = _error_line(resnet_train.cli, ["--dataset", "fmnist", "--classes", "0,1", "--limit-per-class", "4",
                                         *RESNET_TINY, "-j", "0", "--output-dir", str(target)], capsys)
    assert str(target) in msg and "not a folder" in msg


def test_output_dir_that_is_a_file_is_one_line_in_deit(tmp_path, capsys):
    data = _image_folder(tmp_path / "data", per_class=4)
    target = tmp_path / "out"
    target.write_text("not a folder")
    msg = _error_line(deit_main.cli, ["--data-set", "FOLDER", "--data-path", str(data), *DEIT_TINY,
                                      "--output_dir", str(target / "sub")], capsys)
    assert str(target) in msg and "not a folder" in msg


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the errno mapping is tested above")
def test_read_only_output_dir_is_one_line(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    msg = _error_line(resnet_train.cli, ["--dataset", "fmnist", "--classes", "0,1", "--limit-per-class", "4",
                                         *RESNET_TINY, "-j", "0", "--output-dir", str(ro / "run")], capsys)
    assert str(ro) in msg and "permission" in msg


# --------------------------------------------------------------------------------------------------------------------
# 2. values checked at the start
# --------------------------------------------------------------------------------------------------------------------
def test_common_resnet_refuses_more_accumulation_steps_than_batches(tmp_path, capsys):
    """2 classes × 8 images, -b 4: 4 batches per epoch; --accum-steps 5 would train zero optimizer steps."""
    out = tmp_path / "out"
    msg = _error_line(resnet_train.cli, ["--dataset", "fmnist", "--classes", "0,1", "--limit-per-class", "8",
                                         *RESNET_TINY, "-b", "4", "-j", "0", "--accum-steps", "5",
                                         "--output-dir", str(out)], capsys)
    assert "4 batches per epoch" in msg and "--accum-steps 5" in msg and "--batch-size" in msg, msg
    assert not (out / "checkpoint.pth").exists()


def test_deit_accumulation_rule_is_the_shared_one(tmp_path, capsys):
    data = _image_folder(tmp_path / "data", per_class=4)  # 8 train images, -b 4: 2 batches per epoch
    msg = _error_line(deit_main.cli, ["--data-set", "FOLDER", "--data-path", str(data), *DEIT_TINY,
                                      "--accum-steps", "3", "--output_dir", str(tmp_path / "o")], capsys)
    assert "2 batches per epoch" in msg and "--accum-steps 3" in msg and "--batch-size" in msg, msg


@pytest.mark.parametrize("value", ["1.5", "-0.5", "1.0"])
def test_deit_smoothing_outside_0_1_is_refused(value, tmp_path, capsys):
    msg = _error_line(deit_main.cli, ["--data-set", "FOLDER", "--data-path", str(tmp_path), *DEIT_TINY, "--loss", "ce",
                                      "--smoothing", value, "--output_dir", str(tmp_path / "o")], capsys)
    assert "--smoothing must be in [0, 1)" in msg and value in msg


@pytest.mark.parametrize("loss,flags,text", [
    ("ls", ["--alpha-start", "1.0"], "alpha_start = 1.0 is a label-smoothing mass and must be < 1"),
    ("maxsup", ["--alpha-start", "-0.1"], "alpha_start = -0.1 must be >= 0"),
    ("lp", ["--loss-opt", "beta=-0.001"], "beta = -0.001 must be >= 0"),
    ("zipf", ["--loss-opt", "lam=1.5"], "lam = 1.5 is a label-smoothing mass"),
])
def test_loss_values_out_of_range_are_one_line_in_deit_and_common_resnet(loss, flags, text, tmp_path, capsys):
    """Every loss's α and weights are >= 0 and a smoothing mass is < 1, checked at the start in both trainers;
    MaxSup's α is a penalty weight, so above 1 is allowed."""
    msg = _error_line(deit_main.cli, ["--data-set", "FOLDER", "--data-path", str(tmp_path), *DEIT_TINY, "--loss",
                                      loss, *flags, "--output_dir", str(tmp_path / "d")], capsys)
    assert text in msg, msg
    msg = _error_line(resnet_train.cli, ["--dataset", "fmnist", "--classes", "0,1", *RESNET_TINY, "--loss", loss,
                                         *flags, "--output-dir", str(tmp_path / "r")], capsys)
    assert text in msg, msg
    assert not (tmp_path / "d").exists() and not (tmp_path / "r").exists()
    config = deit_main.get_args_parser().parse_args(["--loss", "maxsup", "--alpha-end", "1.5", *DEIT_TINY])
    deit_main.resolve_loss(config)
    assert config.loss_options["alpha_end"] == 1.5


def test_zip_map_with_duplicate_entries_is_refused(tmp_path):
    m = tmp_path / "val_map.txt"
    m.write_text("a.JPEG\t0\nb.JPEG\t1\na.JPEG\t0\n")
    with pytest.raises(UserError, match=r"val_map.txt:3: 'a.JPEG' is listed again \(first on line 1\)"):
        parse_map(m)


def test_non_utf8_zip_map_names_file_and_line(tmp_path):
    m = tmp_path / "train_map.txt"
    m.write_bytes(b"c0/a.JPEG\t0\nc0/\xe9t\xe9.JPEG\t0\n")  # Latin-1 é in a file name
    with pytest.raises(UserError, match=r"train_map.txt:2: not UTF-8"):
        parse_map(m)


# --------------------------------------------------------------------------------------------------------------------
# 3. corrupt images: one policy
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["zero-byte", "not-an-image", "garbage-inside"])
@pytest.mark.parametrize("workers", [0, 1])
def test_common_resnet_corrupt_image_is_one_line_naming_the_file(kind, workers, tmp_path, capsys):
    data = _image_folder(tmp_path / "data", per_class=4)
    bad = data / "train" / "c1" / "bad.jpg"
    if kind == "zero-byte":
        bad.write_bytes(b"")
    elif kind == "not-an-image":
        bad.write_text("this is a README, not a picture\n")
    else:
        _jpeg_with_garbage_inside(bad)
    msg = _error_line(resnet_train.cli, ["--dataset", "imagefolder", "--data-path", str(data), *RESNET_TINY, "-b", "4",
                                         "-j", str(workers), "--output-dir", str(tmp_path / "out")], capsys)
    assert str(bad) in msg and "--skip-corrupt" in msg, msg


def test_common_resnet_skip_corrupt_trains_on_the_rest(tmp_path, capsys):
    data = _image_folder(tmp_path / "data", per_class=4)
    (data / "train" / "c0" / "empty.png").write_bytes(b"")
    _jpeg_with_garbage_inside(data / "train" / "c1" / "bad.jpg")
    out = tmp_path / "out"
    run_cli(resnet_train.cli, ["--dataset", "imagefolder", "--data-path", str(data), *RESNET_TINY, "-b", "4", "-j",
                               "0", "--skip-corrupt", "--output-dir", str(out)])
    printed = capsys.readouterr().out
    assert "skipped 1 corrupt image" in printed  # empty.png: found by the upfront check
    assert "bad.jpg" in printed  # decodes badly mid-epoch: named, replaced by another image of the split
    assert load_checkpoint(out / "checkpoint.pth")["epoch"] == 0


def test_deit_corrupt_image_in_a_worker_keeps_the_file_name(tmp_path, capsys):
    data = _image_folder(tmp_path / "data", per_class=4)
    bad = data / "train" / "c0" / "bad.jpg"
    _jpeg_with_garbage_inside(bad)
    argv = ["--data-set", "FOLDER", "--data-path", str(data), *DEIT_TINY, "--output_dir", str(tmp_path / "o")]
    argv[argv.index("--num_workers") + 1] = "1"
    msg = _error_line(deit_main.cli, argv, capsys)
    assert str(bad) in msg and "--skip-corrupt" in msg, msg


WRITER = ROOT / "Conv" / "ffcv" / "write_imagenet.py"


@pytest.mark.ffcv
@pytest.mark.timeout(60)
def test_ffcv_writer_with_a_corrupt_image_ends_with_one_line_and_cleans_up(tmp_path):
    """Formerly: a worker traceback, then the writer hung forever with a temporary file and shared memory left."""
    pytest.importorskip("ffcv", reason="needs the ffcv extra (pip install -e '.[ffcv]')")
    data = _image_folder(tmp_path / "data", per_class=10)
    bad = data / "train" / "c1" / "broken.jpg"
    _jpeg_with_garbage_inside(bad)
    out = tmp_path / "betons"
    out.mkdir()
    proc = subprocess.run([sys.executable, str(WRITER), "--data-dir", str(data / "train"), "--write-path",
                           str(out / "train.beton"), "--num-workers", "2", "--chunk-size", "2",
                           "--max-resolution", "16"], capture_output=True, text=True, env=ENV, timeout=50)
    errors = [ln for ln in proc.stderr.replace("\r", "\n").splitlines() if ln.startswith("error: ")]
    assert proc.returncode != 0 and len(errors) == 1 and str(bad) in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and "leaked" not in proc.stderr, proc.stderr
    assert list(out.iterdir()) == []  # no temporary .beton, no sidecar


DYING_WORKER = """
import os, sys
from PIL import Image
from torch.utils.data import Dataset
from maxsup.cli import run_cli
sys.path.insert(0, {ffcv!r})
import write_imagenet

class Dying(Dataset):  # a writer process killed mid-write (out of memory, kill -9)
    def __len__(self):
        return 40
    def __getitem__(self, i):
        if i == 25:
            os._exit(9)
        return Image.new("RGB", (8, 8)), i % 2

run_cli(lambda: write_imagenet.write_beton(Dying(), {out!r}, num_workers=2, chunk_size=2))
"""


@pytest.mark.ffcv
@pytest.mark.timeout(60)
@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_ffcv_writer_whose_worker_dies_ends_with_one_line_and_cleans_up(tmp_path, sigint):
    """``ignored``: the writer started as a background job of a non-interactive shell (``nohup … &``), where SIGINT is
    ignored; the dead-worker watch must not rely on it (it hung there until killed)."""
    pytest.importorskip("ffcv", reason="needs the ffcv extra (pip install -e '.[ffcv]')")
    out = tmp_path / "betons"
    out.mkdir()
    code = DYING_WORKER.format(ffcv=str(WRITER.parent), out=str(out / "x.beton"))
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint == "ignored" else None
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=50,
                          preexec_fn=ignore)
    errors = [ln for ln in proc.stderr.replace("\r", "\n").splitlines() if ln.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1 and "writer process died (exit code 9" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and "leaked" not in proc.stderr, proc.stderr
    assert list(out.iterdir()) == []


# --------------------------------------------------------------------------------------------------------------------
# 2. FFCV: sidecar and accumulation
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_betons(tmp_path_factory) -> dict[str, Path]:
    """2 classes × 6 images per split; the train folder also holds an empty file, skipped by --skip-corrupt."""
    pytest.importorskip("ffcv", reason="needs the ffcv extra (pip install -e '.[ffcv]')")
    root = tmp_path_factory.mktemp("betons")
    data = _image_folder(root / "data", per_class=6)
    (data / "train" / "c0" / "empty.png").write_bytes(b"")
    writer = load_flat(WRITER.parent, WRITER.stem, ())
    for split in ("train", "val"):  # in process: a subprocess per split cost ~10 s; the writer tests above run the CLI
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            writer.main(["--data-dir", str(data / split), "--write-path", str(root / f"{split}.beton"),
                         "--num-workers", "1", "--max-resolution", "16", "--skip-corrupt"])
        (root / f"{split}.stdout").write_text(printed.getvalue())
    return {"train": root / "train.beton", "val": root / "val.beton"}


@pytest.mark.ffcv
def test_ffcv_writer_skip_corrupt_writes_the_rest(tiny_betons):
    from ffcv.reader import Reader

    assert "skipped 1 corrupt image" in (tiny_betons["train"].parent / "train.stdout").read_text()
    assert Reader(str(tiny_betons["train"])).num_samples == 12
    assert json.loads(Path(f"{tiny_betons['train']}.classes.json").read_text())["num_samples"] == 12


def _ffcv(betons: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["--config-file", str(ROOT / "Conv" / "ffcv" / "configs" / "fmnist_cpu.yaml"),
            f"--data.train_dataset={betons['train']}", f"--data.val_dataset={betons['val']}",
            "--model.num_classes=2", "--data.num_workers=1", f"--logging.folder={out}", *extra]


def _ffcv_main():
    return load_flat(ROOT / "Conv" / "ffcv", "main", ())


@pytest.mark.ffcv
@pytest.mark.parametrize("flags,text", [(["--loss.name=ls", "--loss.alpha_end=1.0"], "alpha_end = 1.0 is a label"),
                                        (["--loss.name=lp", "--loss.opts=[beta=-1]"], "beta = -1.0 must be >= 0")])
def test_ffcv_loss_values_out_of_range_are_one_line(flags, text, tiny_betons, tmp_path, capsys):
    msg = _error_line(_ffcv_main().main, _ffcv(tiny_betons, tmp_path / "o", *flags), capsys)
    assert text in msg, msg
    assert not (tmp_path / "o").exists()


@pytest.mark.ffcv
def test_ffcv_refuses_more_accumulation_steps_than_batches(tiny_betons, tmp_path, capsys):
    """12 train images, global batch 16 = 8 steps × 2: 6 batches of 2 per epoch, fewer than training.accum_steps 8."""
    msg = _error_line(_ffcv_main().main, _ffcv(tiny_betons, tmp_path / "o", "--training.batch_size=16",
                                               "--training.accum_steps=8"), capsys)
    assert "6 batches per epoch" in msg and "training.accum_steps 8" in msg and "training.batch_size" in msg, msg


@pytest.mark.ffcv
def test_ffcv_beton_without_sidecar_is_refused_unless_accepted(tiny_betons, tmp_path, capsys):
    lone = tmp_path / "train.beton"
    lone.write_bytes(tiny_betons["train"].read_bytes())
    betons = {**tiny_betons, "train": lone}
    msg = _error_line(_ffcv_main().main, _ffcv(betons, tmp_path / "o", "--training.batch_size=4"), capsys)
    assert f"{lone}.classes.json" in msg and "data.allow_missing_sidecar" in msg, msg
    ffcv_main = _ffcv_main()
    beton = ffcv_main.check_beton(str(lone), "train", 2, allow_missing_sidecar=True)
    assert beton.classes is None and beton.num_samples == 12
    assert "class order is not checked" in capsys.readouterr().out


@pytest.mark.ffcv
@pytest.mark.parametrize("kind", ["empty", "text"])
def test_ffcv_resume_from_unreadable_checkpoint_is_one_line(kind, tiny_betons, bad_checkpoints, tmp_path, capsys):
    msg = _error_line(_ffcv_main().main, _ffcv(tiny_betons, tmp_path / "o", "--training.batch_size=4",
                                               f"--training.resume={bad_checkpoints[kind]}"), capsys)
    assert str(bad_checkpoints[kind]) in msg


# --------------------------------------------------------------------------------------------------------------------
# 5. analysis refuses non-finite models
# --------------------------------------------------------------------------------------------------------------------
def _analysis_ckpt(path: Path, poison: str | None = None) -> Path:
    from maxsup.data.fashion_mnist import FMNIST_MEAN, FMNIST_STD
    from maxsup.data.transforms import transform_spec
    from maxsup.models import arch_spec, create_model

    torch.manual_seed(0)
    kw = {"width": 4, "in_chans": 1}
    model = create_model("cifar_resnet10", 3, **kw)
    state = model.state_dict()
    if poison == "nan":
        state["fc.weight"][0, 0] = float("nan")
    elif poison == "overflow":  # finite weights whose logits overflow float32
        state["fc.weight"].fill_(3e38)
    atomic_save({"model": state, "arch": arch_spec("cifar_resnet10", 3, **kw), "epoch": 0,
                 "eval_transform": transform_spec(28, 1.0, mean=(FMNIST_MEAN,), std=(FMNIST_STD,),
                                                  grayscale_to_rgb=False)}, path)
    return path


@pytest.mark.parametrize("script", ["calibration", "decomposition", "logits", "feature_metrics", "robustness"])
@pytest.mark.parametrize("poison, what", [("nan", "non-finite weights"), ("overflow", "non-finite")])
def test_analysis_refuses_a_non_finite_model(script, poison, what, tmp_path, capsys):
    import importlib

    module = importlib.import_module(f"analysis.{script}")
    ckpt = _analysis_ckpt(tmp_path / f"{poison}.pth", poison)
    extra = ["--corruptions", "contrast", "--severities", "1"] if script == "robustness" else []
    msg = _error_line(module.main, ["--checkpoint", f"X={ckpt}", "--dataset", "fmnist", "--classes", "0,1,2",
                                    "--max-per-class", "4", "--out", str(tmp_path / "res"), "--no-progress", *extra],
                      capsys)
    assert str(ckpt) in msg and what in msg, msg
    assert not list((tmp_path / "res").glob("*.json"))


def test_linear_transfer_refuses_a_single_class(tmp_path, capsys):
    from analysis import linear_transfer

    ckpt = _analysis_ckpt(tmp_path / "ok.pth")
    msg = _error_line(linear_transfer.main, ["--checkpoint", f"X={ckpt}", "--dataset", "fmnist", "--classes", "4",
                                             "--max-per-class", "10", "--out", str(tmp_path / "res"),
                                             "--no-progress", "--num-lambdas", "3"], capsys)
    assert "one class" in msg and "two" in msg, msg


# --------------------------------------------------------------------------------------------------------------------
# bad-input audit: the flags and files a new user gets wrong
# --------------------------------------------------------------------------------------------------------------------
def _token_labels_main():
    from flat_import import load_file

    return load_file(ROOT / "data" / "make_token_labels.py", "make_token_labels", register=True).main


@pytest.mark.parametrize("device, what", [("gpu", "is not a device"), ("cuda:99", "cuda")])
@pytest.mark.parametrize("command", ["analysis", "hub evaluate", "make_token_labels", "common_resnet"])
def test_unknown_or_absent_device_is_one_line_before_anything_is_written(command, device, what, tmp_path, capsys):
    """``--device gpu`` (not a torch device) and ``cuda:99`` (on no machine) were a RuntimeError traceback at the
    first ``.to(device)`` in the analysis scripts, ``hub evaluate`` and the token-label writer, and ``gpu`` also in
    the trainers."""
    from analysis import calibration
    from maxsup.hub.cli import main as hub_main

    ckpt = _analysis_ckpt(tmp_path / "ok.pth")
    data = _image_folder(tmp_path / "data", per_class=2)
    out = tmp_path / "out"
    fn, argv = {
        "analysis": (calibration.main, ["--checkpoint", f"X={ckpt}", "--classes", "0,1,2", "--max-per-class", "2",
                                        "--out", str(out), "--no-progress"]),
        "hub evaluate": (hub_main, ["evaluate", str(ckpt), "--data-path", str(data / "val"), "--workers", "0"]),
        "make_token_labels": (_token_labels_main(), ["--checkpoint", str(ckpt), "--data-path", str(data / "val"),
                                                     "--out", str(out), "--num-workers", "0"]),
        "common_resnet": (resnet_train.cli, ["--dataset", "fmnist", "--classes", "0,1", "--limit-per-class", "4",
                                             *RESNET_TINY, "-j", "0", "--output-dir", str(out)]),
    }[command]
    msg = _error_line(fn, [*argv, "--device", device], capsys)
    assert device in msg and what in msg, msg
    assert not out.exists()


@pytest.mark.parametrize("trainer, kwargs, what", [
    ("common_resnet", ["nope=1"], "unexpected keyword argument 'nope'"),
    ("common_resnet", ["width=abc"], "'width': 'abc'"),
    ("common_resnet", ["width=4,in_chans=1"], "'width': '4,in_chans=1'"),
    ("deit", ['{"patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2, "nope": 1}'], "'nope'"),
    ("deit", ['{"patch_size": 8, "embed_dim": 18, "depth": 1, "num_heads": 4}'], "'embed_dim': 18"),
    ("deit", ["patch_size=8", "embed_dim=16", "depth=1", "num_heads=2", "nope=1"], "'nope'")])
def test_model_kwargs_the_model_does_not_take_are_one_line(trainer, kwargs, what, tmp_path, capsys):
    """An unknown ``--model-kwargs`` key, a value of the wrong type, or one timm asserts against was a
    TypeError/AssertionError traceback from the model's constructor."""
    out = tmp_path / "out"
    if trainer == "common_resnet":
        argv = ["--dataset", "fmnist", "--classes", "0,1", "--limit-per-class", "4", *RESNET_TINY, "-j", "0",
                "--output-dir", str(out), "--model-kwargs", *kwargs]
        fn = resnet_train.cli
    else:
        data = _image_folder(tmp_path / "data", per_class=2)
        argv = ["--data-set", "FOLDER", "--data-path", str(data), *DEIT_TINY, "--model-kwargs", *kwargs,
                "--output_dir", str(out)]
        fn = deit_main.cli
    msg = _error_line(fn, argv, capsys)
    assert what in msg and "--model-kwargs" in msg, msg
    assert not list(out.rglob("*.pth"))


def _fmnist_prep_main():
    from flat_import import load_file

    return load_file(ROOT / "data" / "prepare_fashion_mnist.py", "prepare_fashion_mnist", register=True).main


@pytest.mark.parametrize("command, argv, what", [
    ("analysis.calibration", ["--max-per-class", "-1"], "argument --max-per-class: expects a whole number >= 1"),
    ("analysis.gradcam", ["--num-images", "-1"], "argument --num-images: expects a whole number >= 1, got -1"),
    ("analysis.logits", ["--max-points", "0"], "argument --max-points: expects a whole number >= 1, got 0"),
    ("analysis.calibration", ["--dataset", "mnist"], "argument --dataset: invalid choice: 'mnist'"),
    ("hub evaluate", ["--limit", "-1"], "argument --limit: expects a whole number >= 1, got -1"),
    ("hub evaluate", ["--dataset", "imagenet-c"], "argument --dataset: invalid choice: 'imagenet-c'"),
    ("prepare_fashion_mnist", ["--limit-per-class", "-1"], "argument --limit-per-class: expects a whole number"),
    ("common_resnet", ["--limit-per-class", "-1"], "argument --limit-per-class: expects a whole number >= 1, got -1"),
    ("deit", ["--limit-per-class", "-1"], "argument --limit-per-class: expects a whole number >= 1, got -1")])
def test_counts_below_one_and_bad_choices_are_one_line(command, argv, what, tmp_path, capsys):
    """A count of 0 or -1 (images, samples per class, points) ran before, on nothing (hub evaluate printed NaN
    metrics and exit status 0) or on every image but each class's last (a [:-1] slice); a bad choice printed the
    whole usage block of an analysis script or of the hub before its error line."""
    import importlib

    from maxsup.hub.cli import main as hub_main

    ckpt = _analysis_ckpt(tmp_path / "ok.pth")
    out = tmp_path / "out"
    analysis_args = ["--checkpoint", f"X={ckpt}", "--classes", "0,1,2", "--out", str(out), "--no-progress"]
    if command.startswith("analysis."):
        fn, base = importlib.import_module(command).main, analysis_args
    elif command == "hub evaluate":
        fn, base = hub_main, ["evaluate", str(ckpt), "--data-path", str(_image_folder(tmp_path / "data", 2) / "val")]
    elif command == "prepare_fashion_mnist":
        fn, base = _fmnist_prep_main(), ["--out", str(out), "--formats", "imagefolder", "--classes", "0"]
    elif command == "common_resnet":
        fn, base = resnet_train.cli, ["--dataset", "fmnist", "--classes", "0,1", *RESNET_TINY, "-j", "0",
                                      "--output-dir", str(out)]
    else:
        fn, base = deit_main.cli, ["--data-set", "FMNIST", "--classes", "0,1", *DEIT_TINY, "--output_dir", str(out)]
    msg = _error_line(fn, [*base, *argv], capsys)
    assert what in msg, msg
    assert not list(out.rglob("*.json")) and not list(out.rglob("*.png")) and not list(out.rglob("*.jpg"))


def _cut_short_jpeg(path: Path) -> None:
    """A real JPEG of which only the first 100 bytes arrived (an interrupted copy)."""
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(buf, format="JPEG")
    path.write_bytes(buf.getvalue()[:100])


@pytest.mark.parametrize("kind", ["cut-short", "garbage-inside"])
@pytest.mark.parametrize("command", ["analysis", "hub evaluate", "imagenet_downsampled write"])
def test_corrupt_image_is_named_with_advice_the_command_can_follow(command, kind, tmp_path, capsys):
    """``hub evaluate`` and ``imagenet_downsampled.py write`` said only 'error: Truncated File Read' (which file of
    50,000?); the analysis scripts named the file but advised --skip-corrupt, a flag they do not have."""
    from flat_import import load_file

    from analysis import calibration
    from maxsup.hub.cli import main as hub_main

    data = _image_folder(tmp_path / "data", per_class=2, classes=3)
    bad = data / "val" / "c0" / "0.png"
    bad.unlink()
    bad = bad.with_suffix(".jpg")
    (_cut_short_jpeg if kind == "cut-short" else _jpeg_with_garbage_inside)(bad)
    ckpt = _analysis_ckpt(tmp_path / "ok.pth")
    out = tmp_path / "out"
    if command == "analysis":
        fn, argv = calibration.main, ["--checkpoint", f"X={ckpt}", "--dataset", "imagefolder", "--data-path", str(data),
                                      "--out", str(out), "--no-progress"]
    elif command == "hub evaluate":
        fn, argv = hub_main, ["evaluate", str(ckpt), "--data-path", str(data / "val"), "--workers", "0"]
    else:
        script = load_file(ROOT / "data" / "imagenet_downsampled.py", "imagenet_downsampled", register=True)
        fn, argv = script.main, ["write", "--src", str(data / "val"), "--out", str(out), "--split", "val"]
    msg = _error_line(fn, argv, capsys)
    assert str(bad) in msg and "remove or replace it" in msg and "--skip-corrupt" not in msg, msg
    assert not list(out.rglob("*.json")) and not list(out.rglob("*_data*"))


def test_token_labels_refuse_a_teacher_that_cannot_read_the_images_before_writing(tmp_path, capsys):
    """A teacher of grey images, or a ViT asked for another --img-size than its own, was a RuntimeError /
    AssertionError traceback after meta.json had been written, so the corrected rerun was refused ('holds maps from
    another run'); a corrupt meta.json was a bare JSON error."""
    from maxsup.data.transforms import transform_spec
    from maxsup.models import arch_spec, create_model

    main = _token_labels_main()
    data = _image_folder(tmp_path / "data", per_class=2)
    out = tmp_path / "labels"
    flags = ["--data-path", str(data / "val"), "--out", str(out), "--num-workers", "0", "--device", "cpu",
             "--topk", "2"]
    grey = _analysis_ckpt(tmp_path / "grey.pth")
    msg = _error_line(main, ["--checkpoint", str(grey), *flags], capsys)
    assert str(grey) in msg and "RGB" in msg, msg
    kw = {"img_size": 16, "patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2}
    vit = tmp_path / "vit.pth"
    atomic_save({"model": create_model("vit_tiny_patch16_224", 3, **kw).state_dict(),
                 "arch": arch_spec("vit_tiny_patch16_224", 3, **kw), "eval_transform": transform_spec(16, 1.0)}, vit)
    msg = _error_line(main, ["--checkpoint", str(vit), *flags, "--img-size", "32"], capsys)
    assert "32×32" in msg and "leave out --img-size" in msg and "16 px" in msg, msg
    assert not out.exists()
    summary = main(["--checkpoint", str(vit), *flags])  # the corrected command runs: no stale meta.json
    assert summary["written"] == 4 and summary["img_size"] == 16 and summary["map_shape"] == (2, 2, 2, 2)
    (out / "meta.json").write_text('{"teacher": ')
    msg = _error_line(main, ["--checkpoint", str(vit), *flags], capsys)
    assert str(out / "meta.json") in msg and "not valid JSON" in msg, msg


@pytest.mark.parametrize("script, argv, what", [
    ("linear_transfer", ["--val-fraction", "0"], "--val-fraction) must lie strictly between 0 and 1, got 0"),
    ("linear_transfer", ["--val-fraction", "1.5"], "strictly between 0 and 1, got 1.5"),
    ("linear_transfer", ["--max-per-class", "2"], "(2 held out, 4 kept) cannot hold each of the 3 classes"),
    ("gradcam", ["--indices", "3,a"], "argument --indices: expects comma-separated integers"),
    ("gradcam", ["--panel-size", "0"], "argument --panel-size: expects a number > 0, got 0"),
    ("logits", ["--xlim", "4", "-4"], "--xlim LOW HIGH needs LOW < HIGH, got 4 -4")])
def test_analysis_values_out_of_range_are_one_line_naming_the_flag(script, argv, what, tmp_path, capsys):
    """Before: scikit-learn's 'test_size' message (a name the user never typed, also for a split too small to
    stratify), 'invalid literal for int()', matplotlib's 'Singular matrix' with warnings, numpy's 'bins must
    increase monotonically'."""
    import importlib

    ckpt = _analysis_ckpt(tmp_path / "ok.pth")
    out = tmp_path / "out"
    msg = _error_line(importlib.import_module(f"analysis.{script}").main,
                      ["--checkpoint", f"X={ckpt}", "--classes", "0,1,2", "--max-per-class", "10", "--out", str(out),
                       "--no-progress", "--num-lambdas", "2", *argv] if script == "linear_transfer" else
                      ["--checkpoint", f"X={ckpt}", "--classes", "0,1,2", "--max-per-class", "2", "--out", str(out),
                       "--no-progress", *argv], capsys)
    assert what in msg, msg
    assert not list(out.glob(f"{script}.*"))


@pytest.mark.parametrize("name, content", [("feature_metrics.json", "[1, 2]"), ("robustness.json", "[]")])
def test_collect_refuses_json_that_is_not_an_object(name, content, tmp_path, capsys):
    """A JSON array under an analysis output's name was an AttributeError traceback."""
    from analysis import collect

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / name).write_text(content)
    msg = _error_line(collect.main, [str(tmp_path / "in"), "--out", str(tmp_path / "out")], capsys)
    assert str(tmp_path / "in" / name) in msg and "holds a JSON list, not an object" in msg, msg
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kwargs, what", [
    (["patch_size"], "--model-kwargs expects key=value pairs like width=16, got 'patch_size'"),
    (["patch_size=8", "2=depth"], "--model-kwargs expects key=value pairs like width=16, got '2=depth'"),
    (['{"patch_size": 8'], "--model-kwargs is not valid JSON (Expecting ',' delimiter): '{\"patch_size\": 8'; or "
                           "pass KEY=VALUE pairs such as patch_size=4 depth=2"),
    (['{"patch_size": 8}', "depth=1"], "--model-kwargs takes KEY=VALUE pairs (patch_size=4 depth=2) or one JSON "
                                       "object, not both: '{\"patch_size\": 8} depth=1'"),
    (["[8, 16]"], "--model-kwargs expects key=value pairs like width=16, got '[8, 16]'")])
def test_deit_malformed_model_kwargs_are_one_line_before_anything_is_written(kwargs, what, tmp_path, capsys):
    """Deit's --model-kwargs takes KEY=VALUE pairs (timm's form, maxsup.models.parse_model_kwargs) or one JSON
    object; a malformed value of either form is one line, also under --print-config, with no run folder."""
    data = _image_folder(tmp_path / "data", per_class=2)
    out = tmp_path / "out"
    argv = ["--data-set", "FOLDER", "--data-path", str(data), *DEIT_TINY, "--model-kwargs", *kwargs,
            "--output_dir", str(out)]
    assert _error_line(deit_main.cli, argv, capsys) == f"error: {what}"
    assert _error_line(deit_main.cli, [*argv, "--print-config"], capsys) == f"error: {what}"
    assert not out.exists()


def test_deit_model_kwargs_img_size_other_than_input_size_is_one_line(tmp_path, capsys):
    """``--model-kwargs '{"img_size": 32, ...}'`` with ``--input-size 16`` was timm's AssertionError traceback at
    the first training step, after the run folder had been claimed."""
    data = _image_folder(tmp_path / "data", per_class=2)
    kwargs = '{"img_size": 32, "patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2}'
    msg = _error_line(deit_main.cli, ["--data-set", "FOLDER", "--data-path", str(data), *DEIT_TINY,
                                      "--model-kwargs", kwargs, "--output_dir", str(tmp_path / "out")], capsys)
    assert "img_size=32" in msg and "--input-size 16" in msg, msg
    assert not list((tmp_path / "out").rglob("*.pth"))


@pytest.mark.parametrize("script", ["calibration", "gradcam"])
def test_a_grey_model_reads_an_rgb_image_folder(script, tmp_path):
    """A model of grey images (``in_chans=1``: one-channel normalisation, no ``grayscale_to_rgb``) on an ImageFolder
    (read as RGB) was a RuntimeError traceback ('expected input to have 1 channels, but got 3') in every analysis
    script; its eval transform now makes the images grey, as the model was trained."""
    import importlib

    from maxsup.data.transforms import eval_transform

    ckpt = _analysis_ckpt(tmp_path / "grey.pth")
    spec = load_checkpoint(ckpt)["eval_transform"]
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28, 3), dtype=np.uint8))
    x = eval_transform(spec)(rgb)
    assert x.shape == (1, 28, 28) and torch.equal(x, eval_transform(spec)(rgb.convert("L")))
    data = _image_folder(tmp_path / "data", per_class=2, size=28, classes=3)
    importlib.import_module(f"analysis.{script}").main(
        ["--checkpoint", f"X={ckpt}", "--dataset", "imagefolder", "--data-path", str(data), "--out",
         str(tmp_path / "out"), "--no-progress", *(["--num-images", "2"] if script == "gradcam" else [])])
    assert (tmp_path / "out" / f"{script}.json").is_file()


@pytest.mark.parametrize("damage", ["cut-short", "not-a-cache"])
def test_a_damaged_feature_cache_is_extracted_again(damage, tmp_path, capsys):
    """A cache file cut short (a partial copy, a full disk) was torch's 'PytorchStreamReader failed' traceback on
    every later run until the user found and deleted it; it is disposable, so it is replaced."""
    from analysis import extract

    ckpt = _analysis_ckpt(tmp_path / "ok.pth")
    argv = ["--checkpoint", f"X={ckpt}", "--classes", "0,1,2", "--max-per-class", "3", "--out", str(tmp_path / "o"),
            "--no-progress"]
    extract.main(argv)
    (cache,) = (tmp_path / "o" / "features").glob("*.pt")
    good = torch.load(cache, weights_only=True)
    if damage == "cut-short":
        cache.write_bytes(cache.read_bytes()[:200])
    else:
        torch.save([1, 2, 3], cache)
    capsys.readouterr()
    extract.main(argv)
    assert f"warning: feature cache {cache}" in capsys.readouterr().out
    again = torch.load(cache, weights_only=True)
    assert all(torch.equal(good[k], again[k]) for k in ("features", "logits", "labels"))


@pytest.mark.parametrize("command", ["analysis", "common_resnet --resume", "common_resnet --test-only"])
def test_a_run_folder_given_for_its_checkpoint_names_the_file_inside(command, tmp_path, capsys):
    """``--checkpoint X=runs/ce`` / ``--resume runs/ce`` (the folder, not its checkpoint.pth) said 'checkpoint not
    found: runs/ce', although the folder is right there."""
    from analysis import calibration

    run = tmp_path / "runs" / "ce"
    run.mkdir(parents=True)
    _analysis_ckpt(run / "checkpoint.pth")
    if command == "analysis":
        fn, argv = calibration.main, ["--checkpoint", f"X={run}", "--out", str(tmp_path / "out")]
    else:
        fn, argv = resnet_train.cli, ["--dataset", "fmnist", "--classes", "0,1,2", "--limit-per-class", "4",
                                      *RESNET_TINY, "-j", "0", "--resume", str(run),
                                      *(["--test-only"] if "test-only" in command else []),
                                      "--output-dir", str(tmp_path / "out")]
    msg = _error_line(fn, argv, capsys)
    assert msg == f"error: {run} is a folder, not a checkpoint file; pass {run / 'checkpoint.pth'}", msg


@pytest.mark.parametrize("flag", [["--accum-iter", "2"], ["--model-ema-decay"], ["--sched", "cosine", "--epochs", "x"]])
def test_deit_bad_flag_is_one_line_not_the_usage_block(flag, tmp_path, capsys):
    """A mistyped flag (DeiT's flags are --accum-steps, --model-ema-decay takes a value) printed DeiT's 80-line
    usage block before its error line."""
    msg = _error_line(deit_main.cli, ["--data-set", "FMNIST", *DEIT_TINY, *flag], capsys)
    assert msg.endswith("(see --help)") and (flag[0] in msg or "'x'" in msg), msg


@pytest.mark.parametrize("command", ["hub convert", "atomic_save"])
def test_a_folder_where_the_output_file_goes_is_named_alone_before_the_write(command, tmp_path, capsys):
    """``convert in.pth out/`` wrote the whole converted file, then failed at the rename with a line that named
    the temporary file first ('.out.x1y2.tmp -> out: Is a directory')."""
    from maxsup.hub.cli import main as hub_main
    from maxsup.models import create_model

    out = tmp_path / "out"
    out.mkdir()
    src = tmp_path / "resnet18.pth"
    torch.save(create_model("resnet18", 10).state_dict(), src)
    if command == "hub convert":
        fn, argv = hub_main, ["convert", str(src), str(out), "--arch", "resnet18", "--offline"]
    else:
        fn, argv = (lambda: atomic_save({"w": torch.zeros(2)}, out)), None
    msg = _error_line(fn, argv, capsys)
    assert msg == f"error: {out}: Is a directory (this path is a folder where a file is expected; pass a file)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "resnet18.pth"] and not list(out.iterdir())


@pytest.mark.parametrize("flag, value", [("--train-crop-size", "-5"), ("--train-crop-size", "0"),
                                         ("--val-crop-size", "0"), ("--val-resize-size", "-1")])
def test_common_resnet_image_sizes_below_one_are_one_line(flag, value, tmp_path, capsys):
    """A negative size was torchvision's RuntimeError traceback at the first image; 0 silently meant the default."""
    data = _image_folder(tmp_path / "data", per_class=2)
    msg = _error_line(resnet_train.cli, ["--dataset", "imagefolder", "--data-path", str(data), *RESNET_TINY, "-j",
                                         "0", flag, value, "--output-dir", str(tmp_path / "out")], capsys)
    assert msg == f"error: argument {flag}: expects a whole number >= 1, got {value} (see --help)", msg


@pytest.mark.parametrize("script, argv, line", [
    ("Conv/ffcv/write_imagenet.py", ["--write-path", "x.beton", "--no-such-flag"],
     "unrecognized arguments: --no-such-flag"),
    ("Conv/ffcv/run_with_submitit.py", ["--nodes", "two"], "argument --nodes: invalid int value: 'two'"),
    ("Deit/run_with_submitit.py", ["--nodes", "two"], "argument --nodes: invalid int value: 'two'"),
    ("Conv/common_resnet/run_with_submitit.py", ["--nodes", "two"], "argument --nodes: invalid int value: 'two'")])
def test_writer_and_slurm_launchers_report_a_bad_flag_in_one_line(script, argv, line, tmp_path):
    """The FFCV writer and both submitit launchers printed argparse's usage block before the error line; they now
    parse with maxsup.cli.ArgumentParser like the trainers."""
    if "ffcv" in script:
        pytest.importorskip("ffcv")
    pytest.importorskip("submitit")
    proc = subprocess.run([sys.executable, str(ROOT / script), *argv], capture_output=True, text=True,
                          env=ENV, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [f"error: {line} (see --help)"], proc.stderr
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------------------------------
# hyper-parameters with no meaning (a negative weight decay, lr or clip norm; a probability outside [0, 1]): refused by
# the argparse types of maxsup.cli (and FFCV's config check through the same types), before anything is read
# --------------------------------------------------------------------------------------------------------------------
def _flag_error(flag: str, value: str, expects: str) -> str:
    return f"error: argument {flag}: expects {expects}, got {value} (see --help)"


NON_NEG, PROB, POS = "a number >= 0", "a probability in [0, 1]", "a number > 0"


@pytest.mark.parametrize("argv, line", [
    (["--weight-decay", "-0.05"], _flag_error("--weight-decay", "-0.05", NON_NEG)),
    (["--clip-grad", "-1"], _flag_error("--clip-grad", "-1", NON_NEG)),  # a negative norm flipped the gradients
    (["--clip-grad", "nan"], _flag_error("--clip-grad", "nan", NON_NEG)),
    (["--lr=-5e-4"], _flag_error("--lr", "-5e-4", NON_NEG)),
    (["--warmup-lr", "-0.000001"], _flag_error("--warmup-lr", "-0.000001", NON_NEG)),
    (["--min-lr", "-0.00001"], _flag_error("--min-lr", "-0.00001", NON_NEG)),
    (["--momentum", "-0.9"], _flag_error("--momentum", "-0.9", NON_NEG)),
    (["--opt-betas", "0.9", "-0.999"], _flag_error("--opt-betas", "-0.999", PROB)),
    (["--warmup-epochs", "-5"], "error: argument --warmup-epochs: expects a whole number >= 0, got -5 (see --help)"),
    (["--decay-epochs", "0"], _flag_error("--decay-epochs", "0", POS)),
    (["--mixup", "-0.8"], _flag_error("--mixup", "-0.8", NON_NEG)),
    (["--cutmix", "-1"], _flag_error("--cutmix", "-1", NON_NEG)),
    (["--mixup-prob", "1.5"], _flag_error("--mixup-prob", "1.5", PROB)),
    (["--mixup-switch-prob", "-0.5"], _flag_error("--mixup-switch-prob", "-0.5", PROB)),
    (["--drop-path", "1.1"], _flag_error("--drop-path", "1.1", PROB)),
    (["--drop", "-0.1"], _flag_error("--drop", "-0.1", PROB)),
    (["--reprob", "2"], _flag_error("--reprob", "2", PROB)),
    (["--model-ema-decay", "1.5"], _flag_error("--model-ema-decay", "1.5", PROB)),
    (["--color-jitter", "-0.3"], _flag_error("--color-jitter", "-0.3", NON_NEG)),
    (["--eval-crop-ratio", "0"], _flag_error("--eval-crop-ratio", "0", POS)),
    (["--num_workers", "-1"], "error: argument --num_workers: expects a whole number >= 0, got -1 (see --help)"),
    (["--input-size", "0"], "error: argument --input-size: expects a whole number >= 1, got 0 (see --help)"),
    (["--smoothing", "-0.1"], "error: --smoothing must be in [0, 1), got -0.1"),
    (["--epochs", "0"], "error: --epochs and --batch-size must be >= 1, got 0 and 64")])
def test_deit_meaningless_hyper_parameters_are_one_line(argv, line, capsys):
    """Deit/main.py trained with a negative --weight-decay (weights pushed away from 0), a negative --clip-grad (every
    step's gradient reversed) or a negative lr without a word; the values the recipes use (0 = off) still pass."""
    assert cli_error(capsys, deit_main.cli, ["--print-config", *argv], code=2) == line
    zeros = ["--weight-decay", "0", "--clip-grad", "0", "--smoothing", "0", "--lr", "0", "--mixup", "0", "--cutmix",
             "0", "--drop-path", "0", "--reprob", "0", "--warmup-epochs", "0", "--color-jitter", "0"]
    config = deit_main.cli(["--print-config", *zeros])
    assert (config["weight_decay"], config["clip_grad"], config["lr"], config["drop_path"]) == (0, 0, 0, 0)


@pytest.mark.parametrize("argv, line", [
    (["--wd", "-0.0001"], _flag_error("--wd/--weight-decay", "-0.0001", NON_NEG)),
    (["--norm-weight-decay", "-0.1"], _flag_error("--norm-weight-decay", "-0.1", NON_NEG)),
    (["--bias-weight-decay", "-0.1"], _flag_error("--bias-weight-decay", "-0.1", NON_NEG)),
    (["--lr", "-0.1"], _flag_error("--lr", "-0.1", NON_NEG)),
    (["--momentum", "-0.9"], _flag_error("--momentum", "-0.9", NON_NEG)),
    # the norm is clipped whenever the flag is given: 0 zeroed every gradient, a negative value reversed it
    (["--clip-grad-norm", "0"], _flag_error("--clip-grad-norm", "0", POS)),
    (["--clip-grad-norm", "-1"], _flag_error("--clip-grad-norm", "-1", POS)),
    (["--lr-gamma", "-0.1"], _flag_error("--lr-gamma", "-0.1", NON_NEG)),
    (["--lr-min=-1e-5"], _flag_error("--lr-min", "-1e-5", NON_NEG)),
    (["--lr-warmup-epochs", "-5"], "error: argument --lr-warmup-epochs: expects a whole number >= 0, got -5 "
                                   "(see --help)"),
    (["--lr-warmup-decay", "2"], _flag_error("--lr-warmup-decay", "2", PROB)),
    (["--lr-milestones", "60", "-120"], "error: argument --lr-milestones: expects a whole number >= 0, got -120 "
                                        "(see --help)"),
    (["--mixup-alpha", "-0.2"], _flag_error("--mixup-alpha", "-0.2", NON_NEG)),
    (["--cutmix-alpha", "-1"], _flag_error("--cutmix-alpha", "-1", NON_NEG)),
    (["--random-erase", "1.5"], _flag_error("--random-erase", "1.5", PROB)),
    (["--hflip-prob", "-0.5"], _flag_error("--hflip-prob", "-0.5", PROB)),
    (["--model-ema-decay", "2"], _flag_error("--model-ema-decay", "2", PROB)),
    (["--print-freq", "0"], "error: argument --print-freq: expects a whole number >= 1, got 0 (see --help)"),
    (["-j", "-1"], "error: argument -j/--workers: expects a whole number >= 0, got -1 (see --help)"),
    (["--label-smoothing", "1"], "error: --label-smoothing must be in [0, 1), got 1.0")])
def test_common_resnet_meaningless_hyper_parameters_are_one_line(argv, line, capsys):
    """common_resnet trained with a negative --wd or lr, and --print-freq 0 was a ZeroDivisionError traceback at the
    first step; the values the recipes use (wd 0, lr-min 0, no clipping) still pass."""
    assert cli_error(capsys, resnet_train.cli, ["--print-config", *argv], code=2) == line
    config = resnet_train.cli(["--print-config", "--wd", "0", "--lr-min", "0", "--label-smoothing", "0",
                               "--mixup-alpha", "0", "--lr-warmup-epochs", "0"])
    assert (config["weight_decay"], config["clip_grad_norm"], config["lr_min"]) == (0, None, 0)


@pytest.mark.parametrize("override, line", [
    ("--training.weight_decay=-1e-4", "error: training.weight_decay expects a number >= 0, got -0.0001"),
    ("--training.clip_grad_norm=-1", "error: training.clip_grad_norm expects a number >= 0, got -1.0"),
    ("--training.momentum=-0.9", "error: training.momentum expects a number >= 0, got -0.9"),
    ("--lr.lr=-0.5", "error: lr.lr expects a number >= 0, got -0.5"),
    ("--lr.min_lr=-1e-5", "error: lr.min_lr expects a number >= 0, got -1e-05"),
    ("--lr.step_ratio=-0.1", "error: lr.step_ratio expects a number >= 0, got -0.1"),
    ("--lr.step_length=0", "error: lr.step_length expects a number > 0, got 0"),
    ("--lr.warmup_epochs=-2", "error: lr.warmup_epochs expects a number >= 0, got -2"),
    ("--validation.crop_ratio=0", "error: validation.crop_ratio expects a number > 0, got 0.0"),
    ("--resolution.res_step=0", "error: resolution.res_step expects a whole number >= 1, got 0"),
    ("--data.num_workers=-1", "error: data.num_workers expects a whole number >= 0, got -1"),
    ("--data.std=[0.2,0,0.2]", "error: data.std[1] expects a number > 0, got 0.0")])
def test_ffcv_meaningless_hyper_parameters_are_one_line(override, line, capsys):
    """Conv/ffcv/main.py's typed config refused a wrong type but not a negative weight decay, lr or clip norm (a zero
    step length was a ZeroDivisionError of the step schedule); 0 = off still passes."""
    ffcv_main = load_ffcv_main()
    assert cli_error(capsys, ffcv_main.main, ["--print-config", override], code=2) == line
    config = ffcv_main.main(["--print-config", "--training.clip_grad_norm=0", "--training.weight_decay=0",
                             "--lr.min_lr=0", "--lr.warmup_epochs=0"])
    assert (config["training"]["clip_grad_norm"], config["training"]["weight_decay"]) == (0, 0)

