"""The training loop: one function, ``fit``, to read top to bottom.

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
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from seo_cli import distributed
from seo_cli.checkpoint import CheckpointManager, rng_state, set_rng_state, unwrap_model
from seo_cli.console import TrainProgress
from seo_cli.data.spec import Target
from seo_cli.early_stopping import EarlyStopping, improves
from seo_cli.errors import UserError
from seo_cli.loggers import MetricsSink
from seo_cli.metrics import as_numpy, flatten, target_reports
from seo_cli.runtime import autocast, grad_scaler, peak_rss_mb, seed_everything

log = logging.getLogger(__name__)

Batch = Any  # a tensor, or a dict / list / tuple of tensors

# Under fp16 the scaler skips a step whose gradients overflowed and halves its scale; this many
# skips in a row means the loss itself is not finite, and no scale will fix that.
FP16_MAX_SKIPS_IN_A_ROW = 20


class TrainingDiverged(UserError):
    """The loss or the gradients stopped being finite; the message names the step."""


class TrainingInterrupted(Exception):
    """SIGTERM or SIGINT arrived; ``last.pt`` was written (``checkpoint``) before the loop stopped."""

    def __init__(self, signum: int, global_step: int, checkpoint: Any) -> None:
        self.signum, self.global_step, self.checkpoint = signum, global_step, checkpoint
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {global_step}")


@dataclass
class FitSettings:
    epochs: int
    log_every_n_steps: int = 50
    monitor: str = "val/loss"  # picks best.pt
    mode: str = "min"  # min | max
    scheduler_monitor: str | None = None  # metric a ReduceLROnPlateau scheduler steps on
    progress: str = "auto"  # auto | rich | plain
    precision: str = "32"  # 32 | bf16 | fp16
    accumulate_grad_batches: int = 1  # batches per optimizer step
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: str = "norm"  # norm | value
    profile_dir: Any = None  # a directory: profile a few steps with torch.profiler and write the trace there
    peak_flops: float | None = None  # device peak FLOP/s: logs speed/mfu (models with flops_per_token)
    seed: int = 0  # re-seeds the ranks of a DDP run resumed on a different number of processes
    cuda_graphs: bool = False  # replay the whole training step from a CUDA graph (batches of the first shape)


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
    best_epoch: int = 0  # 0: no best yet
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


@dataclass
class FitResult:
    history: list[dict[str, float]]
    best_epoch: int
    best_value: float
    best_metrics: dict[str, float]
    global_step: int
    samples_per_second: float
    best_checkpoint: Any = None
    last_checkpoint: Any = None
    stopped_early: bool = False
    pruned: bool = False  # stopped by a tuning trial's pruner
    micro_batch_splits: int = 1
    fp16_skipped_steps: int = 0


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[Any, Any], Tensor],
    train_batches: Iterable[tuple[Batch, Batch]],
    val_batches: Iterable[tuple[Batch, Batch]] | None,
    *,
    targets: list[Target],
    settings: FitSettings,
    scheduler: Any = None,
    sink: MetricsSink | None = None,
    checkpoints: CheckpointManager | None = None,
    early_stopping: EarlyStopping | None = None,
    trial: Any = None,
    resume_from: dict[str, Any] | None = None,
    target_scale: dict[str, tuple[float, float]] | None = None,
    class_names: dict[str, list[str]] | None = None,
) -> FitResult:
    """Train ``model`` for ``settings.epochs`` epochs, validating after each.

    Args:
        train_batches: yields ``(inputs, targets)``; ``model(inputs)`` gives the outputs and
            ``loss_fn(outputs, targets)`` a scalar. Its ``set_epoch(epoch)`` is called if it has one.
        val_batches: the same for validation; None trains without validation.
        targets: names and task types of the outputs, for the metrics.
        checkpoints: writes last.pt / best.pt / top-k files; None writes nothing.
        early_stopping: stops the run when its metric stops improving; None trains every epoch.
        trial: a tuning trial (``seo_cli.tuning.TrialReporter``): told ``trial.monitor`` after each
            epoch; the run stops (pruned) when it answers that the trial should stop.
        resume_from: a checkpoint written by this loop; training continues exactly where it stopped.
            Its ``scheduler`` entry may be None to keep the scheduler as built (a schedule stretched
            to a new length by the caller).
        target_scale: per regression target, the (mean, std) its values were standardised with.

    Returns:
        The per-epoch history and the best epoch by ``settings.monitor``.

    Raises:
        TrainingDiverged: the loss became NaN or infinite (the message names the step).
        TrainingInterrupted: SIGTERM or SIGINT; ``last.pt`` was written first.
    """
    device = next(model.parameters()).device
    sink = sink or MetricsSink(None)
    if iter(train_batches) is train_batches:
        raise UserError(
            "train_batches is a one-shot iterator (a generator, say) that would be empty after the first epoch; "
            "pass a DataLoader, a Dataset or a list of batches."
        )
    accumulate = settings.accumulate_grad_batches
    num_batches = len(train_batches) if hasattr(train_batches, "__len__") else 0
    steps_per_epoch = -(-num_batches // accumulate)
    scaler = grad_scaler(device, settings.precision)
    ddp, world = _ddp_of(model), distributed.world_size()
    loop = LoopState()
    if resume_from is not None:
        _restore(
            resume_from, loop, model, optimizer, scheduler, scaler, checkpoints, early_stopping, settings.seed
        )
    # Under DDP the first step settles the micro-batch size collectively (see the step below).
    probed = ddp is None
    graph = None  # trainer.cuda_graphs: the captured step, made at the first step

    def checkpoint_state(collective: bool = True) -> dict[str, Any]:
        """``collective``: every rank is here (not a signal, which one rank may see first)."""
        return {
            "model": unwrap_model(model).state_dict(),
            "optimizer": _plain_lr(optimizer.state_dict()),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": loop.epoch,
            "global_step": loop.global_step,
            "position": loop.state_dict() | epoch_partial(collective),
            "metrics": loop.history[-1] if loop.history else {},
            "history": loop.history,
            "best": {"monitor": settings.monitor, "value": loop.best_value, "epoch": loop.best_epoch},
            "early_stopping": early_stopping.state_dict() if early_stopping is not None else None,
            "rng": rng_state(),
            # Under DDP every rank's own generators, so dropout continues as it would have.
            "rng_ranks": distributed.gather_objects(rng_state()) if ddp is not None and collective else None,
            "world_size": world,
        }

    def epoch_partial(collective: bool = True) -> dict[str, Any]:
        """The current epoch's running loss sum and rows (a sync): under DDP summed over the ranks, which
        rank 0 alone carries on after a resume, except when a signal stops one rank on its own."""
        if loop.batches_done == 0:  # at an epoch boundary (on every rank at once)
            return {"epoch_loss": 0.0, "epoch_rows": 0}
        loss, rows = epoch_loss.detach().clone(), torch.tensor(loop.epoch_rows, device=device)
        if collective:
            distributed.all_reduce_sum(loss)
            distributed.all_reduce_sum(rows)
        return {"epoch_loss": loss.item(), "epoch_rows": int(rows.item())}

    progress = TrainProgress(settings.progress, settings.epochs, steps_per_epoch)
    flops_per_token = getattr(unwrap_model(model), "flops_per_token", None)
    best_path = last_path = None
    samples, train_seconds, pruned = 0, 0.0, False
    # Per-step losses (and pre-clip gradient norms) since the last log line, written on the device and
    # read at the next sync point: the host learns the exact step a loss went NaN without a sync per step.
    # A resumed window longer than a new, shorter interval still fits; it is logged at the next line.
    window_size = max(settings.log_every_n_steps, len(loop.window_losses) + 1)
    step_losses = torch.zeros(window_size, device=device)
    step_norms = torch.zeros(window_size, device=device)
    step_losses[: len(loop.window_losses)] = torch.tensor(loop.window_losses, device=device)
    step_norms[: len(loop.window_grad_norms)] = torch.tensor(loop.window_grad_norms, device=device)
    window_steps = len(loop.window_losses)
    stopping = early_stopping is not None and early_stopping.bad_epochs >= early_stopping.patience
    if stopping:
        log.info("Early stopping had ended this run after epoch %d; nothing is left to train.", loop.epoch)

    def check_weights() -> None:
        """Before a checkpoint: a finite loss can still be followed by a step that overflows the weights."""
        finite = torch.stack([p.detach().isfinite().all() for p in model.parameters()]).all()
        if not finite.item():  # note: a sync, at a checkpoint, which syncs anyway
            raise TrainingDiverged(
                f"the model's weights became NaN or infinite by step {loop.global_step}; lower learning_rate or "
                "set trainer.gradient_clip_val=1.0 (no checkpoint was written with those weights)."
            )

    def read_window() -> None:
        """Copy the window's step values to the host (a sync) and stop the run at a non-finite loss.

        Under DDP the step losses are first averaged over the ranks, so every rank logs the same loss
        and stops at the same NaN step (averaging values already averaged changes nothing).
        """
        if world > 1:
            window = step_losses[:window_steps]
            distributed.all_reduce_sum(window)
            window /= world
        loop.window_losses = step_losses[:window_steps].tolist()
        loop.window_grad_norms = step_norms[:window_steps].tolist() if settings.gradient_clip_val else []
        first_step = loop.global_step - window_steps + 1
        for step, value in enumerate(loop.window_losses, start=first_step):
            if math.isfinite(value):
                loop.last_finite_loss = (step, value)
            elif scaler is None:
                raise _diverged(step, loop.last_finite_loss)

    with _stop_on_signals() as received, _profiler(settings.profile_dir) as profiler:
        try:
            for epoch in range(loop.epoch, settings.epochs if not stopping else loop.epoch):
                model.train()
                if hasattr(train_batches, "set_epoch"):
                    train_batches.set_epoch(epoch)
                progress.start_epoch(epoch)
                epoch_loss = torch.tensor(loop.epoch_loss, device=device)
                resident_bytes = _start_memory_window(device)
                epoch_samples, epoch_start = 0, time.perf_counter()
                speed = _SpeedWindow(epoch_start, flops_per_token, settings.peak_flops, world)
                # A resumed run skips the batches its checkpoint had already trained on in this epoch.
                batches = itertools.islice(train_batches, loop.batches_done, None)
                for window in speed.timed(_windows(batches, accumulate)):
                    if settings.cuda_graphs and graph is None:
                        graph = _GraphedStep(model, loss_fn, optimizer, window, settings)
                    if graph is not None and graph.fits(window):
                        # The whole step, forward to optimizer.step (clipping included), in one launch.
                        loss_sum, rows, norm = graph.replay(window)
                        if settings.gradient_clip_val is not None:
                            step_norms[window_steps] = norm
                    else:
                        if graph is not None:
                            optimizer.zero_grad(set_to_none=False)  # the graph's gradient tensors stay
                        while True:
                            # Under DDP a rank that runs out of memory must not leave the others waiting in
                            # the gradient all-reduce: the first step (where the memory peak is set) runs
                            # without DDP's sync, the ranks agree on whether any ran out, and its gradients
                            # are averaged by hand. Later steps' shapes are the same, so they fit.
                            probing, out_of_memory = not probed, False
                            try:
                                loss_sum, rows = _forward_backward(
                                    model,
                                    loss_fn,
                                    window,
                                    loop.micro_splits,
                                    device,
                                    settings.precision,
                                    scaler,
                                    sync=not probing,
                                )
                            except torch.cuda.OutOfMemoryError:
                                out_of_memory = True  # handled below, once the exception's frames are gone
                            if probing:
                                out_of_memory = distributed.any_rank(out_of_memory, device)
                                if not out_of_memory:
                                    distributed.average_gradients(list(model.parameters()))
                                    probed = True
                            if not out_of_memory:
                                break
                            if ddp is not None and not probing:
                                _out_of_memory_under_ddp(loop.global_step + 1)
                            optimizer.zero_grad(set_to_none=True)
                            if device.type == "cuda":
                                torch.cuda.empty_cache()
                            loop.micro_splits = _smaller_micro_batch(
                                window, loop.micro_splits, loop.global_step + 1, accumulate
                            )
                        if scaler is not None:
                            scaler.unscale_(optimizer)  # clipping and the logged norm see the true gradients
                        if settings.gradient_clip_val is not None:
                            step_norms[window_steps] = _clip_gradients(
                                model, settings.gradient_clip_val, settings.gradient_clip_algorithm
                            )
                        if scaler is not None:
                            scale = scaler.get_scale()  # note: a sync, as is scaler.step's own overflow check
                            scaler.step(optimizer)
                            scaler.update()
                            _count_fp16_skip(loop, scaler.get_scale() < scale)
                        else:
                            optimizer.step()
                    if scheduler is not None and not isinstance(scheduler, ReduceLROnPlateau):
                        scheduler.step()
                    if graph is None:  # a captured step writes its gradients afresh each replay
                        optimizer.zero_grad(set_to_none=True)
                    if profiler is not None:
                        profiler.step()

                    loop.global_step += 1
                    speed.count(window, rows)
                    loop.batches_done += len(window)
                    loop.epoch_rows += rows
                    epoch_samples += rows * world
                    epoch_loss += loss_sum
                    step_losses[window_steps] = loss_sum / rows
                    window_steps += 1
                    step = loop.global_step
                    if step % settings.log_every_n_steps == 0 or window_steps == window_size:
                        read_window()
                        values = {
                            "train/loss": sum(loop.window_losses) / window_steps,
                            "train/lr": current_lr(optimizer),
                        }
                        if settings.gradient_clip_val is not None:
                            values["train/grad_norm"] = sum(loop.window_grad_norms) / window_steps
                        if scaler is not None:
                            values["train/fp16_skipped_steps"] = float(loop.fp16_skipped_steps)
                        # After read_window's sync, so the interval's time includes the device's work.
                        values |= speed.read()
                        sink.log(values, step)
                        progress.update(epoch, -(-loop.batches_done // accumulate), values)
                        window_steps, loop.window_losses, loop.window_grad_norms = 0, [], []
                    mid_epoch = loop.batches_done < num_batches or not num_batches
                    saving = checkpoints is not None and checkpoints.wants_step_save(step) and mid_epoch
                    if saving or received:
                        read_window()
                        check_weights()
                        path = (
                            checkpoints.save("last.pt", checkpoint_state(collective=not received))
                            if checkpoints
                            else None
                        )
                        if received:
                            raise TrainingInterrupted(received[0], step, path)

                # .item() waits for the device's queued work, so the epoch's time below includes it.
                read_window()
                totals = epoch_partial()  # under DDP: summed over the ranks
                metrics = {
                    "epoch": float(epoch + 1),
                    "train/loss": totals["epoch_loss"] / max(totals["epoch_rows"], 1),
                }
                epoch_seconds = time.perf_counter() - epoch_start
                samples, train_seconds = samples + epoch_samples, train_seconds + epoch_seconds
                metrics["speed/samples_per_second"] = epoch_samples / epoch_seconds
                metrics |= _memory_metrics(device, resident_bytes)
                check_weights()  # a last step that overflowed the weights stops here, not in the metrics
                if val_batches is not None:
                    try:
                        metrics |= evaluation(
                            model,
                            val_batches,
                            loss_fn,
                            targets,
                            "val",
                            target_scale,
                            class_names,
                            settings.precision,
                        ).metrics
                    except TrainingDiverged as err:
                        raise TrainingDiverged(f"by step {loop.global_step}, {err}") from None
                monitored = _metric(metrics, settings.monitor)
                if isinstance(scheduler, ReduceLROnPlateau):
                    scheduler.step(_metric(metrics, settings.scheduler_monitor or settings.monitor))
                loop.epoch, loop.batches_done, loop.epoch_loss, loop.epoch_rows = epoch + 1, 0, 0.0, 0
                loop.history.append(metrics)
                sink.log(metrics, loop.global_step)
                progress.end_epoch(epoch, metrics)

                # The first epoch is a best whatever its value, so best.pt always exists.
                improved = loop.best_epoch == 0 or improves(monitored, loop.best_value, settings.mode)
                if improved:
                    loop.best_value, loop.best_epoch, loop.best_metrics = monitored, epoch + 1, metrics
                if early_stopping is not None:
                    stopping = early_stopping.update(_metric(metrics, early_stopping.monitor), epoch + 1)
                if checkpoints is not None:
                    check_weights()
                    best, last = checkpoints.save_epoch(
                        checkpoint_state(),
                        epoch=epoch + 1,
                        monitor=settings.monitor,
                        value=monitored,
                        improved=improved,
                    )
                    best_path, last_path = best or best_path, last or last_path
                if received:
                    path = last_path
                    if checkpoints is not None and checkpoints.save_best_only:
                        path = checkpoints.save("last.pt", checkpoint_state(collective=False))
                    raise TrainingInterrupted(received[0], loop.global_step, path)
                # Under DDP only rank 0 holds the trial; its answer goes to every rank.
                prune = trial is not None and trial.should_prune(epoch + 1, _metric(metrics, trial.monitor))
                if distributed.from_main(prune) if ddp is not None else prune:
                    log.info("The tuner pruned this trial after epoch %d.", epoch + 1)
                    pruned = True
                    break
                if stopping:
                    log.info(
                        "Early stopping after epoch %d: %s has not improved by more than %g for %d epochs "
                        "(best %.6g).",
                        epoch + 1,
                        early_stopping.monitor,
                        early_stopping.min_delta,
                        early_stopping.patience,
                        early_stopping.best,
                    )
                    break
        finally:
            progress.close()
    if checkpoints is not None and best_path is None and (checkpoints.directory / "best.pt").exists():
        best_path = checkpoints.directory / "best.pt"  # written before a resume, nothing improved since
    return FitResult(
        history=loop.history,
        best_epoch=loop.best_epoch,
        best_value=loop.best_value,
        best_metrics=loop.best_metrics,
        global_step=loop.global_step,
        samples_per_second=samples / train_seconds if train_seconds else 0.0,
        best_checkpoint=best_path,
        last_checkpoint=last_path,
        stopped_early=stopping,
        pruned=pruned,
        micro_batch_splits=loop.micro_splits,
        fp16_skipped_steps=loop.fp16_skipped_steps,
    )


class _SpeedWindow:
    """Throughput since the last log line, and the share of that time spent waiting for batches
    (high: the input pipeline, not the model, sets the pace). Host clocks only: no device sync.

    With the model's ``flops_per_token(seq_len)`` and the device's peak FLOP/s it also gives MFU: the
    share of the peak the training steps achieve (padding tokens count: the device computes them).
    Under DDP rows and tokens are the whole job's (this rank's x ranks) and MFU is per device.
    """

    def __init__(
        self,
        start: float,
        flops_per_token: Callable[[int], float] | None = None,
        peak_flops: float | None = None,
        world_size: int = 1,
    ) -> None:
        self.flops_per_token = flops_per_token if peak_flops else None
        self.peak_flops = peak_flops
        self.world_size = world_size  # DDP ranks: each counts its own batches, all take the same steps
        self._flops_at: dict[int, float] = {}  # per sequence length: flops_per_token sums the parameters
        self._reset(start)

    def _reset(self, start: float) -> None:
        self.start, self.rows, self.tokens, self.steps, self.waiting = start, 0, 0, 0, 0.0
        self.flops = 0.0

    def timed(self, windows: Iterable[list]) -> Iterator[list]:
        iterator = iter(windows)
        while True:
            asked = time.perf_counter()
            window = next(iterator, None)
            self.waiting += time.perf_counter() - asked
            if window is None:
                return
            yield window

    def count(self, window: list, rows: int) -> None:
        self.rows += rows
        self.steps += 1
        # Token ids' shape is host metadata: counting them costs no sync (padding included).
        for tokens in (x["tokens"] for x, _ in window if isinstance(x, dict) and "tokens" in x):
            self.tokens += tokens.numel()
            if self.flops_per_token is not None:
                seq_len = tokens.shape[-1]
                if seq_len not in self._flops_at:
                    self._flops_at[seq_len] = self.flops_per_token(seq_len)
                self.flops += self._flops_at[seq_len] * tokens.numel()

    def read(self) -> dict[str, float]:
        now = time.perf_counter()
        seconds = max(now - self.start, 1e-9)
        values = {
            "speed/samples_per_second": self.rows * self.world_size / seconds,
            "speed/step_ms": 1000 * seconds / max(self.steps, 1),
            "speed/data_wait_fraction": self.waiting / seconds,
        }
        if self.tokens:
            values["speed/tokens_per_second"] = self.tokens * self.world_size / seconds
        if self.flops:
            values["speed/mfu"] = self.flops / seconds / self.peak_flops
        self._reset(now)
        return values


@contextmanager
def _profiler(directory: Any) -> Iterator[Any]:
    """torch.profiler over steps 3-5 (after a step of warm-up), trace written to ``directory``; None: off."""
    if directory is None:
        yield None
        return
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(
        activities=activities,
        schedule=torch.profiler.schedule(wait=1, warmup=1, active=3, repeat=1),
        on_trace_ready=torch.profiler.tensorboard_trace_handler(str(directory)),
        record_shapes=True,
        profile_memory=True,
    ) as profiler:
        yield profiler


def _forward_backward(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor],
    window: list[tuple[Batch, Batch]],
    splits: int,
    device: torch.device,
    precision: str,
    scaler: torch.amp.GradScaler | None,
    sync: bool = True,
) -> tuple[Tensor, int]:
    """Forward and backward over one accumulation window, each batch cut into ``splits`` micro-batches.

    A micro-batch's loss is weighted by its share of its batch's rows and divided by the number of
    batches in the window (a short last window by its own length), so the gradient is that of the
    mean of the batch losses however the batches were cut. Under DDP only the last micro-batch's
    backward all-reduces the gradients (``no_sync`` before it); none does with ``sync=False``.

    Returns:
        The sum of the row losses over the window (on the device) and its number of rows.
    """
    loss_sum = torch.zeros((), device=device)
    window_rows = 0
    ddp = _ddp_of(model)
    for index, (inputs, labels) in enumerate(window):
        inputs, labels = move_to(inputs, device), move_to(labels, device)
        rows = batch_size_of(labels)
        micro_batches = list(zip(_split(inputs, splits), _split(labels, splits), strict=True))
        for micro_index, (micro_inputs, micro_labels) in enumerate(micro_batches):
            last = index == len(window) - 1 and micro_index == len(micro_batches) - 1
            no_sync = ddp.no_sync() if ddp is not None and not (sync and last) else contextlib.nullcontext()
            micro_rows = batch_size_of(micro_labels)
            with no_sync:
                with autocast(device, precision):
                    loss = loss_fn(model(micro_inputs), micro_labels)
                weight = micro_rows / rows / len(window)
                scaled = loss * weight if weight != 1.0 else loss
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            loss_sum += loss.detach().float() * micro_rows
        window_rows += rows
    return loss_sum, window_rows


class _GraphedStep:
    """``trainer.cuda_graphs``: the training step (forward, loss, backward, clipping, optimizer step)
    captured once in a CUDA graph and replayed from then on: one launch per step instead of hundreds,
    and no Python between the kernels. A batch of another shape (an epoch's short last batch) takes the
    eager path. The learning rate becomes a device tensor the scheduler fills in place.

    Capture needs warm-up steps on a side stream; they run on the first batch and are then undone in
    place (weights, optimizer state and the CUDA generator put back), so the run trains on its own steps.

    Raises:
        UserError: the step could not be captured (a host sync inside the model or the loss).
    """

    WARMUP_STEPS = 3

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable,
        optimizer: torch.optim.Optimizer,
        window: list,
        settings: FitSettings,
    ) -> None:
        device = next(model.parameters()).device
        inputs, labels = window[0]
        self.device, self.shapes, self.rows = device, _shapes(window), batch_size_of(labels)
        self.inputs, self.labels = _clone(move_to(inputs, device)), _clone(move_to(labels, device))
        for group in optimizer.param_groups:
            group["lr"] = torch.tensor(float(group["lr"]), device=device)
        params = [p for p in model.parameters() if p.requires_grad]
        saved_params = [p.detach().clone() for p in params]
        saved_state = {
            p: {k: v.clone() for k, v in optimizer.state[p].items() if isinstance(v, Tensor)}
            for p in params
            if p in optimizer.state
        }
        rng = torch.cuda.get_rng_state(device)

        def step() -> tuple[Tensor, Tensor]:
            with autocast(device, settings.precision):
                loss = loss_fn(model(self.inputs), self.labels)
            loss.backward()
            norm = torch.zeros((), device=device)
            if settings.gradient_clip_val is not None:
                norm = _clip_gradients(model, settings.gradient_clip_val, settings.gradient_clip_algorithm)
            optimizer.step()
            return loss.detach().float(), norm

        try:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(self.WARMUP_STEPS):
                    optimizer.zero_grad(set_to_none=True)
                    step()
            torch.cuda.current_stream(device).wait_stream(side)
            optimizer.zero_grad(set_to_none=True)  # captured with no gradients: each replay assigns them
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.loss, self.norm = step()
        except RuntimeError as err:
            raise UserError(
                f"trainer.cuda_graphs=true could not capture the training step ({str(err).strip().splitlines()[0][:160]}); "
                "the model or loss reads a value back to the host inside the step; set trainer.cuda_graphs=false."
            ) from err
        with torch.no_grad():
            for param, saved in zip(params, saved_params, strict=True):
                param.copy_(saved)
            for param in params:
                for key, value in optimizer.state[param].items():
                    if isinstance(
                        value, Tensor
                    ):  # state the warm-up created starts from zero, as it would have
                        value.copy_(saved_state[param][key]) if param in saved_state else value.zero_()
        torch.cuda.set_rng_state(rng, device)
        log.info("trainer.cuda_graphs: the training step is captured for batches of %d rows.", self.rows)

    def fits(self, window: list) -> bool:
        return _shapes(window) == self.shapes

    def replay(self, window: list) -> tuple[Tensor, int, Tensor]:
        """One training step on ``window``: (the sum of its row losses, its rows, the pre-clip norm)."""
        inputs, labels = window[0]
        _copy_into(self.inputs, move_to(inputs, self.device))
        _copy_into(self.labels, move_to(labels, self.device))
        self.graph.replay()
        return self.loss * self.rows, self.rows, self.norm.clone()


def _shapes(window: list) -> tuple:
    """The shapes and dtypes of a window's tensors: what a captured graph is specialised to."""

    def of(batch: Batch) -> tuple:
        if isinstance(batch, Tensor):
            return (tuple(batch.shape), batch.dtype)
        if isinstance(batch, dict):
            return tuple((k, of(v)) for k, v in sorted(batch.items()))
        return tuple(of(v) for v in batch)

    return tuple((of(x), of(y)) for x, y in window)


def _clone(batch: Batch) -> Batch:
    if isinstance(batch, Tensor):
        return batch.clone()
    if isinstance(batch, dict):
        return {k: _clone(v) for k, v in batch.items()}
    return type(batch)(_clone(v) for v in batch)


def _copy_into(static: Batch, batch: Batch) -> None:
    if isinstance(static, Tensor):
        static.copy_(batch, non_blocking=True)
    elif isinstance(static, dict):
        for key, value in static.items():
            _copy_into(value, batch[key])
    else:
        for value, new in zip(static, batch, strict=True):
            _copy_into(value, new)


def _plain_lr(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state dict whose learning rates are numbers (cuda_graphs keeps them as device tensors),
    so the checkpoint resumes with or without graphs."""
    for group in state["param_groups"]:
        if isinstance(group.get("lr"), Tensor):
            group["lr"] = group["lr"].item()
    return state


def _ddp_of(model: nn.Module) -> nn.parallel.DistributedDataParallel | None:
    """The DDP wrapper of ``model`` (under torch.compile's, if any); None in a single process."""
    inner = getattr(model, "_orig_mod", model)
    return inner if isinstance(inner, nn.parallel.DistributedDataParallel) else None


def _out_of_memory_under_ddp(step: int) -> None:
    """Raises:
    UserError: always; past the first step the other ranks are already in the gradient all-reduce.
    """
    raise UserError(
        f"CUDA ran out of memory on DDP rank {distributed.rank()} at step {step}, after the first step "
        "had settled the micro-batch size; lower batch_size or raise trainer.accumulate_grad_batches."
    )


def _start_memory_window(device: torch.device) -> int:
    """Bytes the run holds on the GPU before the epoch's steps (weights, optimizer state, data); 0 off CUDA."""
    if device.type != "cuda":
        return 0
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def _memory_metrics(device: torch.device, resident_bytes: int) -> dict[str, float]:
    """The epoch's peak GPU memory, and how much of it the steps added on top of what stays resident
    (activations, gradients and temporaries: what precision, micro-batch size and checkpointing change)."""
    metrics = {"memory/rss_mb": peak_rss_mb()}
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        metrics["memory/peak_allocated_mb"] = peak / 2**20
        metrics["memory/peak_reserved_mb"] = torch.cuda.max_memory_reserved(device) / 2**20
        metrics["memory/step_mb"] = (peak - resident_bytes) / 2**20
    return metrics


def _smaller_micro_batch(window: list[tuple[Batch, Batch]], splits: int, step: int, accumulate: int) -> int:
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


def _clip_gradients(model: nn.Module, clip_val: float, algorithm: str) -> Tensor:
    """Clip the gradients in place; returns their total 2-norm before clipping (on the device)."""
    params = [p for p in model.parameters() if p.grad is not None]
    if algorithm == "norm":
        return torch.nn.utils.clip_grad_norm_(params, clip_val)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    torch.nn.utils.clip_grad_value_(params, clip_val)
    return norm


def _count_fp16_skip(loop: LoopState, skipped: bool) -> None:
    """Count the steps the fp16 scaler skipped; many in a row means the loss itself is not finite.

    Raises:
        TrainingDiverged: FP16_MAX_SKIPS_IN_A_ROW skips in a row.
    """
    loop.fp16_skipped_steps += int(skipped)
    loop.fp16_skip_streak = loop.fp16_skip_streak + 1 if skipped else 0
    if loop.fp16_skip_streak >= FP16_MAX_SKIPS_IN_A_ROW:
        raise TrainingDiverged(
            f"under device.precision=fp16 the last {loop.fp16_skip_streak} optimizer steps (up to step {loop.global_step + 1}) "
            "had non-finite gradients and were skipped, so the loss itself is NaN or infinite; lower "
            "learning_rate, set trainer.gradient_clip_val=1.0, or use device.precision=bf16 or 32."
        )


def _diverged(step: int, last_finite: tuple[int, float] | None) -> TrainingDiverged:
    where = f"; the last finite loss was {last_finite[1]:.6g} at step {last_finite[0]}" if last_finite else ""
    return TrainingDiverged(
        f"the training loss became NaN or infinite at step {step}{where}; lower learning_rate, set "
        "trainer.gradient_clip_val=1.0, or check the data for extreme values (last.pt holds the last "
        "weights saved before it)."
    )


def _restore(
    state: dict[str, Any],
    loop: LoopState,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler | None,
    checkpoints: CheckpointManager | None,
    early_stopping: EarlyStopping | None,
    seed: int,
) -> None:
    """Put every piece of a checkpoint back, the RNG states last, just before the loop draws from them.

    Under DDP each rank takes its own RNG state back; a checkpoint from another number of processes
    re-seeds the ranks instead and, mid-epoch, continues after the same share of the epoch's rows.
    """
    device = next(model.parameters()).device
    try:
        unwrap_model(model).load_state_dict(state["model"])
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
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    loop.load_state_dict(state["position"])
    if checkpoints is not None and state.get("checkpoints"):
        checkpoints.load_state_dict(state["checkpoints"])
    if early_stopping is not None and state.get("early_stopping"):
        early_stopping.load_state_dict(state["early_stopping"])
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
        device,
    )


@contextmanager
def _stop_on_signals() -> Iterator[list[int]]:
    """Turn SIGTERM and SIGINT into a request the loop answers at its next step; yields the received list.

    A second signal while the loop finishes its step interrupts at once. Only the main thread can
    install handlers; elsewhere signals keep their usual effect.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def request_stop(signum: int, frame: Any) -> None:
        if received:
            raise KeyboardInterrupt
        received.append(signum)
        log.warning("%s received: saving last.pt after the current step.", signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _windows(batches: Iterable[tuple[Batch, Batch]], size: int) -> Iterator[list[tuple[Batch, Batch]]]:
    """Consecutive lists of ``size`` batches; the last may be shorter."""
    iterator = iter(batches)
    while window := list(itertools.islice(iterator, size)):
        yield window


def _split(batch: Batch, parts: int) -> list[Batch]:
    """``batch`` cut along its first dimension into ``parts`` near-equal pieces (fewer if it has fewer rows)."""
    if parts == 1:
        return [batch]
    if isinstance(batch, Tensor):
        return list(torch.tensor_split(batch, min(parts, batch.shape[0])))
    if isinstance(batch, dict):
        pieces = {k: _split(v, parts) for k, v in batch.items()}
        return [dict(zip(pieces, values, strict=True)) for values in zip(*pieces.values(), strict=True)]
    pieces = [_split(v, parts) for v in batch]
    return [type(batch)(values) for values in zip(*pieces, strict=True)]


@torch.no_grad()
def predict(
    model: nn.Module, batches: Iterable[tuple[Batch, Batch]], precision: str = "32"
) -> tuple[Batch, Batch]:
    """Model outputs (in float32) and labels of every batch, concatenated on the device (no host transfer here)."""
    model.eval()
    device = next(model.parameters()).device
    outputs, labels = [], []
    for inputs, y in batches:
        with autocast(device, precision):
            out = model(move_to(inputs, device))
        outputs.append(_to_float(out))
        labels.append(move_to(y, device))
    return _concat(outputs), _concat(labels)


@dataclass
class Evaluation:
    """Scalar metrics, full reports, and the host arrays they came from (standardised regression units)."""

    metrics: dict[str, float]
    reports: dict[str, dict]
    predictions: dict[str, Any]  # class probabilities [N, K], or values [N]
    labels: dict[str, Any]


def evaluation(
    model: nn.Module,
    batches: Iterable[tuple[Batch, Batch]],
    loss_fn: Callable[[Any, Any], Tensor] | None,
    targets: list[Target],
    split: str,
    target_scale: dict[str, tuple[float, float]] | None = None,
    class_names: dict[str, list[str]] | None = None,
    precision: str = "32",
) -> Evaluation:
    """Loss and metrics of ``model`` on every row of ``batches``, with the predictions and labels they came from.

    The loss is computed once over all rows, so it is the exact mean, not a mean of batch means; the
    outputs move to the host once. Under DDP each rank predicts its shard of ``batches`` and the rows
    of all ranks are gathered first (``batches.total_rows``: the split's rows), so every rank computes
    the metrics of the whole split.
    """
    outputs, labels = predict(model, batches, precision)
    if distributed.enabled():
        outputs = distributed.gather_rows(outputs, batches.total_rows)
        labels = distributed.gather_rows(labels, batches.total_rows)
    metrics: dict[str, float] = {}
    if loss_fn is not None:
        metrics[f"{split}/loss"] = loss_fn(outputs, labels).item()
        if hasattr(loss_fn, "terms"):
            metrics |= {
                f"{split}/{name}/loss": v.item() for name, v in loss_fn.terms(outputs, labels).items()
            }
    if isinstance(labels, Tensor):
        labels = {targets[0].name: labels}
    label_arrays = {name: y.reshape(-1).cpu().numpy() for name, y in labels.items()}
    predictions = as_numpy(outputs, targets)
    diverged = [name for name, values in predictions.items() if not np.isfinite(values).all()]
    if diverged:
        raise TrainingDiverged(
            f"the model's {split} predictions for {', '.join(diverged)} are NaN or infinite (its weights have "
            "diverged); lower learning_rate or set trainer.gradient_clip_val=1.0."
        )
    reports = target_reports(predictions, label_arrays, targets, target_scale, class_names)
    return Evaluation(metrics | flatten(reports, split), reports, predictions, label_arrays)


def move_to(batch: Batch, device: torch.device) -> Batch:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


def _to_float(outputs: Batch) -> Batch:
    if isinstance(outputs, Tensor):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, dict):
        return {k: _to_float(v) for k, v in outputs.items()}
    return type(outputs)(_to_float(v) for v in outputs)


def batch_size_of(labels: Batch) -> int:
    if isinstance(labels, Tensor):
        return labels.shape[0]
    return batch_size_of(next(iter(labels.values())) if isinstance(labels, dict) else labels[0])


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    lr = optimizer.param_groups[0]["lr"]
    return lr.item() if isinstance(lr, Tensor) else float(lr)


def _concat(parts: list[Batch]) -> Batch:
    if not parts:
        raise UserError(
            "the evaluation data has no batches; give validation or test data with at least one row."
        )
    if isinstance(parts[0], Tensor):
        return torch.cat(parts)
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _metric(metrics: dict[str, float], name: str) -> float:
    if name not in metrics:
        raise UserError(
            f"the monitored metric {name!r} is not logged by this run; choose one of: {', '.join(sorted(metrics))}."
        )
    return metrics[name]
