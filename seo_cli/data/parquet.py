"""Parquet shards larger than memory: a directory of ``.parquet`` files streamed through training,
validation and ``seo-eval`` in batches of rows, never read whole.

    seo-train data=parquet_dir data.path=crawl/ data.split_column=split ...
    seo-train data=parquet_dir data.path=crawl/train data.val_path=crawl/val data.test_path=crawl/test ...

What is held in memory is bounded by the knobs, not by the rows: the shards' footers, one count per row
group, the preprocessing sample (``data.fit_sample_rows``) and, per DataLoader worker, one shuffle window
(``data.shuffle_buffer`` rows) with the record batch being decoded.

1. ``scan_shards`` checks every file's schema against the column mapping (the files are untrusted, as
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
   starts there, decoding only the row groups of that window, not the epoch's earlier rows.
"""

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from seo_cli.config import DataConfig
from seo_cli.data.batches import TokenPadding, cut_tokens
from seo_cli.data.preprocess import Preprocessor, _class_names, as_text_values
from seo_cli.data.spec import CLASSIFICATION, Target
from seo_cli.data.tables import MAX_COLUMNS, NA_TOKENS
from seo_cli.errors import UserError
from seo_cli.runtime import seed_worker

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
READ_ROWS = 8192  # rows per record batch decoded from a row group: the reading's memory, a few MB
EVAL_WINDOW = 16384  # rows read together in an unshuffled (evaluation) stream
PREPROCESS_BATCHES = 8  # batches tokenized together in a worker


def is_parquet_dir(data: Any) -> bool:
    """``data.source=parquet_dir``, or ``data.source=file`` with ``data.path`` a directory."""
    if str(data.source) == "parquet_dir":
        return True
    return str(data.source) == "file" and bool(data.path) and Path(data.path).is_dir()


def targets_of(data: DataConfig) -> list[Target]:
    return [Target(t.name, str(t.type)) for t in data.targets]


def mapped_columns(data: DataConfig) -> dict[str, str]:
    """Every column the config reads, with the key that names it."""
    columns = {}
    for key in ("text_columns", "numeric_columns", "categorical_columns"):
        columns |= {c: f"data.{key}" for c in getattr(data, key)}
    columns |= {t.name: "data.targets" for t in data.targets}
    if data.split_column:
        columns[data.split_column] = "data.split_column"
    return columns


@dataclass
class Shards:
    """The row groups of one directory of shards, in file order, with their usable rows per split.

    ``counts[i, s]``: rows of row group ``i`` that belong to split ``SPLITS[s]`` and have every target
    (rows without one are skipped under ``data.missing=impute``; ``error`` refused them in the scan).
    """

    directory: str
    split: str | None  # the split every row belongs to (a directory per split); None: data.split_column says
    paths: list[str]  # the files, sorted
    file: np.ndarray  # per row group: index into paths
    row_group: np.ndarray  # per row group: its number in its file
    file_row: np.ndarray  # per row group: the file's row number of its first row (0-based)
    first_row: np.ndarray  # per row group: the row id of its first row (rows of the files before it)
    counts: np.ndarray  # [row groups, 3]: usable rows per split
    classes: dict[str, dict[str, dict[str, int]]] = field(
        default_factory=dict
    )  # split -> target -> class -> rows
    seen_at: dict[str, dict[str, dict[str, tuple[Path, int]]]] = field(
        default_factory=dict
    )  # where each class is first

    def rows(self, split: str) -> int:
        return int(self.counts[:, SPLITS.index(split)].sum())


def shard_files(directory: str, key: str) -> list[Path]:
    """The ``.parquet`` files under ``directory`` (recursively, hidden and ``_`` files left out), sorted.

    Raises:
        UserError: the directory is missing, a file, or holds no ``.parquet`` file.
    """
    path = Path(directory)
    if not path.is_dir():
        what = "is a file, not a directory" if path.exists() else "does not exist"
        raise UserError(f"{key}={directory} {what}; give a directory of .parquet shards.")
    files = sorted(
        p
        for p in path.rglob("*.parquet")
        if p.is_file() and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
    )
    if not files:
        raise UserError(f"{key}={directory} holds no .parquet files; give a directory of Parquet shards.")
    return files


