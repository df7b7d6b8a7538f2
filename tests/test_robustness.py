"""Corruption robustness (paper Table 8): maxsup.corruptions on real Fashion-MNIST images and analysis.robustness
on tiny trained models, on the fly and from a CIFAR-10-C-layout folder."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import cli_error, torch_threads
from PIL import Image

from analysis import robustness
from analysis.common import build_dataset
from maxsup.corruptions import (
    CIFAR10C,
    CORRUPTIONS,
    CorruptedDataset,
    corrupt,
    imagenet_c_folder,
    parse_corruptions,
    parse_severities,
)
from maxsup.corruptions_lowres import scale_for
from maxsup.data.fashion_mnist import FMNIST_MEAN, FMNIST_STD, FashionMNIST
from maxsup.data.transforms import eval_transform, transform_spec
from maxsup.errors import UserError
from maxsup.metrics import ClassificationMeter
from maxsup.models import arch_spec, create_model
from maxsup.training import atomic_save

REPO = Path(__file__).resolve().parents[1]
SPEC = transform_spec(28, 1.0, mean=(FMNIST_MEAN,), std=(FMNIST_STD,), grayscale_to_rgb=False)
ARCH = ("cifar_resnet10", {"width": 4, "in_chans": 1})


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """Two tiny CIFAR-ResNet-10s trained a few steps on 3 Fashion-MNIST classes (CE, MaxSup)."""
    with torch_threads(1):  # tiny models; 2 threads spin-wait on the shared cores
        root = tmp_path_factory.mktemp("rob")
        ds = FashionMNIST(train=True, classes=(0, 1, 7), limit_per_class=60, transform=eval_transform(SPEC))
        x, y = torch.stack([ds[i][0] for i in range(len(ds))]), torch.tensor(ds.targets)
        from maxsup import build_criterion

        out = {}
        for name, loss in (("CE", "ce"), ("MaxSup", "maxsup")):
            torch.manual_seed(0)
            model = create_model(ARCH[0], 3, **ARCH[1])
            crit = build_criterion(loss, 3, 2)
            opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
            for epoch in range(2):
                crit.set_epoch(epoch)
                for idx in torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch)).split(30):
                    opt.zero_grad()
                    crit(model(x[idx]), y[idx]).backward()
                    opt.step()
            out[name] = atomic_save({"model": model.state_dict(), "arch": arch_spec(ARCH[0], 3, **ARCH[1]),
                                     "eval_transform": SPEC}, root / f"{name}.pth")
    return out


def test_all_15_corruptions_change_28px_images_deterministically():
    img = FashionMNIST(train=False, limit_per_class=1)[0][0]  # a real 28×28 'L' image
    for name in CORRUPTIONS:
        a, b = corrupt(img, name, 3, seed=7), corrupt(img, name, 3, seed=7)
        assert a.mode == "L" and a.size == (28, 28), name
        assert np.array_equal(np.asarray(a), np.asarray(b)), f"{name} is not reproducible for a fixed seed"
        assert np.abs(np.asarray(a, float) - np.asarray(img, float)).max() >= 1, f"{name} left the image unchanged"
    # the noises depend on the seed, and severity 5 is stronger than 1
    noise = [np.asarray(corrupt(img, "impulse_noise", 3, seed=s), float) for s in (1, 2)]
    assert not np.array_equal(*noise)
    diff = [np.abs(np.asarray(corrupt(img, "gaussian_noise", s, 0), float) - np.asarray(img, float)).mean()
            for s in (1, 5)]
    assert diff[1] > 2 * diff[0]
    big = Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8))
    assert corrupt(big, "fog", 5).size == (224, 224) and corrupt(big, "frost", 1).mode == "RGB"


def test_numpy_input_gives_the_same_image_as_pil():
    """A (H, W) uint8 array is an 'L' image and (H, W, 3) an RGB one: the same corrupted pixels as through PIL."""
    rng = np.random.default_rng(3)
    grey, rgb = rng.integers(0, 256, (20, 28), dtype=np.uint8), rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)
    for arr, mode in ((grey, "L"), (rgb, "RGB")):
        out = corrupt(arr, "shot_noise", 2, seed=5)
        assert out.mode == mode and out.size == (28, 20)
        assert np.array_equal(np.asarray(out), np.asarray(corrupt(Image.fromarray(arr), "shot_noise", 2, seed=5)))


def _grey(size: int, rng: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(rng).integers(64, 193, (size, size, 3), dtype=np.uint8))


@pytest.mark.parametrize("size,scale,noise,contrast", [(28, "cifar", 0.04, 0.75), (32, "cifar", 0.04, 0.75),
                                                       (64, "tiny", 0.04, 0.4), (224, "imagenet", 0.08, 0.4)])
def test_severity_constants_follow_the_image_scale(size, scale, noise, contrast):
    """Severity 1 at 28-32 px is CIFAR-10-C's (noise σ 0.04, contrast ×0.75), not ImageNet-C's (0.08, ×0.4)."""
    assert scale_for(size, size) == scale
    flat = Image.fromarray(np.full((size, size, 3), 128, np.uint8))
    got = np.asarray(corrupt(flat, "gaussian_noise", 1, seed=0), float) - 128
    assert got.std() / 255 == pytest.approx(noise, rel=0.08)
    img = _grey(size)
    ratio = np.asarray(corrupt(img, "contrast", 1), float).std() / np.asarray(img, float).std()
    assert ratio == pytest.approx(contrast, abs=0.02)
    # an explicit scale overrides the size rule
    big = np.asarray(corrupt(flat, "gaussian_noise", 1, seed=0, scale="imagenet"), float) - 128
    assert big.std() / 255 == pytest.approx(0.08, rel=0.08)
    with pytest.raises(UserError, match="unknown corruption scale"):
        corrupt(flat, "fog", 1, scale="mnist")


def test_corrupted_dataset_is_independent_of_batching_and_workers():
    raw = FashionMNIST(train=False, limit_per_class=2)
    ds = CorruptedDataset(raw, "shot_noise", 4, eval_transform(SPEC), seed=3)
    one = torch.stack([ds[i][0] for i in range(len(ds))])
    loader = torch.utils.data.DataLoader(ds, batch_size=7, num_workers=2)
    assert torch.equal(torch.cat([x for x, _ in loader]), one)
    assert not torch.equal(one, torch.stack([eval_transform(SPEC)(raw[i][0]) for i in range(len(raw))]))


def _args(ckpts, out, *extra):
    return ["--checkpoint", f"CE={ckpts['CE']}", "--checkpoint", f"MaxSup={ckpts['MaxSup']}", "--dataset", "fmnist",
            "--classes", "0,1,7", "--max-per-class", "20", "--out", str(out), "--no-progress", *extra]


def test_robustness_json_schema_clean_metrics_and_outputs(ckpts, tmp_path):
    res = robustness.main(_args(ckpts, tmp_path, "--corruptions", "gaussian_noise,contrast", "--severities", "1,5"))
    on_disk = json.loads((tmp_path / "robustness.json").read_text())
    assert on_disk == json.loads(json.dumps(res)) and list(on_disk) == ["checkpoints"]
    for name in ("CE", "MaxSup"):
        r = on_disk["checkpoints"][name]
        assert set(r) == {"clean", "corrupted", "mean_corrupted", "constants"}
        assert r["constants"].startswith("CIFAR-10-C constants") and "at 28 px" in r["constants"]
        assert set(r["corrupted"]) == {"gaussian_noise", "contrast"}
        assert all(set(per) == {"1", "5"} for per in r["corrupted"].values())
        assert all(set(m) == {"error", "nll", "ece"} for per in r["corrupted"].values() for m in per.values())
        cells = [m["error"] for per in r["corrupted"].values() for m in per.values()]
        assert r["mean_corrupted"]["error"] == pytest.approx(np.mean(cells))
    # the clean entry is the plain evaluation of the same 60 images
    ds = build_dataset("fmnist", None, "test", eval_transform(SPEC), [0, 1, 7], 20, 0)
    model = create_model(ARCH[0], 3, **ARCH[1])
    model.load_state_dict(torch.load(ckpts["CE"], weights_only=True)["model"])
    meter = ClassificationMeter()
    with torch.no_grad():
        x, y = torch.stack([ds[i][0] for i in range(len(ds))]), torch.tensor(ds.targets)
        meter.update(model.eval()(x), y)
    m = meter.compute()
    assert on_disk["checkpoints"]["CE"]["clean"]["error"] == pytest.approx(1 - m["acc1"] / 100)
    assert on_disk["checkpoints"]["CE"]["clean"]["nll"] == pytest.approx(m["nll"], rel=1e-5)
    # contrast 5 washes Fashion-MNIST out: worse than clean for the trained model
    assert on_disk["checkpoints"]["CE"]["corrupted"]["contrast"]["5"]["nll"] > m["nll"]
    md = (tmp_path / "robustness.md").read_text()
    assert "| Metric | CE | MaxSup |" in md and "| Error (Corr) |" in md and "| ECE (Corr) |" in md
    assert (tmp_path / "robustness.png").stat().st_size > 1000


def _write_cifar10c(root: Path, names: tuple[str, ...], n: int = 6) -> np.ndarray:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5 * n, 32, 32, 3), dtype=np.uint8)
    for s in range(5):
        imgs[s * n:(s + 1) * n, 0, 0, 0] = s  # severity marker
    for c in names:
        np.save(root / f"{c}.npy", imgs)
    np.save(root / "labels.npy", np.tile(np.arange(n) % 3, 5).astype(np.int64))
    return imgs


def test_cifar10c_reader_slices_the_severity(tmp_path):
    _write_cifar10c(tmp_path, ("fog",))
    ds = CIFAR10C(tmp_path, "fog", 4)
    assert len(ds) == 6 and ds.targets == [0, 1, 2, 0, 1, 2]
    assert all(np.asarray(ds[i][0])[0, 0, 0] == 3 for i in range(6))
    # every severity is its own block of 5: images and labels (here labels that differ between the blocks)
    imgs = _write_cifar10c(tmp_path / "all", ("snow",), n=4)
    labels = np.arange(20) % 7
    np.save(tmp_path / "all" / "labels.npy", labels)
    for sev in range(1, 6):
        ds = CIFAR10C(tmp_path / "all", "snow", sev)
        assert ds.targets == labels[4 * (sev - 1):4 * sev].tolist(), sev
        assert all(np.array_equal(np.asarray(ds[i][0]), imgs[4 * (sev - 1) + i]) for i in range(4)), sev
    # a file that is not five equal blocks, or whose labels do not match it, is refused
    np.save(tmp_path / "all" / "labels.npy", labels[:19])
    with pytest.raises(UserError, match=r"expected \(5·N, H, W, 3\) and \(5·N,\)"):
        CIFAR10C(tmp_path / "all", "snow", 1)
    np.save(tmp_path / "all" / "snow.npy", imgs[:19])
    with pytest.raises(UserError, match=r"has shape \(19, 32, 32, 3\)"):
        CIFAR10C(tmp_path / "all", "snow", 1)
    with pytest.raises(UserError, match=r"snow\.npy is missing"):
        CIFAR10C(tmp_path, "snow", 1)


def test_imagenet_c_folder_reads_one_corruption_and_severity(tmp_path):
    """<root>/<corruption>/<severity>/<wnid>/*.JPEG; labels are the sorted wnids of that folder."""
    for sev, wnids in ((3, ("n02000000", "n01000000")), (4, ("n03000000",))):
        for k, wnid in enumerate(wnids):
            folder = tmp_path / "fog" / str(sev) / wnid
            folder.mkdir(parents=True)
            Image.fromarray(np.full((8, 8, 3), 10 * sev + k, np.uint8)).save(folder / "a.png")
    ds = imagenet_c_folder(tmp_path, "fog", 3)
    assert ds.classes == ["n01000000", "n02000000"] and ds.targets == [0, 1]
    assert np.asarray(ds[0][0])[0, 0, 0] == 31 and np.asarray(ds[1][0])[0, 0, 0] == 30
    assert imagenet_c_folder(tmp_path, "fog", 4).classes == ["n03000000"]
    with pytest.raises(UserError, match=f"ImageNet-C folder {tmp_path / 'fog' / '5'} is missing"):
        imagenet_c_folder(tmp_path, "fog", 5)


def _cli_error(argv, capsys) -> str:
    return cli_error(capsys, robustness.main, argv)


def test_bad_corruption_severity_and_missing_cifar10c_file(ckpts, tmp_path, capsys):
    err = _cli_error(_args(ckpts, tmp_path, "--corruptions", "fog,rain"), capsys)
    assert "unknown corruption rain" in err and "gaussian_noise" in err and "jpeg_compression" in err
    err = _cli_error(_args(ckpts, tmp_path, "--severities", "1,6"), capsys)
    assert "severity 6 is outside 1-5" in err
    assert parse_severities("5,1,1") == [1, 5] and parse_corruptions(None) == list(CORRUPTIONS)
    assert parse_severities(None) == parse_severities("") == [1, 2, 3, 4, 5]  # the default: all five
    _write_cifar10c(tmp_path / "c10c", ("fog",))
    err = _cli_error(["--checkpoint", f"CE={ckpts['CE']}", "--dataset", "cifar10", "--data-path", str(tmp_path),
                      "--precomputed", str(tmp_path / "c10c"), "--corruptions", "fog,snow", "--out", str(tmp_path)],
                     capsys)
    assert f"{tmp_path / 'c10c' / 'snow.npy'} is missing" in err


def test_subprocess_module_entry_point(ckpts, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "analysis.robustness", *_args(ckpts, tmp_path, "--corruptions",
                                                                                "snow", "--severities", "9")],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines() == [
        "error: severity 9 is outside 1-5 (ImageNet-C defines severities 1, 2, 3, 4, 5)"]


# The published generators' severity constants (hendrycks/robustness, ImageNet-C/create_c/make_cifar_c.py and
# make_tinyimagenet_c.py), per corruption: severities 1..5.
PUBLISHED = {
    "cifar": {"gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10], "shot_noise": [500, 250, 100, 75, 50],
              "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07], "brightness": [0.05, 0.1, 0.15, 0.2, 0.3],
              "contrast": [0.75, 0.5, 0.4, 0.3, 0.15], "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
              "jpeg_compression": [80, 65, 58, 50, 40], "fog": [0.2, 0.5, 0.75, 1.0, 1.5],  # fog: c[0]
              "snow": [0.95, 0.9, 0.9, 0.85, 0.8]},  # snow: c[6], the weight of the image against its brightened copy
    "tiny": {"gaussian_noise": [0.04, 0.08, 0.12, 0.15, 0.18], "shot_noise": [250, 100, 50, 30, 15],
             "impulse_noise": [0.01, 0.02, 0.05, 0.08, 0.14], "brightness": [0.1, 0.2, 0.3, 0.4, 0.5],
             "contrast": [0.4, 0.3, 0.2, 0.1, 0.05], "pixelate": [0.9, 0.8, 0.7, 0.6, 0.5],
             "jpeg_compression": [65, 58, 50, 40, 25], "fog": [0.4, 0.7, 1.0, 1.5, 2.0],
             "snow": [0.8, 0.8, 0.7, 0.65, 0.6]},
}


@pytest.mark.parametrize("scale", ["cifar", "tiny"])
def test_lowres_severities_apply_the_published_constants(scale):
    """Every severity of the corruptions whose effect can be computed from the constant alone: noise σ, the Poisson
    rate (its outputs lie on the lattice k/c), the s&p fraction, the HSV value shift, the contrast factor, and the
    pixelate / JPEG steps (PIL, as the generators do)."""
    consts = PUBLISHED[scale]
    flat = Image.fromarray(np.full((256, 256, 3), 128, np.uint8))  # large, with the scale given: tight statistics
    halves = np.full((256, 256, 3), 64, np.uint8)
    halves[:, 128:] = 192  # mean exactly 128
    size = 32 if scale == "cifar" else 64
    rgb = np.random.default_rng(1).integers(0, 256, (size, size, 3), dtype=np.uint8)

    def run(name: str, s: int, img: Image.Image = flat) -> np.ndarray:
        return np.asarray(corrupt(img, name, s, seed=s, scale=scale), float)

    for s in range(1, 6):
        c = consts["gaussian_noise"][s - 1]
        assert (run("gaussian_noise", s) - 128).std() / 255 == pytest.approx(c, rel=0.02), (s, "gaussian")
        c = consts["shot_noise"][s - 1]
        shot = run("shot_noise", s)
        lattice = {float(np.uint8(min(k / c, 1.0) * 255)) for k in range(4 * c)}
        assert set(np.unique(shot)) <= lattice and shot.std() / 255 == pytest.approx((128 / 255 / c) ** 0.5, rel=0.03)
        assert shot.mean() == pytest.approx(127.5, abs=0.5), (s, "shot")  # unbiased, less uint8's truncation
        c = consts["impulse_noise"][s - 1]
        imp = run("impulse_noise", s)
        assert set(np.unique(imp)) == {0.0, 128.0, 255.0} and (imp != 128).mean() == pytest.approx(c, rel=0.1)
        c = consts["brightness"][s - 1]  # grey: HSV value + c, clipped at 1
        assert np.abs(run("brightness", s) - np.floor(min(128 / 255 + c, 1.0) * 255)).max() <= 1, (s, "brightness")
        c = consts["contrast"][s - 1]  # (x − mean)·c + mean
        got = run("contrast", s, Image.fromarray(halves))
        assert np.abs(got[:, :128] - (128 - 64 * c)).max() <= 1 and np.abs(got[:, 128:] - (128 + 64 * c)).max() <= 1
        # at the scale's own size
        c = consts["pixelate"][s - 1]
        box = Image.fromarray(rgb).resize((int(size * c),) * 2, Image.BOX).resize((size, size), Image.BOX)
        assert np.array_equal(np.asarray(corrupt(rgb, "pixelate", s)), np.asarray(box)), (s, "pixelate")
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=consts["jpeg_compression"][s - 1])
        assert np.array_equal(np.asarray(corrupt(rgb, "jpeg_compression", s)), np.asarray(Image.open(buf))), s


@pytest.mark.parametrize("size", [28, 64])
def test_blurs_keep_a_flat_image_and_fog_and_snow_stay_within_their_bounds(size):
    """Blurs, warps and resampling average neighbouring pixels: a flat image stays flat (±1 for uint8 rounding).
    Fog adds c·plasma (plasma in [0, 1]) and rescales by max/(max + c): a flat v ends in [v²/(v + c), v]. Snow mixes
    the image with its brightened grey (1.5·v + 0.5) by c[6] and adds flakes: v' = c·v + (1 − c)·(1.5·v + 0.5) where
    no flake falls, brighter where one does."""
    v = 128
    flat = Image.fromarray(np.full((size, size, 3), v, np.uint8))
    for name in ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "elastic_transform", "pixelate",
                 "jpeg_compression"):
        for s in range(1, 6):
            out = np.asarray(corrupt(flat, name, s, seed=s), float)
            assert out.shape == (size, size, 3) and np.abs(out - v).max() <= 1, (name, s)
    fog = PUBLISHED["cifar" if size <= 32 else "tiny"]["fog"]
    for s in range(1, 6):
        out = np.asarray(corrupt(flat, "fog", s, seed=s), float)
        x, c = v / 255, fog[s - 1]
        assert out.max() <= v and out.min() >= np.floor(x * x / (x + c) * 255), s
        assert out.min() <= x * x / (x + c) * 255 + 8, s  # the plasma map reaches near 0 inside the crop
    for s, c in enumerate(PUBLISHED["cifar" if size <= 32 else "tiny"]["snow"], 1):
        out = np.asarray(corrupt(flat, "snow", s, seed=s), float)
        assert abs(out.min() - np.floor((c * x + (1 - c) * (1.5 * x + 0.5)) * 255)) <= 1, s
    # a wide image (its scale given): the fog map grows to cover its longer side, beyond the reference size
    wide = Image.fromarray(np.full((size // 2, 3 * size, 3), v, np.uint8))
    scale = "cifar" if size <= 32 else "tiny"
    assert corrupt(wide, "fog", 3, seed=0, scale=scale).size == (3 * size, size // 2)


# The constants of the corruptions whose effect has no closed form (random kernels, shuffles, flakes, textures,
# warps), transcribed from the same generators: per severity 1..5 (elastic: fractions of the image size).
PUBLISHED_RANDOM = {
    "cifar": {"defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
              "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
              "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
              "snow": [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
                       (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
                       (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
              "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
              "elastic_transform": [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
                                    (0.1, 0.03, 0.03)],
              "_frost_resize": 0.2},
    "tiny": {"defocus_blur": [(0.5, 0.6), (1, 0.1), (1.5, 0.1), (2.5, 0.01), (3, 0.1)],
             "glass_blur": [(0.1, 1, 1), (0.5, 1, 1), (0.6, 1, 2), (0.7, 2, 1), (0.9, 2, 2)],
             "motion_blur": [(10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)],
             "snow": [(0.1, 0.2, 1, 0.6, 8, 3, 0.8), (0.1, 0.2, 1, 0.5, 10, 4, 0.8),
                      (0.15, 0.3, 1.75, 0.55, 10, 4, 0.7), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.65),
                      (0.3, 0.3, 1.25, 0.65, 14, 12, 0.6)],
             "frost": [(1, 0.3), (0.9, 0.4), (0.8, 0.45), (0.75, 0.5), (0.7, 0.55)],
             "elastic_transform": [(0, 0, 0.08), (0.05, 0.3, 0.06), (0.1, 0.08, 0.06), (0.1, 0.03, 0.03),
                                   (0.16, 0.03, 0.02)],
             "_frost_resize": 0.3},
}


@pytest.mark.parametrize("scale", ["cifar", "tiny"])
def test_lowres_constants_without_a_closed_form_are_the_published_ones(scale):
    from maxsup.corruptions_lowres import _CONSTANTS

    table = _CONSTANTS[scale]
    for name, want in PUBLISHED_RANDOM[scale].items():
        assert table[name] == want, name
    for s, top in enumerate((1.06, 1.11, 1.16, 1.21, 1.26)):  # zoom factors 1, 1.01, ... below top
        np.testing.assert_allclose(table["zoom_blur"][s], np.arange(1, top, 0.01))


@pytest.mark.parametrize("size,scale", [(28, "cifar"), (32, "cifar"), (64, "tiny")])
def test_lowres_fog_is_the_generators_formula_on_its_plasma_map(size, scale):
    """Fog at 28-64 px: x + c·plasma, rescaled by max/(max + c), with the plasma map drawn first from the seeded
    NumPy generator at the scale's map size (32 for CIFAR-10-C, 64 for Tiny-ImageNet-C, as their generators do)."""
    from corrupt_tta.corruptions import plasma_fractal

    fog = {"cifar": [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
           "tiny": [(0.4, 3), (0.7, 3), (1, 2.5), (1.5, 2), (2, 1.75)]}[scale]
    img = np.random.default_rng(size).integers(0, 256, (size, size, 3), dtype=np.uint8)
    x = img / 255.0
    for s, (c, decay) in enumerate(fog, 1):
        np.random.seed(s)
        plasma = plasma_fractal(mapsize=32 if scale == "cifar" else 64, wibbledecay=decay)[:size, :size, None]
        want = np.uint8(np.clip((x + c * plasma) * x.max() / (x.max() + c), 0, 1) * 255)
        got = np.asarray(corrupt(img, "fog", s, seed=s))
        assert np.abs(got.astype(int) - want).max() <= 1, s


@pytest.mark.parametrize("size", [32, 64])
def test_lowres_elastic_transform_is_a_small_deformation(size):
    """The affine part moves its three control points by at most 8 % of the image and the elastic field is smooth:
    on a ramp of 256/size grey levels per pixel the result stays within a few pixels of the input and keeps the
    image's spread of values (a degenerate affine would collapse it towards one colour)."""
    yy, xx = np.mgrid[0:size, 0:size]
    step = 256 // size
    ramp = np.stack([xx * step, yy * step, (xx + yy) * step // 2], -1).astype(np.uint8)
    for s in range(1, 6):
        out = np.asarray(corrupt(ramp, "elastic_transform", s, seed=s), float)
        assert np.abs(out - ramp).mean() < 0.06 * size * step, s  # moved by under 6 % of the side on average
        assert out.std() == pytest.approx(ramp.std(), rel=0.2), s
