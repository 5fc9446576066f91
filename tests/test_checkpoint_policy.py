"""Checkpoint policy: which files the CheckpointManager writes and deletes, atomically, and its config checks."""

import math
import os
import re
import shutil

import pytest
import torch
from conftest import read_jsonl

from seo_cli.checkpoint import CheckpointManager, load_checkpoint, numbered_name
from seo_cli.early_stopping import improves
from seo_cli.errors import UserError
from seo_cli.validation import check_train_config

EXTRA = {"config": "x: 1", "preprocessing": {}}
NAME = re.compile(r"^epoch=(\d{3})-val_loss=(\d+\.\d{4})\.pt$")


def manager(directory, **policy) -> CheckpointManager:
    return CheckpointManager(directory, extra=EXTRA, **policy)


def state_of(epoch: int) -> dict:
    return {"model": {"w": torch.tensor([float(epoch)])}, "epoch": epoch}


def run_epochs(ckpt: CheckpointManager, values, monitor="val/loss", first_epoch=1, best=math.nan):
    """save_epoch for each scripted value, ``improved`` as the loop decides it; returns the best value."""
    for epoch, value in enumerate(values, start=first_epoch):
        improved = improves(value, best, ckpt.mode)
        best = value if improved else best
        ckpt.save_epoch(state_of(epoch), epoch=epoch, monitor=monitor, value=value, improved=improved)
    return best


def files(directory) -> set[str]:
    return set(os.listdir(directory))


def test_numbered_name_holds_epoch_and_value_safe_as_a_file_name():
    assert numbered_name(2, "val/loss", 0.5) == "epoch=002-val_loss=0.5000.pt"
    assert numbered_name(117, "val/intent/accuracy", 0.81234) == "epoch=117-val_intent_accuracy=0.8123.pt"


def test_top_k_min_keeps_exactly_the_k_lowest(tmp_path):
    ckpt = manager(tmp_path, mode="min", save_top_k=2)
    written = []
    original = ckpt.save
    ckpt.save = lambda name, state: written.append(name) or original(name, state)
    run_epochs(ckpt, [0.9, 0.5, 0.7, 0.6, 0.8])
    assert files(tmp_path) == {
        "best.pt",
        "last.pt",
        "epoch=002-val_loss=0.5000.pt",
        "epoch=004-val_loss=0.6000.pt",
    }
    assert [(e["epoch"], e["value"]) for e in ckpt.numbered] == [(2, 0.5), (4, 0.6)]
    # Epoch 5 is outside the top 2 from the start, so its file is never written at all.
    assert "epoch=005-val_loss=0.8000.pt" not in written
    assert load_checkpoint(tmp_path / "epoch=004-val_loss=0.6000.pt")["model"]["w"].item() == 4.0


def test_top_k_max_keeps_exactly_the_k_highest(tmp_path):
    ckpt = manager(tmp_path, mode="max", save_top_k=2)
    run_epochs(ckpt, [0.5, 0.9, 0.7, 0.95, 0.6], monitor="val/intent/accuracy")
    assert files(tmp_path) == {
        "best.pt",
        "last.pt",
        "epoch=002-val_intent_accuracy=0.9000.pt",
        "epoch=004-val_intent_accuracy=0.9500.pt",
    }
    assert load_checkpoint(tmp_path / "best.pt")["model"]["w"].item() == 4.0


def test_top_k_ties_keep_the_earlier_epoch(tmp_path):
    ckpt = manager(tmp_path, save_top_k=2)
    run_epochs(ckpt, [0.7, 0.5, 0.5, 0.5])
    assert {f for f in files(tmp_path) if NAME.match(f)} == {
        "epoch=002-val_loss=0.5000.pt",
        "epoch=003-val_loss=0.5000.pt",
    }


def test_top_k_minus_one_keeps_every_epoch(tmp_path):
    ckpt = manager(tmp_path, save_top_k=-1)
    run_epochs(ckpt, [0.9, 0.5, 0.7, 0.6])
    assert files(tmp_path) == {
        "best.pt",
        "last.pt",
        "epoch=001-val_loss=0.9000.pt",
        "epoch=002-val_loss=0.5000.pt",
        "epoch=003-val_loss=0.7000.pt",
        "epoch=004-val_loss=0.6000.pt",
    }


def test_top_k_zero_writes_no_numbered_file(tmp_path):
    ckpt = manager(tmp_path, save_top_k=0)
    run_epochs(ckpt, [0.9, 0.5, 0.7])
    assert files(tmp_path) == {"best.pt", "last.pt"}
    assert ckpt.numbered == []


