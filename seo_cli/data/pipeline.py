"""From a data config to tensors: read or generate the rows, check them, split them, preprocess them."""

import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split
from torch import Tensor

from seo_cli.config import DataConfig
from seo_cli.data import seo_pages
from seo_cli.data.preprocess import Preprocessor, as_text_values, split_labels
from seo_cli.data.spec import CLASSIFICATION, MULTILABEL, REGRESSION, Target
from seo_cli.data.tables import Source, check_plain_cells, missing_cells, read_table
from seo_cli.errors import UserError
from seo_cli.pretrained import encoder_files

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class SplitTensors:
    inputs: dict[str, Tensor]
    targets: dict[str, Tensor]

    def __len__(self) -> int:
        return len(next(iter(self.targets.values())))

    def head(self, rows: int) -> "SplitTensors":
        """The first ``rows`` rows."""
        return SplitTensors(
            {k: v[:rows] for k, v in self.inputs.items()}, {k: v[:rows] for k, v in self.targets.items()}
        )


def targets_of(data: DataConfig) -> list[Target]:
    # str(): the schema's TaskType choice becomes the plain string checkpoints store.
    return [Target(t.name, str(t.type)) for t in data.targets]


def load_frame(
    data: DataConfig, seed: int, path: str | None = None, mapped_only: bool = False
) -> tuple[pd.DataFrame, Source]:
    """The rows of the dataset (or of the file ``path``), checked against the column mapping, and their source.

    Numeric columns come back as floats, with NaN where a value is missing; "NA", "null" and the like
    count as missing in numeric and target columns (in text columns they are text). ``mapped_only``:
    a file's other columns are not read where its format allows (``read_table``'s ``columns``).
    """
    if data.source == "seo_pages":
        return seo_pages.generate_seo_pages(num_rows=data.num_rows, seed=seed), Source(
            "the seo_pages dataset"
        )
    mapped = [*data.text_columns, *data.numeric_columns, *data.categorical_columns]
    mapped += [t.name for t in data.targets] + ([data.split_column] if data.split_column else [])
    frame, source = read_table(
        path or data.path,
        data.format,
        list(data.column_names),
        data.encoding,
        columns=mapped if mapped_only else None,
    )
    check_plain_cells(frame, mapped, source)
    _check_columns(frame, data, source)
    for target in targets_of(data):
        classes = frame[target.name].nunique() if target.type == CLASSIFICATION else 0
        if target.type == MULTILABEL:
            classes = len(set().union(*split_labels(frame[target.name].dropna(), data.label_separator)))
        if classes > data.max_classes:
            # Refused here, before the split: the output layer, the per-class metrics and the
            # confusion matrix grow with the classes (50,000 of them took over 4 GB at validation).
            raise UserError(
                f"{target.type} target {target.name!r} of {source} has {classes:,} {'labels' if target.type == MULTILABEL else 'classes'}, more than "
                f"data.max_classes={data.max_classes:,}; check that it is a label and not an id or a number "
                "(declare it type: regression), or raise data.max_classes."
            )
    return frame, source


def _first(mask: pd.Series | np.ndarray) -> int:
    """Position of the first True: the row a message names."""
    return int(np.flatnonzero(np.asarray(mask))[0])


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
        empty = missing_cells(frame[col])
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
        empty = missing_cells(frame[target.name])
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
        if target.type == REGRESSION:
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


