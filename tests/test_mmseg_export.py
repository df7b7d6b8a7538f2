"""`python -m maxsup.hub export-mmseg` (paper Table 9: UperNet + DeiT-S on ADE20K with MMSegmentation).

MMSegmentation itself is not installed (1.2.2 needs a compiled mmcv < 2.2 that has no wheels for our torch). The
expected layout below was written from MMSeg's ``mmseg/models/backbones/vit.py`` (``VisionTransformer``,
``TransformerEncoderLayer``) and the mmcv bricks it builds on, not from our mapping:

* ``patch_embed = PatchEmbed(...)`` holds ``projection = Conv2d(in_channels, embed_dims, patch, stride=patch,
  bias=patch_bias)``; ``patch_bias`` defaults to False and MMSeg's DeiT-S UperNet config does not change it;
* ``cls_token`` (1, 1, E) and ``pos_embed`` (1, num_patches + 1, E) are plain parameters;
* ``layers = ModuleList(TransformerEncoderLayer)``; each layer has ``ln1`` / ``ln2`` (``build_norm_layer`` with
  postfix 1/2), ``attn`` = mmcv ``MultiheadAttention`` whose ``attn`` is ``torch.nn.MultiheadAttention(E, heads,
  bias=qkv_bias)``, and ``ffn`` = mmcv ``FFN`` whose ``layers`` are
  ``Sequential(Sequential(Linear(E, 4E), GELU, Dropout), Linear(4E, E), Dropout)``;
* ``final_norm=True`` adds ``ln1`` (postfix 1) on the backbone itself.

The mirror network below rebuilds exactly that module tree from torch.nn, so ``load_state_dict(strict=True)`` checks
names and shapes, and its forward pass checks that the weights mean the same thing as in timm's DeiT.
"""

from __future__ import annotations

import argparse
import runpy

import pytest
import torch
from helpers import cli_error
from torch import nn

from maxsup import hub
from maxsup.models import arch_spec, create_model

E, DEPTH, HEADS, PATCH, TOKENS = 384, 12, 6, 16, 197


def expected_mmseg_keys(final_norm: bool = True, patch_bias: bool = True) -> dict[str, tuple[int, ...]]:
    """Every key of MMSeg's VisionTransformer(embed_dims=384, num_layers=12, num_heads=6, mlp_ratio=4,
    qkv_bias=True, img_size=224, final_norm=..., patch_bias=...) with its shape."""
    keys: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, E), "pos_embed": (1, TOKENS, E), "patch_embed.projection.weight": (E, 3, PATCH, PATCH),
    }
    if patch_bias:
        keys["patch_embed.projection.bias"] = (E,)
    for i in range(DEPTH):
        p = f"layers.{i}."
        keys |= {p + "ln1.weight": (E,), p + "ln1.bias": (E,),
                 p + "attn.attn.in_proj_weight": (3 * E, E), p + "attn.attn.in_proj_bias": (3 * E,),
                 p + "attn.attn.out_proj.weight": (E, E), p + "attn.attn.out_proj.bias": (E,),
                 p + "ln2.weight": (E,), p + "ln2.bias": (E,),
                 p + "ffn.layers.0.0.weight": (4 * E, E), p + "ffn.layers.0.0.bias": (4 * E,),
                 p + "ffn.layers.1.weight": (E, 4 * E), p + "ffn.layers.1.bias": (E,)}
    if final_norm:
        keys |= {"ln1.weight": (E,), "ln1.bias": (E,)}
    return keys


class _Attn(nn.Module):  # mmcv MultiheadAttention: a wrapper whose `attn` is torch's MultiheadAttention
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(E, HEADS, bias=True, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


class _FFN(nn.Module):  # mmcv FFN with num_fcs=2
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Sequential(nn.Linear(E, 4 * E), nn.GELU(), nn.Dropout(0.0)),
                                    nn.Linear(4 * E, E), nn.Dropout(0.0))

    def forward(self, x):
        return self.layers(x)


class _Layer(nn.Module):  # TransformerEncoderLayer: x + attn(ln1(x)), then x + ffn(ln2(x))
    def __init__(self) -> None:
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(E, eps=1e-6), _Attn()
        self.ln2, self.ffn = nn.LayerNorm(E, eps=1e-6), _FFN()

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.ffn(self.ln2(x))


