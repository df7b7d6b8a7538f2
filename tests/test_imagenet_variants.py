"""ImageNetV2 / -A / -R / -Sketch / ReaL readers (maxsup.data.imagenet_variants) and their evaluation paths
(common_resnet --test-only, maxsup.hub evaluate, analysis/) on tiny folders of real Fashion-MNIST images."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

from maxsup import hub
from maxsup.checkpoint import atomic_save
from maxsup.data.fashion_mnist import FashionMNIST
from maxsup.data.imagenet_variants import (
    ImageNetV2Folder,
    RestrictLogits,
    WnidFolder,
    imagenet_wnids,
    real_accuracy,
)
from maxsup.data.transforms import eval_transform, transform_spec
from maxsup.errors import UserError
from maxsup.metrics import ClassificationMeter
from maxsup.models import arch_spec, create_model

TRAIN_DIR = Path(__file__).resolve().parents[1] / "Conv" / "common_resnet"
SPEC = transform_spec(28, 1.0, mean=(0.5,) * 3, std=(0.5,) * 3)
V2_CLASSES = (0, 1, 2, 10, 100, 999)
A_INDICES = (6, 11, 13, 309)  # four of ImageNet-A's 200 classes (ImageNet-1k indices)


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
    torch.manual_seed(0)
    model = create_model("cifar_resnet10", 1000, width=4)
    atomic_save({"model": model.state_dict(), "arch": arch_spec("cifar_resnet10", 1000, width=4),
                 "eval_transform": SPEC}, root / "ckpt.pth")
    return {"v2": root / "v2", "a": root / "a", "ckpt": root / "ckpt.pth", "model": model}


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
    names = ("train", "presets", "utils", "sampler")
    saved = {n: sys.modules.pop(n) for n in names if n in sys.modules}
    sys.path.insert(0, str(TRAIN_DIR))
    try:
        trainer = importlib.import_module("train")
    finally:
        sys.path.remove(str(TRAIN_DIR))
        for n in names:
            sys.modules.pop(n, None)
        sys.modules.update(saved)
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


def test_deit_eval_on_imagenet_a_scores_its_200_logits(sets, tmp_path):
    deit_dir = Path(__file__).resolve().parents[1] / "Deit"
    names = ("main", "engine", "datasets", "samplers")
    saved = {n: sys.modules.pop(n) for n in names if n in sys.modules}
    sys.path.insert(0, str(deit_dir))
    try:
        deit_main = importlib.import_module("main")
    finally:
        sys.path[:] = [p for p in sys.path if p != str(deit_dir)]
        for n in names:
            sys.modules.pop(n, None)
        sys.modules.update(saved)
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
