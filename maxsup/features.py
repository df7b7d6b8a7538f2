"""Feature-space metrics of Kornblith et al. 2021 (paper Table 2/14): intra-class variation and separability R².

With unit-normalised features x̂ (cosine distance 1 − x̂ᵀŷ), ordered pairs including m = n:

* d̄_within = (1/K) Σ_k (1/N_k²) Σ_{m,n∈k} (1 − x̂_mᵀx̂_n) = 1 − (1/K) Σ_k ‖μ_k‖², μ_k = class mean of x̂;
* d̄_total  = (1/K²) Σ_{j,k} (1/(N_j N_k)) Σ_{m∈j,n∈k} (1 − x̂_mᵀx̂_n) = 1 − ‖(1/K) Σ_k μ_k‖²;
* R² = 1 − d̄_within / d̄_total.

So everything follows from per-class sums of normalised features: O(N·D) time, O(K·D) memory; per-chunk sums are
accumulated in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["class_separation", "ClassSeparationAccumulator"]


class ClassSeparationAccumulator:
    """Streaming version of :func:`class_separation` for feature sets that do not fit in memory."""

    def __init__(self, chunk: int = 8192) -> None:
        self.chunk = chunk
        self.sums: dict[int, Tensor] = {}
        self.counts: dict[int, int] = {}
        self.dim: int | None = None

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor) -> None:
        """features: (N, D); labels: (N,) integer classes."""
        if features.dim() != 2:
            raise ValueError(f"features must be (N, D), got shape {tuple(features.shape)}")
        labels = torch.as_tensor(labels)
        if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
            raise ValueError(f"labels must be (N,) with N={features.shape[0]}, got shape {tuple(labels.shape)}")
        if self.dim is not None and features.shape[1] != self.dim:
            raise ValueError(f"feature dimension changed from {self.dim} to {features.shape[1]}")
        if features.shape[0] == 0:
            return
        self.dim = features.shape[1]
        labels = labels.detach().to(features.device)
        for start in range(0, features.shape[0], self.chunk):  # float64 in chunks: bounded memory
            # normalise and sum within a chunk in the input precision (≤ chunk terms), accumulate chunks in float64
            x = features[start:start + self.chunk].detach()
            x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
            x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
            uniq, inv = torch.unique(labels[start:start + self.chunk], return_inverse=True)
            sums = torch.zeros(len(uniq), x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, inv, x).double()
            counts = torch.bincount(inv, minlength=len(uniq)).tolist()
            for i, c in enumerate(uniq.tolist()):
                s = sums[i].cpu()
                self.sums[c] = self.sums[c] + s if c in self.sums else s
                self.counts[c] = self.counts.get(c, 0) + counts[i]

    def compute(self) -> dict[str, float]:
        if not self.counts:
            raise ValueError("class_separation needs at least one sample")
        classes = sorted(self.counts)
        means = torch.stack([self.sums[c] / self.counts[c] for c in classes])  # (K, D)
        d_within = 1.0 - float((means * means).sum(1).mean())
        grand = means.mean(0)
        d_total = 1.0 - float(grand @ grand)
        r2 = 1.0 - d_within / d_total if d_total > 0 else float("nan")
        singletons = sum(1 for c in classes if self.counts[c] == 1)
        return {"d_within": d_within, "d_total": d_total, "r2": r2, "num_classes": len(classes),
                "n": int(sum(self.counts.values())), "singleton_classes": singletons}


def class_separation(features: Tensor, labels: Tensor) -> dict[str, float]:
    """Kornblith et al. 2021 d̄_within, d̄_total and R² (see module docstring).

    Args:
        features: (N, D) penultimate-layer features (any scale; they are L2-normalised here).
        labels: (N,) integer classes.
    Returns:
        ``{"d_within", "d_total", "r2", "num_classes", "n", "singleton_classes"}``. A class with one sample
        contributes a within-class distance of exactly 0 (its only pair is m = n), as in the definition; it is counted
        in ``singleton_classes`` so callers can see it. Empty input raises ``ValueError``.
    """
    acc = ClassSeparationAccumulator()
    acc.update(torch.as_tensor(features), torch.as_tensor(labels))
    return acc.compute()
