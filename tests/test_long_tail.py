"""Long-tailed training (paper Table 7): the count profile, the seeded subset, shot groups, ResNet-32 and the
causal-norm head, and ``--imb-ratio`` in Conv/common_resnet/train.py on real Fashion-MNIST."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flat_import import load_flat

from maxsup.data import long_tailed_counts, long_tailed_indices
from maxsup.errors import UserError
from maxsup.metrics import format_shot_accuracy, shot_accuracy
from maxsup.models import CausalNormClassifier, create_model, features_and_logits, model_from_checkpoint
from maxsup.training import load_checkpoint

TRAIN_DIR = Path(__file__).resolve().parents[1] / "Conv" / "common_resnet"


def test_counts_follow_the_exponential_profile():
    assert long_tailed_counts(5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    c50 = long_tailed_counts(5000, 10, 50)
    assert c50[0] == 5000 and c50[-1] == 100 and all(a > b for a, b in zip(c50, c50[1:], strict=False))
    assert long_tailed_counts(500, 100, 1) == [500] * 100
    for bad in (0.5, 0.0, float("nan")):
        with pytest.raises(UserError, match="must be >= 1"):
            long_tailed_counts(5000, 10, bad)


def test_subset_is_seeded_and_keeps_the_profile():
    targets = np.repeat(np.arange(5), 40)[np.random.default_rng(3).permutation(200)]
    a, counts = long_tailed_indices(targets, 8, seed=1)
    b, _ = long_tailed_indices(targets, 8, seed=1)
    c, _ = long_tailed_indices(targets, 8, seed=2)
    assert counts == long_tailed_counts(40, 5, 8) == [40, 23, 14, 8, 5]
    assert np.bincount(targets[a], minlength=5).tolist() == counts
    assert np.array_equal(a, b) and not np.array_equal(a, c) and np.all(np.diff(a) > 0)


def test_shot_accuracy_groups_and_empty_group_is_none():
    counts = [5000, 500, 60, 30]  # many, many, medium, medium: no few-shot class
    targets = torch.tensor([0, 0, 1, 2, 2, 3, 3, 3])
    preds = torch.tensor([0, 1, 1, 2, 0, 3, 0, 0])
    r = shot_accuracy(preds, targets, counts)
    assert r["overall"] == pytest.approx(100 * 4 / 8)
    assert r["many"] == pytest.approx(100 * 2 / 3) and r["medium"] == pytest.approx(100 * 2 / 5)
    assert r["few"] is None
    assert format_shot_accuracy(r) == "overall 50.00 many 66.67 medium 40.00 few n/a"
    r = shot_accuracy(torch.nn.functional.one_hot(preds, 4).float(), targets, [10, 10, 10, 150])  # scores in
    assert r["few"] == pytest.approx(100 * 3 / 5) and r["medium"] is None and r["many"] == pytest.approx(100 / 3)


def test_shot_groups_at_their_thresholds():
    """many > 100, few < 20, medium 20..100 inclusive (Liu et al. 2019): the boundary classes 100 and 20 are medium."""
    r = shot_accuracy(torch.tensor([0, 3, 2, 0]), torch.tensor([0, 1, 2, 3]), [101, 100, 20, 19])
    assert (r["many"], r["medium"], r["few"]) == (pytest.approx(100.0), pytest.approx(50.0), pytest.approx(0.0))


def test_resnet32_has_a_128d_feature_and_causal_norm_tde():
    torch.manual_seed(0)
    model = create_model("resnet32", 10, head="causal_norm")
    x = torch.randn(6, 3, 16, 16)  # any size: global pooling
    model.train()
    with torch.no_grad():
        train_feats = model.forward_features(x)  # BN in training mode: batch statistics
    model(x)  # one training step's worth of the feature average
    model.eval()
    feats, logits = features_and_logits(model, x)
    assert feats.shape == (6, 128) and logits.shape == (6, 10)
    head: CausalNormClassifier = model.fc
    assert torch.allclose(head.embed, 0.9 * 0.0 + train_feats.mean(0), atol=1e-4)
    # TDE removes each head's component along the average direction: a feature on that direction scores 0.
    along = head.embed[None] * 3.0
    assert torch.allclose(head(along), torch.zeros(1, 10), atol=1e-5)
    head.alpha = 0.0  # without TDE: the normalised multi-head cosine classifier
    w = head.weight.reshape(10, 2, 64)
    xh = torch.nn.functional.normalize(feats.reshape(6, 2, 64), dim=-1)
    expected = 8.0 * torch.einsum("bhd,khd->bk", xh, w / (w.norm(dim=-1, keepdim=True) + 0.03125))
    assert torch.allclose(head(feats), expected, atol=1e-5)
    # He et al.'s width-16 ResNet-32: 0.464M parameters with zero-padding shortcuts; ours adds two 1×1 projections
    assert sum(p.numel() for p in create_model("resnet32", 10, width=16).parameters()) == 464154 + 2752


def _load_trainer():
    return load_flat(TRAIN_DIR, "train", ("presets", "utils", "sampler"))


def test_imb_ratio_training_stores_counts_and_reports_shots(tmp_path, capsys):
    trainer = _load_trainer()
    torch.set_num_threads(1)
    out = tmp_path / "out"
    argv = ["--dataset", "fmnist", "--limit-per-class", "30", "--imb-ratio", "10", "--model", "resnet32",
            "--model-kwargs", "width=4", "head=causal_norm", "--epochs", "1", "-b", "32", "-j", "0", "--lr", "0.05",
            "--print-freq", "1000", "--output-dir", str(out)]
    metrics = trainer.run_cli(trainer.cli, argv)
    printed = capsys.readouterr().out
    counts = long_tailed_counts(30, 10, 10)
    assert f"per-class counts {counts}" in printed
    ckpt = load_checkpoint(out / "checkpoint.pth")
    assert ckpt["train_class_counts"] == counts and ckpt["args"]["imb_ratio"] == 10
    # every class has < 100 training images: no many-shot group, and it prints n/a
    assert "shots: overall" in printed and "many n/a" in printed and metrics["many_shot_acc1"] is None
    assert isinstance(model_from_checkpoint(ckpt).fc, CausalNormClassifier)
    again = trainer.run_cli(trainer.cli, ["--dataset", "fmnist", "--limit-per-class", "30", "--test-only", "--resume",
                                          str(out / "checkpoint.pth"), "-j", "0", "-b", "64"])
    assert again["acc1"] == pytest.approx(metrics["acc1"]) and again["few_shot_acc1"] == metrics["few_shot_acc1"]


@pytest.mark.parametrize("ratio", ["0.5", "0"])
def test_imb_ratio_below_one_is_one_error_line(ratio, tmp_path, capsys):
    trainer = _load_trainer()
    with pytest.raises(SystemExit) as exc:
        trainer.run_cli(trainer.cli, ["--dataset", "fmnist", "--imb-ratio", ratio, "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error: --imb-ratio must be >= 1"), err
