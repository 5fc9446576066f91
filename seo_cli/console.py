"""What a person watching a run sees: rich progress bars on a terminal, plain log lines elsewhere."""

import logging
import sys

from rich.console import Console
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

log = logging.getLogger(__name__)


STATUS_KEYS = {
    "train/loss": "train/loss",
    "train/lr": "lr",
    "train/grad_norm": "grad_norm",
    "speed/samples_per_second": "rows/s",
}


def use_rich(mode: str) -> bool:
    """``auto`` shows bars only when stdout is a terminal (not in CI, files or SLURM logs)."""
    return mode == "rich" or (mode == "auto" and sys.stdout.isatty())


class TrainProgress:
    """Progress of a training run. Call ``update`` at logging intervals only: it shows the values it is given."""

    def __init__(self, mode: str, epochs: int, steps_per_epoch: int) -> None:
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch or None  # 0: batches without a length
        self.bars: Progress | None = None
        if use_rich(mode):
            self.bars = Progress(
                TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(),
                transient=False,
            )
            self.bars.start()
            self.task = self.bars.add_task(
                "train", total=self.steps_per_epoch, epoch=0, epochs=epochs, status=""
            )

    def __enter__(self) -> "TrainProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start_epoch(self, epoch: int) -> None:
        if self.bars is not None:
            # reset() replaces all fields, so every field is passed again.
            self.bars.reset(
                self.task, total=self.steps_per_epoch, epoch=epoch + 1, epochs=self.epochs, status=""
            )

    def update(self, epoch: int, step_in_epoch: int, values: dict[str, float]) -> None:
        # The bar keeps to what fits a line; metrics.jsonl and the loggers have every value.
        status = "  ".join(f"{STATUS_KEYS[k]} {_fmt(v)}" for k, v in values.items() if k in STATUS_KEYS)
        if self.bars is not None:
            self.bars.update(self.task, completed=step_in_epoch, status=status)
        else:
            log.info(
                "epoch %d/%d step %d/%s  %s",
                epoch + 1,
                self.epochs,
                step_in_epoch,
                self.steps_per_epoch,
                status,
            )

    def validated(self, epoch: int, metrics: dict[str, float], step: int | None = None) -> None:
        """A validation's metrics: at the epoch's end, or at optimizer ``step`` inside it."""
        shown = {k: v for k, v in metrics.items() if k.count("/") <= 1 or k.endswith(("/accuracy", "/r2"))}
        where = "done" if step is None else f"step {step}"
        if self.bars is not None:
            if step is None:
                self.bars.update(self.task, completed=self.steps_per_epoch or 0)
            if self.bars.console.is_terminal:  # a live display: the table goes above the bars
                self.bars.console.print(epoch_table(epoch, self.epochs, metrics, step))
                return
        log.info(
            "epoch %d/%d %s  %s",
            epoch + 1,
            self.epochs,
            where,
            "  ".join(f"{k} {_fmt(v)}" for k, v in shown.items()),
        )

    def close(self) -> None:
        if self.bars is not None:
            self.bars.stop()


def epoch_table(epoch: int, epochs: int, metrics: dict[str, float], step: int | None = None) -> Table:
    """Train and validation side by side: the losses, and each target's accuracy or R^2."""
    rows: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        split, _, name = key.partition("/")
        if split in ("train", "val") and (name == "loss" or name.endswith(("/loss", "/accuracy", "/r2"))):
            rows.setdefault(name, {})[split] = value
    table = Table(title=f"epoch {epoch + 1}/{epochs}" + (f", step {step}" if step is not None else ""))
    for column in ("metric", "train", "val"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name, values in rows.items():
        table.add_row(name, *(_fmt(values[s]) if s in values else "" for s in ("train", "val")))
    return table


def metrics_table(title: str, columns: dict[str, dict[str, float]]) -> Table:
    """A rich table with one row per metric and one column per entry of ``columns`` (e.g. val, test)."""
    table = Table(title=title)
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    keys = list(dict.fromkeys(k for values in columns.values() for k in values))
    for key in keys:
        table.add_row(key, *(_fmt(values[key]) if key in values else "" for values in columns.values()))
    return table


def confusion_table(name: str, report: dict) -> Table:
    """The confusion matrix of one classification target, rows true and columns predicted, by class name."""
    names = report["class_names"]
    table = Table(title=f"{name}: confusion matrix (rows true, columns predicted)")
    table.add_column("")
    for n in names:
        table.add_column(n, justify="right")
    for n, row in zip(names, report["confusion_matrix"], strict=True):
        table.add_row(n, *map(str, row))
    return table


def run_panel(
    best_epoch: int, epochs: int, monitor: str, best_value: float, checkpoint: str, status: str
) -> Panel:
    """The end of a run at a glance: where the best epoch is, and the command to evaluate it."""
    lines = [
        f"[bold]{status}[/bold]: best epoch {best_epoch} of {epochs} by {monitor} = {_fmt(best_value)}",
        f"checkpoint  {checkpoint}",
        f"next        seo-eval checkpoint={checkpoint}",
    ]
    return Panel("\n".join(lines), title="seo-train", expand=False)


def print_table(table: Table | Panel) -> None:
    Console(soft_wrap=True).print(table)


def _fmt(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
