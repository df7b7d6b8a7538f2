"""Conv/ffcv: a real .beton written by FFCV from real JPEGs (Fashion-MNIST + scikit-image photos), trained on CPU.

FFCV JIT-compiles its pipelines with numba (about 5 s of CPU per process plus a few per loader), so everything runs
in this one process around a single module-scoped training run.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    FFCV_DIR,
    FFCV_SIZE,
    FFCV_TRAINERS,
    cli_error,
    keeping_ffcv_trainers,
    load_ffcv_main,
    load_ffcv_writer,
    torch_threads,
)
from helpers import ffcv_argv as _argv
from PIL import Image

from maxsup.errors import UserError
from maxsup.losses import AlphaSchedule

pytest.importorskip("ffcv", reason="needs the ffcv extra (pip install -e '.[ffcv]')")
pytestmark = pytest.mark.ffcv
# 32 px at epoch 0, 64 px at 1
RAMP = ("--resolution.max_res=64", "--resolution.start_ramp=0", "--resolution.end_ramp=1")
_KEEP_ALIVE = FFCV_TRAINERS  # every trainer the tests build lives until exit (helpers.FFCV_TRAINERS says why)
SIZE = FFCV_SIZE

ffcv_main = load_ffcv_main()
write_imagenet = load_ffcv_writer()


@pytest.fixture(autouse=True, scope="module")
def _keep_trainers_alive():
    """Keep every trainer alive, also those that ``main`` builds and drops on an error."""
    with keeping_ffcv_trainers():
        yield


@pytest.fixture(scope="module")
def betons(ffcv_betons) -> dict[str, Path]:
    return ffcv_betons


@pytest.fixture(scope="module")
def trained(betons, tmp_path_factory):
    """The first of two epochs of the tiny CPU recipe, with dotted overrides (lr, output dir, model width, a 32→64
    px ramp). A preemption signal (SIGUSR1 through the test hook) during the epoch's last step (96 images, batch 32)
    stops the run cleanly after that epoch's checkpoint."""
    from maxsup.training import faults

    out = tmp_path_factory.mktemp("ffcv_run")
    cfg = ffcv_main.load_config(_argv(betons, out, "--lr.lr=0.05", "--training.epochs=2", *RAMP))
    faults.reset()
    os.environ[faults.KILL_ENV] = "step:3:USR1"
    try:
        trainer = ffcv_main.ImageNetTrainer(cfg)
        _KEEP_ALIVE.append(trainer)
        stats = trainer.train()
    finally:
        del os.environ[faults.KILL_ENV]
    return trainer, stats, out


# ------------------------------------------------------------------------------------------------ writer + loader
def test_beton_has_image_and_label_fields_with_imagefolder_labels(betons):
    from ffcv.reader import Reader
    from torchvision.datasets import ImageFolder

    reader = Reader(str(betons["val"]))
    assert list(reader.handlers) == ["image", "label"]
    labels = reader.metadata["f1"]
    assert labels.tolist() == ImageFolder(str(betons["val_dir"])).targets
    assert oct(betons["val"].stat().st_mode & 0o777) != oct(0o600)  # not left with mkstemp's private mode
    assert not [p for p in betons["val"].parent.iterdir() if p.name.endswith(".tmp")]  # atomic: no leftovers


def test_writer_reads_the_zip_cache_with_its_map_labels(betons, tmp_path):
    from ffcv.reader import Reader

    from maxsup.data.zipcache import parse_map, write_zip_cache

    # A permuted class order, like the authors' maps (which do not follow sorted-ImageFolder order).
    order = {"c3_photo": 0, "c0_fmnist": 1, "c1_fmnist": 2, "c2_fmnist": 3}
    write_zip_cache(betons["val_dir"], tmp_path / "val.zip", tmp_path / "val_map.txt", split="train",
                    class_to_idx=order)
    out = write_imagenet.main(["--zip", str(tmp_path / "val.zip"), "--map", str(tmp_path / "val_map.txt"),
                               "--write-path", str(tmp_path / "zip.beton"), "--num-workers", "2"])
    labels = Reader(str(out)).metadata["f1"].tolist()
    assert labels == [label for _, label in parse_map(tmp_path / "val_map.txt")]
    assert sorted(set(labels)) == [0, 1, 2, 3] and labels[0] == order["c0_fmnist"]
    # the sidecar names the labels in the map's order: what a run on this .beton records as its checkpoint's classes
    assert json.loads(Path(f"{out}.classes.json").read_text())["classes"] == sorted(order, key=order.__getitem__)


def test_ffcv_loader_returns_labels_shapes_and_pixels(trained, betons):
    from ffcv.loader import Loader
    from torchvision.datasets import ImageFolder

    trainer, _, _ = trained
    assert isinstance(trainer.val_loader, Loader) and isinstance(trainer.train_loader, Loader)  # no fallback
    source = ImageFolder(str(betons["val_dir"]))
    images, labels = zip(*trainer.val_loader, strict=True)
    images, labels = torch.cat(images), torch.cat(labels)
    assert images.shape == (len(source), 3, SIZE, SIZE) and images.dtype == torch.uint8
    assert labels.tolist() == source.targets  # sequential order = ImageFolder order
    # val_res = 32 with crop ratio 1 on 32-px images is the identity: pixels match PIL's decode of the source JPEG
    # (exactly for images stored raw, within JPEG-90 error for the re-compressed half). Colour photos catch RGB/BGR.
    reference = torch.stack([torch.from_numpy(np.array(img)).permute(2, 0, 1) for img, _ in source])
    err = (images.float() - reference.float()).abs().mean(dim=(1, 2, 3))
    assert err.max() < 8.0, err.max()
    assert (err == 0).sum() >= len(source) // 5  # compress_probability 0.5: some images are stored raw


