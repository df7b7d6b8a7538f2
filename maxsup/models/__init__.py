"""Models shared by every trainer, the hub and analysis/, re-exported here (``from maxsup.models import create_model``).

* :mod:`.factory`: :func:`create_model` (torchvision, CIFAR-style ResNets, ResNet-32, timm, BlurPool, token heads),
  :func:`arch_spec` (the checkpoint's ``arch`` entry), :func:`model_from_checkpoint`, :func:`load_pretrained_backbone`.
* :mod:`.resnet`: :class:`CifarResNet` (3×3 stem, no max-pool) and ffcv-imagenet's BlurPool.
* :mod:`.lt_models`: paper Table 7's ResNet-32 and the causal-norm (TDE) head.
* :mod:`.vit`: :class:`TokenHeadViT` (timm ViT + token head for SMMix / Token Labeling), LV-ViT, dense class scores.
* :mod:`.outputs`: the classifier layer, penultimate features, per-position logits (Zipf-LS ``dense``).
* :mod:`.state_dict`: the one checkpoint-layout detector (:func:`read_weights`, :func:`fit_keys`,
  :func:`load_weights`), wrapper-prefix stripping and the strict key/shape check every loader uses.

Importing :mod:`maxsup` or :mod:`maxsup.models` registers ``lvvit_t``, ``lvvit_s`` and ``lvvit_m`` with timm
(``@register_model`` in :mod:`.vit`), so ``timm.create_model("lvvit_s")`` works after ``import maxsup``; this is
why importing this package imports timm.
"""

from .factory import arch_spec, create_model, load_pretrained_backbone, model_from_checkpoint, parse_model_kwargs
from .lt_models import LT_HEADS, CausalNormClassifier, CifarResNet32
from .outputs import classifier_layer, features_and_logits, logits_and_dense_logits, unwrap_model
from .resnet import CIFAR_RESNETS, BlurPoolConv2d, CifarResNet, apply_blurpool
from .state_dict import (
    LAYOUTS,
    LayoutError,
    Weights,
    compare_keys,
    describe_keys,
    fit_keys,
    load_any_checkpoint,
    load_state_dict_strict,
    load_weights,
    read_weights,
    strip_prefixes,
    token_head_of,
)
from .vit import (
    TOKEN_HEAD_MODES,
    LVViT,
    TokenHeadViT,
    dense_class_scores,
    lvvit_m,
    lvvit_s,
    lvvit_t,
    mix_tokens,
    patch_grid,
    with_token_head,
)

__all__ = ["create_model", "arch_spec", "model_from_checkpoint", "load_state_dict_strict", "features_and_logits",
           "classifier_layer", "load_pretrained_backbone", "logits_and_dense_logits", "unwrap_model", "CifarResNet",
           "parse_model_kwargs", "BlurPoolConv2d", "apply_blurpool", "CIFAR_RESNETS", "CifarResNet32",
           "CausalNormClassifier", "LT_HEADS",
           "LVViT", "TokenHeadViT", "TOKEN_HEAD_MODES", "with_token_head", "dense_class_scores", "patch_grid",
           "mix_tokens", "lvvit_t", "lvvit_s", "lvvit_m", "strip_prefixes", "describe_keys", "compare_keys", "LAYOUTS",
           "LayoutError", "Weights", "read_weights", "fit_keys", "token_head_of", "load_weights", "load_any_checkpoint"]
