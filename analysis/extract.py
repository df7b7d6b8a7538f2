"""Extract penultimate features, logits and labels for a split and cache them (used by every other script).

    python -m analysis.extract --checkpoint MaxSup=runs/maxsup/checkpoint.pth --split test --out results/analysis

Writes ``<out>/extract.json`` / ``.md`` (one row per checkpoint) and the cache files under ``<out>/features``.
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
from maxsup.cli import run_cli


def get_args_parser() -> argparse.ArgumentParser:
    return script_parser(__doc__, split="test", real_labels=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Extract (or reuse) the cache of every checkpoint; returns the ``extract.json`` dict."""
    rows: dict[str, Any] = {}
    for loaded in load_models(args):
        name, path = loaded.name, loaded.path
        a = cached_arrays(loaded, args, args.split, real=args.real_labels)
        same_head = a["logits"].shape[1] == len(a["classes"])
        acc = float((a["logits"].argmax(1) == a["labels"]).float().mean() * 100) if same_head else None
        rows[name] = {"checkpoint": str(path), "arch": loaded.arch["name"], "n": int(a["labels"].numel()),
                      "feature_dim": int(a["features"].shape[1]), "num_classes": int(a["logits"].shape[1]),
                      "acc1": acc, "cache": a["cache"]}
        if args.real_labels:
            rows[name].update(real_acc1=a["real_acc1"], n_real=a["n_real"])
    result = {"script": "extract", "dataset": args.dataset, "split": args.split, "classes": args.classes,
              "rows": rows}
    real = ["ReaL acc@1 (%)"] if args.real_labels else []
    md = markdown_table(["Method", "arch", "n", "feature dim", "classes", "acc@1 (%)", *real],
                        [[k, r["arch"], r["n"], r["feature_dim"], r["num_classes"],
                          r["acc1"] if r["acc1"] is not None else "n/a", *([r["real_acc1"]] if real else [])]
                         for k, r in rows.items()], digits=2)
    write_results(args.out, "extract", result, f"# Extracted features ({args.dataset}, {args.split})\n\n{md}")
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    run_cli(main)
