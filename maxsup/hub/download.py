"""Find a released checkpoint's file in its GitHub release (REST API) or Hugging Face repository (huggingface_hub)
by :func:`maxsup.hub.file_rule`, download it, and verify it against the size/sha256 the API states, or against a
sha256 recorded on first download. ``offline=True`` picks from the cache or a folder and never uses the network."""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..training.checkpoint import atomic_write
from .fetch import check_sha256, check_size, copy_atomic, fetch_url, offline_hint, probe, sha256_file
from .registry import (
    ChecksumError,
    DownloadError,
    ReleasedCheckpoint,
    cache_dir,
    file_rule,
    get_entry,
    github_api_base,
    hf_endpoint,
    matches_rule,
)

__all__ = ["RemoteFile", "pick_file", "github_release", "list_remote", "download"]

log = logging.getLogger("maxsup.hub")


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
                                f"anonymous requests); wait an hour or set GITHUB_TOKEN, or {offline_hint(where)}"
                                ) from None
        raise DownloadError(f"the GitHub API answered {url} with HTTP {exc.code} {exc.reason}; "
                            f"{offline_hint(where)}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"cannot reach {url} ({getattr(exc, 'reason', exc)}); {offline_hint(where)}") from None
    except json.JSONDecodeError:
        raise DownloadError(f"the GitHub API sent something other than JSON for {url}") from None


def github_release(repo: str, tag: str, where: Path) -> dict[str, Any]:
    """``GET /repos/{repo}/releases/tags/{tag}``; if no such tag exists, the release whose title is ``tag``
    (the authors' README calls ``checkpoint_deit`` a release title)."""
    api = f"{github_api_base()}/repos/{repo}"
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
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    endpoint = hf_endpoint()
    probe(endpoint, cache_dir() / "huggingface")  # fail fast: huggingface_hub retries an unreachable host
    try:
        tree = list(HfApi(endpoint=endpoint).list_repo_tree(entry.repo, revision=revision, recursive=True))
    except RevisionNotFoundError:
        raise DownloadError(f"the Hugging Face repo {entry.repo} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise DownloadError(f"the Hugging Face repo {entry.repo} was not found at {endpoint}") from None
    except _hf_transport_errors() as exc:
        raise DownloadError(f"cannot list {entry.repo} on the Hugging Face hub ({type(exc).__name__}); "
                            f"{offline_hint(cache_dir() / 'huggingface')}") from None
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


def _github_folder(entry: ReleasedCheckpoint, revision: str) -> Path:
    """Cache folder of a GitHub release: per repository, since two publishers may both tag ``1.0``."""
    return cache_dir() / "github" / entry.repo / revision


def _hf_cached_files(entry: ReleasedCheckpoint, revision: str) -> tuple[Path | None, list[str]]:
    """Snapshot folder and file names huggingface_hub's cache holds for ``entry`` at ``revision``."""
    repo_dir = cache_dir() / "huggingface" / f"models--{entry.repo.replace('/', '--')}"
    ref = repo_dir / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = repo_dir / "snapshots" / commit
    if not snapshot.is_dir():
        return None, []
    return snapshot, sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file())


def _hf_transport_errors() -> tuple[type[BaseException], ...]:
    """What huggingface_hub raises when the connection fails: 2.x speaks httpx (``huggingface_hub.errors.HTTPError``,
    not an OSError); 0.x speaks requests, whose errors are OSErrors."""
    from huggingface_hub import errors

    return tuple(t for t in (getattr(errors, "HTTPError", None), errors.HfHubHTTPError, OSError) if t is not None)


@contextmanager
def _quiet_huggingface_hub():
    """huggingface_hub logs a warning per retry ("Error while downloading ... Trying to resume"); the failure that
    remains is reported once, as one line, by :func:`_hf_fetch`."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _remove_incomplete(entry: ReleasedCheckpoint) -> None:
    """Partial blobs (``*.incomplete``) huggingface_hub may leave in ``entry``'s cache after a failed download."""
    blobs = cache_dir() / "huggingface" / f"models--{entry.repo.replace('/', '--')}" / "blobs"
    for part in blobs.glob("*.incomplete") if blobs.is_dir() else ():
        part.unlink(missing_ok=True)


def _hf_fetch(entry: ReleasedCheckpoint, filename: str, revision: str) -> Path:
    """``hf_hub_download`` into ``<cache>/huggingface``; every failure is one :class:`DownloadError` line and leaves
    no partial file behind."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    hf_cache = cache_dir() / "huggingface"
    what = f"{entry.repo}/{filename}"
    try:
        with _quiet_huggingface_hub():
            return Path(hf_hub_download(entry.repo, filename, revision=revision, cache_dir=hf_cache,
                                        endpoint=hf_endpoint()))
    except LocalEntryNotFoundError:  # (a subclass of EntryNotFoundError) the hub could not be reached
        message = f"cannot reach the Hugging Face hub for {what} and it is not cached; {offline_hint(hf_cache)}"
    except EntryNotFoundError:
        message = f"{filename} is listed in {entry.repo} but cannot be downloaded (not found); pass another with " \
                  f"--filename"
    except _hf_transport_errors() as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        if "consistency check failed" in reason.lower():  # the server's body and its announced size differ
            message = (f"download of {what} from the Hugging Face hub came back with the wrong size ({reason}); the "
                       f"partial file was deleted; re-run the same command, and if it happens again the server's "
                       f"copy differs from what it announces")
        else:
            message = (f"download of {what} from the Hugging Face hub failed ({type(exc).__name__}: {reason}); the "
                       f"partial file was deleted; re-run the same command to retry, or {offline_hint(hf_cache)}")
    _remove_incomplete(entry)
    raise DownloadError(message)


def _verify_or_delete(path: Path, sha256: str | None, size: int | None, label: str, what: str) -> None:
    """Size, then sha256; on a mismatch delete the file (and, for huggingface_hub's cache, the blob it links to)."""
    blob = path.resolve()
    try:
        check_size(path, size, label)
        check_sha256(path, sha256, label, what)
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
    assets go to ``dest`` (default ``<cache>/github/<owner>/<repo>/<tag>/``) with resume; Hugging Face files use
    huggingface_hub's cache (``<cache>/huggingface``) and are copied atomically into ``dest`` when given.
    ``offline=True`` picks from the cache (or ``dest``) and never touches the network. ``sha256`` overrides every
    other expectation.
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
        path = (Path(dest) if dest is not None else _github_folder(entry, revision)) / chosen.name
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
            path = copy_atomic(path, Path(dest) / chosen.name)
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
    folder = Path(dest) if dest is not None else _github_folder(entry, revision)
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