def test_train_loader_follows_progressive_resizing(trained):
    trainer, _, _ = trained
    assert ffcv_main.train_resolution(0, trainer.cfg.resolution) == 32
    assert ffcv_main.train_resolution(1, trainer.cfg.resolution) == 64
    trainer.decoder.output_size = (64, 64)
    images, target = next(iter(trainer.train_loader))
    assert images.shape == (32, 3, 64, 64) and target.shape == (32,)


# ------------------------------------------------------------------------------------------------ training
def test_one_epoch_trains_evaluates_and_checkpoints(trained, betons):
    trainer, stats, out = trained
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0]
    assert log[0]["val_n"] == 32 and 0.0 <= log[0]["top_1"] <= 100.0 and np.isfinite(log[0]["train_loss"])
    assert log[0]["alpha"] == pytest.approx(0.1)  # MaxSup α at epoch 0 (paper: 0.1 → 0.2)
    assert log[0]["train_res"] == 32
    # maxsup.timing: every step timed (FFCV's JIT included), images/s = images trained ÷ training seconds
    assert log[0]["train_samples"] == 96 and log[0]["train_seconds"] > 0 and log[0]["eval_seconds"] > 0
    assert log[0]["train_images_per_s"] == pytest.approx(96 / log[0]["train_seconds"], rel=1e-9)
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 0
    assert ckpt["arch"] == {"name": "cifar_resnet10", "num_classes": 4, "kwargs": {"blurpool": True, "width": 8}}
    assert any(k.endswith("blur_filter") for k in ckpt["model"])  # BlurPool before strided convs
    assert not any(k.startswith("module.") for k in ckpt["model"])
    assert ckpt["eval_transform"]["img_size"] == 32
    # the name of each label, from the train .beton's sidecar (hub convert reads the head's class order from it)
    sidecar = json.loads(Path(f"{betons['train']}.classes.json").read_text())["classes"]
    assert ckpt["classes"] == sidecar == ["c0_fmnist", "c1_fmnist", "c2_fmnist", "c3_photo"]


def test_dotted_override_takes_effect(trained):
    trainer, _, out = trained
    params = json.loads((out / "params.json").read_text())
    assert params["lr.lr"] == 0.05 and params["model.kwargs"] == {"width": 8}
    assert params["loss.options.alpha_start"] == 0.1  # the loss class's default, resolved
    assert params["loader"] == "ffcv.loader.loader.Loader"
    iters = len(trainer.train_loader)
    expected = ffcv_main.learning_rate((iters - 1) / iters, trainer.cfg.lr, 2)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(expected)  # the optimizer really used 0.05
    assert trainer.model.layer1[0].conv1.out_channels == 8


def test_resume_continues_and_eval_only_reproduces_metrics(trained, betons):
    _, _, out = trained
    before = torch.load(out / "checkpoint.pth", weights_only=True)
    resumed = ffcv_main.ImageNetTrainer(ffcv_main.load_config(
        _argv(betons, out, "--lr.lr=0.05", "--training.epochs=2", "--training.resume=auto",
              *RAMP)))
    _KEEP_ALIVE.append(resumed)
    assert resumed.start_epoch == 1 and resumed.train_loader.next_epoch == 1
    for key, value in before["model"].items():
        assert torch.equal(resumed.module.state_dict()[key], value), key
    assert resumed.optimizer.state_dict()["state"].keys() == before["optimizer"]["state"].keys()
    resumed.train()
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1]
    assert log[1]["train_res"] == 64 and log[1]["alpha"] == pytest.approx(0.2)  # ramp and α schedule continue
    after = torch.load(out / "checkpoint.pth", weights_only=True)
    assert after["epoch"] == 1
    assert not torch.equal(after["model"]["fc.weight"], before["model"]["fc.weight"])
    # Evaluating the saved checkpoint reproduces the logged validation metrics exactly.
    evaluator = ffcv_main.ImageNetTrainer(ffcv_main.load_config(
        _argv(betons, out / "eval", "--training.eval_only=true", f"--training.resume={out / 'checkpoint.pth'}")))
    _KEEP_ALIVE.append(evaluator)
    stats = evaluator.train()
    assert stats["top_1"] == log[1]["top_1"] and stats["val_nll"] == pytest.approx(log[1]["val_nll"], rel=1e-6)


