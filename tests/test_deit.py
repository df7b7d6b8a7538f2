"""Deit/: the DeiT trainer with MaxSup, the zip cache, DDP, exact resume and CLI errors, on real Fashion-MNIST images.

Every run uses a tiny ViT (patch 7 on 28×28, one block) and a few dozen real images, so the whole file stays within
a few minutes on 2 CPU cores. Deit/ is a flat script folder (DeiT's layout), so its modules are loaded by path.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from flat_import import load_flat_modules
from helpers import DEIT_TINY_VIT

from maxsup import CRITERIA
from maxsup.cli import run_cli
from maxsup.data.zipcache import ZipCacheDataset, looks_truncated, map_class_names, parse_map, write_zip_cache
from maxsup.errors import UserError
from maxsup.timing import TIMING_KEYS
from maxsup.training import load_checkpoint, recipe_fingerprint

ROOT = Path(__file__).resolve().parents[1]
DEIT = ROOT / "Deit"
TINY = DEIT_TINY_VIT
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _load_deit():
    """Import Deit/main.py and its siblings under their DeiT names without clobbering other subprojects' modules."""
    return load_flat_modules(DEIT, ("main", "engine", "datasets", "samplers"))


DEIT_MODULES = _load_deit()
deit_main = DEIT_MODULES["main"]


pytestmark = pytest.mark.usefixtures("one_thread")


def train(argv: list[str]) -> dict:
    return deit_main.cli(argv)


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]


def untimed_log(out: Path) -> list[dict]:
    """log.txt without the wall-clock keys (maxsup.timing), which differ between otherwise identical runs."""
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_log(out)]


