"""A resumable distributed sampler: the epoch's order depends only on (seed, epoch), so a resumed
run can skip exactly the micro-batches it already took."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableDistributedSampler(Sampler):
    """Yields `(epoch, index)` keys for this rank; `SeededSamples` turns them into samples.

    Training drops the tail that does not fill a round of `world * batch_size`, so every rank takes
    the same number of steps (DDP requires it) and no sample is repeated.
    """

    def __init__(self, size: int, rank: int, world: int, batch_size: int, seed: int, shuffle: bool = True):
        self.size, self.rank, self.world = size, rank, world
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.epoch = 0
        self.skip_batches = 0

    def set_position(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = epoch, skip_batches

    def batches_per_epoch(self) -> int:
        return self.size // (self.world * self.batch_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        else:
            order = torch.arange(self.size)
        usable = self.batches_per_epoch() * self.world * self.batch_size
        mine = order[:usable][self.rank :: self.world].tolist()
        for index in mine[self.skip_batches * self.batch_size :]:
            yield self.epoch, index

    def __len__(self) -> int:
        return (self.batches_per_epoch() - self.skip_batches) * self.batch_size


class SeededSamples(torch.utils.data.Dataset):
    """Feeds `(epoch, index)` keys to a dataset whose augmentation is a function of
    (its seed, epoch, index), so samples do not depend on loader workers, prefetching, or where a
    resumed run restarted. The dataset must offer `set_epoch(epoch)`."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        self.dataset.set_epoch(epoch)
        return self.dataset[index]
