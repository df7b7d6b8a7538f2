"""Train and eval loops for the DeiT trainer (DeiT's ``engine.py`` split), device-agnostic.

MaxSup sits where the paper puts it: the criterion built by ``maxsup.build_criterion`` is called on the model
output inside the autocast block of ``train_one_epoch`` (Paper Eq. 8 / Algorithm 1: CE + α·(z_max − mean z)).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from maxsup import ClassificationMeter
from maxsup.data.imagenet_variants import RealScorer
from maxsup.losses import PenaltyStatsMeter, compute_loss
from maxsup.models import unwrap_model
from maxsup.training import Preemption, all_reduce_sum, kill_point, rng_state, skip_done_batches, step_guard

__all__ = ["train_one_epoch", "evaluate"]


def train_one_epoch(model: nn.Module, criterion: nn.Module, data_loader: Iterable, optimizer: torch.optim.Optimizer,
                    device: torch.device, epoch: int, scaler: torch.amp.GradScaler | None = None,
                    max_norm: float | None = None, model_ema: nn.Module | None = None,
                    mixup_fn: Callable | None = None, target_fn: Callable | None = None,
                    amp_dtype: torch.dtype | None = None, print_freq: int = 50,
                    set_training_mode: bool = True, accum_steps: int = 1, stats_every: int = 10,
                    train_step: Callable | None = None, preemption: Preemption | None = None,
                    partial: dict[str, Any] | None = None) -> dict[str, Any]:
    """One epoch. Returns means over the training samples of all ranks: ``loss`` (every step), the
    ``maxsup.losses.PENALTY_KEYS`` (the steps measured every ``stats_every``), plus ``lr``, ``alpha`` (None for
    losses without α) and ``samples`` (total over ranks) / ``samples_rank`` (this rank).

    Args:
        data_loader: yields (images (B, 3, H, W), labels (B,)).
        mixup_fn: timm ``Mixup`` (soft (B, K) targets); ``target_fn``: hard → smoothed targets without Mixup.
        amp_dtype: autocast dtype (fp16 on CUDA with ``scaler``, optionally bf16 on CPU) or None for fp32.
        accum_steps: one optimizer step per this many batches (gradient accumulation: the global batch of the
            paper on fewer devices); the last ``len(data_loader) % accum_steps`` batches of the epoch are skipped,
            so every step sees the full global batch.
        stats_every: the penalty statistics are measured every N steps, accumulated on the device.
        train_step: SMMix / Token Labeling (``Deit/smmix.py``, ``Deit/token_labeling.py``): ``(model, images,
            targets, criterion) → (loss, cls_logits, soft_targets)`` replaces the forward and the loss.
        preemption: when its signal arrived (on any rank, shared by ``step_guard``), the epoch stops at the end of
            the current accumulation group and returns ``{"preempted": {"step": i, ...}}`` (running sums, RNG state)
            for a mid-epoch checkpoint.
        partial: that entry, from a checkpoint: the first ``step`` batches are drawn but not trained on, and the RNG
            state of that moment is restored, so the epoch continues as if never interrupted.
    """
    model.train(set_training_mode)
    criterion.train()
    criterion.set_epoch(epoch)  # α schedule (paper App. F): one value per epoch, as in the authors' DeiT code
    partial = partial or {}
    sums = torch.tensor([partial.get("loss_sum", 0.0)], dtype=torch.float64)
    penalties = PenaltyStatsMeter(stats_every)
    if "penalties" in partial:
        penalties.load_state_dict(partial["penalties"], device)
    seen = partial.get("seen", 0)
    n_steps = len(data_loader) if hasattr(data_loader, "__len__") else -1
    start = time.time()
    usable = n_steps - n_steps % accum_steps if n_steps >= 0 else -1
    batches, first = skip_done_batches(data_loader, partial)  # a preempted epoch: the batches already trained on
    for step, (samples, targets) in enumerate(batches, start=first):
        if step == usable:
            break
        kill_point("step")
        last_micro = (step + 1) % accum_steps == 0
        samples = samples.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True) if isinstance(targets, Tensor) else targets
        if mixup_fn is not None:
            samples, targets = mixup_fn(samples, targets)
        elif target_fn is not None:
            targets = target_fn(targets)

        # DDP all-reduces the gradients only on the last batch of an accumulation group
        no_sync = model.no_sync() if not last_micro and hasattr(model, "no_sync") else contextlib.nullcontext()
        if step % accum_steps == 0:
            optimizer.zero_grad(set_to_none=True)
        with no_sync:
            with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32,
                                enabled=amp_dtype is not None):
                if train_step is not None:  # SMMix / Token Labeling: MaxSup acts on the CLS logits inside
                    loss, outputs, targets = train_step(model, samples, targets, criterion)
                else:
                    # MaxSup: CE + α·(z_max − mean z), Paper Eq. 8 (compute_loss also feeds Zipf-dense / Adaptive LS)
                    outputs, loss = compute_loss(model, criterion, samples, targets)

            # NaN/inf on any rank: all stop; a preemption signal on any rank: all stop after the same step
            stop = step_guard(loss, epoch, step, stop_requested=preemption is not None and preemption.requested,
                              lr_flag="--lr", clip_flag="--clip-grad")
            loss_value = loss.item()
            scaled = loss / accum_steps
            (scaler.scale(scaled) if scaler is not None else scaled).backward()

        if last_micro:
            if scaler is not None:
                if max_norm:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                scaler.step(optimizer)
                scaler.update()
            else:
                if max_norm:
                    nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                optimizer.step()
            if model_ema is not None:
                model_ema.update(unwrap_model(model))  # the network inside DDP / torch.compile

        b = samples.shape[0]
        penalties.update(step, outputs, targets)
        sums += loss_value * b
        seen += b
        if print_freq and step % print_freq == 0:
            print(f"Epoch: [{epoch}] [{step}/{n_steps}] loss {loss_value:.4f} lr {optimizer.param_groups[0]['lr']:.3e} "
                  f"({time.time() - start:.1f}s)", flush=True)
        # a preemption stops at the end of an accumulation group, so no half-accumulated gradient is lost
        if stop and last_micro and step + 1 != usable:
            return {"preempted": {"step": step + 1, "loss_sum": sums.item(), "seen": seen, "rng": rng_state(),
                                  "penalties": penalties.state_dict()}}

    criterion.on_epoch_end()  # OLS refreshes its soft labels here (all-reduced under DDP)
    totals = all_reduce_sum(torch.cat([sums, torch.tensor([float(seen)], dtype=torch.float64)]))
    n = max(totals[-1].item(), 1.0)
    means = (totals[:-1] / n).tolist()
    out: dict[str, float] = {"loss": means[0], **penalties.compute()}
    alpha = getattr(criterion, "alpha", None)
    out.update(lr=optimizer.param_groups[0]["lr"], alpha=alpha, samples=int(totals[-1].item()), samples_rank=seen)
    return out


@torch.no_grad()
def evaluate(data_loader: DataLoader, model: nn.Module, device: torch.device, amp_dtype: torch.dtype | None = None,
             gather: bool = False, real: RealScorer | None = None) -> dict[str, float]:
    """acc1/acc5 (%), NLL (nats) and whole-dataset ECE (15 bins, ``maxsup.ClassificationMeter``).

    ``gather=True`` sums the statistics over ranks (each rank evaluated a disjoint shard); ``n`` is the number of
    images the metrics cover. ``real`` (the loader's dataset's ``RealScorer``) adds ReaL top-1 ``real_acc1`` over
    ``n_real`` images: the top-1 predictions are matched to file names in the order of the loader's sampler, which
    must be deterministic (sequential, or ``ShardSampler``'s rank shard), and the counts are summed like the rest.
    """
    model.eval()
    meter = ClassificationMeter(n_bins=15)
    preds = []
    for images, target in data_loader:
        images = images.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            output = model(images)
        logits: Tensor = output[0] if isinstance(output, (tuple, list)) else output
        meter.update(logits.float(), target)
        if real is not None:
            preds.append(logits.argmax(1).cpu())
    if gather:
        meter.all_reduce()
    stats = meter.compute()
    line = (f"* Acc@1 {stats['acc1']:.3f} Acc@5 {stats['acc5']:.3f} NLL {stats['nll']:.4f} ECE {stats['ece']:.4f} "
            f"(n={stats['n']})")
    if real is not None:
        preds_all = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
        counts = torch.tensor(real.counts(preds_all, data_loader.sampler), dtype=torch.float64)
        if gather:
            all_reduce_sum(counts)
        stats.update(RealScorer.result(*counts.tolist()))
        line += f" ReaL@1 {stats['real_acc1']:.3f} (n={stats['n_real']})"
    print(line, file=sys.stdout, flush=True)
    return stats
