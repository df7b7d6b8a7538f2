"""The paper's recipes as data (``recipes.toml`` at the repository root): load them and check a resolved configuration
(a trainer's ``--print-config`` JSON, or the ``config`` of a run folder's ``run.json``) against one.

>>> recipes = load_recipes()
>>> mismatches(recipes["recipes"]["deit_t5"], config)   # [] when the config is the paper's recipe
>>> match_recipe(config, "deit", recipes)                # "deit_t5", or None
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import UserError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the tomli backport
    import tomli as tomllib

__all__ = ["RECIPES_FILE", "load_recipes", "lookup", "match_alternatives", "match_recipe", "mismatches",
           "paper_cells", "parse_paper", "spec_of"]

RECIPES_FILE = Path(__file__).resolve().parents[1] / "recipes.toml"
_MISSING = object()


def load_recipes(path: str | Path = RECIPES_FILE) -> dict[str, Any]:
    """The parsed ``recipes.toml``; every value must cite the paper (``paper``) or say why it is ours (``ours``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe table not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path} is not valid TOML: {exc}") from None
    for rid, recipe in data.get("recipes", {}).items():
        for field in ("tables", "trainer", "readme", "values"):
            if field not in recipe:
                raise UserError(f"{path}: recipe {rid!r} has no {field!r}")
        for key, entry in recipe["values"].items():
            if not isinstance(entry, dict) or "value" not in entry or (("paper" in entry) == ("ours" in entry)):
                raise UserError(f"{path}: recipes.{rid}.values.{key} needs a value and exactly one of "
                                f"paper = \"<table/section>\" or ours = \"<reason>\"")
    return data


def lookup(config: Mapping[str, Any], key: str) -> Any:
    """``config["a"]["b"]`` for ``key = "a.b"`` (nested FFCV sections), or ``config[key]``; missing → a sentinel."""
    if key in config:
        return config[key]
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _equal(got: Any, want: Any) -> bool:
    if isinstance(want, bool) or isinstance(got, bool):
        return got is want
    if isinstance(want, (int, float)) and isinstance(got, (int, float)):
        return math.isclose(float(got), float(want), rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(want, list) and isinstance(got, (list, tuple)):
        return len(got) == len(want) and all(_equal(g, w) for g, w in zip(got, want, strict=True))
    return got == want


def mismatches(recipe: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """One line per recipe value (or choice) that ``config`` does not have; [] means the config is the recipe."""
    out = []
    for key, entry in recipe["values"].items():
        got = lookup(config, key)
        if (got is None or got is _MISSING) and entry.get("only_if_set"):  # e.g. the α of a loss without one
            continue
        if got is _MISSING:
            out.append(f"{key}: missing (recipe: {entry['value']!r})")
        elif not _equal(got, entry["value"]):
            cite = entry.get("paper") or f"ours: {entry['ours']}"
            out.append(f"{key} = {got!r}, recipe {entry['value']!r} ({cite})")
    for key, allowed in recipe.get("choices", {}).items():
        got = lookup(config, key)
        if got not in allowed:
            out.append(f"{key} = {got!r} is not one of the recipe's {allowed}")
    return out


def match_recipe(config: Mapping[str, Any], trainer: str, recipes: Mapping[str, Any] | None = None) -> str | None:
    """The id of the first recipe of ``trainer`` that ``config`` satisfies completely, else None."""
    recipes = load_recipes() if recipes is None else recipes
    for rid, recipe in recipes.get("recipes", {}).items():
        if recipe["trainer"] == trainer and not mismatches(recipe, config):
            return rid
    return None


# --------------------------------------------------------------------------------------------------------------------
# [paper_results.<table>]: the paper's numbers and which runs fill each cell (analysis.collect, demo/report.py)
# --------------------------------------------------------------------------------------------------------------------
def spec_of(recipes: dict[str, Any], table: str) -> dict[str, Any]:
    """``[paper_results.<table>]`` or a one-line error naming the tables there are."""
    specs = recipes.get("paper_results", {})
    if table not in specs:
        raise UserError(f"--paper {table}: recipes.toml has no [paper_results.{table}]; choose one of "
                        f"{', '.join(specs)} or all")
    return specs[table]


def parse_paper(text: str | float | None) -> dict[str, float | None] | None:
    """``"77.69±0.07"`` → {mean 77.69, std 0.07}; ``"74.32"`` → std None; ``""`` → None."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return {"mean": float(text), "std": None}
    mean, _, std = text.replace(" ", "").partition("±")
    try:
        return {"mean": float(mean), "std": float(std) if std else None}
    except ValueError:
        raise UserError(f"recipes.toml: paper value {text!r} is not a number or number±std") from None


def match_alternatives(match: Any) -> list[dict[str, Any]]:
    """A row's ``match``: one selector table, or a list of alternatives → a list of selectors."""
    return [dict(m) for m in match] if isinstance(match, list) else [dict(match or {})]


def paper_cells(recipes: dict[str, Any], table: str) -> list[dict[str, Any]]:
    """Every cell of a paper table as data: row and column names, metric, the selector a run must match (the
    column's match updated by the row's first alternative) and the paper's number (:func:`parse_paper`)."""
    spec = spec_of(recipes, table)
    out = []
    for row in spec["rows"]:
        for j, col in enumerate(spec["columns"]):
            metric = row["metrics"][j] if "metrics" in row else row.get("metric") or col.get("metric") or spec["metric"]
            out.append({"row": row["name"], "column": col["name"], "metric": metric,
                        "selector": {**col.get("match", {}), **match_alternatives(row.get("match"))[0]},
                        "paper": parse_paper(row["paper"][j]), "digits": spec.get("digits", 2)})
    return out
