"""Classification losses compared in the MaxSup paper, written once.

Every loss takes ``outputs`` and ``target``:

* ``outputs``: ``(B, K)`` raw logits, or a tuple whose first element is the class logits (DeiT distillation models
  return ``(cls_logits, dist_logits)``).
* ``target``: ``(B,)`` integer class indices, or ``(B, K)`` soft targets (rows summing to 1) as produced by
  ``timm.data.Mixup`` / ``torchvision.transforms.v2.MixUp``.

Losses and penalties are computed in at least float32: fp16/bf16 logits (autocast) are promoted to float32 so that
large logits cannot overflow, and float64 logits stay float64 (``torch.autograd.gradcheck`` holds for every loss).
The weight α of LS and MaxSup follows :class:`AlphaSchedule`; trainers call ``criterion.set_epoch(epoch)`` at the
start of every epoch (fractional epochs are allowed), ``criterion.on_epoch_end()`` at its end (only OLS uses it) and
``criterion.on_eval(top1)`` after every validation (only Adaptive LS uses it: its teacher is the best checkpoint).
Loss state that must survive a resume (OLS's matrices, Adaptive LS's teacher) lives in registered buffers and
submodules, so ``criterion.state_dict()`` checkpoints it. Trainers call :func:`compute_loss`, which feeds the losses
that need more than the logits (Zipf-LS dense mode: per-position logits; Adaptive LS: the input batch).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .models import logits_and_dense_logits
from .training.distributed import all_reduce_sum

__all__ = [
    "AlphaSchedule",
    "maxsup_penalty",
    "label_smoothing_penalty",
    "ls_decomposition",
    "penalty_stats",
    "penalty_stats_tensor",
    "PENALTY_KEYS",
    "PenaltyStatsMeter",
    "entropy_alpha",
    "compute_loss",
    "CrossEntropyLoss",
    "LabelSmoothingLoss",
    "MaxSupLoss",
    "LogitPenaltyLoss",
    "ConfidencePenaltyLoss",
    "OnlineLabelSmoothingLoss",
    "ZipfLabelSmoothingLoss",
    "LSAblationLoss",
    "LogitNormLoss",
    "FocalLoss",
    "AdaptiveLabelSmoothingLoss",
    "MaxSupAdaptiveLoss",
    "ALPHA_DENOMINATORS",
    "CRITERIA",
    "build_criterion",
]


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


# --------------------------------------------------------------------------------------------------------------------
# α schedule (paper App. F)
# --------------------------------------------------------------------------------------------------------------------
#: ``AlphaSchedule`` denominators: ``E-1`` (default; the authors' DeiT and torchvision code) or ``E`` (the paper's t/T).
ALPHA_DENOMINATORS = ("E-1", "E")


class AlphaSchedule:
    """Linear α schedule α(e) = start + (end − start)·e / D for epochs e = 0 … E − 1.

    * ``denominator="E-1"`` (default), D = max(1, E − 1): epoch 0 gives ``start`` and the last epoch gives ``end``
      exactly, as in the authors' DeiT code (0.1 + 0.1·e/299 for E = 300) and their torchvision trainer.
    * ``denominator="E"``, D = E: the paper's α = start + (end − start)·t/T (App. F, Tables 11 and 15) and the
      authors' FFCV code; the last epoch gets start + (end − start)·(E − 1)/E, one step short of ``end``.

    ``epoch`` may be fractional for per-step updates; it is clamped to [0, E − 1]. ``start == end`` is a fixed α
    (Table 11's left column).
    """

    def __init__(self, start: float = 0.1, end: float = 0.2, epochs: int = 1, denominator: str = "E-1"):
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"AlphaSchedule needs epochs >= 1, got {epochs!r}")
        if not (math.isfinite(start) and math.isfinite(end)):
            raise ValueError(f"alpha start/end must be finite, got {start}, {end}")
        if denominator not in ALPHA_DENOMINATORS:
            raise ValueError(f"alpha denominator must be one of {', '.join(ALPHA_DENOMINATORS)}, got {denominator!r}")
        self.start, self.end, self.epochs, self.denominator = float(start), float(end), epochs, denominator

    def __call__(self, epoch: float) -> float:
        e = min(max(float(epoch), 0.0), float(self.epochs - 1))
        d = self.epochs if self.denominator == "E" else max(1, self.epochs - 1)
        return self.start + (self.end - self.start) * e / d

    def __repr__(self) -> str:
        return (f"AlphaSchedule(start={self.start}, end={self.end}, epochs={self.epochs}, "
                f"denominator={self.denominator!r})")


# --------------------------------------------------------------------------------------------------------------------
# Loss modules
# --------------------------------------------------------------------------------------------------------------------
class _Loss(nn.Module):
    """Shared plumbing: epoch hooks and input checking."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch = 0.0

    def set_epoch(self, epoch: float) -> None:
        self.epoch = float(epoch)

    def on_epoch_end(self) -> None:
        """Called by trainers after the last step of an epoch (OLS refreshes its soft labels here)."""

    def on_eval(self, score: float) -> None:
        """Called by trainers after every validation with the top-1 accuracy (Adaptive LS updates its teacher)."""

    def _inputs(self, outputs: Tensor | Sequence[Tensor], target: Tensor) -> tuple[Tensor, Tensor]:
        z = _class_logits(outputs)
        return z, _check_target(z, target)


class CrossEntropyLoss(_Loss):
    """Plain CE for hard or soft targets (the paper's baseline)."""

    def forward(self, outputs: Tensor | Sequence[Tensor], target: Tensor) -> Tensor:
        z, target = self._inputs(outputs, target)
        return _cross_entropy(z, target)


class _ScheduledLoss(_Loss):
    def __init__(self, alpha_start: float = 0.1, alpha_end: float = 0.2, epochs: int = 1,
                 alpha_denominator: str = "E-1"):
        super().__init__()
        self.alpha_schedule = AlphaSchedule(alpha_start, alpha_end, epochs, alpha_denominator)

    @property
    def alpha(self) -> float:
        return self.alpha_schedule(self.epoch)

    def extra_repr(self) -> str:
        return f"{self.alpha_schedule}, alpha={self.alpha:.4f}"


class LabelSmoothingLoss(_ScheduledLoss):
    """CE + α·(⟨t, z⟩ − mean z), i.e. CE against (1 − α)·t + α/K (Theorem 3.3 / Eq. 27).

    On hard targets this equals ``F.cross_entropy(z, y, label_smoothing=α)``. Computed by one fused op
    (:class:`_SmoothedCrossEntropy`) with the value and gradient of the composed form.
    """

    def forward(self, outputs: Tensor | Sequence[Tensor], target: Tensor) -> Tensor:
        z, target = self._inputs(outputs, target)
        return _smoothed_ce(z, target, self.alpha, maxsup=False)


class MaxSupLoss(_ScheduledLoss):
    """CE + α·(z_max − mean z) (Paper Eq. 8, Algorithm 1). CE uses the unsmoothed (hard or Mixup) targets.

    Computed by one fused op (:class:`_SmoothedCrossEntropy`): backward softmax − t + α·(onehot(argmax) − 1/K),
    Paper Eq. 9, with the value and gradient of CE + α·``maxsup_penalty``.
    """

    def forward(self, outputs: Tensor | Sequence[Tensor], target: Tensor) -> Tensor:
        z, target = self._inputs(outputs, target)
        return _smoothed_ce(z, target, self.alpha, maxsup=True)


class LSAblationLoss(_ScheduledLoss):
    """Table 1 ablations: CE + α·(one part of the LS decomposition).

    ``variant``: ``"reg"`` (regularization only, /M), ``"err"`` (error amplification only, /N) or ``"err-alt"``
    (α·(z_gt − z_max)).
    """

    _KEYS = {"reg": "regularization_only", "err": "error_amplification_only", "err-alt": "error_amplification_alt"}

    def __init__(self, variant: str, alpha_start: float = 0.1, alpha_end: float = 0.2, epochs: int = 1,
                 alpha_denominator: str = "E-1"):
        super().__init__(alpha_start, alpha_end, epochs, alpha_denominator)
        if variant not in self._KEYS:
            raise ValueError(f"unknown LS ablation {variant!r}; choose one of {sorted(self._KEYS)}")
        self.variant = variant

    def forward(self, outputs: Tensor | Sequence[Tensor], target: Tensor) -> Tensor:
        z, target = self._inputs(outputs, target)
        term = ls_decomposition(z, target)[self._KEYS[self.variant]]
        return _cross_entropy(z, target) + self.alpha * term.mean()


class LogitPenaltyLoss(_Loss):
    """CE + (β/2)·‖z‖² per sample (Dauphin & Cubuk 2021, as in Kornblith et al. 2021); β = 2e-3 in MaxSup."""

    def __init__(self, beta: float = 2e-3):
        super().__init__()
        self.beta = beta

    def forward(self, outputs: Tensor | Sequence[Tensor], target: Tensor) -> Tensor:
        z, target = self._inputs(outputs, target)
        return _cross_entropy(z, target) + 0.5 * self.beta * _acc(z).pow(2).sum(-1).mean()


class ConfidencePenaltyLoss(_Loss):
    """CE − β·H(softmax(z)) (Pereyra et al. 2017); β = 0.1 in MaxSup Table 13. Minimising it raises entropy."""

    def __init__(self, beta: float = 0.1):
        super().__init__()
        self.beta = beta

    def forward(self, outputs: Tensor | Sequence[Tensor], target: Tensor) -> Tensor:
        z, target = self._inputs(outputs, target)
        log_p = F.log_softmax(_acc(z), dim=-1)
        entropy = -(log_p.exp() * log_p).sum(-1)
        return _cross_entropy(z, target) - self.beta * entropy.mean()


class OnlineLabelSmoothingLoss(_Loss):
    """Online Label Smoothing (Zhang et al., TIP 2021): a·CE + (1 − a)·CE against a learned per-class soft label.

    Epoch t trains against the matrix ``S`` frozen at the end of epoch t − 1. During the epoch, the softmax of every
    correctly classified training sample is added to row ``y`` of an accumulator; :meth:`on_epoch_end` (all-reduced
    under DDP) sets ``S[c]`` to the mean of row c, or to a uniform row when class c had no correct prediction (the
    official rule). ``S⁰`` is LS with ε = ``init_smoothing`` (diagonal 1 − ε, off-diagonal ε/(K − 1)), as in the
    MaxSup code. Only hard targets update the statistics; soft (Mixup) targets use their arg-max class, which is
    documented as an approximation since the method does not define the Mixup case.
    """

    def __init__(self, num_classes: int, a: float = 0.5, init_smoothing: float = 0.1):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"OLS needs at least 2 classes, got {num_classes}")
        self.num_classes, self.a = num_classes, a
        off = init_smoothing / (num_classes - 1)
        s0 = torch.full((num_classes, num_classes), off)
        s0.fill_diagonal_(1.0 - init_smoothing)
        self.register_buffer("soft_labels", s0)
        self.register_buffer("accumulator", torch.zeros(num_classes, num_classes, dtype=torch.float64))
        self.register_buffer("counts", torch.zeros(num_classes, dtype=torch.float64))

    def forward(self, outputs: Tensor | Sequence[Tensor], target: Tensor) -> Tensor:
        z, target = self._inputs(outputs, target)
        hard = target if target.dim() == 1 else target.argmax(-1)
        log_p = F.log_softmax(_acc(z), dim=-1)
        if self.training:
            with torch.no_grad():
                correct = log_p.argmax(-1) == hard
                p = log_p[correct].exp().to(self.accumulator.dtype)
                self.accumulator.index_add_(0, hard[correct], p)
                self.counts.index_add_(0, hard[correct], torch.ones_like(hard[correct], dtype=self.counts.dtype))
        soft_target = self.soft_labels.to(log_p)[hard]
        soft_ce = -(soft_target * log_p).sum(-1).mean()
        return self.a * _cross_entropy(z, target) + (1.0 - self.a) * soft_ce

    @torch.no_grad()
    def on_epoch_end(self) -> None:
        acc, counts = self.accumulator, self.counts
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(acc)
            dist.all_reduce(counts)
        new = torch.full_like(self.soft_labels, 1.0 / self.num_classes)
        seen = counts > 0
        new[seen] = (acc[seen] / counts[seen, None]).to(new.dtype)
        self.soft_labels.copy_(new)
        acc.zero_()
        counts.zero_()


