"""CLI plumbing shared by the analysis scripts: ``--checkpoint NAME=PATH``, dataset choice, feature cache, outputs.

Every script reads checkpoints that follow the repository convention (``model``, ``arch``, ``eval_transform``), so
the architecture and the evaluation preprocessing come from the checkpoint, never from flags.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from maxsup.cli import ArgumentParser, positive_int
from maxsup.data import parse_classes  # noqa: F401  (re-exported for the scripts)
from maxsup.data.imagenet_variants import EVAL_SETS, RealScorer, add_real_labels_arg, real_labels
from maxsup.data.registry import build_split, split_class_names
from maxsup.data.transfer import TRANSFER_DATASETS
from maxsup.data.transforms import eval_transform
from maxsup.errors import UserError
from maxsup.io_errors import require_checkpoint_file
from maxsup.models import features_and_logits, model_from_checkpoint
from maxsup.training import atomic_save, atomic_write, load_checkpoint, resolve_device

#: the ``--dataset`` choices: names of ``maxsup.data.registry.DATASETS`` whose readers name their classes
DATASETS = ("fmnist", "imagefolder", "cifar10", "cifar100", *EVAL_SETS, *TRANSFER_DATASETS)
CACHE_VERSION = 1


# --------------------------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------------------------
def parse_checkpoint_arg(text: str) -> tuple[str, Path]:
    """``NAME=PATH`` → (name, path). The name labels rows and panels (e.g. ``MaxSup=runs/maxsup/best.pth``)."""
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise UserError(f"--checkpoint expects NAME=PATH (e.g. MaxSup=runs/maxsup/checkpoint.pth), got {text!r}")
    return name.strip(), Path(path.strip())


def add_common_args(p: argparse.ArgumentParser, *, split: str | None = "test", checkpoints: bool = True,
                    real_labels: bool = False) -> None:
    """Flags every analysis script shares (checkpoints, dataset, output, extraction); ``real_labels=True`` adds
    ``--real-labels`` for scripts that report top-1 accuracy (pass it on as ``cached_arrays(..., real=...)``)."""
    if checkpoints:
        p.add_argument("--checkpoint", action="append", required=True, metavar="NAME=PATH",
                       help="checkpoint to analyse, labelled NAME in tables and figures (repeatable)")
    p.add_argument("--dataset", choices=DATASETS, default="fmnist", help="dataset to evaluate on")
    p.add_argument("--data-path", default=None,
                   help="dataset root (fmnist: IDX folder, default the dataset-fashion-mnist package; imagefolder: "
                        "folder with train/ and val/; cifar10/100: torchvision's extracted folder; imagenetv2, "
                        "imagenet-a/-r/-sketch: the test set's folder; flowers102, food101, pets, cars, "
                        "cub200: the extracted dataset folder)")
    p.add_argument("--classes", default=None,
                   help="comma list of original class indices to keep, relabelled 0..n-1 in that order")
    if split is not None:
        p.add_argument("--split", choices=("train", "test"), default=split, help="dataset split")
    if real_labels:
        add_real_labels_arg(p, "per checkpoint (--dataset imagefolder --split test)")
    p.add_argument("--max-per-class", type=positive_int, default=None,
                   help="use at most this many samples per class (seeded random subset) to bound the cost")
    p.add_argument("--out", required=True, help="output folder for the .json/.md/.png results")
    p.add_argument("--cache-dir", default=None, help="feature cache folder (default: <out>/features)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="extraction batch size")
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0, help="seed for subsets and sampling")
    p.add_argument("--no-progress", action="store_true", help="hide the extraction progress bar")


def script_parser(doc: str, *, split: str | None = "test", real_labels: bool = False) -> argparse.ArgumentParser:
    """An analysis script's parser: described by the first line of ``doc`` (the script's docstring) and holding
    :func:`add_common_args` (``split``, ``real_labels``: as there); the script adds its own flags."""
    p = ArgumentParser(description=doc.splitlines()[0])
    add_common_args(p, split=split, real_labels=real_labels)
    return p


def checkpoints_from_args(args: argparse.Namespace) -> list[tuple[str, Path]]:
    pairs = [parse_checkpoint_arg(c) for c in args.checkpoint]
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise UserError(f"--checkpoint names must be unique, got {names}")
    for _, path in pairs:
        require_checkpoint_file(path)
    return pairs


def device_from_args(args: argparse.Namespace) -> torch.device:
    return resolve_device(args.device)


# --------------------------------------------------------------------------------------------------------------------
# Checkpoints and datasets
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    name: str
    path: Path
    model: nn.Module
    transform_spec: dict[str, Any]
    num_classes: int
    arch: dict[str, Any]


def load_model(name: str, path: Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Rebuild the network and its evaluation preprocessing from a convention checkpoint (eval mode)."""
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, source=str(path))
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:  # a diverged run: every number computed from it would be NaN, or finite nonsense after an argmax
        raise UserError(f"checkpoint {name} ({path}) has non-finite weights ({len(bad)} tensors, e.g. {bad[0]}); "
                        f"its run diverged: analyse an earlier checkpoint or rerun it with a lower lr")
    spec = ckpt.get("eval_transform")
    if not isinstance(spec, dict) or "img_size" not in spec:
        raise UserError(f"{path} has no 'eval_transform' entry (maxsup.data.transforms.transform_spec), so its "
                        f"preprocessing is unknown; re-save it with a trainer of this repository")
    return LoadedModel(name, path, model.to(device).eval(), spec, int(ckpt["arch"]["num_classes"]), ckpt["arch"])


