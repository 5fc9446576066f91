"""From a data config to tensors: read or generate the rows, check them, split them, preprocess them."""

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split
from torch import Tensor

from seo_cli.config import DataConfig
from seo_cli.data import seo_pages
from seo_cli.data.preprocess import Preprocessor, as_text_values
from seo_cli.data.spec import CLASSIFICATION, Target
from seo_cli.data.tables import Source, read_table
from seo_cli.errors import UserError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# Words that mean "no value" in exported tables; pandas would read them as text in an object column.
NA_TOKENS = {"na", "n/a", "nan", "null", "none"}


@dataclass
class SplitTensors:
    inputs: dict[str, Tensor]
    targets: dict[str, Tensor]

    def __len__(self) -> int:
        return len(next(iter(self.targets.values())))


def targets_of(data: DataConfig) -> list[Target]:
    return [Target(t.name, t.type) for t in data.targets]


def load_frame(data: DataConfig, seed: int, path: str | None = None) -> tuple[pd.DataFrame, Source]:
    """The rows of the dataset (or of the file ``path``), checked against the column mapping, and their source.

    Numeric columns come back as floats, with NaN where a value is missing; "NA", "null" and the like
    count as missing in numeric and target columns (in text columns they are text).
    """
    if data.source == "seo_pages":
        return seo_pages.generate_seo_pages(num_rows=data.num_rows, seed=seed), Source(
            "the seo_pages dataset"
        )
    frame, source = read_table(path or data.path, data.format, list(data.column_names), data.encoding)
    _check_columns(frame, data, source)
    return frame, source


def _first(mask: pd.Series | np.ndarray) -> int:
    """Position of the first True: the row a message names."""
    return int(np.flatnonzero(np.asarray(mask))[0])


def _missing(column: pd.Series) -> pd.Series:
    """True where a cell is empty or holds a missing-value word."""
    if pd.api.types.is_numeric_dtype(column):
        return column.isna()
    as_text = column.astype(str).str.strip().str.lower()
    return column.isna() | as_text.isin(NA_TOKENS) | as_text.eq("")


def _check_columns(frame: pd.DataFrame, data: DataConfig, source: Source) -> None:
    mapped = [
        ("data.text_columns", data.text_columns),
        ("data.numeric_columns", data.numeric_columns),
        ("data.categorical_columns", data.categorical_columns),
        ("data.targets", [t.name for t in data.targets]),
        ("data.split_column", [data.split_column] if data.split_column else []),
    ]
    for key, columns in mapped:
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise UserError(
                f"{key} names column {missing[0]!r}, which {source} does not have; "
                f"its columns are: {', '.join(map(str, frame.columns))}."
            )
    for col in data.numeric_columns:
        empty = _missing(frame[col])
        values = pd.to_numeric(frame[col].mask(empty), errors="coerce")
        bad = values.isna() & ~empty
        if bad.any():
            row = _first(bad)
            raise UserError(
                f"numeric column {col!r} of {source} holds the non-numeric value {frame[col].iloc[row]!r} "
                f"at {source.row(row)}; fix the value or move the column to data.categorical_columns."
            )
        if empty.all():
            raise UserError(
                f"numeric column {col!r} of {source} has no values; fill it in or remove it from data.numeric_columns."
            )
        if empty.any() and data.missing == "error":
            row = _first(empty)
            raise UserError(
                f"numeric column {col!r} of {source} is empty at {source.row(row)}; fill it in, or set "
                "data.missing=impute to use the training median."
            )
        infinite = np.isinf(values.to_numpy(dtype=np.float64))
        if infinite.any():
            row = _first(infinite)
            raise UserError(
                f"numeric column {col!r} of {source} holds {str(frame[col].iloc[row])!r} at {source.row(row)}; "
                "replace it with a finite number."
            )
        frame[col] = values.astype(np.float64)
    for col in data.text_columns:
        if frame[col].fillna("").astype(str).str.strip().eq("").all():
            raise UserError(
                f"text column {col!r} of {source} is empty in every row; check the column, or remove it "
                "from data.text_columns."
            )
    for target in data.targets:
        empty = _missing(frame[target.name])
        if empty.all():
            raise UserError(
                f"target {target.name!r} of {source} is empty in every row; check the column name and the file."
            )
        if empty.any() and data.missing == "error":
            row = _first(empty)
            raise UserError(
                f"target {target.name!r} of {source} is empty at {source.row(row)}; fill it in, or set "
                "data.missing=impute to skip rows without a target."
            )
        frame[target.name] = frame[target.name].mask(empty)
        if target.type != CLASSIFICATION:
            # Caught here so the message names the row, not a float conversion deep in preprocessing.
            values = pd.to_numeric(frame[target.name], errors="coerce").to_numpy(dtype=np.float64)
            bad = ~np.isfinite(values) & ~empty.to_numpy()
            if bad.any():
                row = _first(bad)
                raise UserError(
                    f"regression target {target.name!r} of {source} holds the non-numeric or infinite value "
                    f"{frame[target.name].iloc[row]!r} at {source.row(row)}; fix the value or make it a "
                    "classification target."
                )
            frame[target.name] = values


