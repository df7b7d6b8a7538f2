"""Token Labeling (Jiang et al., NeurIPS 2021, LV-ViT) as a DeiT training option: dense targets, MixToken, the loss.

Label maps (the official layout, read alike from the official NFNet-F6 dump and from ``data/make_token_labels.py``):
``LABEL_DIR/<class folder>/<image stem>.pt``, a float16 tensor (2, k, H, W): the top-k class scores (logits) at every
position of the teacher's output grid, then their class indices.

Per training image (``--token-label-aug crop-first``, the default), :class:`CropFlipWithBox` draws the same
RandomResizedCrop (or padded RandomCrop) and horizontal flip as the DeiT transform and records the crop box;
:func:`dense_targets` then cuts that box out of the full score map with ``torchvision.ops.roi_align`` (S×S for the
tokens, 1×1 for the CLS target), mirrors it if the image was flipped, and takes a softmax over classes, so a token's
target describes the pixels under that token. With
``--token-label-aug official``, :class:`OfficialOrderCropFlip` runs the official order instead: flip, timm's
RandAugment on the full image with the map warped by the same shear/translate/rotate draws (:func:`warp_label_map`),
then the crop.

A map is placed over the whole image (box fractions × map size), whatever the image's aspect ratio: right for maps
from ``data/make_token_labels.py`` (the whole image resized to N×N), off for non-square images with maps made on a
centre crop (the official ``generate_label.py`` uses timm's eval transform), exactly as in the official trainer.

Label smoothing of the map targets (``--token-label-smoothing``): ``official`` (default) is the official
``mixup_target``/``get_labelmaps_with_coords`` rule t·(1 − s + s/K) + s/K, whose rows sum to 1 + s/K; ``normalized``
is t·(1 − s) + s/K (rows sum to 1, timm's rule for one-hot targets). One-hot targets (no label maps) are smoothed by
timm's rule in both, as in the official code.

Differences from the official code, on purpose: the box is given to ``roi_align`` as (x1, y1, x2, y2) (the official
``get_label`` passes (row, col) pairs in the (x, y) slots, which transposes the crop on the map); the ground-truth
label is not smuggled into the map tensor.

Loss (:class:`TokenLabelStep`): ``cls_weight · criterion(x_cls, λ·t_cls + (1 − λ)·t_cls[flip]) + dense_weight ·
mean over tokens CE(x_aux, t_token)``, λ = 1 − box area / N from MixToken (the model un-mixes ``x_aux``, so token
targets are never mixed). Without label maps the targets are the (smoothed) one-hot labels, broadcast to every
token: the official MixToken-only fallback.
"""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from einops import rearrange, repeat
from timm.data.auto_augment import RandAugment
from timm.data.mixup import mixup_target
from timm.data.transforms import MaybeToTensor, RandomResizedCropAndInterpolation
from torch import Tensor, nn
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.ops import roi_align

from maxsup.errors import UserError

__all__ = ["CropFlipWithBox", "OfficialOrderCropFlip", "TokenLabelDataset", "dense_targets", "TokenLabelStep",
           "label_map_path", "warp_label_map"]


