"""Batches of preprocessed tensors, taken by index: kept on the training device when they fit, streamed
from host memory through a DataLoader when they do not.

Small tables fit on the device whole: indexing them there is one gather per batch, with no
per-sample ``__getitem__``, no collation and no host-to-device copy in the loop. Larger ones stay in
(pinned) host memory; DataLoader workers gather each batch and the copy overlaps with compute.
Both draw the order of epoch ``e`` from a generator seeded with ``seed + e``, so a resumed run sees
the batches the uninterrupted run would have. Under DDP (``shard=(rank, world_size)``) the rows of each
rank come from ``DistributedSampler``, epoch by epoch through its ``set_epoch``.

Class-balanced sampling (``data.sampler=balanced``, ``ClassBalance``): an epoch is as many draws with
replacement as the split has rows, each draw a class chosen uniformly, then a row of that class, from
the same ``seed + e`` generator: the classes are drawn equally often in expectation, and a resumed epoch
continues the same draws. Under DDP every rank makes the same draws and takes every world-size-th one
from its rank on (the draws padded up to a multiple of the world size), so the shares are disjoint.

Dynamic padding (``pad_to_multiple_of``): token ids are stored padded to ``max_length``, and each batch
is cut to its longest row, rounded up to the multiple, so a batch of headlines is not mostly padding.
The lengths are read on the host once, so cutting a batch costs no device synchronisation; the text
models mask padding, so a row's outputs do not depend on how much of it there is.
"""

import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from seo_cli.runtime import seed_worker

log = logging.getLogger(__name__)

# Keep at most this share of the GPU's free memory for the data, leaving the rest for the model.
DEVICE_DATA_SHARE = 0.5


