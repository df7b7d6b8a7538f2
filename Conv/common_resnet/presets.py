"""Training presets (torchvision ``transforms.v2``) and the Mixup/CutMix collate function.

Evaluation preprocessing is not defined here: it is ``maxsup.data.transforms.eval_transform(spec)``, the same
function analysis/ uses to rebuild it from the ``eval_transform`` entry of a checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import default_collate
from torchvision.transforms import v2


class ClassificationPresetTrain:
    """PIL image → normalised (3, S, S) float tensor with the usual train-time augmentation.

    * ``small_input=False`` (ImageNet-sized folders): RandomResizedCrop(S) + horizontal flip, the torchvision
      reference recipe behind paper Table 10.
    * ``small_input=True`` (Fashion-MNIST, CIFAR-100, ImageNet32/64): RandomCrop(S, padding=4) + flip, the standard
      CIFAR recipe (paper Table 4, right half).

    Grayscale images are converted to 3 channels so every model takes RGB.
    """

    def __init__(self, crop_size: int, mean: Sequence[float], std: Sequence[float], *, small_input: bool,
                 interpolation: str = "bilinear", hflip_prob: float = 0.5, auto_augment_policy: str | None = None,
                 random_erase_prob: float = 0.0):
        interp = v2.InterpolationMode(interpolation)
        steps: list[torch.nn.Module] = [v2.PILToTensor(), v2.RGB()]
        if small_input:
            steps.append(v2.RandomCrop(crop_size, padding=4))
        else:
            steps.append(v2.RandomResizedCrop(crop_size, interpolation=interp, antialias=True))
        if hflip_prob > 0:
            steps.append(v2.RandomHorizontalFlip(hflip_prob))
        if auto_augment_policy == "ra":
            steps.append(v2.RandAugment(interpolation=interp))
        elif auto_augment_policy == "ta_wide":
            steps.append(v2.TrivialAugmentWide(interpolation=interp))
        elif auto_augment_policy == "augmix":
            steps.append(v2.AugMix(interpolation=interp))
        elif auto_augment_policy is not None:
            steps.append(v2.AutoAugment(v2.AutoAugmentPolicy(auto_augment_policy), interpolation=interp))
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
        if random_erase_prob > 0:
            steps.append(v2.RandomErasing(p=random_erase_prob))
        self.transforms = v2.Compose(steps)

    def __call__(self, img):
        return self.transforms(img)


AUTO_AUGMENT_POLICIES = ("ra", "ta_wide", "augmix", "imagenet", "cifar10", "svhn")


def get_mixup_cutmix(*, mixup_alpha: float, cutmix_alpha: float, num_classes: int) -> v2.Transform | None:
    """MixUp and/or CutMix on a collated batch; one of them is picked per batch when both are on (torchvision idiom).

    Returns None when both alphas are 0. The batch targets become (B, K) soft labels, which every MaxSup-repo loss
    accepts (the MaxSup penalty itself does not look at targets, Eq. 8).
    """
    choices: list[v2.Transform] = []
    if mixup_alpha > 0:
        choices.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        choices.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    if not choices:
        return None
    return choices[0] if len(choices) == 1 else v2.RandomChoice(choices)


class MixupCutmixCollate:
    """``collate_fn`` that applies a batch transform after ``default_collate`` (a class, so workers can pickle it)."""

    def __init__(self, batch_transform: v2.Transform):
        self.batch_transform = batch_transform

    def __call__(self, batch):
        return self.batch_transform(*default_collate(batch))
