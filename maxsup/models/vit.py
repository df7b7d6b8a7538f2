"""ViT models and wrappers for SMMix and Token Labeling, built from timm's VisionTransformer (not re-implemented).

* :class:`TokenHeadViT` wraps any timm ``VisionTransformer`` (DeiT, ViT) and adds a linear head on the patch tokens.
  Its ``forward`` speaks the protocol that ``Deit/smmix.py`` and ``Deit/token_labeling.py`` rely on:

  - ``model(x)`` in eval mode: ``(B, K)`` class logits; with ``dense_eval=True`` (Token Labeling),
    ``x_cls + 0.5 · max over tokens of x_aux`` as in LV-ViT.
  - ``model(x, target_mask=m_t, source_mask=m_s)`` (SMMix): ``(cls (B, K), target (B, K), source (B, K))``, the token
    head applied to the mean patch token of each region; masks are ``(B, N)`` bool over the patch grid.
  - ``model(x)`` in training with ``dense=True`` (Token Labeling): ``(cls (B, K), aux (B, N, K), bbox)``; with
    ``mix_token=True`` the tokens inside ``bbox = (r0, r1, c0, c1)`` (patch grid rows/cols, end exclusive) are taken
    from the flipped batch right after the patch embedding (MixToken), and ``aux`` is un-mixed back, so ``aux[i]``
    always describes the patches of image ``i``. ``bbox`` is None when nothing was mixed.
  - :meth:`patch_attention`: ``(cls (B, K), score (B, N))``, no gradients, where ``score`` is the patch-to-patch
    attention each patch receives in the last block, averaged over heads and query patches (SMMix's criterion:
    ``attn[:, :, P:, P:].mean((1, 2))``, P = prefix tokens).

* :class:`LVViT` (``lvvit_t``, ``lvvit_s``, ``lvvit_m`` registered with timm's ``register_model``): timm's
  VisionTransformer with LV-ViT's 4-layer convolutional patch embedding, residual branches divided by ``skip_lam``,
  ``qkv_bias=False``, MLP ratio 3 and the ``aux_head``; same forward protocol (``dense_eval=True``). Its parameter
  names follow the official release (``patch_embed.conv1``, ``blocks.i.attn.qkv``, ``aux_head``), so the official
  ``state_dict`` loads strictly (registry entries ``lvvit_{t,s,m}_official`` in :mod:`maxsup.hub`). LV-ViT-S has
  26.15M parameters and LV-ViT-T 8.53M, the official README's counts (checked in
  ``tests/test_smmix_token_labeling.py``).

* :func:`dense_class_scores`: the classifier applied at every spatial position of any model this project builds
  (ViT patch tokens, CNN feature maps), for ``data/make_token_labels.py``.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import PatchEmbed
from timm.models import register_model
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from ..errors import UserError
from .outputs import classifier_layer

__all__ = ["TokenHeadViT", "LVViT", "with_token_head", "patch_grid", "dense_class_scores", "mix_tokens",
           "mixtoken_box", "lvvit_t", "lvvit_s", "lvvit_m"]


# --------------------------------------------------------------------------------------------------------------------
# the shared forward (MixToken, region pooling, dense head, attention capture)
# --------------------------------------------------------------------------------------------------------------------
def patch_grid(vit: VisionTransformer) -> tuple[int, int]:
    """(rows, cols) of the patch-token grid of a timm ViT."""
    return tuple(int(g) for g in vit.patch_embed.grid_size)


def mixtoken_box(grid: tuple[int, int], lam: float) -> tuple[int, int, int, int]:
    """The official LV-ViT MixToken box on a ``grid`` = (rows, cols) token grid: (r0, r1, c0, c1), end exclusive.

    Side lengths ``int(rows·√(1 − lam))`` × ``int(cols·√(1 − lam))``; a uniform centre (numpy: row, then column),
    both edges at ``centre ∓ side // 2``, clipped to the grid. This is the official ``rand_bbox``
    (``tlt/models/lvvit.py``), not timm's CutMix box, whose upper edge ``centre + (side + 1) // 2`` makes odd sides
    one token longer (mean mixed area 0.295 of the grid instead of the official 0.269 for lam ~ Beta(1, 1)).
    """
    rows, cols = grid
    ratio = np.sqrt(1.0 - lam)
    cut_r, cut_c = int(rows * ratio), int(cols * ratio)
    cr, cc = np.random.randint(rows), np.random.randint(cols)
    r0, r1 = int(np.clip(cr - cut_r // 2, 0, rows)), int(np.clip(cr + cut_r // 2, 0, rows))
    c0, c1 = int(np.clip(cc - cut_c // 2, 0, cols)), int(np.clip(cc + cut_c // 2, 0, cols))
    return r0, r1, c0, c1


def mix_tokens(tokens: Tensor, grid: tuple[int, int], lam: float) -> tuple[Tensor, tuple[int, int, int, int] | None]:
    """MixToken (Jiang et al. 2021): replace a random box of the patch grid by the flipped batch's tokens.

    Args:
        tokens: (B, N, D) patch embeddings, N = rows·cols in row-major order.
        lam: the Beta(1, 1) draw; the box (:func:`mixtoken_box`, numpy RNG) covers about (1 − lam) of the grid.
    Returns:
        the mixed tokens and the box (r0, r1, c0, c1) on the grid, end exclusive (None when it is empty).
    """
    r0, r1, c0, c1 = mixtoken_box(grid, lam)
    if r1 <= r0 or c1 <= c0:
        return tokens, None
    return _swap_box(tokens, grid, (r0, r1, c0, c1)), (r0, r1, c0, c1)


def _swap_box(t: Tensor, grid: tuple[int, int], bbox: tuple[int, int, int, int]) -> Tensor:
    """(B, N, C) per-token values whose box (r0, r1, c0, c1) on the grid comes from row B−1−i; the swap is its own
    inverse, so it both mixes tokens (:func:`mix_tokens`) and un-mixes the per-token outputs of a mixed batch."""
    r0, r1, c0, c1 = bbox
    g = rearrange(t, "b (row col) c -> b row col c", row=grid[0])
    out = g.clone()
    out[:, r0:r1, c0:c1] = g.flip(0)[:, r0:r1, c0:c1]
    return rearrange(out, "b row col c -> b (row col) c")


@contextmanager
def _capture_attention(block: nn.Module):
    """Record the softmax attention (B, heads, N, N) of one timm ``Block`` during a forward pass.

    timm's fused kernel never materialises the attention, so the block runs its explicit path (same maths) while
    the context is open; the matrix is read where timm applies attention dropout to it.
    """
    attn = getattr(block, "attn", None)
    if attn is None or not hasattr(attn, "attn_drop") or not hasattr(attn, "fused_attn"):
        raise TypeError(f"{type(block).__name__} has no timm Attention to read")
    captured: list[Tensor] = []
    fused = attn.fused_attn
    attn.fused_attn = False
    handle = attn.attn_drop.register_forward_hook(lambda _m, inp, _out: captured.append(inp[0].detach()))
    try:
        yield captured
    finally:
        handle.remove()
        attn.fused_attn = fused


class _DenseTokenForward:
    """The forward protocol of the module docstring, for any object with ``backbone`` (timm VisionTransformer),
    ``aux_head`` (D → K), ``dense``, ``mix_token`` and ``dense_eval``."""

    backbone: VisionTransformer
    aux_head: nn.Module
    dense: bool
    mix_token: bool
    dense_eval: bool
    mix_beta: float = 1.0

    def _tokens(self, x: Tensor, mix: bool) -> tuple[Tensor, tuple[int, int, int, int] | None]:
        vit = self.backbone
        x = vit.patch_embed(x)
        bbox = None
        if mix:
            # numpy, as the official forward: with the same numpy seed, lam and the box are the official draws
            lam = float(np.random.beta(self.mix_beta, self.mix_beta))
            x, bbox = mix_tokens(x, patch_grid(vit), lam)
        x = vit._pos_embed(x)
        x = vit.patch_drop(x)
        x = vit.norm_pre(x)
        x = vit.blocks(x)
        return vit.norm(x), bbox

    def forward(self, x: Tensor, target_mask: Tensor | None = None, source_mask: Tensor | None = None):
        vit = self.backbone
        mix = self.mix_token and self.training and target_mask is None
        tokens, bbox = self._tokens(x, mix)
        cls = vit.forward_head(tokens)
        patches = tokens[:, vit.num_prefix_tokens:]
        if target_mask is not None:  # SMMix fine-grained label assignment
            if source_mask is None:
                raise ValueError("target_mask needs source_mask")
            return cls, self._region_logits(patches, target_mask), self._region_logits(patches, source_mask)
        if not self.training:
            if self.dense_eval:  # LV-ViT's inference rule
                return cls + 0.5 * self.aux_head(patches).max(1).values
            return cls
        if not self.dense:
            return cls
        aux = self.aux_head(patches)
        if bbox is not None:
            aux = _swap_box(aux, patch_grid(vit), bbox)  # un-mix: aux[i] describes image i's patches
        return cls, aux, bbox

    def _region_logits(self, patches: Tensor, mask: Tensor) -> Tensor:
        m = mask.to(patches.dtype).unsqueeze(-1)
        pooled = (patches * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.aux_head(pooled)

    @torch.no_grad()
    def patch_attention(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(class logits (B, K), attention received by each patch in the last block (B, N)); no gradients, in the
        module's current train/eval mode and without MixToken."""
        vit = self.backbone
        with _capture_attention(vit.blocks[-1]) as captured:
            tokens, _ = self._tokens(x, mix=False)
        p = vit.num_prefix_tokens
        score = captured[-1][:, :, p:, p:].float().mean(dim=(1, 2))
        return vit.forward_head(tokens), score


