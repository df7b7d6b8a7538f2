"""Dense token labels for Token Labeling (LV-ViT) from any classifier, without the hosted NFNet-F6 dump.

    python data/make_token_labels.py --checkpoint CKPT --data-path DIR --out LABEL_DIR [--topk 5] [--img-size N]

``CKPT`` is a checkpoint this project writes or converts (``arch`` entry; ``--ema`` reads ``model_ema``), or a timm
model name (ImageNet-pretrained weights from the Hugging Face hub, e.g. ``dm_nfnet_f6`` as in the paper). ``DIR`` is an
image folder ``DIR/<class>/<image>`` (e.g. ``imagenet/train``). For every image the classifier is applied at every
position of its last feature map (ViT patch tokens, CNN feature map: ``maxsup.models.dense_class_scores``) and the top-k
scores (logits) and class indices are written as one float16 tensor (2, k, H, W) to ``LABEL_DIR/<class>/<stem>.pt``,
the official layout, read by ``Deit/main.py --token-label-data LABEL_DIR``. ``LABEL_DIR/meta.json`` records the
teacher, ``num_classes``, ``topk`` and ``img_size``; the trainer refuses maps whose class count differs from its model.

The whole image is resized to N×N (no crop), so a map covers exactly the image that the trainer crops. Each file is
written atomically; existing files are skipped, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import timm
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, resolve_data_config
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maxsup.cli import ArgumentParser, positive_int, run_cli  # noqa: E402
from maxsup.data.zipcache import IMAGE_EXTENSIONS  # noqa: E402
from maxsup.errors import UserError  # noqa: E402
from maxsup.models import classifier_layer, model_from_checkpoint  # noqa: E402
from maxsup.models.vit import dense_class_scores  # noqa: E402
from maxsup.training import atomic_save, atomic_write, load_checkpoint, resolve_device  # noqa: E402

#: float16 holds every integer up to 2048 exactly; the official layout stores class indices in it.
MAX_CLASSES = 2048


class _Images(Dataset):
    def __init__(self, items: list[tuple[Path, Path]], transform: transforms.Compose):
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, _ = self.items[i]
        try:
            with open(path, "rb") as f:
                img = Image.open(f).convert("RGB")
        except OSError as exc:
            raise UserError(f"cannot decode image {path}: {exc}") from None
        return self.transform(img), i


def load_teacher(spec: str, use_ema: bool) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode, {"teacher", "img_size", "mean", "std"}) from a checkpoint path or a timm model name."""
    if Path(spec).is_file():
        ckpt = load_checkpoint(spec)
        key = "model_ema" if use_ema else "model"
        if use_ema and ckpt.get("model_ema") is None:
            raise UserError(f"{spec} has no EMA weights; drop --ema")
        model = model_from_checkpoint(ckpt, key=key, source=spec)
        tf = ckpt.get("eval_transform") or {}
        info = {"teacher": str(spec), "img_size": tf.get("img_size", 224),
                "mean": tf.get("mean", list(IMAGENET_DEFAULT_MEAN)), "std": tf.get("std", list(IMAGENET_DEFAULT_STD))}
    elif timm.is_model(spec):
        model = timm.create_model(spec, pretrained=True)
        cfg = resolve_data_config({}, model=model)
        info = {"teacher": spec, "img_size": cfg["input_size"][-1], "mean": list(cfg["mean"]), "std": list(cfg["std"])}
    else:
        raise UserError(f"--checkpoint {spec} is neither a file nor a timm model name")
    return model.eval(), info


