"""Image-classification training with every loss compared in the MaxSup paper (torchvision references idiom).

Read top to bottom: ``train_one_epoch`` → ``evaluate`` → ``load_data`` → ``main`` → ``get_args_parser``.
One process:  ``python train.py --dataset fmnist --model cifar_resnet10 --loss maxsup``
DDP:          ``torchrun --nproc_per_node=8 train.py --dataset imagefolder --data-path /imagenet --model resnet50``
Recipes (paper Table 10, Table 4 right half, a CPU Fashion-MNIST run) are in README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import presets
import torch
import torch.utils.data
import torchvision
import utils
from sampler import RASampler, ShardedEvalSampler
from torch import nn

from maxsup.checkpoint import atomic_save, atomic_write, load_checkpoint, rng_state, set_rng_state
from maxsup.cli import run_cli
from maxsup.data import long_tailed_indices
from maxsup.data.downsampled import DownsampledImageNet
from maxsup.data.fashion_mnist import FMNIST_MEAN, FMNIST_STD, FashionMNIST
from maxsup.data.imagenet_variants import (
    EVAL_SETS,
    RealScorer,
    add_test_set_args,
    eval_set,
    extra_val_sets,
    real_labels,
    scored_logits,
)
from maxsup.data.transfer import TRANSFER_DATASETS, transfer_dataset
from maxsup.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, transform_spec
from maxsup.distributed import DistInfo, all_reduce_sum, init_distributed
from maxsup.errors import UserError
from maxsup.faults import kill_point
from maxsup.losses import (
    ALPHA_DENOMINATORS,
    LOSSES,
    PenaltyStatsMeter,
    ScheduledLoss,
    build_criterion,
    compute_loss,
    describe_loss_options,
    loss_defaults,
    resolve_loss_options,
)
from maxsup.metrics import ClassificationMeter, format_shot_accuracy, shot_accuracy_from_class_counts
from maxsup.models import (
    arch_spec,
    create_model,
    load_pretrained_backbone,
    load_state_dict_strict,
    model_from_checkpoint,
)
from maxsup.reliability import (
    Preemption,
    append_log,
    check_finite_model,
    check_resume,
    run_seeds,
    step_guard,
    truncate_log,
)
from maxsup.runinfo import (
    ScalarWriter,
    add_run_args,
    alpha_schedule_of,
    launcher_world_size,
    parse_seeds,
    print_config,
    seed_dir,
    write_run_record,
)

TRAINER = "Conv/common_resnet/train.py"
#: Arguments that define a run (plus the α flags): --resume refuses a checkpoint whose values differ.
#: ``loss_options`` holds every option of the loss, defaults filled in.
RESUME_KEYS = ("model", "model_kwargs", "dataset", "classes", "epochs", "loss", "loss_options", "label_smoothing")
#: The α schedule's options, which have flags of their own (every paper recipe sets them); None = the loss's default.
ALPHA_OPTIONS = ("alpha_start", "alpha_end", "alpha_denominator")
NONFINITE_HINT = {"lr_flag": "--lr", "clip_flag": "--clip-grad-norm"}

CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
#: dataset → (native image side, mean, std, small_input)
DATASETS = {
    "imagefolder": (224, IMAGENET_MEAN, IMAGENET_STD, False),
    "fmnist": (28, (FMNIST_MEAN,) * 3, (FMNIST_STD,) * 3, True),
    "cifar10": (32, CIFAR10_MEAN, CIFAR10_STD, True),
    "cifar100": (32, CIFAR100_MEAN, CIFAR100_STD, True),
    "imagenet32": (32, IMAGENET_MEAN, IMAGENET_STD, True),
    "imagenet64": (64, IMAGENET_MEAN, IMAGENET_STD, True),
    **{name: (224, IMAGENET_MEAN, IMAGENET_STD, False) for name in EVAL_SETS},  # --test-only: ImageNetV2, -A, -R, ...
    **{name: (224, IMAGENET_MEAN, IMAGENET_STD, False) for name in TRANSFER_DATASETS},  # T6 fine-tuning: cub200, cars
}


def _autocast(device: torch.device, args: argparse.Namespace):
    # bf16 on CPU (fp16 CPU kernels are slow or missing); fp16 + GradScaler on CUDA, as in torchvision.
    dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=args.amp)


def train_one_epoch(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    data_loader: torch.utils.data.DataLoader, device: torch.device, epoch: int,
                    args: argparse.Namespace, model_ema: torch.optim.swa_utils.AveragedModel | None = None,
                    scaler: torch.amp.GradScaler | None = None, preemption: Preemption | None = None,
                    partial: dict[str, Any] | None = None) -> dict[str, Any]:
    """One pass over ``data_loader``; returns sample-weighted means over all ranks of the loss and of
    :func:`maxsup.penalty_stats` (no α applied), plus the epoch's lr and α.

    Every step ends by checking the loss on all ranks (a NaN/inf stops every rank with ``NonFiniteError``) and
    whether a preemption signal arrived; then the epoch stops after step i - 1 and the result is ``{"preempted":
    {"step": i, ...}}`` (with the running sums and RNG state) for a mid-epoch checkpoint. ``partial`` is that entry,
    from a checkpoint: the first ``step`` batches are drawn and skipped, and the RNG state of that moment is restored,
    so the epoch continues as if never interrupted."""
    model.train()
    criterion.train()
    criterion.set_epoch(epoch)  # α_e = α_start + (α_end − α_start)·e/(E − 1), per epoch as in the authors' code
    sums: dict[str, float] = defaultdict(float, (partial or {}).get("sums", {}))
    penalties = PenaltyStatsMeter(args.stats_every)  # on the device; one sync at the end of the epoch
    if partial and "penalties" in partial:
        penalties.load_state_dict(partial["penalties"], device)
    seen, start = (partial or {}).get("seen", 0), time.time()
    # --accum-steps N: one optimizer step per N batches; the epoch's last len % N batches are skipped so that every
    # step has the full global batch (batch × processes × N)
    accum = args.accum_steps
    usable = len(data_loader) - len(data_loader) % accum
    batches = iter(data_loader)
    first = (partial or {}).get("step", 0)
    for _ in range(first):  # the same batches as before the interruption (same per-epoch seeds), not trained on
        next(batches)
    if partial:
        set_rng_state(partial["rng"])
    for i, (image, target) in enumerate(batches, start=first):
        if i == usable:
            break
        kill_point("step")
        last_micro = (i + 1) % accum == 0
        image, target = image.to(device, non_blocking=True), target.to(device, non_blocking=True)
        if args.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        if i % accum == 0:
            optimizer.zero_grad(set_to_none=True)
        no_sync = model.no_sync() if not last_micro and hasattr(model, "no_sync") else contextlib.nullcontext()
        with no_sync:  # DDP all-reduces only on the last batch of an accumulation group
            with _autocast(device, args):
                # hard (B,) or Mixup/CutMix soft (B, K) targets; compute_loss also feeds Zipf-dense / Adaptive LS
                output, loss = compute_loss(model, criterion, image, target)
            (scaler.scale(loss / accum) if scaler is not None else loss / accum).backward()
        if last_micro and scaler is not None:
            if args.clip_grad_norm is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
        elif last_micro:
            if args.clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad_norm)
            optimizer.step()
        if model_ema is not None and last_micro and (i // accum) % args.model_ema_steps == 0:
            model_ema.update_parameters(model)
            if epoch < args.lr_warmup_epochs:
                model_ema.n_averaged.fill_(0)  # during warm-up the EMA just copies the model (torchvision)

        batch = image.shape[0]
        seen += batch
        sums["loss"] += loss.item() * batch
        penalties.update(i, output, target)
        if i % args.print_freq == 0:
            print(f"Epoch: [{epoch}] [{i}/{len(data_loader)}] loss {loss.item():.4f} "
                  f"lr {optimizer.param_groups[0]['lr']:.5f} img/s {seen / (time.time() - start):.1f}")
        stop = preemption is not None and preemption.requested
        # a preemption stops at the end of an accumulation group, so no half-accumulated gradient is lost
        if step_guard(loss, epoch, i, stop_requested=stop, **NONFINITE_HINT) and last_micro and i + 1 < usable:
            return {"preempted": {"step": i + 1, "sums": dict(sums), "seen": seen, "rng": rng_state(),
                                  "penalties": penalties.state_dict()}}
    criterion.on_epoch_end()  # OLS replaces its soft-label matrix here (all-reduced under DDP)

    totals = torch.tensor([seen, *sums.values()], dtype=torch.float64, device=device)
    totals = all_reduce_sum(totals).cpu()
    stats = {k: v / max(totals[0].item(), 1.0) for k, v in zip(sums, totals[1:].tolist(), strict=True)}
    stats.update(penalties.compute())
    stats["lr"] = optimizer.param_groups[0]["lr"]
    if hasattr(criterion, "alpha"):
        stats["alpha"] = criterion.alpha
    return stats


def evaluate(model: nn.Module, data_loader: torch.utils.data.DataLoader, device: torch.device,
             args: argparse.Namespace, log_suffix: str = "", real: RealScorer | None = None) -> dict[str, float]:
    """acc@1 / acc@5 (%), NLL (nats) and 15-bin ECE over the whole evaluation set (each image once, all ranks).

    ``real`` (``--real-labels``) adds ReaL top-1 ``real_acc1`` over ``n_real`` images: each rank matches its top-1
    predictions to file names in its sampler's order (sequential, or the rank's ``ShardedEvalSampler`` shard) and
    the counts are summed over ranks."""
    model.eval()
    meter = ClassificationMeter()
    preds = []
    train_counts = getattr(args, "train_class_counts", None)  # set by --imb-ratio: many/medium/few-shot accuracy
    per_class = torch.zeros(2, len(train_counts) if train_counts else 0, dtype=torch.float64)  # correct, total
    with torch.inference_mode():
        for image, target in data_loader:
            image = image.to(device, non_blocking=True)
            if args.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            with _autocast(device, args):
                output = model(image)
            meter.update(output.float(), target)
            if real is not None:
                preds.append(output.argmax(1).cpu())
            if train_counts:
                hit = (output.argmax(1).cpu() == target).double()
                per_class[0].index_add_(0, target, hit)
                per_class[1].index_add_(0, target, torch.ones_like(hit))
    metrics = meter.all_reduce().compute()
    print(f"Test{log_suffix}: acc@1 {metrics['acc1']:.3f} acc@5 {metrics['acc5']:.3f} nll {metrics['nll']:.4f} "
          f"ece {metrics['ece']:.4f} (n={metrics['n']})")
    if real is not None:
        preds_all = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
        counts = torch.tensor(real.counts(preds_all, data_loader.sampler), dtype=torch.float64, device=device)
        metrics.update(RealScorer.result(*all_reduce_sum(counts).tolist()))
        print(f"Test{log_suffix} ReaL: acc@1 {metrics['real_acc1']:.3f} (n={metrics['n_real']})")
    if train_counts:
        per_class = all_reduce_sum(per_class.to(device)).cpu()
        shots = shot_accuracy_from_class_counts(per_class[0], per_class[1], train_counts)
        print(f"Test{log_suffix} shots: {format_shot_accuracy(shots)}")
        metrics.update({f"{k}_shot_acc1": v for k, v in shots.items() if k != "overall"})
    return metrics


def _build_dataset(args: argparse.Namespace, train: bool, transform: Any) -> tuple[torch.utils.data.Dataset, int]:
    """(dataset, number of classes) for one split; missing files raise one actionable sentence."""
    name = args.dataset
    if name == "fmnist":
        ds = FashionMNIST(args.data_path, train=train, transform=transform, classes=args.classes,
                          download=args.download, limit_per_class=args.limit_per_class)
        return ds, len(ds.classes)
    if name in ("cifar10", "cifar100"):
        root = Path(args.data_path or f"datasets/{name}")
        cls, archive, folder, k = (
            (torchvision.datasets.CIFAR10, "cifar-10-python.tar.gz", "cifar-10-batches-py", 10) if name == "cifar10"
            else (torchvision.datasets.CIFAR100, "cifar-100-python.tar.gz", "cifar-100-python", 100))
        try:
            ds = cls(root, train=train, transform=transform, download=args.download)
        except RuntimeError:
            raise UserError(f"{name.upper()} not found in {root}: extract {archive} so that {root / folder} exists, "
                            f"or add --download") from None
        return ds, k
    if args.data_path is None:
        raise UserError(f"--dataset {name} needs --data-path (see README.md for the expected layout)")
    if name in TRANSFER_DATASETS:
        ds = transfer_dataset(name, args.data_path, train, transform)
        return ds, len(ds.classes)
    if name in EVAL_SETS:
        if train:
            raise UserError(f"--dataset {name} is a test set: evaluate a checkpoint with --test-only --resume CKPT")
        ds = eval_set(name, args.data_path, transform)
        return ds, len(ds.classes)
    if name in ("imagenet32", "imagenet64"):
        ds = DownsampledImageNet(args.data_path, size=DATASETS[name][0], train=train, transform=transform)
        return ds, ds.num_classes
    folder = Path(args.data_path) / ("train" if train else "val")
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist; --data-path must contain train/<class>/*.jpg "
                                f"and val/<class>/*.jpg")
    ds = torchvision.datasets.ImageFolder(folder, transform=transform)
    return ds, len(ds.classes)


def check_same_classes(train: torch.utils.data.Dataset, val: torch.utils.data.Dataset, where: str | None) -> None:
    """Train and val must name the same classes in the same order, or every label is silently shifted."""
    a, b = getattr(train, "classes", None), getattr(val, "classes", None)
    if a is None or b is None or list(a) == list(b):
        return
    only_train, only_val = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    detail = (f"only in train: {', '.join(only_train[:5]) or '-'}; only in val: {', '.join(only_val[:5]) or '-'}"
              if only_train or only_val else "same names in a different order")
    raise UserError(f"the class folders of {where}/train ({len(a)}) and {where}/val ({len(b)}) differ ({detail}); "
                    f"labels would be shifted, so make both splits hold the same class folders")


def eval_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The evaluation preprocessing stored in checkpoints (``maxsup.data.transforms.transform_spec``)."""
    native, mean, std, small = DATASETS[args.dataset]
    crop = args.val_crop_size or native
    resize = args.val_resize_size or (crop if small else round(crop * 256 / 224))
    return transform_spec(crop, crop_pct=crop / resize, mean=mean, std=std, interpolation=args.interpolation)


