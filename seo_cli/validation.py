"""Start-up checks: everything that can be wrong with a config is found before any data is loaded,
and all problems are reported together, each naming the key and the fix.

Nodes built by ``_target_`` are looked up in ``seo_cli.registry`` (at every depth: nothing unregistered
is imported), then checked against their constructor's signature: unknown keys, missing required keys
and values of the wrong type (``model.dropout=high``) are errors here rather than deep inside a
constructor. Choice-like knobs are Enums in the schema, which Hydra checks while composing.
"""

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from seo_cli.data.preprocess import MAX_CLASSES, MAX_LENGTH, MAX_SEPARATOR
from seo_cli.data.shards import is_parquet_dir
from seo_cli.data.spec import (
    CLASSIFICATION,
    MULTILABEL,
    RANKING,
    RATE,
    REGRESSION,
    TRIALS_KEY,
    WEIGHT_KEY,
    InputSpec,
    Target,
)
from seo_cli.errors import UserError
from seo_cli.metrics import HIGHER_IS_BETTER, MAX_NDCG_AT, MAX_NDCG_LIST, metric_names
from seo_cli.pretrained import encoder_files
from seo_cli.registry import (
    HYDRA_KEYS,
    REGISTRY,
    allowed_classes,
    check_arguments,
    check_targets,
    lookup,
    refusal,
)
from seo_cli.runtime import PRECISIONS

# Arguments the entrypoint passes at the call site.
RUNTIME_ARGS = {
    "model": {"inputs", "heads"},
    "optimizer": {"params"},
    "scheduler": {"optimizer", "total_steps", "steps_per_epoch"},
    "loss": {"targets", "class_counts"},
    "logger": {"log_dir", "resume_step"},
}


def check_component(node: DictConfig, key: str, group: str, allowed: dict[str, Callable]) -> list[str]:
    """Problems with one ``_target_`` node of the command line: its targets, then its arguments."""
    if not isinstance(node.get("_target_"), str):
        return [
            f"{key} has no _target_; name the class or function that builds it, e.g. {key}._target_=torch.optim.AdamW."
        ]
    problems = check_targets(OmegaConf.to_container(node, resolve=True), key, group, allowed)
    if problems:
        return problems
    fn = lookup(node._target_, f"{key}._target_", group, allowed)
    return check_arguments(node, key, fn, RUNTIME_ARGS[group])


def check_train_config(cfg: DictConfig) -> dict[str, Callable]:
    """Check a composed seo-train config before any data is loaded.

    Returns:
        The user's own classes named by ``allowed_targets``, which the components may build.

    Raises:
        UserError: every problem found, one per line.
    """
    problems: list[str] = []
    try:
        allowed = allowed_classes(cfg.allowed_targets)
    except UserError as err:
        allowed, problems = {}, [str(err)]
    for group in ("model", "optimizer", "loss"):
        problems += check_component(cfg[group], group, group, allowed)
    if cfg.scheduler:
        problems += check_component(cfg.scheduler, "scheduler", "scheduler", allowed)
    for name, node in (cfg.logger or {}).items():
        problems += check_component(node, f"logger.{name}", "logger", allowed)

    problems += _data_problems(cfg.data) + _run_problems(cfg) + _metric_problems(cfg) + _cv_problems(cfg)
    if cfg.data.sampler == "balanced" and cfg.trainer.overfit_batches:
        problems.append(
            "data.sampler=balanced draws new rows each epoch, but trainer.overfit_batches trains on the same first "
            "batches every epoch; use data.sampler=random with trainer.overfit_batches."
        )
    if not problems:  # the constructors see only values that passed every other check
        for group in ("model", "optimizer", "loss", "scheduler"):
            if cfg[group]:
                problems += dry_build(cfg, group, cfg[group], allowed)
    if problems:
        raise UserError("\n".join(problems))
    return allowed


def _data_problems(data: DictConfig) -> list[str]:
    """What is wrong with the ``data`` section: sources, splits, columns and their roles, sizes, ranking,
    row weights."""
    return (
        _source_problems(data)
        + _split_problems(data)
        + _column_problems(data)
        + _size_problems(data)
        + _ranking_problems(data)
        + _label_problems(data)
    )


