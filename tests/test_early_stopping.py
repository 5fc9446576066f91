"""Early stopping: when a value improves, the epoch a scripted metric stops at, through fit, seo-train and resume."""

import math
import re

import pytest
import torch
from conftest import read_jsonl

from seo_cli.checkpoint import CheckpointManager, load_checkpoint
from seo_cli.early_stopping import EarlyStopping, improves
from seo_cli.errors import UserError
from seo_cli.validation import check_train_config

NAN = math.nan


@pytest.mark.parametrize(
    ("value", "best", "mode", "min_delta", "expected"),
    [
        (0.5, 1.0, "min", 0.0, True),
        (1.0, 1.0, "min", 0.0, False),  # equal is no improvement
        (1.5, 1.0, "min", 0.0, False),
        (1.5, 1.0, "max", 0.0, True),
        (1.0, 1.0, "max", 0.0, False),
        (0.5, 1.0, "max", 0.0, False),
        (0.5, 1.0, "min", 0.5, False),  # must beat the best by more than min_delta
        (0.25, 1.0, "min", 0.5, True),
        (1.5, 1.0, "max", 0.5, False),
        (1.75, 1.0, "max", 0.5, True),
        (NAN, 1.0, "min", 0.0, False),  # NaN never improves
        (NAN, 1.0, "max", 0.0, False),
        (NAN, NAN, "min", 0.0, False),
        (5.0, NAN, "min", 0.0, True),  # anything improves on no best yet
        (-5.0, NAN, "max", 100.0, True),
    ],
)
def test_improves(value, best, mode, min_delta, expected):
    assert improves(value, best, mode, min_delta) is expected


def feed(stopper: EarlyStopping, values, first_epoch: int = 1) -> int:
    """Update epoch by epoch; returns the epoch it asked to stop after, or 0."""
    for epoch, value in enumerate(values, start=first_epoch):
        if stopper.update(value, epoch):
            return epoch
    return 0


SCRIPT = [1.0, 0.9, 0.95, 0.93, 0.91, 0.5, 0.4, 0.3]


@pytest.mark.parametrize(
    ("patience", "min_delta", "stop_epoch", "best"),
    [
        (3, 0.0, 5, 0.9),  # 0.95, 0.93, 0.91: three epochs without beating 0.9
        (2, 0.0, 4, 0.9),
        (3, 0.15, 4, 1.0),  # 0.9 is not 0.15 below 1.0: bad from epoch 2 on
        (5, 0.0, 0, 0.3),  # epoch 6 improves before patience runs out
    ],
)
def test_stops_at_the_expected_epoch(patience, min_delta, stop_epoch, best):
    stopper = EarlyStopping("val/loss", patience=patience, min_delta=min_delta)
    assert feed(stopper, SCRIPT) == stop_epoch
    assert stopper.stopped_epoch == stop_epoch
    assert stopper.best == best


def test_min_delta_is_measured_from_the_best_not_the_last_value():
    # Each value is 0.03 below the last, but only every other one is 0.05 below the best.
    values = [1.0, 0.97, 0.94, 0.91, 0.88]
    assert feed(EarlyStopping("val/loss", patience=2), values) == 0
    stopper = EarlyStopping("val/loss", patience=2, min_delta=0.05)
    assert feed(stopper, values) == 0
    assert stopper.best == 0.88
    assert feed(EarlyStopping("val/loss", patience=2, min_delta=0.1), values) == 3


def test_mode_max():
    stopper = EarlyStopping("val/intent/accuracy", mode="max", patience=2)
    assert feed(stopper, [0.5, 0.6, 0.6, 0.55, 0.9]) == 4
    assert (stopper.best, stopper.bad_epochs) == (0.6, 2)
    # The same values read as a loss: 0.5 is the best and 0.6 never beats it.
    assert feed(EarlyStopping("val/loss", mode="min", patience=2), [0.5, 0.6, 0.6, 0.55]) == 3


def test_nan_epochs_count_as_bad():
    stopper = EarlyStopping("val/loss", patience=2)
    assert feed(stopper, [1.0, NAN, NAN]) == 3
    assert stopper.best == 1.0


