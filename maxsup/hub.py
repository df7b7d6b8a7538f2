"""The authors' released checkpoints: registry, verified download, conversion to this project's format, evaluation.

    python -m maxsup.hub list
    python -m maxsup.hub download deit_small_maxsup [--dest DIR] [--filename NAME] [--offline]
    python -m maxsup.hub convert SRC.pth DST.pth --arch deit_small_patch16_224 [--label-order auto|zip|standard]
    python -m maxsup.hub convert last.ckpt DST.pth --arch resnet50 [--plain-torchvision]
    python -m maxsup.hub evaluate deit_small_maxsup|CKPT --data-path /imagenet/val

Two traps this module exists for (see data/README.md, "Released checkpoints"):

* The DeiT-Small checkpoint was trained with ``--cache`` (zip files + the authors' map files), whose class indices
  are a permutation of ImageFolder's sorted-wnid order with no fixed point. Evaluated on an ImageFolder without
  remapping it scores near chance. :func:`convert_checkpoint` permutes the head rows into sorted-wnid order, using
  the authors' ``zip_training_converter/zip_val_map.txt`` verified against a pinned sha256 of the class order.
* The ResNet-50 checkpoints come from ffcv-based training with BlurPool; their keys only load strictly into a
  BlurPool ResNet-50 (:func:`maxsup.models.create_model` with ``blurpool=True``). Loading into a plain torchvision
  ResNet-50 drops the blur and changes the function, so it is an explicit opt-in (``--plain-torchvision``).

Files are loaded with ``torch.load(weights_only=True)``; the authors' DeiT file pickles ``argparse.Namespace`` args,
so exactly that one type is allow-listed (and logged) when the plain load refuses it.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .checkpoint import atomic_path, atomic_save, load_checkpoint
from .cli import run_cli
from .errors import UserError

__all__ = ["ReleasedCheckpoint", "REGISTRY", "DownloadError", "ChecksumError", "LayoutError", "ZipMapError",
           "cache_dir", "download", "fetch_url", "sha256_file", "load_released_checkpoint", "read_zip_map",
           "verify_zip_order", "zip_to_standard_permutation", "load_zip_order", "normalize_resnet_state_dict",
           "convert_checkpoint", "evaluate_checkpoint", "main"]

log = logging.getLogger("maxsup.hub")

AUTHORS_REPO = "ZhouYuxuanYX/Maximum-Suppression-Regularization"
HF_RESNET_REPO = "zhouyuxuanyx/MaxSup-Regularized-ResNet50"
#: sha256 of the authors' zip class order (index -> wnid, joined by "\n", no trailing newline), derived from
#: ``zip_training_converter/zip_val_map.txt`` at commit 5b7c0db. perm[:10] = [538, 735, 432, 61, 458, ...].
ZIP_ORDER_SHA256 = "86107cb3b696b7a7f0eaa70fc25b6b2822acaba8308bcf89dd83c2e2acd181c6"
ZIP_MAP_PATH = "zip_training_converter/zip_val_map.txt"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_CHUNK = 1 << 20


class DownloadError(UserError):
    """The network or the server failed; the message says how to work offline."""


class ChecksumError(UserError):
    """A downloaded file does not have the sha256 the registry expects; nothing was kept."""


class LayoutError(UserError):
    """A state_dict matches none of the key layouts this module knows."""


class ZipMapError(UserError):
    """The authors' zip map is malformed or its class order does not verify."""


# --------------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReleasedCheckpoint:
    """One released file. ``filename`` is a best guess where upstream does not publish it: override with
    ``--filename``. ``sha256`` is None until someone records the real file's hash."""

    name: str
    source: str  # "github" (release asset) or "hf" (Hugging Face model repo)
    repo: str
    filename: str
    revision: str  # GitHub release tag or Hugging Face revision
    arch: str
    description: str
    eval_transform: dict[str, Any] = field(default_factory=dict)  # kwargs of maxsup.data.transforms.transform_spec
    sha256: str | None = None


# ffcv-imagenet evaluates at 256 px: a centre square of 224/256 of the short side resized to 256x256
# (CenterCropRGBImageDecoder((256, 256), ratio=224/256)) ~ Resize(292) + CenterCrop(256).
_FFCV_EVAL = {"img_size": 256, "crop_pct": 224 / 256, "interpolation": "bilinear"}
_RESNET_NOTE = "ResNet-50 (ffcv, BlurPool), trained with {}; sorted-wnid labels"

