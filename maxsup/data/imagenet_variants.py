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
  per val image ``ILSVRC2012_val_%08d``, empty = excluded); :class:`RealScorer` scores top-1 predictions of any
  ImageNet val folder (or subset, zip cache, DDP shard) by file name, :func:`real_accuracy` of 1k-index predictions.

The 1000 wnids in index order and the ReaL JSON come from timm's bundled copies (``timm.data._info``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.datasets import DatasetFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader

from ..errors import UserError

__all__ = ["ImageNetV2Folder", "WnidFolder", "RestrictLogits", "imagenet_wnids", "real_labels", "real_index",
           "real_accuracy", "RealScorer", "EVAL_SETS", "eval_set", "extra_val_sets", "scored_logits",
           "add_test_set_args", "add_real_labels_arg"]

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
    """ImageNetV2 (any of its three variants): ``root/<k>/*.jpeg`` with label ``int(k)`` for k in 0..999.

    ``classes`` lists the folders present (torchvision's meaning); the labels index all 1000 classes, named by
    ``label_names`` (``num_classes`` = 1000), also when a class folder is missing."""

    num_classes = 1000

    @property
    def label_names(self) -> tuple[str, ...]:
        """The name of each label 0..999 (ImageNet-1k wnids)."""
        return imagenet_wnids()

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
    in :attr:`class_indices`, the sorted 1k indices of the wnids present (named by ``classes``); otherwise the 1k index
    itself (``num_classes`` = 1000, named by ``label_names``, also when a class folder is missing)."""

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
        if self.subset:  # labels index the folders present: ``classes`` names them
            return names, {n: i for i, n in enumerate(names)}
        self.num_classes, self.label_names = 1000, imagenet_wnids()
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


def add_test_set_args(parser: Any) -> None:
    """The trainers' ``--extra-val NAME=PATH ...`` and ``--real-labels [JSON]`` (argparse parser or group)."""
    parser.add_argument("--extra-val", nargs="*", default=None, metavar="NAME=PATH",
                        help="ImageNet test sets scored after every epoch beside the val split, logged as NAME_acc1, "
                             f"...: NAME one of {', '.join(EVAL_SETS)} (1000-class models)")
    add_real_labels_arg(parser, "(test_real_acc1, over test_n_real images)")


def add_real_labels_arg(parser: Any, what: str = "") -> None:
    """``--real-labels [JSON]`` (True without a value: timm's bundled real.json); ``what``: the keys it adds."""
    parser.add_argument("--real-labels", nargs="?", const=True, default=None, metavar="JSON",
                        help=f"also report ReaL top-1 {what} on ImageNet val, whose files must keep their names "
                             "ILSVRC2012_val_XXXXXXXX; JSON: the ReaL real.json (without a value: timm's bundled "
                             "copy)")


def extra_val_sets(items: Sequence[str] | None, transform: Callable | None, num_classes: int
                   ) -> dict[str, DatasetFolder]:
    """The trainers' ``--extra-val NAME=PATH ...``: {NAME: reader} of test sets scored after every epoch beside the
    run's own val split (logged as ``NAME_acc1``, ...). They are labelled in ImageNet-1k's index space, so the model
    must have 1000 classes."""
    out: dict[str, DatasetFolder] = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or name not in EVAL_SETS:
            raise UserError(f"--extra-val expects NAME=PATH with NAME one of {', '.join(EVAL_SETS)}, got {item!r}")
        out[name] = eval_set(name, path, transform)
    if out and num_classes != 1000:
        raise UserError(f"--extra-val scores ImageNet-1k test sets and needs a 1000-class model; this run trains "
                        f"{num_classes} classes")
    return out


def scored_logits(model: nn.Module, dataset: Any) -> nn.Module:
    """``model`` as it is scored on ``dataset``: restricted to the 200 classes of ImageNet-A/R, unchanged otherwise."""
    if getattr(dataset, "subset", False):
        return RestrictLogits(model, dataset.class_indices).to(next(model.parameters()).device)
    return model


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


