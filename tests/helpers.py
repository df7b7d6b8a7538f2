"""Plain helpers shared by several test files (fixtures live in ``conftest.py``).

``tests/`` is on ``sys.path`` under pytest, so test files import this module as ``from helpers import ...``.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flat_import import load_file
from PIL import Image
from torchvision.datasets import ImageFolder

from maxsup.cli import run_cli
from maxsup.data.fashion_mnist import FashionMNIST
from maxsup.data.transforms import eval_transform

#: Deit/main.py flags for a one-block ViT on 28 px images (patch 7, width 32), batch 16, no augmentation, seed 0:
#: an epoch on a hundred images takes about a second on one CPU thread
DEIT_TINY_VIT = ["--model", "vit_tiny_patch16_224", "--input-size", "28",
                 "--model-kwargs", '{"patch_size": 7, "embed_dim": 32, "depth": 1, "num_heads": 2}',
                 "--batch-size", "16", "--mixup", "0", "--cutmix", "0", "--aa", "none", "--reprob", "0",
                 "--color-jitter", "0", "--eval-crop-ratio", "1.0", "--warmup-epochs", "0", "--lr", "1e-3",
                 "--unscale-lr", "--num_workers", "0", "--print-freq", "0", "--seed", "0"]
#: class folder names of Fashion-MNIST classes 0, 1, 2 in the image-folder fixtures (sorted order: 2, 1, 0)
FMNIST_FOLDER_CLASSES = ("tshirt", "trouser", "pullover")


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """``n`` intra-op torch threads inside the block, the previous count after it. One thread is what the tests
    want: with other jobs on the 2 shared cores, 2 threads spin-wait and run several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cli_error(capsys: pytest.CaptureFixture[str], main: Callable[..., Any], argv: list[str] | None, *,
              code: int | None = None, clear: bool = False) -> str:
    """Run ``main(argv)`` (``main()`` when ``argv`` is None) as its command line does, through
    :func:`maxsup.cli.run_cli` (an entry point that exits on its own, such as ``maxsup.hub.main``, passes through
    unchanged), and return its single stderr line.

    Asserts what every CLI promises for bad input: ``SystemExit`` with status ``code`` (any non-zero status when
    None), and exactly one line on stderr, starting with ``error: `` (so no traceback). ``clear``: drop what was
    captured before the call (the output of earlier successful commands of the same test)."""
    if clear:
        capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_cli(main, argv)
    if code is None:
        assert exc.value.code not in (0, None), exc.value.code
    else:
        assert exc.value.code == code, exc.value.code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def write_fmnist_image_folder(root: Path, train_per_class: int, val_per_class: int) -> Path:
    """``root/{train,val}/{tshirt,trouser,pullover}/<split>_<i>.jpg``: the first real Fashion-MNIST images of
    classes 0, 1, 2 (28×28, grey → RGB, JPEG quality 90), ``train_per_class`` from the training set and
    ``val_per_class`` from the test set per class. Returns ``root``."""
    for split, train, n in (("train", True, train_per_class), ("val", False, val_per_class)):
        ds = FashionMNIST(train=train, classes=[0, 1, 2], limit_per_class=n)
        for i in range(len(ds)):
            img, label = ds[i]
            folder = root / split / FMNIST_FOLDER_CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            img.convert("RGB").save(folder / f"{split}_{i:04d}.jpg", quality=90)
    return root


def folder_acc1_nll(model: torch.nn.Module, folder: Path, spec: dict) -> tuple[float, float]:
    """Top-1 accuracy (%) and mean NLL (nats) of ``model`` (called as given, so pass it in eval mode) on the
    ImageFolder ``folder`` read through ``eval_transform(spec)``, all images in one batch: the reference that an
    evaluation command's printed numbers are checked against."""
    data = ImageFolder(str(folder), transform=eval_transform(spec))
    x, y = torch.stack([img for img, _ in data]), torch.tensor(data.targets)
    with torch.inference_mode():
        logits = model(x)
    return (logits.argmax(1) == y).float().mean().item() * 100, F.cross_entropy(logits, y).item()


