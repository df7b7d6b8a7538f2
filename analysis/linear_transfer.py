"""Paper Table 3 / Table 12: linear-probe transfer of frozen penultimate features to a target dataset.

    python -m analysis.linear_transfer --checkpoint CE=ce.pth --checkpoint MaxSup=ms.pth \
        --dataset fmnist --classes 1,3,5,7,9 --out results/analysis            # target: held-out classes

Protocol (Kornblith et al. 2019/2021): L2-regularised multinomial logistic regression on frozen features; λ from
45 log-spaced values in [1e-6, 1e5] chosen on a stratified 20 % validation split of the target training set, refit
on train + val, scored on the target test set. Objective and the λ ↔ scikit-learn ``C = 1/(λ·n)`` mapping are in
:mod:`maxsup.linear_probe`. ``--dataset/--data-path/--classes`` name the *target*; ``--source-dataset`` (with
``--source-data-path/--source-classes``) optionally adds the same probe on the source data for reference.
Writes ``<out>/linear_transfer.json`` and ``.md``.
"""

from __future__ import annotations

if not __package__:  # run by path (python analysis/NAME.py): see analysis/_bootstrap.py
    import _bootstrap  # noqa: F401

import argparse
from typing import Any

from analysis.common import (
    DATASETS,
    cached_arrays,
    load_models,
    markdown_table,
    parse_classes,
    script_parser,
    write_results,
)
from maxsup.cli import positive_int, run_cli
from maxsup.linear_probe import PROBE_MAX_ITER, SOLVERS, linear_probe, regularization_grid


def get_args_parser() -> argparse.ArgumentParser:
    p = script_parser(__doc__, split=None)
    p.add_argument("--source-dataset", choices=DATASETS, default=None,
                   help="also probe the source (training) dataset for reference")
    p.add_argument("--source-data-path", default=None, help="root of --source-dataset")
    p.add_argument("--source-classes", default=None, help="class subset of --source-dataset")
    p.add_argument("--solver", choices=SOLVERS, default="scipy",
                   help="scipy: preconditioned L-BFGS-B warm-started along the sweep; sklearn: "
                        "LogisticRegression(warm_start=True) (see bench/linear_probe.py)")
    p.add_argument("--num-lambdas", type=int, default=45, help="size of the log-spaced λ grid")
    p.add_argument("--lambda-range", type=float, nargs=2, default=(1e-6, 1e5), metavar=("LOW", "HIGH"),
                   help="λ grid bounds (Table 12: 1e-6 1e5; Table 3 used an unstated smaller range)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="held-out share of the training split")
    p.add_argument("--max-iter", type=positive_int, default=PROBE_MAX_ITER, help="L-BFGS iteration cap per λ")
    p.add_argument("--test-max-per-class", type=positive_int, default=None,
                   help="cap the test split per class (default: the whole split; --max-per-class caps train)")
    return p


def _probe(loaded, args, lambdas, dataset=None, data_path=None, classes="args") -> dict[str, Any]:
    train = cached_arrays(loaded, args, "train", dataset=dataset, data_path=data_path, classes=classes)
    test = cached_arrays(loaded, args, "test", dataset=dataset, data_path=data_path, classes=classes,
                         max_per_class=args.test_max_per_class)
    res = linear_probe(train["features"].numpy(), train["labels"].numpy(), test["features"].numpy(),
                       test["labels"].numpy(), lambdas=lambdas, val_fraction=args.val_fraction, seed=args.seed,
                       solver=args.solver, max_iter=args.max_iter)
    res["chance_acc"] = 100.0 / len(train["classes"])
    return res


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Returns ``linear_transfer.json``: rows[name] = {target: probe dict, source: probe dict (optional)}."""
    lambdas = regularization_grid(args.num_lambdas, *args.lambda_range)
    rows: dict[str, Any] = {}
    for loaded in load_models(args):
        name = loaded.name
        rows[name] = {"target": _probe(loaded, args, lambdas)}
        if args.source_dataset:
            rows[name]["source"] = _probe(loaded, args, lambdas, args.source_dataset, args.source_data_path,
                                          parse_classes(args.source_classes))
    result = {"script": "linear_transfer", "target": {"dataset": args.dataset, "classes": args.classes},
              "source": {"dataset": args.source_dataset, "classes": args.source_classes},
              "lambda_grid": [float(v) for v in lambdas], "rows": rows}
    header = ["Method", "target test acc (%)", "best λ", "best C", "val acc at best λ (%)"]
    table = [[k, r["target"]["test_acc"], f"{r['target']['best_lambda']:.3g}", f"{r['target']['best_C']:.3g}",
              r["target"]["val_acc"][r["target"]["best_index"]]] for k, r in rows.items()]
    if args.source_dataset:
        header.append("source test acc (%)")
        for row, r in zip(table, rows.values(), strict=True):
            row.append(r["source"]["test_acc"])
    md = (f"# Linear transfer (Table 3/12 protocol): target {args.dataset}"
          f"{' classes ' + args.classes if args.classes else ''}\n\n{markdown_table(header, table, digits=2)}\n"
          f"λ swept over {len(lambdas)} log-spaced values in [{lambdas[0]:.0e}, {lambdas[-1]:.0e}]; "
          f"chance = {next(iter(rows.values()))['target']['chance_acc']:.1f} %.\n")
    write_results(args.out, "linear_transfer", result, md)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    run_cli(main)
