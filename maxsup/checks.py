"""Start-up checks that every trainer applies with the same rule and the same sentence."""

from __future__ import annotations

from .errors import UserError

__all__ = ["check_accum_steps", "check_smoothing"]


def check_accum_steps(batches_per_epoch: int, accum_steps: int, *, images: int, batch_size: int,
                      batch_flag: str = "--batch-size", accum_flag: str = "--accum-steps") -> None:
    """Refuse an accumulation group longer than an epoch.

    Every trainer skips the last ``batches_per_epoch % accum_steps`` batches of an epoch (an incomplete group), so
    with fewer batches than ``accum_steps`` an epoch would take zero optimizer steps and still write a checkpoint.

    Args:
        batches_per_epoch: batches one process draws per epoch (after ``drop_last``).
        accum_steps: batches per optimizer step.
        images: training images per process (for the message).
        batch_size, batch_flag, accum_flag: the trainer's own flag names and batch value, quoted in the message.
    """
    if accum_steps > batches_per_epoch:
        raise UserError(f"the training set gives {batches_per_epoch} batches per epoch ({images} images per process, "
                        f"{batch_flag} {batch_size}), fewer than {accum_flag} {accum_steps}: no optimizer step would "
                        f"be taken; lower {accum_flag} or {batch_flag}")


def check_smoothing(value: float, flag: str) -> None:
    """Label smoothing ε mixes ``(1 - ε)`` of the one-hot target with ε of the uniform one: ε must lie in [0, 1)."""
    if not 0.0 <= value < 1.0:
        raise UserError(f"{flag} must be in [0, 1), got {value}")
