"""maxsup.hub against real HTTP servers on 127.0.0.1 (a fake GitHub REST API + release downloads, a fake Hugging Face
hub), real timm/torchvision models and the authors' real DeiT zip class order (read from ../shared/reference, never
committed). The fake servers publish file names that appear nowhere in maxsup/hub/: the code has to find them."""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import os
import pickle
import re
import socket
import struct
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
import torch
from helpers import QuietHandler, cli_error, folder_acc1_nll, serve_loopback, torch_threads

from maxsup import hub
from maxsup.data import check_class_order
from maxsup.errors import UserError
from maxsup.hub.evaluate import resolve_for_eval
from maxsup.models import create_model, model_from_checkpoint
from maxsup.training import load_checkpoint

ZIP_ORDER_FILE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "deit_zip_class_order.txt"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
DEIT_ASSET = f"/{hub.AUTHORS_REPO}/releases/download/checkpoint_deit/deit_s_maxsup_best_ep297.pth"


# --------------------------------------------------------------------------------------------------------------------
# Fake GitHub (REST API + release downloads + raw files) and Hugging Face hub on one loopback server
# --------------------------------------------------------------------------------------------------------------------
class FakeServer:
    """Serves ``files[url_path] = bytes`` (HF headers ETag/X-Repo-Commit, Range support) and ``api[url_path] = obj``
    as JSON (query strings ignored). ``truncate_once``: paths whose first GET is cut after half the body.
    ``fail[url_path]``: every GET of that path fails: ``"reset"`` (TCP RST before any answer), ``"short"`` (200 with
    the full Content-Length, then 1000 bytes and a close, whatever Range asks), ``"size"`` (HEAD announces 10 bytes
    more than GET sends). ``requests``: (method, path, Range)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.api: dict[str, object] = {}
        self.truncate_once: set[str] = set()
        self.fail: dict[str, str] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        server = self

        class Handler(QuietHandler):
            def _serve(self) -> None:
                rng = self.headers.get("Range")
                server.requests.append((self.command, self.path, rng))
                path = urllib.parse.unquote(self.path.split("?")[0])
                if path in server.api:
                    return self.send(200, json.dumps(server.api[path]).encode(),
                                     {"Content-Type": "application/json"})
                data = server.files.get(path)
                if data is None:
                    return self.send(404, b'{"message": "Not Found"}', {"X-Error-Code": "EntryNotFound"})
                if server.fail.get(path) == "reset" and self.command == "GET":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return self.connection.close()
                if server.fail.get(path) == "short" and self.command == "GET":
                    rng = None  # the same short answer to every request, resumed or not
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                chunk = data[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                announced = len(chunk) + (10 if server.fail.get(path) == "size" and self.command == "HEAD" else 0)
                self.send_header("Content-Length", str(announced))
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if self.command == "HEAD":
                    return
                if server.fail.get(path) == "short":
                    self.wfile.write(chunk[:1000])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if path in server.truncate_once:
                    server.truncate_once.discard(path)
                    self.wfile.write(chunk[: len(chunk) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(chunk)

            do_HEAD = do_GET = _serve

        self.httpd, self.url = serve_loopback(Handler)

    # GitHub -------------------------------------------------------------------------------------------------------
    def release(self, tag: str, assets: dict[str, bytes], *, title: str | None = None, tagged: bool = True,
                digest: bool = True, bad_digest: set[str] = frozenset(), repo: str = hub.AUTHORS_REPO) -> dict:
        """Publish a release of ``repo``: its assets under /{repo}/releases/download/{tag}/..., its JSON at
        /repos/{repo}/releases/tags/{tag} (only if ``tagged``) and in the /repos/{repo}/releases list."""
        listed = []
        for name, data in assets.items():
            path = f"/{repo}/releases/download/{tag}/{name}"
            self.files[path] = data
            sha = "0" * 64 if name in bad_digest else hashlib.sha256(data).hexdigest()
            listed.append({"name": name, "size": len(data), "state": "uploaded", "content_type": "application/zip",
                           "digest": f"sha256:{sha}" if digest else None, "browser_download_url": self.url + path})
        rel = {"tag_name": tag, "name": title if title is not None else tag, "assets": listed}
        api = f"/repos/{repo}/releases"
        if tagged:
            self.api[f"{api}/tags/{tag}"] = rel
        self.api[api] = [r for r in self.api.get(api, []) if r["tag_name"] != tag] + [rel]
        return rel

    # Hugging Face -------------------------------------------------------------------------------------------------
    def hf_repo(self, files: dict[str, bytes], *, bad_oid: set[str] = frozenset(), lfs: bool = True) -> None:
        tree = []
        for name, data in files.items():
            self.files[f"/{hub.HF_RESNET_REPO}/resolve/main/{name}"] = data
            entry = {"type": "file", "path": name, "size": len(data),
                     "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()}
            if lfs and name.endswith(".ckpt"):
                sha = "0" * 64 if name in bad_oid else hashlib.sha256(data).hexdigest()
                entry["lfs"] = {"oid": sha, "size": len(data), "pointerSize": 134}
            tree.append(entry)
        folders = sorted({n.rsplit("/", 1)[0] for n in files if "/" in n})
        tree += [{"type": "directory", "path": f, "oid": "f" * 40, "size": 0} for f in folders]
        self.api[f"/api/models/{hub.HF_RESNET_REPO}/tree/main"] = tree


@pytest.fixture
def server(monkeypatch, tmp_path):
    srv = FakeServer()
    monkeypatch.setenv("HF_ENDPOINT", srv.url)
    monkeypatch.setenv("MAXSUP_GITHUB_API", srv.url)
    monkeypatch.setenv("MAXSUP_GITHUB_RAW_BASE", srv.url)
    monkeypatch.setenv("MAXSUP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def _closed_port_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _blob(seed: int, n: int = 4096) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (n // 32)


def _cli_error(capsys, argv: list[str]) -> str:
    """Run the CLI in-process, expect exit 2 and return its single stderr line."""
    return cli_error(capsys, hub.main, argv, code=2)


def _files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


# Names the authors might have used; none of them appears in maxsup/hub/.
HF_FILES = {"ResNet50/ce_baseline-epoch=89-Val_Acc_Top1=0.77.ckpt": _blob(1),
            "ResNet50/labelsmooth0.1-epoch=89-Val_Acc_Top1=0.77.ckpt": _blob(2),
            "ResNet50/max_suppression-epoch=89-Val_Acc_Top1=0.78.ckpt": _blob(3),
            "README.md": b"---\nlicense: apache-2.0\n---\n", ".gitattributes": b"*.ckpt filter=lfs\n"}
DEIT_ASSETS = {"deit_s_maxsup_best_ep297.pth": _blob(4), "log_deit_small_maxsup.txt": b'{"test_acc1": 76.5}\n'}


# --------------------------------------------------------------------------------------------------------------------
# The rule
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("path", "method"), [
    ("resnet50_ls.ckpt", "ls"), ("LS/last.ckpt", "ls"), ("label_smoothing-epoch=89.ckpt", "ls"),
    ("baseline/last.ckpt", "baseline"), ("r50_ce.pth", "baseline"), ("vanilla.pt", "baseline"),
    ("MaxSup/last.ckpt", "maxsup"), ("max_suppression_r50.ckpt", "maxsup"),
    ("cls_token_maxsup.ckpt", "maxsup"),  # 'ls' inside a word is no LS
    ("maxsup_vs_ls.ckpt", None), ("maxsup.txt", None), ("resnet50.ckpt", None),
])
def test_rule_picks_by_method_and_rejects_mixed_names(path, method):
    hits = [m for m in ("baseline", "ls", "maxsup") if hub.matches_rule(hub.REGISTRY[f"resnet50_{m}"], path)]
    assert hits == ([method] if method else [])


# --------------------------------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------------------------------
def test_download_finds_fetches_and_verifies_unseen_names_then_works_offline(server, tmp_path, capsys):
    server.release("checkpoint_deit", DEIT_ASSETS)
    server.hf_repo(HF_FILES)
    got = {}
    for method in ("baseline", "ls", "maxsup"):
        assert hub.main(["download", f"resnet50_{method}"]) == 0
        got[method] = Path(capsys.readouterr().out.strip())
    assert hub.main(["download", "deit_small_maxsup"]) == 0
    deit = Path(capsys.readouterr().out.strip())
    assert deit == tmp_path / "cache" / "github" / hub.AUTHORS_REPO / "checkpoint_deit" / "deit_s_maxsup_best_ep297.pth"
    assert deit.read_bytes() == DEIT_ASSETS["deit_s_maxsup_best_ep297.pth"]
    for method, name in zip(("baseline", "ls", "maxsup"), list(HF_FILES)[:3], strict=True):
        assert got[method].name == Path(name).name and got[method].read_bytes() == HF_FILES[name]
    # the release was listed through the REST API and the asset fetched from its browser_download_url
    assert ("GET", f"/repos/{hub.AUTHORS_REPO}/releases/tags/checkpoint_deit", None) in server.requests
    assert ("GET", DEIT_ASSET, None) in server.requests

    n = len(server.requests)
    assert hub.download("deit_small_maxsup", offline=True) == deit
    assert hub.download("resnet50_ls", offline=True).read_bytes() == HF_FILES[list(HF_FILES)[1]]
    assert len(server.requests) == n  # offline never touched the network
    # --dest copies the picked file there; a second download reuses the verified copy without fetching it again
    out = hub.download("resnet50_maxsup", dest=tmp_path / "w")
    assert out == tmp_path / "w" / list(HF_FILES)[2] and out.read_bytes() == HF_FILES[list(HF_FILES)[2]]
    assert hub.download("resnet50_maxsup", dest=tmp_path / "w", offline=True) == out  # found there, verified
    hub.download("deit_small_maxsup")
    assert server.requests.count(("GET", DEIT_ASSET, None)) == 1


def test_list_remote_prints_the_rule_and_what_it_picks(server, capsys):
    server.release("checkpoint_deit", DEIT_ASSETS)
    server.hf_repo({k: v for k, v in HF_FILES.items() if "labelsmooth" not in k})
    assert hub.main(["list", "--remote"]) == 0
    out = capsys.readouterr().out
    assert "rule: the one checkpoint file" in out and "max[-_ ]?sup" in out
    assert "picks: deit_s_maxsup_best_ep297.pth (4096 bytes, sha256 " in out
    assert "picks: ResNet50/max_suppression-epoch=89-Val_Acc_Top1=0.78.ckpt" in out
    assert "picks nothing: the Hugging Face repo zhouyuxuanyx/MaxSup-Regularized-ResNet50@main has no file for " \
           "resnet50_ls" in out


def test_release_found_by_title_and_hash_recorded_on_first_download(server, tmp_path, capsys):
    # No tag "checkpoint_deit": the release is titled so. Its assets carry no digest.
    server.release("v1.0", DEIT_ASSETS, title="checkpoint_deit", tagged=False, digest=False)
    path = hub.download("deit_small_maxsup")
    assert path.read_bytes() == DEIT_ASSETS["deit_s_maxsup_best_ep297.pth"]
    records = json.loads((tmp_path / "cache" / "sha256_records.json").read_text())
    key = f"github:{hub.AUTHORS_REPO}@checkpoint_deit/deit_s_maxsup_best_ep297.pth"
    assert records[key]["sha256"] == hashlib.sha256(DEIT_ASSETS["deit_s_maxsup_best_ep297.pth"]).hexdigest()
    assert records[key]["origin"] == "first download"
    # The file changes upstream (same name, same size, no digest): the next download notices and keeps nothing.
    server.release("v1.0", {**DEIT_ASSETS, "deit_s_maxsup_best_ep297.pth": _blob(5)}, title="checkpoint_deit",
                   tagged=False, digest=False)
    err = _cli_error(capsys, ["download", "deit_small_maxsup", "--dest", str(tmp_path / "elsewhere")])
    assert "sha256 mismatch for deit_s_maxsup_best_ep297.pth: recorded at first download" in err
    assert _files_under(tmp_path / "elsewhere") == []
    # ... and so does the offline use of a cached copy that changed on disk
    path.write_bytes(_blob(6))
    err = _cli_error(capsys, ["download", "deit_small_maxsup", "--offline"])
    assert "sha256 mismatch" in err and not path.exists()


def test_hf_file_without_lfs_oid_is_recorded_and_filename_takes_a_repo_path(server, tmp_path):
    server.hf_repo(HF_FILES, lfs=False)
    name = "ResNet50/labelsmooth0.1-epoch=89-Val_Acc_Top1=0.77.ckpt"
    assert hub.download("resnet50_ls").read_bytes() == HF_FILES[name]
    records = json.loads((tmp_path / "cache" / "sha256_records.json").read_text())
    assert records[f"hf:{hub.HF_RESNET_REPO}@main/{name}"] == {
        "sha256": hashlib.sha256(HF_FILES[name]).hexdigest(), "size": len(HF_FILES[name]), "origin": "first download"}
    # --filename with a path inside the repository overrides the rule (here: another method's file)
    other = "ResNet50/ce_baseline-epoch=89-Val_Acc_Top1=0.77.ckpt"
    assert hub.download("resnet50_ls", filename=other, dest=tmp_path / "d").read_bytes() == HF_FILES[other]


def test_no_release_of_that_name_lists_the_releases(server, capsys):
    server.release("zip_annotations", {"train_map.txt": b"x", "val_map.txt": b"y"})
    err = _cli_error(capsys, ["download", "deit_small_maxsup"])
    assert "no release tagged or titled 'checkpoint_deit'" in err and "zip_annotations" in err


def test_ambiguity_names_the_candidates_and_the_flag(server, tmp_path, capsys):
    assets = {"checkpoint.pth": _blob(7), "best_checkpoint.pth": _blob(8), "log.txt": b"{}\n"}
    server.release("checkpoint_deit", assets)
    err = _cli_error(capsys, ["download", "deit_small_maxsup"])
    assert "2 candidate files for deit_small_maxsup (checkpoint.pth, best_checkpoint.pth)" in err
    assert "--filename" in err
    assert hub.download("deit_small_maxsup", filename="best_checkpoint.pth").read_bytes() == _blob(8)
    err = _cli_error(capsys, ["download", "deit_small_maxsup", "--filename", "checkpoint_epoch_299.pth"])
    assert "has no file 'checkpoint_epoch_299.pth'" in err and "best_checkpoint.pth" in err
    # none: the HF repo holds no file for LS
    server.hf_repo({"baseline.pth": _blob(9), "README.md": b"hi"})
    err = _cli_error(capsys, ["download", "resnet50_ls"])
    assert "no file for resnet50_ls" in err and "baseline.pth, README.md" in err and "--filename" in err


def test_empty_release_says_so(server, tmp_path, capsys):
    server.release("checkpoint_deit", {})
    err = _cli_error(capsys, ["download", "deit_small_maxsup"])
    assert "release 'checkpoint_deit'" in err and "holds no files" in err
    err = _cli_error(capsys, ["download", "deit_small_maxsup", "--offline"])
    assert "holds no files" in err and "without --offline" in err


@pytest.mark.parametrize("name", ["deit_small_maxsup", "resnet50_maxsup"])
def test_sha256_mismatch_deletes_the_file(server, tmp_path, capsys, name):
    server.release("checkpoint_deit", DEIT_ASSETS, bad_digest={"deit_s_maxsup_best_ep297.pth"})
    server.hf_repo(HF_FILES, bad_oid=set(HF_FILES))
    err = _cli_error(capsys, ["download", name, "--dest", str(tmp_path / "dest")])
    assert "sha256 mismatch for" in err and "the API states " + "0" * 64 in err and "deleted" in err
    leftovers = [p for p in _files_under(tmp_path / "dest") + _files_under(tmp_path / "cache")
                 if p.read_bytes() in (_blob(3), _blob(4))]
    assert leftovers == []  # neither the file, nor a .part, nor huggingface_hub's blob


def test_interrupted_github_download_resumes_with_range(server, tmp_path):
    data = os.urandom(300_000)
    server.release("checkpoint_deit", {"deit_small_maxsup.pth": data})
    path = f"/{hub.AUTHORS_REPO}/releases/download/checkpoint_deit/deit_small_maxsup.pth"
    server.truncate_once.add(path)
    with pytest.raises(hub.DownloadError, match="interrupted after 150000 bytes.*re-run"):
        hub.download("deit_small_maxsup", dest=tmp_path)
    assert (tmp_path / "deit_small_maxsup.pth.part").stat().st_size == 150_000
    assert not (tmp_path / "deit_small_maxsup.pth").exists()

    got = hub.download("deit_small_maxsup", dest=tmp_path)
    assert got.read_bytes() == data  # verified against the API digest after resuming
    assert server.requests[-1] == ("GET", path, "bytes=150000-")
    assert not (tmp_path / "deit_small_maxsup.pth.part").exists()


def test_corrupt_partial_file_fails_the_digest_and_is_deleted(server, tmp_path, capsys):
    data = os.urandom(100_000)
    server.release("checkpoint_deit", {"deit_small_maxsup.pth": data})
    part = tmp_path / "deit_small_maxsup.pth.part"
    part.write_bytes(b"\0" * 40_000)  # a .part left by some other download: resumed, then the digest fails
    err = _cli_error(capsys, ["download", "deit_small_maxsup", "--dest", str(tmp_path)])
    assert "sha256 mismatch for deit_small_maxsup.pth: the API states" in err
    assert not part.exists() and not (tmp_path / "deit_small_maxsup.pth").exists()
    assert hub.download("deit_small_maxsup", dest=tmp_path).read_bytes() == data  # the next run starts clean


def test_unknown_name_and_network_failure_are_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MAXSUP_CACHE", str(tmp_path / "cache"))
    err = _cli_error(capsys, ["download", "resnet51_maxsup"])
    assert "resnet51_maxsup" in err and all(name in err for name in hub.REGISTRY)

    dead = _closed_port_url()
    monkeypatch.setenv("MAXSUP_GITHUB_API", dead)
    monkeypatch.setenv("HF_ENDPOINT", dead)
    for name in ("deit_small_maxsup", "resnet50_ls"):
        err = _cli_error(capsys, ["download", name])
        assert "cannot reach" in err and "--offline" in err and "--dest" in err, err


LVVIT_ASSETS = {"lvvit_s-26M-224-83.3.pth.tar": _blob(11), "lvvit_s-26M-384-84.4.pth.tar": _blob(12),
                "lvvit_m-56M-224-84.0.pth.tar": _blob(13), "lvvit_m-56M-384-85.4.pth.tar": _blob(14)}


def test_official_lvvit_downloads_from_its_own_repository_and_is_verified(server, tmp_path, capsys):
    """The LV-ViT entries name their publisher's repository and file; the same verified path as the MaxSup ones."""
    server.release("1.0", LVVIT_ASSETS, repo=hub.LVVIT_REPO)
    server.release("v0.2.0", {"lvvit_t.pth": _blob(10)}, repo=hub.LVVIT_REPO)
    server.release("1.0", {"lvvit_s-26M-224-83.3.pth.tar": _blob(99)})  # same tag in the authors' repo: not used
    for name, asset, tag in (("lvvit_s_official", "lvvit_s-26M-224-83.3.pth.tar", "1.0"),
                             ("lvvit_m_official", "lvvit_m-56M-224-84.0.pth.tar", "1.0"),
                             ("lvvit_t_official", "lvvit_t.pth", "v0.2.0")):
        got = hub.download(name)
        assert got == tmp_path / "cache" / "github" / hub.LVVIT_REPO / tag / asset
        assert got.read_bytes() == {**LVVIT_ASSETS, "lvvit_t.pth": _blob(10)}[asset]
        assert ("GET", f"/repos/{hub.LVVIT_REPO}/releases/tags/{tag}", None) in server.requests
        assert hub.download(name, offline=True) == got
    assert hub.REGISTRY["lvvit_s_official"].top1 == 83.3 and hub.REGISTRY["lvvit_t_official"].top1 == 79.1

    server.release("1.0", LVVIT_ASSETS, repo=hub.LVVIT_REPO, bad_digest={"lvvit_m-56M-224-84.0.pth.tar"})
    dest = tmp_path / "fresh"
    err = _cli_error(capsys, ["download", "lvvit_m_official", "--dest", str(dest)])
    assert "sha256 mismatch for lvvit_m-56M-224-84.0.pth.tar: the API states" in err
    assert _files_under(dest) == []
    hub.main(["list"])
    out = capsys.readouterr().out
    assert f"GitHub release {hub.LVVIT_REPO}@v0.2.0" in out and "the file named lvvit_t.pth" in out


