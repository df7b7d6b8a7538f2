"""SMMix (Chen et al., ICCV 2023): self-motivated max-min region mixing for ViTs, as a DeiT training option.

Per batch, with probability ``switch_prob`` (0.5, the official value) SMMix, otherwise plain Mixup (Beta(α, α)):

1. The model under training, in eval mode, without gradients and in float32 (autocast off, as the official code),
   gives its class logits and the attention each patch receives in the last block (``maxsup.models.vit``
   ``patch_attention``).
2. A square side r is drawn uniformly from ``[int(S·min_ratio), int(S·max_ratio)]`` (S = ``side``, the token grid).
3. :func:`max_min_windows`: the r×r window of least summed attention in each image i (the target window) and the
   window of most attention in image B−1−i (the flipped batch: the source window).
4. :func:`paste_windows`: the source window's pixels replace the target window's, at patch granularity.
5. Targets: the label weight is the area ratio, λ = (S² − r²)/S² for the image's own label, 1 − λ for the pasted one.
   The loss (:func:`smmix_loss`) is CE/LS/MaxSup on the CLS logits (``criterion``) + the fine-grained term
   ½(CE(token head on the target region, y_i) + CE(token head on the source region, y_{B−1−i})) + the feature
   consistency term KL(softmax(λ·z_i + (1−λ)·z_{B−1−i}) ‖ softmax(z_mixed)), z from step 1.

Checked against the official ``smmix.py`` (ChenMnZ/SMMix @ 14b1edc, run on CPU in a scratch folder outside this
repository with its ``.cuda()`` calls removed and its ``one_hot`` adapted to timm 1.0): 255 cases (50 random batches,
B ∈ {2, 4, 6}, S ∈ {4, 7, 14}, patch 2 or 4, every window side r) gave identical masks and mixed images (largest
difference 0.0); over 20 SMMix batches of a tiny ViT the targets (mixed, own, pasted) were identical and the loss
equalled the official engine's formula (SoftTargetCrossEntropy + ½ fine + KLDivLoss(batchmean)) exactly (0.0).
Unlike the official code this runs on any device, accepts odd batches (the middle image is mixed with itself, as in
timm's Mixup) and leaves EMA updates to the trainer (the official engine never updates its EMA).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.data.mixup import mixup_target
from torch import Tensor, nn

__all__ = ["SMMix", "SMMixBatch", "SMMixStep", "max_min_windows", "paste_windows", "smmix_loss", "soft_cross_entropy"]


def max_min_windows(score: Tensor, side: int, r: int) -> tuple[Tensor, Tensor]:
    """Top-left corners (row, col) of the least-attended r×r window of each image and of the most-attended one.

    Args:
        score: (B, S·S) attention received per patch, row-major.
        side: S. r: window side in patches, 1 ≤ r ≤ S.
    Returns:
        ``(min_rc, max_rc)``, each (B, 2) long; ties go to the first window in row-major order (as ``argmin``).
    """
    grid = rearrange(score.float(), "b (row col) -> b 1 row col", row=side)
    window_sum = F.avg_pool2d(grid, r, stride=1, divisor_override=1).flatten(1)  # (B, (S−r+1)²)
    n = side - r + 1
    lo, hi = window_sum.argmin(1), window_sum.argmax(1)
    return torch.stack(torch.unravel_index(lo, (n, n)), 1), torch.stack(torch.unravel_index(hi, (n, n)), 1)


def paste_windows(x: Tensor, side: int, r: int, target_rc: Tensor, source_rc: Tensor) -> tuple[Tensor, Tensor]:
    """Paste the r×r patch window at ``source_rc[B−1−i]`` of image B−1−i onto the window at ``target_rc[i]`` of
    image i (both in patch units).

    Args:
        x: (B, C, H, W) images, H and W divisible by ``side``.
        target_rc, source_rc: (B, 2) top-left (row, col) of each image's target window and of its own source window.
    Returns:
        ``(mixed (B, C, H, W), source_mask (B, S·S) bool)``; the mask marks the pasted patches.
    """
    b, _, h, w = x.shape
    if h % side or w % side:
        raise ValueError(f"image size {h}×{w} is not a multiple of the token grid {side}×{side}")
    own, partner = torch.arange(b, device=x.device), torch.arange(b - 1, -1, -1, device=x.device)
    cells = torch.arange(side, device=x.device)
    row, col = rearrange(cells, "s -> s 1"), rearrange(cells, "s -> 1 s")  # patch coordinates, broadcast to (B, S, S)
    target_r, target_c = rearrange(target_rc, "b rc -> rc b 1 1")
    source_r, source_c = rearrange(source_rc[partner], "b rc -> rc b 1 1")
    dr, dc = row - target_r, col - target_c  # (B, S, S) offsets into each image's target window
    inside = (dr >= 0) & (dr < r) & (dc >= 0) & (dc < r)
    rows, cols = torch.where(inside, source_r + dr, row), torch.where(inside, source_c + dc, col)
    imgs = torch.where(inside, rearrange(partner, "b -> b 1 1"), rearrange(own, "b -> b 1 1"))
    patches = rearrange(x, "b c (row ph) (col pw) -> b row col c ph pw", row=side, col=side)
    mixed = rearrange(patches[imgs, rows, cols], "b row col c ph pw -> b c (row ph) (col pw)")
    return mixed, inside.flatten(1)


@dataclass
class SMMixBatch:
    """What the SMMix loss needs besides the mixed images: per-region targets, masks and the unmixed logits."""

    lam: float
    target_target: Tensor  # (B, K) the image's own (smoothed) one-hot
    source_target: Tensor  # (B, K) the pasted image's
    target_mask: Tensor  # (B, N) bool
    source_mask: Tensor  # (B, N) bool
    mixed_logits: Tensor  # (B, K) λ·z_i + (1 − λ)·z_{B−1−i}, no gradient


class SMMix:
    """Batch mixer: ``x, soft_targets, smmix_batch_or_None = SMMix(...)(x, labels, model)``.

    Args:
        side: token grid side S (14 for 224 px patch 16). min_side_ratio, max_side_ratio: window side range (0.25,
            0.75 official). mixup_alpha: α of the plain-Mixup half. switch_prob: probability of SMMix.
        label_smoothing: timm's smoothing of the one-hot targets (0 with --loss ls/maxsup). num_classes: K.
    Randomness comes from torch's global RNG, so a seeded run is reproducible.
    """

    def __init__(self, side: int, num_classes: int, min_side_ratio: float = 0.25, max_side_ratio: float = 0.75,
                 mixup_alpha: float = 0.8, switch_prob: float = 0.5, label_smoothing: float = 0.0):
        lo, hi = int(side * min_side_ratio), int(side * max_side_ratio)
        if not 1 <= lo <= hi <= side:
            raise ValueError(f"window sides {lo}..{hi} (side {side} × ratios {min_side_ratio}..{max_side_ratio}) "
                             f"must satisfy 1 <= min <= max <= {side}")
        self.side, self.num_classes = side, num_classes
        self.sizes = list(range(lo, hi + 1))
        self.mixup_alpha, self.switch_prob, self.label_smoothing = mixup_alpha, switch_prob, label_smoothing

    def _targets(self, y: Tensor, lam: float) -> Tensor:
        return mixup_target(y, self.num_classes, lam=lam, smoothing=self.label_smoothing)

    @torch.no_grad()
    def __call__(self, x: Tensor, y: Tensor, model: nn.Module) -> tuple[Tensor, Tensor, SMMixBatch | None]:
        if float(torch.rand(())) >= self.switch_prob:
            lam = float(torch.distributions.Beta(self.mixup_alpha, self.mixup_alpha).sample()) \
                if self.mixup_alpha > 0 else 1.0
            return x * lam + x.flip(0) * (1.0 - lam), self._targets(y, lam), None
        core = model.module if hasattr(model, "module") else model
        was_training = core.training
        core.eval()
        try:
            # float32 with autocast off, as the official "motivation" forward (outside its autocast region): the
            # window choice and the consistency target do not move with the training precision
            with torch.autocast(device_type=x.device.type, enabled=False):
                logits, score = core.patch_attention(x.float())
        finally:
            core.train(was_training)
        r = self.sizes[int(torch.randint(len(self.sizes), ()))]
        lam = (self.side**2 - r * r) / self.side**2  # the image's own share (the official code's lam)
        target_rc, source_rc = max_min_windows(score, self.side, r)
        mixed, source_mask = paste_windows(x, self.side, r, target_rc, source_rc)
        logits = logits.float()
        batch = SMMixBatch(lam=lam, target_target=self._targets(y, 1.0), source_target=self._targets(y.flip(0), 1.0),
                           target_mask=~source_mask, source_mask=source_mask,
                           mixed_logits=lam * logits + (1.0 - lam) * logits.flip(0))
        return mixed, self._targets(y, lam), batch


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Mean CE against (N, K) soft targets, in float32."""
    return torch.sum(-target.float() * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def smmix_loss(model: nn.Module, x: Tensor, targets: Tensor, batch: SMMixBatch | None, criterion: nn.Module,
               maxsup_on_tokens: bool = False) -> tuple[Tensor, Tensor]:
    """Forward + loss for one (S)MMix batch; returns ``(loss, cls_logits)``.

    MaxSup / LS (``criterion``) act on the CLS logits. The fine-grained term uses plain soft-target CE, or
    ``criterion`` with ``maxsup_on_tokens``: MaxSup's z_max − mean z does not look at the target, so on the token
    head it suppresses each region's top logit whatever its (soft, possibly smoothed) target is, while LS would move
    mass towards uniform within that target.
    """
    if batch is None:  # the plain-Mixup half: CLS logits only (the token head gets no gradient this step)
        outputs = model(x)
        return criterion(outputs, targets), outputs
    outputs, target_logits, source_logits = model(x, target_mask=batch.target_mask, source_mask=batch.source_mask)
    token_loss = criterion if maxsup_on_tokens else soft_cross_entropy
    loss_cls = criterion(outputs, targets)
    loss_fine = 0.5 * (token_loss(target_logits, batch.target_target) + token_loss(source_logits, batch.source_target))
    loss_con = F.kl_div(F.log_softmax(outputs.float(), dim=1), F.softmax(batch.mixed_logits, dim=1),
                        reduction="batchmean")
    return loss_cls + loss_fine + loss_con, outputs


class SMMixStep:
    """Engine hook ``(model, images, labels, criterion) → (loss, cls_logits, soft_targets)``: mix, forward, loss."""

    def __init__(self, mixer: SMMix, maxsup_on_tokens: bool = False):
        self.mixer, self.maxsup_on_tokens = mixer, maxsup_on_tokens

    def __call__(self, model: nn.Module, images: Tensor, labels: Tensor, criterion: nn.Module
                 ) -> tuple[Tensor, Tensor, Tensor]:
        images, targets, batch = self.mixer(images, labels, model)
        loss, outputs = smmix_loss(model, images, targets, batch, criterion, self.maxsup_on_tokens)
        return loss, outputs, targets
