"""The paper's tables from records (:mod:`analysis.inputs`), laid out as the paper lays them out.

Everything about a table is data in ``recipes.toml`` ``[paper_results.TN]``:

- ``caption``, ``cite`` ("arXiv 2502.15798, Table N"), ``source`` (``runs``, ``feature_metrics``,
  ``linear_transfer``, ``robustness`` or ``mmseg``), ``digits``, optional ``scale`` (ours × scale, e.g. 0.01 for a
  % probe accuracy beside the paper's fraction);
- ``recipes`` (runs only): a run counts only if its config is one of these ``[recipes.<id>]`` (``ignore`` lists recipe
  keys a table varies on purpose, e.g. T15's α); ``finished = false`` also takes unfinished runs (timings);
- ``metric``: a run's ``acc1``/``nll``/``ece`` (its ``metric_keys``), a log key, ``seconds_per_epoch``, or a dotted
  key of an analysis row (``train.d_within``); a column or row may set its own ``metric`` (a row: ``metrics``, one
  per column);
- ``columns`` and ``rows``: ``{name, match, ...}``; a cell's runs are those whose fields equal every value of the
  column's ``match`` updated by the row's (``match`` may be a list of alternatives); rows carry the paper's numbers
  (``paper = ["77.69±0.07", ...]``, ``""`` where the paper has none);
- ``commands``: what makes the inputs (listed when they are missing).

Runs of one cell pool only when their group keys (:mod:`analysis.pooling`) are equal; two different keys in one cell
are refused with the keys that differ. Each cell reports ours (mean ± sample std, n, seeds), the paper's number (and
std), the difference, and whether |difference| exceeds the combined std √(std_ours² + std_paper²) (no verdict for
n = 1).
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from typing import Any

from analysis.common import markdown_table
from analysis.pooling import describe_differences, field, same
from maxsup.errors import UserError
from maxsup.recipes import match_alternatives as _alternatives
from maxsup.recipes import mismatches, paper_cells, parse_paper, spec_of

__all__ = ["TABLES", "build_table", "paper_cells", "parse_paper", "reproduction_markdown", "spec_of", "table_csv",
           "table_markdown", "table_status"]

TABLES = tuple(f"T{i}" for i in range(1, 17))


def _recipe_ok(record: dict[str, Any], recipe_ids: list[str], ignore: list[str], recipes: dict[str, Any]) -> bool:
    if not recipe_ids:
        return True
    for rid in recipe_ids:
        recipe = recipes["recipes"][rid]
        if recipe["trainer"] != record["trainer"]:
            continue
        kept = {"values": {k: v for k, v in recipe["values"].items() if k not in ignore},
                "choices": {k: v for k, v in recipe.get("choices", {}).items() if k not in ignore}}
        if not mismatches(kept, record["config"]):
            return True
    return False


def _matches(record: dict[str, Any], selectors: list[dict[str, Any]]) -> bool:
    return any(all(same(field(record["fields"], k), v) for k, v in sel.items()) for sel in selectors)


def _stats(values: list[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values)}


def _cell(spec: dict[str, Any], table: str, row: dict[str, Any], j: int, col: dict[str, Any],
          records: list[dict[str, Any]], recipes: dict[str, Any]) -> dict[str, Any]:
    metric = (row["metrics"][j] if "metrics" in row else row.get("metric") or col.get("metric") or spec["metric"])
    selectors = [{**col.get("match", {}), **alt} for alt in _alternatives(row.get("match"))]
    recipe_ids = row.get("recipes", spec.get("recipes", []))
    ignore = spec.get("ignore", [])
    need_finished = spec.get("finished", True)
    hits = [r for r in records if r["kind"] == spec["source"] and (r["finished"] or not need_finished)
            and (r["kind"] != "runs" or _recipe_ok(r, recipe_ids, ignore, recipes)) and _matches(r, selectors)]
    with_metric = [r for r in hits if isinstance(r["values"].get(metric), (int, float))]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in with_metric:
        groups.setdefault(r["key"], []).append(r)
    where = f"{table} {row['name']!r} / {col['name']!r}"
    if len(groups) > 1:
        raise UserError(f"{where}: runs of {len(groups)} different recipes map to this cell "
                        f"({describe_differences(groups)}); pass the runs of one recipe, or tell them apart in "
                        f"recipes.toml [paper_results.{table}]")
    paper = parse_paper(row["paper"][j] if j < len(row.get("paper", [])) else None)
    cell: dict[str, Any] = {"row": row["name"], "column": col["name"], "metric": metric, "ours": None,
                            "paper": paper, "diff": None, "combined_std": None, "exceeds": None, "seeds": [],
                            "runs": [], "estimate": False, "hardware": None,
                            "note": "" if with_metric or not hits else f"{len(hits)} input(s) without {metric!r}"}
    if not groups:
        return cell
    (group,) = groups.values()
    seeds = [r["seed"] for r in group if r["seed"] is not None]
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise UserError(f"{where}: seed {repeated[0]} twice ("
                        + " and ".join(r["path"] for r in group if r["seed"] == repeated[0])
                        + "); a copied or rerun folder would count twice: pass one of them")
    hardware = sorted({r.get("hardware") for r in group})
    if spec.get("same_hardware") and len(hardware) > 1:
        raise UserError(f"{where}: runs on different hardware ({' vs '.join(hardware)}); time per epoch is compared "
                        "only on one kind of hardware")
    scale = col.get("scale", spec.get("scale", 1.0))
    ours = _stats([r["values"][metric] * scale for r in group])
    cell.update(ours=ours, seeds=sorted(r["seed"] for r in group if r["seed"] is not None),
                runs=[r["path"] for r in group], estimate=any(r.get("estimate") for r in group),
                hardware=hardware[0])
    if paper is not None:
        cell["diff"] = ours["mean"] - paper["mean"]
        if ours["n"] > 1:
            cell["combined_std"] = math.hypot(ours["std"], paper["std"] or 0.0)
            cell["exceeds"] = abs(cell["diff"]) > cell["combined_std"]
    return cell


def build_table(records: list[dict[str, Any]], recipes: dict[str, Any], table: str) -> dict[str, Any]:
    """One paper table: every (row, column) cell of ``[paper_results.<table>]`` from ``records``."""
    spec = spec_of(recipes, table)
    rows = [{"name": row["name"], "cells": [_cell(spec, table, row, j, col, records, recipes)
                                            for j, col in enumerate(spec["columns"])]} for row in spec["rows"]]
    result = {"table": table, "caption": spec["caption"], "cite": spec["cite"], "digits": spec.get("digits", 2),
              "columns": [c["name"] for c in spec["columns"]], "rows": rows, "commands": spec.get("commands", [])}
    if spec.get("same_hardware"):
        hardware = sorted({c["hardware"] for r in rows for c in r["cells"] if c["hardware"]})
        if len(hardware) > 1:
            raise UserError(f"{table}: cells ran on different hardware ({' vs '.join(hardware)}); time per epoch "
                            "is compared only on one kind of hardware: pass the runs of one machine type")
    if "ratio_to" in spec:
        _add_ratios(result, spec["ratio_to"])
    return result


def _add_ratios(result: dict[str, Any], ref_column: str) -> None:
    """Each cell's ratio to the ``ref_column`` cell of its row, ours and the paper's (T16: time relative to CE)."""
    j_ref = result["columns"].index(ref_column)
    for row in result["rows"]:
        ref = row["cells"][j_ref]
        for cell in row["cells"]:
            cell["ratio"] = (cell["ours"]["mean"] / ref["ours"]["mean"]
                             if cell["ours"] and ref["ours"] and ref["ours"]["mean"] else None)
            cell["paper_ratio"] = (cell["paper"]["mean"] / ref["paper"]["mean"]
                                   if cell["paper"] and ref["paper"] else None)
    result["ratio_to"] = ref_column


def _num(x: float, digits: int) -> str:
    return f"{x:.{digits}f}".replace("-", "−")


def fmt_ours(cell: dict[str, Any], digits: int) -> str:
    o = cell["ours"]
    if o is None:
        return "–"
    spread = f" ± {_num(o['std'], digits)}" if o["std"] is not None else ""
    seeds = ",".join(map(str, cell["seeds"])) or "–"
    est = " (estimate)" if cell["estimate"] else ""
    return f"{_num(o['mean'], digits)}{spread} (n={o['n']}; seeds {seeds}){est}"


def fmt_paper(cell: dict[str, Any], digits: int) -> str:
    p = cell["paper"]
    if p is None:
        return "–"
    return f"{p['mean']:.{digits}f}" + (f" ± {p['std']:.{digits}f}" if p["std"] is not None else "")


def fmt_diff(cell: dict[str, Any], digits: int) -> str:
    if cell["diff"] is None:
        return "–"
    d = ("+" if cell["diff"] >= 0 else "") + _num(cell["diff"], digits)
    verdict = {None: "n=1, no verdict", True: "**> σ**", False: "≤ σ"}[cell["exceeds"]]
    return f"{d} ({verdict})"


def table_markdown(result: dict[str, Any]) -> str:
    """The paper's layout: one row per paper row; for each paper column ours, the paper's number and Δ."""
    digits = result["digits"]
    header = ["Method"] + [f"{c} {part}" for c in result["columns"] for part in ("ours", "paper", "Δ")]
    rows = [[row["name"]] + [x for cell in row["cells"]
                             for x in (fmt_ours(cell, digits), fmt_paper(cell, digits), fmt_diff(cell, digits))]
            for row in result["rows"]]
    md = f"## {result['caption']}\n\nPaper numbers: {result['cite']}. Δ = ours − paper; σ = √(std_ours² + " \
         "std_paper²); n=1 gives no verdict.\n\n" + markdown_table(header, rows)
    if "ratio_to" in result:
        parts = []
        for row in result["rows"]:
            for c in row["cells"]:
                if c["column"] != result["ratio_to"]:
                    ours = "–" if c["ratio"] is None else f"{c['ratio']:.3f}"
                    paper = "–" if c["paper_ratio"] is None else f"{c['paper_ratio']:.3f}"
                    parts.append(f"{c['column']} ours {ours}, paper {paper}")
        hardware = sorted({c["hardware"] for r in result["rows"] for c in r["cells"] if c["hardware"]})
        md += (f"\nRatio to {result['ratio_to']}: " + "; ".join(parts) + ". Hardware: "
               + (", ".join(hardware) or "–") + " (the paper does not state its hardware).\n")
    notes = [f"{c['row']} / {c['column']}: {c['note']}" for row in result["rows"] for c in row["cells"] if c["note"]]
    if notes:
        md += "\nNot filled: " + "; ".join(notes) + ".\n"
    return md


CSV_COLUMNS = ("table", "row", "column", "metric", "ours_mean", "ours_std", "n", "seeds", "paper_mean", "paper_std",
               "diff", "combined_std", "exceeds_combined_std", "estimate", "hardware", "ratio", "runs")


def table_csv(result: dict[str, Any]) -> str:
    """One line per cell (model × method), plain columns, in the spirit of timm's results/*.csv."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for row in result["rows"]:
        for c in row["cells"]:
            o, p = c["ours"] or {}, c["paper"] or {}
            w.writerow([result["table"], c["row"], c["column"], c["metric"], o.get("mean", ""),
                        "" if o.get("std") is None else o["std"], o.get("n", 0), " ".join(map(str, c["seeds"])),
                        p.get("mean", ""), "" if p.get("std") is None else p["std"],
                        "" if c["diff"] is None else c["diff"],
                        "" if c["combined_std"] is None else c["combined_std"],
                        "" if c["exceeds"] is None else c["exceeds"], c["estimate"], c["hardware"] or "",
                        "" if c.get("ratio") is None else c["ratio"], " ".join(c["runs"])])
    return buf.getvalue()