# --------------------------------------------------------------------------------------------------------------------
# loopback HTTP servers (fake GitHub / Hugging Face endpoints)
# --------------------------------------------------------------------------------------------------------------------
class QuietHandler(BaseHTTPRequestHandler):
    """An HTTP/1.1 request handler that logs nothing; subclasses answer with :meth:`send`."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        """Status ``code``, ``headers``, a Content-Length of ``body``, then ``body`` (not for HEAD)."""
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def serve_loopback(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    """Serve ``handler`` on a free port of 127.0.0.1 from a daemon thread: the server (stop it with ``shutdown()``
    and ``server_close()``) and its base URL ``http://127.0.0.1:PORT``."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # shutdown() waits for the loop to poll; 0.05 s instead of 0.5 s per server, started once per test
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


# --------------------------------------------------------------------------------------------------------------------
# Conv/ffcv: its trainer and writer loaded once per session, tiny real .beton files (the ffcv_betons fixture), argv
# --------------------------------------------------------------------------------------------------------------------
FFCV_DIR = Path(__file__).resolve().parents[1] / "Conv" / "ffcv"
#: Every FFCV trainer the tests build, kept until the process exits: numba's dispatcher finaliser raises a harmless
#: KeyError when FFCV's generated pipelines are garbage-collected (numba 0.68); at exit numba skips its finalisers.
FFCV_TRAINERS: list = []
FFCV_FMNIST_CLASSES = (0, 2, 4)  # T-shirt/top, Pullover, Coat
FFCV_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
FFCV_SIZE = 32  # px, the side of every JPEG in the .beton files


@functools.cache
def load_ffcv_main() -> ModuleType:
    """``Conv/ffcv/main.py`` as module ``ffcv_main``, one object for every test file (needs ffcv installed)."""
    return load_file(FFCV_DIR / "main.py", "ffcv_main")


@functools.cache
def load_ffcv_writer() -> ModuleType:
    """``Conv/ffcv/write_imagenet.py`` as module ``ffcv_write_imagenet``."""
    return load_file(FFCV_DIR / "write_imagenet.py", "ffcv_write_imagenet")


@contextmanager
def keeping_ffcv_trainers() -> Iterator[list]:
    """Inside the block every ``ImageNetTrainer`` built, also one that ``main`` builds and drops on an error, joins
    :data:`FFCV_TRAINERS` (yielded: its last entry is the trainer a command just ran)."""
    trainer_class = load_ffcv_main().ImageNetTrainer
    init = trainer_class.__init__

    def keep(self, *args, **kwargs):
        FFCV_TRAINERS.append(self)
        init(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_class, "__init__", keep)
        yield FFCV_TRAINERS


def write_ffcv_split(root: Path, train: bool, per_class: int, rng: np.random.Generator) -> None:
    """ImageFolder of FFCV_SIZE² JPEGs: classes 0-2 from Fashion-MNIST, class 3 random crops of skimage photos."""
    import skimage.data

    fmnist = FashionMNIST(train=train, classes=FFCV_FMNIST_CLASSES, limit_per_class=per_class)
    for i, (img, label) in enumerate(fmnist):
        folder = root / f"c{label}_fmnist"
        folder.mkdir(parents=True, exist_ok=True)
        img.convert("RGB").resize((FFCV_SIZE, FFCV_SIZE), Image.BILINEAR).save(folder / f"{i:04d}.jpg", quality=95)
    folder = root / "c3_photo"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(per_class):
        photo = getattr(skimage.data, FFCV_PHOTOS[i % len(FFCV_PHOTOS)])()
        side = int(rng.integers(64, min(photo.shape[:2])))
        y, x = (int(rng.integers(0, photo.shape[d] - side + 1)) for d in (0, 1))
        crop = Image.fromarray(photo[y:y + side, x:x + side]).resize((FFCV_SIZE, FFCV_SIZE), Image.BILINEAR)
        crop.save(folder / f"{i:04d}.jpg", quality=95)


def ffcv_argv(betons: dict[str, Path], out: Path, *extra: str) -> list[str]:
    """The tiny CPU recipe on the ``ffcv_betons`` files: a width-8 ResNet, batch 32, 1 epoch, output in ``out``."""
    return ["--config-file", str(FFCV_DIR / "configs" / "fmnist_cpu.yaml"),
            f"--data.train_dataset={betons['train']}", f"--data.val_dataset={betons['val']}",
            "--model.num_classes=4", "--model.kwargs.width=8", "--training.batch_size=32", "--training.epochs=1",
            "--logging.progress=false", "--data.num_workers=2", f"--logging.folder={out}", *extra]
