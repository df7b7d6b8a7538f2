"""Plain HTTP(S) transfers for the hub: resumable, verified (size, sha256) and atomic downloads, a reachability
probe, and :func:`cached_url`, the trainers' ``--resume URL`` / ``--finetune URL`` (DeiT's ``--resume https://…``).
Every failure is a one-line :class:`DownloadError` or :class:`ChecksumError` that says how to work offline."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import logging
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..training.checkpoint import atomic_path, is_url
from .registry import ChecksumError, DownloadError

__all__ = ["sha256_file", "offline_hint", "check_sha256", "check_size", "fetch_url", "copy_atomic", "probe", "is_url",
           "url_hash_prefix", "cached_url", "local_checkpoint", "local_checkpoints"]

log = logging.getLogger("maxsup.hub")
_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def offline_hint(where: Path) -> str:
    """The end of every network error: how to go on without the network."""
    return (f"if this machine is offline, copy the file into a folder and re-run with --offline --dest DIR "
            f"(downloads are cached in {where}), or pass the file's path to convert/evaluate")


def check_sha256(path: Path, expected: str | None, label: str, what: str = "expected") -> None:
    """Delete ``path`` and raise :class:`ChecksumError` unless its sha256 is ``expected`` (None: no check);
    ``what`` says where the expected hash came from."""
    if expected is None:
        return
    got = sha256_file(path)
    if got != expected.lower():
        path.unlink(missing_ok=True)
        raise ChecksumError(f"sha256 mismatch for {label}: {what} {expected}, got {got}; the file was deleted, "
                            f"re-run to download it again")


def check_size(path: Path, expected: int | None, label: str) -> None:
    """Delete ``path`` and raise :class:`ChecksumError` unless it has ``expected`` bytes (None: no check)."""
    if expected is not None and path.stat().st_size != expected:
        got = path.stat().st_size
        path.unlink(missing_ok=True)
        raise ChecksumError(f"size mismatch for {label}: the server lists {expected} bytes, got {got}; the file was "
                            f"deleted, re-run to download it again")


def fetch_url(url: str, dest: str | os.PathLike, sha256: str | None = None, timeout: float = 60.0,
              not_found_hint: str = "check the URL", size: int | None = None, sha256_source: str = "expected",
              offline: str | None = None) -> Path:
    """Download ``url`` to ``dest`` over plain HTTP(S).

    Bytes go to ``dest + '.part'``; an interrupted transfer keeps it and the next call resumes with a ``Range``
    request. The final name appears only after the size and sha256 (when given) verify (``os.replace``); on a
    mismatch the partial file is deleted too. ``offline``: the end of a network error's message (default: the hub
    CLI's :func:`offline_hint`).
    """
    dest = Path(dest)
    hint = offline if offline is not None else offline_hint(dest.parent)
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
            raise DownloadError(f"cannot download {url}: HTTP {exc.code} {exc.reason}; {hint}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"cannot reach {url} ({reason}); {hint}") from None
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
    check_size(part, size, dest.name)
    check_sha256(part, sha256, dest.name, sha256_source)
    os.replace(part, dest)
    return dest


def copy_atomic(src: Path, dest: Path) -> Path:
    """Copy ``src`` to ``dest`` through a temporary file in ``dest``'s folder (never a half-written ``dest``)."""
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return dest


def probe(url: str, where: Path, timeout: float = 15.0) -> None:
    """Raise :class:`DownloadError` if ``url``'s host cannot be reached (any HTTP status counts as reachable)."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        pass
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"cannot reach {url} ({getattr(exc, 'reason', exc)}); {offline_hint(where)}") from None



# --------------------------------------------------------------------------------------------------------------------
# A checkpoint URL given to a trainer (--resume URL / --finetune URL)
# --------------------------------------------------------------------------------------------------------------------
#: torch.hub's file-name convention ``<name>-<first hex digits of the sha256>.<ext>``
#: (``deit_small_patch16_224-cd65a155.pth``). At least 8 digits, then a dot: torch.hub's own pattern
#: ``-([a-f0-9]*)\.`` also reads ``-83.`` in ``lvvit_s-26M-224-83.3.pth.tar`` as a hash and then fails its check.
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.")


def url_hash_prefix(name: str) -> str | None:
    """The sha256 prefix a torch.hub-style file name carries (``x-cd65a155.pth`` → ``cd65a155``), else None."""
    match = _HASH_IN_NAME.search(name)
    return match.group(1) if match else None


def _torch_hub_checkpoints() -> Path:
    """torch.hub's checkpoint cache (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch/hub/checkpoints``),
    where ``torch.hub.load_state_dict_from_url`` puts the same files: one already downloaded there is reused."""
    import torch.hub  # here, not at import time: maxsup.hub's CLI does not need torch to list or download

    return Path(torch.hub.get_dir()) / "checkpoints"


@contextmanager
def _download_lock(folder: Path) -> Iterator[None]:
    """Exclusive ``flock`` on the cache folder itself while one process downloads into it (no lock file is left
    behind): the ranks of one node share the cache, so the first one downloads while the others wait and then find
    the file. Without working advisory locks (some NFS mounts, Windows) each rank downloads and ``os.replace`` keeps
    the result atomic."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # this file system does not do flock
            pass
        yield
    finally:
        os.close(fd)  # drops the lock


