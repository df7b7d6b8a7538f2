"""Paper Figure 5 (App. L): logit distributions per method.

    python -m analysis.logits --checkpoint CE=ce.pth --checkpoint LS=ls.pth --checkpoint MaxSup=ms.pth \
        --dataset fmnist --out results/analysis

Three panels: (a) density of all logits per method on one shared x-range (the paper plots [-4, 4] on ImageNet;
default here: the 0.5–99.5 percentile range over all methods, or ``--xlim``), (b) histogram (50 bins) of the
per-sample share of near-zero logits |z| < ``--threshold`` (default 0.01, as in the authors' ``viz/logits.py``),
(c) scatter of the top-1 softmax probability against that share.
Writes ``<out>/logits.png`` and ``<out>/logits.json`` / ``.md``.
"""

from __future__ import annotations

if not __package__:  # run by path (python analysis/NAME.py): see analysis/_bootstrap.py
    import _bootstrap  # noqa: F401

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from analysis.common import (
    cached_arrays,
    load_models,
    markdown_table,
    pyplot,
    save_figure,
    script_parser,
    write_results,
)
from maxsup.cli import positive_int, run_cli
from maxsup.errors import UserError


def logit_stats(logits: torch.Tensor, threshold: float) -> dict[str, np.ndarray]:
    """Per-sample near-zero share (|z| < threshold) and top-1 probability; logits (N, K)."""
    z = logits.double()
    return {"near_zero_share": (z.abs() < threshold).double().mean(1).numpy(),
            "top1_prob": z.softmax(1).max(1).values.numpy()}


def get_args_parser() -> argparse.ArgumentParser:
    p = script_parser(__doc__, split="test")
    p.add_argument("--threshold", type=float, default=0.01, help="|z| below this counts as near zero")
    p.add_argument("--xlim", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="shared x-range of the density panel (paper: -4 4)")
    p.add_argument("--bins", type=positive_int, default=50, help="histogram bins")
    p.add_argument("--max-points", type=positive_int, default=2000, help="samples per method in the scatter panel")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Returns ``logits.json``: rows[name] = {logit_mean, logit_std, near_zero_share_mean, top1_prob_mean, ...}."""
    if args.xlim and not args.xlim[0] < args.xlim[1]:  # before the extraction, not numpy's error after it
        raise UserError(f"--xlim LOW HIGH needs LOW < HIGH, got {args.xlim[0]:g} {args.xlim[1]:g}")
    plt = pyplot()
    data: dict[str, dict[str, Any]] = {}
    for loaded in load_models(args):
        a = cached_arrays(loaded, args, args.split, require_head_match=True)
        data[loaded.name] = {"logits": a["logits"], **logit_stats(a["logits"], args.threshold)}
    flat = np.concatenate([d["logits"].flatten().numpy() for d in data.values()])
    xlim = tuple(args.xlim) if args.xlim else tuple(float(v) for v in np.percentile(flat, [0.5, 99.5]))
    if not xlim[0] < xlim[1]:
        xlim = (xlim[0] - 1.0, xlim[1] + 1.0)
    edges = np.linspace(*xlim, args.bins + 1)
    share_edges = np.linspace(0, 1, args.bins + 1)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    rng = np.random.default_rng(args.seed)
    rows: dict[str, Any] = {}
    for name, d in data.items():
        z = d["logits"].flatten().numpy()
        dens, _ = np.histogram(z, bins=edges, density=True)
        axes[0].plot(0.5 * (edges[1:] + edges[:-1]), dens, label=name)
        axes[1].hist(d["near_zero_share"], bins=share_edges, alpha=0.5, label=name)
        pick = rng.permutation(len(d["top1_prob"]))[: args.max_points]
        axes[2].scatter(d["near_zero_share"][pick], d["top1_prob"][pick], s=4, alpha=0.5, label=name)
        rows[name] = {"n": int(d["logits"].shape[0]), "num_classes": int(d["logits"].shape[1]),
                      "logit_mean": float(z.mean()), "logit_std": float(z.std()),
                      "in_xlim_share": float(((z >= xlim[0]) & (z <= xlim[1])).mean()),
                      "near_zero_share_mean": float(d["near_zero_share"].mean()),
                      "top1_prob_mean": float(d["top1_prob"].mean())}
    axes[0].set(xlim=xlim, xlabel="logit value", ylabel="density", title="(a) logit density")
    axes[1].set(xlabel=f"share of logits with |z| < {args.threshold:g}", ylabel="samples",
                title="(b) near-zero logits per sample")
    axes[2].set(xlabel=f"share of logits with |z| < {args.threshold:g}", ylabel="top-1 probability",
                title="(c) confidence vs near-zero share")
    for ax in axes:
        ax.legend(fontsize=8)
    png = save_figure(fig, Path(args.out) / "logits.png")
    result = {"script": "logits", "png": str(png), "panels": 3, "dataset": args.dataset, "split": args.split,
              "threshold": args.threshold, "xlim": list(xlim), "rows": rows}
    md = markdown_table(["Method", "logit mean", "logit std", f"share |z|<{args.threshold:g}", "top-1 prob"],
                        [[k, r["logit_mean"], r["logit_std"], r["near_zero_share_mean"], r["top1_prob_mean"]]
                         for k, r in rows.items()])
    write_results(args.out, "logits", result, f"# Logit statistics (Figure 5), {args.dataset} {args.split}\n\n{md}")
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    run_cli(main)
