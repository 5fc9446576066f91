"""From a data config to tensors: read or generate the rows, check them, split them, preprocess them."""

import logging
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold, train_test_split
from torch import Tensor

from seo_cli.config import DataConfig, SplitBy
from seo_cli.data import seo_pages
from seo_cli.data.parquet import StreamedData, prepare_stream
from seo_cli.data.preprocess import Preprocessor, as_text_values, split_labels
from seo_cli.data.shards import is_parquet_dir
from seo_cli.data.spec import CLASSIFICATION, MULTILABEL, RANKING, Target
from seo_cli.data.tables import Source, check_plain_cells, missing_cells, read_table
from seo_cli.errors import UserError
from seo_cli.pretrained import encoder_files

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# split_by=group cuts the rows into this many group folds of about equal size and class mix and gives each
# split whole folds, so its sizes follow the fractions to the nearest 5% of the rows. The cost grows with
# groups x folds (scikit-learn's StratifiedGroupKFold: about 1 s per 1,000 groups).
GROUP_SPLIT_FOLDS = 20


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
        frame, source = seo_pages.generate_seo_pages(num_rows=data.num_rows, seed=seed), Source("the seo_pages dataset")
        _check_label_columns(frame, data, source)
        return frame, source
    mapped = [*data.text_columns, *data.numeric_columns, *data.categorical_columns]
    mapped += [t.name for t in data.targets]
    mapped += [c for c in (data.split_column, data.group_column, data.time_column) if c and c not in mapped]
    mapped += [c for c in (data.weight_column, data.trials_column) if c and c not in mapped]
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
        ("data.group_column", [data.group_column] if data.group_column else []),
        ("data.time_column", [data.time_column] if data.time_column else []),
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
        if target.type != CLASSIFICATION and target.type != MULTILABEL:  # regression and rate: numbers
            # Caught here so the message names the row, not a float conversion deep in preprocessing.
            values = pd.to_numeric(frame[target.name], errors="coerce").to_numpy(dtype=np.float64)
            bad = ~np.isfinite(values) & ~empty.to_numpy()
            if target.type == RANKING:
                with np.errstate(invalid="ignore"):
                    bad |= ~empty.to_numpy() & ((values < 0) | (values != np.floor(values)))
            if bad.any():
                row = _first(bad)
                fix = (
                    "a graded relevance is a whole number from 0 (not relevant) up, e.g. 0-3"
                    if target.type == RANKING
                    else "fix the value or make it a classification target"
                )
                raise UserError(
                    f"{target.type} target {target.name!r} of {source} holds the "
                    f"{'non-numeric or infinite ' if target.type != RANKING else ''}value "
                    f"{str(frame[target.name].iloc[row])!r} at {source.row(row)}; {fix}."
                )
            frame[target.name] = values
    _check_label_columns(frame, data, source)