def test_accumulation_run_record_and_tensorboard(trained, tmp_path):
    """training.accum_steps: one optimizer step per N batches, a last incomplete group skipped (the module's trained
    trainer, 96 images in batches of 32: 3 batches, N = 2 → 1 step); run.json; TensorBoard scalars = the log line.
    Runs after the tests that read the trainer's state; the trainer's files are not touched."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from maxsup.errors import UserError
    from maxsup.training import ScalarWriter

    trainer, _, out = trained
    cfg = copy.deepcopy(trainer.cfg)
    cfg.training.accum_steps = 2
    assert ffcv_main.per_process_batch(cfg, 1) == 16 and ffcv_main.per_process_batch(cfg, 2) == 8
    with pytest.raises(UserError, match="not divisible by the 3 processes"):
        ffcv_main.per_process_batch(cfg, 3)
    rec = json.loads((out / "run.json").read_text())
    assert (rec["trainer"], rec["model"], rec["loss"], rec["log_file"], rec["alpha"]) == (
        "ffcv", "cifar_resnet10", "maxsup", "log.jsonl", [0.1, 0.2])
    assert rec["config"]["total_batch_size"] == 32 and rec["config"]["per_process_batch_size"] == 32
    assert rec["provenance"]["ffcv"] and rec["provenance"]["world_size"] == 1

    saved_cfg, saved_dir = trainer.cfg, trainer.output_dir
    steps, step = [], trainer.optimizer.step
    try:
        trainer.cfg, trainer.output_dir = cfg, tmp_path
        trainer.optimizer.step = lambda *a, **k: (steps.append(1), step(*a, **k))[1]
        trainer.tensorboard = ScalarWriter(tmp_path / "tb")
        stats = trainer.train_loop(1)
        assert len(steps) == 1 and np.isfinite(stats["train_loss"])
        trainer.eval_and_log(1, stats)
        trainer.tensorboard.close()
    finally:
        trainer.cfg, trainer.output_dir, trainer.optimizer.step = saved_cfg, saved_dir, step
    log = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert acc.Scalars("top_1")[0].step == 1 and acc.Scalars("top_1")[0].value == pytest.approx(log["top_1"])
    assert {"train_loss", "lr", "alpha", "val_nll", "val_ece", "train_misclassified"} <= set(acc.Tags()["scalars"])


@pytest.mark.slow
def test_torchrun_two_process_gloo_epoch(betons, tmp_path, repo_root, python_exe):
    """Real DDP: torchrun, 2 CPU processes over gloo, FFCV's distributed loaders, one epoch + validation."""
    out = tmp_path / "ddp"
    odd = write_imagenet.main(["--data-dir", str(betons["val_dir"]), "--write-path", str(tmp_path / "val31.beton"),
                               "--subset", "31", "--num-workers", "1"])  # 31 images: ranks get 16 and 15
    cmd = [python_exe, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(FFCV_DIR / "main.py"), *_argv(betons, out, "--data.num_workers=1"), f"--data.val_dataset={odd}"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=repo_root, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0]
    assert log[0]["val_n"] == 31  # each of the 31 val images counted once over the two ranks (no padding)
    assert json.loads((out / "params.json").read_text())["world_size"] == 2
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["model"])


# ------------------------------------------------------------------------------------------------ test sets, ReaL
A_INDICES = (6, 11, 13, 309)  # ImageNet-1k indices of four of ImageNet-A's 200 classes
REAL_INDICES = (7, 100, 420, 999)  # the wnids of the ReaL val folder's four classes (model output k → REAL_INDICES[k])
KEEP = (7, 8, 6, 8)  # images per class copied from the val split: 29 in all


def _copy_split(src: Path, dst: Path, indices: tuple[int, ...], names) -> None:
    """The val split's class folders (sorted) as ImageNet wnid folders ``imagenet_wnids()[indices[k]]``, file ``i``
    of the whole copy named ``names(i)``."""
    from maxsup.data.imagenet_variants import imagenet_wnids

    i = 0
    for k, folder in enumerate(sorted(d for d in src.iterdir() if d.is_dir())):
        out = dst / imagenet_wnids()[indices[k]]
        out.mkdir(parents=True)
        for f in sorted(folder.iterdir())[:KEEP[k]]:
            (out / names(i)).write_bytes(f.read_bytes())
            i += 1


@pytest.fixture(scope="module")
def test_sets(betons, tmp_path_factory) -> dict[str, Path]:
    """An ImageNet-A-like folder written with --layout imagenet-a, and an ImageNet val-like folder (wnid folders of
    ILSVRC2012_val_%08d.JPEG files, numbers in random order) written as usual. All images stored raw, so the pixels
    FFCV decodes are PIL's."""
    root = tmp_path_factory.mktemp("ffcv_test_sets")
    _copy_split(betons["val_dir"], root / "a", A_INDICES, lambda i: f"{i:04d}.jpg")
    numbers = np.random.default_rng(1).choice(np.arange(1, 50001), size=sum(KEEP), replace=False)
    _copy_split(betons["val_dir"], root / "val", REAL_INDICES, lambda i: f"ILSVRC2012_val_{numbers[i]:08d}.JPEG")
    common = ["--compress-probability", "0", "--num-workers", "2"]
    return {"a_dir": root / "a", "val_dir": root / "val",
            "a": write_imagenet.main(["--layout", "imagenet-a", "--data-dir", str(root / "a"),
                                      "--write-path", str(root / "a.beton"), *common]),
            "val": write_imagenet.main(["--data-dir", str(root / "val"), "--write-path", str(root / "val.beton"),
                                        *common])}