def test_every_n_epochs_numbers_only_those_epochs(tmp_path):
    ckpt = manager(tmp_path, save_top_k=-1, every_n_epochs=2)
    run_epochs(ckpt, [0.9, 0.8, 0.7, 0.6, 0.5])
    assert {f for f in files(tmp_path) if NAME.match(f)} == {
        "epoch=002-val_loss=0.8000.pt",
        "epoch=004-val_loss=0.6000.pt",
    }
    # best.pt and last.pt still follow every epoch.
    assert load_checkpoint(tmp_path / "best.pt")["model"]["w"].item() == 5.0
    assert load_checkpoint(tmp_path / "last.pt")["model"]["w"].item() == 5.0


def test_max_checkpoints_keeps_the_newest_whatever_their_values(tmp_path):
    ckpt = manager(tmp_path, save_top_k=-1, max_checkpoints=2)
    run_epochs(ckpt, [0.1, 0.2, 0.3, 0.4, 0.5])  # the oldest are the best: still deleted
    assert files(tmp_path) == {
        "best.pt",
        "last.pt",
        "epoch=004-val_loss=0.4000.pt",
        "epoch=005-val_loss=0.5000.pt",
    }
    assert load_checkpoint(tmp_path / "best.pt")["model"]["w"].item() == 1.0


def test_save_best_only_writes_best_but_no_last(tmp_path):
    ckpt = manager(tmp_path, save_best_only=True)
    best, last = ckpt.save_epoch(state_of(1), epoch=1, monitor="val/loss", value=0.9, improved=True)
    assert (best, last) == (tmp_path / "best.pt", None)
    best, last = ckpt.save_epoch(state_of(2), epoch=2, monitor="val/loss", value=0.95, improved=False)
    assert (best, last) == (None, None)
    assert files(tmp_path) == {"best.pt"}
    assert load_checkpoint(tmp_path / "best.pt")["model"]["w"].item() == 1.0


def test_best_holds_the_improved_epoch_and_last_the_latest(tmp_path):
    ckpt = manager(tmp_path, save_top_k=1)
    run_epochs(ckpt, [0.9, 0.5, 0.7])
    best = load_checkpoint(tmp_path / "best.pt")
    last = load_checkpoint(tmp_path / "last.pt")
    assert best["model"]["w"].item() == 2.0
    assert last["model"]["w"].item() == 3.0
    # The run's fixed extras and the manager's own state go into every file it writes.
    assert (best["config"], best["preprocessing"]) == ("x: 1", {})
    assert last["checkpoints"] == {
        "numbered": [{"name": "epoch=002-val_loss=0.5000.pt", "value": 0.5, "epoch": 2}]
    }


def test_state_dict_round_trips_and_a_resumed_manager_deletes_old_files(tmp_path):
    first = manager(tmp_path, save_top_k=2)
    run_epochs(first, [0.9, 0.5, 0.7])
    saved = load_checkpoint(tmp_path / "last.pt")["checkpoints"]
    assert saved == first.state_dict()
    assert [e["epoch"] for e in saved["numbered"]] == [2, 3]

    resumed = manager(tmp_path, save_top_k=2)
    resumed.load_state_dict(saved)
    assert resumed.numbered == first.numbered
    run_epochs(resumed, [0.6], first_epoch=4, best=0.5)
    # Epoch 3's file, written before the resume, is evicted by the resumed manager.
    assert {f for f in files(tmp_path) if NAME.match(f)} == {
        "epoch=002-val_loss=0.5000.pt",
        "epoch=004-val_loss=0.6000.pt",
    }


def test_state_dict_is_a_copy(tmp_path):
    ckpt = manager(tmp_path, save_top_k=-1)
    run_epochs(ckpt, [0.9])
    state = ckpt.state_dict()
    state["numbered"][0]["value"] = 123.0
    assert ckpt.numbered[0]["value"] == 0.9


def test_load_state_dict_forgets_files_deleted_since(tmp_path):
    first = manager(tmp_path, save_top_k=-1)
    run_epochs(first, [0.9, 0.5, 0.7])
    (tmp_path / "epoch=002-val_loss=0.5000.pt").unlink()
    resumed = manager(tmp_path, save_top_k=-1)
    resumed.load_state_dict(first.state_dict())
    assert [e["epoch"] for e in resumed.numbered] == [1, 3]


