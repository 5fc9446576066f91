"""seo-train: train a model on the built-in SEO dataset or a table file.

    seo-train                                     # the default model on the built-in data
    seo-train model=mlp optimizer=sgd epochs=5
    seo-train -m learning_rate=1e-3,5e-4          # a sweep

Only this module, ``evaluate.py`` and ``predict.py`` read ``cfg`` or build components from it (``config.build``).
"""

import json
import logging
import sys
import time
import warnings
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel

from seo_cli import distributed
from seo_cli.checkpoint import CheckpointManager, load_checkpoint, unwrap_model
from seo_cli.config import build, config_dir, register_configs
from seo_cli.console import metrics_table, print_table, run_panel
from seo_cli.data.batches import fits_on_device, make_batches
from seo_cli.data.pipeline import prepare_data, targets_of
from seo_cli.data.spec import CLASSIFICATION
from seo_cli.early_stopping import EarlyStopping
from seo_cli.errors import UserError
from seo_cli.loggers import MetricsSink
from seo_cli.metrics import metric_mode
from seo_cli.resume import check_resume_config, find_resume_checkpoint
from seo_cli.runtime import (
    check_precision,
    peak_flops,
    peak_memory_mb,
    pick_device,
    seed_everything,
    set_deterministic,
)
from seo_cli.trainer import FitSettings, TrainingInterrupted, evaluation, fit
from seo_cli.validation import check_run_length, check_train_config

log = logging.getLogger(__name__)

register_configs()


def train(cfg: DictConfig, run_dir: Path, user_config_dir: bool = False) -> dict:
    """Train, validate each epoch, test the best checkpoint, and write ``summary.json`` in ``run_dir``.

    Returns:
        The summary: objective value, final metrics, parameter count, wall time, peak memory.

    Raises:
        UserError: a mistake in the config or the data, found before training starts where possible.
    """
    started = time.perf_counter()
    check_train_config(cfg, user_config_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(
            f"cannot create the run directory {run_dir}: {err.strerror or err}; set hydra.run.dir to a writable path."
        ) from None
    resume_state = None
    resume_path = find_resume_checkpoint(cfg.resume, run_dir) if cfg.resume else None
    if resume_path is not None:
        resume_state = load_checkpoint(resume_path)
        check_resume_config(resume_state["config"], cfg, cfg.resume_strict, resume_path)
    device = pick_device(cfg.device.type, cfg.device.fallback)
    ddp, rank, world = distributed.enabled(), distributed.rank(), distributed.world_size()
    if ddp and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU
    check_precision(cfg.device.precision, device)
    set_deterministic(cfg.deterministic)
    seed_everything(cfg.seed)

    data_cfg = OmegaConf.to_object(cfg.data)
    data = prepare_data(data_cfg, cfg.seed)
    pre, targets = data.preprocessor, targets_of(data_cfg)
    train_split, val_split, test_split = data.splits["train"], data.splits["val"], data.splits["test"]
    class_counts = {
        t.name: torch.bincount(train_split.targets[t.name], minlength=pre.heads[t.name]).tolist()
        for t in targets
        if t.type == CLASSIFICATION
    }

    model = build(cfg.model, inputs=pre.input_spec, heads=pre.heads, _convert_="object").to(device)
    if ddp:
        # DDP copies rank 0's initial weights to every rank; each rank then draws its own dropout masks.
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        torch.manual_seed(cfg.seed + rank)
    # Checkpoints store the module under the wrappers (unwrap_model), so they load with or without them.
    model = torch.compile(model) if cfg.compile else model
    loss_fn = build(cfg.loss, targets=targets, class_counts=class_counts, _convert_="object").to(device)
    optimizer = build(
        cfg.optimizer, params=model.parameters(), _convert_="object", **optimizer_kernel(cfg, device)
    )
    placement = cfg.data.placement
    if placement == "auto":
        placement = (
            "device"
            if fits_on_device([t for s in data.splits.values() for t in (s.inputs, s.targets)], device)
            else "stream"
        )
    log.info("Data placement: %s", "on the device" if placement == "device" else "streamed from host memory")
    loading = {
        "device": device,
        "placement": placement,
        "num_workers": cfg.data.num_workers,
        "pin_memory": cfg.data.pin_memory,
        "shard": (rank, world) if ddp else None,
    }
    train_batches = make_batches(
        train_split.inputs,
        train_split.targets,
        batch_size=cfg.batch_size,
        shuffle=True,
        seed=cfg.seed,
        **loading,
    )
    val_batches, test_batches = (
        make_batches(split.inputs, split.targets, batch_size=cfg.eval_batch_size, **loading)
        for split in (val_split, test_split)
    )
    accumulate = cfg.trainer.accumulate_grad_batches
    steps_per_epoch = -(-len(train_batches) // accumulate)
    total_steps = steps_per_epoch * cfg.epochs
    check_run_length(cfg.scheduler, total_steps)
    scheduler = None
    if cfg.scheduler:
        scheduler = build(
            cfg.scheduler, optimizer=optimizer, total_steps=total_steps, steps_per_epoch=steps_per_epoch
        )
    if resume_state is not None and scheduler is not None and resume_state.get("total_steps") != total_steps:
        resume_state = _stretch_schedule(resume_state, scheduler, total_steps)
    resume_step = resume_state["global_step"] if resume_state is not None else None
    if cfg.resume and resume_state is None:
        resume_step = 0  # a run killed before its first checkpoint: its logged rows go
    main_rank = rank == 0  # alone writes metrics, logger files and checkpoints
    loggers = [
        build(node, log_dir=run_dir / name, resume_step=resume_step)
        for name, node in (cfg.logger or {}).items()
        if main_rank
    ]
    sink = MetricsSink(run_dir / "metrics.jsonl" if main_rank else None, loggers, resume_step=resume_step)
    sink.log_config(OmegaConf.to_yaml(cfg, resolve=True))
    num_params = sum(p.numel() for p in model.parameters())
    if ddp:
        log.info(
            "DDP: %d processes (%s) x batch_size %d = a global batch of %d rows per optimizer step",
            world,
            torch.distributed.get_backend(),
            cfg.batch_size,
            cfg.batch_size * accumulate * world,
        )
    log.info(
        "Model %s: %s parameters, on %s in precision %s; %d optimizer steps per epoch of %d x %d rows",
        cfg.model._target_.rsplit(".", 1)[-1],
        f"{num_params:,}",
        device,
        cfg.device.precision,
        steps_per_epoch,
        accumulate,
        cfg.batch_size,
    )
    policy = cfg.trainer.checkpoint
    checkpoints = CheckpointManager(
        run_dir / "checkpoints",
        extra={
            "config": OmegaConf.to_yaml(cfg, resolve=True),
            "preprocessing": pre.to_state(),
            "class_counts": class_counts,
            "total_steps": total_steps,
        },
        mode=cfg.trainer.mode,
        save_top_k=policy.save_top_k,
        every_n_epochs=policy.every_n_epochs,
        every_n_steps=policy.every_n_steps,
        save_best_only=policy.save_best_only,
        max_checkpoints=policy.max_checkpoints,
        write=main_rank,  # the other ranks make the same decisions, so every rank syncs at the same steps
    )
    stop_cfg = cfg.trainer.early_stopping
    early_stopping = None
    if stop_cfg.patience is not None:
        stop_monitor = stop_cfg.monitor or cfg.trainer.monitor
        early_stopping = EarlyStopping(
            monitor=stop_monitor,
            mode=stop_cfg.mode or metric_mode(stop_monitor),
            patience=stop_cfg.patience,
            min_delta=stop_cfg.min_delta,
        )
    trial = None
    if cfg.tuning.trial_id is not None and main_rank:
        from seo_cli.tuning import TrialReporter  # imports optuna: only tuning runs pay for it

        # A test-split objective is known only at the end; the trial reports its validation twin.
        monitor = cfg.objective.replace("test/", "val/", 1)
        trial = TrialReporter(
            cfg.tuning.storage, cfg.tuning.study_name, cfg.tuning.trial_id, cfg.tuning.pruner, monitor
        )
    settings = FitSettings(
        epochs=cfg.epochs,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        monitor=cfg.trainer.monitor,
        mode=cfg.trainer.mode,
        scheduler_monitor=cfg.scheduler.get("monitor") if cfg.scheduler else None,
        progress=cfg.trainer.progress if main_rank else "plain",
        precision=cfg.device.precision,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        gradient_clip_algorithm=cfg.trainer.gradient_clip_algorithm,
        profile_dir=run_dir / "profile" if cfg.trainer.profile else None,
        peak_flops=peak_flops(device, cfg.device.precision, cfg.device.peak_tflops),
        seed=cfg.seed,
        cuda_graphs=cfg.trainer.cuda_graphs,
    )
    try:
        result = fit(
            model,
            optimizer,
            loss_fn,
            train_batches,
            val_batches,
            targets=targets,
            settings=settings,
            scheduler=scheduler,
            sink=sink,
            checkpoints=checkpoints,
            early_stopping=early_stopping,
            trial=trial,
            resume_from=resume_state,
            target_scale=pre.target_scale,
            class_names=pre.class_names,
        )
        # The test split is scored once, with the best weights, as the final word on the run. A run
        # resumed into a new directory whose best epoch came before the resume has its best.pt there.
        distributed.barrier()  # rank 0 has finished writing best.pt
        best_path = result.best_checkpoint
        if best_path is None and resume_path is not None:
            best_path = resume_path.parent / "best.pt"
            if not best_path.exists() or load_checkpoint(best_path)["epoch"] != result.best_epoch:
                best_path = resume_path  # the resumed file is the best there is in this run
        best = load_checkpoint(best_path, map_location=device)
        unwrap_model(model).load_state_dict(best["model"])
        test_metrics = evaluation(
            model,
            test_batches,
            loss_fn,
            targets,
            "test",
            pre.target_scale,
            pre.class_names,
            cfg.device.precision,
        ).metrics
        sink.log(test_metrics, result.global_step)
        best_val = {k: v for k, v in result.best_metrics.items() if k.startswith("val/")}
        sink.log_hparams(hparams_of(cfg), best_val | test_metrics)
    finally:
        sink.close()

    val_metrics = {k: v for k, v in result.best_metrics.items() if k.startswith("val/")}
    final = val_metrics | test_metrics
    objective_value = final.get(cfg.objective, result.best_metrics.get(cfg.objective))
    if result.pruned:  # a pruned trial is judged by where it stood when it stopped
        objective_value = result.history[-1].get(trial.monitor)
    summary = {
        "status": "pruned" if result.pruned else "ok",
        "objective": cfg.objective,
        "objective_value": objective_value,
        "best_epoch": result.best_epoch,
        "epochs_trained": len(result.history),
        "stopped_early": result.stopped_early,
        "global_step": result.global_step,
        "micro_batch_size": -(-cfg.batch_size // result.micro_batch_splits),
        "accumulate_grad_batches": accumulate * result.micro_batch_splits,
        "fp16_skipped_steps": result.fp16_skipped_steps,
        "resumed_from": str(resume_path) if resume_path is not None else None,
        "monitor": cfg.trainer.monitor,
        "best_checkpoint": str(best_path),
        "metrics": final,
        "num_parameters": num_params,
        "samples_per_second": result.samples_per_second,
        "wall_time_s": time.perf_counter() - started,
        # The trainer resets CUDA's peak each epoch to measure it per epoch; the run's peak is the largest.
        "peak_memory_mb": max(
            [peak_memory_mb(device)] + [row.get("memory/peak_allocated_mb", 0.0) for row in result.history]
        ),
        "device": str(device),
    }
    if not main_rank:
        return summary
    write_summary(run_dir, summary)
    print_table(
        metrics_table(
            f"best epoch {result.best_epoch} by {cfg.trainer.monitor}",
            {"val": _strip(val_metrics, "val/"), "test": _strip(test_metrics, "test/")},
        )
    )
    status = "pruned by the tuner" if result.pruned else "stopped early" if result.stopped_early else "done"
    print_table(
        run_panel(
            result.best_epoch,
            len(result.history),
            cfg.trainer.monitor,
            result.best_value,
            str(best_path),
            status,
        )
    )
    log.info("Best checkpoint: %s", best_path)
    log.info("Evaluate it with: seo-eval checkpoint=%s", best_path)
    return summary


def _stretch_schedule(state: dict, scheduler, total_steps: int) -> dict:
    """Continue a run whose length changed (``epochs`` raised, say) on the schedule rebuilt for the new
    length: step the fresh scheduler to where the checkpoint stood and keep it instead of the saved one."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return state  # no horizon: its saved state carries over as it is
    with warnings.catch_warnings():
        # Stepping a scheduler with no optimizer step in between is what fast-forwarding is.
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(state["global_step"]):
            scheduler.step()
    log.info(
        "The run is now %d optimizer steps long (was %s): the learning-rate schedule is rebuilt for the "
        "new length and continues from step %d.",
        total_steps,
        state.get("total_steps"),
        state["global_step"],
    )
    return {**state, "scheduler": None}


def optimizer_kernel(cfg: DictConfig, device: torch.device) -> dict[str, bool]:
    """``fused: null`` becomes the fused kernel on CUDA; under ``trainer.cuda_graphs`` the optimizer is
    made capturable (its step count stays on the device)."""
    kernel = {}
    if "fused" in cfg.optimizer and cfg.optimizer.fused is None and device.type == "cuda":
        kernel["fused"] = True
    if cfg.trainer.cuda_graphs:
        kernel["capturable"] = True  # torch's capture check asks for it, fused or not
    return kernel


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
            flat[name] = (
                value.rsplit(".", 1)[-1]
                if key == "_target_"
                else (value if isinstance(value, int | float | str | bool) else str(value))
            )
    return flat


def resume_command(overrides: list[str], run_dir: Path) -> str:
    """The seo-train command that continues the run in ``run_dir`` from its last checkpoint."""
    kept = [o for o in overrides if not o.startswith(("resume=", "hydra.run.dir="))]
    return " ".join(["seo-train", *kept, f"hydra.run.dir={run_dir}", "resume=auto"])


def write_summary(run_dir: Path, summary: dict) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    except OSError as err:  # the run directory itself is what failed; the log already says so
        log.warning("summary.json could not be written to %s: %s", run_dir, err.strerror or err)


def user_config_dir_given() -> bool:
    """True when the user added their own config directory (``--config-dir``) to the search path."""
    sources = HydraConfig.get().runtime.config_sources
    return any(source.provider == "command-line" for source in sources)


def _strip(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {k.removeprefix(prefix): v for k, v in metrics.items()}


def run_job(
    cfg: DictConfig, run_dir: Path, overrides: list[str], *, multirun: bool, user_config_dir: bool
) -> tuple[int, float | None]:
    """Train, turning what can go wrong into a log line, a ``summary.json`` status and an exit code.

    Returns:
        (exit code, objective value): 0 and the objective; 1 and NaN for a user error (a sweep goes on);
        128 + signal number for an interrupted run.

    Raises:
        Exception: our bug, outside a sweep: the traceback says where.
    """
    writes = distributed.is_main()
    try:
        summary = train(cfg, run_dir, user_config_dir=user_config_dir)
    except TrainingInterrupted as stop:
        where = f"{stop.checkpoint} is saved" if stop.checkpoint else "no checkpoint was written"
        log.error("%s; %s. Resume with: %s", stop, where, resume_command(overrides, run_dir))
        if writes:
            write_summary(run_dir, {"status": "interrupted", "error": str(stop), "overrides": overrides})
        return 128 + stop.signum, None
    except UserError as err:
        log.error("%s", err)
        if writes:
            write_summary(
                run_dir, {"status": "failed", "error": str(err).splitlines()[0], "overrides": overrides}
            )
        return 1, float("nan")
    except Exception as err:
        if not multirun:
            raise
        # In a sweep the other jobs still run; the traceback goes to this job's log.
        log.exception("The job failed")
        first_line = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        if writes:
            write_summary(run_dir, {"status": "failed", "error": first_line, "overrides": overrides})
        return 1, float("nan")
    summary["overrides"] = overrides
    if writes:
        write_summary(run_dir, summary)
    return 0, summary["objective_value"]


def train_as_rank(
    cfg: DictConfig, run_dir: Path, overrides: list[str], *, multirun: bool, user_config_dir: bool
) -> tuple[int, float | None]:
    """``run_job`` as one rank of a DDP job (started by torchrun or by ``launch_ddp``)."""
    distributed.init_process_group(cfg.device.type, cfg.device.timeout_s)
    if not distributed.is_main():
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 tells the story; the others only warn
    try:
        return run_job(cfg, run_dir, overrides, multirun=multirun, user_config_dir=user_config_dir)
    except Exception as err:
        if not distributed.is_collective_failure(err):
            raise
        # Another rank died or hung: the launcher names it; this rank only says it stopped.
        log.error(
            "DDP rank %d stopped: it lost contact with another rank (%s).",
            distributed.rank(),
            str(err).strip().splitlines()[0][:200],
        )
        return 1, float("nan")
    finally:
        distributed.destroy()


def launch_ddp(
    cfg: DictConfig, run_dir: Path, overrides: list[str], user_config_dir: bool
) -> tuple[int, float | None]:
    """Check the config, freeze it into the run directory and run it on ``device.num_devices`` workers.

    Returns:
        (exit code, objective value), read from the ``summary.json`` rank 0 wrote.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        check_train_config(cfg, user_config_dir)
        gpus = torch.cuda.device_count()
        if cfg.device.type == "cuda" and not gpus:
            raise UserError(
                "device=ddp with device.type=cuda needs a GPU and this machine has none; use device.type=cpu."
            )
        if cfg.device.type != "cpu" and gpus and cfg.device.num_devices > gpus:
            raise UserError(
                f"device.num_devices={cfg.device.num_devices} but this machine has {gpus} GPU(s); "
                f"use device.num_devices={gpus} or fewer (one process per GPU)."
            )
    except UserError as err:
        log.error("%s", err)
        write_summary(
            run_dir, {"status": "failed", "error": str(err).splitlines()[0], "overrides": overrides}
        )
        return 1, float("nan")
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (run_dir / ".hydra" / distributed.FROZEN_CONFIG).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    if not (run_dir / ".hydra" / "overrides.yaml").exists():
        OmegaConf.save(OmegaConf.create(overrides), run_dir / ".hydra" / "overrides.yaml")
    log.info("Starting %d DDP workers for %s", cfg.device.num_devices, run_dir)
    summary_path = run_dir / "summary.json"
    summary_path.unlink(missing_ok=True)
    try:
        distributed.launch(run_dir, cfg.device.num_devices, cfg.device.timeout_s)
    except SignalException as err:  # Ctrl-C or SIGTERM to this process: the launcher passed it to the workers
        saved = (run_dir / "checkpoints" / "last.pt").exists()
        log.error(
            "stopped by %s; %s. Resume with: %s",
            err.sigval.name,
            f"{run_dir / 'checkpoints' / 'last.pt'} holds the last saved position"
            if saved
            else "no checkpoint was written",
            resume_command(overrides, run_dir),
        )
        return 128 + int(err.sigval), None
    except ChildFailedError as err:
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        if summary.get("status") == "interrupted":
            return err.get_first_failure()[1].exitcode, None
        if summary.get("status") != "failed":  # a worker died without a word: say which one
            last = run_dir / "checkpoints" / "last.pt"
            after = (
                f"; resume from its last checkpoint with: {resume_command(overrides, run_dir)}"
                if last.exists()
                else ""
            )
            message = f"{distributed.describe_failure(err)}, so the job was stopped{after}."
            log.error("%s", message)
            write_summary(run_dir, {"status": "failed", "error": message, "overrides": overrides})
        return 1, float("nan")
    summary = json.loads(summary_path.read_text())
    return 0, summary["objective_value"]


def job(cfg: DictConfig) -> float | None:
    """The whole command inside Hydra's app (``seo_cli.cli`` is the light entry point calling it)."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    user_dir = user_config_dir_given()
    if distributed.in_worker():  # started by torchrun on one of several machines
        code, objective = train_as_rank(cfg, run_dir, overrides, multirun=multirun, user_config_dir=user_dir)
    elif cfg.device.strategy == "ddp":
        code, objective = launch_ddp(cfg, run_dir, overrides, user_dir)
    else:
        code, objective = run_job(cfg, run_dir, overrides, multirun=multirun, user_config_dir=user_dir)
    if code >= 128 or (code and not multirun):
        sys.exit(code)  # a user error in a sweep is a row in the sweep's table, not the end of the sweep
    return objective


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> float | None:
    return job(cfg)


if __name__ == "__main__":
    main()
