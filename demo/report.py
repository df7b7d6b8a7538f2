"""The demo's report: per-seed collection, aggregation over seeds, paper-vs-miniature verdicts, paired differences
and ``results/demo/README.md``."""

from __future__ import annotations

import functools
import json
import math
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import torch
from recipe import (
    AUG_BASELINE,
    AUG_LABELS,
    AUG_SHORT,
    BACKBONE_LABELS,
    DEMO_CORRUPTIONS,
    DEMO_SEVERITIES,
    HELD_OUT,
    LABELS,
    LT_GROUPS,
    LT_LABELS,
    LT_RATIO,
    METRICS,
    PAIRED,
    PAIRED_METRICS,
    SOURCE,
)

from maxsup.errors import UserError
from maxsup.recipes import load_recipes, paper_cells
from maxsup.training import atomic_save, atomic_write


# --------------------------------------------------------------------------------------------------------------------
# Collecting results
# --------------------------------------------------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path} ({exc}); re-run the demo") from None


def last_log_line(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "log.txt").read_text().strip().splitlines()[-1])


def ckpt_name(backbone: str, loss: str) -> str:
    """Row label in the analysis outputs and file-name stem of its feature cache, e.g. ``ResNet-MaxSup``."""
    return f"{BACKBONE_LABELS[backbone]}-{LABELS[loss]}"