def test_nan_value_is_never_a_numbered_file(tmp_path):
    ckpt = manager(tmp_path, save_top_k=-1)
    run_epochs(ckpt, [0.5, math.nan, 0.4])
    assert {f for f in files(tmp_path) if f.startswith("epoch=")} == {
        "epoch=001-val_loss=0.5000.pt",
        "epoch=003-val_loss=0.4000.pt",
    }
    assert [e["epoch"] for e in ckpt.numbered] == [1, 3]
    # The NaN epoch still gets its last.pt, so a resume continues after it.
    ckpt2 = manager(tmp_path / "two", save_top_k=2)
    run_epochs(ckpt2, [0.5, math.nan])
    assert load_checkpoint(tmp_path / "two" / "last.pt")["model"]["w"].item() == 2.0
    assert {f for f in files(tmp_path / "two") if f.startswith("epoch=")} == {"epoch=001-val_loss=0.5000.pt"}


def test_wants_step_save():
    every_10 = CheckpointManager("unused", every_n_steps=10)
    assert [s for s in range(1, 31) if every_10.wants_step_save(s)] == [10, 20, 30]
    assert not any(CheckpointManager("unused").wants_step_save(s) for s in range(1, 31))
    best_only = CheckpointManager("unused", every_n_steps=10, save_best_only=True)
    assert not best_only.wants_step_save(10)