def _source_problems(data: DictConfig) -> list[str]:
    """The data's source: a file, Parquet shards or the built-in generator, and what each takes."""
    problems: list[str] = []
    shards = is_parquet_dir(data)
    if data.source == "file" and not data.path:
        problems.append("data.path is required for a data file; set data.path=pages.csv.")
    if shards:
        problems += _parquet_problems(data)
        multilabel = [t.name for t in data.targets if t.type == MULTILABEL]
        if multilabel:
            # The shards' scan counts classes and checks regression values, not label sets.
            problems.append(
                f"multilabel target {multilabel[0]!r} cannot be streamed from Parquet shards; give a table file "
                "(data=csv data.path=<file>) or make it a classification target."
            )
    elif data.source != "file":
        for key in ("test_path", "column_names"):
            if data[key]:
                problems.append(f"data.{key} applies to data files only; set data=csv or remove it.")
    if data.val_path and not shards:
        problems.append(
            "data.val_path names a directory of validation shards, for data.source=parquet_dir only; "
            "remove it, or set data=parquet_dir."
        )
    if data.num_workers < 0:
        problems.append(f"data.num_workers={data.num_workers} must be 0 or more.")
    return problems


def _split_problems(data: DictConfig) -> list[str]:
    """How the rows are split: a split column, a test file, groups, times or fractions."""
    problems: list[str] = []
    shards = is_parquet_dir(data)  # split by a column or by directories: the fractions do not apply
    if data.test_path and data.split_column and not shards:
        problems.append("data.test_path and data.split_column both choose the test rows; keep one of them.")
    if data.split_column and data.split_by != "random":
        problems.append(
            f"data.split_column and data.split_by={data.split_by} both choose the splits; keep one of them."
        )
    if data.split_by == "group" and not data.group_column:
        problems.append(
            "data.split_by=group needs data.group_column, the column naming each row's group (e.g. site or "
            "query); set it, or use data.split_by=random."
        )
    if data.split_by == "time" and not data.time_column:
        problems.append(
            "data.split_by=time needs data.time_column, a column of dates or numbers ordering the rows; set it, "
            "or use data.split_by=random."
        )
    if data.time_column and data.split_by != "time":
        problems.append(
            f"data.time_column={data.time_column} orders only a time split; set data.split_by=time or remove it."
        )
    if not data.split_column and not shards:
        for key in ("val_fraction",) if data.test_path else ("val_fraction", "test_fraction"):
            if not 0.0 < data[key] < 1.0:
                problems.append(f"data.{key}={data[key]} must be between 0 and 1 (exclusive), e.g. 0.15.")
        if not data.test_path and data.val_fraction + data.test_fraction >= 1.0:
            problems.append(
                "data.val_fraction + data.test_fraction must be below 1 so rows remain for training."
            )
    return problems


def _column_roles(data: DictConfig) -> Iterator[tuple[str, str]]:
    """(column, the key that names it) for every input column and target, in config order."""
    for key in ("text_columns", "numeric_columns", "categorical_columns"):
        for column in data[key]:
            yield column, f"data.{key}"
    for target in data.targets:
        yield target.name, "data.targets"


def _column_problems(data: DictConfig) -> list[str]:
    """The targets and input columns: at least one of each, one role per column, each listed once."""
    problems: list[str] = []
    if not data.targets:
        problems.append(
            "data.targets is empty; name at least one, e.g. data.targets=[{name:intent,type:classification}]."
        )
    seen: dict[str, str] = {}
    for column, key in _column_roles(data):
        if column in seen and seen[column] != key:
            problems.append(f"column {column!r} is in both {seen[column]} and {key}; give each column one role.")
        seen.setdefault(column, key)
    if not data.text_columns and not data.numeric_columns and not data.categorical_columns:
        problems.append(
            "the data has no input columns; set data.text_columns, data.numeric_columns or data.categorical_columns."
        )
    for key in ("text_columns", "numeric_columns", "categorical_columns"):
        repeated = sorted({c for c in data[key] if list(data[key]).count(c) > 1})
        if repeated:
            problems.append(f"data.{key} lists {', '.join(repeated)} more than once; list each column once.")
    names = [t.name for t in data.targets]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"data.targets lists {name!r} twice; list each target once.")
    return problems


