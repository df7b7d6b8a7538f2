"""Corruption robustness (paper Table 8, ImageNet-C style): error, NLL and ECE on clean data and under each corruption
and severity, for every checkpoint.

    python -m analysis.robustness --checkpoint CE=ce.pth --checkpoint LS=ls.pth --checkpoint MaxSup=ms.pth \
        --dataset cifar10 --data-path datasets/cifar10 --precomputed datasets/CIFAR-10-C --out results/t8

Without ``--precomputed`` the corruptions are applied on the fly (``maxsup.corruptions``, seeded per image, after the
evaluation resize/crop) with the constants made for that resolution: CIFAR-10-C's up to 32 px, Tiny-ImageNet-C's up
to 64 px, ImageNet-C's (corrupt-tta) above; ``constants`` in the results says which. With it, CIFAR-10/100 read the
published ``<corruption>.npy`` files and ``imagefolder`` reads ImageNet-C's ``<corruption>/<severity>/<wnid>/*.JPEG``.

Writes ``<out>/robustness.json`` = ``{"checkpoints": {NAME: {"clean": M, "corrupted": {CORRUPTION: {"SEVERITY": M}},
"mean_corrupted": M, "constants": TEXT}}}`` with M = ``{"error", "nll", "ece"}`` (error as a fraction, NLL in nats,
15-bin ECE), the Markdown table ``robustness.md`` in Table 8's layout, and ``robustness.png`` (error and ECE against
severity).
"""

from __future__ import annotations

if not __package__:  # run by path (python analysis/NAME.py): see analysis/_bootstrap.py
    import _bootstrap  # noqa: F401

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from analysis.common import (
    LabeledSubset,
    build_dataset,
    check_head,
    device_from_args,
    load_models,
    markdown_table,
    parse_classes,
    pyplot,
    save_figure,
    script_parser,
    write_results,
)
from maxsup.cli import run_cli
from maxsup.corruptions import (
    CIFAR10C,
    CorruptedDataset,
    check_cifar10c,
    imagenet_c_folder,
    parse_corruptions,
    parse_severities,
)
from maxsup.corruptions_lowres import LOWRES_SCALES, scale_for
from maxsup.data.imagenet_variants import RestrictLogits
from maxsup.data.transforms import eval_transform
from maxsup.errors import UserError
from maxsup.metrics import ClassificationMeter


def get_args_parser() -> argparse.ArgumentParser:
    p = script_parser(__doc__, split=None)
    p.add_argument("--corruptions", default=None,
                   help="comma list of ImageNet-C corruptions (default: all 15; see maxsup.corruptions.CORRUPTIONS)")
    p.add_argument("--severities", default="1,2,3,4,5", help="comma list of severities in 1..5")
    p.add_argument("--precomputed", default=None,
                   help="folder of a published corrupted set: CIFAR-10-C/100-C (<corruption>.npy, labels.npy) for "
                        "cifar10/cifar100, ImageNet-C (<corruption>/<severity>/<wnid>/) for imagefolder")
    return p


def _metrics(meter: ClassificationMeter) -> dict[str, float]:
    m = meter.compute()
    return {"error": 1.0 - m["acc1"] / 100.0, "nll": m["nll"], "ece": m["ece"]}


@torch.no_grad()
def _evaluate(models: dict[str, torch.nn.Module], dataset: Dataset, args: argparse.Namespace, device: torch.device,
              paths: dict[str, Path]) -> dict[str, dict[str, float]]:
    """One pass over ``dataset`` feeding every model the same (corrupted) batches; ``paths``: each model's
    checkpoint, named when its logits come out non-finite."""
    meters = {name: ClassificationMeter() for name in models}
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.workers)
    for x, y in loader:
        x = x.to(device)
        for name, model in models.items():
            logits = model(x).float()
            if not torch.isfinite(logits).all():  # overflow: NLL/ECE would be NaN, the error rate nonsense
                raise UserError(f"checkpoint {name} ({paths[name]}) gives non-finite logits (overflow in float32?); "
                                f"analyse another checkpoint")
            meters[name].update(logits, torch.as_tensor(y))
    return {name: _metrics(meter) for name, meter in meters.items()}


def _precomputed(args: argparse.Namespace, clean: LabeledSubset, corruption: str, severity: int, transform: Any
                 ) -> Dataset:
    """The published corrupted copy of ``clean``'s images (same indices, same relabelling)."""
    if args.dataset in ("cifar10", "cifar100"):
        base = CIFAR10C(args.precomputed, corruption, severity, transform)
    elif args.dataset == "imagefolder":
        base = imagenet_c_folder(args.precomputed, corruption, severity, transform)
    else:
        raise UserError(f"--precomputed reads CIFAR-10-C/100-C (--dataset cifar10/cifar100) or ImageNet-C "
                        f"(--dataset imagefolder), not --dataset {args.dataset}")
    if len(base) != len(clean.base):
        raise UserError(f"{args.precomputed} has {len(base)} images for {corruption} severity {severity} but the "
                        f"clean {args.dataset} test split has {len(clean.base)}; they must be the same images")
    return LabeledSubset(base, clean.indices, clean.targets, clean.classes)