class ZipfLabelSmoothingLoss(_Loss):
    """Zipf's label smoothing (Liang et al., ECCV 2022): CE + λ·KL(P ‖ Q) over the non-target classes.

    Q is the softmax over the K − 1 non-target logits. P is a detached Zipf prior: every class is ranked (ties share
    the smallest rank, target included), weighted rank^(−power), and renormalised without the target.

    * With ``dense_logits`` (B, K, H, W) or (B, K, N), the per-position logits of the final feature map (the head
      applied at every location, or to every patch token of a ViT; the official ``--dense`` mode), classes are
      ranked by how many positions vote for them. ``dense=True`` asks :func:`compute_loss` to supply them.
    * Without it, classes are ranked by the final logits themselves (the official non-dense mode).
    """

    def __init__(self, lam: float = 0.1, power: float = 1.0, dense: bool = False):
        super().__init__()
        self.lam, self.power, self.dense = lam, power, dense

    @torch.no_grad()
    def zipf_target(self, logits: Tensor, hard: Tensor, dense_logits: Tensor | None = None) -> Tensor:
        """(B, K) Zipf prior over non-target classes (target column is 0)."""
        b, k = logits.shape
        if dense_logits is not None:
            votes = dense_logits.flatten(2).argmax(1)  # (B, H·W)
            score = torch.zeros(b, k, device=logits.device).scatter_add_(
                1, votes, torch.ones_like(votes, dtype=torch.float32))
        else:
            score = logits
        # rank 'min' (scipy rankdata(method='min') on −score): 1 + number of classes with a strictly larger score
        ascending = score.sort(dim=-1).values.contiguous()
        rank = 1.0 + (k - torch.searchsorted(ascending, score.contiguous(), right=True)).float()
        w = rank.pow(-self.power)
        w.scatter_(1, hard[:, None], 0.0)
        return (w / w.sum(-1, keepdim=True)).to(logits.dtype)

    def forward(self, outputs: Tensor | Sequence[Tensor], target: Tensor, dense_logits: Tensor | None = None) -> Tensor:
        z, target = self._inputs(outputs, target)
        hard = target if target.dim() == 1 else target.argmax(-1)
        zf = _acc(z)
        p = self.zipf_target(zf.detach(), hard, dense_logits)
        non_target = zf.scatter(1, hard[:, None], float("-inf"))
        log_q = F.log_softmax(non_target, dim=-1)
        mask = p > 0
        kl = torch.where(mask, p * (torch.log(p.clamp_min(1e-30)) - log_q), torch.zeros_like(p)).sum(-1)
        return _cross_entropy(z, target) + self.lam * kl.mean()


