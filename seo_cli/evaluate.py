"""seo-eval: rebuild models and their preprocessing from checkpoints alone, and report how good they are.

    seo-eval checkpoint=outputs/train/<date>/<time>/checkpoints/best.pt          # its test split
    seo-eval checkpoint=... split=val                                           # the numbers training reported
    seo-eval checkpoint=... data.path=new_pages.csv                              # a new labelled file
    seo-eval checkpoint=[a.pt,b.pt] | checkpoint=outputs/multirun/<date>/<time>  # compare on the same rows
    seo-eval checkpoint=... calibrate=true           # temperature scaling fitted on val: calibrated.pt
    seo-eval checkpoint=outputs/train/<date>/<time>   # of seo-train cv.folds=K: the folds' ensemble on test

Writes ``metrics.json``, PNG plots and ``report.md`` (one folder per checkpoint when there are several,
plus ``comparison.md``), with bootstrap confidence intervals of the headline metrics; with
``calibrate=true`` also ``calibrated.pt`` per checkpoint, the checkpoint with its temperatures.
"""

import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, ListConfig
from rich.table import Table
from sklearn import metrics as skm

from seo_cli.bootstrap import HEADLINE, Resamples, interval, metric_samples
from seo_cli.calibration import apply_temperature, fit_temperature, negative_log_likelihood, uncalibrated
from seo_cli.checkpoint import RESUME_KEYS, save_checkpoint
from seo_cli.config import DataConfig
from seo_cli.console import confusion_table, metrics_table, print_table
from seo_cli.crossval import CV_SUMMARY
from seo_cli.data.batches import make_batches, pad_multiple
from seo_cli.data.parquet import ParquetBatches, ShardStream
from seo_cli.data.pipeline import drop_rows_without_target, load_frame, load_splits, tensorize
from seo_cli.data.shards import Layout, head_frame, is_parquet_dir, layout_of, layouts_of, scan_shards
from seo_cli.data.spec import CLASSIFICATION, MULTILABEL, RANKING, RATE, REGRESSION, Target
from seo_cli.errors import UserError
from seo_cli.evaluation import Evaluation, Scorer
from seo_cli.files import write_text
from seo_cli.loading import TrainedModel, load_trained
from seo_cli.metrics import (
    CALIBRATION_BINS,
    RATE_CLIP,
    as_numpy,
    brier_score,
    expected_calibration_error,
    reliability_bins,
)
from seo_cli.report import write_report
from seo_cli.runtime import pick_device
from seo_cli.sweep import job_order

log = logging.getLogger(__name__)

MAX_REGENERATED_ROWS = 200_000  # seo_pages rows rebuilt from a checkpoint's config: about 6 s and 400 MB


def checkpoint_paths(checkpoint: Any) -> list[Path]:
    """The .pt files ``checkpoint=`` names: a file, a list, or a run / sweep directory (its best.pt files).

    Raises:
        UserError: a directory without any best.pt below it.
    """
    entries = list(checkpoint) if isinstance(checkpoint, ListConfig | list | tuple) else [checkpoint]
    if not entries:
        raise UserError("checkpoint=[] names no checkpoint; give a .pt file, a list of them, or a directory.")
    paths: list[Path] = []
    for entry in map(Path, entries):
        if not entry.is_dir():
            paths.append(entry)
            continue
        found = sorted(entry.glob("checkpoints/best.pt")) or sorted(
            entry.glob("*/checkpoints/best.pt"), key=lambda p: job_order(p.parent.parent.name)
        )
        if not found:
            raise UserError(
                f"checkpoint {entry} is a directory without checkpoints/best.pt in it or in its job folders; "
                "give a .pt file, a run directory or a sweep directory."
            )
        paths += found
    return paths


