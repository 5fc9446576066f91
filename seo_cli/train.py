"""seo-train: train a model on the built-in SEO dataset or a table file.

    seo-train                                     # the default model on the built-in data
    seo-train model=mlp optimizer=sgd epochs=5
    seo-train -m learning_rate=1e-3,5e-4          # a sweep

``train`` reads like the table of contents of a run: check the config, load the data, build each
component (announced on its own log line), ``fit``, score the best checkpoint on the test split, and
write the summary. Only this module, ``evaluate.py`` and ``predict.py`` read ``cfg``.
"""

import copy
import dataclasses
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel

from seo_cli import crossval, distributed
from seo_cli.checkpoint import Checkpoint, CheckpointManager, load_checkpoint, unwrap_model
from seo_cli.config import Placement, Sampler
from seo_cli.console import metrics_table, print_table, run_panel
from seo_cli.data.batches import fits_on_device, make_batches, pad_multiple
from seo_cli.data.parquet import StreamedData
from seo_cli.data.pipeline import PreparedData, SplitTensors, prepare_data, targets_of
from seo_cli.data.spec import CLASSIFICATION, RANKING
from seo_cli.errors import UserError
from seo_cli.evaluation import Scorer
from seo_cli.loggers import MetricsSink
from seo_cli.registry import build
from seo_cli.resume import check_resume_config, find_resume_checkpoint
from seo_cli.runtime import (
    check_precision,
    peak_flops,
    peak_memory_mb,
    pick_device,
    seed_everything,
    set_deterministic,
)
from seo_cli.trainer import FitResult, fit
from seo_cli.validation import check_run_length, check_train_config

