"""Datasets and transforms for the DeiT trainer: ImageFolder, the authors' zip cache, and Fashion-MNIST.

``build_dataset(is_train, args, rank, world_size) -> (dataset, nb_classes)``; every dataset exposes ``.targets``,
and ``.classes`` (the name of label k) where its class names are known (:func:`class_names`).
"""

from __future__ import annotations

import argparse
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image
from timm.data import auto_augment, create_transform
from torch.utils.data import Dataset
from torchvision import transforms

from maxsup.data import class_names, parse_classes
from maxsup.data.imagecheck import CheckedImageFolder
from maxsup.data.registry import DATASETS, build_split
from maxsup.data.transforms import eval_transform, transform_spec
from maxsup.data.zipcache import IMAGE_EXTENSIONS, ZipCacheDataset, map_class_names, parse_map
from maxsup.errors import UserError

__all__ = ["build_dataset", "build_transform", "eval_transform_spec", "parse_classes", "TargetSubset", "class_names"]


def _posterize(img: Image.Image, bits_to_keep: int, **kwargs: Any) -> Image.Image:
    """timm's posterize op, where 0 bits gives a black image as with Pillow < 12.

    DeiT's ``rand-m9-mstd0.5-inc1`` samples PosterizeIncreasing at magnitude 10 now and then, which asks for 0 bits;
    Pillow ≥ 12 raises ValueError there, so the paper recipe would crash mid-epoch.
    """
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return auto_augment.posterize(img, bits_to_keep, **kwargs)


for _name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
    if auto_augment.NAME_TO_OP.get(_name) is auto_augment.posterize:
        auto_augment.NAME_TO_OP[_name] = _posterize


class TargetSubset(Dataset):
    """``dataset[indices]`` with labels relabelled through ``label_map`` (old label → new label); ``classes``
    follows the relabelling where the dataset names its classes."""

    def __init__(self, dataset: Any, indices: list[int], label_map: dict[int, int] | None = None):
        self.dataset, self.indices = dataset, indices
        self.label_map = label_map
        old = [dataset.targets[i] for i in indices]
        self.targets = [label_map[t] for t in old] if label_map else old
        names = getattr(dataset, "classes", None)
        if names is not None and label_map:
            self.classes = [names[old_label] for old_label, _ in sorted(label_map.items(), key=lambda kv: kv[1])]
        elif names is not None:
            self.classes = list(names)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        img, _ = self.dataset[self.indices[i]]
        return img, self.targets[i]


def _is_fmnist(args: argparse.Namespace) -> bool:
    return args.data_set == "FMNIST"


def _mean_std(args: argparse.Namespace) -> tuple[tuple[float, ...], tuple[float, ...]]:
    data = DATASETS["fmnist" if _is_fmnist(args) else "imagefolder"]  # Fashion-MNIST: grey replicated to RGB
    return data.mean, data.std


def eval_transform_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The checkpoint's ``eval_transform`` entry: resize to input_size/eval_crop_ratio (bicubic), center crop."""
    mean, std = _mean_std(args)
    return transform_spec(args.input_size, crop_pct=args.eval_crop_ratio, mean=mean, std=std,
                          interpolation="bicubic", grayscale_to_rgb=True)


def build_transform(is_train: bool, args: argparse.Namespace):
    """Training: timm ``create_transform`` (RandomResizedCrop, flip, RandAugment ``--aa``, colour jitter, random
    erasing ``--reprob``); inputs ≤ 32 px use a padded RandomCrop instead, as DeiT does. Eval: see
    :func:`eval_transform_spec`."""
    if not is_train:
        return eval_transform(eval_transform_spec(args))
    mean, std = _mean_std(args)
    aa = None if args.aa in ("", "none", None) else args.aa
    tf = create_transform(input_size=args.input_size, is_training=True, color_jitter=args.color_jitter or None,
                          auto_augment=aa, interpolation=args.train_interpolation, re_prob=args.reprob,
                          re_mode=args.remode, re_count=args.recount, mean=mean, std=std)
    if args.input_size <= 32:
        tf.transforms[0] = transforms.RandomCrop(args.input_size, padding=4)
    if _is_fmnist(args):
        tf.transforms.insert(0, transforms.Grayscale(num_output_channels=3))
    return tf


def _image_folder(root: Path, skip_corrupt: bool, substitute: bool = True) -> CheckedImageFolder:
    """ImageFolder with upfront checks: empty class folders and corrupt files are reported by name
    (:mod:`maxsup.data.imagecheck`: the same policy as the other trainers)."""
    if not root.is_dir():
        raise UserError(f"data folder not found: {root}; pass --data-path pointing at a folder with train/ and val/")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise UserError(f"{root} has no class sub-folders; expected {root}/<class>/<image>")
    for c in classes:
        if not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in (root / c).iterdir()):
            raise UserError(f"class folder {root / c} has no images; remove it or add images "
                            f"({', '.join(IMAGE_EXTENSIONS)})")
    return CheckedImageFolder(root, skip_corrupt=skip_corrupt, substitute=substitute)


