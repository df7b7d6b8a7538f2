"""One policy for corrupt image files, shared by the three trainers and the FFCV writer.

* Up front, every file of an ImageFolder split is checked cheaply (a few bytes of its head and tail, no decoding):
  an empty file, a ``.jpg`` / ``.png`` whose content is not JPEG / PNG (a text file, an HTML error page saved by a
  downloader), and a JPEG or PNG cut short (an interrupted copy) are named, or with ``--skip-corrupt`` dropped with
  a count.
* A file that passes that check but does not decode raises :class:`CorruptImageError` naming the file when it is
  read, also from a DataLoader worker (:func:`maxsup.cli.run_cli` prints the worker's message). With
  ``--skip-corrupt`` a trainer logs the file and reads the next image of the split in its place, so the batch keeps
  its size and the epoch its length; the FFCV writer never substitutes (a .beton would hold a duplicate).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from PIL import Image
from torchvision.datasets import ImageFolder

from ..errors import UserError
from .zipcache import looks_truncated

__all__ = ["CorruptImageError", "CheckedImageFolder", "is_corrupt_file", "load_rgb"]

_SIGNATURES = {".jpg": (b"\xff\xd8",), ".jpeg": (b"\xff\xd8",), ".png": (b"\x89PNG\r\n\x1a\n",)}
#: a decode failure replaced by another image is retried this many times before the split is called unreadable
_MAX_SUBSTITUTES = 16


class CorruptImageError(UserError):
    """An image file that cannot be decoded; the message names the file and what to do."""


def is_corrupt_file(path: str | os.PathLike) -> bool:
    """The up-front check: empty, not what its extension says (JPEG, PNG) or cut short. Reads at most 72 bytes."""
    size = os.path.getsize(path)
    if size == 0:
        return True
    with open(path, "rb") as f:
        if size <= 128:
            data = f.read()
        else:
            data = f.read(8)
            f.seek(size - 64)
            data += f.read()
    expected = _SIGNATURES.get(Path(path).suffix.lower())
    if expected is not None and not data.startswith(expected):
        return True
    return looks_truncated(data)


def load_rgb(path: str, hint: str = "remove or replace it, or pass --skip-corrupt") -> Image.Image:
    """torchvision's ``pil_loader`` (RGB), but a file that does not decode raises :class:`CorruptImageError`."""
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        reason = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptImageError(f"cannot decode image {path} ({reason[:120]}); {hint}") from None


class CheckedImageFolder(ImageFolder):
    """``torchvision.datasets.ImageFolder`` under the policy of this module.

    Args:
        root: ``<root>/<class>/<image>``.
        transform: applied to the PIL RGB image.
        skip_corrupt: drop files that fail the up-front check (printed count) and, with ``substitute``, read the
            next image of the split in place of one that fails to decode (each logged by name).
        substitute: False for one-pass conversions (the FFCV writer), where a decode failure must end the run.
        hint: what the error for a corrupt file tells the user to do, for a command without ``--skip-corrupt``
            (default: remove or replace it, or pass --skip-corrupt).
    Attributes:
        num_skipped: files dropped up front.
    """

    def __init__(self, root: str | os.PathLike, transform: Any = None, skip_corrupt: bool = False,
                 substitute: bool = True, hint: str | None = None):
        super().__init__(str(root), transform=transform)
        self.skip_corrupt, self.substitute = skip_corrupt, substitute
        keep, bad = [], []
        for path, label in self.samples:
            (bad if is_corrupt_file(path) else keep).append((path, label))
        if bad and not skip_corrupt:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise CorruptImageError(f"empty, truncated or non-image file {bad[0][0]}{more}; "
                                    f"{hint or 'remove or replace it, or pass --skip-corrupt to skip such files'}")
        self.num_skipped = len(bad)
        if bad:
            print(f"warning: skipped {len(bad)} corrupt image(s) under {root} (--skip-corrupt), e.g. {bad[0][0]}")
            if not keep:
                raise UserError(f"every image under {root} is corrupt; nothing to read")
        self.samples = self.imgs = keep
        self.targets = [label for _, label in keep]
        self._hint = hint or ("the up-front check of --skip-corrupt does not decode images; remove or replace it"
                              if skip_corrupt and not substitute else "remove or replace it, or pass --skip-corrupt")

    def __getitem__(self, index: int) -> tuple[Any, int]:
        for attempt in range(_MAX_SUBSTITUTES):
            path, target = self.samples[(index + attempt) % len(self.samples)]
            try:
                image = load_rgb(path, self._hint)
            except CorruptImageError as exc:
                if not (self.skip_corrupt and self.substitute):
                    raise
                print(f"warning: {exc.args[0].split(';')[0]}; --skip-corrupt: the next image of the split is read "
                      f"in its place", flush=True)
                continue
            if self.transform is not None:
                image = self.transform(image)
            if self.target_transform is not None:
                target = self.target_transform(target)
            return image, target
        raise UserError(f"{_MAX_SUBSTITUTES} images in a row from {self.root} do not decode (from "
                        f"{self.samples[index][0]}); check the data")