def _size_problems(data: DictConfig) -> list[str]:
    """Lengths, class counts, row counts and the vocabulary within their bounds."""
    problems: list[str] = []
    if data.text_columns and data.max_length is not None and not 1 <= data.max_length <= MAX_LENGTH:
        problems.append(f"data.max_length={data.max_length} must be between 1 and {MAX_LENGTH} tokens.")
    if not 2 <= data.max_classes <= MAX_CLASSES:
        problems.append(
            f"data.max_classes={data.max_classes} must be between 2 and {MAX_CLASSES} (what a checkpoint may hold)."
        )
    if data.source == "seo_pages" and data.num_rows < 50:
        problems.append(f"data.num_rows={data.num_rows} is too few to split; use at least 50.")
    if data.pad_to_multiple_of is not None and data.pad_to_multiple_of < 1:
        problems.append(f"data.pad_to_multiple_of={data.pad_to_multiple_of} must be at least 1.")
    if data.vocab_size < 8:
        problems.append(
            f"data.vocab_size={data.vocab_size} must be at least 8 (the tokenizer keeps 3 special tokens)."
        )
    return problems


def _ranking_problems(data: DictConfig) -> list[str]:
    """A ranking target's group column, and what it does not combine with yet."""
    problems: list[str] = []
    ranked = [t.name for t in data.targets if t.type == RANKING]
    if ranked and not data.get("group_column"):
        problems.append(
            f"ranking target {ranked[0]!r} needs data.group_column, the column whose rows are ranked against each "
            "other (e.g. the query); set data.group_column=query_id."
        )
    if ranked and data.get("sampler") == "balanced":
        problems.append(
            f"data.sampler=balanced draws rows one by one, but ranking target {ranked[0]!r} needs whole groups per "
            "batch; use data.sampler=random."
        )
    if ranked and data.source == "parquet_dir":
        problems.append(
            f"ranking target {ranked[0]!r} needs whole groups per batch, which Parquet shards do not keep yet; "
            "give the rows as a table file (data=csv)."
        )
    if ranked and data.get("weight_column"):
        problems.append(
            f"data.weight_column does not weigh ranking target {ranked[0]!r}'s loss or metrics yet; remove "
            "data.weight_column, or train the ranking target in a run of its own."
        )
    roles = dict(reversed(list(_column_roles(data))))  # each column's first role
    if ranked and data.get("group_column") in roles:
        problems.append(
            f"data.group_column={data.group_column!r} is also in {roles[data.group_column]}; give each column one role."
        )
    cutoffs = list(data.get("ndcg_at", [1]))
    if not 1 <= len(cutoffs) <= MAX_NDCG_LIST or not all(1 <= k <= MAX_NDCG_AT for k in cutoffs):
        problems.append(
            f"data.ndcg_at={cutoffs} must list 1 to {MAX_NDCG_LIST} cut-offs from 1 to {MAX_NDCG_AT}; e.g. data.ndcg_at=[1,3,10]."
        )
    return problems


def _label_problems(data: DictConfig) -> list[str]:
    """Row weights, rate targets and their trials, and the balanced sampler's classification target."""
    problems: list[str] = []
    for name in [t.name for t in data.targets if t.name in (WEIGHT_KEY, TRIALS_KEY)]:
        problems.append(f"data.targets names {name!r}, a name seo-cli keeps for itself; rename the column.")
    for key in ("weight_column", "trials_column"):  # an input may also weigh rows (impressions), a target may not
        if data[key] and data[key] in [t.name for t in data.targets]:
            problems.append(f"data.{key}={data[key]} is also a target; weigh the rows by another column.")
    rates = [t.name for t in data.targets if t.type == RATE]
    if rates and not data.trials_column:
        problems.append(
            f"target {rates[0]!r} is type: rate, which needs the trials its successes are out of; set "
            "data.trials_column to that column, e.g. data.trials_column=impressions."
        )
    if data.trials_column and not rates:
        problems.append(
            f"data.trials_column={data.trials_column} applies to type: rate targets only; declare one "
            "(e.g. {name:clicks,type:rate}) or remove data.trials_column."
        )
    separator = data.label_separator
    if any(t.type == MULTILABEL for t in data.targets) and not (0 < len(separator.strip()) and len(separator) <= MAX_SEPARATOR):
        problems.append(
            f"data.label_separator={separator!r} must be 1 to {MAX_SEPARATOR} characters, not only spaces, e.g. '|'."
        )
    if data.sampler == "balanced" and not any(t.type == CLASSIFICATION for t in data.targets):
        problems.append(
            "data.sampler=balanced balances the classes of the first classification target, and there is none; "
            "use data.sampler=random."
        )
    return problems


def _parquet_problems(data: DictConfig) -> list[str]:
    """The rules of a directory of Parquet shards (``seo_cli.data.shards``): its splits come from a column
    or from directories, never from random rows, and the in-memory options do not apply."""
    problems: list[str] = []
    if not data.path:
        problems.append("data.path is required for data.source=parquet_dir; set data.path=<directory of .parquet shards>.")
    if data.split_column and (data.val_path or data.test_path):
        problems.append(
            "data.split_column and data.val_path / data.test_path both choose the validation and test rows; keep one."
        )
    elif not data.split_column and not (data.val_path and data.test_path):
        problems.append(
            "data.source=parquet_dir takes its splits from a column or from directories, never from random rows: "
            "set data.split_column=<a column holding train, val or test>, or both data.val_path and data.test_path "
            "to directories of shards."
        )
    if data.column_names:
        problems.append("data.column_names names the columns of a header-less CSV; Parquet shards name their own, remove it.")
    for key, low in (("fit_sample_rows", 100), ("shuffle_buffer", 1)):
        if data[key] < low:
            problems.append(f"data.{key}={data[key]} must be at least {low}.")
    if data.placement == "device":
        problems.append("data.placement=device keeps a split in memory, but Parquet shards are streamed; remove it.")
    if data.bucket_by_length:
        problems.append(
            "data.bucket_by_length sorts a split held in memory, but Parquet shards are streamed; remove it "
            "(padding=longest still cuts each batch to its longest row)."
        )
    for key in ("weight_column", "trials_column"):
        if data[key]:
            problems.append(f"data.{key} is not read from Parquet shards yet; give the rows as a table file (data=csv), or remove it.")
    if data.sampler == "balanced":
        problems.append(
            "data.sampler=balanced draws from a split held in memory, but Parquet shards are streamed; use "
            "data.sampler=random (loss.class_weights=balanced weighs the classes instead)."
        )
    return problems


def _run_problems(cfg: DictConfig) -> list[str]:
    """What is wrong with the run's sizes, rates, trainer and device knobs (and a warm-up longer than the run)."""
    problems: list[str] = []
    if not 0 <= cfg.seed < 2**32:
        problems.append(f"seed={cfg.seed} must be between 0 and 2**32 - 1 (numpy's seed range).")
    for key in ("epochs", "batch_size", "eval_batch_size"):
        if cfg[key] < 1:
            problems.append(f"{key}={cfg[key]} must be at least 1.")
    if not (cfg.learning_rate > 0 and math.isfinite(cfg.learning_rate)):  # `not >` catches NaN too
        problems.append(f"learning_rate={cfg.learning_rate} must be a positive number, e.g. 1e-3.")
    if not (cfg.weight_decay >= 0 and math.isfinite(cfg.weight_decay)):
        problems.append(f"weight_decay={cfg.weight_decay} must be 0 or a positive number, e.g. 0.01.")
    if cfg.trainer.log_every_n_steps < 1:
        problems.append(f"trainer.log_every_n_steps={cfg.trainer.log_every_n_steps} must be at least 1.")
    if cfg.trainer.val_check_interval is not None and cfg.trainer.val_check_interval < 1:
        problems.append(
            f"trainer.val_check_interval={cfg.trainer.val_check_interval} must be at least 1 (optimizer steps), or null."
        )
    if cfg.device.num_devices < 1:
        problems.append(f"device.num_devices={cfg.device.num_devices} must be 1 or more.")
    if cfg.device.timeout_s <= 0:
        problems.append(f"device.timeout_s={cfg.device.timeout_s} must be a positive number of seconds.")
    if cfg.device.strategy == "ddp" and cfg.device.type == "mps":
        problems.append("device.type=mps cannot run DDP; use device.type=cuda or cpu with device=ddp.")
    if cfg.trainer.overfit_batches and is_parquet_dir(cfg.data):
        problems.append(
            "trainer.overfit_batches trains on the first batches held in memory, but Parquet shards are streamed; "
            "remove it (or debug=overfit), or copy a few rows into a table file."
        )
    if cfg.trainer.cuda_graphs:
        problems += _cuda_graph_conflicts(cfg)
    if cfg.device.precision not in PRECISIONS:
        problems.append(f"device.precision={cfg.device.precision} must be 32, bf16 or fp16.")
    problems += _trainer_problems(cfg.trainer)
    steps = known_run_length(cfg)
    warmup = cfg.scheduler.get("warmup_steps") if cfg.scheduler and cfg.scheduler.get("warmup_ratio") is None else None
    if steps is not None and isinstance(warmup, int) and warmup >= steps:
        problems.append(_warmup_problem(warmup, steps))
    return problems