@pytest.mark.parametrize("failure", ["reset", "short", "size"])
def test_hugging_face_network_failures_are_one_line_and_leave_no_partial_file(server, tmp_path, capsys, failure):
    server.hf_repo(HF_FILES)
    name = list(HF_FILES)[2]  # the MaxSup file
    server.fail[f"/{hub.HF_RESNET_REPO}/resolve/main/{name}"] = failure
    dest = tmp_path / "weights"
    err = _cli_error(capsys, ["download", "resnet50_maxsup", "--dest", str(dest)])
    assert "Hugging Face hub" in err and "re-run the same command" in err, err
    if failure == "size":  # the server contradicts itself: not a network outage, so no offline advice
        assert "wrong size" in err and "offline" not in err
    else:
        assert {"reset": "ReadError", "short": "RemoteProtocolError"}[failure] in err or "Connection" in err, err
    assert _files_under(dest) == []
    hf = tmp_path / "cache" / "huggingface"
    assert not [p for p in _files_under(hf) if p.suffix == ".incomplete" or "blobs" in p.parts]
    del server.fail[f"/{hub.HF_RESNET_REPO}/resolve/main/{name}"]
    assert hub.download("resnet50_maxsup", dest=dest).read_bytes() == HF_FILES[name]  # the next run starts clean


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
        mp.setattr(hub.zip_order, "ZIP_ORDER_SHA256", hashlib.sha256("\n".join(order).encode()).hexdigest())
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


