"""What is known about the released checkpoints (the authors' MaxSup releases and the official LV-ViT weights):
repository, release tag or revision, model, method, eval transform, published top-1; the rule that picks each one's
file from a live listing, the endpoints and cache folder, and the hub's error types."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..models.state_dict import LayoutError

__all__ = ["AUTHORS_REPO", "HF_RESNET_REPO", "LVVIT_REPO", "DownloadError", "ChecksumError", "LayoutError",
           "ZipMapError", "ReleasedCheckpoint", "REGISTRY", "FFCV_EVAL", "CHECKPOINT_SUFFIXES", "METHOD_PATTERNS",
           "file_rule", "matches_rule", "get_entry", "cache_dir", "github_api_base", "github_raw_base", "hf_endpoint"]

AUTHORS_REPO = "ZhouYuxuanYX/Maximum-Suppression-Regularization"
HF_RESNET_REPO = "zhouyuxuanyx/MaxSup-Regularized-ResNet50"
#: The official LV-ViT code and weights (Jiang et al., NeurIPS 2021), GitHub releases 1.0 and v0.2.0.
LVVIT_REPO = "zihangJiang/TokenLabeling"


class DownloadError(UserError):
    """The network or the server failed; the message says how to work offline."""


class ChecksumError(UserError):
    """A downloaded file does not have the sha256 the registry expects; nothing was kept."""


class ZipMapError(UserError):
    """The authors' zip map is malformed or its class order does not verify."""


# --------------------------------------------------------------------------------------------------------------------
# Registry: what is known (repository, tag or revision, model, method); the file itself is found at run time
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReleasedCheckpoint:
    """One released model. :func:`download` lists the release (GitHub) or the repository (Hugging Face) of ``repo``
    and picks the file by :func:`file_rule`: the one ``filename`` where the publisher names it (LV-ViT's README),
    else by ``method`` (``--filename`` picks one explicitly). ``top1``: the top-1 (%) the publisher's README states,
    None where it states none."""

    name: str
    source: str  # "github" (release asset) or "hf" (Hugging Face model repo)
    repo: str
    revision: str  # GitHub release tag (or title) / Hugging Face revision
    arch: str
    method: str  # "baseline", "ls", "maxsup" (picks the file by METHOD_PATTERNS) or the recipe, e.g. "token_labeling"
    description: str
    eval_transform: dict[str, Any] = field(default_factory=dict)  # kwargs of maxsup.data.transforms.transform_spec
    single_model: bool = False  # True: the release holds one model, so any checkpoint file is a candidate
    filename: str | None = None  # the asset's name, where the publisher's README names it
    top1: float | None = None


# ffcv-imagenet evaluates at 256 px: a centre square of 224/256 of the short side resized to 256x256
# (CenterCropRGBImageDecoder((256, 256), ratio=224/256)) ~ Resize(292) + CenterCrop(256).
FFCV_EVAL = {"img_size": 256, "crop_pct": 224 / 256, "interpolation": "bilinear"}
_RESNET_NOTE = "ResNet-50 (ffcv, BlurPool), trained with {}; sorted-wnid labels"
# LV-ViT's default_cfgs (tlt/models/lvvit.py): crop 0.9 for T and S, 1.0 for M and L, bicubic.
def _lvvit_eval(crop_pct: float) -> dict[str, Any]:
    return {"img_size": 224, "crop_pct": crop_pct, "interpolation": "bicubic"}


_LVVIT_NOTE = "official LV-ViT-{} (Token Labeling + MixToken, NFNet-F6 label maps), 224 px; README top-1 {}"