def load_data(args: argparse.Namespace, dist_info: DistInfo, spec: dict[str, Any]):
    """Train/eval datasets and samplers. Returns (dataset or None under --test-only, dataset_test, train_sampler,
    test_sampler, num_classes)."""
    if args.classes is not None and args.dataset != "fmnist":
        raise UserError(f"--classes selects Fashion-MNIST classes; it is not supported with --dataset {args.dataset}")
    if args.limit_per_class is not None and args.dataset != "fmnist":
        raise UserError(f"--limit-per-class is only supported with --dataset fmnist, not {args.dataset}")
    if args.imb_ratio is not None and args.dataset not in ("fmnist", "cifar10", "cifar100"):
        raise UserError(f"--imb-ratio is supported with --dataset fmnist, cifar10 or cifar100, not {args.dataset}")
    native, mean, std, small = DATASETS[args.dataset]
    print(f"Loading data ({args.dataset})")
    t0 = time.time()
    dataset_test, num_classes = _build_dataset(args, False, eval_transform(spec))
    dataset = None
    if not args.test_only:
        train_tf = presets.ClassificationPresetTrain(
            args.train_crop_size or native, mean, std, small_input=small, interpolation=args.interpolation,
            hflip_prob=args.hflip_prob, auto_augment_policy=args.auto_augment, random_erase_prob=args.random_erase)
        if args.train_transform == "eval":
            train_tf = eval_transform(spec)
        dataset, num_classes_train = _build_dataset(args, True, train_tf)
        check_same_classes(dataset, dataset_test, args.data_path)
        num_classes = max(num_classes, num_classes_train)  # a downsampled-ImageNet val split may miss classes
        if args.imb_ratio is not None:  # paper Table 7: exponential long-tail profile, a seeded subset
            keep, args.train_class_counts = long_tailed_indices(dataset.targets, args.imb_ratio, args.seed,
                                                                num_classes)
            dataset = torch.utils.data.Subset(dataset, keep.tolist())
            print(f"Long-tailed training split (imbalance ratio {args.imb_ratio:g}, seed {args.seed}): per-class "
                  f"counts {args.train_class_counts}")
    print(f"Took {time.time() - t0:.1f}s: {len(dataset) if dataset else 0} train / {len(dataset_test)} test images, "
          f"{num_classes} classes")

    train_sampler = None
    if dist_info.distributed:
        if dataset is not None and args.ra_sampler:
            train_sampler = RASampler(dataset, dist_info.world_size, dist_info.rank, shuffle=True, seed=args.seed,
                                      repetitions=args.ra_reps)
        elif dataset is not None:
            train_sampler = torch.utils.data.DistributedSampler(dataset, dist_info.world_size, dist_info.rank,
                                                                shuffle=True, seed=args.seed)
        test_sampler = ShardedEvalSampler(dataset_test, dist_info.world_size, dist_info.rank)
    else:
        if args.ra_sampler:
            print("Note: --ra-sampler only applies under DDP (torchrun with >1 process); using a random sampler")
        test_sampler = torch.utils.data.SequentialSampler(dataset_test)
    return dataset, dataset_test, train_sampler, test_sampler, num_classes