class CropFlipWithBox:
    """DeiT's training transform split so that the crop box and the flip are known: ``img → (tensor, box, flipped)``.

    ``box`` = (x1, y1, x2, y2) of the crop as fractions of the original image (may extend beyond [0, 1] with a padded
    RandomCrop); ``flipped``: whether the crop was mirrored. The rest of the pipeline (RandAugment, colour jitter,
    normalisation, random erasing) runs unchanged afterwards; its geometric RandAugment ops are not mirrored on the
    map (label-preserving noise at the crop's scale). :class:`OfficialOrderCropFlip` (``--token-label-aug official``)
    is the official order, which warps the map with them.
    """

    def __init__(self, transform: transforms.Compose):
        ts = list(transform.transforms)
        if ts and isinstance(ts[0], transforms.Grayscale):
            ts.pop(0)  # ImageFolder images are RGB already
        if not ts or not isinstance(ts[0], (RandomResizedCropAndInterpolation, transforms.RandomCrop)):
            raise ValueError(f"the training transform must start with a random crop, got {ts[:1]}")
        self.crop = ts.pop(0)
        self.flip_p = ts.pop(0).p if ts and isinstance(ts[0], transforms.RandomHorizontalFlip) else 0.0
        self.rest = transforms.Compose(ts)

    #: whether ``__call__`` takes and returns the label map (:class:`OfficialOrderCropFlip`)
    warps_map = False

    def __call__(self, img: Any) -> tuple[Tensor, Tensor, bool]:
        img, box = self._crop(img)
        flipped = bool(self.flip_p > 0 and torch.rand(1).item() < self.flip_p)
        if flipped:
            img = TF.hflip(img)
        return self.rest(img), box, flipped

    def _crop(self, img: Any) -> tuple[Any, Tensor]:
        """The random crop; ``box`` (x1, y1, x2, y2) in fractions of ``img``."""
        w0, h0 = img.size
        if isinstance(self.crop, RandomResizedCropAndInterpolation):
            i, j, h, w = self.crop.get_params(img, self.crop.scale, self.crop.ratio)
            interp = self.crop.interpolation
            if isinstance(interp, (tuple, list)):
                interp = random.choice(interp)
            img = TF.resized_crop(img, i, j, h, w, list(self.crop.size), interp)
        else:
            crop: transforms.RandomCrop = self.crop
            pad = crop.padding or 0
            pad = pad if isinstance(pad, int) else pad[0]  # DeiT's small-image crop pads all sides equally
            if pad:
                img = TF.pad(img, pad, crop.fill, crop.padding_mode)
            i, j, h, w = crop.get_params(img, crop.size)
            img = TF.crop(img, i, j, h, w)
            i, j = i - pad, j - pad
        return img, torch.tensor([j / w0, i / h0, (j + w) / w0, (i + h) / h0], dtype=torch.float32)


#: ``--token-label-aug`` orders: RandAugment after the crop (label-preserving noise) or the official order.
AUG_ORDERS = ("crop-first", "official")


def _pil_affine(name: str, args: tuple, size: tuple[int, int]) -> tuple[float, ...] | None:
    """The (a, b, c, d, e, f) matrix that PIL's AFFINE transform gets for timm's RandAugment op ``name`` with level
    ``args`` on an image of ``size`` = (w, h): output pixel (x, y) samples input (a·x + b·y + c, d·x + e·y + f),
    in pixel units. None for ops that move no pixel (colour, contrast, ...)."""
    w, h = size
    if name == "ShearX":
        return (1.0, args[0], 0.0, 0.0, 1.0, 0.0)
    if name == "ShearY":
        return (1.0, 0.0, 0.0, args[0], 1.0, 0.0)
    if name in ("TranslateXRel", "TranslateX"):
        return (1.0, 0.0, args[0] * w if name.endswith("Rel") else args[0], 0.0, 1.0, 0.0)
    if name in ("TranslateYRel", "TranslateY"):
        return (1.0, 0.0, 0.0, 0.0, 1.0, args[0] * h if name.endswith("Rel") else args[0])
    if name == "Rotate":  # PIL's Image.rotate: counter-clockwise by `degrees` about (w/2, h/2)
        a = -math.radians(args[0])
        cos, sin = round(math.cos(a), 15), round(math.sin(a), 15)
        cx, cy = w / 2.0, h / 2.0
        return (cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy)
    return None