def _fragment(path: str) -> ds.ParquetFileFragment:
    return ds.ParquetFileFormat().make_fragment(path, filesystem=pafs.LocalFileSystem())


def _kind(dtype: pa.DataType) -> str:
    """What a column's Arrow type holds: number, text, nested, or other."""
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    if (
        pa.types.is_integer(dtype)
        or pa.types.is_floating(dtype)
        or pa.types.is_boolean(dtype)
        or pa.types.is_decimal(dtype)
    ):
        return "number"
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return "text"
    if pa.types.is_nested(dtype):
        return "nested"
    return "other"


def check_schema(
    path: Path, schema: pa.Schema, data: DataConfig, key: str, first: tuple[Path, pa.Schema] | None
) -> None:
    """One shard's schema against the column mapping and against the first shard's.

    Raises:
        UserError: too many columns, a name twice, a mapped column missing, nested or of the wrong kind,
            or typed otherwise than in the first shard; naming the file, the column and the fix.
    """
    names = schema.names
    if len(names) > MAX_COLUMNS:
        raise UserError(
            f"{path} has {len(names):,} columns, more than the {MAX_COLUMNS:,} seo-cli reads "
            "(seo_cli.data.tables.MAX_COLUMNS); write the shards with the columns the model uses."
        )
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"{path} names column {twice[0]!r} more than once; write each column once.")
    regression = {t.name for t in data.targets if str(t.type) != CLASSIFICATION}
    for column, role in mapped_columns(data).items():
        if column not in names:
            raise UserError(
                f"{role} names column {column!r}, which {path} ({key}) does not have; its columns are: "
                f"{', '.join(names)}."
            )
        dtype = schema.field(column).type
        kind = _kind(dtype)
        if kind == "nested":
            raise UserError(
                f"column {column!r} of {path} is of type {dtype}, not a single text, number or label; flatten it "
                "into plain columns (join a list of keywords into one text cell, say)."
            )
        if (role == "data.numeric_columns" or column in regression) and kind != "number":
            numeric = role == "data.numeric_columns"
            raise UserError(
                f"{'numeric column' if numeric else 'regression target'} {column!r} of {path} is of type {dtype}, "
                "not numbers; store numbers in it, or "
                + ("move it to data.categorical_columns." if numeric else "make it a classification target.")
            )
        if role == "data.split_column" and kind != "text":
            raise UserError(
                f"data.split_column {column!r} of {path} is of type {dtype}; store the text train, val or test in it."
            )
        if first is not None and first[1].field(column).type != dtype:
            raise UserError(
                f"column {column!r} is of type {dtype} in {path} but {first[1].field(column).type} in {first[0]}; "
                "write every shard with one schema."
            )