def _cv_problems(cfg: DictConfig) -> list[str]:
    """What stops ``cv.folds`` from cross-validating this run."""
    folds, fold = cfg.cv.folds, cfg.cv.fold
    if not folds:
        if fold is not None:
            return ["cv.fold picks one fold of a cross-validation; set cv.folds too (e.g. cv.folds=5), or remove cv.fold."]
        return []
    problems = []
    if folds < 2:
        problems.append(f"cv.folds={folds} must be 2 or more, or 0 or null for no cross-validation.")
    elif fold is not None and not 0 <= fold < folds:
        problems.append(f"cv.fold={fold} must be from 0 to {folds - 1} (the folds of cv.folds={folds}), or null for all.")
    if cfg.data.split_by == "time":
        problems.append(
            "cv.folds rotates validation over all train and val rows, which under data.split_by=time would train on "
            "the future; use data.split_by=random or group, or remove cv.folds."
        )
    if cfg.device.strategy == "ddp":
        problems.append("cv.folds does not combine with device=ddp yet; train the folds on one device, or remove cv.folds.")
    if cfg.resume not in (None, "auto") and fold is None:
        problems.append(
            f"resume={cfg.resume} names one checkpoint, and a cross-validation run has one per fold; use resume=auto "
            "with hydra.run.dir=<the run directory>, or set cv.fold to resume that fold."
        )
    if cfg.trainer.overfit_batches:
        problems.append("trainer.overfit_batches trains and validates on the same rows, which no fold does; remove one of them.")
    return problems


def _metric_problems(cfg: DictConfig) -> list[str]:
    """Monitored metrics and objectives that the run does not log, or whose direction is wrong."""
    problems: list[str] = []
    data = cfg.data
    targets = [Target(t.name, t.type) for t in data.targets if t.type in (CLASSIFICATION, REGRESSION, RATE, MULTILABEL, RANKING)]
    known = metric_names(targets, "val", list(data.get("ndcg_at", []))) + metric_names(targets, "train")[:1]
    for key, name in (("trainer.monitor", cfg.trainer.monitor), ("objective", cfg.objective)):
        if name not in known:
            problems.append(f"{key}={name!r} is not a metric this run logs; use one of: {', '.join(known)}.")
    problems += _direction_problems("trainer", cfg.trainer.monitor, cfg.trainer.mode)
    stop = cfg.trainer.early_stopping
    if stop.patience is not None:
        if stop.monitor is not None and stop.monitor not in known:
            problems.append(
                f"trainer.early_stopping.monitor={stop.monitor!r} is not a metric this run logs; "
                f"use one of: {', '.join(known)}."
            )
        elif stop.mode in ("min", "max"):
            problems += _direction_problems(
                "trainer.early_stopping", stop.monitor or cfg.trainer.monitor, stop.mode
            )
    if cfg.scheduler and "monitor" in cfg.scheduler and cfg.scheduler.monitor not in known:
        problems.append(
            f"scheduler.monitor={cfg.scheduler.monitor!r} is not a metric this run logs; "
            f"the plateau scheduler needs one of: {', '.join(known)}."
        )
    if cfg.scheduler and "monitor" in cfg.scheduler and cfg.scheduler.get("mode") in ("min", "max"):
        grows = cfg.scheduler.monitor.rsplit("/", 1)[-1] in HIGHER_IS_BETTER
        if grows != (cfg.scheduler.mode == "max"):
            problems.append(
                f"scheduler.monitor={cfg.scheduler.monitor} {'grows' if grows else 'falls'} as the model improves; "
                f"set scheduler.mode={'max' if grows else 'min'}."
            )
    return problems