def load_models(args: argparse.Namespace, checkpoints: list[tuple[str, Path]] | None = None) -> Iterator[LoadedModel]:
    """Each ``--checkpoint`` (or each of ``checkpoints``) rebuilt on ``--device``, in order. A generator, so a script
    that handles one model at a time never holds them all; ``list(load_models(args))`` when it needs them together."""
    device = device_from_args(args)
    for name, path in checkpoints_from_args(args) if checkpoints is None else checkpoints:
        yield load_model(name, path, device)


class LabeledSubset(Dataset):
    """Indices of a base dataset with labels remapped; exposes ``targets`` and ``classes`` like torchvision."""

    def __init__(self, base: Any, indices: np.ndarray, targets: list[int], classes: list[str]):
        self.base, self.indices, self.targets, self.classes = base, [int(i) for i in indices], targets, classes
        # ImageNet-A/R: the 1k logits to keep (labels are positions in this list); None = use every logit
        self.class_indices: list[int] | None = base.class_indices if getattr(base, "subset", False) else None

    @property
    def head_size(self) -> int:
        """Outputs a classifier needs to score these labels: ImageNet-A/R's 200 classes are read off an ImageNet-1k
        head (``class_indices``); any other set needs one output per class."""
        return 1000 if self.class_indices else len(self.classes)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        img, _ = self.base[self.indices[i]]
        return img, self.targets[i]


def build_dataset(name: str, data_path: str | None, split: str, transform: Any = None,
                  classes: list[int] | None = None, max_per_class: int | None = None, seed: int = 0) -> LabeledSubset:
    """A split of a dataset, optionally restricted to ``classes`` (relabelled 0..n−1) and ``max_per_class`` samples
    per class (a seeded random subset, kept in dataset order)."""
    base = build_split(name, data_path, train=split == "train", transform=transform,  # test sets: one split
                       corrupt_hint="remove or replace it")  # the analysis scripts have no --skip-corrupt
    targets = np.asarray(base.targets, dtype=np.int64)
    names = split_class_names(base)  # one per label: ImageNetV2/-Sketch name all 1000, also with folders missing
    keep = list(range(len(names))) if classes is None else classes
    bad = [c for c in keep if c >= len(names)]
    if bad:
        raise UserError(f"--classes {bad} out of range: {name} has {len(names)} classes (0..{len(names) - 1})")
    rng = np.random.default_rng(seed)
    idx_parts, lab_parts = [], []
    for new, orig in enumerate(keep):
        idx = np.flatnonzero(targets == orig)
        if max_per_class is not None and len(idx) > max_per_class:
            idx = np.sort(rng.choice(idx, max_per_class, replace=False))
        idx_parts.append(idx)
        lab_parts.append(np.full(len(idx), new))
    idx, labels = np.concatenate(idx_parts), np.concatenate(lab_parts)
    order = np.argsort(idx, kind="stable")
    return LabeledSubset(base, idx[order], labels[order].tolist(), [names[c] for c in keep])


