"""State-dict keys, checked once for every loader: checkpoint layouts, wrapper prefixes, key/shape comparison.

:func:`read_weights` is the one layout detector (this project's files, DeiT/SMMix ``{'model'}``, timm-train
``{'state_dict', 'args'}``, Lightning, bare state_dicts such as LV-ViT's released ``.pth.tar``); :func:`fit_keys`
renames keys to the model being loaded (SMMix's ``token_head``). Used by ``Deit/main.py --eval``,
:func:`maxsup.models.load_pretrained_backbone` (``--finetune``) and ``python -m maxsup.hub convert/evaluate``, which
all report a mismatch in one sentence naming the first offending keys and the layouts tried.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from ..errors import UserError
from ..training.checkpoint import load_checkpoint

__all__ = ["strip_prefixes", "describe_keys", "KeyMismatch", "compare_keys", "load_state_dict_strict", "LayoutError",
           "LAYOUTS", "KEY_RENAMES", "Weights", "read_weights", "fit_keys", "token_head_of", "load_weights",
           "load_any_checkpoint"]

log = logging.getLogger("maxsup.models")

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


# --------------------------------------------------------------------------------------------------------------------
# Checkpoint layouts: the one detector behind Deit/main.py --eval/--finetune, the common_resnet --finetune and
# `python -m maxsup.hub convert/evaluate`
# --------------------------------------------------------------------------------------------------------------------
class LayoutError(UserError):
    """A checkpoint's keys fit none of the layouts in :data:`LAYOUTS`."""


#: The checkpoint layouts this project reads, in the order they are tried, and what each holds.
LAYOUTS: dict[str, str] = {
    "maxsup": "this project's {'model', 'arch', 'eval_transform', ...} (every trainer here, `hub convert`)",
    "deit": "{'model': state_dict, ...} (DeiT's and SMMix's main.py and released files, torchvision references)",
    "timm-train": "{'state_dict': state_dict, 'args', ...} (timm's train.py, LV-ViT's main.py; EMA in "
                  "'state_dict_ema')",
    "lightning": "{'state_dict': {'model.<key>': ...}, 'pytorch-lightning_version'} (PyTorch Lightning, Conv/ffcv)",
    "bare": "a bare state_dict (LV-ViT's released .pth.tar, ffcv-imagenet's final_weights.pt)",
}

#: Key renames tried, after the container is unpacked, to fit the state_dict to the model being loaded.
KEY_RENAMES = ("none", "SMMix token_head -> TokenHeadViT backbone./aux_head",
               "SMMix token_head dropped (SMMix evaluates the class head only)")


@dataclass(frozen=True)
class Weights:
    """The weights found in a checkpoint file. ``state_dict``: tensors with the DDP/torch.compile/Lightning prefixes
    removed; ``layout``: a key of :data:`LAYOUTS`; ``renames``: what was changed to get there (for logs);
    ``args``: the training args as a plain dict ({} when none); ``arch``: this project's ``arch`` entry or None."""

    state_dict: dict[str, Tensor]
    layout: str
    renames: tuple[str, ...] = ()
    args: dict[str, Any] = field(default_factory=dict)
    epoch: int = -1
    arch: dict[str, Any] | None = None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def _plain(value: Any) -> Any:
    """Args as primitives (argparse.Namespace → dict), so a converted checkpoint loads with ``weights_only=True``."""
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def _layout_error(ckpt: Mapping[str, Any], source: str) -> LayoutError:
    unexpected = [str(k) for k, v in ckpt.items() if not isinstance(v, Tensor)]
    return LayoutError(f"{source}: keys fit no known checkpoint layout (tried {', '.join(LAYOUTS)}); first "
                       f"unexpected keys: {', '.join(unexpected[:5]) or describe_keys(ckpt)}")


def read_weights(ckpt: Mapping[str, Any], source: str = "checkpoint", *, ema: bool = False) -> Weights:
    """Find the state_dict in a loaded checkpoint of any layout in :data:`LAYOUTS` (``ema=True``: the EMA weights
    the file keeps, ``model_ema`` / ``state_dict_ema``). Raises :class:`LayoutError` naming the first unexpected
    keys and the layouts tried."""
    if not isinstance(ckpt, Mapping) or not ckpt:
        raise LayoutError(f"{source} holds no weights (an empty checkpoint); tried {', '.join(LAYOUTS)}")
    args = _plain(ckpt.get("args") or {})
    args = args if isinstance(args, dict) else {}
    epoch = ckpt.get("epoch", -1)
    epoch = int(epoch) if isinstance(epoch, int) else -1
    arch = ckpt.get("arch") if isinstance(ckpt.get("arch"), Mapping) else None  # timm writes a str there
    renames: list[str] = []
    if _is_state_dict(ckpt.get("model")):
        layout, key = ("maxsup" if arch is not None else "deit"), ("model_ema" if ema else "model")
    elif _is_state_dict(ckpt.get("state_dict")):
        sd = ckpt["state_dict"]
        lightning = "pytorch-lightning_version" in ckpt or all(
            str(k).startswith(("model.", "criterion.")) for k in sd)
        layout, key = ("lightning", "state_dict") if lightning else ("timm-train", "state_dict_ema" if ema else
                                                                      "state_dict")
    elif _is_state_dict(ckpt):
        layout, key = "bare", None
    else:
        raise _layout_error(ckpt, source)
    if key is None:
        sd = dict(ckpt)
    elif _is_state_dict(ckpt.get(key)):
        sd = dict(ckpt[key])
    else:
        raise LayoutError(f"{source} ({layout} layout) has no {key!r} weights"
                          + (" (it was saved without an EMA)" if ema else ""))
    if ema and layout in ("bare", "lightning"):
        raise LayoutError(f"{source} ({layout} layout) keeps no EMA weights")
    if layout == "lightning":  # the network is the LightningModule's `model`; criterion.* buffers are not weights
        sd = {k[len("model."):]: v for k, v in sd.items() if str(k).startswith("model.")}
        renames.append("Lightning 'model.' prefix removed")
    stripped = strip_prefixes(sd)
    if stripped.keys() != sd.keys():
        renames.append("'module.'/'_orig_mod.' prefixes removed")
    return Weights(stripped, layout, tuple(renames), args, epoch, dict(arch) if arch is not None else None)


