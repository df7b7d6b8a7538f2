"""maxsup.linear_probe: both solvers reach the same objective (probe_objective) at every λ of a sweep."""

from __future__ import annotations

import math

import numpy as np
import pytest

from maxsup.linear_probe import (
    PROBE_GAP,
    _path_start,
    _stratified_split,
    fit_sweep,
    linear_probe,
    probe_objective,
    regularization_grid,
    sweep_accuracy,
)


def test_scipy_and_sklearn_reach_the_same_objective():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    x = (rng.standard_normal((300, 16)) + 1.5 * np.eye(4, 16)[y]).astype(np.float32)
    lam = regularization_grid(5, 1e-4, 1e1)
    objs = {}
    for solver, kw in (("scipy", {"max_iter": 500, "tol": 1e-8, "gap": 1e-12}),
                       ("sklearn", {"max_iter": 500, "tol": 1e-8})):
        w, b = fit_sweep(x, y, lam, 4, solver=solver, **kw)
        objs[solver], grad = probe_objective(w, b, x, y, lam)
        assert grad.max() < 1e-3, (solver, grad)
    np.testing.assert_allclose(objs["scipy"], objs["sklearn"], rtol=1e-5)
    # the objective is what it says: zero weights give log K
    o, g = probe_objective(np.zeros((1, 16, 4)), np.zeros((1, 4)), x, y, [1.0])
    assert abs(o[0] - np.log(4)) < 1e-12 and g[0] > 0.1
    assert (objs["scipy"] < np.log(4)).all()


def test_default_sweep_converges_at_the_weak_end_on_real_digits():
    """The Kornblith grid's weakest λ (1e-6) is where a stopping rule on the preconditioned gradient used to end
    early (16 % objective gap). With the default settings the sweep must stop on its certificate (never on the
    iteration cap) and match a tightly converged scikit-learn to ≤ PROBE_GAP relative at every λ of the grid."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = (x[:300] / 16.0).astype(np.float32), y[:300]
    grid = regularization_grid(12)  # [1e-6, 1e5], solved in one warm-started sweep like the protocol's 45 values
    stats: dict = {}
    w, b = fit_sweep(x, y, grid, 10, stats=stats)
    assert max(stats["iterations"]) < 1000, stats  # every λ stopped on the rule, none on the cap
    assert stats["iterations"][0] > 10, stats  # and the count is real: the weakest λ needs many
    obj, _ = probe_objective(w, b, x, y, grid)
    ws, bs = fit_sweep(x, y, grid, 10, solver="sklearn", max_iter=5000, tol=1e-10)
    ref, _ = probe_objective(ws, bs, x, y, grid)
    gap = (obj - ref) / ref
    assert (gap <= PROBE_GAP).all() and (gap >= -1e-6).all(), gap  # ours is never (meaningfully) below the optimum
    assert obj[0] < 0.05 < obj[-1]  # near-interpolation at the weak end, strongly regularised at the other


def test_path_warm_starts_do_not_change_the_solutions():
    """Each solve starts from the path extrapolated through the previous two solutions. On an unsorted, unevenly
    spaced grid with a repeated λ, every λ must still reach the objective of a solve of that λ alone from zero."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 240)
    x = (rng.standard_normal((240, 12)) + 1.2 * np.eye(3, 12)[y]).astype(np.float32)
    grid = np.array([1e-2, 1.0, 1e-2, 3e-3, 10.0, 1e-5])
    stats: dict = {}
    w, b = fit_sweep(x, y, grid, 3, stats=stats)
    obj, _ = probe_objective(w, b, x, y, grid)
    alone = np.array([probe_objective(*fit_sweep(x, y, [lam], 3), x, y, [lam])[0][0] for lam in grid])
    np.testing.assert_allclose(obj, alone, rtol=2 * PROBE_GAP)
    assert obj[0] == obj[2] or abs(obj[0] - obj[2]) <= PROBE_GAP * obj[0]
    assert max(stats["iterations"]) < 1000 and obj[-1] < obj[3] < obj[0] < obj[1] < obj[4]


# --------------------------------------------------------------------------------------------------------------------
# The protocol's bookkeeping around the solvers: accuracies, λ selection, the split, the warm-start path (each test
# here kills single-point mutants that the convergence tests above let through)
# --------------------------------------------------------------------------------------------------------------------
def test_sweep_accuracy_is_the_top1_fraction_of_each_model():
    x = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 3.0]], dtype=np.float32)
    y = np.array([0, 1, 1])
    w = np.stack([np.eye(2), -np.eye(2)])  # model 0 predicts 0, 1, 1; model 1 predicts 1, 0, 0
    np.testing.assert_allclose(sweep_accuracy(w, np.zeros((2, 2)), x, y), [1.0, 0.0])
    np.testing.assert_allclose(sweep_accuracy(w[:1], np.array([[5.0, 0.0]]), x, y), [1 / 3])  # the bias counts


