"""Base classes of the losses: the epoch hooks trainers call, input checking, and the α schedule's one set of defaults.

A new loss subclasses :class:`Loss` (or :class:`ScheduledLoss` for an α schedule), keeps its options as keyword
arguments with defaults in its ``__init__`` signature, and registers itself with
:func:`maxsup.losses.register_loss`.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .functional import _check_target, _class_logits
from .schedule import ALPHA_DENOMINATORS, AlphaSchedule

__all__ = ["Loss", "ScheduledLoss"]


class Loss(nn.Module):
    """Shared plumbing: epoch hooks and input checking."""

    #: True when the loss's α-weighted term is (part of) label smoothing or its replacement, so that a trainer's
    #: target smoothing on top would regularise twice (paper §5.1: MaxSup runs use no target smoothing).
    smooths_labels = False

    def __init__(self) -> None:
        super().__init__()
        self.epoch = 0.0

    def set_epoch(self, epoch: float) -> None:
        """Called by trainers at the start of every epoch (fractional epochs allowed)."""
        self.epoch = float(epoch)

    def on_epoch_end(self) -> None:
        """Called by trainers after the last step of an epoch (OLS refreshes its soft labels here)."""

    def on_eval(self, score: float) -> None:
        """Called by trainers after every validation with the top-1 accuracy (Adaptive LS updates its teacher)."""

    def _inputs(self, outputs: Tensor | Sequence[Tensor], target: Tensor) -> tuple[Tensor, Tensor]:
        z = _class_logits(outputs)
        return z, _check_target(z, target)


class ScheduledLoss(Loss):
    """A loss weighted by α(epoch) from :class:`AlphaSchedule`; ``alpha`` is the current value.

    This signature is the one place the paper's α defaults are written (0.1 → 0.2 over the epochs, §5.1 / App. F;
    denominator ``E-1`` as in the authors' DeiT and torchvision code). ``epochs`` is supplied by
    :func:`maxsup.losses.build_criterion`.
    """

    smooths_labels = True

    def __init__(self, alpha_start: float = 0.1, alpha_end: float = 0.2, epochs: int = 1,
                 alpha_denominator: str = ALPHA_DENOMINATORS[0]) -> None:
        super().__init__()
        self.alpha_schedule = AlphaSchedule(alpha_start, alpha_end, epochs, alpha_denominator)

    @property
    def alpha(self) -> float:
        return self.alpha_schedule(self.epoch)

    def extra_repr(self) -> str:
        return f"{self.alpha_schedule}, alpha={self.alpha:.4f}"