log = logging.getLogger(__name__)


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Train, validate each epoch, test the best checkpoint, and write ``summary.json`` in ``run_dir``.

    Returns:
        The summary: objective value, final metrics, parameter count, wall time, peak memory.

    Raises:
        UserError: a mistake in the config or the data, found before training starts where possible.
    """
    started = time.perf_counter()
    allowed = check_train_config(cfg)  # every config problem at once, before any data loads
    make_run_dir(run_dir)
    resume_path, resume_state = resume_point(cfg, run_dir)
    device = set_up_device(cfg)
    fold = (cfg.cv.fold, cfg.cv.folds) if cfg.cv.fold is not None else None  # a model of a cross-validation
    data = prepare_data(OmegaConf.to_object(cfg.data), cfg.seed, fold)
    model, loss_fn, optimizer = build_model(cfg, data, device, allowed)
    data = frozen_features(cfg, data, model, device)
    train_batches, val_batches, test_batches = build_batches(cfg, data, device)
    steps_per_epoch = -(-len(train_batches) // cfg.trainer.accumulate_grad_batches)
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch, allowed)
    if resume_state is not None and scheduler is not None and resume_state.get("total_steps") != steps_per_epoch * cfg.epochs:
        resume_state = stretch_schedule(resume_state, scheduler, steps_per_epoch * cfg.epochs)
    sink = build_sink(cfg, run_dir, resume_state, allowed)
    names = data.preprocessor.class_names | data.preprocessor.label_names
    scorer = Scorer(
        targets_of(data.config), data.preprocessor.target_scale, names, cfg.device.precision, ndcg_at=list(cfg.data.ndcg_at)
    )
    log_plan(cfg, model, device, steps_per_epoch)
    try:
        result = fit(
            model,
            optimizer,
            loss_fn,
            train_batches,
            OmegaConf.to_object(cfg.trainer),
            validate=lambda m: scorer.evaluate(m, val_batches, "val", loss_fn).metrics,
            scheduler=scheduler,
            sink=sink,
            checkpoints=build_checkpoints(cfg, run_dir, data, steps_per_epoch * cfg.epochs),
            trial=build_trial(cfg, run_dir),
            resume_from=resume_state,
            peak_flops=peak_flops(device, cfg.device.precision, cfg.device.peak_tflops),
            profile_dir=run_dir / "profile" if cfg.trainer.profile else None,
        )
        # The test split is scored once, with the best weights, as the final word on the run.
        best_path = best_checkpoint(result, resume_path)
        load_weights(model, load_checkpoint(best_path, map_location=device))
        test_metrics = scorer.evaluate(model, test_batches, "test", loss_fn).metrics
        sink.log(test_metrics, result.global_step)
        sink.log_hparams(hparams_of(cfg), {k: v for k, v in result.best_metrics.items() if k.startswith("val/")} | test_metrics)
    finally:
        sink.close()
    summary = summarize(cfg, result, test_metrics, best_path, resume_path, model, device, started)
    if distributed.is_main():
        write_summary(run_dir, summary)
        report(cfg, result, summary)
    return summary


def cross_validate(cfg: DictConfig, run_dir: Path) -> dict:
    """``cv.folds=K``: train one model per fold, each in ``run_dir/fold_<k>/`` with its own checkpoints
    (``train`` with ``cv.fold=k``), then write ``cv_summary.csv`` and ``.json`` and the run's summary,
    whose objective value is the mean over the folds. ``resume=auto`` keeps the folds that finished and
    resumes the one that was interrupted.

    Under ``hparams_search=optuna`` the trial hears only that mean, at the end: the folds do not report
    their epochs to the pruner (fold 1's third epoch is no step further than fold 0's), so a
    cross-validated trial is never pruned.

    Returns:
        The run's summary (as ``train``'s, with ``metrics_std`` and the fold directories).
    """
    started = time.perf_counter()
    check_train_config(cfg)
    make_run_dir(run_dir)
    build_trial(cfg, run_dir)  # the study learns where the trial's files are
    summaries = []
    for k in range(cfg.cv.folds):
        fold_dir = crossval.fold_dir(run_dir, k)
        fold_cfg = copy.deepcopy(cfg)
        fold_cfg.cv.fold = k
        fold_cfg.tuning.trial_id = None  # see above: no per-epoch reports
        finished = finished_fold(fold_cfg, fold_dir) if cfg.resume == "auto" else None
        if finished is not None:
            log.info("Cross-validation fold %d finished before (resume=auto): its summary is kept.", k)
            summaries.append(finished)
            continue
        if not (fold_dir / "checkpoints").is_dir():
            fold_cfg.resume = None  # a fold not started yet starts afresh, without resume=auto's warning
        log.info("Cross-validation: training fold %d of folds 0-%d in %s", k, cfg.cv.folds - 1, fold_dir)
        summaries.append(train(fold_cfg, fold_dir))
    table, summary = crossval.summarize_folds(cfg.objective, summaries, run_dir)
    summary["wall_time_s"] = time.perf_counter() - started
    crossval.write_cv_summary(run_dir, table, summary)
    write_summary(run_dir, summary)
    log.info("Evaluate the ensemble of the folds on the test split with: seo-eval checkpoint=%s", run_dir)
    return summary


def finished_fold(cfg: DictConfig, fold_dir: Path) -> dict | None:
    """The summary of a fold that finished in an earlier attempt of this cross-validation, or None.

    Raises:
        UserError: it was trained with other settings (``check_resume_config``, as any resume).
    """
    path, best = fold_dir / "summary.json", fold_dir / "checkpoints" / "best.pt"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    if summary.get("status") != "ok" or not best.is_file():
        return None
    check_resume_config(load_checkpoint(best)["config"], cfg, cfg.resume_strict, best)
    return summary


def make_run_dir(run_dir: Path) -> None:
    """Raises:
    UserError: the directory cannot be created (a read-only or full file system).
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(
            f"cannot create the run directory {run_dir}: {err.strerror or err}; set hydra.run.dir to a writable path."
        ) from None


def resume_point(cfg: DictConfig, run_dir: Path) -> tuple[Path | None, dict | None]:
    """The checkpoint ``resume=`` names (checked against this run's config) and its state, or (None, None)."""
    path = find_resume_checkpoint(cfg.resume, run_dir) if cfg.resume else None
    if path is None:
        return None, None
    state = load_checkpoint(path)
    check_resume_config(state["config"], cfg, cfg.resume_strict, path)
    return path, state


def set_up_device(cfg: DictConfig) -> torch.device:
    """This process's device (under DDP on GPUs, its rank's GPU), with precision, determinism and seeds set."""
    device = pick_device(cfg.device.type, cfg.device.fallback)
    if distributed.enabled() and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    check_precision(cfg.device.precision, device)
    set_deterministic(cfg.deterministic)
    seed_everything(cfg.seed)
    return device


