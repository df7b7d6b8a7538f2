"""Classification metrics: top-k accuracy, NLL and whole-dataset ECE as streaming accumulators."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .training.distributed import all_reduce_sum

__all__ = ["topk_accuracy", "ECEAccumulator", "expected_calibration_error", "reliability_bins", "ClassificationMeter",
           "shot_accuracy", "shot_accuracy_from_class_counts", "format_shot_accuracy"]


def topk_accuracy(logits: Tensor, target: Tensor, topk: tuple[int, ...] = (1, 5)) -> list[float]:
    """Top-k accuracy in percent for each k (k is capped at K).

    Args:
        logits: (B, K) scores. target: (B,) class indices.
    """
    if logits.shape[0] != target.shape[0]:
        raise ValueError(f"logits have {logits.shape[0]} rows but target has {target.shape[0]}")
    if logits.shape[0] == 0:
        return [0.0 for _ in topk]
    maxk = min(max(topk), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    hit = pred == target[:, None]
    return [hit[:, : min(k, maxk)].any(1).double().mean().item() * 100.0 for k in topk]


def _confidences(scores: Tensor, from_logits: bool) -> tuple[Tensor, Tensor]:
    probs = F.softmax(scores.double(), dim=1) if from_logits else scores.double()
    conf, pred = probs.max(dim=1)
    return conf, pred


class ECEAccumulator:
    """Expected calibration error over a whole dataset, accumulated batch by batch.

    Equal-width bins over the top-1 confidence; bin m covers (m/M, (m+1)/M] (confidence 0 falls in bin 0).
    ECE = Σ_m |Σ_{i∈B_m} correct_i − Σ_{i∈B_m} conf_i| / N, the L1 calibration error of torchmetrics' default
    (15 bins) — computed once over all samples, not averaged per batch as the authors' DeiT code did.
    """

    def __init__(self, n_bins: int = 15):
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        self.n_bins = n_bins
        self.count = torch.zeros(n_bins, dtype=torch.float64)
        self.conf_sum = torch.zeros(n_bins, dtype=torch.float64)
        self.correct_sum = torch.zeros(n_bins, dtype=torch.float64)

    def update(self, scores: Tensor, target: Tensor, from_logits: bool = True) -> None:
        """scores: (B, K) logits (or probabilities with ``from_logits=False``); target: (B,) indices."""
        conf, pred = _confidences(scores.detach().cpu(), from_logits)
        correct = (pred == target.detach().cpu()).double()
        idx = (torch.ceil(conf * self.n_bins).long() - 1).clamp(0, self.n_bins - 1)
        self.count.index_add_(0, idx, torch.ones_like(conf))
        self.conf_sum.index_add_(0, idx, conf)
        self.correct_sum.index_add_(0, idx, correct)

    def all_reduce(self) -> ECEAccumulator:
        for t in (self.count, self.conf_sum, self.correct_sum):
            all_reduce_sum(t)
        return self

    def compute(self) -> float:
        n = self.count.sum()
        if n == 0:
            return float("nan")
        return float((self.correct_sum - self.conf_sum).abs().sum() / n)

    def bins(self) -> dict[str, list[float]]:
        """Reliability-diagram data per bin: edges, count, mean confidence, accuracy (NaN for empty bins)."""
        safe = self.count.clamp_min(1)
        empty = self.count == 0
        conf = torch.where(empty, torch.full_like(safe, float("nan")), self.conf_sum / safe)
        acc = torch.where(empty, torch.full_like(safe, float("nan")), self.correct_sum / safe)
        edges = torch.linspace(0, 1, self.n_bins + 1, dtype=torch.float64)
        return {"edges": edges.tolist(), "count": self.count.tolist(), "confidence": conf.tolist(),
                "accuracy": acc.tolist()}


def expected_calibration_error(scores: Tensor, labels: Tensor, n_bins: int = 15, from_logits: bool = True) -> float:
    """Whole-dataset ECE (see :class:`ECEAccumulator`). scores: (N, K) logits or probabilities; labels: (N,)."""
    if scores.shape[0] != labels.shape[0]:
        raise ValueError(f"scores have {scores.shape[0]} rows but labels have {labels.shape[0]}")
    acc = ECEAccumulator(n_bins)
    acc.update(scores, labels, from_logits)
    return acc.compute()


def reliability_bins(scores: Tensor, labels: Tensor, n_bins: int = 15, from_logits: bool = True) -> dict:
    """Per-bin counts, mean confidence and accuracy for a reliability diagram."""
    acc = ECEAccumulator(n_bins)
    acc.update(scores, labels, from_logits)
    return acc.bins()


class ClassificationMeter:
    """Streaming acc@1, acc@5 (percent), NLL (nats/sample) and ECE for an evaluation pass; DDP-aware."""

    def __init__(self, num_classes: int | None = None, n_bins: int = 15):
        self.num_classes = num_classes
        self.ece = ECEAccumulator(n_bins)
        self.totals = torch.zeros(4, dtype=torch.float64)  # n, correct@1, correct@5, nll sum

    @torch.no_grad()
    def update(self, logits: Tensor, target: Tensor) -> None:
        """logits: (B, K); target: (B,) class indices."""
        if logits.dim() != 2 or target.dim() != 1 or logits.shape[0] != target.shape[0]:
            raise ValueError(f"expected logits (B, K) and target (B,), got {tuple(logits.shape)} and "
                             f"{tuple(target.shape)}")
        if self.num_classes is not None and logits.shape[1] != self.num_classes:
            raise ValueError(f"logits have {logits.shape[1]} classes, expected {self.num_classes}")
        logits, target = logits.detach().float().cpu(), target.detach().cpu()
        b = logits.shape[0]
        a1, a5 = topk_accuracy(logits, target, (1, 5))
        nll = F.cross_entropy(logits.double(), target, reduction="sum").item()
        self.totals += torch.tensor([b, a1 * b / 100.0, a5 * b / 100.0, nll], dtype=torch.float64)
        self.ece.update(logits, target)

    def all_reduce(self) -> ClassificationMeter:
        all_reduce_sum(self.totals)
        self.ece.all_reduce()
        return self

    def compute(self) -> dict[str, float]:
        n, c1, c5, nll = self.totals.tolist()
        if n == 0:
            return {"acc1": float("nan"), "acc5": float("nan"), "nll": float("nan"), "ece": float("nan"), "n": 0}
        return {"acc1": 100.0 * c1 / n, "acc5": 100.0 * c5 / n, "nll": nll / n, "ece": self.ece.compute(),
                "n": int(n)}


def shot_accuracy(preds: Tensor, targets: Tensor, train_counts: list[int] | Tensor, many: int = 100,
                  few: int = 20) -> dict[str, float | None]:
    """Overall, many-, medium- and few-shot top-1 accuracy (percent) of a long-tailed classifier (paper Table 7).

    Classes are grouped by their number of *training* images: many-shot > ``many``, few-shot < ``few``, medium-shot
    in between (the thresholds of Liu et al. 2019 and Tang et al. 2020). A group's accuracy is taken over its test
    samples. A group with no classes (or no test samples) is ``None``, never 0.0: the paper prints "0.0" for an empty
    few-shot group (CIFAR-10 at ratio 100 keeps ≥ 50 images per class), which reads as a measured failure.

    Args:
        preds: (N,) predicted class indices (or (N, K) scores, reduced by argmax). targets: (N,) class indices.
        train_counts: (K,) training images per class.
    """
    preds, targets = torch.as_tensor(preds).cpu(), torch.as_tensor(targets).cpu().long()
    if preds.dim() == 2:
        preds = preds.argmax(1)
    if preds.shape != targets.shape:
        raise ValueError(f"preds {tuple(preds.shape)} and targets {tuple(targets.shape)} differ in shape")
    k = len(train_counts)
    if targets.numel() and int(targets.max()) >= k:
        raise ValueError(f"a target is {int(targets.max())} but train_counts has only {k} classes")
    hit = (preds.long() == targets).double()
    correct = torch.zeros(k, dtype=torch.float64).index_add_(0, targets, hit)
    total = torch.zeros(k, dtype=torch.float64).index_add_(0, targets, torch.ones_like(hit))
    return shot_accuracy_from_class_counts(correct, total, train_counts, many, few)


def shot_accuracy_from_class_counts(correct: Tensor, total: Tensor, train_counts: list[int] | Tensor,
                                    many: int = 100, few: int = 20) -> dict[str, float | None]:
    """:func:`shot_accuracy` from per-class test tallies (K,) ``correct`` and ``total`` (summable across ranks)."""
    correct, total = torch.as_tensor(correct, dtype=torch.float64), torch.as_tensor(total, dtype=torch.float64)
    counts = torch.as_tensor(train_counts, dtype=torch.long).cpu()
    if not correct.shape == total.shape == counts.shape:
        raise ValueError(f"correct {tuple(correct.shape)}, total {tuple(total.shape)} and train_counts "
                         f"{tuple(counts.shape)} must all be (K,)")

    def acc(mask: Tensor) -> float | None:
        n = float(total[mask].sum())
        return None if n == 0 else 100.0 * float(correct[mask].sum()) / n

    return {"overall": acc(torch.ones_like(counts, dtype=torch.bool)), "many": acc(counts > many),
            "medium": acc((counts <= many) & (counts >= few)), "few": acc(counts < few)}


def format_shot_accuracy(result: dict[str, float | None], digits: int = 2) -> str:
    """``overall 81.40 many 82.30 medium 73.40 few n/a``: an empty group prints as "n/a"."""
    return " ".join(f"{k} {'n/a' if v is None else f'{v:.{digits}f}'}" for k, v in result.items())
