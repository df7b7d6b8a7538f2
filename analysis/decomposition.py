"""Corollary 3.4: how much of the LS penalty is regularization and how much is error amplification.

    python -m analysis.decomposition --checkpoint LS=ls.pth --checkpoint MaxSup=ms.pth --dataset fmnist \
        --out results/analysis

For each checkpoint (logits z, ground truth g), with ``maxsup.ls_decomposition`` (α folded out):
regularization = (1/K)·Σ_{z_m < z_g}(z_g − z_m) ≥ 0, error amplification = (1/K)·Σ_{z_n > z_g}(z_g − z_n) ≤ 0.
Error amplification is exactly zero on correctly classified samples, so the two losses differ only on the
``misclassified`` share, where LS keeps lowering z_g while MaxSup penalises z_max instead (Paper §3, Eq. 9).
Writes ``<out>/decomposition.json`` / ``.md``.
"""

from __future__ import annotations

if not __package__:  # run by path (python analysis/NAME.py): see analysis/_bootstrap.py
    import _bootstrap  # noqa: F401

import argparse
from typing import Any

import torch

from analysis.common import (
    cached_arrays,
    load_models,
    markdown_table,
    script_parser,
    write_results,
)
from maxsup import label_smoothing_penalty, ls_decomposition, maxsup_penalty
from maxsup.cli import run_cli


def decompose(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Means over all, correct and misclassified samples; logits (N, K), labels (N,)."""
    dec = ls_decomposition(logits, labels)
    wrong = logits.argmax(1) != labels

    def mean(t: torch.Tensor, mask: torch.Tensor | None = None) -> float:
        t = t if mask is None else t[mask]
        return float(t.double().mean()) if t.numel() else 0.0

    reg, err = dec["regularization"], dec["error_amplification"]
    return {
        "n": int(labels.numel()),
        "misclassified": float(wrong.double().mean()),
        "regularization": mean(reg),
        "error_amplification": mean(err),
        "regularization_correct": mean(reg, ~wrong),
        "error_amplification_correct": mean(err, ~wrong),
        "regularization_misclassified": mean(reg, wrong),
        "error_amplification_misclassified": mean(err, wrong),
        "ls_penalty": mean(label_smoothing_penalty(logits, labels)),
        "maxsup_penalty": mean(maxsup_penalty(logits)),
    }


def get_args_parser() -> argparse.ArgumentParser:
    return script_parser(__doc__, split="test")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Returns ``decomposition.json``: rows[name] = :func:`decompose` of the split."""
    rows = {}
    for loaded in load_models(args):
        a = cached_arrays(loaded, args, args.split, require_head_match=True)
        rows[loaded.name] = decompose(a["logits"], a["labels"])
    result = {"script": "decomposition", "dataset": args.dataset, "split": args.split, "rows": rows}
    md = markdown_table(
        ["Method", "misclassified", "regularization", "error ampl.", "error ampl. (correct)",
         "error ampl. (misclassified)", "LS penalty", "MaxSup penalty"],
        [[k, r["misclassified"], r["regularization"], r["error_amplification"], r["error_amplification_correct"],
          r["error_amplification_misclassified"], r["ls_penalty"], r["maxsup_penalty"]] for k, r in rows.items()])
    write_results(args.out, "decomposition", result,
                  f"# LS decomposition (Corollary 3.4), {args.dataset} {args.split}\n\n{md}\n"
                  "Terms are per-sample means with α folded out; error amplification is ≤ 0 and vanishes on "
                  "correctly classified samples.\n")
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    run_cli(main)
