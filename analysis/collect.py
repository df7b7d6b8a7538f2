"""Run folders and analysis outputs → the paper's tables, beside the paper's numbers.

    python -m analysis.collect runs/ [more run folders, analysis outputs or parents ...] [--paper T4|all] --out DIR

Inputs (:mod:`analysis.inputs`): run folders (``run.json`` = the trainer's resolved ``--print-config`` JSON, plus its
JSON-lines log; the metrics are those of the last epoch, and a run whose log stops before its last epoch is listed as
unfinished and never averaged in), the ``analysis/`` outputs ``feature_metrics.json``, ``linear_transfer.json`` and
``robustness.json``, and MMSegmentation 1.2.2 test results. Runs pool only when their resolved recipes are equal
(:mod:`analysis.pooling`): every config value except the seed, paths, workers, logging and the split of the global
batch.

Without ``--paper``: one row per group of runs (mean ± sample std over seeds, with n). ``--paper TN`` lays out
``[paper_results.TN]`` of recipes.toml as the paper does (:mod:`analysis.tables`): per cell ours (mean ± std, n,
seeds), the paper's number, the difference and whether it exceeds the combined std. Two groups in one cell are
refused with the config keys that differ. ``--paper all`` does every table and writes ``REPRODUCTION.md``.

Writes into ``--out``: ``collect.json``, ``collect.md``, and per table ``TN.md`` and ``TN.csv`` (one line per cell);
an existing file is refused unless ``--force``.
"""

from __future__ import annotations

if not __package__:  # run by path (python analysis/NAME.py): see analysis/_bootstrap.py
    import _bootstrap  # noqa: F401

import argparse
import json
import math
from pathlib import Path
from typing import Any

from analysis.common import markdown_table
from analysis.inputs import read_inputs
from analysis.tables import TABLES, build_table, reproduction_markdown, spec_of, table_csv, table_markdown
from maxsup.cli import ArgumentParser, run_cli
from maxsup.errors import UserError
from maxsup.recipes import load_recipes, match_recipe
from maxsup.training import atomic_write

METHOD_NAMES = {"ce": "Baseline", "ls": "Label Smoothing", "zipf": "Zipf-LS", "ols": "OLS", "maxsup": "MaxSup",
                "lp": "Logit Penalty", "cp": "Confidence Penalty", "ls-reg": "+ Regularization only",
                "ls-err": "+ error amplification only", "ls-err-alt": "+ error amplification (alt.)"}
METRICS = ("acc1", "nll", "ece")


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="+", type=Path,
                   help="run folders, analysis outputs (feature_metrics/linear_transfer/robustness .json), MMSeg "
                        "result files, or folders searched for them")
    p.add_argument("--out", default=None, type=Path, help="write collect.json/.md and TN.md/TN.csv here")
    p.add_argument("--paper", default=None, help="a paper table of recipes.toml [paper_results] (T1 … T16), or all")
    p.add_argument("--recipes", default=None, type=Path, help="the recipe table (default: recipes.toml)")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    return p


def alpha_label(alpha: list[float] | None) -> str:
    if not alpha:
        return "–"
    start, end = alpha
    return f"{start:g}" if start == end else f"{start:g}→{end:g}"


def summarize(values: list[float]) -> dict[str, Any]:
    """mean and sample standard deviation (n − 1; None for a single run)."""
    from statistics import fmean, stdev

    return {"mean": fmean(values), "std": stdev(values) if len(values) > 1 else None, "n": len(values)}


def fmt(s: dict[str, Any] | None, digits: int = 2) -> str:
    if s is None:
        return "–"
    std = "–" if s["std"] is None else f"{s['std']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {std} (n={s['n']})"


