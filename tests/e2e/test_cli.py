"""The command lines as a user runs them: exit codes, files written, numbers printed.

The pinned smoke run and one config mistake are real processes (the command line itself: exit codes, no
traceback; seo-eval's and seo-predict's are in test_evaluate.py and test_predict.py); the other commands
run the same console scripts in this process (tests/helpers/commands.py), which spares each one the 4-5 s
a new interpreter spends on imports.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.commands import run_command

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def run(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"seo_cli.{module}", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One ``seo-train debug=smoke`` run shared by the tests that read its outputs."""
    run_dir = tmp_path_factory.mktemp("train")
    # warmup_steps=20: the pinned numbers below were taken with it (debug=smoke now warms up for 1 step).
    result = run(
        "train", "debug=smoke", "epochs=2", "warmup_steps=20", f"hydra.run.dir={run_dir}", cwd=run_dir
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


def test_train_writes_checkpoints_summary_metrics_and_tensorboard(smoke_run):
    run_dir, result = smoke_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok"
    assert summary["objective"] == "val/loss"
    assert summary["objective_value"] == summary["metrics"]["val/loss"]
    assert summary["overrides"] == ["debug=smoke", "epochs=2", "warmup_steps=20"]
    assert summary["num_parameters"] > 0 and summary["wall_time_s"] > 0 and summary["peak_memory_mb"] > 0
    for name in ("last.pt", "best.pt"):
        state = torch.load(run_dir / "checkpoints" / name, weights_only=True)
        assert state["format_version"] == 1 and state["epoch"] in (1, 2)
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert "seo-eval checkpoint=" in result.stderr + result.stdout
    assert "Evaluate it with: seo-eval checkpoint=" in (run_dir / "train.log").read_text()  # as README says


def test_smoke_run_losses_are_pinned(smoke_run):
    """Golden numbers: a change to data, preprocessing, model init or the loop shows up here first."""
    run_dir, _ = smoke_run
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [row for row in rows if "epoch" in row]
    torch.testing.assert_close([row["train/loss"] for row in epochs], GOLDEN_TRAIN_LOSS, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close([row["val/loss"] for row in epochs], GOLDEN_VAL_LOSS, rtol=1e-4, atol=1e-4)


GOLDEN_TRAIN_LOSS = [3.93738, 2.71291]
GOLDEN_VAL_LOSS = [2.98778, 2.69105]


@pytest.mark.parametrize("split", ["val", "test"])
def test_eval_reproduces_the_numbers_training_reported(smoke_run, tmp_path, split):
    """bootstrap=0: the intervals are tested in test_evaluate.py, and 1000 resamples (the default) cost
    10 s here. (seo-eval as a process, its exit code and no traceback: test_evaluate.py.)"""
    run_dir, _ = smoke_run
    summary = json.loads((run_dir / "summary.json").read_text())
    best = run_dir / "checkpoints" / "best.pt"
    done = run_command(
        "evaluate", f"checkpoint={best}", f"split={split}", "bootstrap=0", f"hydra.run.dir={tmp_path}"
    )
    code, output = done.code, done.output
    assert code == 0, output[-3000:]
    assert "Traceback" not in output
    report = json.loads((tmp_path / "metrics.json").read_text())
    trained = {k: v for k, v in summary["metrics"].items() if k.startswith(f"{split}/")}
    assert trained and set(trained) == set(report["metrics"])
    for key, value in trained.items():
        assert report["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert report["rows"] == 90
    assert len(report["targets"]["intent"]["confusion_matrix"]) == 4
    assert "intent (classification)" in output and "confusion matrix" in output
    assert "Wrote" in (tmp_path / "eval.log").read_text()


@pytest.mark.parametrize(
    "checkpoint, message",
    [
        ("missing.pt", "does not exist"),
        (".", "is a directory"),
        ("garbage.pt", "is not a PyTorch checkpoint file"),
    ],
)
def test_eval_bad_checkpoint_is_one_clear_sentence(tmp_path, checkpoint, message):
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    result = run_command(
        "evaluate", f"checkpoint={tmp_path / checkpoint}", f"hydra.run.dir={tmp_path / 'out'}"
    )
    assert result.code == 1
    assert message in result.output
    assert "Traceback" not in result.output


def test_eval_refuses_a_checkpoint_naming_a_foreign_target(smoke_run, tmp_path):
    run_dir, _ = smoke_run
    state = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    state["config"] = state["config"].replace("seo_cli.models.seo_multitask.SEOMultitask", "os.system")
    torch.save(state, tmp_path / "hostile.pt")
    result = run_command(
        "evaluate", f"checkpoint={tmp_path / 'hostile.pt'}", f"hydra.run.dir={tmp_path / 'out'}"
    )
    assert result.code == 1
    assert "'os.system' is not a class seo-cli builds for model" in result.output
    assert "Traceback" not in result.output


CONFIG_MISTAKES = [
    ("epochs=ten", "Value 'ten' of type 'str' could not be converted to Integer"),
    ("trainer.epoch=3", "Key 'epoch' not in 'TrainerConfig'"),
    ("model=nope", "Could not find 'model/nope'"),
    ("model._target_=os.system", "'os.system' is not a class seo-cli builds for model"),
    ("model.dropout=high", "model.dropout='high' should be float"),
    ("model.hidden=3", "Key 'hidden' is not in struct"),
    ("+model.hidden=3", "model.hidden is not an argument of seo_cli.models.seo_multitask.SEOMultitask"),
]


@pytest.mark.parametrize("override, message", CONFIG_MISTAKES)
def test_train_config_mistakes_fail_at_once_without_a_traceback(tmp_path, override, message):
    result = run_command("train", "debug=smoke", override, f"hydra.run.dir={tmp_path}")
    assert result.code == 1
    assert message in result.output
    assert "Traceback" not in result.output


def test_a_config_mistake_at_the_command_line_exits_1_without_a_traceback(tmp_path):
    """The first case above as a process: Hydra's composition error is the exit code and its few lines.
    (Mistakes seo-cli's own start-up checks find: tests/reliability/test_fuzzed_configs.py.)"""
    override, message = CONFIG_MISTAKES[0]
    result = run("train", "debug=smoke", override, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 1
    assert message in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_unknown_group_option_lists_the_valid_ones(tmp_path):
    result = run_command("train", "optimizer=adamx", f"hydra.run.dir={tmp_path}")
    assert result.code == 1
    for option in ("adam", "adamw", "rmsprop", "sgd"):
        assert f"\t{option}" in result.output


def test_multirun_sweeps_learning_rates_with_one_summary_per_job(tmp_path):
    result = run_command(
        "train", "-m", "debug=smoke", "logger=none", "learning_rate=1e-3,5e-4", f"hydra.sweep.dir={tmp_path}"
    )
    assert result.code == 0, result.output[-3000:]
    summaries = [json.loads((tmp_path / str(job) / "summary.json").read_text()) for job in (0, 1)]
    assert [s["overrides"] for s in summaries] == [
        ["debug=smoke", "logger=none", "learning_rate=0.001"],
        ["debug=smoke", "logger=none", "learning_rate=0.0005"],
    ]
    assert all(s["status"] == "ok" for s in summaries)
    assert summaries[0]["objective_value"] != summaries[1]["objective_value"]


def test_multirun_compares_all_four_models(tmp_path):
    result = run_command(
        "train", "-m", "debug=smoke", "logger=none", "model=mlp,textcnn,transformer,seo_multitask",
        f"hydra.sweep.dir={tmp_path}",
    )  # fmt: skip
    assert result.code == 0, result.output[-3000:]
    params = [
        json.loads((tmp_path / str(job) / "summary.json").read_text())["num_parameters"] for job in range(4)
    ]
    assert len(set(params)) == 4