def test_convert_records_each_architectures_published_eval_transform():
    """torchvision's references: Resize(256) + CenterCrop(224), bilinear (224/256 = 0.875); DeiT's
    --eval-crop-ratio 0.875, bicubic, at the model's own size; LV-ViT's default_cfgs: 0.9 for T/S, 1.0 for M/L."""
    assert hub.eval_transform_for("resnet50") == {"img_size": 224, "crop_pct": 224 / 256, "interpolation": "bilinear"}
    assert hub.eval_transform_for("deit_small_patch16_224") == {"img_size": 224, "crop_pct": 0.875,
                                                                "interpolation": "bicubic"}
    assert hub.eval_transform_for("vit_small_patch16_384", {"img_size": (384, 384)})["img_size"] == 384
    assert hub.eval_transform_for("lvvit_t", {"img_size": 288}) == {"img_size": 288, "crop_pct": 0.9,
                                                                   "interpolation": "bicubic"}
    assert hub.eval_transform_for("lvvit_l")["crop_pct"] == 1.0


def test_read_zip_map_orders_by_label_whatever_the_line_order_and_names_bad_lines(tmp_path):
    """Several images per class, lines in any order, CRLF and blank lines, a space in a file name: the order is
    label -> wnid (the label is the last field). A label with two wnids, a gap in the labels or a line without a
    wnid is refused, naming file:line."""
    good = tmp_path / "map.txt"
    good.write_bytes(b"val/n00000003/b.JPEG\t0\r\n\r\nval/n00000001/c.JPEG\t2\r\n"
                     b"val/n00000002/d 1.JPEG  1\r\nval/n00000003/e.JPEG\t0\r\nval/n00000001/f.JPEG\t2\r\n")
    order = hub.read_zip_map(good)
    assert order == ["n00000003", "n00000002", "n00000001"]
    assert hub.zip_to_standard_permutation(order) == [2, 1, 0]  # sorted wnid j is zip index perm[j]
    assert hub.zip_to_standard_permutation(["n00000002", "n00000003", "n00000001"]) == [2, 0, 1]
    with pytest.raises(hub.ZipMapError, match="twice"):
        hub.zip_to_standard_permutation(["n00000002", "n00000002"])
    two = "map.txt:2: label 0 maps to both n00000001 and n00000002"
    cases = {"val/n00000001/a.JPEG\t0\nval/n00000002/b.JPEG\t0\n": two,
             "val/n00000001/a.JPEG\t0\nval/n00000002/b.JPEG\t2\n": "labels are not 0..1 without gaps",
             "\nval/n00000001/a.JPEG\t0\nval/a.JPEG\t1\n": "map.txt:3 is not '<path with wnid>",
             "val/n00000001/a.JPEG\tx\n": "map.txt:1 is not '<path with wnid>"}
    for text, message in cases.items():
        good.write_text(text)
        with pytest.raises(hub.ZipMapError, match=re.escape(message)):
            hub.read_zip_map(good)


