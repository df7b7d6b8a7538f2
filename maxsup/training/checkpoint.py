"""Atomic writes, safe checkpoint loading and RNG state capture for exact resume."""

from __future__ import annotations

import argparse
import errno
import os
import pickle
import random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..io_errors import check_checkpoint_file, require_checkpoint_file, write_failed
from .faults import kill_point

__all__ = ["seed_everything", "atomic_path", "atomic_save", "atomic_write", "load_checkpoint", "rng_state",
           "set_rng_state", "is_url"]


def is_url(path: str | os.PathLike | None) -> bool:
    """Whether a ``--resume`` / ``--finetune`` value is an http(s) URL rather than a local path."""
    return isinstance(path, str) and path.lower().startswith(("http://", "https://"))



def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _fsync(path: str | os.PathLike, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:  # e.g. folders cannot be opened on Windows; nothing more can be done there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path in ``path``'s folder that replaces ``path`` (``os.replace``) when the block succeeds and is
    removed when it fails, so readers never see a partial file. For writers that need a file name (zip, .beton).

    The result gets the mode a plain ``open`` would give (0644 under umask 022, not mkstemp's private 0600), its data
    is fsynced before the rename, and the folder is fsynced after it, so a power loss keeps the old or the new file."""
    path = Path(path)
    if path.is_dir():  # os.replace would refuse it only after the whole write, naming the temporary file too
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent, directory=True)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _atomic(path: str | os.PathLike, write, kind: str = "write") -> Path:
    with atomic_path(path) as tmp:
        try:  # a full disk or a lost mount: name the file; atomic_path removes the temporary file
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        except (OSError, RuntimeError) as exc:
            failed = write_failed(path, exc)
            if failed is None:
                raise
            raise failed from None
        kill_point(kind)  # test hook: MAXSUP_KILL_AT=save:N dies here, with the new file written but not renamed
    return Path(path)


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace``: readers never see a partial file."""
    return _atomic(path, lambda f: torch.save(obj, f), kind="save")


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write bytes or text atomically."""
    payload = data.encode() if isinstance(data, str) else data
    return _atomic(path, lambda f: f.write(payload))


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


@contextmanager
def _allow_listed(types: list[type]) -> Iterator[None]:
    """Allow-list ``types`` for ``weights_only`` loads inside the block only: ``torch.serialization.safe_globals``
    (torch ≥ 2.5); torch 2.4 has only the process-wide list, which is restored on the way out."""
    if not types:
        yield
        return
    scoped = getattr(torch.serialization, "safe_globals", None)
    if scoped is not None:
        with scoped(types):
            yield
        return
    before = list(torch.serialization.get_safe_globals())  # a copy: torch 2.4 hands out its live list
    torch.serialization.add_safe_globals(types)
    try:
        yield
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    allow_namespace: bool = False) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``.

    ``allow_namespace=True`` additionally allow-lists exactly ``argparse.Namespace`` (the authors' DeiT checkpoint
    stores its args that way; torch ≥ 2.6 refuses it otherwise). Missing, truncated or foreign files raise
    :class:`UserError` naming the file.
    """
    path = Path(path)
    require_checkpoint_file(path)
    check_checkpoint_file(path)  # empty or text: torch's weights-only unpickler would answer KeyError/IndexError
    try:
        with _allow_listed([argparse.Namespace] if allow_namespace else []):
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        hint = "" if allow_namespace else " (if it stores argparse.Namespace args, load it with allow_namespace=True)"
        raise UserError(f"{path} holds objects outside the weights-only allow-list{hint}: {_first_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001  torch.load of a non-checkpoint raises anything (EOFError without a
        # message for an empty file, KeyError / IndexError from the unpickler for text, BadZipFile, RuntimeError)
        raise UserError(f"{path} is not a readable torch checkpoint (empty, truncated or not a checkpoint): "
                        f"{_first_line(exc)}") from None
    if not isinstance(ckpt, dict):
        raise UserError(f"{path} holds a {type(ckpt).__name__}, expected a checkpoint dict")
    return ckpt


def rng_state() -> dict[str, Any]:
    """Every RNG a training step can touch, as plain tensors/primitives (weights_only-loadable)."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`. Every saved tensor goes through the CPU first (RNG states are CPU byte tensors
    even for CUDA generators), so a checkpoint loaded with ``map_location="cuda"`` restores too."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