def check_head(loaded: LoadedModel, num_classes: int, dataset_desc: str) -> None:
    """Scripts that read logits need the dataset's labels to index the model's head."""
    if loaded.num_classes != num_classes:
        raise UserError(f"checkpoint {loaded.name} ({loaded.path}) has a {loaded.num_classes}-class head but "
                        f"{dataset_desc} has {num_classes} classes; pass --classes to select the training classes")


# --------------------------------------------------------------------------------------------------------------------
# Feature extraction with a disk cache
# --------------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def extract_arrays(model: nn.Module, dataset: Dataset, *, batch_size: int = 256, workers: int = 0,
                   device: torch.device | str = "cpu", desc: str = "extract", progress: bool = True
                   ) -> dict[str, torch.Tensor]:
    """One pass over ``dataset``: penultimate ``features`` (N, D) float32, ``logits`` (N, K) float32, ``labels``
    (N,) int64 (see :func:`maxsup.models.features_and_logits`)."""
    from tqdm.auto import tqdm

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    feats, logits, labels = [], [], []
    model.eval()
    for x, y in tqdm(loader, desc=desc, disable=not progress, leave=False):
        f, z = features_and_logits(model, x.to(device))
        feats.append(f.float().cpu())
        logits.append(z.float().cpu())
        labels.append(torch.as_tensor(y))
    if not feats:
        raise UserError(f"{desc}: the dataset is empty (check --classes and --max-per-class)")
    return {"features": torch.cat(feats), "logits": torch.cat(logits), "labels": torch.cat(labels).long()}


def check_finite_arrays(loaded: LoadedModel, arrays: dict[str, torch.Tensor], desc: str) -> None:
    """Refuse features (N, D) or logits (N, K) with NaN/inf: finite weights can still overflow in float32, and every
    metric of such arrays would be NaN or finite nonsense (an argmax of NaN is class 0)."""
    for key in ("features", "logits"):
        rows = (~torch.isfinite(arrays[key])).any(1)
        if rows.any():
            raise UserError(f"checkpoint {loaded.name} ({loaded.path}) gives non-finite {key} for {int(rows.sum())} of "
                            f"{len(rows)} images of {desc} (overflow in float32?); analyse another checkpoint")


def _cache_key(path: Path, dataset: str, data_path: str | None, split: str, classes: list[int] | None,
               max_per_class: int | None, seed: int) -> str:
    st = path.stat()
    ident = [CACHE_VERSION, str(path.resolve()), st.st_size, st.st_mtime_ns, dataset,
             str(Path(data_path).resolve()) if data_path else None, split, classes, max_per_class, seed]
    return hashlib.sha1(json.dumps(ident).encode()).hexdigest()[:16]


def cached_arrays(loaded: LoadedModel, args: argparse.Namespace, split: str, *, dataset: str | None = None,
                  data_path: str | None = None, classes: list[int] | None | str = "args",
                  max_per_class: int | None | str = "args", require_head_match: bool = False,
                  real: str | bool | None = None) -> dict[str, Any]:
    """Features/logits/labels of one checkpoint on one split, extracted once and cached under ``--cache-dir``.

    The cache key covers the checkpoint file (path, size, mtime), the dataset, split, class subset, per-class cap and
    seed; a changed checkpoint is re-extracted. Returns the arrays plus ``classes`` (names) and ``cache`` (path);
    with ``real`` (``--real-labels``: True or a real.json path) also ``real_acc1`` and ``n_real`` (ReaL top-1).
    """
    if dataset is None:  # the script's own --dataset/--data-path
        dataset, data_path = args.dataset, args.data_path
    if real and (dataset != "imagefolder" or split != "test"):
        raise UserError(f"--real-labels scores ImageNet val: use --dataset imagefolder --split test, not --dataset "
                        f"{dataset} --split {split}")
    classes = parse_classes(args.classes) if classes == "args" else classes
    max_per_class = args.max_per_class if max_per_class == "args" else max_per_class
    ds = build_dataset(dataset, data_path, split, eval_transform(loaded.transform_spec), classes, max_per_class,
                       args.seed)
    desc = f"{dataset} {split}" + (f" classes {','.join(map(str, classes))}" if classes else "")
    if require_head_match:
        check_head(loaded, ds.head_size, desc)
    scorer = real_scorer(loaded, ds, real) if real else None  # bad names fail before the extraction
    cache_dir = Path(args.cache_dir) if args.cache_dir else Path(args.out) / "features"
    key = _cache_key(loaded.path, dataset, data_path, split, classes, max_per_class, args.seed)
    cache = cache_dir / f"{loaded.name}-{dataset}-{split}-{key}.pt"
    arrays = _read_cache(cache)
    if arrays is not None:
        check_finite_arrays(loaded, arrays, desc)  # a cache written before this check existed
    else:
        arrays = extract_arrays(loaded.model, ds, batch_size=args.batch_size, workers=args.workers,
                                device=next(loaded.model.parameters()).device, desc=f"{loaded.name} {desc}",
                                progress=not args.no_progress)
        if ds.class_indices is not None:  # ImageNet-A/R: keep the logits of the 200 classes they contain
            arrays["logits"] = arrays["logits"][:, ds.class_indices]
        check_finite_arrays(loaded, arrays, desc)
        atomic_save(arrays, cache)
    out = {**arrays, "classes": ds.classes, "cache": str(cache), "dataset": dataset, "split": split}
    if scorer is not None:
        out.update(scorer.result(*scorer.counts(arrays["logits"].argmax(1))))
    return out