def evaluation_rows(first: TrainedModel, cfg: DictConfig) -> tuple[pd.DataFrame, str]:
    """The rows every checkpoint is scored on, and the name their metric keys start with.

    A new file (``data.path``) is read with the first checkpoint's column mapping and checked like
    training data; otherwise the checkpoint's own ``split`` is rebuilt from its config and seed.
    """
    if cfg.data.path and Path(cfg.data.path).is_dir():  # a new directory of Parquet shards: streamed
        if first.preprocessor.weight_column or first.preprocessor.trials_column:
            raise UserError(
                f"{first.path} weighs its rows by data.weight_column or data.trials_column, which are not read from "
                f"Parquet shards yet; give data.path a table file (CSV, TSV, JSON Lines or a .parquet file)."
            )
        return shard_rows(first, cfg.data.path), "eval"
    if cfg.data.path:
        data = first.data
        overrides = {
            k: cfg.data[k] for k in ("format", "column_names", "encoding") if cfg.data[k] is not None
        }
        # The whole file is scored: the training run's split column, test file, and the group or time column
        # its split was made by do not apply to it (a target that needs groups would keep group_column).
        unsplit = {
            "split_column": None,
            "test_path": None,
            "split_by": "random",
            "group_column": None,
            "time_column": None,
        }
        data = DataConfig(**{**data.__dict__, "source": "file", **unsplit, **overrides})
        frame, source = load_frame(data, first.seed, cfg.data.path, mapped_only=True)
        return drop_rows_without_target(frame, data, source), "eval"
    if is_parquet_dir(first.data):  # the checkpoint's own split of its shards: streamed, never read whole
        return layouts_of(first.data, (str(cfg.split),))[str(cfg.split)], str(cfg.split)
    return split_rows(first, str(cfg.split)), str(cfg.split)


def shard_rows(trained: TrainedModel, directory: str) -> Layout:
    """Every row with its targets of a directory of Parquet shards, checked with the checkpoint's mapping.

    Raises:
        UserError: a bad shard or value (``scan_shards``), or a class the checkpoint was not trained on.
    """
    data = dataclasses.replace(trained.data, split_column=None)
    layout = layout_of(scan_shards(directory, "data.path", data, "test"), "test", data)
    classes = trained.preprocessor.class_names
    for target, counts in layout.shards.classes["test"].items():
        unseen = sorted(set(counts) - set(classes.get(target, counts)))
        if unseen:
            path, row = layout.shards.seen_at["test"][target][unseen[0]]
            raise UserError(
                f"class {unseen[0]!r} of target {target!r} (row {row + 1} of {path}) is not one of the classes "
                f"{trained.path} was trained on; remove those rows, or score them with seo-predict."
            )
    return layout


def split_rows(trained: TrainedModel, split: str, file_key: str = "data.path") -> pd.DataFrame:
    """The rows of the checkpoint's own ``split`` (train, val or test), rebuilt from its config and seed;
    ``file_key`` is the command's key for scoring a file instead, named in the error.

    Raises:
        UserError: built-in data of a size outside what is regenerated, or a data file that is gone.
    """
    if is_parquet_dir(trained.data):  # seo-export's parity rows: the split's first rows, not all of them
        return head_frame(layouts_of(trained.data, (split,))[split], MAX_REGENERATED_ROWS)
    if trained.data.source == "seo_pages" and not 50 <= trained.data.num_rows <= MAX_REGENERATED_ROWS:
        # The checkpoint's own number: regenerating 3e8 rows would take hours and tens of GB.
        raise UserError(
            f"checkpoint {trained.path}: data.num_rows={trained.data.num_rows} of its config is outside the 50 to "
            f"{MAX_REGENERATED_ROWS:,} seo_pages rows that are regenerated; give a file of rows with {file_key}=<file>."
        )
    return load_splits(trained.data, trained.seed, trained.fold)[split][0]


def run_eval(cfg: DictConfig, run_dir: Path) -> dict:
    """Evaluate every checkpoint of ``cfg.checkpoint`` on the same rows; write metrics.json and reports.

    Returns:
        The result of the only checkpoint, or ``{"checkpoints": [...], "comparison": {...}}``.
    """
    if cfg.bootstrap < 0 or not 0 < cfg.confidence < 1:
        raise UserError("bootstrap must be 0 (off) or a number of resamples, and confidence between 0 and 1.")
    if cfg.eval_batch_size < 1:
        raise UserError(f"eval_batch_size={cfg.eval_batch_size} must be at least 1.")
    if cfg.calibration_bins < 1:
        raise UserError(f"calibration_bins={cfg.calibration_bins} must be at least 1, e.g. 15.")
    if cfg.calibrate and str(cfg.split) == "val" and not cfg.data.path:
        raise UserError(
            "calibrate=true fits the temperatures on the val split, so split=val would score them on the rows "
            "they were fitted on; use split=test (the default) or data.path=<file>."
        )
    device = pick_device(cfg.device.type, cfg.device.fallback)
    clock = Stopwatch()
    folds = fold_checkpoints(cfg.checkpoint)
    with clock("load"):
        models = [
            load_trained(path, device, cfg.allowed_targets)
            for path in folds or checkpoint_paths(cfg.checkpoint)
        ]
    if cfg.calibrate:
        for trained in models:
            if not trained.preprocessor.class_names:
                raise UserError(
                    f"calibrate=true fits a temperature per classification target, and checkpoint {trained.path} "
                    "has none; drop calibrate=true."
                )
    if folds:
        check_ensemble(models, cfg)
        if cfg.calibrate:
            raise UserError(
                f"checkpoint {cfg.checkpoint} is a cross-validation run, scored as the folds' ensemble, and "
                "calibrate=true calibrates one model; give one fold's checkpoint, e.g. "
                f"checkpoint={cfg.checkpoint}/fold_0/checkpoints/best.pt."
            )
    with clock("read"):
        frame, split = evaluation_rows(models[0], cfg)
    if folds:  # one model: the folds' mean, reported as the run directory's
        scored = [score_ensemble(models, frame, split, cfg, device, clock)]
        models = models[:1]
    else:
        for other in models[1:]:
            if other.data != models[0].data or other.seed != models[0].seed:
                log.warning(
                    "%s was trained on other data or another seed than %s; all are scored on the rows of the first.",
                    other.path,
                    models[0].path,
                )
        scored = [score_checkpoint(trained, frame, split, cfg, device, clock) for trained in models]
    samples: list[dict[str, np.ndarray]] = [{} for _ in models]
    if cfg.bootstrap:
        with clock("bootstrap"):
            samples = bootstrap_samples(models, scored, split, len(frame), cfg)
    results = []
    for i, (trained, (scored_model, predictions)) in enumerate(zip(models, scored, strict=True)):
        out_dir = run_dir if len(models) == 1 else run_dir / f"{i:02d}_{trained.path.parent.parent.name}"
        result = checkpoint_result(trained, scored_model, samples[i], split, len(frame), cfg)
        if cfg.calibrate:
            with clock("calibrate"):
                result["calibration"] = calibrate(trained, frame, split, scored_model, cfg, device, out_dir)
        if folds:
            result |= {"checkpoint": str(cfg.checkpoint), "epoch": None, "ensemble": [str(p) for p in folds]}
        with clock("report"):
            write_text(out_dir / "metrics.json", json.dumps(result, indent=2) + "\n")
            if cfg.report:
                history = trained.state.get("history") if not folds else None  # one per fold
                write_report(out_dir, result, predictions, trained.targets, history, scored_model.curves)
        print_target_tables(result, trained.targets, split)
        log.info("Wrote %s", out_dir / ("report.md" if cfg.report else "metrics.json"))
        results.append(result)
    log.info("Seconds per stage: %s", ", ".join(f"{k} {v:.1f}" for k, v in clock.seconds.items()))
    if len(models) == 1:
        return results[0]
    comparison = compare(models, results, samples, cfg.confidence)
    write_text(run_dir / "comparison.json", json.dumps(comparison, indent=2) + "\n")
    print_table(comparison_table(comparison))
    write_text(run_dir / "comparison.md", comparison_markdown(comparison))
    log.info("Wrote %s", run_dir / "comparison.md")
    return {"checkpoints": results, "comparison": comparison}


class Stopwatch:
    """Wall seconds per stage of a run, summed over the checkpoints (``with clock("read"): ...``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def score_checkpoint(
    trained: TrainedModel,
    frame: pd.DataFrame,
    split: str,
    cfg: DictConfig,
    device: torch.device,
    clock: Stopwatch,
) -> tuple[Evaluation, dict[str, dict[str, np.ndarray]]]:
    """Predictions and metrics of one checkpoint on ``frame``, and per target its labels and
    predictions in the target's own units (regression outputs are standardised), for plots and intervals."""
    outputs, labels = predict_rows(trained, frame, split, cfg, device, clock)
    with clock("metrics"):
        scored = scorer_of(trained, cfg.get("calibration_bins", CALIBRATION_BINS)).score(outputs, labels, split, trained.loss_fn)
    return scored, target_predictions(scored, trained)


