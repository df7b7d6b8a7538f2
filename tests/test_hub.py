"""maxsup.hub against real HTTP servers on 127.0.0.1 (a fake Hugging Face hub and a fake GitHub), real timm/torchvision
models and the authors' real DeiT zip class order (read from ../shared/reference, never committed)."""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import os
import pickle
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from maxsup import hub
from maxsup.checkpoint import load_checkpoint
from maxsup.errors import UserError
from maxsup.models import create_model, model_from_checkpoint

ZIP_ORDER_FILE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "deit_zip_class_order.txt"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


# --------------------------------------------------------------------------------------------------------------------
# Fake Hugging Face hub + GitHub (release assets and raw files) on one loopback server
# --------------------------------------------------------------------------------------------------------------------
class FakeServer:
    """Serves ``files[url_path] = bytes`` with HF headers (ETag, X-Repo-Commit) and Range support.

    ``truncate_once``: paths whose first GET is cut after half the body. ``requests``: (method, path, Range)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncate_once: set[str] = set()
        self.requests: list[tuple[str, str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _serve(self, body: bool) -> None:
                rng = self.headers.get("Range")
                server.requests.append((self.command, self.path, rng))
                data = server.files.get(self.path)
                if data is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                chunk = data[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(chunk)))
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if not body:
                    return
                if self.path in server.truncate_once:
                    server.truncate_once.discard(self.path)
                    self.wfile.write(chunk[: len(chunk) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(chunk)

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def github_path(self, tag: str, asset: str) -> str:
        return f"/{hub.AUTHORS_REPO}/releases/download/{tag}/{asset}"

    def hf_path(self, filename: str, revision: str = "main") -> str:
        return f"/{hub.HF_RESNET_REPO}/resolve/{revision}/{filename}"


@pytest.fixture
def server(monkeypatch, tmp_path):
    srv = FakeServer()
    srv.thread.start()
    monkeypatch.setenv("HF_ENDPOINT", srv.url)
    monkeypatch.setenv("MAXSUP_GITHUB_BASE", srv.url)
    monkeypatch.setenv("MAXSUP_GITHUB_RAW_BASE", srv.url)
    monkeypatch.setenv("MAXSUP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def _closed_port_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _small_checkpoint_bytes(tmp_path: Path, seed: int = 0) -> bytes:
    torch.manual_seed(seed)
    path = tmp_path / f"small{seed}.pth"
    torch.save({"model": {"fc.weight": torch.randn(4, 3)}, "epoch": 3}, path)
    return path.read_bytes()


def _cli_error(capsys, argv: list[str]) -> str:
    """Run the CLI in-process, expect exit 2 and return its single stderr line."""
    with pytest.raises(SystemExit) as exc:
        hub.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# --------------------------------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------------------------------
def test_download_fetches_from_fake_hub_and_github_then_works_offline(server, tmp_path, capsys):
    hf_bytes, gh_bytes = _small_checkpoint_bytes(tmp_path, 0), _small_checkpoint_bytes(tmp_path, 1)
    server.files[server.hf_path("maxsup.ckpt")] = hf_bytes
    server.files[server.github_path("checkpoint_deit", "checkpoint.pth")] = gh_bytes

    assert hub.main(["download", "resnet50_maxsup", "--dest", str(tmp_path / "hf")]) == 0
    assert hub.main(["download", "deit_small_maxsup"]) == 0
    out = capsys.readouterr().out.split()
    assert Path(out[0]) == tmp_path / "hf" / "maxsup.ckpt" and Path(out[0]).read_bytes() == hf_bytes
    assert Path(out[1]) == tmp_path / "cache" / "github" / "checkpoint_deit" / "checkpoint.pth"
    assert Path(out[1]).read_bytes() == gh_bytes
    assert ("GET", server.hf_path("maxsup.ckpt"), None) in server.requests

    n_requests = len(server.requests)
    assert hub.download("deit_small_maxsup", offline=True) == Path(out[1])
    assert hub.download("resnet50_maxsup", offline=True).read_bytes() == hf_bytes  # huggingface_hub's cache
    assert len(server.requests) == n_requests  # offline mode never touched the network
    # an asset name the registry does not know is a flag away
    server.files[server.github_path("checkpoint_deit", "best_checkpoint.pth")] = hf_bytes
    got = hub.download("deit_small_maxsup", filename="best_checkpoint.pth", dest=tmp_path / "gh",
                       sha256=hashlib.sha256(hf_bytes).hexdigest())
    assert got.read_bytes() == hf_bytes


@pytest.mark.parametrize("name", ["deit_small_maxsup", "resnet50_baseline"])
def test_sha256_mismatch_leaves_no_file_and_names_it(server, tmp_path, capsys, name):
    data = _small_checkpoint_bytes(tmp_path)
    entry = hub.REGISTRY[name]
    server.files[server.github_path(entry.revision, entry.filename)] = data
    server.files[server.hf_path(entry.filename)] = data
    dest = tmp_path / "dest"
    err = _cli_error(capsys, ["download", name, "--dest", str(dest), "--sha256", "0" * 64])
    assert f"sha256 mismatch for {entry.filename}" in err
    assert not dest.exists() or list(dest.iterdir()) == []
    blobs = list((tmp_path / "cache").rglob("*")) if (tmp_path / "cache").exists() else []
    assert not [p for p in blobs if p.is_file() and p.read_bytes() == data]  # nothing left in the HF cache either


def test_missing_file_names_the_filename_flag(server, capsys):
    err = _cli_error(capsys, ["download", "resnet50_ls"])
    assert "ls.ckpt is not in the Hugging Face repo" in err and "--filename" in err
    err = _cli_error(capsys, ["download", "deit_small_maxsup"])
    assert "HTTP 404" in err and "--filename" in err


def test_interrupted_github_download_resumes_with_range(server, tmp_path):
    data = os.urandom(300_000)
    path = server.github_path("checkpoint_deit", "checkpoint.pth")
    server.files[path] = data
    server.truncate_once.add(path)
    sha = hashlib.sha256(data).hexdigest()
    with pytest.raises(hub.DownloadError, match="interrupted after 150000 bytes.*re-run"):
        hub.download("deit_small_maxsup", dest=tmp_path, sha256=sha)
    assert (tmp_path / "checkpoint.pth.part").stat().st_size == 150_000
    assert not (tmp_path / "checkpoint.pth").exists()

    got = hub.download("deit_small_maxsup", dest=tmp_path, sha256=sha)
    assert got.read_bytes() == data
    assert server.requests[-1] == ("GET", path, "bytes=150000-")
    assert not (tmp_path / "checkpoint.pth.part").exists()


def test_unknown_name_and_network_failure_are_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MAXSUP_CACHE", str(tmp_path / "cache"))
    err = _cli_error(capsys, ["download", "resnet51_maxsup"])
    assert "resnet51_maxsup" in err and all(name in err for name in hub.REGISTRY)

    dead = _closed_port_url()
    monkeypatch.setenv("MAXSUP_GITHUB_BASE", dead)
    monkeypatch.setenv("HF_ENDPOINT", dead)
    for name in ("deit_small_maxsup", "resnet50_ls"):
        err = _cli_error(capsys, ["download", name])
        assert "--offline" in err and "--dest" in err, err


def test_module_entry_point_reports_without_traceback(tmp_path):
    env = {**os.environ, "MAXSUP_CACHE": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "maxsup.hub", "evaluate", "deit_tiny", "--data-path", "."],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "Traceback" not in proc.stderr
    assert "unknown checkpoint 'deit_tiny'" in proc.stderr and "deit_small_maxsup" in proc.stderr


# --------------------------------------------------------------------------------------------------------------------
# Safe loading
# --------------------------------------------------------------------------------------------------------------------
def test_namespace_checkpoint_loads_only_through_the_allow_list(tmp_path, caplog):
    path = tmp_path / "deit.pth"
    torch.save({"model": {"head.bias": torch.zeros(3)}, "args": argparse.Namespace(cache=True, lr=5e-4)}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    with caplog.at_level(logging.WARNING, logger="maxsup.hub"):
        ckpt = hub.load_released_checkpoint(path)
    assert ckpt["args"] == {"cache": True, "lr": 5e-4}
    assert "exactly argparse.Namespace allow-listed" in caplog.text

    other = tmp_path / "other.pth"  # any other pickled type stays refused
    torch.save({"model": {}, "args": datetime.date(2024, 10, 24)}, other)
    with pytest.raises(UserError, match="outside the weights-only allow-list"):
        hub.load_released_checkpoint(other)


# --------------------------------------------------------------------------------------------------------------------
# DeiT zip label order
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def zip_order():
    """A synthetic 1000-class order (shuffled made-up wnids, not the authors' order), pinned in place of the authors'
    sha256 for these tests, so that they always run; the real order is checked below when it is available."""
    import random

    order = [f"n{7_000_000 + 7919 * i:08d}" for i in range(1000)]
    random.Random(11).shuffle(order)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hub, "ZIP_ORDER_SHA256", hashlib.sha256("\n".join(order).encode()).hexdigest())
        yield order


def test_authors_zip_order_gives_the_documented_permutation():
    if not ZIP_ORDER_FILE.is_file():
        pytest.skip(f"needs the reference class order at {ZIP_ORDER_FILE}")
    order = hub.verify_zip_order(ZIP_ORDER_FILE.read_text().split())
    assert hub.zip_to_standard_permutation(order)[:10] == [538, 735, 432, 61, 458, 233, 188, 549, 354, 625]


def _write_zip_map(path: Path, order: list[str]) -> Path:
    """A map in the authors' zip_val_map.txt format (one image per class is enough to define the order)."""
    path.write_text("".join(f"val/{w}/ILSVRC2012_val_{i + 1:08d}.JPEG\t{i}\n" for i, w in enumerate(order)))
    return path


def test_zip_order_verifies_and_gives_documented_permutation(zip_order, server, tmp_path):
    perm = hub.zip_to_standard_permutation(zip_order)
    assert [zip_order[p] for p in perm] == sorted(zip_order) and perm != list(range(1000))
    # downloaded at run time from the (fake) authors' repository, cached, then used offline
    server.files[f"/{hub.AUTHORS_REPO}/HEAD/{hub.ZIP_MAP_PATH}"] = _write_zip_map(tmp_path / "m.txt",
                                                                                   zip_order).read_bytes()
    assert hub.load_zip_order() == zip_order
    n = len(server.requests)
    assert hub.load_zip_order(offline=True) == zip_order and len(server.requests) == n


def test_tampered_zip_map_is_rejected(zip_order, tmp_path, capsys):
    swapped = list(zip_order)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    bad_map = _write_zip_map(tmp_path / "zip_val_map.txt", swapped)
    src = tmp_path / "src.pth"
    torch.save({"model": {"head.weight": torch.zeros(1000, 4)}, "args": {"cache": True}}, src)
    err = _cli_error(capsys, ["convert", str(src), str(tmp_path / "dst.pth"), "--arch", "deit_small_patch16_224",
                              "--zip-map", str(bad_map)])
    assert "does not verify" in err and "--zip-map" in err
    assert not (tmp_path / "dst.pth").exists()


def test_deit_zip_order_checkpoint_converts_to_standard_logits(zip_order, tmp_path, capsys):
    torch.manual_seed(0)
    standard = create_model("deit_small_patch16_224", 1000).eval()
    sd = standard.state_dict()
    # The authors' run: logit z belongs to wnid zip_order[z]; sorted index of that wnid = ImageFolder label.
    sorted_index = {w: i for i, w in enumerate(sorted(zip_order))}
    to_zip = torch.tensor([sorted_index[w] for w in zip_order])
    released = {**sd, "head.weight": sd["head.weight"][to_zip], "head.bias": sd["head.bias"][to_zip]}
    src = tmp_path / "checkpoint.pth"
    torch.save({"model": released, "epoch": 299, "args": argparse.Namespace(cache=True, model="our_patch16_224")}, src)

    dst = tmp_path / "deit_standard.pth"
    hub.main(["convert", str(src), str(dst), "--arch", "deit_small_patch16_224",
              "--zip-map", str(_write_zip_map(tmp_path / "zip_val_map.txt", zip_order))])
    report = json.loads(capsys.readouterr().out)
    assert report["label_order"] == "zip->standard"

    ckpt = load_checkpoint(dst)  # plain weights_only: the converted file holds no Namespace
    assert ckpt["args"]["model"] == "our_patch16_224" and ckpt["epoch"] == 299
    assert ckpt["eval_transform"]["crop_pct"] == 0.875 and ckpt["eval_transform"]["interpolation"] == "bicubic"
    converted = model_from_checkpoint(ckpt).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        want, got = standard(x), converted(x)
    naive_logits = want[:, to_zip]  # what the released head computes: logit z is standard class to_zip[z]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert not torch.equal(naive_logits.argmax(1), want.argmax(1))  # the trap: unpermuted logits disagree


# --------------------------------------------------------------------------------------------------------------------
# ResNet layouts
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def blurpool_resnet():
    # ResNet-18 keeps the test fast; the key layouts and the BlurPool wrapping rule are those of the ResNet-50.
    torch.manual_seed(0)
    model = create_model("resnet18", 10, blurpool=True).eval()
    # non-trivial BN statistics so a wrong mapping of running stats would show in the logits
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def _layouts(model: torch.nn.Module) -> dict[str, dict]:
    sd = model.state_dict()
    return {
        "lightning": {"state_dict": {**{f"model.{k}": v for k, v in sd.items()},
                                     "criterion.supervise": torch.zeros(10, 10)},
                      "epoch": 89, "global_step": 1, "pytorch-lightning_version": "2.2.0"},
        "ffcv-imagenet": {f"module.{k}": v for k, v in sd.items()},
        "torchvision": {"model": sd, "epoch": 5, "args": {"lr": 0.5}},
    }


@pytest.mark.parametrize("layout", ["lightning", "ffcv-imagenet", "torchvision"])
def test_resnet_layouts_load_strictly_into_blurpool_resnet(blurpool_resnet, layout, tmp_path, capsys):
    src, dst = tmp_path / "src.ckpt", tmp_path / "dst.pth"
    torch.save(_layouts(blurpool_resnet)[layout], src)
    hub.main(["convert", str(src), str(dst), "--arch", "resnet18"])
    assert json.loads(capsys.readouterr().out)["layout"] == layout
    ckpt = load_checkpoint(dst)
    assert ckpt["arch"] == {"name": "resnet18", "num_classes": 10, "kwargs": {"blurpool": True}}
    assert ckpt["eval_transform"]["img_size"] == 256  # ffcv-imagenet evaluates at 256 px
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(model_from_checkpoint(ckpt).eval()(x), blurpool_resnet(x), rtol=0, atol=0)


def test_plain_torchvision_is_an_explicit_opt_in(blurpool_resnet, tmp_path):
    raw = _layouts(blurpool_resnet)["lightning"]
    ckpt = hub.convert_checkpoint(raw, "resnet18", plain_torchvision=True)
    assert ckpt["arch"]["kwargs"] == {} and ckpt["hub"]["plain_torchvision"] is True
    plain = model_from_checkpoint(ckpt).eval()
    assert not any(k.endswith("blur_filter") for k in plain.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():  # same weights, different function: the blur is gone
        assert not torch.allclose(plain(x), blurpool_resnet(x), atol=1e-3)


def test_unknown_resnet_layout_shows_first_unexpected_keys(tmp_path, capsys):
    model = create_model("resnet18", 10)
    sd = {("backbone." + k if k.startswith("layer1") else k): v for k, v in model.state_dict().items()}
    src = tmp_path / "odd.pth"
    torch.save({"model": sd}, src)
    err = _cli_error(capsys, ["convert", str(src), str(tmp_path / "dst.pth"), "--arch", "resnet18"])
    assert "match no known layout" in err and "first unexpected keys: backbone.layer1.0.conv1.weight" in err


# --------------------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------------------
def test_evaluate_reports_metrics_of_a_checkpoint(tmp_path, capsys):
    from torchvision.datasets import ImageFolder

    from maxsup.data.fashion_mnist import FashionMNIST
    from maxsup.data.transforms import eval_transform, transform_spec
    from maxsup.models import arch_spec

    data = FashionMNIST(train=False, classes=[0, 1, 2], limit_per_class=4)
    for i, (img, label) in enumerate(data):
        folder = tmp_path / "val" / f"n0000000{label}"
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"{i}.png")
    torch.manual_seed(0)
    model = create_model("cifar_resnet10", 3, width=8).eval()
    spec = transform_spec(32, crop_pct=0.875)
    ckpt_path = tmp_path / "ckpt.pth"
    torch.save({"model": model.state_dict(), "arch": arch_spec("cifar_resnet10", 3, width=8),
                "eval_transform": spec, "args": {}, "epoch": 0}, ckpt_path)

    hub.main(["evaluate", str(ckpt_path), "--data-path", str(tmp_path / "val"), "--workers", "0",
              "--device", "cpu", "--batch-size", "5"])
    result = json.loads(capsys.readouterr().out)
    folder = ImageFolder(str(tmp_path / "val"), transform=eval_transform(spec))
    x, y = torch.stack([img for img, _ in folder]), torch.tensor(folder.targets)
    with torch.inference_mode():
        logits = model(x)
    assert result["n"] == 12
    assert result["acc1"] == pytest.approx((logits.argmax(1) == y).float().mean().item() * 100)
    assert result["acc5"] == pytest.approx(100.0)  # 3 classes: top-5 always hits
    assert result["nll"] == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-4)
    assert 0.0 <= result["ece"] <= 1.0

    err = _cli_error(capsys, ["evaluate", str(ckpt_path), "--data-path", str(tmp_path)])  # 1 folder: val/
    assert "class folders but the checkpoint predicts 3" in err  # a wrong --data-path is named, not mis-scored
