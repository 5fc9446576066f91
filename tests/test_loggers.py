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


def test_transformer_flops_per_token_counts_matmuls_and_attention():
    from seo_cli.data.spec import InputSpec
    from seo_cli.models.transformer import Transformer

    model = Transformer(
        InputSpec(vocab_size=50, max_length=10, pad_id=0),
        {"y": 2},
        d_model=8,
        num_layers=1,
        num_heads=2,
        ffn_dim=16,
    )
    # Non-embedding parameters by hand: LayerNorms 2 x 16 + final 16, qkv 8x24+24, proj 8x8+8,
    # FFN 8x16+16 and 16x8+8, head 8x2+2.
    non_embedding = 32 + 16 + 216 + 72 + 144 + 136 + 18
    assert model.flops_per_token(10) == 6 * non_embedding + 12 * 1 * 8 * 10


def test_mfu_is_the_share_of_the_configured_peak(train_run):
    from conftest import read_jsonl

    from seo_cli.loading import load_trained

    _, run_dir = train_run("model=transformer", "device.peak_tflops=0.002")
    model = load_trained(run_dir / "checkpoints" / "best.pt", "cpu", []).model
    per_token = model.flops_per_token(48)  # debug=smoke pads every text to data.max_length=48
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "train/lr" in r]
    assert len(rows) == 5
    for row in rows:
        assert row["speed/mfu"] == pytest.approx(row["speed/tokens_per_second"] * per_token / 2e9, rel=1e-9)


def test_no_mfu_without_a_known_peak_or_for_models_without_a_flop_count():
    import torch

    from seo_cli.monitor import SpeedWindow as _SpeedWindow

    window = [({"tokens": torch.zeros(4, 48, dtype=torch.long)}, torch.zeros(4))]
    for flops_per_token, peak in ((None, 1e12), (lambda seq_len: 1e6, None)):  # no count; no peak (a CPU)
        speed = _SpeedWindow(0.0, flops_per_token, peak)
        speed.count(window, 4)
        values = speed.read()
        assert values["speed/tokens_per_second"] > 0 and "speed/mfu" not in values
    speed = _SpeedWindow(
        0.0, lambda seq_len: 1e6, 1e12, world_size=2
    )  # under DDP: the job's tokens, per device
    speed.count(window, 4)
    values = speed.read()
    assert values["speed/mfu"] == pytest.approx(values["speed/tokens_per_second"] * 1e6 / 2e12)


def test_peak_flops_table_picks_the_precision_and_the_most_specific_name(monkeypatch):
    import torch

    from seo_cli.runtime import peak_flops

    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert peak_flops(cuda, "bf16") == 756e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert peak_flops(cuda, "fp16") == pytest.approx(989.4e12)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    assert peak_flops(cuda, "32") == pytest.approx(66.9e12)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA L40S")
    assert peak_flops(cuda, "bf16") == pytest.approx(362.1e12)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future GPU")
    assert peak_flops(cuda, "bf16") is None
    assert peak_flops(cuda, "bf16", peak_tflops=100.0) == 100e12
    assert peak_flops(torch.device("cpu"), "32") is None


def _wandb_records(run_dir):
    """The history rows, config and summary of the offline W&B run under ``run_dir``, read from its
    .wandb file (LevelDB log framing of protobuf records; wandb has no public reader for offline runs)."""
    import json
    import struct

    from wandb.proto import wandb_internal_pb2

    [path] = list(run_dir.glob("wandb/wandb/offline-run-*/run-*.wandb"))
    data = path.read_bytes()
    assert data[:4] == b":W&B"

    def items(updates):  # a key with a slash may come split into nested_key
        return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in updates}

    history, config, summary, pos, buffer, block = [], {}, {}, 7, b"", 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        buffer += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buffer)
            buffer = b""
            which = record.WhichOneof("record_type")
            if which == "history":
                history.append(items(record.history.item))
            elif which in ("config", "summary"):
                target = config if which == "config" else summary
                target.update(items(getattr(record, which).update))
    return history, config, summary


def test_wandb_offline_logs_every_metrics_jsonl_row_the_config_and_final_metrics(train_run):
    """Also: the two runs of one process (as a multirun's jobs are) are two W&B runs."""
    from conftest import read_jsonl

    pytest.importorskip("wandb")
    _, run_dir = train_run("logger=wandb")
    history, config, summary = _wandb_records(run_dir)
    logged = read_jsonl(run_dir / "metrics.jsonl")
    by_step = {}
    for row in logged:  # W&B merges the rows logged at one step (the epoch row after the last step's line)
        by_step.setdefault(row["step"], {}).update(row)
    assert [row["_step"] for row in history] == sorted(by_step)
    for row in history:
        expected = by_step[row["_step"]]
        assert {k: row[k] for k in expected if k != "step"} == pytest.approx(
            {k: v for k, v in expected.items() if k != "step"}
        )
    assert config["model"]["_target_"] == "seo_cli.models.seo_multitask.SEOMultitask"
    assert summary["final/test/loss"] == pytest.approx(logged[-1]["test/loss"])

    _, second = train_run("logger=wandb", "seed=7")
    assert (run_dir / "wandb" / "run_id").read_text() != (second / "wandb" / "run_id").read_text()
    assert [row["_step"] for row in _wandb_records(second)[0]] == sorted(by_step)


