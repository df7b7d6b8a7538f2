"""Evaluate a converted (or on-the-fly converted) checkpoint on ImageNet val or one of its test sets under shift."""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset
from torchvision.datasets import ImageFolder

from ..data.imagecheck import load_rgb
from ..data.imagenet_variants import RealScorer, RestrictLogits, eval_set, real_labels
from ..data.transforms import eval_transform
from ..errors import UserError
from ..metrics import ClassificationMeter
from ..models import model_from_checkpoint, parse_model_kwargs
from ..training.distributed import resolve_device
from .convert import check_ours, convert_checkpoint, load_released_checkpoint
from .download import download
from .registry import REGISTRY

__all__ = ["evaluate_checkpoint", "resolve_for_eval"]


def evaluate_checkpoint(ckpt: Mapping[str, Any], data_path: str | os.PathLike, batch_size: int = 64,
                        workers: int = 4, device: str | None = None, limit: int | None = None,
                        dataset: str = "imagefolder", real: str | bool | None = None) -> dict[str, float]:
    """Top-1/top-5 (%), NLL and ECE (15 bins) of a converted checkpoint on an ImageFolder (sorted-wnid labels) or
    on one of ``maxsup.data.imagenet_variants.EVAL_SETS`` (ImageNet-A/R: the 200 classes' logits only).
    ``real`` (True: timm's bundled ``real.json``, or a path) adds the ReaL top-1 accuracy on ImageNet val."""
    data_path = Path(data_path)
    device = str(resolve_device(device))  # a typo or a missing GPU, before the data is listed
    if not data_path.is_dir():
        raise UserError(f"--data-path {data_path} is not a folder; point it at an ImageFolder such as imagenet/val")
    model = model_from_checkpoint(dict(ckpt))
    num_classes = ckpt["arch"]["num_classes"]
    name = dataset
    if name != "imagefolder":
        dataset = eval_set(name, data_path, transform=eval_transform(ckpt["eval_transform"]))
        if getattr(dataset, "subset", False):
            model = RestrictLogits(model, dataset.class_indices)
            num_classes = len(dataset.class_indices)
    else:
        # a file that does not decode is named (CorruptImageError), also from a worker, not "Truncated File Read"
        dataset = ImageFolder(str(data_path), transform=eval_transform(ckpt["eval_transform"]),
                              loader=functools.partial(load_rgb, hint="remove or replace it"))
    if name == "imagefolder" and len(dataset.classes) != num_classes:
        raise UserError(f"{data_path} has {len(dataset.classes)} class folders but the checkpoint predicts "
                        f"{num_classes} classes; point --data-path at the matching val/ folder")
    if limit is not None:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    scorer = None
    if real:  # file names and class wnids are checked before the evaluation
        scorer = RealScorer.from_dataset(dataset, real_labels(real))
    model.to(device).eval()
    meter = ClassificationMeter(num_classes)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=device.startswith("cuda"))
    preds = []
    with torch.inference_mode():
        for images, target in loader:
            logits = model(images.to(device, non_blocking=True))
            meter.update(logits.float(), target.to(device))
            preds.append(logits.argmax(1).cpu())
    result = meter.compute()
    if scorer is not None:  # images with an empty ReaL set are left out of n_real
        result.update(scorer.result(*scorer.counts(torch.cat(preds))))
    return result


def resolve_for_eval(ref: str, args: argparse.Namespace) -> dict[str, Any]:
    """The checkpoint ``evaluate`` scores: a registry name (downloaded and converted), a file in this project's
    format, or an upstream file converted on the fly with ``--arch``."""
    model_kwargs = parse_model_kwargs(args.model_kwargs)
    if ref in REGISTRY:
        entry = REGISTRY[ref]
        path = download(ref, dest=args.dest, filename=args.filename, offline=args.offline)
        return convert_checkpoint(load_released_checkpoint(path), entry.arch, label_order=args.label_order,
                                  zip_map=args.zip_map, offline=args.offline, source=str(path),
                                  eval_transform=entry.eval_transform, model_kwargs=model_kwargs)
    path = Path(ref)
    if not path.is_file():
        raise UserError(f"unknown checkpoint {ref!r}: not a file and not one of {', '.join(REGISTRY)}")
    raw = load_released_checkpoint(path)
    if isinstance(raw.get("arch"), dict) and "eval_transform" in raw:
        name = raw["arch"].get("name")
        if model_kwargs:
            raise UserError(f"{path} is in this project's format and records its network ({name}, "
                            f"kwargs {raw['arch'].get('kwargs')}); --model-kwargs applies to upstream files only")
        if args.plain_torchvision:  # scoring another network than the file's is a separate, explicit step
            raise UserError(f"{path} is in this project's format and records its network ({name}); "
                            f"--plain-torchvision applies to upstream files only (write the plain network with "
                            f"`python -m maxsup.hub convert {path} OUT.pth --arch {name} --plain-torchvision` and "
                            f"evaluate OUT.pth)")
        # the checks of convert: a different --arch is refused, and so are --zip-map / --label-order zip where the
        # file is provably in sorted-wnid order; the head is permuted on an explicit --label-order zip, or under auto
        # where the file records its classes as wnids out of sorted order (by those names)
        if check_ours(raw, args.arch or name, label_order=args.label_order, zip_map=args.zip_map, source=str(path)):
            return convert_checkpoint(raw, name, label_order=args.label_order, zip_map=args.zip_map,
                                      offline=args.offline, source=str(path))
        return raw
    if args.arch is None:
        raise UserError(f"{path} is not in this project's format; pass --arch (e.g. resnet50) to convert it on the fly")
    return convert_checkpoint(raw, args.arch, label_order=args.label_order, zip_map=args.zip_map,
                              plain_torchvision=args.plain_torchvision, offline=args.offline, source=str(path),
                              model_kwargs=model_kwargs)
