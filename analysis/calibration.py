"""Calibration per checkpoint: ECE with 15 bins (torchmetrics' default, Paper Table 8 code) and 10 bins (the authors'
DeiT ``ece_score``), NLL, accuracy and a reliability diagram per checkpoint.

    python -m analysis.calibration --checkpoint LS=ls.pth --checkpoint MaxSup=ms.pth --dataset fmnist \
        --out results/analysis

ECE here is whole-dataset (``maxsup.metrics``), not the authors' per-batch average.
Writes ``<out>/calibration.json`` / ``.md`` and ``<out>/calibration.png`` (one reliability panel per checkpoint).
"""

from __future__ import annotations

if not __package__:  # run by path (python analysis/NAME.py): see analysis/_bootstrap.py
    import _bootstrap  # noqa: F401

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from analysis.common import (
    cached_arrays,
    checkpoint_panels,
    markdown_table,
    save_figure,
    script_parser,
    write_results,
)
from maxsup.cli import positive_int, run_cli
from maxsup.metrics import ClassificationMeter, expected_calibration_error, reliability_bins


def get_args_parser() -> argparse.ArgumentParser:
    p = script_parser(__doc__, split="test", real_labels=True)
    p.add_argument("--diagram-bins", type=positive_int, default=15, help="bins of the reliability diagram")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Returns ``calibration.json``: rows[name] = {acc1, nll, ece_15, ece_10, n, reliability: {...}}, plus
    real_acc1 and n_real (ReaL top-1 on ImageNet val) with ``--real-labels``."""
    fig, panels = checkpoint_panels(args, (4, 4))
    rows: dict[str, Any] = {}
    for ax, loaded in panels:
        name = loaded.name
        a = cached_arrays(loaded, args, args.split, require_head_match=True, real=args.real_labels)
        meter = ClassificationMeter(n_bins=15)
        meter.update(a["logits"], a["labels"])
        m = meter.compute()
        bins = reliability_bins(a["logits"], a["labels"], n_bins=args.diagram_bins)
        rows[name] = {"acc1": m["acc1"], "nll": m["nll"], "ece_15": m["ece"],
                      "ece_10": expected_calibration_error(a["logits"], a["labels"], n_bins=10), "n": m["n"],
                      "reliability": bins}
        if args.real_labels:
            rows[name].update(real_acc1=a["real_acc1"], n_real=a["n_real"])
        edges = np.asarray(bins["edges"])
        acc = np.nan_to_num(np.asarray(bins["accuracy"], dtype=float))
        ax.bar(edges[:-1], acc, width=np.diff(edges), align="edge", edgecolor="k", alpha=0.7, label="accuracy")
        ax.plot([0, 1], [0, 1], "r--", label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
               title=f"{name}: ECE {100 * rows[name]['ece_15']:.2f}%")
        ax.legend(fontsize=8, loc="upper left")
    png = save_figure(fig, Path(args.out) / "calibration.png")
    result = {"script": "calibration", "png": str(png), "panels": len(fig.axes), "dataset": args.dataset,
              "split": args.split, "rows": rows}
    real = ["ReaL acc@1 (%)"] if args.real_labels else []
    md = markdown_table(["Method", "acc@1 (%)", *real, "NLL", "ECE 15 bins", "ECE 10 bins"],
                        [[k, r["acc1"], *([r["real_acc1"]] if real else []), r["nll"], r["ece_15"], r["ece_10"]]
                         for k, r in rows.items()])
    write_results(args.out, "calibration", result, f"# Calibration, {args.dataset} {args.split}\n\n{md}")
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    run_cli(main)
