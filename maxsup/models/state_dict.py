"""State-dict keys, checked once for every loader: wrapper prefixes, key/shape comparison, a short description.

Used by :func:`maxsup.models.model_from_checkpoint`, :func:`maxsup.models.load_pretrained_backbone`, and the hub's
conversion and MMSegmentation export, which all report a mismatch in one sentence naming the first offending keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ..errors import UserError

__all__ = ["strip_prefixes", "describe_keys", "KeyMismatch", "compare_keys", "load_state_dict_strict"]

#: Prefixes that wrappers add to every key: DistributedDataParallel (``module.``), torch.compile (``_orig_mod.``).
_WRAPPER_PREFIXES = re.compile(r"^(module\.|_orig_mod\.)+")


def strip_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """``state_dict`` with the DDP / torch.compile prefixes removed from every key (values unchanged)."""
    return {_WRAPPER_PREFIXES.sub("", k): v for k, v in state_dict.items()}


def describe_keys(state_dict: Mapping[str, Any], n: int = 5) -> str:
    """The first ``n`` keys, comma-separated (for error messages about a file's layout)."""
    return ", ".join(list(map(str, state_dict))[:n])


@dataclass(frozen=True)
class KeyMismatch:
    """How a state_dict differs from a model's: keys only the model has, keys only the file has, and
    ``"key (file shape) vs (model shape)"`` for keys both have with different shapes."""

    missing: list[str]
    unexpected: list[str]
    shapes: list[str]

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.shapes)

    def summary(self, n: int = 4) -> str:
        """``missing 3 keys (e.g. a, b); unexpected 1 keys (e.g. c); 2 shape mismatches (e.g. ...)``."""
        parts = []
        if self.missing:
            parts.append(f"missing {len(self.missing)} keys (e.g. {', '.join(self.missing[:n])})")
        if self.unexpected:
            parts.append(f"unexpected {len(self.unexpected)} keys (e.g. {', '.join(self.unexpected[:n])})")
        if self.shapes:
            parts.append(f"{len(self.shapes)} shape mismatches (e.g. {'; '.join(self.shapes[:max(n - 1, 1)])})")
        return "; ".join(parts)


def compare_keys(own: Mapping[str, Tensor], state_dict: Mapping[str, Tensor]) -> KeyMismatch:
    """What ``load_state_dict(strict=True)`` would refuse, without loading: ``own`` is the model's state_dict (a
    model built on the meta device works: only names and shapes are read)."""
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    return KeyMismatch(missing, unexpected, shapes)


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, Tensor], source: str = "checkpoint") -> None:
    """Strict load that reports missing/unexpected/mis-shaped keys in one sentence (UserError)."""
    state_dict = strip_prefixes(state_dict)
    mismatch = compare_keys(model.state_dict(), state_dict)
    if mismatch:
        raise UserError(f"{source} does not match the model architecture: {mismatch.summary()}")
    model.load_state_dict(state_dict, strict=True)