# --------------------------------------------------------------------------------------------------------------------
# fixtures: conftest's image_root (a real ImageFolder of 3 × (32 + 12) Fashion-MNIST JPEGs) as a zip cache
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def zip_root(image_root, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("zipcache")
    for split in ("train", "val"):
        write_zip_cache(image_root / split, root / f"{split}.zip", root / f"{split}_map.txt", split=split)
    return root


def _copy_tree(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------------------------------------------------
# zip cache (maxsup.data.zipcache)
# --------------------------------------------------------------------------------------------------------------------
def test_zip_cache_matches_image_folder_and_shards(image_root, zip_root):
    train_map = parse_map(zip_root / "train_map.txt")
    val_map = parse_map(zip_root / "val_map.txt")
    assert len(train_map) == 96 and len(val_map) == 36
    # sorted-ImageFolder label order, as torchvision assigns it
    assert {name.split("/")[0]: label for name, label in train_map} == {"pullover": 0, "trouser": 1, "tshirt": 2}
    assert all("/" not in name for name, _ in val_map)  # val members are flat, as in the authors' val.zip
    with zipfile.ZipFile(zip_root / "train.zip") as z:
        assert z.read(train_map[5][0]) == (image_root / "train" / train_map[5][0]).read_bytes()
    full = ZipCacheDataset(zip_root / "train.zip", zip_root / "train_map.txt")
    shards = [ZipCacheDataset(zip_root / "train.zip", zip_root / "train_map.txt", rank=r, world_size=2)
              for r in range(2)]
    assert [len(s) for s in shards] == [48, 48]
    assert set(shards[0].samples).isdisjoint(shards[1].samples)
    assert sorted(shards[0].samples + shards[1].samples) == sorted(full.samples)
    img, label = full[0]
    assert img.size == (28, 28) and img.mode == "RGB" and label == full.samples[0][1]


def test_zip_map_errors_name_file_and_line(zip_root, tmp_path):
    bad = tmp_path / "train_map.txt"
    lines = (zip_root / "train_map.txt").read_text().splitlines()
    bad.write_text("\n".join(lines[:2] + ["tshirt/train_0000.jpg 0"] + lines[3:]) + "\n")
    with pytest.raises(UserError, match=r"train_map.txt:3: expected"):
        parse_map(bad)
    bad.write_text("\n".join(lines[:4] + [lines[4].split("\t")[0] + "\t7"]) + "\n")
    with pytest.raises(UserError, match=r"train_map.txt:5: label 7 is >= the number of classes \(3\)"):
        ZipCacheDataset(zip_root / "train.zip", bad, num_classes=3)


def test_zip_map_labels_must_lie_in_0_to_k_minus_1_and_names_come_from_folders(tmp_path):
    """parse_map's label range at its edges (0 and K − 1 pass; −1 and K do not), and map_class_names: the folder
    of each label, or None when two labels share a folder or a label's members sit in two folders."""
    m = tmp_path / "train_map.txt"
    m.write_text("b/x.jpg\t0\na/y.jpg\t2\nc/z.jpg\t1\nb/w.jpg\t0\n")
    entries = parse_map(m, num_classes=3)
    assert entries == [("b/x.jpg", 0), ("a/y.jpg", 2), ("c/z.jpg", 1), ("b/w.jpg", 0)]
    assert map_class_names(entries) == ["b", "c", "a"]  # index = label, in the map's own (unsorted) order
    assert map_class_names([("b/x.jpg", 0), ("b/y.jpg", 1)]) is None  # one folder, two labels
    assert map_class_names([("b/x.jpg", 0), ("c/y.jpg", 0)]) is None  # one label, two folders
    assert map_class_names([("x.jpg", 0)]) is None  # flat members name nothing
    with pytest.raises(UserError, match=r"train_map.txt:2: label 3 is >= the number of classes \(3\)"):
        m.write_text("b/x.jpg\t0\na/y.jpg\t3\n")
        parse_map(m, num_classes=3)
    with pytest.raises(UserError, match=r"train_map.txt:1: label -1 is negative"):
        m.write_text("b/x.jpg\t-1\n")
        parse_map(m)


def test_zip_cache_truncation_check_by_format():
    """A JPEG must end with FF D9 (trailing zero padding allowed), a PNG with its IEND chunk; other files only
    fail when empty."""
    jpeg, png = b"\xff\xd8 data \xff\xd9", b"\x89PNG\r\n\x1a\n data IEND\xaeB`\x82"
    assert not looks_truncated(jpeg) and not looks_truncated(jpeg + b"\x00\x00") and looks_truncated(jpeg[:-1])
    assert not looks_truncated(png) and looks_truncated(png[:-1])
    assert looks_truncated(b"") and not looks_truncated(b"BM")


def test_truncated_jpeg_in_zip_is_named_or_skipped(image_root, tmp_path):
    folder = _copy_tree(image_root / "train", tmp_path / "train")
    victim = folder / "trouser" / sorted(os.listdir(folder / "trouser"))[3]
    victim.write_bytes(victim.read_bytes()[:200])
    write_zip_cache(folder, tmp_path / "train.zip", tmp_path / "train_map.txt")
    with pytest.raises(UserError, match=f"truncated or corrupt image 'trouser/{victim.name}'"):
        ZipCacheDataset(tmp_path / "train.zip", tmp_path / "train_map.txt")
    with pytest.warns(UserWarning, match="skipped 1 corrupt"):
        ds = ZipCacheDataset(tmp_path / "train.zip", tmp_path / "train_map.txt", skip_corrupt=True)
    assert ds.num_skipped == 1 and len(ds) == 95 and f"trouser/{victim.name}" not in dict(ds.samples)


def test_zip_cache_names_each_label_by_its_train_map_folder_or_not_at_all(image_root, tmp_path):
    """The checkpoint's ``classes`` come from ``class_names``: a zip cache's label k is named by the class folder of
    its train-map members, in the map's own order (the authors' maps are not sorted), and follows ``--classes``.
    A map that does not name its labels unambiguously (a label's members in two folders, flat members) gives no
    names rather than a guess."""
    datasets = DEIT_MODULES["datasets"]
    order = {"trouser": 0, "tshirt": 1, "pullover": 2}
    root = tmp_path / "permuted"
    root.mkdir()
    for split in ("train", "val"):
        write_zip_cache(image_root / split, root / f"{split}.zip", root / f"{split}_map.txt", split=split,
                        class_to_idx=order)

    def names(data: Path, *extra: str) -> list[str] | None:
        args = deit_main.get_args_parser().parse_args(["--data-set", "IMNET", "--data-path", str(data), "--cache",
                                                       *extra, *TINY])
        ds, k = datasets.build_dataset(True, args)
        return datasets.class_names(ds, k)

    assert names(root) == ["trouser", "tshirt", "pullover"]
    assert names(root, "--classes", "2,0") == ["pullover", "trouser"]  # relabelled 0..n-1 in the given order

    lines = (root / "train_map.txt").read_text().splitlines()
    moved = next(i for i, line in enumerate(lines) if line.startswith("tshirt/"))
    lines[moved] = lines[moved].split("\t")[0] + "\t0"  # a tshirt image labelled as the trouser class
    bad = _copy_tree(root, tmp_path / "mixed")
    (bad / "train_map.txt").write_text("\n".join(lines) + "\n")
    assert names(bad) is None
    flat = _copy_tree(root, tmp_path / "flat")  # the val files (flat member names) as the train split
    for ext in ("zip", "txt"):
        suffix = "" if ext == "zip" else "_map"
        (flat / f"train{suffix}.{ext}").write_bytes((root / f"val{suffix}.{ext}").read_bytes())
    assert names(flat) is None


# --------------------------------------------------------------------------------------------------------------------
# training runs (in process)
# --------------------------------------------------------------------------------------------------------------------
def test_folder_and_zip_epochs_agree_and_eval_reproduces(image_root, zip_root, tmp_path):
    args = {name: deit_main.get_args_parser().parse_args(
        ["--data-set", "IMNET", "--data-path", str(root), *cache, *TINY]) for name, root, cache in
        (("folder", image_root, []), ("zip", zip_root, ["--cache"]))}
    datasets = DEIT_MODULES["datasets"]
    folder_ds, k_folder = datasets.build_dataset(True, args["folder"])
    zip_ds, k_zip = datasets.build_dataset(True, args["zip"])
    assert k_folder == k_zip == 3 and len(folder_ds) == len(zip_ds) == 96
    folder_labels = {Path(p).parent.name + "/" + Path(p).name: t for p, t in folder_ds.samples}
    assert folder_labels == dict(zip_ds.samples)

    logs = {}
    for name, root, cache in (("folder", image_root, []), ("zip", zip_root, ["--cache"])):
        out = tmp_path / name
        train(["--data-set", "IMNET", "--data-path", str(root), *cache, *TINY, "--epochs", "1", "--loss", "maxsup",
               "--output_dir", str(out)])
        logs[name] = read_log(out)[0]
    assert logs["folder"]["train_samples"] == logs["zip"]["train_samples"] == 96
    assert logs["folder"]["test_n"] == logs["zip"]["test_n"] == 36
    # same bytes, same order, same seed: the two formats train identically
    assert logs["folder"]["train_loss"] == pytest.approx(logs["zip"]["train_loss"], rel=1e-6)

    # both record the class of each label (index = label): the folders' sorted names, the train map's folders
    for name in ("folder", "zip"):
        assert load_checkpoint(tmp_path / name / "checkpoint.pth")["classes"] == ["pullover", "trouser", "tshirt"]
    ckpt = torch.load(tmp_path / "folder" / "checkpoint.pth", weights_only=True)
    assert {"model", "arch", "eval_transform", "args", "epoch", "optimizer", "lr_scheduler", "model_ema", "scaler",
            "criterion", "rng"} <= set(ckpt)
    assert ckpt["arch"]["name"] == "vit_tiny_patch16_224" and ckpt["eval_transform"]["crop_pct"] == 1.0
    stats = train(["--data-set", "IMNET", "--data-path", str(image_root), *TINY, "--eval",
                   "--resume", str(tmp_path / "folder" / "checkpoint.pth")])
    assert stats["acc1"] == pytest.approx(logs["folder"]["test_acc1"])
    assert stats["nll"] == pytest.approx(logs["folder"]["test_nll"], rel=1e-5)
    assert json.loads((tmp_path / "folder" / "args.json").read_text())["loss"] == "maxsup"


@pytest.mark.parametrize("loss", CRITERIA)
def test_every_loss_trains(loss, image_root, tmp_path):
    out = tmp_path / loss
    epochs = 2 if loss in ("ls", "maxsup") else 1
    train(["--data-set", "FOLDER", "--data-path", str(image_root), "--limit-per-class", "16", *TINY,
           "--epochs", str(epochs), "--loss", loss, "--output_dir", str(out)])
    log = read_log(out)
    assert [e["epoch"] for e in log] == list(range(epochs))
    assert all(e["train_samples"] == 48 and e["test_n"] == 36 for e in log)
    assert all(torch.isfinite(torch.tensor(e["train_loss"])) for e in log)
    # maxsup.timing: the loop's wall clock and evaluation's, and images/s = images ÷ training seconds
    assert all(e["train_seconds"] > 0 and e["eval_seconds"] > 0 for e in log)
    assert all(e["train_images_per_s"] == pytest.approx(48 / e["train_seconds"], rel=1e-9) for e in log)
    if loss in ("ls", "maxsup"):
        assert [e["alpha"] for e in log] == pytest.approx([0.1, 0.2])  # α schedule 0.1 → 0.2 (paper App. F)
    elif loss.startswith("ls-"):
        assert log[0]["alpha"] == pytest.approx(0.1)
    elif loss in ("adaptive-ls", "maxsup-adaptive"):
        assert 0 <= log[0]["alpha"] <= 0.2  # mean per-sample α of the last step
    else:
        assert log[0]["alpha"] is None
    assert all(e["maxsup_penalty"] >= 0 and e["ls_error_amplification"] <= 0 <= e["ls_regularization"] for e in log)


def test_adaptive_ls_keeps_the_best_checkpoint_as_teacher_and_zipf_dense_runs(image_root, tmp_path):
    out = tmp_path / "als"
    train(["--data-set", "FOLDER", "--data-path", str(image_root), "--limit-per-class", "16", *TINY,
           "--epochs", "2", "--loss", "adaptive-ls", "--output_dir", str(out), "--stats-every", "2"])
    log = read_log(out)
    ckpt = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=False)
    assert float(ckpt["criterion"]["best_score"]) == pytest.approx(max(e["test_acc1"] for e in log))
    best = torch.load(out / "best_checkpoint.pth", map_location="cpu", weights_only=False)
    teacher = {k[len("teacher."):]: v for k, v in ckpt["criterion"].items() if k.startswith("teacher.")}
    assert teacher.keys() == best["model"].keys()
    assert all(torch.equal(teacher[k], best["model"][k]) for k in teacher)  # the teacher is the best checkpoint
    stats = train(["--data-set", "FOLDER", "--data-path", str(image_root), "--limit-per-class", "16", *TINY,
                   "--epochs", "1", "--loss", "zipf", "--loss-opt", "dense=true"])
    assert stats["train_samples"] == 48 and stats["train_loss"] > 0


def test_bf16_autocast_on_cpu(image_root):
    stats = train(["--data-set", "FOLDER", "--data-path", str(image_root), "--limit-per-class", "16", *TINY,
                   "--epochs", "1", "--loss", "maxsup", "--amp", "bf16"])
    assert stats["train_samples"] == 48 and 0 < stats["train_loss"] < 10 and stats["test_n"] == 36


def test_classes_flag_relabels_fmnist(tmp_path):
    args = deit_main.get_args_parser().parse_args(["--data-set", "FMNIST", "--classes", "8,0", "--limit-per-class",
                                                   "5", *TINY])
    ds, k = DEIT_MODULES["datasets"].build_dataset(False, args)
    assert k == 2 and sorted(set(ds.targets)) == [0, 1] and ds.classes == ["Bag", "T-shirt/top"]


# --------------------------------------------------------------------------------------------------------------------
# bad input: one line on stderr, non-zero exit
# --------------------------------------------------------------------------------------------------------------------
def _cli_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        run_cli(deit_main.cli, argv)
    assert exc.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and err[-1].startswith("error: ") and "Traceback" not in "\n".join(err)
    return err[-1]


def test_conflicting_loss_flags_are_refused(image_root, capsys):
    msg = _cli_error(["--data-set", "FMNIST", *TINY, "--loss", "maxsup", "--smoothing", "0.1", "--epochs", "1"], capsys)
    assert "--smoothing 0.1" in msg and "--allow-ls-with-maxsup" in msg
    # the override works with Mixup's soft targets (timm smooths the mixed one-hots)
    stats = train(["--data-set", "FOLDER", "--data-path", str(image_root), "--limit-per-class", "16", *TINY,
                   "--epochs", "1", "--loss", "maxsup", "--smoothing", "0.1", "--allow-ls-with-maxsup",
                   "--mixup", "0.8"])
    assert stats["train_samples"] == 48


def test_bad_data_inputs(image_root, zip_root, tmp_path, capsys):
    assert "data path not found" in _cli_error(["--data-path", str(tmp_path / "nope"), *TINY], capsys)

    empty = _copy_tree(image_root, tmp_path / "empty")
    (empty / "train" / "coat").mkdir()
    msg = _cli_error(["--data-set", "FOLDER", "--data-path", str(empty), *TINY], capsys)
    assert "class folder" in msg and "coat has no images" in msg

    trunc = _copy_tree(image_root, tmp_path / "trunc")
    victim = sorted((trunc / "train" / "tshirt").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:150])
    msg = _cli_error(["--data-set", "FOLDER", "--data-path", str(trunc), *TINY], capsys)
    assert str(victim) in msg and "--skip-corrupt" in msg
    stats = train(["--data-set", "FOLDER", "--data-path", str(trunc), *TINY, "--skip-corrupt", "--epochs", "1"])
    assert stats["train_samples"] == 80  # 95 images left, drop_last with batch 16
    assert "skipped 1 corrupt" in capsys.readouterr().out

    badmap = _copy_tree(zip_root, tmp_path / "badmap")
    lines = (badmap / "val_map.txt").read_text().splitlines()
    (badmap / "val_map.txt").write_text("\n".join(lines[:6] + ["no-tab-here"] + lines[7:]) + "\n")
    msg = _cli_error(["--data-path", str(badmap), "--cache", *TINY], capsys)
    assert "val_map.txt:7:" in msg

    badlabel = _copy_tree(zip_root, tmp_path / "badlabel")
    lines = (badlabel / "val_map.txt").read_text().splitlines()
    lines[9] = lines[9].split("\t")[0] + "\t3"
    (badlabel / "val_map.txt").write_text("\n".join(lines) + "\n")
    msg = _cli_error(["--data-path", str(badlabel), "--cache", *TINY], capsys)
    assert "val_map.txt:10: label 3 is >= the number of classes (3)" in msg


