"""Batches of tensors that live on the training device, taken by index.

Small tables fit on the device whole: indexing them there is one gather per batch, with no
per-sample ``__getitem__``, no collation and no host-to-device copy in the loop.
"""

from collections.abc import Iterator

import torch
from torch import Tensor


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
    ) -> None:
        self.inputs = {k: v.to(device) for k, v in inputs.items()}
        self.targets = {k: v.to(device) for k, v in targets.items()}
        self.batch_size = batch_size
        self.device = device
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.num_rows = len(next(iter(self.targets.values())))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.num_rows // self.batch_size)

    def __iter__(self) -> Iterator[tuple[dict[str, Tensor], dict[str, Tensor]]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_rows, generator=generator).to(self.device)
            for start in range(0, self.num_rows, self.batch_size):
                index = order[start : start + self.batch_size]
                yield (
                    {k: v[index] for k, v in self.inputs.items()},
                    {k: v[index] for k, v in self.targets.items()},
                )
        else:
            for start in range(0, self.num_rows, self.batch_size):
                end = start + self.batch_size
                yield (
                    {k: v[start:end] for k, v in self.inputs.items()},
                    {k: v[start:end] for k, v in self.targets.items()},
                )