def table_status(result: dict[str, Any]) -> dict[str, Any]:
    """Counts of cells: with ours, beyond / within the combined std, without verdict, missing; and a status word."""
    cells = [c for r in result["rows"] for c in r["cells"] if c["paper"] is not None]
    have = [c for c in cells if c["ours"] is not None]
    counts = {"cells": len(cells), "ours": len(have), "differs": sum(c["exceeds"] is True for c in have),
              "within": sum(c["exceeds"] is False for c in have), "no_verdict": sum(c["exceeds"] is None for c in have),
              "missing": len(cells) - len(have)}
    status = ("missing" if not have else "differs" if counts["differs"] else "incomplete" if counts["missing"]
              else "no verdict (n = 1)" if counts["no_verdict"] else "reproduced")
    return {**counts, "status": status,
            "missing_cells": [f"{c['row']} / {c['column']}" for c in cells if c["ours"] is None]}


def reproduction_markdown(results: dict[str, dict[str, Any]]) -> str:
    """``REPRODUCTION.md``: per table what is reproduced, what differs, what is missing and how to make it."""
    md = ["# Reproduction status, table by table\n",
          "Written by `python -m analysis.collect RUNS... --paper all`. A cell is *reproduced* when ours (mean over "
          "seeds) is within the combined std of ours and the paper's; it *differs* when the difference exceeds it; "
          "one seed gives no verdict. Paper numbers: arXiv 2502.15798 (camera-ready numbering).\n",
          markdown_table(["Table", "status", "cells", "ours", "within σ", "beyond σ", "no verdict", "missing"],
                         [[t, s["status"], s["cells"], s["ours"], s["within"], s["differs"], s["no_verdict"],
                           s["missing"]] for t, s in ((t, table_status(r)) for t, r in results.items())])]
    for table, result in results.items():
        st = table_status(result)
        md.append(f"\n## {table}: {st['status']}\n\n{result['caption']} ({result['cite']}); "
                  f"the table: [{table}.md]({table}.md), [{table}.csv]({table}.csv).\n")
        beyond = [f"{c['row']} / {c['column']} ({fmt_diff(c, result['digits'])})"
                  for r in result["rows"] for c in r["cells"] if c["exceeds"]]
        if beyond:
            md.append("Differs: " + "; ".join(beyond) + ".\n")
        if st["missing_cells"]:
            which = (f"all {st['cells']} cells" if st["missing"] == st["cells"] else "; ".join(st["missing_cells"]))
            md.append(f"Missing: {which}.\n\nMade by:\n\n```bash\n"
                      + "\n".join(result["commands"]) + "\n```\n")
    return "\n".join(md)