# --------------------------------------------------------------------------------------------------------------------
# timm ViT/DeiT + token head
# --------------------------------------------------------------------------------------------------------------------
class TokenHeadViT(_DenseTokenForward, nn.Module):
    """A timm ``VisionTransformer`` plus ``aux_head``: Linear(D, K) on the patch tokens (SMMix's ``token_head``,
    Token Labeling's ``aux_head``). State keys: ``backbone.*`` (the timm model's own) and ``aux_head.*``.

    Args:
        backbone: a timm VisionTransformer (DeiT/ViT; DeiT's distilled variants are not supported).
        dense: return ``(cls, aux, bbox)`` in training (Token Labeling).
        mix_token: MixToken in training (needs ``dense``).
        dense_eval: eval logits ``cls + 0.5·max aux`` (Token Labeling) instead of ``cls`` (SMMix).
    """

    def __init__(self, backbone: VisionTransformer, dense: bool = False, mix_token: bool = False,
                 dense_eval: bool = False):
        super().__init__()
        if not isinstance(backbone, VisionTransformer) or not hasattr(backbone.patch_embed, "grid_size"):
            raise UserError(f"{type(backbone).__name__} is not a timm VisionTransformer with a patch grid; SMMix and "
                            f"Token Labeling need one (e.g. deit_small_patch16_224, vit_tiny_patch16_224, lvvit_s)")
        if mix_token and not dense:
            raise ValueError("mix_token needs dense=True (the aux head un-mixes the tokens)")
        self.backbone = backbone
        self.num_classes = backbone.num_classes
        self.aux_head = nn.Linear(backbone.embed_dim, backbone.num_classes)
        nn.init.trunc_normal_(self.aux_head.weight, std=0.02)
        nn.init.zeros_(self.aux_head.bias)
        self.dense, self.mix_token, self.dense_eval = dense, mix_token, dense_eval

    def get_classifier(self) -> nn.Module:
        return self.backbone.get_classifier()

    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{k}" for k in self.backbone.no_weight_decay()}


