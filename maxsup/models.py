"""Model factory shared by every trainer and by analysis/: torchvision, CIFAR-style ResNets, timm, BlurPool."""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from .errors import UserError

__all__ = ["create_model", "arch_spec", "model_from_checkpoint", "load_state_dict_strict", "features_and_logits",
           "classifier_layer", "load_pretrained_backbone", "logits_and_dense_logits", "unwrap_model", "CifarResNet",
           "BlurPoolConv2d", "apply_blurpool", "CIFAR_RESNETS"]


#: Re-exported from :mod:`maxsup.vit` (``from maxsup.models import LVViT`` works), imported on first use so that
#: importing this module does not import timm.
_VIT_EXPORTS = ("LVViT", "TokenHeadViT", "with_token_head", "dense_class_scores")


def __getattr__(name: str) -> Any:
    if name in _VIT_EXPORTS:
        from . import vit

        return getattr(vit, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------------------------------
# CIFAR-style ResNet: torchvision's ResNet with a 3×3 stride-1 stem and no max-pool (for 28–64 px inputs)
# --------------------------------------------------------------------------------------------------------------------
CIFAR_RESNETS: dict[str, tuple[type[nn.Module], list[int]]] = {
    "cifar_resnet10": (BasicBlock, [1, 1, 1, 1]),
    "cifar_resnet18": (BasicBlock, [2, 2, 2, 2]),
    "cifar_resnet34": (BasicBlock, [3, 4, 6, 3]),
    "cifar_resnet50": (Bottleneck, [3, 4, 6, 3]),
    "cifar_resnet101": (Bottleneck, [3, 4, 23, 3]),
}


class CifarResNet(ResNet):
    """torchvision ResNet for small images: 3×3 stem, no max-pool; ``width`` scales every stage (64 = standard)."""

    def __init__(self, block: type[nn.Module], layers: list[int], num_classes: int = 10, width: int = 64,
                 in_chans: int = 3):
        super().__init__(block, layers, num_classes=num_classes)
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.Identity()
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)
        for m in self.modules():  # torchvision's initialisation, redone for the rebuilt layers
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------------------------------
# BlurPool (ffcv-imagenet's recipe, used by the authors' released ResNet-50)
# --------------------------------------------------------------------------------------------------------------------
class BlurPoolConv2d(nn.Module):
    """A 3×3 binomial blur (depthwise, stride 1) before a strided convolution. State keys: ``conv.*``,
    ``blur_filter`` (C_in, 1, 3, 3) — the layout of the authors' checkpoints."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0
        self.conv = conv
        self.register_buffer("blur_filter", kernel.expand(conv.in_channels, 1, 3, 3).clone())

    def forward(self, x: Tensor) -> Tensor:
        x = F.conv2d(x, self.blur_filter.to(x.dtype), stride=1, padding=1, groups=self.conv.in_channels)
        return self.conv(x)


def apply_blurpool(model: nn.Module) -> nn.Module:
    """Wrap every Conv2d with stride > 1 and ≥ 16 input channels in :class:`BlurPoolConv2d` (in place)."""
    for name, child in model.named_children():
        if isinstance(child, nn.Conv2d) and max(child.stride) > 1 and child.in_channels >= 16:
            setattr(model, name, BlurPoolConv2d(child))
        else:
            apply_blurpool(child)
    return model


# --------------------------------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------------------------------
def _torchvision_names() -> set[str]:
    return set(torchvision.models.list_models(module=torchvision.models))


def create_model(name: str, num_classes: int, *, blurpool: bool = False, **kwargs: Any) -> nn.Module:
    """Build a classifier by name.

    * ``cifar_resnet10/18/34/50/101``: :class:`CifarResNet` (kwargs ``width``, ``in_chans``);
    * ``resnet32``: :class:`maxsup.lt_models.CifarResNet32` (kwargs ``width``, ``head=linear|causal_norm``, the
      causal-norm head's ``num_heads, tau, gamma, alpha, momentum``);
    * ``cifar_mobilenet_v2``: torchvision MobileNetV2 with a stride-1 stem;
    * any torchvision classification model (``resnet18/50/101``, ``mobilenet_v2``, ...), randomly initialised;
    * any timm model (``deit_small_patch16_224``, ``vit_tiny_patch16_224`` with ``img_size=32, patch_size=4``, ...).

    ``blurpool=True`` applies :func:`apply_blurpool` afterwards. ``token_head="smmix"|"dense"|"mixtoken"`` gives a
    ViT the SMMix / Token Labeling head and forward (:func:`maxsup.vit.with_token_head`).
    """
    token_head = kwargs.pop("token_head", None)
    if token_head is not None:
        from .vit import with_token_head

        return with_token_head(create_model(name, num_classes, blurpool=blurpool, **kwargs), token_head, name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if name in CIFAR_RESNETS:
        block, layers = CIFAR_RESNETS[name]
        model = CifarResNet(block, layers, num_classes=num_classes, **kwargs)
    elif name == "resnet32":
        from .lt_models import CifarResNet32  # paper Table 7's long-tailed CIFAR backbone (128-d feature)

        model = CifarResNet32(num_classes=num_classes, **kwargs)
    elif name == "cifar_mobilenet_v2":
        # torchvision MobileNetV2 with a stride-1 stem (the usual CIFAR adaptation: 32 px → 4×4 final map)
        model = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes, **kwargs)
        model.features[0][0].stride = (1, 1)
    elif name in _torchvision_names():
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    else:
        import timm

        from . import vit  # noqa: F401  (registers lvvit_t/s/m with timm)

        if not timm.is_model(name):
            raise ValueError(f"unknown model {name!r}: use {', '.join(CIFAR_RESNETS)}, resnet32, cifar_mobilenet_v2, a "
                             f"torchvision classification model (e.g. resnet50, mobilenet_v2) or a timm model name "
                             f"(e.g. deit_small_patch16_224)")
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    return apply_blurpool(model) if blurpool else model


def arch_spec(name: str, num_classes: int, **kwargs: Any) -> dict[str, Any]:
    """The ``arch`` entry of a checkpoint: everything :func:`create_model` needs to rebuild the network."""
    return {"name": name, "num_classes": int(num_classes), "kwargs": dict(kwargs)}


def _strip_prefixes(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    return {re.sub(r"^(module\.|_orig_mod\.)+", "", k): v for k, v in state_dict.items()}


def load_state_dict_strict(model: nn.Module, state_dict: dict[str, Tensor], source: str = "checkpoint") -> None:
    """Strict load that reports missing/unexpected/mis-shaped keys in one sentence (UserError)."""
    state_dict = _strip_prefixes(state_dict)
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {', '.join(missing[:4])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {', '.join(unexpected[:4])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {'; '.join(shapes[:3])})")
        raise UserError(f"{source} does not match the model architecture: {'; '.join(parts)}")
    model.load_state_dict(state_dict, strict=True)


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


# --------------------------------------------------------------------------------------------------------------------
# Penultimate features
# --------------------------------------------------------------------------------------------------------------------
def classifier_layer(model: nn.Module) -> nn.Module:
    """The final linear layer whose input is the penultimate feature (ResNet ``fc``, MobileNet ``classifier[-1]``,
    timm ``get_classifier()``)."""
    if hasattr(model, "get_classifier"):
        return model.get_classifier()
    if isinstance(getattr(model, "fc", None), nn.Linear):
        return model.fc
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Sequential) and isinstance(classifier[-1], nn.Linear):
        return classifier[-1]
    if isinstance(classifier, nn.Linear):
        return classifier
    raise ValueError(f"cannot find the classifier layer of {type(model).__name__}")


def features_and_logits(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """One forward pass returning (penultimate features (B, D), logits (B, K)).

    The features are the classifier's input: ResNet's global-average-pooled output, MobileNetV2's pooled features,
    a ViT's pre-head (CLS) token.
    """
    captured: list[Tensor] = []
    handle = classifier_layer(model).register_forward_pre_hook(lambda _m, inp: captured.append(inp[0]))
    try:
        logits = model(x)
    finally:
        handle.remove()
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return captured[-1].flatten(1), logits


# --------------------------------------------------------------------------------------------------------------------
# Per-position logits (Zipf-LS dense mode)
# --------------------------------------------------------------------------------------------------------------------
def unwrap_model(model: nn.Module) -> nn.Module:
    """The network inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def logits_and_dense_logits(model: nn.Module, x: Tensor) -> tuple[Any, Tensor]:
    """One forward pass of ``model`` (DDP / compiled wrappers allowed) returning (its output, per-position logits).

    The per-position logits apply the model's own classifier at every position of its final representation, as the
    official Zipf-LS ``--dense`` mode does:

    * torchvision / CIFAR ResNets: ``fc`` at every location of the map entering ``avgpool`` → (B, K, H, W);
    * MobileNetV2: ``classifier[-1]`` at every location of ``features``' output → (B, K, H, W);
    * timm ViTs: ``fc_norm`` then ``head`` on every patch token (prefix/CLS tokens excluded) → (B, K, N).

    For the CNNs the pooled logits are the spatial mean of these (GAP and the head are linear). The per-position
    logits are detached (Zipf-LS only takes their arg-max). Under torch.compile this forward runs eagerly.
    """
    while hasattr(model, "_orig_mod"):  # a compiled graph ignores hooks added later: run this forward eagerly
        model = model._orig_mod
    net = unwrap_model(model)
    captured: list[Tensor] = []
    if hasattr(net, "forward_head") and hasattr(net, "num_prefix_tokens") and isinstance(getattr(net, "norm", None),
                                                                                         nn.Module):
        handle = net.norm.register_forward_hook(lambda _m, _i, out: captured.append(out))
        kind = "vit"
    elif isinstance(getattr(net, "avgpool", None), nn.Module) and isinstance(getattr(net, "fc", None), nn.Linear):
        handle = net.avgpool.register_forward_pre_hook(lambda _m, inp: captured.append(inp[0]))
        kind = "cnn"
    elif isinstance(getattr(net, "features", None), nn.Module) and isinstance(getattr(net, "classifier", None),
                                                                                nn.Module):
        handle = net.features.register_forward_hook(lambda _m, _i, out: captured.append(out))
        kind = "cnn"
    else:
        raise ValueError(f"per-position logits are defined for ResNets, MobileNetV2 and timm ViTs, not "
                         f"{type(net).__name__}")
    try:
        out = model(x)
    finally:
        handle.remove()
    with torch.no_grad():
        feat = captured[-1].detach()
        if kind == "vit":
            tokens = feat[:, net.num_prefix_tokens:]
            dense = net.head(net.fc_norm(tokens)).transpose(1, 2)  # (B, K, N)
        else:
            head = classifier_layer(net)
            dense = torch.einsum("bchw,kc->bkhw", feat, head.weight.to(feat.dtype))
            if head.bias is not None:
                dense = dense + head.bias.to(feat.dtype)[None, :, None, None]
    return out, dense


# --------------------------------------------------------------------------------------------------------------------
# Fine-tuning (paper Table 6: CUB / Cars; the recipe is ours, see Conv/common_resnet/README.md)
# --------------------------------------------------------------------------------------------------------------------
def load_pretrained_backbone(model: nn.Module, path: str, key: str = "model") -> dict[str, Any]:
    """Initialise ``model`` from a checkpoint for fine-tuning: every weight except the classifier must match; the
    classifier is kept from the checkpoint when its class count equals the model's, else left freshly initialised.

    ``path``: any checkpoint of this repository, or a released one converted by ``python -m maxsup.hub convert``
    (a bare state_dict also works). Returns ``{"loaded": n_tensors, "head_replaced": bool}``.
    """
    from .training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    state = ckpt.get(key, ckpt) if isinstance(ckpt, dict) else ckpt
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"--finetune {path}: no '{key}' state_dict inside (top-level keys: "
                        f"{', '.join(sorted(map(str, ckpt))[:8])})")
    state = _strip_prefixes(state)
    head = classifier_layer(model)
    head_name = next(name for name, m in model.named_modules() if m is head)
    head_keys = {f"{head_name}.{k}" for k in head.state_dict()}
    own = model.state_dict()
    replace = any(k in state and tuple(state[k].shape) != tuple(own[k].shape) for k in head_keys)
    if replace:
        state = {k: v for k, v in state.items() if k not in head_keys}
    missing = [k for k in own if k not in state and not (replace and k in head_keys)]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state
              if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"missing {len(missing)} keys (e.g. {', '.join(missing[:3])})"] if missing else []
        parts += [f"unexpected {len(unexpected)} keys (e.g. {', '.join(unexpected[:3])})"] if unexpected else []
        parts += [f"shape mismatches: {'; '.join(shapes[:3])}"] if shapes else []
        raise UserError(f"--finetune {path} does not fit the model's backbone: {'; '.join(parts)} (same --model and "
                        f"--model-kwargs as the pretraining run?)")
    model.load_state_dict(state, strict=not replace)
    return {"loaded": len(state), "head_replaced": replace}
