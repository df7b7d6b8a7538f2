"""Target datasets of the linear-transfer table (paper Table 12) and the fine-grained table (Table 6), with their
official splits, as (PIL image, label) datasets exposing ``targets`` and ``classes``.

* ``flowers102``: torchvision ``Flowers102``; train = the official train + val (2,040 images), test = test (6,149),
  as Kornblith et al. 2019 refit on train + val.
* ``food101``: torchvision ``Food101``; train (75,750) / test (25,250).
* ``pets``: torchvision ``OxfordIIITPet`` (category labels); trainval (3,680) / test (3,669).
* ``cars``: torchvision ``StanfordCars`` (its published layout: ``devkit/``, ``cars_train/``, ``cars_test/``,
  ``cars_test_annos_withlabels.mat``); train (8,144) / test (8,041).
* ``cub200``: CUB-200-2011 as published (``CUB_200_2011/images.txt``, ``image_class_labels.txt``,
  ``train_test_split.txt``, ``classes.txt``, ``images/``); train (5,994) / test (5,794).

Nothing is downloaded here; ``root`` is the folder the torchvision class (or the CUB tarball) was extracted into.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from ..errors import UserError

__all__ = ["TRANSFER_DATASETS", "transfer_dataset", "CUB200"]

TRANSFER_DATASETS = ("flowers102", "food101", "pets", "cars", "cub200")


class _Adapter(Dataset):
    """Uniform view (``targets``, ``classes``, RGB PIL images) over torchvision's fine-grained dataset classes."""

    def __init__(self, parts: list[Any], targets: list[int], classes: list[str], transform: Callable | None):
        self.parts, self.targets, self.classes, self.transform = parts, targets, classes, transform
        self._offsets = []
        total = 0
        for p in parts:
            self._offsets.append(total)
            total += len(p)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        k = max(j for j, off in enumerate(self._offsets) if off <= i)
        img, _ = self.parts[k][i - self._offsets[k]]
        img = img.convert("RGB")
        return (self.transform(img) if self.transform else img), self.targets[i]


class CUB200(Dataset):
    """CUB-200-2011 from its published files; ``train`` selects ``is_training_image`` = 1."""

    def __init__(self, root: str | os.PathLike, train: bool = True, transform: Callable | None = None):
        base = Path(root)
        if (base / "CUB_200_2011").is_dir():
            base = base / "CUB_200_2011"
        needed = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")
        missing = [n for n in needed if not (base / n).is_file()]
        if missing or not (base / "images").is_dir():
            raise UserError(f"CUB-200-2011 not found in {root}: expected CUB_200_2011/{{{','.join(needed)}}} and "
                            f"images/ (the extracted CUB_200_2011.tgz)")

        def table(name: str) -> dict[str, str]:
            return dict(line.split(maxsplit=1) for line in (base / name).read_text().splitlines() if line.strip())

        paths, labels, split = table("images.txt"), table("image_class_labels.txt"), table("train_test_split.txt")
        self.classes = [v.strip() for _, v in sorted(table("classes.txt").items(), key=lambda kv: int(kv[0]))]
        keep = [i for i in sorted(paths, key=int) if (split[i].strip() == "1") == train]
        self.samples = [(base / "images" / paths[i].strip(), int(labels[i]) - 1) for i in keep]
        self.targets = [t for _, t in self.samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        with Image.open(path) as im:
            img = im.convert("RGB")
        return (self.transform(img) if self.transform else img), label


def transfer_dataset(name: str, root: str | os.PathLike | None, train: bool, transform: Callable | None = None
                     ) -> Dataset:
    """One split of a :data:`TRANSFER_DATASETS` dataset (see the module docstring for splits and layouts)."""
    import torchvision.datasets as D

    if root is None:
        raise UserError(f"--dataset {name} needs --data-path (the folder its files were extracted into)")
    root = str(root)
    try:
        if name == "cub200":
            return CUB200(root, train, transform)
        if name == "flowers102":
            parts = [D.Flowers102(root, split=s) for s in (("train", "val") if train else ("test",))]
            targets = [t for p in parts for t in p._labels]
            return _Adapter(parts, targets, [f"flower {k}" for k in range(102)], transform)
        if name == "food101":
            ds = D.Food101(root, split="train" if train else "test")
        elif name == "pets":
            ds = D.OxfordIIITPet(root, split="trainval" if train else "test", target_types="category")
        elif name == "cars":
            ds = D.StanfordCars(root, split="train" if train else "test")
            return _Adapter([ds], [t for _, t in ds._samples], list(ds.classes), transform)
        else:
            raise UserError(f"unknown transfer dataset {name!r}; choose {', '.join(TRANSFER_DATASETS)}")
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted ..."
        raise UserError(f"{name} not found in {root}: {exc}") from None
    return _Adapter([ds], list(ds._labels), list(ds.classes), transform)
