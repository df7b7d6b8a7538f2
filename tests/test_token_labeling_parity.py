"""Token Labeling and SMMix details held to the official code (TokenLabeling @9dbfd59, SMMix @14b1edc).

* the MixToken box is the official ``rand_bbox`` (``tlt/models/lvvit.py``), written out below as a plain reference;
* the label-map smoothing rule (official t·(1 − s + s/K) + s/K, or normalised t·(1 − s) + s/K);
* SMMix's "motivation" forward runs in float32 whatever the training autocast;
* ``Deit/main.py --eval`` needs only the model, the checkpoint and the data.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_deit import DEIT_MODULES, _one_thread, image_root, train  # noqa: F401  (fixtures)
from test_smmix_token_labeling import smmix, token_labeling

from maxsup import vit
from maxsup.models import arch_spec, create_model, model_from_checkpoint


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
def test_eval_needs_only_model_checkpoint_and_data(name, kwargs, extra, image_root, tmp_path):  # noqa: F811
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
