"""Which corruption library works with our pinned numpy/scipy/scikit-image? Tries the 15 ImageNet-C corruptions at
severities 1 and 5 on a 28 px and a 224 px image with ``imagecorruptions`` and ``corrupt-tta`` and prints a table.

    python bench/corruption_libraries.py

A corruption passes when it returns an image of the input's shape, with finite values in [0, 255], that differs
from the input, and the same seed gives the same image twice.
"""

from __future__ import annotations

import importlib

import numpy as np

CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression")


def trial(module: str, name: str, size: int, severity: int) -> str:
    try:
        lib = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - the point is to report any failure
        return f"import: {type(exc).__name__}: {exc}"[:80]
    img = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    try:
        outs = []
        for _ in range(2):
            np.random.seed(1)
            outs.append(np.asarray(lib.corrupt(img, severity=severity, corruption_name=name), dtype=np.float64))
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"[:80]
    out = outs[0]
    if out.shape != img.shape:
        return f"shape {out.shape}"
    if not np.isfinite(out).all() or out.min() < 0 or out.max() > 255:
        return "values outside [0, 255]"
    if np.abs(out - img).max() < 1:
        return "unchanged"
    if not np.array_equal(outs[0], outs[1]):
        return "not reproducible with np.random.seed"
    return "ok"


def main() -> None:
    for module in ("imagecorruptions", "corrupt_tta"):
        for size in (28, 224):
            results = {c: [trial(module, c, size, s) for s in (1, 5)] for c in CORRUPTIONS}
            ok = sum(r == ["ok", "ok"] for r in results.values())
            print(f"{module} at {size} px: {ok}/15 pass")
            for c, r in results.items():
                if r != ["ok", "ok"]:
                    print(f"  {c}: {r}")


if __name__ == "__main__":
    main()
