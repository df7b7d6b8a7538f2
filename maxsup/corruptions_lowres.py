"""The 15 common corruptions at the scales of CIFAR-10-C (32 px) and Tiny-ImageNet-C (64 px).

ImageNet-C's severity constants were chosen for 224 px crops. Hendrycks & Dietterich made CIFAR-10-C and
Tiny-ImageNet-C with their own constants (``make_cifar_c.py`` and ``make_tinyimagenet_c.py`` in
``hendrycks/robustness``): at 28-32 px the ImageNet constants put fog, contrast or defocus blur near chance while the
noise levels barely register. ``corrupt-tta`` (our ImageNet-C path) hard-codes the ImageNet constants in every function,
so this module applies the same corruption procedures with the small-image constants, reusing corrupt-tta's helpers
(``disk``, ``plasma_fractal``, ``clipped_zoom``, ``cv2_motion_blur``, its frost textures).

Sizes other than the reference (e.g. 28 px Fashion-MNIST): the constants stay those of the scale, and what is
expressed in pixels of the reference image follows the actual image (the glass-blur shuffle window, the elastic
transform's ``IMSIZE``, the fog map crop, the frost crop, the pixelate target).

Checked against ``make_cifar_c.py`` / ``make_tinyimagenet_c.py`` (hendrycks/robustness @8190fe3, run with today's
scikit-image: ``multichannel=True`` -> ``channel_axis=-1``, ``np.float_`` -> ``float``) on seeded 32 px and 64 px
images, every severity, same NumPy seed: gaussian/shot/impulse noise, defocus/glass/zoom blur, fog, frost (the same
texture files), brightness, contrast, elastic, pixelate and JPEG agree to 0 (identical uint8 images). Motion blur and
snow need ImageMagick (Wand) there; here they use corrupt-tta's OpenCV line kernel with the scale's radius and angle,
which is not ImageMagick's kernel, so those two are not bit-identical to the published sets.
"""

from __future__ import annotations

from io import BytesIO

import numpy as np
from PIL import Image

__all__ = ["LOWRES_SCALES", "corrupt_lowres", "scale_for"]

#: scale name -> (reference size in px, description recorded in results)
LOWRES_SCALES = {"cifar": (32, "CIFAR-10-C constants (make_cifar_c.py, 32 px)"),
                 "tiny": (64, "Tiny-ImageNet-C constants (make_tinyimagenet_c.py, 64 px)")}


def scale_for(height: int, width: int) -> str:
    """``cifar`` up to 32 px, ``tiny`` up to 64 px, ``imagenet`` above (the larger side decides)."""
    side = max(height, width)
    return "cifar" if side <= 32 else "tiny" if side <= 64 else "imagenet"


def _zooms(top: float) -> np.ndarray:
    return np.arange(1, top, 0.01)