def test_zip_map_download_is_pinned_to_commit_and_file_sha256(zip_order, server, tmp_path, monkeypatch):
    perm = hub.zip_to_standard_permutation(zip_order)
    assert [zip_order[p] for p in perm] == sorted(zip_order) and perm != list(range(1000))
    # The real 50,000-line file is not available here; this one has the same class order in one line per class.
    data = _write_zip_map(tmp_path / "m.txt", zip_order).read_bytes()
    url_path = f"/{hub.AUTHORS_REPO}/{hub.ZIP_MAP_COMMIT}/{hub.ZIP_MAP_PATH}"
    server.files[url_path] = data
    server.files[f"/{hub.AUTHORS_REPO}/HEAD/{hub.ZIP_MAP_PATH}"] = data
    # 1. pinned file sha256: a file with the right class order but other bytes is rejected and not kept
    with pytest.raises(hub.ChecksumError, match=f"pinned {hub.ZIP_MAP_SHA256}"):
        hub.load_zip_order()
    assert _files_under(tmp_path / "cache") == []
    assert [r[1] for r in server.requests] == [url_path]  # the commit, never the default branch
    # 2. with the pin matching the served bytes, the file verifies, then its class order; cached for offline use
    monkeypatch.setattr(hub.zip_order, "ZIP_MAP_SHA256", hashlib.sha256(data).hexdigest())
    assert hub.load_zip_order() == zip_order
    n = len(server.requests)
    assert hub.load_zip_order(offline=True) == zip_order and len(server.requests) == n
    # 3. a cached copy that changed on disk fails the file check on its next use
    cached = tmp_path / "cache" / "zip_map" / hub.ZIP_MAP_COMMIT / "zip_val_map.txt"
    cached.write_bytes(data.replace(b"\t0\n", b"\t0\r\n"))
    with pytest.raises(hub.ChecksumError, match="cached at"):
        hub.load_zip_order(offline=True)
    # 4. the class-order check still runs after the file check: a pinned file with another order is refused
    swapped = list(zip_order)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    bad = _write_zip_map(tmp_path / "bad.txt", swapped).read_bytes()
    server.files[url_path] = bad
    monkeypatch.setattr(hub.zip_order, "ZIP_MAP_SHA256", hashlib.sha256(bad).hexdigest())
    with pytest.raises(hub.ZipMapError, match="does not verify"):
        hub.load_zip_order()


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
    report = json.loads(capsys.readouterr().out)
    # maxsup.models.LAYOUTS names the container: torchvision references share DeiT's {'model': ...}
    assert report["layout"] == {"lightning": "lightning", "ffcv-imagenet": "bare", "torchvision": "deit"}[layout]
    assert ("'module.'/'_orig_mod.' prefixes removed" in report["renames"]) == (layout == "ffcv-imagenet")
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
    assert "fit no known layout" in err and "first unexpected keys: backbone.layer1.0.conv1.weight" in err
    assert all(name in err for name in ("maxsup", "deit", "timm-train", "lightning", "bare"))  # the layouts tried


