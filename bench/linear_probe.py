"""Linear-probe sweep: our preconditioned scipy L-BFGS-B vs scikit-learn's warm-started LogisticRegression.

Convergence is checked, not assumed: for every λ both solutions are scored on the same float64 objective
(``maxsup.linear_probe.probe_objective``, computed with torch autograd: mean CE + λ/2·‖W‖² and the norm of its
gradient), and the JSON reports ``max_rel_objective_gap`` = max over the common λ of (scipy objective − sklearn
objective) / sklearn objective (negative = ours lower), and ``selected_acc_diff`` = the validation-accuracy
difference at the λ each solver selects. scikit-learn runs with ``--sklearn-max-iter`` (default 1000) and tol 1e-8,
so it is the converged reference.

Runs the full Kornblith sweep (45 log-spaced λ in [1e-6, 1e5], Paper Table 12) on 10,000 × 2048 features with
10 classes, once per solver, and scores every fitted model on the same validation split. By default scikit-learn
fits every 5th λ of the grid (still warm-started, including the weakest, 1e-6) and ``ratio`` compares seconds per λ;
``--sklearn-stride 1`` runs its full sweep too. Our solver stops on the certified relative gap ``--gap`` and
reports its iterations per λ. Features are a seeded synthetic stand-in for ResNet-50 ``avgpool`` outputs
(non-negative, low-rank class structure plus noise), so the benchmark needs no checkpoint.
Ends with one JSON line; ``ratio`` = sklearn seconds per λ / scipy seconds per λ.

    python bench/linear_probe.py                       # defaults: n=10000, dim=2048, classes=10
    python bench/linear_probe.py --n 4000 --dim 512 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from maxsup.linear_probe import (
    PROBE_GAP,
    PROBE_MAX_ITER,
    SOLVERS,
    fit_sweep,
    probe_objective,
    regularization_grid,
    sweep_accuracy,
)


def synthetic_features(n: int, dim: int, num_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) non-negative float32 features with a 64-d class signal under heavy noise, and (n,) labels."""
    rng = np.random.default_rng(seed)
    latent = 64
    proj = rng.standard_normal((latent, dim)) / np.sqrt(latent)
    centers = rng.standard_normal((num_classes, latent))
    y = rng.integers(0, num_classes, n)
    h = centers[y] + 4.0 * rng.standard_normal((n, latent))
    x = np.maximum(h @ proj + 0.3 * rng.standard_normal((n, dim)), 0.0)  # ReLU: avgpool features are ≥ 0
    return x.astype(np.float32), y


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10000, help="training samples for the sweep")
    p.add_argument("--n-val", type=int, default=2000, help="validation samples that score every λ")
    p.add_argument("--dim", type=int, default=2048, help="feature dimension (ResNet-50 avgpool: 2048)")
    p.add_argument("--classes", type=int, default=10, help="number of classes")
    p.add_argument("--max-iter", type=int, default=PROBE_MAX_ITER, help="scipy L-BFGS-B iterations per λ")
    p.add_argument("--gap", type=float, default=PROBE_GAP,
                   help="scipy stopping rule: certified relative objective gap (maxsup.linear_probe)")
    p.add_argument("--tol", type=float, default=None,
                   help="scipy stopping rule: also require the raw gradient norm ≤ tol (default: off)")
    p.add_argument("--sklearn-max-iter", type=int, default=1000, help="scikit-learn L-BFGS iterations per λ")
    p.add_argument("--solvers", default="scipy,sklearn", help=f"comma list from {', '.join(SOLVERS)}")
    p.add_argument("--sklearn-stride", type=int, default=5, help="sklearn fits every k-th λ (1 = the full sweep)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="BLAS/OpenMP threads for both solvers (default: library defaults; use 1 on a shared machine)")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    if args.threads:
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    solvers = [s for s in args.solvers.split(",") if s]
    x, y = synthetic_features(args.n + args.n_val, args.dim, args.classes, args.seed)
    x_tr, y_tr, x_va, y_va = x[:args.n], y[:args.n], x[args.n:], y[args.n:]
    lambdas = regularization_grid()
    out: dict = {"name": "linear_probe_sweep", "n": args.n, "dim": args.dim, "classes": args.classes,
                 "num_lambdas": len(lambdas), "max_iter": args.max_iter,
                 "threads": args.threads, "load_avg_1min": round(os.getloadavg()[0], 2)}
    val, picks, objs = {}, {}, {}
    out["gap"], out["tol"] = args.gap, args.tol
    for solver in solvers:
        pick = np.arange(0, len(lambdas), args.sklearn_stride if solver == "sklearn" else 1)
        kw = ({"max_iter": args.sklearn_max_iter, "tol": 1e-8} if solver == "sklearn" else
              {"max_iter": args.max_iter, "gap": args.gap, "tol": args.tol})
        stats: dict = {}
        t0 = time.perf_counter()
        w, b = fit_sweep(x_tr, y_tr, lambdas[pick], args.classes, solver=solver, stats=stats, **kw)
        seconds = time.perf_counter() - t0
        objs[solver], grad_norm = probe_objective(w, b, x_tr, y_tr, lambdas[pick])
        its = stats.get("iterations", [None] * len(pick))
        out[f"{solver}_per_lambda"] = [{"lambda": float(lam), "objective": float(o), "grad_norm": float(g),
                                        "iterations": it}
                                       for lam, o, g, it in zip(lambdas[pick], objs[solver], grad_norm, its,
                                                                strict=True)]
        if "iterations" in stats:
            out[f"{solver}_iterations"] = int(sum(its))
        val[solver], picks[solver] = sweep_accuracy(w, b, x_va, y_va), pick
        out[f"{solver}_s"] = round(seconds, 2)
        out[f"{solver}_num_lambdas"] = len(pick)
        out[f"{solver}_s_per_lambda"] = round(seconds / len(pick), 3)
        out[f"{solver}_best_val_acc"] = round(100 * float(val[solver].max()), 2)
        out[f"{solver}_best_lambda"] = float(lambdas[pick][int(val[solver].argmax())])
        print(f"{solver}: {seconds:.1f} s for {len(pick)} λ, best val acc {out[f'{solver}_best_val_acc']}% "
              f"at λ={out[f'{solver}_best_lambda']:.3g}", flush=True)
    if "scipy" in val and "sklearn" in val:
        out["ratio"] = round(out["sklearn_s_per_lambda"] / out["scipy_s_per_lambda"], 2)
        common = np.isin(picks["scipy"], picks["sklearn"])
        out["max_val_acc_diff"] = round(100 * float(np.abs(val["scipy"][common] - val["sklearn"]).max()), 2)
        gap = (objs["scipy"][common] - objs["sklearn"]) / np.abs(objs["sklearn"])
        out["rel_objective_gap"] = [float(g) for g in gap]
        out["max_rel_objective_gap"] = float(gap.max())
        out["max_abs_rel_objective_gap"] = float(np.abs(gap).max())
        sel_t, sel_s = int(val["scipy"][common].argmax()), int(val["sklearn"].argmax())
        out["selected_acc_diff"] = round(100 * float(val["scipy"][common][sel_t] - val["sklearn"][sel_s]), 2)
        out["same_selected_lambda"] = sel_t == sel_s
    else:
        out["ratio"] = None
    out["goal_s"] = 60
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