def warp_label_map(label_map: Tensor, matrix: tuple[float, ...], size: tuple[int, int]) -> Tensor:
    """Move a label map as PIL's AFFINE ``matrix`` moves the pixels of a ``size`` = (w, h) image it covers.

    ``label_map``: (2, k, H, W) top-k scores and class indices over the whole image (H×W cells). Each output cell
    takes the cell under its centre's source point (nearest neighbour, as the official ``affine_label``); cells whose
    source lies outside the image get score 0 for every class (uniform after the softmax), as the official fill.
    """
    _, _, hm, wm = label_map.shape
    w, h = size
    rows = (torch.arange(hm, dtype=torch.float64) + 0.5) * (h / hm)  # cell centres in image pixels
    cols = (torch.arange(wm, dtype=torch.float64) + 0.5) * (w / wm)
    y, x = torch.meshgrid(rows, cols, indexing="ij")
    a, b, c, d, e, f = matrix
    src_col = torch.floor((a * x + b * y + c) * (wm / w)).long()
    src_row = torch.floor((d * x + e * y + f) * (hm / h)).long()
    inside = (src_col >= 0) & (src_col < wm) & (src_row >= 0) & (src_row < hm)
    out = label_map[:, :, src_row.clamp(0, hm - 1), src_col.clamp(0, wm - 1)]
    out[0] = torch.where(inside, out[0], torch.zeros((), dtype=out.dtype))
    return out


class _RecordingRandAugment:
    """timm's RandAugment run unchanged (same ops, same random draws), recording the level arguments of every op it
    applies, so that the geometric ones can be replayed on the label map."""

    def __init__(self, ra: RandAugment):
        self.calls: list[tuple[str, tuple, tuple[int, int]]] = []
        ops = []
        for op in ra.ops:
            op = copy.copy(op)
            op.aug_fn = self._recorder(op.name, op.aug_fn)
            ops.append(op)
        self.ra = RandAugment(ops, ra.num_layers, ra.choice_weights)

    def _recorder(self, name: str, fn: Any) -> Any:
        def record(img: Any, *args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, img.size))
            return fn(img, *args, **kwargs)
        return record

    def __call__(self, img: Any, label_map: Tensor) -> tuple[Any, Tensor]:
        self.calls.clear()
        img = self.ra(img)
        for name, args, size in self.calls:
            matrix = _pil_affine(name, args, size)
            if matrix is not None:
                label_map = warp_label_map(label_map, matrix, size)
        return img, label_map


class OfficialOrderCropFlip(CropFlipWithBox):
    """The official Token Labeling order (``tlt/data/label_transforms_factory.py``): flip, then RandAugment (and the
    other PIL-stage transforms) on the full image, the label map flipped and warped with every geometric op (shear,
    translate, rotate), then the random crop, recorded as a box on the warped map; then ToTensor, Normalize, random
    erasing. ``img, map → (tensor, box, flipped=False, warped map)`` (the flip is already in the map)."""

    warps_map = True

    def __init__(self, transform: transforms.Compose):
        super().__init__(transform)
        ts = list(self.rest.transforms)
        k = next((i for i, t in enumerate(ts) if isinstance(t, (transforms.ToTensor, MaybeToTensor))), len(ts))
        self.before = [_RecordingRandAugment(t) if isinstance(t, RandAugment) else t for t in ts[:k]]
        self.rest = transforms.Compose(ts[k:])

    def __call__(self, img: Any, label_map: Tensor) -> tuple[Tensor, Tensor, bool, Tensor]:  # type: ignore[override]
        if self.flip_p > 0 and torch.rand(1).item() < self.flip_p:
            img, label_map = TF.hflip(img), label_map.flip(-1)
        for t in self.before:
            if isinstance(t, _RecordingRandAugment):
                img, label_map = t(img, label_map)
            else:
                img = t(img)
        img, box = self._crop(img)
        return self.rest(img), box, False, label_map


def label_map_path(label_root: Path, image_path: str | Path) -> Path:
    """``label_root/<class folder>/<stem>.pt`` for ``.../<class folder>/<stem>.<ext>`` (the official layout)."""
    p = Path(image_path)
    return Path(label_root) / p.parent.name / f"{p.stem}.pt"


