"""Checkpoint I/O, RNG capture, the model factory and the Fashion-MNIST reader."""

import argparse
import gzip
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from maxsup.data.fashion_mnist import FashionMNIST, read_idx
from maxsup.data.transforms import eval_transform, transform_spec
from maxsup.errors import UserError
from maxsup.models import arch_spec, create_model, features_and_logits, model_from_checkpoint
from maxsup.training import atomic_save, atomic_write, load_checkpoint, rng_state, set_rng_state


def test_atomic_save_keeps_old_file_when_write_fails(tmp_path):
    path = tmp_path / "ckpt.pth"
    atomic_save({"epoch": 1}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_save({"epoch": 2, "x": Boom()}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]  # no temp file left behind
    atomic_write(tmp_path / "a.json", '{"ok": 1}')
    assert (tmp_path / "a.json").read_text() == '{"ok": 1}'


def test_namespace_checkpoint_needs_the_allow_list(tmp_path):
    path = tmp_path / "authors.pth"
    torch.save({"model": {}, "args": argparse.Namespace(cache=True)}, path)
    with pytest.raises(UserError, match="allow_namespace"):
        load_checkpoint(path)
    assert load_checkpoint(path, allow_namespace=True)["args"].cache is True


@pytest.mark.parametrize("scoped", [True, False], ids=["torch>=2.5", "torch-2.4"])
def test_namespace_allow_list_is_scoped_to_the_load(scoped, tmp_path, monkeypatch):
    """torch 2.4 has no ``safe_globals`` context, only the process-wide list: the fallback restores that list, so a
    later load without ``allow_namespace`` is refused as before and allow-listed types of others stay."""
    if not scoped:
        monkeypatch.delattr(torch.serialization, "safe_globals", raising=False)
    path = tmp_path / "authors.pth"
    torch.save({"model": {}, "args": argparse.Namespace(cache=True)}, path)
    before = set(torch.serialization.get_safe_globals())
    assert load_checkpoint(path, allow_namespace=True)["args"].cache is True
    assert set(torch.serialization.get_safe_globals()) == before
    with pytest.raises(UserError, match="allow_namespace"):
        load_checkpoint(path)


def test_truncated_checkpoint_is_a_user_error(tmp_path):
    path = tmp_path / "t.pth"
    atomic_save({"model": {"w": torch.randn(100, 100)}}, path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UserError, match="not a readable"):
        load_checkpoint(path)
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")


def test_rng_state_roundtrip_through_weights_only_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    atomic_save({"rng": rng_state()}, tmp_path / "r.pth")
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(load_checkpoint(tmp_path / "r.pth")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first
    # Gaussian draws come in pairs: after an odd number of them Python and NumPy each hold the second one of a
    # pair (random's gauss_next, NumPy's has_gauss/cached_gaussian); the state keeps it
    random.gauss(0, 1), np.random.standard_normal()
    atomic_save({"rng": rng_state()}, tmp_path / "g.pth")
    first = [random.gauss(0, 1), random.gauss(0, 1), *np.random.standard_normal(3)]
    set_rng_state(load_checkpoint(tmp_path / "g.pth")["rng"])
    assert [random.gauss(0, 1), random.gauss(0, 1), *np.random.standard_normal(3)] == first


def test_seed_everything_seeds_numpy_modulo_2_to_the_32():
    """NumPy takes seeds below 2³²: a larger seed is reduced modulo 2³², every smaller one is used as it is."""
    from maxsup.training import seed_everything

    for seed, np_seed in ((7, 7), (2**32 + 5, 5), (2**32 - 1, 2**32 - 1)):
        seed_everything(seed)
        got = (np.random.random(3), random.random(), torch.rand(2))
        np.random.seed(np_seed)
        random.seed(seed)
        torch.manual_seed(seed)
        want = (np.random.random(3), random.random(), torch.rand(2))
        assert np.array_equal(got[0], want[0]) and got[1] == want[1] and torch.equal(got[2], want[2]), seed


def test_cifar_resnet_and_checkpoint_rebuild(tmp_path):
    model = create_model("cifar_resnet18", 5, width=8)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    x = torch.randn(2, 3, 28, 28)
    feats, logits = features_and_logits(model.eval(), x)
    assert feats.shape == (2, 64) and logits.shape == (2, 5)
    assert torch.allclose(logits, model.fc(feats), atol=1e-6)
    ckpt = {"model": model.state_dict(), "arch": arch_spec("cifar_resnet18", 5, width=8)}
    atomic_save(ckpt, tmp_path / "m.pth")
    rebuilt = model_from_checkpoint(load_checkpoint(tmp_path / "m.pth")).eval()
    assert torch.equal(rebuilt(x), model(x))
    with pytest.raises(UserError, match="does not match"):
        model_from_checkpoint({"model": model.state_dict(), "arch": arch_spec("cifar_resnet10", 5, width=8)})
    with pytest.raises(UserError, match="architecture cannot be determined"):
        model_from_checkpoint({"model": model.state_dict()})
    with pytest.raises(ValueError, match="unknown model"):
        create_model("resnet5000", 10)


def test_blurpool_resnet50_has_the_authors_six_blur_layers():
    sd = create_model("resnet50", 1000, blurpool=True).state_dict()
    blur = sorted(k for k in sd if k.endswith("blur_filter"))
    assert blur == sorted(["layer2.0.conv2.blur_filter", "layer3.0.conv2.blur_filter", "layer4.0.conv2.blur_filter",
                           "layer2.0.downsample.0.blur_filter", "layer3.0.downsample.0.blur_filter",
                           "layer4.0.downsample.0.blur_filter"])
    assert sd["layer3.0.conv2.blur_filter"].shape == (256, 1, 3, 3)
    assert "layer2.0.conv2.conv.weight" in sd and len(sd) == 320 + 6


def test_vit_penultimate_is_the_pre_head_token():
    model = create_model("vit_tiny_patch16_224", 3, img_size=28, patch_size=7, depth=2).eval()
    x = torch.randn(2, 3, 28, 28)
    feats, logits = features_and_logits(model, x)
    pre = model.forward_head(model.forward_features(x), pre_logits=True)
    assert torch.allclose(feats, pre, atol=1e-6) and logits.shape == (2, 3)


def test_fashion_mnist_subset_relabels_in_given_order():
    ds = FashionMNIST(train=False, classes=[8, 0], limit_per_class=5)
    assert len(ds) == 10 and sorted(set(ds.targets)) == [0, 1]
    assert ds.classes == ["Bag", "T-shirt/top"]
    full = FashionMNIST(train=False)
    bags = [i for i, t in enumerate(full.targets) if t == 8][:5]
    assert np.array_equal(np.asarray(ds[ds.targets.index(0)][0]), np.asarray(full[bags[0]][0]))
    x = eval_transform(transform_spec(32, mean=(0.5,) * 3, std=(0.5,) * 3))(ds[0][0])
    assert x.shape == (3, 32, 32)


def test_bad_idx_and_bad_class_list(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 20))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x02ab"))
    with pytest.raises(UserError, match="truncated"):
        read_idx(tmp_path / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(UserError, match="classes"):
        FashionMNIST(train=False, classes=[3, 3])


def test_cli_reports_one_line(tmp_path):
    code = ("from maxsup.cli import run_cli\nfrom maxsup.training import load_checkpoint\n"
            f"run_cli(lambda: load_checkpoint({str(tmp_path / 'nope.pth')!r}))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip().startswith("error: checkpoint not found") and len(res.stderr.strip().splitlines()) == 1