def _separable(n: int, share0: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two well-separated 2-D classes; ``share0`` of the samples are class 0."""
    y = (rng.random(n) >= share0).astype(np.int64)
    return (np.where(y[:, None] == 1, 4.0, -4.0) + rng.standard_normal((n, 2))).astype(np.float32), y


def test_linear_probe_picks_the_strongest_of_tied_lambdas_and_reports_best_c():
    """λ = 1e4 shrinks W to ~0, so the bias alone predicts the 70 % class; the three weaker λ tie at 100 %."""
    rng = np.random.default_rng(2)
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = (_separable(n, 0.7, rng) for n in (60, 40, 50))
    res = linear_probe(x_tr, y_tr, x_te, y_te, x_val=x_va, y_val=y_va, lambdas=[1e-4, 1e-3, 1e-2, 1e4])
    assert res["val_acc"][:3] == [100.0] * 3 and res["val_acc"][3] < 100.0
    assert (res["best_index"], res["best_lambda"]) == (2, 1e-2)
    assert res["best_C"] == 1.0 / (1e-2 * 100)  # scikit-learn's C for the refit on train + val (n = 100)
    assert res["test_acc"] == 100.0 and (res["n_train"], res["n_val"], res["n_test"]) == (60, 40, 50)


def test_stratified_split_keeps_each_class_on_both_sides():
    pairs = np.repeat(np.arange(6), 2)  # two samples per class: the smallest stratifiable case
    tr, va = _stratified_split(pairs, 0.5, seed=0)
    assert sorted(pairs[tr]) == sorted(pairs[va]) == list(range(6))
    gaps = np.array([0, 0, 0, 2, 2, 2])  # label 1 absent: it is not a class the split must hold
    tr, va = _stratified_split(gaps, 0.3, seed=0)
    assert set(gaps[tr]) == set(gaps[va]) == {0, 2}
    x = np.random.default_rng(0).standard_normal((12, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="cannot hold each of the 3 classes"):  # 11 held out, 1 kept
        linear_probe(x, np.repeat(np.arange(3), 4), x, np.repeat(np.arange(3), 4), val_fraction=0.9)


def test_fit_sweep_infers_k_and_refuses_a_gap_outside_0_1():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((30, 4)).astype(np.float32), np.repeat(np.arange(3), 10)
    w, b = fit_sweep(x, y, [1.0, 0.1])
    assert w.shape == (2, 4, 3) and b.shape == (2, 3)
    for gap in (0.0, 1.0):
        with pytest.raises(ValueError, match="gap"):
            fit_sweep(x, y, [1.0], gap=gap)


def test_path_start_extrapolates_linearly_in_log_lambda():
    """The warm start analysis/README.md credits for a ~3x shorter sweep: zeros, then the previous solution, then
    the line through the last two solutions in log λ."""
    w100, b100, w10, b10 = np.full((2, 3), 1.0), np.full(3, 5.0), np.full((2, 3), 3.0), np.full(3, 4.0)
    w, b = _path_start([], 0.0, 2, 3)
    assert not w.any() and not b.any() and w.shape == (2, 3) and b.shape == (3,)
    assert _path_start([(math.log(100), w100, b100)], math.log(10), 2, 3)[0] is w100
    # one more step of the same size in log λ: 100 → 10 → 1
    w, b = _path_start([(math.log(100), w100, b100), (math.log(10), w10, b10)], 0.0, 2, 3)
    np.testing.assert_allclose(w, 5.0)
    np.testing.assert_allclose(b, 3.0)
    w, _ = _path_start([(math.log(100), w100, b100), (math.log(10), w10, b10)], math.log(1e-1), 2, 3)
    np.testing.assert_allclose(w, 7.0)  # two steps
    assert _path_start([(1.0, w100, b100), (1.0, w10, b10)], 0.0, 2, 3)[0] is w10  # a repeated λ: no line


def test_linear_probe_tie_rule_does_not_depend_on_the_grid_order():
    """fit_sweep takes λ in any order; the tie rule picks the largest tied λ, not the last tied position."""
    rng = np.random.default_rng(2)
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = (_separable(n, 0.7, rng) for n in (60, 40, 50))
    res = linear_probe(x_tr, y_tr, x_te, y_te, x_val=x_va, y_val=y_va, lambdas=[1e4, 1e-2, 1e-3, 1e-4])
    assert res["val_acc"][1:] == [100.0] * 3 and res["val_acc"][0] < 100.0
    assert (res["best_index"], res["best_lambda"]) == (1, 1e-2)
