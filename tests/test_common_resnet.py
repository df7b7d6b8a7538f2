"""Conv/common_resnet/train.py and maxsup.data.downsampled on real data (Fashion-MNIST, tiny ImageNet32 files).

The downsampled-ImageNet and ImageFolder fixtures are made of real Fashion-MNIST images (padded to 32×32, RGB).
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flat_import import load_flat
from helpers import cli_error
from PIL import Image

from maxsup.data.downsampled import DownsampledImageNet, batch_files, write_downsampled
from maxsup.data.fashion_mnist import FashionMNIST
from maxsup.errors import UserError
from maxsup.timing import TIMING_KEYS
from maxsup.training import load_checkpoint

TRAIN_DIR = Path(__file__).resolve().parents[1] / "Conv" / "common_resnet"
TRAIN_PY = TRAIN_DIR / "train.py"
# Small and quick: a CIFAR-style ResNet-10 of width 8 on a few hundred 28–32 px images.
TINY_MODEL = ["--model", "cifar_resnet10", "--model-kwargs", "width=8", "--print-freq", "1000"]
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def _load_trainer():
    """Import train.py with its sibling modules (presets, utils, sampler) without leaving them in sys.modules, where
    they could shadow other subprojects' ``utils``."""
    return load_flat(TRAIN_DIR, "train", ("presets", "utils", "sampler"))


trainer = _load_trainer()


pytestmark = pytest.mark.usefixtures("one_thread")