def test_finetune_keeps_the_backbone_and_replaces_the_head(image_root, tmp_path, capsys):
    """--finetune (Table 6): a 3-class run's backbone starts a 2-class run with a new head; at lr 0 the backbone is
    still the pretrained one after an epoch."""
    src = tmp_path / "src"
    train(["--data-set", "FOLDER", "--data-path", str(image_root), *TINY, "--epochs", "1", "--output_dir", str(src)])
    out = tmp_path / "ft"
    capsys.readouterr()
    train(["--data-set", "FMNIST", "--classes", "8,0", "--limit-per-class", "8", *TINY, "--epochs", "1", "--lr", "0",
           "--finetune", str(src / "checkpoint.pth"), "--output_dir", str(out)])
    assert "new 2-class head" in capsys.readouterr().out
    assert load_checkpoint(out / "checkpoint.pth")["classes"] == ["Bag", "T-shirt/top"]  # --classes 8,0's order
    before = load_checkpoint(src / "checkpoint.pth")["model"]
    after = load_checkpoint(out / "checkpoint.pth")["model"]
    assert before["head.weight"].shape[0] == 3 and after["head.weight"].shape[0] == 2
    for key in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "pos_embed"):
        assert torch.equal(after[key], before[key]), key


def test_resume_from_other_architecture_lists_keys(image_root, tmp_path, capsys):
    out = tmp_path / "run"
    train(["--data-set", "FOLDER", "--data-path", str(image_root), *TINY, "--epochs", "1", "--output_dir", str(out)])
    other = [a if a != '{"patch_size": 7, "embed_dim": 32, "depth": 1, "num_heads": 2}' else
             '{"patch_size": 7, "embed_dim": 32, "depth": 2, "num_heads": 2}' for a in TINY]
    msg = _cli_error(["--data-set", "FOLDER", "--data-path", str(image_root), *other, "--epochs", "2",
                      "--resume", str(out / "checkpoint.pth")], capsys)
    assert ('--model-kwargs {"depth": 1, "embed_dim": 32, "num_heads": 2, "patch_size": 7} → {"depth": 2, '
            in msg and "--epochs 1 → 2" in msg and "--finetune" in msg), msg
    msg = _cli_error(["--data-set", "FOLDER", "--data-path", str(image_root), *other, "--eval",
                      "--resume", str(out / "checkpoint.pth")], capsys)
    assert "does not match the model architecture" in msg and "blocks.1." in msg

    before = (out / "checkpoint.pth").read_bytes()
    msg = _cli_error(["--data-set", "FOLDER", "--data-path", str(image_root), *TINY, "--epochs", "1", "--lr", "1e30",
                      "--output_dir", str(out), "--overwrite"], capsys)  # a new run over the folder's checkpoint
    assert "at epoch 0, step" in msg and "--lr" in msg and "--clip-grad" in msg, msg
    assert (out / "checkpoint.pth").read_bytes() == before


