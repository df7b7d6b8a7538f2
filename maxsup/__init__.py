"""MaxSup: Maximum Suppression regularisation (Zhou et al., NeurIPS 2025), written once for every subproject.

>>> from maxsup import MaxSupLoss
>>> criterion = MaxSupLoss(alpha_start=0.1, alpha_end=0.2, epochs=90)
>>> criterion.set_epoch(epoch)              # once per epoch
>>> loss = criterion(model(images), labels)  # CE + α·(z_max − mean z)

Importing :mod:`maxsup` registers the LV-ViT models (``lvvit_t``, ``lvvit_s``, ``lvvit_m``) with timm, so
``timm.create_model("lvvit_s")`` works afterwards (see :mod:`maxsup.models`).
"""

from . import models  # noqa: F401  (registers lvvit_t/s/m with timm)
from .features import ClassSeparationAccumulator, class_separation
from .losses import (
    CRITERIA,
    AdaptiveLabelSmoothingLoss,
    AlphaSchedule,
    ConfidencePenaltyLoss,
    CrossEntropyLoss,
    FocalLoss,
    LabelSmoothingLoss,
    LogitNormLoss,
    LogitPenaltyLoss,
    LSAblationLoss,
    MaxSupAdaptiveLoss,
    MaxSupLoss,
    OnlineLabelSmoothingLoss,
    ZipfLabelSmoothingLoss,
    build_criterion,
    compute_loss,
    label_smoothing_penalty,
    ls_decomposition,
    maxsup_penalty,
    penalty_stats,
)
from .metrics import ClassificationMeter, ECEAccumulator, expected_calibration_error, reliability_bins, topk_accuracy

__version__ = "0.1.0"

__all__ = [
    "AdaptiveLabelSmoothingLoss", "FocalLoss", "LogitNormLoss", "MaxSupAdaptiveLoss", "compute_loss",
    "AlphaSchedule", "CRITERIA", "ClassSeparationAccumulator", "ClassificationMeter", "ConfidencePenaltyLoss",
    "CrossEntropyLoss", "ECEAccumulator", "LSAblationLoss", "LabelSmoothingLoss", "LogitPenaltyLoss", "MaxSupLoss",
    "OnlineLabelSmoothingLoss", "ZipfLabelSmoothingLoss", "build_criterion", "class_separation",
    "expected_calibration_error", "label_smoothing_penalty", "ls_decomposition", "maxsup_penalty", "penalty_stats",
    "reliability_bins", "topk_accuracy",
]
