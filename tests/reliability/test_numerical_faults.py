"""5. Numerical faults at a chosen step: NaN in the inputs or the loss stops the run naming that step,
with only finite weights on disk; NaN and infinity in a data file are missing or refused, as the README
says; an exploding gradient is clipped, or stops the run with its step number.

The faults are injected in this process by wrapping ``seo_cli.trainer.forward_backward`` (as
tests/helpers/fault_inject.py does), so seo_cli has no hooks for them. The tiny table gives 3 optimizer
steps per epoch; ``debug=smoke`` reads the losses every 5 steps, so the step a NaN appeared at is found
after the fact, from the per-step losses kept on the device.
"""

import itertools
import json
import math
import re
from pathlib import Path

import pytest
import torch

import seo_cli.trainer
from seo_cli.checkpoint import load_checkpoint
from seo_cli.errors import UserError
from seo_cli.evaluation import TrainingDiverged
from seo_cli.train import train

from .support import assert_clean_error, compose_train, tiny_overrides, write_tiny_table

pytestmark = pytest.mark.reliability

STEPS_PER_EPOCH = 3


class Inject:
    """Wraps ``_forward_backward``: at optimizer step ``step`` (1-based) applies ``fault``; records every
    step's mean loss as the loop computed it."""

    def __init__(self, step: int, fault: str, scale: float = 1e15) -> None:
        self.step, self.fault, self.scale = step, fault, scale
        self.real = seo_cli.trainer.forward_backward
        self.steps = itertools.count(1)
        self.losses: dict[int, float] = {}

    def __call__(self, model, loss_fn, window, *args, **kwargs):
        step = next(self.steps)
        if step == self.step and self.fault == "nan-loss":
            loss_fn = _times_nan(loss_fn)
        if step == self.step and self.fault == "nan-input":
            window = [(_poisoned(inputs), labels) for inputs, labels in window]
        loss_sum, rows = self.real(model, loss_fn, window, *args, **kwargs)
        if step == self.step and self.fault == "exploding-gradient":
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.mul_(self.scale)
        self.losses[step] = (loss_sum / rows).item()
        return loss_sum, rows


def _times_nan(loss_fn):
    return lambda outputs, labels: loss_fn(outputs, labels) * float("nan")


def _poisoned(inputs: dict) -> dict:
    numeric = inputs["numeric"].clone()
    numeric[0, 0] = float("nan")  # one cell of one row: enough to poison the batch's loss
    return {**inputs, "numeric": numeric}


@pytest.fixture
def table(tmp_path) -> Path:
    return write_tiny_table(tmp_path / "pages.csv")


def run(table: Path, run_dir: Path, *overrides: str) -> dict:
    return train(compose_train(*tiny_overrides(table), *overrides), run_dir)


def saved_steps_and_finite(checkpoints: Path) -> dict[str, tuple[int, bool]]:
    out = {}
    for path in sorted(checkpoints.glob("*.pt")):
        state = load_checkpoint(path)
        finite = all(torch.isfinite(w).all() for w in state["model"].values() if w.is_floating_point())
        out[path.name] = (state["global_step"], finite)
    return out


@pytest.mark.parametrize("fault, step", [("nan-loss", 7), ("nan-input", 4)])
def test_nan_at_a_chosen_step_stops_the_run_naming_that_step(table, tmp_path, monkeypatch, fault, step):
    inject = Inject(step, fault)
    monkeypatch.setattr(seo_cli.trainer, "forward_backward", inject)
    with pytest.raises(TrainingDiverged) as err:
        run(table, tmp_path / "run", "epochs=4")
    message = str(err.value)
    assert_clean_error(message)
    last_finite = inject.losses[step - 1]
    assert math.isnan(inject.losses[step]) and math.isfinite(last_finite)
    assert message.startswith(
        f"the training loss became NaN or infinite at step {step}; "
        f"the last finite loss was {last_finite:.6g} at step {step - 1};"
    ), message
    # What is on disk was saved before the fault, at the last epoch's end, and is finite.
    before = (step - 1) // STEPS_PER_EPOCH * STEPS_PER_EPOCH
    saved = saved_steps_and_finite(tmp_path / "run" / "checkpoints")
    assert saved["last.pt"] == (before, True)
    assert all(finite and s <= before for s, finite in saved.values()), saved


