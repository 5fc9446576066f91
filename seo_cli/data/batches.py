"""Batches of preprocessed tensors, taken by index: kept on the training device when they fit, streamed
from host memory through a DataLoader when they do not.

Small tables fit on the device whole: indexing them there is one gather per batch, with no
per-sample ``__getitem__``, no collation and no host-to-device copy in the loop. Larger ones stay in
(pinned) host memory; DataLoader workers gather each batch and the copy overlaps with compute.
Both draw the order of epoch ``e`` from a generator seeded with ``seed + e``, so a resumed run sees
the batches the uninterrupted run would have. Under DDP (``shard=(rank, world_size)``) the rows of each
rank come from ``DistributedSampler``, epoch by epoch through its ``set_epoch``.
"""

import logging
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from seo_cli.runtime import seed_worker

log = logging.getLogger(__name__)

# Keep at most this share of the GPU's free memory for the data, leaving the rest for the model.
DEVICE_DATA_SHARE = 0.5


class DeviceBatches:
    """Iterate ``(inputs, targets)`` dict pairs over tensors moved once to ``device``.

    Shuffling draws a fresh permutation each epoch from a generator seeded with ``seed + epoch``,
    so the order of epoch ``e`` does not depend on anything that ran before it (exact resume).
    """

    def __init__(
        self,
        inputs: dict[str, Tensor],
        targets: dict[str, Tensor],
        *,
        batch_size: int,
        device: torch.device,
        shuffle: bool = False,
        seed: int = 0,
        shard: tuple[int, int] | None = None,
        drop_last: bool = False,
    ) -> None:
        self.inputs = {k: v.to(device) for k, v in inputs.items()}
        self.targets = {k: v.to(device) for k, v in targets.items()}
        self.batch_size = batch_size
        self.device = device
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.total_rows = len(next(iter(self.targets.values())))  # of the split, before sharding
        self.sampler = _shard_sampler(self.total_rows, shard, shuffle, seed)
        self.num_rows = len(self.sampler) if self.sampler is not None else self.total_rows
        if drop_last:  # a short last batch is left out of every epoch
            self.num_rows -= self.num_rows % batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.num_rows // self.batch_size)

    def __iter__(self) -> Iterator[tuple[dict[str, Tensor], dict[str, Tensor]]]:
        if self.sampler is None and not self.shuffle:
            for start in range(0, self.num_rows, self.batch_size):
                end = start + self.batch_size
                yield (
                    {k: v[start:end] for k, v in self.inputs.items()},
                    {k: v[start:end] for k, v in self.targets.items()},
                )
            return
        if self.sampler is not None:
            self.sampler.set_epoch(self.epoch)
            order = torch.tensor(list(self.sampler), device=self.device)
        else:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.total_rows, generator=generator).to(self.device)
        for index in torch.split(order[: self.num_rows], self.batch_size):
            yield (
                {k: v[index] for k, v in self.inputs.items()},
                {k: v[index] for k, v in self.targets.items()},
            )