TINY_JSON = '{"patch_size": 7, "embed_dim": 32, "depth": 1, "num_heads": 2}'
TINY_PAIRS = ["num_heads=2", "patch_size=7", "depth=1", "embed_dim=32"]  # another order: a dict has none


def _with_kwargs(kwargs: list[str]) -> list[str]:
    """TINY with its ``--model-kwargs`` value(s) replaced by ``kwargs``."""
    i = TINY.index("--model-kwargs")
    return [*TINY[:i + 1], *kwargs, *TINY[i + 2:]]


def test_model_kwargs_pairs_and_json_are_one_stored_dict(image_root, capsys):
    """``--model-kwargs`` takes timm's KEY=VALUE pairs and still the earlier single JSON object: both print (and
    store) the same dict, and the model is built from it (a wrong value would build another network)."""
    common = ["--data-set", "FOLDER", "--data-path", str(image_root), "--print-config"]
    configs = [train([*common, *_with_kwargs(kw)]) for kw in ([TINY_JSON], TINY_PAIRS)]
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    want = {"patch_size": 7, "embed_dim": 32, "depth": 1, "num_heads": 2}
    assert [c["model_kwargs"] for c in configs] == [want, want]
    assert [c["model_kwargs"] for c in printed] == [want, want]
    assert train([*common, *_with_kwargs([])])["model_kwargs"] == {}  # no value: none
    # values are Python literals (a tuple, a float, a bool), or strings
    cfg = train([*common, *_with_kwargs(["img_size=(28,28)", "drop_rate=0.5", "qkv_bias=False", "global_pool=avg"])])
    assert cfg["model_kwargs"] == {"img_size": (28, 28), "drop_rate": 0.5, "qkv_bias": False, "global_pool": "avg"}
    args = deit_main.get_args_parser().parse_args(["--model", "vit_tiny_patch16_224", "--input-size", "28",
                                                   "--model-kwargs", *TINY_PAIRS])
    kw = deit_main.model_kwargs(args)
    assert {k: kw[k] for k in want} == want and kw["img_size"] == 28 and args.model_kwargs == TINY_PAIRS


