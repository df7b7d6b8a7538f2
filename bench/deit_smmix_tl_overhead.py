"""Training throughput of SMMix and Token Labeling relative to plain Mixup/CutMix, DeiT-Tiny at 224 px, MaxSup loss.

All three run ``Deit/engine.train_one_epoch`` on the same pre-loaded random batches in one process, in rotating
order, and the median of the per-round ratios is reported (robust to other load on the machine):

* ``mixup_cutmix``: timm ``Mixup`` (α 0.8 / CutMix 1.0, switch 0.5), ``deit_tiny_patch16_224``;
* ``smmix``: the same model with the token head, ``Deit/smmix.py`` (half of the batches pay one extra no-grad forward);
* ``token_labeling``: MixToken + dense targets built from (2, 5, 14, 14) label maps (``roi_align`` crop, per step).

Prints one JSON line: {"name": "deit_smmix_tl_overhead", "smmix_ratio": smmix images/s ÷ mixup_cutmix images/s,
"token_labeling_ratio": ..., ...}. The data loading side of Token Labeling (reading one small .pt per image) is not
included.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _trainers import trainer_module
from timm.data import Mixup

from maxsup import build_criterion
from maxsup.models import create_model

train_one_epoch = trainer_module("Deit", "engine").train_one_epoch
_smmix = trainer_module("Deit", "smmix")
SMMix, SMMixStep = _smmix.SMMix, _smmix.SMMixStep
TokenLabelStep = trainer_module("Deit", "token_labeling").TokenLabelStep


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="steps per trial (default: 10; 3 were too few on a CPU)")
    p.add_argument("--batch-size", type=int, default=16, help="batch size (default: 16)")
    p.add_argument("--img-size", type=int, default=224, help="input size (default: 224)")
    p.add_argument("--rounds", type=int, default=5, help="rounds, each running all three modes (default: 5)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    k, b, n = 1000, args.batch_size, args.steps
    side = args.img_size // 16
    images = [torch.randn(b, 3, args.img_size, args.img_size) for _ in range(n)]
    labels = [torch.randint(0, k, (b,)) for _ in range(n)]
    maps = [torch.stack([torch.randn(b, 5, side, side) * 5, torch.randint(0, k, (b, 5, side, side)).float()], 1)
            .half() for _ in range(n)]
    boxes = torch.tensor([[0.1, 0.2, 0.8, 0.9]]).expand(b, 4)
    tl_data = [(x, (y, m, boxes, torch.rand(b) < 0.5)) for x, y, m in zip(images, labels, maps, strict=True)]
    plain_data = list(zip(images, labels, strict=True))

    runs = {}
    for name, head in (("mixup_cutmix", None), ("smmix", "smmix"), ("token_labeling", "mixtoken")):
        kw = {"token_head": head} if head else {}
        model = create_model("deit_tiny_patch16_224", k, img_size=args.img_size, drop_path_rate=0.1, **kw).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        crit = build_criterion("maxsup", k, epochs=args.rounds).to(device)
        mix = step = None
        data = plain_data
        if name == "mixup_cutmix":
            mix = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, num_classes=k)
        elif name == "smmix":
            step = SMMixStep(SMMix(side, k, mixup_alpha=0.8))
        else:
            step, data = TokenLabelStep(k, side), tl_data
        runs[name] = (model, opt, crit, mix, step, data)

    def run(name: str, epoch: int) -> float:
        model, opt, crit, mix, step, data = runs[name]
        t0 = time.perf_counter()
        train_one_epoch(model, crit, data, opt, device, epoch, mixup_fn=mix, print_freq=0, train_step=step)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for name in runs:  # warm-up
        run(name, 0)
    times: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs)
    for r in range(args.rounds):
        for name in order[r % 3:] + order[: r % 3]:
            times[name].append(run(name, r))

    def median_ratio(name: str) -> float:
        ratios = sorted(base / t for base, t in zip(times["mixup_cutmix"], times[name], strict=True))
        return round(ratios[len(ratios) // 2], 4)

    images_per_round = n * b
    print(json.dumps({
        "name": "deit_smmix_tl_overhead", "smmix_ratio": median_ratio("smmix"),
        "token_labeling_ratio": median_ratio("token_labeling"),
        "round_ratios": {name: [round(b_ / t, 3) for b_, t in zip(times["mixup_cutmix"], times[name], strict=True)]
                         for name in ("smmix", "token_labeling")},
        **{f"{k_}_images_per_s": round(images_per_round / min(v), 2) for k_, v in times.items()},
        "steps": n, "batch_size": b, "rounds": args.rounds, "threads": args.threads, "device": str(device),
        "model": f"deit_tiny_patch16_224 @ {args.img_size}px",
    }))


if __name__ == "__main__":
    main()