def _check_args(args: argparse.Namespace) -> None:
    if args.loss not in LOSSES:
        raise UserError(f"unknown --loss {args.loss!r}; choose one of {', '.join(LOSSES)}")
    if args.label_smoothing and args.loss not in ("ce", "ls"):
        # Upstream silently ignored --label-smoothing next to MaxSup; here LS is a loss of its own.
        raise UserError(f"--label-smoothing is the LS loss with a fixed α and cannot be combined with --loss "
                        f"{args.loss}; drop it, or use --loss ls --alpha-start A --alpha-end A")
    if not 0 <= args.label_smoothing < 1:
        raise UserError(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    if args.test_only and not args.resume:
        raise UserError("--test-only needs --resume CHECKPOINT (the weights to evaluate)")
    if args.imb_ratio is not None and not args.imb_ratio >= 1:
        raise UserError(f"--imb-ratio must be >= 1 (largest / smallest class size, e.g. 100), got {args.imb_ratio}")
    if args.epochs < 1 or args.batch_size < 1:
        raise UserError(f"--epochs and --batch-size must be >= 1, got {args.epochs} and {args.batch_size}")
    if args.accum_steps < 1:
        raise UserError(f"--accum-steps must be >= 1, got {args.accum_steps}")
    if args.stats_every < 1:
        raise UserError(f"--stats-every must be >= 1, got {args.stats_every}")
    if args.real_labels and args.dataset != "imagefolder":
        raise UserError(f"--real-labels scores ImageNet val (--dataset imagefolder), not --dataset {args.dataset}")
    _resolve_loss(args)


def _resolve_loss(args: argparse.Namespace) -> None:
    """Set ``args.loss_options`` to every option of the loss trained (defaults filled in) and the α flags to the α
    schedule of ``--loss`` (the schedule's defaults for a loss without one, which refuses α flags).
    ``--label-smoothing ε`` trains LS with α fixed at ε. Resolves once."""
    if "loss_options" in vars(args):
        return
    name, given = args.loss, {k: getattr(args, k) for k in ALPHA_OPTIONS}
    if args.label_smoothing:
        eps = args.label_smoothing
        if given["alpha_start"] is not None or given["alpha_end"] is not None:
            raise UserError(f"--label-smoothing {eps} fixes α = {eps}; drop --alpha-start/--alpha-end")
        name, given = "ls", {**given, "alpha_start": eps, "alpha_end": eps}
    try:
        args.loss_options = resolve_loss_options(name, args.loss_opt, **given)
    except ValueError as exc:
        raise UserError(f"--loss {args.loss}: {exc}") from None
    # --loss ce --label-smoothing: the α keys stay the schedule's (as for ce), the ε is in loss_options
    schedule = {**loss_defaults(ScheduledLoss), **(args.loss_options if args.loss == name else {})}
    for k in ALPHA_OPTIONS:
        setattr(args, k, schedule[k])


def resolved_config(args: argparse.Namespace, world: int) -> dict[str, Any]:
    """Every flag plus the global batch (``-b`` × processes × ``--accum-steps``) and the lr, which this trainer
    (like torchvision's) uses as given: ``effective_lr`` is ``--lr``."""
    return {**utils.plain(vars(args)), "world_size": world,
            "total_batch_size": args.batch_size * world * args.accum_steps, "effective_lr": args.lr}


def _resume_flag(key: str) -> str:
    """The flag a user types for a resume key (``loss_options`` are set with ``--loss-opt`` and the α flags)."""
    return "--loss-opt" if key == "loss_options" else "--" + key.replace("_", "-")


def _criterion(args: argparse.Namespace, num_classes: int, model: nn.Module | None = None) -> nn.Module:
    _resolve_loss(args)  # main() has done it already; callers that only parsed args have not
    name = "ls" if args.label_smoothing else args.loss  # fixed α = the smoothing ε (see _resolve_loss)
    return build_criterion(name, num_classes, args.epochs, model=model, **args.loss_options)


def _lr_scheduler(args: argparse.Namespace, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch schedule: step (T10), multistep (CIFAR-100: ×0.2 at 60/120/160) or cosine, after optional warm-up."""
    name, main_epochs = args.lr_scheduler, args.epochs - args.lr_warmup_epochs
    sched = torch.optim.lr_scheduler
    if name == "steplr":
        main_sched = sched.StepLR(optimizer, step_size=args.lr_step_size, gamma=args.lr_gamma)
    elif name == "multisteplr":
        main_sched = sched.MultiStepLR(optimizer, milestones=args.lr_milestones, gamma=args.lr_gamma)
    elif name == "cosineannealinglr":
        main_sched = sched.CosineAnnealingLR(optimizer, T_max=max(main_epochs, 1), eta_min=args.lr_min)
    else:
        raise UserError(f"unknown --lr-scheduler {name!r}; choose steplr, multisteplr or cosineannealinglr")
    if args.lr_warmup_epochs <= 0:
        return main_sched
    if args.lr_warmup_method == "linear":
        warmup = sched.LinearLR(optimizer, start_factor=args.lr_warmup_decay, total_iters=args.lr_warmup_epochs)
    else:
        warmup = sched.ConstantLR(optimizer, factor=args.lr_warmup_decay, total_iters=args.lr_warmup_epochs)
    return sched.SequentialLR(optimizer, [warmup, main_sched], milestones=[args.lr_warmup_epochs])


def _extra_val_loaders(args: argparse.Namespace, spec: dict[str, Any], dist_info: DistInfo,
                       num_classes: int) -> dict[str, Any]:
    """``--extra-val NAME=PATH``: {name: loader} of the test sets evaluated after every epoch beside the main one."""
    out = {}
    for name, ds in extra_val_sets(args.extra_val, eval_transform(spec), num_classes).items():
        sampler = (ShardedEvalSampler(ds, dist_info.world_size, dist_info.rank) if dist_info.distributed
                   else torch.utils.data.SequentialSampler(ds))
        out[name] = torch.utils.data.DataLoader(ds, batch_size=args.eval_batch_size or args.batch_size,
                                                sampler=sampler, num_workers=args.workers)
    return out


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train (or with ``--test-only`` evaluate); returns the last evaluation metrics."""
    _check_args(args)
    dist_info = init_distributed(args.device)
    device = dist_info.device
    is_main = dist_info.rank == 0
    output_dir = Path(args.output_dir) if args.output_dir else None
    if output_dir and is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    print(args)
    utils.seed_everything(args.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    if args.use_deterministic_algorithms:
        torch.use_deterministic_algorithms(True)

    checkpoint = load_checkpoint(args.resume) if args.resume else None
    spec = eval_spec(args)
    if args.test_only and checkpoint.get("eval_transform"):
        spec = checkpoint["eval_transform"]  # evaluate exactly as the checkpoint's trainer did
    if args.test_only and checkpoint.get("train_class_counts"):
        args.train_class_counts = checkpoint["train_class_counts"]  # a long-tailed run: report the shot groups
    dataset, dataset_test, train_sampler, test_sampler, num_classes = load_data(args, dist_info, spec)
    num_classes = args.num_classes or num_classes
    data_loader_test = torch.utils.data.DataLoader(dataset_test, batch_size=args.eval_batch_size or args.batch_size,
                                                   sampler=test_sampler, num_workers=args.workers,
                                                   pin_memory=device.type == "cuda")
    extra_val = _extra_val_loaders(args, spec, dist_info, num_classes)  # checked before anything is written
    real = None  # file names and class wnids are checked here, before any training or evaluation
    if args.real_labels:
        labels = real_labels(None if args.real_labels is True else args.real_labels)
        real = RealScorer.from_dataset(dataset_test, labels)

    if args.test_only:
        head = checkpoint.get("arch", {}).get("num_classes")
        downsampled_val = args.dataset.startswith("imagenet")  # its val labels may not reach the last class
        if head is not None and head != num_classes and not (downsampled_val and head > num_classes):
            raise UserError(f"{args.resume} has a {head}-class head but the evaluation data has {num_classes} "
                            f"classes; evaluate it on the dataset (and --classes) it was trained on")
        model = model_from_checkpoint(checkpoint, source=args.resume).to(device)
        model = scored_logits(model, dataset_test)  # ImageNet-A/R: score only the 200 classes they contain
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        metrics = evaluate(model, data_loader_test, device, args, real=real)
        if args.model_ema and "model_ema" in checkpoint:
            ema = model_from_checkpoint(checkpoint, key="model_ema", source=args.resume).to(device)
            ema = scored_logits(ema, dataset_test)
            metrics = {"model": metrics, "model_ema": evaluate(ema, data_loader_test, device, args, " (EMA)", real)}
        return metrics

    # Seeded per epoch (utils.epoch_seed): shuffling and the workers' augmentation randomness.
    loader_generator = torch.Generator()
    batch_transform = presets.get_mixup_cutmix(mixup_alpha=args.mixup_alpha, cutmix_alpha=args.cutmix_alpha,
                                               num_classes=num_classes)
    data_loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, sampler=train_sampler, shuffle=train_sampler is None,
        num_workers=args.workers, pin_memory=device.type == "cuda", drop_last=args.drop_last,
        collate_fn=presets.MixupCutmixCollate(batch_transform) if batch_transform else None,
        generator=loader_generator)

    print(f"Creating model {args.model}")
    model_kwargs = utils.parse_kwargs(args.model_kwargs, "--model-kwargs")
    model = create_model(args.model, num_classes, **model_kwargs).to(device)
    if args.finetune and checkpoint is None:  # paper Table 6 (CUB, Cars): start from a pretrained backbone
        info = load_pretrained_backbone(model, args.finetune)
        print(f"Fine-tuning from {args.finetune}: {info['loaded']} tensors loaded, "
              f"{'new' if info['head_replaced'] else 'pretrained'} {num_classes}-class head")
    if dist_info.distributed and args.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = _criterion(args, num_classes, model).to(device)
    print(f"Criterion: {criterion}")

    param_groups = utils.set_weight_decay(model, args.weight_decay, args.norm_weight_decay, args.bias_weight_decay)
    if args.opt in ("sgd", "sgd_nesterov"):
        optimizer = torch.optim.SGD(param_groups, lr=args.lr, momentum=args.momentum,
                                    nesterov=args.opt == "sgd_nesterov")
    elif args.opt == "adamw":
        optimizer = torch.optim.AdamW(param_groups, lr=args.lr)
    else:
        raise UserError(f"unknown --opt {args.opt!r}; choose sgd, sgd_nesterov or adamw")
    scaler = torch.amp.GradScaler(device.type) if args.amp and device.type == "cuda" else None
    lr_scheduler = _lr_scheduler(args, optimizer)

    model_without_ddp = model
    if dist_info.distributed:
        device_ids = [dist_info.local_rank] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        model_without_ddp = model.module
    if args.compile:
        model = torch.compile(model)

    model_ema = None
    if args.model_ema:
        # torchvision: the decay is given per image at batch 1; rescale it to one update every model_ema_steps.
        adjust = dist_info.world_size * args.batch_size * args.accum_steps * args.model_ema_steps / args.epochs
        alpha = min(1.0, (1.0 - args.model_ema_decay) * adjust)
        model_ema = utils.exponential_moving_average(model_without_ddp, 1.0 - alpha, device)

    partial = None
    if checkpoint is not None:
        saved = checkpoint.get("args", {})
        keys = [*RESUME_KEYS, *ALPHA_OPTIONS]
        check_resume(checkpoint, args.resume, TRAINER,
                     {**saved, "num_classes": checkpoint.get("arch", {}).get("num_classes")},
                     {**vars(args), "num_classes": num_classes}, [*keys, "num_classes"], flag=_resume_flag,
                     required=("model", "optimizer", "lr_scheduler", "criterion", "epoch"))
        load_state_dict_strict(model_without_ddp, checkpoint["model"], args.resume)
        optimizer.load_state_dict(checkpoint["optimizer"])
        lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
        criterion.load_state_dict(checkpoint["criterion"])
        if model_ema is not None:
            load_state_dict_strict(model_ema.module, checkpoint["model_ema"], args.resume)
            model_ema.n_averaged.copy_(checkpoint["model_ema_n_averaged"])
        if scaler is not None and "scaler" in checkpoint:
            scaler.load_state_dict(checkpoint["scaler"])
        args.start_epoch = checkpoint["epoch"] + 1
        partial = checkpoint.get("partial")  # written on preemption: continue inside args.start_epoch
        where = f", step {partial['step']}" if partial else ""
        print(f"Resumed from {args.resume} at epoch {args.start_epoch}{where}")

    log_path = output_dir / "log.txt" if output_dir else None
    if is_main and output_dir:
        atomic_write(output_dir / "args.json", json.dumps(utils.plain(vars(args)), indent=2) + "\n")
        truncate_log(log_path, args.start_epoch - 1)
        dataset_name = "imagenet" if args.dataset == "imagefolder" and num_classes == 1000 else args.dataset
        write_run_record(output_dir, trainer="common_resnet", config=resolved_config(args, dist_info.world_size),
                         dataset=dataset_name, model=args.model, loss="ls" if args.label_smoothing else args.loss,
                         epochs=args.epochs, seed=args.seed, alpha=alpha_schedule_of(criterion),
                         world_size=dist_info.world_size, device=device, log_file="log.txt",
                         metric_keys={"acc1": "test_acc1", "nll": "test_nll", "ece": "test_ece"})
    tb = ScalarWriter(args.tensorboard, enabled=is_main)

    print("Start training")
    start_time = time.time()
    metrics: dict[str, Any] = {}

    def state(epoch: int) -> dict[str, Any]:
        ckpt = {
            "trainer": TRAINER,
            "model": model_without_ddp.state_dict(),
            "arch": arch_spec(args.model, num_classes, **model_kwargs),
            "eval_transform": spec,
            "args": utils.plain(vars(args)),
            "epoch": epoch,
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(),
            "criterion": criterion.state_dict(),
            "rng": rng_state(),  # informative at epoch ends (exact resume comes from the per-epoch reseeding)
        }
        if getattr(args, "train_class_counts", None):
            ckpt["train_class_counts"] = list(args.train_class_counts)  # --imb-ratio's long-tailed split
        if model_ema is not None:
            ckpt["model_ema"] = model_ema.module.state_dict()  # plain keys: model_from_checkpoint(key=...)
            ckpt["model_ema_n_averaged"] = model_ema.n_averaged.detach().cpu()
        if scaler is not None:
            ckpt["scaler"] = scaler.state_dict()
        return ckpt

    def save(ckpt: dict[str, Any], epoch: int, step: int, name: str = "checkpoint.pth") -> None:
        # every rank checks the weights (one all-reduce): a NaN stops all of them before anything is written
        check_finite_model(model_without_ddp, epoch, step, **NONFINITE_HINT)
        if is_main and output_dir:
            atomic_save(ckpt, output_dir / name)

    with Preemption() as preemption:
        for epoch in range(args.start_epoch, args.epochs):
            seed = utils.epoch_seed(args.seed, epoch, dist_info.rank)
            utils.seed_everything(seed)
            loader_generator.manual_seed(seed)
            if train_sampler is not None:
                train_sampler.set_epoch(epoch)
            epoch_start = time.time()
            train_stats = train_one_epoch(model, criterion, optimizer, data_loader, device, epoch, args, model_ema,
                                          scaler, preemption, partial if epoch == args.start_epoch else None)
            if "preempted" in train_stats:  # SIGTERM/SIGUSR1: checkpoint this step boundary, then exit cleanly
                step = train_stats["preempted"]["step"]
                save({**state(epoch - 1), "partial": train_stats["preempted"]}, epoch, step)
                print(f"Preempted: checkpoint written at epoch {epoch}, step {step}; rerun with --resume "
                      f"{output_dir / 'checkpoint.pth' if output_dir else '<checkpoint>'} to continue", flush=True)
                preemption.stopped()
                return metrics
            lr_scheduler.step()
            metrics = evaluate(model, data_loader_test, device, args, real=real)
            criterion.on_eval(metrics["acc1"])  # Adaptive LS: the best checkpoint so far becomes its teacher
            record = {"epoch": epoch, **{f"train_{k}": v for k, v in train_stats.items()},
                      **{f"test_{k}": v for k, v in metrics.items()}}
            for name, loader in extra_val.items():  # e.g. ImageNetV2 beside ImageNet val
                net = scored_logits(model, loader.dataset)
                record.update({f"{name}_{k}": v for k, v in evaluate(net, loader, device, args, f" ({name})").items()})
            if model_ema is not None:
                ema_metrics = evaluate(model_ema, data_loader_test, device, args, log_suffix=" (EMA)", real=real)
                record.update({f"test_ema_{k}": v for k, v in ema_metrics.items()})
            record["epoch_time_s"] = round(time.time() - epoch_start, 2)
            tb.log(record, epoch)
            ckpt = state(epoch)
            if args.save_every_epoch:
                save(ckpt, epoch, len(data_loader), f"model_{epoch}.pth")
            save(ckpt, epoch, len(data_loader))
            if is_main and output_dir:
                append_log(log_path, record)  # after the checkpoint: a resumed run re-logs what it repeats
            if all_reduce_sum(torch.tensor([float(preemption.requested)], device=device)).item():
                print(f"Preempted: stopping after the checkpoint of epoch {epoch}", flush=True)
                if epoch + 1 < args.epochs:
                    preemption.stopped()
                break

    tb.close()
    total = str(datetime.timedelta(seconds=int(time.time() - start_time)))
    print(f"Training time {total}")
    return metrics


def class_list(text: str) -> list[int]:
    """``"0,2,4"`` → ``[0, 2, 4]`` (argparse type of --classes)."""
    return [int(c) for c in text.split(",")]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = _Parser(description="MaxSup-repo image classification training (torchvision references idiom)",
                     add_help=add_help, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # data
    parser.add_argument("--dataset", default="imagefolder", choices=list(DATASETS),
                        help="dataset format; imagenetv2, imagenet-a, imagenet-r, imagenet-sketch are test sets for "
                             "--test-only (--data-path = the set's folder)")
    parser.add_argument("--data-path", default=None, type=str,
                        help="dataset root (imagefolder: train/ and val/ inside; imagenet32/64: the pickled batches; "
                             "fmnist: default is the dataset-fashion-mnist Debian package; cifar10/100: "
                             "datasets/cifar10 or datasets/cifar100)")
    parser.add_argument("--download", action="store_true",
                        help="download fmnist/cifar10/cifar100 into --data-path if missing")
    parser.add_argument("--classes", default=None, type=class_list,
                        help="fmnist only: keep these classes (comma list, e.g. 0,2,4,6,8), relabelled 0..n-1")
    parser.add_argument("--limit-per-class", default=None, type=int,
                        help="fmnist only: first N images per class in both splits (quick runs)")
    parser.add_argument("--num-classes", default=None, type=int, help="classifier size (default: from the dataset)")
    add_test_set_args(parser)
    parser.add_argument("--imb-ratio", default=None, type=float,
                        help="fmnist/cifar10/cifar100: long-tailed training split with n_c = n_max·R^(-c/(C-1)) "
                             "images of class c (a seeded subset; paper Table 7 uses 50 and 100); test split untouched")
    # model
    parser.add_argument("--model", default="resnet18", type=str,
                        help="torchvision model (resnet18/50/101, mobilenet_v2, ...) or cifar_resnet10/18/34/50 "
                             "(3x3 stem, no max-pool, for 28-64 px inputs)")
    parser.add_argument("--model-kwargs", nargs="*", default=None, metavar="KEY=VALUE",
                        help="extra create_model arguments, e.g. width=16 for cifar_resnet*")
    parser.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under DDP")
    parser.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    # loss
    alpha = loss_defaults(ScheduledLoss)  # the α schedule's defaults, from the α losses' base class signature
    parser.add_argument("--loss", default="ce", type=str,
                        help=f"training loss, a name registered in maxsup.losses.LOSSES: {', '.join(LOSSES)}")
    parser.add_argument("--loss-opt", action="append", default=[], metavar="KEY=VALUE",
                        help=f"an option of --loss, repeatable (e.g. --loss focal --loss-opt gamma=2); options and "
                             f"defaults: {describe_loss_options()}")
    parser.add_argument("--alpha-start", default=None, type=float,
                        help=f"LS/MaxSup α at the first epoch (default: %(default)s = the loss's, "
                             f"{alpha['alpha_start']})")
    parser.add_argument("--alpha-end", default=None, type=float,
                        help=f"LS/MaxSup α at the last epoch (linear) (default: %(default)s = the loss's, "
                             f"{alpha['alpha_end']})")
    parser.add_argument("--alpha-denominator", default=None, choices=ALPHA_DENOMINATORS,
                        help=f"α(e) = start + (end − start)·e/D: E-1 reaches --alpha-end at the last epoch (the "
                             f"authors' torchvision code); E is the paper's t/T "
                             f"(default: %(default)s = the loss's, {alpha['alpha_denominator']})")
    parser.add_argument("--label-smoothing", default=0.0, type=float,
                        help="LS with a fixed α (= --loss ls with alpha-start = alpha-end); refused with other losses")
    parser.add_argument("--stats-every", default=10, type=int, help="measure the penalty statistics every N steps")
    # optimisation
    parser.add_argument("--epochs", default=90, type=int, help="number of epochs")
    parser.add_argument("-b", "--batch-size", default=32, type=int, help="images per process per step")
    parser.add_argument("--accum-steps", default=1, type=int,
                        help="gradient accumulation: one optimizer step per N batches; global batch = b × nproc × N")
    parser.add_argument("--eval-batch-size", default=None, type=int, help="evaluation batch (default: --batch-size)")
    parser.add_argument("--drop-last", action="store_true", help="drop the last incomplete training batch")
    parser.add_argument("--opt", default="sgd", type=str, help="optimizer: sgd, sgd_nesterov or adamw")
    parser.add_argument("--lr", default=0.1, type=float, help="initial learning rate")
    parser.add_argument("--momentum", default=0.9, type=float, help="SGD momentum")
    parser.add_argument("--wd", "--weight-decay", default=1e-4, type=float, dest="weight_decay", help="weight decay")
    parser.add_argument("--norm-weight-decay", default=None, type=float,
                        help="weight decay of normalisation layers (default: same as --wd)")
    parser.add_argument("--bias-weight-decay", default=None, type=float,
                        help="weight decay of biases (default: same as --wd)")
    parser.add_argument("--clip-grad-norm", default=None, type=float, help="max gradient norm (default: off)")
    parser.add_argument("--lr-scheduler", default="steplr", type=str,
                        help="steplr, multisteplr or cosineannealinglr (stepped once per epoch)")
    parser.add_argument("--lr-step-size", default=30, type=int, help="steplr: decay every N epochs")
    parser.add_argument("--lr-milestones", default=[60, 120, 160], type=int, nargs="+",
                        help="multisteplr: epochs at which the lr is multiplied by --lr-gamma")
    parser.add_argument("--lr-gamma", default=0.1, type=float, help="steplr/multisteplr decay factor")
    parser.add_argument("--lr-min", default=0.0, type=float, help="cosineannealinglr: final lr")
    parser.add_argument("--lr-warmup-epochs", default=0, type=int, help="warm-up epochs")
    parser.add_argument("--lr-warmup-method", default="linear", choices=["linear", "constant"], help="warm-up shape")
    parser.add_argument("--lr-warmup-decay", default=0.01, type=float, help="warm-up starts at lr × this")
    # augmentation
    parser.add_argument("--train-crop-size", default=None, type=int, help="train crop (default: native size)")
    parser.add_argument("--val-resize-size", default=None, type=int,
                        help="eval resize (default: crop×256/224 for imagefolder, = crop otherwise)")
    parser.add_argument("--val-crop-size", default=None, type=int, help="eval center crop (default: native size)")
    parser.add_argument("--interpolation", default="bilinear", type=str, help="resize interpolation")
    parser.add_argument("--hflip-prob", default=0.5, type=float, help="horizontal-flip probability")
    parser.add_argument("--auto-augment", default=None, choices=presets.AUTO_AUGMENT_POLICIES,
                        help="auto-augment policy (default: none)")
    parser.add_argument("--random-erase", default=0.0, type=float, help="random-erasing probability")
    parser.add_argument("--train-transform", default="standard", choices=["standard", "eval"],
                        help="eval: train on the evaluation preprocessing, without augmentation (checks, probes)")
    parser.add_argument("--mixup-alpha", default=0.0, type=float, help="MixUp α (0 = off)")
    parser.add_argument("--cutmix-alpha", default=0.0, type=float, help="CutMix α (0 = off)")
    parser.add_argument("--ra-sampler", action="store_true", help="repeated-augmentation sampler (DDP only)")
    parser.add_argument("--ra-reps", default=3, type=int, help="repetitions per image for --ra-sampler")
    # EMA, AMP, runtime
    parser.add_argument("--model-ema", action="store_true", help="keep and evaluate an EMA of the weights")
    parser.add_argument("--model-ema-steps", default=32, type=int, help="iterations between EMA updates")
    parser.add_argument("--model-ema-decay", default=0.99998, type=float, help="EMA decay per image at batch 1")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--amp", action="store_true", help="autocast: bfloat16 on CPU, float16 + GradScaler on CUDA")
    parser.add_argument("--device", default=None, type=str, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("-j", "--workers", default=4, type=int, help="data-loading workers per process")
    parser.add_argument("--seed", default=0, type=int, help="random seed (a CPU run is reproducible bit for bit)")
    add_run_args(parser)
    parser.add_argument("--use-deterministic-algorithms", action="store_true",
                        help="torch.use_deterministic_algorithms(True) (needed for bitwise-reproducible CUDA runs)")
    parser.add_argument("--print-freq", default=100, type=int, help="print every N steps")
    parser.add_argument("--output-dir", default=".", type=str, help="where checkpoint.pth, log.txt, args.json go")
    parser.add_argument("--save-every-epoch", action="store_true", help="also keep model_{epoch}.pth")
    parser.add_argument("--resume", default="", type=str, help="checkpoint to resume from (or evaluate)")
    parser.add_argument("--finetune", default="", type=str,
                        help="initialise from this checkpoint's backbone (ours, or a released one converted by "
                             "maxsup.hub convert); the head is replaced when the class count differs")
    parser.add_argument("--start-epoch", default=0, type=int, help="first epoch (overridden by --resume)")
    parser.add_argument("--test-only", action="store_true", help="only evaluate --resume: acc@1, acc@5, NLL, ECE")
    return parser


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one ``error: ...`` line (via run_cli) instead of the usage block."""

    def error(self, message: str):
        raise UserError(f"{message} (see --help)")


def cli(argv: list[str] | None = None) -> dict[str, Any]:
    """``--print-config``, one run, or a seed sweep (``--seeds`` / env ``SEEDS``): one run folder
    ``<output-dir>/seed<S>`` (and TensorBoard folder) per seed, one after the other."""
    args = get_args_parser().parse_args(argv)
    seeds = parse_seeds(args.seeds)
    if args.print_config:
        _check_args(args)
        config = resolved_config(args, launcher_world_size())
        config["seeds"] = seeds if seeds is not None else [args.seed]
        return print_config(config)
    if seeds is None or args.test_only:  # --test-only evaluates one checkpoint, whatever SEEDS says
        return main(args)
    return run_seeds(seeds, lambda seed: main(argparse.Namespace(**{
        **vars(args), "seed": seed, "seeds": None, "output_dir": seed_dir(args.output_dir, seed),
        "tensorboard": seed_dir(args.tensorboard, seed)})), lambda seed: seed_dir(args.output_dir, seed))


if __name__ == "__main__":
    run_cli(cli)
