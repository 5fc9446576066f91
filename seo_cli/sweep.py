"""The table of a sweep: one row per job, ranked by the objective, written at the sweep root.

Registered in ``train.yaml`` as a Hydra callback, so every ``seo-train -m ...`` ends with
``summary.csv``, ``summary.md`` and a rich table, whatever the launcher or sweeper.
"""

import argparse
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.table import Table

from seo_cli.console import print_table
from seo_cli.errors import UserError, exit_on_user_error
from seo_cli.files import atomic_path, write_text
from seo_cli.launch import LOCK_FILE
from seo_cli.metrics import metric_mode

log = logging.getLogger(__name__)

RUN_COLUMNS = ["num_parameters", "wall_time_s", "samples_per_second", "peak_memory_mb", "best_epoch"]
FAILED = ("failed", "killed")  # ranked last; a sweep of only these fails
SHOWN_METRICS = 2  # metric columns besides the objective in the terminal table; the files have them all


class SweepSummary(Callback):
    """At the end of a multirun: summarise the jobs' ``summary.json`` files; fail if every job failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        frame = summarize(sweep_dir, config.objective)
        if frame.empty:
            log.warning("No job of the sweep in %s wrote a summary.json.", sweep_dir)
            return
        try:
            write_summary(sweep_dir, frame, config.objective)
        except UserError as err:
            raise SystemExit(str(err)) from None  # one line, where Hydra would print a traceback
        if frame["status"].isin(FAILED).all():
            # SystemExit, not an exception: Hydra would print a traceback for the latter.
            raise SystemExit(
                f"every job of the sweep failed; see the error column of {sweep_dir / 'summary.md'}."
            )


def write_summary(folder: Path, frame: pd.DataFrame, objective: str) -> None:
    """summary.csv and summary.md in ``folder``, and the ranked table in the terminal.

    Raises:
        UserError: the folder is not writable.
    """
    with atomic_path(folder / "summary.csv") as tmp:
        frame.to_csv(tmp, index=False)
    write_text(folder / "summary.md", to_markdown(frame, objective))
    print_table(summary_table(frame, objective))
    log.info("Sweep summary: %s and %s", folder / "summary.csv", folder / "summary.md")


def summarize(sweep_dir: Path, objective: str) -> pd.DataFrame:
    """One row per job directory: the overrides that differ between jobs, status, objective, run figures
    and every final metric, best objective first and failed or killed jobs last.

    A job directory that Hydra made (``.hydra/overrides.yaml``) but that has no ``summary.json`` is a job
    whose process was killed (SIGKILL, the out-of-memory killer) before it could write one: a
    ``killed`` row, as on continuing an Optuna sweep that was killed mid-trial.
    """
    jobs = {p.parent for p in sweep_dir.glob("*/summary.json")}
    jobs |= {p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")}
    return rank_rows([job_row(job) for job in sorted(jobs, key=lambda p: job_order(p.name))], objective)


def job_row(job: Path, name: str | None = None) -> dict[str, Any]:
    """A job folder's row, with its overrides still as one dict (``rank_rows`` spreads them)."""
    path = job / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else killed_summary(job)
    # tuning.* are the Optuna sweeper's bookkeeping, not choices of the user.
    overrides = dict(
        o.split("=", 1) for o in summary.get("overrides", []) if "=" in o and not o.startswith("tuning.")
    )
    return {
        "job": name or job.name,
        "overrides": overrides,
        "status": summary.get("status", "unknown"),
        "objective": _number(summary.get("objective_value")),
        **{k: summary.get(k) for k in RUN_COLUMNS},
        **summary.get("metrics", {}),
        "error": summary.get("error", ""),
    }


def rank_rows(rows: list[dict[str, Any]], objective: str) -> pd.DataFrame:
    """The table: the overrides that differ between rows as columns, best objective first, failed last."""
    if not rows:
        return pd.DataFrame()
    # Only the overrides that differ between jobs say what the sweep varied.
    keys = sorted({k for r in rows for k in r["overrides"]})
    varied = [k for k in keys if len({r["overrides"].get(k) for r in rows}) > 1]
    for row in rows:
        overrides = row.pop("overrides")
        row |= {k: overrides.get(k, "") for k in varied}
    frame = pd.DataFrame(rows)
    for column in RUN_COLUMNS:  # every column, also in a table of rows that lack some (read from a storage)
        if column not in frame:
            frame[column] = None
    for column in ("num_parameters", "best_epoch"):  # integers, also next to the empty cells of failed jobs
        frame[column] = pd.array(frame[column], dtype="Int64")
    where = ["folder"] if "folder" in frame else []  # a table rebuilt from a storage says where each job ran
    frame = frame[
        ["job", *varied, "status", "objective", *RUN_COLUMNS, *_metric_columns(frame), "error", *where]
    ]
    ascending = metric_mode(objective) == "min"
    frame["_failed"] = frame["status"].isin(FAILED)
    return frame.sort_values(["_failed", "objective"], ascending=[True, ascending], na_position="last").drop(
        columns="_failed"
    )


STATES = {"COMPLETE": "ok", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}


