"""Released checkpoints (the authors' MaxSup releases, the official LV-ViT weights): registry, verified download,
conversion to this project's format, evaluation.

    python -m maxsup.hub list [--remote]
    python -m maxsup.hub download deit_small_maxsup [--dest DIR] [--filename NAME] [--offline]
    python -m maxsup.hub convert SRC.pth DST.pth --arch deit_small_patch16_224 [--label-order auto|zip|standard]
    python -m maxsup.hub convert last.ckpt DST.pth --arch resnet50 [--plain-torchvision]
    python -m maxsup.hub evaluate deit_small_maxsup|CKPT --data-path /imagenet/val
    python -m maxsup.hub export-mmseg CKPT OUT.pth   # DeiT-S backbone for MMSegmentation + UperNet/ADE20K config
    python -m maxsup.hub export RUN_OR_CKPT OUT --format safetensors   # timm's save_for_hf folder
    python -m maxsup.hub push RUN_DIR --repo-id ORG/NAME [--paper-table results/tables/T5.md]

The registry records what is known (repository, release tag or revision, model, method); the file is found at run
time by listing the release (GitHub REST API) or the repository (huggingface_hub) and applying :func:`file_rule`.
Downloads are verified against the size/sha256 the API states, or against a sha256 recorded on first download.

Two traps this package exists for (see data/README.md, "Released checkpoints"):

* The DeiT-Small checkpoint was trained with ``--cache`` (zip files + the authors' map files), whose class indices
  are a permutation of ImageFolder's sorted-wnid order with no fixed point. Evaluated on an ImageFolder without
  remapping it scores near chance. :func:`convert_checkpoint` permutes the head rows into sorted-wnid order, using
  the authors' ``zip_training_converter/zip_val_map.txt`` at a pinned commit, verified by the file's sha256 and then
  by the sha256 of its class order.
* The ResNet-50 checkpoints come from ffcv-based training with BlurPool; their keys only load strictly into a
  BlurPool ResNet-50 (:func:`maxsup.models.create_model` with ``blurpool=True``). Loading into a plain torchvision
  ResNet-50 drops the blur and changes the function, so it is an explicit opt-in (``--plain-torchvision``).

Files are loaded with ``torch.load(weights_only=True)``; the authors' DeiT file pickles ``argparse.Namespace`` args,
so exactly that one type is allow-listed (and logged) when the plain load refuses it.

Modules: :mod:`.registry` (what is known, the file rule, errors), :mod:`.fetch` (verified, resumable HTTP),
:mod:`.download` (GitHub / Hugging Face listing and download), :mod:`.zip_order` (the DeiT label order),
:mod:`.convert`, :mod:`.evaluate`, :mod:`.mmseg` (MMSegmentation export), :mod:`.publish` (export / push of our
runs in timm's Hugging Face form) and :mod:`.cli`; their public names are
re-exported here (``from maxsup.hub import convert_checkpoint``).
"""

from .cli import get_args_parser, main
from .convert import convert_checkpoint, eval_transform_for, load_released_checkpoint, normalize_resnet_state_dict
from .download import RemoteFile, download, github_release, list_remote, pick_file
from .evaluate import evaluate_checkpoint
from .fetch import cached_url, fetch_url, local_checkpoint, local_checkpoints, sha256_file
from .mmseg import DEIT_SMALL, deit_backbone_state_dict, export_mmseg, mmseg_config, timm_vit_to_mmseg
from .publish import export, push
from .registry import (
    AUTHORS_REPO,
    HF_RESNET_REPO,
    LVVIT_REPO,
    REGISTRY,
    ChecksumError,
    DownloadError,
    LayoutError,
    ReleasedCheckpoint,
    ZipMapError,
    cache_dir,
    file_rule,
    get_entry,
    matches_rule,
)
from .zip_order import (
    ZIP_MAP_COMMIT,
    ZIP_MAP_PATH,
    ZIP_MAP_SHA256,
    ZIP_ORDER_SHA256,
    load_zip_order,
    read_zip_map,
    verify_zip_order,
    zip_to_standard_permutation,
)

__all__ = ["ReleasedCheckpoint", "REGISTRY", "AUTHORS_REPO", "HF_RESNET_REPO", "LVVIT_REPO", "eval_transform_for",
           "DownloadError", "ChecksumError",
           "LayoutError", "ZipMapError", "RemoteFile", "file_rule", "matches_rule", "get_entry", "pick_file",
           "list_remote", "github_release", "cache_dir", "download", "fetch_url", "sha256_file", "cached_url",
           "local_checkpoint", "local_checkpoints",
           "load_released_checkpoint", "ZIP_MAP_PATH", "ZIP_MAP_COMMIT", "ZIP_MAP_SHA256", "ZIP_ORDER_SHA256",
           "read_zip_map", "verify_zip_order", "zip_to_standard_permutation", "load_zip_order",
           "normalize_resnet_state_dict", "convert_checkpoint", "evaluate_checkpoint", "DEIT_SMALL",
           "timm_vit_to_mmseg", "deit_backbone_state_dict", "mmseg_config", "export_mmseg", "get_args_parser",
           "main", "export", "push"]
