"""The DeiT zip label order (data/README.md, "The label-order trap (DeiT)").

The authors' DeiT-Small was trained with ``--cache``: zip files plus their map files, whose class indices are a
permutation of ImageFolder's sorted-wnid order with no fixed point. The map is read from the authors'
``zip_training_converter/zip_val_map.txt`` at a pinned commit, verified by the file's sha256 and then by the sha256
of the class order it defines; :func:`zip_to_standard_permutation` gives the head rows in sorted-wnid order.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

from .fetch import check_sha256, fetch_url
from .registry import AUTHORS_REPO, DownloadError, ZipMapError, cache_dir, github_raw_base

__all__ = ["ZIP_MAP_PATH", "ZIP_MAP_COMMIT", "ZIP_MAP_SHA256", "ZIP_ORDER_SHA256", "read_zip_map",
           "verify_zip_order", "zip_to_standard_permutation", "load_zip_order"]

log = logging.getLogger("maxsup.hub")

#: The authors' ``zip_val_map.txt`` (50,000 ``val/<wnid>/<file>\t<label>`` lines): the commit that added it (it is
#: unchanged since) and the file's sha256. Downloads are pinned to that commit, not the default branch.
ZIP_MAP_PATH = "zip_training_converter/zip_val_map.txt"
ZIP_MAP_COMMIT = "f126a03a8d333c9f517932939cd5a5dfec6874aa"
ZIP_MAP_SHA256 = "aead58dabd09f558ecd820c40488207a395397c494d47caa2fcb675e9a1acf47"
#: sha256 of the class order read from that file (index -> wnid, joined by "\n", no trailing newline): the second
#: check, and the only one for a local ``--zip-map`` copy. perm[:10] = [538, 735, 432, 61, 458, ...].
ZIP_ORDER_SHA256 = "86107cb3b696b7a7f0eaa70fc25b6b2822acaba8308bcf89dd83c2e2acd181c6"

_WNID = re.compile(r"n\d{8}")


def read_zip_map(path: str | os.PathLike) -> list[str]:
    """Class order (zip index -> wnid) from a map file of ``<path containing the wnid>\\t<label>`` lines, such as
    the authors' ``zip_val_map.txt`` (``val/n01440764/ILSVRC2012_val_00000293.JPEG\\t538``)."""
    path = Path(path)
    if not path.is_file():
        raise ZipMapError(f"zip map not found: {path}; pass the authors' zip_val_map.txt with --zip-map")
    by_index: dict[int, str] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        wnid = _WNID.search(parts[0]) if len(parts) == 2 else None
        if wnid is None or not parts[1].isdigit():
            raise ZipMapError(f"{path}:{lineno} is not '<path with wnid>\\t<label>': {line[:80]!r}")
        index = int(parts[1])
        if by_index.setdefault(index, wnid.group()) != wnid.group():
            raise ZipMapError(f"{path}:{lineno}: label {index} maps to both {by_index[index]} and {wnid.group()}")
    order = [by_index.get(i, "") for i in range(len(by_index))]
    if "" in order:
        raise ZipMapError(f"{path}: labels are not 0..{len(by_index) - 1} without gaps")
    return order


def verify_zip_order(order: list[str], source: str = "zip map") -> list[str]:
    """Check ``order`` against the pinned sha256 of the authors' class order; return it unchanged."""
    digest = hashlib.sha256("\n".join(order).encode()).hexdigest()
    if digest != ZIP_ORDER_SHA256:
        raise ZipMapError(f"class order of {source} ({len(order)} classes) does not verify: sha256 {digest[:12]}… "
                          f"!= expected {ZIP_ORDER_SHA256[:12]}…; use the authors' {ZIP_MAP_PATH} (--zip-map PATH)")
    return order


def zip_to_standard_permutation(order: list[str]) -> list[int]:
    """perm[j] = zip index of the j-th class in sorted-wnid (ImageFolder) order, so ``head[perm]`` turns
    zip-order logits into standard-order logits."""
    zip_index = {wnid: i for i, wnid in enumerate(order)}
    if len(zip_index) != len(order):
        raise ZipMapError("zip map lists a wnid twice; it is not a permutation of the classes")
    return [zip_index[w] for w in sorted(order)]


def load_zip_order(zip_map: str | os.PathLike | None = None, offline: bool = False) -> list[str]:
    """The verified zip class order.

    Without ``zip_map`` the authors' file is downloaded from their repository at :data:`ZIP_MAP_COMMIT` (base URL
    ``$MAXSUP_GITHUB_RAW_BASE``), cached, and checked on every use: first the file's sha256
    (:data:`ZIP_MAP_SHA256`), then the sha256 of its class order. A local ``zip_map`` is checked by its class order
    (a copy with other line endings or line order is still the same map).
    """
    if zip_map is not None:
        return verify_zip_order(read_zip_map(zip_map), str(zip_map))
    cached = cache_dir() / "zip_map" / ZIP_MAP_COMMIT / "zip_val_map.txt"
    label = f"the authors' {ZIP_MAP_PATH} at commit {ZIP_MAP_COMMIT[:12]}"
    if cached.is_file():
        check_sha256(cached, ZIP_MAP_SHA256, f"{label} (cached at {cached})", "pinned")
    elif offline:
        raise DownloadError(f"the authors' zip map is not cached at {cached} and --offline was given; "
                            f"pass a local copy of {ZIP_MAP_PATH} with --zip-map")
    else:
        url = f"{github_raw_base()}/{AUTHORS_REPO}/{ZIP_MAP_COMMIT}/{ZIP_MAP_PATH}"
        log.debug("downloading the authors' zip map %s", url)
        fetch_url(url, cached,
                  not_found_hint=f"pass a local copy of the authors' {ZIP_MAP_PATH} with --zip-map")
        check_sha256(cached, ZIP_MAP_SHA256, f"{label} ({url})", "pinned")
    return verify_zip_order(read_zip_map(cached), str(cached))