def build_model(
    cfg: DictConfig, data: PreparedData, device: torch.device, allowed: dict
) -> tuple[torch.nn.Module, torch.nn.Module, torch.optim.Optimizer]:
    """Model (DDP- and compile-wrapped as asked), loss and optimizer, each announced before it is built."""
    pre = data.preprocessor
    log.info("Instantiating model <%s>", cfg.model._target_)
    model = build(cfg.model, "model", allowed, inputs=pre.input_spec, heads=pre.heads)
    if cfg.model.get("name_or_path") and hasattr(model, "load_pretrained"):  # a resumed run then loads its own
        log.info("Loading the pretrained encoder's weights from %s", cfg.model.name_or_path)
        with torch.random.fork_rng():  # transformers may draw initial weights first: the run's seeds stay as they were
            model.load_pretrained()
    model = model.to(device)
    if distributed.enabled():
        # DDP copies rank 0's initial weights to every rank; each rank then draws its own dropout masks.
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        torch.manual_seed(cfg.seed + distributed.rank())
    # Checkpoints store the module under the wrappers (unwrap_model), so they load with or without them.
    model = torch.compile(model) if cfg.compile else model
    log.info("Instantiating loss <%s>", cfg.loss._target_)
    loss_fn = build(cfg.loss, "loss", allowed, targets=targets_of(data.config), class_counts=data.class_counts).to(device)
    log.info("Instantiating optimizer <%s>", cfg.optimizer._target_)
    kernel = {}
    if "fused" in cfg.optimizer and cfg.optimizer.fused is None and device.type in ("cuda", "cpu"):
        kernel["fused"] = True  # fused: null becomes the fused kernel on CUDA and the CPU (torch >= 2.4)
    if cfg.trainer.cuda_graphs:
        kernel["capturable"] = True  # torch's capture check asks for it, fused or not
    inner = unwrap_model(model)
    # A model may ask for its own groups (a pretrained encoder: its learning rate, no decay on biases and norms).
    groups = inner.parameter_groups(cfg.optimizer.get("weight_decay", 0.0)) if hasattr(inner, "parameter_groups") else None
    params = groups if groups is not None else model.parameters()
    optimizer = build(cfg.optimizer, "optimizer", allowed, params=params, **kernel)
    return model, loss_fn, optimizer


def frozen_features(cfg: DictConfig, data: PreparedData, model: torch.nn.Module, device: torch.device) -> PreparedData:
    """Under a frozen pretrained encoder (``model.freeze=all``) each split's pooled features, computed once:
    the heads train and validate on them, and the encoder does not run again until seo-eval."""
    inner = unwrap_model(model)
    if not getattr(inner, "freeze_all", False):
        return data
    if isinstance(data, StreamedData):
        raise UserError(
            "model.freeze=all computes each split's features once, in memory, which data.source=parquet_dir does "
            "not hold; use model.freeze=embeddings or a number of layers."
        )
    started = time.perf_counter()
    splits = {
        name: SplitTensors(
            {k: v for k, v in split.inputs.items() if k != "tokens"}
            | {"features": inner.features_of(split.inputs["tokens"], cfg.eval_batch_size, device).cpu()},
            split.targets,
        )
        for name, split in data.splits.items()
    }
    rows = sum(len(split) for split in splits.values())
    log.info("model.freeze=all: the encoder's features of %d rows computed once in %.1f s.", rows, time.perf_counter() - started)
    return dataclasses.replace(data, splits=splits)


def build_batches(cfg: DictConfig, data: PreparedData, device: torch.device) -> tuple[Any, Any, Any]:
    """Train (shuffled, sharded under DDP), validation and test batches, on the device when they fit.

    ``trainer.overfit_batches=N``: all three are the first N training batches, in a fixed order.
    """
    if isinstance(data, StreamedData):
        return stream_batches(cfg, data)
    splits = data.splits
    placement = cfg.data.placement
    if placement == Placement.auto:
        tensors = [t for s in splits.values() for t in (s.inputs, s.targets)]
        placement = Placement.device if fits_on_device(tensors, device) else Placement.stream
    log.info("Data placement: %s", "on the device" if placement == Placement.device else "streamed from host memory")
    loading = {
        "device": device,
        "placement": placement,
        "num_workers": cfg.data.num_workers,
        "pin_memory": cfg.data.pin_memory,
        "shard": (distributed.rank(), distributed.world_size()) if distributed.enabled() else None,
        # Compiled code and captured graphs are specialised to shapes: lengths padded to a multiple of 32.
        "pad_to_multiple_of": pad_multiple(cfg.data, compiled=cfg.compile or cfg.trainer.cuda_graphs),
        "bucket_by_length": cfg.data.bucket_by_length,  # shuffled (training) batches only
    }
    if cfg.trainer.overfit_batches:
        rows = cfg.trainer.overfit_batches * cfg.batch_size
        first = splits["train"].head(rows)
        log.info("trainer.overfit_batches=%d: training, validating and testing on the same %d rows.", cfg.trainer.overfit_batches, len(first))
        fixed = make_batches(first.inputs, first.targets, batch_size=cfg.batch_size, **loading)
        return fixed, fixed, fixed
    train = make_batches(
        splits["train"].inputs,
        splits["train"].targets,
        batch_size=cfg.batch_size,
        shuffle=True,
        seed=cfg.seed,
        groups=ranking_groups(data),
        balance_labels=balance_labels(cfg, data),
        **loading,
    )
    val, test = (
        make_batches(splits[name].inputs, splits[name].targets, batch_size=cfg.eval_batch_size, **loading)
        for name in ("val", "test")
    )
    return train, val, test


