"""Our LV-ViT-T against frozen outputs of the official model.

``tests/data/lvvit_t_official_64px.pt`` was made once, outside this repository, from the official code
(zihangJiang/TokenLabeling @9dbfd59, ``tlt/models/lvvit.py`` + ``layers.py`` with ``np.int`` -> ``int`` and the
``@register_model`` lines removed, on timm 1.0.31 / torch 2.14.1): ``torch.manual_seed(0)``, our
``create_model("lvvit_t", 10, img_size=64)``, its ``state_dict`` loaded strictly into the official
``lvvit_t(img_size=64, num_classes=10)``, both in eval mode, on ``torch.randn(2, 3, 64, 64)`` from a generator seeded
with 1. The file holds the official eval score (``cls + 0.5 * max_tokens aux``), the input's sum and the seeded
weights' sum (so that a changed initialisation is told apart from a changed forward). Largest difference then:
4.8e-7 with LayerNorm eps 1e-5 as the official model; 1.3e-3 with timm's default eps 1e-6.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from maxsup.models import create_model

REF = Path(__file__).parent / "data" / "lvvit_t_official_64px.pt"


def test_lvvit_t_matches_the_official_model_on_the_same_weights():
    ref = torch.load(REF)
    torch.manual_seed(0)
    model = create_model("lvvit_t", 10, img_size=64).eval()
    weight_sum = sum(p.double().sum() for p in model.state_dict().values() if p.dtype.is_floating_point).item()
    if abs(weight_sum - ref["weight_sum"]) > 1e-6 * abs(ref["weight_sum"]):
        pytest.fail(f"the seeded initialisation changed (weight sum {weight_sum} vs {ref['weight_sum']}): regenerate "
                    f"the reference as this module's docstring says")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    assert x.double().sum().item() == pytest.approx(ref["x_sum"], rel=1e-9)
    with torch.no_grad():
        score = model(x)
    torch.testing.assert_close(score, ref["score"], rtol=0, atol=5e-6)
    assert all(m.eps == 1e-5 for m in model.modules() if isinstance(m, torch.nn.LayerNorm))
