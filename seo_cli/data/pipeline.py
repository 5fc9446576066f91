"""From a data config to tensors: read or generate the rows, check them, split them, preprocess them."""

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split
from torch import Tensor

from seo_cli.config import DataConfig
from seo_cli.data import seo_pages
from seo_cli.data.preprocess import Preprocessor
from seo_cli.data.spec import CLASSIFICATION, Target
from seo_cli.data.tables import read_table
from seo_cli.errors import UserError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class SplitTensors:
    inputs: dict[str, Tensor]
    targets: dict[str, Tensor]

    def __len__(self) -> int:
        return len(next(iter(self.targets.values())))


def targets_of(data: DataConfig) -> list[Target]:
    return [Target(t.name, t.type) for t in data.targets]


def load_frame(data: DataConfig, seed: int) -> tuple[pd.DataFrame, str]:
    """The dataset's rows and a short name of where they came from (for messages)."""
    if data.source == "seo_pages":
        return seo_pages.generate_seo_pages(num_rows=data.num_rows, seed=seed), "the seo_pages dataset"
    frame = read_table(data.path, data.format)
    _check_columns(frame, data, str(data.path))
    return frame, str(data.path)


def _check_columns(frame: pd.DataFrame, data: DataConfig, where: str) -> None:
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
                f"{key} names column {missing[0]!r}, which {where} does not have; "
                f"its columns are: {', '.join(map(str, frame.columns))}."
            )
    for col in data.numeric_columns:
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = values.isna() & frame[col].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise UserError(
                f"numeric column {col!r} of {where} holds the non-numeric value {frame[col].iloc[row]!r} "
                f"at data row {row + 1}; fix the value or move the column to data.categorical_columns."
            )
        if values.isna().any():
            row = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise UserError(f"numeric column {col!r} of {where} is empty at data row {row + 1}; fill it in.")
        infinite = ~np.isfinite(values.to_numpy(dtype=np.float64))
        if infinite.any():
            row = int(np.flatnonzero(infinite)[0])
            raise UserError(
                f"numeric column {col!r} of {where} holds {frame[col].iloc[row]!r} at data row {row + 1}; "
                "replace it with a finite number."
            )
    for target in data.targets:
        empty = frame[target.name].isna()
        if empty.any():
            row = int(np.flatnonzero(empty.to_numpy())[0])
            raise UserError(
                f"target {target.name!r} of {where} is empty at data row {row + 1}; "
                "fill it in or remove the row."
            )
        if target.type != CLASSIFICATION:
            # Caught here so the message names the row, not a float conversion deep in preprocessing.
            values = pd.to_numeric(frame[target.name], errors="coerce").to_numpy(dtype=np.float64)
            bad = ~np.isfinite(values)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise UserError(
                    f"regression target {target.name!r} of {where} holds the non-numeric or infinite value "
                    f"{frame[target.name].iloc[row]!r} at data row {row + 1}; fix the value or make it a "
                    "classification target."
                )


def split_rows(frame: pd.DataFrame, data: DataConfig, seed: int, where: str) -> dict[str, np.ndarray]:
    """Row positions of the train, val and test splits.

    A ``data.split_column`` decides when given; otherwise a seeded random split by the fractions,
    stratified on the first classification target so rare classes appear in every split.
    """
    positions = np.arange(len(frame))
    if data.split_column:
        column = frame[data.split_column].astype(str).str.strip().str.lower()
        unknown = sorted(set(column) - set(SPLITS))
        if unknown:
            raise UserError(
                f"data.split_column {data.split_column!r} of {where} holds {unknown[0]!r}; "
                "its values must be train, val or test."
            )
        return {name: positions[(column == name).to_numpy()] for name in SPLITS}
    stratify_on = next((t.name for t in data.targets if t.type == CLASSIFICATION), None)
    labels = frame[stratify_on].astype(str).to_numpy() if stratify_on else None
    held_out = data.val_fraction + data.test_fraction
    try:
        train, rest = train_test_split(positions, test_size=held_out, random_state=seed, stratify=labels)
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


def prepare_data(data: DataConfig, seed: int) -> PreparedData:
    """Read, check and split the rows, fit preprocessing on the training split, and tensorize every split."""
    frame, where = load_frame(data, seed)
    rows = split_rows(frame, data, seed, where)
    for name in SPLITS:
        if len(rows[name]) == 0:
            raise UserError(f"the {name} split of {where} is empty; raise data.{name}_fraction or add rows.")
    train_frame = frame.iloc[rows["train"]]
    for target in targets_of(data):
        if target.type == CLASSIFICATION and train_frame[target.name].nunique() < 2:
            raise UserError(
                f"classification target {target.name!r} has a single class "
                f"({train_frame[target.name].iloc[0]!r}) in the training split of {where}; a classifier needs "
                "at least two: check the column, or declare it type: regression."
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
    log.info(
        "Data: %d rows from %s -> train %d, val %d, test %d",
        len(frame),
        where,
        len(rows["train"]),
        len(rows["val"]),
        len(rows["test"]),
    )
    splits = {name: tensorize(preprocessor, frame.iloc[rows[name]], name) for name in SPLITS}
    return PreparedData(preprocessor=preprocessor, splits=splits)


def load_split(data: DataConfig, seed: int, preprocessor: Preprocessor, split: str) -> SplitTensors:
    """One split of the dataset a checkpoint was trained on, encoded with that checkpoint's preprocessing."""
    frame, where = load_frame(data, seed)
    rows = split_rows(frame, data, seed, where)
    return tensorize(preprocessor, frame.iloc[rows[split]], split)


def tensorize(preprocessor: Preprocessor, frame: pd.DataFrame, split: str) -> SplitTensors:
    return SplitTensors(preprocessor.transform_inputs(frame), preprocessor.transform_targets(frame, split))