class LogitNormLoss(_Loss):
    """LogitNorm (Wei et al., ICML 2022; MaxSup Table 13): CE on z / (τ·(‖z‖₂ + 1e-7)), ‖·‖₂ per sample.

    Only training changes; evaluation uses the raw logits (same arg-max). τ must shrink as K grows: 0.04 is the
    CIFAR-10 setting of the official code and Kornblith et al.'s ImageNet value (the official ``--temp`` default of
    1.0 cannot fit 1000 classes).
    """

    def __init__(self, tau: float = 0.04):
        super().__init__()
        if not tau > 0:
            raise ValueError(f"LogitNorm needs tau > 0, got {tau}")
        self.tau = tau

    def forward(self, outputs: Tensor | Sequence[Tensor], target: Tensor) -> Tensor:
        z, target = self._inputs(outputs, target)
        z = _acc(z)
        norm = torch.linalg.vector_norm(z, dim=-1, keepdim=True) + 1e-7
        return _cross_entropy(z / (self.tau * norm), target)


class FocalLoss(_Loss):
    """Focal loss (Lin et al., ICCV 2017; MaxSup Table 7 with γ = 2): mean_i −Σ_k t_ik·(1 − p_ik)^γ·log p_ik.

    For hard targets this is the usual −(1 − p_y)^γ·log p_y; soft (Mixup) targets weight every class's focal term by
    its target mass (the same extension as soft-target CE). γ = 0 is CE. No α class weights (T7's configs use none).
    """

    def __init__(self, gamma: float = 2.0):
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


