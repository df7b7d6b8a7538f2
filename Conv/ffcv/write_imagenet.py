"""Convert an ImageFolder split, or the authors' zip cache (zip + map file), into an FFCV ``.beton``.

The fields are ffcv-imagenet's: ``image`` (``RGBImageField``) and ``label`` (``IntField``), so the ``.beton`` also
works with ffcv-imagenet's ``train_imagenet.py``. The defaults are the authors' setting (max side 500 px, half of
the images stored as JPEG at quality 90, the rest raw; ``./write_imagenet.sh 500 0.50 90``).

    python Conv/ffcv/write_imagenet.py --data-dir /data/imagenet/train --write-path /data/ffcv/train_500_0.50_90.ffcv
    python Conv/ffcv/write_imagenet.py --zip /data/imagenet/val.zip --map /data/imagenet/val_map.txt \\
        --write-path /data/ffcv/val_500_0.50_90.ffcv

Beside each ``.beton`` goes a JSON sidecar ``<write-path>.classes.json``, written before the ``.beton`` is renamed
into place: ``classes`` (the name of each label, or null), ``layout`` (``--layout``, or ``zip`` / ``fashion-mnist``),
``num_samples`` and ``labels_sha256`` (so the trainer can tell a sidecar from an earlier write), for ImageNet-A/R
``class_indices`` (label k is ImageNet-1k class ``class_indices[k]``), and for ImageNet val ``files`` (each
sample's ``ILSVRC2012_val_%08d`` file name, in ``.beton`` order, which ReaL labels are matched by).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import multiprocessing as mp
import multiprocessing.queues
import os
import re
import signal
import sys
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset, Subset

from maxsup.cli import ArgumentParser, run_cli
from maxsup.data.fashion_mnist import FashionMNIST
from maxsup.data.imagecheck import CheckedImageFolder
from maxsup.data.zipcache import parse_map
from maxsup.errors import UserError
from maxsup.training import atomic_path, atomic_write


def _to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


class ZipMembers(Dataset):
    """The zip cache read lazily, one member per item (``ZipCacheDataset`` holds the whole zip in RAM, which is right
    for training from it but not for a one-pass conversion of ImageNet's 140 GB train split)."""

    def __init__(self, zip_path: str | os.PathLike, map_path: str | os.PathLike):
        self.zip_path = Path(zip_path)
        if not self.zip_path.is_file():
            raise UserError(f"zip cache not found: {self.zip_path}")
        self.samples = parse_map(map_path)
        self._archive: tuple[int, zipfile.ZipFile] | None = None
        try:
            with zipfile.ZipFile(self.zip_path) as archive:
                missing = {name for name, _ in self.samples} - set(archive.namelist())
        except (zipfile.BadZipFile, OSError) as exc:
            raise UserError(f"{self.zip_path} is not a readable zip file: {exc}") from None
        if missing:
            raise UserError(f"{map_path} lists {len(missing)} members missing from {zip_path}, e.g. {min(missing)!r}")
        # class names from the member folders (train/<wnid>/x.JPEG); a flat split (the authors' val.zip) has none
        names: dict[int, set[str]] = {}
        for name, label in self.samples:
            names.setdefault(label, set()).add(Path(name).parent.name)
        ok = all(len(v) == 1 and "" not in v for v in names.values()) and sorted(names) == list(range(len(names)))
        self.classes = [names[i].pop() for i in range(len(names))] if ok else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        if self._archive is None or self._archive[0] != os.getpid():  # one handle per writer process (fork-safe)
            self._archive = (os.getpid(), zipfile.ZipFile(self.zip_path))
        name, label = self.samples[index]
        try:
            return Image.open(io.BytesIO(self._archive[1].read(name))).convert("RGB"), label
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot decode {name!r} in {self.zip_path} ({exc}); re-create the zip without "
                            f"it") from None