def scorer_of(trained: TrainedModel, calibration_bins: int = CALIBRATION_BINS) -> Scorer:
    # In the precision it was trained in, so split=val gives exactly the numbers training logged.
    pre = trained.preprocessor
    names = pre.class_names | pre.label_names
    return Scorer(
        trained.targets, pre.target_scale, names, trained.precision, list(trained.data.ndcg_at), calibration_bins
    )


def predict_rows(
    trained: TrainedModel,
    frame: "pd.DataFrame | Layout",
    split: str,
    cfg: DictConfig,
    device: torch.device,
    clock: Stopwatch,
) -> tuple[Any, Any]:
    """The model's outputs and the labels of ``frame``'s rows (or Parquet shards' ``Layout``), encoded with the
    checkpoint's preprocessing."""
    with clock("preprocess"):
        if isinstance(frame, Layout):  # Parquet shards: read and preprocessed by the loader's workers
            batches = shard_batches(trained, frame, cfg.eval_batch_size)
        else:
            batches = in_memory_batches(trained, frame, split, cfg.eval_batch_size, device)
    with clock("inference"):
        return scorer_of(trained).predict(trained.model, batches, split)


def target_predictions(scored: Evaluation, trained: TrainedModel) -> dict[str, dict[str, np.ndarray]]:
    """Per target its labels and predictions, regression values in the target's units."""
    predictions = {}
    for t in trained.targets:
        y_true, y_pred = scored.labels[t.name], scored.predictions[t.name]
        if t.type == REGRESSION:
            mean, std = trained.preprocessor.target_scale[t.name]
            y_true, y_pred = y_true * std + mean, y_pred * std + mean
        predictions[t.name] = {"y_true": y_true, "y_pred": y_pred, "weight": row_weights(scored, t)}
    return predictions


def fold_checkpoints(checkpoint: Any) -> list[Path] | None:
    """The best.pt of each fold, in fold order, when ``checkpoint=`` names the directory of a
    cross-validation run (``seo-train cv.folds=K``); None for anything else.

    Raises:
        UserError: a cross-validation run that has not finished every fold.
    """
    if isinstance(checkpoint, ListConfig | list | tuple) or not Path(checkpoint).is_dir():
        return None
    run_dir = Path(checkpoint)
    found = {p.name for p in run_dir.glob("fold_*") if p.name.removeprefix("fold_").isdigit()}
    if not found:
        return None
    paths = [run_dir / f"fold_{k}" / "checkpoints" / "best.pt" for k in range(len(found))]
    if not (run_dir / f"{CV_SUMMARY}.json").is_file() or not all(p.is_file() for p in paths):
        raise UserError(
            f"checkpoint {run_dir} is a cross-validation run whose folds have not all finished (no "
            f"{CV_SUMMARY}.json); finish it with seo-train ... hydra.run.dir={run_dir} resume=auto, or score one "
            f"fold with checkpoint={run_dir / 'fold_0' / 'checkpoints' / 'best.pt'}."
        )
    return paths


def check_ensemble(models: list[TrainedModel], cfg: DictConfig) -> None:
    """The folds' models make one ensemble: the folds of one run, with the same targets and classes.

    Raises:
        UserError: ``split`` other than test (each fold trained on the others' val rows), or folds that differ.
    """
    run_dir = cfg.checkpoint
    if not cfg.data.path and str(cfg.split) != "test":
        raise UserError(
            f"split={cfg.split}: each fold of the cross-validation run {run_dir} trained on the others' "
            "validation rows, so only the test split is new to all of them; use split=test, data.path=<file>, "
            f"or one fold's checkpoint, e.g. checkpoint={run_dir}/fold_0/checkpoints/best.pt."
        )
    first = models[0]
    for k, trained in enumerate(models):
        same = (
            trained.targets == first.targets
            and trained.preprocessor.class_names == first.preprocessor.class_names
        )
        if (
            trained.fold != (k, len(models))
            or not same
            or trained.data != first.data
            or trained.seed != first.seed
        ):
            raise UserError(
                f"checkpoint {trained.path} is not fold {k} of the same {len(models)}-fold cross-validation as "
                f"{first.path}; score the folds of one seo-train cv.folds run."
            )


