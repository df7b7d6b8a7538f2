"""Cost of MaxSup over plain CE, measured side by side in one process (paper Table 16 analogue).

1. One full training step (forward + backward + SGD step) of a small CIFAR-style ResNet, MaxSup vs CE, alternating
   the two so that machine noise hits both equally; median of the per-round paired ratios.
2. The loss op alone (forward + backward of the loss on given logits) at B = 1024, K = 1000: MaxSup and LS (each
   one fused op, ``maxsup.losses.functional._SmoothedCrossEntropy``) against CE, in alternating order; median of
   paired ratios.

Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from maxsup import build_criterion
from maxsup.models import create_model


def _time(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=80, help="alternating rounds per measurement")
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()
    torch.manual_seed(0)
    model = create_model("cifar_resnet18", 100, width=16)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(args.batch_size, 3, 32, 32), torch.randint(0, 100, (args.batch_size,))
    crits = {n: build_criterion(n, 100, epochs=10) for n in ("ce", "maxsup")}

    def step(name: str):
        loss = crits[name](model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for name in crits:  # warm-up
        step(name)
    times = {n: [] for n in crits}
    paired = []
    for r in range(args.rounds):
        order = ("ce", "maxsup") if r % 2 == 0 else ("maxsup", "ce")  # alternate who goes first
        for n in order:
            times[n] += _time(lambda n=n: step(n), 1)
        paired.append(times["maxsup"][-1] / times["ce"][-1])
    # median of per-round paired ratios: load drift on a shared machine hits both halves of a pair alike
    step_ratio = statistics.median(paired)

    logits = torch.randn(1024, 1000, requires_grad=True)
    yy = torch.randint(0, 1000, (1024,))

    op_crits = {n: build_criterion(n, 1000, epochs=10) for n in ("ce", "ls", "maxsup")}

    def op(name: str):
        op_crits[name](logits, yy).backward()

    for name in op_crits:  # warm-up
        op(name)
    op_times = {n: [] for n in op_crits}
    op_paired: dict[str, list[float]] = {"ls": [], "maxsup": []}
    for r in range(args.rounds * 4):
        for other in ("ls", "maxsup"):
            order = ("ce", other) if r % 2 == 0 else (other, "ce")  # alternate who goes first
            pair = {n: _time(lambda n=n: op(n), 1)[0] for n in order}
            op_times["ce"].append(pair["ce"])
            op_times[other].append(pair[other])
            op_paired[other].append(pair[other] / pair["ce"])
    op_ratio = statistics.median(op_paired["maxsup"])
    ls_op_ratio = statistics.median(op_paired["ls"])
    print(f"train step  ce {statistics.median(times['ce']) * 1e3:.1f} ms  maxsup "
          f"{statistics.median(times['maxsup']) * 1e3:.1f} ms  ratio {step_ratio:.3f}")
    print(f"loss op     ce {statistics.median(op_times['ce']) * 1e3:.2f} ms  maxsup "
          f"{statistics.median(op_times['maxsup']) * 1e3:.2f} ms  ratio {op_ratio:.3f}  ls "
          f"{statistics.median(op_times['ls']) * 1e3:.2f} ms  ratio {ls_op_ratio:.3f}")
    print(json.dumps({"name": "loss_overhead", "ratio": round(step_ratio, 4), "train_step_ratio": round(step_ratio, 4),
                      "loss_op_ratio": round(op_ratio, 4), "ls_loss_op_ratio": round(ls_op_ratio, 4),
                      "goal": "train_step_ratio <= 1.02, loss_op_ratio <= 1.3",
                      "train_step_ms": {n: round(statistics.median(t) * 1e3, 2) for n, t in times.items()},
                      "loss_op_ms": {n: round(statistics.median(t) * 1e3, 3) for n, t in op_times.items()}}))


if __name__ == "__main__":
    main()
