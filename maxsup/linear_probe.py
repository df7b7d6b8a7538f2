"""Linear-probe transfer on frozen features (Paper Table 3 / Table 12, following Kornblith et al. 2019/2021).

Protocol: L2-regularised multinomial logistic regression on frozen penultimate features. The strength λ is swept
over 45 log-spaced values in [1e-6, 1e5] on a held-out validation split, the best λ is refitted on train + val and
the refit is scored on test.

Objective for one λ (bias not penalised), with n training samples::

    L(W, b) = (1/n)·Σ_i CE(W·x_i + b, y_i) + (λ/2)·‖W‖²

scikit-learn minimises ``C·Σ_i CE + ½‖W‖²``, which is the same problem for **C = 1 / (λ·n)**; both solvers below
use that mapping, so λ means the same thing whichever runs.

Solvers, compared side by side in ``bench/linear_probe.py``:

* ``"torch"`` (default): L-BFGS on each λ from the strongest to the weakest, each warm-started from the previous
  solution. Before solving, features are centred (exact, because the bias is free) and rotated onto their principal
  axes (exact, because ‖V·W̃‖ = ‖W̃‖; axes with numerically zero variance are dropped). Every axis j is then rescaled
  by 1/√(σ_j²/n + λ), its curvature scale, so L-BFGS starts well conditioned for every λ.
* ``"torch-batched"``: the same, but all λ solved jointly in one (S, r, K) tensor. It does S× the work per step, which
  pays off only on a GPU.
* ``"sklearn"``: ``LogisticRegression(solver="lbfgs", warm_start=True)`` on centred features, from the largest λ to
  the smallest.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["regularization_grid", "fit_sweep", "sweep_accuracy", "linear_probe", "probe_objective", "SOLVERS"]

SOLVERS = ("torch", "sklearn", "torch-batched")
#: per-λ L-BFGS cap and gradient tolerance of the default sweep (bench/linear_probe.py measures what they reach)
PROBE_MAX_ITER = 1000
PROBE_TOL = 1e-5
#: default torch precision: float32 cannot push the raw gradient norm to PROBE_TOL at the weak end of the sweep
PROBE_PRECISION = "float64"
#: certified relative objective gap: the objective is λ-strongly convex, so f − f* ≤ ‖∇f‖² / (2λ); stopping once
#: ‖∇f‖² ≤ 2·λ·PROBE_GAP·f bounds the relative gap to the optimum by PROBE_GAP at every λ
PROBE_GAP = 1e-3


def regularization_grid(num: int = 45, low: float = 1e-6, high: float = 1e5) -> np.ndarray:
    """λ values of the Kornblith sweep (Paper Table 12 caption): ``num`` log-spaced values in [low, high]."""
    if num < 1 or not (0 < low <= high):
        raise ValueError(f"need num >= 1 and 0 < low <= high for the λ grid, got num={num}, low={low}, high={high}")
    return np.logspace(math.log10(low), math.log10(high), num)


def _as_xy(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"features must be (N, D) and labels (N,), got {x.shape} and {y.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or inf; re-extract them from a checkpoint that evaluates finitely")
    return x, y


def _rotate(x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centre x (N, D) and rotate it onto its principal axes, dropping axes without variance.

    Returns z (N, r) float32, the axes v (D, r) float64, the per-axis second moment σ²/N (r,) and the mean (D,).
    Both steps are exact for this objective: the bias is free (absorbs the centring) and ‖V·W̃‖ = ‖W̃‖.
    """
    xt = torch.from_numpy(x)
    mean = xt.double().mean(0)
    xc = xt - mean.float()
    # Eigen-decomposition of the (D, D) scatter matrix: N·D² + D³ work instead of an (N, D) SVD's ~4·N·D².
    # float32 products are enough: V only needs to be orthonormal, and z = X·V uses the very V that maps W back.
    evals, evecs = torch.linalg.eigh((xc.T @ xc).double())
    keep = evals > evals.max().clamp_min(0) * 1e-7 if evals.numel() else evals.bool()
    v = evecs[:, keep].flip(1)  # (D, r), largest variance first
    return xc @ v.float(), v, (evals[keep].flip(0) / len(x)).float(), mean


def _unrotate(w: torch.Tensor, b: torch.Tensor, v: torch.Tensor, mean: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Map (S, r, K) / (S, K) solutions in rotated, centred coordinates back to raw features."""
    w_full = torch.einsum("dr,srk->sdk", v, w.double())
    bias = b.double() - torch.einsum("d,sdk->sk", mean, w_full)
    return w_full.float().numpy(), bias.float().numpy()


def _lbfgs(z: torch.Tensor, y: torch.Tensor, lam: torch.Tensor, scale: torch.Tensor, w0: torch.Tensor,
           b0: torch.Tensor, max_iter: int, tol: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Minimise Σ_s [mean CE_s + λ_s/2·‖W_s‖²] over W = scale·u with L-BFGS; z (n, r), scale (S, r), w0 (S, r, K).

    Computes in ``z``'s dtype. Stops when the norm g of the gradient of the true objective f in (W, b) (not of the
    preconditioned u) is at most ``tol`` AND g² ≤ 2·λ·PROBE_GAP·f (which bounds (f − f*)/f by PROBE_GAP, since f is
    λ-strongly convex in W), checked every few iterations, or after ``max_iter`` iterations. Returns W, b and the
    number of L-BFGS iterations run."""
    n, k = len(z), w0.shape[-1]
    scale, w0, b0, lam = scale.to(z.dtype), w0.to(z.dtype), b0.to(z.dtype), lam.to(z.dtype)
    s_count = len(lam)
    u = (w0 / scale[:, :, None]).requires_grad_(True)
    b = b0.clone().requires_grad_(True)
    y_rep = y.repeat(s_count) if s_count > 1 else y
    chunk = 5
    # Only our raw-gradient rule (below) and the iteration cap stop it; torch's own rules would act on u.
    opt = torch.optim.LBFGS([u, b], lr=1.0, max_iter=chunk, history_size=20, tolerance_grad=0.0,
                            tolerance_change=0.0, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        w = u * scale[:, :, None]
        logits = torch.einsum("nr,srk->snk", z, w) + b[:, None, :]  # (S, n, K)
        ce = F.cross_entropy(logits.reshape(s_count * n, k), y_rep, reduction="sum") / n
        return ce + 0.5 * (lam * w.pow(2).sum((1, 2))).sum()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    done = 0
    while done < max_iter:
        opt.param_groups[0]["max_iter"] = min(chunk, max_iter - done)
        opt.step(closure)
        done = opt.state[opt._params[0]]["n_iter"]
        f = objective()
        gu, gb = torch.autograd.grad(f, (u, b))
        # ∂L/∂W = ∂L/∂u / scale; ‖·‖ is rotation-invariant, so this is the raw-feature gradient norm (up to the
        # centring term mean·∂L/∂bᵀ, which vanishes with ∂L/∂b).
        raw = (gu / scale[:, :, None]).pow(2).sum((1, 2)) + gb.pow(2).sum(1)
        if float(raw.max()) <= min(tol * tol, 2.0 * float(lam.min()) * PROBE_GAP * f.item() / s_count):
            break
    return (u * scale[:, :, None]).detach(), b.detach(), done


def _fit_torch(x: np.ndarray, y: np.ndarray, lambdas: np.ndarray, num_classes: int, max_iter: int,
               tol: float, batched: bool = False, dtype: torch.dtype = torch.float32,
               stats: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """L-BFGS in whitened-by-rotation coordinates; returns W (S, D, K) and b (S, K) for raw features.

    Each axis j of problem s is rescaled by 1/√(σ_j²/n + λ_s), its curvature scale, so L-BFGS starts well
    conditioned. ``batched=False`` (default, faster on CPU) solves λ from strongest to weakest, each warm-started from
    the previous solution; ``batched=True`` solves all λ jointly in one (S, r, K) tensor (45× the work per step,
    which only pays off on a GPU).
    """
    z, v, curv, mean = _rotate(x)
    if dtype == torch.float64:  # recompute the projection in float64 too
        z = (torch.from_numpy(x).double() - mean) @ v
    yt = torch.from_numpy(y)
    lam = torch.as_tensor(lambdas, dtype=dtype)
    scale = (curv[None, :].to(dtype) + lam[:, None]).rsqrt()  # (S, r)
    r = z.shape[1]
    if batched:
        w, b, it = _lbfgs(z, yt, lam, scale, torch.zeros(len(lam), r, num_classes, dtype=dtype),
                          torch.zeros(len(lam), num_classes, dtype=dtype), max_iter, tol)
        if stats is not None:
            stats["iterations"] = [it] * len(lam)
        return _unrotate(w, b, v, mean)
    w_all = torch.zeros(len(lam), r, num_classes, dtype=dtype)
    b_all = torch.zeros(len(lam), num_classes, dtype=dtype)
    w_prev, b_prev = torch.zeros(1, r, num_classes), torch.zeros(1, num_classes)
    iters = [0] * len(lam)
    for i in np.argsort(lambdas)[::-1].tolist():  # strong → weak regularisation: each solve warm-starts the next
        w_prev, b_prev, iters[i] = _lbfgs(z, yt, lam[i:i + 1], scale[i:i + 1], w_prev, b_prev, max_iter, tol)
        w_all[i], b_all[i] = w_prev[0], b_prev[0]
    if stats is not None:
        stats["iterations"] = iters
    return _unrotate(w_all, b_all, v, mean)


def _fit_sklearn(x: np.ndarray, y: np.ndarray, lambdas: np.ndarray, num_classes: int, max_iter: int,
                 tol: float, stats: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Warm-started scikit-learn sweep from strong to weak regularisation; same outputs as :func:`_fit_torch`."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(y)) != num_classes:
        raise ValueError(f"the sklearn solver needs every one of the {num_classes} classes in the training split")
    n, d = x.shape
    mean = x.mean(0)
    xc = (x - mean).astype(np.float64)  # centring is exact (free bias) and helps L-BFGS
    w_out = np.zeros((len(lambdas), d, num_classes), np.float32)
    b_out = np.zeros((len(lambdas), num_classes), np.float32)
    clf = LogisticRegression(solver="lbfgs", warm_start=True, max_iter=max_iter, tol=tol)
    iters = [0] * len(lambdas)
    for i in np.argsort(lambdas)[::-1]:
        clf.set_params(C=1.0 / (float(lambdas[i]) * n))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # weak-λ fits hit max_iter by design
            clf.fit(xc, y)
        w_out[i] = clf.coef_.T
        b_out[i] = clf.intercept_ - mean @ clf.coef_.T
        iters[i] = int(np.max(clf.n_iter_))
    if stats is not None:
        stats["iterations"] = iters
    return w_out, b_out


def fit_sweep(x: Any, y: Any, lambdas: Any, num_classes: int | None = None, *, solver: str = "torch",
              max_iter: int = PROBE_MAX_ITER, tol: float = PROBE_TOL, precision: str = PROBE_PRECISION,
              stats: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fit one L2 logistic regression per λ.

    Args:
        x: (N, D) features. y: (N,) labels in [0, K). lambdas: (S,) penalty strengths (objective in module doc).
        solver: ``"torch"`` (warm-started L-BFGS) or ``"sklearn"`` (warm-started LogisticRegression).
        max_iter, tol: iteration cap and stopping tolerance per λ. For the torch solvers ``tol`` bounds the norm
            of the raw gradient of the objective in (W, b); for sklearn it is scikit-learn's ``tol``.
        precision: ``float64`` (default) or ``float32`` (torch solvers; see bench/linear_probe.py).
        stats: if a dict is given, ``stats["iterations"]`` receives the iterations run per λ.
    Returns:
        W (S, D, K) and b (S, K) float32, so that logits = x @ W[s] + b[s].
    """
    x, y = _as_xy(x, y)
    k = int(num_classes if num_classes is not None else y.max() + 1)
    lambdas = np.asarray(lambdas, dtype=np.float64).reshape(-1)
    if solver not in SOLVERS:
        raise ValueError(f"unknown linear-probe solver {solver!r}; choose one of {SOLVERS}")
    if solver == "sklearn":
        return _fit_sklearn(x, y, lambdas, k, max_iter, tol, stats)
    if precision not in ("float32", "float64"):
        raise ValueError(f"precision must be float32 or float64, got {precision!r}")
    return _fit_torch(x, y, lambdas, k, max_iter, tol, batched=solver == "torch-batched",
                      dtype=getattr(torch, precision), stats=stats)


def probe_objective(w: np.ndarray, b: np.ndarray, x: Any, y: Any, lambdas: Any) -> tuple[np.ndarray, np.ndarray]:
    """The objective of the module docstring and the norm of its gradient in (W, b), per fitted model, in float64 on
    the raw features: W (S, D, K), b (S, K), x (N, D), y (N,), lambdas (S,) → (objective (S,), grad_norm (S,)).
    Solver-independent, so it compares the torch and scikit-learn solutions on equal terms."""
    x, y = _as_xy(x, y)
    xt, yt = torch.from_numpy(x).double(), torch.from_numpy(y)
    objs, norms = [], []
    for s, lam in enumerate(np.asarray(lambdas, dtype=np.float64).reshape(-1)):
        ws = torch.from_numpy(np.asarray(w[s], dtype=np.float64)).requires_grad_(True)
        bs = torch.from_numpy(np.asarray(b[s], dtype=np.float64)).requires_grad_(True)
        loss = F.cross_entropy(xt @ ws + bs, yt) + 0.5 * lam * ws.pow(2).sum()
        gw, gb = torch.autograd.grad(loss, (ws, bs))
        objs.append(loss.item())
        norms.append(float(torch.sqrt(gw.pow(2).sum() + gb.pow(2).sum())))
    return np.asarray(objs), np.asarray(norms)


def sweep_accuracy(w: np.ndarray, b: np.ndarray, x: Any, y: Any) -> np.ndarray:
    """Top-1 accuracy (fraction in [0, 1]) of each fitted model: W (S, D, K), b (S, K), x (N, D) → (S,)."""
    x, y = _as_xy(x, y)
    logits = np.einsum("nd,sdk->snk", x, w) + b[:, None, :]
    return (logits.argmax(-1) == y[None]).mean(1)


def _stratified_split(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 else None
    tr, va = train_test_split(idx, test_size=val_fraction, random_state=seed, stratify=stratify)
    return np.sort(tr), np.sort(va)


def linear_probe(x_train: Any, y_train: Any, x_test: Any, y_test: Any, *, x_val: Any = None, y_val: Any = None,
                 lambdas: Any = None, val_fraction: float = 0.2, seed: int = 0, solver: str = "torch",
                 max_iter: int = PROBE_MAX_ITER, precision: str = PROBE_PRECISION) -> dict[str, Any]:
    """Kornblith linear-probe protocol; returns a JSON-ready dict.

    If no validation split is given, a stratified ``val_fraction`` of the training set (seeded) is held out.

    Returns keys: ``test_acc`` (%, refit on train+val at the chosen λ), ``best_lambda``, ``best_C``
    (= 1/(λ·n_trainval), scikit-learn's convention for the refit), ``best_index``, ``val_acc`` (%, per λ),
    ``lambdas``, ``n_train``, ``n_val``, ``n_test``, ``num_classes``, ``feature_dim``, ``solver``.
    """
    x_train, y_train = _as_xy(x_train, y_train)
    x_test, y_test = _as_xy(x_test, y_test)
    if x_val is None:
        tr, va = _stratified_split(y_train, val_fraction, seed)
        x_val, y_val = x_train[va], y_train[va]
        x_train, y_train = x_train[tr], y_train[tr]
    else:
        x_val, y_val = _as_xy(x_val, y_val)
    if x_test.shape[1] != x_train.shape[1] or x_val.shape[1] != x_train.shape[1]:
        raise ValueError(f"train/val/test feature widths differ: {x_train.shape[1]}, {x_val.shape[1]}, "
                         f"{x_test.shape[1]}; extract all splits with the same checkpoint")
    k = int(max(y_train.max(), y_val.max(), y_test.max()) + 1)
    lambdas = regularization_grid() if lambdas is None else np.asarray(lambdas, dtype=np.float64)
    w, b = fit_sweep(x_train, y_train, lambdas, k, solver=solver, max_iter=max_iter, precision=precision)
    val_acc = sweep_accuracy(w, b, x_val, y_val)
    # Ties go to the strongest regularisation (the simplest model that reaches the best validation accuracy).
    best = int(np.flatnonzero(val_acc == val_acc.max()).max())
    x_all = np.concatenate([x_train, x_val])
    y_all = np.concatenate([y_train, y_val])
    w1, b1 = fit_sweep(x_all, y_all, lambdas[best:best + 1], k, solver=solver, max_iter=max_iter, precision=precision)
    test_acc = float(sweep_accuracy(w1, b1, x_test, y_test)[0])
    return {
        "test_acc": 100.0 * test_acc,
        "best_lambda": float(lambdas[best]),
        "best_C": 1.0 / (float(lambdas[best]) * len(y_all)),
        "best_index": best,
        "val_acc": [100.0 * float(a) for a in val_acc],
        "lambdas": [float(v) for v in lambdas],
        "n_train": int(len(y_train)),
        "n_val": int(len(y_val)),
        "n_test": int(len(y_test)),
        "num_classes": k,
        "feature_dim": int(x_train.shape[1]),
        "solver": solver,
    }
