"""Models of the long-tailed CIFAR experiment (paper Table 7): ResNet-32 and Tang et al. 2020's causal-norm head.

* :class:`CifarResNet32`: He et al. 2016's CIFAR ResNet (3 stages × 5 basic blocks) at the widths of the authors'
  LT code (Tang et al.'s ``ResNet32Feature``: 32, 64, 128 channels), so the penultimate feature is 128-d. The two
  down-sampling shortcuts are 1×1 projections (torchvision's, He et al.'s option B), not the zero-padding shortcuts
  (option A) of some CIFAR codebases: +2,752 parameters at width 16, +10,624 at width 32.
* :class:`CausalNormClassifier`: the multi-head normalised classifier of "Long-Tailed Classification by Keeping the
  Good and Removing the Bad Momentum Causal Effect" (NeurIPS 2020). Training logits are
  ``τ/H · Σ_h ⟨x_h/‖x_h‖, w_h/(‖w_h‖ + γ)⟩`` over H heads; the head keeps a momentum average of the training features
  (the direction d̂ of the "bad" momentum). At inference, Total Direct Effect (TDE) removes the projection of each
  head's normalised feature on d̂: ``x_h/‖x_h‖ − α · cos(x_h, d̂_h) · d̂_h``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

__all__ = ["CausalNormClassifier", "CifarResNet32", "LT_HEADS"]

LT_HEADS = ("linear", "causal_norm")


class CausalNormClassifier(nn.Module):
    """Multi-head cosine classifier with causal normalisation and TDE at inference (Tang et al. 2020).

    Args:
        in_features: feature size D (divisible by ``num_heads``). num_classes: K.
        num_heads: H (2 in the authors' CIFAR-10-LT config). tau: the logit scale τ (16).
        gamma: γ added to each weight head's norm (1/32). alpha: TDE strength α at inference (1; 0 disables TDE).
        momentum: μ of the feature average ``d ← μ·d + mean_batch(x)`` updated in training mode (0.9).

    The average is a buffer (``embed``), so it is saved in checkpoints and used by any later evaluation.
    """

    def __init__(self, in_features: int, num_classes: int, num_heads: int = 2, tau: float = 16.0,
                 gamma: float = 0.03125, alpha: float = 1.0, momentum: float = 0.9):
        super().__init__()
        if in_features % num_heads:
            raise ValueError(f"in_features {in_features} is not divisible by num_heads {num_heads}")
        self.in_features, self.out_features, self.num_heads = in_features, num_classes, num_heads
        self.tau, self.gamma, self.alpha, self.momentum = tau, gamma, alpha, momentum
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        self.register_buffer("embed", torch.zeros(in_features))

    def _heads(self, t: Tensor) -> Tensor:
        return t.reshape(*t.shape[:-1], self.num_heads, self.in_features // self.num_heads)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, D) features → (B, K) logits (TDE-corrected in eval mode when α > 0 and an average exists)."""
        if self.training:
            with torch.no_grad():
                self.embed.mul_(self.momentum).add_(x.detach().float().mean(0))
        xh = F.normalize(self._heads(x.float()), dim=-1)  # (B, H, D/H)
        wh = self._heads(self.weight.float())  # (K, H, D/H)
        wh = wh / (wh.norm(dim=-1, keepdim=True) + self.gamma)
        if not self.training and self.alpha > 0 and bool(self.embed.any()):
            dh = F.normalize(self._heads(self.embed.float()), dim=-1)  # (H, D/H)
            cos = (xh * dh).sum(-1, keepdim=True)  # both unit vectors
            xh = xh - self.alpha * cos * dh
        return torch.einsum("bhd,khd->bk", xh, wh) * (self.tau / self.num_heads)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, heads={self.num_heads}, "
                f"tau={self.tau}, gamma={self.gamma}, alpha={self.alpha}, momentum={self.momentum}")


class CifarResNet32(nn.Module):
    """ResNet-32 for 32×32 inputs: 3×3 stem, three stages of 5 basic blocks, global average pool, head ``fc``.

    Args:
        num_classes: K. width: channels of the first stage (32 → a 128-d feature, as in the authors' LT code; 16 is
            He et al.'s original 64-d variant). head: ``linear`` or ``causal_norm`` (:class:`CausalNormClassifier`).
        in_chans: input channels. head_kwargs: passed to the causal-norm head (num_heads, tau, gamma, alpha, momentum).
    """

    def __init__(self, num_classes: int = 10, width: int = 32, head: str = "linear", in_chans: int = 3,
                 **head_kwargs: float):
        super().__init__()
        if head not in LT_HEADS:
            raise ValueError(f"unknown head {head!r}; choose {', '.join(LT_HEADS)}")
        self.conv1 = nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.inplanes = width
        self.layer1 = self._make_layer(width, stride=1)
        self.layer2 = self._make_layer(width * 2, stride=2)
        self.layer3 = self._make_layer(width * 4, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = width * 4
        if head == "linear":
            self.fc: nn.Module = nn.Linear(self.num_features, num_classes)
        else:
            self.fc = CausalNormClassifier(self.num_features, num_classes, **head_kwargs)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes: int, stride: int, blocks: int = 5) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))