#: ``token_head`` values accepted by :func:`with_token_head` (and by ``maxsup.models.create_model``).
TOKEN_HEAD_MODES = {"smmix": dict(dense=False, mix_token=False, dense_eval=False),
                    "dense": dict(dense=True, mix_token=False, dense_eval=True),
                    "mixtoken": dict(dense=True, mix_token=True, dense_eval=True)}


def with_token_head(model: nn.Module, mode: str, name: str = "") -> nn.Module:
    """Give ``model`` the token-head protocol: LV-ViT models have it (``mode`` sets MixToken on/off); timm ViTs are
    wrapped in :class:`TokenHeadViT`. ``mode``: ``smmix``, ``dense`` (token labels, no MixToken) or ``mixtoken``."""
    if mode not in TOKEN_HEAD_MODES:
        raise ValueError(f"unknown token_head mode {mode!r}; choose one of {', '.join(TOKEN_HEAD_MODES)}")
    flags = TOKEN_HEAD_MODES[mode]
    if isinstance(model, LVViT):
        model.dense, model.mix_token = True, flags["mix_token"]
        model.dense_eval = flags["dense_eval"]
        return model
    if not isinstance(model, VisionTransformer) or not hasattr(model.patch_embed, "grid_size"):
        raise UserError(f"model {name or type(model).__name__} has no ViT attention and patch tokens to expose; "
                        f"SMMix and Token Labeling need a timm ViT/DeiT (e.g. deit_small_patch16_224) or lvvit_t/s/m")
    return TokenHeadViT(model, **flags)


