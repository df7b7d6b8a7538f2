"""Every official checkpoint layout loads through the one detector (``maxsup.models.read_weights``) for
``Deit/main.py --eval --resume FILE``, ``--finetune`` and ``python -m maxsup.hub convert`` / ``evaluate``.

The files are written here, in each publisher's layout, from small models: a 2-block LV-ViT-T at 32 px (the official
``state_dict`` names), a one-block ViT with SMMix's ``token_head``, and a real-size LV-ViT-T / DeiT-Tiny only where
``convert`` must record the architecture's own eval transform. Data: real Fashion-MNIST images as an ImageFolder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from flat_import import load_flat_modules
from helpers import cli_error, folder_acc1_nll

from maxsup import hub
from maxsup.data.transforms import transform_spec
from maxsup.errors import UserError
from maxsup.models import (
    LAYOUTS,
    arch_spec,
    create_model,
    load_any_checkpoint,
    load_pretrained_backbone,
    load_weights,
    model_from_checkpoint,
)
from maxsup.training import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
DEIT = load_flat_modules(ROOT / "Deit", ("main", "engine", "datasets", "samplers"))

#: a small LV-ViT-T (official key names; 2 blocks, dim 48) at 32 px
LVVIT_KW = {"img_size": 32, "embed_dim": 48, "depth": 2, "num_heads": 2, "stem_width": 16}
#: a one-block ViT at 28 px (the DeiT/SMMix backbone family)
VIT_KW = {"img_size": 28, "patch_size": 7, "embed_dim": 32, "depth": 1, "num_heads": 2}
EVAL_FLAGS = ["--data-set", "FOLDER", "--batch-size", "8", "--num_workers", "0", "--print-freq", "0",
              "--eval-crop-ratio", "1.0", "--mixup", "0", "--cutmix", "0"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def image_root(fmnist_image_folder) -> Path:
    """Smaller than conftest's: 3 classes × (8 train + 6 val) real Fashion-MNIST JPEGs (read-only)."""
    return fmnist_image_folder(8, 6)


def _perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights that no fresh initialisation reproduces (so a silently skipped load is caught)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def _layouts(sd: dict, arch: dict) -> dict[str, dict]:
    """The same weights in every layout users bring (arch: this project's ``arch`` entry for ours)."""
    timm_args = argparse.Namespace(model=arch["name"], lr=1.6e-3, img_size=32)  # timm pickles its args as Namespace
    return {
        "bare": dict(sd),  # LV-ViT's released .pth.tar
        "timm-train": {"epoch": 299, "arch": "lv_vit", "state_dict": {f"module.{k}": v for k, v in sd.items()},
                       "optimizer": {}, "version": 2, "args": timm_args, "metric": 83.3,
                       "state_dict_ema": {k: v.clone() for k, v in sd.items()}},
        "deit": {"model": dict(sd), "optimizer": {}, "epoch": 299, "args": argparse.Namespace(model=arch["name"])},
        "deit-released": {"model": dict(sd)},  # DeiT's published files hold only the weights
        "maxsup": {"model": dict(sd), "arch": arch, "eval_transform": transform_spec(32, crop_pct=1.0),
                   "args": {"model": arch["name"]}, "epoch": 0},
    }


def _deit_error(argv: list[str], capsys) -> str:
    """Deit/main.py as its command line runs it: exit 2 and one ``error:`` line on stderr, no traceback."""
    return cli_error(capsys, DEIT["main"].cli, argv, code=2)


def _direct(model: torch.nn.Module, root: Path, size: int) -> tuple[float, float]:
    """acc1 (%) and NLL of ``model`` on root/val with Deit's eval transform (resize size/1.0 bicubic, centre crop)."""
    return folder_acc1_nll(model, root / "val",
                           transform_spec(size, crop_pct=1.0, interpolation="bicubic", grayscale_to_rgb=True))


@pytest.fixture(scope="module")
def lvvit_files(tmp_path_factory):
    torch.manual_seed(0)
    model = _perturbed(create_model("lvvit_t", 3, **LVVIT_KW), 1)
    folder = tmp_path_factory.mktemp("lvvit")
    paths = {}
    for name, obj in _layouts(model.state_dict(), arch_spec("lvvit_t", 3, **LVVIT_KW)).items():
        paths[name] = folder / f"{name}.pth.tar"
        torch.save(obj, paths[name])
    return model, paths


