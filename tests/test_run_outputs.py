"""What a run leaves in its directory when it is not the first one there, and start-up errors that need
the run's length."""

import pytest
from conftest import read_jsonl

from seo_cli.errors import UserError
from seo_cli.validation import check_train_config


def test_a_fresh_run_into_an_existing_directory_starts_metrics_jsonl_anew(compose_train, tmp_path):
    from seo_cli.train import train

    overrides = ["debug=smoke", "logger=none", "trainer.progress=plain", "model=mlp", "data.num_rows=200"]
    train(compose_train(*overrides, "epochs=2"), tmp_path)
    assert [row["epoch"] for row in read_jsonl(tmp_path / "metrics.jsonl") if "epoch" in row] == [1.0, 2.0]
    train(compose_train(*overrides, "epochs=1"), tmp_path)  # no resume: a new run, not a continuation
    assert [row["epoch"] for row in read_jsonl(tmp_path / "metrics.jsonl") if "epoch" in row] == [1.0]


def test_a_warm_up_longer_than_the_built_in_run_is_reported_with_the_other_start_up_errors(compose_train, monkeypatch):
    from seo_cli.data import pipeline

    monkeypatch.setattr(pipeline, "prepare_data", lambda *a: pytest.fail("data loaded before the check"))
    # debug=smoke: 600 rows, 420 for training, batches of 16: 27 steps in one epoch (14 per process under DDP).
    with pytest.raises(UserError) as err:
        check_train_config(compose_train("debug=smoke", "warmup_steps=27", "trainer.monitor=val/nope"))
    lines = str(err.value).splitlines()
    assert (
        "scheduler.warmup_steps=27 is not shorter than the run (27 optimizer steps); lower warmup_steps below 27 "
        "or raise epochs."
    ) in lines
    assert any(line.startswith("trainer.monitor='val/nope' is not a metric this run logs") for line in lines)
    with pytest.raises(UserError, match=r"\(14 optimizer steps\)"):
        check_train_config(compose_train("debug=smoke", "device=ddp", "device.type=cpu", "warmup_steps=14"))
    check_train_config(compose_train("debug=smoke", "warmup_steps=26"))  # one step shorter passes
