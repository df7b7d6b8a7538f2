"""One run per output folder: a training run claims its folder for as long as it runs.

* **A lock**: the first process of a run (torchrun's rank 0) takes an exclusive ``fcntl.flock`` on ``<folder>/run.lock``
  and writes its PID and host into it. The kernel drops the lock when the process ends, however it ends (kill -9,
  preemption, a node reboot), so a lock is never stale; a run that ends normally also removes the file (and the
  folder, if it created it and wrote nothing else there: a refused command leaves no trace). A second process on the
  same folder refuses with one line naming the holder.
* **Fallback** where the file system has no working advisory locks (some NFS / Lustre mounts answer ``flock`` with
  ENOLCK or EOPNOTSUPP): the lock is the exclusive creation of ``run.lock`` (``O_CREAT | O_EXCL``) holding PID and
  host, removed when the run ends. One left behind by a killed run is stale when its host is this host and its PID is
  no longer running; it is then taken over. One from another host cannot be checked from here: the message says to
  delete it once no run uses the folder.
* **No silent restart**: a fresh run (not resuming this folder's own checkpoint) into a folder that already holds a
  run — one of the trainer's ``markers``, e.g. ``run.json`` or ``checkpoint.pth``; other files do not count — refuses:
  continue it with the trainer's resume flag, start a new folder, or pass the trainer's overwrite flag.

  A checkpoint URL (``--resume https://…``) is never the folder's own checkpoint.
* **Every rank hears the verdict**: only the first process (``RANK`` 0) checks and locks the folder. Under torchrun a
  refusal there ends the job, because torchrun's agent stops the other ranks. Under srun or submitit every rank is
  its own task, and the others would wait in the process group's rendezvous for a rank 0 that has left, until the
  NCCL/gloo timeout (30 minutes). So the trainers initialise the process group *before* claiming (rank 0 hosts its
  store, so it joins even when it is about to refuse), and :func:`claim_run_folder` broadcasts rank 0's verdict
  (``None`` or the one-line refusal) to every rank; each rank then raises the same line (and prints it itself where
  ``init_distributed`` silenced its ``print``: under srun each rank has its own log), and the whole job exits
  non-zero within seconds. A file-system signal was the alternative; it needs a place outside the folder (a refused
  run must leave the folder as it was) that all nodes share, and it goes stale across jobs; the process group is
  there anyway.

Evaluations (``--eval``, ``--test-only``, ``eval_only``) do not claim a folder: they write nothing into it.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch.distributed as dist

from ..errors import UserError
from .checkpoint import is_url
from .distributed import print_silenced

try:
    import fcntl
except ImportError:  # Windows: no advisory locks here, the exclusive-create fallback is used
    fcntl = None

__all__ = ["LOCK_FILE", "FolderInUse", "RunFolderLock", "check_new_run", "claim_run_folder", "holds_run"]

LOCK_FILE = "run.lock"
#: errno values meaning "this file system does not do flock" (not "someone holds it").
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class FolderInUse(UserError):
    """Another process holds the run folder's lock."""


def _identity() -> str:
    return f"{os.getpid()} {socket.gethostname()}\n"


