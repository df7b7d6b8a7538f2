"""Paper Figures 3/4 (App. I): penultimate features of 3 classes projected onto the plane of their class templates.

    python -m analysis.projection --checkpoint LS=ls.pth --checkpoint MaxSup=ms.pth --proj-classes 0,2,4 \
        --per-class 80 --dataset fmnist --out results/analysis

Following Müller et al. (2019) as in the authors' removed ``viz/plot.py``: the class templates are the class means
of the penultimate features; the plane passes through the three templates, with an orthonormal basis from the two
leading right-singular vectors of the centred templates; features are centred on the templates' mean and projected.
``--per-class`` samples (seeded, default 80 as in the paper) per class; one panel per method.
Writes ``<out>/projection.png`` and ``<out>/projection.json``.
"""

from __future__ import annotations

if not __package__:  # run by path (python analysis/NAME.py): see analysis/_bootstrap.py
    import _bootstrap  # noqa: F401

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from analysis.common import (
    cached_arrays,
    checkpoint_panels,
    parse_classes,
    save_figure,
    script_parser,
    write_results,
)
from maxsup.cli import positive_int, run_cli
from maxsup.errors import UserError


def template_plane(features: torch.Tensor, labels: torch.Tensor, classes: list[int]) -> tuple[torch.Tensor, ...]:
    """Orthonormal basis (D, 2) of the plane through the class means of ``classes`` and its origin (D,)."""
    means = torch.stack([features[labels == c].double().mean(0) for c in classes])  # (3, D)
    origin = means.mean(0)
    _, _, vh = torch.linalg.svd(means - origin, full_matrices=False)
    return vh[:2].T, origin


def get_args_parser() -> argparse.ArgumentParser:
    p = script_parser(__doc__, split="test")
    p.add_argument("--proj-classes", default="0,1,2", help="three class indices (after --classes relabelling)")
    p.add_argument("--per-class", type=positive_int, default=80, help="samples plotted per class (paper: 80)")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Returns ``projection.json``: per method the projected class means and within-class spread in the plane."""
    proj_classes = parse_classes(args.proj_classes) or []
    if len(proj_classes) != 3:
        raise UserError(f"--proj-classes needs exactly 3 classes, got {args.proj_classes!r}")
    fig, panels = checkpoint_panels(args, (4.5, 4.2))
    rows: dict[str, Any] = {}
    for ax, loaded in panels:
        name = loaded.name
        a = cached_arrays(loaded, args, args.split)
        feats, labels = a["features"], a["labels"]
        missing = [c for c in proj_classes if int((labels == c).sum()) < 2]
        if missing:
            raise UserError(f"--proj-classes {missing} have fewer than 2 samples in {args.dataset} {args.split} "
                            f"({len(a['classes'])} classes after --classes)")
        basis, origin = template_plane(feats, labels, proj_classes)
        rng = np.random.default_rng(args.seed)
        rows[name] = {"class_means_2d": [], "spread_2d": [], "n_per_class": []}
        for c in proj_classes:
            idx = torch.nonzero(labels == c).flatten().numpy()
            idx = np.sort(rng.choice(idx, min(args.per_class, len(idx)), replace=False))
            xy = ((feats[idx].double() - origin) @ basis).numpy()
            ax.scatter(xy[:, 0], xy[:, 1], s=8, alpha=0.7, label=a["classes"][c])
            rows[name]["class_means_2d"].append(xy.mean(0).tolist())
            rows[name]["spread_2d"].append(float(np.sqrt(((xy - xy.mean(0)) ** 2).sum(1).mean())))
            rows[name]["n_per_class"].append(len(idx))
        ax.set_title(name)
        ax.legend(fontsize=8)
    png = save_figure(fig, Path(args.out) / "projection.png")
    result = {"script": "projection", "png": str(png), "panels": len(fig.axes), "dataset": args.dataset,
              "split": args.split, "proj_classes": proj_classes, "per_class": args.per_class, "rows": rows}
    write_results(args.out, "projection", result)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    run_cli(main)