# --------------------------------------------------------------------------------------------------------------------
# LV-ViT (Jiang et al., NeurIPS 2021) on timm's VisionTransformer
# --------------------------------------------------------------------------------------------------------------------
class ConvPatchEmbed(PatchEmbed):
    """LV-ViT's patch embedding: conv7×7/2 → conv3×3 → conv3×3 (BN + ReLU each, ``width`` channels), then a
    (p/2)×(p/2) stride-(p/2) projection; the token grid is that of a patch-p ViT."""

    def __init__(self, img_size: Any = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 width: int = 64, **kwargs: Any):
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                         **{k: v for k, v in kwargs.items() if k in ("strict_img_size", "device", "dtype")})
        p = self.patch_size[0] // 2
        self.conv1 = nn.Conv2d(in_chans, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.proj = nn.Conv2d(width, embed_dim, p, stride=p)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return rearrange(self.proj(x), "b d row col -> b (row col) d")  # row-major grid as timm's PatchEmbed


class ScaledResidualBlock(Block):
    """timm's Block with both residual branches divided by a fixed ``skip_lam`` (LV-ViT's residual scaling)."""

    def __init__(self, *args: Any, skip_lam: float = 1.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.skip_lam = skip_lam

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal))) \
            / self.skip_lam
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x)))) / self.skip_lam


class LVViT(_DenseTokenForward, VisionTransformer):
    """LV-ViT: timm's VisionTransformer with :class:`ConvPatchEmbed`, :class:`ScaledResidualBlock` and an ``aux_head``.
    Trains with MixToken and returns ``(cls, aux, bbox)``; evaluates ``cls + 0.5·max aux`` (the official rule)."""

    def __init__(self, skip_lam: float = 1.0, stem_width: int = 64, mix_token: bool = True, **kwargs: Any):
        kwargs.setdefault("qkv_bias", False)
        kwargs.setdefault("mlp_ratio", 3.0)
        # The official LV-ViT uses nn.LayerNorm (eps 1e-5); timm's ViT default (1e-6) moved outputs by up to 1.3e-3.
        kwargs.setdefault("norm_layer", partial(nn.LayerNorm, eps=1e-5))
        super().__init__(embed_layer=partial(ConvPatchEmbed, width=stem_width),
                         block_fn=partial(ScaledResidualBlock, skip_lam=skip_lam), **kwargs)
        self.aux_head = nn.Linear(self.embed_dim, self.num_classes)
        nn.init.trunc_normal_(self.aux_head.weight, std=0.02)
        nn.init.zeros_(self.aux_head.bias)
        self.dense, self.mix_token, self.dense_eval = True, mix_token, True

    @property
    def backbone(self) -> VisionTransformer:
        return self

    def forward(self, x: Tensor, target_mask: Tensor | None = None, source_mask: Tensor | None = None):
        return _DenseTokenForward.forward(self, x, target_mask, source_mask)


def _lvvit(pretrained: bool, **kwargs: Any) -> LVViT:
    if pretrained:
        raise UserError("timm's pretrained=True is not wired to LV-ViT; get the official weights with `python -m "
                        "maxsup.hub download lvvit_s_official` (or _t, _m), then evaluate them with `Deit/main.py "
                        "--eval --resume FILE --model lvvit_s` or fine-tune with `--finetune FILE` (any layout: the "
                        "bare .pth.tar, a timm-train or DeiT file), or use torch.hub's lvvit_s(pretrained=True)")
    for k in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(k, None)
    return LVViT(**kwargs)


