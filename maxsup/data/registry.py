"""One table of the datasets this project reads: name → how to build a split, its native image size and
normalisation, and whether it is a test set only. ``Conv/common_resnet/train.py --dataset``, ``analysis/ --dataset``
and (for Fashion-MNIST and the ImageNet test sets) ``Deit/datasets.py`` all build their datasets here.

Every dataset it returns is a (PIL image, int label) dataset exposing ``targets`` and ``classes``.

>>> from maxsup.data.registry import DATASETS, build_split
>>> ds = build_split("cifar10", "datasets/cifar10", train=False, transform=eval_transform(spec))
>>> DATASETS["cifar10"].input_size, DATASETS["cifar10"].small_input
(32, True)
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..errors import UserError
from .downsampled import DownsampledImageNet
from .fashion_mnist import FMNIST_MEAN, FMNIST_STD, FashionMNIST
from .imagenet_variants import EVAL_SETS, eval_set
from .transfer import TRANSFER_DATASETS, transfer_dataset
from .transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["DatasetSpec", "DATASETS", "build_split", "split_num_classes", "split_class_names", "CIFAR10_MEAN",
           "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD"]

CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
#: The builders' signature: (root or None, train split?, transform, **options) → dataset.
Builder = Callable[..., Dataset]


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: ``build(root, train, transform, **options)``; ``input_size`` (px) is its native image side;
    ``mean``/``std`` normalise it (3 channels); ``small_input`` (≤ 64 px) selects CIFAR-style stems and augmentation;
    ``eval_only`` marks a test set without a training split; ``num_classes`` is the size of the label space a model
    is scored in when fixed (ImageNet test sets: 1000, whatever subset of classes they hold; None: the folders
    decide)."""

    name: str
    build: Builder
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    small_input: bool = False
    eval_only: bool = False
    num_classes: int | None = None


def _needs_root(name: str, root: str | os.PathLike | None, hint: str) -> Path:
    if root is None:
        raise UserError(f"--dataset {name} needs --data-path ({hint})")
    return Path(root)


def _fmnist(root: str | os.PathLike | None, train: bool, transform: Any, *, classes: list[int] | None = None,
            download: bool = False, limit_per_class: int | None = None) -> Dataset:
    return FashionMNIST(root, train=train, transform=transform, classes=classes, download=download,
                        limit_per_class=limit_per_class)


def _cifar(name: str) -> Builder:
    def build(root: str | os.PathLike | None, train: bool, transform: Any, *, download: bool = False) -> Dataset:
        import torchvision

        root = Path(root or f"datasets/{name}")
        cls, archive, folder = ((torchvision.datasets.CIFAR10, "cifar-10-python.tar.gz", "cifar-10-batches-py")
                                if name == "cifar10" else
                                (torchvision.datasets.CIFAR100, "cifar-100-python.tar.gz", "cifar-100-python"))
        try:
            return cls(root, train=train, transform=transform, download=download)
        except RuntimeError:
            raise UserError(f"{name.upper()} not found in {root}: extract {archive} so that {root / folder} exists "
                            f"(the trainers can fetch it with --download)") from None
    return build


def _downsampled(name: str, size: int) -> Builder:
    def build(root: str | os.PathLike | None, train: bool, transform: Any) -> Dataset:
        return DownsampledImageNet(_needs_root(name, root, "the folder of the pickled batches"), size=size,
                                   train=train, transform=transform)
    return build


def _test_set(name: str) -> Builder:
    def build(root: str | os.PathLike | None, train: bool, transform: Any) -> Dataset:
        # a test set has one split: the flag that picks train/test (analysis' --split) does not apply
        return eval_set(name, _needs_root(name, root, "the folder of the test set"), transform)
    return build


def _transfer(name: str) -> Builder:
    def build(root: str | os.PathLike | None, train: bool, transform: Any) -> Dataset:
        return transfer_dataset(name, root, train, transform)
    return build


