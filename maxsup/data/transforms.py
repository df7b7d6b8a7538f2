"""Evaluation preprocessing stored inside checkpoints, so analysis/ can rebuild it without knowing the trainer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torchvision import transforms as T

__all__ = ["transform_spec", "eval_transform", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def transform_spec(img_size: int, crop_pct: float = 1.0, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD, interpolation: str = "bilinear",
                   grayscale_to_rgb: bool = True) -> dict[str, Any]:
    """The ``eval_transform`` entry of a checkpoint: resize the short side to img_size/crop_pct, center-crop
    img_size, to tensor, normalise. ``crop_pct`` 0.875 is DeiT's eval setting."""
    if img_size < 1 or not 0 < crop_pct <= 1:
        raise ValueError(f"invalid eval transform: img_size={img_size}, crop_pct={crop_pct}")
    return {"img_size": int(img_size), "crop_pct": float(crop_pct), "mean": [float(m) for m in mean],
            "std": [float(s) for s in std], "interpolation": interpolation, "grayscale_to_rgb": grayscale_to_rgb}


def eval_transform(spec: dict[str, Any]) -> T.Compose:
    """torchvision transform from a :func:`transform_spec` dict (PIL image in, normalised (C, S, S) tensor out: C = 3,
    or 1 for a model of grey images, whose spec normalises one channel without ``grayscale_to_rgb``)."""
    size = spec["img_size"]
    resize = int(round(size / spec.get("crop_pct", 1.0)))  # 224/0.875 = 256, 32/0.875 → 37
    interp = T.InterpolationMode(spec.get("interpolation", "bilinear"))
    steps: list[Any] = []
    if spec.get("grayscale_to_rgb", True):
        steps.append(T.Lambda(lambda im: im.convert("RGB")))
    elif len(spec["mean"]) == 1:  # a grey model (in_chans=1) also reads RGB files, e.g. an ImageFolder of FMNIST
        steps.append(T.Lambda(lambda im: im.convert("L")))
    steps += [T.Resize(resize, interpolation=interp), T.CenterCrop(size), T.ToTensor(),
              T.Normalize(spec["mean"], spec["std"])]
    return T.Compose(steps)
