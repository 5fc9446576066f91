"""Every option of every config group composes, builds and trains one smoke epoch, with its effect visible."""

import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import read_jsonl

from seo_cli.data import seo_pages


def _state(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


@pytest.mark.parametrize(
    "option, cls",
    [
        ("mlp", "MLP"),
        ("textcnn", "TextCNN"),
        ("transformer", "Transformer"),
        ("seo_multitask", "SEOMultitask"),
    ],
)
def test_each_model_trains_one_epoch(train_run, option, cls):
    summary, run_dir = train_run(f"model={option}")
    assert summary["status"] == "ok"
    assert f"models.{option}.{cls}" in _state(run_dir)["config"]
    assert math.isfinite(summary["metrics"]["val/loss"])
    # Every head of the four built-in targets is trained and scored.
    assert {"val/intent/accuracy", "val/quality/roc_auc", "val/ctr/r2", "val/position/mae"} <= set(
        summary["metrics"]
    )


@pytest.mark.parametrize(
    "option, state_key",
    [("adam", "exp_avg"), ("adamw", "exp_avg"), ("sgd", "momentum_buffer"), ("rmsprop", "square_avg")],
)
def test_each_optimizer_trains_with_its_own_state(train_run, option, state_key):
    summary, run_dir = train_run(f"optimizer={option}", "learning_rate=1e-2", "scheduler=none")
    param_state = next(iter(_state(run_dir)["optimizer"]["state"].values()))
    assert state_key in param_state
    # optimizer.fused=null: the fused kernel on the CPU too, for the optimizers that have one
    assert _state(run_dir)["optimizer"]["param_groups"][0].get("fused") is (True if option != "rmsprop" else None)
    assert _state(run_dir)["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-2)
    assert math.isfinite(summary["metrics"]["val/loss"])


def test_optimizer_fused_false_keeps_the_foreach_kernel(train_run):
    _, run_dir = train_run("optimizer=adamw", "optimizer.fused=false")
    group = _state(run_dir)["optimizer"]["param_groups"][0]
    assert group["fused"] is False and group["foreach"] in (None, True)


def _lrs(run_dir):
    return [row["train/lr"] for row in read_jsonl(run_dir / "metrics.jsonl") if "train/lr" in row]


def test_scheduler_none_keeps_the_rate(train_run):
    _, run_dir = train_run("scheduler=none", "learning_rate=2e-3")
    assert _lrs(run_dir) == pytest.approx([2e-3] * 5)


def test_scheduler_cosine_decays_over_the_run(train_run):
    _, run_dir = train_run("scheduler=cosine", "learning_rate=2e-3")
    total = 27  # 420 training rows / batch 16
    expected = [1e-3 * (1 + math.cos(math.pi * step / total)) for step in (5, 10, 15, 20, 25)]
    assert _lrs(run_dir) == pytest.approx(expected)


def test_scheduler_warmup_cosine_warms_up_then_decays(train_run):
    _, run_dir = train_run("scheduler=warmup_cosine", "learning_rate=2e-3", "scheduler.warmup_steps=10")
    lrs = _lrs(run_dir)
    assert lrs[0] == pytest.approx(2e-3 * (0.1 + 0.9 * 5 / 10))  # halfway through a linear warm-up from lr/10
    assert lrs[1] == pytest.approx(2e-3)
    assert lrs[2] > lrs[3] > lrs[4]


def test_scheduler_step_decays_every_step_epochs(train_run):
    _, run_dir = train_run("scheduler=step", "epochs=3", "scheduler.step_epochs=1", "scheduler.gamma=0.5")
    per_epoch = _state(run_dir)["optimizer"]["param_groups"][0]["lr"]
    assert per_epoch == pytest.approx(3e-3 * 0.5**3)


def test_scheduler_plateau_steps_on_the_monitored_metric(train_run):
    _, run_dir = train_run("scheduler=plateau", "epochs=2", "scheduler.patience=0", "scheduler.factor=0.5")
    state = _state(run_dir)
    assert state["scheduler"]["best"] == pytest.approx(min(h["val/loss"] for h in state["history"]))


@pytest.mark.parametrize(
    "option, key, value",
    [
        ("auto", "_target_", "seo_cli.losses.MultiTargetLoss"),
        ("cross_entropy", "classification", "cross_entropy"),
        ("focal", "classification", "focal"),
        ("mse", "regression", "mse"),
        ("l1", "regression", "l1"),
        ("huber", "regression", "huber"),
        ("multitask", "weights", None),
    ],
)
def test_each_loss_trains_one_epoch(train_run, option, key, value):
    summary, run_dir = train_run(f"loss={option}")
    assert yaml.safe_load(_state(run_dir)["config"])["loss"][key] == value
    assert math.isfinite(summary["metrics"]["val/loss"])


def test_losses_differ_as_configured(train_run):
    losses = {option: train_run(f"loss={option}")[0]["metrics"] for option in ("auto", "focal", "l1")}
    # Same seed and data: focal down-weights easy rows, so its intent term is below cross entropy's;
    # l1 changes only the regression terms.
    assert losses["focal"]["val/intent/loss"] < losses["auto"]["val/intent/loss"]
    assert losses["l1"]["val/ctr/loss"] != pytest.approx(losses["auto"]["val/ctr/loss"])


def test_multitask_weights_scale_the_total(train_run):
    summary, _ = train_run("loss=multitask", "loss.weights={ctr:3.0}")
    m = summary["metrics"]
    parts = m["val/intent/loss"] + m["val/quality/loss"] + 3.0 * m["val/ctr/loss"] + m["val/position/loss"]
    assert m["val/loss"] == pytest.approx(parts, rel=1e-5)


def test_device_cpu_runs_on_the_cpu(train_run):
    summary, _ = train_run("device=cpu")
    assert summary["device"] == "cpu"


@pytest.mark.parametrize(
    "cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")]
)
def test_device_auto_prefers_cuda_then_mps_then_the_cpu(monkeypatch, cuda, mps, expected):
    from seo_cli.runtime import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert pick_device("auto") == torch.device(expected)


