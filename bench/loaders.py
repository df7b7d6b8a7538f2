"""Training-loader throughput, side by side on the same JPEGs: FFCV vs torchvision ImageFolder + PIL vs the Deit
zip-cache loader (``maxsup.data.zipcache``), each with the same worker count, batch size and augmentation
(RandomResizedCrop + horizontal flip → normalised float (B, 3, S, S)).

The JPEGs are ~500×375 random crops/flips of scikit-image's sample photos (ImageNet-like sizes). The .beton uses the
authors' writer setting (max side 500, compress probability 0.5, JPEG quality 90). Each loader runs one warm-up
epoch (FFCV JIT compilation, worker start-up), then ``--epochs`` timed epochs, at 224 px and at 160 px (the
low-resolution phase of progressive resizing). Prints one JSON line; ``ratio`` = FFCV / torchvision at 224 px.

    python bench/loaders.py [--num-images 1000 --workers 2 --batch-size 64 --epochs 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _trainers import trainer_module
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

from maxsup.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from maxsup.data.zipcache import ZipCacheDataset, write_zip_cache

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def make_jpegs(root: Path, n: int, seed: int = 0, quality: int = 90) -> None:
    """``n`` JPEGs of 500×375 (landscape) or 375×500 (portrait, 1 in 4) in one class folder per source photo."""
    import skimage.data

    rng = np.random.default_rng(seed)
    photos = {name: Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in PHOTOS}
    for i in range(n):
        name = PHOTOS[i % len(PHOTOS)]
        photo = photos[name]
        w, h = (375, 500) if rng.random() < 0.25 else (500, 375)
        scale = max(w / photo.width, h / photo.height) * rng.uniform(1.0, 1.6)
        big = photo.resize((int(np.ceil(photo.width * scale)), int(np.ceil(photo.height * scale))), Image.BILINEAR)
        x, y = int(rng.integers(0, big.width - w + 1)), int(rng.integers(0, big.height - h + 1))
        img = big.crop((x, y, x + w, y + h))
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        (root / name).mkdir(parents=True, exist_ok=True)
        img.save(root / name / f"{i:05d}.jpg", quality=quality)


def images_per_second(loader, epochs: int, mean: torch.Tensor, std: torch.Tensor, uint8: bool) -> float:
    """Warm-up epoch, then ``epochs`` timed epochs; uint8 batches are normalised here (FFCV leaves that to torch)."""
    for warm in (True, False):
        start, seen = time.perf_counter(), 0
        for _ in range(1 if warm else epochs):
            for images, _target in loader:
                if uint8:
                    images = (images.float() - mean) / std
                seen += images.shape[0]
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs per loader and resolution")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[224, 160])
    parser.add_argument("--max-resolution", type=int, default=500)
    parser.add_argument("--compress-probability", type=float, default=0.5)
    parser.add_argument("--jpeg-quality", type=int, default=90)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the main process only normalises; the workers do the decoding

    from ffcv.fields.decoders import IntDecoder, RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToTensor, ToTorchImage

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    result: dict[str, float | int] = {}
    keep_alive = []
    with tempfile.TemporaryDirectory(prefix="bench_loaders_") as tmp:
        tmp = Path(tmp)
        make_jpegs(tmp / "train", args.num_images)
        write_beton = trainer_module("Conv/ffcv", "write_imagenet").write_beton
        beton = write_beton(ImageFolder(str(tmp / "train")), tmp / "train.beton", args.max_resolution,
                            args.compress_probability, args.jpeg_quality, num_workers=args.workers)
        write_zip_cache(tmp / "train", tmp / "train.zip", tmp / "train_map.txt")
        for res in args.resolutions:
            decoder = RandomResizedCropRGBImageDecoder((res, res))
            ffcv_loader = Loader(str(beton), batch_size=args.batch_size, num_workers=args.workers,
                                 order=OrderOption.RANDOM, os_cache=True, drop_last=True, seed=0,
                                 pipelines={"image": [decoder, RandomHorizontalFlip(), ToTensor(), ToTorchImage()],
                                            "label": [IntDecoder(), ToTensor(), Squeeze()]})
            tf = T.Compose([T.RandomResizedCrop(res), T.RandomHorizontalFlip(), T.ToTensor(),
                            T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
            kw = dict(batch_size=args.batch_size, num_workers=args.workers, shuffle=True, drop_last=True,
                      persistent_workers=True)
            tv_loader = DataLoader(ImageFolder(str(tmp / "train"), transform=tf), **kw)
            zip_loader = DataLoader(ZipCacheDataset(tmp / "train.zip", tmp / "train_map.txt", transform=tf), **kw)
            result[f"ffcv_img_s_{res}"] = images_per_second(ffcv_loader, args.epochs, mean * 255, std * 255,
                                                            uint8=True)
            result[f"torchvision_img_s_{res}"] = images_per_second(tv_loader, args.epochs, mean, std, False)
            result[f"zipcache_img_s_{res}"] = images_per_second(zip_loader, args.epochs, mean, std, False)
            result[f"ratio_{res}"] = result[f"ffcv_img_s_{res}"] / result[f"torchvision_img_s_{res}"]
            result[f"ratio_zipcache_{res}"] = result[f"ffcv_img_s_{res}"] / result[f"zipcache_img_s_{res}"]
            del tv_loader, zip_loader  # stop the persistent workers before the next resolution
            keep_alive.append(ffcv_loader)  # numba 0.68's finaliser raises a stray KeyError when FFCV code is freed
        beton_mb = beton.stat().st_size / 2**20
    first = args.resolutions[0]
    print(json.dumps({"name": "loaders", "ratio": round(result[f"ratio_{first}"], 3),
                      **{k: round(v, 3) for k, v in result.items()}, "images": args.num_images,
                      "workers": args.workers, "batch_size": args.batch_size, "epochs": args.epochs,
                      "writer": f"{args.max_resolution}/{args.compress_probability}/{args.jpeg_quality}",
                      "beton_mb": round(beton_mb, 1)}))


if __name__ == "__main__":
    main()
