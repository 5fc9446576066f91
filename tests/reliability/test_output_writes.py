"""Every output but checkpoints (seo-predict's scores and rejects, seo-eval's metrics.json, report.md and
plots, metrics.jsonl, TensorBoard and CSV logs) is written atomically, never through a symlink, with the
umask's mode, and a failed write is one sentence naming the file and the cause.

Root ignores file modes, so failures come from the OS where it refuses anyway (a folder that is a
file, /dev/full) and are otherwise injected at the call that would fail on a full disk.
"""

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import seo_cli.files
from seo_cli.checkpoint import save_checkpoint
from seo_cli.errors import UserError
from seo_cli.evaluate import run_eval
from seo_cli.files import current_umask, write_text
from seo_cli.loggers import CSVLogger, MetricsSink, TensorBoardLogger
from seo_cli.predict import run_predict

from .support import REPO, assert_clean_error, cli_env, compose_config, write_tiny_table

pytestmark = pytest.mark.reliability

NO_SPACE = "No space left on device; free space on its disk and run again."


def fail_writing(monkeypatch, name: str) -> None:
    """Make the fsync of the temp file of ``name`` (``.<name>.<random>.tmp``) fail as on a full disk."""
    real = os.fsync

    def fsync(fd):
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(f".{name}."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(seo_cli.files.os, "fsync", fsync)


def no_temp_files(folder: Path) -> bool:
    return not list(folder.glob(".*.tmp"))


@pytest.fixture
def umask():
    """``umask(mask)`` sets the process's umask for the test and puts the old one back after it."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


# --------------------------------------------------------------------------- the helper


def test_a_kill_in_the_middle_of_a_write_leaves_the_previous_complete_file(tmp_path):
    path = tmp_path / "scores.csv"
    path.write_text("row,label\n1,hi\n2,lo\n")
    script = (
        "import os, signal, sys\n"
        "from seo_cli.files import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    with open(tmp, 'w') as f:\n"
        "        f.write('row,label\\n' + '3,hi\\n' * 1000)\n"
        "        f.flush()\n"
        "        os.fsync(f.fileno())\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(path)], env=cli_env(), cwd=REPO, timeout=60)
    assert result.returncode == -signal.SIGKILL
    assert path.read_text() == "row,label\n1,hi\n2,lo\n"


def test_a_symlink_is_replaced_not_written_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    link = tmp_path / "out" / "metrics.json"
    link.parent.mkdir()
    link.symlink_to(victim)
    write_text(link, "{}\n")
    assert victim.read_text() == "precious\n"
    assert not link.is_symlink() and link.read_text() == "{}\n"


def test_new_files_and_checkpoints_follow_the_umask(tmp_path, umask):
    for mask, mode in ((0o022, 0o644), (0o027, 0o640)):
        umask(mask)
        assert current_umask() == mask  # read, not changed
        checkpoint = save_checkpoint({"model": {"w": torch.zeros(2)}}, tmp_path / f"{mask:o}" / "last.pt")
        report = write_text(tmp_path / f"{mask:o}" / "report.md", "# report\n")
        assert (checkpoint.stat().st_mode & 0o777, report.stat().st_mode & 0o777) == (mode, mode)
        assert current_umask() == mask


def test_a_full_disk_is_one_sentence_and_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "report.md"
    path.write_text("old\n")
    fail_writing(monkeypatch, "report.md")
    with pytest.raises(UserError) as err:
        write_text(path, "new\n")
    assert str(err.value) == f"cannot write {path}: {NO_SPACE}"
    assert path.read_text() == "old\n" and no_temp_files(tmp_path)


def test_a_folder_that_is_a_file_is_named(tmp_path):
    blocker = tmp_path / "outputs"
    blocker.write_text("")
    with pytest.raises(UserError) as err:
        write_text(blocker / "eval" / "metrics.json", "{}")
    assert str(err.value) == (
        f"cannot write {blocker / 'eval' / 'metrics.json'}: {blocker} is a file, not a folder; give another path."
    )


# --------------------------------------------------------------------------- seo-predict


@pytest.fixture
def pages(tmp_path) -> Path:
    return write_tiny_table(tmp_path / "pages.csv", rows=20, seed=1)


def predict(tiny_run: Path, input: Path, output: Path, *overrides: str) -> dict:
    cfg = compose_config(
        "predict",
        "device=cpu",
        f"checkpoint='{tiny_run / 'checkpoints' / 'best.pt'}'",
        f"input='{input}'",
        f"output='{output}'",
        *overrides,
    )
    return run_predict(cfg)


def with_bad_row(pages: Path) -> Path:
    frame = pd.read_csv(pages)
    frame["a"] = frame["a"].astype(object)
    frame.loc[3, "a"] = "many"
    bad = pages.with_name("bad_pages.csv")
    frame.to_csv(bad, index=False)
    return bad


class Killed(BaseException):
    """What a signal does to a write: it ends it where it is, past any ``except Exception``."""


def test_predict_keeps_the_previous_output_when_its_write_dies_half_way(
    tiny_run, pages, tmp_path, monkeypatch
):
    output = tmp_path / "scores.csv"
    predict(tiny_run, pages, output)
    before = output.read_bytes()
    to_csv = pd.DataFrame.to_csv

    def half_then_killed(frame, path, *args, **kwargs):
        to_csv(frame.iloc[: len(frame) // 2], path, *args, **kwargs)
        raise Killed

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_killed)
    with pytest.raises(Killed):
        predict(tiny_run, pages, output)
    assert output.read_bytes() == before and len(pd.read_csv(output)) == 20
    assert no_temp_files(tmp_path)


def test_predict_removes_an_earlier_runs_rejects_when_every_row_is_scored(tiny_run, pages, tmp_path):
    output = tmp_path / "scores.csv"
    first = predict(tiny_run, with_bad_row(pages), output)
    rejects = tmp_path / "scores.rejects.csv"
    assert first["rejects"] == str(rejects)
    assert pd.read_csv(rejects)[["row", "a"]].values.tolist() == [[4, "many"]]
    second = predict(tiny_run, pages, output)
    assert (second["rejects"], second["scored"]) == (None, 20)
    assert not rejects.exists()


def test_predict_replaces_symlinks_at_its_outputs_instead_of_writing_through_them(tiny_run, pages, tmp_path):
    victims = {name: tmp_path / f"{name}.victim" for name in ("scores", "rejects")}
    for name, victim in victims.items():
        victim.write_text(f"{name} precious\n")
    output, rejects = tmp_path / "scores.csv", tmp_path / "scores.rejects.csv"
    output.symlink_to(victims["scores"])
    rejects.symlink_to(victims["rejects"])
    predict(tiny_run, with_bad_row(pages), output)
    assert [v.read_text() for v in victims.values()] == ["scores precious\n", "rejects precious\n"]
    assert not output.is_symlink() and len(pd.read_csv(output)) == 19
    assert not rejects.is_symlink() and len(pd.read_csv(rejects)) == 1
    # A clean run removes a stale rejects link itself, not the file it points at.
    rejects.unlink()
    rejects.symlink_to(victims["rejects"])
    predict(tiny_run, pages, output)
    assert not rejects.is_symlink() and victims["rejects"].read_text() == "rejects precious\n"


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_predict_write_failures_are_one_sentence_naming_the_file(
    tiny_run, pages, tmp_path, monkeypatch, suffix
):
    output = tmp_path / f"scores.{suffix}"
    predict(tiny_run, pages, output)
    before = output.read_bytes()
    fail_writing(monkeypatch, output.name)
    with pytest.raises(UserError) as err:
        predict(tiny_run, pages, output)
    assert str(err.value) == f"cannot write {output}: {NO_SPACE}"
    assert output.read_bytes() == before and no_temp_files(tmp_path)
    monkeypatch.undo()
    blocker = tmp_path / "results"
    blocker.write_text("")
    with pytest.raises(UserError) as err:
        predict(tiny_run, pages, blocker / output.name)
    assert (
        str(err.value)
        == f"cannot write {blocker / output.name}: {blocker} is a file, not a folder; give another path."
    )


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_predict_refuses_an_id_column_that_is_also_a_prediction(tiny_run, pages, tmp_path, suffix):
    output = tmp_path / f"scores.{suffix}"
    with pytest.raises(UserError) as err:
        predict(tiny_run, pages, output, "id_column=label")
    assert str(err.value) == (
        "id_column=label names a column the checkpoint predicts, so the output would hold two 'label' "
        "columns; choose another id column, or leave id_column unset to number the rows."
    )
    assert not output.exists()
    # Any other column of the input is an id.
    assert predict(tiny_run, pages, output, "id_column=t")["scored"] == 20


# --------------------------------------------------------------------------- seo-eval


@pytest.mark.parametrize("name", ["metrics.json", "report.md", "label_confusion.png", "y_scatter.png"])
def test_eval_write_failures_are_one_sentence_naming_the_file(tiny_run, tmp_path, monkeypatch, name):
    cfg = compose_config(
        "eval", "device=cpu", f"checkpoint='{tiny_run / 'checkpoints' / 'best.pt'}'", "bootstrap=0"
    )
    out_dir = tmp_path / "eval"
    fail_writing(monkeypatch, name)
    with pytest.raises(UserError) as err:
        run_eval(cfg, out_dir)
    path = out_dir / ("plots" if name.endswith(".png") else "") / name
    assert str(err.value) == f"cannot write {path}: {NO_SPACE}"
    assert_clean_error(str(err.value))
    assert not path.exists() and no_temp_files(path.parent)


# --------------------------------------------------------------------------- metrics.jsonl, TensorBoard, CSV


def test_metrics_jsonl_write_failures_are_one_sentence(tmp_path):
    blocker = tmp_path / "run"
    blocker.write_text("")
    with pytest.raises(UserError) as err:
        MetricsSink(blocker / "metrics.jsonl")
    assert (
        str(err.value)
        == f"cannot write {blocker / 'metrics.jsonl'}: {blocker} is a file, not a folder; give another path."
    )

    path = tmp_path / "metrics.jsonl"
    sink = MetricsSink(path)
    sink.log({"train/loss": 1.0}, step=1)
    # The disk fills up after the file was opened: /dev/full fails every write with ENOSPC.
    sink._file.close()
    sink._file = open("/dev/full", "a", encoding="utf-8")  # noqa: SIM115
    with pytest.raises(UserError) as err:
        sink.log({"train/loss": 0.5}, step=2)
    assert str(err.value) == f"cannot write {path}: {NO_SPACE}"
    sink.close()  # no second error for the same cause
    assert path.read_text() == '{"step": 1, "train/loss": 1.0}\n'


def test_tensorboard_write_failures_are_one_sentence_without_a_thread_traceback(tmp_path, monkeypatch, capfd):
    from tensorboard.compat.tensorflow_stub.io.gfile import LocalFileSystem

    blocker = tmp_path / "run"
    blocker.write_text("")
    with pytest.raises(UserError) as err:
        TensorBoardLogger(blocker / "tensorboard")
    assert str(err.value) == (
        f"cannot write {blocker / 'tensorboard' / 'events.out.tfevents.*'}: {blocker} is a file, not a folder; "
        "give another path."
    )

    logger = TensorBoardLogger(tmp_path / "tensorboard")
    logger.log_metrics({"train/loss": 1.0}, step=1)

    def disk_full(self, filename, file_content, binary_mode=False):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(LocalFileSystem, "append", disk_full)
    with pytest.raises(UserError) as err:  # on this call, or on close: TensorBoard writes from a thread
        logger.log_metrics({"train/loss": 0.5}, step=2)
        logger.close()
    assert str(err.value) == f"cannot write {logger.path}: {NO_SPACE}"
    assert (
        logger.path.name.startswith("events.out.tfevents.") and logger.path.parent == tmp_path / "tensorboard"
    )
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err and "Exception in thread" not in captured.err


def test_csv_logger_write_failures_are_one_sentence(tmp_path, monkeypatch):
    blocker = tmp_path / "run"
    blocker.write_text("")
    with pytest.raises(UserError) as err:
        CSVLogger(blocker / "csv")
    assert (
        str(err.value)
        == f"cannot write {blocker / 'csv' / 'metrics.csv'}: {blocker} is a file, not a folder; give another path."
    )

    logger = CSVLogger(tmp_path / "csv")
    logger.log_metrics({"train/loss": 1.0}, step=1)
    fail_writing(monkeypatch, "metrics.csv")
    with pytest.raises(UserError) as err:
        logger.log_metrics({"val/loss": 0.5}, step=2)  # a new column rewrites the file
    assert str(err.value) == f"cannot write {tmp_path / 'csv' / 'metrics.csv'}: {NO_SPACE}"
    assert (tmp_path / "csv" / "metrics.csv").read_text().splitlines() == ["step,train/loss", "1,1.0"]


# --------------------------------------------------------------------------- Hydra's own .hydra/ folder


def test_a_run_folder_hydra_cannot_write_is_one_sentence_before_hydra_tries(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from seo_cli.files import OutputDirCheck

    blocker = tmp_path / "outputs"
    blocker.write_text("")
    config = OmegaConf.create({"hydra": {"run": {"dir": str(blocker / "run")}, "output_subdir": ".hydra"}})
    with pytest.raises(SystemExit) as exit:
        OutputDirCheck().on_run_start(config)
    assert str(exit.value) == (
        f"cannot write {blocker / 'run' / '.hydra' / 'config.yaml'}: {blocker} is a file, not a folder; "
        "give another path."
    )

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(seo_cli.files.os, "fsync", disk_full)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "multirun")}}})
    with pytest.raises(SystemExit) as exit:
        OutputDirCheck().on_multirun_start(config)
    assert str(exit.value) == f"cannot write {tmp_path / 'multirun' / 'config.yaml'}: {NO_SPACE}"
