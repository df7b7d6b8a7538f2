"""Pack an ImageNet ImageFolder into the zip cache read by ``Deit/main.py --cache``.

    python data/prepare_imagenet_zip.py --src /datasets/imagenet --out /datasets/imagenet_zip --verify

``--src`` holds ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` (the usual ImageFolder layout). ``--out`` receives
``train.zip``, ``train_map.txt``, ``val.zip`` and ``val_map.txt`` in the authors' (Swin-Transformer) format: train
members ``<wnid>/<file>``, val members ``<file>`` (flat), one ``<member>\\t<label>`` line per image.

The labels are the sorted-wnid indices of torchvision's ImageFolder, computed here from the train folders, so a
model trained on the zips and one trained on the folders share one label space. (The authors' downloadable maps use
a different, permuted order; see data/README.md "Released checkpoints".) Every zip and map is written to a temporary
file and renamed, so an interrupted run never leaves a half-written file under the final name.

``--verify`` then re-opens each zip, checks that every map line names a member that exists, that the zip holds no
image the map does not list, that labels are 0..K−1, and that every member's CRC matches.
``--verify-only`` checks existing files without writing anything.
"""

from __future__ import annotations

import argparse
import json
import zipfile
from pathlib import Path

from maxsup.cli import ArgumentParser, run_cli
from maxsup.data.zipcache import parse_map, write_zip_cache
from maxsup.errors import UserError

SPLITS = ("train", "val")


def class_to_idx(train_dir: Path) -> dict[str, int]:
    """Sorted class folders → 0..K−1, exactly torchvision ImageFolder's ``class_to_idx``."""
    if not train_dir.is_dir():
        raise UserError(f"{train_dir} does not exist; --src must contain train/<wnid>/ and val/<wnid>/ folders")
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    if not classes:
        raise UserError(f"{train_dir} has no class folders; expected train/<wnid>/<image>")
    return {c: i for i, c in enumerate(classes)}


def verify_split(zip_path: Path, map_path: Path, num_classes: int | None = None) -> dict[str, int]:
    """Check a zip against its map (see module docstring); returns {"images": N, "classes": K}."""
    entries = parse_map(map_path, num_classes)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise UserError(f"{zip_path} is not a readable zip ({exc}); re-run without --verify-only to rebuild it") \
            from None
    with archive:
        members = set(archive.namelist())
        listed = {name for name, _ in entries}
        absent = [name for name, _ in entries if name not in members]
        if absent:
            raise UserError(f"{map_path} lists {len(absent)} image(s) missing from {zip_path}, e.g. {absent[0]!r}; "
                            f"rebuild both with this script")
        unlisted = sorted(m for m in members - listed if not m.endswith("/"))
        if unlisted:
            raise UserError(f"{zip_path} holds {len(unlisted)} image(s) not in {map_path}, e.g. {unlisted[0]!r}")
        bad = archive.testzip()
        if bad is not None:
            raise UserError(f"{zip_path}: member {bad!r} fails its CRC check; the zip is corrupt, rebuild it")
    labels = sorted({label for _, label in entries})
    if labels != list(range(len(labels))):
        raise UserError(f"{map_path}: labels are not 0..{len(labels) - 1} (missing some classes)")
    return {"images": len(entries), "classes": len(labels)}


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=None, help="ImageFolder root with train/ and val/")
    parser.add_argument("--out", type=Path, required=True, help="output folder for the zips and maps")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS, help="splits to write")
    parser.add_argument("--verify", action="store_true", help="check every map entry against its zip after writing")
    parser.add_argument("--verify-only", action="store_true", help="only check existing zips/maps in --out")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    report: dict[str, dict[str, int]] = {}
    if not args.verify_only:
        if args.src is None:
            raise UserError("--src is required unless --verify-only is given")
        mapping = class_to_idx(args.src / "train")
        for split in args.splits:
            # val uses train's mapping: a val folder whose wnid is not in train/ is an error, not a new label.
            n = write_zip_cache(args.src / split, args.out / f"{split}.zip", args.out / f"{split}_map.txt",
                                split=split, class_to_idx=mapping)
            report[split] = {"images": n, "classes": len(mapping)}
    if args.verify or args.verify_only:
        for split in args.splits:
            report[split] = verify_split(args.out / f"{split}.zip", args.out / f"{split}_map.txt")
            report[split]["verified"] = 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    run_cli(main)
