"""The metrics sink: one place the loop hands ``{name: value}`` dicts, fanned out to every logger.

``metrics.jsonl`` is always written; TensorBoard and other loggers are chosen by the ``logger`` group.
A logger is any object with ``log_metrics(metrics, step)`` and ``close()``.
"""

import csv
import json
import math
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import yaml

from seo_cli.errors import UserError
from seo_cli.files import atomic_path, write_error, write_text


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

        self.path = Path(log_dir) / "events.out.tfevents.*"  # the writer names its file itself
        purge_step = resume_step + 1 if resume_step is not None else None
        try:
            # TensorBoard writes its first event from a thread of its own, where a failure prints a
            # thread traceback: try the folder (and a few KB of space) first.
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=log_dir) as probe:
                probe.write(bytes(4096))
                probe.flush()
                os.fsync(probe.fileno())
            self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
        except OSError as err:
            raise write_error(self.path, err) from None
        self._failures = _catch_write_errors(self.writer)
        self.path = Path(self.writer.file_writer.get_logdir()) / _event_file_name(self.writer, self.path.name)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Raises:
        UserError: the event file could not be written (now or on an earlier call: writes are queued).
        """
        with self._writing():
            for name, value in metrics.items():
                self.writer.add_scalar(name, value, global_step=step)

    def log_text(self, name: str, text: str) -> None:
        with self._writing():
            self.writer.add_text(name, text)

    def log_config(self, yaml_text: str) -> None:
        # Markdown code block: TensorBoard's text tab would otherwise reflow the YAML.
        with self._writing():
            self.writer.add_text("config", "```\n" + yaml_text + "\n```")

    def log_hparams(self, params: dict[str, float | str], metrics: dict[str, float]) -> None:
        """The run's knobs and final metrics, so runs line up in TensorBoard's HParams tab."""
        finite = {k: v for k, v in metrics.items() if math.isfinite(v)}
        with self._writing():
            self.writer.add_hparams(params, finite, run_name=".")  # ".": into this run's own event files

    def close(self) -> None:
        with self._writing():
            self.writer.close()

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """A write error, raised here or caught in TensorBoard's thread, as one sentence."""
        try:
            yield
        except OSError as err:
            raise write_error(self.path, err) from None
        if self._failures:
            raise write_error(self.path, self._failures[0])


def _catch_write_errors(writer: Any) -> list[OSError]:
    """Keep the event file's write errors out of TensorBoard's writer thread, where they would print a
    thread traceback and stop the thread; the list they land in is read by the logger's next call.
    After the first error nothing more is written (the file ends at its last whole event)."""
    failures: list[OSError] = []
    # Private attributes of tensorboard's EventFileWriter: with another version, errors keep their form.
    file = getattr(getattr(writer.file_writer, "event_writer", None), "_general_file_writer", None)

    def guard(original: Any) -> Any:
        def guarded(*args: Any) -> None:
            if failures:
                return
            try:
                original(*args)
            except OSError as err:
                failures.append(err)

        return guarded

    for method in ("write", "flush") if file is not None else ():
        setattr(file, method, guard(getattr(file, method)))
    return failures


def _event_file_name(writer: Any, default: str) -> str:
    name = getattr(getattr(writer.file_writer, "event_writer", None), "_file_name", None)
    return Path(name).name if name else default


class CSVLogger:
    """Every logged value in ``log_dir/metrics.csv``: one row per logging call, one column per metric.

    A metric seen for the first time widens the table, so the file is rewritten with the new header.
    """

    def __init__(self, log_dir: str | Path, resume_step: int | None = None) -> None:
        self.path = Path(log_dir) / "metrics.csv"
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
            try:
                with self.path.open("a", newline="") as f:
                    csv.DictWriter(f, self.columns).writerow(row)
            except OSError as err:
                raise write_error(self.path, err) from None

    def _rewrite(self) -> None:
        """The whole table under the current header, atomically: a kill mid-rewrite keeps the old file.

        Raises:
            UserError: the file cannot be written.
        """
        with atomic_path(self.path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, self.columns)
            writer.writeheader()
            writer.writerows(self.rows)

    def close(self) -> None:
        pass


class WandbLogger:
    """Weights & Biases: one W&B run per seo-train run (so one per multirun job), written under ``log_dir``.

    ``mode=offline`` (the default) needs no network or account: ``wandb sync <log_dir>/wandb/offline-run-*``
    uploads a run later. A resumed run continues the W&B run it started (its id is kept in ``log_dir``).
    """

    def __init__(
        self,
        log_dir: str | Path,
        resume_step: int | None = None,
        project: str = "seo-cli",
        entity: str | None = None,
        mode: str = "offline",
        tags: list[str] | None = None,
    ) -> None:
        wandb = _optional_import("wandb", "wandb")
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        id_file = log_dir / "run_id"
        run_id = id_file.read_text().strip() if resume_step is not None and id_file.exists() else None
        self.run = wandb.init(
            dir=str(log_dir),
            project=project,
            entity=entity,
            mode=mode,
            tags=list(tags or []),
            name=_run_name(log_dir),
            id=run_id,
            resume="allow" if run_id else None,
            reinit="create_new",  # a multirun's jobs share the process: each gets its own W&B run
            settings=wandb.Settings(console="off", quiet=True),
        )
        id_file.write_text(self.run.id + "\n")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_config(self, yaml_text: str) -> None:
        self.run.config.update(yaml.safe_load(yaml_text), allow_val_change=True)

    def log_hparams(self, params: dict[str, float | str], metrics: dict[str, float]) -> None:
        self.run.summary.update({f"final/{k}": v for k, v in metrics.items()})

    def close(self) -> None:
        self.run.finish()


