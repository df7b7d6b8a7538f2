"""maxsup.linear_probe: both solvers reach the same objective (probe_objective) at every λ of a small sweep."""

from __future__ import annotations

import numpy as np

from maxsup.linear_probe import fit_sweep, probe_objective, regularization_grid


def test_torch_and_sklearn_reach_the_same_objective():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    x = (rng.standard_normal((300, 16)) + 1.5 * np.eye(4, 16)[y]).astype(np.float32)
    lam = regularization_grid(5, 1e-4, 1e1)
    objs = {}
    for solver, kw in (("torch", {"precision": "float64", "max_iter": 200, "tol": 1e-8}),
                       ("sklearn", {"max_iter": 500, "tol": 1e-8})):
        w, b = fit_sweep(x, y, lam, 4, solver=solver, **kw)
        objs[solver], grad = probe_objective(w, b, x, y, lam)
        assert grad.max() < 1e-3, (solver, grad)
    np.testing.assert_allclose(objs["torch"], objs["sklearn"], rtol=1e-5)
    # the objective is what it says: zero weights give log K
    o, g = probe_objective(np.zeros((1, 16, 4)), np.zeros((1, 4)), x, y, [1.0])
    assert abs(o[0] - np.log(4)) < 1e-12 and g[0] > 0.1
    assert (objs["torch"] < np.log(4)).all()
