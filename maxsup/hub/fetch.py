"""Plain HTTP(S) transfers for the hub: resumable, verified (size, sha256) and atomic downloads, and a reachability
probe. Every failure is a one-line :class:`DownloadError` or :class:`ChecksumError` that says how to work offline."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from ..training.checkpoint import atomic_path
from .registry import ChecksumError, DownloadError

__all__ = ["sha256_file", "offline_hint", "check_sha256", "check_size", "fetch_url", "copy_atomic", "probe"]

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
                                f"{offline_hint(dest.parent)}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"cannot reach {url} ({reason}); {offline_hint(dest.parent)}") from None
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