def test_state_dict_round_trip_continues_identically():
    straight = EarlyStopping("val/loss", patience=3)
    assert feed(straight, SCRIPT[:3]) == 0
    state = straight.state_dict()
    assert state == {"best": 0.9, "bad_epochs": 1, "stopped_epoch": 0}
    resumed = EarlyStopping("val/loss", patience=3)
    resumed.load_state_dict(state)
    assert feed(resumed, SCRIPT[3:], first_epoch=4) == feed(straight, SCRIPT[3:], first_epoch=4) == 5
    assert resumed.state_dict() == straight.state_dict() == {"best": 0.9, "bad_epochs": 3, "stopped_epoch": 5}


def test_state_dict_keeps_a_nan_best_through_a_checkpoint_file(tmp_path):
    ckpt = CheckpointManager(tmp_path, extra={"config": "x: 1", "preprocessing": {}})
    state = EarlyStopping("val/loss").state_dict()
    ckpt.save("last.pt", {"model": {}, "early_stopping": state})
    loaded = load_checkpoint(tmp_path / "last.pt")["early_stopping"]
    assert math.isnan(loaded["best"]) and (loaded["bad_epochs"], loaded["stopped_epoch"]) == (0, 0)


def test_loaded_state_with_a_larger_patience_trains_on():
    stopped = EarlyStopping("val/loss", patience=2)
    assert feed(stopped, SCRIPT[:4]) == 4
    patient = EarlyStopping("val/loss", patience=4)
    patient.load_state_dict(stopped.state_dict())
    assert patient.update(0.92, 5) is False  # third bad epoch: under the new patience
    assert patient.update(0.94, 6) is True
    assert patient.stopped_epoch == 6
    assert patient.bad_epochs == 4
    # An improvement after a resume resets the count.
    again = EarlyStopping("val/loss", patience=4)
    again.load_state_dict(stopped.state_dict())
    assert again.update(0.8, 5) is False
    assert (again.best, again.bad_epochs) == (0.8, 0)


def test_stopped_epoch_is_cleared_when_a_resumed_run_trains_on():
    stopped = EarlyStopping("val/loss", patience=2)
    assert feed(stopped, SCRIPT[:4]) == 4
    patient = EarlyStopping("val/loss", patience=4)
    patient.load_state_dict(stopped.state_dict())
    assert patient.update(0.92, 5) is False
    # "0 while training goes on": the stop at epoch 4 was undone by the larger patience.
    assert patient.stopped_epoch == 0


# fit with a tiny model, validation replaced by a scripted metric.


def _fit(monkeypatch, script, *, epochs, early_stopping=None, checkpoints=None, resume_from=None, start=0):
    """``fit`` whose validation returns the scripted values; ``early_stopping`` (an EarlyStopping)
    becomes the config's early-stopping knobs."""
    from seo_cli import trainer
    from seo_cli.config import EarlyStoppingConfig, TrainerConfig

    calls = iter(range(start, len(script)))

    def scripted_validation(model):
        i = next(calls)
        return {"val/loss": script[i], "val/y/accuracy": 1.0 - script[i] / 10}

    stop = EarlyStoppingConfig()
    if early_stopping is not None:
        stop = EarlyStoppingConfig(
            patience=early_stopping.patience,
            monitor=early_stopping.monitor,
            mode=early_stopping.mode,
            min_delta=early_stopping.min_delta,
        )
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x, y = torch.randn(32, 3), torch.randn(32, 1)
    batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)]
    return trainer.fit(
        model,
        torch.optim.SGD(model.parameters(), lr=0.01),
        torch.nn.functional.mse_loss,
        batches,
        TrainerConfig(epochs=epochs, progress="plain", early_stopping=stop),
        validate=scripted_validation,
        checkpoints=checkpoints,
        resume_from=resume_from,
    )


def test_fit_stops_at_the_scripted_epoch(monkeypatch):
    result = _fit(monkeypatch, SCRIPT, epochs=8, early_stopping=EarlyStopping("val/loss", patience=3))
    assert len(result.history) == 5
    assert [h["val/loss"] for h in result.history] == SCRIPT[:5]
    assert result.stopped_early is True
    assert (result.best_epoch, result.best_value) == (2, 0.9)
    assert result.global_step == 5 * 4


