"""Classification losses compared in the MaxSup paper, written once.

Every loss takes ``outputs`` and ``target``:

* ``outputs``: ``(B, K)`` raw logits, or a tuple whose first element is the class logits (DeiT distillation models
  return ``(cls_logits, dist_logits)``).
* ``target``: ``(B,)`` integer class indices, or ``(B, K)`` soft targets (rows summing to 1) as produced by
  ``timm.data.Mixup`` / ``torchvision.transforms.v2.MixUp``.

Losses and penalties are computed in at least float32: fp16/bf16 logits (autocast) are promoted to float32 so that
large logits cannot overflow, and float64 logits stay float64 (``torch.autograd.gradcheck`` holds for every loss).
(The authors' code leaves its MaxSup penalty in the autocast dtype, fp16 or bf16; otherwise LS and MaxSup match
their code to rounding: ``tests/test_authors_loss_parity.py``.)
The weight α of LS and MaxSup follows :class:`AlphaSchedule`; trainers call ``criterion.set_epoch(epoch)`` at the
start of every epoch (fractional epochs are allowed), ``criterion.on_epoch_end()`` at its end (only OLS uses it) and
``criterion.on_eval(top1)`` after every validation (only Adaptive LS uses it: its teacher is the best checkpoint).
Loss state that must survive a resume (OLS's matrices, Adaptive LS's teacher) lives in registered buffers and
submodules, so ``criterion.state_dict()`` checkpoints it. Trainers call :func:`compute_loss`, which feeds the losses
that need more than the logits (Zipf-LS dense mode: per-position logits; Adaptive LS: the input batch).

Every loss is registered by name in :data:`LOSSES` (``@register_loss("name")`` on the class); its options and their
defaults are the keyword arguments of its ``__init__`` and are written nowhere else. :func:`build_criterion` builds
one by name, :func:`loss_defaults` lists its options, :func:`parse_loss_options` types ``KEY=VALUE`` strings.

Modules: :mod:`.functional` (fused ops, penalties), :mod:`.stats` (penalty statistics), :mod:`.schedule` (α),
:mod:`.base` (the loss base classes), :mod:`.smoothing` and :mod:`.confidence` (the loss families),
:mod:`.registry` (the table and the factory). Everything is re-exported here.
"""

# The smoothing family registers first, so LOSSES (and every --help) lists ce, ls, maxsup before the others.
from .smoothing import (
    AdaptiveLabelSmoothingLoss,
    CrossEntropyLoss,
    LabelSmoothingLoss,
    LSAblationLoss,
    LSErrorAmplificationAltLoss,
    LSErrorAmplificationOnlyLoss,
    LSRegularizationOnlyLoss,
    MaxSupAdaptiveLoss,
    MaxSupLoss,
    OnlineLabelSmoothingLoss,
    ZipfLabelSmoothingLoss,
)

# isort: split
from .base import Loss, ScheduledLoss
from .confidence import ConfidencePenaltyLoss, FocalLoss, LogitNormLoss, LogitPenaltyLoss
from .functional import entropy_alpha, label_smoothing_penalty, ls_decomposition, maxsup_penalty
from .registry import (
    CRITERIA,
    LOSSES,
    build_criterion,
    check_loss_options,
    compute_loss,
    describe_loss_options,
    loss_defaults,
    parse_loss_options,
    register_loss,
    resolve_loss_options,
)
from .schedule import ALPHA_DENOMINATORS, AlphaSchedule
from .stats import PENALTY_KEYS, PenaltyStatsMeter, penalty_stats, penalty_stats_tensor

__all__ = [
    "AlphaSchedule", "ALPHA_DENOMINATORS",
    "maxsup_penalty", "label_smoothing_penalty", "ls_decomposition", "entropy_alpha",
    "penalty_stats", "penalty_stats_tensor", "PENALTY_KEYS", "PenaltyStatsMeter",
    "Loss", "ScheduledLoss",
    "CrossEntropyLoss", "LabelSmoothingLoss", "MaxSupLoss", "LSAblationLoss", "LSRegularizationOnlyLoss",
    "LSErrorAmplificationOnlyLoss", "LSErrorAmplificationAltLoss", "OnlineLabelSmoothingLoss", "ZipfLabelSmoothingLoss",
    "AdaptiveLabelSmoothingLoss", "MaxSupAdaptiveLoss",
    "LogitPenaltyLoss", "ConfidencePenaltyLoss", "LogitNormLoss", "FocalLoss",
    "LOSSES", "CRITERIA", "register_loss", "loss_defaults", "parse_loss_options", "resolve_loss_options",
    "check_loss_options",
    "describe_loss_options", "build_criterion", "compute_loss",
]
