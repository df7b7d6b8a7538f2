"""Paper Table 2 / Table 14: intra-class variation d̄_within, d̄_total and class separation R² on train and val.

    python -m analysis.feature_metrics --checkpoint CE=ce.pth --checkpoint LS=ls.pth --checkpoint MaxSup=ms.pth \
        --dataset fmnist --max-per-class 1000 --out results/analysis

Metrics are Kornblith et al. (2021) on penultimate features via ``maxsup.class_separation`` (cosine distance,
ordered pairs including m = n, class-balanced). ``--max-per-class`` caps the *training* split only (the paper does
not state how many ImageNet training images it used); val/test is used in full unless ``--val-max-per-class``.
Writes ``<out>/feature_metrics.json`` and ``.md``.
"""

from __future__ import annotations

if not __package__:  # run by path (python analysis/NAME.py): see analysis/_bootstrap.py
    import _bootstrap  # noqa: F401

import argparse
from typing import Any

from analysis.common import (
    cached_arrays,
    load_models,
    markdown_table,
    script_parser,
    write_results,
)
from maxsup import class_separation
from maxsup.cli import positive_int, run_cli

SPLITS = {"train": "train", "val": "test"}  # paper column → dataset split


def get_args_parser() -> argparse.ArgumentParser:
    p = script_parser(__doc__, split=None)
    p.add_argument("--val-max-per-class", type=positive_int, default=None,
                   help="also cap the val (test) split per class (default: the whole split)")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Returns ``feature_metrics.json``: rows[name][train|val] = {d_within, d_total, r2, n, num_classes}."""
    rows: dict[str, Any] = {}
    for loaded in load_models(args):
        name = loaded.name
        rows[name] = {}
        for column, split in SPLITS.items():
            cap = args.max_per_class if split == "train" else args.val_max_per_class
            a = cached_arrays(loaded, args, split, max_per_class=cap)
            m = class_separation(a["features"], a["labels"])
            rows[name][column] = {k: m[k] for k in ("d_within", "d_total", "r2", "n", "num_classes")}
    result = {"script": "feature_metrics", "dataset": args.dataset, "classes": args.classes,
              "max_per_class_train": args.max_per_class,
              "max_per_class_val": args.val_max_per_class, "rows": rows}
    header = ["Method", "d̄_within Train", "d̄_within Val", "d̄_total Train", "d̄_total Val", "R² Train", "R² Val"]
    table = [[k, r["train"]["d_within"], r["val"]["d_within"], r["train"]["d_total"], r["val"]["d_total"],
              r["train"]["r2"], r["val"]["r2"]] for k, r in rows.items()]
    md = (f"# Feature metrics (Table 2/14 protocol), {args.dataset}\n\n{markdown_table(header, table)}\n"
          "d̄_within ↑ = more intra-class variation kept; R² = 1 − d̄_within/d̄_total ↑ = more class separation "
          "(Kornblith et al. 2021, cosine distance on penultimate features).\n")
    write_results(args.out, "feature_metrics", result, md)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    run_cli(main)