REGISTRY: dict[str, ReleasedCheckpoint] = {
    c.name: c for c in (
        ReleasedCheckpoint(
            "deit_small_maxsup", "github", AUTHORS_REPO, "checkpoint.pth", "checkpoint_deit", "deit_small_patch16_224",
            "DeiT-Small trained with MaxSup (GitHub release checkpoint_deit); zip label order, remapped on convert",
            # Deit/datasets.py build_transform with --eval-crop-ratio 0.875: Resize(256, bicubic) + CenterCrop(224).
            {"img_size": 224, "crop_pct": 0.875, "interpolation": "bicubic"}),
        ReleasedCheckpoint("resnet50_baseline", "hf", HF_RESNET_REPO, "baseline.ckpt", "main", "resnet50",
                           _RESNET_NOTE.format("cross-entropy"), _FFCV_EVAL),
        ReleasedCheckpoint("resnet50_ls", "hf", HF_RESNET_REPO, "ls.ckpt", "main", "resnet50",
                           _RESNET_NOTE.format("label smoothing"), _FFCV_EVAL),
        ReleasedCheckpoint("resnet50_maxsup", "hf", HF_RESNET_REPO, "maxsup.ckpt", "main", "resnet50",
                           _RESNET_NOTE.format("MaxSup"), _FFCV_EVAL),
    )
}


def get_entry(name: str) -> ReleasedCheckpoint:
    if name not in REGISTRY:
        raise UserError(f"unknown checkpoint {name!r}; known: {', '.join(REGISTRY)} (or pass a file path)")
    return REGISTRY[name]


def cache_dir() -> Path:
    """Offline cache root: ``$MAXSUP_CACHE`` or ``~/.cache/maxsup``."""
    return Path(os.environ.get("MAXSUP_CACHE") or Path.home() / ".cache" / "maxsup")


def _github_base() -> str:
    return os.environ.get("MAXSUP_GITHUB_BASE", "https://github.com").rstrip("/")


def _github_raw_base() -> str:
    return os.environ.get("MAXSUP_GITHUB_RAW_BASE", "https://raw.githubusercontent.com").rstrip("/")


# --------------------------------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------------------------------
def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _offline_hint(where: Path) -> str:
    return (f"if this machine is offline, copy the file into a folder and re-run with --offline --dest DIR "
            f"(downloads are cached in {where}), or pass the file's path to convert/evaluate")


def _check_sha(path: Path, expected: str | None, label: str) -> None:
    if expected is None:
        return
    got = sha256_file(path)
    if got != expected.lower():
        path.unlink(missing_ok=True)
        raise ChecksumError(f"sha256 mismatch for {label}: expected {expected}, got {got}; the file was deleted, "
                            f"re-run to download it again")


def fetch_url(url: str, dest: str | os.PathLike, sha256: str | None = None, timeout: float = 60.0,
              not_found_hint: str = "check the URL") -> Path:
    """Download ``url`` to ``dest`` over plain HTTP(S).

    Bytes go to ``dest + '.part'``; an interrupted transfer keeps it and the next call resumes with a ``Range``
    request. The final name appears only after the sha256 (when given) verifies (``os.replace``); on a mismatch the
    partial file is deleted too.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the .part is already complete (or stale): verify it below or restart
            response = None
        elif exc.code == 404:
            raise DownloadError(f"{url} does not exist (HTTP 404); {not_found_hint}") from None
        else:
            raise DownloadError(f"cannot download {url}: HTTP {exc.code} {exc.reason}; "
                                f"{_offline_hint(dest.parent)}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"cannot reach {url} ({reason}); {_offline_hint(dest.parent)}") from None
    if response is not None:
        with response:
            if offset and response.status != 206:  # server ignored the Range header: start over
                log.info("server does not support resume for %s; restarting", url)
                offset = 0
            elif offset:
                log.info("resuming %s at byte %d", dest.name, offset)
            length = response.headers.get("Content-Length")
            expected_size = offset + int(length) if length is not None else None
            reason = "connection closed early"
            try:
                with open(part, "ab" if offset else "wb") as f:
                    while chunk := response.read(_CHUNK):
                        f.write(chunk)
            except (http.client.IncompleteRead, ConnectionError, TimeoutError, OSError) as exc:
                reason, expected_size = type(exc).__name__, -1
            # http.client returns b"" (no exception) when the server closes early, so compare with Content-Length.
            if expected_size is not None and part.stat().st_size != expected_size:
                raise DownloadError(f"download of {dest.name} interrupted after {part.stat().st_size} bytes "
                                    f"({reason}); re-run the same command to resume")
    _check_sha(part, sha256, dest.name)
    os.replace(part, dest)
    return dest


def _copy_atomic(src: Path, dest: Path) -> Path:
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return dest


def _probe(url: str, where: Path, timeout: float = 15.0) -> None:
    """Raise :class:`DownloadError` if ``url``'s host cannot be reached (any HTTP status counts as reachable)."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        pass
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"cannot reach {url} ({getattr(exc, 'reason', exc)}); {_offline_hint(where)}") from None


