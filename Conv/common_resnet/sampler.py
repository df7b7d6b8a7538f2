"""Distributed samplers: repeated augmentation for training, exact sharding for evaluation."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized

import torch
from torch.utils.data import Sampler


class RASampler(Sampler[int]):
    """Repeated-augmentation sampler (Hoffer et al. 2020; Berman et al. 2019), as used by DeiT and torchvision.

    Every image appears ``repetitions`` times per epoch, spread over different ranks, so each copy gets its own
    augmentation. An epoch still yields ceil(N / world_size) samples per rank, i.e. the same number of steps as
    without repetition. (DeiT/torchvision also round the epoch down to a multiple of 256 images; that would empty the
    small datasets used in tests, so it is not done here.) Call :meth:`set_epoch` before each epoch.
    """

    def __init__(self, dataset: Sized, num_replicas: int, rank: int, shuffle: bool = True, seed: int = 0,
                 repetitions: int = 3):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        self.dataset, self.num_replicas, self.rank = dataset, num_replicas, rank
        self.shuffle, self.seed, self.repetitions, self.epoch = shuffle, seed, repetitions, 0
        self.num_samples = math.ceil(len(dataset) * repetitions / num_replicas)
        self.total_size = self.num_samples * num_replicas
        self.num_selected_samples = math.ceil(len(dataset) / num_replicas)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            indices = torch.randperm(len(self.dataset), generator=g)
        else:
            indices = torch.arange(len(self.dataset))
        indices = indices.repeat_interleave(self.repetitions).tolist()
        indices += indices[: self.total_size - len(indices)]
        return iter(indices[self.rank: self.total_size: self.num_replicas][: self.num_selected_samples])

    def __len__(self) -> int:
        return self.num_selected_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class ShardedEvalSampler(Sampler[int]):
    """Rank r evaluates indices r, r + W, r + 2W, … without padding, so all-reduced metrics cover every image once
    (``DistributedSampler`` pads with duplicates, which biases acc/NLL/ECE on small validation sets)."""

    def __init__(self, dataset: Sized, num_replicas: int, rank: int):
        self.indices = list(range(rank, len(dataset), num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
