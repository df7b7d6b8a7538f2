"""Model factory shared by every trainer, the hub and analysis/: build by name, describe, rebuild from a checkpoint."""

from __future__ import annotations

import ast
from typing import Any

import timm
import torchvision
from torch import nn

from ..errors import UserError
from .lt_models import CifarResNet32
from .outputs import classifier_layer
from .resnet import CIFAR_RESNETS, CifarResNet, apply_blurpool
from .state_dict import compare_keys, fit_keys, load_any_checkpoint, load_state_dict_strict, read_weights
from .vit import with_token_head

__all__ = ["create_model", "arch_spec", "model_from_checkpoint", "load_pretrained_backbone", "parse_model_kwargs"]


def parse_model_kwargs(items: list[str] | None, flag: str = "--model-kwargs") -> dict[str, Any]:
    """``["width=16", "img_size=384"]`` → ``{"width": 16, "img_size": 384}``: extra keyword arguments of
    :func:`create_model` (values read as Python literals; anything else stays a string)."""
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


def _torchvision_names() -> set[str]:
    return set(torchvision.models.list_models(module=torchvision.models))


def create_model(name: str, num_classes: int, *, blurpool: bool = False, **kwargs: Any) -> nn.Module:
    """Build a classifier by name.

    * ``cifar_resnet10/18/34/50/101``: :class:`CifarResNet` (kwargs ``width``, ``in_chans``);
    * ``resnet32``: :class:`maxsup.models.CifarResNet32` (kwargs ``width``, ``head=linear|causal_norm``, the
      causal-norm head's ``num_heads, tau, gamma, alpha, momentum``);
    * ``cifar_mobilenet_v2``: torchvision MobileNetV2 with a stride-1 stem;
    * any torchvision classification model (``resnet18/50/101``, ``mobilenet_v2``, ...), randomly initialised;
    * any timm model (``deit_small_patch16_224``, ``vit_tiny_patch16_224`` with ``img_size=32, patch_size=4``,
      ``lvvit_t/s/m``, ...).

    ``blurpool=True`` applies :func:`apply_blurpool` afterwards. ``token_head="smmix"|"dense"|"mixtoken"`` gives a
    ViT the SMMix / Token Labeling head and forward (:func:`maxsup.models.with_token_head`).
    """
    token_head = kwargs.pop("token_head", None)
    if token_head is not None:
        return with_token_head(create_model(name, num_classes, blurpool=blurpool, **kwargs), token_head, name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    try:
        model = _build(name, num_classes, **kwargs)
    except (TypeError, AssertionError) as exc:
        if not kwargs:  # nothing the user chose: a bug, keep its traceback
            raise
        # an unknown keyword (width for a ViT), a value of the wrong type ("4,in_chans=1") or one the model rejects
        # (timm asserts embed_dim % num_heads == 0): the kwargs came from --model-kwargs (or a checkpoint's arch)
        reason = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"model {name!r} cannot be built with kwargs {kwargs} ({reason}); check the names and "
                        f"values of --model-kwargs") from exc
    return apply_blurpool(model) if blurpool else model


def _build(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """The network ``name`` with a ``num_classes`` head (see :func:`create_model`), before BlurPool."""
    if name in CIFAR_RESNETS:
        block, layers = CIFAR_RESNETS[name]
        model = CifarResNet(block, layers, num_classes=num_classes, **kwargs)
    elif name == "resnet32":  # paper Table 7's long-tailed CIFAR backbone (128-d feature)
        model = CifarResNet32(num_classes=num_classes, **kwargs)
    elif name == "cifar_mobilenet_v2":
        # torchvision MobileNetV2 with a stride-1 stem (the usual CIFAR adaptation: 32 px → 4×4 final map)
        model = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes, **kwargs)
        model.features[0][0].stride = (1, 1)
    elif name in _torchvision_names():
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    else:
        if not timm.is_model(name):  # lvvit_t/s/m are registered with timm by maxsup.models.vit
            raise ValueError(f"unknown model {name!r}: use {', '.join(CIFAR_RESNETS)}, resnet32, cifar_mobilenet_v2, a "
                             f"torchvision classification model (e.g. resnet50, mobilenet_v2) or a timm model name "
                             f"(e.g. deit_small_patch16_224)")
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    return model


def arch_spec(name: str, num_classes: int, **kwargs: Any) -> dict[str, Any]:
    """The ``arch`` entry of a checkpoint: everything :func:`create_model` needs to rebuild the network."""
    return {"name": name, "num_classes": int(num_classes), "kwargs": dict(kwargs)}


def model_from_checkpoint(ckpt: dict[str, Any], key: str = "model", source: str = "checkpoint") -> nn.Module:
    """Rebuild the network described by ``ckpt['arch']`` and load ``ckpt[key]`` strictly."""
    arch = ckpt.get("arch")
    if not isinstance(arch, dict) or "name" not in arch or "num_classes" not in arch:
        found = sorted(ckpt)[:8]
        raise UserError(f"{source} has no 'arch' entry, so its architecture cannot be determined (top-level keys: "
                        f"{', '.join(map(str, found))}); convert it with `python -m maxsup.hub convert`")
    if key not in ckpt:
        raise UserError(f"{source} has no '{key}' weights (keys: {', '.join(sorted(map(str, ckpt)))})")
    model = create_model(arch["name"], arch["num_classes"], **arch.get("kwargs", {}))
    load_state_dict_strict(model, ckpt[key], source)
    return model


# Fine-tuning (paper Table 6: CUB / Cars; the recipe is ours, see Conv/common_resnet/README.md)
def load_pretrained_backbone(model: nn.Module, path: str, key: str = "model") -> dict[str, Any]:
    """Initialise ``model`` from a checkpoint for fine-tuning: every weight except the classifier must match; the
    classifier is kept from the checkpoint when its class count equals the model's, else left freshly initialised.

    ``path``: a checkpoint of any layout :func:`maxsup.models.read_weights` knows (this repository's, DeiT's and
    SMMix's ``{'model'}``, timm-train ``{'state_dict', 'args'}``, LV-ViT's bare ``.pth.tar``, Lightning), with
    ``module.`` prefixes removed; ``key="model_ema"`` takes the EMA weights. Returns ``{"loaded": n_tensors,
    "head_replaced": bool, "layout": str}``.
    """
    weights = read_weights(load_any_checkpoint(path), f"--finetune {path}", ema=key != "model")
    head = classifier_layer(model)
    # LV-ViT's and the token-head ViTs' aux_head is a classifier too (per patch token): replaced with the head
    heads = [name for name, m in model.named_modules() if m is head or name.split(".")[-1] == "aux_head"]
    head_keys = {f"{name}.{k}" for name in heads for k in model.get_submodule(name).state_dict()}
    own = model.state_dict()
    # names first (with the head left out, so that a replaced head's absence is no error), then shapes
    state, _ = fit_keys(weights, own, f"--finetune {path}", ignore=head_keys)
    replace = any(k not in state or tuple(state[k].shape) != tuple(own[k].shape) for k in head_keys)
    if replace:
        state = {k: v for k, v in state.items() if k not in head_keys}
        own = {k: v for k, v in own.items() if k not in head_keys}
    mismatch = compare_keys(own, state)
    if mismatch:
        raise UserError(f"--finetune {path} does not fit the model's backbone: {mismatch.summary(3)} (same --model "
                        f"and --model-kwargs as the pretraining run?)")
    model.load_state_dict(state, strict=not replace)
    return {"loaded": len(state), "head_replaced": replace, "layout": weights.layout}
