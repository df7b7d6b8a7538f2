"""Fashion-MNIST, the embedded default dataset, in the formats the trainers read.

    python data/prepare_fashion_mnist.py --out datasets/fmnist --formats imagefolder zip beton

Source: the IDX files of the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``); where
that package is absent, ``--root DIR --download`` fetches them through torchvision into DIR. Outputs under ``--out``:

* ``imagefolder/{train,val}/<NN_class>/<index>.png``: 28×28 grayscale PNGs; ``NN_`` prefixes keep ImageFolder's
  sorted-folder labels equal to the Fashion-MNIST labels (after ``--classes`` relabelling);
  read by ``Deit/main.py --data-set FOLDER``, ``Conv/common_resnet/train.py`` and ``maxsup.hub evaluate``;
* ``zip/{train,val}.zip`` + ``{train,val}_map.txt``: the authors' zip cache, read by ``Deit/main.py --cache``;
* ``beton/{train,val}.beton``: FFCV files written by ``Conv/ffcv/write_imagenet.py`` (needs the ffcv extra).

``val`` is Fashion-MNIST's 10k test split. Each output appears atomically (built under a temporary name, then
renamed); an existing output is replaced.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from maxsup.cli import ArgumentParser, positive_int, run_cli
from maxsup.data.fashion_mnist import FashionMNIST
from maxsup.data.zipcache import write_zip_cache
from maxsup.errors import UserError

FORMATS = ("imagefolder", "zip", "beton")
SPLITS = {"train": True, "val": False}
FFCV_WRITER = Path(__file__).resolve().parents[1] / "Conv" / "ffcv" / "write_imagenet.py"


def class_folder(index: int, name: str) -> str:
    """``3`` + ``"T-shirt/top"`` → ``"03_t-shirt_top"``: sorts in label order and is a valid file name."""
    return f"{index:02d}_{re.sub(r'[^a-z0-9-]+', '_', name.lower()).strip('_')}"


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def write_image_folder(out: Path, classes: list[int] | None, limit_per_class: int | None, root: str | None,
                       download: bool, splits: list[str]) -> dict[str, int]:
    """Write ``out/{train,val}/<NN_class>/<index>.png``; returns images per split."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    counts = {}
    try:
        for split in splits:
            ds = FashionMNIST(root=root, train=SPLITS[split], classes=classes, download=download,
                              limit_per_class=limit_per_class)
            folders = [class_folder(i, name) for i, name in enumerate(ds.classes)]
            for folder in folders:
                (tmp / split / folder).mkdir(parents=True)
            for i in range(len(ds)):
                img, label = ds[i]
                img.save(tmp / split / folders[label] / f"{i:05d}.png")
            counts[split] = len(ds)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts


def write_zips(folder: Path, out: Path, splits: list[str]) -> dict[str, int]:
    """The zip cache (``{split}.zip`` + ``{split}_map.txt``) from an image folder written above."""
    return {split: write_zip_cache(folder / split, out / f"{split}.zip", out / f"{split}_map.txt", split=split)
            for split in splits}


def write_betons(folder: Path, out: Path, workers: int, splits: list[str]) -> dict[str, str]:
    """``{split}.beton`` through Conv/ffcv/write_imagenet.py (28 px images: stored raw, no JPEG)."""
    if not FFCV_WRITER.is_file():
        raise UserError(f"{FFCV_WRITER} not found; the beton format needs the repository's Conv/ffcv/ folder")
    paths = {}
    for split in splits:
        path = out / f"{split}.beton"
        cmd = [sys.executable, str(FFCV_WRITER), "--data-dir", str(folder / split), "--write-path", str(path),
               "--write-mode", "raw", "--num-workers", str(workers)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"writing {path} failed ({last}); is the ffcv extra installed (pip install -e '.[ffcv]')?")
        paths[split] = str(path)
    return paths


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=["imagefolder"], help="what to write")
    parser.add_argument("--splits", nargs="+", choices=tuple(SPLITS), default=list(SPLITS),
                        help="train (60k images) and/or val (the 10k test split)")
    parser.add_argument("--root", default=None, help="folder with the IDX files if the Debian package is absent")
    parser.add_argument("--download", action="store_true", help="download into --root via torchvision if missing")
    parser.add_argument("--classes", type=int, nargs="+", default=None,
                        help="keep these classes, relabelled 0..n-1 in this order (e.g. 0 2 4 6 8)")
    parser.add_argument("--limit-per-class", type=positive_int, default=None,
                        help="keep the first N images of each class")
    parser.add_argument("--workers", type=int, default=2, help="encoder processes for the beton writer")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.download and args.root is None:
        raise UserError("--download needs --root DIR to download into")
    report: dict[str, object] = {}
    keep_folder = "imagefolder" in args.formats
    args.out.mkdir(parents=True, exist_ok=True)
    # zip/beton are built from PNG folders; without "imagefolder" those live in a scratch folder under --out
    folder = args.out / "imagefolder" if keep_folder else Path(tempfile.mkdtemp(prefix=".fmnist.", dir=args.out))
    try:
        report["imagefolder"] = write_image_folder(folder, args.classes, args.limit_per_class, args.root,
                                                   args.download, args.splits)
        if "zip" in args.formats:
            report["zip"] = write_zips(folder, args.out / "zip", args.splits)
        if "beton" in args.formats:
            report["beton"] = write_betons(folder, args.out / "beton", args.workers, args.splits)
    finally:
        if not keep_folder:
            shutil.rmtree(folder, ignore_errors=True)
            report.pop("imagefolder", None)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    run_cli(main)