class _RowBatches(Dataset):
    """Item ``i`` of this dataset is a whole batch: the rows listed in ``i`` (a tensor of indices)."""

    def __init__(self, inputs: dict[str, Tensor], targets: dict[str, Tensor]) -> None:
        self.inputs, self.targets = inputs, targets

    def __getitem__(self, index: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        return {k: v[index] for k, v in self.inputs.items()}, {k: v[index] for k, v in self.targets.items()}


class _IndexBatches(Sampler):
    """Index tensors of ``batch_size`` rows, in a seeded random order (``seed + epoch``) or in order;
    under DDP, this rank's rows as ``DistributedSampler`` deals them."""

    def __init__(
        self, num_rows: int, batch_size: int, shuffle: bool, seed: int, shard: tuple[int, int] | None = None
    ) -> None:
        self.batch_size, self.shuffle, self.seed, self.epoch = batch_size, shuffle, seed, 0
        self.shard_sampler = _shard_sampler(num_rows, shard, shuffle, seed)
        self.num_rows = len(self.shard_sampler) if self.shard_sampler is not None else num_rows

    def __len__(self) -> int:
        return -(-self.num_rows // self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        if self.shard_sampler is not None:
            self.shard_sampler.set_epoch(self.epoch)
            order = torch.tensor(list(self.shard_sampler))
        elif self.shuffle:
            order = torch.randperm(
                self.num_rows, generator=torch.Generator().manual_seed(self.seed + self.epoch)
            )
        else:
            order = torch.arange(self.num_rows)
        yield from torch.split(order, self.batch_size)


class StreamedBatches:
    """The same batches as ``DeviceBatches``, gathered from host memory by DataLoader workers.

    The trainer moves each batch to the device (``non_blocking``: from pinned memory the copy overlaps).
    """

    def __init__(
        self,
        inputs: dict[str, Tensor],
        targets: dict[str, Tensor],
        *,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        num_workers: int = 2,
        pin_memory: bool = True,
        shard: tuple[int, int] | None = None,
    ) -> None:
        self.total_rows = len(next(iter(targets.values())))  # of the split, before sharding
        self.sampler = _IndexBatches(self.total_rows, batch_size, shuffle, seed, shard)
        self.loader = DataLoader(
            _RowBatches(inputs, targets),
            sampler=self.sampler,
            batch_size=None,  # each item is already a batch
            num_workers=num_workers,
            pin_memory=pin_memory and torch.cuda.is_available(),
            persistent_workers=num_workers > 0,
            worker_init_fn=seed_worker,
            # Its own generator for the workers' seeds: drawing them from the global RNG would shift the
            # random numbers dropout sees, so results would depend on the placement and resume inexactly.
            generator=torch.Generator().manual_seed(seed),
        )

    def set_epoch(self, epoch: int) -> None:
        self.sampler.epoch = epoch

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[dict[str, Tensor], dict[str, Tensor]]]:
        return iter(self.loader)


def make_batches(
    inputs: dict[str, Tensor],
    targets: dict[str, Tensor],
    *,
    batch_size: int,
    device: torch.device,
    placement: str = "auto",
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 2,
    pin_memory: bool = True,
    shard: tuple[int, int] | None = None,
) -> "DeviceBatches | StreamedBatches":
    """Batches of one split, placed by ``placement``: device | stream | auto (the device when it fits).

    ``shard``: (rank, world size) under DDP: this rank's share of the rows.
    """
    if placement == "auto":
        placement = "device" if fits_on_device([inputs, targets], device) else "stream"
    if placement == "device":
        return DeviceBatches(
            inputs, targets, batch_size=batch_size, device=device, shuffle=shuffle, seed=seed, shard=shard
        )
    return StreamedBatches(
        inputs,
        targets,
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
        num_workers=num_workers,
        pin_memory=pin_memory,
        shard=shard,
    )


def _shard_sampler(
    num_rows: int, shard: tuple[int, int] | None, shuffle: bool, seed: int
) -> DistributedSampler | None:
    """DistributedSampler over the row numbers for ``shard=(rank, world size)``; None in one process.

    It pads the rows to a multiple of the world size with copies of the first ones, so every rank
    takes the same number of steps; evaluation drops the copies again (``distributed.gather_rows``).
    """
    if shard is None:
        return None
    rank, world = shard
    return DistributedSampler(range(num_rows), num_replicas=world, rank=rank, shuffle=shuffle, seed=seed)


def fits_on_device(tensors: list[dict[str, Tensor]], device: torch.device) -> bool:
    """On the CPU the data is in memory already; on a GPU it must fit in DEVICE_DATA_SHARE of the free memory."""
    if device.type != "cuda":
        return True
    size = sum(t.numel() * t.element_size() for group in tensors for t in group.values())
    free, _ = torch.cuda.mem_get_info(device)
    return size <= DEVICE_DATA_SHARE * free