class MLflowLogger:
    """MLflow tracking: one MLflow run per seo-train run, in ``tracking_uri`` (a local SQLite file by
    default, so ``mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db`` compares every run).

    Metrics keep their slash names; the config is an artifact (``config.yaml``) and the knobs of
    ``hparams_of`` are the run's params. A resumed run continues its MLflow run (id kept in ``log_dir``).
    """

    def __init__(
        self,
        log_dir: str | Path,
        resume_step: int | None = None,
        tracking_uri: str = "sqlite:///outputs/mlflow.db",
        experiment: str = "seo-cli",
        artifact_location: str | None = None,
    ) -> None:
        mlflow = _optional_import("mlflow", "mlflow")
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        if tracking_uri.startswith("sqlite:///"):
            # SQLite needs the folder of its file; a relative path is relative to where seo-train runs.
            Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            # Artifacts default to ./mlruns of the working directory; keep them next to the tracking file.
            location = artifact_location or _default_artifacts(tracking_uri)
            experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        id_file = log_dir / "run_id"
        if resume_step is not None and id_file.exists():
            self.run_id = id_file.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(experiment_id, run_name=_run_name(log_dir)).info.run_id
            id_file.write_text(self.run_id + "\n")
        self._metric = mlflow.entities.Metric
        self._param = mlflow.entities.Param
        self._tag = mlflow.entities.RunTag

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[self._metric(k, float(v), now, step) for k, v in metrics.items()]
        )

    def log_config(self, yaml_text: str) -> None:
        self.client.log_text(self.run_id, yaml_text, "config.yaml")

    def log_hparams(self, params: dict[str, float | str], metrics: dict[str, float]) -> None:
        # MLflow params are write-once: a resumed run that changed one (epochs raised, say) records the new
        # value as the tag ``resumed.<key>``.
        logged = self.client.get_run(self.run_id).data.params
        values = {k: str(v)[:6000] for k, v in params.items()}
        fresh = [self._param(k, v) for k, v in values.items() if k not in logged]
        changed = [self._tag(f"resumed.{k}", v) for k, v in values.items() if k in logged and logged[k] != v]
        self.client.log_batch(self.run_id, params=fresh, tags=changed)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def _optional_import(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise UserError(
            f"logger={extra} needs the {module} package, which is not installed; install it with "
            f"pip install 'seo-cli[{extra}]' or choose another logger (logger=tensorboard)."
        ) from err


def _run_name(log_dir: Path) -> str:
    """The run directory's last two parts: ``<date>/<time>`` for a run, ``<time>/<job>`` in a multirun."""
    return "/".join(log_dir.resolve().parent.parts[-2:])


def _default_artifacts(tracking_uri: str) -> str | None:
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
    return None


class MetricsSink:
    """Appends every logged dict to ``metrics.jsonl`` (one JSON object per line) and to each logger.

    ``resume_step``: a resumed run first drops the rows an interrupted run logged after that step,
    which the resumed run logs again; without one the file starts empty.
    """

    def __init__(
        self, path: Path | None, loggers: list[Logger] | None = None, resume_step: int | None = None
    ) -> None:
        self.path = path
        self.loggers = list(loggers or [])
        self._file = None
        if path is not None:
            resumed = resume_step is not None and path.exists()
            if resumed:
                kept = [line for line in path.read_text().splitlines() if _step_of(line) <= resume_step]
                write_text(path, "".join(line + "\n" for line in kept))  # a kill here keeps the old rows
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                # A fresh run starts the file anew, even in a directory that has one.
                self._file = path.open("a" if resumed else "w", encoding="utf-8")
            except OSError as err:
                raise write_error(path, err) from None

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Raises:
        UserError: metrics.jsonl cannot be written (a full disk, say); the file keeps the rows before.
        """
        if self._file is not None:
            # NaN/Inf are written as null so every line stays valid JSON.
            row = {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}
            try:
                self._file.write(json.dumps({"step": step, **row}) + "\n")
                self._file.flush()
            except OSError as err:
                self._drop_file()
                raise write_error(self.path, err) from None
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
        """Raises:
        UserError: the last rows of metrics.jsonl (or a logger's files) cannot be written.
        """
        if self._file is not None:
            try:
                self._file.close()
            except OSError as err:
                self._drop_file()
                raise write_error(self.path, err) from None
            self._file = None
        for logger in self.loggers:
            logger.close()

    def _drop_file(self) -> None:
        """Stop writing metrics.jsonl after a failed write, without a second error for the same cause."""
        try:
            self._file.close()
        except OSError:
            pass  # the same failure again: its bytes are lost either way
        self._file = None


def _step_of(line: str) -> float:
    """The step of one metrics.jsonl row; infinite for a line a killed process left unfinished."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf
