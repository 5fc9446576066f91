"""The metrics sink: one place the loop hands ``{name: value}`` dicts, fanned out to every logger.

``metrics.jsonl`` is always written; TensorBoard and other loggers are chosen by the ``logger`` group.
A logger is any object with ``log_metrics(metrics, step)`` and ``close()``.
"""

import json
import math
from pathlib import Path
from typing import Protocol


class Logger(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class TensorBoardLogger:
    """Scalars to TensorBoard event files under ``log_dir``."""

    def __init__(self, log_dir: str | Path) -> None:
        # Imported here: tensorboard costs about a second to import, and logger=none should not pay it.
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, global_step=step)

    def log_text(self, name: str, text: str) -> None:
        self.writer.add_text(name, text)

    def close(self) -> None:
        self.writer.close()


class MetricsSink:
    """Appends every logged dict to ``metrics.jsonl`` (one JSON object per line) and to each logger."""

    def __init__(self, path: Path | None, loggers: list[Logger] | None = None) -> None:
        self.path = path
        self.loggers = list(loggers or [])
        self._file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8")

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self._file is not None:
            # NaN/Inf are written as null so every line stays valid JSON.
            row = {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}
            self._file.write(json.dumps({"step": step, **row}) + "\n")
            self._file.flush()
        for logger in self.loggers:
            logger.log_metrics(metrics, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        for logger in self.loggers:
            logger.close()
