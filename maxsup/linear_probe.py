"""Linear-probe transfer on frozen features (Paper Table 3 / Table 12, following Kornblith et al. 2019/2021).

Protocol: L2-regularised multinomial logistic regression on frozen penultimate features. The strength λ is swept
over 45 log-spaced values in [1e-6, 1e5] on a held-out validation split, the best λ is refitted on train + val and
the refit is scored on test.

Objective for one λ (bias not penalised), with n training samples::

    L(W, b) = (1/n)·Σ_i CE(W·x_i + b, y_i) + (λ/2)·‖W‖²

scikit-learn minimises ``C·Σ_i CE + ½‖W‖²``, which is the same problem for **C = 1 / (λ·n)**; both solvers below
use that mapping, so λ means the same thing whichever runs.

Solvers, compared side by side in ``bench/linear_probe.py``:

* ``"scipy"`` (default): scipy's L-BFGS-B on each λ from the strongest to the weakest, with a hand-written float64
  gradient (two (N, r)·(r, K) products per evaluation). Each solve starts from the linear extrapolation, in log λ,
  of the two previous solutions along the regularisation path (from the previous solution alone for the second λ):
  at 10,000 × 2048 this cut the sweep from 1,693 to 591 iterations (analysis/README.md). Before
  solving, features are centred (exact, because the bias is free) and rotated onto their principal axes (exact,
  because ‖V·W̃‖ = ‖W̃‖; axes with numerically zero variance are dropped). Every axis j is then rescaled by
  1/√(σ_j²/n + λ), its curvature scale, so L-BFGS starts well conditioned for every λ.
* ``"sklearn"``: ``LogisticRegression(solver="lbfgs", warm_start=True)`` on centred features, from the largest λ to
  the smallest: the unpreconditioned reference.

Stopping rule of ``"scipy"``: the objective is λ-strongly convex in W, so the W-part of the gap f − f* is at most
‖∇_W f‖² / (2λ); a solve stops at the first point with ‖∇_W f‖² ≤ 2·λ·``gap``·f (a relative gap of at most
``gap``, :data:`PROBE_GAP`) and ‖∇_b f‖ ≤ :data:`PROBE_BIAS_TOL` (the bias is not penalised, hence not strongly
convex; ∂f/∂b_k is the mean predicted probability of class k minus its frequency), plus ‖∇f‖ ≤ ``tol`` if given;
or after ``max_iter`` iterations. The gradients are those in the raw (W, b), not in the preconditioned variables.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["regularization_grid", "fit_sweep", "sweep_accuracy", "linear_probe", "probe_objective", "SOLVERS",
           "PROBE_GAP", "PROBE_MAX_ITER"]

SOLVERS = ("scipy", "sklearn")
#: per-λ L-BFGS iteration cap of the default sweep (bench/linear_probe.py measures what it reaches)
PROBE_MAX_ITER = 1000
#: certified relative objective gap per λ of the default sweep (see the stopping rule above)
PROBE_GAP = 1e-4
#: bias gradient bound of the stopping rule: ∂f/∂b_k = mean predicted probability of class k − its frequency
PROBE_BIAS_TOL = 1e-5


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


def _rotate(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centre x (N, D) and rotate it onto its principal axes, dropping axes without variance.

    Returns z (N, r), the axes v (D, r), the per-axis second moment σ²/N (r,) and the mean (D,), all float64.
    Both steps are exact for this objective: the bias is free (absorbs the centring) and ‖V·W̃‖ = ‖W̃‖.
    """
    mean = x.mean(0, dtype=np.float64)
    xc = x.astype(np.float64) - mean
    # Eigen-decomposition of the (D, D) scatter matrix: N·D² + D³ work instead of an (N, D) SVD's ~4·N·D².
    # A float32 scatter is enough: V only needs to be orthonormal, and z = X·V uses the very V that maps W back.
    xc32 = xc.astype(np.float32)
    evals, evecs = np.linalg.eigh((xc32.T @ xc32).astype(np.float64))
    keep = evals > max(evals.max(initial=0.0), 0.0) * 1e-7
    v = np.ascontiguousarray(evecs[:, keep][:, ::-1])  # (D, r), largest variance first
    return xc @ v, v, evals[keep][::-1] / len(x), mean