@register_model
def lvvit_t(pretrained: bool = False, **kwargs: Any) -> LVViT:
    """LV-ViT-T: 12 blocks, dim 240, 4 heads, MLP ratio 3, skip_lam 1 (8.53M parameters, 79.1% top-1 at 224)."""
    return _lvvit(pretrained, **{**dict(patch_size=16, embed_dim=240, depth=12, num_heads=4, skip_lam=1.0), **kwargs})


@register_model
def lvvit_s(pretrained: bool = False, **kwargs: Any) -> LVViT:
    """LV-ViT-S: 16 blocks, dim 384, 6 heads, MLP ratio 3, skip_lam 2 (26.15M parameters, 83.3% top-1 at 224)."""
    return _lvvit(pretrained, **{**dict(patch_size=16, embed_dim=384, depth=16, num_heads=6, skip_lam=2.0), **kwargs})


@register_model
def lvvit_m(pretrained: bool = False, **kwargs: Any) -> LVViT:
    """LV-ViT-M: 20 blocks, dim 512, 8 heads, MLP ratio 3, skip_lam 2 (55.83M parameters, 84.0% top-1 at 224)."""
    return _lvvit(pretrained, **{**dict(patch_size=16, embed_dim=512, depth=20, num_heads=8, skip_lam=2.0), **kwargs})


# --------------------------------------------------------------------------------------------------------------------
# dense class scores for relabelling (data/make_token_labels.py)
# --------------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def dense_class_scores(model: nn.Module, x: Tensor) -> Tensor:
    """The classifier applied at every spatial position: (B, K, H, W) logits.

    * LV-ViT / :class:`TokenHeadViT` with a dense head: ``aux_head`` on the patch tokens;
    * timm ViTs: the class head on every patch token (after the final norm);
    * CNNs (torchvision/CIFAR ResNets, MobileNetV2, timm CNNs): the final linear layer applied to every position of
      the last feature map, i.e. the map whose global average gives the model's logits (the official
      ``generate_label.py`` does the same with a 1×1 convolution).
    """
    if isinstance(model, (LVViT, TokenHeadViT)):
        vit = model.backbone
        tokens, _ = model._tokens(x, mix=False)
        head = model.aux_head if model.dense else vit.get_classifier()
        return _grid_logits(head(tokens[:, vit.num_prefix_tokens:]), patch_grid(vit))
    if isinstance(model, VisionTransformer):
        tokens = model.forward_features(x)
        return _grid_logits(model.get_classifier()(tokens[:, model.num_prefix_tokens:]), patch_grid(model))
    fc = classifier_layer(model)
    if hasattr(model, "forward_features"):  # timm CNNs
        fmap = model.forward_features(x)
    else:
        captured: list[Tensor] = []

        def grab(_m: nn.Module, _inp: Any, out: Tensor) -> None:
            if isinstance(out, Tensor) and out.dim() == 4:
                captured.append(out)

        # the last 4-D activation before global pooling is the feature map that is averaged into the logits
        pools = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d)
        handles = [m.register_forward_hook(grab) for m in model.modules()
                   if not list(m.children()) and m is not fc and not isinstance(m, pools)]
        try:
            model(x)
        finally:
            for h in handles:
                h.remove()
        fmap = captured[-1] if captured else None
    if fmap is None or fmap.dim() != 4:
        raise UserError(f"{type(model).__name__} produces no spatial feature map to label densely")
    if fmap.shape[1] != fc.in_features:
        raise UserError(f"{type(model).__name__}: the last feature map has {fmap.shape[1]} channels but the "
                        f"classifier expects {fc.in_features}; this architecture cannot be labelled densely")
    return torch.einsum("bchw,kc->bkhw", fmap, fc.weight) + fc.bias[None, :, None, None]


def _grid_logits(per_token: Tensor, grid: tuple[int, int]) -> Tensor:
    """(B, N, K) per-token logits, N row-major over ``grid`` → (B, K, rows, cols)."""
    return rearrange(per_token, "b (row col) k -> b k row col", row=grid[0])
