"""DeiT trainer with MaxSup (paper §5.1, Tables 1, 5, 11): arguments, the epoch loop and checkpoints.

Single process:  python Deit/main.py --data-set FMNIST --loss maxsup ...
Distributed:     torchrun --nproc_per_node=4 Deit/main.py --data-path /data/imagenet --loss maxsup ...
See Deit/README.md for the exact command of every table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

sys.path.insert(0, str(Path(__file__).resolve().parent))  # engine/datasets/samplers, DeiT's flat layout

from datasets import TEST_SETS, build_dataset, build_transform, class_names, eval_transform_spec  # noqa: E402
from engine import evaluate, train_one_epoch  # noqa: E402
from samplers import RASampler, ShardSampler  # noqa: E402
from smmix import SMMix, SMMixStep  # noqa: E402
from token_labeling import (  # noqa: E402
    AUG_ORDERS,
    SMOOTHING_RULES,
    CropFlipWithBox,
    OfficialOrderCropFlip,
    TokenLabelDataset,
    TokenLabelStep,
)

from maxsup.checks import check_accum_steps, check_smoothing  # noqa: E402
from maxsup.cli import (  # noqa: E402
    ArgumentParser,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
    run_cli,
)
from maxsup.data import check_class_order  # noqa: E402
from maxsup.data.imagenet_variants import (  # noqa: E402
    RealScorer,
    add_test_set_args,
    extra_val_sets,
    real_labels,
    scored_logits,
)
from maxsup.errors import UserError  # noqa: E402
from maxsup.estimate import (  # noqa: E402
    StepClock,
    SyntheticImages,
    add_estimate_args,
    check_estimate,
    estimate_record,
    print_estimate,
    train_split_size,
)
from maxsup.hub import local_checkpoints  # noqa: E402
from maxsup.losses import (  # noqa: E402
    ALPHA_DENOMINATORS,
    LOSSES,
    PENALTY_KEYS,
    ScheduledLoss,
    build_criterion,
    describe_loss_options,
    loss_defaults,
    resolve_loss_options,
)
from maxsup.models import (  # noqa: E402
    CIFAR_RESNETS,
    Weights,
    arch_spec,
    create_model,
    load_any_checkpoint,
    load_pretrained_backbone,
    load_weights,
    parse_model_kwargs,
    patch_grid,
    read_weights,
    token_head_of,
)
from maxsup.timing import Stopwatch, train_timing  # noqa: E402
from maxsup.training import (  # noqa: E402
    Preemption,
    ScalarWriter,
    add_run_args,
    alpha_schedule_of,
    append_log,
    atomic_save,
    atomic_write,
    check_finite_model,
    claim_run_folder,
    init_distributed,
    launcher_world_size,
    open_resume,
    parse_seeds,
    print_config,
    recipe_fingerprint,
    repair_log,
    restore_state,
    rng_state,
    run_seeds,
    seed_everything,
    seeded_args,
    write_run_record,
)

TRAINER = "Deit/main.py"
#: Arguments that define a run (plus the α flags): --resume refuses a change.
RESUME_KEYS = ("model", "model_kwargs", "input_size", "data_set", "classes", "epochs", "loss", "loss_options",
               "smoothing", "smmix", "token_label", "mixtoken")
#: The α schedule's options, which have flags of their own (every paper recipe sets them); None = the loss's default.
ALPHA_OPTIONS = ("alpha_start", "alpha_end", "alpha_denominator")
#: Flags that do not change what is trained (paths, logging, workers, the seed, the loss itself, the split of the global
#: batch): left out of run.json's recipe fingerprint, so seeds and losses of one recipe are one group of
#: analysis.collect.
NOT_RECIPE = ("seed", "seeds", "output_dir", "resume", "device", "num_workers", "print_freq", "data_path", "eval",
              "eval_ema", "dist_eval", "tensorboard", "print_config", "pin_mem", "loss", "alpha_start", "alpha_end",
              "model", "data_set", "stats_every", "batch_size", "accum_steps", "world_size", "allow_ls_with_maxsup",
              "skip_corrupt", "cache", "loss_opt", "loss_options", "compile", "overwrite", "estimate",
              "estimate_synthetic")
#: A folder holding one of these holds a run: a fresh run into it needs --overwrite.
RUN_MARKERS = ("run.json", "checkpoint.pth")
#: Folders a seed sweep moves to <folder>/seed<S>.
SEED_FOLDERS = ("output_dir", "tensorboard")

DATASET_NAMES = {"IMNET": "imagenet", "FOLDER": "folder", "FMNIST": "fmnist"}
#: timm modules whose models take img_size ("vit" is maxsup/models/vit.py, the lvvit_* models).
VIT_MODULES = ["vision_transformer", "deit", "cait", "vision_transformer_hybrid", "beit", "eva", "xcit", "vit"]


def ls_like_losses() -> list[str]:
    """Losses whose α-weighted term already is (part of) label smoothing or its replacement (``smooths_labels``);
    adding timm's ``--smoothing`` on top would regularise twice (paper §5.1: MaxSup runs use --smoothing 0)."""
    return [name for name, cls in LOSSES.items() if getattr(cls, "smooths_labels", False)]


