"""Speed and memory figures of the training loop, and the profiler behind ``debug=profile``.

Host clocks only: nothing here waits for the device. The loop reads these at its logging intervals,
just after the sync that reads the step losses, so an interval's time includes the device's work.
"""

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from seo_cli.runtime import peak_rss_mb


class SpeedWindow:
    """Throughput since the last log line, and the share of that time spent waiting for batches
    (high: the input pipeline, not the model, sets the pace).

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

        self.epoch_rows = 0  # this rank's rows since the window was made (read() does not reset it)

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
        self.epoch_rows += rows
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


class RunClock:
    """Rows and seconds of training, per epoch (``speed/samples_per_second`` of the epoch row) and over the
    run (the summary's samples/s). Under DDP rows are the whole job's: this rank's x ranks."""

    def __init__(self, world_size: int = 1) -> None:
        self.world_size, self.rows, self.seconds = world_size, 0, 0.0
        self.speed: SpeedWindow | None = None

    def start_epoch(self, flops_per_token: Callable[[int], float] | None, peak_flops: float | None) -> SpeedWindow:
        self.speed = SpeedWindow(time.perf_counter(), flops_per_token, peak_flops, self.world_size)
        self.epoch_start = self.speed.start
        return self.speed

    def end_epoch(self, batches: object = None) -> dict[str, float]:
        """The epoch's samples/s, and the share of its token slots that were padding (``batches``'
        ``padding_fraction``, for text data)."""
        seconds, rows = time.perf_counter() - self.epoch_start, self.speed.epoch_rows * self.world_size
        self.rows, self.seconds = self.rows + rows, self.seconds + seconds
        padding = getattr(batches, "padding_fraction", dict)()
        return {"speed/samples_per_second": rows / seconds} | padding

    def samples_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


class MemoryWindow:
    """An epoch's peak GPU memory, and how much of it the steps added on top of what stays resident
    (activations, gradients and temporaries: what precision, micro-batch size and checkpointing change)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.resident_bytes = 0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self.resident_bytes = torch.cuda.memory_allocated(device)

    def read(self) -> dict[str, float]:
        metrics = {"memory/rss_mb": peak_rss_mb()}
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
            metrics["memory/peak_allocated_mb"] = peak / 2**20
            metrics["memory/peak_reserved_mb"] = torch.cuda.max_memory_reserved(self.device) / 2**20
            metrics["memory/step_mb"] = (peak - self.resident_bytes) / 2**20
        return metrics


@contextmanager
def profiler(directory: Path | None) -> Iterator[Any]:
    """torch.profiler over steps 3-5 (after a step of warm-up), trace written to ``directory``; None: off
    (yields an object whose ``step()`` does nothing, so the loop calls it unconditionally)."""
    if directory is None:
        yield _NoProfiler()
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
    ) as active:
        yield active


class _NoProfiler:
    def step(self) -> None:
        pass
