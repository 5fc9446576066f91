"""trainer.val_check_interval: validation every n optimizer steps inside an epoch, which best.pt, early
stopping, the plateau scheduler and the tuner follow, and which a resumed run repeats exactly."""

import os
import signal

import pytest
import torch
from conftest import read_jsonl
from torch import nn

from seo_cli.checkpoint import CheckpointManager, load_checkpoint
from seo_cli.config import CheckpointConfig, EarlyStoppingConfig, TrainerConfig
from seo_cli.errors import UserError
from seo_cli.loggers import MetricsSink
from seo_cli.trainer import TrainingInterrupted, fit
from seo_cli.validation import check_train_config

BATCHES = 10  # per epoch


def batches() -> list:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)) for _ in range(BATCHES)]


class Scripted:
    """A validation that returns the scripted val/loss of each call (then the last one), records the step
    and mode it saw, and can send itself a signal at a given call."""

    def __init__(self, values: list[float], signal_at: int | None = None, fail_at: int | None = None) -> None:
        self.values, self.signal_at, self.fail_at, self.calls, self.modes = values, signal_at, fail_at, 0, []

    def __call__(self, model: nn.Module) -> dict[str, float]:
        self.calls += 1
        self.modes.append(model.training)
        if self.calls == self.signal_at:
            os.kill(os.getpid(), signal.SIGTERM)
        if self.calls == self.fail_at:
            raise RuntimeError("crash")
        return {"val/loss": self.values[min(self.calls, len(self.values)) - 1]}


def run(directory, validate, epochs=2, interval=4, resume_from=None, trial=None, **trainer):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.Dropout(0.3), nn.Linear(16, 1))  # dropout: resume needs the RNG
    modes = []
    model.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    sink = MetricsSink(directory / "metrics.jsonl", resume_step=resume_from["global_step"] if resume_from else None)
    config = TrainerConfig(epochs=epochs, progress="plain", val_check_interval=interval, log_every_n_steps=100, **trainer)
    result = fit(
        model,
        optimizer,
        nn.functional.mse_loss,
        batches(),
        config,
        validate=validate,
        sink=sink,
        checkpoints=CheckpointManager(
            directory,
            extra={"config": "x: 1", "preprocessing": {}},
            save_top_k=config.checkpoint.save_top_k,
            every_n_steps=config.checkpoint.every_n_steps,
        ),
        trial=trial,
        resume_from=resume_from,
    )
    sink.close()
    return result, model, modes


def test_validates_every_n_steps_and_at_each_epochs_end_with_fractional_epochs(tmp_path):
    validate = Scripted([1.0])
    result, _, modes = run(tmp_path, validate, checkpoint=CheckpointConfig(save_top_k=-1))
    # Steps 4 and 8 inside epoch 1, its end at 10, then 12 and 16 inside epoch 2 and its end at 20.
    assert [row["epoch"] for row in result.history] == [0.4, 0.8, 1.0, 1.2, 1.6, 2.0]
    logged = [row for row in read_jsonl(tmp_path / "metrics.jsonl") if "val/loss" in row]
    assert [row["step"] for row in logged] == [4, 8, 10, 12, 16, 20]
    assert all("train/loss" in row for row in logged)  # the epoch's training loss so far, or the whole epoch's
    assert "speed/samples_per_second" in logged[2] and "speed/samples_per_second" not in logged[0]
    assert validate.calls == 6 and result.epochs_trained == 2 and result.global_step == 20
    assert all(modes), "training went on in train mode after each validation"
    # Numbered files stay one per epoch: a validation inside an epoch writes best.pt and last.pt only.
    assert sorted(p.name for p in tmp_path.glob("epoch=*.pt")) == ["epoch=001-val_loss=1.0000.pt", "epoch=002-val_loss=1.0000.pt"]


def test_best_pt_and_early_stopping_follow_the_validations_inside_the_epoch(tmp_path):
    validate = Scripted([5.0, 1.0, 3.0, 4.0, 0.5])
    result, _, _ = run(tmp_path, validate, early_stopping=EarlyStoppingConfig(patience=2))
    # Validation 2 (step 8) is the best; 3 (step 10) and 4 (step 12) do not beat it: stop inside epoch 2.
    assert (result.best_step, result.best_epoch, result.best_value) == (8, 1, 1.0)
    assert result.stopped_early and result.global_step == 12 and validate.calls == 4
    best, last = load_checkpoint(tmp_path / "best.pt"), load_checkpoint(tmp_path / "last.pt")
    assert (best["global_step"], best["epoch"], best["position"]["batches_done"]) == (8, 0, 8)
    assert (last["global_step"], last["epoch"], last["position"]["batches_done"]) == (12, 1, 2)
    assert last["early_stopping"]["bad_epochs"] == 2  # patience counts validations
    assert [row["val/loss"] for row in last["history"]] == [5.0, 1.0, 3.0, 4.0]