# Per corruption, the five severities' constants (CIFAR-10-C | Tiny-ImageNet-C).
_CONSTANTS = {
    "cifar": {
        "gaussian_noise": [0.04, 0.06, .08, .09, .10],
        "shot_noise": [500, 250, 100, 75, 50],
        "impulse_noise": [.01, .02, .03, .05, .07],
        "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
        "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
        "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
        "zoom_blur": [_zooms(1.06), _zooms(1.11), _zooms(1.16), _zooms(1.21), _zooms(1.26)],
        "snow": [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
                 (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
        "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
        "fog": [(.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
        "brightness": [.05, .1, .15, .2, .3],
        "contrast": [.75, .5, .4, .3, 0.15],
        "elastic_transform": [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
                              (0.1, 0.03, 0.03)],  # fractions of the image size
        "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
        "jpeg_compression": [80, 65, 58, 50, 40],
        "_frost_resize": 0.2,
    },
    "tiny": {
        "gaussian_noise": [0.04, 0.08, .12, .15, .18],
        "shot_noise": [250, 100, 50, 30, 15],
        "impulse_noise": [.01, .02, .05, .08, .14],
        "defocus_blur": [(0.5, 0.6), (1, 0.1), (1.5, 0.1), (2.5, 0.01), (3, 0.1)],
        "glass_blur": [(0.1, 1, 1), (0.5, 1, 1), (0.6, 1, 2), (0.7, 2, 1), (0.9, 2, 2)],
        "motion_blur": [(10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)],
        "zoom_blur": [_zooms(1.06), _zooms(1.11), _zooms(1.16), _zooms(1.21), _zooms(1.26)],
        "snow": [(0.1, 0.2, 1, 0.6, 8, 3, 0.8), (0.1, 0.2, 1, 0.5, 10, 4, 0.8), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.7),
                 (0.25, 0.3, 2.25, 0.6, 12, 6, 0.65), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.6)],
        "frost": [(1, 0.3), (0.9, 0.4), (0.8, 0.45), (0.75, 0.5), (0.7, 0.55)],
        "fog": [(.4, 3), (.7, 3), (1, 2.5), (1.5, 2), (2, 1.75)],
        "brightness": [.1, .2, .3, .4, .5],
        "contrast": [.4, .3, .2, .1, 0.05],
        "elastic_transform": [(0, 0, 0.08), (0.05, 0.3, 0.06), (0.1, 0.08, 0.06), (0.1, 0.03, 0.03),
                              (0.16, 0.03, 0.02)],
        "pixelate": [0.9, 0.8, 0.7, 0.6, 0.5],
        "jpeg_compression": [65, 58, 50, 40, 25],
        "_frost_resize": 0.3,
    },
}


def _gaussian(x: np.ndarray, sigma: float, **kw) -> np.ndarray:
    from skimage.filters import gaussian

    return gaussian(x, sigma=sigma, channel_axis=-1 if x.ndim == 3 else None, **kw)


def _gaussian_noise(x, c, ctx):
    return np.clip(x / 255. + np.random.normal(size=x.shape, scale=c), 0, 1) * 255


def _shot_noise(x, c, ctx):
    return np.clip(np.random.poisson(x / 255. * c) / c, 0, 1) * 255


def _impulse_noise(x, c, ctx):
    from skimage.util import random_noise

    return np.clip(random_noise(x / 255., mode="s&p", amount=c, rng=ctx["seed"]), 0, 1) * 255


def _defocus_blur(x, c, ctx):
    import cv2
    from corrupt_tta.corruptions import disk

    kernel = disk(radius=c[0], alias_blur=c[1])
    x = x / 255.
    return np.clip(np.stack([cv2.filter2D(x[..., d], -1, kernel) for d in range(3)], axis=-1), 0, 1) * 255


def _glass_blur(x, c, ctx):
    sigma, delta, iterations = c
    h, w = x.shape[:2]
    x = np.uint8(_gaussian(x / 255., sigma) * 255)
    for _ in range(iterations):  # swap each pixel with a random neighbour within ±delta, bottom-right first
        for i in range(h - delta, delta, -1):
            for j in range(w - delta, delta, -1):
                dx, dy = np.random.randint(-delta, delta, size=(2,))
                i2, j2 = i + dy, j + dx
                x[i, j], x[i2, j2] = x[i2, j2], x[i, j]
    return np.clip(_gaussian(x / 255., sigma), 0, 1) * 255


def _motion_blur(x, c, ctx):
    from corrupt_tta.corruptions import cv2_motion_blur

    angle = np.random.uniform(-45, 45)
    return np.clip(cv2_motion_blur(x / 255., radius=c[0], sigma=c[1], angle=angle), 0, 1) * 255


def _zoom_blur(x, c, ctx):
    from corrupt_tta.corruptions import clipped_zoom

    x = (x / 255.).astype(np.float32)
    out = np.zeros_like(x)
    for factor in c:
        out += clipped_zoom(x, factor)
    return np.clip((x + out) / (len(c) + 1), 0, 1) * 255


def _snow(x, c, ctx):
    import cv2
    from corrupt_tta.corruptions import clipped_zoom, cv2_motion_blur

    h, w = x.shape[:2]
    x = x.astype(np.float32) / 255.
    layer = np.random.normal(size=(h, w), loc=c[0], scale=c[1])
    layer = clipped_zoom(layer[..., None], c[2])
    layer[layer < c[3]] = 0
    layer = np.uint8(np.clip(layer.squeeze(), 0, 1) * 255) / 255.  # the 8-bit snow image of the original
    angle = np.random.uniform(-135, -45)
    layer = np.clip(cv2_motion_blur(layer, radius=c[4], sigma=c[5], angle=angle), 0, 1)[..., None]
    grey = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).reshape(h, w, 1)
    x = c[6] * x + (1 - c[6]) * np.maximum(x, grey * 1.5 + 0.5)
    return np.clip(x + layer + np.rot90(layer, k=2), 0, 1) * 255


def _frost(x, c, ctx):
    from importlib import resources

    import cv2

    h, w = x.shape[:2]
    idx = np.random.randint(5)  # the original draws among the first five of its six textures
    name = f"frost{idx + 1}.{'png' if idx < 3 else 'jpg'}"
    with resources.as_file(resources.files("corrupt_tta.assets.frost").joinpath(name)) as path:
        texture = cv2.imread(str(path))
    f = ctx["frost_resize"]
    texture = cv2.resize(texture, (0, 0), fx=f, fy=f)
    top, left = np.random.randint(0, texture.shape[0] - h), np.random.randint(0, texture.shape[1] - w)
    texture = texture[top:top + h, left:left + w][..., [2, 1, 0]]
    return np.clip(c[0] * x + c[1] * texture, 0, 255)


def _fog(x, c, ctx):
    from corrupt_tta.corruptions import plasma_fractal

    h, w = x.shape[:2]
    mapsize = ctx["size"]
    while mapsize < max(h, w):
        mapsize *= 2
    x = x / 255.
    top = x.max()
    x = x + c[0] * plasma_fractal(mapsize=mapsize, wibbledecay=c[1])[:h, :w][..., None]
    return np.clip(x * top / (top + c[0]), 0, 1) * 255


def _hsv_shift(x, channel, fn):
    from skimage.color import hsv2rgb, rgb2hsv

    hsv = rgb2hsv(x / 255.)
    hsv[..., channel] = fn(hsv[..., channel])
    return np.clip(hsv2rgb(hsv), 0, 1) * 255


def _brightness(x, c, ctx):
    return _hsv_shift(x, 2, lambda v: np.clip(v + c, 0, 1))


def _contrast(x, c, ctx):
    x = x / 255.
    means = x.mean(axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def _elastic_transform(x, c, ctx):
    import cv2
    from scipy.ndimage import map_coordinates

    h, w = x.shape[:2]
    alpha, sigma, affine = (v * max(h, w) for v in c)  # the original: fractions of IMSIZE (32 / 64)
    image = x.astype(np.float32) / 255.
    centre = np.float32((h, w)) // 2
    half = min(h, w) // 3
    src = np.float32([centre + half, [centre[0] + half, centre[1] - half], centre - half])
    dst = src + np.random.uniform(-affine, affine, size=src.shape).astype(np.float32)
    image = cv2.warpAffine(image, cv2.getAffineTransform(src, dst), (w, h), borderMode=cv2.BORDER_REFLECT_101)
    dx, dy = ((_gaussian(np.random.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3) * alpha)
              .astype(np.float32)[..., None] for _ in range(2))
    cols, rows, chans = np.meshgrid(np.arange(w), np.arange(h), np.arange(3))
    coords = np.reshape(rows + dy, (-1, 1)), np.reshape(cols + dx, (-1, 1)), np.reshape(chans, (-1, 1))
    return np.clip(map_coordinates(image, coords, order=1, mode="reflect").reshape(image.shape), 0, 1) * 255


def _pixelate(x, c, ctx):
    h, w = x.shape[:2]
    img = Image.fromarray(x).resize((int(w * c), int(h * c)), Image.BOX)
    return np.asarray(img.resize((w, h), Image.BOX), dtype=np.float64)


def _jpeg_compression(x, c, ctx):
    buf = BytesIO()
    Image.fromarray(x).save(buf, "JPEG", quality=c)
    return np.asarray(Image.open(buf), dtype=np.float64)


_FUNCTIONS = {"gaussian_noise": _gaussian_noise, "shot_noise": _shot_noise, "impulse_noise": _impulse_noise,
              "defocus_blur": _defocus_blur, "glass_blur": _glass_blur, "motion_blur": _motion_blur,
              "zoom_blur": _zoom_blur, "snow": _snow, "frost": _frost, "fog": _fog, "brightness": _brightness,
              "contrast": _contrast, "elastic_transform": _elastic_transform, "pixelate": _pixelate,
              "jpeg_compression": _jpeg_compression}


def corrupt_lowres(image: np.ndarray, corruption: str, severity: int, scale: str, seed: int) -> np.ndarray:
    """One corrupted copy of ``image`` ((H, W, 3) uint8) with ``scale``'s constants; (H, W, 3) uint8 out.

    Draws from NumPy's global generator (the caller seeds it, as :func:`maxsup.corruptions.corrupt` does); impulse
    noise takes ``seed`` for scikit-image's own generator."""
    table = _CONSTANTS[scale]
    ctx = {"seed": seed, "size": LOWRES_SCALES[scale][0], "frost_resize": table["_frost_resize"]}
    out = _FUNCTIONS[corruption](np.ascontiguousarray(image, dtype=np.uint8), table[corruption][severity - 1], ctx)
    return np.uint8(np.clip(out, 0, 255))