def _check_label_columns(frame: pd.DataFrame, data: DataConfig, source: Source) -> None:
    """The row weights and the trials must be finite numbers of 0 or more in every row (a weight of 0 leaves
    a row out of the losses and the metrics), and a rate target's successes between 0 and its trials.
    Converts both columns to float.

    Raises:
        UserError: a missing column, or the first bad value, naming the key, the column and the row.
    """
    for key, column, what in (
        ("data.weight_column", data.weight_column, "row weight"),
        ("data.trials_column", data.trials_column, "number of trials"),
    ):
        if not column:
            continue
        if column not in frame.columns:
            raise UserError(
                f"{key} names column {column!r}, which {source} does not have; "
                f"its columns are: {', '.join(map(str, frame.columns))}."
            )
        raw, empty = frame[column], missing_cells(frame[column]).to_numpy()
        values = pd.to_numeric(raw.mask(empty), errors="coerce").to_numpy(dtype=np.float64)
        bad = ~(values >= 0) | np.isinf(values)  # NaN (empty or not a number), negative or infinite
        if bad.any():
            row = _first(bad)
            shown = "an empty cell" if empty[row] else repr(str(raw.iloc[row]))
            raise UserError(
                f"{key} {column!r} of {source} holds {shown} at {source.row(row)}, but a {what} must "
                "be a finite number of 0 or more; fix the value or remove the row."
            )
        frame[column] = values
    for target in (t for t in data.targets if t.type == "rate"):
        successes = frame[target.name].to_numpy(dtype=np.float64)
        trials = frame[data.trials_column].to_numpy(dtype=np.float64)
        bad = (successes < 0) | (successes > trials)  # NaN (a skipped empty target) compares False
        if bad.any():
            row = _first(bad)
            raise UserError(
                f"rate target {target.name!r} of {source} has {successes[row]:g} successes out of {trials[row]:g} "
                f"trials (data.trials_column {data.trials_column!r}) at {source.row(row)}; a rate target holds "
                "counts between 0 and the trials (clicks out of impressions), not the rate itself."
            )


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

    A ``data.split_column`` decides when given; otherwise the fractions, by ``data.split_by``: seeded
    random rows stratified on the first classification target so rare classes appear in every split
    (``random``), whole groups of ``data.group_column`` (``group``), or the order of ``data.time_column``
    (``time``: train the earliest rows, test the latest).
    """
    positions = np.arange(len(frame))
    names = SPLITS if with_test else SPLITS[:2]
    if data.split_column:
        column = as_text_values(frame[data.split_column]).str.strip().str.lower()
        unknown = sorted(set(column) - set(names))
        if unknown:
            row = _first(column.to_numpy() == unknown[0])
            raise UserError(
                f"data.split_column {data.split_column!r} of {where} holds {unknown[0]!r} at {_at(frame, where, row)}; "
                f"its values must be {', '.join(names[:-1])} or {names[-1]}."
            )
        return {name: positions[(column == name).to_numpy()] for name in names}
    if data.split_by == SplitBy.group:
        return _split_by_group(frame, data, seed, where, names)
    if data.split_by == SplitBy.time:
        return _split_by_time(frame, data, where, names)
    stratify_on, labels = _stratify_labels(frame, data)
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


def _at(frame: pd.DataFrame, where: Source | str, position: int) -> str:
    """The row at ``position`` of ``frame`` as a message names it: its file row where the source is known."""
    return where.row(int(frame.index[position])) if isinstance(where, Source) else f"row {position + 1}"


def _stratify_labels(frame: pd.DataFrame, data: DataConfig) -> tuple[str | None, np.ndarray | None]:
    """The first classification target and its values as text, which splits are stratified on; (None, None)
    for regression only."""
    target = next((t.name for t in data.targets if t.type == CLASSIFICATION), None)
    return target, as_text_values(frame[target]).to_numpy() if target else None


def group_values(frame: pd.DataFrame, data: DataConfig, where: Source | str) -> np.ndarray:
    """The group of each row (``data.group_column``) as text.

    Raises:
        UserError: a row without a group.
    """
    column = frame[data.group_column]
    empty = missing_cells(column).to_numpy()
    if empty.any():
        raise UserError(
            f"data.group_column {data.group_column!r} of {where} is empty at {_at(frame, where, _first(empty))}; "
            "give every row a group, or drop the rows without one."
        )
    return as_text_values(column).to_numpy()


def group_folds(groups: np.ndarray, labels: np.ndarray | None, folds: int, seed: int) -> np.ndarray:
    """The fold (0 to ``folds`` - 1) of each row: whole groups in folds of about the same size and, with
    ``labels``, about the same class mix (StratifiedGroupKFold; GroupKFold without labels)."""
    fold_of = np.empty(len(groups), dtype=np.int64)
    placeholder = np.zeros(len(groups))
    if labels is not None:
        splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
        splits = splitter.split(placeholder, labels, groups)
    else:
        splits = GroupKFold(folds, shuffle=True, random_state=seed).split(placeholder, groups=groups)
    with warnings.catch_warnings():
        # "The least populated class has fewer members than n_splits": such a class cannot be in every fold,
        # and is still spread as evenly as its groups allow; a class that misses training is refused later.
        warnings.simplefilter("ignore", UserWarning)
        for k, (_, rows) in enumerate(splits):
            fold_of[rows] = k
    return fold_of


def _split_by_group(
    frame: pd.DataFrame, data: DataConfig, seed: int, where: Source | str, names: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """Whole groups per split: the groups are dealt into ``GROUP_SPLIT_FOLDS`` folds of about equal size and
    class mix, and each held-out split takes the whole folds its fraction asks for (at least one)."""
    groups = group_values(frame, data, where)
    distinct = len(np.unique(groups))
    folds = min(GROUP_SPLIT_FOLDS, distinct)
    counts = {name: max(1, round(getattr(data, f"{name}_fraction") * folds)) for name in names[1:]}
    if distinct < len(names) or folds - sum(counts.values()) < 1:
        fractions = " and ".join(
            f"data.{name}_fraction={getattr(data, f'{name}_fraction'):g}" for name in names[1:]
        )
        raise UserError(
            f"data.group_column {data.group_column!r} of {where} has {distinct} groups, too few to give the "
            f"{'/'.join(names)} splits groups of their own at {fractions}; add groups, lower the fractions, "
            "or set data.split_by=random."
        )
    fold_of = group_folds(groups, _stratify_labels(frame, data)[1], folds, seed)
    rows, start = {}, 0
    for name in names[1:]:
        rows[name] = np.flatnonzero((fold_of >= start) & (fold_of < start + counts[name]))
        start += counts[name]
    rows["train"] = np.flatnonzero(fold_of >= start)
    return {name: rows[name] for name in names}


def time_values(frame: pd.DataFrame, data: DataConfig, where: Source | str) -> pd.Series:
    """The time of each row (``data.time_column``): its numbers, or its dates and times as pandas parses them.

    Raises:
        UserError: a row without a time, or a value that is neither a number nor a date.
    """
    name, column = data.time_column, frame[data.time_column]
    empty = missing_cells(column).to_numpy()
    if empty.any():
        raise UserError(
            f"data.time_column {name!r} of {where} is empty at {_at(frame, where, _first(empty))}; "
            "give every row a time, or drop the rows without one."
        )
    if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_datetime64_any_dtype(column):
        return column
    numbers = pd.to_numeric(column, errors="coerce")
    if numbers.notna().all():
        return numbers
    try:
        times = pd.to_datetime(column, errors="coerce", format="mixed")
    except (ValueError, TypeError):  # offsets that differ between rows: compared in UTC
        times = pd.to_datetime(column, errors="coerce", format="mixed", utc=True)
    bad = times.isna().to_numpy()
    if bad.any():
        row = _first(bad)
        raise UserError(
            f"data.time_column {name!r} of {where} holds {column.iloc[row]!r} at {_at(frame, where, row)}, which is "
            "neither a date nor a number; fix the value (e.g. 2024-05-31 or a Unix time) or choose another column."
        )
    return times


def _split_by_time(
    frame: pd.DataFrame, data: DataConfig, where: Source | str, names: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """The earliest rows train, the next validate, the latest test, in the sizes of the random split; rows
    of the time where a split starts all go to that (the later) split, so no time is in two splits."""
    times = time_values(frame, data, where)
    order = times.rank(method="dense").to_numpy()  # one number per distinct time, in time order
    rows = len(frame)
    held_out = data.val_fraction + (data.test_fraction if len(names) == 3 else 0.0)
    # train_test_split's sizes: the held-out rows rounded up, then the test rows of those rounded up.
    starts = {"val": rows - math.ceil(held_out * rows)}
    if len(names) == 3:
        starts["test"] = rows - math.ceil(data.test_fraction / held_out * (rows - starts["val"]))
    ordered = np.sort(order)
    split_of = np.zeros(rows, dtype=np.int64)
    for i, name in enumerate(names[1:], start=1):
        split_of[order >= ordered[min(starts[name], rows - 1)]] = i
    result = {name: np.flatnonzero(split_of == i) for i, name in enumerate(names)}
    empty = next((name for name in names if len(result[name]) == 0), None)
    if empty:
        raise UserError(
            f"data.time_column {data.time_column!r} of {where} has {int(ordered[-1])} distinct times in its {rows} "
            f"rows, too few to give the {empty} split times of its own at these fractions; add rows, change "
            "data.val_fraction or data.test_fraction, or set data.split_by=random."
        )
    return result


def fold_rows(
    frame: pd.DataFrame, data: DataConfig, seed: int, folds: int, where: Source | str
) -> np.ndarray:
    """The cross-validation fold (0 to ``folds`` - 1) of each row of ``frame``, seeded: stratified on the
    first classification target (StratifiedKFold, KFold for regression only), and with
    ``data.split_by=group`` whole groups per fold (StratifiedGroupKFold, GroupKFold).

    Raises:
        UserError: fewer rows or groups than folds, or a class with a single row (its fold would
            validate on a class it never trained on).
    """
    target, labels = _stratify_labels(frame, data)
    if labels is not None:
        counts = pd.Series(labels).value_counts()
        if counts.iloc[-1] < 2:
            raise UserError(
                f"class {counts.index[-1]!r} of target {target!r} has a single row among the {len(frame)} train "
                f"and val rows of {where}, so the fold validating on it never trains on it; add rows of it, or "
                "remove that row."
            )
    if data.split_by == SplitBy.group:
        groups = group_values(frame, data, where)
        distinct = len(np.unique(groups))
        if distinct < folds:
            raise UserError(
                f"cv.folds={folds} needs at least {folds} groups of data.group_column {data.group_column!r} "
                f"among the train and val rows of {where}, which have {distinct}; lower cv.folds or add groups."
            )
        return group_folds(groups, labels, folds, seed)
    if len(frame) < folds:
        raise UserError(
            f"cv.folds={folds} is more than the {len(frame)} train and val rows of {where}; lower cv.folds or add rows."
        )
    fold_of = np.empty(len(frame), dtype=np.int64)
    splitter = StratifiedKFold if labels is not None else KFold
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a class with fewer rows than folds: not in every fold
        for k, (_, rows) in enumerate(
            splitter(folds, shuffle=True, random_state=seed).split(np.zeros(len(frame)), labels)
        ):
            fold_of[rows] = k
    return fold_of


def describe_split(
    splits: dict[str, tuple[pd.DataFrame, Source]], data: DataConfig, made: tuple[str, ...]
) -> str:
    """The start-up log's account of a group or time split: groups per split, or each split's time range.

    Raises:
        AssertionError: a group or a time of the splits in ``made`` is in two of them (a bug of the splitter).
    """
    if data.split_by == SplitBy.group:
        groups = {name: set(group_values(frame, data, source)) for name, (frame, source) in splits.items()}
        for i, first in enumerate(made):
            for second in made[i + 1 :]:
                shared = groups[first] & groups[second]
                if shared:
                    raise AssertionError(
                        f"group {sorted(shared)[0]!r} is in the {first} and the {second} split"
                    )
        made_text = "two splits" if len(made) == 3 else "both train and val"
        text = (
            f"Split by group (data.group_column={data.group_column!r}): "
            + ", ".join(f"{name} {len(groups[name])} groups" for name in splits)
            + f"; no group is in {made_text}"
        )
        if "test" not in made:  # the user's own test file
            shared = groups["test"] & (groups["train"] | groups["val"])
            text += f"; the test file shares {len(shared)} of its {len(groups['test'])} groups with them"
        return text
    ranges = {}
    for name, (frame, source) in splits.items():
        times = time_values(frame, data, source)
        ranges[name] = (times.min(), times.max())
    for first, second in zip(made, made[1:], strict=False):
        if not ranges[first][1] < ranges[second][0]:
            raise AssertionError(
                f"the {first} split ends at {ranges[first][1]}, not before the {second} split starts"
            )
    return (
        f"Split by time (data.time_column={data.time_column!r}): "
        + ", ".join(f"{name} {_time_text(low)} to {_time_text(high)}" for name, (low, high) in ranges.items())
        + "; each split is later than the one before"
    )


def _time_text(value: object) -> str:
    """A time as the log shows it: a date without its midnight, a number as it is."""
    if isinstance(value, pd.Timestamp) and value == value.normalize():
        return str(value.date())
    return str(value)


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


def load_splits(
    data: DataConfig, seed: int, fold: tuple[int, int] | None = None
) -> dict[str, tuple[pd.DataFrame, Source]]:
    """The rows of each split, with their source; the frames keep the file's row numbers as their index.

    With ``data.test_path`` its rows are the test split and ``data.path`` is split into train and val.
    ``fold=(k, folds)``: the train and val rows are dealt into ``folds`` cross-validation folds
    (``fold_rows``); fold ``k`` validates and the others train. The test split stays as it is.
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
    if fold is not None:
        k, folds = fold
        pool = np.sort(np.concatenate([rows["train"], rows["val"]]))
        fold_of = fold_rows(frame.iloc[pool], data, seed, folds, source)
        rows |= {"train": pool[fold_of != k], "val": pool[fold_of == k]}
        log.info(
            "Cross-validation fold %d of folds 0-%d: it validates on %d of the %d train and val rows and trains "
            "on the others; the test split stays held out.",
            k,
            folds - 1,
            len(rows["val"]),
            len(pool),
        )
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
    if data.split_by != SplitBy.random and not data.split_column:
        log.info("%s", describe_split(splits, data, tuple(rows)))
    return splits