def _hf_download(entry: ReleasedCheckpoint, filename: str, revision: str, offline: bool) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    hf_cache = cache_dir() / "huggingface"
    # endpoint is passed explicitly: huggingface_hub reads HF_ENDPOINT only once, at import time.
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    kwargs = {"revision": revision, "cache_dir": hf_cache, "endpoint": endpoint}
    try:  # a cached copy is used as is (released files do not change), without any request
        path = Path(hf_hub_download(entry.repo, filename, local_files_only=True, **kwargs))
    except LocalEntryNotFoundError:
        path = None
    if path is None and not offline:
        _probe(endpoint, hf_cache)  # fail fast: huggingface_hub retries an unreachable host for ~25 s
    try:
        path = path or Path(hf_hub_download(entry.repo, filename, local_files_only=offline, **kwargs))
    except LocalEntryNotFoundError as exc:  # a subclass of EntryNotFoundError: test it first
        where = "in the offline cache" if offline else "on the Hugging Face hub"
        raise DownloadError(f"cannot get {entry.repo}/{filename} {where} ({type(exc).__name__}); "
                            f"{_offline_hint(hf_cache)}") from None
    except EntryNotFoundError:
        raise DownloadError(f"{filename} is not in the Hugging Face repo {entry.repo} at {revision}; the file names "
                            f"are not published, pass the right one with --filename") from None
    except (HfHubHTTPError, OSError) as exc:
        raise DownloadError(f"cannot get {entry.repo}/{filename} from the Hugging Face hub ({type(exc).__name__}); "
                            f"{_offline_hint(hf_cache)}") from None
    if entry.sha256 is not None and sha256_file(path) != entry.sha256:
        got = sha256_file(path)
        blob = path.resolve()
        path.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
        raise ChecksumError(f"sha256 mismatch for {filename}: expected {entry.sha256}, got {got}; the file was "
                            f"deleted from the cache, re-run to download it again")
    return path


def download(name: str, dest: str | os.PathLike | None = None, filename: str | None = None,
             revision: str | None = None, offline: bool = False, sha256: str | None = None) -> Path:
    """Fetch a registry checkpoint and return its local path.

    GitHub assets go to ``dest`` (default ``<cache>/github/<tag>/``) with resume and sha256 checks; Hugging Face
    files use huggingface_hub's cache (``<cache>/huggingface``) and are copied atomically into ``dest`` when given.
    ``offline=True`` never touches the network. ``sha256`` overrides the registry's value (needed when
    ``filename`` is overridden).
    """
    entry = get_entry(name)
    filename = filename or entry.filename
    revision = revision or entry.revision
    expected = sha256 or (entry.sha256 if filename == entry.filename else None)
    if entry.source == "hf":
        entry = ReleasedCheckpoint(**{**asdict(entry), "sha256": expected})
        if dest is not None and offline and (Path(dest) / filename).is_file():
            return Path(dest) / filename
        path = _hf_download(entry, filename, revision, offline)
        return _copy_atomic(path, Path(dest) / filename) if dest is not None else path
    target = Path(dest) if dest is not None else cache_dir() / "github" / revision
    target = target / filename
    if target.is_file():
        _check_sha(target, expected, filename)
        log.debug("using cached %s", target)
        return target
    if offline:
        raise DownloadError(f"{filename} is not in {target.parent} and --offline was given; download it there "
                            f"first (without --offline) or copy it there by hand")
    url = f"{_github_base()}/{entry.repo}/releases/download/{revision}/{filename}"
    log.debug("downloading %s", url)
    return fetch_url(url, target, expected, not_found_hint="the asset name is not published upstream, "
                     "pass the right one with --filename")


