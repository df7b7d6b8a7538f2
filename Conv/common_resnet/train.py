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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import presets
import torch
import torch.utils.data
import utils
from sampler import RASampler, ShardedEvalSampler
from torch import nn

from maxsup.checks import check_accum_steps, check_smoothing
from maxsup.cli import (
    ArgumentParser,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
    run_cli,
)
from maxsup.data import check_class_order, class_names, long_tailed_indices, parse_classes
from maxsup.data.imagenet_variants import RealScorer, add_test_set_args, extra_val_sets, real_labels, scored_logits
from maxsup.data.registry import DATASETS, build_split, split_num_classes
from maxsup.data.transforms import eval_transform, transform_spec
from maxsup.errors import UserError
from maxsup.estimate import (
    StepClock,
    SyntheticImages,
    add_estimate_args,
    check_estimate,
    estimate_record,
    print_estimate,
    train_split_size,
)
from maxsup.hub import local_checkpoints
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
    parse_model_kwargs,
)
from maxsup.timing import Stopwatch, train_timing
from maxsup.training import (
    DistInfo,
    Preemption,
    ScalarWriter,
    add_run_args,
    all_reduce_sum,
    alpha_schedule_of,
    append_log,
    atomic_save,
    atomic_write,
    check_finite_model,
    claim_run_folder,
    init_distributed,
    kill_point,
    launcher_world_size,
    load_checkpoint,
    open_resume,
    parse_seeds,
    print_config,
    repair_log,
    restore_state,
    rng_state,
    run_seeds,
    seed_everything,
    seeded_args,
    skip_done_batches,
    step_guard,
    write_run_record,
)

TRAINER = "Conv/common_resnet/train.py"
#: Arguments that define a run (plus the α flags): --resume refuses a checkpoint whose values differ.
#: ``loss_options`` holds every option of the loss, defaults filled in.
RESUME_KEYS = ("model", "model_kwargs", "dataset", "classes", "epochs", "loss", "loss_options", "label_smoothing")
#: The α schedule's options, which have flags of their own (every paper recipe sets them); None = the loss's default.
ALPHA_OPTIONS = ("alpha_start", "alpha_end", "alpha_denominator")
NONFINITE_HINT = {"lr_flag": "--lr", "clip_flag": "--clip-grad-norm"}
#: Flags that do not change what is trained (paths, logging, workers, the seed, the loss itself, the split of the global
#: batch): left out of run.json's recipe fingerprint, so seeds and losses of one recipe are one group of
#: analysis.collect.
NOT_RECIPE = ("seed", "seeds", "output_dir", "resume", "device", "workers", "print_freq", "data_path", "test_only",
              "tensorboard", "print_config", "start_epoch", "save_every_epoch", "loss", "alpha_start", "alpha_end",
              "model", "dataset", "download", "stats_every", "batch_size", "accum_steps", "world_size",
              "eval_batch_size", "label_smoothing", "loss_opt", "loss_options", "compile", "overwrite", "estimate",
              "estimate_synthetic")
#: A folder holding one of these holds a run: a fresh run into it needs --overwrite.
RUN_MARKERS = ("run.json", "checkpoint.pth")
#: Folders a seed sweep moves to <folder>/seed<S>.
SEED_FOLDERS = ("output_dir", "tensorboard")


@dataclass
class RunState:
    """What the run learns as it goes, kept out of ``args`` (which stays what the user typed): the first epoch
    (``--start-epoch``, or after the resumed checkpoint's), a preempted epoch's progress, and the per-class training
    counts of an ``--imb-ratio`` split (for the many/medium/few-shot accuracy)."""

    start_epoch: int = 0
    partial: dict[str, Any] | None = None
    train_class_counts: list[int] | None = None


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
    batches, first = skip_done_batches(data_loader, partial)  # a preempted epoch: the batches already trained on
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
    stats["samples"] = int(totals[0].item())  # images trained, all ranks (a resumed epoch: since the checkpoint too)
    stats["lr"] = optimizer.param_groups[0]["lr"]
    if hasattr(criterion, "alpha"):
        stats["alpha"] = criterion.alpha
    return stats


