"""ECE against a worked example; class_separation against a naive O(N²) implementation."""

import numpy as np
import pytest
import torch

from maxsup import ClassificationMeter, class_separation, expected_calibration_error
from maxsup.features import ClassSeparationAccumulator
from maxsup.metrics import ECEAccumulator, reliability_bins, topk_accuracy


def test_ece_worked_example():
    # confidences 0.9 (correct), 0.9 (wrong), 0.6 (correct), 0.4 (correct) with 10 bins: bin (0.8,0.9]: acc 0.5
    # conf 0.9 → |0.5-0.9|·2; 0.6 (float32 0.6000000238…, so bin (0.6,0.7]): |1-0.6|·1; bin (0.3,0.4]: |1-0.4|·1
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.9, 0.05, 0.05], [0.6, 0.4, 0.0], [0.3, 0.35, 0.35]])
    probs[3] = torch.tensor([0.3, 0.3, 0.4])  # top-1 is class 2 with 0.4 → bin (0.3,0.4]
    labels = torch.tensor([0, 1, 0, 2])
    expected = (abs(0.5 - 0.9) * 2 + abs(1 - 0.6) + abs(1 - 0.4)) / 4
    assert expected_calibration_error(probs, labels, n_bins=10, from_logits=False) == pytest.approx(expected)
    bins = reliability_bins(probs, labels, n_bins=10, from_logits=False)
    assert bins["count"][8] == 2 and bins["accuracy"][8] == pytest.approx(0.5)
    # float32 0.6 is 0.6000000238…, so it falls in (0.6, 0.7]: bin 6
    assert bins["confidence"][8] == pytest.approx(0.9) and bins["confidence"][6] == pytest.approx(0.6)
    assert bins["edges"] == pytest.approx([i / 10 for i in range(11)])
    assert np.isnan(bins["accuracy"][0]) and np.isnan(bins["confidence"][0]) and bins["count"][0] == 0
    # this example's ECE is the same with "correct" and "wrong" swapped (1.8 / 4 both ways); one more correct 0.9
    # sample breaks the symmetry: bin (0.8, 0.9] becomes 3 samples, 2 correct → |2 − 2.7|
    probs5, labels5 = torch.cat([probs, probs[:1]]), torch.cat([labels, labels[:1]])
    expected5 = (abs(2 - 2.7) + abs(1 - 0.6) + abs(1 - 0.4)) / 5
    assert expected_calibration_error(probs5, labels5, n_bins=10, from_logits=False) == pytest.approx(expected5)
    assert reliability_bins(probs5, labels5, n_bins=10, from_logits=False)["accuracy"][6] == 1.0


def test_ece_streaming_equals_whole_dataset_not_batch_average():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(1000, 10, generator=g) * 3, torch.randint(0, 10, (1000,), generator=g)
    acc = ECEAccumulator(15)
    batch_eces = []
    for i in range(0, 1000, 100):
        acc.update(logits[i:i + 100], labels[i:i + 100])
        batch_eces.append(expected_calibration_error(logits[i:i + 100], labels[i:i + 100]))
    whole = expected_calibration_error(logits, labels)
    assert acc.compute() == pytest.approx(whole, abs=1e-12)
    assert np.mean(batch_eces) != pytest.approx(whole, abs=1e-4)  # upstream's per-batch average differs


def test_classification_meter():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 1.0, 3.0], [1.0, 0.0, 0.5]])
    target = torch.tensor([0, 1, 2])
    m = ClassificationMeter(num_classes=3)
    m.update(logits[:2], target[:2])
    m.update(logits[2:], target[2:])
    out = m.compute()
    assert out["n"] == 3 and out["acc1"] == pytest.approx(100 / 3)
    nll = torch.nn.functional.cross_entropy(logits, target).item()
    assert out["nll"] == pytest.approx(nll, rel=1e-6)
    assert out["ece"] == pytest.approx(expected_calibration_error(logits, target))
    assert topk_accuracy(logits, target, (1, 2)) == pytest.approx([100 / 3, 100.0])
    assert topk_accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)) == [0.0, 0.0]
    empty = ClassificationMeter().compute()
    assert empty["n"] == 0 and all(np.isnan(empty[key]) for key in ("acc1", "acc5", "nll", "ece"))


def test_classification_meter_top5_over_batches():
    """acc@5 with K = 7 (< 100 %), streamed over two batches of different sizes, against a direct count."""
    g = torch.Generator().manual_seed(3)
    logits, target = torch.randn(11, 7, generator=g), torch.randint(0, 7, (11,), generator=g)
    in_top5 = (logits.topk(5, dim=1).indices == target[:, None]).any(1).double().mean().item() * 100
    assert 0 < in_top5 < 100
    assert topk_accuracy(logits, target) == pytest.approx([(logits.argmax(1) == target).double().mean().item() * 100,
                                                           in_top5])  # default ks: (1, 5)
    m = ClassificationMeter(num_classes=7)
    m.update(logits[:4], target[:4])
    m.update(logits[4:], target[4:])
    out = m.compute()
    assert out["acc5"] == pytest.approx(in_top5) and out["n"] == 11


def _naive(features, labels):
    x = features / np.linalg.norm(features, axis=1, keepdims=True)
    classes = np.unique(labels)
    dist = 1 - x @ x.T  # all ordered pairs, including m = n
    within = np.mean([dist[np.ix_(labels == c, labels == c)].mean() for c in classes])
    total = np.mean([dist[np.ix_(labels == a, labels == b)].mean() for a in classes for b in classes])
    return within, total


@pytest.mark.parametrize("seed", [0, 1])
def test_class_separation_matches_naive_pairwise(seed):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(5, 16)) * 2
    labels = rng.integers(0, 5, size=300)
    labels[:5] = np.arange(5)
    features = centers[labels] + rng.normal(size=(300, 16)) * rng.uniform(0.5, 3, size=(300, 1))
    within, total = _naive(features, labels)
    out = class_separation(torch.from_numpy(features).float(), torch.from_numpy(labels))
    assert out["d_within"] == pytest.approx(within, abs=1e-5)
    assert out["d_total"] == pytest.approx(total, abs=1e-5)
    assert out["r2"] == pytest.approx(1 - within / total, abs=1e-5)
    acc = ClassSeparationAccumulator()
    for i in range(0, 300, 64):
        acc.update(torch.from_numpy(features[i:i + 64]), torch.from_numpy(labels[i:i + 64]))
    assert acc.compute()["d_within"] == pytest.approx(within, abs=1e-6)
    # more samples than one chunk (N = 300 > chunk = 64 > D = 16): every chunk counts
    chunked = ClassSeparationAccumulator(chunk=64)
    chunked.update(torch.from_numpy(features), torch.from_numpy(labels))
    out = chunked.compute()
    assert out["n"] == 300 and out["d_within"] == pytest.approx(within, abs=1e-6)


def test_class_separation_edge_cases():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    out = class_separation(f, torch.tensor([0, 1, 1]))
    assert out["singleton_classes"] == 1
    assert class_separation(torch.randn(6, 2), torch.tensor([0, 1, 1, 2, 2, 2]))["singleton_classes"] == 1
    # class 0 (one sample) has d_within 0; class 1: pairs (e1,e1),(e1,u),(u,e1),(u,u) → 2·(1−1/√2)/4
    assert out["d_within"] == pytest.approx((0 + 2 * (1 - 2 ** -0.5) / 4) / 2)
    with pytest.raises(ValueError):
        class_separation(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        class_separation(torch.randn(5, 3), torch.zeros(4, dtype=torch.long))