def get_args_parser() -> argparse.ArgumentParser:
    """DeiT's flags (same names and defaults unless noted in the help) plus the MaxSup loss flags."""
    p = argparse.ArgumentParser("DeiT training and evaluation with MaxSup", add_help=False)
    g = p.add_argument_group("training")
    g.add_argument("--batch-size", default=64, type=int, help="per-process batch size (default: 64)")
    g.add_argument("--epochs", default=300, type=int, help="training epochs (default: 300)")
    g.add_argument("--print-freq", default=50, type=non_negative_int,
                   help="print every N steps (default: 50; 0 = never)")
    g.add_argument("--accum-steps", default=1, type=int,
                   help="gradient accumulation: one optimizer step per N batches, so the global batch is "
                        "batch-size × processes × N (default: 1)")

    g = p.add_argument_group("model")
    g.add_argument("--model", default="deit_small_patch16_224", type=str,
                   help="timm/torchvision model name (default: deit_small_patch16_224)")
    g.add_argument("--model-kwargs", nargs="*", default=None, metavar="KEY=VALUE",
                   help="extra timm.create_model arguments as KEY=VALUE pairs, e.g. patch_size=4 depth=2 (timm's "
                        "form; each value is read as a Python literal, else kept as a string); one JSON object "
                        "('{\"patch_size\": 4}') is still accepted (default: none)")
    g.add_argument("--input-size", default=224, type=positive_int, help="image size (default: 224)")
    g.add_argument("--drop", type=probability, default=0.0, help="dropout rate (default: 0.0)")
    g.add_argument("--drop-path", type=probability, default=0.1, help="stochastic depth rate (default: 0.1)")
    g.add_argument("--model-ema", action="store_true", help="keep an EMA of the weights (default: on)")
    g.add_argument("--no-model-ema", action="store_false", dest="model_ema")
    p.set_defaults(model_ema=True)
    g.add_argument("--model-ema-decay", type=probability, default=0.99996, help="EMA decay (default: 0.99996)")
    g.add_argument("--model-ema-force-cpu", action="store_true", default=False, help="keep the EMA on the CPU")

    g = p.add_argument_group("optimizer and schedule")
    g.add_argument("--opt", default="adamw", type=str, help="timm optimizer (default: adamw)")
    g.add_argument("--opt-eps", default=1e-8, type=non_negative_float, help="optimizer epsilon (default: 1e-8)")
    g.add_argument("--opt-betas", default=None, type=probability, nargs="+", help="optimizer betas (default: timm's)")
    g.add_argument("--clip-grad", type=non_negative_float, default=None,
                   help="clip the gradient norm to this, 0 = off (default: off)")
    g.add_argument("--momentum", type=non_negative_float, default=0.9, help="SGD momentum (default: 0.9)")
    g.add_argument("--weight-decay", type=non_negative_float, default=0.05, help="weight decay (default: 0.05)")
    g.add_argument("--sched", default="cosine", type=str, help="timm LR scheduler (default: cosine)")
    g.add_argument("--lr", type=non_negative_float, default=5e-4,
                   help="learning rate per 512 images; scaled by total batch/512 unless --unscale-lr (default: 5e-4)")
    g.add_argument("--unscale-lr", action="store_true", help="use --lr as given, without batch scaling")
    g.add_argument("--warmup-lr", type=non_negative_float, default=1e-6, help="warm-up start LR (default: 1e-6)")
    g.add_argument("--min-lr", type=non_negative_float, default=1e-5, help="cosine floor LR (default: 1e-5)")
    g.add_argument("--warmup-epochs", type=non_negative_int, default=5, help="linear warm-up epochs (default: 5)")
    g.add_argument("--decay-epochs", type=positive_float, default=30, help="step-schedule decay period (default: 30)")
    g.add_argument("--decay-rate", type=non_negative_float, default=0.1,
                   help="step-schedule decay factor (default: 0.1)")

    g = p.add_argument_group("augmentation")
    g.add_argument("--color-jitter", type=non_negative_float, default=0.3, help="colour jitter (default: 0.3)")
    g.add_argument("--aa", type=str, default="rand-m9-mstd0.5-inc1",
                   help='RandAugment policy, "none" to disable (default: rand-m9-mstd0.5-inc1)')
    g.add_argument("--smoothing", type=float, default=0.0,
                   help="timm label smoothing applied to the targets (inside Mixup when it is on). DeiT's default "
                        "is 0.1; here 0.0, because LS is --loss ls (paper §5.1). Refused with --loss "
                        f"{'/'.join(ls_like_losses())} unless --allow-ls-with-maxsup (default: 0.0)")
    g.add_argument("--train-interpolation", type=str, default="bicubic", help="training resize (default: bicubic)")
    g.add_argument("--repeated-aug", action="store_true", help="repeated augmentation when distributed (default: on)")
    g.add_argument("--no-repeated-aug", action="store_false", dest="repeated_aug")
    p.set_defaults(repeated_aug=True)
    g.add_argument("--reprob", type=probability, default=0.25, help="random erasing probability (default: 0.25)")
    g.add_argument("--remode", type=str, default="pixel", help="random erasing mode (default: pixel)")
    g.add_argument("--recount", type=positive_int, default=1, help="random erasing count (default: 1)")
    g.add_argument("--eval-crop-ratio", default=0.875, type=positive_float,
                   help="eval center-crop ratio (default: 0.875)")

    g = p.add_argument_group("mixup / cutmix (paper Tables 1/5/11 use --mixup 0 --cutmix 0)")
    g.add_argument("--mixup", type=non_negative_float, default=0.8, help="mixup alpha, 0 = off (default: 0.8)")
    g.add_argument("--cutmix", type=non_negative_float, default=1.0, help="cutmix alpha, 0 = off (default: 1.0)")
    g.add_argument("--cutmix-minmax", type=probability, nargs="+", default=None,
                   help="cutmix min/max ratio (default: off)")
    g.add_argument("--mixup-prob", type=probability, default=1.0, help="probability of mixing a batch (default: 1.0)")
    g.add_argument("--mixup-switch-prob", type=probability, default=0.5, help="mixup→cutmix switch prob (default: 0.5)")
    g.add_argument("--mixup-mode", type=str, default="batch", help="batch, pair or elem (default: batch)")

    g = p.add_argument_group("SMMix / Token Labeling (ViTs; Deit/smmix.py, Deit/token_labeling.py)")
    g.add_argument("--smmix", action="store_true",
                   help="SMMix (ICCV 2023): max-min attention region mixing, half the batches (the rest: Mixup with "
                        "--mixup α; --cutmix is not used)")
    g.add_argument("--min-side-ratio", type=probability, default=0.25,
                   help="SMMix min window/grid side (default: 0.25)")
    g.add_argument("--max-side-ratio", type=probability, default=0.75,
                   help="SMMix max window/grid side (default: 0.75)")
    g.add_argument("--side", type=positive_int, default=None, help="SMMix token grid side (default: the model's grid)")
    g.add_argument("--token-label", action="store_true",
                   help="Token Labeling (LV-ViT): dense aux head + per-token loss; with --mixup 0 --cutmix 0")
    g.add_argument("--mixtoken", action="store_true", help="MixToken after the patch embedding (implies --token-label)")
    g.add_argument("--token-label-data", type=str, default="",
                   help="LABEL_DIR/<class>/<stem>.pt score maps (default: none = one-hot labels on every token)")
    g.add_argument("--token-label-size", type=positive_int, default=None,
                   help="token label grid side (default: model's grid)")
    g.add_argument("--token-label-smoothing", default="official", choices=SMOOTHING_RULES,
                   help="how --smoothing s acts on label-map targets t: official = t·(1 − s + s/K) + s/K as the "
                        "official code (rows sum to 1 + s/K); normalized = t·(1 − s) + s/K (default: official)")
    g.add_argument("--token-label-aug", default="crop-first", choices=AUG_ORDERS,
                   help="with --token-label-data: crop-first = crop and flip, then --aa on the crop (the map is only "
                        "cropped and flipped); official = flip, --aa on the full image with the map warped by its "
                        "shear/translate/rotate ops, then crop, as the official code (default: crop-first)")
    g.add_argument("--dense-weight", type=non_negative_float, default=1.0,
                   help="Token Labeling dense loss weight (default: 1.0)")
    g.add_argument("--cls-weight", type=non_negative_float, default=1.0,
                   help="Token Labeling CLS loss weight (default: 1.0)")
    g.add_argument("--maxsup-on-tokens", action="store_true",
                   help="apply --loss (e.g. MaxSup) to the token-head logits too, not only to the CLS logits")

    g = p.add_argument_group("loss (MaxSup)")
    alpha = loss_defaults(ScheduledLoss)  # the α schedule's defaults, from the α losses' base class signature
    g.add_argument("--loss", default="ce", choices=list(LOSSES),
                   help=f"training loss, a name registered in maxsup.losses.LOSSES: {', '.join(LOSSES)} "
                        f"(default: ce)")
    g.add_argument("--loss-opt", action="append", default=[], metavar="KEY=VALUE",
                   help=f"an option of --loss, repeatable (e.g. --loss zipf --loss-opt dense=true); options and "
                        f"defaults: {describe_loss_options()}")
    g.add_argument("--alpha-start", type=float, default=None,
                   help=f"α at the first epoch, for the losses with an α schedule (default: {alpha['alpha_start']})")
    g.add_argument("--alpha-end", type=float, default=None,
                   help=f"α at the last epoch; equal to --alpha-start for a fixed α (Table 11) "
                        f"(default: {alpha['alpha_end']})")
    g.add_argument("--alpha-denominator", default=None, choices=ALPHA_DENOMINATORS,
                   help=f"α(e) = start + (end − start)·e/D: D = E-1 reaches --alpha-end at the last epoch (authors' "
                        f"DeiT code); D = E is the paper's t/T (default: {alpha['alpha_denominator']})")
    g.add_argument("--stats-every", default=10, type=int,
                   help="measure the LS/MaxSup penalty statistics every N steps (default: 10)")
    g.add_argument("--allow-ls-with-maxsup", action="store_true",
                   help="allow --smoothing > 0 together with an LS-like --loss")

    g = p.add_argument_group("data")
    g.add_argument("--data-path", default="", type=str, help="dataset root (FMNIST: optional)")
    g.add_argument("--data-set", default="IMNET", choices=["IMNET", "FOLDER", "FMNIST", *TEST_SETS],
                   help="IMNET (ImageFolder or --cache zip), FOLDER (any ImageFolder), FMNIST (default: IMNET); "
                        "with --eval also IMNETV2, IMNET_A, IMNET_R, IMNET_SKETCH (--data-path = the set's folder)")
    g.add_argument("--cache", action="store_true",
                   help="read train.zip/val.zip + train_map.txt/val_map.txt, held in RAM, one shard per rank")
    g.add_argument("--skip-corrupt", action="store_true",
                   help="skip empty, truncated or non-image files (counted) and read the next image in place of one "
                        "that fails to decode mid-epoch (logged by name); see maxsup/data/imagecheck.py")
    add_test_set_args(g)
    g.add_argument("--classes", default="", type=str,
                   help="comma list of classes to keep, relabelled 0..n-1 in this order (default: all)")
    g.add_argument("--limit-per-class", default=None, type=positive_int,
                   help="keep the first N images of each class in both splits (default: all)")
    g.add_argument("--num_workers", default=10, type=non_negative_int, help="DataLoader workers (default: 10)")
    g.add_argument("--pin-mem", action="store_true", help="pin DataLoader memory (default: on for CUDA)")
    g.add_argument("--no-pin-mem", action="store_false", dest="pin_mem")
    p.set_defaults(pin_mem=True)

    g = p.add_argument_group("run")
    g.add_argument("--output_dir", default="", help="where to write checkpoints, log.txt, args.json (default: none)")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (default: off)")
    g.add_argument("--amp", default="auto", choices=["auto", "fp16", "bf16", "off"],
                   help="autocast: auto = fp16 + GradScaler on CUDA, off on CPU (default: auto)")
    g.add_argument("--seed", default=0, type=int, help="random seed (default: 0)")
    add_run_args(g)
    add_estimate_args(g)
    g.add_argument("--eval-ema", action="store_true", help="with --eval: evaluate the checkpoint's EMA weights")
    g.add_argument("--resume", default="", help="checkpoint to resume from (or to evaluate with --eval): a path, or "
                   "an http(s) URL downloaded once into torch.hub's cache")
    g.add_argument("--overwrite", action="store_true",
                   help="start a new run in an --output_dir that holds one (run.json or checkpoint.pth); without it "
                        "such a run is refused")
    g.add_argument("--eval", action="store_true", help="only evaluate the --resume checkpoint")
    g.add_argument("--finetune", default="", help="initialise from this checkpoint's backbone (ours, or a released "
                   "one converted by maxsup.hub convert; a path or an http(s) URL, like --resume); the head is "
                   "replaced when the class count differs")
    g.add_argument("--dist-eval", action="store_true",
                   help="each rank evaluates a disjoint shard; metrics are summed over ranks")
    return p