def evaluate(model: nn.Module, data_loader: torch.utils.data.DataLoader, device: torch.device,
             args: argparse.Namespace, log_suffix: str = "", real: RealScorer | None = None,
             train_counts: list[int] | None = None) -> dict[str, float]:
    """acc@1 / acc@5 (%), NLL (nats) and 15-bin ECE over the whole evaluation set (each image once, all ranks).

    ``real`` (``--real-labels``) adds ReaL top-1 ``real_acc1`` over ``n_real`` images: each rank matches its top-1
    predictions to file names in its sampler's order (sequential, or the rank's ``ShardedEvalSampler`` shard) and
    the counts are summed over ranks. ``train_counts`` (an ``--imb-ratio`` run's images per class) adds the
    many/medium/few-shot top-1."""
    model.eval()
    meter = ClassificationMeter()
    preds = []
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
    """(dataset, number of classes) for one split (``maxsup.data.registry``); missing files raise one actionable
    sentence."""
    if train and DATASETS[args.dataset].eval_only:
        raise UserError(f"--dataset {args.dataset} is a test set: evaluate a checkpoint with --test-only --resume CKPT")
    ds = build_split(args.dataset, args.data_path, train=train, transform=transform, classes=args.classes,
                     download=args.download, limit_per_class=args.limit_per_class, skip_corrupt=args.skip_corrupt)
    return ds, split_num_classes(ds)


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
    data = DATASETS[args.dataset]
    crop = args.val_crop_size or data.input_size
    resize = args.val_resize_size or (crop if data.small_input else round(crop * 256 / 224))
    return transform_spec(crop, crop_pct=crop / resize, mean=data.mean, std=data.std, interpolation=args.interpolation)


def load_data(args: argparse.Namespace, dist_info: DistInfo, spec: dict[str, Any], state: RunState):
    """Train/eval datasets and samplers. Returns (dataset or None under --test-only, dataset_test, train_sampler,
    test_sampler, num_classes); an ``--imb-ratio`` split's class counts go to ``state``."""
    if args.classes is not None and args.dataset != "fmnist":
        raise UserError(f"--classes selects Fashion-MNIST classes; it is not supported with --dataset {args.dataset}")
    if args.limit_per_class is not None and args.dataset != "fmnist":
        raise UserError(f"--limit-per-class is only supported with --dataset fmnist, not {args.dataset}")
    if args.imb_ratio is not None and args.dataset not in ("fmnist", "cifar10", "cifar100"):
        raise UserError(f"--imb-ratio is supported with --dataset fmnist, cifar10 or cifar100, not {args.dataset}")
    data = DATASETS[args.dataset]
    print(f"Loading data ({args.dataset})")
    t0 = time.time()
    dataset_test, num_classes = _build_dataset(args, False, eval_transform(spec))
    dataset = None
    if not args.test_only:
        train_tf = presets.ClassificationPresetTrain(
            args.train_crop_size or data.input_size, data.mean, data.std, small_input=data.small_input,
            interpolation=args.interpolation, hflip_prob=args.hflip_prob, auto_augment_policy=args.auto_augment,
            random_erase_prob=args.random_erase)
        if args.train_transform == "eval":
            train_tf = eval_transform(spec)
        dataset, num_classes_train = _build_dataset(args, True, train_tf)
        check_same_classes(dataset, dataset_test, args.data_path)
        num_classes = max(num_classes, num_classes_train)  # a downsampled-ImageNet val split may miss classes
        if args.imb_ratio is not None:  # paper Table 7: exponential long-tail profile, a seeded subset
            keep, counts = long_tailed_indices(dataset.targets, args.imb_ratio, args.seed, num_classes)
            state.train_class_counts = list(counts)
            dataset = torch.utils.data.Subset(dataset, keep.tolist())
            print(f"Long-tailed training split (imbalance ratio {args.imb_ratio:g}, seed {args.seed}): per-class "
                  f"counts {state.train_class_counts}")
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
    check_smoothing(args.label_smoothing, "--label-smoothing")
    if args.test_only and not args.resume:
        raise UserError("--test-only needs --resume CHECKPOINT (the weights to evaluate)")
    check_estimate(args.estimate, args.estimate_synthetic)
    if args.estimate and args.test_only:
        raise UserError("--estimate times training steps; it cannot be combined with --test-only")
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
    """Train (or with ``--test-only`` evaluate); returns the last evaluation metrics. A training run claims its
    ``--output-dir`` for as long as it runs (one run per folder, ``maxsup.training.runfolder``); an evaluation writes
    nothing there."""
    _check_args(args)
    init_distributed(args.device)  # before the claim: every rank, not only rank 0, hears a refusal
    folder = None if args.test_only or args.estimate else args.output_dir  # evaluations and estimates write nothing
    with claim_run_folder(folder, RUN_MARKERS, resume_from=args.resume, overwrite=args.overwrite,
                          resume_hint=f"--resume {Path(args.output_dir or '.') / 'checkpoint.pth'}",
                          overwrite_hint="--overwrite"):
        return run(local_checkpoints(args))  # a URL: downloaded once, then its local path