def test_the_tuner_hears_each_validation_and_can_prune_inside_an_epoch(tmp_path):
    class Trial:
        monitor, reported = "val/loss", []

        def should_prune(self, step: int, value: float) -> bool:
            self.reported.append((step, value))
            return step == 3

    trial = Trial()
    result, _, _ = run(tmp_path, Scripted([3.0, 2.0, 1.0]), trial=trial)
    assert trial.reported == [(1, 3.0), (2, 2.0), (3, 1.0)]  # the third is epoch 1's end
    assert result.pruned and result.global_step == 10


def test_the_plateau_scheduler_steps_at_each_validation(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=0)
    config = TrainerConfig(epochs=1, progress="plain", val_check_interval=3)
    fit(model, optimizer, nn.functional.mse_loss, batches(), config, validate=Scripted([1.0]), scheduler=scheduler)
    # Validations at steps 3, 6, 9 and the epoch's end: the first sets the best, the three after halve the rate.
    assert optimizer.param_groups[0]["lr"] == 0.125


def straight_and_resumed(tmp_path, first_leg, **trainer):
    """The last.pt and history of a straight run and of one stopped by ``first_leg`` then resumed."""
    straight, _, _ = run(tmp_path / "straight", Scripted([3.0, 2.0, 2.5, 1.0, 1.5, 0.7]), **trainer)
    first_leg(tmp_path / "resumed")
    resume_from = load_checkpoint(tmp_path / "resumed" / "last.pt")
    values = [3.0, 2.0, 2.5, 1.0, 1.5, 0.7][len(resume_from["history"]) :]
    resumed, _, _ = run(tmp_path / "resumed", Scripted(values), resume_from=resume_from, **trainer)
    return straight, resumed


def assert_same_run(tmp_path, straight, resumed):
    def measured(history):  # leaves out timings and memory, which differ from run to run
        return [{k: v for k, v in row.items() if not k.startswith(("speed/", "memory/"))} for row in history]

    assert measured(resumed.history) == measured(straight.history)
    assert (resumed.best_step, resumed.global_step) == (straight.best_step, straight.global_step)
    for name in ("last.pt", "best.pt"):
        a, b = (load_checkpoint(tmp_path / run_name / name) for run_name in ("straight", "resumed"))
        assert a["global_step"] == b["global_step"], name
        for key, value in a["model"].items():
            assert torch.equal(value, b["model"][key]), (name, key)
    logged = [[row for row in read_jsonl(tmp_path / name / "metrics.jsonl") if "val/loss" in row] for name in ("straight", "resumed")]
    assert [row["step"] for row in logged[0]] == [row["step"] for row in logged[1]] == [4, 8, 10, 12, 16, 20]


def test_a_run_stopped_at_a_validation_inside_an_epoch_resumes_bit_identically(tmp_path):
    def stopped_by_sigterm_during_validation_2(directory):
        with pytest.raises(TrainingInterrupted) as stopped:
            run(directory, Scripted([3.0, 2.0], signal_at=2))
        assert stopped.value.global_step == 8

    straight, resumed = straight_and_resumed(tmp_path, stopped_by_sigterm_during_validation_2)
    assert_same_run(tmp_path, straight, resumed)


def test_a_run_resumed_between_validations_validates_at_the_same_steps(tmp_path):
    def crashed_at_step_8(directory):  # every_n_steps wrote last.pt at step 6, then validation 2 crashes
        with pytest.raises(RuntimeError, match="crash"):
            run(directory, Scripted([3.0], fail_at=2), checkpoint=CheckpointConfig(every_n_steps=6))
        assert load_checkpoint(directory / "last.pt")["global_step"] == 6

    straight, resumed = straight_and_resumed(tmp_path, crashed_at_step_8, checkpoint=CheckpointConfig(every_n_steps=6))
    assert_same_run(tmp_path, straight, resumed)


def test_val_check_interval_below_one_is_a_start_up_error(compose_train):
    with pytest.raises(UserError, match=r"trainer\.val_check_interval=0 must be at least 1 \(optimizer steps\), or null"):
        check_train_config(compose_train("trainer.val_check_interval=0"))


def test_seo_train_validates_inside_the_epoch_and_keeps_best_pt_at_that_step(train_run):
    summary, run_dir = train_run("model=mlp", "epochs=2", "trainer.val_check_interval=7")
    rows = [row for row in read_jsonl(run_dir / "metrics.jsonl") if "val/loss" in row]
    steps_per_epoch = rows[-1]["step"] // 2
    inside = list(range(7, 2 * steps_per_epoch, 7))
    expected = sorted(set(inside) | {steps_per_epoch, 2 * steps_per_epoch})
    assert [row["step"] for row in rows] == expected
    best = min(rows, key=lambda row: row["val/loss"])
    assert load_checkpoint(run_dir / "checkpoints" / "best.pt")["global_step"] == best["step"]
    assert summary["metrics"]["val/loss"] == pytest.approx(best["val/loss"])
    assert summary["epochs_trained"] == 2