def test_fit_without_early_stopping_runs_every_epoch(monkeypatch):
    result = _fit(monkeypatch, SCRIPT, epochs=8)
    assert len(result.history) == 8
    assert result.stopped_early is False
    assert result.best_epoch == 8


def test_fit_early_stopping_follows_its_own_monitor(monkeypatch, tmp_path):
    # val/y/accuracy = 1 - val/loss / 10: 0.9, 0.91, 0.905, 0.907, 0.909, 0.95, ...; in mode max with
    # min_delta 0.02 epochs 2 to 5 are bad. On val/loss (epoch 2 improves, epoch 6 again) it would run all 8.
    stopper = EarlyStopping("val/y/accuracy", mode="max", patience=4, min_delta=0.02)
    ckpt = CheckpointManager(tmp_path, extra={"config": "x: 1", "preprocessing": {}})
    result = _fit(monkeypatch, SCRIPT, epochs=8, early_stopping=stopper, checkpoints=ckpt)
    assert len(result.history) == 5
    assert load_checkpoint(tmp_path / "last.pt")["early_stopping"]["best"] == pytest.approx(0.9)
    assert result.best_epoch == 2  # best.pt still follows trainer.monitor (val/loss)


def test_fit_resumes_early_stopping_from_the_checkpoint(monkeypatch, tmp_path):
    ckpt = CheckpointManager(tmp_path, extra={"config": "x: 1", "preprocessing": {}})
    _fit(
        monkeypatch, SCRIPT, epochs=8, early_stopping=EarlyStopping("val/loss", patience=3), checkpoints=ckpt
    )
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["early_stopping"] == {"best": 0.9, "bad_epochs": 3, "stopped_epoch": 5}
    assert last["epoch"] == 5

    # The same patience: the run had ended, nothing is left to train.
    ended = _fit(
        monkeypatch,
        SCRIPT,
        epochs=8,
        early_stopping=EarlyStopping("val/loss", patience=3),
        resume_from=last,
        start=5,
    )
    assert (len(ended.history), ended.stopped_early, ended.global_step) == (5, True, 20)

    # A larger patience trains on: epoch 6 improves, and 7 and 8 too, to the end of the run.
    longer_dir = tmp_path / "longer"
    longer = _fit(
        monkeypatch,
        SCRIPT,
        epochs=8,
        early_stopping=EarlyStopping("val/loss", patience=4),
        checkpoints=CheckpointManager(longer_dir, extra={"config": "x: 1", "preprocessing": {}}),
        resume_from=last,
        start=5,
    )
    assert (len(longer.history), longer.stopped_early, longer.global_step) == (8, False, 32)
    stopped = load_checkpoint(longer_dir / "last.pt")["early_stopping"]
    assert (stopped["best"], stopped["bad_epochs"]) == (0.3, 0)


# seo-train: in-process debug=smoke runs (the MLP keeps them to about a second an epoch).


def test_train_stops_when_nothing_improves_by_min_delta(train_run):
    summary, run_dir = train_run(
        "model=mlp", "epochs=6", "trainer.early_stopping.patience=1", "trainer.early_stopping.min_delta=100"
    )
    assert summary["epochs_trained"] == 2
    assert summary["stopped_early"] is True
    assert summary["global_step"] == 2 * 27
    assert [row["epoch"] for row in read_jsonl(run_dir / "metrics.jsonl") if "epoch" in row] == [1.0, 2.0]
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert last["early_stopping"] == {
        "best": last["history"][0]["val/loss"],
        "bad_epochs": 1,
        "stopped_epoch": 2,
    }