@pytest.mark.parametrize("layout", ["bare", "timm-train", "deit", "deit-released", "maxsup"])
def test_deit_eval_resume_reads_every_layout(lvvit_files, image_root, layout, capsys):
    """What DeiT users type: --eval --resume FILE --model M, and nothing about training."""
    model, paths = lvvit_files
    stats = DEIT["main"].cli([*EVAL_FLAGS, "--data-path", str(image_root), "--model", "lvvit_t", "--input-size",
                              "32", "--model-kwargs", json.dumps(LVVIT_KW), "--eval", "--resume", str(paths[layout])])
    acc1, nll = _direct(model, image_root, 32)
    assert stats["n"] == 18
    assert stats["acc1"] == pytest.approx(acc1)
    assert stats["nll"] == pytest.approx(nll, rel=1e-5)
    assert "zip maps" not in capsys.readouterr().out


def test_deit_eval_warns_about_the_authors_zip_label_order(lvvit_files, image_root, tmp_path, capsys):
    model, _ = lvvit_files
    path = tmp_path / "authors_deit.pth"
    torch.save({"model": model.state_dict(), "epoch": 299, "args": argparse.Namespace(cache=True)}, path)
    DEIT["main"].cli([*EVAL_FLAGS, "--data-path", str(image_root), "--model", "lvvit_t", "--input-size", "32",
                      "--model-kwargs", json.dumps(LVVIT_KW), "--eval", "--resume", str(path)])
    assert "trained with --cache on its authors' zip maps" in capsys.readouterr().out


def test_deit_eval_ema_of_a_timm_train_file_and_a_file_without_ema(lvvit_files, image_root, capsys):
    _, paths = lvvit_files
    args = [*EVAL_FLAGS, "--data-path", str(image_root), "--model", "lvvit_t", "--input-size", "32",
            "--model-kwargs", json.dumps(LVVIT_KW), "--eval", "--eval-ema", "--resume"]
    ema = DEIT["main"].cli([*args, str(paths["timm-train"])])
    plain = DEIT["main"].cli([*args[:-2], "--resume", str(paths["timm-train"])])
    assert ema["nll"] == pytest.approx(plain["nll"], rel=1e-6)  # the file's EMA is a copy of its weights
    assert "keeps no EMA weights" in _deit_error([*args, str(paths["bare"])], capsys)


def test_smmix_file_evaluates_its_class_head(image_root, tmp_path):
    """SMMix's DeiT: ``{'model': ViT keys + token_head}``; evaluated as SMMix does (the class head's logits)."""
    torch.manual_seed(0)
    vit = _perturbed(create_model("vit_tiny_patch16_224", 3, **VIT_KW), 2)
    token_head = torch.nn.Linear(32, 3)
    sd = {**vit.state_dict(), "token_head.weight": token_head.weight.detach(), "token_head.bias": token_head.bias}
    path = tmp_path / "deit_small_smmix.pth"
    torch.save({"model": sd, "epoch": 299, "args": argparse.Namespace(model="vit_deit_small_patch16_224")}, path)
    stats = DEIT["main"].cli([*EVAL_FLAGS, "--data-path", str(image_root), "--model", "vit_tiny_patch16_224",
                              "--input-size", "28", "--model-kwargs", json.dumps(VIT_KW), "--eval", "--resume",
                              str(path)])
    acc1, nll = _direct(vit, image_root, 28)
    assert stats["acc1"] == pytest.approx(acc1) and stats["nll"] == pytest.approx(nll, rel=1e-5)

    smmix = create_model("vit_tiny_patch16_224", 3, token_head="smmix", **VIT_KW)
    assert load_weights(smmix, load_any_checkpoint(path)).layout == "deit"
    assert torch.equal(smmix.aux_head.weight, token_head.weight)  # the token head is kept, as TokenHeadViT's


@pytest.mark.parametrize("layout", ["bare", "timm-train", "deit", "maxsup"])
def test_finetune_keeps_the_backbone_and_replaces_both_heads(lvvit_files, layout):
    model, paths = lvvit_files
    torch.manual_seed(5)
    two = create_model("lvvit_t", 2, **LVVIT_KW)
    fresh_head = two.head.weight.detach().clone()
    info = load_pretrained_backbone(two, str(paths[layout]))
    assert info["head_replaced"] and info["layout"] == layout
    own = model.state_dict()
    for key, value in two.state_dict().items():
        if key.startswith(("head.", "aux_head.")):
            assert value.shape[0] == 2
        else:
            assert torch.equal(value, own[key]), key
    assert torch.equal(two.head.weight, fresh_head)
    three = create_model("lvvit_t", 3, **LVVIT_KW)
    assert not load_pretrained_backbone(three, str(paths[layout]))["head_replaced"]
    assert torch.equal(three.aux_head.weight, model.aux_head.weight)


