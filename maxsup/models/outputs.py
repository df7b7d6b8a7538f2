"""What a classifier computes besides its logits: the classifier layer, penultimate features, per-position logits."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["classifier_layer", "features_and_logits", "unwrap_model", "logits_and_dense_logits"]


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