def collect_seed(seed_dir: Path, backbones: list[str], losses: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """{backbone: {loss: metrics}} of one seed from the analysis JSONs and the trainers' logs. Also saves each run's
    test logits (``<run>/test_logits.pt``: logits (N, K), labels (N,)) from the analysis feature cache."""
    a = seed_dir / "analysis"
    calib, feats = _read_json(a / "calibration.json")["rows"], _read_json(a / "feature_metrics.json")["rows"]
    transfer, decomp = _read_json(a / "linear_transfer.json")["rows"], _read_json(a / "decomposition.json")["rows"]
    extract = _read_json(a / "extract.json")["rows"]
    robust = _read_json(a / "robustness.json")["checkpoints"]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for bb in backbones:
        out[bb] = {}
        for loss in losses:
            name, run = ckpt_name(bb, loss), seed_dir / bb / loss
            log = last_log_line(run)
            arrays = torch.load(extract[name]["cache"], map_location="cpu", weights_only=True)
            atomic_save({"logits": arrays["logits"], "labels": arrays["labels"]}, run / "test_logits.pt")
            out[bb][loss] = {
                "acc": calib[name]["acc1"], "nll": calib[name]["nll"], "ece": calib[name]["ece_15"],
                "d_within_train": feats[name]["train"]["d_within"], "d_within_test": feats[name]["val"]["d_within"],
                "d_total_train": feats[name]["train"]["d_total"], "d_total_test": feats[name]["val"]["d_total"],
                "r2_train": feats[name]["train"]["r2"], "r2_test": feats[name]["val"]["r2"],
                "transfer_acc": transfer[name]["target"]["test_acc"],
                # the trainers log penalty_stats' batch mean over the last epoch's augmented training batches
                "misclassified_train_log": log.get("train_misclassified", log.get("misclassified")),
                "misclassified_train_final": decomp[name]["misclassified"],
                "corr_error": robust[name]["mean_corrupted"]["error"],
                "corr_nll": robust[name]["mean_corrupted"]["nll"], "corr_ece": robust[name]["mean_corrupted"]["ece"],
            }
    return out


def corruption_constants(seed_dirs: list[Path]) -> list[str]:
    """The corruption parameterisations ``analysis.robustness`` recorded for these seeds' runs (one text per distinct
    choice, e.g. CIFAR-10-C's constants at 28 px), so the report says which severities its Table 8 analogue used."""
    found = {ck.get("constants") for d in seed_dirs
             for ck in _read_json(d / "analysis" / "robustness.json")["checkpoints"].values()}
    return sorted(c for c in found if c)


def collect_long_tail(lt_dir: Path, losses: list[str]) -> dict[str, dict[str, float | None]]:
    """{loss: {overall, many, medium, few}} (%) of one seed from the trainer's last log line (None = empty group)."""
    out: dict[str, dict[str, Any]] = {}
    for loss in losses:
        log = last_log_line(lt_dir / loss)
        out[loss] = {"overall": log["test_acc1"], **{g: log.get(f"test_{g}_shot_acc1") for g in LT_GROUPS[1:]}}
    return out


def aggregate_long_tail(per_seed: list[dict[str, dict[str, float | None]]]) -> dict[str, Any]:
    """{loss: {group: {mean, std, values}}}; a group empty in any seed stays None."""
    result: dict[str, Any] = {}
    for loss in per_seed[0]:
        result[loss] = {}
        for g in LT_GROUPS:
            values = [s[loss][g] for s in per_seed]
            if any(v is None for v in values):
                result[loss][g] = None
                continue
            std = float(np.std(values, ddof=1)) if len(values) > 1 else None
            result[loss][g] = {"mean": float(np.mean(values)), "std": std, "values": values}
    return result


def aug_ckpt_name(method: str, loss: str) -> str:
    """Row label of a SMMix / Token Labeling run in the analysis outputs, e.g. ``ViT-SMMix-MaxSup``."""
    return f"{BACKBONE_LABELS['vit']}-{AUG_SHORT[method]}-{LABELS[loss]}"


AUG_METRICS = ("acc", "nll", "ece", "d_within_train", "d_within_test")


def collect_aug(seed_dir: Path, methods: list[str], losses: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """{method: {loss: metrics}} of one seed's SMMix / Token Labeling runs (``<seed>/analysis_aug``), with the plain
    CE ViT (the baseline) under ``"plain"`` as the reference row."""
    a = seed_dir / "analysis_aug"
    calib, feats = _read_json(a / "calibration.json")["rows"], _read_json(a / "feature_metrics.json")["rows"]

    def row(name: str) -> dict[str, float]:
        return {"acc": calib[name]["acc1"], "nll": calib[name]["nll"], "ece": calib[name]["ece_15"],
                "d_within_train": feats[name]["train"]["d_within"], "d_within_test": feats[name]["val"]["d_within"]}

    out = {"plain": {AUG_BASELINE[1]: row(ckpt_name(*AUG_BASELINE))}}
    for m in methods:
        out[m] = {loss: row(aug_ckpt_name(m, loss)) for loss in losses}
    return out


def aggregate(per_seed: list[dict[str, dict[str, float]]], metrics: tuple[str, ...] = METRICS
              ) -> dict[str, dict[str, dict[str, Any]]]:
    """{loss: {metric: {mean, std, values}}}; std is the sample std (ddof=1) over seeds, null for one seed."""
    result: dict[str, dict[str, dict[str, Any]]] = {}
    for loss in per_seed[0]:
        result[loss] = {}
        for metric in metrics:
            values = [float(s[loss][metric]) for s in per_seed]
            std = float(np.std(values, ddof=1)) if len(values) > 1 else None
            result[loss][metric] = {"mean": float(np.mean(values)), "std": std, "values": values}
    return result


# --------------------------------------------------------------------------------------------------------------------
# Paper vs miniature
# --------------------------------------------------------------------------------------------------------------------
# (claim, metric, ordering as (loss, relation to the next loss)..., where the paper's numbers are). The numbers are
# read from recipes.toml [paper_results.<table>] (analysis.tables.paper_cells, the cells analysis.collect fills):
# each source is (table, the cell's row / column / metric / selector values, a label for the README).
CLAIMS = [
    ("T2 d̄_within (train): CE > MaxSup > LS", "d_within_train", [("ce", ">"), ("maxsup", ">"), ("ls", "")],
     [("T2", {"column": "d̄_within Train"}, "ResNet-50 ImageNet")]),
    ("T2 d̄_within (test): CE > MaxSup > LS", "d_within_test", [("ce", ">"), ("maxsup", ">"), ("ls", "")],
     [("T2", {"column": "d̄_within Val"}, "ResNet-50 ImageNet val")]),
    ("T2 R² (train): MaxSup > LS > CE", "r2_train", [("maxsup", ">"), ("ls", ">"), ("ce", "")],
     [("T2", {"column": "R² Train"}, "ResNet-50 ImageNet")]),
    ("T2 R² (test): MaxSup > LS > CE", "r2_test", [("maxsup", ">"), ("ls", ">"), ("ce", "")],
     [("T2", {"column": "R² Val"}, "ResNet-50 ImageNet val")]),
    ("T3 transfer: CE ≈ MaxSup > LS", "transfer_acc", [("ce", "≈"), ("maxsup", ">"), ("ls", "")],
     [("T3", {"column": "CIFAR-10"}, "CIFAR-10 probe (fraction)")]),
    ("Accuracy: MaxSup ≥ LS > CE", "acc", [("maxsup", "≥"), ("ls", ">"), ("ce", "")],
     [("T4", {"column": "IN R-50"}, "ResNet-50 ImageNet (T4)"), ("T5", {"column": "DeiT-S"}, "DeiT-S (T5)")]),
    ("T8 ECE (Corr): CE > LS > MaxSup", "corr_ece", [("ce", ">"), ("ls", ">"), ("maxsup", "")],
     [("T8", {"row": "ECE (Corr)"}, "ResNet-50 CIFAR-10-C")]),
    ("T8 NLL (Corr): CE > MaxSup > LS", "corr_nll", [("ce", ">"), ("maxsup", ">"), ("ls", "")],
     [("T8", {"row": "NLL (Corr)"}, "ResNet-50 CIFAR-10-C")]),
    ("T8 error (Corr): MaxSup ≈ LS ≈ CE", "corr_error", [("maxsup", "≈"), ("ls", "≈"), ("ce", "")],
     [("T8", {"row": "Error (Corr)"}, "ResNet-50 CIFAR-10-C")]),
]
# Table 7 at the demo's imbalance ratio (LT_RATIO), test split; the metrics are summary["long_tail"]'s groups.
_LT_SOURCE = f"ResNet-32 CIFAR-10-LT, ratio {LT_RATIO}"
LT_CLAIMS = [
    ("T7 overall: MaxSup > LS > Focal", "overall", [("maxsup", ">"), ("ls", ">"), ("focal", "")],
     [("T7", {"column": "Overall", "metric": "acc1", "imb_ratio": LT_RATIO}, _LT_SOURCE)]),
    ("T7 many-shot: MaxSup > LS > Focal", "many", [("maxsup", ">"), ("ls", ">"), ("focal", "")],
     [("T7", {"column": "Many", "metric": "test_many_shot_acc1", "imb_ratio": LT_RATIO}, _LT_SOURCE)]),
    ("T7 medium-shot: Focal > LS > MaxSup", "medium", [("focal", ">"), ("ls", ">"), ("maxsup", "")],
     [("T7", {"column": "Medium", "metric": "test_medium_shot_acc1", "imb_ratio": LT_RATIO}, _LT_SOURCE)]),
]


@functools.lru_cache(maxsize=1)
def _recipes() -> dict[str, Any]:
    return load_recipes()


def paper_numbers(table: str, where: dict[str, Any], losses: list[str]) -> dict[str, float]:
    """{loss: the paper's number} of the cells of ``table`` that satisfy ``where`` (keys ``row``, ``column``,
    ``metric`` or selector fields), one per loss (the selector's ``loss`` or ``method``), from recipes.toml."""
    out: dict[str, float] = {}
    for cell in paper_cells(_recipes(), table):
        got = {"row": cell["row"], "column": cell["column"], "metric": cell["metric"], **cell["selector"]}
        method = cell["selector"].get("loss", cell["selector"].get("method"))
        if method in losses and cell["paper"] and all(got.get(k) == v for k, v in where.items()):
            out[method] = cell["paper"]["mean"]
    if set(out) != set(losses):
        raise UserError(f"recipes.toml [paper_results.{table}] has no cell {where} for "
                        f"{sorted(set(losses) - set(out))}")
    return out


def paper_text(sources: list[tuple[str, dict[str, Any], str]], order: list[tuple[str, str]]) -> str:
    """``ResNet-50 ImageNet: 0.311 > 0.293 > 0.263`` for each source, in the claim's order and relations."""
    losses = [loss for loss, _ in order]
    parts = []
    for table, where, label in sources:
        digits = paper_cells(_recipes(), table)[0]["digits"]
        nums = paper_numbers(table, where, losses)
        parts.append(f"{label}: " + " ".join(f"{nums[loss]:.{digits}f} {rel}" for loss, rel in order).strip())
    return "; ".join(parts)


LT_PAIRED = (*PAIRED, ("maxsup", "focal"))
APPROX_PP = 0.5  # "≈" for accuracies: within 0.5 percentage points, or within the summed seed std if larger
FRACTION_METRICS = ("corr_error",)  # errors as fractions: "≈" is within 0.005, the same 0.5 points


def check_relation(a: dict[str, Any], b: dict[str, Any], rel: str, approx: float = APPROX_PP) -> bool:
    tol = max(approx, (a["std"] or 0.0) + (b["std"] or 0.0))
    diff = a["mean"] - b["mean"]
    return {">": diff > 0, "≥": diff > -tol, "≈": abs(diff) <= tol}[rel]


def paired_differences(backbones: dict[str, dict[str, Any]], metrics: tuple[str, ...] = PAIRED_METRICS,
                       pairs: tuple[tuple[str, str], ...] = PAIRED) -> list[dict[str, Any]]:
    """A − B per seed for each pair in ``pairs`` and each metric: every method saw the same seeds and data order, so
    the per-seed difference removes the seed-to-seed variation the methods share. Returns rows with the differences,
    their mean and a two-sided 95 % Student-t interval (None with one seed). A metric that is None for either method
    (an empty long-tail group) has no row."""
    from scipy import stats

    rows = []
    for bb, methods in backbones.items():
        for a, b in pairs:
            if a not in methods or b not in methods:
                continue
            for metric in metrics:
                if methods[a][metric] is None or methods[b][metric] is None:
                    continue
                diff = np.subtract(methods[a][metric]["values"], methods[b][metric]["values"])
                mean, n = float(diff.mean()), len(diff)
                half = None if n < 2 else float(stats.t.ppf(0.975, n - 1) * diff.std(ddof=1) / np.sqrt(n))
                ci = None if half is None else [mean - half, mean + half]
                rows.append({"backbone": bb, "a": a, "b": b, "metric": metric, "differences": diff.tolist(),
                             "mean": mean, "ci95": ci,
                             "resolved": None if ci is None else bool(ci[0] > 0 or ci[1] < 0)})
    return rows


def verdicts(backbones: dict[str, dict[str, Any]], claims: list[tuple] = CLAIMS) -> list[dict[str, Any]]:
    """One row per claim and backbone; a claim whose metric is missing for a method (None) is left out."""
    rows = []
    for claim, metric, order, sources in claims:
        paper = paper_text(sources, order)
        approx = APPROX_PP / 100 if metric in FRACTION_METRICS else APPROX_PP
        for bb, methods in backbones.items():
            stats = {loss: methods[loss][metric] for loss, _ in order}
            if any(v is None for v in stats.values()):
                continue
            agrees = all(check_relation(stats[l1], stats[l2], rel, approx)
                         for (l1, rel), (l2, _) in zip(order, order[1:], strict=False))
            observed = sorted(stats, key=lambda k: -stats[k]["mean"])
            # with several seeds: is every strict gap (">", "≥") in the claim larger than the two methods' summed
            # std? None with one seed, or when the claim has only "≈" gaps
            pairs = [(a, b) for (a, rel), (b, _) in zip(order, order[1:], strict=False) if rel != "≈"]
            separated = None if stats[order[0][0]]["std"] is None or not pairs else all(
                abs(stats[a]["mean"] - stats[b]["mean"]) > stats[a]["std"] + stats[b]["std"] for a, b in pairs)
            rows.append({"claim": claim, "backbone": bb, "metric": metric, "paper": paper, "agrees": agrees,
                         "gaps_exceed_seed_std": separated,
                         "values": {k: v["mean"] for k, v in stats.items()},
                         "observed_order": " > ".join(LT_LABELS[k] for k in observed)})
    return rows


def add_long_tail_verdicts(summary: dict[str, Any]) -> None:
    """Add the Table 7 claims to ``summary["verdicts"]`` and the paired differences of the long-tailed runs as
    ``summary["long_tail_paired"]`` (split label "resnet LT")."""
    split = {"resnet LT": summary["long_tail"]}
    summary["verdicts"] += verdicts(split, LT_CLAIMS)
    summary["long_tail_paired"] = paired_differences(split, LT_GROUPS, LT_PAIRED)


# --------------------------------------------------------------------------------------------------------------------
# README
# --------------------------------------------------------------------------------------------------------------------
def _pm(stat: dict[str, Any], digits: int) -> str:
    s = f"{stat['mean']:.{digits}f}"
    return s + (f" ± {stat['std']:.{digits}f}" if stat["std"] is not None else "")


def _table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


AUG_TITLE = "## SMMix / Token Labeling (extension, not in the paper)\n"


def aug_section(aug: dict[str, Any], seeds: list[int], heading: str = AUG_TITLE) -> list[str]:
    """Markdown of the SMMix / Token Labeling runs: accuracy, ECE and d̄_within per method and loss."""
    seeds = aug.get("seeds", seeds)
    n = len(seeds)
    rows = [[AUG_LABELS.get(m, "plain (no mixing)"), LABELS[loss], _pm(s["acc"], 2),
             _pm(s["nll"], 3), _pm(s["ece"], 4), _pm(s["d_within_train"], 3), _pm(s["d_within_test"], 3)]
            for m, losses in aug["results"].items() for loss, s in losses.items()]
    out = [heading,
           f"The ViT recipe above again, same seeds ({seeds}; "
           + ("mean ± sample std" if n > 1 else "one seed, no ± and no verdict") + "), with a ViT training system "
           "the paper does not combine with MaxSup: **an extension of ours, not a claim of the paper.** "
           f"Test split of the source classes; d̄_within on {aug['probe_per_class']} training images per class and "
           "the test split.\n",
           "- **SMMix** (Chen et al., ICCV 2023): `… --smmix --mixup 0.8` (the official switch: half of the batches "
           "SMMix on the 4×4 token grid, half Mixup α 0.8).",
           "- **MixToken + token labels** (Token Labeling, Jiang et al., NeurIPS 2021): `… --mixtoken --data-set "
           "FOLDER --data-path <source-class image folder> --classes '' --token-label-data <maps>`, with `--mixup 0 "
           "--cutmix 0` as the recipe already has. The image folder is `data/prepare_fashion_mnist.py --classes 0 2 "
           "4 6 8` (the same images as PNGs; the trainer normalises folder images with ImageNet's mean/std instead of "
           "Fashion-MNIST's, and the folder's sampling order differs from the IDX dataset's). The maps are "
           "`data/make_token_labels.py --checkpoint <the same seed's plain CE ResNet> --topk 5`: **the teacher is the "
           "demo's own CE ResNet** (its classifier at each position of its last 7×7 feature map, "
           "`maxsup.models.dense_class_scores`, pooled to the 4×4 token grid) on the training images it was trained "
           "on; "
           "the paper's maps come from NFNet-F6 on held-out ImageNet images. A CNN, because its logits are the "
           "average of those per-position scores; a CLS-token ViT's head never saw patch tokens (with the CE ViT as "
           "teacher the majority token label matched the image label for 36 % of seed 0's images, 79 % with the "
           "ResNet). Evaluation uses `x_cls + 0.5 · max over tokens of x_aux`, as LV-ViT.\n",
           _table(["System", "Loss", "test acc (%)", "NLL", "ECE (15 bins)", "d̄_within train", "d̄_within test"],
                  rows)]
    if aug.get("paired") and n > 1:
        out += [f"Paired differences within each system (same seeds; 95 % Student-t interval over {n} seeds):\n",
                _paired_table(aug["paired"], "System", AUG_LABELS)]
    return out


def _paired_table(paired: list[dict[str, Any]], group: str, group_labels: dict[str, str] | None = None) -> str:
    """Markdown of :func:`paired_differences` rows: per-seed differences, their mean, 95 % interval, resolved."""
    rows = []
    for r in paired:
        digits = 2 if r["metric"] in ("acc", "transfer_acc", *LT_GROUPS) else 4
        ci = "n/a (1 seed)" if r["ci95"] is None else f"[{r['ci95'][0]:+.{digits}f}, {r['ci95'][1]:+.{digits}f}]"
        res = {None: "n/a", True: "yes", False: "no"}[r["resolved"]]
        rows.append([(group_labels or {}).get(r["backbone"], r["backbone"]),
                     f"{LT_LABELS[r['a']]} − {LT_LABELS[r['b']]}",
                     r["metric"], ", ".join(f"{d:+.{digits}f}" for d in r["differences"]),
                     f"{r['mean']:+.{digits}f}", ci, res])
    return _table([group, "Pair", "metric", "per seed", "mean", "95 % interval", "resolved"], rows)


REFERENCE_METRICS = (("acc", 2), ("nll", 3), ("ece", 4), ("d_within_test", 3), ("r2_test", 3),
                     ("transfer_acc", 2), ("corr_error", 3), ("corr_ece", 3))


def compare_to_reference(summary: dict[str, Any], reference: dict[str, Any]) -> list[dict[str, Any]]:
    """This run beside the committed reference, per backbone / method / headline metric present in both: both
    means and stds, the difference, and whether it exceeds the combined std √(std_run² + std_ref²) (None when
    neither has a spread, i.e. one seed each)."""
    rows = []
    for bb, methods in summary["backbones"].items():
        for loss, stats in methods.items():
            ref = reference.get("backbones", {}).get(bb, {}).get(loss)
            if ref is None:
                continue
            for metric, digits in REFERENCE_METRICS:
                a, b = stats.get(metric), ref.get(metric)
                if a is None or b is None:
                    continue
                diff = a["mean"] - b["mean"]
                spread = math.hypot(a["std"] or 0.0, b["std"] or 0.0)
                rows.append({"backbone": bb, "loss": loss, "metric": metric, "digits": digits, "run": a, "ref": b,
                             "diff": diff, "exceeds": None if a["std"] is None and b["std"] is None
                             else abs(diff) > spread})
    return rows


def reference_section(summary: dict[str, Any], reference: dict[str, Any], link: str) -> list[str]:
    """Markdown: this run beside the committed reference (``link``: its README, relative to this one)."""
    n_ref, n = len(reference.get("seeds", [])), len(summary["seeds"])
    head = [f"## This run beside the committed reference ([{link}]({link}), {n_ref} seeds)\n"]
    run_scale, ref_scale = summary["config"].get("scale"), reference.get("config", {}).get("scale")
    if run_scale != ref_scale:
        return head + [f"Not compared: this run is scale `{run_scale}`, the reference scale `{ref_scale}`.\n"]
    rows = compare_to_reference(summary, reference)
    verdict = {None: "n/a (one seed each)", True: "**yes**", False: "no"}
    table = _table(["Backbone", "Method", "metric", f"this run (n={n})", f"reference (n={n_ref})", "difference",
                    "beyond combined std"],
                   [[r["backbone"], LABELS.get(r["loss"], r["loss"]), r["metric"], _pm(r["run"], r["digits"]),
                     _pm(r["ref"], r["digits"]), f"{r['diff']:+.{r['digits']}f}", verdict[r["exceeds"]]]
                    for r in rows])
    return head + [f"Both at scale `{run_scale}`. `beyond combined std` compares the difference with √(std_run² + "
                   "std_reference²) over seeds (with one seed here, the reference's seed spread alone).\n", table]


def write_readme(out: Path, summary: dict[str, Any], figures: dict[str, str],
                 reference: dict[str, Any] | None = None, reference_link: str = "") -> None:
    """``<out>/README.md``; with ``reference`` (the committed summary.json), a section puts this run beside it."""
    cfg, backbones = summary["config"], summary["backbones"]
    tm = cfg["timing"]
    n = len(summary["seeds"])
    spread = "mean ± sample std over seeds" if n > 1 else "one seed, so no ± column"
    arch = {"resnet": "CIFAR ResNet-10, width 16", "vit": "tiny ViT (patch 7, width 64, 2 blocks)"}
    md = ["# `make demo`: CE vs LS vs MaxSup in miniature (Fashion-MNIST, CPU)\n",
          f"Generated by `{cfg['command']}` on {cfg['date']} ({n} seed{'s' * (n > 1)}: {summary['seeds']}, scale "
          f"`{cfg['scale']}`; {spread}) on {cfg['machine']}. CPU time: training "
          f"{tm['train_cpu_min_sum']:.1f} min summed over the "
          f"{tm['runs_trained_now'] + tm['runs_reused'] - tm['train_runs_without_record']} runs with a timing record, "
          f"analysis {tm['analysis_cpu_min']:.1f} min; wall "
          f"time of this invocation {tm['invocation_wall_min']:.1f} min with {cfg['jobs']} jobs in parallel "
          f"({tm['runs_trained_now']} runs trained, {tm['runs_reused']} reused"
          + (f", {tm['train_runs_without_record']} of them without a timing record" if tm["train_runs_without_record"]
             else "") + ").\n",
          f"**Regenerate this version:** `{cfg['command']}` (finished runs in "
          f"`{cfg.get('runs_dir', 'results/demo/runs')}/` are reused).\n",
          "## Headline (test split of the source classes; transfer = linear probe on the held-out classes)\n",
          _table(["Backbone", "Method", "acc (%)", "ECE", "d̄_within test", "R² test", "transfer acc (%)"],
                 [[bb, LABELS[m], _pm(s["acc"], 2), _pm(s["ece"], 3), _pm(s["d_within_test"], 3),
                   _pm(s["r2_test"], 3), _pm(s["transfer_acc"], 2)]
                  for bb, methods in backbones.items() for m, s in methods.items()]),
          *(reference_section(summary, reference, reference_link) if reference is not None else []),
          "## Setup\n",
          f"Pretraining on the Fashion-MNIST source classes {SOURCE} (T-shirt, Pullover, Coat, Shirt, Bag); the "
          f"held-out classes {HELD_OUT} are only seen by the transfer probe. Every method uses the same recipe and "
          "seed; nothing is tuned per method. LS and MaxSup use α rising linearly 0.1 → 0.2 over the epochs.\n",
          f"- **resnet**: `{shlex.join(['Conv/common_resnet/train.py', *cfg['recipes']['resnet']])} --loss L --seed S` "
          "(its README's small CPU recipe: 1,000 training images per class, 8 epochs, SGD + cosine, RandomCrop(28, "
          "pad 4) + flip, 1 intra-op thread).",
          f"- **vit**: `{shlex.join(['bash', 'Deit/train_with_MaxSup.sh', *cfg['recipes']['vit']])} --loss L --seed S` "
          "(the script's embedded default: a tiny ViT on all 30k source images, 5 epochs, AdamW, RandomCrop(28, "
          "pad 4) + flip, no RandAugment or erasing; its MaxSup run is this set's MaxSup run).",
          *([f"- Scale `{cfg['scale']}` appends `{shlex.join(cfg['scale_overrides']['resnet'])}` (resnet), "
              f"`{shlex.join(cfg['scale_overrides']['vit'])}` (vit) and "
              f"`{shlex.join(cfg['scale_overrides']['linear_transfer'])}` (linear_transfer)."]
            if any(cfg["scale_overrides"].values()) else []),
          "- Models are evaluated at the last epoch (`checkpoint.pth`), never selected on the test set.\n",
          "**Why this recipe.** LS and MaxSup differ only on training samples whose top-1 prediction is wrong "
          "(paper Cor. 3.4: LS's error-amplification term vanishes on correct samples). Probe runs at 97 % train "
          "accuracy left only ~3 % such samples, against ~20 % for ImageNet ResNet-50 under augmentation, so the two "
          "losses could barely differ. Both recipes here are small models on short schedules that leave many "
          "training samples misclassified; measured in the last epoch (mean over methods): "
          + ", ".join(f"{bb} {100 * np.mean([s['misclassified_train_log']['mean'] for s in m.values()]):.0f} %"
                      for bb, m in backbones.items())
          + ". The tables report it per method: `log` is the mean over the last epoch's augmented training batches "
          "(the trainers' `misclassified`, from `maxsup.penalty_stats`), `final` is the final model on "
          f"{cfg['probe_per_class']} clean training images per class.\n"]
    for bb, methods in backbones.items():
        md.append(f"## {bb}: {arch[bb]}\n")
        md.append(_table(
            ["Method", "test acc (%)", "NLL", "ECE (15 bins)", "train misclassified (log)",
             "train misclassified (final)"],
            [[LABELS[m], _pm(s["acc"], 2), _pm(s["nll"], 3), _pm(s["ece"], 4), _pm(s["misclassified_train_log"], 3),
              _pm(s["misclassified_train_final"], 3)] for m, s in methods.items()]))
        md.append("\n**Table 2 analogue** (penultimate features, cosine distance, Kornblith et al. 2021; train = "
                  f"{cfg['probe_per_class']} images per class, test = {cfg['test_images']}):\n")
        md.append(_table(["Method", "d̄_within train", "d̄_within test", "d̄_total train", "d̄_total test",
                          "R² train", "R² test"],
                         [[LABELS[m]] + [_pm(s[k], 4) for k in ("d_within_train", "d_within_test", "d_total_train",
                                                                "d_total_test", "r2_train", "r2_test")]
                          for m, s in methods.items()]))
        md.append(f"\n**Table 3 analogue**: linear probe (L2 logistic regression, λ chosen on a 20 % validation "
                  f"split) on frozen features of the held-out classes {HELD_OUT} ({cfg['probe_per_class']} training "
                  f"images per class; test = {cfg['test_images']}); chance is 20 %.\n")
        md.append(_table(["Method", "transfer acc (%)"], [[LABELS[m], _pm(s["transfer_acc"], 2)]
                                                          for m, s in methods.items()]))
    md.append("## Table 8 analogue: Fashion-MNIST-C\n")
    md.append(f"`python -m analysis.robustness` on {cfg['robustness_per_class']} test images per source class, "
              f"corruptions {', '.join(DEMO_CORRUPTIONS)} (corrupt-tta, seeded per image) at severities "
              f"{', '.join(map(str, DEMO_SEVERITIES))}"
              + "".join(f"; {c}" for c in cfg.get("corruption_constants", []))
              + "; (Corr) is the mean over corruptions and severities. Lower "
              "is better. Paper (T8, CIFAR-10-C, ResNet-50, MaxSup / LS / CE): "
              + "; ".join(f"{name} " + " / ".join(f"{v:.3f}" for v in paper_numbers(
                  "T8", {"row": row}, ["maxsup", "ls", "ce"]).values())
                          for name, row in (("error", "Error (Corr)"), ("ECE", "ECE (Corr)"))) + ".\n")
    md.append(_table(["Backbone", "Method", "Error (Clean)", "Error (Corr)", "NLL (Corr)", "ECE (Corr)"],
                     [[bb, LABELS[m], _pm({"mean": 1 - s["acc"]["mean"] / 100,
                                           "std": None if s["acc"]["std"] is None else s["acc"]["std"] / 100}, 3),
                       _pm(s["corr_error"], 3), _pm(s["corr_nll"], 3), _pm(s["corr_ece"], 3)]
                      for bb, methods in backbones.items() for m, s in methods.items()]))
    if summary.get("long_tail"):
        md.append(f"## Table 7 analogue: long-tailed source classes (imbalance ratio {LT_RATIO})\n")
        md.append(f"The resnet recipe with `--imb-ratio {LT_RATIO}` (a seeded subset, the same for every loss), "
                  "evaluated on the balanced test split. Many-shot: > 100 training images, few-shot: < 20, "
                  "`n/a` = no class in the group. Paper (T7, CIFAR-10-LT, ResNet-32, ratio "
                  f"{LT_RATIO}, test, overall): "
                  + ", ".join(f"{LT_LABELS[k]} {v:.1f}" for k, v in paper_numbers(
                      "T7", {"column": "Overall", "metric": "acc1", "imb_ratio": LT_RATIO},
                      ["focal", "ls", "maxsup"]).items()) + ".\n")
        md.append(_table(["Method", "overall acc (%)", "many (%)", "medium (%)", "few (%)"],
                         [[LT_LABELS[m]] + ["n/a" if s[g] is None else _pm(s[g], 2) for g in LT_GROUPS]
                          for m, s in summary["long_tail"].items()]))
        md.append("\nPaired differences per seed (same seeds and subset for every loss; groups with no class are "
                  "left out):\n")
        md.append(_paired_table(summary.get("long_tail_paired", []), "Split"))
    md.append("## Paired differences (the verdict to trust)\n")
    md.append("Every method sees the same seeds and data order, so methods are compared by their difference *per "
              "seed*, with the mean and a 95 % Student-t interval over seeds. A rerun of seed 0 on a fresh machine "
              "moved ResNet accuracies by up to 0.6 points, as much as the method gaps, so one seed settles nothing: "
              "`SEEDS=5 make demo` is the setting for a verdict. `resolved` = the interval excludes 0.\n")
    md.append(_paired_table(summary["paired"], "Backbone"))
    md.append(f"## Figures (seed {summary['seeds'][0]}, test images of the source classes)\n")
    for key, title in (("gradcam", "Grad-CAM for the true class; row 1 the inputs, then one row per backbone and "
                                   "method (Figure 2 analogue)"),
                       ("logits", "Logit distributions (Figure 5 analogue)"),
                       ("projection", "Penultimate features of T-shirt / Pullover / Coat projected on the plane of "
                                      "their class templates (Figure 3 analogue)"),
                       ("calibration", "Reliability diagrams (15 bins)")):
        if key in figures:
            md.append(f"**{title}**\n\n![{key}]({figures[key]})\n")
    md.append("## Paper vs. miniature\n")
    md.append(f"`>` compares means; `≈` means within {APPROX_PP} percentage points ({APPROX_PP / 100} for errors "
              "given as fractions), or the summed seed std if larger; `≥` means `>` or `≈`. Values are means over "
              "seeds. T8 rows use the Fashion-MNIST-C table above, T7 rows the long-tailed runs (`resnet LT`).\n")
    rows = []
    for v in summary["verdicts"]:
        digits = 2 if v["metric"] in ("acc", "transfer_acc", *LT_GROUPS) else 3
        nums = ", ".join(f"{LT_LABELS[k]} {x:.{digits}f}" for k, x in v["values"].items())
        sep = {None: "n/a (1 seed)" if n == 1 else "n/a (≈ only)", True: "yes", False: "no"}[v["gaps_exceed_seed_std"]]
        rows.append([v["claim"], v["paper"], v["backbone"], nums, v["observed_order"],
                     "**yes**" if v["agrees"] else "**no**", sep])
    md.append(_table(["Paper claim", "paper numbers", "backbone", "miniature", "miniature order", "agrees",
                      "gaps > seed std"], rows))
    n_yes = sum(v["agrees"] for v in summary["verdicts"])
    md.append(f"\n{n_yes} of {len(summary['verdicts'])} claim/backbone pairs agree with the paper's ordering. "
              "`gaps > seed std` says whether every strict gap (`>`, `≥`) the claim relies on exceeds the two "
              "methods' summed standard deviation over seeds; where it does not, the ordering is not resolved by "
              "this many seeds. A disagreement is a finding of this miniature (small models, a few epochs, "
              "5 classes of 28×28 images), not evidence about ImageNet; the recipe was not tuned per method.\n")
    if "aug" in summary:
        md.extend(aug_section(summary["aug"], summary["seeds"]))
    md.append("## Files\n")
    md.append("- `summary.json`: config, seeds, and per backbone/method each metric's mean, std and per-seed values "
              "(accuracies in %, ECE in [0, 1], misclassified as fractions), plus the verdicts above.\n"
              "- `runs/` (not committed): checkpoints, trainer logs, analysis JSON/Markdown, and each run's test "
              "logits `test_logits.pt`; the reported ECE equals `maxsup.expected_calibration_error` on them.\n")
    atomic_write(out / "README.md", "\n".join(md))
