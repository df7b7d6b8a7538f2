"""Paper Figure 2: Grad-CAM grid. Row 1 shows the original images, then one row per checkpoint.

    python -m analysis.gradcam --checkpoint MaxSup=ms.pth --checkpoint LS=ls.pth --checkpoint CE=ce.pth \
        --dataset imagefolder --data-path /data/imagenet --num-images 6 --out results/analysis

Uses pytorch-grad-cam's ``GradCAM``. Target layers follow the authors' removed ``viz/cam.py``: for a ViT/DeiT it is
``blocks[-1].norm1``, with a reshape that drops the prefix (CLS/distillation) tokens and lays the patch tokens out
on their grid; for a ResNet it is ``layer4``; for MobileNet it is ``features[-1]``. The explained class is the ground
truth (``--target label``, the default) or the model's top-1 (``--target top1``). The images are the first sample
of each of the first ``--num-images`` classes of the split, or ``--indices``.
Writes ``<out>/gradcam.png`` and ``<out>/gradcam.json``.
"""

from __future__ import annotations

if not __package__:  # run by path (python analysis/NAME.py): see analysis/_bootstrap.py
    import _bootstrap  # noqa: F401

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from analysis.common import (
    build_dataset,
    check_head,
    device_from_args,
    load_models,
    parse_classes,
    pyplot,
    save_figure,
    script_parser,
    write_results,
)
from maxsup.cli import int_list, positive_float, positive_int, run_cli
from maxsup.data.imagenet_variants import RestrictLogits
from maxsup.data.transforms import eval_transform
from maxsup.errors import UserError


def vit_reshape(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """(B, prefix + h·w, C) tokens → (B, C, h, w) maps, dropping the CLS (and distillation) tokens."""
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, prefix:, :]
        h, w = grid if grid is not None else (int(round(patches.shape[1] ** 0.5)),) * 2
        return patches.reshape(tokens.shape[0], h, w, tokens.shape[2]).permute(0, 3, 1, 2)

    return reshape


def target_layer(model: nn.Module, dotted: str | None = None) -> tuple[nn.Module, Callable | None]:
    """(layer, reshape_transform) to explain; ``dotted`` (e.g. ``layer4.1``) overrides the default choice."""
    if dotted:
        try:
            layer = model.get_submodule(dotted)
        except AttributeError:
            raise UserError(f"--target-layer {dotted!r} is not a submodule of {type(model).__name__}") from None
        return layer, vit_reshape(model) if hasattr(model, "blocks") else None
    blocks = getattr(model, "blocks", None)
    if blocks is not None and hasattr(blocks[-1], "norm1"):
        return blocks[-1].norm1, vit_reshape(model)  # Paper §4.4 / authors' viz/cam.py
    if hasattr(model, "layer4"):
        return model.layer4, None
    if isinstance(getattr(model, "features", None), nn.Sequential):
        return model.features[-1], None
    raise UserError(f"no default Grad-CAM layer for {type(model).__name__}; pass --target-layer (a dotted submodule)")


def _denormalize(x: torch.Tensor, spec: dict[str, Any]) -> np.ndarray:
    """(C, H, W) normalised tensor → (H, W, 3) float image in [0, 1]."""
    mean = torch.tensor(spec["mean"])[:, None, None]
    std = torch.tensor(spec["std"])[:, None, None]
    img = (x * std[: x.shape[0]] + mean[: x.shape[0]]).clamp(0, 1)
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    return img.permute(1, 2, 0).numpy().astype(np.float32)


def default_indices(targets: list[int], num_images: int) -> list[int]:
    """First sample of each of the first ``num_images`` classes (then further samples if there are fewer classes)."""
    first: dict[int, int] = {}
    for i, t in enumerate(targets):
        first.setdefault(t, i)
    chosen = [first[c] for c in sorted(first)][:num_images]
    rest = [i for i in range(len(targets)) if i not in set(chosen)]
    return chosen + rest[: num_images - len(chosen)]


def get_args_parser() -> argparse.ArgumentParser:
    p = script_parser(__doc__, split="test")
    p.add_argument("--num-images", type=positive_int, default=4, help="number of images (columns)")
    p.add_argument("--indices", type=int_list, default=None, help="comma list of dataset indices to show instead")
    p.add_argument("--target", choices=("label", "top1"), default="label",
                   help="class to explain: the ground truth or the model's top-1 prediction")
    p.add_argument("--target-layer", default=None, help="dotted submodule to explain instead of the default")
    p.add_argument("--panel-size", type=positive_float, default=2.0, help="inches per panel")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Returns ``gradcam.json`` (grid shape, images, explained and predicted classes per method)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    plt = pyplot()
    device = device_from_args(args)
    models = list(load_models(args))
    classes = parse_classes(args.classes)
    ds = build_dataset(args.dataset, args.data_path, args.split, None, classes, args.max_per_class, args.seed)
    desc = f"{args.dataset} {args.split}"
    for m in models:
        check_head(m, ds.head_size, desc)
    if args.indices:
        indices = args.indices
        if any(i < 0 or i >= len(ds) for i in indices):
            raise UserError(f"--indices must lie in [0, {len(ds)}) for {desc}, got {','.join(map(str, indices))}")
    else:
        indices = default_indices(ds.targets, args.num_images)
    labels = [ds.targets[i] for i in indices]
    rows, cols = 1 + len(models), len(indices)
    fig, axes = plt.subplots(rows, cols, figsize=(args.panel_size * cols, args.panel_size * rows), squeeze=False)
    explained: dict[str, list[int]] = {}
    predicted: dict[str, list[int]] = {}
    for r, m in enumerate(models, start=1):
        tf = eval_transform(m.transform_spec)
        x = torch.stack([tf(ds.base[ds.indices[i]][0]) for i in indices]).to(device)
        # ImageNet-A/R: a 1k head scored on the 200 classes present, so labels, predictions and the explained
        # class are positions among them (the layers Grad-CAM hooks stay those of the model)
        scored = m.model if ds.class_indices is None else RestrictLogits(m.model, ds.class_indices).to(device)
        with torch.no_grad():
            pred = scored(x).argmax(1).tolist()
        targets = labels if args.target == "label" else pred
        layer, reshape = target_layer(m.model, args.target_layer)
        with GradCAM(model=scored, target_layers=[layer], reshape_transform=reshape) as cam:
            maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])  # (B, H, W) in [0, 1]
        explained[m.name], predicted[m.name] = targets, pred
        for c in range(cols):
            img = _denormalize(x[c].cpu(), m.transform_spec)
            if r == 1:
                axes[0, c].imshow(img)
                axes[0, c].set_title(ds.classes[labels[c]], fontsize=8)
            axes[r, c].imshow(show_cam_on_image(img, maps[c], use_rgb=True))
        axes[r, 0].set_ylabel(m.name)
    axes[0, 0].set_ylabel("original")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    png = save_figure(fig, Path(args.out) / "gradcam.png")
    result = {"script": "gradcam", "png": str(png), "rows": rows, "cols": cols, "panels": rows * cols,
              "methods": [m.name for m in models], "dataset": args.dataset, "split": args.split,
              "indices": indices, "labels": labels, "class_names": [ds.classes[t] for t in labels],
              "target": args.target, "explained_class": explained, "predicted_class": predicted}
    write_results(args.out, "gradcam", result)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    run_cli(main)