def run(args: argparse.Namespace) -> dict[str, Any]:
    dist_info = init_distributed(args.device)
    device = dist_info.device
    is_main = dist_info.rank == 0
    output_dir = Path(args.output_dir) if args.output_dir and not args.estimate else None  # --estimate writes nothing
    if output_dir and is_main and not args.test_only:
        output_dir.mkdir(parents=True, exist_ok=True)
    print(args)
    seed_everything(args.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    if args.use_deterministic_algorithms:
        torch.use_deterministic_algorithms(True)

    checkpoint = load_checkpoint(args.resume) if args.resume else None
    spec = eval_spec(args)
    if args.test_only and checkpoint.get("eval_transform"):
        spec = checkpoint["eval_transform"]  # evaluate exactly as the checkpoint's trainer did
    state = RunState(start_epoch=args.start_epoch)
    if args.test_only and checkpoint.get("train_class_counts"):
        state.train_class_counts = checkpoint["train_class_counts"]  # a long-tailed run: report the shot groups
    if args.estimate_synthetic:  # generated images at the training crop, the train split's length; no data read
        n_images, num_classes = train_split_size(args.dataset, args.classes, args.limit_per_class)
        dataset = dataset_test = SyntheticImages(n_images, args.train_crop_size or DATASETS[args.dataset].input_size,
                                                 num_classes, args.seed)
        train_sampler = torch.utils.data.DistributedSampler(dataset) if dist_info.distributed else None
        test_sampler = None
    else:
        dataset, dataset_test, train_sampler, test_sampler, num_classes = load_data(args, dist_info, spec, state)
    num_classes = args.num_classes or num_classes
    data_loader_test = torch.utils.data.DataLoader(dataset_test, batch_size=args.eval_batch_size or args.batch_size,
                                                   sampler=test_sampler, num_workers=args.workers,
                                                   pin_memory=device.type == "cuda")
    extra_val = _extra_val_loaders(args, spec, dist_info, num_classes)  # checked before anything is written
    real = None  # file names and class wnids are checked here, before any training or evaluation
    if args.real_labels:
        labels = real_labels(args.real_labels)
        real = RealScorer.from_dataset(dataset_test, labels)

    if args.test_only:
        head = checkpoint.get("arch", {}).get("num_classes")
        downsampled_val = args.dataset.startswith("imagenet")  # its val labels may not reach the last class
        if head is not None and head != num_classes and not (downsampled_val and head > num_classes):
            raise UserError(f"{args.resume} has a {head}-class head but the evaluation data has {num_classes} "
                            f"classes; evaluate it on the dataset (and --classes) it was trained on")
        check_class_order(checkpoint.get("classes"), class_names(dataset_test, num_classes), args.resume)
        model = model_from_checkpoint(checkpoint, source=args.resume).to(device)
        model = scored_logits(model, dataset_test)  # ImageNet-A/R: score only the 200 classes they contain
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        counts = state.train_class_counts
        metrics = evaluate(model, data_loader_test, device, args, real=real, train_counts=counts)
        if args.model_ema and "model_ema" in checkpoint:
            ema = model_from_checkpoint(checkpoint, key="model_ema", source=args.resume).to(device)
            ema = scored_logits(ema, dataset_test)
            metrics = {"model": metrics,
                       "model_ema": evaluate(ema, data_loader_test, device, args, " (EMA)", real, counts)}
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
    check_accum_steps(len(data_loader), args.accum_steps, images=len(data_loader.sampler), batch_size=args.batch_size)

    print(f"Creating model {args.model}")
    model_kwargs = parse_model_kwargs(args.model_kwargs)
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
    if args.estimate:  # N steps of train_one_epoch (maxsup.estimate), one JSON line, nothing written
        clock = StepClock(data_loader, args.estimate, args.accum_steps, device)
        train_one_epoch(model, criterion, optimizer, clock, device, 0, args, model_ema, scaler)
        return print_estimate(estimate_record(
            clock, trainer="common_resnet", steps_per_epoch=len(data_loader) // args.accum_steps,
            epochs=args.epochs, world_size=dist_info.world_size, device=device, model=args.model, loss=args.loss,
            total_batch_size=args.batch_size * dist_info.world_size * args.accum_steps,
            resolution=args.train_crop_size or DATASETS[args.dataset].input_size,
            data="synthetic" if args.estimate_synthetic else args.data_path or args.dataset))

    if checkpoint is not None:  # continue the same run: checked, then every state restored
        keys = [*RESUME_KEYS, *ALPHA_OPTIONS, "num_classes"]
        checkpoint = open_resume(args.resume, TRAINER, {**vars(args), "num_classes": num_classes}, keys,
                                 saved=lambda c: {**c.get("args", {}),
                                                  "num_classes": c.get("arch", {}).get("num_classes")},
                                 required=("model", "optimizer", "lr_scheduler", "criterion", "epoch"),
                                 flag=_resume_flag,
                                 recognise=lambda saved_args: "dataset" in saved_args and "lr_scheduler" in saved_args)
        check_class_order(checkpoint.get("classes"), class_names(dataset_test, num_classes), args.resume)
        load_state_dict_strict(model_without_ddp, checkpoint["model"], args.resume)
        if model_ema is not None:
            load_state_dict_strict(model_ema.module, checkpoint["model_ema"], args.resume)
            model_ema.n_averaged.copy_(checkpoint["model_ema_n_averaged"])
        # the RNG state stays: exact resume comes from the per-epoch reseeding (utils.epoch_seed)
        resumed = restore_state(checkpoint, {"optimizer": optimizer, "lr_scheduler": lr_scheduler,
                                             "criterion": criterion, "scaler": scaler}, rng=False)
        state.start_epoch, state.partial = resumed.start_epoch, resumed.partial
        print(resumed.describe(args.resume))

    log_path = output_dir / "log.txt" if output_dir else None
    if is_main and output_dir:
        atomic_write(output_dir / "args.json", json.dumps(utils.plain(vars(args)), indent=2) + "\n")
        repair_log(log_path, state.start_epoch - 1)
        dataset_name = "imagenet" if args.dataset == "imagefolder" and num_classes == 1000 else args.dataset
        write_run_record(output_dir, trainer="common_resnet", config=resolved_config(args, dist_info.world_size),
                         dataset=dataset_name, model=args.model, loss="ls" if args.label_smoothing else args.loss,
                         epochs=args.epochs, seed=args.seed, alpha=alpha_schedule_of(criterion),
                         world_size=dist_info.world_size, device=device, log_file="log.txt",
                         metric_keys={"acc1": "test_acc1", "nll": "test_nll", "ece": "test_ece"},
                         not_recipe=NOT_RECIPE)
    tb = ScalarWriter(args.tensorboard, enabled=is_main)

    print("Start training")
    start_time = time.time()
    metrics: dict[str, Any] = {}

    def checkpoint_state(epoch: int) -> dict[str, Any]:
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
        if state.train_class_counts:
            ckpt["train_class_counts"] = list(state.train_class_counts)  # --imb-ratio's long-tailed split
        names = None if args.estimate_synthetic else class_names(dataset_test, num_classes)
        if names is not None:  # index = label, as Deit/main.py and Conv/ffcv record it
            ckpt["classes"] = names
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
        for epoch in range(state.start_epoch, args.epochs):
            seed = utils.epoch_seed(args.seed, epoch, dist_info.rank)
            seed_everything(seed)
            loader_generator.manual_seed(seed)
            if train_sampler is not None:
                train_sampler.set_epoch(epoch)
            watch = Stopwatch(device)  # maxsup.timing: the loop's wall clock, without evaluation and checkpoints
            train_stats = train_one_epoch(model, criterion, optimizer, data_loader, device, epoch, args, model_ema,
                                          scaler, preemption, state.partial if epoch == state.start_epoch else None)
            if "preempted" in train_stats:  # SIGTERM/SIGUSR1: checkpoint this step boundary, then exit cleanly
                step = train_stats["preempted"]["step"]
                save({**checkpoint_state(epoch - 1), "partial": train_stats["preempted"]}, epoch, step)
                preemption.checkpointed(epoch, step, "rerun with --resume "
                                        f"{output_dir / 'checkpoint.pth' if output_dir else '<checkpoint>'}")
                return metrics
            resumed = (state.partial or {}).get("seen", 0) * dist_info.world_size if epoch == state.start_epoch else 0
            timing = train_timing(train_stats["samples"] - resumed, watch.seconds())
            lr_scheduler.step()
            watch = Stopwatch(device)
            metrics = evaluate(model, data_loader_test, device, args, real=real, train_counts=state.train_class_counts)
            criterion.on_eval(metrics["acc1"])  # Adaptive LS: the best checkpoint so far becomes its teacher
            record = {"epoch": epoch, **{f"train_{k}": v for k, v in train_stats.items()},
                      **{f"test_{k}": v for k, v in metrics.items()}}
            for name, loader in extra_val.items():  # e.g. ImageNetV2 beside ImageNet val
                net = scored_logits(model, loader.dataset)
                record.update({f"{name}_{k}": v for k, v in evaluate(net, loader, device, args, f" ({name})").items()})
            if model_ema is not None:
                ema_metrics = evaluate(model_ema, data_loader_test, device, args, log_suffix=" (EMA)", real=real,
                                       train_counts=state.train_class_counts)
                record.update({f"test_ema_{k}": v for k, v in ema_metrics.items()})
            record.update(timing, eval_seconds=watch.seconds())
            tb.log(record, epoch)
            ckpt = checkpoint_state(epoch)
            if args.save_every_epoch:
                save(ckpt, epoch, len(data_loader), f"model_{epoch}.pth")
            save(ckpt, epoch, len(data_loader))
            if is_main and output_dir:
                append_log(log_path, record)  # after the checkpoint: a resumed run re-logs what it repeats
            if preemption.stop_after_epoch(epoch, args.epochs, device):
                break

    tb.close()
    total = str(datetime.timedelta(seconds=int(time.time() - start_time)))
    print(f"Training time {total}")
    return metrics


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = ArgumentParser(description="MaxSup-repo image classification training (torchvision references idiom)",
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
    parser.add_argument("--classes", default=None, type=parse_classes,
                        help="fmnist only: keep these classes (comma list, e.g. 0,2,4,6,8), relabelled 0..n-1")
    parser.add_argument("--limit-per-class", default=None, type=positive_int,
                        help="fmnist only: first N images per class in both splits (quick runs)")
    parser.add_argument("--num-classes", default=None, type=positive_int,
                        help="classifier size (default: from the dataset)")
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
    parser.add_argument("--skip-corrupt", action="store_true",
                        help="--dataset imagefolder: skip empty, truncated or non-image files (counted) and read the "
                             "next training image in place of one that fails to decode mid-epoch (logged by name)")
    parser.add_argument("--accum-steps", default=1, type=int,
                        help="gradient accumulation: one optimizer step per N batches; global batch = b × nproc × N")
    parser.add_argument("--eval-batch-size", default=None, type=positive_int,
                        help="evaluation batch (default: --batch-size)")
    parser.add_argument("--drop-last", action="store_true", help="drop the last incomplete training batch")
    parser.add_argument("--opt", default="sgd", type=str, help="optimizer: sgd, sgd_nesterov or adamw")
    parser.add_argument("--lr", default=0.1, type=non_negative_float, help="initial learning rate")
    parser.add_argument("--momentum", default=0.9, type=non_negative_float, help="SGD momentum")
    parser.add_argument("--wd", "--weight-decay", default=1e-4, type=non_negative_float, dest="weight_decay",
                        help="weight decay")
    parser.add_argument("--norm-weight-decay", default=None, type=non_negative_float,
                        help="weight decay of normalisation layers (default: same as --wd)")
    parser.add_argument("--bias-weight-decay", default=None, type=non_negative_float,
                        help="weight decay of biases (default: same as --wd)")
    parser.add_argument("--clip-grad-norm", default=None, type=positive_float, help="max gradient norm (default: off)")
    parser.add_argument("--lr-scheduler", default="steplr", type=str,
                        help="steplr, multisteplr or cosineannealinglr (stepped once per epoch)")
    parser.add_argument("--lr-step-size", default=30, type=positive_int, help="steplr: decay every N epochs")
    parser.add_argument("--lr-milestones", default=[60, 120, 160], type=non_negative_int, nargs="+",
                        help="multisteplr: epochs at which the lr is multiplied by --lr-gamma")
    parser.add_argument("--lr-gamma", default=0.1, type=non_negative_float, help="steplr/multisteplr decay factor")
    parser.add_argument("--lr-min", default=0.0, type=non_negative_float, help="cosineannealinglr: final lr")
    parser.add_argument("--lr-warmup-epochs", default=0, type=non_negative_int, help="warm-up epochs")
    parser.add_argument("--lr-warmup-method", default="linear", choices=["linear", "constant"], help="warm-up shape")
    parser.add_argument("--lr-warmup-decay", default=0.01, type=probability, help="warm-up starts at lr × this")
    # augmentation
    parser.add_argument("--train-crop-size", default=None, type=positive_int, help="train crop (default: native size)")
    parser.add_argument("--val-resize-size", default=None, type=positive_int,
                        help="eval resize (default: crop×256/224 for imagefolder, = crop otherwise)")
    parser.add_argument("--val-crop-size", default=None, type=positive_int,
                        help="eval center crop (default: native size)")
    parser.add_argument("--interpolation", default="bilinear", type=str, help="resize interpolation")
    parser.add_argument("--hflip-prob", default=0.5, type=probability, help="horizontal-flip probability")
    parser.add_argument("--auto-augment", default=None, choices=presets.AUTO_AUGMENT_POLICIES,
                        help="auto-augment policy (default: none)")
    parser.add_argument("--random-erase", default=0.0, type=probability, help="random-erasing probability")
    parser.add_argument("--train-transform", default="standard", choices=["standard", "eval"],
                        help="eval: train on the evaluation preprocessing, without augmentation (checks, probes)")
    parser.add_argument("--mixup-alpha", default=0.0, type=non_negative_float, help="MixUp α (0 = off)")
    parser.add_argument("--cutmix-alpha", default=0.0, type=non_negative_float, help="CutMix α (0 = off)")
    parser.add_argument("--ra-sampler", action="store_true", help="repeated-augmentation sampler (DDP only)")
    parser.add_argument("--ra-reps", default=3, type=positive_int, help="repetitions per image for --ra-sampler")
    # EMA, AMP, runtime
    parser.add_argument("--model-ema", action="store_true", help="keep and evaluate an EMA of the weights")
    parser.add_argument("--model-ema-steps", default=32, type=positive_int, help="iterations between EMA updates")
    parser.add_argument("--model-ema-decay", default=0.99998, type=probability, help="EMA decay per image at batch 1")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--amp", action="store_true", help="autocast: bfloat16 on CPU, float16 + GradScaler on CUDA")
    parser.add_argument("--device", default=None, type=str, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("-j", "--workers", default=4, type=non_negative_int, help="data-loading workers per process")
    parser.add_argument("--seed", default=0, type=int, help="random seed (a CPU run is reproducible bit for bit)")
    add_run_args(parser)
    add_estimate_args(parser)
    parser.add_argument("--use-deterministic-algorithms", action="store_true",
                        help="torch.use_deterministic_algorithms(True) (needed for bitwise-reproducible CUDA runs)")
    parser.add_argument("--print-freq", default=100, type=positive_int, help="print every N steps")
    parser.add_argument("--output-dir", default=".", type=str, help="where checkpoint.pth, log.txt, args.json go")
    parser.add_argument("--save-every-epoch", action="store_true", help="also keep model_{epoch}.pth")
    parser.add_argument("--resume", default="", type=str, help="checkpoint to resume from (or evaluate): a path, or "
                        "an http(s) URL downloaded once into torch.hub's cache")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run in an --output-dir that holds one (run.json or checkpoint.pth); without "
                             "it such a run is refused")
    parser.add_argument("--finetune", default="", type=str,
                        help="initialise from this checkpoint's backbone (ours, or a released one converted by "
                             "maxsup.hub convert); the head is replaced when the class count differs")
    parser.add_argument("--start-epoch", default=0, type=non_negative_int, help="first epoch (overridden by --resume)")
    parser.add_argument("--test-only", action="store_true", help="only evaluate --resume: acc@1, acc@5, NLL, ECE")
    return parser


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
    return run_seeds(seeds, lambda seed: main(seeded_args(args, seed, "seed", SEED_FOLDERS, clear=("seeds",))),
                     args.output_dir, "--resume")


if __name__ == "__main__":
    run_cli(cli)