#: ImageNet val images, ILSVRC2012_val_00000001 … ILSVRC2012_val_00050000
N_VAL = 50000
_VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})(\.\w+)?")


def real_labels(path: str | os.PathLike | bool | None = None) -> list[list[int]]:
    """The ReaL relabels of ImageNet val (``real.json``): 50,000 lists of ImageNet-1k indices, entry i for
    ``ILSVRC2012_val_%08d`` (i + 1); an empty list means the image is left out.

    ``path``: a real.json file, or None / True for timm's bundled copy (True is what ``--real-labels`` without a
    value gives, see :func:`add_real_labels_arg`, so ``real_labels(args.real_labels)`` reads what the flag asks)."""
    bundled = path is None or path is True
    where = "timm's real.json" if bundled else path
    try:
        if bundled:
            text = resources.files("timm.data._info").joinpath("imagenet_real_labels.json").read_text()
        else:
            text = Path(path).read_text()
        labels = json.loads(text)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the ReaL labels {where}: {exc}") from None
    if not isinstance(labels, list) or len(labels) != N_VAL:
        got = f"{len(labels)} entries" if isinstance(labels, list) else f"a JSON {type(labels).__name__}"
        raise UserError(f"{where} must be a JSON list of {N_VAL} label lists (one per ImageNet val image), not {got}")
    for i, entry in enumerate(labels):
        if not isinstance(entry, list) or not all(type(c) is int and 0 <= c < 1000 for c in entry):
            raise UserError(f"{where}: entry {i} (ILSVRC2012_val_{i + 1:08d}) is {json.dumps(entry)[:40]}, not a "
                            f"list of class indices 0..999")
    return labels


def real_index(path: str | os.PathLike) -> int:
    """Position in ``real.json`` (0-based) of the val image ``path``, whose file name is
    ``ILSVRC2012_val_%08d.<ext>`` with a 1-based index ≤ 50,000."""
    m = _VAL_NAME.fullmatch(os.path.basename(str(path)))
    if m is None or not 1 <= int(m.group(1)) <= N_VAL:
        raise UserError(f"{path} is not an ImageNet val file name (ILSVRC2012_val_00000001.JPEG … "
                        f"ILSVRC2012_val_00050000.JPEG); ReaL labels are matched to images by that name")
    return int(m.group(1)) - 1


def _files_and_classes(dataset: Any) -> tuple[list[str], list[str | None]]:
    """The file name of each sample of ``dataset`` (index order) and the class name of each label."""
    if hasattr(dataset, "dataset") and hasattr(dataset, "indices"):  # torch Subset, Deit's TargetSubset
        paths, classes = _files_and_classes(dataset.dataset)
        label_map = getattr(dataset, "label_map", None)  # old label → new label
        if label_map:
            relabelled: list[str | None] = [None] * (max(label_map.values()) + 1)
            for old, new in label_map.items():
                relabelled[new] = classes[old] if old < len(classes) else None
            classes = relabelled
        return [paths[i] for i in dataset.indices], classes
    samples, class_to_idx = getattr(dataset, "samples", None), getattr(dataset, "class_to_idx", None)
    if samples is None or class_to_idx is None:
        raise UserError(f"ReaL labels are matched by the val images' original file names (ILSVRC2012_val_XXXXXXXX), "
                        f"which a {type(dataset).__name__} does not keep; evaluate an ImageNet val folder instead")
    classes = [None] * (max(class_to_idx.values(), default=-1) + 1)
    for name, k in class_to_idx.items():
        if classes[k] is not None:
            raise UserError(f"classes {classes[k]} and {name} share label {k}; ReaL needs one wnid per label")
        classes[k] = name
    return [str(p) for p, _ in samples], classes


