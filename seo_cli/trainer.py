"""The training loop: ``fit``, to read top to bottom, and the pieces of its step beside it.

Each optimizer step runs forward and backward over the window's micro-batches, clip, ``optimizer.step()``,
``scheduler.step()``, ``zero_grad`` in that order; logging, validation, early stopping and checkpointing
are called in plain sight, with no callbacks. Values stay on the device between logging intervals:
the loop reads them (a host sync) only there, at the end of an epoch and before a checkpoint.
"""

import contextlib
import itertools
import logging
import math
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils import _pytree as pytree

from seo_cli import distributed
from seo_cli.checkpoint import (
    Checkpoint,
    CheckpointManager,
    check_resumable,
    rng_state,
    set_rng_state,
    unwrap_model,
)
from seo_cli.config import TrainerConfig
from seo_cli.console import TrainProgress
from seo_cli.early_stopping import EarlyStopping, improves
from seo_cli.errors import UserError
from seo_cli.evaluation import Batch, TrainingDiverged, batch_size_of, move_to
from seo_cli.graphs import StepGraph
from seo_cli.loggers import MetricsSink
from seo_cli.metrics import metric_mode
from seo_cli.monitor import MemoryWindow, RunClock, profiler
from seo_cli.runtime import autocast, seed_everything
from seo_cli.scheduler import stop_signals

log = logging.getLogger(__name__)

# Under fp16 the scaler skips a step whose gradients overflowed and halves its scale; this many
# skips in a row means the loss itself is not finite, and no scale will fix that.
FP16_MAX_SKIPS_IN_A_ROW = 20


class TrainingInterrupted(Exception):
    """A stop signal arrived (``scheduler.stop_signals``: SIGTERM or SIGINT, in a submitit job the
    scheduler's pre-emption warning); ``last.pt`` was written (``checkpoint``) before the loop stopped."""

    def __init__(self, signum: int, global_step: int, checkpoint: Path | None) -> None:
        self.signum, self.global_step, self.checkpoint = signum, global_step, checkpoint
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {global_step}")


@dataclass
class LoopState:
    """Where the loop stands: everything a resumed run needs to continue as if it never stopped."""

    epoch: int = 0  # epochs completed
    global_step: int = 0  # optimizer steps taken
    batches_done: int = 0  # batches of the current epoch already trained on
    epoch_loss: float = 0.0  # sum of row losses of the current epoch so far (kept on the device in the loop)
    epoch_rows: int = 0
    window_losses: list[float] = field(default_factory=list)  # per-step losses since the last log line
    window_grad_norms: list[float] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    best_value: float = math.nan
    best_epoch: int = 0  # the 1-based epoch of the best validation; 0: no best yet
    best_step: int = 0  # the optimizer step of the best validation
    best_metrics: dict[str, float] = field(default_factory=dict)
    micro_splits: int = 1  # each batch is cut in this many micro-batches (grows on CUDA out-of-memory)
    fp16_skipped_steps: int = 0
    fp16_skip_streak: int = 0
    last_finite_loss: tuple[int, float] | None = None  # (step, loss) of the last finite step loss read

    def state_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    def end_epoch(self) -> None:
        self.epoch, self.batches_done, self.epoch_loss, self.epoch_rows = self.epoch + 1, 0, 0.0, 0

    def epoch_number(self) -> int:
        """The 1-based epoch the loop is inside, or has just ended."""
        return self.epoch + (self.batches_done > 0)

    def record_validation(self, metrics: dict[str, float], monitored: float, mode: str) -> bool:
        """Add a validation to the history; True when it is the best so far (the first always is, so
        best.pt always exists)."""
        self.history.append(metrics)
        improved = self.best_epoch == 0 or improves(monitored, self.best_value, mode)
        if improved:
            self.best_value, self.best_metrics = monitored, metrics
            self.best_epoch, self.best_step = self.epoch_number(), self.global_step
        return improved

    def count_fp16_skip(self, skipped: bool) -> None:
        """Raises:
        TrainingDiverged: FP16_MAX_SKIPS_IN_A_ROW steps in a row were skipped by the fp16 scaler.
        """
        self.fp16_skipped_steps += int(skipped)
        self.fp16_skip_streak = self.fp16_skip_streak + 1 if skipped else 0
        if self.fp16_skip_streak >= FP16_MAX_SKIPS_IN_A_ROW:
            raise TrainingDiverged(
                f"under device.precision=fp16 the last {self.fp16_skip_streak} optimizer steps (up to step "
                f"{self.global_step + 1}) had non-finite gradients and were skipped, so the loss itself is NaN or "
                "infinite; lower learning_rate, set trainer.gradient_clip_val=1.0, or use device.precision=bf16 or 32."
            )


