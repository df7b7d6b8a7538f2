"""Load an upstream checkpoint safely and turn it into this project's convention (``model``, ``arch``,
``eval_transform``, ``args``, ``epoch``, ``hub``), loading it strictly into the rebuilt network on the way.

* The file's layout is found by :func:`maxsup.models.read_weights`, the detector ``Deit/main.py --eval`` and
  ``--finetune`` use too; each architecture's own eval crop and interpolation is recorded
  (:func:`eval_transform_for`: LV-ViT 0.9 for T/S and 1.0 for M, bicubic; DeiT 0.875 bicubic).

* The DeiT-Small's head is permuted from the authors' zip label order to sorted-wnid order
  (:mod:`maxsup.hub.zip_order`). A file of this project (a trainer's, or a previous convert's) keeps its head in the
  order it was trained in unless it records its class names (``classes``, index = label) as ImageNet wnids in
  another than sorted order, which is then permuted to sorted order by those names, or ``label_order="zip"`` says
  its run read the authors' maps (:func:`check_ours`, :func:`recorded_wnid_order`).
* The ResNet-50s come from ffcv-based training with BlurPool; their keys only load strictly into a BlurPool
  ResNet-50 (:func:`maxsup.models.create_model` with ``blurpool=True``). Loading into a plain torchvision ResNet-50
  drops the blur and changes the function, so it is an explicit opt-in (``plain_torchvision``).

Files are loaded with ``torch.load(weights_only=True)``; the authors' DeiT file pickles ``argparse.Namespace`` args,
so exactly that one type is allow-listed (and logged) when the plain load refuses it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, transform_spec
from ..errors import UserError
from ..models import (
    LAYOUTS,
    LayoutError,
    arch_spec,
    compare_keys,
    create_model,
    describe_keys,
    fit_keys,
    load_any_checkpoint,
    read_weights,
    token_head_of,
)
from .registry import FFCV_EVAL, ZipMapError
from .zip_order import load_zip_order, zip_to_standard_permutation

__all__ = ["load_released_checkpoint", "normalize_resnet_state_dict", "eval_transform_for", "convert_checkpoint",
           "check_ours", "sorted_order_reason", "recorded_class_names", "recorded_wnid_order"]

log = logging.getLogger("maxsup.hub")


def load_released_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load(weights_only=True)``; if the file pickles ``argparse.Namespace`` (the authors' DeiT ``args``),
    retry with exactly that type allow-listed. ``args`` is returned as a plain dict
    (:func:`maxsup.models.load_any_checkpoint`)."""
    return load_any_checkpoint(path)


def normalize_resnet_state_dict(raw: Mapping[str, Any]) -> tuple[dict[str, Tensor], str]:
    """(torchvision-named state_dict, layout) of a ResNet checkpoint in any layout :func:`maxsup.models.read_weights`
    knows: Lightning (Conv/ffcv), a bare ``module.``-prefixed state_dict (ffcv-imagenet ``final_weights.pt``),
    ``{'model': ...}`` (torchvision references, our trainers). BlurPool-wrapped convolutions keep their
    ``.conv.weight`` / ``.blur_filter`` keys."""
    weights = read_weights(raw)
    return weights.state_dict, weights.layout