def _torch_logits(ckpt: Path | dict, folder: Path, cfg: dict,
                  features: bool = False) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The checkpoint's logits (or penultimate ``features``) on PIL's decode of ``folder`` (ImageFolder order), in
    torch without FFCV: (logits, ImageFolder targets, file names)."""
    from torchvision.datasets import ImageFolder

    from maxsup.models import model_from_checkpoint

    ds = ImageFolder(str(folder))
    x = torch.stack([torch.from_numpy(np.array(img)).permute(2, 0, 1) for img, _ in ds]).float()
    mean, std = (torch.tensor(cfg["data"][k]).view(1, 3, 1, 1) * 255 for k in ("mean", "std"))
    model = model_from_checkpoint(ckpt if isinstance(ckpt, dict) else torch.load(ckpt, weights_only=True)).eval()
    if features:
        model.fc = torch.nn.Identity()
    with torch.no_grad():
        logits = model((x - mean) / std)
    return logits, torch.tensor(ds.targets), [Path(p).name for p, _ in ds.samples]


@pytest.fixture(scope="module")
def eval_ckpts(trained, betons, test_sets, tmp_path_factory) -> dict[str, Path]:
    """Checkpoints to evaluate: the module's one-epoch run with its head replaced by the class means of its centred
    features on the 29 images (a nearest-class-mean classifier, so the predictions vary whatever one epoch
    learned): ``real`` with 4 outputs, ``a`` with 1000 (the four rows at A_INDICES, and a distractor class 500 that
    wins every unrestricted argmax)."""
    _, _, out = trained
    root = tmp_path_factory.mktemp("ffcv_eval_ckpts")
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    cfg = ffcv_main.load_config(_argv(betons, root))
    feats, targets, _ = _torch_logits(ckpt, test_sets["val_dir"], cfg, features=True)
    mu = feats.mean(0)
    weight = torch.stack([(feats[targets == k] - mu).mean(0) for k in range(4)])
    ckpt["model"].update({"fc.weight": weight, "fc.bias": -weight @ mu})
    torch.save(ckpt, root / "real.pth")
    wide, bias = torch.zeros(1000, weight.shape[1]), torch.zeros(1000)
    wide[list(A_INDICES)], bias[list(A_INDICES)] = weight, -weight @ mu
    bias[500] = 1e3
    ckpt["model"].update({"fc.weight": wide, "fc.bias": bias})
    ckpt["arch"] = {**ckpt["arch"], "num_classes": 1000}
    ckpt["optimizer"]["state"] = {}  # the 4-class head's momentum
    torch.save(ckpt, root / "a.pth")
    return {"real": root / "real.pth", "a": root / "a.pth"}


def test_imagenet_a_beton_scores_the_logits_of_its_classes(betons, test_sets, eval_ckpts, tmp_path):
    """--layout imagenet-a: labels 0..3 with the 1k class_indices in the sidecar; eval_only of a 1000-class model
    scores its logits at those indices, as computed here in torch."""
    from ffcv.reader import Reader

    side = json.loads(Path(f"{test_sets['a']}.classes.json").read_text())
    assert side["layout"] == "imagenet-a" and side["class_indices"] == list(A_INDICES) and "files" not in side
    assert Reader(str(test_sets["a"])).metadata["f1"].tolist() == [k for k, n in enumerate(KEEP) for _ in range(n)]
    cfg = ffcv_main.load_config(_argv(betons, tmp_path / "eval", "--training.eval_only=true",
                                      "--model.num_classes=1000", f"--training.resume={eval_ckpts['a']}",
                                      f"--data.val_dataset={test_sets['a']}"))
    trainer = ffcv_main.ImageNetTrainer(cfg)
    _KEEP_ALIVE.append(trainer)
    stats = trainer.train()

    logits, targets, _ = _torch_logits(eval_ckpts["a"], test_sets["a_dir"], cfg)
    restricted = logits[:, list(A_INDICES)]
    want = 100.0 * (restricted.argmax(1) == targets).double().mean().item()
    assert (logits.argmax(1) == 500).all()  # unrestricted, every image would be wrong
    assert want > 0 and stats["val_n"] == sum(KEEP)
    assert stats["top_1"] == pytest.approx(want)
    nll = torch.nn.functional.cross_entropy(restricted.double(), targets).item()
    assert stats["val_nll"] == pytest.approx(nll, rel=1e-5)


def _write_relabels(path: Path, files: list[str], logits: torch.Tensor) -> tuple[int, int]:
    """A real.json (50,000 entries) in which image i of ``files`` (with top-1 output logits.argmax(1)[i]) is left
    out, hit, missed, hit for i % 4 = 0, 1, 2, 3. Returns (hits, scored images)."""
    pred = [REAL_INDICES[p] for p in logits.argmax(1).tolist()]  # ImageNet-1k index of each prediction
    assert len(set(pred)) > 1
    real: list[list[int]] = [[] for _ in range(50000)]
    for i, (name, p) in enumerate(zip(files, pred, strict=True)):
        other = REAL_INDICES[(REAL_INDICES.index(p) + 1) % 4]
        real[int(name[15:23]) - 1] = [[], [p], [other], [other, p]][i % 4]
    path.write_text(json.dumps(real))
    return sum(i % 4 in (1, 3) for i in range(len(files))), sum(i % 4 > 0 for i in range(len(files)))


def test_real_top1_on_a_val_beton_matches_the_relabels(betons, test_sets, eval_ckpts, tmp_path):
    """data.real_labels: the sidecar keeps the val file names in .beton order; ReaL sets (written here from the
    model's own predictions, computed in torch) make a known number of hits, misses and left-out images."""
    from maxsup.data.imagenet_variants import imagenet_wnids

    side = json.loads(Path(f"{test_sets['val']}.classes.json").read_text())
    assert side["classes"] == [imagenet_wnids()[i] for i in REAL_INDICES]
    ckpt = eval_ckpts["real"]
    cfg = ffcv_main.load_config(_argv(betons, tmp_path / "eval", "--training.eval_only=true",
                                      f"--training.resume={ckpt}", f"--data.val_dataset={test_sets['val']}"))
    logits, targets, files = _torch_logits(ckpt, test_sets["val_dir"], cfg)
    assert side["files"] == files
    hits, n = _write_relabels(tmp_path / "real.json", files, logits)
    cfg.data.real_labels = str(tmp_path / "real.json")
    trainer = ffcv_main.ImageNetTrainer(cfg)
    _KEEP_ALIVE.append(trainer)
    stats = trainer.train()
    assert (stats["test_n_real"], n) == (sum(KEEP) - 8, sum(KEEP) - 8)
    assert stats["test_real_acc1"] == pytest.approx(100.0 * hits / n)
    want = 100.0 * (logits.argmax(1) == targets).double().mean().item()
    assert stats["top_1"] == pytest.approx(want)
    log = json.loads((tmp_path / "eval" / "log.jsonl").read_text())
    assert (log["test_real_acc1"], log["test_n_real"]) == (stats["test_real_acc1"], n)


@pytest.mark.slow
def test_torchrun_two_process_real_top1_gathers_predictions_in_order(betons, test_sets, eval_ckpts, tmp_path,
                                                                      repo_root, python_exe):
    """Two gloo ranks read images r, r + 2, ... of the 29-image val .beton; ReaL matches file names in .beton order,
    so each rank's predictions are put back in that order before scoring (same numbers as one process)."""
    ckpt = eval_ckpts["real"]
    argv = _argv(betons, tmp_path / "ddp", "--training.eval_only=true", f"--training.resume={ckpt}",
                 f"--data.val_dataset={test_sets['val']}", f"--data.real_labels={tmp_path / 'real.json'}",
                 "--data.num_workers=1")
    cfg = ffcv_main.load_config(argv)
    logits, _, files = _torch_logits(ckpt, test_sets["val_dir"], cfg)
    hits, n = _write_relabels(tmp_path / "real.json", files, logits)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([python_exe, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(FFCV_DIR / "main.py"), *argv], capture_output=True, text=True, cwd=repo_root, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = json.loads((tmp_path / "ddp" / "log.jsonl").read_text())
    assert (log["val_n"], log["test_n_real"]) == (sum(KEEP), n)
    assert log["test_real_acc1"] == pytest.approx(100.0 * hits / n)


def _edit_sidecar(beton: Path, tmp_path: Path, edit) -> Path:
    copy_ = tmp_path / beton.name
    copy_.write_bytes(beton.read_bytes())
    side = Path(f"{beton}.classes.json").read_text()
    Path(f"{copy_}.classes.json").write_text(edit(json.loads(side)) if callable(edit) else edit)
    return copy_


@pytest.mark.parametrize("case", ["too_few_class_indices", "unreadable", "stale", "real_without_files"])
def test_bad_sidecar_or_real_request_is_one_line(case, betons, test_sets, eval_ckpts, tmp_path, capsys):
    edits = {"too_few_class_indices": ("a", lambda s: json.dumps({**s, "class_indices": s["class_indices"][:3],
                                                                    "classes": s["classes"][:3]}),
                                       "has labels up to 3 but"),
             "unreadable": ("a", '{"classes": [', "is not a sidecar written by write_imagenet.py"),
             "stale": ("val", lambda s: json.dumps({**s, "num_samples": 50}), "describes 50 samples but"),
             # as an older write_imagenet.py wrote it: class names only
             "real_without_files": ("val", lambda s: json.dumps({"classes": s["classes"]}),
                                    "rewrite it from the val folder with this version of Conv/ffcv/write_imagenet.py")}
    which, edit, expected = edits[case]
    beton = _edit_sidecar(test_sets[which], tmp_path, edit)
    ckpt, extra = (eval_ckpts["a"], "--model.num_classes=1000") if which == "a" else \
        (eval_ckpts["real"], "--data.real_labels=true")
    argv = _argv(betons, tmp_path / "eval", "--training.eval_only=true", f"--training.resume={ckpt}",
                 f"--data.val_dataset={beton}", extra)
    msg = _cli_error(capsys, ffcv_main.main, argv)
    assert expected in msg and str(beton) in msg, msg


def test_imagenet_a_val_is_checked_against_the_train_classes():
    """Per-epoch validation on an ImageNet-A .beton: its class names must be the train classes at class_indices."""
    from maxsup.data.imagenet_variants import imagenet_wnids

    wnids = list(imagenet_wnids())
    train = ffcv_main.Beton("train.beton", 5000, wnids)
    val = ffcv_main.Beton("a.beton", 29, [wnids[i] for i in A_INDICES], "imagenet-a", list(A_INDICES))
    ffcv_main.check_classes({"train": train, "val": val}, 1000)
    shifted = val._replace(class_indices=[i + 1 for i in A_INDICES])
    with pytest.raises(UserError, match=f"label 0: '{wnids[7]}' vs '{wnids[6]}'"):
        ffcv_main.check_classes({"train": train, "val": shifted}, 1000)


# ------------------------------------------------------------------------------------------------ pure functions
def test_adaptive_ls_teacher_is_checkpointed(betons, tmp_path):
    out = tmp_path / "als"
    trainer = ffcv_main.ImageNetTrainer(ffcv_main.load_config(
        _argv(betons, out, "--loss.name=adaptive-ls", "--logging.stats_every=1")))
    _KEEP_ALIVE.append(trainer)
    stats = trainer.train()
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert float(ckpt["criterion"]["best_score"]) == pytest.approx(stats["top_1"])  # first validation: the best
    teacher = {k[len("teacher."):]: v for k, v in ckpt["criterion"].items() if k.startswith("teacher.")}
    assert teacher.keys() == ckpt["model"].keys() and all(torch.equal(teacher[k], ckpt["model"][k]) for k in teacher)
    log = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert 0 <= log["alpha"] <= 0.2 and log["train_maxsup_penalty"] >= 0


def test_loss_options_are_validated_by_the_registry(betons, tmp_path):
    with pytest.raises(UserError, match="loss 'maxsup' has no option 'dense'"):
        ffcv_main.load_config(_argv(betons, tmp_path, "--loss.opts=[dense=true]"))
    with pytest.raises(UserError, match="alpha denominator must be one of E-1, E, got 'T'"):
        ffcv_main.load_config(_argv(betons, tmp_path, "--loss.alpha_denominator=T"))
    with pytest.raises(UserError, match="loss 'ce' has no option 'alpha_start'"):
        ffcv_main.load_config(_argv(betons, tmp_path, "--loss.name=ce", "--loss.alpha_start=0.3"))
    with pytest.raises(UserError, match="unknown loss 'maxsupp'"):
        ffcv_main.load_config(_argv(betons, tmp_path, "--loss.name=maxsupp"))
    cfg = ffcv_main.load_config(_argv(betons, tmp_path, "--loss.name=focal", "--loss.opts=[gamma=1.5]"))
    assert ffcv_main.resolved_config(cfg, 1)["loss"]["options"] == {"gamma": 1.5}
    cfg = ffcv_main.load_config(_argv(betons, tmp_path, "--loss.opts=[alpha_end=0.3]", "--loss.alpha_start=0"))
    loss = ffcv_main.resolved_config(cfg, 1)["loss"]
    assert loss["options"] == {"alpha_start": 0.0, "alpha_end": 0.3, "alpha_denominator": "E-1"}
    assert (loss["alpha_start"], loss["alpha_end"]) == (0.0, None)  # as given; the resolved values are the options
    lp = ffcv_main.resolved_config(ffcv_main.load_config(_argv(betons, tmp_path, "--loss.name=lp")), 1)["loss"]
    assert lp["options"] == {"beta": 2e-3}  # LP has no α schedule


def test_schedules_match_the_recipes():
    step = {"lr": 0.8, "lr_schedule_type": "step", "step_length": 30, "step_ratio": 0.1}
    assert [ffcv_main.learning_rate(e, step, 90) for e in (0, 29.9, 30, 60.5)] == pytest.approx(
        [0.8, 0.8, 0.08, 0.008])
    cosine = {"lr": 0.85, "lr_schedule_type": "cosine", "warmup_epochs": 0, "min_lr": 0.0}
    assert ffcv_main.learning_rate(0, cosine, 200) == pytest.approx(0.85)
    assert ffcv_main.learning_rate(100, cosine, 200) == pytest.approx(0.425)
    assert ffcv_main.learning_rate(200, cosine, 200) == pytest.approx(0.0, abs=1e-12)
    tri = {"lr": 1.7, "lr_schedule_type": "triangular", "lr_peak_epoch": 2}
    assert [ffcv_main.learning_rate(e, tri, 88) for e in (0, 1, 2, 45, 88)] == pytest.approx(
        [1.7e-4, (1.7e-4 + 1.7) / 2, 1.7, 1.7 * 43 / 86, 0.0])
    ramp = {"min_res": 160, "max_res": 192, "start_ramp": 65, "end_ramp": 76, "res_step": 32}
    assert [ffcv_main.train_resolution(e, ramp) for e in (0, 65, 70, 76, 87)] == [160, 160, 160, 192, 192]


def test_recipe_configs_resolve_to_the_paper_and_release_settings():
    cfg = cfg_paper = ffcv_main.load_config(["--config-file", str(FFCV_DIR / "configs" / "rn50_paper_200ep.yaml")])
    assert (cfg.training.epochs, cfg.lr.lr, cfg.lr.lr_schedule_type, cfg.training.batch_size) == (
        200, 0.85, "cosine", 2048)
    assert cfg.training.weight_decay == 1e-4 and cfg.training.momentum == 0.9
    rel = ffcv_main.load_config(["--config-file", str(FFCV_DIR / "configs" / "rn50_release_90ep_step.yaml")])
    assert (rel.training.epochs, rel.lr.lr, rel.lr.lr_schedule_type, rel.dist.sync_bn) == (90, 0.8, "step", True)
    # the released MaxSuppression's λ = 0.1 + 0.1·e/E (0.1989 at the last epoch); the paper config reaches 0.2
    for config, last in ((rel, 0.1 + 0.1 * 89 / 90), (cfg_paper, 0.2)):
        opts = ffcv_main.loss_options(config.loss)
        epochs = config.training.epochs
        schedule = AlphaSchedule(opts["alpha_start"], opts["alpha_end"], epochs, opts["alpha_denominator"])
        assert schedule(epochs - 1) == pytest.approx(last, abs=1e-12)
    for name, arch in (("rn18", "resnet18"), ("rn101", "resnet101"), ("mbv2", "mobilenet_v2")):
        cfg = ffcv_main.load_config(["--config-file", str(FFCV_DIR / "configs" / f"{name}.yaml")])  # extends rn50
        assert (cfg.model.arch, cfg.training.epochs, cfg.lr.lr_schedule_type, cfg.resolution.start_ramp) == (
            arch, 200, "cosine", 148)


def test_ffcv_imagenet_habits_and_typed_overrides(tmp_path):
    """--config-file, ffcv-imagenet's 0/1 for booleans, values typed by their key (a string key keeps its text),
    `extends`, and one error line naming the key for a wrong type, an unknown key or the old --config flag."""
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("extends: " + str(FFCV_DIR / "configs" / "rn50_paper_200ep.yaml") + "\nlr: {lr: 0.5}\n")
    cfg = ffcv_main.load_config(["--config-file", str(recipe), "--data.in_memory=0", "--validation.lr_tta", "0",
                                 "--data.val_dataset=/data/1e3", "--data.real_labels=true", "--data.num_workers=3"])
    assert (cfg.lr.lr, cfg.training.epochs, cfg.data.in_memory, cfg.validation.lr_tta) == (0.5, 200, False, False)
    assert (cfg.data.val_dataset, cfg.data.real_labels, cfg.data.num_workers) == ("/data/1e3", "true", 3)
    for argv, msg in (
            (["--data.num_workers=2.5"], "config key 'data.num_workers' in the command line: Value '2.5'"),
            (["--lr.peak=3"], "unknown config key 'lr.peak' in the command line; did you mean 'lr.lr_peak_epoch'?"),
            (["--config", "x.toml"], "--config is now --config-file"),
            (["--config-file", str(tmp_path / "none.yaml")], "config file not found"),
            (["--lr.lr_schedule_type=cyclic"], "lr.lr_schedule_type = 'cyclic' is not one of triangular, step")):
        with pytest.raises(UserError, match=re.escape(msg)):
            ffcv_main.load_config(argv)
    recipe.write_text("training:\n  epochs: [1\n")
    with pytest.raises(UserError, match="is not valid YAML"):
        ffcv_main.load_config(["--config-file", str(recipe)])


# ------------------------------------------------------------------------------------------------ bad input
def _cli_error(capsys, fn, argv) -> str:
    return cli_error(capsys, fn, argv, clear=True)  # clear: drop earlier output (e.g. a writer's progress bar)


def test_missing_beton_is_one_line(capsys, betons, tmp_path):
    argv = _argv(betons, tmp_path, f"--data.val_dataset={tmp_path / 'nope.beton'}")
    assert "nope.beton" in _cli_error(capsys, ffcv_main.main, argv)


def test_beton_without_expected_fields_is_one_line(capsys, betons, tmp_path):
    from ffcv.fields import FloatField, IntField
    from ffcv.writer import DatasetWriter

    wrong = tmp_path / "wrong.beton"
    DatasetWriter(str(wrong), {"x": FloatField(), "y": IntField()}, num_workers=1).from_indexed_dataset(
        [(float(i), i) for i in range(8)])
    msg = _cli_error(capsys, ffcv_main.main, _argv(betons, tmp_path, f"--data.train_dataset={wrong}"))
    assert "'image' (RGBImageField)" in msg and "wrong.beton" in msg


def test_unknown_config_key_names_the_nearest_valid_key(repo_root, python_exe):
    proc = subprocess.run([python_exe, str(FFCV_DIR / "main.py"), "--lr.lrr=0.85"], capture_output=True,
                          text=True, cwd=repo_root, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: unknown config key 'lr.lrr' in the command line; did you mean 'lr.lr'?"]


def test_writer_missing_source_folder_is_one_line(capsys, tmp_path):
    msg = _cli_error(capsys, write_imagenet.main, ["--data-dir", str(tmp_path / "absent"),
                                                   "--write-path", str(tmp_path / "x.beton")])
    assert "source folder not found" in msg and "absent" in msg
    assert not (tmp_path / "x.beton").exists()


# ------------------------------------------------------------------------------------------------ reliability
def test_nan_loss_is_one_line_and_keeps_the_checkpoint(trained, betons, tmp_path, capsys):
    _, _, good = trained
    (tmp_path / "checkpoint.pth").write_bytes((good / "checkpoint.pth").read_bytes())
    before = (tmp_path / "checkpoint.pth").read_bytes()
    # --training.overwrite: a new run over the folder's checkpoint, which the NaN must leave as it was
    msg = _cli_error(capsys, ffcv_main.main, _argv(betons, tmp_path, "--lr.lr=1e30", "--training.overwrite=true"))
    assert "at epoch 0, step" in msg and "--lr.lr" in msg and "--training.clip_grad_norm" in msg, msg
    assert (tmp_path / "checkpoint.pth").read_bytes() == before
    assert not (tmp_path / "log.jsonl").exists()  # nothing logged for an epoch that was never saved


def test_resume_refuses_changed_loss_and_eval_refuses_other_head(trained, betons, tmp_path, capsys):
    _, _, good = trained
    ckpt = good / "checkpoint.pth"
    msg = _cli_error(capsys, ffcv_main.main, _argv(betons, tmp_path, "--lr.lr=0.05", "--training.epochs=2",
                                                    "--loss.name=ce", f"--training.resume={ckpt}", *RAMP))
    assert f"cannot resume {ckpt}" in msg and '--loss.name maxsup → ce' in msg and "--training.epochs" not in msg
    msg = _cli_error(capsys, ffcv_main.main, _argv(betons, tmp_path, "--lr.lr=0.05", "--training.epochs=2",
                                                    "--loss.opts=[alpha_end=0.3]", f"--training.resume={ckpt}", *RAMP))
    assert "--loss.opts=[alpha_end=...] 0.2 → 0.3" in msg and "--loss.name" not in msg
    classes = json.loads(Path(f"{betons['val']}.classes.json").read_text())["classes"]
    assert classes == ["c0_fmnist", "c1_fmnist", "c2_fmnist", "c3_photo"]
    msg = _cli_error(capsys, ffcv_main.main, _argv(betons, tmp_path, "--model.num_classes=5"))
    assert "holds 4 classes but model.num_classes = 5" in msg


def test_a_run_folder_is_not_restarted_by_a_fresh_run_nor_written_by_eval_only(trained, betons, tmp_path, capsys):
    """One run per folder: a fresh run into a finished run's folder is refused (its checkpoint, log and run.json
    stay); eval_only into it prints its metrics and writes nothing there (analysis.collect would read its log)."""
    _, _, good = trained
    out = tmp_path / "run"
    out.mkdir()
    for p in good.iterdir():
        if p.is_file():
            (out / p.name).write_bytes(p.read_bytes())
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    msg = _cli_error(capsys, ffcv_main.main, _argv(betons, out, "--lr.lr=0.05", "--training.epochs=2", *RAMP))
    assert f"{out} already holds a run" in msg
    assert "--training.resume=auto" in msg and "--training.overwrite=true" in msg
    stats = ffcv_main.main(_argv(betons, out, "--training.eval_only=true",
                                 f"--training.resume={out / 'checkpoint.pth'}"))
    assert 0.0 <= stats["top_1"] <= 100.0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_train_and_val_betons_must_list_the_same_classes(betons, tmp_path, capsys):
    val = tmp_path / "val.beton"
    val.write_bytes(betons["val"].read_bytes())
    Path(f"{val}.classes.json").write_text(json.dumps({"classes": ["c0_fmnist", "c1_fmnist", "c3_photo", "x"]}))
    msg = _cli_error(capsys, ffcv_main.main, [*_argv(betons, tmp_path), f"--data.val_dataset={val}"])
    assert "label 2: 'c2_fmnist' vs 'c3_photo'" in msg


@pytest.fixture(scope="module")
def reference_run(betons, tmp_path_factory) -> Path:
    """An uninterrupted 2-epoch run with one torch thread (as the OMP_NUM_THREADS=1 subprocesses below)."""
    out = tmp_path_factory.mktemp("ffcv_reference")
    with torch_threads(1):
        ffcv_main.ImageNetTrainer(ffcv_main.load_config(_argv(betons, out, *EXACT))).train()
    return out


EXACT = ("--training.epochs=2", "--lr.lr=0.05", "--loss.name=ols")


def _same_run(ref: Path, out: Path) -> None:
    a, b = (torch.load(d / "checkpoint.pth", weights_only=True) for d in (ref, out))
    assert a["epoch"] == b["epoch"] == 1 and "partial" not in b
    for key in ("model", "criterion"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    volatile = ("timestamp", "relative_time", "train_seconds", "eval_seconds", "train_images_per_s")
    logs = [[{k: v for k, v in json.loads(line).items() if k not in volatile}
             for line in (d / "log.jsonl").read_text().splitlines()] for d in (ref, out)]
    assert logs[0] == logs[1] and [r["epoch"] for r in logs[1]] == [0, 1]


@pytest.mark.slow
def test_kill9_at_a_random_step_then_resume_is_bit_exact(betons, reference_run, tmp_path, repo_root, python_exe):
    """2 epochs × 3 steps; SIGKILL (test hook) before a random step of epoch 1, or inside the last checkpoint write.
    Augmentation (per-image reseeded numba RNG) and sample order replay, so the end is bit-identical."""
    seed = int.from_bytes(os.urandom(4), "little")
    rng = np.random.default_rng(seed)
    kill_at = f"step:{rng.integers(4, 7)}" if rng.random() < 0.7 else "save:2"
    print(f"MAXSUP_KILL_AT={kill_at} (seed {seed})")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}

    def run(*extra: str, **env_extra: str) -> subprocess.CompletedProcess:
        argv = _argv(betons, tmp_path, *EXACT, *extra)
        return subprocess.run([python_exe, str(FFCV_DIR / "main.py"), *argv], capture_output=True, text=True,
                              cwd=repo_root, env={**env, **env_extra}, timeout=300)

    killed = run(MAXSUP_KILL_AT=kill_at)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert torch.load(tmp_path / "checkpoint.pth", weights_only=True)["epoch"] == 0
    resumed = run("--training.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _same_run(reference_run, tmp_path)


def test_preemption_mid_epoch_resumes_exactly(betons, reference_run, tmp_path):
    """SIGUSR1 during a random step (test hook, in process): checkpoint at the next step boundary, then the resumed
    run ends bit-identical to an uninterrupted one."""
    from maxsup.training import faults

    seed = int.from_bytes(os.urandom(4), "little")
    step = int(np.random.default_rng(seed).choice([1, 2, 4, 5]))  # not an epoch's last step (3 per epoch)
    print(f"preemption during step {step} (seed {seed})")
    faults.reset()
    os.environ[faults.KILL_ENV] = f"step:{step}:USR1"
    try:
        with torch_threads(1):
            ffcv_main.ImageNetTrainer(ffcv_main.load_config(_argv(betons, tmp_path, *EXACT))).train()
            del os.environ[faults.KILL_ENV]
            ckpt = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
            assert ckpt["partial"]["step"] == step % 3 and ckpt["epoch"] == step // 3 - 1
            resumed = ffcv_main.load_config(_argv(betons, tmp_path, *EXACT, "--training.resume=auto"))
            ffcv_main.ImageNetTrainer(resumed).train()
    finally:
        os.environ.pop(faults.KILL_ENV, None)
    _same_run(reference_run, tmp_path)


def test_estimate_times_train_loop_and_writes_nothing(betons, tmp_path, capsys):
    """--estimate N: warm-up + N steps of train_loop on the .beton, one JSON line, no output folder."""
    out = tmp_path / "est"
    capsys.readouterr()
    rec = ffcv_main.main([*_argv(betons, out, "--training.batch_size=16", "--training.epochs=4", *RAMP),
                          "--estimate", "2"])
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")]
    assert len(line) == 1 and json.loads(line[0])["seconds_per_step"] == rec["seconds_per_step"]
    assert rec["estimate"] is True and rec["trainer"] == "ffcv" and not out.exists()
    assert rec["steps_per_epoch"] == 6 and rec["resolution"] == 64  # 96 images // 16; the last epoch's resolution
    assert rec["seconds_total"] == pytest.approx(rec["seconds_per_step"] * 6 * 4)
    rec = ffcv_main.main([*_argv(betons, out, "--model.num_classes=1000", "--training.batch_size=8"),
                          "--data.train_dataset=", "--estimate=1", "--estimate-synthetic"])
    assert rec["data"] == "synthetic" and rec["steps_per_epoch"] == 1_281_167 // 8 and not out.exists()
    msg = _cli_error(capsys, ffcv_main.main, [*_argv(betons, out), "--estimate", "x"])
    assert "--estimate needs a number of steps" in msg


def test_sidecar_of_an_incomplete_imagenetv2_names_all_1000_labels(tmp_path):
    """ImageNetV2 with three of its 1000 class folders: the labels stay 1k indices, so the sidecar names all 1000
    wnids (a 1000-class head then passes check_classes), not the three folders present."""
    from maxsup.data.imagenet_variants import ImageNetV2Folder, imagenet_wnids

    for c in (0, 10, 999):
        (tmp_path / str(c)).mkdir()
        Image.new("RGB", (8, 8), (c % 256, 0, 0)).save(tmp_path / str(c) / "x.png")
    ds = ImageNetV2Folder(tmp_path)
    labels = np.array(ds.targets)
    side = write_imagenet.sidecar(ds, labels, "imagenetv2")
    assert labels.tolist() == [0, 10, 999] and side["classes"] == list(imagenet_wnids())
    beton = ffcv_main.Beton("v2.beton", 3, side["classes"], "imagenetv2", None)
    ffcv_main.check_classes({"val": beton}, 1000)
    with pytest.raises(UserError, match="holds 1000 classes"):
        ffcv_main.check_classes({"val": beton}, 3)
