"""Token Labeling and SMMix details held to the official code (TokenLabeling @9dbfd59, SMMix @14b1edc).

* the MixToken box is the official ``rand_bbox`` (``tlt/models/lvvit.py``), written out below as a plain reference;
* the label-map smoothing rule (official t·(1 − s + s/K) + s/K, or normalised t·(1 − s) + s/K);
* SMMix's "motivation" forward runs in float32 whatever the training autocast;
* ``Deit/main.py --eval`` needs only the model, the checkpoint and the data.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image
from test_deit import DEIT_MODULES, train
from test_smmix_token_labeling import smmix, token_labeling

from maxsup.models import arch_spec, create_model, model_from_checkpoint, vit

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------------------------------
# MixToken box
# --------------------------------------------------------------------------------------------------------------------
def _official_box(rows: int, cols: int, lam: float) -> tuple[int, int, int, int]:
    """The official ``rand_bbox(x.size(), lam)`` on a (B, C, rows, cols) token map, with its own names: it calls the
    row count W and draws its centre first; both edges sit at ``centre ∓ cut // 2``."""
    W, H = rows, cols  # noqa: N806  (the official names)
    cut_rat = math.sqrt(1.0 - lam)
    cut_w, cut_h = int(W * cut_rat), int(H * cut_rat)
    cx, cy = np.random.randint(W), np.random.randint(H)
    bbx1, bby1 = min(max(cx - cut_w // 2, 0), W), min(max(cy - cut_h // 2, 0), H)
    bbx2, bby2 = min(max(cx + cut_w // 2, 0), W), min(max(cy + cut_h // 2, 0), H)
    return bbx1, bbx2, bby1, bby2  # as (r0, r1, c0, c1)


@pytest.mark.parametrize("grid", [(14, 14), (3, 5), (7, 4), (1, 1)])
def test_mixtoken_box_is_the_official_box_on_seeded_draws(grid):
    for seed in range(200):
        np.random.seed(seed)
        lam = float(np.random.beta(1.0, 1.0))
        ours = vit.mixtoken_box(grid, lam)
        np.random.seed(seed)
        np.random.beta(1.0, 1.0)
        assert ours == _official_box(*grid, lam), (seed, lam)


def test_mixtoken_mean_mixed_area_is_the_official_one():
    """lam ~ Beta(1, 1) on LV-ViT's 14×14 grid: the official box mixes 0.269 of the grid on average (timm 1.0's
    CutMix box, whose upper edge is centre + (cut + 1) // 2, mixes 0.295)."""
    np.random.seed(0)
    n, grid = 20_000, (14, 14)
    areas = []
    for _ in range(n):
        r0, r1, c0, c1 = vit.mixtoken_box(grid, float(np.random.beta(1.0, 1.0)))
        areas.append((r1 - r0) * (c1 - c0) / 196)
    mean, se = float(np.mean(areas)), float(np.std(areas)) / math.sqrt(n)
    assert se < 0.0015 and abs(mean - 0.269) < 0.005, mean


def test_the_model_draws_lam_and_box_from_numpy_as_the_official_forward():
    """Same numpy seed ⇒ the same lam (np.random.beta) and box as the official forward."""
    model = create_model("lvvit_t", 3, img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2,
                         stem_width=4).train()
    x = torch.randn(4, 3, 32, 32)
    for seed in range(5):
        np.random.seed(seed)
        _, _, bbox = model(x)
        np.random.seed(seed)
        expect = _official_box(4, 4, float(np.random.beta(1.0, 1.0)))
        empty = expect[1] <= expect[0] or expect[3] <= expect[2]
        assert bbox == (None if empty else expect)


# --------------------------------------------------------------------------------------------------------------------
# label-map smoothing
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", ["official", "normalized"])
def test_label_map_smoothing_rule(rule):
    b, k, h, w, s = 2, 5, 4, 4, 0.1
    g = torch.Generator().manual_seed(0)
    idx = torch.stack([torch.randperm(k, generator=g)[:2] for _ in range(b * h * w)]).view(b, h, w, 2)
    maps = torch.stack([torch.randn(b, 2, h, w, generator=g), idx.permute(0, 3, 1, 2).float()], 1).half()
    boxes, flipped = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.2, 0.1, 0.9, 0.8]]), torch.tensor([False, True])
    plain_cls, plain_tok = token_labeling.dense_targets(maps, boxes, flipped, k, 2)
    cls, tok = token_labeling.dense_targets(maps, boxes, flipped, k, 2, smoothing=s, smoothing_rule=rule)
    on = 1 - s + s / k if rule == "official" else 1 - s  # official mixup_target: on_value = 1 − s + s/K
    assert torch.allclose(tok, plain_tok * on + s / k) and torch.allclose(cls, plain_cls * on + s / k)
    row_sum = 1 + s / k if rule == "official" else 1.0
    assert torch.allclose(tok.sum(-1), torch.full((b, 4), row_sum)) and torch.allclose(cls.sum(-1), torch.full((b,),
                                                                                                              row_sum))
    step = token_labeling.TokenLabelStep(k, 2, smoothing=s, smoothing_rule=rule)
    got_cls, got_tok = step.targets((torch.zeros(b), maps, boxes, flipped), torch.device("cpu"))
    assert torch.equal(got_cls, cls) and torch.equal(got_tok, tok)
    with pytest.raises(ValueError, match="smoothing_rule"):
        token_labeling.dense_targets(maps, boxes, flipped, k, 2, smoothing=s, smoothing_rule="uniform")


# --------------------------------------------------------------------------------------------------------------------
# SMMix motivation forward precision
# --------------------------------------------------------------------------------------------------------------------
def test_smmix_motivation_forward_is_float32_under_autocast():
    torch.manual_seed(0)
    model = create_model("vit_tiny_patch16_224", 5, img_size=28, patch_size=7, embed_dim=32, depth=2, num_heads=2,
                         token_head="smmix").train()
    mixer = smmix.SMMix(side=4, num_classes=5, switch_prob=1.0)
    x, y = torch.randn(6, 3, 28, 28), torch.tensor([0, 1, 2, 3, 4, 0])
    model.eval()
    ref_logits, ref_score = model.patch_attention(x)  # plain fp32
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lo_logits, _ = model.patch_attention(x)  # what an autocast motivation forward would give
        torch.manual_seed(1)
        mixed, _, batch = mixer(x, y, model)
    assert lo_logits.dtype == torch.bfloat16 and not torch.equal(lo_logits.float(), ref_logits)  # the test can fail
    assert model.training  # restored after the eval-mode forward
    assert batch.mixed_logits.dtype == torch.float32
    expect = batch.lam * ref_logits + (1 - batch.lam) * ref_logits.flip(0)
    assert torch.equal(batch.mixed_logits, expect)
    r = int(round(math.sqrt(int(batch.source_mask[0].sum()))))
    target_rc, source_rc = smmix.max_min_windows(ref_score, 4, r)  # the windows of the fp32 attention
    _, source_mask = smmix.paste_windows(x, 4, r, target_rc, source_rc)
    assert torch.equal(batch.source_mask, source_mask)


# --------------------------------------------------------------------------------------------------------------------
# evaluation needs only model, checkpoint and data
# --------------------------------------------------------------------------------------------------------------------
LVVIT_KW = {"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2, "stem_width": 4}
DATA = ["--input-size", "28", "--eval-crop-ratio", "1.0", "--batch-size", "8", "--num_workers", "0"]


def _expected_stats(model: torch.nn.Module, root) -> tuple[float, float]:
    """(acc1 %, NLL) of ``model`` on the val split, through the trainer's own eval transform."""
    datasets = DEIT_MODULES["datasets"]
    args = DEIT_MODULES["main"].get_args_parser().parse_args(["--data-set", "FOLDER", "--data-path", str(root),
                                                                *DATA])
    ds, _ = datasets.build_dataset(False, args)
    model.eval()
    with torch.no_grad():
        xs, ys = zip(*(ds[i] for i in range(len(ds))), strict=True)
        logits = model(torch.stack(xs)).float()
    ys = torch.tensor(ys)
    acc = float((logits.argmax(1) == ys).float().mean() * 100)
    nll = float(torch.nn.functional.cross_entropy(logits, ys))
    return acc, nll


@pytest.mark.parametrize("name,kwargs,extra", [
    ("lvvit_t", LVVIT_KW, []),  # the LV-ViT file alone: no --token-label, default --mixup/--cutmix
    ("lvvit_t", LVVIT_KW, ["--mixtoken", "--loss", "ls", "--smoothing", "0.1"]),  # training flags are ignored
    ("vit_tiny_patch16_224", {"patch_size": 7, "embed_dim": 16, "depth": 1, "num_heads": 2, "token_head": "mixtoken"},
     []),  # a DeiT trained with Token Labeling: the head and its eval rule come from the checkpoint
])
def test_eval_needs_only_model_checkpoint_and_data(name, kwargs, extra, image_root, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, 3, img_size=28, **kwargs)
    with torch.no_grad():  # BatchNorm running statistics that are not the initial ones
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": model.state_dict(), "arch": arch_spec(name, 3, img_size=28, **kwargs)}, path)
    model_kw = {k: v for k, v in kwargs.items() if k != "token_head"}
    stats = train(["--eval", "--resume", str(path), "--model", name, "--model-kwargs", json.dumps(model_kw),
                   "--data-set", "FOLDER", "--data-path", str(image_root), *DATA, *extra])
    acc, nll = _expected_stats(model_from_checkpoint(torch.load(path, weights_only=False)), image_root)
    assert stats["acc1"] == pytest.approx(acc) and stats["nll"] == pytest.approx(nll, rel=1e-5)


# --------------------------------------------------------------------------------------------------------------------
# official augmentation order: the label map moves with RandAugment's geometric ops
# --------------------------------------------------------------------------------------------------------------------
W, H, CELL = 64, 48, 4  # a non-square image; map cells of 4×4 pixels (16×12 cells)


def _scene(box: tuple[int, int, int, int]) -> tuple[Image.Image, torch.Tensor]:
    """A black image with a white rectangle ``box`` = (x1, y1, x2, y2) px (cell-aligned), and its label map: class 1
    scores 5 inside the rectangle and 1 outside, class 0 the opposite (top-2 map, (2, 2, H/4, W/4))."""
    img = Image.new("RGB", (W, H))
    img.paste((255, 255, 255), box)
    inside = torch.zeros(H // CELL, W // CELL, dtype=torch.bool)
    inside[box[1] // CELL:box[3] // CELL, box[0] // CELL:box[2] // CELL] = True
    values = torch.stack([torch.full(inside.shape, 5.0), torch.full(inside.shape, 1.0)])  # top-1, top-2 scores
    indices = torch.stack([torch.where(inside, 1.0, 0.0), torch.where(inside, 0.0, 1.0)])
    return img, torch.stack([values, indices]).half()


def _white_fraction(gray: torch.Tensor) -> torch.Tensor:
    """(h, w) fraction of white pixels in each 4×4 map cell of an (H, W) image with values in [0, 1]."""
    return (gray > 0.5).float().unfold(0, CELL, CELL).unfold(1, CELL, CELL).mean((-2, -1))


def _agrees(region: torch.Tensor, fraction: torch.Tensor) -> bool:
    """The map marks every cell that is mostly white (> 3/4) and no cell that is mostly black (< 1/4); cells that the
    rectangle's edge cuts through may go either way (nearest-neighbour sampling at the cell centre)."""
    return bool(region[fraction > 0.75].all() and not region[fraction < 0.25].any())


def _gray(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img.convert("L"), dtype=np.float32) / 255)


def _map_class1(label_map: torch.Tensor) -> torch.Tensor:
    """(h, w) bool: class 1 has the highest score (the map's argmax marks the rectangle)."""
    scores = torch.zeros(2, *label_map.shape[-2:])
    scores.scatter_(0, label_map[1].long(), label_map[0].float())
    return scores[1] > scores[0]


@pytest.mark.parametrize("name,arg", [("ShearX", 0.3), ("ShearX", -0.3), ("ShearY", 0.3), ("ShearY", -0.3),
                                      ("TranslateXRel", 0.25), ("TranslateXRel", -0.25), ("TranslateYRel", 0.3),
                                      ("TranslateYRel", -0.3), ("Rotate", 30.0), ("Rotate", -30.0),
                                      ("Rotate", 90.0)])
@pytest.mark.parametrize("box", [(16, 12, 40, 28), (4, 24, 20, 44)])
def test_map_warp_moves_the_region_as_the_image_op_moves_its_pixels(name, arg, box):
    from timm.data.auto_augment import NAME_TO_OP

    img, label_map = _scene(box)
    assert torch.equal(_map_class1(label_map), _white_fraction(_gray(img)) > 0.5)  # aligned before the op
    moved_img = NAME_TO_OP[name](img, arg, fillcolor=(0, 0, 0), resample=Image.NEAREST)
    matrix = token_labeling._pil_affine(name, (arg,), img.size)
    moved_map = token_labeling.warp_label_map(label_map, matrix, img.size)
    fraction, region = _white_fraction(_gray(moved_img)), _map_class1(moved_map)
    assert (fraction > 0.75).sum() >= 4 and not torch.equal(fraction > 0.5, _map_class1(label_map))  # it moved
    assert _agrees(region, fraction), (name, arg)
    assert moved_map.dtype == torch.float16 and moved_map.shape == label_map.shape
    if name.startswith("Translate"):  # the cells whose source left the image get no score: uniform targets
        left = (moved_map[0] == 0).all(0)
        assert left.float().mean() == pytest.approx(abs(arg), abs=0.1)


def test_photometric_ops_leave_the_map_alone():
    assert token_labeling._pil_affine("Solarize", (128,), (W, H)) is None
    assert token_labeling._pil_affine("Color", (1.5,), (W, H)) is None


def test_official_order_transform_keeps_the_map_on_the_image():
    """Flip, geometric RandAugment, crop: after all three the token targets (dense_targets on the warped map with the
    recorded box) still mark where the rectangle is in the output image."""
    from timm.data.auto_augment import rand_augment_transform
    from timm.data.transforms import RandomResizedCropAndInterpolation
    from torchvision import transforms

    ra = rand_augment_transform("rand-m9-n2-mstd0.5", {"img_mean": (0, 0, 0)},
                                transforms=["Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"])
    tf = token_labeling.OfficialOrderCropFlip(transforms.Compose([
        RandomResizedCropAndInterpolation(32, scale=(0.5, 1.0)), transforms.RandomHorizontalFlip(0.5), ra,
        transforms.ToTensor()]))
    assert tf.warps_map and isinstance(tf.before[0], token_labeling._RecordingRandAugment)
    img, label_map = _scene((8, 8, 32, 32))  # left half of the image: a flip moves it
    flips = geometric = 0
    for seed in range(40):
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        x, box, flipped, warped = tf(img, label_map)
        assert flipped is False and x.shape == (3, 32, 32)
        geometric += bool(tf.before[0].calls)
        flips += bool(warped[1, 0, 3, -3] == 1)  # the rectangle's right-hand mirror image holds class 1
        _, tokens = token_labeling.dense_targets(warped[None], box[None], torch.tensor([False]), 2, 8)
        # roi_align blends neighbouring map cells, so only cells far from the edge are checked; a cell whose source
        # left the image is uniform (0.5 with two classes)
        target, fraction = tokens[0, :, 1].view(8, 8), _white_fraction(x[0])
        assert (target[fraction > 0.9] > 0.5).all() and (target[fraction < 0.1] < 0.6).all(), seed
    assert geometric >= 20 and flips >= 5


def test_trainer_runs_the_official_order_on_label_maps(image_root, tmp_path):
    """``--token-label-aug official`` through TokenLabelDataset and the trainer (28 px: DeiT's padded RandomCrop)."""
    maps = tmp_path / "maps"
    g = torch.Generator().manual_seed(0)
    for img in sorted((image_root / "train").rglob("*.jpg")):
        (maps / img.parent.name).mkdir(parents=True, exist_ok=True)
        idx = torch.stack([torch.randperm(3, generator=g)[:2] for _ in range(16)]).T.reshape(2, 4, 4)
        torch.save(torch.stack([torch.randn(2, 4, 4, generator=g), idx.float()]).half(),
                   maps / img.parent.name / f"{img.stem}.pt")
    args = DEIT_MODULES["main"].get_args_parser().parse_args(
        ["--data-set", "FOLDER", "--data-path", str(image_root), "--input-size", "28", "--aa", "rand-m9-mstd0.5-inc1"])
    base, n = DEIT_MODULES["datasets"].build_dataset(True, args)
    ds = token_labeling.TokenLabelDataset(
        base, maps, n, token_labeling.OfficialOrderCropFlip(DEIT_MODULES["datasets"].build_transform(True, args)))
    torch.manual_seed(0)
    moved = 0
    for i in range(0, len(ds), 7):
        x, (label, m, box, flipped) = ds[i]
        assert x.shape == (3, 28, 28) and m.shape == (2, 2, 4, 4) and m.dtype == torch.float16 and flipped is False
        assert label == base.targets[i] and box.shape == (4,)
        moved += not torch.equal(m, ds._load(i))
    assert moved > 0  # flips and geometric ops reached the maps
    log = train(["--data-set", "FOLDER", "--data-path", str(image_root), "--limit-per-class", "16", "--input-size",
                 "28", "--model", "vit_tiny_patch16_224", "--model-kwargs",
                 '{"patch_size": 7, "embed_dim": 16, "depth": 1, "num_heads": 2}', "--batch-size", "16",
                 "--mixup", "0", "--cutmix", "0", "--num_workers", "0", "--epochs", "1", "--mixtoken",
                 "--token-label-data", str(maps), "--token-label-aug", "official", "--aa", "rand-m9-mstd0.5-inc1",
                 "--smoothing", "0.1", "--output_dir", str(tmp_path / "run")])
    assert log["train_samples"] == 48 and math.isfinite(log["train_loss"])