def constants_for(size: int) -> str:
    """Which severity constants the on-the-fly corruptions use at an evaluation size of ``size`` px."""
    scale = scale_for(size, size)
    return LOWRES_SCALES[scale][1] if scale in LOWRES_SCALES else "ImageNet-C constants (corrupt-tta)"


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Returns what ``robustness.json`` holds (see the module docstring)."""
    corruptions = parse_corruptions(args.corruptions)
    severities = parse_severities(args.severities)
    if args.precomputed and args.dataset in ("cifar10", "cifar100"):
        check_cifar10c(args.precomputed, corruptions)
    device = device_from_args(args)
    classes = parse_classes(args.classes)
    loaded = list(load_models(args))
    # Checkpoints sharing an evaluation transform see each corrupted batch once, together.
    groups: dict[str, list] = {}
    for lm in loaded:
        groups.setdefault(json.dumps(lm.transform_spec, sort_keys=True), []).append(lm)
    results: dict[str, dict[str, Any]] = {lm.name: {"clean": None, "corrupted": {c: {} for c in corruptions}}
                                          for lm in loaded}
    for group in groups.values():
        transform = eval_transform(group[0].transform_spec)
        size = group[0].transform_spec["img_size"]
        constants = (f"published set {args.precomputed}" if args.precomputed else
                     f"{constants_for(size)}, applied at {size} px, seeded per image")
        for lm in group:
            results[lm.name]["constants"] = constants
        clean = build_dataset(args.dataset, args.data_path, "test", transform, classes, args.max_per_class, args.seed)
        for lm in group:
            check_head(lm, clean.head_size, f"{args.dataset} test")
        keep = clean.class_indices  # ImageNet-A/R: the 200 classes' logits only
        models = {lm.name: lm.model if keep is None else RestrictLogits(lm.model, keep).to(device) for lm in group}
        paths = {lm.name: lm.path for lm in group}
        for name, m in _evaluate(models, clean, args, device, paths).items():
            results[name]["clean"] = m
        raw = build_dataset(args.dataset, args.data_path, "test", None, classes, args.max_per_class, args.seed)
        for corruption in corruptions:
            for severity in severities:
                if args.precomputed:
                    ds = _precomputed(args, clean, corruption, severity, transform)
                else:
                    ds = CorruptedDataset(raw, corruption, severity, transform, seed=args.seed)
                for name, m in _evaluate(models, ds, args, device, paths).items():
                    results[name]["corrupted"][corruption][str(severity)] = m
                if not args.no_progress:
                    print(f"{corruption} severity {severity} done", file=sys.stderr)
    for r in results.values():
        cells = [m for per_sev in r["corrupted"].values() for m in per_sev.values()]
        r["mean_corrupted"] = {k: sum(m[k] for m in cells) / len(cells) for k in ("error", "nll", "ece")}
    result = {"checkpoints": results}
    write_results(args.out, "robustness", result, _markdown(result, args, corruptions, severities))
    _figure(result, severities, Path(args.out) / "robustness.png")
    return result


def _markdown(result: dict[str, Any], args: argparse.Namespace, corruptions: list[str], severities: list[int]) -> str:
    ck = result["checkpoints"]
    names = list(ck)
    rows = []
    for key, label in (("error", "Error"), ("nll", "NLL"), ("ece", "ECE")):
        rows.append([f"{label} (Clean)", *[ck[n]["clean"][key] for n in names]])
        rows.append([f"{label} (Corr)", *[ck[n]["mean_corrupted"][key] for n in names]])
    source = "; ".join(sorted({ck[n]["constants"] for n in names}))
    per_sev = [[s, *[sum(ck[n]["corrupted"][c][str(s)]["error"] for c in corruptions) / len(corruptions)
                     for n in names]] for s in severities]
    return (f"# Corruption robustness, {args.dataset} test (Table 8 layout; lower is better)\n\n"
            f"Corruptions ({len(corruptions)}): {', '.join(corruptions)}; severities {severities}; {source}. "
            f"(Corr) = mean over every corruption and severity.\n\n"
            + markdown_table(["Metric", *names], rows)
            + "\n## Error by severity (mean over corruptions)\n\n"
            + markdown_table(["Severity", *names], per_sev))


def _figure(result: dict[str, Any], severities: list[int], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    xs = [0, *severities]
    for name, r in result["checkpoints"].items():
        for ax, key in zip(axes, ("error", "ece"), strict=True):
            ys = [r["clean"][key]] + [sum(per[str(s)][key] for per in r["corrupted"].values()) / len(r["corrupted"])
                                      for s in severities]
            ax.plot(xs, ys, marker="o", label=name)
    for ax, label in zip(axes, ("error", "ECE (15 bins)"), strict=True):
        ax.set(xlabel="severity (0 = clean)", ylabel=label, xticks=xs)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    run_cli(main)