def _fail_while_writing(monkeypatch):
    """torch.save as seen by seo_cli.checkpoint writes half a zip file, then the disk fills up."""

    def save_half_then_fail(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr("seo_cli.checkpoint.torch.save", save_half_then_fail)


def test_crash_while_writing_last_keeps_the_previous_last(tmp_path, monkeypatch):
    ckpt = manager(tmp_path)
    ckpt.save_epoch(state_of(1), epoch=1, monitor="val/loss", value=0.5, improved=True)
    _fail_while_writing(monkeypatch)
    with pytest.raises(UserError, match="No space left"):
        # Not improved and no top-k: last.pt is the only file this epoch writes.
        ckpt.save_epoch(state_of(2), epoch=2, monitor="val/loss", value=0.7, improved=False)
    monkeypatch.undo()
    assert files(tmp_path) == {"best.pt", "last.pt"}  # no temp file left behind
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["model"]["w"].item() == 1.0
    assert last["epoch"] == 1


def test_crash_while_writing_a_new_top_k_file_deletes_nothing(tmp_path, monkeypatch):
    ckpt = manager(tmp_path, save_top_k=1)
    run_epochs(ckpt, [0.9])
    _fail_while_writing(monkeypatch)
    with pytest.raises(UserError, match="No space left"):
        ckpt.save_epoch(state_of(2), epoch=2, monitor="val/loss", value=0.5, improved=True)
    monkeypatch.undo()
    # New files come before deletions: epoch 1's file, the one last.pt lists, is still there.
    assert files(tmp_path) == {"best.pt", "last.pt", "epoch=001-val_loss=0.9000.pt"}
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["model"]["w"].item() == 1.0
    # A resumed run redoes epoch 2 and ends with the same files as an uninterrupted one.
    resumed = manager(tmp_path, save_top_k=1)
    resumed.load_state_dict(last["checkpoints"])
    run_epochs(resumed, [0.5], first_epoch=2, best=0.9)
    assert files(tmp_path) == {"best.pt", "last.pt", "epoch=002-val_loss=0.5000.pt"}


# End to end: in-process seo-train debug=smoke runs (the MLP keeps them to about a second an epoch).


def test_train_top_k_keeps_the_lowest_val_loss_epochs(train_run):
    summary, run_dir = train_run("model=mlp", "epochs=3", "trainer.checkpoint.save_top_k=2")
    names = files(run_dir / "checkpoints")
    numbered = sorted(n for n in names if NAME.match(n))
    assert names == {"best.pt", "last.pt", *numbered}
    assert len(numbered) == 2
    val_loss = {
        int(row["epoch"]): row["val/loss"] for row in read_jsonl(run_dir / "metrics.jsonl") if "epoch" in row
    }
    assert sorted(val_loss) == [1, 2, 3]
    kept = {int(NAME.match(n).group(1)): float(NAME.match(n).group(2)) for n in numbered}
    for epoch, value in kept.items():
        assert value == pytest.approx(val_loss[epoch], abs=5e-5)
    assert sorted(kept) == sorted(sorted(val_loss, key=val_loss.get)[:2])
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert sorted(e["name"] for e in last["checkpoints"]["numbered"]) == numbered
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert best["epoch"] == summary["best_epoch"] == min(val_loss, key=val_loss.get)


def test_train_save_best_only_leaves_only_best(train_run):
    summary, run_dir = train_run("model=mlp", "epochs=2", "trainer.checkpoint.save_best_only=true")
    assert files(run_dir / "checkpoints") == {"best.pt"}
    assert summary["best_checkpoint"] == str(run_dir / "checkpoints" / "best.pt")
    assert load_checkpoint(run_dir / "checkpoints" / "best.pt")["epoch"] == summary["best_epoch"]


def test_train_every_n_steps_writes_last_mid_epoch(train_run, monkeypatch, tmp_path):
    saves = []
    original = CheckpointManager.save

    def recording_save(self, name, state):
        path = original(self, name, state)
        saves.append((name, state["epoch"], state["global_step"], state["position"]["batches_done"]))
        if name == "last.pt" and state["global_step"] == 18:
            shutil.copy(path, tmp_path / "mid_epoch.pt")
        return path

    monkeypatch.setattr(CheckpointManager, "save", recording_save)
    summary, run_dir = train_run("model=mlp", "trainer.checkpoint.every_n_steps=9")
    assert summary["global_step"] == 27  # 420 training rows / batch 16
    # Steps 9 and 18 mid-epoch; step 27 ends the epoch, so only the epoch-end files follow it.
    assert saves == [
        ("last.pt", 0, 9, 9),
        ("last.pt", 0, 18, 18),
        ("best.pt", 1, 27, 0),
        ("last.pt", 1, 27, 0),
    ]
    mid = load_checkpoint(tmp_path / "mid_epoch.pt")
    assert (mid["epoch"], mid["global_step"], mid["position"]["batches_done"]) == (0, 18, 18)
    assert mid["history"] == []
    final = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert (final["epoch"], final["global_step"], final["position"]["batches_done"]) == (1, 27, 0)


# Config checks: each wrong policy is refused before any data is loaded, naming the key.


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["trainer.checkpoint.save_best_only=true", "trainer.checkpoint.every_n_steps=10"],
            "trainer.checkpoint.save_best_only=true writes no last.pt, so every_n_steps has nothing to write; "
            "unset one of them.",
        ),
        (
            ["trainer.checkpoint.max_checkpoints=2"],
            "trainer.checkpoint.max_checkpoints caps the files kept by save_top_k=-1 (every epoch); with "
            "save_top_k=0 at most that many are kept already, so set save_top_k=-1 or unset it.",
        ),
        (
            ["trainer.checkpoint.max_checkpoints=2", "trainer.checkpoint.save_top_k=3"],
            "trainer.checkpoint.max_checkpoints caps the files kept by save_top_k=-1 (every epoch); with "
            "save_top_k=3 at most that many are kept already, so set save_top_k=-1 or unset it.",
        ),
        (
            ["trainer.checkpoint.save_top_k=-2"],
            "trainer.checkpoint.save_top_k=-2 must be -1 (all), 0 (none) or a count.",
        ),
        (
            ["trainer.checkpoint.every_n_epochs=0"],
            "trainer.checkpoint.every_n_epochs=0 must be at least 1.",
        ),
        (
            ["trainer.checkpoint.every_n_steps=0"],
            "trainer.checkpoint.every_n_steps=0 must be at least 1, or null.",
        ),
        (
            ["trainer.checkpoint.save_top_k=-1", "trainer.checkpoint.max_checkpoints=0"],
            "trainer.checkpoint.max_checkpoints=0 must be at least 1, or null.",
        ),
    ],
    ids=[
        "best-only-with-steps",
        "max-without-top-k",
        "max-with-top-k-3",
        "top-k-minus-2",
        "every-0-epochs",
        "every-0-steps",
        "max-0",
    ],
)
def test_wrong_checkpoint_policy_is_a_user_error(compose_train, overrides, message):
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        check_train_config(compose_train(*overrides))


def test_valid_checkpoint_policies_pass(compose_train):
    for overrides in (
        ["trainer.checkpoint.save_top_k=-1", "trainer.checkpoint.max_checkpoints=2"],
        ["trainer.checkpoint.save_top_k=3", "trainer.checkpoint.every_n_epochs=2"],
        ["trainer.checkpoint.save_best_only=true"],
        ["trainer.checkpoint.every_n_steps=100"],
    ):
        check_train_config(compose_train(*overrides))