def score_ensemble(
    models: list[TrainedModel],
    frame: pd.DataFrame,
    split: str,
    cfg: DictConfig,
    device: torch.device,
    clock: Stopwatch,
) -> tuple[Evaluation, dict[str, dict[str, np.ndarray]]]:
    """The folds' models as one: the mean of their class probabilities, and of their regression values in
    the target's units, scored as the first fold's model (its loss, scales and class names). Each fold
    encodes the rows with its own preprocessing, fitted on its own training rows."""
    first = models[0]
    totals: dict[str, np.ndarray] = {}
    for trained in models:
        outputs, labels = predict_rows(trained, frame, split, cfg, device, clock)
        if trained is first:
            template, first_labels = outputs, labels
        values = as_numpy(outputs, trained.targets)
        for t in trained.targets:
            value = values[t.name].astype(np.float64)
            if t.type == REGRESSION:  # back to the target's units: each fold has its own scale
                mean, std = trained.preprocessor.target_scale[t.name]
                value = value * std + mean
            totals[t.name] = totals.get(t.name, 0.0) + value
    # Back into the first model's outputs: log-probabilities (their softmax is the mean probability) and
    # standardised values, so its loss and metrics score the ensemble as they score one model.
    single = isinstance(template, torch.Tensor)
    ensemble = {}
    for t in first.targets:
        shape = (template if single else template[t.name]).shape
        average = totals[t.name] / len(models)
        if t.type == CLASSIFICATION:
            average = np.log(np.maximum(average, np.finfo(np.float32).tiny))
        elif t.type == RATE:  # the mean predicted rate, as the logit whose sigmoid the scorer takes
            rate = np.clip(average, RATE_CLIP, 1 - RATE_CLIP)
            average = np.log(rate) - np.log1p(-rate)
        elif t.type == MULTILABEL:  # the logit of each label's mean probability
            average = np.clip(average, 1e-7, 1 - 1e-7)
            average = np.log(average) - np.log1p(-average)
        else:
            mean, std = first.preprocessor.target_scale[t.name]
            average = (average - mean) / std
        ensemble[t.name] = torch.as_tensor(average, dtype=torch.float32, device=device).reshape(shape)
    outputs = ensemble[first.targets[0].name] if single else ensemble
    with clock("metrics"):
        scored = scorer_of(first, cfg.get("calibration_bins", CALIBRATION_BINS)).score(outputs, first_labels, split, first.loss_fn)
    return scored, target_predictions(scored, first)


def shard_batches(trained: TrainedModel, layout: Layout, batch_size: int) -> ParquetBatches:
    """The rows of ``layout`` in file order, streamed by the training run's number of workers."""
    pre = trained.preprocessor
    stream = ShardStream(
        layout,
        pre,
        batch_size=batch_size,
        shuffle=False,
        seed=0,
        shuffle_buffer=1,
        shard=None,
        pad_to_multiple_of=pad_multiple(trained.data),
        pad_id=pre.input_spec.pad_id,
    )
    return ParquetBatches(stream, trained.data.num_workers, trained.data.pin_memory, seed=0)


def in_memory_batches(
    trained: TrainedModel, frame: pd.DataFrame, split: str, batch_size: int, device: torch.device
) -> Any:
    """The rows of ``frame`` as tensors, on the device or streamed as the training run placed them."""
    tensors = tensorize(trained.preprocessor, frame, split)
    return make_batches(
        tensors.inputs,
        tensors.targets,
        batch_size=batch_size,
        device=device,
        placement=trained.data.placement,
        num_workers=trained.data.num_workers,
        pin_memory=trained.data.pin_memory,
        pad_to_multiple_of=pad_multiple(trained.data),
    )


