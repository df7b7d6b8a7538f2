"""Common corruptions (ImageNet-C, Hendrycks & Dietterich 2019) for paper Table 8, on the fly or precomputed.

On the fly, the 15 corruptions are applied after the evaluation resize and center crop, before normalisation, with
the severity constants made for that resolution: CIFAR-10-C's up to 32 px and Tiny-ImageNet-C's up to 64 px
(:mod:`maxsup.corruptions_lowres`, checked against the published generators), ImageNet-C's above, through
``corrupt-tta`` (a maintained port of the ImageNet-C functions that runs with today's scipy and scikit-image;
``bench/corruption_libraries.py`` shows why not ``imagecorruptions``). ImageNet-C's constants on a 28 px image put
fog or contrast at chance while noise barely registers, so a 28 px run measured collapse rather than robustness.
Each image's corruption is seeded by (seed, corruption, severity, index), so a rerun sees the same corrupted images
whatever the batch size, worker count or order.

Precomputed sets: :class:`CIFAR10C` reads the published ``<corruption>.npy`` files (10,000 test images × 5 severities
stacked, plus ``labels.npy``); :func:`imagenet_c_folder` reads ImageNet-C's ``<corruption>/<severity>/<wnid>/*.JPEG``.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .errors import UserError

__all__ = ["CORRUPTIONS", "parse_corruptions", "parse_severities", "corrupt", "CorruptedDataset", "CIFAR10C",
           "check_cifar10c", "imagenet_c_folder", "split_eval_transform"]

#: The 15 ImageNet-C benchmark corruptions, in the order of its tables (noise, blur, weather, digital).
CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression")


def parse_corruptions(text: str | Sequence[str] | None) -> list[str]:
    """``"fog,snow"`` (or a list) → validated names; None/empty → all 15."""
    names = [c.strip() for c in (text.split(",") if isinstance(text, str) else text or []) if c.strip()]
    if not names:
        return list(CORRUPTIONS)
    bad = [c for c in names if c not in CORRUPTIONS]
    if bad:
        raise UserError(f"unknown corruption {', '.join(bad)}; valid names: {', '.join(CORRUPTIONS)}")
    return list(dict.fromkeys(names))


def parse_severities(text: str | Sequence[int] | None) -> list[int]:
    """``"1,3,5"`` (or a list) → validated severities in 1..5; None/empty → 1..5."""
    items = text.split(",") if isinstance(text, str) else list(text or [])
    try:
        sev = [int(s) for s in items if str(s).strip()]
    except ValueError:
        raise UserError(f"severities must be integers between 1 and 5, got {text!r}") from None
    if not sev:
        return [1, 2, 3, 4, 5]
    bad = [s for s in sev if not 1 <= s <= 5]
    if bad:
        raise UserError(f"severity {bad[0]} is outside 1-5 (ImageNet-C defines severities 1, 2, 3, 4, 5)")
    return sorted(set(sev))


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """corrupt-tta draws from NumPy's global generator, except ``impulse_noise``, which calls scikit-image's
    ``random_noise`` without a generator (a fresh, unseeded one each call); give it a seeded one here."""
    import corrupt_tta.corruptions as ct
    from skimage.util import random_noise

    state = np.random.get_state()
    np.random.seed(seed)
    original = ct.random_noise
    ct.random_noise = functools.partial(random_noise, rng=seed)
    try:
        yield
    finally:
        ct.random_noise = original
        np.random.set_state(state)


def corrupt(image: Image.Image | np.ndarray, corruption: str, severity: int, seed: int = 0,
            scale: str | None = None) -> Image.Image:
    """One corrupted copy of ``image`` (PIL or (H, W[, 3]) uint8), same size and mode ('L' stays 'L').

    ``scale`` picks the severity constants: ``cifar`` (CIFAR-10-C's, for images up to 32 px), ``tiny``
    (Tiny-ImageNet-C's, up to 64 px) or ``imagenet`` (ImageNet-C's, through corrupt-tta); None picks by the image's
    larger side (:func:`maxsup.corruptions_lowres.scale_for`)."""
    from corrupt_tta import corrupt as tta_corrupt

    from .corruptions_lowres import corrupt_lowres, scale_for

    parse_corruptions([corruption])
    parse_severities([severity])
    mode = image.mode if isinstance(image, Image.Image) else ("L" if np.asarray(image).ndim == 2 else "RGB")
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    scale = scale or scale_for(*arr.shape[:2])
    if scale not in ("cifar", "tiny", "imagenet"):
        raise UserError(f"unknown corruption scale {scale!r}; use cifar, tiny or imagenet")
    with _seeded(seed):
        if scale == "imagenet":
            out = tta_corrupt(arr, severity=int(severity), corruption_name=corruption)
        else:
            out = corrupt_lowres(arr, corruption, int(severity), scale, seed)
    out = Image.fromarray(np.clip(np.asarray(out), 0, 255).astype(np.uint8))
    return out.convert(mode) if mode != "RGB" else out


def _item_seed(seed: int, corruption: str, severity: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, CORRUPTIONS.index(corruption), severity, index]).generate_state(1)[0])


def split_eval_transform(transform: Any) -> tuple[Callable, Callable]:
    """(geometric part, tensor part) of a torchvision ``Compose`` ending in ``ToTensor`` (+ ``Normalize``): the
    corruption goes between them."""
    from torchvision import transforms as T

    steps = list(transform.transforms)
    cut = next((i for i, s in enumerate(steps) if isinstance(s, T.ToTensor)), None)
    if cut is None:
        raise ValueError("the evaluation transform has no ToTensor step to insert the corruption before")
    return T.Compose(steps[:cut]), T.Compose(steps[cut:])


class CorruptedDataset(Dataset):
    """``base`` (yielding PIL images, no transform) with one corruption at one severity, applied between the
    geometric and the tensor part of ``transform`` (see :func:`split_eval_transform`). ``targets`` is ``base``'s."""

    def __init__(self, base: Any, corruption: str, severity: int, transform: Any, seed: int = 0):
        self.base, self.corruption, self.severity, self.seed = base, corruption, int(severity), seed
        parse_corruptions([corruption])
        parse_severities([severity])
        self.geometric, self.to_tensor = split_eval_transform(transform)
        self.targets = getattr(base, "targets", None)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        img, label = self.base[i]
        img = corrupt(self.geometric(img), self.corruption, self.severity,
                      _item_seed(self.seed, self.corruption, self.severity, i))
        return self.to_tensor(img), label


def check_cifar10c(root: str | os.PathLike, corruptions: Sequence[str]) -> None:
    """Fail early, naming the first missing file, if ``root`` lacks ``labels.npy`` or a ``<corruption>.npy``."""
    root = Path(root)
    for name in [*corruptions, "labels"]:
        if not (root / f"{name}.npy").is_file():
            raise UserError(f"CIFAR-10-C file {root / f'{name}.npy'} is missing: {root} must hold <corruption>.npy for "
                            f"every corruption evaluated, and labels.npy (the extracted CIFAR-10-C.tar)")


class CIFAR10C(Dataset):
    """One (corruption, severity) of the published CIFAR-10-C (Hendrycks & Dietterich 2019).

    ``root`` holds ``<corruption>.npy`` (50,000 × 32 × 32 × 3 uint8: severities 1..5 stacked, 10,000 test images
    each) and ``labels.npy``. Also reads CIFAR-100-C, which has the same layout.
    """

    def __init__(self, root: str | os.PathLike, corruption: str, severity: int, transform: Callable | None = None):
        root = Path(root)
        parse_corruptions([corruption])
        severity = parse_severities([severity])[0]
        check_cifar10c(root, [corruption])
        path, labels_path = root / f"{corruption}.npy", root / "labels.npy"
        images = np.load(path, mmap_mode="r")
        labels = np.load(labels_path)
        if images.ndim != 4 or images.shape[0] % 5 or images.shape[0] != labels.shape[0]:
            raise UserError(f"{path} has shape {images.shape} and labels.npy {labels.shape}; expected (5·N, H, W, 3) "
                            f"and (5·N,), the five severities stacked")
        n = images.shape[0] // 5
        self.data = images[(severity - 1) * n: severity * n]
        self.targets = [int(t) for t in labels[(severity - 1) * n: severity * n]]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        img = Image.fromarray(np.ascontiguousarray(self.data[i]))
        return (self.transform(img) if self.transform else img), self.targets[i]


def imagenet_c_folder(root: str | os.PathLike, corruption: str, severity: int, transform: Callable | None = None):
    """ImageNet-C's ``<root>/<corruption>/<severity>/<wnid>/*.JPEG`` as a torchvision ``ImageFolder`` (labels: the
    sorted wnids, i.e. the standard ImageNet-1k indices when all 1000 are present)."""
    import torchvision

    parse_corruptions([corruption])
    severity = parse_severities([severity])[0]
    folder = Path(root) / corruption / str(severity)
    if not folder.is_dir():
        raise UserError(f"ImageNet-C folder {folder} is missing: the layout is <root>/<corruption>/<severity>/<wnid>/"
                        f"*.JPEG")
    return torchvision.datasets.ImageFolder(folder, transform=transform)