def fit_keys(weights: Weights, own: Mapping[str, Tensor], source: str = "checkpoint",
             ignore: frozenset[str] | set[str] = frozenset()) -> tuple[dict[str, Tensor], str]:
    """The state_dict renamed (see :data:`KEY_RENAMES`) so that its keys are exactly ``own``'s (the model's
    state_dict; a meta-device model works); ``ignore``: keys left out of the comparison (a classifier being
    replaced). Returns (state_dict, rename). Raises :class:`LayoutError` naming the first unexpected and missing
    keys of the closest candidate, and the layouts tried. Shapes are not compared here."""
    sd = weights.state_dict
    wanted = set(own) - set(ignore)
    candidates = [(KEY_RENAMES[0], sd)]
    if any(k.startswith("token_head.") for k in sd):
        if any(k.startswith("backbone.") for k in own):
            candidates.append((KEY_RENAMES[1], {("aux_head." + k[len("token_head."):]) if k.startswith("token_head.")
                                                else f"backbone.{k}": v for k, v in sd.items()}))
        candidates.append((KEY_RENAMES[2], {k: v for k, v in sd.items() if not k.startswith("token_head.")}))
    best = None
    for rename, cand in candidates:
        have = set(cand) - set(ignore)
        if have == wanted:
            return cand, rename
        # in the file's and the model's order: "first" keys are the ones a user finds at the top of the listing
        unexpected = [k for k in cand if k in have and k not in wanted]
        missing = [k for k in own if k in wanted and k not in have]
        if best is None or len(unexpected) + len(missing) < len(best[0]) + len(best[1]):
            best = (unexpected, missing)
    unexpected, missing = best
    raise LayoutError(f"{source} does not match the model architecture: its keys fit no known layout for it (read "
                      f"as {weights.layout!r}; layouts tried: {', '.join(LAYOUTS)}; key renames tried: "
                      f"{'; '.join(r for r, _ in candidates)}); first unexpected keys: "
                      f"{', '.join(unexpected[:5]) or 'none'}; first missing keys: {', '.join(missing[:5]) or 'none'}")


def token_head_of(weights: Weights) -> str | None:
    """The ``token_head`` (``maxsup.models.with_token_head``) the checkpoint's network was built with: this
    project's ``arch.kwargs``, or ``"smmix"`` for an SMMix file (a ``token_head`` Linear beside a plain ViT)."""
    if weights.arch is not None:
        return (weights.arch.get("kwargs") or {}).get("token_head")
    if "token_head.weight" in weights.state_dict and not any(k.startswith("backbone.") for k in weights.state_dict):
        return "smmix"
    return None


def load_weights(model: nn.Module, ckpt: Mapping[str, Any], source: str = "checkpoint", *,
                 ema: bool = False) -> Weights:
    """Strictly load the weights of a checkpoint of any known layout into ``model`` (names via :func:`fit_keys`,
    then shapes); one :class:`UserError` sentence on a mismatch."""
    weights = read_weights(ckpt, source, ema=ema)
    sd, _ = fit_keys(weights, model.state_dict(), source)
    load_state_dict_strict(model, sd, source)
    return weights


def load_any_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load(weights_only=True)``; if the file pickles ``argparse.Namespace`` (DeiT's, SMMix's and timm's
    training files store their args that way), retry with exactly that type allow-listed (logged). ``args`` comes
    back as a plain dict."""
    try:
        ckpt = load_checkpoint(path)
    except UserError as exc:
        if "Namespace" not in str(exc):
            raise
        log.warning("%s pickles argparse.Namespace; loading with weights_only=True and exactly argparse.Namespace "
                    "allow-listed (torch.serialization.safe_globals)", path)
        ckpt = load_checkpoint(path, allow_namespace=True)
    if isinstance(ckpt.get("args"), argparse.Namespace):
        ckpt["args"] = _plain(ckpt["args"])
    return ckpt