def group_runs(runs: list[dict[str, Any]], recipes: dict[str, Any]) -> list[dict[str, Any]]:
    """Run records with equal group keys → one group each: seeds, per-metric stats, unfinished runs."""
    groups: dict[tuple, dict[str, Any]] = {}
    for run in runs:
        f = run["fields"]
        g = groups.setdefault(run["key"], {
            "dataset": f["dataset"], "model": f["model"], "loss": f["loss"], "alpha": alpha_label(run["alpha"]),
            "recipe": match_recipe(run["config"], run["trainer"], recipes) or f"custom-{run['recipe_fingerprint']}",
            "runs": [], "unfinished": []})
        (g["runs"] if run["finished"] else g["unfinished"]).append(run)
    out = []
    for g in groups.values():
        done = g["runs"]
        g["seeds"] = sorted(r["seed"] for r in done)
        g["stats"] = {m: summarize([r["values"][m] for r in done]) if done and all(
            isinstance(r["values"].get(m), (int, float)) and math.isfinite(r["values"][m]) for r in done) else None
            for m in METRICS}
        g["unfinished"] = [{"dir": r["path"], "seed": r["seed"], "last_epoch": r["last_epoch"], "epochs": r["epochs"]}
                           for r in g["unfinished"]]
        g["runs"] = [r["path"] for r in done]
        out.append(g)
    return sorted(out, key=lambda g: (g["recipe"], g["dataset"] or "", g["model"] or "", g["loss"] or "", g["alpha"]))


def groups_markdown(groups: list[dict[str, Any]]) -> str:
    rows = [[g["dataset"], g["model"], METHOD_NAMES.get(g["loss"], g["loss"]), g["alpha"], g["recipe"],
             fmt(g["stats"]["acc1"]), fmt(g["stats"]["nll"], 4), fmt(g["stats"]["ece"], 4),
             len(g["unfinished"]) or ""] for g in groups]
    return markdown_table(["dataset", "model", "method", "α", "recipe", "top-1 % (mean ± std)", "NLL", "ECE",
                           "unfinished"], rows)


def paper_tables(records: list[dict[str, Any]], recipes: dict[str, Any], which: str) -> dict[str, dict[str, Any]]:
    """{table: build_table(...)} for one table (refused when none of its inputs is there) or ``all``."""
    if which != "all":
        result = build_table(records, recipes, which)
        if not any(c["ours"] for r in result["rows"] for c in r["cells"]):
            spec = spec_of(recipes, which)
            raise UserError(f"--paper {which}: none of the inputs fills a cell of {which} (it needs "
                            f"{spec['source']}); make them with: {' ; '.join(spec.get('commands', []))}")
        return {which: result}
    return {t: build_table(records, recipes, t) for t in TABLES if t in recipes.get("paper_results", {})}


def run(args: argparse.Namespace) -> dict[str, Any]:
    recipes = load_recipes(args.recipes) if args.recipes else load_recipes()
    if args.paper and args.paper != "all":
        spec_of(recipes, args.paper)  # an unknown table is refused before any input is read
    if args.paper == "all" and args.out is None:
        raise UserError("--paper all writes REPRODUCTION.md and TN.md/TN.csv per table: give --out DIR")
    records = read_inputs(args.inputs)
    runs = [r for r in records if r["kind"] == "runs"]
    groups = group_runs(runs, recipes)
    md = "# Collected runs\n\n" + (groups_markdown(groups) if groups else "No run folders.\n")
    result: dict[str, Any] = {"script": "collect", "groups": groups}
    unfinished = [u for g in groups for u in g["unfinished"]]
    if unfinished:
        md += "\n## Unfinished runs (not averaged in)\n\n" + markdown_table(
            ["run folder", "seed", "last logged epoch", "epochs"],
            [[u["dir"], u["seed"], "none" if u["last_epoch"] is None else u["last_epoch"], u["epochs"]]
             for u in unfinished])
    files: dict[str, str] = {}
    if args.paper:
        result["paper"] = paper_tables(records, recipes, args.paper)
        for table, res in result["paper"].items():
            table_md = table_markdown(res)
            md += "\n" + table_md
            files[f"{table}.md"], files[f"{table}.csv"] = table_md, table_csv(res)
        if args.paper == "all":
            files["REPRODUCTION.md"] = reproduction_markdown(result["paper"])
    files = {"collect.json": json.dumps(result, indent=2, default=str) + "\n", "collect.md": md, **files}
    print(md, end="")
    if args.out is not None:
        existing = [n for n in files if (args.out / n).exists()]
        if existing and not args.force:
            raise UserError(f"{args.out / existing[0]} exists ({len(existing)} of the output files do); "
                            "pass --force to overwrite or choose another --out")
        for name, text in files.items():
            atomic_write(args.out / name, text)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    run_cli(main)
