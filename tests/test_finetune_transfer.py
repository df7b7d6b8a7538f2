"""--finetune (maxsup.models.load_pretrained_backbone in the trainers) and the Table 6/12 target readers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flat_import import load_flat
from PIL import Image

from maxsup.data.transfer import CUB200, transfer_dataset
from maxsup.data.transforms import transform_spec
from maxsup.errors import UserError
from maxsup.models import arch_spec, create_model, load_pretrained_backbone
from maxsup.training import atomic_save, load_checkpoint

TRAIN_DIR = Path(__file__).resolve().parents[1] / "Conv" / "common_resnet"


def _pretrained(path: Path, k: int = 10) -> torch.nn.Module:
    torch.manual_seed(1)
    model = create_model("cifar_resnet10", k, width=4)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)  # not the seed-0 initialisation a fresh model would have
    atomic_save({"model": model.state_dict(), "arch": arch_spec("cifar_resnet10", k, width=4),
                 "eval_transform": transform_spec(28)}, path)
    return model


def test_backbone_loads_and_head_is_replaced_only_when_classes_differ(tmp_path):
    src = _pretrained(tmp_path / "p.pth")
    torch.manual_seed(0)
    three = create_model("cifar_resnet10", 3, width=4)
    fresh_fc = three.fc.weight.detach().clone()
    info = load_pretrained_backbone(three, str(tmp_path / "p.pth"))
    assert info["head_replaced"] and torch.equal(three.conv1.weight, src.conv1.weight)
    assert torch.equal(three.layer4[0].bn2.running_var, src.layer4[0].bn2.running_var)
    assert torch.equal(three.fc.weight, fresh_fc)
    ten = create_model("cifar_resnet10", 10, width=4)
    assert not load_pretrained_backbone(ten, str(tmp_path / "p.pth"))["head_replaced"]
    assert torch.equal(ten.fc.weight, src.fc.weight)
    with pytest.raises(UserError, match="does not fit the model's backbone"):
        load_pretrained_backbone(create_model("cifar_resnet10", 3, width=8), str(tmp_path / "p.pth"))


def test_common_resnet_finetune_flag(tmp_path, capsys):
    src = _pretrained(tmp_path / "p.pth")
    trainer = load_flat(TRAIN_DIR, "train", ("presets", "utils", "sampler"))
    torch.set_num_threads(1)
    out = tmp_path / "ft"
    trainer.run_cli(trainer.cli, ["--dataset", "fmnist", "--classes", "0,1,2", "--limit-per-class", "10",
                                  "--model", "cifar_resnet10", "--model-kwargs", "width=4", "--finetune",
                                  str(tmp_path / "p.pth"), "--epochs", "1", "-b", "16", "-j", "0", "--lr", "0",
                                  "--wd", "0", "--output-dir", str(out)])
    assert "new 3-class head" in capsys.readouterr().out
    state = load_checkpoint(out / "checkpoint.pth")["model"]
    assert state["fc.weight"].shape == (3, 32)  # width 4 × 8
    assert torch.equal(state["conv1.weight"], src.conv1.weight)  # lr 0: still the pretrained backbone


def _cub(root: Path) -> None:
    base = root / "CUB_200_2011"
    (base / "images" / "001.A").mkdir(parents=True)
    (base / "images" / "002.B").mkdir(parents=True)
    files = ["001.A/a1.jpg", "001.A/a2.jpg", "002.B/b1.jpg", "002.B/b2.jpg"]
    for i, f in enumerate(files):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(base / "images" / f)
    (base / "images.txt").write_text("".join(f"{i + 1} {f}\n" for i, f in enumerate(files)))
    (base / "image_class_labels.txt").write_text("1 1\n2 1\n3 2\n4 2\n")
    (base / "train_test_split.txt").write_text("1 1\n2 0\n3 0\n4 1\n")
    (base / "classes.txt").write_text("1 001.A\n2 002.B\n")


def test_cub_published_layout_and_split(tmp_path):
    _cub(tmp_path)
    train, test = CUB200(tmp_path, True), transfer_dataset("cub200", tmp_path, False)
    assert train.targets == [0, 1] and test.targets == [0, 1] and train.classes == ["001.A", "002.B"]
    assert np.asarray(train[1][0])[0, 0, 0] == 120 and np.asarray(test[1][0])[0, 0, 0] == 80
    with pytest.raises(UserError, match="CUB-200-2011 not found"):
        CUB200(tmp_path / "nope")
    with pytest.raises(UserError, match="flowers102 not found"):
        transfer_dataset("flowers102", tmp_path, True)