def _fmnist_rgb32(train: bool, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 32, 32, 3) uint8 real Fashion-MNIST images (zero-padded, grey → RGB) and 0-based labels."""
    ds = FashionMNIST(train=train, limit_per_class=per_class)
    grey = np.pad(ds.data, ((0, 0), (2, 2), (2, 2)))
    return np.repeat(grey[..., None], 3, axis=-1), np.asarray(ds.targets)


@pytest.fixture(scope="module")
def imagenet32(tmp_path_factory) -> Path:
    """A tiny ImageNet32-format folder: 200 train images in 2 batch files, 99 val images (odd: 2 ranks get 50 and
    49, so padding would show), 10 classes."""
    root = tmp_path_factory.mktemp("imagenet32")
    write_downsampled(*_fmnist_rgb32(True, 20), root, 32, "train", batch_size=120)
    images, labels = _fmnist_rgb32(False, 10)
    write_downsampled(images[:99], labels[:99], root, 32, "val")
    return root


def _run(args: list[str], env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TRAIN_PY), *args], capture_output=True, text=True,
                          env=env or SUBPROCESS_ENV, cwd=TRAIN_DIR, timeout=300, **kw)


def trainer_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]


def _cli(argv: list[str]):
    return trainer.run_cli(trainer.cli, argv)


# --------------------------------------------------------------------------------------------------------------------
# maxsup.data.downsampled
# --------------------------------------------------------------------------------------------------------------------
def test_downsampled_roundtrip_keeps_pixels_channel_order_and_labels(tmp_path):
    images, labels = _fmnist_rgb32(True, 3)
    images = images.copy()
    images[..., 0] //= 2  # make R differ from G and B, so a channel-order mix-up is visible
    paths = write_downsampled(images, labels, tmp_path, 32, "train", batch_size=12)
    assert [p.name for p in paths] == ["train_data_batch_1", "train_data_batch_2", "train_data_batch_3"]
    with open(paths[0], "rb") as f:
        raw = pickle.load(f)
    assert raw["data"].shape == (12, 3 * 32 * 32) and raw["data"].dtype == np.uint8
    assert np.array_equal(raw["data"][0, :1024], images[0, :, :, 0].ravel())  # R plane first
    assert raw["labels"] == (labels[:12] + 1).tolist()  # 1-based on disk
    assert raw["mean"].shape == (3072,)

    # streamed conversion: a later chunk continues the numbering and keeps the whole-set mean
    more = write_downsampled(images[:5], labels[:5], tmp_path, 32, "train", batch_size=12, first_batch=4,
                             mean=raw["mean"])
    assert more == [tmp_path / "train_data_batch_4"]
    with open(more[0], "rb") as f:
        assert np.array_equal(pickle.load(f)["mean"], raw["mean"])
    more[0].unlink()

    ds = DownsampledImageNet(tmp_path, 32, train=True)
    assert len(ds) == 30 and ds.num_classes == 10 and ds.targets == labels.tolist()
    img, label = ds[25]  # in the third file
    assert img.mode == "RGB" and np.array_equal(np.asarray(img), images[25]) and label == labels[25]


def test_downsampled_rejects_corrupt_missing_and_mismatched_files(tmp_path):
    images, labels = _fmnist_rgb32(False, 2)
    write_downsampled(images, labels, tmp_path, 32, "train", batch_size=7)  # 20 images → 3 files
    write_downsampled(images, labels, tmp_path, 32, "val")
    corrupt = tmp_path / "train_data_batch_2"
    corrupt.write_bytes(corrupt.read_bytes()[:100])
    with pytest.raises(UserError, match="train_data_batch_2 is not a valid downsampled-ImageNet batch"):
        DownsampledImageNet(tmp_path, 32)

    class Payload:  # anything but arrays and containers is refused, not executed
        def __reduce__(self):
            return (os.getcwd, ())

    corrupt.write_bytes(pickle.dumps({"data": Payload(), "labels": [1]}))
    with pytest.raises(UserError, match="refusing to unpickle"):
        DownsampledImageNet(tmp_path, 32)
    corrupt.unlink()
    (tmp_path / "train_data_batch_3").rename(tmp_path / "train_data_batch_4")
    with pytest.raises(FileNotFoundError, match="missing .*train_data_batch_2"):
        batch_files(tmp_path)
    with pytest.raises(UserError, match=r"expected \(N, 12288\) uint8 for 64×64"):
        DownsampledImageNet(tmp_path, 64, train=False)
    with pytest.raises(FileNotFoundError, match="val_data"):
        DownsampledImageNet(tmp_path / "nowhere", 32, train=False)


# --------------------------------------------------------------------------------------------------------------------
# Every loss trains
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["ce", "ls", "maxsup", "lp", "cp", "ols", "zipf", "zipf-dense", "logitnorm", "focal",
                                  "adaptive-ls", "maxsup-adaptive"])
def test_each_loss_reduces_its_loss_on_real_images(loss):
    dense = ["--loss-opt", "dense=true"] if loss == "zipf-dense" else []
    if loss == "logitnorm":  # τ = 0.04 rescales the logits' gradient by 1/(τ·‖z‖): too hot for this lr and K = 4
        dense = ["--loss-opt", "tau=0.5"]
    loss = loss.removesuffix("-dense")
    args = trainer.get_args_parser().parse_args(
        ["--dataset", "fmnist", "--loss", loss, *dense, "--epochs", "5", "--lr", "0.05", "--stats-every", "1",
         *TINY_MODEL])
    torch.manual_seed(0)
    tf = trainer.eval_transform(trainer.eval_spec(args))
    ds = FashionMNIST(classes=[0, 1, 7, 8], limit_per_class=16, transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=32, shuffle=False)
    images, target = next(iter(loader))
    model = trainer.create_model("cifar_resnet10", 4, width=8)
    criterion = trainer._criterion(args, 4, model)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    def loss_on_first_batch() -> float:
        criterion.eval()  # OLS: do not accumulate statistics while measuring
        with torch.no_grad():
            return trainer.compute_loss(model, criterion, images, target)[1].item()

    model.train()
    before = loss_on_first_batch()
    for epoch in range(4):
        stats = trainer.train_one_epoch(model, criterion, optimizer, loader, torch.device("cpu"), epoch, args)
        criterion.on_eval(float(epoch))  # an improving validation score: Adaptive LS takes each epoch as teacher
    after = loss_on_first_batch()
    assert after < before - 0.1, f"{loss}: {before:.3f} -> {after:.3f}"
    assert np.isfinite(stats["loss"]) and 0.0 <= stats["misclassified"] <= 1.0
    if loss in ("ls", "maxsup"):
        assert stats["alpha"] == pytest.approx(0.1 + 0.1 * 3 / 4)  # epoch 3 of E = 5 (α 0.1 → 0.2)
    if loss == "ols":  # the epoch-boundary update replaced the initial LS matrix by accumulated softmax rows
        assert not torch.allclose(criterion.soft_labels.diagonal(), torch.full((4,), 0.9))
        assert criterion.counts.sum() == 0
    if loss == "adaptive-ls":  # the teacher is the checkpoint of the last (best) validation
        assert all(torch.equal(a, b) for a, b in zip(criterion.teacher.parameters(), model.parameters(), strict=True))
    if loss in ("adaptive-ls", "maxsup-adaptive"):
        assert 0.0 < stats["alpha"] <= 0.2


def test_label_smoothing_flag_is_ls_with_fixed_alpha():
    args = trainer.get_args_parser().parse_args(["--loss", "ce", "--label-smoothing", "0.15", "--epochs", "10"])
    criterion = trainer._criterion(args, 10)
    criterion.set_epoch(9)
    assert type(criterion).__name__ == "LabelSmoothingLoss" and criterion.alpha == pytest.approx(0.15)


@pytest.mark.slow  # torch.compile of the train and eval graphs takes ~2 min on 2 CPU cores
def test_compile_trains_and_checkpoints_plain_keys(tmp_path):
    out = tmp_path / "compiled"
    metrics = _cli(["--dataset", "fmnist", "--classes", "0,1,7", "--limit-per-class", "16", *TINY_MODEL,
                    "--loss", "maxsup", "--compile", "--epochs", "1", "-b", "16", "-j", "0", "--output-dir", str(out)])
    ckpt = load_checkpoint(out / "checkpoint.pth")
    assert metrics["n"] == 48 and not any(k.startswith(("_orig_mod.", "module.")) for k in ckpt["model"])
    fresh = trainer.create_model("cifar_resnet10", 3, width=8)
    fresh.load_state_dict(ckpt["model"])  # the checkpoint loads into an uncompiled model


# --------------------------------------------------------------------------------------------------------------------
# End to end: train, log, checkpoint, --test-only
# --------------------------------------------------------------------------------------------------------------------
def test_imagefolder_run_then_test_only_reproduces_logged_metrics(tmp_path, capsys):
    images, labels = _fmnist_rgb32(False, 12)
    for split in ("train", "val"):
        for i, (img, y) in enumerate(zip(images, labels, strict=True)):
            if (i % 2 == 0) == (split == "train"):
                (tmp_path / "data" / split / f"class{y}").mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(tmp_path / "data" / split / f"class{y}" / f"{i}.png")
    out = tmp_path / "out"
    metrics = _cli(["--dataset", "imagefolder", "--data-path", str(tmp_path / "data"), *TINY_MODEL, "--loss", "maxsup",
                    "--epochs", "2", "-b", "16", "--lr", "0.05", "-j", "0", "--train-crop-size", "32",
                    "--val-crop-size", "32", "--mixup-alpha", "0.2", "--cutmix-alpha", "1.0",
                    "--lr-scheduler", "cosineannealinglr", "--lr-warmup-epochs", "1", "--norm-weight-decay", "0",
                    "--output-dir", str(out)])
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1] and log[-1]["test_n"] == 60
    assert log[0]["train_lr"] == pytest.approx(0.05 * 0.01) and log[1]["train_lr"] == pytest.approx(0.05)
    assert log[1]["train_alpha"] == pytest.approx(0.2)
    # maxsup.timing: the loop's and evaluation's wall clock, images/s = images trained ÷ training seconds
    assert all(r["train_samples"] == 60 and r["train_seconds"] > 0 and r["eval_seconds"] > 0 for r in log)
    assert all(r["train_images_per_s"] == pytest.approx(60 / r["train_seconds"], rel=1e-9) for r in log)
    ckpt = load_checkpoint(out / "checkpoint.pth")
    assert ckpt["arch"] == {"name": "cifar_resnet10", "num_classes": 10, "kwargs": {"width": 8}}
    assert ckpt["classes"] == [f"class{y}" for y in range(10)]  # the class folders, index = label
    assert ckpt["eval_transform"]["img_size"] == 32 and ckpt["eval_transform"]["crop_pct"] == pytest.approx(32 / 37)
    assert {"optimizer", "lr_scheduler", "criterion", "rng", "args"} <= set(ckpt) and ckpt["epoch"] == 1
    assert ckpt["optimizer"]["param_groups"][1]["weight_decay"] == 0.0  # BN parameters

    capsys.readouterr()
    again = _cli(["--dataset", "imagefolder", "--data-path", str(tmp_path / "data"), "--test-only",
                  "--resume", str(out / "checkpoint.pth"), "-j", "0", "-b", "16"])
    printed = capsys.readouterr().out
    assert f"acc@1 {metrics['acc1']:.3f} acc@5 {metrics['acc5']:.3f} nll {metrics['nll']:.4f} ece " in printed
    assert again == metrics
    # a file that records its classes in another order (a head trained on other label numbers) is refused, not scored
    ckpt["classes"] = ckpt["classes"][::-1]
    torch.save(ckpt, tmp_path / "reordered.pth")
    err = _cli_error_line(["--dataset", "imagefolder", "--data-path", str(tmp_path / "data"), "--test-only",
                           "--resume", str(tmp_path / "reordered.pth"), "-j", "0", "-b", "16"], capsys)
    assert err.startswith(f"error: {tmp_path / 'reordered.pth'} records its classes in another order than this "
                          f"data's (label 0 is 'class9' there, 'class0' here)"), err


def test_seed_sweep_accumulation_run_record_and_tensorboard(tmp_path, monkeypatch):
    """--seeds 0,1 --accum-steps 2: two run folders, each with half as many optimizer steps as batches (40 images,
    -b 8: 5 batches, the odd one skipped, 2 AdamW steps), a run.json and TensorBoard scalars."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("SEEDS", raising=False)
    out, tb = tmp_path / "out", tmp_path / "tb"
    result = _cli(["--dataset", "fmnist", "--classes", "0,1", "--limit-per-class", "20", *TINY_MODEL, "--loss", "ls",
                   "--epochs", "1", "-b", "8", "--accum-steps", "2", "--opt", "adamw", "--lr", "1e-3", "-j", "0",
                   "--seeds", "0,1", "--output-dir", str(out), "--tensorboard", str(tb)])
    assert sorted(result) == ["seed0", "seed1"]
    for seed in (0, 1):
        ckpt = load_checkpoint(out / f"seed{seed}" / "checkpoint.pth")
        assert {int(state["step"]) for state in ckpt["optimizer"]["state"].values()} == {2}
        assert ckpt["args"]["seed"] == seed
        rec = json.loads((out / f"seed{seed}" / "run.json").read_text())
        assert (rec["trainer"], rec["dataset"], rec["model"], rec["loss"], rec["seed"]) == (
            "common_resnet", "fmnist", "cifar_resnet10", "ls", seed)
        assert rec["config"]["total_batch_size"] == 16 and rec["alpha"] == [0.1, 0.2]
        assert rec["provenance"]["world_size"] == 1 and rec["provenance"]["torch"] == torch.__version__
        acc = EventAccumulator(str(tb / f"seed{seed}"))
        acc.Reload()
        log = json.loads((out / f"seed{seed}" / "log.txt").read_text().splitlines()[-1])
        assert acc.Scalars("test_acc1")[0].value == pytest.approx(log["test_acc1"])
        assert {"train_loss", "train_lr", "train_alpha", "train_misclassified", "test_nll", "test_ece"} <= set(
            acc.Tags()["scalars"])