def _drop_rows_without_target(frame: pd.DataFrame, data: DataConfig, source: Source) -> pd.DataFrame:
    """Rows with an empty target cannot be trained on or scored: drop them, and say how many and why."""
    keep = np.ones(len(frame), dtype=bool)
    for target in data.targets:
        empty = frame[target.name].isna().to_numpy()
        if (empty & keep).any():
            log.warning(
                "Skipping %d rows of %s: target %r is empty.", int((empty & keep).sum()), source, target.name
            )
        keep &= ~empty
    return frame[keep]


def split_rows(
    frame: pd.DataFrame, data: DataConfig, seed: int, where: Source | str, with_test: bool = True
) -> dict[str, np.ndarray]:
    """Row positions of the train, val and (``with_test``) test splits.

    A ``data.split_column`` decides when given; otherwise a seeded random split by the fractions,
    stratified on the first classification target so rare classes appear in every split.
    """
    positions = np.arange(len(frame))
    names = SPLITS if with_test else SPLITS[:2]
    if data.split_column:
        column = as_text_values(frame[data.split_column]).str.strip().str.lower()
        unknown = sorted(set(column) - set(names))
        if unknown:
            row = _first(column.to_numpy() == unknown[0])
            at = where.row(int(frame.index[row])) if isinstance(where, Source) else f"row {row + 1}"
            raise UserError(
                f"data.split_column {data.split_column!r} of {where} holds {unknown[0]!r} at {at}; "
                f"its values must be {', '.join(names[:-1])} or {names[-1]}."
            )
        return {name: positions[(column == name).to_numpy()] for name in names}
    stratify_on = next((t.name for t in data.targets if t.type == CLASSIFICATION), None)
    labels = as_text_values(frame[stratify_on]).to_numpy() if stratify_on else None
    held_out = data.val_fraction + data.test_fraction if with_test else data.val_fraction
    try:
        train, rest = train_test_split(positions, test_size=held_out, random_state=seed, stratify=labels)
        if not with_test:
            return {"train": np.sort(train), "val": np.sort(rest)}
        rest_labels = labels[rest] if labels is not None else None
        val, test = train_test_split(
            rest, test_size=data.test_fraction / held_out, random_state=seed, stratify=rest_labels
        )
    except ValueError as err:
        if labels is None:
            raise UserError(
                f"cannot split the {len(frame)} rows of {where} by data.val_fraction and data.test_fraction "
                f"({err}); add rows, change the fractions, or give data.split_column."
            ) from err
        counts = pd.Series(labels).value_counts()
        raise UserError(
            f"cannot split the {len(frame)} rows of {where} into train/val/test stratified on target "
            f"{stratify_on!r}: class {counts.index[-1]!r} has only {counts.iloc[-1]} rows; add rows of it, "
            "or give data.split_column."
        ) from err
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