def _unrotate(w: np.ndarray, b: np.ndarray, v: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map (S, r, K) / (S, K) solutions in rotated, centred coordinates back to raw features."""
    w_full = np.einsum("dr,srk->sdk", v, w)
    return w_full, b - np.einsum("d,sdk->sk", mean, w_full)


class _Converged(Exception):
    """Raised from inside the objective once an evaluated point meets the stopping rule (carries that point)."""

    def __init__(self, params: np.ndarray) -> None:
        super().__init__()
        self.params = params


def _lbfgs(z: np.ndarray, y: np.ndarray, lam: float, scale: np.ndarray, w0: np.ndarray, b0: np.ndarray,
           max_iter: int, tol: float | None, gap: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Minimise mean CE + λ/2·‖W‖² over W = scale·u (z (n, r), scale (r,), w0 (r, K), b0 (K,), float64) with
    scipy's L-BFGS-B and a hand-written gradient: two (n, r)·(r, K) products per evaluation.

    Stops at the first evaluated point meeting the module's stopping rule (computed on the raw gradient in (W, b)),
    or after ``max_iter`` iterations; scipy's own tests are off. Returns W, b and the iterations run."""
    from scipy.linalg.blas import dgemm
    from scipy.optimize import minimize

    n, k = z.shape[0], w0.shape[1]
    rows, sc = np.arange(n), scale[:, None]
    # The products go through scipy's BLAS, the library L-BFGS-B itself calls, not numpy's: numpy and scipy wheels
    # each bundle an OpenBLAS, and alternating between the two made their thread pools spin against each other
    # (36 → 73 ms per evaluation at 10,000 × 2048 on 2 cores). zt is a Fortran-ordered view, so nothing is copied.
    zt = z.T
    limit = np.inf if tol is None else tol * tol

    def fun(params: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = params[:-k].reshape(-1, k) * sc, params[-k:]
        logits = np.ascontiguousarray(dgemm(1.0, zt, w, trans_a=True))  # z @ w
        logits += b
        logits -= logits.max(1, keepdims=True)
        picked = logits[rows, y]
        np.exp(logits, out=logits)
        total = logits.sum(1)
        f = float((np.log(total) - picked).mean() + 0.5 * lam * (w * w).sum())
        grad = logits  # softmax − one-hot, over n, computed in place
        grad /= total[:, None] * n
        grad[rows, y] -= 1.0 / n
        gw, gb = dgemm(1.0, zt, grad), grad.sum(0)
        gw += lam * w
        gw2, gb2 = (gw * gw).sum(), (gb * gb).sum()
        if gw2 <= 2.0 * lam * gap * f and gb2 <= PROBE_BIAS_TOL**2 and gw2 + gb2 <= limit:
            raise _Converged(params.copy())
        gw *= sc
        return f, np.concatenate([gw.ravel(), gb])

    iters = [0]

    def count(*_: Any) -> None:
        iters[0] += 1

    try:
        params = minimize(fun, np.concatenate([(w0 / sc).ravel(), b0]), jac=True, method="L-BFGS-B", callback=count,
                          options={"maxiter": max_iter, "maxcor": 20, "ftol": 0.0, "gtol": 0.0}).x
    except _Converged as stop:
        params = stop.params
    return params[:-k].reshape(-1, k) * sc, params[-k:], iters[0]


def _path_start(path: list[tuple[float, np.ndarray, np.ndarray]], log_lam: float, r: int,
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """Starting point for the solve at log λ: zeros first, then the previous solution, then the straight line in
    log λ through the last two solutions (the previous one alone if they share a λ)."""
    if not path:
        return np.zeros((r, k)), np.zeros(k)
    t1, w1, b1 = path[-1]
    if len(path) == 1 or path[-2][0] == t1:
        return w1, b1
    t2, w2, b2 = path[-2]
    step = (log_lam - t1) / (t1 - t2)
    return w1 + step * (w1 - w2), b1 + step * (b1 - b2)


def _fit_scipy(x: np.ndarray, y: np.ndarray, lambdas: np.ndarray, num_classes: int, max_iter: int,
               tol: float | None, gap: float, stats: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rotate, then solve each λ with :func:`_lbfgs` in its curvature-scaled coordinates, from the strongest to the
    weakest λ, each started from the path extrapolated through the two previous solutions (module doc).
    Returns W (S, D, K) and b (S, K) for raw features."""
    z, v, curv, mean = _rotate(x)
    r = z.shape[1]
    w_all, b_all = np.zeros((len(lambdas), r, num_classes)), np.zeros((len(lambdas), num_classes))
    path: list[tuple[float, np.ndarray, np.ndarray]] = []  # (log λ, W, b) of the solves so far
    iters = [0] * len(lambdas)
    for i in np.argsort(lambdas)[::-1].tolist():  # strong → weak regularisation
        lam = float(lambdas[i])
        w, b = _path_start(path, math.log(lam), r, num_classes)
        w, b, iters[i] = _lbfgs(z, y, lam, 1.0 / np.sqrt(curv + lam), w, b, max_iter, tol, gap)
        path.append((math.log(lam), w, b))
        w_all[i], b_all[i] = w, b
    if stats is not None:
        stats["iterations"] = iters
    return _unrotate(w_all, b_all, v, mean)


def _fit_sklearn(x: np.ndarray, y: np.ndarray, lambdas: np.ndarray, num_classes: int, max_iter: int,
                 tol: float, stats: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Warm-started scikit-learn sweep from strong to weak regularisation; same outputs as :func:`_fit_scipy`."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(y)) != num_classes:
        raise ValueError(f"the sklearn solver needs every one of the {num_classes} classes in the training split")
    n, d = x.shape
    mean = x.mean(0)
    xc = (x - mean).astype(np.float64)  # centring is exact (free bias) and helps L-BFGS
    w_out = np.zeros((len(lambdas), d, num_classes))
    b_out = np.zeros((len(lambdas), num_classes))
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


def fit_sweep(x: Any, y: Any, lambdas: Any, num_classes: int | None = None, *, solver: str = "scipy",
              max_iter: int = PROBE_MAX_ITER, tol: float | None = None, gap: float = PROBE_GAP,
              stats: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fit one L2 logistic regression per λ.

    Args:
        x: (N, D) features. y: (N,) labels in [0, K). lambdas: (S,) penalty strengths (objective in module doc).
        solver: ``"scipy"`` (preconditioned, warm-started L-BFGS-B) or ``"sklearn"`` (warm-started
            LogisticRegression).
        max_iter: iteration cap per λ.
        tol, gap: the stopping rule (module doc) of ``"scipy"``; for ``"sklearn"``, ``tol`` is scikit-learn's
            (default 1e-6) and ``gap`` is unused.
        stats: if a dict is given, ``stats["iterations"]`` receives the iterations run per λ.
    Returns:
        W (S, D, K) and b (S, K) float64, so that logits = x @ W[s] + b[s].
    """
    x, y = _as_xy(x, y)
    k = int(num_classes if num_classes is not None else y.max() + 1)
    lambdas = np.asarray(lambdas, dtype=np.float64).reshape(-1)
    if solver not in SOLVERS:
        raise ValueError(f"unknown linear-probe solver {solver!r}; choose one of {SOLVERS}")
    if solver == "sklearn":
        return _fit_sklearn(x, y, lambdas, k, max_iter, 1e-6 if tol is None else tol, stats)
    if not 0 < gap < 1:
        raise ValueError(f"gap must be in (0, 1), got {gap}")
    return _fit_scipy(x, y, lambdas, k, max_iter, tol, gap, stats)


def probe_objective(w: np.ndarray, b: np.ndarray, x: Any, y: Any, lambdas: Any) -> tuple[np.ndarray, np.ndarray]:
    """The objective of the module docstring and the norm of its gradient in (W, b), per fitted model, in float64 on
    the raw features: W (S, D, K), b (S, K), x (N, D), y (N,), lambdas (S,) → (objective (S,), grad_norm (S,)).
    Solver-independent, so it compares the scipy and scikit-learn solutions on equal terms."""
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

    if not 0 < val_fraction < 1:
        raise ValueError(f"the validation share (--val-fraction) must lie strictly between 0 and 1, got {val_fraction}")
    idx = np.arange(len(y))
    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 else None
    n_val, k = math.ceil(val_fraction * len(y)), int((counts > 0).sum())
    if stratify is not None and min(n_val, len(y) - n_val) < k:  # sklearn's own message speaks of "test_size"
        raise ValueError(f"a {val_fraction:g} validation share of {len(y)} training samples ({n_val} held out, "
                         f"{len(y) - n_val} kept) cannot hold each of the {k} classes on both sides; use more "
                         f"samples per class (--max-per-class) or another --val-fraction")
    tr, va = train_test_split(idx, test_size=val_fraction, random_state=seed, stratify=stratify)
    return np.sort(tr), np.sort(va)


def linear_probe(x_train: Any, y_train: Any, x_test: Any, y_test: Any, *, x_val: Any = None, y_val: Any = None,
                 lambdas: Any = None, val_fraction: float = 0.2, seed: int = 0, solver: str = "scipy",
                 max_iter: int = PROBE_MAX_ITER) -> dict[str, Any]:
    """Kornblith linear-probe protocol; returns a JSON-ready dict.

    If no validation split is given, a stratified ``val_fraction`` of the training set (seeded) is held out. Training
    labels of a single class raise ``ValueError`` (the accuracy would be 100 % whatever the features).

    Returns keys: ``test_acc`` (%, refit on train+val at the chosen λ), ``best_lambda``, ``best_C``
    (= 1/(λ·n_trainval), scikit-learn's convention for the refit), ``best_index``, ``val_acc`` (%, per λ),
    ``lambdas``, ``n_train``, ``n_val``, ``n_test``, ``num_classes``, ``feature_dim``, ``solver``.
    """
    x_train, y_train = _as_xy(x_train, y_train)
    x_test, y_test = _as_xy(x_test, y_test)
    present = np.unique(y_train)
    if len(present) < 2:  # any classifier is 100 % right on one class: the accuracy would say nothing
        raise ValueError(f"a linear probe needs at least two classes, but the training labels hold one class "
                         f"({present.tolist()}); select two or more classes")
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
    w, b = fit_sweep(x_train, y_train, lambdas, k, solver=solver, max_iter=max_iter)
    val_acc = sweep_accuracy(w, b, x_val, y_val)
    # Ties go to the strongest regularisation (the simplest model that reaches the best validation accuracy): the
    # largest tied λ, since ``lambdas`` may come in any order (fit_sweep accepts any).
    tied = np.flatnonzero(val_acc == val_acc.max())
    best = int(tied[np.argmax(lambdas[tied])])
    x_all = np.concatenate([x_train, x_val])
    y_all = np.concatenate([y_train, y_val])
    w1, b1 = fit_sweep(x_all, y_all, lambdas[best:best + 1], k, solver=solver, max_iter=max_iter)
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