def _read_cache(cache: Path) -> dict[str, torch.Tensor] | None:
    """The arrays of a feature cache file, or None where there is none or it does not load (cut short by a copy or
    a full disk): a cache holds nothing that cannot be extracted again, so such a file is replaced, not an error."""
    if not cache.is_file():
        return None
    try:
        arrays = torch.load(cache, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exc:
        print(f"warning: feature cache {cache} does not load ({str(exc).splitlines()[0][:80]}); extracting again",
              flush=True)
        return None
    if not isinstance(arrays, dict) or not {"features", "logits", "labels"} <= arrays.keys():
        print(f"warning: feature cache {cache} is not a feature cache; extracting again", flush=True)
        return None
    return arrays


@functools.lru_cache(maxsize=2)
def _real_labels(source: str | bool) -> list[list[int]]:
    return real_labels(source)  # read once for all checkpoints


def real_scorer(loaded: LoadedModel, ds: LabeledSubset, real: str | bool) -> RealScorer:
    """ReaL scorer of ``ds`` (an ImageFolder of ImageNet val, optionally a ``--classes`` / ``--max-per-class``
    subset) for ``loaded``'s head: its outputs are the selected classes (a head trained on them) or all class folders
    (an ImageNet head)."""
    base_classes = list(ds.base.classes)
    if loaded.num_classes == len(ds.classes):
        outputs = list(ds.classes)
    elif loaded.num_classes == len(base_classes):
        outputs = base_classes
    else:
        raise UserError(f"--real-labels: checkpoint {loaded.name} has a {loaded.num_classes}-class head, which "
                        f"matches neither the {len(ds.classes)} selected nor the {len(base_classes)} class folders")
    paths = [ds.base.samples[i][0] for i in ds.indices]
    return RealScorer(paths, outputs, _real_labels(real))


# --------------------------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------------------------
def markdown_table(header: list[str], rows: list[list[Any]], digits: int = 4) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(fmt(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_results(out: str | os.PathLike, name: str, result: dict[str, Any], markdown: str | None = None) -> Path:
    """Atomically write ``<out>/<name>.json`` (and ``<out>/<name>.md``); returns the JSON path."""
    out = Path(out)
    path = atomic_write(out / f"{name}.json", json.dumps(result, indent=2, sort_keys=False) + "\n")
    if markdown is not None:
        atomic_write(out / f"{name}.md", markdown)
    return path


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend (scripts run headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def checkpoint_panels(args: argparse.Namespace, panel_size: tuple[float, float]
                      ) -> tuple[Any, Iterator[tuple[Any, LoadedModel]]]:
    """A figure with one row of panels, one per ``--checkpoint`` (``panel_size``: (width, height) in inches each),
    and the (axes, model) pairs in ``--checkpoint`` order. The models load one at a time as the pairs are consumed
    (:func:`load_models`), so a script never holds them all."""
    plt = pyplot()
    ckpts = checkpoints_from_args(args)
    width, height = panel_size
    fig, axes = plt.subplots(1, len(ckpts), figsize=(width * len(ckpts), height), squeeze=False)
    return fig, zip(axes[0], load_models(args, ckpts), strict=True)


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Lay out a matplotlib figure (``tight_layout``), atomically save it as PNG (``dpi`` pixels per inch) and close
    it; returns ``path``."""
    import io

    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return atomic_write(path, buf.getvalue())