def test_run_record_groups_pair_json_and_earlier_runs_of_one_recipe(image_root, tmp_path):
    """run.json's recipe fingerprint (what ``analysis.collect`` groups custom runs by) is the same whichever form
    ``--model-kwargs`` was typed in, and the same as a run from before the pair form recorded: that run stored the
    JSON text (here typed with sorted keys, as ``{}`` is for the default) in its config."""
    data = ["--data-set", "FOLDER", "--data-path", str(image_root), "--limit-per-class", "16", "--epochs", "1"]
    records = []
    for name, form in (("json", [TINY_JSON]), ("pairs", TINY_PAIRS)):
        train([*data, *_with_kwargs(form), "--output_dir", str(tmp_path / name)])
        records.append(json.loads((tmp_path / name / "run.json").read_text()))
    assert records[0]["recipe"] == records[1]["recipe"]
    earlier = {**records[0]["config"], "model_kwargs": '{"depth": 1, "embed_dim": 32, "num_heads": 2, "patch_size": 7}'}
    assert records[0]["recipe"] == recipe_fingerprint(earlier, deit_main.NOT_RECIPE)
    other = {**records[0]["config"], "model_kwargs": '{"depth": 2, "embed_dim": 32, "num_heads": 2, "patch_size": 7}'}
    assert records[0]["recipe"] != recipe_fingerprint(other, deit_main.NOT_RECIPE)