# --------------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------------
def check_args(args: argparse.Namespace) -> None:
    """Refuse contradictory flags with one actionable sentence. ``--eval`` needs only the model, the checkpoint and
    the data: flags that only shape training (loss, mixing, Token Labeling) are neither required nor refused there."""
    # one stored form whichever form was typed (pairs or JSON): --print-config, run.json, args.json and the
    # checkpoint's args hold the dict, and --resume compares dicts
    args.model_kwargs = kwargs_dict(args.model_kwargs)
    check_smoothing(args.smoothing, "--smoothing")
    if args.smoothing > 0 and args.loss in ls_like_losses() and not args.allow_ls_with_maxsup and not args.eval:
        raise UserError(f"--loss {args.loss} already regularises like label smoothing, and --smoothing "
                        f"{args.smoothing} would add LS on top; use --smoothing 0 (the paper's setting) or pass "
                        f"--allow-ls-with-maxsup")
    if args.eval and not args.resume:
        raise UserError("--eval needs --resume <checkpoint>")
    check_estimate(args.estimate, args.estimate_synthetic)
    if args.estimate and args.eval:
        raise UserError("--estimate times training steps; it cannot be combined with --eval")
    resolve_loss(args)
    if args.stats_every < 1:
        raise UserError(f"--stats-every must be >= 1, got {args.stats_every}")
    if args.eval:  # the token head comes from the checkpoint (eval_token_head), not from these training flags
        args.smmix, args.token_label, args.mixtoken, args.token_label_data = False, False, False, ""
    args.token_label = args.token_label or args.mixtoken or bool(args.token_label_data)
    if args.smmix and args.token_label:
        raise UserError("--smmix and --token-label/--mixtoken both replace the batch's mixing and targets; use one")
    if args.token_label and (args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax):
        raise UserError("--token-label/--mixtoken mix inside the model (the LV-ViT recipe); pass --mixup 0 --cutmix 0")
    if args.model.startswith("lvvit") and not args.token_label and not args.eval:
        raise UserError(f"{args.model} trains with Token Labeling; add --token-label (and --mixtoken for LV-ViT's "
                        f"recipe)")
    if args.epochs < 1 or args.batch_size < 1:
        raise UserError(f"--epochs and --batch-size must be >= 1, got {args.epochs} and {args.batch_size}")
    if args.accum_steps < 1:
        raise UserError(f"--accum-steps must be >= 1, got {args.accum_steps}")
    if args.real_labels and args.data_set not in ("IMNET", "FOLDER"):
        raise UserError(f"--real-labels scores ImageNet val (--data-set IMNET or FOLDER), not --data-set "
                        f"{args.data_set}")