def test_deit_finetune_flag_reads_a_timm_train_file(image_root, tmp_path, capsys):
    torch.manual_seed(0)
    vit = _perturbed(create_model("vit_tiny_patch16_224", 5, **VIT_KW), 3)
    src = tmp_path / "model_best.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in vit.state_dict().items()}, "epoch": 9, "arch": "vit",
                "args": argparse.Namespace(model="vit_tiny_patch16_224")}, src)
    out = tmp_path / "ft"
    DEIT["main"].cli([*EVAL_FLAGS, "--data-path", str(image_root), "--model", "vit_tiny_patch16_224", "--input-size",
                      "28", "--model-kwargs", json.dumps(VIT_KW), "--finetune", str(src), "--epochs", "1", "--lr",
                      "0", "--unscale-lr", "--warmup-epochs", "0", "--aa", "none", "--reprob", "0",
                      "--color-jitter", "0", "--no-model-ema", "--output_dir", str(out)])
    assert "Fine-tuning from" in capsys.readouterr().out
    ft = load_checkpoint(out / "checkpoint.pth")["model"]
    # lr 0: the backbone is exactly the file's; the 3-class head is new
    assert torch.equal(ft["blocks.0.attn.qkv.weight"], vit.state_dict()["blocks.0.attn.qkv.weight"])
    assert ft["head.weight"].shape == (3, 32)


# --------------------------------------------------------------------------------------------------------------------
# python -m maxsup.hub convert / evaluate: each architecture's own eval transform
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lvvit_t_official(tmp_path_factory):
    """A real-size LV-ViT-T in the official release layout (a bare state_dict, ``lvvit_t.pth``)."""
    torch.manual_seed(0)
    model = _perturbed(create_model("lvvit_t", 3), 4)
    path = tmp_path_factory.mktemp("official") / "lvvit_t.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_convert_records_lvvit_crop_and_keeps_outputs(lvvit_t_official, tmp_path, capsys):
    model, path = lvvit_t_official
    dst = tmp_path / "lvvit_t_converted.pth"
    hub.main(["convert", str(path), str(dst), "--arch", "lvvit_t"])
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "bare" and report["arch"]["name"] == "lvvit_t"
    ckpt = load_checkpoint(dst)
    spec = ckpt["eval_transform"]
    assert (spec["img_size"], spec["crop_pct"], spec["interpolation"]) == (224, 0.9, "bicubic")
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(model_from_checkpoint(ckpt).eval()(x), model(x), rtol=0, atol=0)


def test_each_architecture_records_its_own_eval_transform(tmp_path, capsys):
    assert hub.eval_transform_for("lvvit_s")["crop_pct"] == 0.9
    assert hub.eval_transform_for("lvvit_m") == {"img_size": 224, "crop_pct": 1.0, "interpolation": "bicubic"}
    for name, crop in (("lvvit_t_official", 0.9), ("lvvit_s_official", 0.9), ("lvvit_m_official", 1.0)):
        assert hub.REGISTRY[name].eval_transform["crop_pct"] == crop
    torch.manual_seed(0)
    deit = create_model("deit_tiny_patch16_224", 4)
    src, dst = tmp_path / "deit_tiny_smmix.pth", tmp_path / "deit.pth"
    token_head = {"token_head.weight": torch.randn(4, 192), "token_head.bias": torch.randn(4)}
    torch.save({"model": {**deit.state_dict(), **token_head}, "epoch": 299}, src)  # SMMix's (DeiT's) layout
    hub.main(["convert", str(src), str(dst), "--arch", "deit_tiny_patch16_224"])
    assert json.loads(capsys.readouterr().out)["layout"] == "deit"
    ckpt = load_checkpoint(dst)
    spec = ckpt["eval_transform"]
    assert (spec["img_size"], spec["crop_pct"], spec["interpolation"]) == (224, 0.875, "bicubic")
    assert ckpt["arch"]["kwargs"] == {"token_head": "smmix"}  # SMMix's token head kept as TokenHeadViT's aux_head
    assert torch.equal(ckpt["model"]["aux_head.weight"], token_head["token_head.weight"])
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():  # SMMix evaluates the class head: the same logits as the plain DeiT
        torch.testing.assert_close(model_from_checkpoint(ckpt).eval()(x), deit.eval()(x), rtol=0, atol=1e-6)


