"""Fashion-MNIST, the embedded default dataset, read from IDX files.

Looks first in the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), then in
``root`` (the raw files of torchvision's ``FashionMNIST`` download, ``<root>/FashionMNIST/raw``, or IDX files placed
directly in ``root``). ``download=True`` fetches them through torchvision when they are absent.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..errors import UserError

__all__ = ["FashionMNIST", "read_idx", "find_fashion_mnist", "DEBIAN_DIR", "CLASS_NAMES", "FMNIST_MEAN", "FMNIST_STD",
           "SOURCE_CLASSES", "HELD_OUT_CLASSES"]

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530
#: The demo pretrains on these classes and probes transfer on the held-out ones (paper Table 3 analogue).
SOURCE_CLASSES = (0, 2, 4, 6, 8)
HELD_OUT_CLASSES = (1, 3, 5, 7, 9)
_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a uint8 array; malformed files raise UserError naming the file."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise UserError(f"cannot read IDX file {path}: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"{path} is not a uint8 IDX file (bad magic number)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if len(data) != expected:
        raise UserError(f"{path} is truncated or padded: {len(data)} bytes, expected {expected} for shape {dims}")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _locate(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_fashion_mnist(root: str | os.PathLike | None = None, train: bool = True) -> tuple[Path, Path]:
    """Paths of the (images, labels) IDX files for a split, searching ``root`` then the Debian package."""
    folders = []
    if root is not None:
        folders += [Path(root), Path(root) / "FashionMNIST" / "raw"]
    folders.append(DEBIAN_DIR)
    for folder in folders:
        images, labels = (_locate(folder, stem) for stem in _FILES[train])
        if images and labels:
            return images, labels
    where = " or ".join(str(f) for f in folders)
    raise UserError(f"Fashion-MNIST {'train' if train else 'test'} IDX files not found in {where}; "
                    f"install the Debian package dataset-fashion-mnist or pass download=True/--download")


class FashionMNIST(Dataset):
    """Fashion-MNIST as (PIL 'L' 28×28 image, label) pairs.

    Args:
        root: folder with the IDX files (None: the Debian package path).
        train: training (60k) or test (10k) split.
        transform: applied to the PIL image.
        classes: keep only these original classes and relabel them 0..len(classes)−1 in the given order.
        download: fetch via torchvision into ``root`` when the files are missing.
        limit_per_class: keep the first N samples of each kept class (deterministic subsets for tests).
    """

    def __init__(self, root: str | os.PathLike | None = None, train: bool = True,
                 transform: Callable | None = None, classes: Sequence[int] | None = None, download: bool = False,
                 limit_per_class: int | None = None):
        if limit_per_class is not None and limit_per_class < 1:  # -1 would drop each class's last image silently
            raise UserError(f"--limit-per-class must be >= 1 (images kept per class), got {limit_per_class}")
        try:
            images_path, labels_path = find_fashion_mnist(root, train)
        except UserError:
            if not download:
                raise
            import torchvision

            torchvision.datasets.FashionMNIST(root or "./datasets", train=train, download=True)
            images_path, labels_path = find_fashion_mnist(root or "./datasets", train)
        images, labels = read_idx(images_path), read_idx(labels_path).astype(np.int64)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise UserError(f"{images_path} and {labels_path} do not form an image/label pair")
        keep = list(range(10)) if classes is None else [int(c) for c in classes]
        if not keep or len(set(keep)) != len(keep) or any(c < 0 or c > 9 for c in keep):
            raise UserError(f"classes must be distinct integers in 0..9, got {list(keep)}")
        remap = np.full(10, -1, dtype=np.int64)
        remap[keep] = np.arange(len(keep))
        idx = np.flatnonzero(remap[labels] >= 0)
        if limit_per_class is not None:
            idx = np.concatenate([idx[labels[idx] == c][:limit_per_class] for c in keep])
            idx.sort()
        self.data = images[idx]
        self.targets = remap[labels[idx]].tolist()
        self.classes = [CLASS_NAMES[c] for c in keep]
        self.original_classes = keep
        self.transform = transform
        self.train = train

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.data[i], mode="L")
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[i]