# --------------------------------------------------------------------------------------------------------------------
# Bad input: one line, non-zero exit
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--dataset", "fmnist", "--model", "resnet_9000"], "unknown model 'resnet_9000'"),
    (["--dataset", "fmnist", "--loss", "focal-ls"], "unknown --loss 'focal-ls'"),
    (["--dataset", "fmnist", "--loss", "focal", "--loss-opt", "tau=0.1"], "has no option 'tau'"),
    (["--dataset", "fmnist", "--loss", "ls", "--loss-opt", "dense=true"], "loss 'ls' has no option 'dense'"),
    (["--dataset", "fmnist", "--loss", "maxsup", "--label-smoothing", "0.1"], "cannot be combined with --loss maxsup"),
    (["--dataset", "cifar100", "--data-path", "{tmp}/c100"], "extract cifar-100-python.tar.gz so that"),
    (["--dataset", "imagenet32", "--data-path", "{tmp}/in32"], "put train_data_batch_1..10"),
    (["--dataset", "fmnist", "--classes", "0,x"], "--classes must be a comma-separated list of integers, got '0,x'"),
])
def test_bad_input_is_one_error_line(argv, message, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--epochs", "1", "-j", "0", "--output-dir",
                                                                 str(tmp_path / "out")]
    assert message in cli_error(capsys, trainer.cli, argv, code=2, clear=True)