@dataclass
class PreparedData:
    preprocessor: Preprocessor
    splits: dict[str, SplitTensors]


def load_splits(data: DataConfig, seed: int) -> dict[str, tuple[pd.DataFrame, Source]]:
    """The rows of each split, with their source; the frames keep the file's row numbers as their index.

    With ``data.test_path`` its rows are the test split and ``data.path`` is split into train and val.
    """
    frame, source = load_frame(data, seed)
    read = len(frame)
    frame = _drop_rows_without_target(frame, data, source)
    test = None
    if data.test_path:
        test_frame, test_source = load_frame(data, seed, data.test_path)
        read += len(test_frame)
        test = (_drop_rows_without_target(test_frame, data, test_source), test_source)
    rows = split_rows(frame, data, seed, source, with_test=test is None)
    splits = {name: (frame.iloc[rows[name]], source) for name in rows}
    if test is not None:
        splits["test"] = test
    used = sum(len(f) for f, _ in splits.values())
    log.info(
        "Data: %d rows read from %s%s; %d used, %d skipped -> train %d, val %d, test %d",
        read,
        source,
        f" and {data.test_path}" if data.test_path else "",
        used,
        read - used,
        *(len(splits[name][0]) for name in SPLITS),
    )
    for name in SPLITS:
        if len(splits[name][0]) == 0:
            fix = f"raise data.{name}_fraction or add rows" if not data.split_column else f"add {name} rows"
            raise UserError(f"the {name} split of {source} is empty; {fix}.")
    return splits


def prepare_data(data: DataConfig, seed: int) -> PreparedData:
    """Read, check and split the rows, fit preprocessing on the training split, and tensorize every split."""
    splits = load_splits(data, seed)
    train_frame, train_source = splits["train"]
    for target in targets_of(data):
        if target.type != CLASSIFICATION:
            continue
        if train_frame[target.name].nunique() < 2:
            raise UserError(
                f"classification target {target.name!r} has a single class "
                f"({train_frame[target.name].iloc[0]!r}) in the training split of {train_source}; a classifier "
                "needs at least two: check the column, or declare it type: regression."
            )
        trained = set(as_text_values(train_frame[target.name]))
        for name in ("val", "test"):
            frame, source = splits[name]
            unseen = ~as_text_values(frame[target.name]).isin(trained)
            if unseen.any():
                row = int(frame.index[np.flatnonzero(unseen.to_numpy())[0]])
                raise UserError(
                    f"class {frame[target.name].loc[row]!r} of target {target.name!r} is in the {name} split "
                    f"({source}, {source.row(row)}) but never in the training split, so the model cannot learn "
                    "it; add training rows of it, or remove those rows."
                )
    preprocessor = Preprocessor.fit(
        train_frame,
        text_columns=list(data.text_columns),
        numeric_columns=list(data.numeric_columns),
        categorical_columns=list(data.categorical_columns),
        targets=targets_of(data),
        max_length=data.max_length,
        vocab_size=data.vocab_size,
        numeric_scaling=data.numeric_scaling,
    )
    tensors = {name: tensorize(preprocessor, frame, name) for name, (frame, _) in splits.items()}
    return PreparedData(preprocessor=preprocessor, splits=tensors)


def load_split(data: DataConfig, seed: int, preprocessor: Preprocessor, split: str) -> SplitTensors:
    """One split of the dataset a checkpoint was trained on, encoded with that checkpoint's preprocessing."""
    return tensorize(preprocessor, load_splits(data, seed)[split][0], split)


def tensorize(preprocessor: Preprocessor, frame: pd.DataFrame, split: str) -> SplitTensors:
    return SplitTensors(preprocessor.transform_inputs(frame), preprocessor.transform_targets(frame, split))
