"""ImageNetV2 / -A / -R / -Sketch / ReaL readers (maxsup.data.imagenet_variants) and their evaluation paths
(Deit --eval and per-epoch, common_resnet --test-only and per-epoch, maxsup.hub evaluate, analysis/) on tiny folders
of real Fashion-MNIST images; ReaL on a fake ImageNet val folder (3 wnids, 12 ILSVRC2012_val_* files) with real.json
files written here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flat_import import load_flat
from PIL import Image
from torch.utils.data import Subset
from torchvision.datasets import ImageFolder

from analysis import calibration, extract, gradcam
from maxsup import hub
from maxsup.cli import run_cli
from maxsup.data.fashion_mnist import FashionMNIST
from maxsup.data.imagenet_variants import (
    ImageNetV2Folder,
    RealScorer,
    RestrictLogits,
    WnidFolder,
    imagenet_wnids,
    real_accuracy,
    real_labels,
)
from maxsup.data.transforms import eval_transform, transform_spec
from maxsup.data.zipcache import write_zip_cache
from maxsup.errors import UserError
from maxsup.metrics import ClassificationMeter
from maxsup.models import arch_spec, create_model, model_from_checkpoint
from maxsup.training import atomic_save, load_checkpoint

REPO = Path(__file__).resolve().parents[1]
TRAIN_DIR = REPO / "Conv" / "common_resnet"
DEIT_DIR = REPO / "Deit"
SPEC = transform_spec(28, 1.0, mean=(0.5,) * 3, std=(0.5,) * 3)
V2_CLASSES = (0, 1, 2, 10, 100, 999)
A_INDICES = (6, 11, 13, 309)  # four of ImageNet-A's 200 classes (ImageNet-1k indices)
VAL_INDICES = (7, 300, 999)  # the fake ImageNet val's classes (1k indices)
W0, W1, W2 = VAL_INDICES
VAL_NUMBERS = (50000, 17, 4321, 5, 25000, 99, 42, 9999, 123, 1000, 49999, 256)  # ILSVRC2012_val_%08d, 4 per class
#: ReaL sets (1k indices) by val number: empty (left out), one or several labels, a class outside the folder (500)
REAL_SETS = {50000: [W0], 17: [W1], 4321: [W2, W0], 5: [], 25000: [W1, 500], 99: [500], 42: [W0, W1, W2],
             9999: [W2], 123: [W2, W1], 1000: [], 49999: [W0], 256: [W1]}


def _load_common_resnet():
    return load_flat(TRAIN_DIR, "train", ("presets", "utils", "sampler"))


def _load_deit():
    return load_flat(DEIT_DIR, "main", ("engine", "datasets", "samplers"))


def _write_real(path: Path, sets: dict[int, list[int]]) -> Path:
    """A real.json: 50,000 lists, ``sets[n]`` at ILSVRC2012_val_n, the rest empty."""
    labels = [[] for _ in range(50000)]
    for number, valid in sets.items():
        labels[number - 1] = valid
    path.write_text(json.dumps(labels))
    return path


def _val_number(path: str) -> int:
    return int(Path(path).name[len("ILSVRC2012_val_"):][:8])


def _fill(folder: Path, images: np.ndarray) -> None:
    folder.mkdir(parents=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"ILSVRC2012_val_{i + 1:08d}.png")


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("imnet")
    data = FashionMNIST(train=False, limit_per_class=3).data  # 30 real 28×28 images
    for k, c in enumerate(V2_CLASSES):
        _fill(root / "v2" / str(c), data[3 * k: 3 * k + 3])
    for k, c in enumerate(A_INDICES):
        _fill(root / "a" / imagenet_wnids()[c], data[3 * k: 3 * k + 3])
    # ImageNet val: 4 images of each of 3 wnids (ImageFolder labels 0, 1, 2 ≠ their 1k indices), named by val index
    for k, c in enumerate(VAL_INDICES):
        folder = root / "val" / imagenet_wnids()[c]
        folder.mkdir(parents=True)
        for j in range(4):
            img = Image.fromarray(data[18 + 4 * k + j]).convert("RGB")
            img.save(folder / f"ILSVRC2012_val_{VAL_NUMBERS[4 * k + j]:08d}.JPEG", quality=90)
    (root / "imnet").mkdir()
    for split in ("train", "val"):  # the trainers' <data-path>/{train,val}: here the same 12 images
        (root / "imnet" / split).symlink_to(root / "val")
    torch.manual_seed(0)
    model = create_model("cifar_resnet10", 1000, width=4)
    atomic_save({"model": model.state_dict(), "arch": arch_spec("cifar_resnet10", 1000, width=4),
                 "eval_transform": SPEC}, root / "ckpt.pth")
    return {"v2": root / "v2", "a": root / "a", "ckpt": root / "ckpt.pth", "model": model, "val": root / "val",
            "imnet": root / "imnet", "real": _write_real(root / "real.json", REAL_SETS)}


def test_imagenetv2_labels_are_the_folder_integers(sets):
    ds = ImageNetV2Folder(sets["v2"])
    labels = sorted({(Path(p).parent.name, y) for p, y in ds.samples})
    assert labels == sorted((str(c), c) for c in V2_CLASSES)
    scrambled = ImageFolder(str(sets["v2"]))  # string order 0, 1, 10, 100, 2, 999: "10" would get label 2
    assert scrambled.class_to_idx["10"] == 2 and ds.class_to_idx["10"] == 10
    assert ds.classes[1] == imagenet_wnids()[1]
    with pytest.raises(UserError, match="must be named 0 … 999"):
        ImageNetV2Folder(sets["a"])


def test_imagenet_a_labels_and_restricted_logits(sets):
    ds = WnidFolder(sets["a"], subset=True)
    assert ds.class_indices == list(A_INDICES) and sorted(set(ds.targets)) == [0, 1, 2, 3]
    full = WnidFolder(sets["a"])
    assert sorted(set(full.targets)) == list(A_INDICES)
    logits = torch.randn(5, 1000)
    assert torch.equal(RestrictLogits(torch.nn.Identity(), ds.class_indices)(logits), logits[:, list(A_INDICES)])



def test_analysis_scores_incomplete_imagenetv2_and_sketch_with_the_1k_head(sets, tmp_path):
    """Six of the 1000 class folders: every image keeps its 1k label (none dropped, none shifted), the 1000-class
    checkpoint is accepted, and Grad-CAM on ImageNet-A explains each image's own class among the 200 logits."""
    sketch = tmp_path / "sketch"
    sketch.mkdir()
    for c in V2_CLASSES:  # the same images under their wnids
        (sketch / imagenet_wnids()[c]).symlink_to(sets["v2"] / str(c), target_is_directory=True)
    ds = ImageNetV2Folder(sets["v2"], eval_transform(SPEC))
    want = _expected(sets["model"], ds)
    common = ["--checkpoint", f"R={sets['ckpt']}", "--no-progress", "--batch-size", "7"]
    for name, root in (("imagenetv2", sets["v2"]), ("imagenet-sketch", sketch)):
        rows = calibration.main([*common, "--dataset", name, "--data-path", str(root),
                                 "--out", str(tmp_path / name)])["rows"]
        assert rows["R"]["n"] == 18 and rows["R"]["nll"] == pytest.approx(want["nll"], rel=1e-5), name
    res = gradcam.main(["--checkpoint", f"R={sets['ckpt']}", "--dataset", "imagenet-a", "--data-path",
                        str(sets["a"]), "--num-images", "4", "--target", "top1", "--out", str(tmp_path / "cam")])
    a = WnidFolder(sets["a"], eval_transform(SPEC), subset=True)
    with torch.no_grad():
        logits = sets["model"].eval()(torch.stack([a[i][0] for i in res["indices"]]))[:, list(A_INDICES)]
    assert res["labels"] == [0, 1, 2, 3] and res["predicted_class"]["R"] == logits.argmax(1).tolist()
    assert res["class_names"] == [imagenet_wnids()[c] for c in A_INDICES]