def _direction_problems(prefix: str, monitor: str, mode: str) -> list[str]:
    """A metric that grows as the model improves needs mode=max, one that falls needs min."""
    grows = monitor.rsplit("/", 1)[-1] in HIGHER_IS_BETTER
    if mode in ("min", "max") and grows != (mode == "max"):
        return [
            f"{prefix}.monitor={monitor} {'grows' if grows else 'falls'} as the model improves; "
            f"set {prefix}.mode={'max' if grows else 'min'}."
        ]
    return []


def _trainer_problems(trainer: DictConfig) -> list[str]:
    problems = []
    decay = trainer.ema.decay
    if decay is not None and not 0 < decay < 1:
        problems.append(f"trainer.ema.decay={decay} must be between 0 and 1 (exclusive), e.g. 0.999, or null for no EMA.")
    if trainer.overfit_batches < 0:
        problems.append(f"trainer.overfit_batches={trainer.overfit_batches} must be 0 (off) or a number of batches.")
    if trainer.accumulate_grad_batches < 1:
        problems.append(
            f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches} must be at least 1."
        )
    if trainer.gradient_clip_val is not None and trainer.gradient_clip_val <= 0:
        problems.append(
            f"trainer.gradient_clip_val={trainer.gradient_clip_val} must be positive, e.g. 1.0, or null for no clipping."
        )
    stop = trainer.early_stopping
    if stop.patience is not None and stop.patience < 1:
        problems.append(
            f"trainer.early_stopping.patience={stop.patience} must be at least 1, or null to turn early stopping off."
        )
    if stop.min_delta < 0:
        problems.append(f"trainer.early_stopping.min_delta={stop.min_delta} must be 0 or more.")
    ckpt = trainer.checkpoint
    if ckpt.save_top_k < -1:
        problems.append(
            f"trainer.checkpoint.save_top_k={ckpt.save_top_k} must be -1 (all), 0 (none) or a count."
        )
    if ckpt.every_n_epochs < 1:
        problems.append(f"trainer.checkpoint.every_n_epochs={ckpt.every_n_epochs} must be at least 1.")
    if ckpt.every_n_steps is not None and ckpt.every_n_steps < 1:
        problems.append(f"trainer.checkpoint.every_n_steps={ckpt.every_n_steps} must be at least 1, or null.")
    if ckpt.save_best_only and ckpt.every_n_steps is not None:
        problems.append(
            "trainer.checkpoint.save_best_only=true writes no last.pt, so every_n_steps has nothing to write; "
            "unset one of them."
        )
    if ckpt.max_checkpoints is not None and ckpt.max_checkpoints < 1:
        problems.append(
            f"trainer.checkpoint.max_checkpoints={ckpt.max_checkpoints} must be at least 1, or null."
        )
    if ckpt.max_checkpoints is not None and ckpt.save_top_k != -1:
        problems.append(
            "trainer.checkpoint.max_checkpoints caps the files kept by save_top_k=-1 (every epoch); with "
            f"save_top_k={ckpt.save_top_k} at most that many are kept already, so set save_top_k=-1 or unset it."
        )
    return problems


def check_run_length(scheduler: DictConfig, total_steps: int) -> None:
    """Rules that need the number of optimizer steps, known once the training split is.

    Raises:
        UserError: a warm-up as long as the run or longer.
    """
    warmup = scheduler.get("warmup_steps") if scheduler and scheduler.get("warmup_ratio") is None else None
    if warmup is not None and warmup >= total_steps:
        raise UserError(_warmup_problem(warmup, total_steps))


def _warmup_problem(warmup: int, total_steps: int) -> str:
    return (
        f"scheduler.warmup_steps={warmup} is not shorter than the run ({total_steps} optimizer steps); "
        f"lower warmup_steps below {total_steps} or raise epochs."
    )


def known_run_length(cfg: DictConfig) -> int | None:
    """Optimizer steps of the whole run when the config alone tells (the built-in data, split by
    fractions, with train_test_split's rounding); None when the rows are in a file not yet read."""
    data = cfg.data
    if data.source != "seo_pages" or data.split_column or not 0 < data.val_fraction + data.test_fraction < 1:
        return None
    if data.split_by != "random" or cfg.cv.folds:  # whole groups, tied times, folds: sizes known once split
        return None
    if cfg.batch_size < 1 or cfg.epochs < 1 or cfg.trainer.accumulate_grad_batches < 1 or cfg.device.num_devices < 1:
        return None
    rows = data.num_rows - math.ceil((data.val_fraction + data.test_fraction) * data.num_rows)
    ranks = cfg.device.num_devices if cfg.device.strategy == "ddp" else 1
    rows_per_rank = math.ceil(rows / ranks)  # DistributedSampler pads each rank to the same count
    batches = math.ceil(rows_per_rank / cfg.batch_size)
    if cfg.trainer.overfit_batches:
        batches = min(batches, cfg.trainer.overfit_batches)
    return math.ceil(batches / cfg.trainer.accumulate_grad_batches) * cfg.epochs


