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
    """Scalars to TensorBoard event files under ``log_dir``.

    ``resume_step``: the step a resumed run restarts after; TensorBoard hides events the interrupted
    run logged past it, so the curves do not fold back on themselves.
    """

    def __init__(self, log_dir: str | Path, resume_step: int | None = None) -> None:
        # Imported here: tensorboard costs about a second to import, and logger=none should not pay it.
        from torch.utils.tensorboard import SummaryWriter

        purge_step = resume_step + 1 if resume_step is not None else None
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, global_step=step)

    def log_text(self, name: str, text: str) -> None:
        self.writer.add_text(name, text)

    def close(self) -> None:
        self.writer.close()


class MetricsSink:
    """Appends every logged dict to ``metrics.jsonl`` (one JSON object per line) and to each logger.

    ``resume_step``: a resumed run first drops the rows an interrupted run logged after that step,
    which the resumed run logs again.
    """

    def __init__(
        self, path: Path | None, loggers: list[Logger] | None = None, resume_step: int | None = None
    ) -> None:
        self.path = path
        self.loggers = list(loggers or [])
        self._file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            if resume_step is not None and path.exists():
                kept = [line for line in path.read_text().splitlines() if _step_of(line) <= resume_step]
                path.write_text("".join(line + "\n" for line in kept))
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


def _step_of(line: str) -> float:
    """The step of one metrics.jsonl row; infinite for a line a killed process left unfinished."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf
