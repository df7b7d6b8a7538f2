"""Functional ops shared by the losses: input checks, the fused CE + LS / CE + MaxSup autograd op, the penalties in
logit form (paper §3) and the per-sample α of Adaptive LS.

Shapes: ``logits`` (B, K) raw scores; ``target`` (B,) class indices or (B, K) soft targets (rows summing to 1).
Results are in at least float32 (fp16/bf16 promoted, float64 kept).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["maxsup_penalty", "label_smoothing_penalty", "ls_decomposition", "entropy_alpha"]


# --------------------------------------------------------------------------------------------------------------------
# Input checking
# --------------------------------------------------------------------------------------------------------------------
def _class_logits(outputs: Tensor | Sequence[Tensor]) -> Tensor:
    """Class logits from a model output; tuples (DeiT distillation) put them first."""
    if isinstance(outputs, (tuple, list)):
        outputs = outputs[0]
    if not isinstance(outputs, Tensor) or outputs.dim() != 2:
        shape = tuple(outputs.shape) if isinstance(outputs, Tensor) else type(outputs).__name__
        raise ValueError(f"logits must be a (B, K) tensor, got {shape}")
    return outputs


def _check_target(logits: Tensor, target: Tensor) -> Tensor:
    """Validate ``target`` against ``logits`` (B, K); returns it unchanged."""
    b, k = logits.shape
    if target.dim() == 1:
        if target.shape[0] != b:
            raise ValueError(f"target has {target.shape[0]} labels but logits have batch size {b}")
        if target.dtype.is_floating_point:
            raise ValueError("hard targets must be integer class indices, got a floating-point (B,) tensor")
        # Checked on CPU only: on an accelerator this would force a host sync every step, and cross_entropy's own
        # device-side assert catches bad labels there.
        if target.device.type == "cpu" and target.numel():
            bad = target[(target < 0) | (target >= k)]
            if bad.numel():
                raise ValueError(f"label {int(bad[0])} is outside [0, {k}) for logits with K={k} classes")
        return target
    if target.dim() == 2:
        if tuple(target.shape) != (b, k):
            raise ValueError(f"soft target shape {tuple(target.shape)} does not match logits shape {(b, k)}")
        return target
    raise ValueError(f"target must be (B,) class indices or (B, K) soft targets, got shape {tuple(target.shape)}")


def _acc(z: Tensor) -> Tensor:
    """``z`` in the dtype losses are computed in: float32 for fp16/bf16/fp32 input, float64 stays float64."""
    return z.to(torch.promote_types(z.dtype, torch.float32))


def _soft(target: Tensor, k: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """(B, K) target distribution (in ``dtype``) from hard or soft targets."""
    if target.dim() == 1:
        return F.one_hot(target, k).to(dtype)
    return target.to(dtype)


def _cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Mean CE for hard or soft targets, in at least float32."""
    logits = _acc(logits)
    if target.dim() == 1:
        return F.cross_entropy(logits, target)
    return torch.sum(-target.to(logits.dtype) * F.log_softmax(logits, dim=-1), dim=-1).mean()


# --------------------------------------------------------------------------------------------------------------------
# Fused CE + LS and CE + MaxSup (one log-softmax pass; the backward is log-softmax's own)
# --------------------------------------------------------------------------------------------------------------------
class _SmoothedCrossEntropy(torch.autograd.Function):
    """mean_i [CE(t_i, softmax z_i) + α_i·penalty_i], penalty = MaxSup's z_max − mean z or LS's ⟨t, z⟩ − mean z.

    Both losses are −Σ_k w_k·log p_k with Σ_k w_k = 1 (for rows of ``t`` summing to 1):
    LS: w = (1 − α)·t + α/K;  MaxSup: w = t + α/K − α·onehot(argmax z). So the gradient is p − w (Eq. 9 for MaxSup,
    since log p and z differ by a per-row constant), which is exactly log-softmax's backward applied to −w. The
    forward reads log p once more for the mean (and the max): the penalties are shift-invariant, so
    z_max − mean z = max log p − mean log p.
    """

    @staticmethod
    def forward(ctx, z: Tensor, target: Tensor, alpha: float | Tensor, maxsup: bool) -> Tensor:
        logp = torch.log_softmax(z, dim=-1)
        t_logp = logp.gather(1, target[:, None]).squeeze(1) if target.dim() == 1 else (target * logp).sum(-1)
        mean_logp = logp.mean(-1)
        idx = None
        if maxsup:
            top, idx = logp.max(-1)
            penalty = top - mean_logp
        else:
            penalty = t_logp - mean_logp
        per_alpha = isinstance(alpha, Tensor)
        ctx.maxsup, ctx.alpha = maxsup, (None if per_alpha else float(alpha))
        ctx.save_for_backward(logp, target, alpha if per_alpha else None, idx)
        return (alpha * penalty - t_logp).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        logp, target, alpha_t, idx = ctx.saved_tensors
        b, k = logp.shape
        s = grad.to(logp.dtype) / b
        a = alpha_t[:, None].to(logp.dtype) if alpha_t is not None else ctx.alpha  # (B, 1) or a float
        # −w·s, written in one pass (the α/K fill) plus two B-element scatters for hard targets
        neg_w = (s * (-a / k)).expand(b, k).clone(memory_format=torch.contiguous_format)
        t_coef = -s if ctx.maxsup else -(1.0 - a) * s  # weight of t in −w·s
        if target.dim() == 1:
            neg_w.scatter_add_(1, target[:, None], torch.as_tensor(t_coef, dtype=logp.dtype, device=logp.device)
                               .expand(b, 1))
        else:
            neg_w.addcmul_(target.to(logp.dtype), torch.as_tensor(t_coef, dtype=logp.dtype, device=logp.device))
        if ctx.maxsup:
            neg_w.scatter_add_(1, idx[:, None], torch.as_tensor(a * s, dtype=logp.dtype, device=logp.device)
                               .expand(b, 1))
        return torch._log_softmax_backward_data(neg_w, logp, 1, logp.dtype), None, None, None


