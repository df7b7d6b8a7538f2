"""Shared pytest setup: CPU only, small thread count so parallel subprocess tests do not oversubscribe 2 cores, and
the fixtures several test files use (plain helper functions are in ``helpers.py``)."""

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import load_ffcv_writer, torch_threads, write_ffcv_split, write_fmnist_image_folder

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "reference"
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def python_exe() -> str:
    return sys.executable


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op torch thread for a whole test module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    the machine has 2 cores shared with other jobs, the models are tiny, and the subprocess runs use one too."""
    with torch_threads(1):
        yield


def _listing(root: Path) -> list[tuple[str, int, int]]:
    """(relative path, size in bytes, mtime in ns) of everything below ``root``, sorted."""
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


@pytest.fixture(scope="session")
def fmnist_image_folder(tmp_path_factory) -> Iterator[Callable[[int, int], Path]]:
    """``make(train_per_class, val_per_class)``: a real Fashion-MNIST JPEG ImageFolder (see
    :func:`helpers.write_fmnist_image_folder`), written once per size and session and shared by every test file.
    Read-only: a test that changes files copies the folder first; the session's end checks that none was changed."""
    made: dict[tuple[int, int], tuple[Path, list]] = {}

    def make(train_per_class: int, val_per_class: int) -> Path:
        key = (train_per_class, val_per_class)
        if key not in made:
            root = write_fmnist_image_folder(tmp_path_factory.mktemp("imagefolder"), *key)
            made[key] = root, _listing(root)
        return made[key][0]

    yield make
    for root, listing in made.values():
        assert _listing(root) == listing, f"a test changed the shared image folder {root}; copy it first"


@pytest.fixture(scope="session")
def image_root(fmnist_image_folder) -> Path:
    """The Deit tests' ImageFolder: 3 classes × (32 train + 12 val) real Fashion-MNIST JPEGs (read-only)."""
    return fmnist_image_folder(32, 12)


@pytest.fixture(scope="session")
def ffcv_betons(tmp_path_factory) -> dict[str, Path]:
    """Real FFCV files (``train``: 4 classes × 24, ``val``: × 8, 32 px JPEGs; see :func:`helpers.write_ffcv_split`)
    and their source folders (``train_dir``, ``val_dir``), written once per session (read-only; needs ffcv)."""
    root = tmp_path_factory.mktemp("ffcv_data")
    rng = np.random.default_rng(0)
    write_ffcv_split(root / "train", train=True, per_class=24, rng=rng)
    write_ffcv_split(root / "val", train=False, per_class=8, rng=rng)
    out = {"train_dir": root / "train", "val_dir": root / "val"}
    for split in ("train", "val"):
        out[split] = load_ffcv_writer().main(["--data-dir", str(root / split), "--write-path",
                                              str(root / f"{split}.beton"), "--num-workers", "2", "--chunk-size", "16"])
    return out