# --------------------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------------------
def test_evaluate_reports_metrics_of_a_checkpoint(tmp_path, capsys):

    from maxsup.data.fashion_mnist import FashionMNIST
    from maxsup.data.transforms import transform_spec
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
    acc1, nll = folder_acc1_nll(model, tmp_path / "val", spec)
    assert result["n"] == 12
    assert result["acc1"] == pytest.approx(acc1)
    assert result["acc5"] == pytest.approx(100.0)  # 3 classes: top-5 always hits
    assert result["nll"] == pytest.approx(nll, rel=1e-4)
    assert 0.0 <= result["ece"] <= 1.0

    err = _cli_error(capsys, ["evaluate", str(ckpt_path), "--data-path", str(tmp_path)])  # 1 folder: val/
    assert "class folders but the checkpoint predicts 3" in err  # a wrong --data-path is named, not mis-scored


def _ours(path: Path, num_classes: int = 3, seed: int = 0, **extra) -> tuple[torch.nn.Module, Path]:
    """A small ViT saved in this project's format (``arch`` + ``eval_transform``; ``extra``: ``trainer``, ``args``,
    ``hub``, as the trainers and ``convert`` write them), with a perturbed head so that any permutation shows."""
    from maxsup.data.transforms import transform_spec
    from maxsup.models import arch_spec

    torch.manual_seed(seed)
    model = create_model("vit_tiny_patch16_224", num_classes, **VIT_KW).eval()
    with torch.no_grad():
        model.head.bias.copy_(torch.randn(num_classes))
    torch.save({"model": model.state_dict(), "arch": arch_spec("vit_tiny_patch16_224", num_classes, **VIT_KW),
                "eval_transform": transform_spec(28, crop_pct=1.0), "epoch": 0, **extra}, path)
    return model, path


#: a one-block ViT at 28 px (the DeiT family), small enough for a 1000-class head
VIT_KW = {"img_size": 28, "patch_size": 7, "embed_dim": 32, "depth": 1, "num_heads": 2}
SORTED_FILES = {  # files of ours whose head provably is in sorted-wnid order, and the reason the error gives
    "deit-folders": ({"trainer": "Deit/main.py", "args": {"cache": False, "data_set": "IMNET"}},
                     "Deit/main.py without --cache"),
    "common-resnet": ({"trainer": "Conv/common_resnet/train.py", "args": {}}, "Conv/common_resnet/train.py"),
    "converted": ({"args": {"cache": True}, "hub": {"label_order": "zip->standard"}}, "written by hub convert"),
}


@pytest.mark.parametrize("command", ["evaluate", "convert"])
@pytest.mark.parametrize("kind", list(SORTED_FILES))
@pytest.mark.parametrize("flags, named", [
    (["--zip-map", "zip_val_map.txt"], "--zip-map applies"),
    (["--label-order", "zip"], "--label-order zip applies"),
    (["--label-order", "zip", "--zip-map", "zip_val_map.txt"], "--zip-map and --label-order zip apply")])
def test_a_zip_order_is_refused_for_our_files_in_sorted_order(command, kind, flags, named, tmp_path, capsys):
    """Files of ours trained on class folders (or written by convert) are in sorted-wnid order: ``evaluate`` and
    ``convert`` refuse to permute them, with the same line (``convert`` permuted a ``hub convert`` output of a
    --cache run a second time, and ignored --zip-map without --label-order zip)."""
    extra, reason = SORTED_FILES[kind]
    _, path = _ours(tmp_path / "ours.pth", **extra)
    argv = (["evaluate", str(path), "--data-path", str(tmp_path)] if command == "evaluate" else
            ["convert", str(path), str(tmp_path / "dst.pth"), "--arch", "vit_tiny_patch16_224"])
    err = _cli_error(capsys, [*argv, *flags])
    them = "them" if " and " in named else "it"
    where = reason if kind == "converted" else f"trained by {reason}"
    assert err == (f"error: {path} is in this project's format and records its class order (sorted wnids: "
                   f"{where}); {named} to upstream files and to our runs trained on the authors' zip maps only "
                   f"(drop {them})"), err
    assert not (tmp_path / "dst.pth").exists()


@pytest.mark.parametrize("flags, line", [
    (["--plain-torchvision"], "--plain-torchvision applies to upstream files only (write the plain network with "
     "`python -m maxsup.hub convert {path} OUT.pth --arch vit_tiny_patch16_224 --plain-torchvision` and evaluate "
     "OUT.pth)"),
    (["--arch", "deit_tiny_patch16_224"], "--arch deit_tiny_patch16_224 names another one (pass --arch "
     "vit_tiny_patch16_224)")])
def test_evaluate_refuses_network_flags_that_do_not_fit_a_file_in_our_format(flags, line, tmp_path, capsys):
    """Both flags were silently ignored for our files: the file's own network was scored."""
    _, path = _ours(tmp_path / "ours.pth", trainer="Deit/main.py", args={"cache": False})
    err = _cli_error(capsys, ["evaluate", str(path), "--data-path", str(tmp_path), *flags])
    assert err == (f"error: {path} is in this project's format and records its network (vit_tiny_patch16_224); "
                   f"{line.format(path=path)}"), err
    if flags[0] == "--arch":  # convert refuses it too, before writing anything
        dst = tmp_path / "dst.pth"
        err = _cli_error(capsys, ["convert", str(path), str(dst), *flags])
        assert err.endswith(line) and not dst.exists(), err