def check_teacher_input(model: torch.nn.Module, info: dict, img_size: int, device: torch.device,
                        size_given: bool) -> None:
    """One forward of a black (1, 3, img_size, img_size) batch, before anything is written: a teacher of grey
    images (``in_chans=1``) or a ViT asked for another size than its own fails here with one error line, not with
    a traceback after ``meta.json`` has recorded a size that the next run with the right one would be refused for."""
    try:
        with torch.inference_mode():
            dense_class_scores(model, torch.zeros(1, 3, img_size, img_size, device=device))
    except (RuntimeError, AssertionError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = (f"leave out --img-size (the teacher's eval size is {info['img_size']} px)"
                if size_given and img_size != int(info["img_size"]) else "the maps need a classifier of RGB images")
        raise UserError(f"teacher {info['teacher']} cannot label {img_size}×{img_size} RGB images ({reason}); "
                        f"{hint}") from None


def main(argv: list[str] | None = None) -> dict:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint path or timm model name (pretrained)")
    p.add_argument("--data-path", required=True, help="image folder DIR/<class>/<image>")
    p.add_argument("--out", required=True, help="LABEL_DIR to write <class>/<stem>.pt into")
    p.add_argument("--topk", type=int, default=5, help="classes kept per position (default: 5)")
    p.add_argument("--img-size", type=positive_int, default=None, help="input size (default: the teacher's eval size)")
    p.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass (default: 64)")
    p.add_argument("--num-workers", type=int, default=4, help="DataLoader workers (default: 4)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    args = p.parse_args(argv)
    device = resolve_device(args.device)

    root, out = Path(args.data_path), Path(args.out)
    if not root.is_dir():
        raise UserError(f"--data-path {root} is not a folder")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise UserError(f"{root} has no class sub-folders; expected {root}/<class>/<image>")
    items = [(img, out / c / f"{img.stem}.pt") for c in classes for img in sorted((root / c).iterdir())
             if img.suffix.lower() in IMAGE_EXTENSIONS]
    todo = [(img, dst) for img, dst in items if not dst.exists()]
    model, info = load_teacher(args.checkpoint, args.ema)
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    if not num_classes:  # torchvision / CIFAR ResNets and MobileNetV2 keep it only in their last linear layer
        try:
            num_classes = int(classifier_layer(model).out_features)
        except (ValueError, AttributeError):
            num_classes = 0
    if not 1 <= args.topk <= max(num_classes, 1):
        raise UserError(f"--topk {args.topk} must be between 1 and the teacher's {num_classes} classes")
    if num_classes > MAX_CLASSES:
        raise UserError(f"the teacher has {num_classes} classes; the float16 map layout stores indices exactly only "
                        f"up to {MAX_CLASSES}")
    img_size = args.img_size or int(info["img_size"])
    model.to(device)
    check_teacher_input(model, info, img_size, device, size_given=args.img_size is not None)
    meta = {"teacher": info["teacher"], "num_classes": num_classes, "topk": args.topk, "img_size": img_size,
            "classes": classes, "layout": "(2, topk, H, W) float16: top-k logits, then class indices"}
    out.mkdir(parents=True, exist_ok=True)
    if (out / "meta.json").exists():
        try:
            old = json.loads((out / "meta.json").read_text())
        except json.JSONDecodeError:
            raise UserError(f"{out / 'meta.json'} is not valid JSON (an interrupted copy?); delete it if the maps "
                            f"beside it come from this teacher, or use a new --out") from None
        if any(old.get(k) != meta[k] for k in ("teacher", "num_classes", "topk", "img_size")):
            raise UserError(f"{out} holds maps from another run ({old.get('teacher')}, top-{old.get('topk')}, "
                            f"{old.get('img_size')} px); use a new --out")
    atomic_write(out / "meta.json", json.dumps(meta, indent=2) + "\n")
    print(f"{len(items)} images in {len(classes)} classes, {len(items) - len(todo)} already labelled; teacher "
          f"{info['teacher']} ({num_classes} classes) at {img_size} px, top-{args.topk}")

    bicubic = transforms.InterpolationMode.BICUBIC
    tf = transforms.Compose([transforms.Resize((img_size, img_size), interpolation=bicubic),
                             transforms.ToTensor(), transforms.Normalize(info["mean"], info["std"])])
    loader = DataLoader(_Images(todo, tf), batch_size=args.batch_size, num_workers=args.num_workers)
    for c in {dst.parent for _, dst in todo}:
        c.mkdir(parents=True, exist_ok=True)
    shape = None
    with torch.inference_mode(), tqdm(total=len(todo), unit="img", desc="token labels") as bar:
        for x, idx in loader:
            scores = dense_class_scores(model, x.to(device)).float()  # (B, K, H, W)
            values, indices = scores.topk(args.topk, dim=1)
            maps = torch.stack([values, indices.float()], 1).half().cpu()  # (B, 2, k, H, W)
            shape = tuple(maps.shape[1:])
            for m, i in zip(maps, idx.tolist(), strict=True):
                atomic_save(m.clone(), todo[i][1])
            bar.update(len(idx))
    summary = {"images": len(items), "written": len(todo), "out": str(out), "map_shape": shape, **meta}
    summary.pop("classes")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
