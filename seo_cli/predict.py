"""seo-predict: score new rows with a trained checkpoint, as the training run's preprocessing would.

    seo-predict checkpoint=outputs/train/<date>/<time>/checkpoints/best.pt input=new_pages.csv output=scores.csv
    seo-predict checkpoint=... input=pages.parquet output=scores.parquet id_column=url strict=true
    seo-predict backend=onnx model=model.onnx input=new_pages.csv output=scores.csv   # no torch: seo-export's files

The output has the id column (or the input row number), then per target the predicted class and one
probability column per class (``<target>_proba_<class>``); for a multilabel target the predicted labels
(probability at least 0.5) joined by its separator and one probability column per label
(``<target>_<label>``); a ranking target's score and ``<target>_rank``, the row's place within its group
(``data.group_column`` of training, which the input must have): 1 = the highest score, ties by row order;
or the predicted value in the target's units. Rows that cannot be
scored are written, with their row number and the reason, to ``<output stem>.rejects.csv`` instead of
stopping the batch (``strict=true`` stops at the first one); a run without such rows removes an earlier
run's rejects file. Both files are written atomically. An ``id_column`` that is also a predicted column
is refused rather than written twice.

Two backends score the rows: ``TorchModel`` (a checkpoint, on ``device``) and, for ``backend=onnx``,
``seo_cli.onnx_model.OnnxModel`` (an export, with onnxruntime). Reading, checking, the columns and the
rejects are the same code for both; this module imports torch only inside ``TorchModel``.
"""

import logging
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
from omegaconf import DictConfig

from seo_cli.data.preprocess import Preprocessor
from seo_cli.data.spec import CLASSIFICATION, MULTILABEL, MULTILABEL_THRESHOLD, RANKING, RATE, Target
from seo_cli.data.tables import FORMATS, Source, check_plain_cells, missing_cells, read_table
from seo_cli.errors import UserError
from seo_cli.files import atomic_path, write_error

log = logging.getLogger(__name__)


class Model(Protocol):
    """What scoring needs of a trained model, whichever backend runs it."""

    preprocessor: Preprocessor
    missing: str  # the training run's data.missing: "impute" fills empty numeric cells, "error" rejects them
    targets: list[Target]

    def outputs(self, frame: pd.DataFrame, batch_size: int) -> dict[str, np.ndarray]:
        """Per target: class or label probabilities ``[rows, classes]``, or the standardised value ``[rows]``."""
        ...


class TorchModel:
    """A checkpoint rebuilt with PyTorch (``seo_cli.loading``) and scored on ``device``."""

    def __init__(self, checkpoint: Path, device_type: str, fallback: str, allowed_targets: list[str]) -> None:
        from seo_cli.loading import load_trained
        from seo_cli.runtime import pick_device

        self.device = pick_device(device_type, fallback)
        self.trained = load_trained(Path(checkpoint), self.device, allowed_targets)
        self.preprocessor = self.trained.preprocessor
        self.missing = str(self.trained.data.missing)
        self.targets = self.trained.targets

    def outputs(self, frame: pd.DataFrame, batch_size: int) -> dict[str, np.ndarray]:
        import torch

        from seo_cli.data.batches import DeviceBatches, pad_multiple
        from seo_cli.evaluation import predict
        from seo_cli.metrics import as_numpy

        inputs = self.preprocessor.transform_inputs(frame)
        rows = {"row": torch.arange(len(frame))}
        with torch.no_grad():
            outputs, _ = predict(
                self.trained.model,
                DeviceBatches(
                    inputs,
                    rows,
                    batch_size=batch_size,
                    device=self.device,
                    pad_to_multiple_of=pad_multiple(self.trained.data),
                ),
            )
        return as_numpy(outputs, self.targets)