def _deit_cache_run(images: Path, root: Path, class_to_idx: dict[str, int] | None = None) -> Path:
    """A real Deit/main.py --cache run (1 epoch, a one-block ViT) on a zip cache that ``write_zip_cache`` writes
    into ``root`` from the ImageFolder ``images`` (``class_to_idx``: the maps' labels, default sorted folders, as
    data/prepare_imagenet_zip.py writes them); returns its checkpoint.pth."""
    from flat_import import load_flat_modules

    from maxsup.data.zipcache import write_zip_cache

    for split in ("train", "val"):
        write_zip_cache(images / split, root / f"{split}.zip", root / f"{split}_map.txt", split=split,
                        class_to_idx=class_to_idx)
    deit = load_flat_modules(Path(__file__).resolve().parents[1] / "Deit", ("main", "engine", "datasets", "samplers"))
    with torch_threads(1):
        deit["main"].cli(["--data-set", "IMNET", "--cache", "--data-path", str(root), "--model", "vit_tiny_patch16_224",
                          "--input-size", "28", "--model-kwargs", *[f"{k}={v}" for k, v in VIT_KW.items()],
                          "--batch-size", "4", "--num_workers", "0", "--print-freq", "0", "--eval-crop-ratio", "1.0",
                          "--mixup", "0", "--cutmix", "0", "--epochs", "1", "--lr", "5e-3", "--unscale-lr",
                          "--warmup-epochs", "0", "--aa", "none", "--reprob", "0", "--color-jitter", "0",
                          "--no-model-ema", "--output_dir", str(root / "out")])
    return root / "out" / "checkpoint.pth"


@pytest.fixture(scope="module")
def our_cache_run(fmnist_image_folder, tmp_path_factory):
    """:func:`_deit_cache_run` on a zip cache with sorted labels of 3 Fashion-MNIST classes (class folders named
    tshirt, trouser, pullover: not wnids); returns (its checkpoint.pth, the val ImageFolder)."""
    images = fmnist_image_folder(4, 3)
    return _deit_cache_run(images, tmp_path_factory.mktemp("cache_run")), images / "val"


#: the Fashion-MNIST class folders renamed to made-up wnids whose sorted order differs from the folders'
WNID_OF = {"tshirt": "n01000000", "pullover": "n02000000", "trouser": "n03000000"}
#: a map label order that is not the sorted one (as the authors' maps are not): label k names PERMUTED[k]
PERMUTED = ["n03000000", "n01000000", "n02000000"]


@pytest.fixture(scope="module")
def wnid_cache_runs(fmnist_image_folder, tmp_path_factory):
    """Two runs of :func:`_deit_cache_run` on the same 3 wnid class folders: ``permuted`` on maps in :data:`PERMUTED`
    label order, ``sorted`` on maps in sorted-wnid order (this project's data/ scripts); returns ({kind:
    checkpoint.pth}, the val ImageFolder of wnid folders)."""
    import shutil

    images = tmp_path_factory.mktemp("wnid_images")
    for split in ("train", "val"):
        for folder, wnid in WNID_OF.items():
            shutil.copytree(fmnist_image_folder(4, 3) / split / folder, images / split / wnid)
    runs = {"permuted": _deit_cache_run(images, tmp_path_factory.mktemp("permuted_run"),
                                        {w: k for k, w in enumerate(PERMUTED)}),
            "sorted": _deit_cache_run(images, tmp_path_factory.mktemp("sorted_run"))}
    return runs, images / "val"


def test_a_cache_run_records_its_class_order_and_convert_sorts_its_head_by_it(wnid_cache_runs, tmp_path, capsys,
                                                                              caplog):
    """A --cache run on maps whose labels are not in sorted-wnid order (the authors' maps are not) records the wnid
    of each label; ``convert`` (and ``evaluate``) with the default ``auto`` sort its head by those names, with no
    zip map and ``--offline``, so that each class's logit is unchanged and an ImageFolder of the wnid folders
    scores it right. Before, the file did not say its order and ``auto`` kept the permuted head."""
    runs, val = wnid_cache_runs
    src = runs["permuted"]
    ours = load_checkpoint(src)
    assert ours["classes"] == PERMUTED  # index = label, as the train map numbers the class folders
    dst = tmp_path / "converted.pth"
    with caplog.at_level(logging.INFO, logger="maxsup.hub"):
        hub.main(["convert", str(src), str(dst), "--arch", "vit_tiny_patch16_224", "--offline"])
    assert json.loads(capsys.readouterr().out)["label_order"] == "recorded->standard"
    assert ("permuted head.weight, head.bias rows from the class order the file records (3 wnids, not sorted) to "
            "sorted-wnid (ImageFolder) order") in caplog.text
    assert "pass --label-order zip" not in caplog.text
    converted = load_checkpoint(dst)
    assert converted["classes"] == sorted(PERMUTED) and converted["hub"]["label_order"] == "recorded->standard"
    x = torch.randn(5, 3, 28, 28)
    with torch.inference_mode():
        before, after = model_from_checkpoint(ours).eval()(x), model_from_checkpoint(converted).eval()(x)
    for wnid in PERMUTED:  # each class keeps its logit, now at its sorted (ImageFolder) index
        torch.testing.assert_close(after[:, sorted(PERMUTED).index(wnid)], before[:, PERMUTED.index(wnid)],
                                   rtol=0, atol=0)
    assert not torch.equal(after, before)

    common = ["--data-path", str(val), "--workers", "0", "--device", "cpu", "--batch-size", "4", "--offline"]
    results = []
    for path in (src, dst):  # evaluate permutes the same way on the fly; the converted file is kept as it is
        hub.main(["evaluate", str(path), *common])
        results.append({k: v for k, v in json.loads(capsys.readouterr().out).items() if k != "checkpoint"})
    acc1, nll = folder_acc1_nll(model_from_checkpoint(converted).eval(), val, converted["eval_transform"])
    assert results[0] == results[1] and results[0]["n"] == 9
    assert results[0]["acc1"] == pytest.approx(acc1) and results[0]["nll"] == pytest.approx(nll, rel=1e-4)

    # --label-order standard keeps the head (and its recorded names) as trained
    kept = tmp_path / "kept.pth"
    hub.main(["convert", str(src), str(kept), "--arch", "vit_tiny_patch16_224", "--label-order", "standard"])
    assert json.loads(capsys.readouterr().out)["label_order"] == "standard"
    kept_ckpt = load_checkpoint(kept)
    assert kept_ckpt["classes"] == PERMUTED
    assert torch.equal(kept_ckpt["model"]["head.weight"], ours["model"]["head.weight"])
    # the file says its order: the authors' zip order (or a map of it) is refused, not applied on top
    for flags, named, them in ((["--label-order", "zip"], "--label-order zip applies", "it"),
                               (["--zip-map", "zip_val_map.txt"], "--zip-map applies", "it")):
        for argv in (["convert", str(src), str(tmp_path / "x.pth"), "--arch", "vit_tiny_patch16_224"],
                     ["evaluate", str(src), "--data-path", str(val)]):
            err = _cli_error(capsys, [*argv, *flags])
            assert err == (f"error: {src} is in this project's format and records its class order (wnids, not "
                           f"sorted: its recorded classes), by which --label-order auto permutes its head to "
                           f"sorted-wnid order; {named} to upstream files and to our runs that do not record their "
                           f"classes only (drop {them})"), err
    assert not (tmp_path / "x.pth").exists()


