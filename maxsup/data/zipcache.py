"""The authors' ImageNet zip cache (Swin/DeiT ``--cache`` format): ``train.zip`` + ``train_map.txt``, ``val.zip`` +
``val_map.txt``.

Map files are tab-separated, one image per line:

* ``train_map.txt``: ``<class_folder>/<file>\\t<label>`` (the zip member is ``<class_folder>/<file>``);
* ``val_map.txt``: ``<file>\\t<label>`` (the zip member is ``<file>``, a flat folder).

The labels are whatever the map says. The authors' maps do NOT follow sorted-ImageFolder order (see
``shared/reference/deit_zip_class_order.txt``), so a model trained on a zip cache must be evaluated with the same
maps. :func:`write_zip_cache` uses sorted-ImageFolder order unless ``class_to_idx`` is given.
"""

from __future__ import annotations

import io
import os
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..errors import UserError
from ..training.checkpoint import atomic_path, atomic_write

__all__ = ["parse_map", "map_class_names", "ZipCacheDataset", "write_zip_cache", "looks_truncated",
           "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def parse_map(map_path: str | os.PathLike, num_classes: int | None = None) -> list[tuple[str, int]]:
    """Read a map file into ``[(zip_member, label), ...]`` in file order.

    Every malformed line raises :class:`UserError` naming ``file:line``: not UTF-8, not exactly two tab-separated
    fields, an empty member name, a member listed twice, a non-integer or negative label, or (when ``num_classes`` is
    given) a label ≥ num_classes.
    """
    map_path = Path(map_path)
    if not map_path.is_file():
        raise UserError(f"map file not found: {map_path}; build it with data/prepare_imagenet_zip.py")
    entries: list[tuple[str, int]] = []
    first_line: dict[str, int] = {}  # member -> line: a member listed twice would be counted twice
    with open(map_path, "rb") as f:
        for lineno, raw_bytes in enumerate(f, start=1):
            where = f"{map_path}:{lineno}"
            try:
                line = raw_bytes.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raise UserError(f"{where}: not UTF-8 ({exc.reason} at byte {exc.start}); re-create the map with "
                                f"data/prepare_imagenet_zip.py") from None
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 2 or not fields[0]:
                raise UserError(f"{where}: expected '<path>\\t<label>' (one tab), got {line[:80]!r}")
            name, label_text = fields
            try:
                label = int(label_text)
            except ValueError:
                raise UserError(f"{where}: label {label_text!r} is not an integer") from None
            if label < 0:
                raise UserError(f"{where}: label {label} is negative")
            if num_classes is not None and label >= num_classes:
                raise UserError(f"{where}: label {label} is >= the number of classes ({num_classes}); fix the map "
                                f"or pass the right --nb-classes")
            if name in first_line:
                raise UserError(f"{where}: {name!r} is listed again (first on line {first_line[name]}); remove the "
                                f"duplicate so that no image counts twice")
            first_line[name] = lineno
            entries.append((name, label))
    if not entries:
        raise UserError(f"{map_path} lists no images")
    return entries


def map_class_names(entries: list[tuple[str, int]]) -> list[str] | None:
    """The class folder of each label (index = label) of a train map's ``[(member, label), ...]``
    (:func:`parse_map`), whose members are ``<class_folder>/<file>``; None where the map does not name its classes
    unambiguously: a member without a folder, a label whose members sit in two folders, a folder shared by two
    labels, or labels that are not 0..K-1. The authors' maps and :func:`write_zip_cache`'s name ImageNet wnids."""
    folder_of: dict[int, str] = {}
    for name, label in entries:
        folder = PurePosixPath(name).parent.name
        if not folder or folder_of.setdefault(label, folder) != folder:
            return None
    names = [folder_of.get(label, "") for label in range(len(folder_of))]
    if "" in names or len(set(names)) != len(names):
        return None
    return names


def looks_truncated(data: bytes) -> bool:
    """Cheap end-of-file check: a JPEG must end with the EOI marker (FF D9), a PNG with its IEND chunk.

    Catches the usual corruption (an interrupted copy or download) without decoding every image.
    """
    if data[:2] == b"\xff\xd8":
        return not data.rstrip(b"\x00").endswith(b"\xff\xd9")
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return not data.endswith(b"IEND\xaeB`\x82")
    return len(data) == 0


class ZipCacheDataset(Dataset):
    """Images from a zip cache held in RAM, as (PIL RGB image, label) pairs.

    With ``world_size > 1`` only this rank's shard (map lines ``rank, rank + world_size, ...``) is read into memory,
    as in the authors' ``--cache`` mode: each rank then samples from its own shard.

    Args:
        zip_path: ``train.zip`` / ``val.zip``.
        map_path: ``train_map.txt`` / ``val_map.txt`` (see the module docstring).
        transform: applied to the PIL image.
        rank, world_size: which shard to load.
        skip_corrupt: drop truncated images with a warning (count in ``num_skipped``) instead of failing.
        num_classes: if given, labels ≥ num_classes are rejected with file:line.
    Attributes:
        samples: list of (member, label) held by this rank; ``targets``: their labels.
    """

    def __init__(self, zip_path: str | os.PathLike, map_path: str | os.PathLike, transform: Callable | None = None,
                 rank: int = 0, world_size: int = 1, skip_corrupt: bool = False, num_classes: int | None = None):
        zip_path = Path(zip_path)
        if not zip_path.is_file():
            raise UserError(f"zip cache not found: {zip_path}; build it with data/prepare_imagenet_zip.py")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
        entries = parse_map(map_path, num_classes)[rank::world_size]
        self.transform = transform
        self.samples: list[tuple[str, int]] = []
        # one contiguous buffer + offsets instead of a list of bytes objects: DataLoader workers forked from this
        # process then share the pages instead of copying them as reference counts change
        blob = bytearray()
        offsets = [0]
        self.num_skipped = 0
        try:
            archive = zipfile.ZipFile(zip_path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise UserError(f"{zip_path} is not a readable zip file: {exc}") from None
        with archive:
            members = set(archive.namelist())
            for name, label in entries:
                if name not in members:
                    raise UserError(f"{map_path} lists {name!r}, which is not in {zip_path}")
                data = archive.read(name)
                if looks_truncated(data):
                    if not skip_corrupt:
                        raise UserError(f"truncated or corrupt image {name!r} in {zip_path}; re-create the zip or "
                                        f"pass --skip-corrupt to skip such files")
                    self.num_skipped += 1
                    continue
                self.samples.append((name, label))
                blob += data
                offsets.append(len(blob))
        if self.num_skipped:
            warnings.warn(f"skipped {self.num_skipped} corrupt image(s) in {zip_path}", stacklevel=2)
        self._blob, self._offsets = blob, np.asarray(offsets, dtype=np.int64)
        self.targets = [label for _, label in self.samples]
        self.zip_path, self.map_path = zip_path, Path(map_path)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        try:
            start, end = self._offsets[index], self._offsets[index + 1]
            img = Image.open(io.BytesIO(memoryview(self._blob)[start:end])).convert("RGB")
        except OSError as exc:
            raise UserError(f"cannot decode {self.samples[index][0]!r} in {self.zip_path}: {exc}") from None
        if self.transform is not None:
            img = self.transform(img)
        return img, self.samples[index][1]


def write_zip_cache(image_folder_split_dir: str | os.PathLike, zip_out: str | os.PathLike,
                    map_out: str | os.PathLike, split: str = "train",
                    class_to_idx: dict[str, int] | None = None) -> int:
    """Pack an ImageFolder split (``<dir>/<class>/<image>``) into the authors' zip + map format, atomically.

    ``split="train"`` stores members as ``<class>/<file>``; ``split="val"`` stores them flat as ``<file>`` (names
    must then be unique across classes, as ImageNet's are). Images are stored uncompressed (JPEG is already
    compressed). Labels come from ``class_to_idx`` (default: sorted class folders, torchvision ImageFolder order).
    Returns the number of images written.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    root = Path(image_folder_split_dir)
    if not root.is_dir():
        raise UserError(f"image folder not found: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise UserError(f"{root} has no class sub-folders; expected <split>/<class>/<image>")
    if class_to_idx is None:
        class_to_idx = {c: i for i, c in enumerate(classes)}
    lines: list[str] = []
    seen: dict[str, str] = {}
    zip_out, map_out = Path(zip_out), Path(map_out)
    with atomic_path(zip_out) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
        for cls in classes:
            if cls not in class_to_idx:
                raise UserError(f"class folder {cls!r} in {root} is missing from class_to_idx")
            files = sorted(p for p in (root / cls).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise UserError(f"class folder {root / cls} has no images ({', '.join(IMAGE_EXTENSIONS)})")
            for p in files:
                member = f"{cls}/{p.name}" if split == "train" else p.name
                if member in seen:
                    raise UserError(f"val images must have unique file names: {p} clashes with {seen[member]}")
                seen[member] = str(p)
                archive.write(p, member)
                lines.append(f"{member}\t{class_to_idx[cls]}\n")
    atomic_write(map_out, "".join(lines))
    return len(lines)
