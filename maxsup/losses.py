"""Classification losses compared in the MaxSup paper, written once.

Every loss takes ``outputs`` and ``target``:

* ``outputs``: ``(B, K)`` raw logits, or a tuple whose first element is the class logits (DeiT distillation models
  return ``(cls_logits, dist_logits)``).
* ``target``: ``(B,)`` integer class indices, or ``(B, K)`` soft targets (rows summing to 1) as produced by
  ``timm.data.Mixup`` / ``torchvision.transforms.v2.MixUp``.

Penalties are always computed in float32, even under fp16/bf16 autocast, so that large logits cannot overflow.
The weight α of LS and MaxSup follows :class:`AlphaSchedule`; trainers call ``criterion.set_epoch(epoch)`` at the
start of every epoch (fractional epochs are allowed) and ``criterion.on_epoch_end()`` at its end (only OLS uses it).
Loss state that must survive a resume (OLS's matrices) lives in registered buffers, so ``criterion.state_dict()``
checkpoints it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AlphaSchedule",
    "maxsup_penalty",
    "label_smoothing_penalty",
    "ls_decomposition",
    "penalty_stats",
    "CrossEntropyLoss",
    "LabelSmoothingLoss",
    "MaxSupLoss",
    "LogitPenaltyLoss",
    "ConfidencePenaltyLoss",
    "OnlineLabelSmoothingLoss",
    "ZipfLabelSmoothingLoss",
    "LSAblationLoss",
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


def _soft(target: Tensor, k: int) -> Tensor:
    """(B, K) float32 target distribution from hard or soft targets."""
    if target.dim() == 1:
        return F.one_hot(target, k).float()
    return target.float()


def _cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Mean CE for hard or soft targets, in float32."""
    logits = logits.float()
    if target.dim() == 1:
        return F.cross_entropy(logits, target)
    return torch.sum(-target.float() * F.log_softmax(logits, dim=-1), dim=-1).mean()


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
    z = _class_logits(logits).float()
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
    z = z.float()
    return (_soft(target, z.shape[1]) * z).sum(-1) - z.mean(-1)


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
    z = z.float()
    k = z.shape[1]
    gt = target if target.dim() == 1 else target.argmax(-1)
    z_gt = z.gather(1, gt[:, None])
    diff = z_gt - z  # (B, K); positive where z_m < z_gt
    below = diff > 0
    above = diff < 0
    reg_sum = torch.where(below, diff, torch.zeros_like(diff)).sum(-1)
    err_sum = torch.where(above, diff, torch.zeros_like(diff)).sum(-1)
    m = below.sum(-1).clamp_min(1).float()
    n = above.sum(-1).clamp_min(1).float()
    return {
        "regularization": reg_sum / k,
        "error_amplification": err_sum / k,
        "regularization_only": reg_sum / m,
        "error_amplification_only": err_sum / n,
        "error_amplification_alt": z_gt.squeeze(1) - z.amax(-1),
    }


@torch.no_grad()
def penalty_stats(outputs: Tensor | Sequence[Tensor], target: Tensor) -> dict[str, float]:
    """Batch means of the quantities trainers log each epoch (no α applied).

    Returns ``maxsup_penalty``, ``ls_penalty``, ``ls_regularization``, ``ls_error_amplification`` and
    ``misclassified`` (fraction of samples whose top-1 is not the (arg-max) target): the samples on which LS and
    MaxSup differ.
    """
    z = _class_logits(outputs).detach()
    dec = ls_decomposition(z, target)
    gt = target if target.dim() == 1 else target.argmax(-1)
    return {
        "maxsup_penalty": maxsup_penalty(z).mean().item(),
        "ls_penalty": label_smoothing_penalty(z, target).mean().item(),
        "ls_regularization": dec["regularization"].mean().item(),
        "ls_error_amplification": dec["error_amplification"].mean().item(),
        "misclassified": (z.argmax(-1) != gt).float().mean().item(),
    }


