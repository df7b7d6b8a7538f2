"""ResNets beside torchvision's: the CIFAR-style stem for 28–64 px inputs, and ffcv-imagenet's BlurPool."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

__all__ = ["CIFAR_RESNETS", "CifarResNet", "BlurPoolConv2d", "apply_blurpool"]


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
