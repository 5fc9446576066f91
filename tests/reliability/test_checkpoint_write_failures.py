"""2. A checkpoint write that fails (disk full, unwritable directory, read-only file system) stops the run
with one sentence naming the file and the cause; the previous last.pt still loads, and no half-written
file is left behind. Root ignores file modes, so the failures are injected into the calls
seo_cli/checkpoint.py makes, as a full disk would make them fail.
"""

import errno
import io
import itertools
import re

import pytest
import torch

import seo_cli.checkpoint
from seo_cli.checkpoint import load_checkpoint
from seo_cli.errors import UserError
from seo_cli.train import train

from .support import assert_clean_error, compose_train, tiny_overrides, write_tiny_table

pytestmark = pytest.mark.reliability

# The tiny table has 42 training rows: 3 optimizer steps of 16 per epoch.
STEPS_PER_EPOCH = 3


def fail_on_call(real, on_call: int, fail):
    """``real`` with its ``on_call``-th call (1-based) replaced by ``fail(*args)``."""
    calls = itertools.count(1)

    def wrapper(*args, **kwargs):
        if next(calls) == on_call:
            return fail(*args, **kwargs)
        return real(*args, **kwargs)

    return wrapper


def disk_full(obj, f, *args, **kwargs):
    """What a full disk does to torch.save: the first half of the bytes land, then the write fails."""
    buffer = io.BytesIO()
    torch.serialization.save(obj, buffer)
    f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    raise OSError(errno.ENOSPC, "No space left on device")


def directory_not_writable(*args, dir=None, **kwargs):
    raise PermissionError(errno.EACCES, "Permission denied", str(dir))


def read_only_file_system(src, dst, *args, **kwargs):
    raise OSError(errno.EROFS, "Read-only file system", str(dst))


@pytest.mark.parametrize(
    "target, make_fault, cause",
    [
        ((torch, "save"), disk_full, "No space left on device"),
        ((seo_cli.checkpoint.tempfile, "mkstemp"), directory_not_writable, "Permission denied"),
        ((seo_cli.checkpoint.os, "replace"), read_only_file_system, "Read-only file system"),
    ],
    ids=["disk-full", "directory-not-writable", "read-only-file-system"],
)
def test_a_failing_checkpoint_write_stops_the_run_and_keeps_the_previous_last_pt(
    tmp_path, monkeypatch, target, make_fault, cause
):
    table = write_tiny_table(tmp_path / "pages.csv")
    run_dir = tmp_path / "run"
    checkpoints = run_dir / "checkpoints"
    # Epoch 1 writes best.pt and last.pt; the third write is one of epoch 2's.
    module, name = target
    monkeypatch.setattr(module, name, fail_on_call(getattr(module, name), 3, make_fault))
    with pytest.raises(UserError) as err:
        train(compose_train(*tiny_overrides(table), "epochs=3"), run_dir)
    monkeypatch.undo()

    message = str(err.value)
    assert_clean_error(message)
    assert re.search(rf"{re.escape(str(checkpoints))}/(best|last)\.pt", message), message
    assert cause in message
    state = load_checkpoint(checkpoints / "last.pt")
    assert (state["epoch"], state["global_step"]) == (1, STEPS_PER_EPOCH)
    assert all(torch.isfinite(w).all() for w in state["model"].values())
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.pt", "last.pt"]  # no temp file left


def test_a_run_directory_that_cannot_be_created_is_one_sentence_before_training(tmp_path):
    table = write_tiny_table(tmp_path / "pages.csv")
    blocker = tmp_path / "outputs"
    blocker.write_text("a file where the run directory's parent should be\n")
    run_dir = blocker / "run"
    with pytest.raises(UserError) as err:
        train(compose_train(*tiny_overrides(table)), run_dir)
    assert_clean_error(str(err.value))
    assert str(run_dir) in str(err.value)
    assert blocker.read_text() == "a file where the run directory's parent should be\n"
