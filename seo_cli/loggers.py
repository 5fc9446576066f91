"""The metrics sink: one place the loop hands ``{name: value}`` dicts, fanned out to every logger.

``metrics.jsonl`` is always written; TensorBoard and other loggers are chosen by the ``logger`` group.
A logger is any object with ``log_metrics(metrics, step)`` and ``close()``.
"""

import csv
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

    def log_config(self, yaml_text: str) -> None:
        # Markdown code block: TensorBoard's text tab would otherwise reflow the YAML.
        self.writer.add_text("config", "```\n" + yaml_text + "\n```")

    def log_hparams(self, params: dict[str, float | str], metrics: dict[str, float]) -> None:
        """The run's knobs and final metrics, so runs line up in TensorBoard's HParams tab."""
        finite = {k: v for k, v in metrics.items() if math.isfinite(v)}
        self.writer.add_hparams(params, finite, run_name=".")  # ".": into this run's own event files

    def close(self) -> None:
        self.writer.close()


class CSVLogger:
    """Every logged value in ``log_dir/metrics.csv``: one row per logging call, one column per metric.

    A metric seen for the first time widens the table, so the file is rewritten with the new header.
    """

    def __init__(self, log_dir: str | Path, resume_step: int | None = None) -> None:
        self.path = Path(log_dir) / "metrics.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.columns: list[str] = ["step"]
        self.rows: list[dict[str, float]] = []
        if resume_step is not None and self.path.exists():
            with self.path.open(newline="") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or ["step"])
                self.rows = [r for r in reader if r["step"] and float(r["step"]) <= resume_step]
            self._rewrite()
        else:
            self._rewrite()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        row = {"step": step, **metrics}
        self.rows.append(row)
        new = [k for k in metrics if k not in self.columns]
        if new:
            self.columns += new
            self._rewrite()
        else:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, self.columns).writerow(row)

    def _rewrite(self) -> None:
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, self.columns)
            writer.writeheader()
            writer.writerows(self.rows)

    def close(self) -> None:
        pass


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

    def log_config(self, yaml_text: str) -> None:
        for logger in self.loggers:
            if hasattr(logger, "log_config"):
                logger.log_config(yaml_text)

    def log_hparams(self, params: dict[str, float | str], metrics: dict[str, float]) -> None:
        for logger in self.loggers:
            if hasattr(logger, "log_hparams"):
                logger.log_hparams(params, metrics)

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
