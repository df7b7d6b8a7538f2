"""The authors' released checkpoints: registry, verified download, conversion to this project's format, evaluation.

    python -m maxsup.hub list [--remote]
    python -m maxsup.hub download deit_small_maxsup [--dest DIR] [--filename NAME] [--offline]
    python -m maxsup.hub convert SRC.pth DST.pth --arch deit_small_patch16_224 [--label-order auto|zip|standard]
    python -m maxsup.hub convert last.ckpt DST.pth --arch resnet50 [--plain-torchvision]
    python -m maxsup.hub evaluate deit_small_maxsup|CKPT --data-path /imagenet/val
    python -m maxsup.hub export-mmseg CKPT OUT.pth   # DeiT-S backbone for MMSegmentation + UperNet/ADE20K config

The registry records what is known (repository, release tag or revision, model, method); the file is found at run
time by listing the release (GitHub REST API) or the repository (huggingface_hub) and applying :func:`file_rule`.
Downloads are verified against the size/sha256 the API states, or against a sha256 recorded on first download.

Two traps this module exists for (see data/README.md, "Released checkpoints"):

* The DeiT-Small checkpoint was trained with ``--cache`` (zip files + the authors' map files), whose class indices
  are a permutation of ImageFolder's sorted-wnid order with no fixed point. Evaluated on an ImageFolder without
  remapping it scores near chance. :func:`convert_checkpoint` permutes the head rows into sorted-wnid order, using
  the authors' ``zip_training_converter/zip_val_map.txt`` at a pinned commit, verified by the file's sha256 and then
  by the sha256 of its class order.
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
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .cli import run_cli
from .errors import UserError
from .training.checkpoint import atomic_path, atomic_save, atomic_write, load_checkpoint

__all__ = ["ReleasedCheckpoint", "REGISTRY", "DownloadError", "ChecksumError", "LayoutError", "ZipMapError",
           "RemoteFile", "file_rule", "matches_rule", "pick_file", "list_remote", "github_release",
           "cache_dir", "download", "fetch_url", "sha256_file", "load_released_checkpoint", "read_zip_map",
           "verify_zip_order", "zip_to_standard_permutation", "load_zip_order", "normalize_resnet_state_dict",
           "convert_checkpoint", "evaluate_checkpoint", "main"]

log = logging.getLogger("maxsup.hub")

AUTHORS_REPO = "ZhouYuxuanYX/Maximum-Suppression-Regularization"
HF_RESNET_REPO = "zhouyuxuanyx/MaxSup-Regularized-ResNet50"
#: The authors' ``zip_val_map.txt`` (50,000 ``val/<wnid>/<file>\t<label>`` lines): the commit that added it (it is
#: unchanged since) and the file's sha256. Downloads are pinned to that commit, not the default branch.
ZIP_MAP_PATH = "zip_training_converter/zip_val_map.txt"
ZIP_MAP_COMMIT = "f126a03a8d333c9f517932939cd5a5dfec6874aa"
ZIP_MAP_SHA256 = "aead58dabd09f558ecd820c40488207a395397c494d47caa2fcb675e9a1acf47"
#: sha256 of the class order read from that file (index -> wnid, joined by "\n", no trailing newline): the second
#: check, and the only one for a local ``--zip-map`` copy. perm[:10] = [538, 735, 432, 61, 458, ...].
ZIP_ORDER_SHA256 = "86107cb3b696b7a7f0eaa70fc25b6b2822acaba8308bcf89dd83c2e2acd181c6"
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
# Registry: what is known (repository, tag or revision, model, method); the file itself is found at run time
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReleasedCheckpoint:
    """One released model. The file name is not recorded: :func:`download` lists the release (GitHub) or the
    repository (Hugging Face) and picks the file by :func:`file_rule` (``--filename`` picks one explicitly)."""

    name: str
    source: str  # "github" (release asset) or "hf" (Hugging Face model repo)
    repo: str
    revision: str  # GitHub release tag (or title) / Hugging Face revision
    arch: str
    method: str  # "baseline", "ls" or "maxsup"
    description: str
    eval_transform: dict[str, Any] = field(default_factory=dict)  # kwargs of maxsup.data.transforms.transform_spec
    single_model: bool = False  # True: the release holds one model, so any checkpoint file is a candidate


# ffcv-imagenet evaluates at 256 px: a centre square of 224/256 of the short side resized to 256x256
# (CenterCropRGBImageDecoder((256, 256), ratio=224/256)) ~ Resize(292) + CenterCrop(256).
_FFCV_EVAL = {"img_size": 256, "crop_pct": 224 / 256, "interpolation": "bilinear"}
_RESNET_NOTE = "ResNet-50 (ffcv, BlurPool), trained with {}; sorted-wnid labels"

REGISTRY: dict[str, ReleasedCheckpoint] = {
    c.name: c for c in (
        ReleasedCheckpoint(
            "deit_small_maxsup", "github", AUTHORS_REPO, "checkpoint_deit", "deit_small_patch16_224", "maxsup",
            "DeiT-Small trained with MaxSup (GitHub release checkpoint_deit); zip label order, remapped on convert",
            # Deit/datasets.py build_transform with --eval-crop-ratio 0.875: Resize(256, bicubic) + CenterCrop(224).
            {"img_size": 224, "crop_pct": 0.875, "interpolation": "bicubic"}, single_model=True),
        ReleasedCheckpoint("resnet50_baseline", "hf", HF_RESNET_REPO, "main", "resnet50", "baseline",
                           _RESNET_NOTE.format("cross-entropy"), _FFCV_EVAL),
        ReleasedCheckpoint("resnet50_ls", "hf", HF_RESNET_REPO, "main", "resnet50", "ls",
                           _RESNET_NOTE.format("label smoothing"), _FFCV_EVAL),
        ReleasedCheckpoint("resnet50_maxsup", "hf", HF_RESNET_REPO, "main", "resnet50", "maxsup",
                           _RESNET_NOTE.format("MaxSup"), _FFCV_EVAL),
    )
}

#: File names (lower-cased, with their folders) that count as checkpoints.
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".tar")
#: A method's pattern, searched in the lower-cased path of a file (folders included).
METHOD_PATTERNS = {
    "baseline": r"baseline|vanilla|cross[-_ ]?entropy|(?<![a-z])ce(?![a-z])",
    "ls": r"label[-_ ]?smooth|(?<![a-z])ls(?![a-z])",
    "maxsup": r"max[-_ ]?sup",
}


def file_rule(entry: ReleasedCheckpoint) -> str:
    """The documented rule that picks ``entry``'s file from a listing (printed by ``list``)."""
    kind = f"checkpoint file ({'/'.join(CHECKPOINT_SUFFIXES)})"
    if entry.single_model:
        return f"the one {kind} in the release"
    others = [m for m in METHOD_PATTERNS if m != entry.method]
    return (f"the one {kind} whose path matches /{METHOD_PATTERNS[entry.method]}/ and not the "
            f"{' or '.join(others)} patterns")