REGISTRY: dict[str, ReleasedCheckpoint] = {
    c.name: c for c in (
        ReleasedCheckpoint(
            "deit_small_maxsup", "github", AUTHORS_REPO, "checkpoint_deit", "deit_small_patch16_224", "maxsup",
            "DeiT-Small trained with MaxSup (GitHub release checkpoint_deit); zip label order, remapped on convert",
            # Deit/datasets.py build_transform with --eval-crop-ratio 0.875: Resize(256, bicubic) + CenterCrop(224).
            {"img_size": 224, "crop_pct": 0.875, "interpolation": "bicubic"}, single_model=True),
        ReleasedCheckpoint("resnet50_baseline", "hf", HF_RESNET_REPO, "main", "resnet50", "baseline",
                           _RESNET_NOTE.format("cross-entropy"), FFCV_EVAL),
        ReleasedCheckpoint("resnet50_ls", "hf", HF_RESNET_REPO, "main", "resnet50", "ls",
                           _RESNET_NOTE.format("label smoothing"), FFCV_EVAL),
        ReleasedCheckpoint("resnet50_maxsup", "hf", HF_RESNET_REPO, "main", "resnet50", "maxsup",
                           _RESNET_NOTE.format("MaxSup"), FFCV_EVAL),
        ReleasedCheckpoint("lvvit_t_official", "github", LVVIT_REPO, "v0.2.0", "lvvit_t", "token_labeling",
                           _LVVIT_NOTE.format("T", 79.1), _lvvit_eval(0.9),
                           filename="lvvit_t.pth", top1=79.1),
        ReleasedCheckpoint("lvvit_s_official", "github", LVVIT_REPO, "1.0", "lvvit_s", "token_labeling",
                           _LVVIT_NOTE.format("S", 83.3), _lvvit_eval(0.9),
                           filename="lvvit_s-26M-224-83.3.pth.tar", top1=83.3),
        ReleasedCheckpoint("lvvit_m_official", "github", LVVIT_REPO, "1.0", "lvvit_m", "token_labeling",
                           _LVVIT_NOTE.format("M", 84.0), _lvvit_eval(1.0),
                           filename="lvvit_m-56M-224-84.0.pth.tar", top1=84.0),
    )
}

#: File names (lower-cased, with their folders) that count as checkpoints.
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".tar")
#: A method's pattern, searched in the lower-cased path of a file (folders included).
METHOD_PATTERNS = {
    "baseline": r"baseline|vanilla|cross[-_ ]?entropy|(?<![a-z])ce(?![a-z])",
    "ls": r"label[-_ ]?smooth|(?<![a-z])ls(?![a-z])",
    "maxsup": r"max[-_ ]?sup",
}


def file_rule(entry: ReleasedCheckpoint) -> str:
    """The documented rule that picks ``entry``'s file from a listing (printed by ``list``)."""
    kind = f"checkpoint file ({'/'.join(CHECKPOINT_SUFFIXES)})"
    if entry.filename is not None:
        return f"the file named {entry.filename} (as the publisher's README names it)"
    if entry.single_model:
        return f"the one {kind} in the release"
    others = [m for m in METHOD_PATTERNS if m != entry.method]
    return (f"the one {kind} whose path matches /{METHOD_PATTERNS[entry.method]}/ and not the "
            f"{' or '.join(others)} patterns")


def matches_rule(entry: ReleasedCheckpoint, path: str) -> bool:
    if entry.filename is not None:
        return path == entry.filename
    low = path.lower()
    if not low.endswith(CHECKPOINT_SUFFIXES):
        return False
    if entry.single_model:
        return True
    hits = {m for m, pattern in METHOD_PATTERNS.items() if re.search(pattern, low)}
    return hits == {entry.method}


def get_entry(name: str) -> ReleasedCheckpoint:
    if name not in REGISTRY:
        raise UserError(f"unknown checkpoint {name!r}; known: {', '.join(REGISTRY)} (or pass a file path)")
    return REGISTRY[name]

def cache_dir() -> Path:
    """Offline cache root: ``$MAXSUP_CACHE`` or ``~/.cache/maxsup``."""
    return Path(os.environ.get("MAXSUP_CACHE") or Path.home() / ".cache" / "maxsup")


def github_api_base() -> str:
    """GitHub REST API root: ``$MAXSUP_GITHUB_API`` (tests point it at a loopback server) or api.github.com."""
    return os.environ.get("MAXSUP_GITHUB_API", "https://api.github.com").rstrip("/")


def github_raw_base() -> str:
    """Raw file root: ``$MAXSUP_GITHUB_RAW_BASE`` or raw.githubusercontent.com."""
    return os.environ.get("MAXSUP_GITHUB_RAW_BASE", "https://raw.githubusercontent.com").rstrip("/")


def hf_endpoint() -> str:
    """Hugging Face hub root: ``$HF_ENDPOINT`` or huggingface.co."""
    # passed explicitly: huggingface_hub reads HF_ENDPOINT only once, at import time.
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
