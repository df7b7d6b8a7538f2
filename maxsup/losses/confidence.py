"""The confidence family: losses that penalise confident logits directly rather than smoothing the target: logit
penalty, confidence penalty, LogitNorm and focal loss (paper Tables 7 and 13). Each class's signature holds its
options' defaults; ``@register_loss`` names it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Loss
from .functional import _acc, _cross_entropy
from .registry import register_loss

__all__ = ["LogitPenaltyLoss", "ConfidencePenaltyLoss", "LogitNormLoss", "FocalLoss"]


@register_loss("lp")
class LogitPenaltyLoss(Loss):
    """CE + (β/2)·‖z‖² per sample (Dauphin & Cubuk 2021, as in Kornblith et al. 2021); β = 2e-3 in MaxSup."""

    def __init__(self, beta: float = 2e-3) -> None:
        super().__init__()
        self.beta = beta

    def forward(self, outputs: Tensor | Sequence[Tensor], target: Tensor) -> Tensor:
        z, target = self._inputs(outputs, target)
        return _cross_entropy(z, target) + 0.5 * self.beta * _acc(z).pow(2).sum(-1).mean()


@register_loss("cp")
class ConfidencePenaltyLoss(Loss):
    """CE − β·H(softmax(z)) (Pereyra et al. 2017); β = 0.1 in MaxSup Table 13. Minimising it raises entropy."""

    def __init__(self, beta: float = 0.1) -> None:
        super().__init__()
        self.beta = beta

    def forward(self, outputs: Tensor | Sequence[Tensor], target: Tensor) -> Tensor:
        z, target = self._inputs(outputs, target)
        log_p = F.log_softmax(_acc(z), dim=-1)
        entropy = -(log_p.exp() * log_p).sum(-1)
        return _cross_entropy(z, target) - self.beta * entropy.mean()


@register_loss("logitnorm")
class LogitNormLoss(Loss):
    """LogitNorm (Wei et al., ICML 2022; MaxSup Table 13): CE on z / (τ·(‖z‖₂ + 1e-7)), ‖·‖₂ per sample.

    Only training changes; evaluation uses the raw logits (same arg-max). τ must shrink as K grows: 0.04 is the
    CIFAR-10 setting of the official code and Kornblith et al.'s ImageNet value (the official ``--temp`` default of
    1.0 cannot fit 1000 classes).
    """

    def __init__(self, tau: float = 0.04) -> None:
        super().__init__()
        if not tau > 0:
            raise ValueError(f"LogitNorm needs tau > 0, got {tau}")
        self.tau = tau

    def forward(self, outputs: Tensor | Sequence[Tensor], target: Tensor) -> Tensor:
        z, target = self._inputs(outputs, target)
        z = _acc(z)
        norm = torch.linalg.vector_norm(z, dim=-1, keepdim=True) + 1e-7
        return _cross_entropy(z / (self.tau * norm), target)


@register_loss("focal")
class FocalLoss(Loss):
    """Focal loss (Lin et al., ICCV 2017; MaxSup Table 7 with γ = 2): mean_i −Σ_k t_ik·(1 − p_ik)^γ·log p_ik.

    For hard targets this is the usual −(1 − p_y)^γ·log p_y; soft (Mixup) targets weight every class's focal term by
    its target mass (the same extension as soft-target CE). γ = 0 is CE. No α class weights (T7's configs use none).
    """

    def __init__(self, gamma: float = 2.0) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal loss needs gamma >= 0, got {gamma}")
        self.gamma = gamma

    def forward(self, outputs: Tensor | Sequence[Tensor], target: Tensor) -> Tensor:
        z, target = self._inputs(outputs, target)
        log_p = F.log_softmax(_acc(z), dim=-1)
        if target.dim() == 1:
            log_p = log_p.gather(1, target[:, None]).squeeze(1)
            return -((-torch.expm1(log_p)).pow(self.gamma) * log_p).mean()  # 1 − p = −expm1(log p), exact near p = 1
        focal = (-torch.expm1(log_p)).pow(self.gamma) * log_p
        return -(target.to(log_p.dtype) * focal).sum(-1).mean()