def ranking_groups(data: PreparedData) -> torch.Tensor | None:
    """The training rows' group codes when a target is ranked (its batches then hold whole groups), else None."""
    ranked = [t.name for t in targets_of(data.config) if t.type == RANKING]
    return data.splits["train"].targets[ranked[0]][:, 1] if ranked else None
def balance_labels(cfg: DictConfig, data: PreparedData) -> torch.Tensor | None:
    """``data.sampler=balanced``: the training rows' codes of the first classification target, whose classes
    each epoch draws equally often (``seo_cli.data.batches.ClassBalance``); None for ``random``."""
    if cfg.data.sampler != Sampler.balanced:
        return None
    target = next(t for t in targets_of(data.config) if t.type == CLASSIFICATION)  # validation made sure of one
    counts = data.class_counts[target.name]
    log.info(
        "data.sampler=balanced: each epoch draws %d training rows with replacement, each of the %d classes of %r "
        "equally often (the split has %s rows of them).",
        len(data.splits["train"]), sum(c > 0 for c in counts), target.name, "/".join(map(str, counts)),
    )
    return data.splits["train"].targets[target.name]


def stream_batches(cfg: DictConfig, data: StreamedData) -> tuple[Any, Any, Any]:
    """Train (shuffled: row groups and a shuffle buffer; a contiguous share per rank), validation and test
    batches of Parquet shards, read and preprocessed by ``data.num_workers`` DataLoader workers."""
    log.info(
        "Data placement: streamed from Parquet shards by %d DataLoader worker(s), shuffle buffer %s rows",
        cfg.data.num_workers,
        f"{cfg.data.shuffle_buffer:,}",
    )
    loading = {
        "seed": cfg.seed,
        "shuffle_buffer": cfg.data.shuffle_buffer,
        "shard": (distributed.rank(), distributed.world_size()) if distributed.enabled() else None,
        "pad_to_multiple_of": pad_multiple(cfg.data, compiled=cfg.compile or cfg.trainer.cuda_graphs),
        "pad_id": data.preprocessor.input_spec.pad_id,
        "num_workers": cfg.data.num_workers,
        "pin_memory": cfg.data.pin_memory,
    }
    train = data.batches("train", batch_size=cfg.batch_size, shuffle=True, **loading)
    val, test = (data.batches(name, batch_size=cfg.eval_batch_size, shuffle=False, **loading) for name in ("val", "test"))
    return train, val, test


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int, allowed: dict) -> Any:
    """The learning-rate schedule over the run's optimizer steps; None for scheduler=none."""
    total_steps = steps_per_epoch * cfg.epochs
    check_run_length(cfg.scheduler, total_steps)
    if not cfg.scheduler:
        return None
    log.info("Instantiating scheduler <%s>", cfg.scheduler._target_)
    return build(
        cfg.scheduler, "scheduler", allowed, optimizer=optimizer, total_steps=total_steps, steps_per_epoch=steps_per_epoch
    )


def build_sink(cfg: DictConfig, run_dir: Path, resume_state: dict | None, allowed: dict) -> MetricsSink:
    """metrics.jsonl and the chosen loggers (rank 0 only). A resumed run drops the rows the interrupted
    run logged after its checkpoint; a fresh one starts them anew."""
    resume_step = resume_state["global_step"] if resume_state is not None else (0 if cfg.resume else None)
    if not distributed.is_main():
        return MetricsSink(None)
    loggers = []
    for name, node in (cfg.logger or {}).items():
        log.info("Instantiating logger <%s>", node._target_)
        loggers.append(build(node, f"logger.{name}", allowed, log_dir=run_dir / name, resume_step=resume_step))
    sink = MetricsSink(run_dir / "metrics.jsonl", loggers, resume_step=resume_step)
    sink.log_config(OmegaConf.to_yaml(cfg, resolve=True))
    return sink


