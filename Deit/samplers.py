"""Samplers for distributed training and evaluation.

``RASampler`` is DeiT's repeated augmentation (Hoffer et al. 2020; Berman et al. 2019): each image appears
``num_repeats`` times per epoch, its copies spread over different ranks, so they receive different augmentations.
main.py uses it only when training is distributed (the authors' fork forced it on a single process too, which put
all copies of an image in the same batch).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized

import torch
from torch.utils.data import Sampler

__all__ = ["RASampler", "ShardSampler"]


class RASampler(Sampler[int]):
    """Repeated-augmentation sampler: ``num_samples = ceil(len(dataset) / num_replicas)`` indices per rank and epoch.

    The epoch keeps the dataset's length (so ≈ 1/num_repeats of the images are seen per epoch, as in DeiT), but
    unlike upstream it is not rounded down to a multiple of 256 (https://github.com/facebookresearch/deit/issues/89).
    Call :meth:`set_epoch` before each epoch; the order depends only on (seed, epoch).
    """

    def __init__(self, dataset: Sized, num_replicas: int, rank: int, shuffle: bool = True, num_repeats: int = 3,
                 seed: int = 0):
        if num_repeats < 1:
            raise ValueError(f"num_repeats must be >= 1, got {num_repeats}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        self.dataset_len = len(dataset)
        self.num_replicas, self.rank, self.shuffle = num_replicas, rank, shuffle
        self.num_repeats, self.seed, self.epoch = num_repeats, seed, 0
        self.num_samples = math.ceil(self.dataset_len / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.dataset_len, generator=g)
        else:
            order = torch.arange(self.dataset_len)
        # copies of one image are adjacent here, so the stride below sends them to consecutive ranks
        repeated = order.repeat_interleave(self.num_repeats)
        total = self.num_samples * self.num_replicas
        if total > len(repeated):  # only when num_repeats == 1 and the length is not divisible
            repeated = torch.cat([repeated, repeated[: total - len(repeated)]])
        return iter(repeated[self.rank:total:self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...`` in order, without padding: distributed evaluation that counts every
    sample exactly once (torch's DistributedSampler pads with duplicates, which biases gathered metrics)."""

    def __init__(self, dataset: Sized, num_replicas: int, rank: int):
        self.indices = range(rank, len(dataset), num_replicas)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
