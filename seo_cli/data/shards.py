"""Directories of Parquet shards: found, checked and counted without being read whole.

``scan_shards`` checks every file's schema against the column mapping (files are untrusted, as table
files are) and reads the split column, the targets and the numeric columns once, row group by row group:
values are checked there (one sentence naming file, column and row), and each row group's usable rows per
split and the classes of every target are counted. Text is not read in this pass. ``Layout.read`` then
yields one split's rows from any row of any order of the row groups, ``READ_ROWS`` at a time.

Plain pyarrow, numpy and pandas: ``seo-predict backend=onnx`` reads shards without importing torch.
"""

import logging
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

from seo_cli.config import DataConfig
from seo_cli.data.preprocess import as_text_values
from seo_cli.data.spec import CLASSIFICATION, Target
from seo_cli.data.tables import MAX_COLUMNS, NA_TOKENS
from seo_cli.errors import UserError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
READ_ROWS = 8192  # rows per record batch decoded from a row group: the reading's memory, a few MB


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
        # Types of one kind may differ (string and large_string, int32 and int64: writers differ, and each
        # shard is read with its own schema); numbers in one shard and text in another would turn the
        # label or category 7 into "7" here and "7.0" or "007" there.
        if first is not None and _kind(first[1].field(column).type) != kind:
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
                table = plain(pa.Table.from_batches([batch]))
                _check_values(table, data, targets, path, at, split)
                for s, name in enumerate(SPLITS):
                    if split is None or name == split:
                        keep = usable(table, shards, name, targets, data.split_column)
                        count[s] += int(keep.sum())
                        count_classes(table, keep, targets, classes[name], seen_at[name], (path, at), data)
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


def count_classes(
    table: pa.Table,
    keep: np.ndarray,
    targets: list[Target],
    classes: dict[str, dict[str, int]],
    seen_at: dict[str, dict[str, tuple[Path, int]]],
    where: tuple[Path, int],
    data: DataConfig,
) -> None:
    """Add the classes of the ``keep`` rows of ``table`` (file rows ``where[1]`` on) to ``classes``, and
    where each class is first seen to ``seen_at``.

    Raises:
        UserError: a target with more than ``data.max_classes`` classes, as soon as it has them.
    """
    path, at = where
    for t in targets:
        if t.type != CLASSIFICATION or not keep.any():
            continue
        labels = as_text_values(table.column(t.name).filter(pa.array(keep)).to_pandas())
        counts = classes[t.name]
        for label, n in labels.value_counts().items():
            if label not in counts:
                first = np.flatnonzero(labels.to_numpy() == label)[0]
                seen_at[t.name][label] = (path, at + int(np.flatnonzero(keep)[first]))
            counts[label] = counts.get(label, 0) + int(n)
        if len(counts) > data.max_classes:  # refused before it holds them all
            raise UserError(
                f"classification target {t.name!r} has more than data.max_classes={data.max_classes:,} classes "
                f"(by row {at + table.num_rows} of {path}); check that it is a label (or declare it type: "
                "regression), or raise data.max_classes."
            )


def plain(table: pa.Table) -> pa.Table:
    """``table`` with its dictionary-encoded columns decoded: shards written by different writers then join."""
    for i, column in enumerate(table.columns):
        if pa.types.is_dictionary(column.type):
            table = table.set_column(i, table.field(i).name, column.cast(column.type.value_type))
    return table


def concat(tables: list[pa.Table]) -> pa.Table:
    """Tables of rows of several shards as one: a column's type may differ between shards within a kind
    (``string`` and ``large_string``, ``int32`` and ``int64``, integers and floats), so types are promoted."""
    return pa.concat_tables(tables, promote_options="permissive")


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
                table = plain(pa.Table.from_batches([batch]))
                keep = usable(table, self.shards, self.split, self.targets, self.split_column)
                ids = np.arange(row_id, row_id + table.num_rows, dtype=np.int64)
                row_id += table.num_rows
                table = table.append_column("__row__", pa.array(ids)).filter(pa.array(keep))
                if skip:
                    cut = min(skip, table.num_rows)
                    table, skip = table.slice(cut), skip - cut
                if table.num_rows:
                    yield table


def head_frame(layout: Layout, rows: int) -> pd.DataFrame:
    """The first ``rows`` rows of ``layout``'s split in file order, as the frame ``Preprocessor`` reads."""
    parts, have = [], 0
    for table in layout.read(layout.order(0, 0, shuffle=False), 0, {}):
        parts.append(table.slice(0, rows - have))
        have += parts[-1].num_rows
        if have >= rows:
            break
    return as_frame(concat(parts).drop(["__row__"]), layout.kinds) if parts else pd.DataFrame()


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
