"""analysis/common.py helpers that several scripts share, on untrained convention checkpoints (no training, no data)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from analysis import calibration
from analysis.common import build_dataset, checkpoint_panels, pyplot
from maxsup.data.fashion_mnist import FMNIST_MEAN, FMNIST_STD
from maxsup.data.imagenet_variants import imagenet_wnids
from maxsup.data.transforms import transform_spec
from maxsup.errors import UserError
from maxsup.models import arch_spec, create_model
from maxsup.training import atomic_save


def _checkpoint(path: Path, nan: bool = False) -> Path:
    """An untrained CIFAR-ResNet-10 (width 4, 1 channel, 3 classes); ``nan`` poisons one weight."""
    torch.manual_seed(0)
    kw = {"width": 4, "in_chans": 1}
    state = create_model("cifar_resnet10", 3, **kw).state_dict()
    if nan:
        state["fc.weight"][0, 0] = float("nan")
    atomic_save({"model": state, "arch": arch_spec("cifar_resnet10", 3, **kw), "epoch": 0,
                 "eval_transform": transform_spec(28, 1.0, mean=(FMNIST_MEAN,), std=(FMNIST_STD,),
                                                  grayscale_to_rgb=False)}, path)
    return path


def test_checkpoint_panels_one_per_checkpoint_in_order_loaded_lazily(tmp_path):
    good, bad = _checkpoint(tmp_path / "good.pth"), _checkpoint(tmp_path / "nan.pth", nan=True)
    args = calibration.get_args_parser().parse_args(
        ["--checkpoint", f"B={good}", "--checkpoint", f"A={good}", "--checkpoint", f"Diverged={bad}",
         "--out", str(tmp_path), "--device", "cpu"])
    fig, panels = checkpoint_panels(args, (2.5, 3.0))
    try:
        assert fig.get_size_inches().tolist() == [7.5, 3.0] and len(fig.axes) == 3  # one row, width × 3 panels
        first, second = next(panels), next(panels)
        assert [ax for ax, _ in (first, second)] == fig.axes[:2]
        assert [m.name for _, m in (first, second)] == ["B", "A"]  # --checkpoint order, not sorted
        assert first[1].num_classes == 3 and not first[1].model.training
        # the diverged checkpoint is read only when its panel comes: the first two were handed out before it failed
        with pytest.raises(UserError, match="Diverged .* non-finite weights"):
            next(panels)
    finally:
        pyplot().close(fig)


def test_checkpoint_panels_refuses_a_missing_checkpoint_before_drawing(tmp_path):
    args = calibration.get_args_parser().parse_args(
        ["--checkpoint", f"A={_checkpoint(tmp_path / 'a.pth')}", "--checkpoint", f"B={tmp_path / 'nope.pth'}",
         "--out", str(tmp_path)])
    plt = pyplot()
    before = plt.get_fignums()
    with pytest.raises(UserError, match="checkpoint not found: .*nope.pth"):
        checkpoint_panels(args, (4, 4))
    assert plt.get_fignums() == before  # no figure left open


def test_head_size_is_1000_for_imagenet_a_else_one_output_per_selected_class(tmp_path):
    """The head a checkpoint needs (``check_head`` in ``cached_arrays`` and ``robustness``): ImageNet-A/R are scored
    on their classes' logits of a 1k head; any other set, a ``--classes`` subset included, needs one output per
    class it keeps."""
    wnids = imagenet_wnids()
    for k in (13, 6):  # two of ImageNet-A's classes; labels 0, 1 follow the sorted wnids (1k indices 6, 13)
        (tmp_path / wnids[k]).mkdir()
        for j in range(2):
            Image.new("RGB", (8, 8), (40 * j, k, 0)).save(tmp_path / wnids[k] / f"{j}.JPEG")
    a = build_dataset("imagenet-a", str(tmp_path), "test")
    assert a.head_size == 1000 and a.class_indices == [6, 13] and a.targets == [0, 0, 1, 1]
    picked = build_dataset("fmnist", None, "test", classes=[7, 3], max_per_class=2)
    assert picked.head_size == 2 and picked.class_indices is None and sorted(picked.targets) == [0, 0, 1, 1]
