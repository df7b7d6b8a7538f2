"""Downsampled ImageNet 32×32 / 64×64 (Chrabaszcz, Loshchilov & Hutter 2017): write it from an ImageFolder, or
inspect it.

    python data/imagenet_downsampled.py write --src /datasets/imagenet/train --out /datasets/imagenet32 --size 32 \\
        --split train
    python data/imagenet_downsampled.py write --src /datasets/imagenet/val --out /datasets/imagenet32 --size 32 \\
        --split val
    python data/imagenet_downsampled.py info /datasets/imagenet32 --size 32 --split val

The files are those of the official release (pickled ``train_data_batch_1..n`` / ``val_data`` dicts with
channel-major uint8 rows and 1-based labels), so ``Conv/common_resnet`` reads either the official download or files
written here (reader: :class:`maxsup.data.downsampled.DownsampledImageNet`). Each image is resized whole (no crop)
to S×S with PIL's box filter, the filter the authors chose for their release; labels are ImageFolder's sorted-folder
order. ``write`` holds the split in memory: 3.9 GB of uint8 for ImageNet32 train, 15.8 GB for ImageNet64.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.datasets import ImageFolder

from maxsup.cli import ArgumentParser, run_cli
from maxsup.data.downsampled import DEFAULT_TRAIN_BATCH, SIZES, DownsampledImageNet, write_downsampled
from maxsup.data.imagecheck import load_rgb
from maxsup.errors import UserError

RESAMPLE = {"box": Image.Resampling.BOX, "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


def downsample_folder(src: Path, size: int, resample: str = "box") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read an ImageFolder split → (images (N, S, S, 3) uint8, labels (N,) 0-based, class names)."""
    if not src.is_dir():
        raise UserError(f"--src {src} is not a folder; pass an ImageFolder split such as imagenet/train")
    folder = ImageFolder(str(src))
    images = np.empty((len(folder), size, size, 3), dtype=np.uint8)
    for i, (path, _) in enumerate(folder.samples):
        img = load_rgb(path, hint="remove or replace it")  # names a file that does not decode
        images[i] = np.asarray(img.resize((size, size), RESAMPLE[resample]))
    return images, np.asarray(folder.targets, dtype=np.int64), folder.classes


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="ImageFolder split → downsampled-ImageNet batch files")
    w.add_argument("--src", type=Path, required=True, help="ImageFolder split (<src>/<class>/<image>)")
    w.add_argument("--out", type=Path, required=True, help="output folder")
    w.add_argument("--size", type=int, choices=SIZES, default=32, help="side S of the square images")
    w.add_argument("--split", choices=("train", "val"), required=True,
                   help="train → train_data_batch_*, val → val_data")
    w.add_argument("--batch-size", type=int, default=DEFAULT_TRAIN_BATCH, help="images per training batch file")
    w.add_argument("--resample", choices=tuple(RESAMPLE), default="box", help="PIL resampling filter")
    i = sub.add_parser("info", help="read a downsampled-ImageNet folder and print a JSON summary")
    i.add_argument("root", type=Path, help="folder with train_data_batch_* / val_data")
    i.add_argument("--size", type=int, choices=SIZES, default=32, help="side S of the square images")
    i.add_argument("--split", choices=("train", "val"), default="val", help="which files to read")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.command == "write":
        images, labels, classes = downsample_folder(args.src, args.size, args.resample)
        paths = write_downsampled(images, labels, args.out, args.size, args.split, batch_size=args.batch_size)
        print(json.dumps({"images": len(labels), "classes": len(classes), "files": [p.name for p in paths]}))
    else:
        ds = DownsampledImageNet(args.root, args.size, train=args.split == "train")
        counts = Counter(ds.targets)
        print(json.dumps({"images": len(ds), "classes": ds.num_classes, "files": [p.name for p in ds.files],
                          "min_per_class": min(counts.values(), default=0),
                          "max_per_class": max(counts.values(), default=0)}))
    return 0


if __name__ == "__main__":
    run_cli(main)