def test_hub_evaluate_scores_the_official_file_as_loaded_directly(lvvit_t_official, image_root, capsys):
    model, path = lvvit_t_official
    hub.main(["evaluate", str(path), "--arch", "lvvit_t", "--data-path", str(image_root / "val"), "--workers", "0",
              "--device", "cpu", "--batch-size", "9"])
    result = json.loads(capsys.readouterr().out)
    acc1, nll = folder_acc1_nll(model, image_root / "val", transform_spec(224, crop_pct=0.9, interpolation="bicubic"))
    assert result["n"] == 18
    assert result["acc1"] == pytest.approx(acc1)
    assert result["nll"] == pytest.approx(nll, rel=1e-4)


def test_keys_that_fit_no_layout_are_one_line_naming_them_and_the_layouts(lvvit_files, image_root, tmp_path, capsys):
    model, _ = lvvit_files
    odd = {("encoder." + k if k.startswith("blocks.") else k): v for k, v in model.state_dict().items()}
    path = tmp_path / "odd.pth"
    torch.save({"model": odd}, path)
    err = _deit_error([*EVAL_FLAGS, "--data-path", str(image_root), "--model", "lvvit_t", "--input-size", "32",
                       "--model-kwargs", json.dumps(LVVIT_KW), "--eval", "--resume", str(path)], capsys)
    assert "first unexpected keys: encoder.blocks.0" in err and all(name in err for name in LAYOUTS)
    with pytest.raises(UserError, match="first unexpected keys: encoder.blocks.0"):
        load_pretrained_backbone(create_model("lvvit_t", 3, **LVVIT_KW), str(path))
    torch.save({"weights": odd, "step": 3}, path)  # no state_dict anywhere
    err = cli_error(capsys, hub.main, ["convert", str(path), str(tmp_path / "dst.pth"), "--arch", "lvvit_t"], code=2)
    assert "first unexpected keys: weights, step" in err and "timm-train" in err, err


def test_convert_and_evaluate_rebuild_a_non_default_network_with_model_kwargs(image_root, tmp_path, capsys):
    """A DeiT-Tiny trained at 32 px with 8-px patches (DeiT's {'model'} layout): its pos_embed fits no default
    deit_tiny_patch16_224, so convert names the mismatch; with --model-kwargs the file converts, records the kwargs
    and its eval size, and evaluate scores it as the network computes it."""
    kw = {"img_size": 32, "patch_size": 8}
    torch.manual_seed(0)
    deit = create_model("deit_tiny_patch16_224", 3, **kw).eval()
    src, dst = tmp_path / "deit32.pth", tmp_path / "converted.pth"
    torch.save({"model": deit.state_dict(), "epoch": 9}, src)
    err = cli_error(capsys, hub.main, ["convert", str(src), str(dst), "--arch", "deit_tiny_patch16_224"], code=2)
    assert "pos_embed" in err and not dst.exists(), err
    flags = ["--model-kwargs", "img_size=32", "patch_size=8"]
    hub.main(["convert", str(src), str(dst), "--arch", "deit_tiny_patch16_224", *flags])
    capsys.readouterr()
    ckpt = load_checkpoint(dst)
    assert ckpt["arch"]["kwargs"] == kw and ckpt["eval_transform"]["img_size"] == 32
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(model_from_checkpoint(ckpt).eval()(x), deit(x), rtol=0, atol=1e-6)
    common = ["--data-path", str(image_root / "val"), "--workers", "0", "--device", "cpu", "--batch-size", "9"]
    hub.main(["evaluate", str(src), "--arch", "deit_tiny_patch16_224", *flags, *common])
    result = json.loads(capsys.readouterr().out)
    acc1, nll = folder_acc1_nll(deit, image_root / "val", ckpt["eval_transform"])
    assert result["n"] == 18 and result["nll"] == pytest.approx(nll, rel=1e-4) and result["acc1"] == pytest.approx(acc1)
    err = cli_error(capsys, hub.main, ["evaluate", str(dst), *flags, *common], code=2)
    assert "--model-kwargs applies to upstream files only" in err
    err = cli_error(capsys, hub.main, ["convert", str(src), str(tmp_path / "new.pth"), "--arch",
                                       "deit_tiny_patch16_224", "--model-kwargs", "img_size"], code=2)
    assert "expects key=value pairs" in err and not (tmp_path / "new.pth").exists()
    # an existing DST is kept unless --force: a second convert (here without the kwargs) would otherwise replace it
    before = dst.read_bytes()
    err = cli_error(capsys, hub.main, ["convert", str(src), str(dst), "--arch", "deit_tiny_patch16_224"], code=2)
    assert err == f"error: {dst} exists; pass --force to replace it" and dst.read_bytes() == before
    hub.main(["convert", str(src), str(dst), "--arch", "deit_tiny_patch16_224", *flags, "--force"])
    assert load_checkpoint(dst)["arch"]["kwargs"] == kw