def build_checkpoints(cfg: DictConfig, run_dir: Path, data: PreparedData, total_steps: int) -> CheckpointManager:
    """Which files the run writes, with what every checkpoint carries besides the loop's state: the
    resolved config, the fitted preprocessing and the class counts (plain data, for seo-eval)."""
    policy = cfg.trainer.checkpoint
    return CheckpointManager(
        run_dir / "checkpoints",
        extra={
            "config": OmegaConf.to_yaml(cfg, resolve=True),
            "preprocessing": data.preprocessor.to_state(),
            "class_counts": data.class_counts,
            "total_steps": total_steps,
        },
        mode=cfg.trainer.mode,
        save_top_k=policy.save_top_k,
        every_n_epochs=policy.every_n_epochs,
        every_n_steps=policy.every_n_steps,
        save_best_only=policy.save_best_only,
        max_checkpoints=policy.max_checkpoints,
        write=distributed.is_main(),  # the other ranks make the same decisions, so every rank syncs at the same steps
    )


def build_trial(cfg: DictConfig, run_dir: Path) -> Any:
    """The Optuna trial this run is (set by the sweeper), on rank 0; None outside tuning."""
    if cfg.tuning.trial_id is None or not distributed.is_main():
        return None
    from seo_cli.tuning import TrialReporter  # imports optuna: only tuning runs pay for it

    # A test-split objective is known only at the end; the trial reports its validation twin.
    monitor = cfg.objective.replace("test/", "val/", 1)
    return TrialReporter(cfg.tuning.storage, cfg.tuning.study_name, cfg.tuning.trial_id, cfg.tuning.pruner, monitor, run_dir)


def log_plan(cfg: DictConfig, model: torch.nn.Module, device: torch.device, steps_per_epoch: int) -> None:
    accumulate = cfg.trainer.accumulate_grad_batches
    if distributed.enabled():
        log.info(
            "DDP: %d processes (%s) x batch_size %d = a global batch of %d rows per optimizer step",
            distributed.world_size(),
            torch.distributed.get_backend(),
            cfg.batch_size,
            cfg.batch_size * accumulate * distributed.world_size(),
        )
    log.info(
        "Model %s: %s parameters, on %s in precision %s; %d optimizer steps per epoch of %d x %d rows",
        cfg.model._target_.rsplit(".", 1)[-1],
        f"{sum(p.numel() for p in model.parameters()):,}",
        device,
        cfg.device.precision,
        steps_per_epoch,
        accumulate,
        cfg.batch_size,
    )


def stretch_schedule(state: Checkpoint, scheduler: Any, total_steps: int) -> Checkpoint:
    """Continue a run whose length changed (``epochs`` raised, say) on the schedule rebuilt for the new
    length: step the fresh scheduler to where the checkpoint stood and keep it instead of the saved one."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return state  # no horizon: its saved state carries over as it is
    with warnings.catch_warnings():
        # Stepping a scheduler with no optimizer step in between is what fast-forwarding is. Past the new
        # length the schedule stays where it ends (and a forged step count costs no more than the run).
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(min(state["global_step"], total_steps)):
            scheduler.step()
    log.info(
        "The run is now %d optimizer steps long (was %s): the learning-rate schedule is rebuilt for the "
        "new length and continues from step %d.",
        total_steps,
        state.get("total_steps"),
        state["global_step"],
    )
    return state.replaced(scheduler=None)


def load_weights(model: torch.nn.Module, state: Checkpoint) -> None:
    """Put a checkpoint's (served) weights into ``model``.

    Raises:
        UserError: they do not fit it (a best.pt beside a resumed file that another run wrote).
    """
    try:
        unwrap_model(model).load_state_dict(state["model"])
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[0][:200]
        raise UserError(
            f"checkpoint {state.path}: its weights do not fit this run's model ({reason}); resume from a checkpoint of this run."
        ) from None


def best_checkpoint(result: FitResult, resume_path: Path | None) -> Path:
    """best.pt of the run. A run resumed into a new directory whose best epoch came before the resume
    has its best.pt next to the resumed file (or the resumed file is the best there is)."""
    distributed.barrier()  # rank 0 has finished writing best.pt
    if result.best_checkpoint is not None or resume_path is None:
        return result.best_checkpoint
    best = resume_path.parent / "best.pt"
    if not best.exists():
        return resume_path
    saved = load_checkpoint(best)  # the best validation's step (its epoch, for a checkpoint older than best_step)
    if (saved["global_step"] != result.best_step) if result.best_step else (saved["epoch"] != result.best_epoch):
        return resume_path
    return best


def summarize(
    cfg: DictConfig,
    result: FitResult,
    test_metrics: dict[str, float],
    best_path: Path,
    resume_path: Path | None,
    model: torch.nn.Module,
    device: torch.device,
    started: float,
) -> dict:
    """What summary.json holds: status, objective, final val and test metrics, sizes, time and memory."""
    val_metrics = {k: v for k, v in result.best_metrics.items() if k.startswith("val/")}
    final = val_metrics | test_metrics
    objective_value = final.get(cfg.objective, result.best_metrics.get(cfg.objective))
    if result.pruned:  # a pruned trial is judged by where it stood when it stopped
        objective_value = result.history[-1].get(cfg.objective.replace("test/", "val/", 1))
    return {
        "status": "pruned" if result.pruned else "ok",
        "objective": cfg.objective,
        "objective_value": objective_value,
        "best_epoch": result.best_epoch,
        "epochs_trained": result.epochs_trained,
        "stopped_early": result.stopped_early,
        "global_step": result.global_step,
        "micro_batch_size": -(-cfg.batch_size // result.micro_batch_splits),
        "accumulate_grad_batches": cfg.trainer.accumulate_grad_batches * result.micro_batch_splits,
        "fp16_skipped_steps": result.fp16_skipped_steps,
        "resumed_from": str(resume_path) if resume_path is not None else None,
        "monitor": cfg.trainer.monitor,
        "best_checkpoint": str(best_path),
        "metrics": final,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "samples_per_second": result.samples_per_second,
        "wall_time_s": time.perf_counter() - started,
        # The trainer resets CUDA's peak each epoch to measure it per epoch; the run's peak is the largest.
        "peak_memory_mb": max(
            [peak_memory_mb(device)] + [row.get("memory/peak_allocated_mb", 0.0) for row in result.history]
        ),
        "device": str(device),
    }


def report(cfg: DictConfig, result: FitResult, summary: dict) -> None:
    """The final tables and where the best checkpoint is, for the person watching."""
    metrics = summary["metrics"]
    print_table(
        metrics_table(
            f"best epoch {result.best_epoch} by {cfg.trainer.monitor}",
            {split: {k.removeprefix(f"{split}/"): v for k, v in metrics.items() if k.startswith(f"{split}/")} for split in ("val", "test")},
        )
    )
    status = "pruned by the tuner" if result.pruned else "stopped early" if result.stopped_early else "done"
    best = summary["best_checkpoint"]
    print_table(run_panel(result.best_epoch, result.epochs_trained, cfg.trainer.monitor, result.best_value, best, status))
    log.info("Best checkpoint: %s", best)
    log.info("Evaluate it with: seo-eval checkpoint=%s", best)


def hparams_of(cfg: DictConfig) -> dict[str, float | int | str | bool]:
    """The knobs that tell runs apart, flat and scalar, for TensorBoard's HParams tab."""
    flat: dict[str, float | int | str | bool] = {}
    for key in ("epochs", "batch_size", "learning_rate", "weight_decay", "seed"):
        flat[key] = cfg[key]
    flat["precision"] = cfg.device.precision
    flat["accumulate_grad_batches"] = cfg.trainer.accumulate_grad_batches
    for group in ("model", "optimizer", "scheduler", "loss"):
        node = OmegaConf.to_container(cfg[group], resolve=True) if cfg[group] else {}
        for key, value in node.items():
            name = f"{group}.{key}" if key != "_target_" else group
            if key == "_target_":
                flat[name] = value.rsplit(".", 1)[-1]
            else:
                flat[name] = value if isinstance(value, int | float | str | bool) else str(value)
    return flat


def write_summary(run_dir: Path, summary: dict) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    except OSError as err:  # the run directory itself is what failed; the log already says so
        log.warning("summary.json could not be written to %s: %s", run_dir, err.strerror or err)


if __name__ == "__main__":  # torchrun -m seo_cli.train ...: each process trains as its rank
    from seo_cli.cli import train as seo_train

    seo_train()