def test_train_derives_mode_max_from_an_accuracy_monitor(train_run):
    summary, run_dir = train_run(
        "model=mlp",
        "epochs=2",
        "trainer.early_stopping.patience=5",
        "trainer.early_stopping.monitor=val/intent/accuracy",
    )
    epochs = [row for row in read_jsonl(run_dir / "metrics.jsonl") if "epoch" in row]
    accuracy = [row["val/intent/accuracy"] for row in epochs]
    assert len(accuracy) == 2
    assert accuracy[0] != accuracy[1]  # so modes min and max keep different bests
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")["early_stopping"]
    assert state["best"] == max(accuracy)
    # best.pt still follows trainer.monitor (val/loss, min).
    losses = [row["val/loss"] for row in epochs]
    assert summary["best_epoch"] == 1 + losses.index(min(losses))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["trainer.early_stopping.patience=0"],
            "trainer.early_stopping.patience=0 must be at least 1, or null to turn early stopping off.",
        ),
        (
            ["trainer.early_stopping.patience=2", "trainer.early_stopping.min_delta=-0.1"],
            "trainer.early_stopping.min_delta=-0.1 must be 0 or more.",
        ),
        (
            [
                "trainer.early_stopping.patience=2",
                "trainer.early_stopping.mode=min",
                "trainer.early_stopping.monitor=val/intent/accuracy",
            ],
            "trainer.early_stopping.monitor=val/intent/accuracy grows as the model improves; "
            "set trainer.early_stopping.mode=max.",
        ),
        (
            ["trainer.early_stopping.patience=2", "trainer.early_stopping.mode=max"],
            "trainer.early_stopping.monitor=val/loss falls as the model improves; set trainer.early_stopping.mode=min.",
        ),
    ],
    ids=["patience-0", "negative-delta", "accuracy-min", "loss-max"],
)
def test_wrong_early_stopping_config_is_a_user_error(compose_train, overrides, message):
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        check_train_config(compose_train(*overrides))


def test_unknown_early_stopping_monitor_is_a_user_error(compose_train):
    cfg = compose_train("trainer.early_stopping.patience=2", "trainer.early_stopping.monitor=val/intent/acc")
    with pytest.raises(UserError) as err:
        check_train_config(cfg)
    (line,) = str(err.value).splitlines()
    assert line.startswith(
        "trainer.early_stopping.monitor='val/intent/acc' is not a metric this run logs; use one of: "
    )
    assert "val/intent/accuracy" in line and "val/loss" in line


def test_valid_early_stopping_configs_pass(compose_train):
    for overrides in (
        ["trainer.early_stopping.patience=3"],
        ["trainer.early_stopping.patience=3", "trainer.early_stopping.monitor=val/ctr/r2"],
        [
            "trainer.early_stopping.patience=3",
            "trainer.early_stopping.monitor=val/ctr/mae",
            "trainer.early_stopping.mode=min",
        ],
    ):
        check_train_config(compose_train(*overrides))


def test_early_stopping_state_survives_resume(compose_train, tmp_path):
    from seo_cli.train import train

    def run(*overrides):
        cfg = compose_train(
            "debug=smoke",
            "logger=none",
            "trainer.progress=plain",
            "model=mlp",
            "trainer.early_stopping.min_delta=100",
            *overrides,
        )
        return train(cfg, tmp_path)

    last = tmp_path / "checkpoints" / "last.pt"
    first = run("epochs=2", "trainer.early_stopping.patience=2")
    assert (first["epochs_trained"], first["stopped_early"]) == (2, False)
    assert load_checkpoint(last)["early_stopping"]["bad_epochs"] == 1

    # Epoch 3 is the second without an improvement of 100; a fresh count would have stopped at 5.
    second = run("epochs=6", "resume=auto", "trainer.early_stopping.patience=2")
    assert second["resumed_from"] == str(last)
    assert (second["epochs_trained"], second["stopped_early"]) == (3, True)
    state = load_checkpoint(last)
    assert state["epoch"] == 3
    assert state["early_stopping"]["bad_epochs"] == 2
    assert state["early_stopping"]["stopped_epoch"] == 3
    assert state["early_stopping"]["best"] == state["history"][0]["val/loss"]

    # Resumed with a larger patience, the stopped run trains on until that one runs out.
    third = run("epochs=6", "resume=auto", "trainer.early_stopping.patience=3")
    assert (third["epochs_trained"], third["stopped_early"]) == (4, True)
    assert load_checkpoint(last)["early_stopping"] == {
        "best": state["history"][0]["val/loss"],
        "bad_epochs": 3,
        "stopped_epoch": 4,
    }
