"""OS errors and unreadable files as one actionable line.

Every CLI ends in :func:`maxsup.cli.run_cli`, which turns an ``OSError`` into :func:`os_error_line` (what happened,
to which path, what to do) and a DataLoader worker's wrapped exception back into the worker's own message
(:func:`unwrap_worker_message`). :func:`check_checkpoint_file` tells an empty, text or foreign file from a torch
checkpoint before ``torch.load`` reads it, because torch's weights-only unpickler answers those with ``KeyError`` /
``IndexError`` rather than a message.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from .errors import UserError

__all__ = ["check_checkpoint_file", "os_error_line", "require_checkpoint_file", "unwrap_worker_message", "write_failed"]

#: errno → what to do about it (the strerror already says what happened).
_HINTS = {
    errno.ENOSPC: "the disk is full; free space (or point the output at another disk) and rerun; files written "
                  "before, the last checkpoint included, are intact",
    errno.EDQUOT: "the disk quota is exhausted; free space (or point the output at another disk) and rerun",
    errno.EROFS: "the file system is read-only; choose an output folder on a writable disk",
    errno.EACCES: "permission denied; choose a folder you can write to, or fix its permissions",
    errno.EPERM: "permission denied; choose a folder you can write to, or fix its permissions",
    errno.ENOTDIR: "a part of this path is a file, not a folder; remove or rename it, or choose another path",
    errno.EEXIST: "this path exists and is not a folder; remove or rename it, or choose another path",
    errno.EISDIR: "this path is a folder where a file is expected; pass a file",
    errno.ENOENT: "no such file or folder; check the path",
    errno.ENAMETOOLONG: "the path is too long; choose a shorter one",
}

# torch.save writes a zip archive; torch < 1.6 (and _use_new_zipfile_serialization=False) a pickle whose first
# object is the legacy magic number, pickled with protocol 2 by default (any protocol 2-5 header is accepted).
_CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def os_error_line(exc: OSError) -> str:
    """One line for an ``OSError``: ``<path>: <strerror> (<what to do>)``; paths of both ends of a rename."""
    text = str(exc).strip()
    if exc.strerror is None:  # raised with a message of its own (``FileNotFoundError("... not found; ...")``)
        line = unwrap_worker_message(text).splitlines()[0] if text else type(exc).__name__
        return line if exc.filename is None or str(exc.filename) in line else f"{line}: {exc.filename}"
    what = exc.strerror
    path = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
    hint = _HINTS.get(exc.errno or -1)
    if exc.errno == errno.EEXIST and path is not None and Path(str(exc.filename)).is_dir():
        hint = None  # a folder that exists is not the problem a user can fix by removing a file
    head = f"{path}: {what}" if path is not None else what
    return f"{head} ({hint})" if hint else head


def write_failed(path: str | os.PathLike, exc: BaseException) -> UserError | OSError | None:
    """The error to raise when writing ``path`` failed with ``exc``, or None when ``exc`` is not a failed write (a
    bug to show as it is). An ``OSError`` keeps its errno (so the CLI line says what to do) but names ``path``;
    torch's C++ writer reports a failed ``write`` as a ``RuntimeError`` from ``inline_container.cc``
    ("PytorchStreamWriter failed writing file ..."), which becomes a :class:`UserError` saying what to check."""
    if isinstance(exc, OSError):
        return OSError(exc.errno, exc.strerror or str(exc), str(path))
    if not any(mark in str(exc) for mark in ("PytorchStreamWriter", "inline_container", "file write failed")):
        return None
    text = str(exc).strip()
    cause = text.splitlines()[0][:120] if text else type(exc).__name__
    return UserError(f"{path}: writing it failed ({cause}); check the free space and permissions of its folder and "
                     f"rerun; the previous file, if any, is intact")


def require_checkpoint_file(path: Path) -> None:
    """Refuse a ``path`` that is no file: missing, or a run folder given where its checkpoint file is expected (the
    message names the checkpoint inside it)."""
    if path.is_file():
        return
    if path.is_dir():
        inside = [path / n for n in ("checkpoint.pth", "best_checkpoint.pth") if (path / n).is_file()]
        raise UserError(f"{path} is a folder, not a checkpoint file; pass "
                        f"{inside[0] if inside else 'the checkpoint file inside it'}")
    raise UserError(f"checkpoint not found: {path}")


def check_checkpoint_file(path: str | os.PathLike) -> None:
    """Raise :class:`UserError` naming ``path`` unless it starts like a torch checkpoint (zip or legacy pickle).

    An empty file (an interrupted copy) and a text or other file (a log, a config, an image given by mistake) are told
    apart, so the line says what to do."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        raise UserError(f"checkpoint {path} is empty (0 bytes; an interrupted copy or a failed write?); copy it "
                        f"again, or pass another checkpoint")
    if not head.startswith(_CHECKPOINT_MAGIC):
        kind = "a text file" if _is_text(head) else "some other file"
        raise UserError(f"checkpoint {path} is not a torch checkpoint (it looks like {kind}: {head[:24]!r}); pass "
                        f"the checkpoint.pth a trainer wrote")


def _is_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in head


_WORKER = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.")


def unwrap_worker_message(msg: str) -> str:
    """A DataLoader worker's exception arrives as ``Caught X in DataLoader worker process N.`` + the worker's
    traceback; the worker's own message (``module.X: <message>``, the last line) is what names the file."""
    lines = [ln for ln in msg.strip().splitlines() if ln.strip()]
    if not lines or not _WORKER.match(lines[0]) or len(lines) < 2:
        return msg
    last = lines[-1].strip()
    name, sep, rest = last.partition(": ")
    return rest if sep and re.fullmatch(r"[\w.]+", name) else last