def drop_rows_without_target(frame: pd.DataFrame, data: DataConfig, source: Source) -> pd.DataFrame:
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
        raise UserError(_stratify_message(len(frame), data, where, stratify_on, counts, with_test)) from err
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def _stratify_message(
    rows: int, data: DataConfig, where: Source | str, target: str, counts: pd.Series, with_test: bool
) -> str:
    """Why a stratified split failed: a split the fractions leave with fewer rows than there are
    classes (naming the fraction), or a class too rare to reach every split."""
    names = SPLITS if with_test else SPLITS[:2]
    if counts.iloc[-1] >= len(names):
        # The sizes scikit-learn's two-step split makes (held out = ceil(fraction * rows)).
        held_out = data.val_fraction + data.test_fraction if with_test else data.val_fraction
        rest = math.ceil(held_out * rows)
        test = math.ceil(data.test_fraction / held_out * rest) if with_test else 0
        sizes = {"train": rows - rest, "val": rest - test, "test": test}
        classes = len(counts)
        for name in names:
            if sizes[name] >= classes:
                continue
            if name == "train":
                knob = "data.val_fraction + data.test_fraction = " if with_test else "data.val_fraction="
                knob, fix = f"{knob}{held_out:g}", "lower it"
            else:
                knob = f"data.{name}_fraction={getattr(data, f'{name}_fraction'):g}"
                fix = f"raise it to at least {_round_up(classes / rows)}"
            return (
                f"{knob} leaves the {name} split of {where} {sizes[name]} of its {rows} rows, fewer than the "
                f"{classes} classes of target {target!r}, and a stratified split puts each class in every "
                f"split; {fix}, add rows, or give data.split_column."
            )
    rarest, fractions = counts.index[-1], f"data.val_fraction={data.val_fraction:g}"
    if with_test:
        fractions += f" and data.test_fraction={data.test_fraction:g}"
    return (
        f"cannot split the {rows} rows of {where} into {'/'.join(names)} stratified on target {target!r}: "
        f"class {rarest!r} has only {counts.iloc[-1]} rows, too few to reach every split at {fractions}; "
        "add rows of it, raise the fractions, or give data.split_column."
    )


def _round_up(fraction: float) -> str:
    """``fraction`` rounded up to one significant digit, so that the advice is enough: 0.00047 -> 0.0005."""
    step = 10 ** math.floor(math.log10(fraction))
    return f"{math.ceil(fraction / step - 1e-9) * step:.1g}"


@dataclass
class PreparedData:
    config: DataConfig
    preprocessor: Preprocessor
    splits: dict[str, SplitTensors]

    @property
    def class_counts(self) -> dict[str, list[int]]:
        """Per classification target, how many training rows each class has (for class weights)."""
        train = self.splits["train"].targets
        heads = self.preprocessor.heads
        return {
            t.name: torch.bincount(train[t.name], minlength=heads[t.name]).tolist()
            for t in targets_of(self.config)
            if t.type == CLASSIFICATION
        }


def load_splits(data: DataConfig, seed: int) -> dict[str, tuple[pd.DataFrame, Source]]:
    """The rows of each split, with their source; the frames keep the file's row numbers as their index.

    With ``data.test_path`` its rows are the test split and ``data.path`` is split into train and val.
    """
    frame, source = load_frame(data, seed)
    read = len(frame)
    frame = drop_rows_without_target(frame, data, source)
    test = None
    if data.test_path:
        test_frame, test_source = load_frame(data, seed, data.test_path)
        read += len(test_frame)
        test = (drop_rows_without_target(test_frame, data, test_source), test_source)
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
        if target.type == MULTILABEL:
            _check_labels_trained(target, splits, data.label_separator)
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
        encoder=encoder_files(data.tokenizer) if data.tokenizer and data.text_columns else None,
        label_separator=data.label_separator,
    )
    tensors = {name: tensorize(preprocessor, frame, name) for name, (frame, _) in splits.items()}
    return PreparedData(config=data, preprocessor=preprocessor, splits=tensors)


def _check_labels_trained(target: Target, splits: dict[str, tuple[pd.DataFrame, Source]], separator: str) -> None:
    """Every label of a multilabel target in val or test is in the training split, which fixes the labels.

    Raises:
        UserError: naming the label, the split, the file and the row.
    """
    trained = set().union(*split_labels(splits["train"][0][target.name], separator))
    for name in ("val", "test"):
        frame, source = splits[name]
        for position, labels in enumerate(split_labels(frame[target.name], separator)):
            unseen = sorted(labels - trained)
            if unseen:
                row = int(frame.index[position])
                raise UserError(
                    f"label {unseen[0]!r} of multilabel target {target.name!r} is in the {name} split ({source}, "
                    f"{source.row(row)}) but never in the training split, so the model cannot learn it; add training "
                    "rows with it, or remove it from those rows."
                )


def load_split(data: DataConfig, seed: int, preprocessor: Preprocessor, split: str) -> SplitTensors:
    """One split of the dataset a checkpoint was trained on, encoded with that checkpoint's preprocessing."""
    return tensorize(preprocessor, load_splits(data, seed)[split][0], split)


def tensorize(preprocessor: Preprocessor, frame: pd.DataFrame, split: str) -> SplitTensors:
    return SplitTensors(preprocessor.transform_inputs(frame), preprocessor.transform_targets(frame, split))