def _zip_cache(is_train: bool, args: argparse.Namespace, rank: int, world_size: int) -> tuple[Dataset, int]:
    root = Path(args.data_path)
    split = "train" if is_train else "val"
    # K is the number of classes in the training map, so a val label the training set never had is an error
    train_map = parse_map(root / "train_map.txt")
    nb_classes = len({label for _, label in train_map})
    ds = ZipCacheDataset(root / f"{split}.zip", root / f"{split}_map.txt", transform=build_transform(is_train, args),
                         rank=rank, world_size=world_size, skip_corrupt=args.skip_corrupt, num_classes=nb_classes)
    # the class folder (wnid) of each label, from the train members <wnid>/<file>, as ImageFolder names its classes:
    # the val map has flat file names only, and --real-labels maps predictions to ImageNet indices through the wnids
    ds.class_to_idx = {PurePosixPath(name).parent.name: label for name, label in train_map}
    names = map_class_names(train_map)  # None where a label's members disagree: the checkpoint then records none
    if names is not None:
        ds.classes = names
    return ds, nb_classes


def _select(ds: Any, nb_classes: int, classes: list[int] | None, limit_per_class: int | None) -> tuple[Any, int]:
    """Keep ``classes`` (relabelled 0..len−1 in the given order) and at most ``limit_per_class`` images of each."""
    if classes is None and limit_per_class is None:
        return ds, nb_classes
    bad = [c for c in classes or [] if c >= nb_classes]
    if bad:
        raise UserError(f"--classes {bad} are >= the dataset's number of classes ({nb_classes})")
    keep = classes if classes is not None else list(range(nb_classes))
    label_map = {c: i for i, c in enumerate(keep)}
    counts = dict.fromkeys(keep, 0)
    indices = []
    for i, t in enumerate(ds.targets):
        if t in counts and (limit_per_class is None or counts[t] < limit_per_class):
            counts[t] += 1
            indices.append(i)
    return TargetSubset(ds, indices, label_map), len(keep)


#: --data-set names of the ImageNet test sets under shift (maxsup.data.registry, maxsup.data.imagenet_variants)
TEST_SETS = {"IMNETV2": "imagenetv2", "IMNET_A": "imagenet-a", "IMNET_R": "imagenet-r",
             "IMNET_SKETCH": "imagenet-sketch"}


def build_dataset(is_train: bool, args: argparse.Namespace, rank: int = 0, world_size: int = 1) -> tuple[Dataset, int]:
    """The train or val dataset for ``--data-set`` and its number of classes (after ``--classes``).

    * ``IMNET``: ``<data-path>/{train,val}`` ImageFolders, or with ``--cache`` the zip cache
      ``<data-path>/{train,val}.zip`` + ``{train,val}_map.txt`` (only this rank's shard is loaded; ``class_to_idx``
      from the train map's class folders);
    * ``FOLDER``: ``<data-path>/{train,val}`` ImageFolders with any number of classes;
    * ``FMNIST``: Fashion-MNIST from the Debian package (or ``<data-path>``, downloaded there if missing).
    """
    classes = parse_classes(args.classes)
    transform = build_transform(is_train, args)
    if args.data_set == "FMNIST":
        ds = build_split("fmnist", args.data_path or None, train=is_train, transform=transform, classes=classes,
                         download=True, limit_per_class=args.limit_per_class)
        return ds, len(ds.classes)
    if not args.data_path:
        raise UserError(f"--data-set {args.data_set} needs --data-path")
    if args.data_set in TEST_SETS:  # ImageNetV2/-A/-R/-Sketch: --data-path is the set's folder, evaluation only
        if not args.eval:
            raise UserError(f"--data-set {args.data_set} is a test set: evaluate a checkpoint with --eval --resume "
                            f"CKPT")
        # the "train" set only sizes the 1000-class head; it is never iterated under --eval
        name = TEST_SETS[args.data_set]
        ds = build_split(name, args.data_path, train=False, transform=build_transform(False, args))
        return ds, DATASETS[name].num_classes
    if not Path(args.data_path).is_dir():
        raise UserError(f"data path not found: {args.data_path}")
    if args.cache:
        if args.data_set != "IMNET":
            raise UserError("--cache is only supported with --data-set IMNET")
        ds, nb_classes = _zip_cache(is_train, args, rank, world_size)
    else:
        root = Path(args.data_path)
        ds = _image_folder(root / ("train" if is_train else "val"), args.skip_corrupt, substitute=is_train)
        if not is_train and (root / "train").is_dir():
            train_classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
            if ds.classes != train_classes:
                raise UserError(f"{root / 'val'} and {root / 'train'} have different class folders; labels would "
                                f"not match (e.g. {sorted(set(ds.classes) ^ set(train_classes))[:3]})")
        ds.transform = transform
        nb_classes = len(ds.classes)
    return _select(ds, nb_classes, classes, args.limit_per_class)
