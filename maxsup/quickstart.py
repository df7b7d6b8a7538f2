"""A one-minute real run: a small CIFAR-style ResNet trained with MaxSup on Fashion-MNIST, then its test metrics.

``python -m maxsup.quickstart [--epochs 1] [--loss maxsup]`` — no GPU, no download (Debian's dataset-fashion-mnist).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.data import DataLoader
from torchvision import transforms as T

from . import ClassificationMeter, build_criterion, class_separation, penalty_stats
from .cli import run_cli
from .data.fashion_mnist import FMNIST_MEAN, FMNIST_STD, FashionMNIST
from .models import create_model, features_and_logits


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loss", default="maxsup", help="criterion name (see maxsup.CRITERIA)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--train-per-class", type=int, default=1000, help="training images per class")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    tf = T.Compose([T.ToTensor(), T.Normalize([FMNIST_MEAN], [FMNIST_STD])])
    train = FashionMNIST(train=True, transform=tf, limit_per_class=args.train_per_class)
    test = FashionMNIST(train=False, transform=tf)
    model = create_model("cifar_resnet10", 10, width=16, in_chans=1)
    criterion = build_criterion(args.loss, 10, epochs=args.epochs)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loader = DataLoader(train, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(args.seed))
    start = time.time()
    for epoch in range(args.epochs):
        criterion.set_epoch(epoch)
        model.train()
        for step, (x, y) in enumerate(loader):
            out = model(x)
            loss = criterion(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % 20 == 0:
                s = penalty_stats(out, y)
                print(f"epoch {epoch} step {step}/{len(loader)} loss {loss.item():.3f} "
                      f"alpha {getattr(criterion, 'alpha', 0.0):.3f} maxsup_penalty {s['maxsup_penalty']:.3f}")
        criterion.on_epoch_end()
    model.eval()
    meter, feats, labels = ClassificationMeter(10), [], []
    with torch.no_grad():
        for x, y in DataLoader(test, batch_size=500):
            f, logits = features_and_logits(model, x)
            meter.update(logits, y)
            feats.append(f)
            labels.append(y)
    result = {**meter.compute(), **class_separation(torch.cat(feats), torch.cat(labels)),
              "loss": args.loss, "seconds": round(time.time() - start, 1)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_cli(main)