def load_model(cfg: DictConfig) -> Model:
    """The model ``cfg`` names: ``checkpoint`` (backend torch) or ``onnx_file`` (``model=`` on the command line; backend onnx).

    Raises:
        UserError: the file the backend needs is not given, or the other one is; a bad file.
    """
    if str(cfg.backend) == "onnx":
        if not cfg.onnx_file:
            raise UserError("backend=onnx scores an export: give model=<file>.onnx, written by seo-export.")
        if cfg.checkpoint:
            raise UserError(
                "backend=onnx scores model=<file>.onnx, not a checkpoint; drop checkpoint=, or drop backend=onnx."
            )
        from seo_cli.onnx_model import OnnxModel

        return OnnxModel.load(Path(cfg.onnx_file), Path(cfg.sidecar) if cfg.sidecar else None)
    if cfg.onnx_file:
        raise UserError(
            "model= names an ONNX export, which backend=onnx scores; add backend=onnx or drop model=."
        )
    if not cfg.checkpoint:
        raise UserError("give checkpoint=<file>.pt to score with, or backend=onnx model=<file>.onnx.")
    return TorchModel(Path(cfg.checkpoint), cfg.device.type, cfg.device.fallback, list(cfg.allowed_targets))


def run_predict(cfg: DictConfig) -> dict:
    """Score ``cfg.input`` with ``cfg.checkpoint``; write ``cfg.output`` and, if any, the rejects file.

    Returns:
        ``{"rows", "scored", "rejected", "output", "rejects"}``.

    Raises:
        UserError: an unreadable input, a missing input column, an unknown output format, or (under
            ``strict``) the first invalid row.
    """
    if cfg.batch_size < 1:
        raise UserError(f"batch_size={cfg.batch_size} must be at least 1.")
    output = Path(cfg.output)
    if FORMATS.get(output.suffix.lower()) is None:
        raise UserError(f"output={output} has no known extension; end it in .csv, .tsv, .jsonl or .parquet.")
    model = load_model(cfg)
    check_id_column(cfg.id_column, model)
    if Path(cfg.input).is_dir():  # Parquet shards: scored a record batch at a time, never read whole
        return predict_shards(cfg, model, output)
    frame, original, reasons, source = read_rows(
        model, cfg.input, cfg.format, list(cfg.column_names), cfg.encoding, cfg.id_column
    )
    if cfg.strict and reasons.notna().any():
        first = int(np.flatnonzero(reasons.notna().to_numpy())[0])
        raise UserError(f"{source} {source.row(first)}: {reasons.iloc[first]}; fix it, or drop strict=true.")
    valid = frame[reasons.isna()]
    scored = score(model, valid, cfg.batch_size) if len(valid) else pd.DataFrame()
    ids = valid[cfg.id_column] if cfg.id_column else pd.Series(valid.index + 1, index=valid.index, name="row")
    result = pd.concat([ids.reset_index(drop=True), scored], axis=1)
    rejects = rejects_path(output)
    if reasons.isna().all():
        # Left in place, an earlier run's rejects would read as this run's.
        remove_stale(rejects)
    write_table(result, output)
    if reasons.isna().all():
        rejects = None
    else:
        bad = original[reasons.notna()]
        rows = pd.DataFrame({"row": bad.index + 1, "reason": reasons[reasons.notna()]})
        write_table(pd.concat([rows, bad], axis=1), rejects)
        log.warning(
            "%d of %d rows could not be scored; they are in %s with the reason.",
            len(bad),
            len(frame),
            rejects,
        )
    log.info("Wrote %d predictions to %s", len(result), output)
    return {
        "rows": len(frame),
        "scored": len(valid),
        "rejected": len(frame) - len(valid),
        "output": str(output),
        "rejects": str(rejects) if rejects else None,
    }


