"""Patch, token and window layouts of SMMix, Token Labeling and the token head (MixToken, dense class scores).

Two kinds of check, both with ``torch.equal``:

* ``tests/data/token_layouts.pt`` holds small seeded inputs and the outputs that the hand-written view/permute code
  gave for them (recorded at commit f38e218, before the einops rewrite). Only data movement is recorded there (copies,
  index arithmetic, sums of small integers), nothing a different CPU could round differently, so the comparison is
  exact on any machine. Record again only when a layout is meant to change: ``PYTHONPATH=. python
  tests/test_token_layouts.py OUT`` (re-recorded once for the official MixToken box, which changed only ``mix0.7.*``:
  on the 3×5 grid its 1-row cut is empty where timm's box covered one row).
* Plain reference computations (loops over tokens, explicit indexing) for what does float arithmetic: the dense
  targets' crop + softmax, the LV-ViT patch embedding's token order, Token Labeling's flattening of the tokens.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from flat_import import load_flat
from torch import Tensor
from torchvision.ops import roi_align

from maxsup.models import vit

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(__file__).with_name("data") / "token_layouts.pt"
smmix = load_flat(ROOT / "Deit", "smmix", ())
token_labeling = load_flat(ROOT / "Deit", "token_labeling", ())

# (batch, channels, side, patch rows, patch cols, window side): odd and even batches, non-square patches, r = S
PASTE_CASES = [(5, 2, 4, 2, 3, 2), (4, 1, 3, 2, 2, 1), (2, 3, 3, 1, 2, 3)]
GRID = (3, 5)  # a non-square token grid, so that rows and columns cannot be confused
MIX_LAMS = [0.3, 0.7, 0.95, 1.0]  # 1.0: empty box


def _inputs() -> dict[str, Tensor]:
    """Seeded inputs; integer-valued attention scores so that window sums are exact."""
    g = torch.Generator().manual_seed(0)
    out: dict[str, Tensor] = {"score": torch.randint(0, 50, (5, 25), generator=g).float()}
    for i, (b, c, s, ph, pw, r) in enumerate(PASTE_CASES):
        out[f"paste{i}.x"] = torch.randn(b, c, s * ph, s * pw, generator=g)
        out[f"paste{i}.target"] = torch.randint(0, s - r + 1, (b, 2), generator=g)
        out[f"paste{i}.source"] = torch.randint(0, s - r + 1, (b, 2), generator=g)
    out["tokens"] = torch.randn(4, GRID[0] * GRID[1], 6, generator=g)
    out["aux"] = torch.randn(4, GRID[0] * GRID[1], 7, generator=g)
    out["labels"] = torch.randint(0, 7, (5,), generator=g)
    return out


def _outputs(x: dict[str, Tensor]) -> dict[str, Tensor]:
    """What the code under test makes of :func:`_inputs`, as a flat dict of tensors (bboxes as (4,) long)."""
    out: dict[str, Tensor] = {}
    for r in range(1, 6):
        out[f"windows{r}.min"], out[f"windows{r}.max"] = smmix.max_min_windows(x["score"], 5, r)
    for i, (_b, _c, s, _ph, _pw, r) in enumerate(PASTE_CASES):
        out[f"paste{i}.mixed"], out[f"paste{i}.mask"] = smmix.paste_windows(
            x[f"paste{i}.x"], s, r, x[f"paste{i}.target"], x[f"paste{i}.source"])
    for lam in MIX_LAMS:
        np.random.seed(1)  # the MixToken box draws from numpy
        mixed, bbox = vit.mix_tokens(x["tokens"], GRID, lam)
        out[f"mix{lam}.tokens"] = mixed
        out[f"mix{lam}.bbox"] = torch.tensor(bbox if bbox is not None else (-1, -1, -1, -1))
        if bbox is not None:
            out[f"mix{lam}.unmixed_aux"] = vit._swap_box(x["aux"], GRID, bbox)
    out["grid_logits"] = vit._grid_logits(x["aux"], GRID)
    for s in (0.0, 0.1):
        step = token_labeling.TokenLabelStep(num_classes=7, size=3, smoothing=s)
        out[f"onehot{s}.cls"], out[f"onehot{s}.tokens"] = step.targets(x["labels"], torch.device("cpu"))
    return out


def test_layouts_equal_the_recorded_ones():
    recorded = torch.load(REFERENCE, weights_only=True)
    now = _outputs(recorded["inputs"])
    assert now.keys() == recorded["outputs"].keys()
    for name, expected in recorded["outputs"].items():
        assert now[name].dtype == expected.dtype and torch.equal(now[name], expected), name


# --------------------------------------------------------------------------------------------------------------------
# plain references
# --------------------------------------------------------------------------------------------------------------------
def test_mix_tokens_swaps_the_box_with_the_flipped_batch_and_unmix_undoes_it():
    tokens = torch.randn(5, GRID[0] * GRID[1], 3)
    for seed in range(10):
        np.random.seed(seed)
        mixed, bbox = vit.mix_tokens(tokens, GRID, 0.5)
        assert bbox is not None
        r0, r1, c0, c1 = bbox
        expect = tokens.clone()
        for i in range(5):
            for row in range(r0, r1):
                for col in range(c0, c1):
                    expect[i, row * GRID[1] + col] = tokens[4 - i, row * GRID[1] + col]
        assert torch.equal(mixed, expect)
        assert torch.equal(vit._swap_box(mixed, GRID, bbox), tokens)


def test_grid_logits_put_token_row_major_on_the_grid():
    per_token = torch.randn(2, GRID[0] * GRID[1], 4)
    grid = vit._grid_logits(per_token, GRID)
    assert grid.shape == (2, 4, *GRID)
    for row in range(GRID[0]):
        for col in range(GRID[1]):
            assert torch.equal(grid[:, :, row, col], per_token[:, row * GRID[1] + col])


def test_lvvit_patch_embedding_orders_tokens_row_major():
    emb = vit.ConvPatchEmbed(img_size=(24, 40), patch_size=8, in_chans=3, embed_dim=5, width=4).eval()
    seen: list[Tensor] = []
    emb.proj.register_forward_hook(lambda _m, _i, out: seen.append(out))
    tokens = emb(torch.randn(2, 3, 24, 40))
    fmap = seen[0]  # (B, D, 3, 5)
    assert tokens.shape == (2, 15, 5) and fmap.shape[-2:] == (3, 5)
    for row in range(3):
        for col in range(5):
            assert torch.equal(tokens[:, row * 5 + col], fmap[:, :, row, col])


def test_dense_targets_equal_a_plain_crop_flip_softmax():
    b, k, topk, h, w, size, s = 3, 6, 2, 5, 4, 3, 0.1
    g = torch.Generator().manual_seed(3)
    indices = torch.stack([torch.randperm(k, generator=g)[:topk] for _ in range(b * h * w)])
    indices = indices.view(b, h, w, topk).permute(0, 3, 1, 2)
    values = torch.randn(b, topk, h, w, generator=g) * 3
    maps = torch.stack([values, indices.float()], 1).half()  # (B, 2, k, H, W) as make_token_labels writes them
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.1, 0.2, 0.7, 0.9], [-0.1, 0.3, 0.8, 1.1]])
    flipped = torch.tensor([False, True, True])
    cls, tokens = token_labeling.dense_targets(maps, boxes, flipped, k, size, smoothing=s)

    scores = torch.zeros(b, k, h, w)
    for i in range(b):
        for j in range(topk):
            for y in range(h):
                for x in range(w):
                    scores[i, int(maps[i, 1, j, y, x]), y, x] = float(maps[i, 0, j, y, x])
    rois = [box[None] * torch.tensor([w, h, w, h], dtype=torch.float32) for box in boxes]
    crop = roi_align(scores, rois, output_size=(size, size), aligned=True)  # (B, K, S, S)
    crop = torch.stack([c.flip(-1) if f else c for c, f in zip(crop, flipped, strict=True)])
    on = 1 - s + s / k  # the official smoothing rule (the default)
    expect_tokens = F.softmax(crop.permute(0, 2, 3, 1).reshape(b, size * size, k), dim=-1) * on + s / k
    expect_cls = F.softmax(roi_align(scores, rois, output_size=(1, 1), aligned=True).view(b, k), -1) * on + s / k
    assert torch.equal(tokens, expect_tokens) and torch.equal(cls, expect_cls)


def test_token_label_loss_sees_every_token_of_every_image_in_order():
    b, n, k = 3, 4, 5
    x_cls, x_aux = torch.randn(b, k), torch.randn(b, n, k)
    labels = torch.tensor([0, 3, 4])
    calls: list[tuple[Tensor, Tensor]] = []

    def criterion(logits: Tensor, target: Tensor) -> Tensor:
        calls.append((logits, target))
        return logits.sum()

    step = token_labeling.TokenLabelStep(num_classes=k, size=2, maxsup_on_tokens=True)
    step(lambda _x: (x_cls, x_aux, None), torch.zeros(b, 3, 8, 8), labels, criterion)
    (cls_logits, cls_t), (tok_logits, tok_t) = calls
    assert torch.equal(cls_logits, x_cls) and torch.equal(cls_t, F.one_hot(labels, k).float())
    assert torch.equal(tok_logits, torch.cat([x_aux[i] for i in range(b)]))
    assert torch.equal(tok_t, torch.cat([cls_t[i].expand(n, k) for i in range(b)]))


if __name__ == "__main__":  # record the reference file (see the module docstring)
    inputs = _inputs()
    torch.save({"inputs": inputs, "outputs": _outputs(inputs)}, sys.argv[1])