# --------------------------------------------------------------------------------------------------------------------
# α schedule (paper App. F)
# --------------------------------------------------------------------------------------------------------------------
class AlphaSchedule:
    """Linear α schedule α(e) = start + (end − start)·e / max(1, E − 1), clamped to [0, E − 1].

    ``epoch`` may be fractional for per-step updates. Epoch 0 gives ``start`` and epoch E − 1 gives ``end`` exactly,
    as in the authors' DeiT code (0.1 + 0.1·e/299 for E = 300). ``start == end`` is a fixed α (Table 11's left column).
    """

    def __init__(self, start: float = 0.1, end: float = 0.2, epochs: int = 1):
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"AlphaSchedule needs epochs >= 1, got {epochs!r}")
        if not (math.isfinite(start) and math.isfinite(end)):
            raise ValueError(f"alpha start/end must be finite, got {start}, {end}")
        self.start, self.end, self.epochs = float(start), float(end), epochs

    def __call__(self, epoch: float) -> float:
        e = min(max(float(epoch), 0.0), float(self.epochs - 1))
        return self.start + (self.end - self.start) * e / max(1, self.epochs - 1)

    def __repr__(self) -> str:
        return f"AlphaSchedule(start={self.start}, end={self.end}, epochs={self.epochs})"


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

    def _inputs(self, outputs: Tensor | Sequence[Tensor], target: Tensor) -> tuple[Tensor, Tensor]:
        z = _class_logits(outputs)
        return z, _check_target(z, target)


class CrossEntropyLoss(_Loss):
    """Plain CE for hard or soft targets (the paper's baseline)."""

    def forward(self, outputs: Tensor | Sequence[Tensor], target: Tensor) -> Tensor:
        z, target = self._inputs(outputs, target)
        return _cross_entropy(z, target)


class _ScheduledLoss(_Loss):
    def __init__(self, alpha_start: float = 0.1, alpha_end: float = 0.2, epochs: int = 1):
        super().__init__()
        self.alpha_schedule = AlphaSchedule(alpha_start, alpha_end, epochs)

    @property
    def alpha(self) -> float:
        return self.alpha_schedule(self.epoch)

    def extra_repr(self) -> str:
        return f"{self.alpha_schedule}, alpha={self.alpha:.4f}"


class LabelSmoothingLoss(_ScheduledLoss):
    """CE + α·(⟨t, z⟩ − mean z), i.e. CE against (1 − α)·t + α/K (Theorem 3.3 / Eq. 27).

    On hard targets this equals ``F.cross_entropy(z, y, label_smoothing=α)``.
    """

    def forward(self, outputs: Tensor | Sequence[Tensor], target: Tensor) -> Tensor:
        z, target = self._inputs(outputs, target)
        return _cross_entropy(z, target) + self.alpha * label_smoothing_penalty(z, target).mean()


class MaxSupLoss(_ScheduledLoss):
    """CE + α·(z_max − mean z) (Paper Eq. 8, Algorithm 1). CE uses the unsmoothed (hard or Mixup) targets."""

    def forward(self, outputs: Tensor | Sequence[Tensor], target: Tensor) -> Tensor:
        z, target = self._inputs(outputs, target)
        return _cross_entropy(z, target) + self.alpha * maxsup_penalty(z).mean()


class LSAblationLoss(_ScheduledLoss):
    """Table 1 ablations: CE + α·(one part of the LS decomposition).

    ``variant``: ``"reg"`` (regularization only, /M), ``"err"`` (error amplification only, /N) or ``"err-alt"``
    (α·(z_gt − z_max)).
    """

    _KEYS = {"reg": "regularization_only", "err": "error_amplification_only", "err-alt": "error_amplification_alt"}

    def __init__(self, variant: str, alpha_start: float = 0.1, alpha_end: float = 0.2, epochs: int = 1):
        super().__init__(alpha_start, alpha_end, epochs)
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
        return _cross_entropy(z, target) + 0.5 * self.beta * z.float().pow(2).sum(-1).mean()


