"""Penalty statistics that trainers log each epoch: the MaxSup and LS penalties and LS's two parts (no α applied)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..training.distributed import all_reduce_sum
from .functional import _class_logits, label_smoothing_penalty, ls_decomposition, maxsup_penalty

__all__ = ["PENALTY_KEYS", "penalty_stats", "penalty_stats_tensor", "PenaltyStatsMeter"]


#: Keys of :func:`penalty_stats`, in the order of :func:`penalty_stats_tensor`.
PENALTY_KEYS = ("maxsup_penalty", "ls_penalty", "ls_regularization", "ls_error_amplification", "misclassified")


@torch.no_grad()
def penalty_stats_tensor(outputs: Tensor | Sequence[Tensor], target: Tensor) -> Tensor:
    """:func:`penalty_stats` as a (5,) float64 tensor on the logits' device (no host synchronisation)."""
    z = _class_logits(outputs).detach()
    dec = ls_decomposition(z, target)
    gt = target if target.dim() == 1 else target.argmax(-1)
    values = (maxsup_penalty(z), label_smoothing_penalty(z, target), dec["regularization"],
              dec["error_amplification"], (z.argmax(-1) != gt))
    return torch.stack([v.to(torch.float64).mean() for v in values])


def penalty_stats(outputs: Tensor | Sequence[Tensor], target: Tensor) -> dict[str, float]:
    """Batch means of the quantities trainers log each epoch (no α applied).

    Returns ``maxsup_penalty``, ``ls_penalty``, ``ls_regularization``, ``ls_error_amplification`` and
    ``misclassified`` (fraction of samples whose top-1 is not the (arg-max) target): the samples on which LS and
    MaxSup differ.
    """
    return dict(zip(PENALTY_KEYS, penalty_stats_tensor(outputs, target).tolist(), strict=True))


class PenaltyStatsMeter:
    """Sample-weighted epoch means of :func:`penalty_stats`, measured every ``every`` steps.

    The sums stay on the logits' device, so measuring costs no host synchronisation; :meth:`compute` syncs once
    (and all-reduces over DDP ranks). ``every = 1`` measures every step.
    """

    def __init__(self, every: int = 10):
        if every < 1:
            raise ValueError(f"stats interval must be >= 1, got {every}")
        self.every = every
        self.sums: Tensor | None = None
        self.count = 0

    def update(self, step: int, outputs: Tensor | Sequence[Tensor], target: Tensor) -> bool:
        """Measure this batch if ``step`` is a multiple of ``every``; returns whether it did."""
        if step % self.every:
            return False
        b = _class_logits(outputs).shape[0]
        v = penalty_stats_tensor(outputs, target) * b
        self.sums = v if self.sums is None else self.sums + v
        self.count += b
        return True

    def state_dict(self) -> dict[str, Any]:
        """This rank's running sums (for a mid-epoch checkpoint); :meth:`load_state_dict` restores them."""
        return {"sums": None if self.sums is None else self.sums.detach().cpu().tolist(), "count": self.count}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        sums = state.get("sums")
        self.sums = None if sums is None else torch.tensor(sums, dtype=torch.float64, device=device)
        self.count = int(state.get("count", 0))

    def compute(self) -> dict[str, float]:
        """Means over the measured samples of all ranks (zeros if nothing was measured)."""
        sums = self.sums if self.sums is not None else torch.zeros(len(PENALTY_KEYS), dtype=torch.float64)
        totals = all_reduce_sum(torch.cat([sums, sums.new_tensor([float(self.count)])]))
        values = (totals[:-1] / totals[-1].clamp_min(1.0)).tolist()
        return dict(zip(PENALTY_KEYS, values, strict=True))

