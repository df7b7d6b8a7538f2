"""``--resume URL`` / ``--finetune URL`` (facebookresearch/deit's ``--resume https://…``; FFCV's
``--training.resume=URL`` / ``--training.finetune=URL``) against a real HTTP server on 127.0.0.1: the file lands
once in torch.hub's cache (``$TORCH_HOME``, here a tmp folder), a sha256 prefix in its name is checked, and from then
on the run is the one a local path gives. A URL is never the run folder's own checkpoint, and a bad URL, a 404, an
unreachable host or a wrong hash is one ``error:`` line that writes nothing into the output folder."""

from __future__ import annotations

import functools
import hashlib
import shutil
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import cli_error, ffcv_argv, keeping_ffcv_trainers, load_ffcv_main
from test_run_folder import COMMON, COMMON_TINY, DEIT, DEIT_TINY, _snapshot

from maxsup.cli import run_cli
from maxsup.errors import UserError
from maxsup.training import check_new_run, load_checkpoint


class FileServer:
    """Serves the files of ``root`` on 127.0.0.1 and records the paths asked for."""

    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:
                server.requests.append(self.path)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """One CPU thread, no launcher variables, and torch.hub's cache in this test's tmp folder."""
    for var in ("SEEDS", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _published(src: Path, folder: Path, stem: str) -> str:
    """Copy ``src`` into ``folder`` under torch.hub's name convention ``<stem>-<sha256[:8]>.pth``; its name."""
    name = f"{stem}-{hashlib.sha256(src.read_bytes()).hexdigest()[:8]}.pth"
    shutil.copyfile(src, folder / name)
    return name


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A finished 1-epoch run of each trainer, its checkpoint published under a hashed name on a local server."""
    root = tmp_path_factory.mktemp("www")
    names = {}
    for trainer, module, tiny, flag in (("deit", DEIT, DEIT_TINY, "--output_dir"),
                                        ("common_resnet", COMMON, COMMON_TINY, "--output-dir")):
        run = tmp_path_factory.mktemp(trainer) / "run"
        run_cli(module.cli, [*tiny, "--epochs", "1", flag, str(run)])
        names[trainer] = (run / "checkpoint.pth", _published(run / "checkpoint.pth", root, trainer))
    (root / "tampered-0123abcd.pth").write_bytes((root / names["deit"][1]).read_bytes())  # a name that lies
    for sub in ("a", "b"):  # one file name at two URLs, as Hugging Face's .../resolve/main/model.pth
        (root / sub).mkdir()
        (root / sub / "model.pth").write_bytes(f"weights of {sub}".encode())
    server = FileServer(root)
    yield server, names
    server.close()


def _cache(tmp_path: Path) -> Path:
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def _error_line(module, argv: list[str], capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_cli(module.cli, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code != 0 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_deit_eval_from_a_url_downloads_once_and_scores_like_the_local_file(served, tmp_path):
    server, names = served
    local, name = names["deit"]
    url = f"{server.url}/{name}"
    base = [*DEIT_TINY, "--output_dir", str(tmp_path / "unused"), "--eval"]
    from_url = run_cli(DEIT.cli, [*base, "--resume", url])
    assert (_cache(tmp_path) / name).read_bytes() == local.read_bytes()  # torch.hub's cache, torch.hub's file name
    assert sorted(p.name for p in _cache(tmp_path).iterdir()) == [name]  # no .part / .download / lock file left
    asked = len(server.requests)
    again = run_cli(DEIT.cli, [*base, "--resume", url])
    assert len(server.requests) == asked  # the cached copy is used: no second download
    from_path = run_cli(DEIT.cli, [*base, "--resume", str(local)])
    for key in ("acc1", "nll", "ece"):
        assert from_url[key] == again[key] == from_path[key], key
    assert not (tmp_path / "unused").exists()  # an evaluation writes nothing into its output folder


def test_deit_finetune_from_a_url_starts_from_those_weights(served, tmp_path, capsys):
    server, names = served
    local, name = names["deit"]
    out = tmp_path / "ft"
    capsys.readouterr()
    run_cli(DEIT.cli, [*DEIT_TINY, "--epochs", "1", "--lr", "0", "--output_dir", str(out),
                       "--finetune", f"{server.url}/{name}"])
    before, after = load_checkpoint(local)["model"], load_checkpoint(out / "checkpoint.pth")["model"]
    assert f"--finetune {server.url}/{name}: using {_cache(tmp_path) / name}" in capsys.readouterr().out
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)  # lr 0: unchanged


def test_deit_resume_from_a_url_continues_the_run_in_a_new_folder(served, tmp_path, capsys):
    """The published checkpoint finished its 1 epoch: resumed from the URL, the run is at its end, as from the file."""
    server, names = served
    local, name = names["deit"]
    outs = {}
    for how, source in (("url", f"{server.url}/{name}"), ("path", str(local))):
        out = tmp_path / how
        capsys.readouterr()
        outs[how] = run_cli(DEIT.cli, [*DEIT_TINY, "--epochs", "1", "--output_dir", str(out), "--resume", source])
        shown = _cache(tmp_path) / name if how == "url" else local
        assert f"Resumed from {shown} at epoch 1" in capsys.readouterr().out
    url, path = _snapshot(tmp_path / "url"), _snapshot(tmp_path / "path")
    assert outs["url"] == outs["path"] and url.keys() == path.keys() and url["log.txt"] == path["log.txt"]


def test_a_url_is_never_the_folders_own_checkpoint(served, tmp_path, capsys):
    server, names = served
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("{}\n")
    before, asked = _snapshot(out), len(server.requests)
    msg = _error_line(DEIT, [*DEIT_TINY, "--epochs", "2", "--output_dir", str(out), "--resume",
                             f"{server.url}/{names['deit'][1]}"], capsys)
    assert f"{out} already holds a run" in msg and "--overwrite" in msg, msg
    assert _snapshot(out) == before and len(server.requests) == asked  # refused before anything was downloaded


def test_a_url_whose_path_reads_like_the_folder_is_still_foreign(tmp_path, monkeypatch):
    """``Path("http://host/ckpt.pth").parent`` is ``http:/host``: a folder of that relative name must not take the URL
    for its own checkpoint."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "http:" / "host"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text("{}\n")
    kw = dict(overwrite=False, resume_hint="--resume", overwrite_hint="--overwrite")
    with pytest.raises(UserError, match="already holds a run"):
        check_new_run("http:/host", ["run.json"], resume_from="http://host/checkpoint.pth", **kw)
    check_new_run("http:/host", ["run.json"], resume_from="http:/host/checkpoint.pth", **kw)  # a path: its own


def _bad_url(server_url: str, case: str, stem: str) -> tuple[str, str]:
    """(URL, words its error line must hold) of one kind of bad checkpoint URL: a file the server lacks, a port
    nothing listens on, no host, a file whose name's sha256 prefix does not match its bytes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    return {"missing": (f"{server_url}/{stem}-0badc0de.pth", "HTTP 404"),
            "unreachable": (f"{closed}/{stem}.pth", "cannot reach"),
            "no host": (f"https:///{stem}.pth", "is not a URL of a file"),
            "wrong hash": (f"{server_url}/tampered-0123abcd.pth", "sha256 mismatch")}[case]


@pytest.mark.parametrize("flag", ["--resume", "--finetune"])
@pytest.mark.parametrize("case", ["missing", "unreachable", "no host", "wrong hash"])
def test_bad_urls_are_one_line_and_write_nothing(served, tmp_path, capsys, flag, case):
    server, _ = served
    url, expect = _bad_url(server.url, case, "deit")
    out = tmp_path / "run"
    msg = _error_line(DEIT, [*DEIT_TINY, "--epochs", "1", "--output_dir", str(out), flag, url], capsys)
    assert expect in msg and url in msg, msg
    assert not out.exists()  # the claimed folder went again: nothing was written into it
    cache = _cache(tmp_path)
    assert not (cache.exists() and [p.name for p in cache.iterdir()])  # no partial or refused file kept


def test_common_resnet_test_only_from_a_url_scores_like_the_local_file(served, tmp_path):
    server, names = served
    local, name = names["common_resnet"]
    base = [*COMMON_TINY, "--output-dir", str(tmp_path / "unused"), "--test-only"]
    from_url = run_cli(COMMON.cli, [*base, "--resume", f"{server.url}/{name}"])
    from_path = run_cli(COMMON.cli, [*base, "--resume", str(local)])
    assert (_cache(tmp_path) / name).read_bytes() == local.read_bytes()
    for key in ("acc1", "nll", "ece"):
        assert from_url[key] == from_path[key], key


def test_two_urls_ending_in_the_same_name_are_two_files(served, tmp_path):
    """torch.hub keys its cache by file name alone; a name without its content's hash gets a folder per URL."""
    from maxsup.hub.fetch import cached_url

    server, _ = served
    a, b = (cached_url(f"{server.url}/{sub}/model.pth") for sub in ("a", "b"))
    assert a != b and a.read_bytes() == b"weights of a" and b.read_bytes() == b"weights of b"
    asked = len(server.requests)
    assert cached_url(f"{server.url}/a/model.pth") == a and len(server.requests) == asked  # cached, not fetched


def test_ranks_sharing_a_cache_download_once(served, tmp_path):
    """The ranks of one node start together; the first takes the cache folder's lock and downloads, the others wait
    and find the verified file (threads stand in for the ranks: each opens its own lock, as a process would)."""
    from maxsup.hub.fetch import cached_url

    server, names = served
    local, name = names["common_resnet"]
    before = len(server.requests)
    results: list[Path] = []
    ranks = [threading.Thread(target=lambda: results.append(cached_url(f"{server.url}/{name}"))) for _ in range(4)]
    for t in ranks:
        t.start()
    for t in ranks:
        t.join(timeout=60)
    assert results == [_cache(tmp_path) / name] * 4 and results[0].read_bytes() == local.read_bytes()
    assert len(server.requests) - before == 1  # one GET, not four


def test_hash_prefix_follows_torch_hub_names_without_misreading_version_numbers():
    from maxsup.hub.fetch import url_hash_prefix

    assert url_hash_prefix("deit_small_patch16_224-cd65a155.pth") == "cd65a155"
    assert url_hash_prefix("lvvit_s-26M-224-83.3.pth.tar") is None  # torch.hub's own pattern would read "83"
    assert url_hash_prefix("checkpoint.pth") is None


# --------------------------------------------------------------------------------------------------------------------
# Conv/ffcv: --training.resume=URL / --training.finetune=URL (the tiny .beton recipe of test_ffcv.py)
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ffcv_served(request, tmp_path_factory, one_thread):
    """A finished 1-epoch Conv/ffcv run on the shared tiny .beton files, its checkpoint published under a hashed name
    (and a copy under a name whose hash lies) on a local server of its own."""
    pytest.importorskip("ffcv", reason="needs the ffcv extra (pip install -e '.[ffcv]')")
    betons = request.getfixturevalue("ffcv_betons")
    trainer = load_ffcv_main()
    run = tmp_path_factory.mktemp("ffcv") / "run"
    with keeping_ffcv_trainers():
        run_cli(trainer.main, ffcv_argv(betons, run))
    root = tmp_path_factory.mktemp("www_ffcv")
    name = _published(run / "checkpoint.pth", root, "ffcv")
    (root / "tampered-0123abcd.pth").write_bytes((root / name).read_bytes())
    server = FileServer(root)
    yield SimpleNamespace(server=server, url=f"{server.url}/{name}", name=name, local=run / "checkpoint.pth",
                          betons=betons, main=trainer.main)
    server.close()


@pytest.mark.ffcv
def test_ffcv_resume_from_a_url_gives_the_state_the_local_file_gives(ffcv_served, tmp_path, capsys):
    """The published run finished its 1 epoch: resumed from the URL, as from the file, the trainer starts after it
    with the checkpoint's weights and optimizer state (in a new folder: a URL is not the folder's own checkpoint)."""
    f = ffcv_served
    saved = load_checkpoint(f.local)
    trainers = {}
    for how, source in (("url", f.url), ("path", str(f.local))):
        capsys.readouterr()
        with keeping_ffcv_trainers() as built:
            run_cli(f.main, ffcv_argv(f.betons, tmp_path / how, f"--training.resume={source}"))
        trainers[how] = built[-1]
        shown = _cache(tmp_path) / f.name if how == "url" else f.local
        assert f"resumed from {shown} (epoch 0 done)" in capsys.readouterr().out
    assert sorted(p.name for p in _cache(tmp_path).iterdir()) == [f.name]  # torch.hub's cache, torch.hub's name
    url, path = trainers["url"], trainers["path"]
    assert url.start_epoch == path.start_epoch == 1 and url.train_loader.next_epoch == 1
    for key, value in saved["model"].items():
        assert torch.equal(url.module.state_dict()[key], value), key
    momentum = [s["momentum_buffer"] for s in url.optimizer.state_dict()["state"].values()]
    assert len(momentum) == len(saved["optimizer"]["state"]) > 0
    assert all(torch.equal(a, s["momentum_buffer"]) for a, s in zip(momentum, saved["optimizer"]["state"].values(),
                                                                        strict=True))


@pytest.mark.ffcv
def test_ffcv_finetune_from_a_url_loads_the_backbone(ffcv_served, tmp_path, capsys):
    """With lr 0 the weights stay where the URL's checkpoint put them (BatchNorm's running statistics still move)."""
    f = ffcv_served
    capsys.readouterr()
    with keeping_ffcv_trainers() as built:
        run_cli(f.main, ffcv_argv(f.betons, tmp_path / "ft", f"--training.finetune={f.url}", "--lr.lr=0"))
    out = capsys.readouterr().out
    cached = _cache(tmp_path) / f.name
    assert f"--training.finetune {f.url}: using {cached}" in out and f"fine-tuning from {cached}" in out, out
    saved, params = load_checkpoint(f.local)["model"], dict(built[-1].module.named_parameters())
    assert params.keys() <= saved.keys() and "fc.weight" in params  # the 4-class head is kept
    for key, value in params.items():
        assert torch.equal(value.detach(), saved[key]), key


@pytest.mark.ffcv
@pytest.mark.parametrize("key", ["resume", "finetune"])
@pytest.mark.parametrize("case", ["missing", "unreachable", "no host", "wrong hash"])
def test_ffcv_bad_urls_are_one_line_and_write_nothing(ffcv_served, tmp_path, capsys, key, case):
    f = ffcv_served
    url, expect = _bad_url(f.server.url, case, "ffcv")
    out = tmp_path / "run"
    with keeping_ffcv_trainers():
        msg = cli_error(capsys, f.main, ffcv_argv(f.betons, out, f"--training.{key}={url}"), clear=True)
    assert expect in msg and url in msg, msg
    assert case == "wrong hash" or f"--training.{key}" in msg, msg  # names the flag the user typed
    assert not out.exists()  # the claimed folder went again: nothing was written into it
    cache = _cache(tmp_path)
    assert not (cache.exists() and [p.name for p in cache.iterdir()])  # no partial or refused file kept


@pytest.mark.ffcv
def test_ffcv_a_url_is_never_the_folders_own_checkpoint(ffcv_served, tmp_path, capsys):
    f = ffcv_served
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pth").write_bytes(f.local.read_bytes())
    before, asked = _snapshot(out), len(f.server.requests)
    msg = cli_error(capsys, f.main, ffcv_argv(f.betons, out, f"--training.resume={f.url}"), clear=True)
    assert f"{out} already holds a run" in msg and "--training.overwrite=true" in msg, msg
    assert _snapshot(out) == before and len(f.server.requests) == asked  # refused before anything was downloaded


@pytest.mark.ffcv
def test_ffcv_estimate_starts_from_a_finetune_url_and_fetches_no_resume_url(ffcv_served, tmp_path):
    """--estimate times training steps from the fine-tuned weights (synthetic batches, lr 0: they stay) and never
    reads a resume, so a resume URL is not fetched (this one would be a 404)."""
    f = ffcv_served
    out = tmp_path / "est"
    asked = len(f.server.requests)
    with keeping_ffcv_trainers() as built:
        rec = f.main([*ffcv_argv(f.betons, out, f"--training.finetune={f.url}", "--lr.lr=0",
                                 "--data.train_dataset=fmnist.beton",  # synthetic: only its name is read
                                 f"--training.resume={f.server.url}/absent-0badc0de.pth"),
                      "--estimate=1", "--estimate-synthetic"])
    assert rec["estimate"] is True and not out.exists()
    assert f.server.requests[asked:] == [f"/{f.name}"]  # the finetune URL only
    saved = load_checkpoint(f.local)["model"]
    for key, value in built[-1].module.named_parameters():
        assert torch.equal(value.detach(), saved[key]), key
