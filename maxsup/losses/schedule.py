"""The α schedule of LS and MaxSup (paper App. F).

Its default values live in the losses' signatures (:class:`maxsup.losses.base.ScheduledLoss`), not here; the
denominator's default is the first of ``ALPHA_DENOMINATORS``.
"""

from __future__ import annotations

import math

__all__ = ["ALPHA_DENOMINATORS", "AlphaSchedule"]

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

    def __init__(self, start: float, end: float, epochs: int, denominator: str = ALPHA_DENOMINATORS[0]) -> None:
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

