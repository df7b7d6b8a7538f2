"""Downsampled ImageNet 32×32 / 64×64 (Chrabaszcz, Loshchilov & Hutter 2017, arXiv 1707.08819): reader and writer.

The format is the one of the official ``Imagenet32_train.zip`` / ``Imagenet64_train*.zip`` releases: a folder of
pickled dicts ``train_data_batch_1`` … ``train_data_batch_10`` and ``val_data``. Each dict holds

* ``data``: (N, 3·S·S) uint8, one image per row, channel-major (the R plane, then G, then B, each row-major S×S);
* ``labels``: N class ids, **1-based** (1…1000);
* ``mean`` (train batches only): (3·S·S,) float mean row over the whole training set, on the 0–255 scale.

The reader unpickles with an allow-list (numpy arrays and plain containers only), so a foreign or malicious file is
refused instead of executed.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..errors import UserError
from ..training.checkpoint import atomic_write

__all__ = ["DownsampledImageNet", "write_downsampled", "batch_files", "SIZES", "DEFAULT_TRAIN_BATCH"]

SIZES = (32, 64)
#: The official releases split the 1,281,167 training images into 10 files of ≈128,117 rows.
DEFAULT_TRAIN_BATCH = 128_117
_TRAIN_RE = re.compile(r"^train_data_batch_(\d+)$")
# What numpy arrays, dicts and lists need to unpickle (numpy 1.x and 2.x module paths, Python 2 pickles' bytes).
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # protocol-5 pickles
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return super().find_class(module, name)


def batch_files(root: str | os.PathLike, train: bool = True) -> list[Path]:
    """The batch files of one split, in order: ``train_data_batch_1..n`` (consecutive from 1) or ``[val_data]``.

    Raises:
        FileNotFoundError: naming the first missing file and the folder it should be in.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"downsampled-ImageNet folder {root} does not exist; put train_data_batch_1..10 and "
                                f"val_data there (or write them with data/imagenet_downsampled.py)")
    if not train:
        val = root / "val_data"
        if not val.is_file():
            raise FileNotFoundError(f"missing {val}: put the val_data file of the downsampled-ImageNet release there")
        return [val]
    found = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _TRAIN_RE.match(p.name)))
    if not found:
        raise FileNotFoundError(f"missing {root / 'train_data_batch_1'}: put train_data_batch_1..10 of the "
                                f"downsampled-ImageNet release in {root}")
    for expected, (index, _) in enumerate(found, start=1):
        if index != expected:
            raise FileNotFoundError(f"missing {root / f'train_data_batch_{expected}'} (found up to "
                                    f"train_data_batch_{found[-1][0]}); the training batches must be numbered 1..n")
    return [p for _, p in found]


def _load_batch(path: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate one batch file → (data (N, 3·S·S) uint8, labels (N,) int64, 1-based)."""
    hint = "re-create it with data/imagenet_downsampled.py or re-extract the release"
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, MemoryError) as exc:
        raise UserError(f"{path} is not a valid downsampled-ImageNet batch ({type(exc).__name__}: "
                        f"{str(exc)[:120]}); {hint}") from None
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        keys = sorted(map(str, batch)) if isinstance(batch, dict) else type(batch).__name__
        raise UserError(f"{path} is not a downsampled-ImageNet batch (expected a dict with 'data' and 'labels', "
                        f"got {keys}); {hint}")
    data, labels = np.asarray(batch["data"]), np.asarray(batch["labels"])
    row = 3 * size * size
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != row:
        raise UserError(f"{path} holds data of shape {data.shape} and dtype {data.dtype}, expected (N, {row}) uint8 "
                        f"for {size}×{size} images; check --dataset imagenet{size} matches the files")
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{path} has {labels.shape} integer labels for {data.shape[0]} images; {hint}")
    if labels.size and labels.min() < 1:
        raise UserError(f"{path} has label {int(labels.min())}, but labels in this format are 1-based; {hint}")
    return data, labels.astype(np.int64)


class DownsampledImageNet(Dataset):
    """Downsampled ImageNet (32 or 64 px) from the pickled batch files, held in memory.

    Items are ``(PIL RGB image S×S, label)`` with **0-based** labels (file label − 1). ImageNet32's training set is
    3.9 GB and ImageNet64's 15.8 GB of uint8, kept as the per-file arrays (no concatenated copy).

    Args:
        root: folder with ``train_data_batch_1..n`` and ``val_data``.
        size: 32 or 64 (the side S; every row must have 3·S·S bytes).
        train: training batches, else ``val_data``.
        transform: applied to the PIL image.
    Attributes:
        targets: list[int] of 0-based labels. num_classes: the largest 1-based label in the split.
    """

    def __init__(self, root: str | os.PathLike, size: int, train: bool = True, transform: Callable | None = None):
        if size not in SIZES:
            raise ValueError(f"downsampled ImageNet size must be one of {SIZES}, got {size}")
        self.root, self.size, self.train, self.transform = Path(root), size, train, transform
        self.files = batch_files(root, train)
        arrays = [_load_batch(p, size) for p in self.files]
        self._data = [d for d, _ in arrays]
        labels = np.concatenate([lab for _, lab in arrays]) - 1
        self._offsets = np.cumsum([0] + [len(d) for d in self._data])
        self.targets: list[int] = labels.tolist()
        self.num_classes = int(labels.max()) + 1 if labels.size else 0

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def image(self, index: int) -> np.ndarray:
        """(S, S, 3) uint8 HWC array of one image."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        f = int(np.searchsorted(self._offsets, index, side="right")) - 1
        row = self._data[f][index - self._offsets[f]]
        return row.reshape(3, self.size, self.size).transpose(1, 2, 0)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = Image.fromarray(np.ascontiguousarray(self.image(index)))
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]

    def __repr__(self) -> str:
        split = "train" if self.train else "val"
        return f"DownsampledImageNet(root={str(self.root)!r}, size={self.size}, split={split}, n={len(self)})"