class RealScorer:
    """ReaL top-1 (Beyer et al. 2020) of a classifier on ImageNet val, or on a part of it, in any class layout.

    Everything is resolved up front, so a bad folder fails before any evaluation: each sample's ``real.json`` entry
    from its file name, and each model output's ImageNet-1k index from its class name (a wnid). A prediction is a hit
    when its class is in the image's ReaL set. Images with an empty set are left out (``n_real`` counts the rest); an
    image whose ReaL classes all lie outside the evaluated classes still counts, as a miss.

    Args:
        paths: (N,) file names (or paths) of the samples, in dataset index order.
        classes: (K,) the wnid of model output k (an ImageFolder's ``classes``); None for an output with no class.
        labels: :func:`real_labels`.
    """

    def __init__(self, paths: Sequence[str], classes: Sequence[str | None], labels: list[list[int]]):
        index = {w: i for i, w in enumerate(imagenet_wnids())}
        unknown = [c for c in classes if c is not None and c not in index]
        if unknown:
            raise UserError(f"ReaL labels need class folders named by ImageNet wnids like n01440764, found "
                            f"{unknown[:3]}; evaluate an ImageNet val folder")
        output_of = {index[c]: k for k, c in enumerate(classes) if c is not None}  # 1k index → model output
        first: dict[int, str] = {}
        #: per sample: the model outputs that count as correct, or None (empty ReaL set: not scored)
        self.valid: list[frozenset[int] | None] = []
        for path in paths:
            i = real_index(path)
            if i in first:
                raise UserError(f"{path} and {first[i]} are the same ImageNet val image; ReaL scores each image once, "
                                f"so remove the copy")
            if i >= len(labels):
                raise UserError(f"{path}: the ReaL labels cover only {len(labels)} images")
            first[i] = str(path)
            entry = labels[i]
            self.valid.append(frozenset(output_of[c] for c in entry if c in output_of) if entry else None)

    @classmethod
    def from_dataset(cls, dataset: Any, labels: list[list[int]]) -> RealScorer:
        """For a torchvision ``DatasetFolder`` (any dataset with ``samples`` and ``class_to_idx``, e.g. the zip
        cache with its train map's classes) or a subset of one (``dataset`` + ``indices``, torch ``Subset``; an
        optional ``label_map`` {old: new label}): model output k is the dataset's label k."""
        return cls(*_files_and_classes(dataset), labels)

    def __len__(self) -> int:
        return len(self.valid)

    def counts(self, preds: Tensor, order: Iterable[int] | None = None) -> tuple[int, int]:
        """(hits, scored images) of ``preds`` (M,) top-1 model outputs for the samples ``order`` (M dataset indices,
        e.g. an evaluation sampler's; default 0..M-1). Counts add up over disjoint shards (ranks)."""
        preds = torch.as_tensor(preds).reshape(-1).tolist()
        order = range(len(preds)) if order is None else list(order)
        if len(order) != len(preds):
            raise ValueError(f"{len(preds)} predictions for {len(order)} samples")
        hits = n = 0
        for p, i in zip(preds, order, strict=True):
            valid = self.valid[i]
            if valid is not None:
                n += 1
                hits += p in valid
        return hits, n

    @staticmethod
    def result(hits: float, n: float) -> dict[str, float]:
        """``{"real_acc1": %, "n_real": scored images}`` (NaN accuracy when nothing was scored)."""
        return {"real_acc1": 100.0 * hits / n if n else float("nan"), "n_real": int(n)}


def real_accuracy(preds: Tensor, paths: Sequence[str], labels: list[list[int]] | None = None) -> dict[str, float]:
    """ReaL top-1 accuracy (%) of ImageNet-1k predictions ``preds`` (N,) for the val images ``paths`` (file names
    carry the 1-based ``ILSVRC2012_val_%08d`` index). Images whose ReaL set is empty are left out (``n`` counts the
    rest). See :class:`RealScorer` for other class layouts."""
    scorer = RealScorer(paths, imagenet_wnids(), labels if labels is not None else real_labels())
    hits, n = scorer.counts(preds)
    return {"real_acc1": RealScorer.result(hits, n)["real_acc1"], "n": n}
