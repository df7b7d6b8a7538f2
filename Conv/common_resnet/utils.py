"""Small helpers for train.py: weight-decay groups, EMA, seeding, key=value flags (logs: maxsup.training)."""

from __future__ import annotations

import ast
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from maxsup.errors import UserError

NORM_CLASSES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
                nn.LocalResponseNorm)


def set_weight_decay(model: nn.Module, weight_decay: float, norm_weight_decay: float | None = None,
                     bias_weight_decay: float | None = None) -> list[dict[str, Any]]:
    """Optimizer parameter groups: parameters of normalisation layers get ``norm_weight_decay`` and biases get
    ``bias_weight_decay`` when those are set (FFCV's bn_wd=0 / torchvision's ``--norm-weight-decay 0``); every other
    parameter gets ``weight_decay``. Groups are by module type, as in torchvision, not by parameter name."""
    groups: dict[str, list[nn.Parameter]] = {"other": [], "norm": [], "bias": []}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if norm_weight_decay is not None and isinstance(module, NORM_CLASSES):
                groups["norm"].append(p)
            elif bias_weight_decay is not None and name == "bias":
                groups["bias"].append(p)
            else:
                groups["other"].append(p)
    decay = {"other": weight_decay, "norm": norm_weight_decay, "bias": bias_weight_decay}
    return [{"params": ps, "weight_decay": decay[k]} for k, ps in groups.items() if ps]


def exponential_moving_average(model: nn.Module, decay: float, device: torch.device) -> AveragedModel:
    """EMA of parameters *and* buffers (BN statistics), torchvision's ``--model-ema``."""
    return AveragedModel(model, device=device, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one rank's epoch: reseeding from (seed, epoch, rank) at every epoch start makes a resumed run
    repeat the uninterrupted one bit for bit on CPU, whatever happened before the checkpoint."""
    return (seed * 1_000_003 + epoch * 1_009 + rank) % 2**63


def parse_kwargs(items: list[str] | None, flag: str) -> dict[str, Any]:
    """``["width=16", "zero_init_residual=True"]`` → ``{"width": 16, "zero_init_residual": True}`` (Python
    literals; anything else stays a string)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise UserError(f"{flag} expects key=value pairs like width=16, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def plain(obj: Any) -> Any:
    """A JSON- and ``weights_only``-friendly copy of args (paths → str, tuples → lists)."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)