def _parse_holder(text: str) -> tuple[int | None, str | None]:
    pid, _, host = text.strip().partition(" ")
    return (int(pid) if pid.isdigit() else None), (host or None)


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class RunFolderLock:
    """The exclusive lock of one run folder (see the module docstring); ``acquire`` then ``release``, or a
    ``with`` block."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None  # flock mode: the open, locked file
        self._created = False  # fallback mode: we created the lock file
        self._made_folder = False  # the folder did not exist: removed again if the run wrote nothing into it

    def _in_use(self, text: str, fallback: bool) -> FolderInUse:
        pid, host = _parse_holder(text)
        who = f"PID {pid} on {host}" if pid is not None else "another process (still starting)"
        hint = (f"; if no run uses it any more (a run on another host cannot be checked from here), delete {self.path}"
                if fallback else "")
        return FolderInUse(f"{self.folder} is in use by another run ({who}); wait for it to end or choose another "
                           f"output folder{hint}")

    def acquire(self) -> RunFolderLock:
        self._made_folder = not self.folder.exists()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise UserError(f"output folder {self.folder} exists and is not a folder; choose another path") from None
        if fcntl is None:
            return self._acquire_exclusive()
        for _ in range(3):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                text = os.pread(fd, 256, 0).decode(errors="replace")
                os.close(fd)
                raise self._in_use(text, fallback=False) from None
            except OSError as exc:
                os.close(fd)
                if exc.errno in _NO_FLOCK:
                    return self._acquire_exclusive()
                raise
            # A holder unlinks the file before it unlocks (release): a lock on a file no longer at the path is
            # nobody's, so take the path's file again.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:
            raise FolderInUse(f"{self.folder}: could not lock {self.path} (other runs keep taking it); try again")
        os.ftruncate(fd, 0)
        os.pwrite(fd, _identity().encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def _acquire_exclusive(self) -> RunFolderLock:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    text = self.path.read_text(errors="replace")
                except FileNotFoundError:  # released between our open and our read: try again
                    continue
                pid, host = _parse_holder(text)
                # empty: left by a flock-mode run (which empties it on release), or a creator killed before writing
                stale = pid is None or (host == socket.gethostname() and not _pid_running(pid))
                if not stale:
                    raise self._in_use(text, fallback=True) from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(_identity())
                f.flush()
                os.fsync(f.fileno())
            self._created = True
            return self
        raise FolderInUse(f"{self.folder}: could not create {self.path} (another run keeps taking it); try again")

    def release(self) -> None:
        """Remove the lock file (while still holding the lock) and drop the lock; a folder this lock created is
        removed too when the run wrote nothing into it, so a refused command leaves no trace."""
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)  # closing the file drops the flock
            self._fd = None
        if self._created:
            self.path.unlink(missing_ok=True)
            self._created = False
        if self._made_folder:
            try:
                self.folder.rmdir()  # only if empty
            except OSError:
                pass
            self._made_folder = False

    def __enter__(self) -> RunFolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def holds_run(folder: str | os.PathLike, markers: Iterable[str]) -> list[str]:
    """The ``markers`` (file names such as ``run.json``) present in ``folder``: non-empty when it holds a run."""
    return [m for m in markers if (Path(folder) / m).exists()]


def check_new_run(folder: str | os.PathLike, markers: Iterable[str], *, resume_from: str | os.PathLike | None,
                  overwrite: bool, resume_hint: str, overwrite_hint: str) -> None:
    """Refuse a fresh run into a folder that holds a run (one of ``markers`` exists in it) with one sentence, unless
    ``overwrite`` or the run resumes a checkpoint inside this folder (``resume_from``). ``resume_hint`` /
    ``overwrite_hint``: the trainer's flags, as a user types them."""
    folder = Path(folder)
    found = holds_run(folder, markers)
    if not found or overwrite:
        return
    # a URL is someone else's checkpoint, even where its path looks like this folder's ("http:/host/ckpt.pth")
    if resume_from and not is_url(resume_from) and Path(resume_from).resolve().parent == folder.resolve():
        return
    raise UserError(f"{folder} already holds a run ({', '.join(found)}); continue it with {resume_hint}, start a new "
                    f"output folder, or pass {overwrite_hint} to start it over")


def _group_size() -> int:
    """Ranks of the initialised default process group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _agree(refusal: BaseException | None) -> None:
    """Every rank learns rank 0's verdict (``refusal``, given on rank 0 only): rank 0 broadcasts its one-line message
    (or None); the other ranks raise it as a :class:`UserError`, which their CLI prints as the same ``error:`` line."""
    from ..cli import error_line  # the line rank 0's own CLI prints; here, not at the top: maxsup.cli imports us

    verdict = [error_line(refusal) if refusal is not None else None]
    dist.broadcast_object_list(verdict, src=0)
    if dist.get_rank() != 0 and verdict[0] is not None:
        if print_silenced():  # the CLI's own line would be swallowed on this rank; under srun it has its own log
            print(f"error: {verdict[0]}", file=sys.stderr, flush=True, force=True)
        raise UserError(verdict[0])


@contextmanager
def claim_run_folder(folder: str | os.PathLike | None, markers: Iterable[str], *,
                     resume_from: str | os.PathLike | None, overwrite: bool, resume_hint: str,
                     overwrite_hint: str) -> Iterator[None]:
    """Hold ``folder``'s lock for the block, after :func:`check_new_run` (before and after taking it). Only the
    launcher's first process (``RANK`` 0, or no launcher) claims; without a folder nothing is claimed.

    With an initialised process group of several ranks (call :func:`maxsup.training.init_distributed` first), every
    rank enters this together and leaves with rank 0's refusal as its own one-line :class:`UserError` (the module
    docstring says why). Without one, only ``$RANK`` says who claims."""
    if not folder:
        yield
        return
    shared = _group_size() > 1
    first = dist.get_rank() == 0 if shared else os.environ.get("RANK", "0") == "0"
    if not first:
        if shared:
            _agree(None)
        yield
        return
    check = dict(resume_from=resume_from, overwrite=overwrite, resume_hint=resume_hint, overwrite_hint=overwrite_hint)
    markers = list(markers)
    lock = RunFolderLock(folder)
    try:
        check_new_run(folder, markers, **check)  # before the lock: a refused run leaves the folder as it was
        lock.acquire()
        check_new_run(folder, markers, **check)  # a run that ended between the first check and the lock
    except Exception as exc:
        lock.release()
        if shared:
            _agree(exc)
        raise
    try:
        if shared:
            _agree(None)
        yield
    finally:
        lock.release()