def test_deit_eval_refuses_a_checkpoint_that_records_another_class_order(wnid_cache_runs):
    """Deit/main.py --eval of a run on permuted zip maps against an ImageFolder of the same wnids would score each
    logit against another class's label: the recorded ``classes`` make it one line instead (before: a silent, wrong
    accuracy). The run on sorted maps evaluates there, and an ImageFolder-order eval of it is right."""
    from flat_import import load_flat_modules

    runs, val = wnid_cache_runs
    deit = load_flat_modules(Path(__file__).resolve().parents[1] / "Deit", ("main", "engine", "datasets", "samplers"))
    common = ["--data-set", "IMNET", "--data-path", str(val.parent), "--model", "vit_tiny_patch16_224",
              "--input-size", "28", "--model-kwargs", *[f"{k}={v}" for k, v in VIT_KW.items()], "--batch-size", "4",
              "--num_workers", "0", "--eval-crop-ratio", "1.0", "--eval"]
    with torch_threads(1), pytest.raises(UserError) as exc:
        deit["main"].cli([*common, "--resume", str(runs["permuted"])])
    first = next(i for i, (a, b) in enumerate(zip(PERMUTED, sorted(PERMUTED), strict=True)) if a != b)
    assert str(exc.value).startswith(f"{runs['permuted']} records its classes in another order than this data's "
                                      f"(label {first} is {PERMUTED[first]!r} there, {sorted(PERMUTED)[first]!r} here)")
    with torch_threads(1):
        stats = deit["main"].cli([*common, "--resume", str(runs["sorted"])])
    acc1, _ = folder_acc1_nll(model_from_checkpoint(load_checkpoint(runs["sorted"])).eval(), val,
                              load_checkpoint(runs["sorted"])["eval_transform"])
    assert stats["acc1"] == pytest.approx(acc1)
    # other names (another spelling, another dataset) or no record at all are not refused: only a reordering is
    for recorded, current in ((["tshirt", "trouser"], ["T-shirt/top", "Trouser"]), (None, ["a", "b"])):
        check_class_order(recorded, current, "f.pth")


def test_a_sorted_cache_run_proves_its_order_and_an_old_file_behaves_as_before(wnid_cache_runs, tmp_path, capsys,
                                                                              caplog):
    """A --cache run on this project's sorted maps records sorted wnids, which proves its order: ``--label-order
    zip`` is refused (before, it permuted the head away from the labels it was trained on). A file from before the
    names were recorded (the key removed) keeps today's rule: ``auto`` keeps the head and says how to permute it."""
    runs, _ = wnid_cache_runs
    src = runs["sorted"]
    ours = load_checkpoint(src)
    assert ours["classes"] == sorted(PERMUTED)
    err = _cli_error(capsys, ["convert", str(src), str(tmp_path / "x.pth"), "--arch", "vit_tiny_patch16_224",
                              "--label-order", "zip"])
    assert err == (f"error: {src} is in this project's format and records its class order (sorted wnids: its "
                   f"recorded classes); --label-order zip applies to upstream files and to our runs trained on the "
                   f"authors' zip maps only (drop it)"), err
    dst = tmp_path / "sorted.pth"
    with caplog.at_level(logging.INFO, logger="maxsup.hub"):
        hub.main(["convert", str(src), str(dst), "--arch", "vit_tiny_patch16_224", "--offline"])
    assert json.loads(capsys.readouterr().out)["label_order"] == "standard"
    assert "pass --label-order zip" not in caplog.text and "permuted" not in caplog.text
    assert load_checkpoint(dst)["classes"] == sorted(PERMUTED)
    assert torch.equal(load_checkpoint(dst)["model"]["head.weight"], ours["model"]["head.weight"])

    old = load_checkpoint(runs["permuted"])
    del old["classes"]
    torch.save(old, tmp_path / "old.pth")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="maxsup.hub"):
        hub.main(["convert", str(tmp_path / "old.pth"), str(tmp_path / "old_converted.pth"), "--arch",
                  "vit_tiny_patch16_224", "--offline"])
    assert json.loads(capsys.readouterr().out)["label_order"] == "standard"
    assert "pass --label-order zip if those were the authors' maps" in caplog.text
    converted = load_checkpoint(tmp_path / "old_converted.pth")
    assert "classes" not in converted
    assert torch.equal(converted["model"]["head.weight"], old["model"]["head.weight"])


def test_our_cache_run_converts_to_a_file_that_scores_the_same(our_cache_run, tmp_path, capsys, caplog):
    """Our --cache runs read the zip maps this project writes, in sorted-wnid order: ``convert`` (label order auto)
    keeps the head as trained. It treated the run's ``cache=True`` as the authors' zip order: it fetched their map
    (``--offline``: an error) and would have permuted a 1000-class head away from the labels it was trained on."""
    ckpt_path, val = our_cache_run
    ours = load_checkpoint(ckpt_path)
    assert ours["args"]["cache"] is True and ours["trainer"] == "Deit/main.py"
    dst = tmp_path / "converted.pth"
    with caplog.at_level(logging.INFO, logger="maxsup.hub"):
        hub.main(["convert", str(ckpt_path), str(dst), "--arch", "vit_tiny_patch16_224", "--offline"])
    assert json.loads(capsys.readouterr().out)["label_order"] == "standard"
    assert "pass --label-order zip if those were the authors' maps" in caplog.text
    converted = load_checkpoint(dst)
    assert converted["arch"] == ours["arch"] and converted["eval_transform"] == ours["eval_transform"]
    x = torch.randn(4, 3, 28, 28)
    with torch.inference_mode():
        torch.testing.assert_close(model_from_checkpoint(converted).eval()(x), model_from_checkpoint(ours).eval()(x),
                                   rtol=0, atol=0)
    common = ["--data-path", str(val), "--workers", "0", "--device", "cpu", "--batch-size", "4", "--offline"]
    results = []
    for path, flags in ((ckpt_path, []), (dst, []), (ckpt_path, ["--arch", "vit_tiny_patch16_224"])):
        hub.main(["evaluate", str(path), *common, *flags])  # the network the file records: --arch is harmless
        results.append({k: v for k, v in json.loads(capsys.readouterr().out).items() if k != "checkpoint"})
    acc1, nll = folder_acc1_nll(model_from_checkpoint(ours).eval(), val, ours["eval_transform"])
    assert results[0] == results[1] == results[2] and results[0]["n"] == 9
    assert results[0]["acc1"] == pytest.approx(acc1) and results[0]["nll"] == pytest.approx(nll, rel=1e-4)