class MirrorMMSegViT(nn.Module):
    """MMSeg's VisionTransformer module tree (final_norm=True, patch_bias=True) at 224 px, returning the normalised
    patch tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.projection = nn.Conv2d(3, E, PATCH, stride=PATCH)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, E))
        self.pos_embed = nn.Parameter(torch.zeros(1, TOKENS, E))
        self.layers = nn.ModuleList(_Layer() for _ in range(DEPTH))
        self.ln1 = nn.LayerNorm(E, eps=1e-6)

    def forward(self, x):
        x = self.patch_embed.projection(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        for layer in self.layers:
            x = layer(x)
        return self.ln1(x)[:, 1:]


@pytest.fixture(scope="module")
def deit():
    torch.manual_seed(0)
    model = create_model("deit_small_patch16_224", 10).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a swapped or dropped tensor shows in the output
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def test_export_has_mmseg_vit_keys_and_computes_what_deit_computes(deit, tmp_path, capsys):
    src = tmp_path / "ours.pth"  # this project's trainer format
    torch.save({"model": deit.state_dict(), "arch": arch_spec("deit_small_patch16_224", 10), "epoch": 3}, src)
    out = tmp_path / "mmseg" / "deit_s_maxsup_mmseg.pth"
    assert hub.main(["export-mmseg", str(src), str(out)]) == 0
    report = capsys.readouterr().out
    ckpt = torch.load(out, map_location="cpu", weights_only=True)  # MMSeg's loader reads 'state_dict' first
    sd = ckpt["state_dict"]
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected_mmseg_keys()
    assert len(sd) == 150 and not any(k.startswith("head") for k in sd)
    assert ckpt["meta"]["source"] == str(src)

    mirror = MirrorMMSegViT().eval()
    mirror.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        want = deit.forward_features(x)[:, 1:]  # timm applies its final norm in forward_features
        got = mirror(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)

    # the config beside it: MMSeg's DeiT-S UperNet recipe, pointing at the exported file
    cfg_path = out.with_name("deit_s_maxsup_mmseg_upernet_ade20k.py")
    assert str(cfg_path) in report
    cfg = runpy.run_path(str(cfg_path))  # an MMEngine config is plain Python
    assert cfg["model"]["pretrained"] == str(out.resolve())
    backbone = cfg["model"]["backbone"]
    assert (backbone["type"], backbone["embed_dims"], backbone["num_heads"], backbone["num_layers"]) == \
        ("VisionTransformer", E, HEADS, DEPTH)
    assert backbone["out_indices"] == (2, 5, 8, 11) and backbone["drop_path_rate"] == 0.1
    # As in MMSeg's config: no patch bias, no final norm. MMSeg then uses 147 of the 150 tensors.
    assert not backbone.get("patch_bias", False) and not backbone.get("final_norm", False)
    used = expected_mmseg_keys(final_norm=False, patch_bias=False)
    assert len(used) == 147 and set(sd) - set(used) == {"patch_embed.projection.bias", "ln1.weight", "ln1.bias"}
    assert cfg["model"]["neck"] is None and cfg["model"]["decode_head"]["type"] == "UPerHead"
    assert cfg["model"]["decode_head"]["in_channels"] == [E] * 4 and cfg["model"]["decode_head"]["num_classes"] == 150
    assert cfg["train_cfg"]["max_iters"] == 80000 and cfg["param_scheduler"][1]["end"] == 80000
    assert cfg["train_dataloader"]["batch_size"] == 2 and cfg["crop_size"] == (512, 512)
    assert cfg["optim_wrapper"]["optimizer"] == {"type": "AdamW", "lr": 6e-5, "betas": (0.9, 0.999),
                                                 "weight_decay": 0.01}


def test_export_of_the_authors_file_ignores_the_head_and_its_label_order(deit, tmp_path, capsys):
    sd = {k: v for k, v in deit.state_dict().items() if not k.startswith("head")}
    released = {**sd, "head.weight": torch.randn(1000, E), "head.bias": torch.randn(1000)}
    src = tmp_path / "checkpoint.pth"  # the authors' layout: {'model', 'args': Namespace(cache=True), ...}
    torch.save({"model": released, "epoch": 299, "args": argparse.Namespace(cache=True, model="our_patch16_224")}, src)
    out = tmp_path / "released_mmseg.pth"
    assert hub.main(["export-mmseg", str(src), str(out), "--config", "none"]) == 0
    assert "null" in capsys.readouterr().out and not list(tmp_path.glob("*.py"))
    mapped = torch.load(out, weights_only=True)["state_dict"]
    assert torch.equal(mapped["layers.3.attn.attn.in_proj_weight"], sd["blocks.3.attn.qkv.weight"])
    assert torch.equal(mapped["layers.11.ffn.layers.1.bias"], sd["blocks.11.mlp.fc2.bias"])
    assert torch.equal(mapped["ln1.weight"], sd["norm.weight"])


def test_export_refuses_what_is_not_a_deit_small(tmp_path, capsys):
    tiny = create_model("deit_tiny_patch16_224", 10)
    src = tmp_path / "tiny.pth"
    torch.save({"model": tiny.state_dict()}, src)
    err = _error(capsys, ["export-mmseg", str(src), str(tmp_path / "o.pth")])
    assert "not a DeiT-Small" in err and "wrong shapes: cls_token (1, 1, 192) vs (1, 1, 384)" in err
    resnet = tmp_path / "r18.pth"
    torch.save({"model": create_model("resnet18", 10).state_dict(), "arch": arch_spec("resnet18", 10)}, resnet)
    err = _error(capsys, ["export-mmseg", str(resnet), str(tmp_path / "o.pth")])
    assert "is a resnet18 checkpoint" in err
    assert not (tmp_path / "o.pth").exists()


def _error(capsys, argv: list[str]) -> str:
    """``python -m maxsup.hub ARGV`` in-process: exit 2 and a single ``error:`` line on stderr, returned."""
    return cli_error(capsys, hub.main, argv, code=2)
