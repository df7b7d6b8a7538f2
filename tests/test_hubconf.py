"""hubconf.py through torch.hub itself (``source="local"`` on this checkout), against the loopback GitHub/Hugging Face
server of test_hub.py: the released-weights entries download, verify and convert; the constructors build."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest
import torch
from test_hub import DEIT_ASSET, FakeServer, server  # noqa: F401  (the loopback server fixture)

import hubconf
from maxsup import hub
from maxsup.errors import UserError
from maxsup.models import create_model

REPO = str(Path(__file__).resolve().parents[1])


def _saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_the_public_callables_are_exactly_the_entry_points():
    # torch.hub.list's rule (it has no source="local"): public module-level callables of hubconf
    listed = [f for f in dir(hubconf) if callable(getattr(hubconf, f)) and not f.startswith("_")]
    assert sorted(listed) == sorted(hubconf.ENTRY_POINTS)


@pytest.fixture(scope="module")
def deit_release():
    torch.manual_seed(0)
    model = create_model("deit_small_patch16_224", 1000).eval()
    # The authors' file: {'model', 'epoch', 'args'} with a Namespace (no zip cache here, so no label permutation)
    blob = _saved({"model": model.state_dict(), "epoch": 297, "args": argparse.Namespace(cache=False)})
    return model, blob


def test_deit_small_maxsup_downloads_verifies_and_matches_the_released_weights(server, deit_release):  # noqa: F811
    model, blob = deit_release
    server.release("checkpoint_deit", {"deit_s_maxsup_best_ep297.pth": blob})
    loaded = torch.hub.load(REPO, "deit_small_maxsup", source="local", pretrained=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert not loaded.training
    assert loaded.eval_transform["crop_pct"] == 0.875 and loaded.eval_transform["interpolation"] == "bicubic"
    assert ("GET", DEIT_ASSET, None) in server.requests


def test_a_file_that_fails_its_digest_is_refused(server, deit_release):  # noqa: F811
    _, blob = deit_release
    name = "deit_s_maxsup_best_ep297.pth"
    server.release("checkpoint_deit", {name: blob}, bad_digest={name})
    with pytest.raises(UserError, match="sha256 mismatch"):
        torch.hub.load(REPO, "deit_small_maxsup", source="local", pretrained=True)


def test_lvvit_pretrained_is_the_official_release_verified(server):  # noqa: F811
    """lvvit_t(pretrained=True): LV-ViT's bare state_dict from zihangJiang/TokenLabeling's release v0.2.0."""
    torch.manual_seed(0)
    model = create_model("lvvit_t", 1000).eval()
    server.release("v0.2.0", {"lvvit_t.pth": _saved(model.state_dict())}, repo=hub.LVVIT_REPO)
    loaded = torch.hub.load(REPO, "lvvit_t", source="local", pretrained=True)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert (loaded.eval_transform["crop_pct"], loaded.eval_transform["interpolation"]) == (0.9, "bicubic")
    assert ("GET", f"/{hub.LVVIT_REPO}/releases/download/v0.2.0/lvvit_t.pth", None) in server.requests


def test_released_architecture_without_weights_and_constructors():
    resnet = torch.hub.load(REPO, "resnet50_maxsup", source="local", pretrained=False)
    assert any(name.endswith("blur_filter") for name, _ in resnet.named_buffers())  # ffcv's BlurPool ResNet-50
    lvvit = torch.hub.load(REPO, "lvvit_t", source="local", num_classes=7, img_size=64)
    assert lvvit.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 7)  # training mode also returns the token logits
    cifar = torch.hub.load(REPO, "create_model", "cifar_resnet10", source="local", num_classes=10)
    assert cifar(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="pretrained=True"):
        torch.hub.load(REPO, "resnet50_maxsup", source="local", pretrained=True, num_classes=10)
    with pytest.raises(RuntimeError, match="Cannot find callable nope"):
        torch.hub.load(REPO, "nope", source="local")