def predict_shards(cfg: DictConfig, model: Model, output: Path) -> dict:
    """Score every ``.parquet`` file under the directory ``cfg.input`` in sorted order, ``READ_ROWS`` rows at a
    time, appending the predictions to ``output`` and the rows that cannot be scored to the rejects file;
    ``row`` numbers the rows of all the files in that order, from 1.

    Raises:
        UserError: a shard that cannot be read, lacks a column the model reads or holds one of the wrong
            type (naming the file), or (under ``strict``) the first invalid row.
    """
    from seo_cli.config import DataConfig
    from seo_cli.data.shards import READ_ROWS, _fragment, as_frame, check_schema, shard_files

    pre = model.preprocessor
    mapping = DataConfig(
        source="parquet_dir",
        text_columns=pre.text_columns,
        numeric_columns=pre.numeric_columns,
        categorical_columns=pre.categorical_columns,
    )
    columns = list(dict.fromkeys([*([cfg.id_column] if cfg.id_column else []), *mapping.text_columns]))
    columns = list(dict.fromkeys([*columns, *pre.numeric_columns, *pre.categorical_columns]))
    kinds = {"numeric": pre.numeric_columns, "regression": []}
    rejects, first, rows, rejected = rejects_path(output), None, 0, 0
    with atomic_path(output) as out_tmp, atomic_path(rejects) as rejects_tmp:
        scores, bad = TableWriter(out_tmp, FORMATS[output.suffix.lower()]), TableWriter(rejects_tmp, "csv")
        for path in shard_files(cfg.input, "input"):
            try:
                fragment = _fragment(str(path))
                schema = fragment.physical_schema
            except (pa.ArrowException, OSError) as err:
                raise UserError(
                    f"cannot read {path} as Parquet: {str(err).strip()[:200]}; check the file."
                ) from None
            if cfg.id_column and cfg.id_column not in schema.names:
                raise UserError(
                    f"id_column={cfg.id_column} is not a column of {path}; its columns are: {', '.join(schema.names)}."
                )
            check_schema(path, schema, mapping, "input", first)
            first = first or (path, schema)
            source = Source(str(path))
            for batch in fragment.to_batches(columns=columns, batch_size=READ_ROWS, use_threads=False):
                frame = as_frame(pa.Table.from_batches([batch]), kinds)
                frame.index = pd.RangeIndex(rows, rows + len(frame))
                reasons = row_problems(frame, model, source)
                invalid = reasons.notna()
                if cfg.strict and invalid.any():
                    at = int(np.flatnonzero(invalid.to_numpy())[0])
                    raise UserError(
                        f"row {rows + at + 1} of the input ({path}): {reasons.iloc[at]}; fix it, or drop strict=true."
                    )
                valid = frame[~invalid]
                if len(valid):
                    ids = (
                        valid[cfg.id_column]
                        if cfg.id_column
                        else pd.Series(valid.index + 1, index=valid.index, name="row")
                    )
                    scored = score(model, valid, cfg.batch_size)
                    scores.write(pd.concat([ids.reset_index(drop=True), scored], axis=1))
                if invalid.any():
                    numbers = pd.DataFrame({"row": frame.index[invalid] + 1, "reason": reasons[invalid]})
                    bad.write(pd.concat([numbers, frame[invalid]], axis=1))
                rows, rejected = rows + len(frame), rejected + int(invalid.sum())
        scores.close([cfg.id_column or "row", *prediction_columns(model)])
        bad.close(["row", "reason", *columns])
    if rejected:
        log.warning(
            "%d of %d rows could not be scored; they are in %s with the reason.", rejected, rows, rejects
        )
    else:
        rejects.unlink(missing_ok=True)  # an earlier run's rejects would read as this run's
    log.info("Wrote %d predictions to %s", rows - rejected, output)
    return {
        "rows": rows,
        "scored": rows - rejected,
        "rejected": rejected,
        "output": str(output),
        "rejects": str(rejects) if rejected else None,
    }


