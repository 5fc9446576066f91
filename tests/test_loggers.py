"""Loggers: CSV columns that grow, resume truncation, TensorBoard config text and HParams, several at once."""

import csv

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from seo_cli.loggers import CSVLogger, TensorBoardLogger


def read_csv(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_csv_logger_widens_the_table_when_a_metric_first_appears(tmp_path):
    logger = CSVLogger(tmp_path)
    logger.log_metrics({"train/loss": 2.0}, 5)
    logger.log_metrics({"train/loss": 1.5}, 10)
    logger.log_metrics({"train/loss": 1.0, "val/loss": 1.2}, 12)
    logger.close()
    rows = read_csv(tmp_path / "metrics.csv")
    assert [r["step"] for r in rows] == ["5", "10", "12"]
    assert rows[0] == {"step": "5", "train/loss": "2.0", "val/loss": ""}
    assert rows[2]["val/loss"] == "1.2"


def test_csv_logger_drops_rows_past_the_resume_step(tmp_path):
    logger = CSVLogger(tmp_path)
    for step in (5, 10, 15, 20):
        logger.log_metrics({"train/loss": float(step)}, step)
    resumed = CSVLogger(tmp_path, resume_step=10)
    resumed.log_metrics({"train/loss": 99.0}, 15)
    rows = read_csv(tmp_path / "metrics.csv")
    assert [(r["step"], r["train/loss"]) for r in rows] == [("5", "5.0"), ("10", "10.0"), ("15", "99.0")]


def test_tensorboard_gets_the_config_and_the_hparams(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    logger.log_config("model:\n  dropout: 0.1\n")
    logger.log_hparams({"learning_rate": 0.003, "model": "MLP"}, {"val/loss": 1.5, "test/r2": float("nan")})
    logger.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "dropout: 0.1" in text
    hparams = events.PluginTagToContent("hparams")
    assert hparams  # the session-start record that lines runs up in the HParams tab
    content = b"".join(hparams.values())
    assert (
        b"learning_rate" in content and b"val/loss" in content and b"test/r2" not in content
    )  # NaN left out


def test_several_loggers_at_once(train_run):
    _, run_dir = train_run("logger=[tensorboard,csv]")
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    rows = read_csv(run_dir / "csv" / "metrics.csv")
    epoch_rows = [r for r in rows if r.get("epoch")]
    assert len(epoch_rows) == 1 and float(epoch_rows[0]["val/loss"]) > 0
    assert rows[-1].get("test/loss")  # the final test metrics too


def _render(renderable) -> str:
    from rich.console import Console

    console = Console(record=True, width=120)
    console.print(renderable)
    return console.export_text()


def test_epoch_table_puts_train_and_val_side_by_side():
    from seo_cli.console import epoch_table

    text = _render(
        epoch_table(
            2,
            10,
            {
                "epoch": 3.0,
                "train/loss": 1.25,
                "val/loss": 1.5,
                "val/intent/accuracy": 0.8125,
                "val/intent/f1_macro": 0.7,
                "memory/rss_mb": 500.0,
            },
        )
    )
    assert "epoch 3/10" in text
    loss_line = next(line for line in text.splitlines() if line.startswith("│ loss "))
    assert "1.25" in loss_line and "1.5" in loss_line
    assert "intent/accuracy" in text and "0.8125" in text
    assert "f1_macro" not in text and "rss" not in text  # headline metrics only


def test_run_panel_names_the_best_epoch_checkpoint_and_next_command():
    from seo_cli.console import run_panel

    text = _render(run_panel(4, 6, "val/loss", 0.4321, "runs/a/checkpoints/best.pt", "stopped early"))
    assert "stopped early: best epoch 4 of 6 by val/loss = 0.4321" in text
    assert "seo-eval checkpoint=runs/a/checkpoints/best.pt" in text


def test_each_log_line_carries_throughput_step_time_and_data_wait(train_run):
    from conftest import read_jsonl

    _, run_dir = train_run("trainer.log_every_n_steps=5")
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "train/lr" in r]
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25]
    for row in rows:
        assert row["speed/samples_per_second"] > 0 and row["speed/step_ms"] > 0
        assert 0 <= row["speed/data_wait_fraction"] <= 1
        # Every row has data.max_length=48 token ids (padding included): tokens/s is 48 x rows/s.
        assert row["speed/tokens_per_second"] / row["speed/samples_per_second"] == pytest.approx(48)
        # rows/s x seconds/step is the 16 rows of a step: the two figures come from one clock.
        assert row["speed/samples_per_second"] * row["speed/step_ms"] / 1000 == pytest.approx(16, rel=1e-6)


def test_debug_profile_writes_a_trace_of_steps_3_to_5(compose_train, tmp_path):
    import json

    from seo_cli.train import train

    cfg = compose_train(
        "debug=profile", "data.num_rows=600", "batch_size=16", "scheduler.warmup_steps=5", "logger=none"
    )
    train(cfg, tmp_path)
    [trace] = list((tmp_path / "profile").glob("*.pt.trace.json"))
    names = {event.get("name") for event in json.loads(trace.read_text())["traceEvents"]}
    assert {"ProfilerStep#2", "ProfilerStep#3", "ProfilerStep#4"} <= names
    assert "ProfilerStep#5" not in names and "ProfilerStep#1" not in names