def target_missing(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """True where a target cell is empty: null, NaN, or text such as "" or "n/a" (as in table files)."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    missing = pc.is_null(column, nan_is_null=True)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        words = pc.utf8_lower(pc.utf8_trim_whitespace(column))
        missing = pc.or_(
            missing, pc.fill_null(pc.is_in(words, value_set=pa.array(sorted(NA_TOKENS | {""}))), False)
        )
    return np.asarray(missing.to_numpy(zero_copy_only=False), dtype=bool)


def split_values(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The split column as lower-case stripped text (object array; "" for null)."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    words = pc.fill_null(pc.utf8_lower(pc.utf8_trim_whitespace(column)), "")
    return np.asarray(words.to_numpy(zero_copy_only=False), dtype=object)


def usable(
    table: pa.Table, shards: Shards, split: str, targets: list[Target], split_column: str | None
) -> np.ndarray:
    """Which rows of ``table`` (read from ``shards``) are rows of ``split`` with every target."""
    keep = np.ones(table.num_rows, dtype=bool)
    if shards.split is not None:
        keep[:] = shards.split == split
    else:
        keep &= split_values(table.column(split_column)) == split
    for target in targets:
        keep &= ~target_missing(table.column(target.name))
    return keep


def scan_shards(directory: str, key: str, data: DataConfig, split: str | None) -> Shards:
    """Check and count the shards under ``directory`` (named by ``key``) in one pass of bounded memory.

    Args:
        split: the split every row belongs to (``data.val_path`` holds val rows); None: ``data.split_column``.

    Raises:
        UserError: an unreadable file, a schema the mapping does not fit, or a bad value, naming the file,
            the column, the row and the fix.
    """
    files = shard_files(directory, key)
    targets = targets_of(data)
    columns = list(
        dict.fromkeys(
            [
                *([data.split_column] if split is None else []),
                *(t.name for t in targets),
                *data.numeric_columns,
            ]
        )
    )
    first: tuple[Path, pa.Schema] | None = None
    file_index, groups, file_rows, first_rows, counts = [], [], [], [], []
    classes: dict[str, dict[str, dict[str, int]]] = {
        s: {t.name: {} for t in targets if t.type == CLASSIFICATION} for s in SPLITS
    }
    seen_at: dict[str, dict[str, dict[str, tuple[Path, int]]]] = {
        s: {t.name: {} for t in targets} for s in SPLITS
    }
    row_id = 0
    shards = Shards(
        directory, split, [str(p) for p in files], *(np.zeros(0, np.int64),) * 4, np.zeros((0, 3), np.int64)
    )
    for index, path in enumerate(files):
        try:
            fragment = _fragment(str(path))
            schema = fragment.physical_schema
            metadata = fragment.metadata
        except (pa.ArrowException, OSError) as err:
            raise UserError(
                f"cannot read {path} as Parquet: {_first_line(err)}; check the file, or remove it from {key}."
            ) from None
        check_schema(path, schema, data, key, first)
        first = first or (path, schema)
        file_row = 0
        for group in range(metadata.num_row_groups):
            group_rows = metadata.row_group(group).num_rows
            count = np.zeros(3, np.int64)
            at = file_row
            for batch in _read(fragment, group, columns, threads=True, path=path):
                table = pa.Table.from_batches([batch])
                _check_values(table, data, targets, path, at, split)
                for s, name in enumerate(SPLITS):
                    if split is not None and name != split:
                        continue
                    keep = usable(table, shards, name, targets, data.split_column)
                    count[s] += int(keep.sum())
                    for t in targets:
                        if t.type != CLASSIFICATION or not keep.any():
                            continue
                        labels = as_text_values(table.column(t.name).filter(pa.array(keep)).to_pandas())
                        for label, n in labels.value_counts().items():
                            table_counts = classes[name][t.name]
                            if label not in table_counts:
                                row = at + int(
                                    np.flatnonzero(keep)[np.flatnonzero(labels.to_numpy() == label)[0]]
                                )
                                seen_at[name][t.name][label] = (path, row)
                            table_counts[label] = table_counts.get(label, 0) + int(n)
                        if len(classes[name][t.name]) > data.max_classes:  # refused before it holds them all
                            raise UserError(
                                f"classification target {t.name!r} has more than data.max_classes="
                                f"{data.max_classes:,} classes (by row {at + table.num_rows} of {path}); check that "
                                "it is a label (or declare it type: regression), or raise data.max_classes."
                            )
                at += table.num_rows
            file_index.append(index)
            groups.append(group)
            file_rows.append(file_row)
            first_rows.append(row_id)
            counts.append(count)
            file_row += group_rows
            row_id += group_rows
    shards.file = np.asarray(file_index, np.int64)
    shards.row_group = np.asarray(groups, np.int64)
    shards.file_row = np.asarray(file_rows, np.int64)
    shards.first_row = np.asarray(first_rows, np.int64)
    shards.counts = np.asarray(counts, np.int64).reshape(-1, 3)
    shards.classes = {s: c for s, c in classes.items() if split is None or s == split}
    shards.seen_at = seen_at
    return shards


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def _read(
    fragment: ds.ParquetFileFragment, group: int, columns: list[str], threads: bool, path: Any
) -> Iterator[pa.RecordBatch]:
    """The rows of one row group, ``READ_ROWS`` at a time (pyarrow's scanner over the fragment's subset).

    Raises:
        UserError: the row group cannot be decoded (a damaged file).
    """
    try:
        piece = fragment.subset(row_group_ids=[group])
        yield from piece.to_batches(columns=columns, batch_size=READ_ROWS, use_threads=threads)
    except pa.ArrowException as err:
        raise UserError(
            f"cannot read row group {group} of {path}: {_first_line(err)}; check the file."
        ) from None


def _check_values(
    table: pa.Table, data: DataConfig, targets: list[Target], path: Path, at: int, split: str | None
) -> None:
    """The values of one batch of scanned rows (file rows ``at`` onwards).

    Raises:
        UserError: a split value other than train/val/test, an empty target or numeric cell under
            ``data.missing=error``, an infinite number; naming the file, column and row.
    """

    def row(mask: np.ndarray) -> str:
        return f"row {at + int(np.flatnonzero(mask)[0]) + 1} of {path}"

    if split is None:
        values = split_values(table.column(data.split_column))
        bad = ~np.isin(values, SPLITS)
        if bad.any():
            raise UserError(
                f"data.split_column {data.split_column!r} holds {values[bad][0]!r} at {row(bad)}; its values must "
                "be train, val or test."
            )
    for target in targets:
        column = table.column(target.name)
        empty = target_missing(column)
        if empty.any() and str(data.missing) == "error":
            raise UserError(
                f"target {target.name!r} is empty at {row(empty)}; fill it in, or set data.missing=impute to skip "
                "rows without a target."
            )
        if target.type != CLASSIFICATION:
            values = _floats(column)
            bad = ~np.isfinite(values) & ~empty
            if bad.any():
                raise UserError(
                    f"regression target {target.name!r} holds {values[bad][0]} at {row(bad)}; replace it with a "
                    "finite number."
                )
    for name in data.numeric_columns:
        values = _floats(table.column(name))
        empty = np.isnan(values)
        if empty.any() and str(data.missing) == "error":
            raise UserError(
                f"numeric column {name!r} is empty at {row(empty)}; fill it in, or set data.missing=impute to use "
                "the training median."
            )
        infinite = np.isinf(values)
        if infinite.any():
            raise UserError(
                f"numeric column {name!r} holds {values[infinite][0]} at {row(infinite)}; replace it with a finite number."
            )


def _floats(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A numeric column as float64, NaN where null."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    return np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


def as_frame(table: pa.Table, data_columns: dict[str, list[str]]) -> pd.DataFrame:
    """Rows as the frame ``Preprocessor`` reads: numeric columns as float64 with NaN (booleans and
    decimals too), the others as pandas reads Parquet."""
    numeric = set(data_columns["numeric"]) | set(data_columns["regression"])
    arrays = {}
    for name in table.column_names:
        column = table.column(name)
        arrays[name] = _floats(column) if name in numeric else column.to_pandas()
    return pd.DataFrame(arrays)


@dataclass
class Layout:
    """Where one split's rows are: its shards and the column mapping, all plain data (sent to workers)."""

    shards: Shards
    split: str
    columns: list[str]  # the columns decoded for a batch
    targets: list[Target]
    split_column: str | None
    kinds: dict[str, list[str]]  # "numeric" and "regression" columns

    @property
    def counts(self) -> np.ndarray:
        return self.shards.counts[:, SPLITS.index(self.split)]

    def __len__(self) -> int:
        return int(self.counts.sum())

    def order(self, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
        """The row groups holding rows of the split, in the epoch's order: the files in an order drawn from
        ``(seed, epoch)`` and the row groups of each file in a drawn order; file order without ``shuffle``."""
        groups = np.flatnonzero(self.counts > 0)
        if not shuffle:
            return groups
        rng = np.random.default_rng([seed, epoch])
        files = rng.permutation(len(self.shards.paths))
        order = []
        for f in files:
            mine = groups[self.shards.file[groups] == f]
            order.append(mine[rng.permutation(len(mine))])
        return np.concatenate(order) if order else groups

    def read(self, groups: np.ndarray, start: int, fragments: dict) -> Iterator[pa.Table]:
        """The split's rows from row ``start`` of the row groups ``groups`` (in that order), with their row
        ids in a ``__row__`` column, as tables of at most ``READ_ROWS`` rows."""
        counts = self.counts[groups]
        before = np.concatenate([[0], np.cumsum(counts)])
        first = int(np.searchsorted(before, start, side="right")) - 1
        skip = start - int(before[first]) if first < len(groups) else 0
        for g in groups[first:]:
            path = self.shards.paths[self.shards.file[g]]
            if path not in fragments:
                fragments.clear()  # one open file per worker at a time
                fragments[path] = _fragment(path)
            row_id = int(self.shards.first_row[g])
            for batch in _read(
                fragments[path], int(self.shards.row_group[g]), self.columns, threads=False, path=path
            ):
                table = pa.Table.from_batches([batch])
                keep = usable(table, self.shards, self.split, self.targets, self.split_column)
                ids = np.arange(row_id, row_id + table.num_rows, dtype=np.int64)
                row_id += table.num_rows
                table = table.append_column("__row__", pa.array(ids)).filter(pa.array(keep))
                if skip:
                    cut = min(skip, table.num_rows)
                    table, skip = table.slice(cut), skip - cut
                if table.num_rows:
                    yield table


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
        return pa.concat_tables(parts) if parts else None


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
        return (
            f"{shards.paths[shards.file[g]]} row group {int(shards.row_group[g])}, its {self.layout.split} row "
            f"{start - int(before[np.flatnonzero(groups == g)[0]])}: shuffle window {window} (seed "
            f"[{self.seed}, {self.epoch}, {self.rank}, {window}]), batch row {row - window * self.window}"
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
                yield from self._batches([pa.concat_tables(pending.pop(j)) for j in group])

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
        rows = pa.concat_tables(tables)
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
    sample = as_frame(pa.concat_tables(parts).drop(["__row__"]), layout.kinds)
    log.info(
        "Preprocessing fitted on a seeded sample of %s of the %s training rows (data.fit_sample_rows=%s).",
        f"{size:,}",
        f"{total:,}",
        f"{data.fit_sample_rows:,}",
    )
    preprocessor = Preprocessor.fit(
        sample,
        text_columns=list(data.text_columns),
        numeric_columns=list(data.numeric_columns),
        categorical_columns=list(data.categorical_columns),
        targets=targets_of(data),
        max_length=data.max_length,
        vocab_size=data.vocab_size,
        numeric_scaling=data.numeric_scaling,
        encoder=encoder,
    )
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


def layout_of(shards: Shards, split: str, data: DataConfig) -> Layout:
    """``split``'s rows of scanned ``shards``, read with the column mapping of ``data``."""
    regression = [t.name for t in data.targets if str(t.type) != CLASSIFICATION]
    return Layout(
        shards,
        split,
        list(mapped_columns(data)),
        targets_of(data),
        data.split_column if shards.split is None else None,
        {"numeric": list(data.numeric_columns), "regression": regression},
    )


def layouts_of(data: DataConfig, splits: tuple[str, ...] = SPLITS) -> dict[str, Layout]:
    """Scan the shards of ``data`` (one directory and its split column, or a directory per split)."""
    if data.split_column:
        shards = scan_shards(data.path, "data.path", data, None)
        return {s: layout_of(shards, s, data) for s in splits}
    keys = {"train": ("data.path", data.path), "val": ("data.val_path", data.val_path)}
    keys["test"] = ("data.test_path", data.test_path)
    return {s: layout_of(scan_shards(keys[s][1], keys[s][0], data, s), s, data) for s in splits}


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


def check_classes(layouts: dict[str, Layout], data: DataConfig) -> None:
    """Raises:
    UserError: a classification target with one class or more than ``data.max_classes`` in training, or a
        class of the val or test split that training never has.
    """
    train = layouts["train"].shards.classes["train"]
    for target in targets_of(data):
        if target.type != CLASSIFICATION:
            continue
        classes = train[target.name]
        if len(classes) > data.max_classes:
            raise UserError(
                f"classification target {target.name!r} has {len(classes):,} classes in the training rows, more than "
                f"data.max_classes={data.max_classes:,}; check that it is a label (or declare it type: regression), "
                "or raise data.max_classes."
            )
        if len(classes) < 2:
            raise UserError(
                f"classification target {target.name!r} has a single class ({next(iter(classes))!r}) in the training "
                "rows; a classifier needs at least two: check the column, or declare it type: regression."
            )
        for name in ("val", "test"):
            shards = layouts[name].shards
            for label in shards.classes[name][target.name]:
                if label not in classes:
                    path, row = shards.seen_at[name][target.name][label]
                    raise UserError(
                        f"class {label!r} of target {target.name!r} is in the {name} split (row {row + 1} of {path}) "
                        "but never in the training rows, so the model cannot learn it; add training rows of it, or "
                        "remove those rows."
                    )