def prepare_data(
    data: DataConfig, seed: int, fold: tuple[int, int] | None = None
) -> "PreparedData | StreamedData":
    """Read, check and split the rows (as ``load_splits``), fit preprocessing on the training split, and
    tensorize every split; ``fold`` (k, K): cross-validation's fold k of K.

    A directory of Parquet shards is not read whole: it is scanned and streamed (``seo_cli.data.parquet``).
    """
    if is_parquet_dir(data):
        if fold is not None:
            raise UserError(
                "cv.folds deals rows into folds in memory, and a directory of Parquet shards is streamed; "
                "give its splits by data.split_column or data.val_path instead, or cross-validate a table file."
            )
        return prepare_stream(data, seed)
    splits = load_splits(data, seed, fold)
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
    encoder = encoder_files(data.tokenizer) if data.tokenizer and data.text_columns else None
    preprocessor = Preprocessor.fit_data(train_frame, data, encoder)
    if data.weight_column:
        for name, (frame, source) in splits.items():
            if not frame[data.weight_column].to_numpy().any():
                raise UserError(
                    f"every row of the {name} split of {source} weighs 0 in data.weight_column "
                    f"{data.weight_column!r}, so there is nothing to {'train on' if name == 'train' else 'score'}; "
                    "give some of its rows a positive weight."
                )
        weights = train_frame[data.weight_column].to_numpy()
        log.info(
            "Row weights from column %r: training rows weigh %.4g in all (mean %.4g); %d of them weigh 0.",
            data.weight_column, weights.sum(), weights.mean(), int((weights == 0).sum()),
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