def _image_samples(ds: Any) -> tuple[Any, list[tuple[str, int]]]:
    """(ImageFolder, [(path, label used for training)]) for an ImageFolder or a ``TargetSubset`` of one."""
    if hasattr(ds, "samples") and hasattr(ds, "loader"):
        return ds, [(p, int(t)) for p, t in ds.samples]
    inner = getattr(ds, "dataset", None)
    if inner is not None and hasattr(inner, "samples") and hasattr(inner, "loader"):
        return inner, [(inner.samples[i][0], int(t)) for i, t in zip(ds.indices, ds.targets, strict=True)]
    raise UserError(f"--token-label-data needs an image-folder dataset (--data-set FOLDER or IMNET without --cache), "
                    f"got {type(ds).__name__}")


class TokenLabelDataset(Dataset):
    """Images with their label maps: item = ``(image (3, H, W), (label, map (2, k, h, w) fp16, box (4,), flipped))``.

    Every map is checked for existence up front (a missing one names the image and the path expected); indices are
    checked against ``num_classes`` when a map is read, and against ``LABEL_DIR/meta.json`` when it exists.
    """

    def __init__(self, base: Any, label_root: str | Path, num_classes: int, transform: CropFlipWithBox):
        self.folder, self.samples = _image_samples(base)
        self.label_root, self.num_classes, self.transform = Path(label_root), num_classes, transform
        self.targets = [t for _, t in self.samples]
        if not self.label_root.is_dir():
            raise UserError(f"--token-label-data {self.label_root} is not a folder")
        for path, _ in self.samples:
            expected = label_map_path(self.label_root, path)
            if not expected.is_file():
                raise UserError(f"no label map for image {path}: expected {expected}; generate the maps with "
                                f"data/make_token_labels.py")
        meta = self.label_root / "meta.json"
        if meta.is_file():
            k = json.loads(meta.read_text()).get("num_classes")
            if k is not None and int(k) != num_classes:
                raise UserError(f"the label maps in {self.label_root} have {k} classes ({meta}) but the model has "
                                f"{num_classes}; relabel with a teacher trained on these classes")
        if self.samples:
            self._load(0)  # fail at start, not in the first batch

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, i: int) -> Tensor:
        path = label_map_path(self.label_root, self.samples[i][0])
        m = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(m, Tensor) or m.dim() != 4 or m.shape[0] != 2:
            shape = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
            raise UserError(f"label map {path} has shape {shape}; expected (2, k, H, W)")
        top = int(m[1].max())
        if top >= self.num_classes:
            raise UserError(f"label map {path} refers to class {top}, but the model has {self.num_classes} classes; "
                            f"the maps were made for a different class count")
        return m

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        img, label_map = self.folder.loader(path), self._load(i)
        if self.transform.warps_map:
            img, box, flipped, label_map = self.transform(img, label_map)
        else:
            img, box, flipped = self.transform(img)
        return img, (label, label_map, box, flipped)


#: ``--token-label-smoothing`` rules: how smoothing s acts on a softmax target t over K classes.
SMOOTHING_RULES = ("official", "normalized")


