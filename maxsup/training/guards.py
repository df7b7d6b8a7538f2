"""Non-finite losses and weights, checked on every rank so that all ranks stop together.

* :func:`step_guard` — one all-reduce per step tells every rank whether any rank saw a non-finite loss (then all stop
  together with :class:`NonFiniteError`, instead of one rank raising while the others hang in the next collective)
  and whether any rank received a preemption signal (then all checkpoint at this step boundary and exit).
* :func:`check_finite_model` — before a checkpoint is written: the last step of an epoch can leave NaN weights behind
  a finite loss, and they must never replace the last good ``checkpoint.pth``.

The remedies named in the message are the caller's flags (``lr_flag``, ``clip_flag``): each trainer spells them its
own way.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from .distributed import all_reduce_sum

__all__ = ["NonFiniteError", "step_guard", "check_finite_model"]


class NonFiniteError(UserError):
    """The loss or the weights became NaN/inf; the last good checkpoint was left untouched."""


def _nonfinite_message(what: str, epoch: int, step: int, lr_flag: str, clip_flag: str) -> str:
    return (f"{what} at epoch {epoch}, step {step}: training diverged and stopped before writing a checkpoint (the "
            f"last good checkpoint is unchanged); resume from it with a lower {lr_flag} or with gradient clipping "
            f"({clip_flag})")


def step_guard(loss: torch.Tensor, epoch: int, step: int, *, stop_requested: bool = False, lr_flag: str = "--lr",
               clip_flag: str = "--clip-grad") -> bool:
    """Call once per step, after the forward pass, on every rank. Raises :class:`NonFiniteError` on every rank if
    any rank's loss is not finite; returns True on every rank if any rank asked to stop (preemption).

    One collective of two numbers per step (none in a single process); ``loss`` stays on its device."""
    flags = torch.stack([(~torch.isfinite(loss.detach().float())).any().float(),
                         torch.tensor(float(stop_requested), device=loss.device)])
    bad, stop = all_reduce_sum(flags).tolist()
    if bad:
        value = loss.detach().float().item()
        what = f"the loss is {value}" if not torch.isfinite(torch.tensor(value)) else \
            f"the loss is not finite on {int(bad)} rank(s)"
        raise NonFiniteError(_nonfinite_message(what, epoch, step, lr_flag, clip_flag))
    return bool(stop)


def check_finite_model(model: nn.Module, epoch: int, step: int, *, lr_flag: str = "--lr",
                       clip_flag: str = "--clip-grad") -> None:
    """Raise :class:`NonFiniteError` (on every rank) if any floating parameter or buffer of ``model`` is NaN/inf.
    Call on every rank right before a checkpoint is written."""
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    device = tensors[0].device if tensors else torch.device("cpu")
    bad = torch.zeros((), device=device)
    for t in tensors:
        bad += (~torch.isfinite(t.detach())).any().float()
    if all_reduce_sum(bad.reshape(1)).item():
        raise NonFiniteError(_nonfinite_message("the weights are not finite", epoch, step, lr_flag, clip_flag))