def write_downsampled(images: np.ndarray, labels0: np.ndarray | list[int], out_dir: str | os.PathLike, size: int,
                      split: str, batch_size: int = DEFAULT_TRAIN_BATCH, *, first_batch: int = 1,
                      mean: np.ndarray | None = None) -> list[Path]:
    """Write images in the downsampled-ImageNet format (atomically, one file at a time).

    Args:
        images: (N, S, S, 3) uint8 HWC RGB images, already resized to S×S.
        labels0: (N,) **0-based** class ids (written 1-based, as in the release).
        out_dir: destination folder (created).
        size: S, 32 or 64.
        split: ``"train"`` → ``train_data_batch_1..ceil(N/batch_size)`` (each with the train-set ``mean`` row);
            ``"val"`` → one ``val_data`` file.
        batch_size: rows per training file.
        first_batch: number of the first training file, so that a converter can stream the 1.28 M training images in
            chunks of ``batch_size`` (ImageNet64 is 15.8 GB) and call this once per chunk.
        mean: (3·S·S,) mean row of the *whole* training set to store (default: the mean of ``images``).
    Returns:
        The written paths.
    """
    images, labels0 = np.asarray(images), np.asarray(labels0)
    if size not in SIZES:
        raise ValueError(f"downsampled ImageNet size must be one of {SIZES}, got {size}")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
        raise ValueError(f"images must be (N, {size}, {size}, 3) uint8, got {images.shape} {images.dtype}")
    if labels0.shape != (images.shape[0],) or (labels0.size and labels0.min() < 0):
        raise ValueError(f"labels0 must be {images.shape[0]} non-negative 0-based class ids, got shape {labels0.shape}")
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3 * size * size)  # channel-major rows
    labels1 = (labels0.astype(np.int64) + 1).tolist()
    out_dir = Path(out_dir)
    if split == "val":
        payload = {"data": np.ascontiguousarray(rows), "labels": labels1}
        return [atomic_write(out_dir / "val_data", pickle.dumps(payload, protocol=4))]
    if mean is None:
        mean = rows.mean(axis=0) if len(rows) else np.zeros(rows.shape[1])
    mean = np.asarray(mean, dtype=np.float64)
    if mean.shape != (rows.shape[1],):
        raise ValueError(f"mean must have shape ({rows.shape[1]},), got {mean.shape}")
    paths = []
    for i, start in enumerate(range(0, max(len(rows), 1), batch_size), start=first_batch):
        payload = {"data": np.ascontiguousarray(rows[start:start + batch_size]),
                   "labels": labels1[start:start + batch_size], "mean": mean}
        paths.append(atomic_write(out_dir / f"train_data_batch_{i}", pickle.dumps(payload, protocol=4)))
    return paths
