"""The smoothing family: CE, label smoothing, MaxSup, the Table 1 LS ablations, Online LS, Zipf LS and the adaptive-α
losses (paper Tables 1, 11, 13, 15). Each class's signature holds its options' defaults; ``@register_loss`` names it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Loss, ScheduledLoss
from .functional import _acc, _class_logits, _cross_entropy, _smoothed_ce, _soft, entropy_alpha, ls_decomposition
from .registry import register_loss

__all__ = ["CrossEntropyLoss", "LabelSmoothingLoss", "MaxSupLoss", "LSAblationLoss", "LSRegularizationOnlyLoss",
           "LSErrorAmplificationOnlyLoss", "LSErrorAmplificationAltLoss", "OnlineLabelSmoothingLoss",
           "ZipfLabelSmoothingLoss", "MaxSupAdaptiveLoss", "AdaptiveLabelSmoothingLoss"]


@register_loss("ce")
class CrossEntropyLoss(Loss):
    """Plain CE for hard or soft targets (the paper's baseline)."""

    def forward(self, outputs: Tensor | Sequence[Tensor], target: Tensor) -> Tensor:
        z, target = self._inputs(outputs, target)
        return _cross_entropy(z, target)


@register_loss("ls")
class LabelSmoothingLoss(ScheduledLoss):
    """CE + α·(⟨t, z⟩ − mean z), i.e. CE against (1 − α)·t + α/K (Theorem 3.3 / Eq. 27).

    On hard targets this equals ``F.cross_entropy(z, y, label_smoothing=α)``. Computed by one fused op
    (:class:`_SmoothedCrossEntropy`) with the value and gradient of the composed form.
    """

    smoothing_mass = ("alpha_start", "alpha_end")

    def forward(self, outputs: Tensor | Sequence[Tensor], target: Tensor) -> Tensor:
        z, target = self._inputs(outputs, target)
        return _smoothed_ce(z, target, self.alpha, maxsup=False)


@register_loss("maxsup")
class MaxSupLoss(ScheduledLoss):
    """CE + α·(z_max − mean z) (Paper Eq. 8, Algorithm 1). CE uses the unsmoothed (hard or Mixup) targets.

    Computed by one fused op (:class:`_SmoothedCrossEntropy`): backward softmax − t + α·(onehot(argmax) − 1/K),
    Paper Eq. 9, with the value and gradient of CE + α·``maxsup_penalty``. At a tie for the max, ``argmax`` is one
    of the tied classes (the authors' ``topk(1)`` may pick another: the same value, another subgradient).
    """

    def forward(self, outputs: Tensor | Sequence[Tensor], target: Tensor) -> Tensor:
        z, target = self._inputs(outputs, target)
        return _smoothed_ce(z, target, self.alpha, maxsup=True)


class LSAblationLoss(ScheduledLoss):
    """Table 1 ablations: CE + α·(one part of the LS decomposition); subclasses pick the part.

    ``variant``: ``"reg"`` (regularization only, /M), ``"err"`` (error amplification only, /N) or ``"err-alt"``
    (α·(z_gt − z_max)); the registered names are ``ls-`` + variant.
    """

    _KEYS = {"reg": "regularization_only", "err": "error_amplification_only", "err-alt": "error_amplification_alt"}
    variant: str

    def forward(self, outputs: Tensor | Sequence[Tensor], target: Tensor) -> Tensor:
        z, target = self._inputs(outputs, target)
        term = ls_decomposition(z, target)[self._KEYS[self.variant]]
        return _cross_entropy(z, target) + self.alpha * term.mean()


@register_loss("ls-reg")
class LSRegularizationOnlyLoss(LSAblationLoss):
    """Table 1 "regularization only": CE + α·(1/M)·Σ_{z_m < z_g} (z_g − z_m)."""

    variant = "reg"


@register_loss("ls-err")
class LSErrorAmplificationOnlyLoss(LSAblationLoss):
    """Table 1 "error amplification only": CE + α·(1/N)·Σ_{z_n > z_g} (z_g − z_n)."""

    variant = "err"


@register_loss("ls-err-alt")
class LSErrorAmplificationAltLoss(LSAblationLoss):
    """Table 1 alternative error term: CE + α·(z_g − z_max)."""

    variant = "err-alt"


@register_loss("ols")
class OnlineLabelSmoothingLoss(Loss):
    """Online Label Smoothing (Zhang et al., TIP 2021): a·CE + (1 − a)·CE against a learned per-class soft label.

    Epoch t trains against the matrix ``S`` frozen at the end of epoch t − 1. During the epoch, the softmax of every
    correctly classified training sample is added to row ``y`` of an accumulator; :meth:`on_epoch_end` (all-reduced
    under DDP) sets ``S[c]`` to the mean of row c, or to a uniform row when class c had no correct prediction (the
    official rule). ``S⁰`` is LS with ε = ``init_smoothing`` (diagonal 1 − ε, off-diagonal ε/(K − 1)), as in the
    MaxSup code. Only hard targets update the statistics; soft (Mixup) targets use their arg-max class, which is
    documented as an approximation since the method does not define the Mixup case.
    """

    smoothing_mass = ("init_smoothing",)

    def __init__(self, num_classes: int, a: float = 0.5, init_smoothing: float = 0.1) -> None:
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


@register_loss("zipf")
class ZipfLabelSmoothingLoss(Loss):
    """Zipf's label smoothing (Liang et al., ECCV 2022): CE + λ·KL(P ‖ Q) over the non-target classes.

    Q is the softmax over the K − 1 non-target logits. P is a detached Zipf prior: every class is ranked (ties share
    the smallest rank, target included), weighted rank^(−power), and renormalised without the target.

    * With ``dense_logits`` (B, K, H, W) or (B, K, N), the per-position logits of the final feature map (the head
      applied at every location, or to every patch token of a ViT; the official ``--dense`` mode), classes are
      ranked by how many positions vote for them. ``dense=True`` asks :func:`compute_loss` to supply them.
    * Without it, classes are ranked by the final logits themselves (the official non-dense mode).
    """

    smoothing_mass = ("lam",)

    def __init__(self, lam: float = 0.1, power: float = 1.0, dense: bool = False) -> None:
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


class _AdaptiveAlpha(Loss):
    """α is per sample (:func:`entropy_alpha`); ``alpha`` reports the batch mean of the last training step."""

    smooths_labels = True

    def __init__(self, alpha_max: float) -> None:
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


@register_loss("maxsup-adaptive")
class MaxSupAdaptiveLoss(_AdaptiveAlpha):
    """MaxSup with the per-sample α of Adaptive LS (:func:`entropy_alpha`): Table 15's "adaptive α" column.

    CE + α_i·(z_max − mean z) with α_i = alpha_max·(1 − H(p_i)/log K) detached; no teacher is needed because MaxSup
    has no prior distribution. alpha_max = 0.2 (ours): the end of the paper's α schedule.
    """

    def __init__(self, alpha_max: float = 0.2) -> None:
        super().__init__(alpha_max)

    def forward(self, outputs: Tensor | Sequence[Tensor], target: Tensor) -> Tensor:
        z, target = self._inputs(outputs, target)
        return _smoothed_ce(z, target, self._alpha(z), maxsup=True)


@register_loss("adaptive-ls")
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

    smoothing_mass = ("alpha_max",)

    needs_inputs = True

    def __init__(self, model: nn.Module | None = None, alpha_max: float = 0.2) -> None:
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
