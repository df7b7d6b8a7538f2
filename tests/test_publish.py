"""Export and push against a loopback fake Hugging Face Hub: a small DeiT run (trained here by Deit/main.py) is pushed
with huggingface_hub's real client, then ``timm.create_model('hf-hub:ORG/NAME', pretrained=True)`` in a fresh process
pointed at the same server (huggingface_hub reads HF_ENDPOINT at import) builds a model whose outputs equal ours."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import DEIT_TINY_VIT, QuietHandler, serve_loopback

from maxsup.errors import UserError
from maxsup.hub.publish import export, push
from maxsup.models import model_from_checkpoint
from maxsup.training import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = DEIT_TINY_VIT
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


class FakeHub:
    """The Hub endpoints huggingface_hub's create_repo / upload_folder and hf_hub_download use: repo creation,
    preupload (every file 'regular', i.e. sent inline in the commit), NDJSON commits, and resolve downloads."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.tokens: list[str | None] = []
        hub = self

        class Handler(QuietHandler):
            def _reply(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send(code, body, {"Content-Type": "application/json", **(headers or {})})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hub.tokens.append(self.headers.get("Authorization"))
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts[:3] == ["api", "repos", "create"]:
                    req = json.loads(body)
                    repo = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
                    hub.repos.setdefault(repo, {})
                    return self._reply(200, json.dumps({"url": f"{hub.url}/{repo}", "name": repo}).encode())
                if parts == ["api", "validate-yaml"]:  # the model card's front matter
                    return self._reply(200, b'{"errors": [], "warnings": []}')
                if parts[:2] == ["api", "models"] and parts[4] == "preupload":
                    files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                             for f in json.loads(body)["files"]]
                    return self._reply(200, json.dumps({"files": files}).encode())
                if parts[:2] == ["api", "models"] and parts[4] == "commit":
                    repo = "/".join(parts[2:4])
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            hub.repos[repo][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    return self._reply(200, json.dumps({"commitUrl": f"{hub.url}/{repo}/commit/{COMMIT}",
                                                        "commitOid": COMMIT}).encode())
                return self._reply(404, b'{"error": "not found"}')

            def do_GET(self) -> None:
                parts = self.path.split("?")[0].strip("/").split("/")
                if len(parts) >= 5 and parts[2] == "resolve":
                    data = hub.repos.get("/".join(parts[:2]), {}).get("/".join(parts[4:]))
                    if data is not None:
                        return self._reply(200, data, {"ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                                                       "X-Repo-Commit": COMMIT,
                                                       "Content-Type": "application/octet-stream"})
                return self._reply(404, b'{"error": "Entry not found"}', {"X-Error-Code": "EntryNotFound"})

            do_HEAD = do_GET

        self.httpd, self.url = serve_loopback(Handler)


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    hub = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield hub
    hub.httpd.shutdown()
    hub.httpd.server_close()


@pytest.fixture(scope="module")
def deit_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("deit_run")
    subprocess.run([sys.executable, str(ROOT / "Deit" / "main.py"), "--data-set", "FMNIST", "--classes", "0,1,2",
                    "--limit-per-class", "16", *TINY, "--epochs", "1", "--loss", "maxsup", "--output_dir", str(out)],
                   check=True, env=ENV, capture_output=True, timeout=600)
    return out


def test_push_then_timm_hf_hub_builds_the_same_model(deit_run, fake_hub, tmp_path):
    url = push(deit_run, "org/tiny-deit-maxsup", token="hf_test")
    assert url.endswith(COMMIT)
    files = fake_hub.repos["org/tiny-deit-maxsup"]
    assert set(files) == {"model.safetensors", "config.json", "README.md"}
    assert all(t == "Bearer hf_test" for t in fake_hub.tokens)
    config = json.loads(files["config.json"])
    assert config["architecture"] == "vit_tiny_patch16_224" and config["num_classes"] == 3
    assert config["model_args"].items() >= {"patch_size": 7, "embed_dim": 32, "depth": 1, "num_heads": 2}.items()
    assert config["pretrained_cfg"]["input_size"] == [3, 28, 28] and config["pretrained_cfg"]["crop_pct"] == 1.0
    card = files["README.md"].decode()
    run = json.loads((deit_run / "run.json").read_text())
    assert "hf-hub:org/tiny-deit-maxsup" in card and run["provenance"]["git_commit"] in card
    last = json.loads((deit_run / "log.txt").read_text().splitlines()[-1])
    assert f"| last_top1 | {last[run['metric_keys']['acc1']]:.2f} |" in card

    x = torch.randn(4, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    code = ("import sys, timm, torch; m = timm.create_model('hf-hub:org/tiny-deit-maxsup', pretrained=True).eval(); "
            "x = torch.load(sys.argv[1]); torch.save(m(x).detach(), sys.argv[2])")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.pt"), str(tmp_path / "y.pt")], check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, timeout=300)
    ours = model_from_checkpoint(load_checkpoint(deit_run / "checkpoint.pth")).eval()
    with torch.inference_mode():
        torch.testing.assert_close(torch.load(tmp_path / "y.pt"), ours(x), rtol=0, atol=0)


def test_push_refuses_a_malformed_repo_id_and_a_missing_token(deit_run, fake_hub):
    with pytest.raises(UserError, match="not of the form ORG/NAME"):
        push(deit_run, "no-slash", token="hf_test")
    with pytest.raises(UserError, match="no Hugging Face token"):
        push(deit_run, "org/name")
    assert fake_hub.repos == {}  # nothing was sent


def test_export_refuses_an_existing_target_and_models_timm_cannot_build(deit_run, tmp_path):
    out = export(deit_run, tmp_path / "exported")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    with pytest.raises(UserError, match="exists; pass --force"):
        export(deit_run, out)
    export(deit_run, out, force=True)
    ckpt = load_checkpoint(deit_run / "checkpoint.pth")
    ckpt["arch"] = {"name": "cifar_resnet10", "num_classes": 3, "kwargs": {}}
    torch.save(ckpt, tmp_path / "cifar.pth")
    with pytest.raises(UserError, match="no timm counterpart"):
        export(tmp_path / "cifar.pth", tmp_path / "cifar_export")
    assert not (tmp_path / "cifar_export").exists() and not list(tmp_path.glob(".cifar_export*"))


def test_cli_export_push_and_their_one_line_errors(deit_run, fake_hub, tmp_path, capsys):
    from maxsup import hub

    assert hub.main(["export", str(deit_run), str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out")
    for argv, text in ((["export", str(deit_run), str(tmp_path / "out")], "exists; pass --force"),
                       (["push", str(deit_run), "--repo-id", "a/b/c", "--token", "t"], "not of the form ORG/NAME"),
                       (["push", str(deit_run), "--repo-id", "org/x"], "no Hugging Face token"),
                       (["push", str(deit_run), "--repo-id", "org/x", "--token", "t", "--paper-table",
                         str(tmp_path / "T5.md")], "--paper-table")):
        with pytest.raises(SystemExit) as exc:
            hub.main(argv)
        err = capsys.readouterr().err
        assert exc.value.code != 0 and err.startswith("error: ") and err.count("\n") == 1 and text in err, err
    table = "| Method | DeiT-S (ours) | paper |\n|---|---|---|\n| MaxSup | 12.00 ± 0.00 (n=1) | 81.01 |\n"
    (tmp_path / "T5.md").write_text(table)
    assert hub.main(["push", str(deit_run), "--repo-id", "org/x", "--token", "t", "--paper-table",
                     str(tmp_path / "T5.md")]) == 0
    assert table in fake_hub.repos["org/x"]["README.md"].decode()
