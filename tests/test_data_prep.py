"""data/ scripts on small real images (Fashion-MNIST from the Debian package): zip cache + maps, ImageNet32,
Fashion-MNIST exports, and the trainers' readers on the results."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from flat_import import load_file
from PIL import Image

from maxsup.data.downsampled import DownsampledImageNet
from maxsup.data.fashion_mnist import FashionMNIST
from maxsup.data.zipcache import ZipCacheDataset, parse_map

REPO = Path(__file__).resolve().parents[1]
WNIDS = ["n01440764", "n01443537", "n01484850"]  # sorted; the authors' zip order would put them at 538, 735, 432


def _script(name: str):
    """Import data/<name>.py (a script folder, not a package) as a module."""
    return load_file(REPO / "data" / f"{name}.py", f"data_{name}")


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory) -> Path:
    """A tiny ImageNet-style ImageFolder: train/ (3 per class) and val/ (2 per class) of real RGB JPEGs of varied
    sizes, with ImageNet-like unique file names."""
    root = tmp_path_factory.mktemp("imagenet")
    fm = FashionMNIST(train=False, classes=[0, 1, 2], limit_per_class=5)
    per_class: dict[int, int] = {}
    for i, (img, label) in enumerate(fm):
        k = per_class[label] = per_class.get(label, 0) + 1
        split = "train" if k <= 3 else "val"
        folder = root / split / WNIDS[label]
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{WNIDS[label]}_{i}.JPEG" if split == "train" else f"ILSVRC2012_val_{i:08d}.JPEG"
        img.convert("RGB").resize((40 + 4 * i, 36 + 2 * i)).save(folder / name, quality=95)
    return root


def test_prepare_imagenet_zip_round_trips_and_deit_reads_it(imagenet_like, tmp_path, capsys):
    out = tmp_path / "zip"
    assert _script("prepare_imagenet_zip").main(["--src", str(imagenet_like), "--out", str(out), "--verify"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {"train": {"images": 9, "classes": 3, "verified": 1}, "val": {"images": 6, "classes": 3,
                                                                                    "verified": 1}}
    assert sorted(p.name for p in out.iterdir()) == ["train.zip", "train_map.txt", "val.zip", "val_map.txt"]

    # every member holds the original file's bytes, under the authors' naming, with sorted-wnid labels
    for split in ("train", "val"):
        entries = parse_map(out / f"{split}_map.txt")
        with zipfile.ZipFile(out / f"{split}.zip") as zf:
            for member, label in entries:
                src = next((imagenet_like / split).glob(f"*/{Path(member).name}"))
                assert zf.read(member) == src.read_bytes()
                assert label == WNIDS.index(src.parent.name)
                assert member == (f"{src.parent.name}/{src.name}" if split == "train" else src.name)

    # Deit/main.py --cache reads the result: same images and labels as the ImageFolder path
    spec = importlib.util.spec_from_file_location("deit_main_for_data_tests", REPO / "Deit" / "main.py")
    deit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(deit)
    from torchvision.datasets import ImageFolder

    for is_train, split in ((True, "train"), (False, "val")):
        args = deit.get_args_parser().parse_args(["--data-path", str(out), "--cache", "--input-size", "32"])
        ds, nb_classes = deit.build_dataset(is_train, args)
        folder = ImageFolder(str(imagenet_like / split))
        assert nb_classes == 3 and len(ds) == len(folder)
        assert sorted(ds.targets) == sorted(folder.targets)
        img, label = ds[0]
        assert tuple(img.shape) == (3, 32, 32) and 0 <= label < 3


def test_verify_only_names_a_map_entry_missing_from_its_zip(imagenet_like, tmp_path):
    out = tmp_path / "zip"
    _script("prepare_imagenet_zip").main(["--src", str(imagenet_like), "--out", str(out)])
    val_map = out / "val_map.txt"
    val_map.write_text(val_map.read_text() + "ILSVRC2012_val_99999999.JPEG\t1\n")
    proc = subprocess.run([sys.executable, str(REPO / "data" / "prepare_imagenet_zip.py"), "--out", str(out),
                           "--verify-only"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (f"error: {val_map} lists 1 image(s) missing from {out / 'val.zip'}, e.g. "
                                   f"'ILSVRC2012_val_99999999.JPEG'; rebuild both with this script")


def test_imagenet32_writer_and_reader_round_trip(imagenet_like, tmp_path, capsys):
    script = _script("imagenet_downsampled")
    out = tmp_path / "imagenet32"
    script.main(["write", "--src", str(imagenet_like / "train"), "--out", str(out), "--size", "32", "--split",
                 "train", "--batch-size", "4"])
    script.main(["write", "--src", str(imagenet_like / "val"), "--out", str(out), "--size", "32", "--split", "val"])
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["train_data_batch_1", "train_data_batch_2",
                                                     "train_data_batch_3", "val_data"]
    for split in ("train", "val"):
        ds = DownsampledImageNet(out, 32, train=split == "train")
        files = sorted((imagenet_like / split).glob("*/*.JPEG"))  # ImageFolder order: sorted class, then file
        assert len(ds) == len(files) and ds.num_classes == 3
        for i, path in enumerate(files):
            want = np.asarray(Image.open(path).convert("RGB").resize((32, 32), Image.Resampling.BOX))
            np.testing.assert_array_equal(ds.image(i), want)
            assert ds.targets[i] == WNIDS.index(path.parent.name)
    script.main(["info", str(out), "--size", "32", "--split", "train"])
    info = json.loads(capsys.readouterr().out)
    assert info["images"] == 9 and info["classes"] == 3 and info["min_per_class"] == info["max_per_class"] == 3
    # analysis/ reads it too (the reader has no class names: labels are named by index), also a --classes subset
    from analysis.common import build_dataset

    val = build_dataset("imagenet32", str(out), "test", classes=[2, 0])
    labels = [WNIDS.index(p.parent.name) for p in sorted((imagenet_like / "val").glob("*/*.JPEG"))]
    assert val.classes == ["2", "0"] and val.head_size == 2
    assert val.targets == [{2: 0, 0: 1}[t] for t in labels if t in (2, 0)]


def test_prepare_fashion_mnist_image_folder_and_zip(tmp_path, capsys):
    from torchvision.datasets import ImageFolder

    out = tmp_path / "fmnist"
    _script("prepare_fashion_mnist").main(["--out", str(out), "--formats", "imagefolder", "zip", "--classes", "4",
                                           "0", "--limit-per-class", "3"])
    assert json.loads(capsys.readouterr().out) == {"imagefolder": {"train": 6, "val": 6},
                                                   "zip": {"train": 6, "val": 6}}
    folder = ImageFolder(str(out / "imagefolder" / "train"))
    assert folder.classes == ["00_coat", "01_t-shirt_top"]  # --classes order = label order
    reference = FashionMNIST(train=True, classes=[4, 0], limit_per_class=3)
    for path, label in folder.samples:
        i = int(Path(path).stem)
        assert label == reference.targets[i]
        np.testing.assert_array_equal(np.asarray(Image.open(path)), reference.data[i])
    zipped = ZipCacheDataset(out / "zip" / "val.zip", out / "zip" / "val_map.txt")
    assert sorted(zipped.targets) == [0, 0, 0, 1, 1, 1]


@pytest.mark.slow
@pytest.mark.ffcv
def test_prepare_fashion_mnist_beton_through_the_ffcv_writer(tmp_path, capsys):
    pytest.importorskip("ffcv")
    from ffcv.reader import Reader

    out = tmp_path / "fmnist"
    _script("prepare_fashion_mnist").main(["--out", str(out), "--formats", "beton", "--splits", "val", "--classes",
                                           "1", "3", "--limit-per-class", "4", "--workers", "1"])
    assert json.loads(capsys.readouterr().out) == {"beton": {"val": str(out / "beton" / "val.beton")}}
    assert sorted(p.name for p in out.iterdir()) == ["beton"]  # the scratch PNG folder is gone
    reader = Reader(str(out / "beton" / "val.beton"))
    assert reader.num_samples == 8
    assert sorted(reader.metadata["f1"].tolist()) == [0, 0, 0, 0, 1, 1, 1, 1]
