"""Parquet shards larger than memory: a directory of ``.parquet`` files streamed through training,
validation and ``seo-eval`` in batches of rows, never read whole.

    seo-train data=parquet_dir data.path=crawl/ data.split_column=split ...
    seo-train data=parquet_dir data.path=crawl/train data.val_path=crawl/val data.test_path=crawl/test ...

What is held in memory is bounded by the knobs, not by the rows: the shards' footers, one count per row
group, the preprocessing sample (``data.fit_sample_rows``) and, per DataLoader worker, one shuffle window
(``data.shuffle_buffer`` rows) with the record batch being decoded.

1. ``shards.scan_shards`` checks every file's schema against the column mapping (the files are untrusted, as
   table files are) and reads the split column, the targets and the numeric columns once, row group by
   row group: values are checked there (one sentence naming file, column and row), and each row group's
   usable rows per split and the classes of every target are counted. Text is not read in this pass.
2. ``fit_preprocessing`` fits the ``Preprocessor`` on a seeded uniform sample of the training rows; the
   class lists and class counts come from the full scan, so a class missing from the sample is known.
3. ``ShardStream`` (a torch ``IterableDataset``) deals the rows of an epoch. The row groups are ordered
   by a generator seeded with ``(seed, epoch)``: the files shuffled, and the row groups within each file.
   That order, cut into ``world_size`` contiguous ranges of equal size (plus or minus one row), gives each
   DDP rank its rows; each rank's rows are cut into windows of ``shuffle_buffer`` rows, and each window is
   permuted by a generator seeded with ``(seed, epoch, rank, window)``. The rank's batches are consecutive
   runs of that stream, and DataLoader worker ``w`` of ``W`` makes batches ``w, w + W, ...``: the loader's
   round robin then yields them in order, so the batches do not depend on the number of workers, no row
   is dealt twice and none is left out. Every rank takes the same number of steps (a rank one row short
   splits its last batch). Evaluation streams are not shuffled and are dealt row by row, as
   ``DistributedSampler`` deals them, so ``distributed.gather_rows`` puts them back in order.
4. Exact resume: the position of batch ``k`` of an epoch (row group, offset in it, shuffle window and its
   seed) follows from ``(seed, epoch, rank, k)`` and the scan's counts, so ``ParquetBatches.iter_from``
   starts there, decoding from the row group that window starts in, not the epoch's earlier rows.
"""

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from seo_cli.config import DataConfig
from seo_cli.data.batches import TokenPadding, cut_tokens
from seo_cli.data.preprocess import Preprocessor, _class_names
from seo_cli.data.shards import (
    SPLITS,
    Layout,
    as_frame,
    check_classes,
    concat,
    is_parquet_dir,
    layouts_of,
)
from seo_cli.data.spec import CLASSIFICATION
from seo_cli.errors import UserError
from seo_cli.runtime import seed_worker

log = logging.getLogger(__name__)

__all__ = ["SPLITS", "ParquetBatches", "ShardStream", "StreamedData", "is_parquet_dir", "prepare_stream"]

EVAL_WINDOW = 16384  # rows read together in an unshuffled (evaluation) stream
PREPROCESS_BATCHES = 8  # batches tokenized together in a worker


class _Taker:
    """Consecutive rows of a stream of tables, ``take(n)`` at a time."""

    def __init__(self, tables: Iterator[pa.Table]) -> None:
        self.tables, self.held = tables, []

    def take(self, n: int) -> pa.Table:
        parts, have = [], 0
        while have < n:
            table = self.held.pop() if self.held else next(self.tables, None)
            if table is None:
                break
            if have + table.num_rows > n:
                self.held.append(table.slice(n - have))
                table = table.slice(0, n - have)
            parts.append(table)
            have += table.num_rows
        return concat(parts) if parts else None


def batch_bounds(rows: int, batch_size: int, steps: int) -> np.ndarray:
    """Where each of a rank's ``steps`` batches starts in its ``rows`` rows (and the end): ``batch_size``
    rows each, the last shorter; a rank whose rows end one batch early (one row fewer than another rank's)
    splits its last batch in two, so every rank takes the same number of steps."""
    sizes = [batch_size] * (rows // batch_size) + ([rows % batch_size] if rows % batch_size else [])
    while len(sizes) < steps and sizes and sizes[-1] > 1:
        last = sizes.pop()
        sizes += [last - 1, 1]
    assert len(sizes) == steps, (rows, batch_size, steps)
    return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])