class TableWriter:
    """Frames appended to one file in ``fmt`` (csv | tsv | jsonl | parquet): a streamed input's output."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path, self.fmt, self.rows, self.parquet = path, fmt, 0, None

    def write(self, frame: pd.DataFrame) -> None:
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self.parquet is None:
                self.parquet = pq.ParquetWriter(self.path, table.schema)
            self.parquet.write_table(table.cast(self.parquet.schema))
        elif self.fmt == "jsonl":
            with open(self.path, "a") as f:
                text = frame.to_json(orient="records", lines=True)
                f.write(text if text.endswith("\n") else text + "\n")
        else:
            frame.to_csv(
                self.path,
                mode="a",
                header=self.rows == 0,
                sep="," if self.fmt == "csv" else "\t",
                index=False,
            )
        self.rows += len(frame)

    def close(self, columns: list[str]) -> None:
        """Finish the file; with no rows written, a file of just these ``columns``."""
        if self.parquet is not None:
            self.parquet.close()
        elif self.rows == 0:
            empty = pd.DataFrame(columns=columns)
            if self.fmt == "parquet":
                empty.to_parquet(self.path, index=False)
            elif self.fmt != "jsonl":
                empty.to_csv(self.path, sep="," if self.fmt == "csv" else "\t", index=False)


def read_rows(
    model: Model,
    path: str,
    fmt: str | None,
    column_names: list[str],
    encoding: str,
    id_column: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, Source]:
    """Read the table at ``path`` for ``model``: the rows (numeric columns as numbers), the rows as read,
    per row the reason it cannot be scored (NaN where it can), and the source.

    Raises:
        UserError: an unreadable table, or one without a column the model reads.
    """
    pre = model.preprocessor
    # Ids and text as written: "000123" stays "000123", a date stays the text it was.
    as_text = [c for c in [id_column, *pre.text_columns, *pre.categorical_columns] if c]
    frame, source = read_table(path, fmt, column_names, encoding, text_columns=as_text)
    needed = pre.text_columns + pre.numeric_columns + pre.categorical_columns
    needed += [id_column] if id_column else []
    needed += [pre.group_column] if pre.group_column and pre.group_column not in needed else []
    absent = [c for c in needed if c not in frame.columns]
    if absent:
        raise UserError(
            f"{source} has no column {absent[0]!r}, which the model reads; its columns are: "
            f"{', '.join(map(str, frame.columns))}."
        )
    check_plain_cells(frame, needed, source)
    original = frame.copy()  # row_problems converts numeric columns; the rejects file keeps what was read
    return frame, original, row_problems(frame, model, source), source


def row_problems(frame: pd.DataFrame, model: Model, source: Source) -> pd.Series:
    """Per row, the first reason it cannot be scored (NaN where it can): numbers that are not numbers,
    infinite, or missing where the model was trained without imputation."""
    pre = model.preprocessor
    reasons = pd.Series(np.nan, index=frame.index, dtype=object)
    for col in pre.numeric_columns:
        empty = missing_cells(frame[col])
        values = pd.to_numeric(frame[col].mask(empty), errors="coerce")
        text = frame[col].astype(str)
        problems = [
            (values.isna() & ~empty, "numeric column {col!r} holds the non-numeric value {value!r}"),
            (
                pd.Series(np.isinf(values.to_numpy(dtype=float)), index=frame.index),
                "numeric column {col!r} holds {value!r}",
            ),
        ]
        if model.missing != "impute":  # numeric_fill is fitted either way; only impute uses it
            problems.append((empty, "numeric column {col!r} is empty"))
        for mask, template in problems:
            new = mask & reasons.isna()
            reasons[new] = [template.format(col=col, value=v) for v in text[new]]
        frame[col] = values.astype(float)
    return reasons


def score(model: Model, frame: pd.DataFrame, batch_size: int) -> pd.DataFrame:
    """Per target: the predicted class and its probabilities, a rate target's predicted rate as
    ``<name>_rate`` (clicks per impression), or the value in the target's units."""
    pre = model.preprocessor
    arrays = model.outputs(frame, batch_size)
    columns: dict[str, np.ndarray] = {}
    for t in model.targets:
        if t.type == CLASSIFICATION:
            names = pre.class_names[t.name]
            proba = arrays[t.name]
            columns[t.name] = np.asarray(names, dtype=object)[proba.argmax(axis=1)]
            columns |= {f"{t.name}_proba_{name}": proba[:, k] for k, name in enumerate(names)}
        elif t.type == RANKING:
            columns[t.name] = arrays[t.name]
            columns[f"{t.name}_rank"] = rank_within_groups(arrays[t.name], pre.group_codes(frame))
        elif t.type == MULTILABEL:
            columns[t.name] = predicted_labels(arrays[t.name], pre.label_names[t.name], separator_of(pre, t.name))
            columns |= {f"{t.name}_{label}": arrays[t.name][:, k] for k, label in enumerate(pre.label_names[t.name])}
        elif t.type == RATE:
            columns[f"{t.name}_rate"] = arrays[t.name]
        else:
            mean, std = pre.target_scale[t.name]
            columns[t.name] = arrays[t.name] * std + mean
    return pd.DataFrame(columns)