def calibrate(
    trained: TrainedModel,
    frame: pd.DataFrame,
    split: str,
    scored: Evaluation,
    cfg: DictConfig,
    device: torch.device,
    out_dir: Path,
) -> dict:
    """Fit a temperature per classification target on the checkpoint's val split (on the logits without
    any temperature it already holds), write ``out_dir/calibrated.pt``, and compare ECE, log loss and
    Brier score on the evaluated rows before (the checkpoint as given) and after.

    Returns:
        ``{target: {"temperature", "val_rows", "before": {...}, "after": {..., "reliability"}}}``.
    """
    raw = dataclasses.replace(trained, model=uncalibrated(trained.model), temperature={})
    val_frame = split_rows(trained, "val")
    val_logits, val_labels = _class_logits(raw, *predict_rows(raw, val_frame, "val", cfg, device, Stopwatch()))
    logits, _ = _class_logits(raw, *predict_rows(raw, frame, split, cfg, device, Stopwatch()))
    temperature, result = {}, {}
    for name in trained.preprocessor.class_names:
        t = fit_temperature(val_logits[name], val_labels[name])
        temperature[name] = t
        y_true, weight = scored.labels[name], scored.sample_weight
        proba = apply_temperature(logits[name], t)
        reliability = reliability_bins(y_true, proba, cfg.calibration_bins, weight)
        before = scored.reports[name]
        result[name] = {
            "temperature": t,
            "val_rows": len(val_frame),
            "val_log_loss_before": negative_log_likelihood(val_logits[name], val_labels[name], trained.temperature.get(name, 1.0)),
            "val_log_loss_after": negative_log_likelihood(val_logits[name], val_labels[name], t),
            "before": {key: before[key] for key in ("ece", "log_loss", "brier")},
            "after": {
                "ece": expected_calibration_error(reliability),
                "log_loss": float(
                    skm.log_loss(y_true, np.clip(proba, 1e-7, 1.0), labels=list(range(proba.shape[1])), sample_weight=weight)
                ),
                "brier": brier_score(y_true, proba, weight),
                "reliability": reliability,
            },
        }
        log.info(
            "%s: temperature %.4g fitted on %d val rows; on %s ECE %.4f -> %.4f, log loss %.4f -> %.4f",
            name, t, len(val_frame), split, before["ece"], result[name]["after"]["ece"],
            before["log_loss"], result[name]["after"]["log_loss"],
        )
    # An inference checkpoint: what resuming training needs is left out, so resume= refuses it in one sentence.
    state = {k: v for k, v in trained.state.items() if k not in (*RESUME_KEYS, "rng_ranks")}
    path = save_checkpoint({**state, "temperature": temperature}, out_dir / "calibrated.pt")
    log.info("Wrote %s (the checkpoint with its temperatures; seo-eval and seo-predict apply them)", path)
    return result