def test_corrupt_imagenet32_batch_is_reported_by_the_cli(imagenet32, tmp_path):
    bad = tmp_path / "in32"
    bad.mkdir()
    for f in imagenet32.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "train_data_batch_2").write_bytes(b"\x80\x04not a pickle")
    proc = _run(["--dataset", "imagenet32", "--data-path", str(bad), *TINY_MODEL, "--epochs", "1", "-j", "0",
                 "--output-dir", str(tmp_path / "out")])
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {bad / 'train_data_batch_2'} is not a valid downsampled-ImageNet batch")


# --------------------------------------------------------------------------------------------------------------------
# Exact resume after kill -9, and DDP with gloo
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_resume_after_kill9_is_bit_exact(tmp_path):
    common = ["--dataset", "fmnist", "--classes", "0,2,4,6,8", "--limit-per-class", "40", *TINY_MODEL,
              "--loss", "ols", "--epochs", "4", "-b", "25", "--lr", "0.05", "-j", "1", "--model-ema",
              "--model-ema-steps", "1", "--mixup-alpha", "0.2", "--lr-scheduler", "multisteplr",
              "--lr-milestones", "1", "3", "--lr-gamma", "0.2"]
    full = _run([*common, "--output-dir", str(tmp_path / "full")])
    assert full.returncode == 0, full.stderr

    # SIGKILL through the trainer's test hook at a random point: before a step (8 per epoch) after the first
    # checkpoint, or inside the 2nd or 3rd checkpoint write (new file written, not yet renamed).
    seed = int.from_bytes(os.urandom(4), "little")
    rng = np.random.default_rng(seed)
    kill_at = f"step:{rng.integers(9, 32)}" if rng.random() < 0.7 else f"save:{rng.integers(2, 4)}"
    print(f"MAXSUP_KILL_AT={kill_at} (seed {seed})")
    out = tmp_path / "killed"
    killed = _run([*common, "--output-dir", str(out)], env={**SUBPROCESS_ENV, "MAXSUP_KILL_AT": kill_at})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    killed_at = load_checkpoint(out / "checkpoint.pth")["epoch"]
    assert killed_at < 3 and [r["epoch"] for r in trainer_log(out)] == list(range(killed_at + 1))
    resumed = _run([*common, "--output-dir", str(out), "--resume", str(out / "checkpoint.pth")])
    assert resumed.returncode == 0, resumed.stderr

    a, b = load_checkpoint(tmp_path / "full" / "checkpoint.pth"), load_checkpoint(out / "checkpoint.pth")
    for key in ("model", "model_ema", "criterion"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert all(torch.equal(a["optimizer"]["state"][i]["momentum_buffer"], b["optimizer"]["state"][i]["momentum_buffer"])
               for i in a["optimizer"]["state"])
    log_a, log_b = (
        [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in (d / "log.txt").open()]
        for d in (tmp_path / "full", out))
    assert log_a == log_b and [r["epoch"] for r in log_b] == [0, 1, 2, 3]
    assert [r["train_lr"] for r in log_b] == pytest.approx([0.05, 0.01, 0.01, 0.002])


@pytest.mark.slow
def test_torchrun_two_process_gloo_covers_every_val_image_once(imagenet32, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "ddp"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", str(TRAIN_PY), "--dataset", "imagenet32",
           "--data-path", str(imagenet32), *TINY_MODEL, "--loss", "ols", "--epochs", "2", "-b", "25", "--lr", "0.05",
           "-j", "0", "--ra-sampler", "--cutmix-alpha", "1.0", "--device", "cpu", "--output-dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=SUBPROCESS_ENV, cwd=TRAIN_DIR, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1]
    assert all(r["test_n"] == 99 for r in log)  # 99 val images split 50/49, no padding duplicates
    ckpt = load_checkpoint(out / "checkpoint.pth")
    assert not any(k.startswith("module.") for k in ckpt["model"])
    # OLS statistics were all-reduced at the epoch boundary: every row is a distribution
    assert torch.allclose(ckpt["criterion"]["soft_labels"].sum(1), torch.ones(10), atol=1e-5)


# --------------------------------------------------------------------------------------------------------------------
# Reliability: NaN stops cleanly, resume refuses what it cannot continue, preemption resumes exactly
# --------------------------------------------------------------------------------------------------------------------
QUICK = ["--dataset", "fmnist", "--classes", "0,1,7", "--limit-per-class", "20", *TINY_MODEL, "-b", "16", "-j", "0",
         "--lr", "0.05", "--loss", "maxsup"]


def _cli_error_line(argv: list[str], capsys) -> str:
    return cli_error(capsys, trainer.cli, argv, clear=True)


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cr_one_epoch")
    _cli([*QUICK, "--epochs", "1", "--output-dir", str(out)])
    return out


def test_nan_stops_every_rank_with_one_line_and_keeps_the_checkpoint(one_epoch_run, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pth").write_bytes((one_epoch_run / "checkpoint.pth").read_bytes())
    before = (out / "checkpoint.pth").read_bytes()
    # --overwrite: a new run over the folder's checkpoint, which the NaN must leave as it was
    msg = _cli_error_line([*QUICK, "--epochs", "1", "--lr", "1e30", "--output-dir", str(out), "--overwrite"], capsys)
    assert "at epoch 0, step" in msg and "--lr" in msg and "--clip-grad-norm" in msg, msg
    assert (out / "checkpoint.pth").read_bytes() == before and not list(out.glob(".*.tmp"))


def test_resume_refuses_other_arguments_and_other_trainers(one_epoch_run, tmp_path, capsys):
    ckpt = str(one_epoch_run / "checkpoint.pth")
    msg = _cli_error_line([*QUICK, "--loss", "ce", "--epochs", "3", "--resume", ckpt, "--output-dir",
                           str(tmp_path)], capsys)
    assert f"cannot resume {ckpt}" in msg and '--loss maxsup → ce' in msg and "--epochs 1 → 3" in msg
    assert "--finetune" in msg
    foreign = tmp_path / "deit.pth"
    torch.save({**load_checkpoint(ckpt), "trainer": "Deit/main.py"}, foreign)
    msg = _cli_error_line([*QUICK, "--epochs", "1", "--resume", str(foreign), "--output-dir", str(tmp_path)], capsys)
    assert "was written by Deit/main.py, not by Conv/common_resnet/train.py" in msg


def test_test_only_refuses_a_head_of_another_size(one_epoch_run, capsys):
    msg = _cli_error_line(["--dataset", "fmnist", "--classes", "0,1,7,8", "--limit-per-class", "5", "-j", "0",
                           "--test-only", "--resume", str(one_epoch_run / "checkpoint.pth")], capsys)
    assert "has a 3-class head but the evaluation data has 4 classes" in msg


def test_train_and_val_class_folders_must_match(tmp_path, capsys):
    images, _ = _fmnist_rgb32(False, 2)
    for split, names in (("train", ("bag", "coat")), ("val", ("bag", "shirt"))):
        for i, name in enumerate(names):
            (tmp_path / split / name).mkdir(parents=True)
            Image.fromarray(images[i]).save(tmp_path / split / name / "0.png")
    msg = _cli_error_line(["--dataset", "imagefolder", "--data-path", str(tmp_path), *TINY_MODEL, "--epochs", "1",
                           "-j", "0", "--output-dir", str(tmp_path / "out")], capsys)
    assert "only in train: coat; only in val: shirt" in msg


def _same_state(a: dict, b: dict) -> None:
    for key in ("model", "criterion"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert all(torch.equal(a["optimizer"]["state"][i]["momentum_buffer"], b["optimizer"]["state"][i]["momentum_buffer"])
               for i in a["optimizer"]["state"])


def test_preemption_signal_checkpoints_mid_epoch_and_resumes_exactly(tmp_path, monkeypatch):
    from maxsup.training import faults

    recipe = [*QUICK, "--loss", "ols", "--epochs", "2", "--mixup-alpha", "0.2"]
    _cli([*recipe, "--output-dir", str(tmp_path / "full")])
    seed = int.from_bytes(os.urandom(4), "little")
    step = np.random.default_rng(seed).integers(1, 8)  # 4 steps per epoch; the signal arrives during step `step`
    print(f"preemption at step {step} (seed {seed})")
    out = tmp_path / "preempted"
    faults.reset()
    monkeypatch.setenv(faults.KILL_ENV, f"step:{step}:USR1")
    _cli([*recipe, "--output-dir", str(out)])
    monkeypatch.delenv(faults.KILL_ENV)
    ckpt = load_checkpoint(out / "checkpoint.pth")
    assert ("partial" in ckpt) == (step % 4 != 0)  # mid-epoch, unless the signal came during an epoch's last step
    _cli([*recipe, "--output-dir", str(out), "--resume", str(out / "checkpoint.pth")])
    _same_state(load_checkpoint(tmp_path / "full" / "checkpoint.pth"), load_checkpoint(out / "checkpoint.pth"))
    logs = [[{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in (d / "log.txt").open()]
            for d in (tmp_path / "full", out)]
    assert logs[0] == logs[1] and [r["epoch"] for r in logs[1]] == [0, 1]


def test_submitit_launcher_trains_and_requeues_with_resume(tmp_path, monkeypatch):
    """Conv/common_resnet/run_with_submitit.py through submitit's in-process debug executor."""
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))  # submit() extends it for the job
    names = ("run_with_submitit", "train", "presets", "utils", "sampler")
    saved = {n: sys.modules.pop(n) for n in names if n in sys.modules}
    sys.path.insert(0, str(TRAIN_DIR))
    try:
        launcher = importlib.import_module("run_with_submitit")
        job = launcher.main([*QUICK, "--epochs", "1", "--job_dir", str(tmp_path), "--cluster", "debug",
                             "--ngpus", "1"])
        job.result()
        assert load_checkpoint(tmp_path / "checkpoint.pth")["epoch"] == 0  # --output-dir defaulted to --job_dir
        task = job.submission().function
        requeued = task.checkpoint()  # what submitit calls on preemption / timeout
        assert requeued.function.prepare(True).resume == str(tmp_path / "checkpoint.pth")
    finally:
        sys.path.remove(str(TRAIN_DIR))
        for n in names:
            sys.modules.pop(n, None)
        sys.modules.update(saved)


def test_submitit_preemption_signal_checkpoints_at_a_step_and_requeued_job_resumes_exactly(tmp_path, monkeypatch):
    """submitit's local executor (real job processes, submitit's own SIGUSR2 handler and requeue): SIGUSR2, sent by
    the test hook before the 5th step of a job process, makes the trainer checkpoint at that step boundary; submitit
    then requeues and the next process resumes from it mid-epoch. The result equals an uninterrupted run."""
    recipe = [*QUICK, "--epochs", "2"]  # 4 steps per epoch: stops after step 1 of epoch 1; the 2nd process ends it
    _cli([*recipe, "--output-dir", str(tmp_path / "ref")])
    names = ("run_with_submitit", "train", "presets", "utils", "sampler")
    saved = {n: sys.modules.pop(n) for n in names if n in sys.modules}
    sys.path.insert(0, str(TRAIN_DIR))
    for key, value in {"MAXSUP_KILL_AT": "step:5:USR2", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
                       "PYTHONPATH": os.environ.get("PYTHONPATH", ""), "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(key, value)  # the job processes inherit them; submit() extends PYTHONPATH
    try:
        launcher = importlib.import_module("run_with_submitit")
        job = launcher.main([*recipe, "--job_dir", str(tmp_path / "job"), "--cluster", "local", "--ngpus", "1",
                             "--timeout", "20"])
        job.result()
    finally:
        sys.path.remove(str(TRAIN_DIR))
        for n in names:
            sys.modules.pop(n, None)
        sys.modules.update(saved)
    out = job.stdout() + job.stderr()
    assert out.count("received SIGUSR2") == 1 and out.count("handing over to submitit to requeue") == 1, out[-3000:]
    assert "Preempted: checkpoint written at epoch 1, step 1" in out and "at epoch 1, step 1" in out, out[-3000:]
    ref, job_dir = tmp_path / "ref", tmp_path / "job"
    _same_state(load_checkpoint(ref / "checkpoint.pth"), load_checkpoint(job_dir / "checkpoint.pth"))
    logs = [[{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in trainer_log(d)] for d in (ref, job_dir)]
    assert logs[0] == logs[1] and [r["epoch"] for r in logs[1]] == [0, 1]


@pytest.mark.slow
def test_two_process_gloo_equals_one_process_at_the_same_global_batch(tmp_path):
    """DDP averages gradients and OLS all-reduces its soft labels: 2 processes × 12 images equal 1 process × 24.

    No BatchNorm (a 1-block ViT), no augmentation, and one step per epoch over all 24 images, so the sample order
    cannot differ. Rank 0's OLS matrix after epoch 0 would come from its 12 images alone without the all-reduce."""
    recipe = ["--dataset", "fmnist", "--classes", "0,1,7", "--limit-per-class", "8", "--model", "vit_tiny_patch16_224",
              "--model-kwargs", "img_size=28", "patch_size=7", "embed_dim=32", "depth=1", "num_heads=2",
              "--train-transform", "eval", "--loss", "ols", "--epochs", "3", "--lr", "0.05", "-j", "0",
              "--print-freq", "1000", "--device", "cpu"]
    one = _run([*recipe, "-b", "24", "--output-dir", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = Path(sys.executable).with_name("torchrun")
    two = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", str(TRAIN_PY), *recipe, "-b", "12",
                          "--output-dir", str(tmp_path / "two")], capture_output=True, text=True, env=SUBPROCESS_ENV,
                         cwd=TRAIN_DIR, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (load_checkpoint(tmp_path / d / "checkpoint.pth") for d in ("one", "two"))
    soft = a["criterion"]["soft_labels"]
    assert not torch.allclose(soft.diagonal(), torch.full((3,), 0.9))  # OLS really replaced its initial matrix
    assert torch.allclose(b["criterion"]["soft_labels"], soft, atol=1e-5)
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], rtol=1e-4, atol=1e-5), k


def test_estimate_times_train_one_epoch_and_writes_nothing(tmp_path, capsys):
    """--estimate N: 3 warm-up + N steps of train_one_epoch, one JSON line, no output folder."""
    out = tmp_path / "est"
    capsys.readouterr()
    rec = _cli([*QUICK, "-b", "8", "--epochs", "5", "--accum-steps", "2", "--estimate", "1", "--output-dir", str(out)])
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")]
    assert len(line) == 1 and json.loads(line[0])["seconds_per_step"] == rec["seconds_per_step"]
    assert rec["estimate"] is True and rec["trainer"] == "common_resnet" and not out.exists()
    # 60 images at -b 8: 8 batches (the last one short), 4 optimizer steps of 2 batches; 16 images a step
    assert rec["steps_per_epoch"] == 4 and rec["total_batch_size"] == 16 and rec["accum_steps"] == 2
    assert rec["seconds_total"] == pytest.approx(rec["seconds_per_step"] * 4 * 5)
    rec = _cli(["--dataset", "cifar100", "--data-path", str(tmp_path / "none"), *TINY_MODEL, "-b", "16", "-j", "0",
                "--estimate", "1", "--estimate-synthetic"])
    assert rec["data"] == "synthetic" and rec["resolution"] == 32 and rec["steps_per_epoch"] == 3125  # 50000 / 16
    msg = _cli_error_line([*QUICK, "--estimate-synthetic"], capsys)
    assert "--estimate-synthetic needs --estimate N" in msg