class ShardStream(IterableDataset):
    """The batches of one split for one rank, made by the DataLoader's workers (see the module docstring).

    Each item is a whole batch ``(inputs, targets)`` of tensors, or ``(inputs, targets, row_ids)`` with
    ``row_ids=True``.
    """

    def __init__(
        self,
        layout: Layout,
        preprocessor: Preprocessor,
        *,
        batch_size: int,
        shuffle: bool,
        seed: int,
        shuffle_buffer: int,
        shard: tuple[int, int] | None,
        pad_to_multiple_of: int | None,
        pad_id: int,
        row_ids: bool = False,
    ) -> None:
        self.layout, self.preprocessor = layout, preprocessor
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.window = shuffle_buffer if shuffle else EVAL_WINDOW
        self.rank, self.world = shard or (0, 1)
        self.pad_to_multiple_of, self.pad_id, self.row_ids = pad_to_multiple_of, pad_id, row_ids
        self.epoch, self.start = 0, 0
        self.total_rows = int(layout.counts.sum())  # of the split, before sharding
        if self.total_rows < self.world:
            raise UserError(
                f"the {layout.split} split of {layout.shards.directory} has {self.total_rows} rows, fewer than the "
                f"{self.world} DDP processes; add rows or use fewer processes."
            )
        if shuffle:  # training: contiguous ranges of the epoch's order, the same steps on every rank
            self.lo = self.total_rows * self.rank // self.world
            self.num_rows = self.total_rows * (self.rank + 1) // self.world - self.lo
            steps = math.ceil(math.ceil(self.total_rows / self.world) / batch_size)
            if self.num_rows < steps:
                raise UserError(
                    f"the {self.total_rows} training rows cannot be dealt to {self.world} processes in equal steps of "
                    f"batch_size={batch_size}; use a batch_size of 2 or more."
                )
        else:  # evaluation: row r to rank r % world, padded as DistributedSampler pads
            self.lo, self.num_rows = 0, -(-self.total_rows // self.world)
            steps = -(-self.num_rows // batch_size)
        self.bounds = batch_bounds(self.num_rows, batch_size, steps)

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def position(self, batch: int) -> str:
        """Where batch ``batch`` of the epoch starts, in words (logged on resume)."""
        row = int(self.bounds[batch])
        window = row // self.window
        groups = self.layout.order(self.seed, self.epoch, self.shuffle)
        start = self.lo + window * self.window
        before = np.concatenate([[0], np.cumsum(self.layout.counts[groups])])
        g = groups[int(np.searchsorted(before, start, side="right")) - 1]
        shards = self.layout.shards
        offset = start - int(before[np.flatnonzero(groups == g)[0]])
        return (
            f"shuffle window {window} (seed [{self.seed}, {self.epoch}, {self.rank}, {window}]), from "
            f"{self.layout.split} row {offset} of row group {int(shards.row_group[g])} of "
            f"{shards.paths[shards.file[g]]}; the batch from the window's row {row - window * self.window}"
        )

    def __iter__(self) -> Iterator[tuple]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        mine = list(range(self.start + worker, len(self), workers))
        if not mine:
            return
        groups = self.layout.order(self.seed, self.epoch, self.shuffle)
        first_window = int(self.bounds[mine[0]]) // self.window
        rows = _Taker(self._rank_rows(groups, first_window * self.window))
        pending: dict[int, list[pa.Table]] = {}
        next_batch = 0  # index into mine
        for window in range(first_window, -(-int(self.bounds[mine[-1] + 1]) // self.window)):
            start = window * self.window
            size = min(self.window, self.num_rows - start)
            table = rows.take(size)
            assert table is not None and table.num_rows == size, (
                "the scan's counts and the rows read disagree"
            )
            if self.shuffle:
                table = table.take(
                    np.random.default_rng([self.seed, self.epoch, self.rank, window]).permutation(size)
                )
            done = []
            for j in mine[next_batch:]:
                lo, hi = int(self.bounds[j]), int(self.bounds[j + 1])
                if lo >= start + size:
                    break
                pending.setdefault(j, []).append(
                    table.slice(max(lo, start) - start, min(hi, start + size) - max(lo, start))
                )
                if hi <= start + size:
                    done.append(j)
            next_batch += len(done)
            # A few batches preprocessed at a time: one tokenizer load serves them, and the main process
            # does not wait for a whole window's worth before its next batch.
            for first in range(0, len(done), PREPROCESS_BATCHES):
                group = done[first : first + PREPROCESS_BATCHES]
                yield from self._batches([concat(pending.pop(j)) for j in group])

    def _rank_rows(self, groups: np.ndarray, start: int) -> Iterator[pa.Table]:
        """This rank's rows from its row ``start`` on."""
        fragments: dict = {}
        if self.shuffle:
            yield from self.layout.read(groups, self.lo + start, fragments)
            return
        # Evaluation: rank r's row k is the split's row k * world + r; past the end, the split's first rows
        # again (at most one per rank), as DistributedSampler pads.
        position = start * self.world + self.rank
        if position < self.total_rows:
            for table in self.layout.read(groups, position, fragments):
                offsets = np.arange(position, position + table.num_rows)
                position += table.num_rows
                keep = (offsets - self.rank) % self.world == 0
                if keep.any():
                    yield table.filter(pa.array(keep))
        last = (self.num_rows - 1) * self.world + self.rank
        if last >= self.total_rows and start < self.num_rows:
            yield next(self.layout.read(groups, last - self.total_rows, {})).slice(0, 1)

    def _batches(self, tables: list[pa.Table]) -> Iterator[tuple]:
        """The tensors of these batches, preprocessed together (one tokenizer load for all)."""
        rows = concat(tables)
        frame = as_frame(rows.drop(["__row__"]), self.layout.kinds)
        inputs = self.preprocessor.transform_inputs(frame)
        targets = self.preprocessor.transform_targets(frame, f"the {self.layout.split} split")
        ids = torch.from_numpy(rows.column("__row__").to_numpy().copy())
        start = 0
        for table in tables:
            stop = start + table.num_rows
            batch_inputs = {k: v[start:stop] for k, v in inputs.items()}
            if "tokens" in batch_inputs and self.pad_to_multiple_of is not None:
                padding = TokenPadding(batch_inputs["tokens"], self.pad_to_multiple_of, self.pad_id)
                batch_inputs = cut_tokens(batch_inputs, padding.length(slice(None)))
            batch_targets = {k: v[start:stop] for k, v in targets.items()}
            yield (
                (batch_inputs, batch_targets, ids[start:stop])
                if self.row_ids
                else (batch_inputs, batch_targets)
            )
            start = stop


class ParquetBatches:
    """A split's batches for the trainer and the evaluation loop: ``len``, ``set_epoch``, ``total_rows``, and
    ``iter_from(k)``, which starts the epoch at batch ``k`` without reading the rows before it."""

    def __init__(self, stream: ShardStream, num_workers: int, pin_memory: bool, seed: int) -> None:
        self.stream, self.num_workers, self.seed = stream, num_workers, seed
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.total_rows = stream.total_rows

    def set_epoch(self, epoch: int) -> None:
        self.stream.epoch = epoch

    def __len__(self) -> int:
        return len(self.stream)

    def padding_fraction(self) -> dict[str, float]:
        return {}  # the batches are cut in the workers, whose counts do not come back

    def __iter__(self) -> Iterator[tuple]:
        return self.iter_from(0)

    def iter_from(self, start: int) -> Iterator[tuple]:
        if start:
            log.info(
                "Resuming epoch %d at batch %d: %s.",
                self.stream.epoch + 1,
                start,
                self.stream.position(start),
            )
        self.stream.start = start
        # Workers are started for each epoch (not persistent): each takes the epoch and start set here.
        loader = DataLoader(
            self.stream,
            batch_size=None,  # each item is already a batch
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(self.seed),
        )
        return iter(loader)


def fit_preprocessing(layout: Layout, data: DataConfig, seed: int, encoder: dict | None) -> Preprocessor:
    """The ``Preprocessor`` fitted on a seeded uniform sample of ``data.fit_sample_rows`` training rows
    (read row group by row group: only the sampled rows are kept), with every class the scan counted."""
    total = int(layout.counts.sum())
    size = min(data.fit_sample_rows, total)
    picked = np.sort(np.random.default_rng(seed).choice(total, size, replace=False))
    groups = layout.order(seed, 0, shuffle=False)
    before = np.concatenate([[0], np.cumsum(layout.counts[groups])])
    parts, fragments = [], {}
    for i in range(len(groups)):
        lo, hi = np.searchsorted(picked, [before[i], before[i + 1]])
        if lo == hi:
            continue
        wanted, offset = picked[lo:hi] - before[i], 0
        for table in layout.read(groups[i : i + 1], 0, fragments):
            mine = wanted[(wanted >= offset) & (wanted < offset + table.num_rows)] - offset
            if len(mine):
                parts.append(table.take(pa.array(mine)))
            offset += table.num_rows
    sample = as_frame(concat(parts).drop(["__row__"]), layout.kinds)
    log.info(
        "Preprocessing fitted on a seeded sample of %s of the %s training rows (data.fit_sample_rows=%s).",
        f"{size:,}",
        f"{total:,}",
        f"{data.fit_sample_rows:,}",
    )
    preprocessor = Preprocessor.fit_data(sample, data, encoder)
    for encoding in preprocessor.targets:
        if encoding.type == CLASSIFICATION:
            counts = layout.shards.classes["train"][encoding.name]
            encoding.classes = _class_names(pd.Series(list(counts), dtype=object))
    return preprocessor


@dataclass
class StreamedData:
    """A directory of shards, scanned and with its preprocessing fitted: what ``seo-train`` needs of it."""

    config: DataConfig
    preprocessor: Preprocessor
    layouts: dict[str, Layout]
    class_counts: dict[str, list[int]]
    sample_rows: int

    def batches(self, split: str, **kwargs: Any) -> ParquetBatches:
        num_workers, pin_memory = kwargs.pop("num_workers"), kwargs.pop("pin_memory")
        stream = ShardStream(self.layouts[split], self.preprocessor, **kwargs)
        return ParquetBatches(stream, num_workers, pin_memory, kwargs["seed"])

    def rows(self, split: str) -> int:
        return int(self.layouts[split].counts.sum())


def prepare_stream(data: DataConfig, seed: int) -> StreamedData:
    """Scan and check the shards, check the splits' classes, and fit the preprocessing on a sample.

    Raises:
        UserError: a bad file or value (``scan_shards``), an empty split, a classification target with one
            class or too many, or a class of val/test never seen in training.
    """
    from seo_cli.pretrained import encoder_files

    log.info(
        "Scanning the Parquet shards under %s: schemas, and the values of the split, target and numeric columns",
        data.path,
    )
    layouts = layouts_of(data)
    rows = {s: int(layouts[s].counts.sum()) for s in SPLITS}
    log.info(
        "Data: Parquet shards under %s: train %s, val %s, test %s rows (streamed)",
        data.path,
        *(f"{rows[s]:,}" for s in SPLITS),
    )
    for s in SPLITS:
        if rows[s] == 0:
            where = (
                f"data.split_column {data.split_column!r}"
                if data.split_column
                else f"data.{'path' if s == 'train' else s + '_path'}"
            )
            raise UserError(
                f"the {s} split of {layouts[s].shards.directory} is empty; add {s} rows ({where})."
            )
    check_classes(layouts, data)
    train = layouts["train"].shards.classes["train"]
    preprocessor = fit_preprocessing(
        layouts["train"],
        data,
        seed,
        encoder_files(data.tokenizer) if data.tokenizer and data.text_columns else None,
    )
    class_counts = {
        t.name: [train[t.name].get(c, 0) for c in t.classes]
        for t in preprocessor.targets
        if t.type == CLASSIFICATION
    }
    # Buffers pyarrow's allocator keeps for reuse after the scan and the sample (about 150 MB at 250,000
    # rows) would be inherited by every DataLoader worker forked from this process.
    pa.default_memory_pool().release_unused()
    return StreamedData(data, preprocessor, layouts, class_counts, min(data.fit_sample_rows, rows["train"]))
