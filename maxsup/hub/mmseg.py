"""DeiT-S backbones for semantic segmentation (paper Table 9: UperNet + DeiT-Small on ADE20K, MMSegmentation).

:func:`export_mmseg` turns a DeiT-Small checkpoint (any of this project's trainers, ``maxsup.hub convert`` output, or
the authors' released file) into the key layout of MMSegmentation's ``VisionTransformer`` backbone, the layout that
MMSeg's own ``tools/model_converters/vit2mmseg.py`` produces from timm weights:

==============================  ================================================
timm / DeiT                      MMSegmentation ``VisionTransformer``
==============================  ================================================
``patch_embed.proj.*``           ``patch_embed.projection.*``
``blocks.N.norm1/norm2.*``       ``layers.N.ln1/ln2.*``
``blocks.N.attn.qkv.weight``     ``layers.N.attn.attn.in_proj_weight`` (``nn.MultiheadAttention``, rows q, k, v)
``blocks.N.attn.qkv.bias``       ``layers.N.attn.attn.in_proj_bias``
``blocks.N.attn.proj.*``         ``layers.N.attn.attn.out_proj.*``
``blocks.N.mlp.fc1.*``           ``layers.N.ffn.layers.0.0.*``
``blocks.N.mlp.fc2.*``           ``layers.N.ffn.layers.1.*``
``norm.*``                       ``ln1.*`` (used only with ``final_norm=True``)
``cls_token``, ``pos_embed``     unchanged (MMSeg resizes ``pos_embed`` to the crop size when it loads)
``head.*``                       dropped (the classifier, and with it the label order, plays no part)
==============================  ================================================

``patch_embed.projection.bias`` is used only with ``patch_bias=True``. MMSeg's DeiT-S UperNet config, and so
ours, leaves ``patch_bias`` and ``final_norm`` at their defaults (False): MMSeg then loads 147 of the 150 exported
tensors and reports ``ln1.*`` and ``patch_embed.projection.bias`` as unexpected keys. Checked once against
MMSegmentation 1.2.2 (data/README.md, "Segmentation (Table 9)"): with both options True the backbone reproduces
timm's DeiT features.

The config written beside the checkpoint follows MMSeg's ``vit_deit-s16_upernet_8xb2-80k_ade20k-512x512.py``
(see :data:`CONFIG_TEMPLATE`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor

from ..errors import UserError
from ..models import compare_keys, describe_keys, strip_prefixes
from ..training.checkpoint import atomic_save, atomic_write
from .convert import load_released_checkpoint
from .registry import LayoutError

__all__ = ["DEIT_SMALL", "timm_vit_to_mmseg", "deit_backbone_state_dict", "mmseg_config", "export_mmseg"]

DEIT_SMALL = "deit_small_patch16_224"

_BLOCK_RULES = (  # applied to the part after "blocks.N."
    (r"^norm([12])\.", r"ln\1."),
    (r"^attn\.qkv\.(weight|bias)$", r"attn.attn.in_proj_\1"),
    (r"^attn\.proj\.", "attn.attn.out_proj."),
    (r"^mlp\.fc1\.", "ffn.layers.0.0."),
    (r"^mlp\.fc2\.", "ffn.layers.1."),
)


def _map_key(key: str) -> str | None:
    """MMSeg name of a timm ViT key; None for the classifier; UserError for a key MMSeg's backbone has no place for."""
    if key.startswith("head."):
        return None
    if key in ("cls_token", "pos_embed"):
        return key
    if key.startswith("patch_embed.proj."):
        return "patch_embed.projection." + key[len("patch_embed.proj."):]
    if key.startswith("norm."):
        return "ln1." + key[len("norm."):]
    match = re.match(r"^blocks\.(\d+)\.(.+)$", key)
    if match:
        for pattern, repl in _BLOCK_RULES:
            if re.search(pattern, match.group(2)):
                return f"layers.{match.group(1)}." + re.sub(pattern, repl, match.group(2))
    raise UserError(f"{key!r} has no counterpart in MMSegmentation's VisionTransformer (a DeiT/ViT variant this "
                    f"export does not know: distillation token, layer scale, extra norms?)")


