"""Our LV-ViT-T against frozen outputs of the official model.

``tests/data/lvvit_t_official_64px.pt`` was made once, outside this repository, from the official code
(zihangJiang/TokenLabeling @9dbfd59, ``tlt/models/lvvit.py`` + ``layers.py`` with ``np.int`` -> ``int`` and the
``@register_model`` lines removed, on timm 1.0.31 / torch 2.14.1): our ``create_model("lvvit_t", 10, img_size=64)``
with the weights of :func:`stable_weights`, its ``state_dict`` loaded strictly into the official
``lvvit_t(img_size=64, num_classes=10)``, both in eval mode, on the input of :func:`stable_input`. The weights and
the input come from numpy's legacy ``RandomState``, whose streams numpy keeps fixed, not from torch's initialisers,
which change between torch releases (under torch 2.4 the seeded weights differed); the test passes under torch
2.4.1, 2.6.0, 2.11.0 and 2.14.1. The file holds the official eval score (``cls + 0.5 * max_tokens aux``), the
input's sum and the weights' sum (so that a changed state_dict is told apart from a changed forward). Largest
difference then: 1.7e-6 with LayerNorm eps 1e-5 as the official model; 3.4e-3 with timm's default eps 1e-6.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from maxsup.models import create_model

REF = Path(__file__).parent / "data" / "lvvit_t_official_64px.pt"


def stable_weights(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every floating tensor of ``model``'s state_dict, in its order, drawn from ``RandomState(seed)``: matrices and
    convolutions N(0, 1/fan_in), norm scales 1 + N(0, 0.01), biases and position/class tokens N(0, 0.02²), BatchNorm
    running variances 1 + |N(0, 0.01)|: values of the size a trained network has, the same under every torch."""
    rng = np.random.RandomState(seed)
    state = model.state_dict()
    for name, t in state.items():
        if not t.dtype.is_floating_point:
            continue
        n = rng.standard_normal(tuple(t.shape))
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "running_var":
            v = 1 + 0.1 * np.abs(n)
        elif t.dim() == 1 and leaf == "weight":
            v = 1 + 0.1 * n
        elif t.dim() == 1 or "pos_embed" in name or "cls_token" in name:
            v = 0.02 * n
        else:
            v = n / np.sqrt(t[0].numel())
        state[name] = torch.from_numpy(v).to(t.dtype)
    model.load_state_dict(state, strict=True)
    return model


def stable_input() -> torch.Tensor:
    """(2, 3, 64, 64) float32 from ``RandomState(1)``."""
    return torch.from_numpy(np.random.RandomState(1).standard_normal((2, 3, 64, 64)).astype(np.float32))


def test_lvvit_t_matches_the_official_model_on_the_same_weights():
    ref = torch.load(REF)
    model = stable_weights(create_model("lvvit_t", 10, img_size=64)).eval()
    weight_sum = sum(p.double().sum() for p in model.state_dict().values() if p.dtype.is_floating_point).item()
    if abs(weight_sum - ref["weight_sum"]) > 1e-6 * abs(ref["weight_sum"]):
        pytest.fail(f"the model's state_dict changed (weight sum {weight_sum} vs {ref['weight_sum']}): regenerate "
                    f"the reference as this module's docstring says")
    x = stable_input()
    assert x.double().sum().item() == pytest.approx(ref["x_sum"], rel=1e-9)
    with torch.no_grad():
        score = model(x)
    torch.testing.assert_close(score, ref["score"], rtol=0, atol=5e-6)
    assert all(m.eps == 1e-5 for m in model.modules() if isinstance(m, torch.nn.LayerNorm))
