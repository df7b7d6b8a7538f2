"""SMMix, Token Labeling (MixToken, dense label maps), LV-ViT and data/make_token_labels.py.

Unit tests check the mixing geometry and the label maps against brute-force references; the training tests reuse
``tests/test_deit.py``'s tiny ViT and real Fashion-MNIST JPEG folder, so each mode trains, resumes after kill -9 and
runs under 2-process gloo DDP in seconds.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flat_import import load_file
from test_deit import (
    DEIT,
    ENV,
    TINY,
    _cli_error,
    _torchrun,
    deit_main,
    read_log,
    train,
)

from maxsup.models import create_model, model_from_checkpoint
from maxsup.timing import TIMING_KEYS

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")  # image_root: conftest's Fashion-MNIST folder, as in test_deit


# registered: dataclasses look their module up by name
smmix = load_file(DEIT / "smmix.py", "deit_smmix", register=True)
token_labeling = load_file(DEIT / "token_labeling.py", "deit_token_labeling", register=True)
make_token_labels = load_file(ROOT / "data" / "make_token_labels.py", "make_token_labels", register=True)

# a 4×4 token grid (28 px, patch 7); MaxSup everywhere
MAXSUP = ["--loss", "maxsup", "--mixup", "0", "--cutmix", "0"]
MODES = {
    "smmix": ["--smmix", "--mixup", "0.8"],
    "mixtoken": ["--mixtoken"],
    "token-label-data": ["--mixtoken", "--token-label-data", "{labels}"],
}


def _tiny_vit(mode: str, k: int = 5):
    return create_model("vit_tiny_patch16_224", k, token_head=mode, img_size=28, patch_size=7, embed_dim=32, depth=1,
                        num_heads=2)


# --------------------------------------------------------------------------------------------------------------------
# SMMix geometry
# --------------------------------------------------------------------------------------------------------------------
def test_windows_are_the_min_and_max_attention_and_label_weight_is_the_area():
    g = torch.Generator().manual_seed(3)
    side = 7
    for r in range(1, side + 1):
        score = torch.rand(5, side * side, generator=g)
        lo, hi = smmix.max_min_windows(score, side, r)
        grid = score.view(5, side, side)
        sums = torch.stack([torch.stack([grid[:, a:a + r, b:b + r].sum((1, 2)) for b in range(side - r + 1)], 1)
                            for a in range(side - r + 1)], 1)  # brute force (B, rows, cols)
        flat = sums.flatten(1)
        for i in range(5):
            assert sums[i, lo[i, 0], lo[i, 1]] == pytest.approx(flat[i].min().item(), abs=1e-5)
            assert sums[i, hi[i, 0], hi[i, 1]] == pytest.approx(flat[i].max().item(), abs=1e-5)

    model = _tiny_vit("smmix").eval()
    mixer = smmix.SMMix(side=4, num_classes=5, switch_prob=1.0, label_smoothing=0.0)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    for seed in range(6):
        torch.manual_seed(seed)
        x, t, b = mixer(torch.randn(6, 3, 28, 28), y, model)
        r2 = int(b.source_mask[0].sum())
        assert r2 in (1, 4, 9)  # sides int(4·0.25)=1 .. int(4·0.75)=3
        assert (b.source_mask.sum(1) == r2).all() and torch.equal(b.target_mask, ~b.source_mask)
        assert b.lam == pytest.approx(1 - r2 / 16)
        # the image's own label weighs the area it keeps, the pasted label the area pasted
        own = t[torch.arange(6), y]
        pasted = t[torch.arange(6), y.flip(0)]
        same = y == y.flip(0)
        assert torch.allclose(own[~same], torch.full_like(own[~same], b.lam))
        assert torch.allclose(pasted[~same], torch.full_like(pasted[~same], 1 - b.lam))
        assert torch.allclose(t.sum(1), torch.ones(6))


def test_paste_moves_exactly_the_chosen_windows_odd_batch():
    side, p, b = 4, 7, 5  # odd batch: image 2 is its own partner
    x = torch.randn(b, 3, side * p, side * p)
    target = torch.tensor([[0, 0], [1, 2], [2, 1], [0, 1], [1, 1]])
    source = torch.tensor([[2, 2], [0, 0], [1, 0], [2, 1], [0, 2]])
    r = 2
    mixed, mask = smmix.paste_windows(x, side, r, target, source)
    for i in range(b):
        j = b - 1 - i
        (tr, tc), (sr, sc) = target[i].tolist(), source[j].tolist()
        expect = x[i].clone()
        expect[:, tr * p:(tr + r) * p, tc * p:(tc + r) * p] = x[j, :, sr * p:(sr + r) * p, sc * p:(sc + r) * p]
        assert torch.equal(mixed[i], expect)
        m = torch.zeros(side, side, dtype=torch.bool)
        m[tr:tr + r, tc:tc + r] = True
        assert torch.equal(mask[i], m.flatten())


def test_smmix_is_deterministic_under_a_seed():
    model = _tiny_vit("smmix").eval()
    mixer = smmix.SMMix(side=4, num_classes=5)
    x, y = torch.randn(6, 3, 28, 28), torch.randint(0, 5, (6,))

    def run(seed):
        torch.manual_seed(seed)
        return [mixer(x, y, model) for _ in range(12)]

    a, b, c = run(0), run(0), run(1)
    for (xa, ta, ba), (xb, tb, bb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ta, tb) and (ba is None) == (bb is None)
        if ba is not None:
            assert torch.equal(ba.source_mask, bb.source_mask) and torch.equal(ba.mixed_logits, bb.mixed_logits)
    assert any(not torch.equal(xa, xc) for (xa, _, _), (xc, _, _) in zip(a, c, strict=True))
    assert {bt is None for _, _, bt in a} == {True, False}  # both halves (SMMix and Mixup) occurred


def test_attention_score_is_the_patch_to_patch_attention_received():
    model = _tiny_vit("smmix").eval()
    x = torch.randn(3, 3, 28, 28)
    blk = model.backbone.blocks[-1]
    seen = {}

    def hook(_m, inp, _out):  # recompute the last block's softmax attention by hand from its input
        a = blk.attn
        q, k, _ = a.qkv(blk.norm1(inp[0])).reshape(3, 17, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
        seen["attn"] = ((q * a.scale) @ k.transpose(-2, -1)).softmax(-1)

    h = blk.register_forward_hook(hook)
    logits, score = model.patch_attention(x)
    h.remove()
    assert torch.allclose(score, seen["attn"][:, :, 1:, 1:].mean((1, 2)), atol=1e-6)
    assert torch.allclose(logits, model(x), atol=1e-5)


# --------------------------------------------------------------------------------------------------------------------
# Token Labeling: MixToken, crop/flip of the label maps
# --------------------------------------------------------------------------------------------------------------------
def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)  # timm's CutMix box (MixToken) draws from numpy


def test_mixtoken_aux_is_unmixed_and_lam_matches_the_box():
    model = _tiny_vit("mixtoken").train()
    x, y = torch.randn(4, 3, 28, 28), torch.tensor([0, 1, 2, 3])
    step = token_labeling.TokenLabelStep(5, 4)
    for seed in range(20):
        _seed(seed)
        cls, aux, bbox = model(x)
        if bbox is None:
            continue
        _seed(seed)
        tokens, bbox2 = model._tokens(x, mix=True)
        raw = model.aux_head(tokens[:, 1:]).view(4, 4, 4, 5)  # per-token logits of the mixed batch
        r0, r1, c0, c1 = bbox
        assert bbox2 == bbox and cls.shape == (4, 5)
        inside = torch.zeros(4, 4, dtype=torch.bool)
        inside[r0:r1, c0:c1] = True
        aux = aux.view(4, 4, 4, 5)
        # un-mixed: inside the box, image i's patches were carried by row B−1−i of the mixed batch
        assert torch.equal(aux[:, inside], raw.flip(0)[:, inside]) and torch.equal(aux[:, ~inside], raw[:, ~inside])
        _seed(seed)
        _, _, cls_t = step(model, x, y, _ce)
        lam = 1 - (r1 - r0) * (c1 - c0) / 16
        assert torch.allclose(cls_t[torch.arange(4), y], torch.full((4,), lam))
        assert torch.allclose(cls_t[torch.arange(4), y.flip(0)], torch.full((4,), 1 - lam))
        return
    pytest.fail("no MixToken box in 20 draws")


def _ce(logits, target):
    return torch.sum(-target * torch.log_softmax(logits, -1), -1).mean()


QUADRANT_RGB = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def _quadrant_image(w: int, h: int):
    from PIL import Image

    img = Image.new("RGB", (w, h))
    px = img.load()
    for yy in range(h):
        for xx in range(w):
            px[xx, yy] = QUADRANT_RGB[(yy >= h // 2) * 2 + (xx >= w // 2)]
    return img


def _quadrant_map(k_classes: int, hm: int, wm: int) -> torch.Tensor:
    """(2, 1, hm, wm): class = quadrant id (0 TL, 1 TR, 2 BL, 3 BR) with a high logit."""
    yy, xx = torch.meshgrid(torch.arange(hm), torch.arange(wm), indexing="ij")
    cls = (yy >= hm // 2).long() * 2 + (xx >= wm // 2).long()
    return torch.stack([torch.full((1, hm, wm), 30.0), cls[None].float()]).half()


@pytest.mark.parametrize("input_size", [64, 28])  # RandomResizedCrop, and DeiT's padded RandomCrop for ≤ 32 px
def test_label_map_crop_and_flip_follow_the_image(input_size):
    args = deit_main.get_args_parser().parse_args(["--input-size", str(input_size), "--aa", "none", "--reprob", "0",
                                                   "--color-jitter", "0", "--data-set", "FOLDER"])
    from test_deit import DEIT_MODULES

    tf = token_labeling.CropFlipWithBox(DEIT_MODULES["datasets"].build_transform(True, args))
    img = _quadrant_image(96, 80)  # non-square, so a transposed box would show
    m = _quadrant_map(4, 16, 16)
    side = {64: 8, 28: 7}[input_size]  # tokens tile the crop: patch 8 and patch 4
    patch = input_size // side
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    checked, flips = 0, 0
    for seed in range(20):
        _seed(seed)
        random.seed(seed)
        x, box, flipped = tf(img)
        flips += flipped
        rgb = (x * std + mean) * 255
        _, tokens = token_labeling.dense_targets(m[None], box[None], torch.tensor([flipped]), 4, side)
        pred = tokens[0].argmax(-1).view(side, side)
        for a in range(side):
            for b in range(side):
                cell = rgb[:, a * patch:(a + 1) * patch, b * patch:(b + 1) * patch].reshape(3, -1)
                if (cell.std(1) > 1).any() or cell.mean() < 5:  # quadrant border or padding: no single label
                    continue
                colour = min(range(4), key=lambda q: sum((cell[c].mean() - QUADRANT_RGB[q][c]) ** 2 for c in range(3)))
                assert pred[a, b].item() == colour, (seed, a, b)
                checked += 1
    assert checked > 200 and 0 < flips < 20


# --------------------------------------------------------------------------------------------------------------------
# LV-ViT and dense scores
# --------------------------------------------------------------------------------------------------------------------
def test_lvvit_trains_with_mixtoken_in_the_trainer(image_root, tmp_path, capsys):
    lv = ["--model", "lvvit_t", "--model-kwargs",
          '{"patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2, "stem_width": 8}']
    tiny = TINY[TINY.index("--batch-size"):]
    base = ["--data-set", "FOLDER", "--data-path", str(image_root), "--limit-per-class", "16", "--input-size", "28",
            *lv, *tiny, *MAXSUP, "--epochs", "1"]
    msg = _cli_error(base, capsys)
    assert "lvvit_t" in msg and "--token-label" in msg
    log = train([*base, "--mixtoken", "--output_dir", str(tmp_path)])
    assert log["train_samples"] == 48 and log["test_n"] == 36
    ckpt = torch.load(tmp_path / "checkpoint.pth", weights_only=False)
    assert ckpt["arch"]["name"] == "lvvit_t" and ckpt["arch"]["kwargs"]["img_size"] == 28
    assert "aux_head.weight" in ckpt["model"] and "patch_embed.conv1.weight" in ckpt["model"]


def test_lvvit_parameter_counts_and_protocol():
    counts = {n: sum(p.numel() for p in create_model(n, 1000).parameters()) for n in ("lvvit_t", "lvvit_s")}
    assert round(counts["lvvit_s"] / 1e6, 2) == 26.15  # official README: 26.15M
    assert round(counts["lvvit_t"] / 1e6, 2) == 8.53  # 8.53M
    m = create_model("lvvit_t", 7, img_size=32, depth=1)
    x = torch.randn(2, 3, 32, 32)
    m.train()
    cls, aux, _ = m(x)
    assert cls.shape == (2, 7) and aux.shape == (2, 4, 7)
    m.eval()
    expected = m.forward_head(m._tokens(x, False)[0])
    expected = expected + 0.5 * m.aux_head(m._tokens(x, False)[0][:, 1:]).max(1).values
    assert torch.allclose(m(x), expected, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------------
# data/make_token_labels.py + training in every mode
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def teacher(image_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    train(["--data-set", "FOLDER", "--data-path", str(image_root), "--limit-per-class", "16", *TINY, "--epochs", "1",
           "--output_dir", str(out)])
    return out / "checkpoint.pth"


@pytest.fixture(scope="module")
def labels(image_root, teacher, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("labels") / "maps"
    summary = make_token_labels.main(["--checkpoint", str(teacher), "--data-path", str(image_root / "train"),
                                      "--out", str(out), "--topk", "2", "--num-workers", "0"])
    assert summary["written"] == 96 and summary["map_shape"] == (2, 2, 4, 4)
    return out


def test_make_token_labels_layout_values_and_resume(labels, teacher, image_root):
    first = sorted((labels / "pullover").glob("*.pt"))[0]
    m = torch.load(first, weights_only=True)
    assert m.dtype == torch.float16 and m.shape == (2, 2, 4, 4)
    meta = json.loads((labels / "meta.json").read_text())
    assert meta["num_classes"] == 3 and meta["topk"] == 2 and meta["img_size"] == 28
    # the values are the teacher's per-token logits (top-2, descending) at the map's positions
    ckpt = torch.load(teacher, weights_only=False)
    model = model_from_checkpoint(ckpt).eval()
    from PIL import Image

    from maxsup.data.transforms import eval_transform

    x = eval_transform(ckpt["eval_transform"])(Image.open(image_root / "train" / "pullover" / f"{first.stem}.jpg"))
    with torch.no_grad():
        tokens = model.forward_features(x[None])[:, 1:]
        dense = model.get_classifier()(tokens)[0].T.reshape(3, 4, 4)
    top = dense.topk(2, dim=0)
    assert torch.allclose(m[0].float(), top.values, atol=2e-2) and torch.equal(m[1].long(), top.indices)
    # resumable: a deleted map is the only one written again
    first.unlink()
    again = make_token_labels.main(["--checkpoint", str(teacher), "--data-path", str(image_root / "train"),
                                    "--out", str(labels), "--topk", "2", "--num-workers", "0"])
    assert again["written"] == 1 and first.exists()


def _mode_args(mode: str, labels: Path) -> list[str]:
    return [a.replace("{labels}", str(labels)) for a in MODES[mode]]


@pytest.mark.parametrize("mode", list(MODES))
def test_each_mode_trains_under_maxsup_and_evaluates(mode, image_root, labels, tmp_path):
    out = tmp_path / mode
    log = train(["--data-set", "FOLDER", "--data-path", str(image_root), *TINY, *MAXSUP, *_mode_args(mode, labels),
                 "--batch-size", "15", "--epochs", "2", "--output_dir", str(out)])
    hist = read_log(out)
    assert [e["epoch"] for e in hist] == [0, 1] and all(e["train_samples"] == 90 for e in hist)  # odd batch 15
    assert [e["alpha"] for e in hist] == pytest.approx([0.1, 0.2]) and all(e["maxsup_penalty"] > 0 for e in hist)
    ckpt = torch.load(out / "checkpoint.pth", weights_only=False)
    head = {"smmix": "smmix", "mixtoken": "mixtoken", "token-label-data": "mixtoken"}[mode]
    assert ckpt["arch"]["kwargs"]["token_head"] == head
    # the EMA moved (the official SMMix engine never updates it)
    assert any(not torch.equal(ckpt["model_ema"][k], ckpt["model"][k]) for k in ckpt["model"]
               if ckpt["model"][k].is_floating_point())
    rebuilt = model_from_checkpoint(ckpt).eval()  # analysis/ and the hub rebuild it from the arch entry
    stats = train(["--data-set", "FOLDER", "--data-path", str(image_root), *TINY, *MAXSUP, *_mode_args(mode, labels),
                   "--eval", "--resume", str(out / "checkpoint.pth")])
    assert stats["acc1"] == pytest.approx(log["test_acc1"]) and rebuilt(torch.randn(2, 3, 28, 28)).shape == (2, 3)


def test_bad_inputs(image_root, labels, tmp_path, capsys):
    base = ["--data-set", "FOLDER", "--data-path", str(image_root), *TINY, "--epochs", "1"]
    msg = _cli_error([*base, "--smmix", "--mixtoken", "--mixup", "0", "--cutmix", "0"], capsys)
    assert "--smmix" in msg and "--token-label" in msg
    cnn = [a if a != "vit_tiny_patch16_224" else "cifar_resnet10" for a in base]
    cnn = cnn[:cnn.index("--model-kwargs")] + cnn[cnn.index("--model-kwargs") + 2:]
    msg = _cli_error([*cnn, "--smmix"], capsys)
    assert "cifar_resnet10" in msg and "attention" in msg
    msg = _cli_error([*base, "--mixtoken", "--mixup", "0.8"], capsys)
    assert "--mixup 0 --cutmix 0" in msg

    partial_maps = tmp_path / "partial"
    shutil.copytree(labels, partial_maps)
    victim = sorted((partial_maps / "trouser").glob("*.pt"))[4]
    victim.unlink()
    msg = _cli_error([*base, *MAXSUP, "--token-label-data", str(partial_maps)], capsys)
    assert f"{victim.stem}.jpg" in msg and str(victim) in msg

    other = tmp_path / "other"
    shutil.copytree(labels, other)
    meta = json.loads((other / "meta.json").read_text())
    (other / "meta.json").write_text(json.dumps({**meta, "num_classes": 1000}))
    msg = _cli_error([*base, *MAXSUP, "--token-label-data", str(other)], capsys)
    assert "1000 classes" in msg and "3" in msg
    (other / "meta.json").unlink()
    first = sorted((other / "pullover").glob("*.pt"))[0]
    m = torch.load(first, weights_only=True)
    m[1, 0, 0, 0] = 7
    torch.save(m, first)
    msg = _cli_error([*base, *MAXSUP, "--token-label-data", str(other)], capsys)
    assert str(first) in msg and "class 7" in msg


# --------------------------------------------------------------------------------------------------------------------
# kill -9 + resume and 2-process DDP, per mode (slow)
# --------------------------------------------------------------------------------------------------------------------
#: token-label-data runs MixToken too, so these two cover every code path of the three modes (the MixToken-only
#: fallback differs from token-label-data only in its deterministic targets); each costs ~15–30 s of process start-up.
SUBPROCESS_MODES = ["smmix", "token-label-data"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", SUBPROCESS_MODES)
def test_kill9_then_resume_is_bit_exact(mode, image_root, labels, tmp_path):
    recipe = ["--data-set", "FOLDER", "--data-path", str(image_root), "--limit-per-class", "16", *TINY, *MAXSUP,
              *_mode_args(mode, labels), "--epochs", "2", "--drop-path", "0.1"]
    ref = tmp_path / "ref"
    train([*recipe, "--output_dir", str(ref)])
    run = tmp_path / "run"
    base = [sys.executable, str(DEIT / "main.py"), *recipe]
    proc = subprocess.Popen([*base, "--output_dir", str(run), "--print-freq", "1"], stdout=subprocess.PIPE, text=True,
                            env=ENV)
    for line in proc.stdout:
        if line.startswith("Epoch: [1] [1/"):  # mid-epoch 1 (of 3 steps), after epoch 0's checkpoint
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    subprocess.run([*base, "--output_dir", str(run), "--resume", str(run / "checkpoint.pth")], check=True, env=ENV,
                   timeout=300, capture_output=True)
    untimed = [[{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
                for line in (d / "log.txt").read_text().splitlines()] for d in (run, ref)]
    assert untimed[0] == untimed[1]
    a = torch.load(ref / "checkpoint.pth", weights_only=True)
    b = torch.load(run / "checkpoint.pth", weights_only=True)
    for key in ("model", "model_ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])


@pytest.mark.slow
@pytest.mark.parametrize("mode", SUBPROCESS_MODES)
def test_torchrun_two_processes_gloo(mode, image_root, labels, tmp_path):
    out = tmp_path / "ddp"
    proc = _torchrun(["--data-set", "FOLDER", "--data-path", str(image_root), "--limit-per-class", "24", *TINY,
                      *MAXSUP, *_mode_args(mode, labels), "--epochs", "1", "--device", "cpu", "--output_dir",
                      str(out)], tmp_path)
    assert "[rank 0] epoch 0: trained on 32 images" in proc.stdout
    assert "[rank 1] epoch 0: trained on 32 images" in proc.stdout
    log = read_log(out)[0]
    assert log["train_samples"] == 64 and log["maxsup_penalty"] > 0


def test_make_token_labels_with_a_cnn_teacher(image_root, tmp_path):
    """A CIFAR ResNet checkpoint (the demo's Token Labeling teacher) keeps its class count only in ``fc``: the maps
    are the classifier at every position of the last feature map, pooled to the 4×4 grid, and their mean over
    positions ranks the classes like the model's own logits (global average pooling is linear)."""
    from PIL import Image

    from maxsup.data.transforms import eval_transform, transform_spec
    from maxsup.models import arch_spec

    torch.manual_seed(0)
    model = create_model("cifar_resnet10", 3, width=8).eval()
    spec = transform_spec(28, crop_pct=1.0, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    ckpt = tmp_path / "resnet.pth"
    torch.save({"model": model.state_dict(), "arch": arch_spec("cifar_resnet10", 3, width=8), "eval_transform": spec},
               ckpt)
    out = tmp_path / "maps"
    summary = make_token_labels.main(["--checkpoint", str(ckpt), "--data-path", str(image_root / "train"), "--out",
                                      str(out), "--topk", "3", "--num-workers", "0"])
    assert summary["num_classes"] == 3 and summary["written"] == 96
    first = sorted((out / "pullover").glob("*.pt"))[0]
    m = torch.load(first, weights_only=True).float()
    dense = torch.zeros(3, *m.shape[-2:]).scatter_(0, m[1].long(), m[0])  # top-3 of 3 classes = every score
    x = eval_transform(spec)(Image.open(image_root / "train" / "pullover" / f"{first.stem}.jpg"))
    with torch.no_grad():
        logits = model(x[None])[0]
    torch.testing.assert_close(dense.mean((1, 2)), logits, atol=3e-2, rtol=1e-2)
