"""Run folders → the paper's tables: final top-1 as mean ± sample std over seeds (with n), plus NLL and ECE.

    python -m analysis.collect runs/ [more run folders or parents ...] --out results/t4 [--paper T4]

Each trainer writes ``run.json`` into its run folder (``maxsup.training.write_run_record``): dataset, model, loss,
α schedule, seed, the resolved config, the name of its per-epoch JSON-lines log and which log keys are top-1 / NLL /
ECE. Runs are grouped by (dataset, model, loss + α schedule, recipe); the recipe is the ``recipes.toml`` id whose
values the run's config has, else ``custom-<fingerprint>`` of the config without seed, paths and loss. The metrics are
those of the last epoch. A run whose log stops before its last epoch is listed as unfinished and never averaged in.

``--paper T4`` (or T5, T10: any ``[paper_results.*]`` of recipes.toml) lays the table out as the paper does, one row
per method and, for each paper column, our mean ± std (n) beside the paper's number.
Writes ``<out>/collect.json`` and ``<out>/collect.md`` (with ``--out``), and prints the Markdown.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

from analysis.common import markdown_table, write_results
from maxsup.cli import run_cli
from maxsup.errors import UserError
from maxsup.recipes import load_recipes, match_recipe
from maxsup.training import RUN_RECORD

METHOD_NAMES = {"ce": "Baseline", "ls": "Label Smoothing", "zipf": "Zipf-LS", "ols": "OLS", "maxsup": "MaxSup",
                "lp": "Logit Penalty", "cp": "Confidence Penalty", "ls-reg": "+ Regularization only",
                "ls-err": "+ error amplification only", "ls-err-alt": "+ error amplification (alt.)"}
METRICS = ("acc1", "nll", "ece")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dirs", nargs="+", type=Path, help="run folders, or folders searched for run.json below them")
    p.add_argument("--out", default=None, help="write collect.json and collect.md here (default: print only)")
    p.add_argument("--paper", default=None, help="a paper table of recipes.toml [paper_results] (T4, T5, T10)")
    p.add_argument("--recipes", default=None, type=Path, help="the recipe table (default: recipes.toml)")
    return p


def find_runs(paths: list[Path]) -> list[Path]:
    """Run folders (those holding run.json) at or below each path, each once, in a stable order."""
    found: dict[Path, None] = {}
    for path in paths:
        if not path.is_dir():
            raise UserError(f"{path} is not a folder; pass run folders or folders that contain them")
        hits = [path / RUN_RECORD] if (path / RUN_RECORD).is_file() else sorted(path.rglob(RUN_RECORD))
        if not hits:
            raise UserError(f"no {RUN_RECORD} in or below {path}; was it written by one of this repository's trainers?")
        found.update(dict.fromkeys(h.parent for h in hits))
    return list(found)


def alpha_label(alpha: list[float] | None) -> str:
    if not alpha:
        return "–"
    start, end = alpha
    return f"{start:g}" if start == end else f"{start:g}→{end:g}"


def read_run(folder: Path, recipes: dict[str, Any]) -> dict[str, Any]:
    """One run: its grouping fields, the last epoch's metrics and whether it finished."""
    try:
        record = json.loads((folder / RUN_RECORD).read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{folder / RUN_RECORD} is not valid JSON ({exc.msg})") from None
    lines = []
    log = folder / record["log_file"]
    if log.is_file():
        for n, text in enumerate(log.read_text().splitlines(), 1):
            if text.strip():
                try:
                    lines.append(json.loads(text))
                except json.JSONDecodeError:
                    raise UserError(f"{log}:{n} is not a JSON line") from None
    epochs = [ln for ln in lines if isinstance(ln.get("epoch"), int)]
    last = epochs[-1] if epochs else None
    done = last is not None and last["epoch"] >= record["epochs"] - 1
    metrics = {k: last.get(record["metric_keys"][k]) for k in METRICS} if last else {}
    recipe = match_recipe(record["config"], record["trainer"], recipes) or f"custom-{record['recipe']}"
    return {"dir": str(folder), "trainer": record["trainer"], "dataset": record["dataset"], "model": record["model"],
            "loss": record["loss"], "alpha": alpha_label(record.get("alpha")), "recipe": recipe,
            "seed": record["seed"], "epochs": record["epochs"], "last_epoch": last["epoch"] if last else None,
            "finished": done and metrics.get("acc1") is not None, "metrics": metrics,
            "git_commit": record.get("provenance", {}).get("git_commit")}


def summarize(values: list[float]) -> dict[str, Any]:
    """mean and sample standard deviation (n − 1; None for a single run)."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values)}


def fmt(s: dict[str, Any] | None, digits: int = 2) -> str:
    if s is None:
        return "–"
    std = "–" if s["std"] is None else f"{s['std']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {std} (n={s['n']})"


def group_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple, dict[str, Any]] = {}
    for run in runs:
        key = (run["dataset"], run["model"], run["loss"], run["alpha"], run["recipe"])
        g = groups.setdefault(key, dict(zip(("dataset", "model", "loss", "alpha", "recipe"), key, strict=True),
                                        runs=[], unfinished=[]))
        (g["runs"] if run["finished"] else g["unfinished"]).append(run)
    out = []
    for g in groups.values():
        done = g["runs"]
        g["seeds"] = sorted(r["seed"] for r in done)
        g["stats"] = {m: summarize([r["metrics"][m] for r in done]) if done and all(
            isinstance(r["metrics"].get(m), (int, float)) and math.isfinite(r["metrics"][m]) for r in done) else None
            for m in METRICS}
        g["unfinished"] = [{"dir": r["dir"], "seed": r["seed"], "last_epoch": r["last_epoch"], "epochs": r["epochs"]}
                           for r in g["unfinished"]]
        g["runs"] = [r["dir"] for r in done]
        out.append(g)
    return sorted(out, key=lambda g: (g["recipe"], g["dataset"], g["model"], g["loss"], g["alpha"]))


def groups_markdown(groups: list[dict[str, Any]]) -> str:
    rows = [[g["dataset"], g["model"], METHOD_NAMES.get(g["loss"], g["loss"]), g["alpha"], g["recipe"],
             fmt(g["stats"]["acc1"]), fmt(g["stats"]["nll"], 4), fmt(g["stats"]["ece"], 4),
             len(g["unfinished"]) or ""] for g in groups]
    return markdown_table(["dataset", "model", "method", "α", "recipe", "top-1 % (mean ± std)", "NLL", "ECE",
                           "unfinished"], rows)


def paper_markdown(groups: list[dict[str, Any]], table: str, recipes: dict[str, Any]) -> tuple[str, dict]:
    """The paper's layout: rows = methods, and for each paper column our mean ± std (n) beside the paper's value."""
    res = recipes.get("paper_results", {}).get(table)
    if res is None:
        raise UserError(f"--paper {table}: recipes.toml has no [paper_results.{table}]; "
                        f"choose one of {', '.join(recipes.get('paper_results', {}))}")
    header, rows, data = ["Method"], [], {}
    for col in res["order"]:
        header += [f"{col} ours", f"{col} paper"]
    for loss, paper_values in res["rows"].items():
        row, data[loss] = [METHOD_NAMES.get(loss, loss)], {}
        for col, paper_value in zip(res["order"], paper_values, strict=True):
            dataset, model = res["columns"][col]
            match = [g for g in groups if (g["dataset"], g["model"], g["loss"]) == (dataset, model, loss)
                     and g["recipe"] in res["recipes"]]
            ours = match[0]["stats"]["acc1"] if match else None
            row += [fmt(ours), paper_value or "–"]
            data[loss][col] = {"ours": ours, "paper": paper_value or None}
        rows.append(row)
    return f"## {res['caption']}\n\n" + markdown_table(header, rows), {"table": table, "cells": data}


def run(args: argparse.Namespace) -> dict[str, Any]:
    recipes = load_recipes(args.recipes) if args.recipes else load_recipes()
    runs = [read_run(folder, recipes) for folder in find_runs(args.run_dirs)]
    groups = group_runs(runs)
    md = "# Collected runs\n\n" + groups_markdown(groups)
    result: dict[str, Any] = {"script": "collect", "groups": groups}
    unfinished = [u for g in groups for u in g["unfinished"]]
    if unfinished:
        md += "\n## Unfinished runs (not averaged in)\n\n" + markdown_table(
            ["run folder", "seed", "last logged epoch", "epochs"],
            [[u["dir"], u["seed"], "none" if u["last_epoch"] is None else u["last_epoch"], u["epochs"]]
             for u in unfinished])
    if args.paper:
        paper_md, result["paper"] = paper_markdown(groups, args.paper, recipes)
        md += "\n" + paper_md
    print(md, end="")
    if args.out:
        write_results(args.out, "collect", result, md)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    run_cli(main)