class TokenPadding:
    """Where each row's tokens end, and the length a batch of rows is cut to: its longest row rounded up
    to ``multiple`` (at most the stored width, at least 1). Counts the token slots and the real tokens
    of the batches cut since ``reset`` for ``speed/padding_fraction``.

    Args:
        tokens: int64 ``[rows, max_length]`` token ids, right-padded with ``pad_id`` (on any device).
        multiple: round a batch's length up to this; None keeps every batch at ``max_length``.
    """

    def __init__(self, tokens: Tensor, multiple: int | None, pad_id: int = 0) -> None:
        real = tokens.cpu() != pad_id
        width = tokens.shape[1]
        # The position after the last real token (a [PAD] typed inside a text stays a masked token).
        self.lengths = torch.where(real.any(1), width - real.flip(1).int().argmax(1), 0)
        self.width, self.multiple = width, multiple
        self.reset()

    def reset(self) -> None:
        self.slots, self.real = 0, 0

    def length(self, rows: Tensor | slice) -> int:
        """The length the batch of host row numbers (or slice) ``rows`` is cut to; counted."""
        lengths = self.lengths[rows]
        if self.multiple is None:
            cut = self.width
        else:
            longest = int(lengths.max()) if len(lengths) else 1
            cut = min(self.width, max(1, -(-longest // self.multiple) * self.multiple))
        self.slots += cut * len(lengths)
        self.real += int(lengths.sum())
        return cut

    def fraction(self) -> dict[str, float]:
        """``speed/padding_fraction``: the share of the token slots since ``reset`` that were padding."""
        return {"speed/padding_fraction": 1 - self.real / self.slots} if self.slots else {}


BUCKET_BATCHES = (
    50  # batches whose rows are sorted by length together: long enough to group, short enough to mix
)


def bucketed(order: Tensor, lengths: Tensor, batch_size: int, generator: torch.Generator) -> Tensor:
    """``order`` (row numbers, already shuffled) regrouped so each batch holds rows of similar length: cut
    into chunks of ``BUCKET_BATCHES`` batches, each chunk sorted by length (stable), then the batches of
    the whole epoch in an order drawn from ``generator``. Every row stays exactly once; the result
    depends only on ``order`` and the generator's seed (exact resume, DDP: each rank its own rows)."""
    chunk = batch_size * BUCKET_BATCHES
    parts = []
    for start in range(0, len(order), chunk):
        rows = order[start : start + chunk]
        parts.append(rows[torch.sort(lengths[rows], stable=True).indices])
    grouped = torch.cat(parts) if parts else order
    batches = list(torch.split(grouped, batch_size))
    # A short last batch stays last, as in an unbucketed epoch: the same batch sizes, the same steps.
    last = [batches.pop()] if batches and len(batches[-1]) < batch_size else []
    picked = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return torch.cat(picked + last) if picked or last else grouped


class ClassBalance:
    """The class-balanced order of an epoch (``data.sampler=balanced``) over rows labelled ``labels``
    (int64 class codes, on any device), as described in the module docstring."""

    def __init__(self, labels: Tensor, shard: tuple[int, int] | None = None) -> None:
        labels = labels.cpu()
        counts = torch.bincount(labels)
        self.rows = torch.argsort(labels, stable=True)  # the rows of class c at starts[c] .. + counts[c]
        self.classes = counts.nonzero().flatten()  # the classes the split has rows of
        self.counts, self.starts = counts, torch.cumsum(counts, 0) - counts
        self.rank, self.world = shard or (0, 1)
        self.draws = -(-len(labels) // self.world) * self.world

    def order(self, generator: torch.Generator) -> Tensor:
        """This rank's rows of the epoch whose generator is ``generator``, in order."""
        picked = self.classes[torch.randint(len(self.classes), (self.draws,), generator=generator)]
        within = (torch.rand(self.draws, generator=generator, dtype=torch.float64) * self.counts[picked]).long()
        return self.rows[self.starts[picked] + within][self.rank :: self.world]


COMPILED_MULTIPLE = 32  # under compile=true: few shapes, so few recompilations


def pad_multiple(data: Any, compiled: bool = False) -> int | None:
    """``make_batches``' ``pad_to_multiple_of`` for a data config: under padding=longest its
    ``pad_to_multiple_of``, or by default 1 (32 for a compiled model); None (every batch ``max_length``
    wide) under padding=max_length."""
    if str(data.padding) != "longest":
        return None
    if data.pad_to_multiple_of is not None:
        return int(data.pad_to_multiple_of)
    return COMPILED_MULTIPLE if compiled else 1


def cut_tokens(inputs: dict[str, Tensor], length: int) -> dict[str, Tensor]:
    return {k: v[:, :length] if k == "tokens" else v for k, v in inputs.items()}


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
        pad_to_multiple_of: int | None = None,
        bucket_by_length: bool = False,
        balance_labels: Tensor | None = None,
    ) -> None:
        self.padding = TokenPadding(inputs["tokens"], pad_to_multiple_of) if "tokens" in inputs else None
        self.bucket_by_length = bucket_by_length and shuffle and self.padding is not None
        self.balance = ClassBalance(balance_labels, shard) if balance_labels is not None and shuffle else None
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

    def padding_fraction(self) -> dict[str, float]:
        """``speed/padding_fraction`` of the batches since the last call (empty without text)."""
        if self.padding is None:
            return {}
        fraction = self.padding.fraction()
        self.padding.reset()
        return fraction

    def __len__(self) -> int:
        return -(-self.num_rows // self.batch_size)

    def __iter__(self) -> Iterator[tuple[dict[str, Tensor], dict[str, Tensor]]]:
        if self.sampler is None and not self.shuffle:
            for start in range(0, self.num_rows, self.batch_size):
                rows = slice(start, start + self.batch_size)
                yield (
                    self._cut({k: v[rows] for k, v in self.inputs.items()}, rows),
                    {k: v[rows] for k, v in self.targets.items()},
                )
            return
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.balance is not None:
            order = self.balance.order(generator)
        elif self.sampler is not None:
            self.sampler.set_epoch(self.epoch)
            order = torch.tensor(list(self.sampler))
        else:
            order = torch.randperm(self.total_rows, generator=generator)
        order = order[: self.num_rows]
        if self.bucket_by_length:
            order = bucketed(order, self.padding.lengths, self.batch_size, generator)
        device_order = order.to(self.device)
        for rows, index in zip(
            torch.split(order, self.batch_size), torch.split(device_order, self.batch_size), strict=True
        ):
            yield (
                self._cut({k: v[index] for k, v in self.inputs.items()}, rows),
                {k: v[index] for k, v in self.targets.items()},
            )

    def _cut(self, inputs: dict[str, Tensor], rows: Tensor | slice) -> dict[str, Tensor]:
        return inputs if self.padding is None else cut_tokens(inputs, self.padding.length(rows))


class _RowBatches(Dataset):
    """Item ``i`` of this dataset is a whole batch: the rows listed in ``i`` (a tensor of indices), its
    tokens cut to ``padding``'s length for them."""

    def __init__(
        self, inputs: dict[str, Tensor], targets: dict[str, Tensor], padding: TokenPadding | None
    ) -> None:
        self.inputs, self.targets, self.padding = inputs, targets, padding

    def __getitem__(self, index: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        inputs = {k: v[index] for k, v in self.inputs.items()}
        if self.padding is not None:  # a worker's copy: its counts are not the ones reported
            inputs = cut_tokens(inputs, self.padding.length(index))
        return inputs, {k: v[index] for k, v in self.targets.items()}


class _IndexBatches(Sampler):
    """Index tensors of ``batch_size`` rows, in a seeded random order (``seed + epoch``) or in order;
    under DDP, this rank's rows as ``DistributedSampler`` deals them."""

    def __init__(
        self,
        num_rows: int,
        batch_size: int,
        shuffle: bool,
        seed: int,
        shard: tuple[int, int] | None = None,
        padding: TokenPadding | None = None,
        bucket_by_length: bool = False,
        balance_labels: Tensor | None = None,
    ) -> None:
        self.batch_size, self.shuffle, self.seed, self.epoch = batch_size, shuffle, seed, 0
        self.balance = ClassBalance(balance_labels, shard) if balance_labels is not None and shuffle else None
        self.padding = padding  # counted here, in this process, as the batches are dealt
        self.bucket_by_length = bucket_by_length and shuffle and padding is not None
        self.shard_sampler = _shard_sampler(num_rows, shard, shuffle, seed)
        self.num_rows = len(self.shard_sampler) if self.shard_sampler is not None else num_rows

    def __len__(self) -> int:
        return -(-self.num_rows // self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.balance is not None:
            order = self.balance.order(generator)
        elif self.shard_sampler is not None:
            self.shard_sampler.set_epoch(self.epoch)
            order = torch.tensor(list(self.shard_sampler))
        elif self.shuffle:
            order = torch.randperm(self.num_rows, generator=generator)
        else:
            order = torch.arange(self.num_rows)
        if self.bucket_by_length:
            order = bucketed(order, self.padding.lengths, self.batch_size, generator)
        for rows in torch.split(order, self.batch_size):
            if self.padding is not None:
                self.padding.length(rows)
            yield rows


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
        pad_to_multiple_of: int | None = None,
        bucket_by_length: bool = False,
        balance_labels: Tensor | None = None,
    ) -> None:
        self.total_rows = len(next(iter(targets.values())))  # of the split, before sharding
        self.padding = TokenPadding(inputs["tokens"], pad_to_multiple_of) if "tokens" in inputs else None
        self.sampler = _IndexBatches(
            self.total_rows, batch_size, shuffle, seed, shard, self.padding, bucket_by_length, balance_labels
        )
        self.loader = DataLoader(
            _RowBatches(inputs, targets, self.padding),
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

    padding_fraction = DeviceBatches.padding_fraction

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
    pad_to_multiple_of: int | None = None,
    bucket_by_length: bool = False,
    balance_labels: Tensor | None = None,
) -> "DeviceBatches | StreamedBatches":
    """Batches of one split, placed by ``placement``: device | stream | auto (the device when it fits).

    ``shard``: (rank, world size) under DDP: this rank's share of the rows.
    ``pad_to_multiple_of``: cut each batch's tokens to its longest row rounded up to this; None: keep
    every batch at the stored ``max_length``. ``bucket_by_length``: shuffled batches group rows of
    similar length (``bucketed``). ``balance_labels``: shuffled batches are class-balanced draws over
    these class codes of the rows (``ClassBalance``).
    """
    if placement == "auto":
        placement = "device" if fits_on_device([inputs, targets], device) else "stream"
    if placement == "device":
        return DeviceBatches(
            inputs,
            targets,
            batch_size=batch_size,
            device=device,
            shuffle=shuffle,
            seed=seed,
            shard=shard,
            pad_to_multiple_of=pad_to_multiple_of,
            bucket_by_length=bucket_by_length,
            balance_labels=balance_labels,
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
        pad_to_multiple_of=pad_to_multiple_of,
        bucket_by_length=bucket_by_length,
        balance_labels=balance_labels,
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