def test_zip_order_is_explicit_for_our_runs_on_the_authors_maps(zip_order, tmp_path, capsys):
    """A --cache run of ours may have read the authors' maps (their zip order); its file does not say which maps:
    ``auto`` keeps the head (above), ``--label-order zip`` permutes it, the same way in ``convert`` and
    ``evaluate``; ``--zip-map`` alone would be ignored, so it is refused."""
    model, src = _ours(tmp_path / "ours.pth", 1000, trainer="Deit/main.py", args={"cache": True, "data_set": "IMNET"})
    zip_map = str(_write_zip_map(tmp_path / "zip_val_map.txt", zip_order))
    err = _cli_error(capsys, ["convert", str(src), str(tmp_path / "x.pth"), "--arch", "vit_tiny_patch16_224",
                              "--zip-map", zip_map])
    assert "--zip-map alone would be ignored (add --label-order zip" in err, err
    dst = tmp_path / "standard.pth"
    hub.main(["convert", str(src), str(dst), "--arch", "vit_tiny_patch16_224", "--label-order", "zip",
              "--zip-map", zip_map])
    assert json.loads(capsys.readouterr().out)["label_order"] == "zip->standard"
    perm = torch.tensor(hub.zip_to_standard_permutation(zip_order))  # standard class j = zip logit perm[j]
    x = torch.randn(2, 3, 28, 28)
    with torch.inference_mode():
        want = model(x)[:, perm]
        torch.testing.assert_close(model_from_checkpoint(load_checkpoint(dst)).eval()(x), want, rtol=0, atol=0)
        args = hub.get_args_parser().parse_args(["evaluate", str(src), "--data-path", ".", "--label-order", "zip",
                                                     "--zip-map", zip_map])
        evaluated = resolve_for_eval(str(src), args)
        torch.testing.assert_close(model_from_checkpoint(evaluated).eval()(x), want, rtol=0, atol=0)
        args.label_order, args.zip_map = "auto", None  # the default keeps the head as trained
        assert torch.equal(resolve_for_eval(str(src), args)["model"]["head.weight"], model.head.weight)
    # the converted file keeps cache=True in its args; converting it again must not permute it a second time
    again = tmp_path / "again.pth"
    hub.main(["convert", str(dst), str(again), "--arch", "vit_tiny_patch16_224", "--offline"])
    assert json.loads(capsys.readouterr().out)["label_order"] == "standard"
    assert torch.equal(load_checkpoint(again)["model"]["head.weight"], load_checkpoint(dst)["model"]["head.weight"])


def test_recorded_wnids_sort_a_1000_class_head_as_the_zip_map_does_and_other_names_keep_it(zip_order, tmp_path,
                                                                                           capsys):
    """A Conv/ffcv run on a .beton written from the authors' zip + map records its sidecar's classes, the wnids in
    zip order: ``auto`` sorts its head (and token head) by them exactly as the zip map would, with no map and
    ``--offline``. Names that are not wnids (Fashion-MNIST's, whose label order is the dataset's own) keep the
    head, and ``--label-order zip`` stays possible on such a --cache run, as before."""
    model, src = _ours(tmp_path / "ffcv.pth", 1000, trainer="Conv/ffcv/main.py", args={}, classes=zip_order)
    dst = tmp_path / "sorted.pth"
    hub.main(["convert", str(src), str(dst), "--arch", "vit_tiny_patch16_224", "--offline"])
    assert json.loads(capsys.readouterr().out)["label_order"] == "recorded->standard"
    perm = torch.tensor(hub.zip_to_standard_permutation(zip_order))
    converted = load_checkpoint(dst)
    assert converted["classes"] == sorted(zip_order)
    for key in ("head.weight", "head.bias"):
        assert torch.equal(converted["model"][key], model.state_dict()[key][perm]), key

    fmnist = ["T-shirt/top", "Trouser", "Pullover"]  # not sorted, and not to be sorted
    model, src = _ours(tmp_path / "fmnist.pth", 3, trainer="Deit/main.py", args={"cache": True}, classes=fmnist)
    hub.main(["convert", str(src), str(dst), "--arch", "vit_tiny_patch16_224", "--offline", "--force"])
    assert json.loads(capsys.readouterr().out)["label_order"] == "standard"
    assert load_checkpoint(dst)["classes"] == fmnist
    assert torch.equal(load_checkpoint(dst)["model"]["head.weight"], model.head.weight)
    zip_map = str(_write_zip_map(tmp_path / "zip_val_map.txt", zip_order))
    err = _cli_error(capsys, ["convert", str(src), str(dst), "--arch", "vit_tiny_patch16_224", "--force",
                              "--label-order", "zip", "--zip-map", zip_map])  # applied (and then too small)
    assert err == "error: zip map has 1000 classes but the checkpoint's head has 3", err


def test_convert_permutes_a_token_head_with_the_class_head_and_keeps_a_cifar_resnet(zip_order, tmp_path, capsys):
    """A token-labelling run of ours on the authors' maps: its token head predicts the same 1000 classes, so
    ``--label-order zip`` permutes it too (only the class head was permuted). A CIFAR ResNet of ours (classifier
    ``fc``, not ``head``) converts to the same function (convert named no ``head.weight`` and stopped)."""
    from maxsup.data.transforms import transform_spec
    from maxsup.models import arch_spec

    torch.manual_seed(0)
    model = create_model("vit_tiny_patch16_224", 1000, token_head="smmix", **VIT_KW).eval()
    src = tmp_path / "token.pth"
    torch.save({"model": model.state_dict(), "arch": arch_spec("vit_tiny_patch16_224", 1000, token_head="smmix",
                                                               **VIT_KW),
                "eval_transform": transform_spec(28), "trainer": "Deit/main.py", "args": {"cache": True}}, src)
    dst = tmp_path / "token_standard.pth"
    hub.main(["convert", str(src), str(dst), "--arch", "vit_tiny_patch16_224", "--label-order", "zip", "--zip-map",
              str(_write_zip_map(tmp_path / "zip_val_map.txt", zip_order))])
    capsys.readouterr()
    perm = torch.tensor(hub.zip_to_standard_permutation(zip_order))
    sd, converted = model.state_dict(), load_checkpoint(dst)["model"]
    for key in ("backbone.head.weight", "backbone.head.bias", "aux_head.weight", "aux_head.bias"):
        assert torch.equal(converted[key], sd[key][perm]), key

    resnet = create_model("cifar_resnet10", 10, width=4).eval()
    src, dst = tmp_path / "cifar.pth", tmp_path / "cifar_converted.pth"
    torch.save({"model": resnet.state_dict(), "arch": arch_spec("cifar_resnet10", 10, width=4),
                "eval_transform": transform_spec(32), "trainer": "Conv/common_resnet/train.py", "args": {}}, src)
    hub.main(["convert", str(src), str(dst), "--arch", "cifar_resnet10"])
    assert json.loads(capsys.readouterr().out)["arch"] == {"name": "cifar_resnet10", "num_classes": 10,
                                                           "kwargs": {"width": 4}}
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(model_from_checkpoint(load_checkpoint(dst)).eval()(x), resnet(x), rtol=0, atol=0)