@torch.no_grad()
def entropy_alpha(logits: Tensor, alpha_max: float = 0.2) -> Tensor:
    """Per-sample α_i = alpha_max·(1 − H(softmax z_i)/log K), detached (see :class:`AdaptiveLabelSmoothingLoss`).

    Args:
        logits: (B, K) raw scores of the model being trained.
    Returns:
        (B,) in [0, alpha_max]: 0 for a uniform prediction, alpha_max for a one-hot one.
    """
    log_p = F.log_softmax(_acc(logits), dim=-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    return alpha_max * (1.0 - entropy / math.log(logits.shape[-1])).clamp(0.0, 1.0)


class _AdaptiveAlpha(_Loss):
    """α is per sample (:func:`entropy_alpha`); ``alpha`` reports the batch mean of the last training step."""

    def __init__(self, alpha_max: float = 0.2):
        super().__init__()
        if not 0 <= alpha_max <= 1:
            raise ValueError(f"alpha_max must be in [0, 1], got {alpha_max}")
        self.alpha_max = alpha_max
        self._last_alpha: Tensor | None = None

    def _alpha(self, z: Tensor) -> Tensor:
        a = entropy_alpha(z, self.alpha_max)
        if self.training:
            self._last_alpha = a.mean()
        return a

    @property
    def alpha(self) -> float | None:
        return None if self._last_alpha is None else float(self._last_alpha)  # one sync, when a trainer logs it


class MaxSupAdaptiveLoss(_AdaptiveAlpha):
    """MaxSup with the per-sample α of Adaptive LS (:func:`entropy_alpha`): Table 15's "adaptive α" column.

    CE + α_i·(z_max − mean z) with α_i = alpha_max·(1 − H(p_i)/log K) detached; no teacher is needed because MaxSup
    has no prior distribution. alpha_max = 0.2 (ours): the end of the paper's α schedule.
    """

    def forward(self, outputs: Tensor | Sequence[Tensor], target: Tensor) -> Tensor:
        z, target = self._inputs(outputs, target)
        return _smoothed_ce(z, target, self._alpha(z), maxsup=True)


class AdaptiveLabelSmoothingLoss(_AdaptiveAlpha):
    """Adaptive label smoothing with self-knowledge (Lee, Cheung & Zhang, EMNLP 2022, arXiv 2210.13459; MaxSup T13).

    Loss: mean_i CE(s_i, softmax z_i) with the smoothed target s_i = (1 − α_i)·t_i + α_i·q_i, where

    * α_i = alpha_max·(1 − H(p_i)/log K), p_i = softmax(z_i) of the model being trained, detached: the smoothing
      weight is set per instance, on the fly, from the model's own predictive entropy, so it grows as the model
      becomes confident (0 for a uniform prediction, alpha_max for a one-hot one);
    * q_i = softmax of the teacher's logits on the same (augmented) input; the teacher is a frozen copy of the
      model at its best validation top-1 so far ("self-knowledge"), replaced whenever validation improves
      (:meth:`on_eval`). Before the first validation (or without a model to copy) q is uniform, i.e. LS with the
      per-sample α.

    **Source and what is ours.** The paper's abstract and introduction (the only parts of arXiv 2210.13459 we could
    read) state the two ingredients: a per-instance smoothing parameter computed from the model's probability
    distribution ("entropic level") during the forward pass, and the best-generalising past checkpoint of the same
    model as the prior; MaxSup T13 states "teacher = best-val checkpoint". The exact mapping from entropy to α
    (normalised entropy, direction, ``alpha_max`` = 0.2 to match the paper's α range, temperature 1) is our
    reading, not checked against the paper's §3: verify it before quoting T13/T15 numbers.

    The teacher is a submodule, so ``state_dict()`` (and every trainer checkpoint) carries it and a resumed run
    keeps its prior. It costs one extra forward pass per step and one model copy of memory.
    """

    needs_inputs = True

    def __init__(self, model: nn.Module | None = None, alpha_max: float = 0.2):
        super().__init__(alpha_max)
        self.teacher = None
        if model is not None:
            self.teacher = copy.deepcopy(model).requires_grad_(False).eval()
        object.__setattr__(self, "_student", model)  # a reference, not a submodule: not in state_dict
        self.register_buffer("best_score", torch.tensor(float("-inf"), dtype=torch.float64))
        self.register_buffer("has_teacher", torch.tensor(False))
        self._has_teacher = False  # host copy of the buffer: no device sync per step
        self.register_load_state_dict_post_hook(lambda module, _keys: module._sync_flag())

    def _sync_flag(self) -> None:
        self._has_teacher = bool(self.has_teacher) and self.teacher is not None

    def train(self, mode: bool = True) -> AdaptiveLabelSmoothingLoss:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher always predicts in eval mode (BatchNorm running statistics)
        return self

    @torch.no_grad()
    def on_eval(self, score: float) -> None:
        if self.teacher is None or not score > float(self.best_score):
            return
        self.teacher.load_state_dict(self._student.state_dict())
        self.best_score.fill_(score)
        self.has_teacher.fill_(True)
        self._has_teacher = True

    def forward(self, outputs: Tensor | Sequence[Tensor], target: Tensor, inputs: Tensor | None = None) -> Tensor:
        z, target = self._inputs(outputs, target)
        z = _acc(z)
        alpha = self._alpha(z)[:, None]
        t = _soft(target, z.shape[1], z.dtype)
        if self._has_teacher and inputs is not None:
            with torch.no_grad():
                prior = F.softmax(_acc(_class_logits(self.teacher(inputs))), dim=-1)
        else:
            prior = torch.full_like(t, 1.0 / z.shape[1])
        return _smoothed_ce(z, (1.0 - alpha) * t + alpha * prior, 0.0, maxsup=False)


def compute_loss(model: nn.Module, criterion: nn.Module, samples: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """One training forward pass and its loss: ``(outputs, criterion(outputs, target, ...))``.

    Supplies what some losses need beyond the logits: per-position logits for Zipf-LS with ``dense=True``
    (:func:`maxsup.models.logits_and_dense_logits`) and the input batch for Adaptive LS's teacher. Call it inside
    the trainer's autocast block.
    """
    extra: dict[str, Tensor] = {}
    if getattr(criterion, "dense", False):
        outputs, extra["dense_logits"] = logits_and_dense_logits(model, samples)
    else:
        outputs = model(samples)
    if getattr(criterion, "needs_inputs", False):
        extra["inputs"] = samples
    return outputs, criterion(outputs, target, **extra)


# --------------------------------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------------------------------
CRITERIA = ("ce", "ls", "maxsup", "lp", "cp", "ols", "zipf", "ls-reg", "ls-err", "ls-err-alt", "logitnorm", "focal",
            "adaptive-ls", "maxsup-adaptive")


_OPTIONS = {"lp": {"beta"}, "cp": {"beta"}, "ols": {"a", "init_smoothing"}, "zipf": {"lam", "power", "dense"},
            "logitnorm": {"tau"}, "focal": {"gamma"}, "adaptive-ls": {"alpha_max"}, "maxsup-adaptive": {"alpha_max"}}


def build_criterion(name: str, num_classes: int, epochs: int = 1, *, alpha_start: float = 0.1,
                    alpha_end: float = 0.2, alpha_denominator: str = "E-1", model: nn.Module | None = None,
                    **kw) -> _Loss:
    """Build a loss by name.

    Args:
        name: one of :data:`CRITERIA` (``ce, ls, maxsup, lp, cp, ols, zipf``, the Table 1 ablations
            ``ls-reg, ls-err, ls-err-alt``, and ``logitnorm, focal, adaptive-ls, maxsup-adaptive``).
        num_classes: K.
        epochs: total training epochs (the α schedule's E).
        alpha_start, alpha_end, alpha_denominator: α schedule for LS, MaxSup and the ablations (paper: 0.1 → 0.2;
            see :class:`AlphaSchedule` for ``E-1`` vs ``E``).
        model: the network being trained (unwrapped from DDP / torch.compile); ``adaptive-ls`` copies it as its
            teacher. Ignored by the other losses.
        **kw: loss-specific options: ``beta`` (lp, cp), ``a`` / ``init_smoothing`` (ols), ``lam`` / ``power`` /
            ``dense`` (zipf), ``tau`` (logitnorm), ``gamma`` (focal), ``alpha_max`` (adaptive-ls, maxsup-adaptive).
            An option the loss does not take is refused.
    """
    key = name.lower().replace("_", "-")
    if key not in CRITERIA:
        raise ValueError(f"unknown criterion {name!r}; valid names: {', '.join(CRITERIA)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    unknown = set(kw) - _OPTIONS.get(key, set())
    if unknown:
        takes = ", ".join(sorted(_OPTIONS.get(key, ()))) or "none"
        raise ValueError(f"loss {key!r} has no option {', '.join(sorted(unknown))} (its options: {takes})")
    sched = dict(alpha_start=alpha_start, alpha_end=alpha_end, epochs=epochs, alpha_denominator=alpha_denominator)
    AlphaSchedule(alpha_start, alpha_end, epochs, alpha_denominator)  # validate for every loss
    if key == "ce":
        return CrossEntropyLoss()
    if key == "ls":
        return LabelSmoothingLoss(**sched)
    if key == "maxsup":
        return MaxSupLoss(**sched)
    if key == "lp":
        return LogitPenaltyLoss(beta=kw.get("beta", 2e-3))
    if key == "cp":
        return ConfidencePenaltyLoss(beta=kw.get("beta", 0.1))
    if key == "ols":
        return OnlineLabelSmoothingLoss(num_classes, a=kw.get("a", 0.5), init_smoothing=kw.get("init_smoothing", 0.1))
    if key == "zipf":
        return ZipfLabelSmoothingLoss(lam=kw.get("lam", 0.1), power=kw.get("power", 1.0), dense=kw.get("dense", False))
    if key == "logitnorm":
        return LogitNormLoss(tau=kw.get("tau", 0.04))
    if key == "focal":
        return FocalLoss(gamma=kw.get("gamma", 2.0))
    if key == "adaptive-ls":
        return AdaptiveLabelSmoothingLoss(model, alpha_max=kw.get("alpha_max", 0.2))
    if key == "maxsup-adaptive":
        return MaxSupAdaptiveLoss(alpha_max=kw.get("alpha_max", 0.2))
    return LSAblationLoss(key[3:], **sched)