def matches_rule(entry: ReleasedCheckpoint, path: str) -> bool:
    low = path.lower()
    if not low.endswith(CHECKPOINT_SUFFIXES):
        return False
    if entry.single_model:
        return True
    hits = {m for m, pattern in METHOD_PATTERNS.items() if re.search(pattern, low)}
    return hits == {entry.method}


def get_entry(name: str) -> ReleasedCheckpoint:
    if name not in REGISTRY:
        raise UserError(f"unknown checkpoint {name!r}; known: {', '.join(REGISTRY)} (or pass a file path)")
    return REGISTRY[name]


def cache_dir() -> Path:
    """Offline cache root: ``$MAXSUP_CACHE`` or ``~/.cache/maxsup``."""
    return Path(os.environ.get("MAXSUP_CACHE") or Path.home() / ".cache" / "maxsup")


def _github_api() -> str:
    return os.environ.get("MAXSUP_GITHUB_API", "https://api.github.com").rstrip("/")


def _github_raw_base() -> str:
    return os.environ.get("MAXSUP_GITHUB_RAW_BASE", "https://raw.githubusercontent.com").rstrip("/")


def _hf_endpoint() -> str:
    # passed explicitly: huggingface_hub reads HF_ENDPOINT only once, at import time.
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


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


def _check_sha(path: Path, expected: str | None, label: str, what: str = "expected") -> None:
    if expected is None:
        return
    got = sha256_file(path)
    if got != expected.lower():
        path.unlink(missing_ok=True)
        raise ChecksumError(f"sha256 mismatch for {label}: {what} {expected}, got {got}; the file was deleted, "
                            f"re-run to download it again")


