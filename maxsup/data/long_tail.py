"""Long-tailed subsampling of a balanced training split (paper Table 7, Cao et al. 2019's exponential profile)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import UserError

__all__ = ["long_tailed_counts", "long_tailed_indices"]


def long_tailed_counts(n_max: int, num_classes: int, imb_ratio: float) -> list[int]:
    """Per-class training counts of the exponential long-tail profile used by LDAM's and Tang et al.'s code.

    ``n_c = int(n_max · imb_ratio^(−c / (C − 1)))`` for c = 0..C−1: class 0 keeps ``n_max`` images and the last class
    ``n_max / imb_ratio`` (CIFAR-10 at ratio 100: 5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50).
    ``imb_ratio`` 1 returns the balanced split.
    """
    if not imb_ratio >= 1:  # also rejects NaN
        raise UserError(f"the imbalance ratio must be >= 1 (n_max / n_min), got {imb_ratio}")
    if n_max < 1 or num_classes < 1:
        raise UserError(f"n_max and num_classes must be >= 1, got {n_max} and {num_classes}")
    if num_classes == 1:
        return [int(n_max)]
    return [int(n_max * imb_ratio ** (-c / (num_classes - 1))) for c in range(num_classes)]


def long_tailed_indices(targets: Sequence[int] | np.ndarray, imb_ratio: float, seed: int = 0,
                        num_classes: int | None = None) -> tuple[np.ndarray, list[int]]:
    """Indices of a seeded long-tailed subset of a labelled split, and the per-class counts it keeps.

    ``n_max`` is the size of the largest class; class c keeps a random subset (``numpy.random.default_rng(seed)``,
    drawn class by class in label order) of ``min(n_c, available)`` of its images. The indices come back sorted, so
    the subset keeps the dataset's order and only the seed decides which images are in it.
    """
    targets = np.asarray(targets, dtype=np.int64)
    k = int(num_classes if num_classes is not None else targets.max() + 1)
    available = np.bincount(targets, minlength=k)
    counts = long_tailed_counts(int(available.max()), k, imb_ratio)
    rng = np.random.default_rng(seed)
    keep, kept = [], []
    for c, n in enumerate(counts):
        idx = np.flatnonzero(targets == c)
        n = min(n, len(idx))
        keep.append(np.sort(rng.choice(idx, n, replace=False)) if n < len(idx) else idx)
        kept.append(int(n))
    return np.sort(np.concatenate(keep)), kept