# --------------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------------------------------
# The DeiT zip label order (checkpoints.md §1b)
# --------------------------------------------------------------------------------------------------------------------
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


def load_zip_order(zip_map: str | os.PathLike | None = None, offline: bool = False,
                   ref: str = "HEAD") -> list[str]:
    """The verified zip class order, from ``zip_map`` or from the authors' repository (cached under the cache
    root; base URL overridable with ``$MAXSUP_GITHUB_RAW_BASE``)."""
    if zip_map is not None:
        return verify_zip_order(read_zip_map(zip_map), str(zip_map))
    cached = cache_dir() / "zip_val_map.txt"
    if not cached.is_file():
        if offline:
            raise DownloadError(f"the authors' zip map is not cached at {cached} and --offline was given; "
                                f"pass a local copy of {ZIP_MAP_PATH} with --zip-map")
        url = f"{_github_raw_base()}/{AUTHORS_REPO}/{ref}/{ZIP_MAP_PATH}"
        log.debug("downloading the authors' zip map %s", url)
        tmp = fetch_url(url, cached.with_name(cached.name + ".download"),
                        not_found_hint=f"pass a local copy of the authors' {ZIP_MAP_PATH} with --zip-map")
        try:
            verify_zip_order(read_zip_map(tmp), url)
        except ZipMapError:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, cached)
    return verify_zip_order(read_zip_map(cached), str(cached))


# --------------------------------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------------------------------
def _strip(sd: Mapping[str, Any]) -> dict[str, Any]:
    return {re.sub(r"^(module\.|_orig_mod\.)+", "", k): v for k, v in sd.items()}


def _describe_keys(sd: Mapping[str, Any], n: int = 5) -> str:
    return ", ".join(list(map(str, sd))[:n])


