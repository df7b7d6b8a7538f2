"""torch.hub entry points, as DeiT's ``hubconf.py`` offers them.

The authors' released weights, downloaded and digest-verified through :mod:`maxsup.hub` (the same path as
``python -m maxsup.hub download``) and converted to this project's convention on the way (the DeiT checkpoint's
classifier rows are permuted from the authors' zip label order to sorted-wnid / ImageFolder order)::

    model = torch.hub.load("<owner>/maxsup-repro", "deit_small_maxsup", pretrained=True)
    model = torch.hub.load("<owner>/maxsup-repro", "resnet50_maxsup", pretrained=True)   # also _ls, _baseline

Each returned model carries ``model.eval_transform``: the crop, resize and normalisation it was evaluated with
(build the transform with ``maxsup.data.transforms.eval_transform(model.eval_transform)``).

Constructors for the models this project defines (randomly initialised; the LV-ViT models are also registered
with timm by ``import maxsup``)::

    model = torch.hub.load("<owner>/maxsup-repro", "lvvit_s", num_classes=1000)
    model = torch.hub.load("<owner>/maxsup-repro", "create_model", "cifar_resnet18", num_classes=10)

``torch.hub.load(..., source="local")`` works on a checkout; ``torch.hub.list`` gives exactly :data:`ENTRY_POINTS`
(module-level names that are not entry points start with ``_`` or are not callable, as torch.hub requires).
"""

from __future__ import annotations

dependencies = ["torch", "torchvision", "timm"]


def _released(name: str, pretrained: bool, **kwargs: object):
    from maxsup.hub import REGISTRY, convert_checkpoint, download, load_released_checkpoint
    from maxsup.models import create_model, model_from_checkpoint

    entry = REGISTRY[name]
    if not pretrained:  # the released architecture, randomly initialised (ffcv's ResNets use BlurPool)
        return create_model(entry.arch, 1000, blurpool=entry.source == "hf", **kwargs)
    if kwargs:
        raise ValueError(f"{name}(pretrained=True) takes no model options (got {', '.join(sorted(kwargs))}); the "
                         f"released weights fix the architecture")
    path = download(name)
    ckpt = convert_checkpoint(load_released_checkpoint(path), entry.arch, eval_transform=entry.eval_transform,
                              source=str(path))
    model = model_from_checkpoint(ckpt, source=str(path))
    model.eval_transform = ckpt["eval_transform"]
    return model.eval()


def deit_small_maxsup(pretrained: bool = True, **kwargs: object):
    """DeiT-Small trained with MaxSup by the authors (GitHub release ``checkpoint_deit``), sorted-wnid labels."""
    return _released("deit_small_maxsup", pretrained, **kwargs)


def resnet50_maxsup(pretrained: bool = True, **kwargs: object):
    """ResNet-50 (ffcv, BlurPool) trained with MaxSup by the authors (Hugging Face hub), sorted-wnid labels."""
    return _released("resnet50_maxsup", pretrained, **kwargs)


def resnet50_ls(pretrained: bool = True, **kwargs: object):
    """ResNet-50 (ffcv, BlurPool) trained with label smoothing by the authors (Hugging Face hub)."""
    return _released("resnet50_ls", pretrained, **kwargs)


def resnet50_baseline(pretrained: bool = True, **kwargs: object):
    """ResNet-50 (ffcv, BlurPool) trained with cross-entropy by the authors (Hugging Face hub)."""
    return _released("resnet50_baseline", pretrained, **kwargs)


def create_model(name: str, num_classes: int = 1000, **kwargs: object):
    """Any model :func:`maxsup.models.create_model` builds (CIFAR ResNets, ``resnet32``, torchvision and timm names,
    LV-ViT), randomly initialised."""
    from maxsup.models import create_model as build

    return build(name, num_classes, **kwargs)


def _lvvit(name: str, pretrained: bool, **kwargs: object):
    if pretrained:  # the official release (zihangJiang/TokenLabeling), through the same verified download
        return _released(f"{name}_official", True, **kwargs)
    return create_model(name, **kwargs)


def lvvit_t(pretrained: bool = False, **kwargs: object):
    """LV-ViT-T (Token Labeling); ``pretrained=True``: the official 224-px weights (``lvvit_t_official``)."""
    return _lvvit("lvvit_t", pretrained, **kwargs)


def lvvit_s(pretrained: bool = False, **kwargs: object):
    """LV-ViT-S (Token Labeling); ``pretrained=True``: the official 224-px weights (``lvvit_s_official``)."""
    return _lvvit("lvvit_s", pretrained, **kwargs)


def lvvit_m(pretrained: bool = False, **kwargs: object):
    """LV-ViT-M (Token Labeling); ``pretrained=True``: the official 224-px weights (``lvvit_m_official``)."""
    return _lvvit("lvvit_m", pretrained, **kwargs)


ENTRY_POINTS = ("deit_small_maxsup", "resnet50_maxsup", "resnet50_ls", "resnet50_baseline", "create_model", "lvvit_t",
                "lvvit_s", "lvvit_m")