def test_device_cuda_without_a_gpu_is_an_error_or_a_warned_fallback(train_run):
    from seo_cli.errors import UserError

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match="device.type=cuda is not available"):
        train_run("device=cuda")
    summary, _ = train_run("device=cuda", "device.fallback=warn")
    assert summary["device"] == "cpu"


def test_data_csv_trains_on_a_table_file(train_run, tmp_path):
    frame = seo_pages.generate_seo_pages(600, seed=3)
    path = tmp_path / "pages.csv"
    frame.to_csv(path, index=False)
    summary, _ = train_run(
        "data=csv",
        f"data.path={path}",
        "data.text_columns=[title,meta_description]",
        "data.numeric_columns=[backlinks,domain_authority]",
        "data.categorical_columns=[cms]",
        "data.targets=[{name:intent,type:classification},{name:position,type:regression}]",
    )
    assert set(k.split("/")[1] for k in summary["metrics"] if k.count("/") == 2) == {"intent", "position"}


def test_logger_tensorboard_writes_event_files(train_run):
    _, run_dir = train_run("logger=tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    train_loss = [e.value for e in events.Scalars("train/loss")]
    logged = [row["train/loss"] for row in read_jsonl(run_dir / "metrics.jsonl") if "train/loss" in row]
    assert train_loss == pytest.approx(logged)


def test_logger_none_writes_only_metrics_jsonl(train_run):
    _, run_dir = train_run("logger=none")
    assert not (run_dir / "tensorboard").exists()
    assert (run_dir / "metrics.jsonl").exists()


def test_progress_rich_draws_bars_and_plain_logs_lines(train_run, capsys, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="seo_cli.console")
    train_run("trainer.progress=rich")
    bars = capsys.readouterr().out
    assert "epoch 1/1" in bars and "27/27" in bars
    assert not [r for r in caplog.records if " step " in r.getMessage()]  # bars replace the step lines
    caplog.clear()
    train_run("trainer.progress=plain")
    lines = [r.getMessage() for r in caplog.records if " step " in r.getMessage()]
    assert len(lines) == 5 and lines[0].startswith("epoch 1/1 step 5/27  train/loss ")


CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = (
    "model",
    "optimizer",
    "scheduler",
    "loss",
    "device",
    "logger",
    "data",
    "debug",
    "experiment",
    "hparams_search",
)
EVERY_OPTION = [(group, path.stem) for group in GROUPS for path in sorted((CONF / group).glob("*.yaml"))]


@pytest.mark.parametrize("group, option", EVERY_OPTION, ids=[f"{g}={o}" for g, o in EVERY_OPTION])
def test_debug_smoke_composes_with_every_option_and_passes_the_start_up_checks(
    compose_train, tmp_path, group, option
):
    """debug=smoke is the quick check of any option: with each one it must compose and pass the checks a run
    makes before loading data (a warm-up longer than the smoke run, under DDP's halved steps too)."""
    from seo_cli.validation import check_train_config, known_run_length

    extra = []
    if (group, option) == ("data", "csv"):
        extra = [
            f"data.path={tmp_path / 'pages.csv'}",
            "data.numeric_columns=[a]",
            "data.targets=[{name:y,type:regression}]",
        ]
    if (group, option) == ("data", "parquet_dir"):  # any directory: its shards are read with the data
        extra = ["data.path=.", "data.split_column=split", "data.numeric_columns=[a]", "data.targets=[{name:y,type:regression}]"]
    if (group, option) == ("experiment", "intent_minilm"):  # a recipe for the user's own file
        extra = [f"data.path={tmp_path / 'queries.csv'}", "data.targets=[{name:intent,type:classification}]"]
    cfg = compose_train("debug=smoke", f"{group}={option}", *extra)
    if (group, option) == ("experiment", "intent_minilm"):  # best.pt and early stopping follow the first target
        assert (cfg.trainer.monitor, cfg.objective, cfg.trainer.mode) == ("val/intent/f1_macro",) * 2 + ("max",)
    # An experiment file sets its own sizes (tests/e2e/test_experiments.py smoke-runs them); another debug
    # option replaces smoke.
    if group not in ("experiment", "debug"):
        assert cfg.data.num_rows == 600 and cfg.epochs == 1
    check_train_config(cfg)
    steps = known_run_length(cfg)
    if steps is not None and cfg.scheduler.get("warmup_steps") is not None:
        assert cfg.scheduler.warmup_steps < steps


def test_debug_overfit_drives_the_loss_of_one_fixed_batch_near_zero(train_run):
    from seo_cli.config import register_configs  # noqa: F401 - train_run composes with debug=smoke first

    summary, run_dir = train_run("debug=overfit", "epochs=60")
    rows = [row for row in read_jsonl(run_dir / "metrics.jsonl") if "epoch" in row]
    assert len(rows) == 60 and summary["global_step"] == 60  # one batch per epoch
    assert rows[0]["val/loss"] > 1.0
    assert summary["metrics"]["val/loss"] < 0.1  # validated on the same 32 rows it trained on
    assert summary["metrics"]["test/loss"] == pytest.approx(summary["metrics"]["val/loss"], rel=1e-5)


def test_padding_and_length_buckets_cut_the_padding_trained_on_not_the_results(train_run):
    """data.padding=max_length trains on 48-token rows of titles; longest cuts each batch to its longest row, and
    bucket_by_length groups similar lengths. Padding is masked, so the model learns the same (the losses
    agree to float rounding), and the share of padding logged per epoch falls."""
    runs = {
        # Titles: 5-15 tokens. On the CPU: a GPU picks other kernels for other shapes (rounding differs more).
        name: train_run("model=textcnn", "data.text_columns=[title]", "device=cpu", *overrides)
        for name, overrides in {
            "fixed": ["data.padding=max_length"],
            "longest": [],
            "buckets": ["data.bucket_by_length=true"],
        }.items()
    }
    padding = {
        name: [
            r["speed/padding_fraction"]
            for r in read_jsonl(d / "metrics.jsonl")
            if "speed/padding_fraction" in r
        ]
        for name, (_, d) in runs.items()
    }
    assert all(len(p) == 1 for p in padding.values())  # one epoch, one figure
    assert padding["fixed"][0] > padding["longest"][0] > padding["buckets"][0]
    assert padding["fixed"][0] > 0.3 and padding["buckets"][0] < 0.1
    fixed, longest = runs["fixed"][0]["metrics"], runs["longest"][0]["metrics"]
    assert longest["val/loss"] == pytest.approx(fixed["val/loss"], rel=1e-5)