def _class_logits(
    trained: TrainedModel, outputs: Any, labels: Any
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per classification target: the logits of every row on the host, and the class codes."""
    if isinstance(outputs, torch.Tensor):
        outputs, labels = {trained.targets[0].name: outputs}, {trained.targets[0].name: labels}
    names = trained.preprocessor.class_names
    return (
        {n: outputs[n].float().cpu().numpy() for n in names},
        {n: labels[n].reshape(-1).cpu().numpy() for n in names},
    )


def row_weights(scored: Evaluation, target: Target) -> np.ndarray | None:
    """How much each evaluated row counts in ``target``'s metrics: its weight (``data.weight_column``),
    times its trials for a rate target; None when every row counts 1."""
    weight, trials = scored.sample_weight, scored.trials
    if target.type == RATE:
        return trials if weight is None else weight * trials
    return weight


def bootstrap_samples(
    models: list[TrainedModel], scored: list[tuple[Evaluation, dict]], split: str, rows: int, cfg: DictConfig
) -> list[dict[str, np.ndarray]]:
    """Per checkpoint, the headline metrics on each of the ``cfg.bootstrap`` seeded resamples of the rows,
    ``{"<split>/<target>/<metric>": [resamples]}``: every checkpoint's targets in one pass over the
    resamples, so each resample scores every checkpoint on the same rows."""
    wanted = {
        (i, t.name): (t.type, *(predictions[t.name][key] for key in ("y_true", "y_pred", "weight")))
        for i, (trained, (_, predictions)) in enumerate(zip(models, scored, strict=True))
        for t in trained.targets
        # Neither is resampled row by row: a ranking is scored within whole groups, and a multilabel target's
        # metrics have no intervals.
        if t.type not in (RANKING, MULTILABEL)
    }
    if not wanted:
        return [{} for _ in models]
    resamples = Resamples(rows, cfg.bootstrap, cfg.seed)
    # Worker processes as torch has threads (the cores, or what OMP_NUM_THREADS says), at most two.
    values = metric_samples(wanted, resamples.counts(reuse=True), workers=torch.get_num_threads())
    samples: list[dict[str, np.ndarray]] = [{} for _ in models]
    for (i, name), metrics in values.items():
        samples[i] |= {f"{split}/{name}/{metric}": v for metric, v in metrics.items()}
    return samples


def checkpoint_result(
    trained: TrainedModel,
    scored: Evaluation,
    samples: dict[str, np.ndarray],
    split: str,
    rows: int,
    cfg: DictConfig,
) -> dict:
    """What metrics.json holds for one checkpoint: its metrics, their intervals and per-target reports."""
    return {
        "checkpoint": str(trained.path),
        "epoch": trained.state.get("epoch"),
        "split": split if split != "eval" else f"file:{cfg.data.path}",
        "rows": rows,
        "metrics": scored.metrics,
        "intervals": {key: list(interval(values, cfg.confidence)) for key, values in samples.items()},
        "bootstrap": {"resamples": cfg.bootstrap, "confidence": cfg.confidence, "seed": cfg.seed},
        "targets": scored.reports,
    } | ({"temperature": trained.temperature} if trained.temperature else {})


def compare(models: list[TrainedModel], results: list[dict], samples: list[dict], confidence: float) -> dict:
    """Headline metrics of every checkpoint with their intervals, and each one's difference to the first.

    The differences are paired: each bootstrap resample scores every model on the same rows.
    """
    rows = []
    for trained, result, model_samples in zip(models, results, samples, strict=True):
        row = {"checkpoint": str(trained.path), "label": trained.label, "metrics": {}}
        headline = {(t.name, m) for t in trained.targets for m in HEADLINE.get(t.type, HEADLINE["regression"])}
        for key, value in result["metrics"].items():
            if tuple(key.split("/", 1)[-1].rsplit("/", 1)) not in headline:  # <split>/<target>/<metric>
                continue
            entry = {"value": value, "interval": result["intervals"].get(key)}
            if key in model_samples and key in samples[0] and trained is not models[0]:
                diff = model_samples[key] - samples[0][key]
                entry["difference"] = value - results[0]["metrics"][key]
                entry["difference_interval"] = list(interval(diff, confidence))
            row["metrics"][key] = entry
        rows.append(row)
    return {"reference": rows[0]["label"], "confidence": confidence, "checkpoints": rows}


def comparison_table(comparison: dict) -> Table:
    """One row per headline metric, one column per checkpoint (a sweep's columns stay narrow)."""
    rows = comparison["checkpoints"]
    table = Table(title=f"Comparison on the same rows; Δ: difference to {comparison['reference']}")
    table.add_column("metric")
    for row in rows:
        table.add_column(row["label"], justify="right")
    for key in rows[0]["metrics"]:
        table.add_row(key, *(_cell(row["metrics"].get(key)) for row in rows))
    return table


def comparison_markdown(comparison: dict) -> str:
    rows = comparison["checkpoints"]
    level = round(comparison["confidence"] * 100)
    lines = [
        "# Checkpoint comparison",
        "",
        f"Each cell: value [{level}% bootstrap interval]; then Δ, the difference to {comparison['reference']} "
        "with its paired interval: an interval that excludes 0 is a difference beyond resampling noise.",
        "",
        "| metric | " + " | ".join(row["label"] for row in rows) + " |",
        "|---" * (len(rows) + 1) + "|",
    ]
    for key in rows[0]["metrics"]:
        lines.append(
            f"| {key} | " + " | ".join(_cell(row["metrics"].get(key), "<br>") for row in rows) + " |"
        )
    return "\n".join(lines) + "\n"


def print_target_tables(result: dict, targets: list[Target], split: str) -> None:
    for t in targets:
        prefix = f"{split}/{t.name}/"
        scalars = {k.removeprefix(prefix): v for k, v in result["metrics"].items() if k.startswith(prefix)}
        table = metrics_table(
            f"{t.name} ({t.type}) on {result['split']}, {result['rows']} rows", {split: scalars}
        )
        print_table(table)
        if t.type == CLASSIFICATION:
            print_table(confusion_table(t.name, result["targets"][t.name]))


def _cell(entry: dict | None, sep: str = "\n") -> str:
    if entry is None:
        return ""
    text = f"{entry['value']:.4g}"
    if entry.get("interval") and not math.isnan(entry["interval"][0]):
        text += f" [{entry['interval'][0]:.4g}, {entry['interval'][1]:.4g}]"
    if "difference" in entry:
        low, high = entry["difference_interval"]
        text += f"{sep}Δ {entry['difference']:+.4g} [{low:+.4g}, {high:+.4g}]"
    return text


if __name__ == "__main__":  # python -m seo_cli.evaluate ...: the seo-eval command
    from seo_cli.cli import evaluate as seo_eval

    seo_eval()