def resolved_config(args: argparse.Namespace, world: int) -> dict[str, Any]:
    """Every flag plus what the launcher and the batch scaling make of it (``--print-config``, run.json)."""
    total = args.batch_size * world * args.accum_steps
    lr = args.lr if args.unscale_lr else args.lr * total / 512.0
    return {**vars(args), "world_size": world, "total_batch_size": total, "effective_lr": lr}


def run_fingerprint(config: dict[str, Any]) -> str:
    """run.json's recipe fingerprint of a :func:`resolved_config`: ``model_kwargs`` enters as sorted JSON text, the
    form runs stored before the KEY=VALUE flag, so runs of one recipe from before and after share an
    ``analysis.collect`` group."""
    kwargs = config.get("model_kwargs") or {}
    text = kwargs if isinstance(kwargs, str) else json.dumps(kwargs, sort_keys=True)
    return recipe_fingerprint({**config, "model_kwargs": text}, NOT_RECIPE)


def epoch_seed(args: argparse.Namespace, epoch: int, rank: int) -> int:
    """Every epoch reseeds all RNGs from (seed, epoch, rank), so a resumed run replays the same randomness."""
    return (args.seed * 1_000_003 + (epoch + 1) * 7_919 + rank) % 2**31


def kwargs_dict(value: str | list[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """``--model-kwargs`` as a dict, from any form it takes: KEY=VALUE pairs (``["patch_size=4", "depth=2"]``,
    timm's form, parsed by :func:`maxsup.models.parse_model_kwargs` as common_resnet and the hub do), one JSON
    object (``['{"patch_size": 4}']``, this trainer's earlier form), the JSON string that runs written before the
    pair form store in run.json / args.json / the checkpoint's ``args``, or an already parsed dict."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    items = [value] if isinstance(value, str) else list(value)
    json_items = [item for item in items if item.lstrip().startswith("{")]
    if json_items and len(items) > 1:
        raise UserError(f"--model-kwargs takes KEY=VALUE pairs (patch_size=4 depth=2) or one JSON object, not both: "
                        f"{' '.join(items)!r}")
    if not json_items:
        return parse_model_kwargs(items)
    try:
        kw = json.loads(items[0])
    except json.JSONDecodeError as exc:
        raise UserError(f"--model-kwargs is not valid JSON ({exc.msg}): {items[0]!r}; or pass KEY=VALUE pairs "
                        f"such as patch_size=4 depth=2") from None
    if not isinstance(kw, dict):
        raise UserError(f"--model-kwargs must be a JSON object, got {items[0]!r}")
    return kw


def model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments the model is built with: ``--model-kwargs`` plus the timm defaults this trainer sets
    (dropout, drop-path, a ViT's ``img_size`` = ``--input-size``)."""
    kw = kwargs_dict(args.model_kwargs)  # a copy: args keeps what the user gave
    is_timm = args.model not in CIFAR_RESNETS and args.model not in torch_names() and timm.is_model(args.model)
    if is_timm:
        kw.setdefault("drop_rate", args.drop)
        kw.setdefault("drop_path_rate", args.drop_path)
        if timm.models.is_model_in_modules(args.model, VIT_MODULES):
            kw.setdefault("img_size", args.input_size)
            # timm's ViT asserts the size at the first forward, mid-epoch, unless it was built for any size
            if kw["img_size"] != args.input_size and not kw.get("dynamic_img_size"):
                raise UserError(f"--model-kwargs img_size={kw['img_size']} differs from --input-size "
                                f"{args.input_size}, the size of the images the ViT is fed; drop img_size from "
                                f"--model-kwargs or set --input-size {kw['img_size']}")
    return kw


def resolve_loss(args: argparse.Namespace) -> None:
    """Set ``args.loss_options`` to every option of ``--loss`` (defaults filled in) and the α flags to the α schedule
    (the loss's values; the schedule's defaults for a loss without one, which refuses α flags). Resolves once."""
    if "loss_options" in vars(args):
        return
    try:
        args.loss_options = resolve_loss_options(args.loss, args.loss_opt,
                                                 **{k: getattr(args, k) for k in ALPHA_OPTIONS})
    except ValueError as exc:
        raise UserError(f"--loss {args.loss}: {exc}") from None
    schedule = {**loss_defaults(ScheduledLoss), **args.loss_options}
    for k in ALPHA_OPTIONS:
        setattr(args, k, schedule[k])


def resume_flag(key: str) -> str:
    """The flag a user types for a resume key (``loss_options`` are set with ``--loss-opt`` and the α flags)."""
    return "--loss-opt" if key == "loss_options" else "--" + key.replace("_", "-")


def saved_resume_args(ckpt: Mapping[str, Any], current_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's values of the resume keys: its ``args`` (``model_kwargs`` as a dict, whichever form it stores:
    the JSON string of runs before the KEY=VALUE form, or the dict) and its head's class count."""
    saved = {**ckpt.get("args", {}), "num_classes": ckpt.get("arch", {}).get("num_classes")}
    if "model_kwargs" in saved:
        try:
            kw = kwargs_dict(saved["model_kwargs"])
        except UserError:  # not a form this trainer writes: compared as stored (and so named in the refusal)
            return saved
        # equal dicts (patch_size=7 typed as a pair, the run started with '{"patch_size": 7}', or 0 vs 0.0) are the
        # same network: compared through the current value, since check_resume compares canonical JSON text
        saved["model_kwargs"] = dict(current_kwargs) if kw == current_kwargs else kw
    return saved


def token_head_mode(args: argparse.Namespace) -> str | None:
    """The ``token_head`` the model is built with (``maxsup.models.vit``), or None for a plain classifier."""
    if args.smmix:
        return "smmix"
    if args.token_label:
        return "mixtoken" if args.mixtoken else "dense"
    return None


def eval_token_head(path: str) -> str | None:
    """The ``token_head`` the checkpoint's network was built with (this trainer's ``arch.kwargs``, or ``smmix`` for an
    official SMMix file), for ``--eval``: evaluation rebuilds the head (and its eval rule) from the checkpoint, not
    from training flags. None for other files."""
    try:
        return token_head_of(read_weights(load_any_checkpoint(path), path))
    except UserError:
        return None  # the evaluation step below reports an unreadable file


def token_train_step(args: argparse.Namespace, model: torch.nn.Module, nb_classes: int):
    """The engine hook for --smmix / --token-label, checked against the model's token grid."""
    rows, cols = patch_grid(model.backbone)
    if args.smmix:
        side = args.side or rows
        if rows != cols or side != rows:
            raise UserError(f"--side {side} does not match {args.model}'s {rows}×{cols} token grid")
        print(f"SMMix: side {side}, windows {args.min_side_ratio}..{args.max_side_ratio}, Mixup α {args.mixup} on "
              f"the other half of the batches (--cutmix is not used)")
        return SMMixStep(SMMix(side, nb_classes, args.min_side_ratio, args.max_side_ratio, args.mixup,
                               label_smoothing=args.smoothing), args.maxsup_on_tokens)
    size = args.token_label_size or rows
    if rows != cols or size != rows:
        raise UserError(f"--token-label-size {size} does not match {args.model}'s {rows}×{cols} token grid")
    source = f"label maps from {args.token_label_data}" if args.token_label_data else \
        "no --token-label-data: MixToken-only mode, the one-hot label on every token (the official fallback)"
    print(f"Token Labeling: {source}; MixToken {'on' if args.mixtoken else 'off'}; dense weight {args.dense_weight}, "
          f"cls weight {args.cls_weight}")
    return TokenLabelStep(nb_classes, size, args.dense_weight, args.cls_weight, args.smoothing, args.maxsup_on_tokens,
                          args.token_label_smoothing)


def torch_names() -> set[str]:
    import torchvision

    return set(torchvision.models.list_models(module=torchvision.models))


def amp_dtype_for(args: argparse.Namespace, device: torch.device) -> torch.dtype | None:
    mode = args.amp
    if mode == "auto":
        mode = "fp16" if device.type == "cuda" else "off"
    if mode == "fp16" and device.type != "cuda":
        raise UserError("--amp fp16 needs CUDA; on CPU use --amp bf16 or --amp off")
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "off": None}[mode]


def load_model_weights(model: torch.nn.Module, ckpt: dict[str, Any], arch: dict[str, Any], path: str,
                       ema: bool = False) -> Weights:
    """Strict load of a checkpoint of any layout ``maxsup.models.read_weights`` knows (ours, DeiT's and SMMix's
    ``{'model'}``, timm-train, LV-ViT's bare ``.pth.tar``); a checkpoint from another architecture names both and
    lists the mismatched keys."""
    try:
        return load_weights(model, ckpt, source=path, ema=ema)
    except UserError as exc:
        theirs = (ckpt.get("arch") if isinstance(ckpt.get("arch"), dict) else {}).get("name")
        if theirs is None or theirs == arch["name"]:
            raise
        raise UserError(f"{path} was trained as {theirs}, this run builds {arch['name']}: {exc}") from None


def print_penalty_log(history: list[dict[str, Any]]) -> None:
    """Per-epoch α and the penalties measured on the training batches (before α): the paper's central quantity."""
    print(f"{'epoch':>5} {'alpha':>7} {'maxsup_pen':>10} {'ls_reg':>8} {'ls_err_amp':>10} {'misclass':>8} "
          f"{'train_loss':>10} {'test_acc1':>9}")
    for e in history:
        alpha = "-" if e["alpha"] is None else f"{e['alpha']:.4f}"
        print(f"{e['epoch']:>5} {alpha:>7} {e['maxsup_penalty']:>10.4f} {e['ls_regularization']:>8.4f} "
              f"{e['ls_error_amplification']:>10.4f} {e['misclassified']:>8.4f} {e['train_loss']:>10.4f} "
              f"{e['test_acc1']:>9.2f}")


# --------------------------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------------------------
def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train, or with ``--eval`` evaluate. A training run claims its ``--output_dir`` for as long as it runs (one
    run per folder, ``maxsup.training.runfolder``); an evaluation writes nothing there."""
    check_args(args)
    init_distributed(args.device)  # before the claim: every rank, not only rank 0, hears a refusal
    folder = None if args.eval or args.estimate else args.output_dir  # evaluations and estimates write nothing
    with claim_run_folder(folder, RUN_MARKERS, resume_from=args.resume, overwrite=args.overwrite,
                          resume_hint=f"--resume {Path(args.output_dir) / 'checkpoint.pth'}",
                          overwrite_hint="--overwrite"):
        return run(local_checkpoints(args))  # a URL: downloaded once, then its local path


def run(args: argparse.Namespace) -> dict[str, Any]:
    info = init_distributed(args.device)
    device, rank, world = info.device, info.rank, info.world_size
    amp_dtype = amp_dtype_for(args, device)
    output_dir = Path(args.output_dir) if args.output_dir and not args.estimate else None  # --estimate writes nothing
    if output_dir and rank == 0 and not args.eval:
        output_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(args.seed)

    # --- data ------------------------------------------------------------------------------------------------
    # the zip cache loads one shard per rank; ImageFolder/FMNIST hold everything and shard through the sampler
    if args.estimate_synthetic:  # generated images at --input-size, the train split's length; no data is read
        n_images, nb_classes = train_split_size(DATASET_NAMES.get(args.data_set, args.data_set),
                                                args.classes.split(",") if args.classes else None, args.limit_per_class)
        dataset_train = dataset_val = SyntheticImages(n_images, args.input_size, nb_classes, args.seed)
    else:
        dataset_train, nb_classes = build_dataset(True, args, rank, world)
        dataset_val, _ = build_dataset(False, args, rank, world)
    # the name of each label, saved as the checkpoint's "classes": hub convert reads the head's class order from it
    # (a zip cache's labels follow its maps, which may be the authors' permuted order); None where unknown
    label_names = None if args.estimate_synthetic else class_names(dataset_train, nb_classes)
    if args.token_label_data:
        dataset_train = TokenLabelDataset(dataset_train, args.token_label_data, nb_classes,
                                          (OfficialOrderCropFlip if args.token_label_aug == "official"
                                           else CropFlipWithBox)(build_transform(True, args)))
    sharded = args.cache and world > 1
    loader_gen = torch.Generator()
    if info.distributed and not sharded:
        if args.repeated_aug:
            sampler_train = RASampler(dataset_train, world, rank, shuffle=True, seed=args.seed)
        else:
            sampler_train = DistributedSampler(dataset_train, world, rank, shuffle=True, seed=args.seed)
    else:
        sampler_train = RandomSampler(dataset_train, generator=loader_gen)
    if sharded:
        sampler_val, gather_eval = SequentialSampler(dataset_val), True
    elif info.distributed and args.dist_eval:
        sampler_val, gather_eval = ShardSampler(dataset_val, world, rank), True
    else:
        sampler_val, gather_eval = SequentialSampler(dataset_val), False
    pin = args.pin_mem and device.type == "cuda"
    loader_train = DataLoader(dataset_train, sampler=sampler_train, batch_size=args.batch_size,
                              num_workers=args.num_workers, pin_memory=pin, drop_last=True, generator=loader_gen)
    loader_val = DataLoader(dataset_val, sampler=sampler_val, batch_size=int(1.5 * args.batch_size),
                            num_workers=args.num_workers, pin_memory=pin, drop_last=False)
    # --extra-val: ImageNet test sets beside the val split, sharded like it under DDP (the statistics are summed)
    extra_val = {name: DataLoader(ds, sampler=ShardSampler(ds, world, rank) if info.distributed
                                  else SequentialSampler(ds), batch_size=int(1.5 * args.batch_size),
                                  num_workers=args.num_workers, pin_memory=pin)
                 for name, ds in extra_val_sets(args.extra_val, build_transform(False, args), nb_classes).items()}
    # ReaL: file names and class wnids are checked here, before training; under --dist-eval or the sharded zip
    # cache each rank scores its own shard (its sampler's order) and the counts are summed, which is exact
    real = None
    if args.real_labels:
        real = RealScorer.from_dataset(dataset_val, real_labels(args.real_labels))
    if not args.eval:
        check_accum_steps(len(loader_train), args.accum_steps, images=len(loader_train.sampler),
                          batch_size=args.batch_size)

    mixup_fn, target_fn = None, None
    if args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None:
        mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                         prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                         label_smoothing=args.smoothing, num_classes=nb_classes)
    elif args.smoothing > 0:  # timm's smoothed one-hot targets, without mixing
        def target_fn(t):
            return mixup_target(t, nb_classes, lam=1.0, smoothing=args.smoothing)

    # --- model, optimizer, loss ------------------------------------------------------------------------------
    kw = model_kwargs(args)
    head = eval_token_head(args.resume) if args.eval else None
    if head:
        kw["token_head"] = head
    if token_head_mode(args):
        kw["token_head"] = token_head_mode(args)
        mixup_fn = target_fn = None  # the train step mixes and builds the targets
    arch = arch_spec(args.model, nb_classes, **kw)
    print(f"Creating model: {args.model} {kw}")
    model = create_model(args.model, nb_classes, **kw).to(device)
    if args.finetune and not args.resume:  # paper Table 6 (CUB, Cars): start from a pretrained backbone
        loaded = load_pretrained_backbone(model, args.finetune)
        print(f"Fine-tuning from {args.finetune}: {loaded['loaded']} tensors loaded, "
              f"{'new' if loaded['head_replaced'] else 'pretrained'} {nb_classes}-class head")
    model_without_ddp = model
    train_step = token_train_step(args, model, nb_classes) if token_head_mode(args) else None
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"number of params: {n_parameters}")
    model_ema = None
    if args.model_ema:
        model_ema = ModelEmaV3(model, decay=args.model_ema_decay,
                               device=torch.device("cpu") if args.model_ema_force_cpu else None)
    if info.distributed:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                        find_unused_parameters=args.smmix)  # SMMix's Mixup half skips the token head
        model_without_ddp = model.module

    config = resolved_config(args, world)
    total_batch, lr = config["total_batch_size"], config["effective_lr"]
    opt_kwargs: dict[str, Any] = {"eps": args.opt_eps} if args.opt_eps is not None else {}
    if args.opt_betas:
        opt_kwargs["betas"] = tuple(args.opt_betas)
    optimizer = create_optimizer_v2(model_without_ddp, opt=args.opt, lr=lr, weight_decay=args.weight_decay,
                                    momentum=args.momentum, **opt_kwargs)
    lr_scheduler, _ = create_scheduler_v2(optimizer, sched=args.sched, num_epochs=args.epochs,
                                          decay_epochs=args.decay_epochs, decay_rate=args.decay_rate,
                                          min_lr=args.min_lr, warmup_lr=args.warmup_lr,
                                          warmup_epochs=args.warmup_epochs)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    criterion = build_criterion(args.loss, nb_classes, args.epochs, model=model_without_ddp,
                                **args.loss_options).to(device)
    if args.compile:
        model = torch.compile(model)
    if args.estimate:  # N steps of the loop below (maxsup.estimate), one JSON line, nothing written
        clock = StepClock(loader_train, args.estimate, args.accum_steps, device)
        train_one_epoch(model, criterion, clock, optimizer, device, 0, scaler, args.clip_grad, model_ema, mixup_fn,
                        target_fn, amp_dtype, 0, accum_steps=args.accum_steps, stats_every=args.stats_every,
                        train_step=train_step)
        return print_estimate(estimate_record(
            clock, trainer="deit", steps_per_epoch=len(loader_train) // args.accum_steps, epochs=args.epochs,
            world_size=world, total_batch_size=total_batch, device=device, model=args.model, loss=args.loss,
            resolution=args.input_size,
            data="synthetic" if args.estimate_synthetic else args.data_path or args.data_set))

    # --- resume ----------------------------------------------------------------------------------------------
    start_epoch, max_accuracy, partial, last_log = 0, 0.0, None, None
    log_path = output_dir / "log.txt" if output_dir else None
    if args.eval:  # the weights of any known checkpoint layout (its EMA with --eval-ema): ours, DeiT, SMMix, LV-ViT
        raw = load_any_checkpoint(args.resume)
        weights = load_model_weights(model_without_ddp, raw, arch, args.resume, ema=args.eval_ema)
        if weights.layout == "maxsup":
            check_class_order(raw.get("classes"), class_names(dataset_val, nb_classes), args.resume)
        if weights.layout != "maxsup" and weights.args.get("cache") and not args.cache:
            # the authors' DeiT-S release: trained on their zip maps, whose class order is not ImageFolder's
            print(f"warning: {args.resume} was trained with --cache on its authors' zip maps, so its logits may be in "
                  f"their class order; evaluate with --cache on those maps, or convert it first with `python -m "
                  f"maxsup.hub convert {args.resume} OUT.pth --arch {args.model}` (it permutes the head)")
    elif args.resume:  # continue the same run: checked, then every state and the RNG restored
        keys = [*RESUME_KEYS, *ALPHA_OPTIONS, "num_classes"]
        ckpt = open_resume(args.resume, TRAINER, {**vars(args), "num_classes": nb_classes}, keys,
                           saved=lambda c: saved_resume_args(c, args.model_kwargs),
                           recognise=lambda saved_args: "data_set" in saved_args, flag=resume_flag)
        check_class_order(ckpt.get("classes"), label_names, args.resume)
        load_model_weights(model_without_ddp, ckpt, arch, args.resume)
        resumed = restore_state(ckpt, {"optimizer": optimizer, "lr_scheduler": lr_scheduler, "criterion": criterion,
                                       "model_ema": model_ema.module if model_ema is not None else None,
                                       "scaler": scaler})
        start_epoch, partial = resumed.start_epoch, resumed.partial  # partial: preempted inside start_epoch
        max_accuracy, last_log = ckpt.get("max_accuracy", 0.0), ckpt.get("log_stats")
        print(resumed.describe(args.resume))
    if output_dir and rank == 0 and not args.eval:  # everything is checked: a refused run has written nothing
        atomic_write(output_dir / "args.json", json.dumps(vars(args), indent=2, sort_keys=True) + "\n")
        write_run_record(output_dir, trainer="deit", config=config, dataset=DATASET_NAMES[args.data_set],
                         model=args.model, loss=args.loss, epochs=args.epochs, seed=args.seed, world_size=world,
                         alpha=alpha_schedule_of(criterion), device=device, log_file="log.txt",
                         metric_keys={"acc1": "test_acc1", "nll": "test_nll", "ece": "test_ece"},
                         recipe=run_fingerprint(config))
        # the log ends at the checkpoint's epoch, whose record the checkpoint holds (a kill may have lost it)
        repair_log(log_path, start_epoch - 1, last_log)

    if args.eval:
        model = scored_logits(model, dataset_val)  # ImageNet-A/R: score only the 200 classes they contain
        stats = evaluate(loader_val, model, device, amp_dtype, gather=gather_eval, real=real)
        print(json.dumps({f"test_{k}": v for k, v in stats.items()}))
        return stats

    # --- loop ------------------------------------------------------------------------------------------------
    print(f"Start training for {args.epochs} epochs ({world} process(es) x {args.accum_steps} accumulation step(s), "
          f"total batch {total_batch}, lr {lr:.3e})")
    tb = ScalarWriter(args.tensorboard, enabled=rank == 0)
    start_time = time.time()
    log_stats: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    def checkpoint_state(epoch: int) -> dict[str, Any]:
        return {
            "trainer": TRAINER, "model": model_without_ddp.state_dict(), "arch": arch,
            "eval_transform": eval_transform_spec(args),
            "args": vars(args), "epoch": epoch, "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(),
            "model_ema": model_ema.module.state_dict() if model_ema is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None, "criterion": criterion.state_dict(),
            "rng": rng_state(), "max_accuracy": max_accuracy,
            **({"log_stats": last_log} if last_log is not None else {}),  # the record of `epoch` (for the log)
            **({"classes": label_names} if label_names is not None else {}),  # index = label
        }

    with Preemption() as preemption:
        for epoch in range(start_epoch, args.epochs):
            seed_everything(epoch_seed(args, epoch, rank))
            loader_gen.manual_seed(epoch_seed(args, epoch, rank))
            if hasattr(sampler_train, "set_epoch"):
                sampler_train.set_epoch(epoch)
            lr_scheduler.step(epoch)
            watch = Stopwatch(device)  # maxsup.timing: the loop's wall clock, without evaluation and checkpoints
            train_stats = train_one_epoch(model, criterion, loader_train, optimizer, device, epoch, scaler,
                                          args.clip_grad, model_ema, mixup_fn, target_fn, amp_dtype, args.print_freq,
                                          accum_steps=args.accum_steps, stats_every=args.stats_every,
                                          train_step=train_step, preemption=preemption,
                                          partial=partial if epoch == start_epoch else None)
            if "preempted" in train_stats:  # SIGTERM/SIGUSR1: checkpoint this step boundary, then exit cleanly
                step = train_stats["preempted"]["step"]
                check_finite_model(model_without_ddp, epoch, step, lr_flag="--lr", clip_flag="--clip-grad")
                if output_dir and rank == 0:
                    atomic_save({**checkpoint_state(epoch - 1), "partial": train_stats["preempted"]},
                                output_dir / "checkpoint.pth")
                preemption.checkpointed(epoch, step, "rerun with --resume "
                                        f"{output_dir / 'checkpoint.pth' if output_dir else '<checkpoint>'}")
                break
            resumed = (partial or {}).get("seen", 0) * world if epoch == start_epoch else 0  # trained before the stop
            timing = train_timing(train_stats["samples"] - resumed, watch.seconds())
            sys.stdout.write(f"[rank {rank}] epoch {epoch}: trained on {train_stats['samples_rank']} images\n")
            watch = Stopwatch(device)
            test_stats = evaluate(loader_val, model, device, amp_dtype, gather=gather_eval, real=real)
            criterion.on_eval(test_stats["acc1"])  # Adaptive LS: the best checkpoint so far becomes its teacher
            is_best = test_stats["acc1"] > max_accuracy
            max_accuracy = max(max_accuracy, test_stats["acc1"])
            log_stats = {
                "train_loss": train_stats["loss"], "train_lr": train_stats["lr"],
                "train_samples": train_stats["samples"],
                "alpha": train_stats["alpha"], **{k: train_stats[k] for k in PENALTY_KEYS},
                **{f"test_{k}": v for k, v in test_stats.items()}, "epoch": epoch, "n_parameters": n_parameters,
            }
            for name, loader in extra_val.items():  # e.g. ImageNetV2 beside ImageNet val
                stats = evaluate(loader, scored_logits(model, loader.dataset), device, amp_dtype,
                                 gather=info.distributed)
                log_stats.update({f"{name}_{k}": v for k, v in stats.items()})
            if model_ema is not None:  # DeiT keeps the EMA; evaluate it too, on the same images
                ema_device = next(model_ema.module.parameters()).device  # --model-ema-force-cpu keeps it on the CPU
                ema_stats = evaluate(loader_val, model_ema.module, ema_device,
                                     amp_dtype if ema_device == device else None, gather=gather_eval, real=real)
                log_stats.update({f"test_ema_{k}": v for k, v in ema_stats.items()})
            log_stats.update(timing, eval_seconds=watch.seconds())
            tb.log(log_stats, epoch)
            print(f"epoch {epoch}: alpha {train_stats['alpha']} maxsup_penalty {train_stats['maxsup_penalty']:.4f} "
                  f"ls_regularization {train_stats['ls_regularization']:.4f} "
                  f"ls_error_amplification {train_stats['ls_error_amplification']:.4f} "
                  f"misclassified {train_stats['misclassified']:.4f} | test acc1 {test_stats['acc1']:.2f}% "
                  f"(max {max_accuracy:.2f}%)", flush=True)
            check_finite_model(model_without_ddp, epoch, len(loader_train), lr_flag="--lr", clip_flag="--clip-grad")
            if output_dir and rank == 0:
                last_log = log_stats
                ckpt = checkpoint_state(epoch)
                # best first, then checkpoint.pth, then the log: a kill between any two leaves a resumable state
                if is_best:
                    atomic_save(ckpt, output_dir / "best_checkpoint.pth")
                atomic_save(ckpt, output_dir / "checkpoint.pth")
                append_log(log_path, log_stats)
            history.append(log_stats)
            if preemption.stop_after_epoch(epoch, args.epochs, device):
                break

    tb.close()
    total = str(datetime.timedelta(seconds=int(time.time() - start_time)))
    print(f"Training time {total}")
    if history:
        print_penalty_log(history)
    if log_stats:
        print(f"Final: acc@1 {log_stats['test_acc1']:.2f}% acc@5 {log_stats['test_acc5']:.2f}% "
              f"NLL {log_stats['test_nll']:.4f} ECE {log_stats['test_ece']:.4f} (max acc@1 {max_accuracy:.2f}%)")
    return log_stats


def cli(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse, then ``--print-config``, one run, or a seed sweep (``--seeds`` / env ``SEEDS``): one run folder
    ``<output_dir>/seed<S>`` (and TensorBoard folder) per seed, one after the other."""
    parser = ArgumentParser("DeiT training and evaluation with MaxSup", parents=[get_args_parser()])
    args = parser.parse_args(argv)
    seeds = parse_seeds(args.seeds)
    if args.print_config:
        check_args(args)
        config = resolved_config(args, launcher_world_size())
        config["seeds"] = seeds if seeds is not None else [args.seed]
        return print_config(config)
    if seeds is None or args.eval:  # --eval evaluates one checkpoint, whatever SEEDS says
        return main(args)
    return run_seeds(seeds, lambda seed: main(seeded_args(args, seed, "seed", SEED_FOLDERS, clear=("seeds",))),
                     args.output_dir, "--resume")


if __name__ == "__main__":
    run_cli(cli, sys.argv[1:])