def eval_transform_for(arch: str, kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Each architecture's own published eval transform (kwargs of ``transform_spec``), recorded on convert.

    * ResNets from ffcv (BlurPool): :data:`FFCV_EVAL` (256 px); plain torchvision ResNets: Resize(256) +
      CenterCrop(224), bilinear (torchvision references);
    * LV-ViT: the official ``default_cfgs`` (``tlt/models/lvvit.py``): crop 0.9 for T and S, 1.0 for M and L,
      bicubic;
    * DeiT and other timm ViTs: DeiT's ``--eval-crop-ratio 0.875``, bicubic (``Deit/datasets.py``).
    """
    kwargs = dict(kwargs or {})
    if arch.startswith("resnet"):
        return dict(FFCV_EVAL) if kwargs.get("blurpool") else {"img_size": 224, "crop_pct": 0.875,
                                                                "interpolation": "bilinear"}
    img_size = kwargs.get("img_size", 224)
    img_size = int(img_size[0] if isinstance(img_size, (list, tuple)) else img_size)
    if arch.startswith("lvvit"):
        crop = 1.0 if arch.startswith(("lvvit_m", "lvvit_l")) else 0.9
        return {"img_size": img_size, "crop_pct": crop, "interpolation": "bicubic"}
    return {"img_size": img_size, "crop_pct": 0.875, "interpolation": "bicubic"}


def _check_shapes(arch: str, own: Mapping[str, Tensor], sd: Mapping[str, Tensor], source: str) -> None:
    mismatch = compare_keys(own, sd)
    if mismatch.shapes:
        raise LayoutError(f"{source}: {len(mismatch.shapes)} tensors have the wrong shape for {arch} "
                          f"(e.g. {mismatch.shapes[0]})")


def _wants_zip_order(label_order: str, args: Mapping[str, Any]) -> bool:
    """Whether an upstream file's head is permuted from the authors' zip order (files of ours: :func:`check_ours`)."""
    if label_order not in ("auto", "zip", "standard"):
        raise UserError(f"--label-order must be auto, zip or standard, got {label_order!r}")
    # the authors' Deit/main.py --cache reads labels from their map files: logits are in zip order
    # (data/README.md, "The label-order trap (DeiT)")
    return label_order == "zip" or (label_order == "auto" and bool(args.get("cache", False)))


#: trainers of this project whose labels always come from class folders, i.e. sorted wnids (ImageFolder order)
FOLDER_TRAINERS = ("Conv/common_resnet/train.py",)


def _args_of(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """The file's ``args`` as a mapping (our trainers save a dict; a caller may pass a loaded ``Namespace``)."""
    args = raw.get("args")
    return vars(args) if isinstance(args, argparse.Namespace) else args if isinstance(args, Mapping) else {}


#: an ImageNet class id (WordNet noun offset), as ImageNet's class folders and the zip maps' folders name classes
WNID = re.compile(r"n\d{8}")


def recorded_class_names(raw: Mapping[str, Any]) -> list[str] | None:
    """The class names a file in this project's format records under ``classes`` (index = label; written by
    ``Deit/main.py``, ``Conv/ffcv`` and ``convert`` since they record it), or None (older files, upstream files)."""
    names = raw.get("classes")
    if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
        return list(names)
    return None


def recorded_wnid_order(raw: Mapping[str, Any]) -> str | None:
    """``"sorted"`` or ``"permuted"`` where the file records its class names as distinct ImageNet wnids
    (:func:`recorded_class_names`), else None (no names, or other names: Fashion-MNIST's, CIFAR's, a folder's).

    The rule: a head is only permuted (to sorted order, by the recorded names) where the names are wnids, because
    only then is the order it is evaluated in known: an ImageFolder of wnid class folders (ImageNet val, or any
    subset of its classes) labels them in sorted order, as every loader of this project that reads class folders
    does. That holds for any number of wnids, so a head of a few ImageNet classes is permuted like one of 1000. Other
    names carry no such convention (Fashion-MNIST's and CIFAR's labels are fixed by the dataset, not by sorting), so
    their heads are kept."""
    names = recorded_class_names(raw)
    if names is None or len(set(names)) != len(names) or not all(WNID.fullmatch(n) for n in names):
        return None
    return "sorted" if names == sorted(names) else "permuted"


def sorted_order_reason(raw: Mapping[str, Any]) -> str | None:
    """Why a file in this project's format provably holds its head in sorted-wnid (ImageFolder) order, or None where
    its class order is that of map files it does not record: a ``Deit/main.py --cache`` run reads the zip maps in its
    data folder (sorted wnids when ``data/prepare_imagenet_zip.py`` wrote them, the authors' permuted order when
    theirs are used), a ``Conv/ffcv`` run a ``.beton`` (written from class folders or from a zip + map). Recorded
    wnid class names (:func:`recorded_wnid_order`) decide first: sorted ones prove it, permuted ones disprove it."""
    args = _args_of(raw)
    order = recorded_wnid_order(raw)
    if order == "permuted":
        return None
    if order == "sorted":
        return "its recorded classes"
    if isinstance(raw.get("hub"), Mapping):
        return "written by hub convert"  # convert always writes sorted-wnid order
    trainer = raw.get("trainer")
    if trainer in FOLDER_TRAINERS:
        return f"trained by {trainer}"
    if trainer == "Deit/main.py" and not args.get("cache"):
        return "trained by Deit/main.py without --cache"
    return None


def check_ours(raw: Mapping[str, Any], arch: str, *, label_order: str = "auto",
               zip_map: str | os.PathLike | None = None, source: str = "checkpoint") -> bool:
    """Check the flags given for a file in this project's format (``raw['arch']`` a dict) and say whether its head
    is permuted: from the authors' zip order (``label_order="zip"``) or, under ``auto``, by the class names it
    records where they are wnids in another than sorted order (:func:`recorded_wnid_order`). ``arch`` must be the
    network the file records. Otherwise the head is kept (``auto`` and ``standard`` keep the order it was trained
    in: its class folders' or the zip maps' that this project's data/ scripts write, sorted wnids); ``zip`` only on
    a run whose labels may have come from the authors' maps and that does not record its wnids
    (:func:`sorted_order_reason` None). Meaningless flags are refused, not ignored."""
    recorded = raw["arch"].get("name")
    if recorded != arch:
        raise UserError(f"{source} is in this project's format and records its network ({recorded}); --arch "
                        f"{arch} names another one (pass --arch {recorded})")
    args = _args_of(raw)
    if label_order not in ("auto", "zip", "standard"):
        raise UserError(f"--label-order must be auto, zip or standard, got {label_order!r}")
    flags = [f for f, given in (("--zip-map", zip_map is not None), ("--label-order zip", label_order == "zip"))
             if given]
    reason, order = sorted_order_reason(raw), recorded_wnid_order(raw)
    verb, them = ("apply", "them") if len(flags) > 1 else ("applies", "it")
    if flags and reason is not None:
        raise UserError(f"{source} is in this project's format and records its class order (sorted wnids: "
                        f"{reason}); {' and '.join(flags)} {verb} to upstream files and to our runs trained on the "
                        f"authors' zip maps only (drop {them})")
    if flags and order == "permuted":
        raise UserError(f"{source} is in this project's format and records its class order (wnids, not sorted: its "
                        f"recorded classes), by which --label-order auto permutes its head to sorted-wnid order; "
                        f"{' and '.join(flags)} {verb} to upstream files and to our runs that do not record their "
                        f"classes only (drop {them})")
    if zip_map is not None and label_order != "zip":
        raise UserError(f"{source} is in this project's format, whose head is kept in its training order unless "
                        f"--label-order zip is given; --zip-map alone would be ignored (add --label-order zip if the "
                        f"run was trained on the authors' zip maps, else drop --zip-map)")
    if label_order == "auto" and args.get("cache") and reason is None and order is None:
        log.info("%s was trained with --cache: its head is kept in the class order of the zip maps it read (sorted "
                 "wnids when data/prepare_imagenet_zip.py wrote them); pass --label-order zip if those were the "
                 "authors' maps", source)
    return label_order == "zip" or (label_order == "auto" and order == "permuted")


def convert_checkpoint(raw: Mapping[str, Any], arch: str, *, label_order: str = "auto",
                       zip_map: str | os.PathLike | None = None, plain_torchvision: bool = False,
                       eval_transform: Mapping[str, Any] | None = None, offline: bool = False,
                       source: str = "checkpoint", model_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Turn a checkpoint of any layout :func:`maxsup.models.read_weights` knows (ours, DeiT's and SMMix's
    ``{'model'}``, timm-train, LV-ViT's bare ``.pth.tar``, Lightning, ffcv-imagenet) into this project's convention
    (``model``, ``arch``, ``eval_transform``, ``args``, ``epoch``, ``hub``), loading it strictly into the rebuilt
    network on the way.

    Args:
        raw: the loaded file. arch: a timm name (``deit_small_patch16_224``, ``lvvit_s``) or a torchvision ResNet
            name (``resnet50``); for a file in this project's format, the network it records (another is refused).
        label_order: upstream files: ``auto`` permutes the classifier rows (and a token head's) from the authors'
            zip order to sorted-wnid order when ``raw['args']['cache']`` is true; ``zip`` always, ``standard``
            never. Files in this project's format keep their head unless ``zip`` is given, which is refused where
            the file provably is in sorted-wnid order, or (``auto``) they record their class names as wnids in
            another than sorted order: the rows are then sorted by those names, with no zip map (``hub
            label_order`` ``recorded->standard``; :func:`check_ours`, :func:`recorded_wnid_order`). The converted
            file records its class names in its own order where the source recorded them.
        plain_torchvision: load BlurPool weights into a plain torchvision ResNet by dropping the blur filters.
            This changes the network's function (lower accuracy): for feature extraction/fine-tuning only.
        eval_transform: kwargs of ``transform_spec``; default: the file's own (ours) or :func:`eval_transform_for`.
        model_kwargs: extra :func:`maxsup.models.create_model` arguments of the network the weights belong to (e.g.
            ``img_size=384`` for a DeiT fine-tuned at 384 px); they override those recorded in our own files and are
            stored in ``arch``, so the converted file rebuilds the same network.
    """
    weights = read_weights(raw, source)
    args = weights.args
    names: list[str] | None = None  # the class names the output records (index = output row)
    by_names = False  # permuted by the names the file records (no zip map)
    if weights.layout == "maxsup":  # ours: the file records its network and was trained in its own class order
        remapped = check_ours(raw, arch, label_order=label_order, zip_map=zip_map, source=source)
        names = recorded_class_names(raw)
        by_names = remapped and label_order != "zip"  # check_ours: only recorded wnids out of sorted order
        if remapped and not by_names:
            names = None  # a zip-order head: the names it recorded (if any) no longer say its order
    else:
        remapped = _wants_zip_order(label_order, args)
    if by_names and names is not None:
        perm = torch.tensor(sorted(range(len(names)), key=names.__getitem__))  # sorted class j = recorded perm[j]
    elif remapped:  # the map is checked before the (slow) model build, so a bad map fails fast
        perm = torch.tensor(zip_to_standard_permutation(load_zip_order(zip_map, offline=offline)))
    else:
        perm = None
    sd = weights.state_dict
    kwargs: dict[str, Any] = {}
    if weights.arch is not None and weights.arch.get("name") == arch:  # ours: rebuild exactly what was trained
        kwargs = {k: v for k, v in (weights.arch.get("kwargs") or {}).items() if k != "blurpool"}
    kwargs.update(model_kwargs or {})
    if arch.startswith("resnet"):
        blurpool = any(k.endswith(".blur_filter") for k in sd)
        if blurpool and plain_torchvision:
            log.warning("--plain-torchvision: dropping the BlurPool filters; the network computes a different "
                        "function than the one trained (expect lower accuracy)")
            sd = {re.sub(r"\.conv\.weight$", ".weight", k): v for k, v in sd.items() if not k.endswith(".blur_filter")}
            weights = dataclasses.replace(weights, state_dict=sd)
            blurpool = False
        if blurpool:
            kwargs["blurpool"] = True
        classifier = "fc"
    else:
        head = token_head_of(weights)
        if head and "token_head" not in kwargs:
            kwargs["token_head"] = head  # an SMMix file: its token head is kept (as TokenHeadViT's aux_head)
        classifier = "backbone.head" if head else "head"
        if not head and "head.weight" not in sd and "fc.weight" in sd:  # this project's CIFAR ResNets
            classifier = "fc"
    weight_key = f"{classifier}.weight"
    plain_key = weight_key.removeprefix("backbone.")
    head_weight = sd.get(weight_key, sd.get(plain_key))
    if head_weight is None:
        raise LayoutError(f"{source}: keys fit no {arch} checkpoint (read as {weights.layout!r}; tried "
                          f"{', '.join(LAYOUTS)}): no {plain_key!r}; first keys: {describe_keys(sd)}")
    num_classes = int(head_weight.shape[0])
    # names and shapes as load_state_dict(strict=True) checks them, against a model built on the meta device
    # (no memory, no weight init), so a bad file fails with the first offending keys
    with torch.device("meta"):
        own = create_model(arch, num_classes, **kwargs).state_dict()
    sd, rename = fit_keys(weights, own, source)
    _check_shapes(arch, own, sd, source)

    if names is not None and len(names) != num_classes:
        raise UserError(f"{source} records {len(names)} class names but its head has {num_classes} rows; the file "
                        f"is inconsistent (remove its 'classes' entry to convert it as an older file)")
    if perm is not None:
        if len(perm) != num_classes:
            raise ZipMapError(f"zip map has {len(perm)} classes but the checkpoint's head has {num_classes}")
        sd = dict(sd)
        # a token head (LV-ViT's, SMMix's, our token-labelling runs') predicts the same classes as the class head
        permuted = [key for key in (weight_key, f"{classifier}.bias", "aux_head.weight", "aux_head.bias") if key in sd]
        for key in permuted:
            sd[key] = sd[key][perm]
        if by_names and names is not None:
            names = [names[i] for i in perm.tolist()]
            log.info("permuted %s rows from the class order the file records (%d wnids, not sorted) to sorted-wnid "
                     "(ImageFolder) order", ", ".join(permuted), num_classes)
        else:
            log.info("permuted %s rows from the authors' zip label order to sorted-wnid (ImageFolder) order",
                     ", ".join(permuted))

    if eval_transform is None and weights.layout == "maxsup" and isinstance(raw.get("eval_transform"), Mapping):
        spec = dict(raw["eval_transform"])
    else:
        spec = transform_spec(mean=IMAGENET_MEAN, std=IMAGENET_STD,
                              **(eval_transform or eval_transform_for(arch, kwargs)))
    return {
        "model": {k: v.contiguous() for k, v in sd.items()},
        "arch": arch_spec(arch, num_classes, **kwargs),
        "eval_transform": spec,
        "args": args,
        "epoch": weights.epoch,
        "hub": {"source": source, "layout": weights.layout, "renames": [*weights.renames, rename],
                "label_order": "recorded->standard" if by_names else "zip->standard" if remapped else "standard",
                "plain_torchvision": bool(plain_torchvision)},
        **({"classes": names} if names is not None else {}),  # index = output row, as the trainers record them
    }
