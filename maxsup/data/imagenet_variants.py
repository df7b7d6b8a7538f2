"""ImageNet test sets under distribution shift, with labels in the ImageNet-1k index space of our checkpoints.

* ImageNetV2 (Recht et al. 2019): class folders named ``0`` … ``999``. ``ImageFolder`` sorts them as strings
  (``0, 1, 10, 100, …``) and silently scrambles the labels; :class:`ImageNetV2Folder` labels each image
  ``int(folder name)``.
* ImageNet-A and ImageNet-R (Hendrycks et al. 2021): 200 of the 1000 classes, in wnid folders. Their labels here are
  positions 0..199 in :attr:`WnidFolder.class_indices` (the sorted ImageNet-1k indices present), and
  :class:`RestrictLogits` keeps those 200 of a model's 1000 logits, the standard protocol.
* ImageNet-Sketch (Wang et al. 2019) and ImageNet val: 1000 wnid folders (:class:`WnidFolder` labels by wnid, so a
  missing folder cannot shift the others).
* ReaL labels (Beyer et al. 2020): :func:`real_labels` reads the published ``real.json`` (one list of valid labels
  per val image ``ILSVRC2012_val_%08d``, empty = excluded); :func:`real_accuracy` scores top-1 predictions.

The 1000 wnids in index order and the ReaL JSON come from timm's bundled copies (``timm.data._info``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from functools import cache
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.datasets import DatasetFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader

from ..errors import UserError

__all__ = ["ImageNetV2Folder", "WnidFolder", "RestrictLogits", "imagenet_wnids", "real_labels", "real_accuracy",
           "EVAL_SETS", "eval_set"]

#: evaluation-only ImageNet test sets (the ``--dataset`` names; Deit's ``--data-set`` uses IMNETV2, IMNET_A, ...)
EVAL_SETS = ("imagenetv2", "imagenet-a", "imagenet-r", "imagenet-sketch")


@cache
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in class-index order (sorted, as ``ImageFolder`` orders the train split)."""
    text = resources.files("timm.data._info").joinpath("imagenet_synsets.txt").read_text()
    wnids = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(wnids) != 1000:
        raise RuntimeError(f"timm's imagenet_synsets.txt lists {len(wnids)} wnids, expected 1000")
    return wnids


def _check_root(root: str | os.PathLike, what: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{what} folder {root} does not exist")
    return root


class ImageNetV2Folder(DatasetFolder):
    """ImageNetV2 (any of its three variants): ``root/<k>/*.jpeg`` with label ``int(k)`` for k in 0..999."""

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None):
        super().__init__(str(_check_root(root, "ImageNetV2")), default_loader, IMG_EXTENSIONS, transform=transform)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        names = [d.name for d in os.scandir(directory) if d.is_dir()]
        bad = [n for n in names if not re.fullmatch(r"\d+", n) or int(n) > 999]
        if bad or not names:
            raise UserError(f"{directory} is not an ImageNetV2 folder: its class folders must be named 0 … 999 "
                            f"(found {sorted(bad)[:3] or 'none'})")
        names.sort(key=int)
        return [imagenet_wnids()[int(n)] for n in names], {n: int(n) for n in names}


class WnidFolder(DatasetFolder):
    """``root/<wnid>/*`` labelled by ImageNet-1k index. With ``subset=True`` (ImageNet-A/R) the labels are positions
    in :attr:`class_indices`, the sorted 1k indices of the wnids present; otherwise the 1k index itself."""

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None, subset: bool = False,
                 what: str = "ImageNet"):
        self.subset, self.what = subset, what
        super().__init__(str(_check_root(root, what)), default_loader, IMG_EXTENSIONS, transform=transform)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        index = {w: i for i, w in enumerate(imagenet_wnids())}
        names = sorted(d.name for d in os.scandir(directory) if d.is_dir())
        unknown = [n for n in names if n not in index]
        if unknown or not names:
            raise UserError(f"{directory} is not a {self.what} folder: class folders must be ImageNet wnids like "
                            f"n01440764 (found {unknown[:3] or 'none'})")
        self.class_indices = [index[n] for n in names]  # sorted wnids → increasing indices
        if self.subset:
            return names, {n: i for i, n in enumerate(names)}
        return names, {n: index[n] for n in names}


def eval_set(name: str, root: str | os.PathLike, transform: Callable | None = None) -> DatasetFolder:
    """The reader of one of :data:`EVAL_SETS` (labels as documented above)."""
    if name == "imagenetv2":
        return ImageNetV2Folder(root, transform)
    if name in ("imagenet-a", "imagenet-r"):
        return WnidFolder(root, transform, subset=True, what=name)
    if name == "imagenet-sketch":
        return WnidFolder(root, transform, what=name)
    raise UserError(f"unknown ImageNet test set {name!r}; choose {', '.join(EVAL_SETS)}")


class RestrictLogits(nn.Module):
    """``model``'s logits at ``class_indices`` only (ImageNet-A/R: the 200 classes they contain)."""

    def __init__(self, model: nn.Module, class_indices: Sequence[int]):
        super().__init__()
        self.model = model
        self.register_buffer("class_indices", torch.as_tensor(list(class_indices), dtype=torch.long),
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.index_select(-1, self.class_indices)


def real_labels(path: str | os.PathLike | None = None) -> list[list[int]]:
    """The ReaL relabels of ImageNet val (``real.json``; default: timm's bundled copy): 50,000 lists."""
    try:
        if path is None:
            text = resources.files("timm.data._info").joinpath("imagenet_real_labels.json").read_text()
        else:
            text = Path(path).read_text()
        labels = json.loads(text)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the ReaL labels {path}: {exc}") from None
    if not isinstance(labels, list) or len(labels) != 50000:
        raise UserError(f"{path or 'real.json'} must be a JSON list of 50000 label lists (one per val image)")
    return labels


_VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})")


def real_accuracy(preds: Tensor, paths: Sequence[str], labels: list[list[int]] | None = None) -> dict[str, float]:
    """ReaL top-1 accuracy (%) of predictions ``preds`` (N,) for the val images ``paths`` (file names carry the
    1-based ``ILSVRC2012_val_%08d`` index). Images whose ReaL set is empty are left out (``n`` counts the rest)."""
    labels = labels if labels is not None else real_labels()
    hit = n = 0
    for p, path in zip(preds.tolist(), paths, strict=True):
        m = _VAL_NAME.search(str(path))
        if m is None:
            raise UserError(f"{path} is not an ImageNet val file name (ILSVRC2012_val_XXXXXXXX.JPEG)")
        valid = labels[int(m.group(1)) - 1]
        if valid:
            n += 1
            hit += int(p in valid)
    return {"real_acc1": 100.0 * hit / n if n else float("nan"), "n": n}