@pytest.mark.parametrize("first, then", [("json", "pairs"), ("pairs", "json"), ("stored-string", "pairs")])
def test_model_kwargs_resume_compares_dicts_not_spellings(first, then, image_root, tmp_path, capsys):
    """A run started with one form resumes under the other form of the same kwargs, and a checkpoint written before
    the pair form (``args['model_kwargs']`` the JSON string) still resumes; other kwargs are still refused."""
    forms = {"json": [TINY_JSON], "pairs": TINY_PAIRS, "stored-string": [TINY_JSON]}
    out = tmp_path / "run"
    data = ["--data-set", "FOLDER", "--data-path", str(image_root), "--limit-per-class", "16", "--epochs", "1"]
    train([*data, *_with_kwargs(forms[first]), "--output_dir", str(out)])
    ckpt_path = out / "checkpoint.pth"
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt["args"]["model_kwargs"] == {"patch_size": 7, "embed_dim": 32, "depth": 1, "num_heads": 2}
    if first == "stored-string":  # what runs before the KEY=VALUE form stored, in the checkpoint and run.json
        ckpt["args"]["model_kwargs"] = TINY_JSON
        torch.save(ckpt, ckpt_path)
    capsys.readouterr()
    train([*data, *_with_kwargs(forms[then]), "--output_dir", str(out), "--resume", str(ckpt_path)])
    assert f"Resumed from {ckpt_path} at epoch 1" in capsys.readouterr().out
    assert json.loads((out / "args.json").read_text())["model_kwargs"]["depth"] == 1
    other = [p if p != "depth=1" else "depth=2" for p in TINY_PAIRS]
    msg = _cli_error([*data, *_with_kwargs(other), "--output_dir", str(out), "--resume", str(ckpt_path)], capsys)
    assert '--model-kwargs {"depth": 1, ' in msg and '→ {"depth": 2, ' in msg, msg


def test_missing_data_path_subprocess_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, str(DEIT / "main.py"), "--data-path", str(tmp_path / "missing"), *TINY],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [f"error: data path not found: {tmp_path / 'missing'}"]