def timm_vit_to_mmseg(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a timm ViT/DeiT state_dict to MMSeg's ``VisionTransformer`` keys (values unchanged; head dropped)."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        new = _map_key(key)
        if new is not None:
            out[new] = value
    return out


def deit_backbone_state_dict(raw: Mapping[str, Any], source: str = "checkpoint") -> dict[str, Tensor]:
    """The DeiT-S weights of a loaded checkpoint, checked key by key and shape by shape against timm's
    ``deit_small_patch16_224`` (the authors' ``our_patch16_224`` has the same layout)."""
    if isinstance(raw.get("model"), Mapping):
        sd = raw["model"]
    elif isinstance(raw.get("state_dict"), Mapping):
        sd = raw["state_dict"]
    else:
        sd = raw
    sd = strip_prefixes({k: v for k, v in sd.items() if isinstance(v, Tensor)})
    arch = raw.get("arch")
    if isinstance(arch, Mapping) and arch.get("name") not in (None, DEIT_SMALL):
        raise UserError(f"{source} is a {arch.get('name')} checkpoint; export-mmseg writes DeiT-Small "
                        f"({DEIT_SMALL}) backbones, the model of the paper's Table 9")
    if "patch_embed.proj.weight" not in sd:
        raise UserError(f"{source} holds no DeiT/ViT weights (no 'patch_embed.proj.weight'); first keys: "
                        f"{describe_keys(sd)}")
    backbone = {k: v for k, v in sd.items() if not k.startswith("head.")}
    with torch.device("meta"):  # names and shapes only: no memory, no init
        own = timm.create_model(DEIT_SMALL, pretrained=False, num_classes=0).state_dict()  # head = Identity
    mismatch = compare_keys(own, backbone)
    if mismatch:
        raise LayoutError(f"{source} is not a DeiT-Small ({DEIT_SMALL}) backbone: unexpected keys: "
                          f"{', '.join(mismatch.unexpected[:4]) or 'none'}; missing keys: "
                          f"{', '.join(mismatch.missing[:4]) or 'none'}; wrong shapes: "
                          f"{'; '.join(mismatch.shapes[:2]) or 'none'}")
    return backbone


#: MMSegmentation 1.x config: UperNet + DeiT-S on ADE20K, following MMSeg's own
#: configs/vit/vit_deit-s16_upernet_8xb2-80k_ade20k-512x512.py (and the _base_ files it inherits), spelled out in one
#: file so it does not depend on where MMSeg's configs live. ``{pretrained}`` is filled in by :func:`mmseg_config`.
CONFIG_TEMPLATE = '''\
# UperNet + DeiT-Small on ADE20K (paper Table 9), written by `python -m maxsup.hub export-mmseg`.
# Follows MMSegmentation 1.x configs/vit/vit_deit-s16_upernet_8xb2-80k_ade20k-512x512.py: DeiT-S backbone without a
# neck, UPerHead on blocks 3/6/9/12, FCN auxiliary head, AdamW lr 6e-5 with 1500 warm-up iterations then poly decay,
# 80k iterations of 8 GPUs x 2 crops of 512x512. The paper does not state its schedule; MMSeg's DeiT-S UperNet
# reaches the same mIoU with 80k and 160k iterations (its model zoo: 42.96 vs 42.87 single-scale, 43.79 vs 43.79
# multi-scale), so we take 80k, half the cost. The paper reports multi-scale mIoU: test with `tools/test.py ... --tta`.
# As in MMSeg's config the backbone keeps patch_bias=False and final_norm=False, so MMSeg loads 147 of the 150
# exported tensors and reports patch_embed.projection.bias and ln1.* as unexpected keys. Set both to True to start
# from exactly the network that was trained on ImageNet (a deviation from MMSeg's recipe).
# Train:  python tools/train.py THIS_FILE   (from an MMSegmentation checkout, ADE20K under data/ade/)
crop_size = (512, 512)
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True,
    pad_val=0, seg_pad_val=255, size=crop_size)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    pretrained={pretrained!r},
    backbone=dict(
        type='VisionTransformer', img_size=(512, 512), patch_size=16, in_channels=3, embed_dims=384,
        num_layers=12, num_heads=6, mlp_ratio=4, out_indices=(2, 5, 8, 11), qkv_bias=True, drop_rate=0.0,
        attn_drop_rate=0.0, drop_path_rate=0.1, with_cls_token=True, norm_cfg=dict(type='LN', eps=1e-6),
        act_cfg=dict(type='GELU'), norm_eval=False, interpolate_mode='bicubic'),
    neck=None,
    decode_head=dict(
        type='UPerHead', in_channels=[384, 384, 384, 384], in_index=[0, 1, 2, 3], pool_scales=(1, 2, 3, 6),
        channels=512, dropout_ratio=0.1, num_classes=150, norm_cfg=norm_cfg, align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(
        type='FCNHead', in_channels=384, in_index=3, channels=256, num_convs=1, concat_input=False,
        dropout_ratio=0.1, num_classes=150, norm_cfg=norm_cfg, align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))

dataset_type = 'ADE20KDataset'
data_root = 'data/ade/ADEChallengeData2016'
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
img_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale_factor=r, keep_ratio=True) for r in img_ratios],
        [dict(type='RandomFlip', prob=0., direction='horizontal'),
         dict(type='RandomFlip', prob=1., direction='horizontal')],
        [dict(type='LoadAnnotations')],
        [dict(type='PackSegInputs')],
    ]),
]
train_dataloader = dict(
    batch_size=2, num_workers=4, persistent_workers=True, sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root,
                 data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=4, persistent_workers=True, sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root,
                 data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

# AdamW, no weight decay for the position embedding, the class token and the norms
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={{
        'pos_embed': dict(decay_mult=0.), 'cls_token': dict(decay_mult=0.), 'norm': dict(decay_mult=0.)}}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=80000, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=80000, val_interval=8000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=8000),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))

default_scope = 'mmseg'
env_cfg = dict(cudnn_benchmark=True, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
tta_model = dict(type='SegTTAModel')
'''


def mmseg_config(pretrained: str | os.PathLike) -> str:
    """The UperNet + DeiT-S ADE20K config text with ``model.pretrained`` set to ``pretrained``."""
    return CONFIG_TEMPLATE.format(pretrained=str(pretrained))


def export_mmseg(ckpt: str | os.PathLike, out: str | os.PathLike, config: str | os.PathLike | None = None,
                 write_config: bool = True) -> tuple[Path, Path | None]:
    """Write ``out`` = ``{'state_dict': <MMSeg VisionTransformer keys>, 'meta': {...}}`` (MMSeg's backbone reads
    ``state_dict`` when present) and, unless ``write_config`` is False, the UperNet config (default
    ``<out stem>_upernet_ade20k.py`` beside ``out``) pointing at it. Both writes are atomic."""
    out = Path(out)
    raw = load_released_checkpoint(ckpt)
    mapped = timm_vit_to_mmseg(deit_backbone_state_dict(raw, str(ckpt)))
    meta = {"source": str(ckpt), "arch": DEIT_SMALL, "layout": "mmseg VisionTransformer (vit2mmseg key names)",
            "exported_by": "python -m maxsup.hub export-mmseg"}
    atomic_save({"state_dict": {k: v.contiguous() for k, v in mapped.items()}, "meta": meta}, out)
    if not write_config:
        return out, None
    cfg = Path(config) if config is not None else out.with_name(f"{out.stem}_upernet_ade20k.py")
    atomic_write(cfg, mmseg_config(out.resolve()))
    return out, cfg