def test_mlflow_records_metrics_params_and_config_and_a_resume_continues_the_run(compose_train, tmp_path):
    from conftest import read_jsonl

    mlflow = pytest.importorskip("mlflow")
    from seo_cli.train import train

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = ["debug=smoke", "trainer.progress=plain", "logger=mlflow", f"logger.mlflow.tracking_uri={uri}"]
    run_dir = tmp_path / "run"
    train(compose_train(*common, "epochs=1"), run_dir)
    first_id = (run_dir / "mlflow" / "run_id").read_text().strip()
    train(compose_train(*common, "epochs=2", "resume=auto"), run_dir)
    assert (run_dir / "mlflow" / "run_id").read_text().strip() == first_id

    client = mlflow.MlflowClient(tracking_uri=uri)
    assert len(client.search_runs([client.get_experiment_by_name("seo-cli").experiment_id])) == 1
    run = client.get_run(first_id)
    assert run.info.status == "FINISHED"
    logged = read_jsonl(run_dir / "metrics.jsonl")
    for key in ("train/loss", "epoch", "val/loss"):
        history = client.get_metric_history(first_id, key)
        expected = [(r["step"], r[key]) for r in logged if key in r]
        assert sorted((m.step, m.value) for m in history) == pytest.approx(sorted(expected))
    assert [m.value for m in client.get_metric_history(first_id, "epoch")] == [1.0, 2.0]
    assert run.data.params["learning_rate"] == "0.003" and run.data.params["model"] == "SEOMultitask"
    assert (
        run.data.params["epochs"] == "1" and run.data.tags["resumed.epochs"] == "2"
    )  # params are write-once
    config = client.download_artifacts(first_id, "config.yaml", str(tmp_path))
    assert "seo_cli.models.seo_multitask.SEOMultitask" in open(config).read()
    assert (tmp_path / "mlartifacts").is_dir()  # artifacts next to the SQLite file, not in ./mlruns


def test_a_missing_optional_logger_package_is_a_one_line_error(train_run, monkeypatch):
    import sys

    from seo_cli.errors import UserError

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    with pytest.raises(
        UserError, match=r"^logger=wandb needs the wandb package.*pip install 'seo-cli\[wandb\]'"
    ):
        train_run("logger=wandb")


def test_cli_output_to_a_file_has_no_control_characters_and_loggers_agree(tmp_path):
    """Not a terminal (CI, SLURM, a file): plain lines only. The TensorBoard tags and the csv columns are the
    keys of metrics.jsonl. (seo-train in this process, its output captured into a file.)"""
    from conftest import read_jsonl
    from helpers.commands import run_command
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    done = run_command(
        "train", "debug=smoke", "device=cpu", "logger=[tensorboard,csv]", f"hydra.run.dir={run_dir}"
    )
    assert done.code == 0, done.output[-3000:]
    output = done.output
    assert "\x1b" not in output and "\r" not in output
    assert "epoch 1/1 step 5/27" in output
    logged = read_jsonl(run_dir / "metrics.jsonl")
    keys = {k for row in logged for k in row} - {"step"}
    assert {
        "train/loss",
        "train/lr",
        "speed/samples_per_second",
        "speed/step_ms",
        "speed/data_wait_fraction",
        "speed/tokens_per_second",
        "epoch",
        "val/loss",
        "test/loss",
        "memory/rss_mb",
    } <= keys
    assert [r["step"] for r in logged if "train/lr" in r] == [5, 10, 15, 20, 25]
    assert [r["step"] for r in logged if "epoch" in r] == [27]
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    assert set(events.Tags()["scalars"]) == keys
    rows = read_csv(run_dir / "csv" / "metrics.csv")
    assert list(rows[0]) == ["step", *dict.fromkeys(k for row in logged for k in row if k != "step")]


def test_an_error_raised_while_building_a_component_is_one_sentence_from_the_cli(tmp_path):
    from helpers.commands import run_command

    done = run_command(
        "train", "debug=smoke", "model=transformer", "model.num_heads=3", f"hydra.run.dir={tmp_path}"
    )
    output = done.output  # Hydra's logging goes to stdout
    assert done.code == 1
    message = "model.d_model=64 must be divisible by model.num_heads=3; pick e.g. model.num_heads=8."
    assert f"[ERROR] - {message}\n" in output
    assert "Traceback" not in output and "InstantiationException" not in output and "full_key" not in output