def _smoothed_ce(z: Tensor, target: Tensor, alpha: float | Tensor, maxsup: bool) -> Tensor:
    z = _acc(z)
    if isinstance(alpha, Tensor):
        alpha = alpha.to(z.dtype)
    if target.dim() == 2:
        target = target.to(z.dtype)
    return _SmoothedCrossEntropy.apply(z, target, alpha, maxsup)


# --------------------------------------------------------------------------------------------------------------------
# Penalties in logit form (paper §3)
# --------------------------------------------------------------------------------------------------------------------
def maxsup_penalty(logits: Tensor) -> Tensor:
    """Per-sample MaxSup penalty z_max − mean_k z_k (Paper Eq. 8).

    Args:
        logits: (B, K) raw scores.
    Returns:
        (B,) float32, ≥ 0.
    """
    z = _acc(_class_logits(logits))
    return z.max(dim=-1).values - z.mean(dim=-1)  # max (not amax): its backward is a cheap scatter


def label_smoothing_penalty(logits: Tensor, target: Tensor) -> Tensor:
    """Per-sample LS penalty ⟨t, z⟩ − mean_k z_k (Theorem 3.3; the Mixup form is Eq. 27).

    With α folded out: CE(s, q) = CE(t, q) + α·label_smoothing_penalty(z, t) for s = (1 − α)·t + α/K.

    Args:
        logits: (B, K) raw scores.
        target: (B,) indices or (B, K) soft targets.
    Returns:
        (B,) float32.
    """
    z = _class_logits(logits)
    target = _check_target(z, target)
    z = _acc(z)
    return (_soft(target, z.shape[1], z.dtype) * z).sum(-1) - z.mean(-1)


def ls_decomposition(logits: Tensor, target: Tensor) -> dict[str, Tensor]:
    """Split the LS penalty into Corollary 3.4's two terms, plus the Table 1 ablation variants.

    For each sample with ground truth g (hard targets; for soft targets the arg-max class is used):

    * ``regularization`` = (1/K)·Σ_{z_m < z_g} (z_g − z_m) ≥ 0
    * ``error_amplification`` = (1/K)·Σ_{z_n > z_g} (z_g − z_n) ≤ 0, zero iff z_g is the top-1 logit

    Their sum is ``label_smoothing_penalty`` (hard targets). Also returned (Table 1 rows, before multiplying by α):

    * ``regularization_only`` = (1/M)·Σ_{z_m < z_g} (z_g − z_m), M = #logits below z_g (0 when M = 0)
    * ``error_amplification_only`` = (1/N)·Σ_{z_n > z_g} (z_g − z_n), N = #logits above z_g (0 when N = 0)
    * ``error_amplification_alt`` = z_g − z_max

    Args:
        logits: (B, K) raw scores.
        target: (B,) indices or (B, K) soft targets.
    Returns:
        dict of (B,) float32 tensors.
    """
    z = _class_logits(logits)
    target = _check_target(z, target)
    z = _acc(z)
    k = z.shape[1]
    gt = target if target.dim() == 1 else target.argmax(-1)
    z_gt = z.gather(1, gt[:, None])
    diff = z_gt - z  # (B, K); positive where z_m < z_gt
    below = diff > 0
    above = diff < 0
    reg_sum = torch.where(below, diff, torch.zeros_like(diff)).sum(-1)
    err_sum = torch.where(above, diff, torch.zeros_like(diff)).sum(-1)
    m = below.sum(-1).clamp_min(1).to(z.dtype)
    n = above.sum(-1).clamp_min(1).to(z.dtype)
    return {
        "regularization": reg_sum / k,
        "error_amplification": err_sum / k,
        "regularization_only": reg_sum / m,
        "error_amplification_only": err_sum / n,
        "error_amplification_alt": z_gt.squeeze(1) - z.amax(-1),
    }


@torch.no_grad()
def entropy_alpha(logits: Tensor, alpha_max: float) -> Tensor:
    """Per-sample α_i = alpha_max·(1 − H(softmax z_i)/log K), detached (see :class:`AdaptiveLabelSmoothingLoss`).

    Args:
        logits: (B, K) raw scores of the model being trained.
    Returns:
        (B,) in [0, alpha_max]: 0 for a uniform prediction, alpha_max for a one-hot one.
    """
    log_p = F.log_softmax(_acc(logits), dim=-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    return alpha_max * (1.0 - entropy / math.log(logits.shape[-1])).clamp(0.0, 1.0)