def dense_targets(maps: Tensor, boxes: Tensor, flipped: Tensor, num_classes: int, size: int,
                  smoothing: float = 0.0, smoothing_rule: str = "official") -> tuple[Tensor, Tensor]:
    """Crop, flip and softmax the score maps: ``(cls target (B, K), token targets (B, size·size, K))``.

    Args:
        maps: (B, 2, k, H, W) top-k scores and class indices. boxes: (B, 4) (x1, y1, x2, y2) in image fractions.
        flipped: (B,) bool. size: token grid side S. smoothing: s; rows become t·(1 − s + s/K) + s/K
        (``smoothing_rule`` "official": the official code's, rows sum to 1 + s/K) or t·(1 − s) + s/K ("normalized").
    """
    if smoothing_rule not in SMOOTHING_RULES:
        raise ValueError(f"unknown smoothing_rule {smoothing_rule!r}; choose one of {', '.join(SMOOTHING_RULES)}")
    b, _, _, h, w = maps.shape
    scores = torch.zeros(b, num_classes, h, w, device=maps.device, dtype=torch.float32)
    scores.scatter_(1, maps[:, 1].long(), maps[:, 0].float())
    scale = torch.tensor([w, h, w, h], device=maps.device, dtype=torch.float32)
    rois = torch.cat([torch.arange(b, device=maps.device, dtype=torch.float32)[:, None],
                      boxes.to(maps.device).float() * scale], 1)
    tokens = roi_align(scores, rois, output_size=(size, size), aligned=True)  # (B, K, S, S)
    tokens = torch.where(rearrange(flipped.to(maps.device), "b -> b 1 1 1"), tokens.flip(-1), tokens)
    cls = roi_align(scores, rois, output_size=(1, 1), aligned=True)  # (B, K, 1, 1)
    tokens = F.softmax(rearrange(tokens, "b k row col -> b (row col) k"), dim=-1)
    cls = F.softmax(rearrange(cls, "b k 1 1 -> b k"), dim=-1)
    if smoothing:
        off = smoothing / num_classes
        on = 1 - smoothing + off if smoothing_rule == "official" else 1 - smoothing
        tokens, cls = tokens * on + off, cls * on + off
    return cls, tokens


def _soft_ce(logits: Tensor, target: Tensor) -> Tensor:
    return torch.sum(-target.float() * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


class TokenLabelStep:
    """Engine hook ``(model, images, targets, criterion) → (loss, cls_logits, cls_targets)`` for Token Labeling.

    ``targets``: (B,) labels (MixToken-only fallback) or the ``TokenLabelDataset`` tuple. ``criterion`` (CE/LS/MaxSup)
    acts on the CLS logits; with ``maxsup_on_tokens`` also on every token's aux logits (MaxSup's z_max − mean z
    ignores the target, so it penalises each token's top logit whatever its soft target is).
    """

    def __init__(self, num_classes: int, size: int, dense_weight: float = 1.0, cls_weight: float = 1.0,
                 smoothing: float = 0.0, maxsup_on_tokens: bool = False, smoothing_rule: str = "official"):
        self.num_classes, self.size, self.smoothing_rule = num_classes, size, smoothing_rule
        self.dense_weight, self.cls_weight, self.smoothing = dense_weight, cls_weight, smoothing
        self.maxsup_on_tokens = maxsup_on_tokens

    def targets(self, targets: Any, device: torch.device) -> tuple[Tensor, Tensor]:
        if isinstance(targets, Tensor):
            y = targets.to(device)
            cls = mixup_target(y, self.num_classes, lam=1.0, smoothing=self.smoothing)
            return cls, repeat(cls, "b k -> b n k", n=self.size * self.size)
        _labels, maps, boxes, flipped = targets
        return dense_targets(maps.to(device, non_blocking=True), boxes, flipped, self.num_classes, self.size,
                             self.smoothing, self.smoothing_rule)

    def __call__(self, model: nn.Module, images: Tensor, targets: Any, criterion: nn.Module
                 ) -> tuple[Tensor, Tensor, Tensor]:
        cls_t, token_t = self.targets(targets, images.device)
        x_cls, x_aux, bbox = model(images)
        if x_aux.shape[1] != token_t.shape[1]:
            raise UserError(f"the model has {x_aux.shape[1]} patch tokens but --token-label-size {self.size} gives "
                            f"{token_t.shape[1]} token targets")
        if bbox is not None:  # MixToken: the CLS token saw λ of its own image and 1 − λ of the flipped one
            r0, r1, c0, c1 = bbox
            lam = 1.0 - (r1 - r0) * (c1 - c0) / x_aux.shape[1]
            cls_t = lam * cls_t + (1.0 - lam) * cls_t.flip(0)
        dense_loss = criterion if self.maxsup_on_tokens else _soft_ce
        per_token = "b n k -> (b n) k"
        loss = self.cls_weight * criterion(x_cls, cls_t) + \
            self.dense_weight * dense_loss(rearrange(x_aux, per_token), rearrange(token_t, per_token))
        return loss, x_cls, cls_t