def _imagefolder(root: str | os.PathLike | None, train: bool, transform: Any, *,
                 skip_corrupt: bool = False, corrupt_hint: str | None = None) -> Dataset:
    from .imagecheck import CheckedImageFolder

    folder = _needs_root("imagefolder", root, "a folder with train/<class>/ and val/<class>/") / (
        "train" if train else "val")
    if not folder.is_dir():
        raise UserError(f"image folder {folder} does not exist; --data-path must contain train/<class>/*.jpg and "
                        f"val/<class>/*.jpg")
    # corrupt files: named up front or mid-epoch, or skipped with --skip-corrupt (maxsup.data.imagecheck); a val
    # image is never replaced by another one, which would count it twice
    return CheckedImageFolder(folder, transform=transform, skip_corrupt=skip_corrupt, substitute=train,
                              hint=corrupt_hint)


_IMAGENET = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD)
DATASETS: dict[str, DatasetSpec] = {s.name: s for s in (
    DatasetSpec("imagefolder", _imagefolder, 224, **_IMAGENET),
    DatasetSpec("fmnist", _fmnist, 28, (FMNIST_MEAN,) * 3, (FMNIST_STD,) * 3, small_input=True, num_classes=10),
    DatasetSpec("cifar10", _cifar("cifar10"), 32, CIFAR10_MEAN, CIFAR10_STD, small_input=True, num_classes=10),
    DatasetSpec("cifar100", _cifar("cifar100"), 32, CIFAR100_MEAN, CIFAR100_STD, small_input=True, num_classes=100),
    DatasetSpec("imagenet32", _downsampled("imagenet32", 32), 32, **_IMAGENET, small_input=True, num_classes=1000),
    DatasetSpec("imagenet64", _downsampled("imagenet64", 64), 64, **_IMAGENET, small_input=True, num_classes=1000),
    # --test-only / --eval: ImageNetV2, -A, -R, -Sketch (maxsup.data.imagenet_variants)
    *(DatasetSpec(n, _test_set(n), 224, **_IMAGENET, eval_only=True, num_classes=1000) for n in EVAL_SETS),
    # paper Tables 6 and 12: fine-tuning and linear-transfer targets (maxsup.data.transfer)
    *(DatasetSpec(n, _transfer(n), 224, **_IMAGENET) for n in TRANSFER_DATASETS),
)}


def build_split(name: str, root: str | os.PathLike | None, *, train: bool, transform: Any = None,
                **options: Any) -> Dataset:
    """The train (``train=True``) or test/val split of dataset ``name``, read from ``root`` (``--data-path``).

    ``options`` go to the builders that take them: Fashion-MNIST ``classes``, ``download`` and
    ``limit_per_class``; CIFAR ``download``; an image folder ``skip_corrupt`` and ``corrupt_hint`` (what its error
    for a corrupt file advises, where the command has no ``--skip-corrupt``). The others ignore them, so one call
    serves every ``--dataset``; the callers refuse the flags that make no sense for a dataset. A test set
    (``eval_only``) returns its one split whatever ``train`` says: the callers decide whether training on it is an
    error. Missing files raise one :class:`UserError` sentence."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    build = DATASETS[name].build
    accepted = {p.name for p in inspect.signature(build).parameters.values() if p.kind is p.KEYWORD_ONLY}
    return build(root, train, transform, **{k: v for k, v in options.items() if k in accepted})


def split_num_classes(dataset: Dataset) -> int:
    """The classes a split's labels index: ``num_classes`` where the reader knows it beyond the labels present
    (downsampled ImageNet), else ``len(dataset.classes)``."""
    known = getattr(dataset, "num_classes", None)
    return int(known) if known is not None else len(dataset.classes)


def split_class_names(dataset: Dataset) -> list[str]:
    """One name per label index 0 .. :func:`split_num_classes` − 1: the reader's ``label_names`` (ImageNetV2 and
    ImageNet-Sketch name all 1000 wnids, also where a class folder is missing), else its ``classes`` where they cover
    the labels, else the indices as strings (downsampled ImageNet, whose label order is not the sorted wnids')."""
    n = split_num_classes(dataset)
    names = getattr(dataset, "label_names", None) or getattr(dataset, "classes", None)
    return list(names) if names is not None and len(names) == n else [str(i) for i in range(n)]
