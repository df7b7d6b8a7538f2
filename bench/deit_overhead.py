"""Overhead of Deit/engine.train_one_epoch (MaxSup loss, penalty logging, α schedule) over a bare training loop.

Both loops train the same tiny ViT on the same pre-loaded Fashion-MNIST batches in one process, in back-to-back pairs
(order alternating); the median of the paired ratios is robust to other load on the machine. Goal: ratio ≥ 0.95.
Prints one JSON line: {"name": "deit_overhead", "ratio": engine images/s ÷ bare images/s, ...}.
"""

from __future__ import annotations

import argparse
import json
import time

import timm
import torch
import torch.nn.functional as F
from _trainers import trainer_module

from maxsup import build_criterion
from maxsup.data.fashion_mnist import FMNIST_MEAN, FMNIST_STD, FashionMNIST

train_one_epoch = trainer_module("Deit", "engine").train_one_epoch


def batches(n_steps: int, batch_size: int, img_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    ds = FashionMNIST(train=True, classes=[0, 2, 4, 6, 8], limit_per_class=(n_steps * batch_size) // 5 + 1)
    x = torch.from_numpy(ds.data[: n_steps * batch_size]).float().div(255).sub(FMNIST_MEAN).div(FMNIST_STD)
    x = F.interpolate(x[:, None], size=img_size, mode="bilinear").expand(-1, 3, -1, -1).contiguous()
    y = torch.tensor(ds.targets[: n_steps * batch_size])
    return list(zip(x.split(batch_size), y.split(batch_size), strict=True))


def bare_epoch(model, optimizer, data) -> None:
    model.train()
    for x, y in data:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8, help="steps per trial (default: 8)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default: 32)")
    p.add_argument("--img-size", type=int, default=32, help="input size (default: 32, patch 4 → 64 tokens)")
    p.add_argument("--depth", type=int, default=4, help="ViT-Tiny depth (default: 4)")
    p.add_argument("--trials", type=int, default=5, help="alternating trials per loop (default: 5)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = batches(args.steps, args.batch_size, args.img_size)
    # one model and optimizer for both loops: the two differ only in what the engine adds per step
    model = timm.create_model("vit_tiny_patch16_224", num_classes=5, img_size=args.img_size, patch_size=4,
                              depth=args.depth)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    criterion = build_criterion("maxsup", 5, epochs=args.trials)
    cpu = torch.device("cpu")
    bare_epoch(model, optimizer, data[:2])  # warm-up both
    train_one_epoch(model, criterion, data[:2], optimizer, cpu, 0, print_freq=0)
    times: dict[str, list[float]] = {"bare": [], "engine": []}
    for trial in range(args.trials):
        for name in ("bare", "engine") if trial % 2 == 0 else ("engine", "bare"):
            t0 = time.perf_counter()
            if name == "bare":
                bare_epoch(model, optimizer, data)
            else:
                train_one_epoch(model, criterion, data, optimizer, cpu, trial, print_freq=0)
            times[name].append(time.perf_counter() - t0)
    images = args.steps * args.batch_size
    # paired trials ran back to back, so their ratio cancels slow drifts in machine load; report the median
    ratios = sorted(b / e for b, e in zip(times["bare"], times["engine"], strict=True))
    print(json.dumps({"name": "deit_overhead", "ratio": round(ratios[len(ratios) // 2], 4), "goal": 0.95,
                      "engine_images_per_s": round(images / min(times["engine"]), 1),
                      "bare_images_per_s": round(images / min(times["bare"]), 1),
                      "trial_ratios": [round(r, 3) for r in ratios], "steps": args.steps,
                      "batch_size": args.batch_size,
                      "model": f"vit_tiny depth {args.depth} @ {args.img_size}px patch 4"}))


if __name__ == "__main__":
    main()