def load_source(data_dir: str | None, zip_path: str | None, map_path: str | None,
                fashion_mnist: str | None = None, layout: str = "imagefolder", skip_corrupt: bool = False) -> Dataset:
    """The split to convert: (PIL RGB image, int label) pairs, labels in ImageFolder (sorted folder) or map order;
    ``layout`` for ``data_dir``: ``imagenetv2`` (folders 0..999, label = int(name)), ``imagenet-sketch`` (wnid
    folders, label = the wnid's ImageNet-1k index) or ``imagenet-a`` / ``imagenet-r`` (wnid folders, label = position
    in the sorted 1k indices of the wnids present, ``class_indices``). ``skip_corrupt``: drop the ImageFolder files
    that fail :mod:`maxsup.data.imagecheck`'s up-front check instead of refusing them."""
    if sum(x is not None for x in (data_dir, zip_path, fashion_mnist)) != 1:
        raise UserError("give exactly one source: --data-dir <ImageFolder split>, --zip <file.zip> --map <map.txt>, "
                        "or --fashion-mnist train|test")
    if layout != "imagefolder" and data_dir is None:
        raise UserError(f"--layout {layout} describes the folders of --data-dir; use it with --data-dir")
    if fashion_mnist is not None:  # the tiny CPU recipe (configs/fmnist_cpu.yaml), from the Debian package files
        return FashionMNIST(train=fashion_mnist == "train", transform=_to_rgb)
    if zip_path is not None:
        if map_path is None:
            raise UserError(f"--zip {zip_path} needs its map file: add --map <train_map.txt|val_map.txt>")
        return ZipMembers(zip_path, map_path)
    root = Path(data_dir)
    if layout != "imagefolder":
        from maxsup.data.imagenet_variants import eval_set

        return eval_set(layout, root)
    if not root.is_dir():
        raise UserError(f"source folder not found: {root}; pass an ImageFolder split (<dir>/<class>/<image>)")
    try:  # RGB like ImageFolder's default loader; corrupt files named up front (or skipped) or when read
        return CheckedImageFolder(root, skip_corrupt=skip_corrupt, substitute=False)
    except (FileNotFoundError, RuntimeError) as exc:  # no class folders / no images
        raise UserError(f"{root} is not an ImageFolder split (<dir>/<class>/<image>): {exc}") from None


def take_subset(dataset: Dataset, subset: int) -> Dataset:
    """``subset`` > 0 keeps that many images spread evenly over the split (so every class is represented; the
    ffcv-imagenet writer keeps the first N, i.e. only the first classes)."""
    if subset <= 0 or subset >= len(dataset):
        return dataset
    return Subset(dataset, np.linspace(0, len(dataset) - 1, subset).round().astype(int).tolist())


VAL_FILE = re.compile(r"ILSVRC2012_val_\d{8}\.\w+")


def labels_sha256(labels: np.ndarray) -> str:
    """Digest of a .beton's label column (int64, little-endian), as the trainer recomputes it."""
    return hashlib.sha256(np.ascontiguousarray(labels, dtype="<i8").tobytes()).hexdigest()


def sidecar(dataset: Dataset, labels: np.ndarray, layout: str = "imagefolder") -> dict:
    """What a .beton does not store: see the module docstring. ``labels``: the written label column."""
    source, order = (dataset.dataset, list(dataset.indices)) if isinstance(dataset, Subset) else \
        (dataset, range(len(dataset)))
    # ImageNetV2/-Sketch: label_names, as the labels are 1k indices also when a class folder is missing
    classes = getattr(source, "label_names", None) or getattr(source, "classes", None)
    info = {"classes": list(classes) if classes else None, "layout": layout, "num_samples": len(labels),
            "labels_sha256": labels_sha256(labels)}
    if getattr(source, "subset", False):  # ImageNet-A/R
        info["class_indices"] = [int(i) for i in source.class_indices]
    samples = getattr(source, "samples", None)  # (path or zip member, label) of an ImageFolder / zip cache
    if samples is not None:
        files = [os.path.basename(samples[i][0]) for i in order]
        if files and all(VAL_FILE.fullmatch(f) for f in files):  # ImageNet val: ReaL labels go by file name
            info["files"] = files
    return info