def summarize_study(storage: str, study_name: str, objective: str) -> pd.DataFrame:
    """One row per trial of an Optuna study, from its storage: the table of a study that several processes
    or machines ran, each writing job folders of its own.

    A trial's row comes from its job folder where this machine can read it (as in ``summarize``), else
    from what the storage holds: state, objective value and parameters. ``folder`` says where it ran.

    Raises:
        UserError: the storage cannot be opened, or holds no study of that name.
    """
    import optuna  # only for a study's table

    from seo_cli.study_storage import open_storage, shown, storage_url
    from seo_cli.tuning import JOB_DIR, KILLED

    url = storage_url(storage)
    backend = open_storage(url)
    names = optuna.get_all_study_names(backend)
    if study_name not in names:
        raise UserError(
            f"{shown(url)} holds no study {study_name!r}; give --study-name, one of: {', '.join(names) or 'none'}."
        )
    rows = []
    for trial in optuna.load_study(study_name=study_name, storage=backend).get_trials(deepcopy=False):
        where = trial.system_attrs.get(JOB_DIR)
        folder = (
            Path(where["path"]) if isinstance(where, dict) and isinstance(where.get("path"), str) else None
        )
        if folder is not None and ((folder / "summary.json").is_file() or (folder / ".hydra").is_dir()):
            row = job_row(folder, name=str(trial.number))
        else:
            row = {
                "job": str(trial.number),
                "overrides": {k: str(v) for k, v in trial.params.items()},
                "status": STATES.get(trial.state.name, trial.state.name.lower()),
                "objective": _number(trial.value),
                "error": "",
            }
        if trial.user_attrs.get(KILLED):
            row["status"] = "killed"
        elif trial.state == optuna.trial.TrialState.RUNNING:  # its folder has no summary.json yet
            row["status"] = "running"
        row["folder"] = f"{where['host']}:{folder}" if folder is not None else ""
        rows.append(row)
    return rank_rows(rows, objective)


def main(argv: list[str] | None = None) -> None:
    """``python -m seo_cli.sweep STORAGE``: the summary of an Optuna study, rebuilt from its storage."""
    parser = argparse.ArgumentParser(
        prog="python -m seo_cli.sweep",
        description="Write summary.csv and summary.md of an Optuna study (every process and machine that "
        "ran its trials) from its storage, and print the ranked table.",
    )
    parser.add_argument(
        "storage", help="hydra.sweeper.storage of the study: a database URL or a journal .log"
    )
    parser.add_argument("--study-name", default="seo", help="hydra.sweeper.study_name (default: seo)")
    parser.add_argument("--objective", default="val/loss", help="the sweep's objective, for the ranking")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for the two files (default: .)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with exit_on_user_error():
        frame = summarize_study(args.storage, args.study_name, args.objective)
        if frame.empty:
            raise UserError(
                f"study {args.study_name!r} has no trials yet; run seo-train hparams_search=optuna first."
            )
        args.out.mkdir(parents=True, exist_ok=True)
        write_summary(args.out, frame, args.objective)


def killed_summary(job: Path) -> dict[str, Any]:
    """What a job without summary.json shows: its overrides, as Hydra recorded them before it ran; it is
    ``running`` while the process named in its lock file is alive (another seo-train sharing the sweep
    folder, an Optuna trial of another process), else ``killed``."""
    try:
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError):
        overrides = None
    overrides = [str(o) for o in overrides] if isinstance(overrides, list) else []
    if _held_by_another_process(job):
        return {"status": "running", "overrides": overrides, "error": ""}
    return {
        "status": "killed",
        "overrides": overrides,
        "error": "its process ended without writing summary.json (killed, e.g. by SIGKILL or the "
        "out-of-memory killer)",
    }


def _held_by_another_process(job: Path) -> bool:
    """The pid in the job's lock file (seo_cli.launch.Job.lock) is a live process of this machine, other
    than this one (whose jobs are over when it summarises)."""
    try:
        pid = int((job / LOCK_FILE).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process
    return True


def summary_table(frame: pd.DataFrame, objective: str) -> Table:
    """The terminal's view: the varied overrides, status, objective, two more metrics, size and time."""
    headline = [
        c for c in _metric_columns(frame) if c.startswith("val/") and c.endswith(("/accuracy", "/r2"))
    ]
    metrics = [c for c in headline if c != objective][:SHOWN_METRICS]
    varied = list(frame.columns[1 : frame.columns.get_loc("status")])
    columns = ["job", *varied, "status", "objective", *metrics, "num_parameters", "wall_time_s", "error"]
    headers = {"num_parameters": "params", "wall_time_s": "time (s)", "objective": objective}
    table = Table(title=f"Sweep ranked by {objective} ({metric_mode(objective)}); all columns in summary.csv")
    for column in columns:
        header = headers.get(column, column.rsplit(".", 1)[-1])
        left = column in ("job", "status", "error", *varied)
        table.add_column(
            header,
            justify="left" if left else "right",
            no_wrap=column == "error",
            max_width=48 if column == "error" else None,
        )
    for _, row in frame.iterrows():
        table.add_row(*(_fmt(row[c]) for c in columns))
    return table


def to_markdown(frame: pd.DataFrame, objective: str) -> str:
    header = f"# Sweep summary\n\nRanked by `{objective}` ({metric_mode(objective)} is best); failed and killed jobs last.\n\n"
    lines = ["| " + " | ".join(frame.columns) + " |", "|---" * len(frame.columns) + "|"]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(_fmt(row[c]).replace("|", "\\|") for c in frame.columns) + " |")
    return header + "\n".join(lines) + "\n"


def _metric_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith(("val/", "test/"))]


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def _fmt(value: Any) -> str:
    if value is pd.NA:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def job_order(name: str) -> tuple[int, str]:
    """Sort key of job folders: 0, 1, 2, 10 (numerically), then any other name."""
    return (int(name), name) if name.isdigit() else (10**9, name)


if __name__ == "__main__":
    main()