@dataclass
class FitResult:
    history: list[dict[str, float]]  # one entry per validation: each epoch's end, and every val_check_interval steps
    best_epoch: int
    best_value: float
    best_metrics: dict[str, float]
    global_step: int
    samples_per_second: float
    best_step: int = 0
    epochs_trained: int = 0
    best_checkpoint: Path | None = None
    last_checkpoint: Path | None = None
    stopped_early: bool = False
    pruned: bool = False  # stopped by a tuning trial's pruner
    micro_batch_splits: int = 1
    fp16_skipped_steps: int = 0


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[Any, Any], Tensor],
    train_batches: Iterable[tuple[Batch, Batch]],
    config: TrainerConfig,
    *,
    validate: Callable[[nn.Module], dict[str, float]] | None = None,
    scheduler: Any = None,
    sink: MetricsSink | None = None,
    checkpoints: CheckpointManager | None = None,
    trial: Any = None,
    resume_from: dict[str, Any] | None = None,
    peak_flops: float | None = None,
    profile_dir: Path | None = None,
) -> FitResult:
    """Train ``model`` for ``config.epochs`` epochs, validating after each (and every
    ``config.val_check_interval`` optimizer steps, if set).

    Args:
        train_batches: re-iterable ``(inputs, targets)`` batches; ``set_epoch(epoch)`` is called if it has one.
        validate: the validation metrics (``val/...``) of the model it is given; None: no validation.
        trial: a tuning trial (``seo_cli.tuning.TrialReporter``); the run stops (pruned) when it says so.
        resume_from: a checkpoint written by this loop; training continues exactly where it stopped.

    Raises:
        TrainingDiverged: the loss or the weights became NaN or infinite (the message names the step).
        TrainingInterrupted: SIGTERM or SIGINT (in a submitit job: SIGINT or the pre-emption warning);
            ``last.pt`` was written first.
    """
    device, accumulate = next(model.parameters()).device, config.accumulate_grad_batches
    num_batches, loop, sink = count_batches(train_batches), LoopState(), sink or MetricsSink(None)
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")  # a no-op unless fp16
    ema = averaged(model, config.ema.decay)  # None unless trainer.ema.decay
    run = RunState(model, optimizer, scheduler, scaler, loop, checkpoints, early_stopping(config), ema)
    run.restore(resume_from, config.seed)
    backward = Backward(model, loss_fn, scaler, config.precision, accumulate)
    clip = partial(clip_gradients, model, config.gradient_clip_val, config.gradient_clip_algorithm)
    graph = StepGraph(config.cuda_graphs, model, loss_fn, optimizer, config.precision, clip)
    window, clock = LossWindow(config, loop, device, run), RunClock(distributed.world_size())
    progress = TrainProgress(config.progress, config.epochs, -(-num_batches // accumulate))
    check = ValidationCheck(run, validate, config, sink, progress, trial)
    with stop_on_signals() as signals, profiler(profile_dir) as profiling, progress:
        for epoch in range(loop.epoch, loop.epoch if run.finished() else config.epochs):
            model.train()
            getattr(train_batches, "set_epoch", lambda epoch: None)(epoch)
            progress.start_epoch(epoch)
            epoch_loss, memory = torch.tensor(loop.epoch_loss, device=device), MemoryWindow(device)
            speed = clock.start_epoch(getattr(unwrap_model(model), "flops_per_token", None), peak_flops)
            # A resumed run skips the batches its checkpoint had already trained on in this epoch.
            batches = remaining_batches(train_batches, loop.batches_done)
            for batch_window in speed.timed(windows(batches, accumulate)):
                replayed = graph.replay(batch_window)  # cuda_graphs: forward to optimizer.step() in one launch
                if replayed is None:
                    loss_sum, rows = backward(batch_window, loop)  # halves the micro-batch on CUDA out-of-memory
                    scaler.unscale_(optimizer)  # clipping and the logged norm see the true gradients
                    norm, scale = clip(), scaler.get_scale()  # note: get_scale is a sync, under fp16 only
                    scaler.step(optimizer)  # optimizer.step(); fp16 skips it when the gradients overflowed
                    scaler.update()
                    loop.count_fp16_skip(scaler.get_scale() < scale)
                else:
                    loss_sum, rows, norm = replayed
                if ema is not None:
                    ema.update_parameters(unwrap_model(model))
                if scheduler is not None and not isinstance(scheduler, ReduceLROnPlateau):
                    scheduler.step()
                if replayed is None:  # a replayed graph assigns its gradients afresh
                    optimizer.zero_grad(set_to_none=True)
                profiling.step()
                loop.global_step, loop.batches_done = loop.global_step + 1, loop.batches_done + len(batch_window)
                loop.epoch_rows, epoch_loss = loop.epoch_rows + rows, epoch_loss + loss_sum
                speed.count(batch_window, rows)
                window.add(loss_sum / rows, norm)
                if window.due():
                    values = window.pop() | {"train/lr": current_lr(optimizer)} | speed.read()
                    sink.log(values, loop.global_step)
                    progress.update(epoch, -(-loop.batches_done // accumulate), values)
                mid_epoch = loop.batches_done < num_batches or not num_batches
                if mid_epoch and check.due(loop.global_step):  # trainer.val_check_interval: validate inside the epoch
                    window.sync()
                    if check(run.epoch_so_far(epoch, epoch_loss, num_batches), epoch_loss, signals):
                        break
                if signals or (run.wants_step_save() and mid_epoch):
                    window.sync()
                    run.save_last(epoch_loss, collective=not signals)
                    if signals:
                        raise TrainingInterrupted(signals[0], loop.global_step, run.last_saved)
            if check.stopped:  # early stopping or the tuner, at a validation inside the epoch
                break
            window.sync()  # .item() waits for the device's queued work, so the epoch's time includes it
            metrics = {"epoch": float(epoch + 1), **run.epoch_train_loss(epoch_loss)}
            metrics |= clock.end_epoch(train_batches) | memory.read()
            loop.end_epoch()
            if check(metrics, epoch_loss, signals):
                break
    return run.result(clock.samples_per_second(), check.pruned)


class RunState:
    """What a checkpoint holds of the run (weights, optimizer, scheduler, scaler, EMA, RNG, position,
    early stopping, the checkpoint files), writing it through ``checkpoints`` and putting it back."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        scaler: torch.amp.GradScaler,
        loop: LoopState,
        checkpoints: CheckpointManager | None,
        early_stop: EarlyStopping | None,
        ema: AveragedModel | None,
    ) -> None:
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.loop, self.checkpoints, self.early_stop, self.ema = loop, checkpoints, early_stop, ema
        self.device = next(model.parameters()).device
        self.ddp = ddp_of(model) is not None
        self.last_saved: Path | None = None  # the last.pt this run wrote or resumed from
        self.best_saved: Path | None = None
        self.saved_step = -1  # the optimizer step of the last validation's checkpoint files

    def state_dict(self, epoch_loss: Tensor, collective: bool = True) -> dict[str, Any]:
        """``collective``: every rank is here (not a signal, which one rank may see first)."""
        loop, ema = self.loop, self.ema
        # Under EMA, "model" holds the averaged weights (what validation, best.pt and seo-eval use) and
        # "training_model" the weights the optimizer steps, which a resumed run continues from.
        served = ema.module if ema is not None else unwrap_model(self.model)
        return {
            "model": served.state_dict(),
            **({"training_model": unwrap_model(self.model).state_dict()} if ema is not None else {}),
            "optimizer": plain_lr(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "epoch": loop.epoch,
            "global_step": loop.global_step,
            "position": loop.state_dict() | self.epoch_partial(epoch_loss, collective),
            "metrics": loop.history[-1] if loop.history else {},
            "history": loop.history,
            "best": {"value": loop.best_value, "epoch": loop.best_epoch},
            "early_stopping": self.early_stop.state_dict() if self.early_stop is not None else None,
            "rng": rng_state(),
            # Under DDP every rank's own generators, so dropout continues as it would have.
            "rng_ranks": distributed.gather_objects(rng_state()) if self.ddp and collective else None,
            "world_size": distributed.world_size(),
        }

    def epoch_partial(self, epoch_loss: Tensor, collective: bool = True) -> dict[str, Any]:
        """The current epoch's running loss sum and rows (a sync): under DDP summed over the ranks, which
        rank 0 alone carries on after a resume, except when a signal stops one rank on its own."""
        if self.loop.batches_done == 0:  # at an epoch boundary (on every rank at once)
            return {"epoch_loss": 0.0, "epoch_rows": 0}
        loss, rows = epoch_loss.detach().clone(), torch.tensor(self.loop.epoch_rows, device=self.device)
        if collective:
            distributed.all_reduce_sum(loss)
            distributed.all_reduce_sum(rows)
        return {"epoch_loss": loss.item(), "epoch_rows": int(rows.item())}

    def epoch_so_far(self, epoch: int, epoch_loss: Tensor, num_batches: int) -> dict[str, float]:
        """The (0-based) ``epoch``'s progress as a fractional epoch, and its training loss so far."""
        done = self.loop.batches_done / num_batches if num_batches else 0.0
        return {"epoch": epoch + done, **self.epoch_train_loss(epoch_loss)}

    def epoch_train_loss(self, epoch_loss: Tensor) -> dict[str, float]:
        totals = self.epoch_partial(epoch_loss)  # under DDP: summed over the ranks
        return {"train/loss": totals["epoch_loss"] / max(totals["epoch_rows"], 1)}

    def check_weights(self) -> None:
        """Before a checkpoint: a finite loss can still be followed by a step that overflows the weights.

        Raises:
            TrainingDiverged: a weight is NaN or infinite.
        """
        finite = torch.stack([p.detach().isfinite().all() for p in self.model.parameters()]).all()
        if not finite.item():  # note: a sync, at a checkpoint, which syncs anyway
            raise TrainingDiverged(
                f"the model's weights became NaN or infinite by step {self.loop.global_step}; lower learning_rate or "
                "set trainer.gradient_clip_val=1.0 (no checkpoint was written with those weights)."
            )

    def save_last(self, epoch_loss: Tensor, collective: bool = True) -> None:
        """last.pt mid-epoch (every_n_steps, or a signal)."""
        if self.checkpoints is not None:
            self.check_weights()
            self.last_saved = self.checkpoints.save("last.pt", self.state_dict(epoch_loss, collective))

    def save_validation(self, value: float, monitor: str, improved: bool, epoch_loss: Tensor, interrupted: bool) -> None:
        """The files due after the validation just recorded (no numbered files inside an epoch); under a
        signal last.pt even with save_best_only."""
        if self.checkpoints is None:
            return
        state, loop = self.state_dict(epoch_loss), self.loop
        self.saved_step = loop.global_step
        best, last = self.checkpoints.save_epoch(
            state, epoch=loop.epoch, monitor=monitor, value=value, improved=improved, numbered=not loop.batches_done
        )
        self.best_saved, self.last_saved = best or self.best_saved, last or self.last_saved
        if interrupted and self.checkpoints.save_best_only:
            self.last_saved = self.checkpoints.save("last.pt", self.state_dict(epoch_loss, collective=False))

    def result(self, samples_per_second: float, pruned: bool) -> FitResult:
        loop = self.loop
        return FitResult(
            history=loop.history,
            best_epoch=loop.best_epoch,
            best_value=loop.best_value,
            best_metrics=loop.best_metrics,
            global_step=loop.global_step,
            samples_per_second=samples_per_second,
            best_step=loop.best_step,
            epochs_trained=loop.epoch,
            best_checkpoint=self.best_path(),
            last_checkpoint=self.last_saved,
            stopped_early=self.early_stop is not None and self.early_stop.stopped_epoch > 0,
            pruned=pruned,
            micro_batch_splits=loop.micro_splits,
            fp16_skipped_steps=loop.fp16_skipped_steps,
        )

    def wants_step_save(self) -> bool:
        """last.pt is due at this optimizer step (trainer.checkpoint.every_n_steps)."""
        step = self.loop.global_step
        return self.checkpoints is not None and self.checkpoints.wants_step_save(step) and self.saved_step != step

    def stops_early(self, metrics: dict[str, float]) -> bool:
        """Tell early stopping the validation just recorded; True (and a log line) when the run should stop."""
        stop = self.early_stop
        if stop is None or not stop.update(metric(metrics, stop.monitor), self.loop.epoch_number()):
            return False
        log.info(
            "Early stopping in epoch %d: %s has not improved by more than %g for %d validations (best %.6g).",
            self.loop.epoch_number(),
            stop.monitor,
            stop.min_delta,
            stop.patience,
            stop.best,
        )
        return True

    def best_path(self) -> Path | None:
        """best.pt of this run, or the one written before a resume when nothing improved since."""
        if self.best_saved is None and self.checkpoints is not None:
            existing = self.checkpoints.directory / "best.pt"
            return existing if existing.exists() else None
        return self.best_saved

    def finished(self) -> bool:
        """True when the resumed checkpoint's early stopping had already ended the run."""
        stop = self.early_stop
        if stop is not None and stop.bad_epochs >= stop.patience:
            log.info("Early stopping had ended this run after epoch %d; nothing is left to train.", self.loop.epoch)
            return True
        return False

    def restore(self, state: dict[str, Any] | None, seed: int) -> None:
        """Put every piece of a checkpoint back, the RNG states last, just before the loop draws from them.

        Under DDP each rank takes its own RNG state back; a checkpoint from another number of processes
        re-seeds the ranks instead and, mid-epoch, continues after the same share of the epoch's rows.
        A ``scheduler`` entry of None keeps the scheduler as built (a schedule stretched to a new length).

        Raises:
            UserError: the weights or optimizer state do not fit this run's model or optimizer.
        """
        if state is None:
            return
        where = f"checkpoint {state.path}" if isinstance(state, Checkpoint) else "the checkpoint"
        check_resumable(state, self.model, self.optimizer, self.scheduler, self.scaler, where)
        loop, optimizer, scheduler = self.loop, self.optimizer, self.scheduler
        try:
            unwrap_model(self.model).load_state_dict(state.get("training_model", state["model"]))
            if self.ema is not None and "training_model" in state:
                self.ema.module.load_state_dict(state["model"])
                self.ema.n_averaged.fill_(1)  # averaging goes on (0 would copy the weights afresh)
            saved_keys = set(state["optimizer"]["param_groups"][0]) - {"params"}
            if saved_keys != set(optimizer.param_groups[0]) - {"params"}:
                raise ValueError(f"the saved optimizer has the settings {', '.join(sorted(saved_keys))}")
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as err:
            reason = str(err).strip().splitlines()[0][:200]
            raise UserError(
                f"the checkpoint's weights or optimizer state do not fit this run's model or optimizer ({reason}); "
                "resume with the checkpoint's model and optimizer settings."
            ) from err
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scheduler is not None and not isinstance(scheduler, ReduceLROnPlateau):
            # A schedule rebuilt for a new run length sets the rate; the optimizer's saved rate is the old one.
            for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr(), strict=True):
                group["lr"] = lr
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        loop.load_state_dict(state["position"])
        if self.checkpoints is not None and state.get("checkpoints"):
            self.checkpoints.load_state_dict(state["checkpoints"])
            self.last_saved = self.checkpoints.directory / "last.pt" if (self.checkpoints.directory / "last.pt").exists() else None
        if self.early_stop is not None and state.get("early_stopping"):
            self.early_stop.load_state_dict(state["early_stopping"])
        saved_world, world, rank = state.get("world_size", 1), distributed.world_size(), distributed.rank()
        if rank > 0:  # rank 0 carries the interrupted epoch's loss sum, already summed over the ranks
            loop.epoch_loss, loop.epoch_rows = 0.0, 0
        ranks = state.get("rng_ranks")
        if not distributed.enabled():
            set_rng_state(state["rng"])
        elif ranks is not None and len(ranks) == world:
            set_rng_state(ranks[rank])
        else:
            seed_everything(seed + rank + loop.global_step)
            log.info(
                "The checkpoint was written by %d process(es) and this run has %d: the ranks' random number "
                "generators are re-seeded, so dropout draws differ from an uninterrupted run.",
                saved_world,
                world,
            )
            if loop.batches_done and saved_world != world:
                loop.batches_done = loop.batches_done * saved_world // world  # the same share of the epoch
        log.info(
            "Resumed at epoch %d, step %d%s on %s.",
            loop.epoch,
            loop.global_step,
            f" (batch {loop.batches_done} of epoch {loop.epoch + 1})" if loop.batches_done else "",
            self.device,
        )


class ValidationCheck:
    """A validation and what follows from it, in this order: the plateau scheduler, the best so far, the
    log, early stopping, the checkpoint files, the tuner's verdict. At each epoch's end and, with
    ``trainer.val_check_interval``, every that many optimizer steps inside an epoch; early stopping's
    patience and the tuner's steps count these validations.
    """

    def __init__(
        self,
        run: RunState,
        validate: Callable[[nn.Module], dict[str, float]] | None,
        config: TrainerConfig,
        sink: MetricsSink,
        progress: TrainProgress,
        trial: Any,
    ) -> None:
        self.run, self.validate, self.config, self.sink, self.progress, self.trial = run, validate, config, sink, progress, trial
        self.interval = config.val_check_interval
        self.stopped = self.pruned = False

    def due(self, global_step: int) -> bool:
        return self.interval is not None and global_step % self.interval == 0

    def __call__(self, metrics: dict[str, float], epoch_loss: Tensor, signals: list[int]) -> bool:
        """Validate and act on it; True when the run stops here (early stopping or the tuner).

        Raises:
            TrainingInterrupted: a signal arrived; last.pt was written first.
        """
        run, loop, config = self.run, self.run.loop, self.config
        run.check_weights()  # a last step that overflowed the weights stops here, not in the metrics
        metrics |= validated(self.validate, run.ema.module if run.ema is not None else run.model, loop.global_step)
        if isinstance(run.scheduler, ReduceLROnPlateau):
            run.scheduler.step(metric(metrics, getattr(run.scheduler, "monitor", None) or config.monitor))
        monitored = metric(metrics, config.monitor)
        improved = loop.record_validation(metrics, monitored, config.mode)
        self.sink.log(metrics, loop.global_step)
        self.progress.validated(loop.epoch_number() - 1, metrics, loop.global_step if loop.batches_done else None)
        stopping = run.stops_early(metrics)
        run.save_validation(monitored, config.monitor, improved, epoch_loss, interrupted=bool(signals))
        if signals:
            raise TrainingInterrupted(signals[0], loop.global_step, run.last_saved)
        self.pruned = should_prune(self.trial, len(loop.history), metrics)
        self.stopped = self.pruned or stopping
        if loop.batches_done:  # inside an epoch: training goes on
            run.model.train()
        return self.stopped


class LossWindow:
    """Per-step losses (and pre-clip gradient norms) since the last log line, written on the device and
    read at the next sync point: the host learns the exact step a loss went NaN without a sync per step.

    Under DDP the step losses are averaged over the ranks when read, so every rank logs the same loss
    and stops at the same NaN step. A resumed window longer than a new, shorter interval still fits.
    """

    def __init__(self, config: TrainerConfig, loop: LoopState, device: torch.device, run: RunState) -> None:
        self.every_n_steps, self.loop, self.run = config.log_every_n_steps, loop, run
        self.clipped = config.gradient_clip_val is not None
        size = max(self.every_n_steps, len(loop.window_losses) + 1)
        self.losses = torch.zeros(size, device=device)
        self.norms = torch.zeros(size, device=device)
        self.steps = len(loop.window_losses)
        self.losses[: self.steps] = torch.tensor(loop.window_losses, device=device)
        self.norms[: len(loop.window_grad_norms)] = torch.tensor(loop.window_grad_norms, device=device)

    def add(self, loss: Tensor, norm: Tensor | None) -> None:
        self.losses[self.steps] = loss
        if norm is not None:
            self.norms[self.steps] = norm
        self.steps += 1

    def due(self) -> bool:
        return self.loop.global_step % self.every_n_steps == 0 or self.steps == len(self.losses)

    def sync(self) -> None:
        """Copy the window to the host (a sync) and stop the run at a non-finite loss.

        Raises:
            TrainingDiverged: a step's loss is NaN or infinite (not under fp16, whose scaler skips such steps).
        """
        loop, steps = self.loop, self.steps
        if distributed.world_size() > 1:
            window = self.losses[:steps]
            distributed.all_reduce_sum(window)
            window /= distributed.world_size()
        loop.window_losses = self.losses[:steps].tolist()
        loop.window_grad_norms = self.norms[:steps].tolist() if self.clipped else []
        for step, value in enumerate(loop.window_losses, start=loop.global_step - steps + 1):
            if math.isfinite(value):
                loop.last_finite_loss = (step, value)
            elif not self.run.scaler.is_enabled():
                raise diverged(step, loop.last_finite_loss, self.run.last_saved)

    def pop(self) -> dict[str, float]:
        """The interval's mean loss (and gradient norm, and fp16 skips), then an empty window."""
        self.sync()
        loop = self.loop
        values = {"train/loss": sum(loop.window_losses) / self.steps}
        if self.clipped:
            values["train/grad_norm"] = sum(loop.window_grad_norms) / self.steps
        if self.run.scaler.is_enabled():
            values["train/fp16_skipped_steps"] = float(loop.fp16_skipped_steps)
        self.steps, loop.window_losses, loop.window_grad_norms = 0, [], []
        return values


class Backward:
    """Forward and backward over one accumulation window, each batch cut into ``loop.micro_splits``
    micro-batches; on CUDA out-of-memory the micro-batch halves (accumulation doubles) and it tries again.

    Under DDP a rank that runs out of memory must not leave the others waiting in the gradient
    all-reduce: the first step (where the memory peak is set) runs without DDP's sync, the ranks agree on
    whether any ran out, and its gradients are averaged by hand. Later steps' shapes are the same, so they fit.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, Any], Tensor],
        scaler: torch.amp.GradScaler,
        precision: str,
        accumulate: int,
    ) -> None:
        self.model, self.loss_fn, self.scaler, self.precision, self.accumulate = model, loss_fn, scaler, precision, accumulate
        self.device = next(model.parameters()).device
        self.ddp = ddp_of(model)
        self.probed = self.ddp is None

    def __call__(self, window: list[tuple[Batch, Batch]], loop: LoopState) -> tuple[Tensor, int]:
        """Returns:
        The sum of the row losses over the window (on the device) and its number of rows.
        """
        while True:
            probing, out_of_memory = not self.probed, False
            try:
                result = forward_backward(
                    self.model, self.loss_fn, window, loop.micro_splits, self.precision, self.scaler, sync=not probing
                )
            except torch.cuda.OutOfMemoryError:
                out_of_memory = True  # handled below, once the exception's frames are gone
            if probing:
                out_of_memory = distributed.any_rank(out_of_memory, self.device)
                if not out_of_memory:
                    distributed.average_gradients(list(self.model.parameters()))
                    self.probed = True
            if not out_of_memory:
                return result
            if self.ddp is not None and not probing:
                raise UserError(
                    f"CUDA ran out of memory on DDP rank {distributed.rank()} at step {loop.global_step + 1}, after "
                    "the first step had settled the micro-batch size; lower batch_size or raise "
                    "trainer.accumulate_grad_batches."
                )
            for param in self.model.parameters():
                param.grad = None
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            loop.micro_splits = smaller_micro_batch(window, loop.micro_splits, loop.global_step + 1, self.accumulate)


def forward_backward(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor],
    window: list[tuple[Batch, Batch]],
    splits: int,
    precision: str,
    scaler: torch.amp.GradScaler,
    sync: bool = True,
) -> tuple[Tensor, int]:
    """A micro-batch's loss is weighted by its share of its batch's rows and divided by the number of
    batches in the window (a short last window by its own length), so the gradient is that of the mean
    of the batch losses however the batches were cut. Under DDP only the last micro-batch's backward
    all-reduces the gradients (``no_sync`` before it); none does with ``sync=False``.
    """
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    window_rows = 0
    ddp = ddp_of(model)
    for index, (inputs, labels) in enumerate(window):
        inputs, labels = move_to(inputs, device), move_to(labels, device)
        rows = batch_size_of(labels)
        micro_batches = list(zip(split_batch(inputs, splits), split_batch(labels, splits), strict=True))
        for micro_index, (micro_inputs, micro_labels) in enumerate(micro_batches):
            last = index == len(window) - 1 and micro_index == len(micro_batches) - 1
            no_sync = ddp.no_sync() if ddp is not None and not (sync and last) else contextlib.nullcontext()
            micro_rows = batch_size_of(micro_labels)
            with no_sync:
                with autocast(device, precision):
                    loss = loss_fn(model(micro_inputs), micro_labels)
                weight = micro_rows / rows / len(window)
                scaler.scale(loss * weight if weight != 1.0 else loss).backward()
            loss_sum += loss.detach().float() * micro_rows
        window_rows += rows
    return loss_sum, window_rows


def split_batch(batch: Batch, parts: int) -> list[Batch]:
    """``batch`` cut along its first dimension into ``parts`` near-equal pieces (fewer if it has fewer rows)."""
    if parts == 1:
        return [batch]
    leaves, spec = pytree.tree_flatten(batch)
    pieces = [torch.tensor_split(leaf, min(parts, leaf.shape[0])) for leaf in leaves]
    return [pytree.tree_unflatten(list(piece), spec) for piece in zip(*pieces, strict=True)]


def smaller_micro_batch(window: list[tuple[Batch, Batch]], splits: int, step: int, accumulate: int) -> int:
    """After a CUDA out-of-memory error: twice as many micro-batches per batch, or a clear error at one row.

    Raises:
        UserError: the micro-batch was already a single row.
    """
    rows = max(batch_size_of(labels) for _, labels in window)
    micro = -(-rows // splits)
    if micro <= 1:
        raise UserError(
            f"CUDA ran out of memory at step {step} even with a micro-batch of 1 row; use a smaller model "
            "or data.max_length, device.precision=bf16, or a GPU with more memory."
        )
    log.warning(
        "CUDA out of memory at step %d with micro-batch %d: halving it to %d and doubling gradient "
        "accumulation to %d, so the effective batch stays %d rows.",
        step,
        micro,
        -(-rows // (2 * splits)),
        2 * splits * accumulate,
        rows * accumulate,
    )
    return 2 * splits


def clip_gradients(model: nn.Module, clip_val: float | None, algorithm: str) -> Tensor | None:
    """Clip the gradients in place; returns their total 2-norm before clipping (on the device), or None
    when ``clip_val`` is None (no clipping)."""
    if clip_val is None:
        return None
    params = [p for p in model.parameters() if p.grad is not None]
    if algorithm == "norm":
        return torch.nn.utils.clip_grad_norm_(params, clip_val)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    torch.nn.utils.clip_grad_value_(params, clip_val)
    return norm


def averaged(model: nn.Module, decay: float | None) -> AveragedModel | None:
    """An exponential moving average of the weights (trainer.ema.decay); None when off."""
    if decay is None:
        return None
    return AveragedModel(unwrap_model(model), multi_avg_fn=get_ema_multi_avg_fn(decay))


def early_stopping(config: TrainerConfig) -> EarlyStopping | None:
    """The early stopping ``config.early_stopping`` asks for (by default on ``config.monitor``); None when off."""
    stop = config.early_stopping
    if stop.patience is None:
        return None
    monitor = stop.monitor or config.monitor
    return EarlyStopping(monitor, stop.mode or metric_mode(monitor), stop.patience, stop.min_delta)


def validated(validate: Callable[[nn.Module], dict[str, float]] | None, model: nn.Module, step: int) -> dict[str, float]:
    """The validation metrics, or none without validation data."""
    if validate is None:
        return {}
    try:
        return validate(model)
    except TrainingDiverged as err:
        raise TrainingDiverged(f"by step {step}, {err}") from None


def should_prune(trial: Any, validations: int, metrics: dict[str, float]) -> bool:
    """Ask the tuning trial whether to stop, reporting the ``validations``-th validation (the epoch without
    val_check_interval); under DDP only rank 0 holds the trial, and its answer goes to every rank (so
    every DDP rank must call this)."""
    prune = trial is not None and trial.should_prune(validations, metric(metrics, trial.monitor))
    if distributed.enabled():
        prune = distributed.from_main(prune)
    if prune:
        log.info("The tuner pruned this trial after validation %d.", validations)
    return prune


def diverged(step: int, last_finite: tuple[int, float] | None, last_saved: Path | None) -> TrainingDiverged:
    where = f"; the last finite loss was {last_finite[1]:.6g} at step {last_finite[0]}" if last_finite else ""
    saved = f" ({last_saved} holds the last weights saved before it)" if last_saved is not None else ""
    return TrainingDiverged(
        f"the training loss became NaN or infinite at step {step}{where}; lower learning_rate, set "
        f"trainer.gradient_clip_val=1.0, or check the data for extreme values{saved}."
    )


def metric(metrics: dict[str, float], name: str) -> float:
    if name not in metrics:
        raise UserError(
            f"the monitored metric {name!r} is not logged by this run; choose one of: {', '.join(sorted(metrics))}."
        )
    return metrics[name]


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    lr = optimizer.param_groups[0]["lr"]
    return lr.item() if isinstance(lr, Tensor) else float(lr)


def plain_lr(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state dict whose learning rates are numbers (cuda_graphs keeps them as device tensors),
    so the checkpoint resumes with or without graphs."""
    for group in state["param_groups"]:
        if isinstance(group.get("lr"), Tensor):
            group["lr"] = group["lr"].item()
    return state


def ddp_of(model: nn.Module) -> nn.parallel.DistributedDataParallel | None:
    """The DDP wrapper of ``model`` (under torch.compile's, if any); None in a single process."""
    inner = getattr(model, "_orig_mod", model)
    return inner if isinstance(inner, nn.parallel.DistributedDataParallel) else None


def count_batches(batches: Iterable) -> int:
    """Batches per epoch (0 when the iterable cannot tell).

    Raises:
        UserError: a one-shot iterator, which would be empty after the first epoch.
    """
    if iter(batches) is batches:
        raise UserError(
            "train_batches is a one-shot iterator (a generator, say) that would be empty after the first epoch; "
            "pass a DataLoader, a Dataset or a list of batches."
        )
    return len(batches) if hasattr(batches, "__len__") else 0


def remaining_batches(batches: Iterable[tuple[Batch, Batch]], done: int) -> Iterator[tuple[Batch, Batch]]:
    """The epoch's batches after its first ``done``: a stream that can seek (``iter_from``, Parquet shards)
    starts there; others are iterated past them."""
    if hasattr(batches, "iter_from"):
        return batches.iter_from(done)
    return itertools.islice(batches, done, None)


def windows(batches: Iterable[tuple[Batch, Batch]], size: int) -> Iterator[list[tuple[Batch, Batch]]]:
    """Consecutive lists of ``size`` batches; the last may be shorter."""
    iterator = iter(batches)
    while window := list(itertools.islice(iterator, size)):
        yield window


@contextmanager
def stop_on_signals() -> Iterator[list[int]]:
    """Turn SIGTERM and SIGINT (in a submitit job: SIGINT and the pre-emption warning) into a request the
    loop answers after its current step (saving last.pt); yields the list of signals received. A second
    signal does not cut the save short: it is only logged. Only the main thread can install handlers;
    elsewhere signals keep their usual effect.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def request_stop(signum: int, frame: Any) -> None:
        if received:
            log.warning("%s received again: still saving last.pt before stopping.", signal.Signals(signum).name)
            return
        received.append(signum)
        log.warning("%s received: saving last.pt after the current step.", signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, request_stop) for sig in stop_signals()}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
