"""analysis/: every script on tiny CE / LS / MaxSup models trained here on a Fashion-MNIST subset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import cli_error
from PIL import Image

from analysis import calibration, decomposition, extract, feature_metrics, gradcam, linear_transfer, logits, projection
from analysis.common import parse_checkpoint_arg
from maxsup import build_criterion, class_separation
from maxsup.data.fashion_mnist import FMNIST_MEAN, FMNIST_STD, HELD_OUT_CLASSES, SOURCE_CLASSES, FashionMNIST
from maxsup.data.transforms import eval_transform, transform_spec
from maxsup.linear_probe import fit_sweep, linear_probe, regularization_grid, sweep_accuracy
from maxsup.models import arch_spec, create_model
from maxsup.training import atomic_save

REPO = Path(__file__).resolve().parents[1]

SOURCE = ",".join(map(str, SOURCE_CLASSES))
HELD_OUT = ",".join(map(str, HELD_OUT_CLASSES))
SPEC = transform_spec(28, 1.0, mean=(FMNIST_MEAN,), std=(FMNIST_STD,), grayscale_to_rgb=False)
RESNET = ("cifar_resnet10", {"width": 8, "in_chans": 1})
VIT = ("vit_tiny_patch16_224", {"img_size": 28, "patch_size": 7, "embed_dim": 32, "depth": 1, "num_heads": 2,
                                "in_chans": 1})


def _train(loss: str, arch: tuple[str, dict], x: torch.Tensor, y: torch.Tensor, path: Path, epochs: int) -> Path:
    """A few epochs of plain SGD on (x, y); saves a convention checkpoint."""
    torch.manual_seed(0)
    model = create_model(arch[0], 5, **arch[1])
    criterion = build_criterion(loss, 5, epochs)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    model.train()
    for epoch in range(epochs):
        criterion.set_epoch(epoch)
        for idx in torch.randperm(len(y), generator=g).split(50):
            opt.zero_grad()
            criterion(model(x[idx]), y[idx]).backward()
            opt.step()
        criterion.on_epoch_end()
    atomic_save({"model": model.state_dict(), "arch": arch_spec(arch[0], 5, **arch[1]), "eval_transform": SPEC,
                 "args": {"loss": loss}, "epoch": epochs - 1}, path)
    return path


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpts(one_thread, tmp_path_factory) -> dict[str, Path]:
    """CE, LS and MaxSup CIFAR-ResNet-10 (width 8) on 5 source classes × 100 images (30 steps each), and a
    one-block ViT (10 steps) for the DeiT Grad-CAM path."""
    root = tmp_path_factory.mktemp("ckpts")
    ds = FashionMNIST(train=True, classes=SOURCE_CLASSES, limit_per_class=100, transform=eval_transform(SPEC))
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor(ds.targets)
    out = {name: _train(loss, RESNET, x, y, root / f"{name}.pth", epochs=3)
           for name, loss in (("CE", "ce"), ("LS", "ls"), ("MaxSup", "maxsup"))}
    out["ViT"] = _train("maxsup", VIT, x, y, root / "vit.pth", epochs=1)
    return out


def _ck(ckpts: dict[str, Path], *names: str) -> list[str]:
    return [a for n in names for a in ("--checkpoint", f"{n}={ckpts[n]}")]


def _common(out: Path, *extra: str) -> list[str]:
    return ["--dataset", "fmnist", "--classes", SOURCE, "--max-per-class", "40", "--out", str(out),
            "--no-progress", "--batch-size", "100", *extra]


def _png(path: Path) -> np.ndarray:
    assert path.is_file()
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)


# --------------------------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------------------------
def test_feature_metrics_equal_class_separation_on_cached_features(ckpts, tmp_path):
    res = feature_metrics.main([*_ck(ckpts, "CE", "LS", "MaxSup"), *_common(tmp_path, "--val-max-per-class", "40")])
    table = json.loads((tmp_path / "feature_metrics.json").read_text())
    assert table == json.loads(json.dumps(res))
    assert "| MaxSup |" in (tmp_path / "feature_metrics.md").read_text()
    for name in ("CE", "LS", "MaxSup"):
        for column, split in (("train", "train"), ("val", "test")):
            # the cache written by extract.py is what feature_metrics read: recompute from it independently
            ex = extract.main(["--checkpoint", f"{name}={ckpts[name]}", *_common(tmp_path, "--split", split)])
            cached = torch.load(ex["rows"][name]["cache"], weights_only=True)
            ref = class_separation(cached["features"], cached["labels"])
            row = table["rows"][name][column]
            assert row["n"] == 200
            for key in ("d_within", "d_total", "r2"):
                assert row[key] == pytest.approx(ref[key], abs=1e-12)
            assert 0 < row["d_within"] < row["d_total"]


def test_extract_cache_is_reused(ckpts, tmp_path):
    args = ["--checkpoint", f"CE={ckpts['CE']}", *_common(tmp_path)]
    first = extract.main(args)
    cache = Path(first["rows"]["CE"]["cache"])
    stamp = cache.stat().st_mtime_ns
    second = extract.main(args)
    assert second["rows"]["CE"]["cache"] == str(cache) and cache.stat().st_mtime_ns == stamp
    assert first["rows"]["CE"]["n"] == 200 and first["rows"]["CE"]["feature_dim"] == 64
    assert first["rows"]["CE"]["acc1"] > 50.0  # trained on these 5 classes (chance 20 %)


def test_linear_transfer_to_held_out_classes(ckpts, tmp_path):
    res = linear_transfer.main([*_ck(ckpts, "CE", "MaxSup"), "--dataset", "fmnist", "--classes", HELD_OUT,
                                "--max-per-class", "80", "--test-max-per-class", "100", "--out", str(tmp_path),
                                "--no-progress", "--source-dataset", "fmnist", "--source-classes", SOURCE])
    grid = regularization_grid()
    assert len(res["lambda_grid"]) == 45 and res["lambda_grid"][0] == pytest.approx(1e-6)
    for row in res["rows"].values():
        t = row["target"]
        assert t["chance_acc"] == pytest.approx(20.0)
        assert t["test_acc"] > 50.0, t  # held-out classes, frozen features: far above chance
        assert t["best_lambda"] == pytest.approx(grid[t["best_index"]]) and grid[0] <= t["best_lambda"] <= grid[-1]
        assert t["val_acc"][t["best_index"]] == max(t["val_acc"])
        assert t["best_C"] == pytest.approx(1 / (t["best_lambda"] * 400))
        assert t["n_train"] == 320 and t["n_val"] == 80 and t["n_test"] == 500
        assert row["source"]["test_acc"] > 50.0 and row["source"]["n_test"] == 500
    assert (tmp_path / "linear_transfer.md").is_file()


def test_linear_probe_scipy_and_sklearn_solve_the_same_problem():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 20)) * 1.5
    y = rng.integers(0, 4, 600)
    x = np.maximum(centers[y] + rng.normal(size=(600, 20)), 0).astype(np.float32)
    lam = regularization_grid(9, 1e-4, 1e1)
    accs, weights = {}, {}
    for solver in ("scipy", "sklearn"):
        w, b = fit_sweep(x[:400], y[:400], lam, 4, solver=solver, max_iter=500)
        accs[solver], weights[solver] = sweep_accuracy(w, b, x[400:], y[400:]), w
    np.testing.assert_allclose(accs["scipy"], accs["sklearn"], atol=0.015)
    # strongly regularised problems converge fully in both: same weights
    np.testing.assert_allclose(weights["scipy"][-3:], weights["sklearn"][-3:], rtol=0, atol=5e-4)
    res = linear_probe(x[:400], y[:400], x[400:], y[400:], lambdas=lam)
    assert res["test_acc"] > 60 and len(res["val_acc"]) == 9


# --------------------------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------------------------
def test_gradcam_grid_resnet_and_vit(ckpts, tmp_path):
    res = gradcam.main([*_ck(ckpts, "MaxSup", "LS", "CE", "ViT"), *_common(tmp_path, "--num-images", "3")])
    assert (res["rows"], res["cols"], res["panels"]) == (5, 3, 15)
    img = _png(tmp_path / "gradcam.png")
    assert img.shape[:2] == (5 * 200, 3 * 200)  # panel-size 2 in × 100 dpi
    assert img.std() > 20
    assert res["labels"] == [0, 1, 2]  # first image of each class
    assert res["explained_class"]["ViT"] == res["labels"]  # --target label explains the ground truth
    top1 = gradcam.main([*_ck(ckpts, "ViT"), *_common(tmp_path / "top1", "--num-images", "2", "--target", "top1")])
    assert top1["explained_class"]["ViT"] == top1["predicted_class"]["ViT"]
    # the ViT layer is blocks[-1].norm1 with the CLS token dropped: 16 patch tokens → a 4×4 map
    vit = create_model(VIT[0], 5, **VIT[1])
    layer, reshape = gradcam.target_layer(vit)
    assert layer is vit.blocks[-1].norm1
    assert reshape(torch.randn(2, 17, 32)).shape == (2, 32, 4, 4)


def test_logits_figure_and_stats(ckpts, tmp_path):
    res = logits.main([*_ck(ckpts, "CE", "LS", "MaxSup"), *_common(tmp_path, "--threshold", "0.05")])
    img = _png(tmp_path / "logits.png")
    assert img.shape[:2] == (420, 1500) and img.std() > 20 and res["panels"] == 3
    cached = torch.load(next((tmp_path / "features").glob("CE-fmnist-test-*.pt")), weights_only=True)
    share = (cached["logits"].abs() < 0.05).double().mean().item()
    assert res["rows"]["CE"]["near_zero_share_mean"] == pytest.approx(share)
    top1 = cached["logits"].double().softmax(1).max(1).values.mean().item()
    assert res["rows"]["CE"]["top1_prob_mean"] == pytest.approx(top1)


def test_projection_panels(ckpts, tmp_path):
    res = projection.main([*_ck(ckpts, "LS", "MaxSup"), *_common(tmp_path, "--proj-classes", "0,1,2",
                                                                "--per-class", "30")])
    img = _png(tmp_path / "projection.png")
    assert img.shape[:2] == (420, 900) and img.std() > 20 and res["panels"] == 2
    assert res["rows"]["LS"]["n_per_class"] == [30, 30, 30]
    # the three class means of the projected samples are distinct points of the template plane
    means = np.asarray(res["rows"]["MaxSup"]["class_means_2d"])
    assert np.linalg.norm(means[0] - means[1]) > 0.1


def test_template_plane_is_orthonormal_and_contains_the_means():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(60, 10, generator=g, dtype=torch.float64)
    labels = torch.arange(60) % 3
    basis, origin = projection.template_plane(feats, labels, [0, 1, 2])
    assert torch.allclose(basis.T @ basis, torch.eye(2, dtype=torch.float64), atol=1e-10)
    for c in range(3):
        mu = feats[labels == c].mean(0) - origin
        assert torch.allclose(basis @ (basis.T @ mu), mu, atol=1e-10)  # the template lies in the plane


def test_calibration_table_and_reliability_figure(ckpts, tmp_path):
    res = calibration.main([*_ck(ckpts, "LS", "MaxSup"), *_common(tmp_path)])
    img = _png(tmp_path / "calibration.png")
    assert img.shape[:2] == (400, 800) and img.std() > 20
    for row in res["rows"].values():
        assert 0 <= row["ece_15"] <= 1 and 0 <= row["ece_10"] <= 1 and row["nll"] > 0 and row["n"] == 200
        assert sum(row["reliability"]["count"]) == 200


def test_decomposition_no_error_amplification_on_correct_samples(ckpts, tmp_path):
    res = decomposition.main([*_ck(ckpts, "LS", "MaxSup"), *_common(tmp_path)])
    for row in res["rows"].values():
        assert row["error_amplification_correct"] == 0.0
        assert 0 < row["misclassified"] < 1
        assert row["error_amplification_misclassified"] < 0 < row["regularization"]
        # the terms add up to the LS penalty (Corollary 3.4)
        assert row["regularization"] + row["error_amplification"] == pytest.approx(row["ls_penalty"], rel=1e-6)
        share = row["misclassified"]
        assert row["error_amplification"] == pytest.approx(share * row["error_amplification_misclassified"])


# --------------------------------------------------------------------------------------------------------------------
# Bad input: one line on stderr, non-zero exit
# --------------------------------------------------------------------------------------------------------------------
def _cli_error(module, argv, capsys) -> str:
    return cli_error(capsys, module.main, argv)


def test_missing_checkpoint_path_subprocess(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "analysis.calibration", "--checkpoint", f"X={tmp_path}/nope.pth",
                           "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [f"error: checkpoint not found: {tmp_path}/nope.pth"]


def test_checkpoint_without_architecture(tmp_path, capsys):
    bad = tmp_path / "weights_only.pth"
    atomic_save({"state_dict": {"fc.weight": torch.zeros(2, 2)}, "epoch": 3}, bad)
    err = _cli_error(decomposition, ["--checkpoint", f"A={bad}", "--out", str(tmp_path)], capsys)
    assert "architecture cannot be determined" in err and "state_dict" in err and "epoch" in err


def test_dataset_class_count_differs_from_head(ckpts, tmp_path, capsys):
    err = _cli_error(calibration, [*_ck(ckpts, "CE"), "--out", str(tmp_path), "--max-per-class", "5"], capsys)
    assert "5-class head" in err and "10 classes" in err


def test_checkpoint_without_name(ckpts, tmp_path, capsys):
    err = _cli_error(feature_metrics, ["--checkpoint", str(ckpts["CE"]), "--out", str(tmp_path)], capsys)
    assert "NAME=PATH" in err
    assert parse_checkpoint_arg("Max Sup = a=b.pth") == ("Max Sup", Path("a=b.pth"))