class ConfidencePenaltyLoss(_Loss):
    """CE − β·H(softmax(z)) (Pereyra et al. 2017); β = 0.1 in MaxSup Table 13. Minimising it raises entropy."""

    def __init__(self, beta: float = 0.1):
        super().__init__()
        self.beta = beta

    def forward(self, outputs: Tensor | Sequence[Tensor], target: Tensor) -> Tensor:
        z, target = self._inputs(outputs, target)
        log_p = F.log_softmax(z.float(), dim=-1)
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
        log_p = F.log_softmax(z.float(), dim=-1)
        if self.training:
            with torch.no_grad():
                correct = log_p.argmax(-1) == hard
                p = log_p[correct].exp().to(self.accumulator.dtype)
                self.accumulator.index_add_(0, hard[correct], p)
                self.counts.index_add_(0, hard[correct], torch.ones_like(hard[correct], dtype=self.counts.dtype))
        soft_target = self.soft_labels.to(log_p.device)[hard]
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

    * With ``dense_logits`` (B, K, H, W), the per-position logits of the final feature map (the head applied at
      every location; the official ``--dense`` mode), classes are ranked by how many positions vote for them.
    * Without it, classes are ranked by the final logits themselves (the official non-dense mode).
    """

    def __init__(self, lam: float = 0.1, power: float = 1.0):
        super().__init__()
        self.lam, self.power = lam, power

    @torch.no_grad()
    def zipf_target(self, logits: Tensor, hard: Tensor, dense_logits: Tensor | None = None) -> Tensor:
        """(B, K) Zipf prior over non-target classes (target column is 0)."""
        b, k = logits.shape
        if dense_logits is not None:
            votes = dense_logits.flatten(2).argmax(1)  # (B, H·W)
            score = torch.zeros(b, k, device=logits.device).scatter_add_(
                1, votes, torch.ones_like(votes, dtype=torch.float32))
        else:
            score = logits.float()
        # rank 'min' (scipy rankdata(method='min') on −score): 1 + number of classes with a strictly larger score
        ascending = score.sort(dim=-1).values.contiguous()
        rank = 1.0 + (k - torch.searchsorted(ascending, score.contiguous(), right=True)).float()
        w = rank.pow(-self.power)
        w.scatter_(1, hard[:, None], 0.0)
        return w / w.sum(-1, keepdim=True)

    def forward(self, outputs: Tensor | Sequence[Tensor], target: Tensor, dense_logits: Tensor | None = None) -> Tensor:
        z, target = self._inputs(outputs, target)
        hard = target if target.dim() == 1 else target.argmax(-1)
        zf = z.float()
        p = self.zipf_target(zf.detach(), hard, dense_logits)
        non_target = zf.scatter(1, hard[:, None], float("-inf"))
        log_q = F.log_softmax(non_target, dim=-1)
        mask = p > 0
        kl = torch.where(mask, p * (torch.log(p.clamp_min(1e-30)) - log_q), torch.zeros_like(p)).sum(-1)
        return _cross_entropy(z, target) + self.lam * kl.mean()


# --------------------------------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------------------------------
CRITERIA = ("ce", "ls", "maxsup", "lp", "cp", "ols", "zipf", "ls-reg", "ls-err", "ls-err-alt")


def build_criterion(name: str, num_classes: int, epochs: int = 1, *, alpha_start: float = 0.1,
                    alpha_end: float = 0.2, **kw) -> _Loss:
    """Build a loss by name.

    Args:
        name: one of :data:`CRITERIA` (``ce, ls, maxsup, lp, cp, ols, zipf`` and the Table 1 ablations
            ``ls-reg, ls-err, ls-err-alt``).
        num_classes: K.
        epochs: total training epochs (the α schedule's E).
        alpha_start, alpha_end: α schedule for LS, MaxSup and the ablations (paper: 0.1 → 0.2).
        **kw: loss-specific options: ``beta`` (lp, cp), ``a`` / ``init_smoothing`` (ols), ``lam`` / ``power`` (zipf).
    """
    key = name.lower().replace("_", "-")
    if key not in CRITERIA:
        raise ValueError(f"unknown criterion {name!r}; valid names: {', '.join(CRITERIA)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    sched = dict(alpha_start=alpha_start, alpha_end=alpha_end, epochs=epochs)
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
        return ZipfLabelSmoothingLoss(lam=kw.get("lam", 0.1), power=kw.get("power", 1.0))
    return LSAblationLoss(key[3:], **sched)