@pytest.mark.parametrize("cell", ["nan", "NaN", "", "NA"])
def test_a_missing_number_in_the_file_is_refused_or_imputed(table, tmp_path, cell):
    lines = table.read_text().splitlines()
    fields = lines[5].split(",")
    fields[0] = cell  # row 5, line 6 of the file
    lines[5] = ",".join(fields)
    table.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError) as err:
        run(table, tmp_path / "strict")
    assert str(err.value) == (
        f"numeric column 'a' of {table} is empty at row 5 (line 6); fill it in, or set "
        "data.missing=impute to use the training median."
    )

    summary = run(table, tmp_path / "impute", "data.missing=impute")
    assert summary["status"] == "ok" and math.isfinite(summary["metrics"]["val/loss"])
    fill = load_checkpoint(tmp_path / "impute" / "checkpoints" / "last.pt")["preprocessing"]["numeric_fill"]
    values = [float(line.split(",")[0]) for i, line in enumerate(lines[1:], start=1) if i != 5]
    assert min(values) <= fill[0] <= max(values)


@pytest.mark.parametrize("cell", ["inf", "-inf", "1e999"])
def test_an_infinite_number_in_the_file_is_refused_naming_the_row(table, tmp_path, cell):
    lines = table.read_text().splitlines()
    lines[3] = cell + lines[3][lines[3].index(",") :]
    table.write_text("\n".join(lines) + "\n")
    for missing in ("error", "impute"):
        with pytest.raises(UserError) as err:
            run(table, tmp_path / missing, f"data.missing={missing}")
        # The value as the file has it, or as the number it reads as; not a numpy repr.
        shown = {f"'{cell}'", f"'{float(cell)}'", f"{float(cell)}"}
        assert any(
            str(err.value)
            == f"numeric column 'a' of {table} holds {value} at row 3 (line 4); replace it with a finite number."
            for value in shown
        ), str(err.value)


def grad_norms(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["train/grad_norm"] for row in rows if "train/grad_norm" in row}


def test_an_exploding_gradient_is_clipped_and_the_run_finishes(table, tmp_path, monkeypatch):
    monkeypatch.setattr(seo_cli.trainer, "forward_backward", Inject(5, "exploding-gradient"))
    summary = run(table, tmp_path / "run", "optimizer=sgd", "epochs=4", "trainer.gradient_clip_val=1.0")
    assert summary["status"] == "ok" and summary["global_step"] == 4 * STEPS_PER_EPOCH
    assert math.isfinite(summary["metrics"]["val/loss"])
    saved = saved_steps_and_finite(tmp_path / "run" / "checkpoints")
    assert saved["last.pt"] == (12, True)
    # The pre-clip norm of step 5 shows in its logging window (steps 1-5), and only there.
    norms = grad_norms(tmp_path / "run")
    assert norms[5] > 1e13 and norms[10] < 1e3, norms


@pytest.mark.parametrize(
    "step, scale",
    [(5, 1e15), (3, 1e15), (3, 1e30)],
    ids=["mid-epoch", "last-step-of-an-epoch", "last-step-of-an-epoch-weights-overflow"],
)
def test_an_exploding_gradient_without_clipping_stops_the_run_naming_the_step(
    table, tmp_path, monkeypatch, step, scale
):
    """At 1e30 the step itself overflows the weights, just before the epoch's validation."""
    monkeypatch.setattr(seo_cli.trainer, "forward_backward", Inject(step, "exploding-gradient", scale))
    with pytest.raises(UserError) as err:
        run(table, tmp_path / "run", "optimizer=sgd", "epochs=4")
    message = str(err.value)
    assert_clean_error(message)
    # The weights went bad in step `step`; the first loss to show it is the next step's.
    named = [int(n) for n in re.findall(r"(?:at|by) step (\d+)", message)]
    assert named and named[0] in (step, step + 1), message
    saved = (
        saved_steps_and_finite(tmp_path / "run" / "checkpoints")
        if (tmp_path / "run" / "checkpoints").is_dir()
        else {}
    )
    assert all(finite and s <= step for s, finite in saved.values()), saved


def test_a_learning_rate_that_explodes_is_stopped_with_its_step_or_tamed_by_clipping(table, tmp_path):
    """No injection: plain SGD at learning_rate=10 overflows the weights of this model within 4 epochs."""
    with pytest.raises(UserError) as err:
        run(table, tmp_path / "free", "optimizer=sgd", "learning_rate=10", "epochs=4")
    assert_clean_error(str(err.value))
    assert re.search(r"(at|by) step \d+", str(err.value)), str(err.value)

    summary = run(
        table,
        tmp_path / "clipped",
        "optimizer=sgd",
        "learning_rate=10",
        "epochs=4",
        "trainer.gradient_clip_val=1.0",
    )
    assert summary["status"] == "ok" and math.isfinite(summary["metrics"]["val/loss"])
    assert saved_steps_and_finite(tmp_path / "clipped" / "checkpoints")["last.pt"] == (12, True)