def dry_build(cfg: DictConfig, group: str, node: DictConfig, allowed: dict[str, Callable]) -> list[str]:
    """The constructor's own refusals of its values (value ranges belong to the constructors), found
    before any data loads: seo-cli's registered components are built once from the sizes the config
    already gives, models on the meta device, where they allocate nothing. A user's own class is left
    to its real build."""
    fn = lookup(node._target_, f"{group}._target_", group, allowed)
    if fn not in REGISTRY[group].values():
        return []
    plain = OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    kwargs = {name: value for name, value in plain.items() if name not in HYDRA_KEYS}
    data = cfg.data
    targets = [Target(t.name, str(t.type)) for t in data.targets]
    param = torch.nn.Parameter(torch.zeros(1))
    runtime: dict[str, Any] = {
        "model": lambda: {
            "inputs": InputSpec(
                num_numeric=len(data.numeric_columns),
                categorical_cardinalities=[2] * len(data.categorical_columns),
                vocab_size=max(data.vocab_size, 8) if data.text_columns else 0,
                max_length=max(data.max_length or MAX_LENGTH, 1) if data.text_columns else 0,
                # A pretrained encoder's config, read from the user's own path (the command line is trusted).
                encoder_config=encoder_files(data.tokenizer)["config"] if data.tokenizer and data.text_columns else None,
            ),
            "heads": {t.name: 2 if t.type in (CLASSIFICATION, MULTILABEL) else 1 for t in targets},
        },
        "loss": lambda: {"targets": targets, "class_counts": {t.name: [1, 1] for t in targets if t.type == CLASSIFICATION}},
        "optimizer": lambda: {"params": [param]},
        "scheduler": lambda: {
            "optimizer": torch.optim.SGD([param], lr=1.0),
            "total_steps": known_run_length(cfg) or 1000,
            "steps_per_epoch": max((known_run_length(cfg) or 1000) // max(cfg.epochs, 1), 1),
        },
    }
    try:
        with torch.device("meta") if group == "model" else contextlib.nullcontext():
            fn(**runtime[group](), **kwargs)
    except UserError as err:
        return str(err).splitlines()
    except (ValueError, TypeError, ZeroDivisionError, RuntimeError, OverflowError) as err:
        return [refusal(group, plain, err)]
    return []


def _cuda_graph_conflicts(cfg: DictConfig) -> list[str]:
    """What stops ``trainer.cuda_graphs=true`` from capturing the training step, one line each."""
    fix = "or set trainer.cuda_graphs=false"
    problems = []
    if cfg.device.type == "cpu" or cfg.device.type == "mps":
        problems.append(
            f"trainer.cuda_graphs=true needs a CUDA GPU, not device.type={cfg.device.type}; {fix}."
        )
    if cfg.device.precision == "fp16":
        problems.append(
            "trainer.cuda_graphs=true cannot capture fp16 loss scaling (the scaler reads each step's overflow "
            f"check back to the host); use device.precision=bf16 {fix}."
        )
    if cfg.scheduler and "plateau" in str(cfg.scheduler.get("_target_")).lower():
        problems.append(
            "trainer.cuda_graphs=true cannot follow scheduler=plateau (it changes the rate from validation "
            f"results between captured steps); use scheduler=warmup_cosine {fix}."
        )
    if cfg.trainer.accumulate_grad_batches != 1:
        problems.append(
            "trainer.cuda_graphs=true captures one batch per step; set trainer.accumulate_grad_batches=1 "
            f"(raise batch_size instead) {fix}."
        )
    if cfg.device.strategy == "ddp":
        problems.append(f"trainer.cuda_graphs=true does not combine with device=ddp yet; {fix}.")
    if cfg.optimizer.get("fused") is False:
        problems.append(
            "trainer.cuda_graphs=true needs a capturable optimizer step; set optimizer.fused=null (fused on CUDA) "
            f"{fix}."
        )
    return problems