def test_real_accuracy_skips_empty_sets():
    labels = [[], [3, 4], [7], [1]]
    paths = [f"val/n0/ILSVRC2012_val_{i:08d}.JPEG" for i in (1, 2, 3, 4)]
    assert real_accuracy(torch.tensor([0, 4, 7, 2]), paths, labels) == {"real_acc1": pytest.approx(200 / 3), "n": 3}


def _expected(model, ds, keep=None) -> dict:
    meter = ClassificationMeter()
    with torch.no_grad():
        x = torch.stack([ds[i][0] for i in range(len(ds))])
        logits = model.eval()(x)
    meter.update(logits if keep is None else logits[:, keep], torch.tensor(ds.targets))
    return meter.compute()


def test_common_resnet_and_hub_evaluate_restrict_imagenet_a(sets, capsys):
    trainer = _load_common_resnet()
    torch.set_num_threads(1)
    want = _expected(sets["model"], WnidFolder(sets["a"], eval_transform(SPEC), subset=True), list(A_INDICES))
    got = trainer.run_cli(trainer.cli, ["--dataset", "imagenet-a", "--data-path", str(sets["a"]), "--test-only",
                                        "--resume", str(sets["ckpt"]), "-j", "0", "-b", "5"])
    assert got["acc1"] == pytest.approx(want["acc1"]) and got["nll"] == pytest.approx(want["nll"], rel=1e-5)
    capsys.readouterr()
    hub.main(["evaluate", str(sets["ckpt"]), "--dataset", "imagenetv2", "--data-path", str(sets["v2"]),
              "--workers", "0", "--device", "cpu"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    want = _expected(sets["model"], ImageNetV2Folder(sets["v2"], eval_transform(SPEC)))
    assert printed["n"] == 18 and printed["nll"] == pytest.approx(want["nll"], rel=1e-5)
    with pytest.raises(SystemExit):
        trainer.run_cli(trainer.cli, ["--dataset", "imagenetv2", "--data-path", str(sets["v2"]), "--epochs", "1"])
    assert "is a test set" in capsys.readouterr().err
    # a training run reports the test sets beside its own val split
    data = sets["a"].parent / "folder"
    if not data.exists():
        data.mkdir()
        (data / "train").symlink_to(sets["a"])
        (data / "val").symlink_to(sets["a"])
    out = sets["a"].parent / "run"
    trainer.run_cli(trainer.cli, ["--dataset", "imagefolder", "--data-path", str(data), "--num-classes", "1000",
                                  "--model", "cifar_resnet10", "--model-kwargs", "width=4", "--train-crop-size", "28",
                                  "--val-crop-size", "28", "--epochs", "1", "-b", "6", "-j", "0", "--print-freq", "100",
                                  "--extra-val", f"imagenetv2={sets['v2']}", f"imagenet-a={sets['a']}",
                                  "--output-dir", str(out)])
    log = json.loads((out / "log.txt").read_text().splitlines()[-1])
    assert log["imagenetv2_n"] == 18 and log["imagenet-a_n"] == 12 and 0 <= log["imagenet-a_acc1"] <= 100


def test_deit_training_reports_extra_val_sets(sets, tmp_path):
    """--extra-val in Deit: a 1000-class run (one image per ImageNet wnid) logs ImageNetV2 and ImageNet-A beside its
    val split after every epoch; ImageNet-A is scored on its classes' logits, as a hand computation from the saved
    checkpoint gives."""
    data = FashionMNIST(train=False, limit_per_class=3).data
    root = tmp_path / "imnet1k"
    for i, wnid in enumerate(imagenet_wnids()):
        (root / "train" / wnid).mkdir(parents=True)
        Image.fromarray(data[i % len(data)]).convert("RGB").save(root / "train" / wnid / "x.png")
    (root / "val").symlink_to(root / "train")
    deit_main = _load_deit()
    torch.set_num_threads(1)
    out = tmp_path / "run"
    deit_main.run_cli(deit_main.cli, ["--data-set", "IMNET", "--data-path", str(root), *DEIT_TINY, "--batch-size",
                                      "125", "--epochs", "1", "--extra-val", f"imagenetv2={sets['v2']}",
                                      f"imagenet-a={sets['a']}", "--output_dir", str(out)])
    log = json.loads((out / "log.txt").read_text().splitlines()[-1])
    assert log["test_n"] == 1000 and log["imagenetv2_n"] == 18 and log["imagenet-a_n"] == 12
    ckpt = load_checkpoint(out / "checkpoint.pth")
    model = model_from_checkpoint(ckpt)
    spec = ckpt["eval_transform"]
    want = _expected(model, WnidFolder(sets["a"], eval_transform(spec), subset=True), list(A_INDICES))
    assert log["imagenet-a_acc1"] == pytest.approx(want["acc1"]) and log["imagenet-a_nll"] == pytest.approx(
        want["nll"], rel=1e-4)
    want = _expected(model, ImageNetV2Folder(sets["v2"], eval_transform(spec)))
    assert log["imagenetv2_nll"] == pytest.approx(want["nll"], rel=1e-4)


@pytest.mark.parametrize("cli", ["deit", "common_resnet"])
def test_extra_val_needs_a_1000_class_model_and_a_known_set(cli, sets, tmp_path, capsys):
    """One error line: the test sets are labelled in ImageNet-1k's index space, and NAME must be one of them; the
    run writes nothing before it refuses."""
    out = tmp_path / "run"
    for extra, message in ((f"imagenetv2={sets['v2']}", "needs a 1000-class model; this run trains 3 classes"),
                           (f"imagenet-c={sets['v2']}", "--extra-val expects NAME=PATH with NAME one of")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            if cli == "deit":
                deit_main = _load_deit()
                deit_main.run_cli(deit_main.cli, ["--data-set", "IMNET", "--data-path", str(sets["imnet"]),
                                                  *DEIT_TINY, "--epochs", "1", "--extra-val", extra,
                                                  "--output_dir", str(out)])
            else:
                trainer = _load_common_resnet()
                trainer.run_cli(trainer.cli, ["--dataset", "imagefolder", "--data-path", str(sets["imnet"]),
                                              *CR_TINY, "--epochs", "1", "--extra-val", extra, "--output-dir",
                                              str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code != 0 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
        assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())


def test_deit_eval_on_imagenet_a_scores_its_200_logits(sets, tmp_path):
    deit_main = _load_deit()
    kw = {"img_size": 28, "patch_size": 7, "embed_dim": 32, "depth": 1, "num_heads": 2}
    torch.manual_seed(0)
    vit = create_model("vit_tiny_patch16_224", 1000, **kw)
    atomic_save({"model": vit.state_dict()}, tmp_path / "vit.pth")
    stats = deit_main.run_cli(deit_main.cli, [
        "--data-set", "IMNET_A", "--data-path", str(sets["a"]), "--eval", "--resume", str(tmp_path / "vit.pth"),
        "--model", "vit_tiny_patch16_224", "--input-size", "28", "--model-kwargs", json.dumps(kw),
        "--eval-crop-ratio", "1.0", "--batch-size", "8", "--num_workers", "0", "--output_dir", str(tmp_path / "o")])
    spec = transform_spec(28, 1.0, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), interpolation="bicubic")
    want = _expected(vit, WnidFolder(sets["a"], eval_transform(spec), subset=True), list(A_INDICES))
    assert stats["n"] == 12 and stats["nll"] == pytest.approx(want["nll"], rel=1e-4)
    assert stats["acc1"] == pytest.approx(want["acc1"])


# --------------------------------------------------------------------------------------------------------------------
# ReaL labels in every evaluation path (Deit, common_resnet, analysis, hub) on a fake ImageNet val folder
# --------------------------------------------------------------------------------------------------------------------
CR_TINY = ["--model", "cifar_resnet10", "--model-kwargs", "width=4", "--train-crop-size", "28", "--val-crop-size",
           "28", "-b", "4", "-j", "0", "--print-freq", "100"]
DEIT_TINY = ["--model", "vit_tiny_patch16_224", "--input-size", "28",
             "--model-kwargs", '{"patch_size": 7, "embed_dim": 32, "depth": 1, "num_heads": 2}',
             "--batch-size", "4", "--mixup", "0", "--cutmix", "0", "--aa", "none", "--reprob", "0", "--color-jitter",
             "0", "--eval-crop-ratio", "1.0", "--warmup-epochs", "0", "--lr", "1e-3", "--unscale-lr", "--num_workers",
             "0", "--print-freq", "0", "--device", "cpu"]


def _real_by_hand(model: torch.nn.Module, spec: dict, val: Path, real_sets: dict[int, list[int]]
                  ) -> tuple[dict, list[int]]:
    """ReaL top-1 from the model's own predictions on ImageFolder(val), each folder's wnid and each file's val
    number; also returns the predictions (ImageFolder order)."""
    folder = ImageFolder(str(val), transform=eval_transform(spec))
    with torch.no_grad():
        preds = model.eval()(torch.stack([folder[i][0] for i in range(len(folder))])).argmax(1).tolist()
    index = {w: i for i, w in enumerate(imagenet_wnids())}
    scored = [index[folder.classes[p]] in real_sets[_val_number(path)]
              for p, (path, _) in zip(preds, folder.samples, strict=True) if real_sets[_val_number(path)]]
    return {"real_acc1": 100.0 * sum(scored) / len(scored), "n_real": len(scored)}, preds


def _tailored_sets(preds: list[int], val: Path) -> dict[int, list[int]]:
    """ReaL sets built around the predictions: image i (ImageFolder order) gets, by i mod 4, no labels (left out),
    the predicted class, another folder class, or the predicted class and one outside the folder: 6 hits of 9."""
    sets = {}
    for i, (p, (path, _)) in enumerate(zip(preds, ImageFolder(str(val)).samples, strict=True)):
        pred, other = VAL_INDICES[p], VAL_INDICES[(p + 1) % 3]  # sorted wnids ↔ increasing 1k indices
        sets[_val_number(path)] = [[], [pred], [other], [500, pred]][i % 4]
    return sets


@pytest.fixture(scope="module")
def resnet_run(sets, tmp_path_factory) -> Path:
    """One common_resnet epoch (with EMA) on the 12 val images, reporting ReaL: the run folder."""
    out = tmp_path_factory.mktemp("cr_real")
    torch.set_num_threads(1)
    trainer = _load_common_resnet()
    trainer.run_cli(trainer.cli, [
        "--dataset", "imagefolder", "--data-path", str(sets["imnet"]), *CR_TINY, "--epochs", "1", "--lr", "0.1",
        "--model-ema", "--model-ema-steps", "1", "--real-labels", str(sets["real"]), "--output-dir", str(out)])
    return out


def test_real_scorer_maps_folder_labels_subsets_and_shards(sets):
    labels = json.loads(sets["real"].read_text())
    folder = ImageFolder(str(sets["val"]))
    numbers = [_val_number(p) for p, _ in folder.samples]
    assert numbers[:4] == [5, 17, 4321, 50000]  # sorted file names, not creation order
    scorer = RealScorer.from_dataset(folder, labels)
    preds = torch.tensor([0, 1, 2, 1, 0, 2, 2, 0, 1, 1, 2, 0])
    hits = sum(VAL_INDICES[p] in REAL_SETS[n] for p, n in zip(preds.tolist(), numbers, strict=True) if REAL_SETS[n])
    assert 0 < hits < 10 and scorer.counts(preds) == (hits, 10)  # 10: two empty sets; the [500] image is a miss
    assert real_accuracy(torch.tensor(VAL_INDICES)[preds], [p for p, _ in folder.samples], labels) == {
        "real_acc1": pytest.approx(10.0 * hits), "n": 10}  # the same in 1k-index space
    # DDP: each rank scores its ShardSampler slice; the counts add up to the single-process ones
    shards = [scorer.counts(preds[r::2], range(r, 12, 2)) for r in range(2)]
    assert (shards[0][0] + shards[1][0], shards[0][1] + shards[1][1]) == (hits, 10)
    assert scorer.counts(preds[1::2], range(0, 12, 2)) != shards[0]  # a shard matched to the wrong files differs
    # Deit's --classes 2,0: labels are relabelled, so model output 0 is wnid W2 and output 1 is W0
    target_subset = load_flat(DEIT_DIR, "datasets", ()).TargetSubset
    keep = [i for i, t in enumerate(folder.targets) if t in (0, 2)]
    subset = target_subset(folder, keep, {2: 0, 0: 1})
    sub_preds = torch.tensor([0, 1] * 4)
    want = [(W2, W0)[p] in REAL_SETS[numbers[i]] for p, i in zip(sub_preds.tolist(), keep, strict=True)
            if REAL_SETS[numbers[i]]]
    assert RealScorer.from_dataset(subset, labels).counts(sub_preds) == (sum(want), len(want))
    assert RealScorer.result(*RealScorer.from_dataset(Subset(folder, [3, 1]), labels).counts(torch.tensor([0, 0]))) \
        == {"real_acc1": 50.0, "n_real": 2}  # 50000: [W0] hit, 17: [W1] miss


@pytest.mark.parametrize("content, message", [
    ("[[1]]", r"must be a JSON list of 50000 label lists \(one per ImageNet val image\), not 1 entries"),
    ('{"labels": []}', "not a JSON dict"),
    (json.dumps([[]] * 49999 + [3]), r"entry 49999 \(ILSVRC2012_val_00050000\) is 3, not a list of class indices"),
    (json.dumps([[]] * 2 + [["n01440764"]] + [[]] * 49997), r"entry 2 \(ILSVRC2012_val_00000003\) is \[\"n0144"),
    (json.dumps([[999, 1000]] + [[]] * 49999), "entry 0 .* not a list of class indices 0..999"),
    ("[[1], [", "cannot read the ReaL labels"),
])
def test_real_labels_file_must_hold_50000_label_lists(content, message, tmp_path):
    (tmp_path / "real.json").write_text(content)
    with pytest.raises(UserError, match=message):
        real_labels(tmp_path / "real.json")


def test_real_scorer_refuses_names_it_cannot_match(sets):
    labels = [[1]] * 50000
    wnids = list(imagenet_wnids()[:2])
    for bad in ("val/n01/img_0001.JPEG", "ILSVRC2012_val_00000000.JPEG", "ILSVRC2012_val_00050001.JPEG",
                "ILSVRC2012_val_00000001_copy.JPEG", "ILSVRC2012_val_00000001.JPEG/x.png"):
        with pytest.raises(UserError, match="is not an ImageNet val file name"):
            RealScorer(["ILSVRC2012_val_00000002.JPEG", bad], wnids, labels)
    with pytest.raises(UserError, match="are the same ImageNet val image"):
        RealScorer(["a/ILSVRC2012_val_00000002.JPEG", "b/ILSVRC2012_val_00000002.png"], wnids, labels)
    with pytest.raises(UserError, match=r"class folders named by ImageNet wnids .*found \['tshirt'\]"):
        RealScorer(["ILSVRC2012_val_00000002.JPEG"], [wnids[0], "tshirt"], labels)
    with pytest.raises(UserError, match="original file names .* a FashionMNIST does not keep"):
        RealScorer.from_dataset(FashionMNIST(train=False, limit_per_class=1), labels)


def test_common_resnet_reports_real_each_epoch_and_under_test_only(sets, resnet_run, tmp_path):
    log = json.loads((resnet_run / "log.txt").read_text().splitlines()[-1])
    ckpt = load_checkpoint(resnet_run / "checkpoint.pth")
    want, preds = _real_by_hand(model_from_checkpoint(ckpt), ckpt["eval_transform"], sets["val"], REAL_SETS)
    assert len(set(preds)) > 1  # varied predictions: a misordered match would change the count
    assert log["test_real_acc1"] == pytest.approx(want["real_acc1"]) and log["test_n_real"] == 10
    ema, _ = _real_by_hand(model_from_checkpoint(ckpt, key="model_ema"), ckpt["eval_transform"], sets["val"],
                           REAL_SETS)
    assert log["test_ema_real_acc1"] == pytest.approx(ema["real_acc1"]) and log["test_ema_n_real"] == 10
    tailored = _write_real(tmp_path / "tailored.json", _tailored_sets(preds, sets["val"]))
    trainer = _load_common_resnet()
    got = trainer.run_cli(trainer.cli, ["--dataset", "imagefolder", "--data-path", str(sets["imnet"]), *CR_TINY,
                                        "--test-only", "--resume", str(resnet_run / "checkpoint.pth"),
                                        "--real-labels", str(tailored)])
    assert got["real_acc1"] == pytest.approx(600 / 9) and got["n_real"] == 9
    assert got["acc1"] == pytest.approx(log["test_acc1"])


def test_analysis_calibration_extract_and_hub_report_real(sets, resnet_run, tmp_path, capsys):
    ckpt = load_checkpoint(resnet_run / "checkpoint.pth")
    _, preds = _real_by_hand(model_from_checkpoint(ckpt), ckpt["eval_transform"], sets["val"], REAL_SETS)
    tailored = _write_real(tmp_path / "tailored.json", _tailored_sets(preds, sets["val"]))
    common = ["--checkpoint", f"R={resnet_run / 'checkpoint.pth'}", "--dataset", "imagefolder", "--data-path",
              str(sets["imnet"]), "--no-progress", "--out", str(tmp_path / "out")]
    rows = calibration.main([*common, "--real-labels", str(tailored)])["rows"]
    assert rows["R"]["real_acc1"] == pytest.approx(600 / 9) and rows["R"]["n_real"] == 9
    assert "ReaL acc@1" in (tmp_path / "out" / "calibration.md").read_text()
    # --classes 2,0 with the 3-class head: outputs stay the three folders' classes; only those 8 images are scored
    row = extract.main([*common, "--classes", "2,0", "--real-labels", str(sets["real"])])["rows"]["R"]
    folder = ImageFolder(str(sets["val"]))
    want = [VAL_INDICES[p] in REAL_SETS[_val_number(path)] for p, (path, t) in zip(preds, folder.samples, strict=True)
            if t in (0, 2) and REAL_SETS[_val_number(path)]]
    assert row["n"] == 8 and row["n_real"] == len(want) == 6
    assert row["real_acc1"] == pytest.approx(100.0 * sum(want) / len(want))
    capsys.readouterr()
    hub.main(["evaluate", str(resnet_run / "checkpoint.pth"), "--data-path", str(sets["val"]), "--workers", "0",
              "--device", "cpu", "--real-labels", str(tailored)])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["real_acc1"] == pytest.approx(600 / 9) and printed["n_real"] == 9


@pytest.fixture(scope="module")
def deit_run(sets, tmp_path_factory) -> Path:
    """Two Deit epochs (EMA on, as by default) on the 12 val images, reporting ReaL: the run folder."""
    out = tmp_path_factory.mktemp("deit_real")
    deit_main = _load_deit()
    torch.set_num_threads(1)
    deit_main.run_cli(deit_main.cli, ["--data-set", "IMNET", "--data-path", str(sets["imnet"]), *DEIT_TINY,
                                      "--epochs", "2", "--lr", "5e-3", "--real-labels", str(sets["real"]),
                                      "--output_dir", str(out)])
    return out


@pytest.fixture(scope="module")
def zip_cache(sets, tmp_path_factory) -> Path:
    """The 12 val images as the authors' --cache format (flat val members; labels and wnids from the maps)."""
    root = tmp_path_factory.mktemp("zip_real")
    for split in ("train", "val"):
        write_zip_cache(sets["val"], root / f"{split}.zip", root / f"{split}_map.txt", split=split)
    return root


def test_deit_reports_real_in_training_eval_and_zip_cache(sets, deit_run, zip_cache, tmp_path):
    log = [json.loads(line) for line in (deit_run / "log.txt").read_text().splitlines()]
    ckpt = load_checkpoint(deit_run / "checkpoint.pth")
    want, preds = _real_by_hand(model_from_checkpoint(ckpt), ckpt["eval_transform"], sets["val"], REAL_SETS)
    assert len(set(preds)) > 1
    assert log[-1]["test_real_acc1"] == pytest.approx(want["real_acc1"]) and log[-1]["test_n_real"] == 10
    ema, _ = _real_by_hand(model_from_checkpoint(ckpt, key="model_ema"), ckpt["eval_transform"], sets["val"],
                           REAL_SETS)
    assert log[-1]["test_ema_real_acc1"] == pytest.approx(ema["real_acc1"])
    tailored = _write_real(tmp_path / "tailored.json", _tailored_sets(preds, sets["val"]))
    deit_main = _load_deit()
    for data in (["--data-path", str(sets["imnet"])], ["--data-path", str(zip_cache), "--cache"]):
        stats = deit_main.run_cli(deit_main.cli, ["--data-set", "IMNET", *data, *DEIT_TINY, "--eval", "--resume",
                                                  str(deit_run / "checkpoint.pth"), "--real-labels", str(tailored)])
        assert stats["real_acc1"] == pytest.approx(600 / 9) and stats["n_real"] == 9, data
        assert stats["acc1"] == pytest.approx(log[-1]["test_acc1"])


def _torchrun(script: Path, argv: list[str], cwd: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), *argv], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_real_under_two_process_gloo_sums_the_rank_shards(sets, deit_run, resnet_run, zip_cache, tmp_path):
    """Each rank scores its own shard (Deit --dist-eval, Deit's per-rank zip shards, common_resnet's sharded eval);
    with predictions that differ from image to image, only a correct per-rank match gives 6 hits of 9."""
    tailored = {}
    for name, run in (("deit", deit_run), ("resnet", resnet_run)):
        ckpt = load_checkpoint(run / "checkpoint.pth")
        _, preds = _real_by_hand(model_from_checkpoint(ckpt), ckpt["eval_transform"], sets["val"], REAL_SETS)
        tailored[name] = _write_real(tmp_path / f"{name}.json", _tailored_sets(preds, sets["val"]))
    for data in (["--data-path", str(sets["imnet"]), "--dist-eval"], ["--data-path", str(zip_cache), "--cache"]):
        out = _torchrun(DEIT_DIR / "main.py", ["--data-set", "IMNET", *data, *DEIT_TINY, "--eval", "--resume",
                                               str(deit_run / "checkpoint.pth"), "--real-labels",
                                               str(tailored["deit"])], tmp_path)
        stats = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
        assert stats["test_real_acc1"] == pytest.approx(600 / 9) and stats["test_n_real"] == 9, data
        assert stats["test_n"] == 12
    out = _torchrun(TRAIN_DIR / "train.py", ["--dataset", "imagefolder", "--data-path", str(sets["imnet"]), *CR_TINY,
                                             "--device", "cpu", "--test-only", "--resume",
                                             str(resnet_run / "checkpoint.pth"), "--real-labels",
                                             str(tailored["resnet"])], TRAIN_DIR)
    assert "Test ReaL: acc@1 66.667 (n=9)" in out and "(n=12)" in out


@pytest.fixture(scope="module")
def bad_real_inputs(sets, tmp_path_factory) -> dict[str, Path]:
    """A real.json of 1000 entries, a missing one, and wnid folders whose files lost their val names."""
    root = tmp_path_factory.mktemp("real_bad")
    (root / "short.json").write_text(json.dumps([[1]] * 1000))
    for path in sets["val"].rglob("*.JPEG"):
        dst = root / "renamed" / "val" / path.parent.name / f"img_{_val_number(str(path)):05d}.JPEG"
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(path.read_bytes())
    (root / "renamed" / "train").symlink_to(root / "renamed" / "val")
    return {"short": root / "short.json", "missing": root / "missing.json", "renamed": root / "renamed"}


def _run_real_cli(cli: str, data: Path, real: Path | None, resnet_ckpt: Path, out: Path, dataset: str = "") -> None:
    """One evaluation path with ``--real-labels real`` on ``data`` (<data>/{train,val}); ``dataset``: a non-ImageNet
    --dataset to pass instead (fmnist)."""
    flag = ["--real-labels", *([str(real)] if real else [])]
    if cli == "deit":
        deit_main = _load_deit()
        where = ["--data-set", "FMNIST"] if dataset else ["--data-set", "IMNET", "--data-path", str(data)]
        deit_main.run_cli(deit_main.cli, [*where, *DEIT_TINY, "--epochs", "1", *flag])
    elif cli == "common_resnet":
        trainer = _load_common_resnet()
        where = ["--dataset", "fmnist"] if dataset else ["--dataset", "imagefolder", "--data-path", str(data)]
        trainer.run_cli(trainer.cli, [*where, *CR_TINY, "--epochs", "1", *flag])
    elif cli == "analysis":
        where = ["--dataset", "fmnist"] if dataset else ["--dataset", "imagefolder", "--data-path", str(data)]
        run_cli(calibration.main, ["--checkpoint", f"R={resnet_ckpt}", *where, "--no-progress", "--out",
                                   str(out), *flag])
    else:
        hub.main(["evaluate", str(resnet_ckpt), "--data-path", str(data / "val"), "--workers", "0", "--device", "cpu",
                  *flag])


BAD_REAL = {"short": "short.json must be a JSON list of 50000 label lists (one per ImageNet val image), not 1000 "
                     "entries",
            "missing": "cannot read the ReaL labels",
            "renamed": "img_00005.JPEG is not an ImageNet val file name (ILSVRC2012_val_00000001.JPEG",
            "fmnist": "--real-labels scores ImageNet val"}


@pytest.mark.parametrize("cli, bad", [(cli, bad) for cli in ("deit", "common_resnet", "analysis", "hub")
                                      for bad in BAD_REAL if (cli, bad) != ("hub", "fmnist")])  # hub: folders only
def test_bad_real_input_is_one_error_line(cli, bad, sets, bad_real_inputs, resnet_run, tmp_path, capsys):
    message = BAD_REAL[bad]
    data = bad_real_inputs["renamed"] if bad == "renamed" else sets["imnet"]
    real = None if bad in ("renamed", "fmnist") else bad_real_inputs[bad]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        _run_real_cli(cli, data, real, resnet_run / "checkpoint.pth", tmp_path, dataset="fmnist" * (bad == "fmnist"))
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code != 0 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
