"""Load an upstream checkpoint safely and turn it into this project's convention (``model``, ``arch``,
``eval_transform``, ``args``, ``epoch``, ``hub``), loading it strictly into the rebuilt network on the way.

* The DeiT-Small's head is permuted from the authors' zip label order to sorted-wnid order
  (:mod:`maxsup.hub.zip_order`).
* The ResNet-50s come from ffcv-based training with BlurPool; their keys only load strictly into a BlurPool
  ResNet-50 (:func:`maxsup.models.create_model` with ``blurpool=True``). Loading into a plain torchvision ResNet-50
  drops the blur and changes the function, so it is an explicit opt-in (``plain_torchvision``).

Files are loaded with ``torch.load(weights_only=True)``; the authors' DeiT file pickles ``argparse.Namespace`` args,
so exactly that one type is allow-listed (and logged) when the plain load refuses it.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, transform_spec
from ..errors import UserError
from ..models import arch_spec, compare_keys, create_model, describe_keys, strip_prefixes
from ..training.checkpoint import load_checkpoint
from .registry import FFCV_EVAL, REGISTRY, LayoutError, ZipMapError
from .zip_order import load_zip_order, zip_to_standard_permutation

__all__ = ["load_released_checkpoint", "normalize_resnet_state_dict", "convert_checkpoint"]

log = logging.getLogger("maxsup.hub")


def _plain(value: Any) -> Any:
    """Args as primitives so the converted checkpoint loads with ``weights_only=True``."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def load_released_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load(weights_only=True)``; if the file pickles ``argparse.Namespace`` (the authors' DeiT ``args``),
    retry with exactly that type allow-listed. ``args`` is returned as a plain dict."""
    try:
        ckpt = load_checkpoint(path)
    except UserError as exc:
        if "Namespace" not in str(exc):
            raise
        log.warning("%s pickles argparse.Namespace; loading with weights_only=True and exactly argparse.Namespace "
                    "allow-listed (torch.serialization.safe_globals)", path)
        ckpt = load_checkpoint(path, allow_namespace=True)
    if isinstance(ckpt.get("args"), argparse.Namespace):
        ckpt["args"] = _plain(vars(ckpt["args"]))
    return ckpt


def normalize_resnet_state_dict(raw: Mapping[str, Any]) -> tuple[dict[str, Tensor], str]:
    """Accept the three ResNet layouts (data/README.md, "ResNet-50 key layouts and BlurPool") and return
    (torchvision-named state_dict, layout).

    * ``lightning``: ``{'state_dict': {'model.conv1.weight', ..., 'criterion.*'}}`` (Conv/ffcv, PyTorch Lightning);
    * ``ffcv-imagenet``: a raw DDP state_dict, ``{'module.conv1.weight', ...}`` (ffcv-imagenet ``final_weights.pt``);
    * ``torchvision``: ``{'model': {...}, 'optimizer': ...}`` (torchvision references / our trainers).
    BlurPool-wrapped convolutions keep their ``.conv.weight`` / ``.blur_filter`` keys.
    """
    if isinstance(raw.get("state_dict"), Mapping):
        sd, layout = dict(raw["state_dict"]), "lightning"
    elif isinstance(raw.get("model"), Mapping):
        sd, layout = dict(raw["model"]), "torchvision"
    else:
        sd, layout = dict(raw), "raw"
    if layout == "lightning" or any(str(k).startswith("model.") for k in sd):
        sd = {k[len("model."):]: v for k, v in sd.items() if str(k).startswith("model.")}  # drops criterion.*
    stripped = strip_prefixes(sd)
    if layout == "raw" and stripped.keys() != sd.keys():
        layout = "ffcv-imagenet"
    bad = [k for k, v in stripped.items() if not isinstance(v, Tensor)]
    if bad or not stripped:
        raise LayoutError(f"checkpoint keys match no known ResNet layout (Lightning 'state_dict' with 'model.' "
                          f"prefix, ffcv-imagenet 'module.' prefix, or {{'model': state_dict}}); first keys: "
                          f"{describe_keys(raw)}")
    return stripped, layout


def _check_strict(arch: str, num_classes: int, kwargs: dict[str, Any], sd: Mapping[str, Tensor], source: str,
                  layouts: str) -> None:
    """What ``load_state_dict(strict=True)`` checks (names and shapes), against a model built on the meta device
    (no memory, no weight init), so a bad file fails with the first offending keys."""
    with torch.device("meta"):
        own = create_model(arch, num_classes, **kwargs).state_dict()
    mismatch = compare_keys(own, sd)
    if mismatch.unexpected or mismatch.missing:
        raise LayoutError(f"{source}: keys match no known layout ({layouts}); first unexpected keys: "
                          f"{', '.join(mismatch.unexpected[:5]) or 'none'}; first missing keys: "
                          f"{', '.join(mismatch.missing[:5]) or 'none'}")
    if mismatch.shapes:
        raise LayoutError(f"{source}: {len(mismatch.shapes)} tensors have the wrong shape for {arch} "
                          f"(e.g. {mismatch.shapes[0]})")


def _wants_zip_order(label_order: str, args: Mapping[str, Any]) -> bool:
    if label_order not in ("auto", "zip", "standard"):
        raise UserError(f"--label-order must be auto, zip or standard, got {label_order!r}")
    # Deit/main.py --cache reads labels from the authors' map files: logits are in zip order
    # (data/README.md, "The label-order trap (DeiT)").
    return label_order == "zip" or (label_order == "auto" and bool(args.get("cache", False)))


def convert_checkpoint(raw: Mapping[str, Any], arch: str, *, label_order: str = "auto",
                       zip_map: str | os.PathLike | None = None, plain_torchvision: bool = False,
                       eval_transform: Mapping[str, Any] | None = None, offline: bool = False,
                       source: str = "checkpoint") -> dict[str, Any]:
    """Turn an upstream checkpoint into this project's convention (``model``, ``arch``, ``eval_transform``,
    ``args``, ``epoch``, ``hub``), loading it strictly into the rebuilt network on the way.

    Args:
        raw: the loaded upstream file. arch: ``deit_small_patch16_224`` (any timm name) or a torchvision ResNet
            name (``resnet50``). label_order: ``auto`` permutes the classifier rows from the authors' zip order to
            sorted-wnid order when ``raw['args']['cache']`` is true; ``zip`` always, ``standard`` never.
        plain_torchvision: load BlurPool weights into a plain torchvision ResNet by dropping the blur filters.
            This changes the network's function (lower accuracy): for feature extraction/fine-tuning only.
    """
    args = raw.get("args") or {}
    args = _plain(vars(args)) if isinstance(args, argparse.Namespace) else _plain(args)
    args = args if isinstance(args, dict) else {}
    remapped = _wants_zip_order(label_order, args)
    # The map is checked before the (slow) model build, so a bad map fails fast.
    perm = torch.tensor(zip_to_standard_permutation(load_zip_order(zip_map, offline=offline))) if remapped else None
    is_resnet = arch.startswith("resnet")
    if is_resnet:
        sd, layout = normalize_resnet_state_dict(raw)
        blurpool = any(k.endswith(".blur_filter") for k in sd)
        if blurpool and plain_torchvision:
            log.warning("--plain-torchvision: dropping the BlurPool filters; the network computes a different "
                        "function than the one trained (expect lower accuracy)")
            sd = {re.sub(r"\.conv\.weight$", ".weight", k): v for k, v in sd.items() if not k.endswith(".blur_filter")}
            blurpool = False
        classifier = "fc"
        layouts = "Lightning 'model.', ffcv-imagenet 'module.', torchvision {'model': ...}"
        default_eval = FFCV_EVAL if blurpool else {"img_size": 224, "crop_pct": 0.875, "interpolation": "bilinear"}
    else:
        sd = raw["model"] if isinstance(raw.get("model"), Mapping) else raw
        sd, layout, blurpool = strip_prefixes(sd), "deit", False
        classifier = "head"
        layouts = "DeiT {'model': state_dict} loading strictly into timm " + arch
        default_eval = REGISTRY["deit_small_maxsup"].eval_transform
    weight_key = f"{classifier}.weight"
    if weight_key not in sd:
        raise LayoutError(f"{source}: keys match no known layout ({layouts}); no {weight_key!r}, first keys: "
                          f"{describe_keys(sd)}")
    num_classes = int(sd[weight_key].shape[0])
    kwargs = {"blurpool": True} if blurpool else {}
    _check_strict(arch, num_classes, kwargs, sd, source, layouts)

    if perm is not None:
        if len(perm) != num_classes:
            raise ZipMapError(f"zip map has {len(perm)} classes but the checkpoint's head has {num_classes}")
        sd = dict(sd)
        for key in (weight_key, f"{classifier}.bias"):
            if key in sd:
                sd[key] = sd[key][perm]
        log.info("permuted %s rows from the authors' zip label order to sorted-wnid (ImageFolder) order", classifier)

    spec = transform_spec(mean=IMAGENET_MEAN, std=IMAGENET_STD, **(eval_transform or default_eval))
    return {
        "model": {k: v.contiguous() for k, v in sd.items()},
        "arch": arch_spec(arch, num_classes, **kwargs),
        "eval_transform": spec,
        "args": args,
        "epoch": int(raw.get("epoch", -1)) if isinstance(raw.get("epoch", -1), int) else -1,
        "hub": {"source": source, "layout": layout, "label_order": "zip->standard" if remapped else "standard",
                "plain_torchvision": bool(plain_torchvision)},
    }