def rank_within_groups(scores: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each row's place among the rows of its group by descending score: 1 = best, ties by row order."""
    order = np.lexsort((np.arange(len(scores)), -scores, groups))
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]]) if len(order) else order
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)])) + 1
    return rank


def predicted_labels(proba: np.ndarray, labels: list[str], separator: str) -> np.ndarray:
    """Per row, the labels whose probability is at least ``MULTILABEL_THRESHOLD``, joined by ``separator``
    in label order ("" where none is)."""
    chosen = proba >= MULTILABEL_THRESHOLD
    return np.array([separator.join(label for label, on in zip(labels, row, strict=True) if on) for row in chosen], dtype=object)


def separator_of(pre: Preprocessor, target: str) -> str:
    return next(t.separator for t in pre.targets if t.name == target)


def rejects_path(output: Path) -> Path:
    """Where the rows that could not be scored go: ``scores.csv`` -> ``scores.rejects.csv`` (always CSV)."""
    return output.with_name(f"{output.stem}.rejects.csv")


def remove_stale(path: Path) -> None:
    """Remove an earlier run's file (a symlink itself, not what it points at).

    Raises:
        UserError: it cannot be removed (``write_error``).
    """
    if not (path.is_symlink() or path.exists()):
        return
    try:
        path.unlink()
    except OSError as err:
        raise write_error(path, err) from None
    log.info("Removed %s, an earlier run's rejects: every row of this run was scored.", path)


def prediction_columns(model: Model) -> list[str]:
    """The columns ``score`` writes, in order: per target its name, then a classifier's probabilities."""
    columns = []
    for t in model.targets:
        columns.append(f"{t.name}_rate" if t.type == RATE else t.name)
        if t.type == RANKING:
            columns.append(f"{t.name}_rank")
        if t.type == CLASSIFICATION:
            columns += [f"{t.name}_proba_{name}" for name in model.preprocessor.class_names[t.name]]
        elif t.type == MULTILABEL:
            columns += [f"{t.name}_{label}" for label in model.preprocessor.label_names[t.name]]
    return columns


def check_id_column(id_column: str | None, model: Model) -> None:
    """The id column must not share a name with a prediction column: CSV would hold both under one
    name and Parquet cannot be written at all.

    Raises:
        UserError: ``id_column`` (or, without one, ``row``) is a column the checkpoint predicts.
    """
    clash = id_column or "row"
    if clash not in prediction_columns(model):
        return
    if id_column:
        raise UserError(
            f"id_column={id_column} names a column the checkpoint predicts, so the output would hold two "
            f"{id_column!r} columns; choose another id column, or leave id_column unset to number the rows."
        )
    raise UserError(
        "the checkpoint predicts a column named 'row', which the output's row numbers would duplicate; "
        "set id_column to a column of the input."
    )


def write_table(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` to ``path`` in the format of its extension, atomically (see ``seo_cli.files``).

    Raises:
        UserError: the file cannot be written (a full disk, a read-only folder).
    """
    fmt = FORMATS[path.suffix.lower()]
    with atomic_path(path) as tmp:
        if fmt == "parquet":
            frame.to_parquet(tmp, index=False)
        elif fmt == "jsonl":
            frame.to_json(tmp, orient="records", lines=True)
        else:
            frame.to_csv(tmp, sep="," if fmt == "csv" else "\t", index=False)


if __name__ == "__main__":  # python -m seo_cli.predict ...: the seo-predict command
    from seo_cli.cli import predict as seo_predict

    seo_predict()