class _Guarded(Dataset):
    """``dataset`` as FFCV's writer processes read it. The first item that raises records its message (shared
    memory) and is written as a placeholder, as is every later item, undecoded: the writer's processes then finish
    their queue, so FFCV's main loop ends and frees its shared memory instead of waiting forever for a dead
    process's share; :func:`write_beton` then discards the file and raises the message."""

    PLACEHOLDER = (Image.new("RGB", (8, 8)), 0)

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.error = mp.Array("c", 2048)  # inherited by the writer processes (FFCV passes the dataset to them)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        if self.error.value:
            return self.PLACEHOLDER
        try:
            return self.dataset[index]
        except Exception as exc:  # noqa: BLE001  any failure of the source ends the write with its message
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            msg = text if isinstance(exc, UserError) else \
                f"cannot read image {index} of the source ({type(exc).__name__}: {text})"
            with self.error.get_lock():
                if not self.error.value:
                    self.error.value = msg.encode()[:2047]
            return self.PLACEHOLDER

    def message(self) -> str:
        return self.error.value.decode(errors="replace")


class _WorkerDied(Exception):
    """Raised in the main thread by :class:`_DeadWorkerWatch` when a writer process has died."""


class _DeadWorkerWatch:
    """Ends FFCV's wait for its writer processes when one of them dies (killed, out of memory): FFCV polls a counter
    that a dead process never advances. A thread watches the children and signals the main thread (SIGUSR1 with a
    handler of our own, installed for the write), which raises :class:`_WorkerDied` there; ``abort`` then stops the
    rest and frees the shared memory. Not ``_thread.interrupt_main``: that does nothing where SIGINT is ignored, as it
    is for a job a non-interactive shell starts in the background (``nohup python write_imagenet.py … &``), and it
    does not interrupt a blocking call; a real signal to the main thread does both."""

    def __init__(self):
        self.dead: int | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._main = threading.main_thread().ident
        self._previous: Any = None

    def _watch(self) -> None:
        seen: set = set()
        while not self._done.wait(0.2):
            seen.update(mp.active_children())
            codes = [p.exitcode for p in seen if p.exitcode not in (None, 0)]
            if codes:
                self.dead = codes[0]
                signal.pthread_kill(self._main, signal.SIGUSR1)
                return

    @staticmethod
    def _raise(signum: int, frame: Any) -> None:
        raise _WorkerDied

    def __enter__(self) -> _DeadWorkerWatch:
        self._previous = signal.signal(signal.SIGUSR1, self._raise)  # write_beton runs in the main thread
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()  # no signal can arrive after the handler is put back
        signal.signal(signal.SIGUSR1, self._previous)

    @staticmethod
    def abort(writer: Any) -> None:
        for p in mp.active_children():
            for arg in getattr(p, "_args", ()):  # FFCV's work queue: do not wait at exit to flush what is left in it
                if isinstance(arg, multiprocessing.queues.Queue):
                    arg.cancel_join_thread()
            p.terminate()
            p.join(5)
        shm = getattr(writer, "metadata_sm", None)
        if shm is not None and hasattr(shm, "unlink"):
            shm.close()
            shm.unlink()