# --------------------------------------------------------------------------------------------------------------------
# multi-process and end-to-end (slow)
# --------------------------------------------------------------------------------------------------------------------
def _torchrun(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(DEIT / "main.py"), *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("source", ["folder", "zip"])
def test_torchrun_two_processes_gloo(source, image_root, zip_root, tmp_path):
    data = ["--data-set", "IMNET", "--data-path", str(image_root), "--dist-eval"] if source == "folder" else \
        ["--data-set", "IMNET", "--data-path", str(zip_root), "--cache"]
    out = tmp_path / "ddp"
    proc = _torchrun([*data, *TINY, "--epochs", "1", "--loss", "maxsup", "--device", "cpu", "--output_dir", str(out)],
                     tmp_path)
    # each rank trained on half of the 96 images (repeated augmentation or the zip shard)
    assert "[rank 0] epoch 0: trained on 48 images" in proc.stdout
    assert "[rank 1] epoch 0: trained on 48 images" in proc.stdout
    log = read_log(out)[0]
    assert log["train_samples"] == 96 and log["test_n"] == 36  # gathered over both ranks, no duplicates
    single = train(["--data-set", "IMNET", "--data-path", str(image_root), *TINY, "--eval",
                    "--resume", str(out / "checkpoint.pth")])
    assert single["acc1"] == pytest.approx(log["test_acc1"]) and single["nll"] == pytest.approx(log["test_nll"])


@pytest.mark.slow
def test_kill9_mid_epoch_then_resume_is_bit_exact(tmp_path):
    recipe = ["--data-set", "FMNIST", "--classes", "0,2,4", "--limit-per-class", "48", *TINY, "--epochs", "3",
              "--loss", "maxsup", "--mixup", "0.8", "--cutmix", "1.0", "--aa", "rand-m9-mstd0.5-inc1", "--reprob",
              "0.25", "--drop-path", "0.1"]
    base = [sys.executable, str(DEIT / "main.py"), *recipe]
    ref = tmp_path / "ref"
    train([*recipe, "--output_dir", str(ref)])  # uninterrupted reference, in process with the same single thread

    # SIGKILL through the trainer's test hook (9 steps per epoch): before a random step after the first checkpoint,
    # or inside the 2nd write of checkpoint.pth
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    # each epoch writes best_checkpoint.pth (when it improves) then checkpoint.pth: find epoch 1's checkpoint.pth write
    saves, best, second = 0, 0.0, 0
    for epoch, line in enumerate(read_log(ref)):
        saves += 2 if line["test_acc1"] > best else 1
        best = max(best, line["test_acc1"])
        second = saves if epoch == 1 else second
    kill_at = f"step:{rng.randrange(10, 27)}" if rng.random() < 0.7 else f"save:{second}"
    print(f"MAXSUP_KILL_AT={kill_at} (seed {seed})")
    run = tmp_path / "run"
    proc = subprocess.run([*base, "--output_dir", str(run)], env={**ENV, "MAXSUP_KILL_AT": kill_at},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    killed_at = torch.load(run / "checkpoint.pth", weights_only=True)["epoch"]
    assert [e["epoch"] for e in read_log(run)] == list(range(killed_at + 1))
    subprocess.run([*base, "--output_dir", str(run), "--resume", str(run / "checkpoint.pth")], check=True, env=ENV,
                   timeout=300, capture_output=True)

    assert untimed_log(run) == untimed_log(ref)
    a = torch.load(ref / "checkpoint.pth", weights_only=True)
    b = torch.load(run / "checkpoint.pth", weights_only=True)
    for key in ("model", "model_ema"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])


def test_preemption_mid_accumulation_group_checkpoints_and_resumes_bit_exact(tmp_path, monkeypatch, capsys):
    """SIGUSR1 (test hook, in process) at a random step of a 2-seed sweep with --accum-steps 2: the run stops at the
    end of that accumulation group with a mid-epoch checkpoint, the sweep does not start seed 1, and the resumed run
    ends bit-identical to an uninterrupted one (Mixup draws, EMA and log included)."""
    from maxsup.training import faults

    recipe = ["--data-set", "FMNIST", "--classes", "0,2,4", "--limit-per-class", "16", *TINY, "--batch-size", "8",
              "--accum-steps", "2", "--epochs", "2", "--loss", "maxsup", "--mixup", "0.8", "--cutmix", "1.0"]
    ref = tmp_path / "ref"
    train([*recipe, "--output_dir", str(ref)])  # 6 batches = 3 optimizer steps per epoch
    seed = int.from_bytes(os.urandom(4), "little")
    step = random.Random(seed).randint(1, 10)  # the signal arrives before batch `step` (1-based) of the run
    print(f"preemption at batch {step} (seed {seed})")
    faults.reset()
    monkeypatch.setenv(faults.KILL_ENV, f"step:{step}:USR1")
    results = train([*recipe, "--seeds", "0,1", "--output_dir", str(tmp_path / "sweep")])
    monkeypatch.delenv(faults.KILL_ENV)
    assert list(results) == ["seed0"] and not (tmp_path / "sweep" / "seed1").exists()
    assert "seed sweep stopped during seed 0" in capsys.readouterr().err
    run = tmp_path / "sweep" / "seed0"
    ckpt = torch.load(run / "checkpoint.pth", weights_only=False)
    done = (step + 1) // 2 * 2  # batches trained: up to the end of the accumulation group the signal arrived in
    assert ckpt["epoch"] == (done // 6) - 1 and ckpt.get("partial", {}).get("step", 0) == done % 6
    assert ckpt["classes"] == ["T-shirt/top", "Pullover", "Coat"]  # --classes 0,2,4: the name of label k
    del ckpt["classes"]  # a checkpoint from before the names were recorded resumes the same way
    torch.save(ckpt, run / "checkpoint.pth")
    train([*recipe, "--output_dir", str(run), "--resume", str(run / "checkpoint.pth")])
    assert untimed_log(run) == untimed_log(ref)
    a = torch.load(ref / "checkpoint.pth", weights_only=True)
    b = torch.load(run / "checkpoint.pth", weights_only=True)
    assert a["classes"] == b["classes"] == ["T-shirt/top", "Pullover", "Coat"]
    for key in ("model", "model_ema", "criterion"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key


@pytest.mark.slow
def test_train_with_maxsup_sh_embedded_default(tmp_path):
    env = {k: v for k, v in ENV.items() if k != "DATA_PATH"}
    env["OUTPUT_DIR"] = str(tmp_path / "out")
    proc = subprocess.run(["bash", str(DEIT / "train_with_MaxSup.sh"), "--epochs", "2", "--limit-per-class", "40"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DATA_PATH is not set" in proc.stdout
    assert "Final: acc@1" in proc.stdout and "alpha" in proc.stdout
    log = read_log(tmp_path / "out")
    assert [e["alpha"] for e in log] == pytest.approx([0.1, 0.2]) and log[-1]["test_n"] == 200


def test_estimate_times_steps_prints_one_line_and_writes_nothing(image_root, tmp_path, capsys):
    """--estimate N: the real loop for 3 warm-up + N steps, one JSON line, no file in the output folder."""
    out = tmp_path / "est"
    rec = train(["--data-set", "FOLDER", "--data-path", str(image_root), "--limit-per-class", "16", *TINY,
                 "--epochs", "7", "--loss", "maxsup", "--output_dir", str(out), "--estimate", "2", "--batch-size", "8"])
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")]
    assert len(line) == 1 and json.loads(line[0]) == json.loads(json.dumps(rec))
    assert rec["estimate"] is True and rec["steps"] == 2 and rec["warmup_steps"] == 3 and rec["device_type"] == "cpu"
    assert rec["steps_per_epoch"] == 6 and rec["total_batch_size"] == 8  # 48 images // 8
    assert rec["train_seconds"] == pytest.approx(rec["seconds_per_step"] * 6)
    assert rec["seconds_total"] == pytest.approx(rec["train_seconds"] * 7)
    assert rec["gpu_hours"] == pytest.approx(rec["seconds_total"] / 3600)
    assert rec["train_images_per_s"] == pytest.approx(8 / rec["seconds_per_step"])
    assert not out.exists()
    # 5 batches are needed (3 warm-up + 2): one epoch of 48 images at batch 16 has 3, so the data is refused
    err = _cli_error(["--data-set", "FOLDER", "--data-path", str(image_root), "--limit-per-class", "16", *TINY,
                      "--estimate", "3"], capsys)
    assert "--estimate 3 needs 6 batches" in err and "--estimate-synthetic" in err
    # generated data: FMNIST's 60000-image train split sets the epoch length, no data is read
    rec = train(["--data-set", "FMNIST", "--data-path", str(tmp_path / "none"), *TINY, "--epochs", "2",
                 "--estimate", "1", "--estimate-synthetic"])
    assert rec["data"] == "synthetic" and rec["steps_per_epoch"] == 60000 // 16 and rec["resolution"] == 28