def cached_url(url: str, flag: str = "--resume", folder: str | os.PathLike | None = None, check_hash: bool = True,
               timeout: float = 60.0) -> Path:
    """The local copy of the checkpoint at ``url``, downloaded on first use (what DeiT's ``--resume https://…`` does
    through ``torch.hub.load_state_dict_from_url(url, map_location='cpu', check_hash=True)``).

    The file goes to ``folder`` (default: torch.hub's checkpoint cache) under the URL's file name, through
    :func:`fetch_url` (resumable ``.part``, atomic rename). A name carrying a sha256 prefix in torch.hub's convention
    (``deit_small_patch16_224-cd65a155.pth``) lies where torch.hub puts it, so a file torch.hub already fetched is
    reused, and with ``check_hash`` it is verified against that prefix, on download and on every later use. Any other
    name is used unverified, as torch.hub does, and lies in a subfolder ``url-<sha256 of the URL>``: two URLs that end
    in the same name (``…/resolve/main/model.pth``) are two files. ``flag``
    (``--resume``, ``--finetune``) names the trainer's flag in the messages. A bad URL, an unreachable host, an HTTP
    error or a hash mismatch is one :class:`DownloadError` / :class:`ChecksumError` line and leaves no file behind
    (but for an interrupted transfer's ``.part``, which the next call resumes).
    """
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
    except ValueError as exc:  # e.g. "http://[::1": an unclosed IPv6 bracket
        raise DownloadError(f"{flag} {url} is not a valid URL ({exc}); pass an http(s) URL or a local path") from None
    name = urllib.parse.unquote(Path(parts.path).name)
    if parts.scheme.lower() not in ("http", "https") or not host or not name:
        raise DownloadError(f"{flag} {url} is not a URL of a file (http(s)://HOST/PATH/FILE); pass the checkpoint's "
                            f"download URL or a local path")
    prefix = url_hash_prefix(name) if check_hash else None
    folder = Path(folder) if folder is not None else _torch_hub_checkpoints()
    if url_hash_prefix(name) is None:
        # torch.hub keys its cache by file name alone, so two URLs ending in model.pth would share one file; a name
        # without its content's hash gets a folder of its own URL
        folder = folder / f"url-{hashlib.sha256(url.encode()).hexdigest()[:16]}"
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / name
    offline = f"if this machine is offline, download the file elsewhere and pass its local path to {flag}"
    try:
        with _download_lock(folder):
            if not dest.is_file():
                log.info("downloading %s to %s", url, dest)
                incoming = dest.with_name(dest.name + ".download")  # its .part resumes an interrupted transfer
                fetch_url(url, incoming, timeout=timeout, offline=offline,
                          not_found_hint=f"check the URL given to {flag}")
                _check_prefix(incoming, prefix, url)
                os.replace(incoming, dest)
            else:
                _check_prefix(dest, prefix, url)
    except BaseException:
        if made:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: an interrupted transfer's .part stays for the next call
        raise
    return dest


def _check_prefix(path: Path, prefix: str | None, url: str) -> None:
    """Delete ``path`` and raise :class:`ChecksumError` unless its sha256 starts with ``prefix`` (None: no check)."""
    if prefix is None:
        return
    got = sha256_file(path)
    if not got.startswith(prefix):
        path.unlink(missing_ok=True)
        raise ChecksumError(f"sha256 mismatch for {url}: its file name says {prefix}…, the file has {got}; the file "
                            f"was deleted, re-run to download it again")


def local_checkpoint(value: str, flag: str) -> str:
    """``value`` as given, or where it is an http(s) URL its :func:`cached_url` copy (announced as ``FLAG URL: using
    PATH``); ``flag`` names the trainer's flag in that line and in the errors."""
    if not is_url(value):
        return value
    path = cached_url(value, flag)
    print(f"{flag} {value}: using {path}")
    return str(path)


def local_checkpoints(args: argparse.Namespace, flags: Iterable[str] = ("resume", "finetune")) -> argparse.Namespace:
    """``args`` with each of ``flags`` (``--resume``, ``--finetune``) that holds an http(s) URL replaced by its
    :func:`cached_url` copy, so that the trainer goes on exactly as with that local path (``args`` itself is left as
    the user typed it). The trainers call this after claiming their run folder: a refused run downloads nothing."""
    local = {flag: local_checkpoint(getattr(args, flag), f"--{flag}") for flag in flags if is_url(getattr(args, flag))}
    return argparse.Namespace(**{**vars(args), **local}) if local else args