def normalize_resnet_state_dict(raw: Mapping[str, Any]) -> tuple[dict[str, Tensor], str]:
    """Accept the three ResNet layouts (checkpoints.md §4) and return (torchvision-named state_dict, layout).

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
    stripped = _strip(sd)
    if layout == "raw" and stripped.keys() != sd.keys():
        layout = "ffcv-imagenet"
    bad = [k for k, v in stripped.items() if not isinstance(v, Tensor)]
    if bad or not stripped:
        raise LayoutError(f"checkpoint keys match no known ResNet layout (Lightning 'state_dict' with 'model.' "
                          f"prefix, ffcv-imagenet 'module.' prefix, or {{'model': state_dict}}); first keys: "
                          f"{_describe_keys(raw)}")
    return stripped, layout


def _check_strict(arch: str, num_classes: int, kwargs: dict[str, Any], sd: Mapping[str, Tensor], source: str,
                  layouts: str) -> None:
    """What ``load_state_dict(strict=True)`` checks (names and shapes), against a model built on the meta device
    (no memory, no weight init), so a bad file fails with the first offending keys."""
    from .models import create_model

    with torch.device("meta"):
        own = create_model(arch, num_classes, **kwargs).state_dict()
    unexpected = [k for k in sd if k not in own]
    missing = [k for k in own if k not in sd]
    if unexpected or missing:
        raise LayoutError(f"{source}: keys match no known layout ({layouts}); first unexpected keys: "
                          f"{', '.join(unexpected[:5]) or 'none'}; first missing keys: "
                          f"{', '.join(missing[:5]) or 'none'}")
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if sd[k].shape != v.shape]
    if shapes:
        raise LayoutError(f"{source}: {len(shapes)} tensors have the wrong shape for {arch} (e.g. {shapes[0]})")


def _wants_zip_order(label_order: str, args: Mapping[str, Any]) -> bool:
    if label_order not in ("auto", "zip", "standard"):
        raise UserError(f"--label-order must be auto, zip or standard, got {label_order!r}")
    # Deit/main.py --cache reads labels from the authors' map files: logits are in zip order (checkpoints.md §1b).
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
    from .data.transforms import transform_spec
    from .models import arch_spec

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
        default_eval = _FFCV_EVAL if blurpool else {"img_size": 224, "crop_pct": 0.875, "interpolation": "bilinear"}
    else:
        sd = raw["model"] if isinstance(raw.get("model"), Mapping) else raw
        sd, layout, blurpool = _strip(sd), "deit", False
        classifier = "head"
        layouts = "DeiT {'model': state_dict} loading strictly into timm " + arch
        default_eval = REGISTRY["deit_small_maxsup"].eval_transform
    weight_key = f"{classifier}.weight"
    if weight_key not in sd:
        raise LayoutError(f"{source}: keys match no known layout ({layouts}); no {weight_key!r}, first keys: "
                          f"{_describe_keys(sd)}")
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


# --------------------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------------------
def evaluate_checkpoint(ckpt: Mapping[str, Any], data_path: str | os.PathLike, batch_size: int = 64,
                        workers: int = 4, device: str | None = None, limit: int | None = None,
                        dataset: str = "imagefolder", real: str | bool | None = None) -> dict[str, float]:
    """Top-1/top-5 (%), NLL and ECE (15 bins) of a converted checkpoint on an ImageFolder (sorted-wnid labels) or
    on one of ``maxsup.data.imagenet_variants.EVAL_SETS`` (ImageNet-A/R: the 200 classes' logits only).
    ``real`` (True: timm's bundled ``real.json``, or a path) adds the ReaL top-1 accuracy on ImageNet val."""
    from torch.utils.data import DataLoader, Subset
    from torchvision.datasets import ImageFolder

    from .data.transforms import eval_transform
    from .metrics import ClassificationMeter
    from .models import model_from_checkpoint

    data_path = Path(data_path)
    if not data_path.is_dir():
        raise UserError(f"--data-path {data_path} is not a folder; point it at an ImageFolder such as imagenet/val")
    model = model_from_checkpoint(dict(ckpt))
    num_classes = ckpt["arch"]["num_classes"]
    name = dataset
    if name != "imagefolder":
        from .data.imagenet_variants import RestrictLogits, eval_set

        dataset = eval_set(name, data_path, transform=eval_transform(ckpt["eval_transform"]))
        if getattr(dataset, "subset", False):
            model = RestrictLogits(model, dataset.class_indices)
            num_classes = len(dataset.class_indices)
    else:
        dataset = ImageFolder(str(data_path), transform=eval_transform(ckpt["eval_transform"]))
    if name == "imagefolder" and len(dataset.classes) != num_classes:
        raise UserError(f"{data_path} has {len(dataset.classes)} class folders but the checkpoint predicts "
                        f"{num_classes} classes; point --data-path at the matching val/ folder")
    if limit is not None:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
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
    if real:
        from .data.imagenet_variants import real_accuracy, real_labels

        base = dataset.dataset if isinstance(dataset, Subset) else dataset
        paths = [base.samples[i][0] for i in (dataset.indices if isinstance(dataset, Subset) else range(len(base)))]
        r = real_accuracy(torch.cat(preds), paths, real_labels(None if real is True else real))
        result.update({"real_acc1": r["real_acc1"], "n_real": r["n"]})  # images with an empty ReaL set are left out
    return result


def _resolve_for_eval(ref: str, args: argparse.Namespace) -> dict[str, Any]:
    if ref in REGISTRY:
        entry = REGISTRY[ref]
        path = download(ref, dest=args.dest, filename=args.filename, offline=args.offline)
        return convert_checkpoint(load_released_checkpoint(path), entry.arch, label_order=args.label_order,
                                  zip_map=args.zip_map, offline=args.offline, source=str(path),
                                  eval_transform=entry.eval_transform)
    path = Path(ref)
    if not path.is_file():
        raise UserError(f"unknown checkpoint {ref!r}: not a file and not one of {', '.join(REGISTRY)}")
    raw = load_released_checkpoint(path)
    if isinstance(raw.get("arch"), dict) and "eval_transform" in raw:
        return raw
    if args.arch is None:
        raise UserError(f"{path} is not in this project's format; pass --arch (e.g. resnet50) to convert it on the fly")
    return convert_checkpoint(raw, args.arch, label_order=args.label_order, zip_map=args.zip_map,
                              plain_torchvision=args.plain_torchvision, offline=args.offline, source=str(path))


# --------------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------------
def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m maxsup.hub", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="show the registry")

    def add_fetch(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dest", default=None, help="folder for the downloaded file (default: the cache, "
                       "$MAXSUP_CACHE or ~/.cache/maxsup)")
        p.add_argument("--filename", default=None, help="override the registry's file name (asset names are not "
                       "published upstream)")
        p.add_argument("--offline", action="store_true", help="never use the network; use --dest or the cache")

    def add_convert(p: argparse.ArgumentParser) -> None:
        p.add_argument("--label-order", default="auto", choices=("auto", "zip", "standard"),
                       help="auto: permute the head from the authors' zip order when the checkpoint's args say "
                       "cache=True; zip: always; standard: never")
        p.add_argument("--zip-map", default=None, help="local copy of the authors' zip_val_map.txt (default: "
                       "download it from their repository)")
        p.add_argument("--plain-torchvision", action="store_true", help="opt-in: load BlurPool ResNet weights "
                       "into a plain torchvision ResNet by dropping the blur (changes the function)")

    p = sub.add_parser("download", help="download a registry checkpoint (sha256-verified, resumable)")
    p.add_argument("name")
    p.add_argument("--sha256", default=None, help="expected sha256 (for an overridden --filename)")
    add_fetch(p)
    p = sub.add_parser("convert", help="convert an upstream checkpoint to this project's format")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--arch", required=True, help="deit_small_patch16_224 or a torchvision ResNet (resnet50)")
    p.add_argument("--offline", action="store_true", help="do not download the zip map")
    add_convert(p)
    p = sub.add_parser("evaluate", help="top-1/top-5/NLL/ECE of a registry name or checkpoint on an ImageFolder")
    p.add_argument("checkpoint", help=f"one of {', '.join(REGISTRY)}, or a checkpoint path")
    p.add_argument("--data-path", required=True, help="ImageFolder with one folder per wnid (e.g. imagenet/val)")
    p.add_argument("--arch", default=None, help="architecture of a raw upstream checkpoint path")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch")
    p.add_argument("--workers", type=int, default=4, help="data-loading processes")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--dataset", default="imagefolder",
                   choices=["imagefolder", "imagenetv2", "imagenet-a", "imagenet-r", "imagenet-sketch"],
                   help="layout of --data-path: an ImageFolder (ImageNet val), ImageNetV2 (folders 0..999), "
                        "ImageNet-A/-R (200 wnid folders; the 200 logits only) or ImageNet-Sketch")
    p.add_argument("--real-labels", nargs="?", const=True, default=None, metavar="JSON",
                   help="also report ReaL top-1 on ImageNet val (default file: timm's bundled real.json)")
    add_fetch(p)
    add_convert(p)
    return parser


def _run(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(format="%(message)s")
    log.setLevel(logging.INFO)
    if args.command == "list":
        for entry in REGISTRY.values():
            where = f"{entry.repo}@{entry.revision}/{entry.filename}"
            print(f"{entry.name:20s} {entry.source:6s} {entry.arch:24s} {where}\n{'':20s} {entry.description}")
    elif args.command == "download":
        print(download(args.name, dest=args.dest, filename=args.filename, offline=args.offline, sha256=args.sha256))
    elif args.command == "convert":
        raw = load_released_checkpoint(args.src)
        ckpt = convert_checkpoint(raw, args.arch, label_order=args.label_order, zip_map=args.zip_map,
                                  plain_torchvision=args.plain_torchvision, offline=args.offline, source=args.src)
        atomic_save(ckpt, args.dst)
        print(json.dumps({"dst": str(args.dst), **ckpt["hub"], "arch": ckpt["arch"]}))
    elif args.command == "evaluate":
        ckpt = _resolve_for_eval(args.checkpoint, args)
        result = evaluate_checkpoint(ckpt, args.data_path, args.batch_size, args.workers, args.device, args.limit,
                                     dataset=args.dataset, real=args.real_labels)
        print(json.dumps({"checkpoint": args.checkpoint, **result}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point: bad input becomes one ``error: ...`` line on stderr and exit status 2."""
    return run_cli(_run, argv)


if __name__ == "__main__":
    main()