def write_beton(dataset: Dataset, write_path: str | Path, max_resolution: int = 500, compress_probability: float = 0.5,
                jpeg_quality: int = 90, num_workers: int = 16, chunk_size: int = 100,
                write_mode: str = "proportion", layout: str = "imagefolder") -> Path:
    """Write ``dataset`` to ``write_path`` and its sidecar to ``<write_path>.classes.json``, each atomically
    (temporary file in the same folder, then ``os.replace``).

    ``write_mode='proportion'`` stores a random ``compress_probability`` fraction of images as JPEG and the rest as
    raw pixels (ffcv-imagenet's mode); every image's longer side is first capped at ``max_resolution``.
    """
    from ffcv.fields import IntField, RGBImageField
    from ffcv.reader import Reader
    from ffcv.writer import DatasetWriter

    if not 0.0 <= compress_probability <= 1.0:
        raise UserError(f"--compress-probability must be in [0, 1], got {compress_probability}")
    if not 1 <= jpeg_quality <= 100:
        raise UserError(f"--jpeg-quality must be in [1, 100], got {jpeg_quality}")
    if max_resolution < 8:
        raise UserError(f"--max-resolution must be at least 8 px, got {max_resolution}")
    write_path = Path(write_path)
    fields = {"image": RGBImageField(write_mode=write_mode, max_resolution=max_resolution,
                                     compress_probability=compress_probability, jpeg_quality=jpeg_quality),
              "label": IntField()}
    guarded = _Guarded(dataset)
    with atomic_path(write_path) as tmp:  # any failure below removes the temporary .beton
        writer = DatasetWriter(str(tmp), fields, num_workers=num_workers)  # shows its own tqdm progress bar
        try:
            with _DeadWorkerWatch() as watch:
                writer.from_indexed_dataset(guarded, chunksize=chunk_size)
        except _WorkerDied:
            _DeadWorkerWatch.abort(writer)
            print(file=sys.stderr)  # end FFCV's progress bar line: the error is a line of its own
            raise UserError(f"an FFCV writer process died (exit code {watch.dead}; out of memory?); nothing was "
                            f"written to {write_path}; rerun, with fewer --num-workers if memory is short") from None
        if guarded.message():
            raise UserError(f"{guarded.message()} (nothing was written to {write_path})")
        labels = Reader(str(tmp)).metadata["f1"]
        # A .beton stores no class names; the trainer compares these lists for train and val (a shifted label set
        # would otherwise train silently), and reads class_indices / files from here. The sidecar is replaced before
        # the .beton: a write killed in between leaves a sidecar whose num_samples / labels_sha256 do not match the
        # old .beton, which the trainer refuses, rather than a new .beton beside a stale sidecar from an older writer.
        atomic_write(f"{write_path}.classes.json", json.dumps(sidecar(dataset, labels, layout)) + "\n")
    return write_path


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="ImageFolder split to convert (<dir>/<class>/<image>)")
    parser.add_argument("--zip", default=None, help="zip cache to convert instead (needs --map)")
    parser.add_argument("--map", default=None, help="map file of --zip (<member>\\t<label> per line)")
    parser.add_argument("--fashion-mnist", default=None, choices=["train", "test"],
                        help="convert this Fashion-MNIST split instead (28 px, for configs/fmnist_cpu.yaml)")
    parser.add_argument("--layout", default="imagefolder",
                        choices=["imagefolder", "imagenetv2", "imagenet-sketch", "imagenet-a", "imagenet-r"],
                        help="labels of --data-dir: sorted class folders, ImageNetV2's int(folder name), "
                             "ImageNet-Sketch's wnid → ImageNet-1k index, or ImageNet-A/R's position among the 200 "
                             "classes present (their 1k indices go to the sidecar as class_indices)")
    parser.add_argument("--write-path", required=True, help="output .beton file")
    parser.add_argument("--max-resolution", type=int, default=500, help="cap on the longer image side (px)")
    parser.add_argument("--compress-probability", type=float, default=0.5, help="fraction of images stored as JPEG")
    parser.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality of the compressed images")
    parser.add_argument("--write-mode", default="proportion", choices=["proportion", "raw", "jpg", "smart"],
                        help="ffcv RGBImageField write mode")
    parser.add_argument("--num-workers", type=int, default=16, help="encoder processes")
    parser.add_argument("--chunk-size", type=int, default=100, help="images per worker task")
    parser.add_argument("--skip-corrupt", action="store_true",
                        help="--data-dir: skip empty, truncated or non-image files (counted) instead of refusing them; "
                             "a file that fails to decode later still ends the write (maxsup/data/imagecheck.py)")
    parser.add_argument("--subset", type=int, default=-1, help="write only this many images, spread evenly (-1: all)")
    return parser


def main(argv: list[str] | None = None) -> Path:
    args = get_args_parser().parse_args(argv)
    dataset = take_subset(load_source(args.data_dir, args.zip, args.map, args.fashion_mnist, args.layout,
                                      args.skip_corrupt), args.subset)
    layout = args.layout if args.data_dir is not None else "zip" if args.zip is not None else "fashion-mnist"
    path = write_beton(dataset, args.write_path, args.max_resolution, args.compress_probability, args.jpeg_quality,
                       args.num_workers, args.chunk_size, args.write_mode, layout)
    print(f"wrote {len(dataset)} images to {path}")
    return path


if __name__ == "__main__":
    run_cli(main)