def _check_size(path: Path, expected: int | None, label: str) -> None:
    if expected is not None and path.stat().st_size != expected:
        got = path.stat().st_size
        path.unlink(missing_ok=True)
        raise ChecksumError(f"size mismatch for {label}: the server lists {expected} bytes, got {got}; the file was "
                            f"deleted, re-run to download it again")


def fetch_url(url: str, dest: str | os.PathLike, sha256: str | None = None, timeout: float = 60.0,
              not_found_hint: str = "check the URL", size: int | None = None, sha256_source: str = "expected") -> Path:
    """Download ``url`` to ``dest`` over plain HTTP(S).

    Bytes go to ``dest + '.part'``; an interrupted transfer keeps it and the next call resumes with a ``Range``
    request. The final name appears only after the size and sha256 (when given) verify (``os.replace``); on a
    mismatch the partial file is deleted too.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:  # stale .part from another file: start over
        part.unlink()
        offset = 0
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
    _check_size(part, size, dest.name)
    _check_sha(part, sha256, dest.name, sha256_source)
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


@dataclass(frozen=True)
class RemoteFile:
    """One file of a release or repository listing. ``sha256``/``size`` are what the API states (None: unknown)."""

    name: str
    size: int | None = None
    sha256: str | None = None
    url: str | None = None  # GitHub: browser_download_url


def _listing(names: list[str], n: int = 12) -> str:
    shown = ", ".join(names[:n])
    return shown + (f", ... ({len(names)} files)" if len(names) > n else "")


def pick_file(entry: ReleasedCheckpoint, files: list[RemoteFile], filename: str | None, where: str,
              hint: str = "") -> RemoteFile:
    """The file ``filename`` names, or the single file :func:`file_rule` picks; else one-line :class:`DownloadError`
    listing what was found and the ``--filename`` flag."""
    names = [f.name for f in files]
    if filename is not None:
        for f in files:
            if f.name == filename:
                return f
        raise DownloadError(f"{where} has no file {filename!r}; it holds: {_listing(names) or 'nothing'}{hint}")
    if not files:
        raise DownloadError(f"{where} holds no files, so nothing can be picked for {entry.name}{hint}")
    candidates = [f for f in files if matches_rule(entry, f.name)]
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        found = f"{len(candidates)} candidate files for {entry.name} ({_listing([f.name for f in candidates])})"
    else:
        found = f"no file for {entry.name} (rule: {file_rule(entry)}); it holds: {_listing(names)}"
    raise DownloadError(f"{where} has {found}; pick one with --filename NAME{hint}")


def _api_json(url: str, where: Path, timeout: float = 30.0) -> Any:
    """GET a GitHub REST API URL; None on 404. ``$GITHUB_TOKEN``, when set, raises the anonymous rate limit."""
    headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28",
               "User-Agent": "maxsup-hub"}
    if os.environ.get("GITHUB_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['GITHUB_TOKEN']}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        if exc.code in (403, 429):
            raise DownloadError(f"the GitHub API refused {url} (HTTP {exc.code}, probably its rate limit for "
                                f"anonymous requests); wait an hour or set GITHUB_TOKEN, or {_offline_hint(where)}"
                                ) from None
        raise DownloadError(f"the GitHub API answered {url} with HTTP {exc.code} {exc.reason}; "
                            f"{_offline_hint(where)}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"cannot reach {url} ({getattr(exc, 'reason', exc)}); {_offline_hint(where)}") from None
    except json.JSONDecodeError:
        raise DownloadError(f"the GitHub API sent something other than JSON for {url}") from None


def github_release(repo: str, tag: str, where: Path) -> dict[str, Any]:
    """``GET /repos/{repo}/releases/tags/{tag}``; if no such tag exists, the release whose title is ``tag``
    (the authors' README calls ``checkpoint_deit`` a release title)."""
    api = f"{_github_api()}/repos/{repo}"
    release = _api_json(f"{api}/releases/tags/{urllib.parse.quote(tag, safe='')}", where)
    if release is not None:
        return release
    releases: list[dict[str, Any]] = []
    for page in range(1, 11):
        batch = _api_json(f"{api}/releases?per_page=100&page={page}", where)
        if batch is None and page == 1:
            raise DownloadError(f"the GitHub repository {repo} was not found ({api}); check MAXSUP_GITHUB_API")
        releases += batch or []
        if not batch or len(batch) < 100:
            break
    titled = [r for r in releases if r.get("name") == tag]
    if len(titled) == 1:
        return titled[0]
    found = ", ".join(f"{r.get('tag_name')} ({r.get('name')!r})" for r in releases) or "none"
    what = f"{len(titled)} releases titled" if titled else "no release tagged or titled"
    raise DownloadError(f"{repo} has {what} {tag!r}; its releases: {found}")


def list_remote(entry: ReleasedCheckpoint, revision: str | None = None) -> tuple[list[RemoteFile], str]:
    """The files of ``entry``'s release (GitHub REST API) or repository (``huggingface_hub``), with the size and
    sha256 the API states, and a phrase naming where they were listed."""
    revision = revision or entry.revision
    if entry.source == "github":
        release = github_release(entry.repo, revision, cache_dir() / "github")
        files = []
        for asset in release.get("assets") or []:
            if asset.get("state", "uploaded") != "uploaded":
                continue
            digest = asset.get("digest") or ""
            files.append(RemoteFile(asset["name"], asset.get("size"),
                                    digest[len("sha256:"):].lower() if digest.startswith("sha256:") else None,
                                    asset.get("browser_download_url")))
        return files, f"the GitHub release {release.get('tag_name', revision)!r} of {entry.repo}"
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    endpoint = _hf_endpoint()
    _probe(endpoint, cache_dir() / "huggingface")  # fail fast: huggingface_hub retries an unreachable host
    try:
        tree = list(HfApi(endpoint=endpoint).list_repo_tree(entry.repo, revision=revision, recursive=True))
    except RevisionNotFoundError:
        raise DownloadError(f"the Hugging Face repo {entry.repo} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise DownloadError(f"the Hugging Face repo {entry.repo} was not found at {endpoint}") from None
    except (HfHubHTTPError, OSError) as exc:
        raise DownloadError(f"cannot list {entry.repo} on the Hugging Face hub ({type(exc).__name__}); "
                            f"{_offline_hint(cache_dir() / 'huggingface')}") from None
    files = [RemoteFile(f.path, f.size, f.lfs.sha256 if getattr(f, "lfs", None) else None)
             for f in tree if hasattr(f, "blob_id")]  # RepoFile (folders have no blob)
    return files, f"the Hugging Face repo {entry.repo}@{revision}"


# sha256 of files whose API gave no digest, recorded on first download and checked on every later use
def _records_path() -> Path:
    return cache_dir() / "sha256_records.json"


def _records() -> dict[str, dict[str, Any]]:
    path = _records_path()
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{path} is not valid JSON; delete it (the hashes are recorded again on the next "
                        f"download)") from None


def _record(key: str, sha256: str, size: int, origin: str) -> None:
    records = _records()
    records[key] = {"sha256": sha256, "size": size, "origin": origin}
    atomic_write(_records_path(), json.dumps(records, indent=1, sort_keys=True) + "\n")


def _record_key(entry: ReleasedCheckpoint, revision: str, name: str) -> str:
    return f"{entry.source}:{entry.repo}@{revision}/{name}"


def _hf_cached_files(entry: ReleasedCheckpoint, revision: str) -> tuple[Path | None, list[str]]:
    """Snapshot folder and file names huggingface_hub's cache holds for ``entry`` at ``revision``."""
    repo_dir = cache_dir() / "huggingface" / f"models--{entry.repo.replace('/', '--')}"
    ref = repo_dir / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = repo_dir / "snapshots" / commit
    if not snapshot.is_dir():
        return None, []
    return snapshot, sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file())


def _hf_fetch(entry: ReleasedCheckpoint, filename: str, revision: str) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    hf_cache = cache_dir() / "huggingface"
    try:
        return Path(hf_hub_download(entry.repo, filename, revision=revision, cache_dir=hf_cache,
                                    endpoint=_hf_endpoint()))
    except EntryNotFoundError:
        raise DownloadError(f"{filename} is listed in {entry.repo} but cannot be downloaded (not found); pass "
                            f"another with --filename") from None
    except (HfHubHTTPError, OSError) as exc:
        raise DownloadError(f"cannot get {entry.repo}/{filename} from the Hugging Face hub ({type(exc).__name__}); "
                            f"{_offline_hint(hf_cache)}") from None


def _verify_or_delete(path: Path, sha256: str | None, size: int | None, label: str, what: str) -> None:
    """Size, then sha256; on a mismatch delete the file (and, for huggingface_hub's cache, the blob it links to)."""
    blob = path.resolve()
    try:
        _check_size(path, size, label)
        _check_sha(path, sha256, label, what)
    except ChecksumError:
        blob.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        raise


def download(name: str, dest: str | os.PathLike | None = None, filename: str | None = None,
             revision: str | None = None, offline: bool = False, sha256: str | None = None) -> Path:
    """Find ``name``'s file in its release/repository, fetch it and return its local path.

    The file is picked by :func:`file_rule` (or ``filename``) from the live listing, and verified against the size
    and sha256 the API states (GitHub asset ``digest``, Hugging Face LFS oid). Where the API gives no sha256, the
    hash is recorded on first download (``<cache>/sha256_records.json``) and checked on every later use. GitHub
    assets go to ``dest`` (default ``<cache>/github/<tag>/``) with resume; Hugging Face files use huggingface_hub's
    cache (``<cache>/huggingface``) and are copied atomically into ``dest`` when given. ``offline=True`` picks from
    the cache (or ``dest``) and never touches the network. ``sha256`` overrides every other expectation.
    """
    entry = get_entry(name)
    revision = revision or entry.revision
    if offline:
        return _download_offline(entry, revision, dest, filename, sha256)
    files, where = list_remote(entry, revision)
    chosen = pick_file(entry, files, filename, where)
    key = _record_key(entry, revision, chosen.name)
    recorded = _records().get(key)
    if sha256:
        expected, what = sha256.lower(), "expected (--sha256)"
    elif chosen.sha256:
        expected, what = chosen.sha256, "the API states"
    elif recorded:
        expected, what = recorded["sha256"], "recorded at first download"
    else:
        expected, what = None, ""
    size = chosen.size if chosen.size is not None else (recorded or {}).get("size")
    if entry.source == "github":
        if not chosen.url:
            raise DownloadError(f"{where} lists {chosen.name} without a download URL")
        path = (Path(dest) if dest is not None else cache_dir() / "github" / revision) / chosen.name
        if path.is_file():
            _verify_or_delete(path, expected, size, chosen.name, what)
            log.info("using the verified copy %s", path)
        else:
            log.info("downloading %s (%s bytes) from %s", chosen.name, chosen.size, where)
            fetch_url(chosen.url, path, sha256=expected, size=size, sha256_source=what,
                      not_found_hint="the release lists it but the server does not have it; pass another asset "
                      "with --filename")
    else:
        path = _hf_fetch(entry, chosen.name, revision)
        _verify_or_delete(path, expected, size, chosen.name, what)
        if dest is not None:
            path = _copy_atomic(path, Path(dest) / chosen.name)
    if expected is None:
        digest = sha256_file(path)
        _record(key, digest, path.stat().st_size, "first download")
        log.info("%s gives no sha256 for %s; recorded %s (checked on every later use)", where, chosen.name, digest)
    elif recorded is None or recorded["sha256"] != expected:
        _record(key, expected, path.stat().st_size, what)
    return path


def _download_offline(entry: ReleasedCheckpoint, revision: str, dest: str | os.PathLike | None,
                      filename: str | None, sha256: str | None) -> Path:
    hint = "; download it first without --offline, or put the file in a folder and pass --dest DIR"
    folder = Path(dest) if dest is not None else cache_dir() / "github" / revision
    # paths relative to the folder: a Hugging Face file copied with --dest keeps its folders (ResNet50/x.ckpt)
    names = [str(p.relative_to(folder)) for p in sorted(folder.rglob("*"))
             if p.is_file() and not p.name.endswith(".part")] if folder.is_dir() else []
    where = f"the offline folder {folder}"
    # Hugging Face: huggingface_hub's cache, unless --dest already holds a file the rule (or --filename) picks
    if entry.source == "hf" and not any(n == filename or (filename is None and matches_rule(entry, n))
                                        for n in names):
        folder, names = _hf_cached_files(entry, revision)
        where = f"the offline cache of {entry.repo}@{revision} ({cache_dir() / 'huggingface'})"
    chosen = pick_file(entry, [RemoteFile(n) for n in names], filename, where, hint)
    path = Path(folder) / chosen.name
    recorded = _records().get(_record_key(entry, revision, chosen.name))
    if sha256:
        _verify_or_delete(path, sha256.lower(), None, chosen.name, "expected (--sha256)")
    elif recorded:
        _verify_or_delete(path, recorded["sha256"], recorded.get("size"), chosen.name,
                          f"recorded ({recorded.get('origin')})")
    else:
        log.warning("no sha256 is recorded for %s, so it is used unverified", path)
    return path


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
        _check_sha(cached, ZIP_MAP_SHA256, f"{label} (cached at {cached})", "pinned")
    elif offline:
        raise DownloadError(f"the authors' zip map is not cached at {cached} and --offline was given; "
                            f"pass a local copy of {ZIP_MAP_PATH} with --zip-map")
    else:
        url = f"{_github_raw_base()}/{AUTHORS_REPO}/{ZIP_MAP_COMMIT}/{ZIP_MAP_PATH}"
        log.debug("downloading the authors' zip map %s", url)
        fetch_url(url, cached,
                  not_found_hint=f"pass a local copy of the authors' {ZIP_MAP_PATH} with --zip-map")
        _check_sha(cached, ZIP_MAP_SHA256, f"{label} ({url})", "pinned")
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
    scorer = None
    if real:  # file names and class wnids are checked before the evaluation
        from .data.imagenet_variants import RealScorer, real_labels

        scorer = RealScorer.from_dataset(dataset, real_labels(None if real is True else real))
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
    if scorer is not None:  # images with an empty ReaL set are left out of n_real
        result.update(scorer.result(*scorer.counts(torch.cat(preds))))
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
    p = sub.add_parser("list", help="show the registry and the rule that picks each model's file")
    p.add_argument("--remote", action="store_true", help="also list each release/repository now and show which "
                   "file the rule picks (or why none)")

    def add_fetch(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dest", default=None, help="folder for the downloaded file (default: the cache, "
                       "$MAXSUP_CACHE or ~/.cache/maxsup)")
        p.add_argument("--filename", default=None, help="pick this file of the release/repository instead of "
                       "the one the rule picks (see `list --remote`)")
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
    p.add_argument("--sha256", default=None, help="expected sha256 (overrides the API's digest and the recorded "
                   "hash)")
    add_fetch(p)
    p = sub.add_parser("export-mmseg", help="DeiT-S backbone in MMSegmentation's VisionTransformer key layout, "
                       "plus an UperNet + DeiT-S ADE20K config beside it")
    p.add_argument("ckpt", help="a DeiT-S checkpoint: ours (any trainer, or `convert` output) or the authors' file")
    p.add_argument("out", help="the MMSegmentation checkpoint to write (.pth)")
    p.add_argument("--config", default=None, help="where to write the config (default: OUT's folder, "
                   "<OUT stem>_upernet_ade20k.py); 'none' writes no config")
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


def _print_list(remote: bool) -> None:
    for entry in REGISTRY.values():
        where = "GitHub release" if entry.source == "github" else "Hugging Face repo"
        print(f"{entry.name:20s} {entry.arch:24s} {where} {entry.repo}@{entry.revision}")
        print(f"{'':20s} {entry.description}")
        print(f"{'':20s} rule: {file_rule(entry)}")
        if not remote:
            continue
        try:
            files, found_in = list_remote(entry)
            chosen = pick_file(entry, files, None, found_in)
            check = (f"sha256 {chosen.sha256}" if chosen.sha256 else
                     "no sha256 from the API: recorded at first download")
            print(f"{'':20s} picks: {chosen.name} ({chosen.size} bytes, {check})")
        except DownloadError as exc:
            print(f"{'':20s} picks nothing: {exc}")


def _run(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(format="%(message)s")
    log.setLevel(logging.INFO)
    if args.command == "list":
        _print_list(args.remote)
    elif args.command == "download":
        print(download(args.name, dest=args.dest, filename=args.filename, offline=args.offline, sha256=args.sha256))
    elif args.command == "convert":
        raw = load_released_checkpoint(args.src)
        ckpt = convert_checkpoint(raw, args.arch, label_order=args.label_order, zip_map=args.zip_map,
                                  plain_torchvision=args.plain_torchvision, offline=args.offline, source=args.src)
        atomic_save(ckpt, args.dst)
        print(json.dumps({"dst": str(args.dst), **ckpt["hub"], "arch": ckpt["arch"]}))
    elif args.command == "export-mmseg":
        from .segmentation import export_mmseg

        config = None if args.config in (None, "none") else args.config
        out, cfg = export_mmseg(args.ckpt, args.out, config=config, write_config=args.config != "none")
        print(json.dumps({"checkpoint": str(out), "config": str(cfg) if cfg else None}))
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
