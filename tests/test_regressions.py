"""Bugs found in review, each pinned by the case that showed it."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import read_jsonl
from hydra import compose, initialize_config_dir

from seo_cli.checkpoint import load_checkpoint
from seo_cli.config import register_configs
from seo_cli.data.seo_pages import generate_seo_pages
from seo_cli.errors import UserError
from seo_cli.predict import run_predict
from seo_cli.train import train
from seo_cli.trainer import TrainingDiverged

CONF = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "conf")


def _train(compose_train, run_dir, *overrides):
    return train(compose_train("debug=smoke", "logger=none", "trainer.progress=plain", *overrides), run_dir)


def test_resume_into_a_new_directory_with_nothing_left_to_improve_scores_the_old_best(
    compose_train, tmp_path
):
    _train(compose_train, tmp_path / "a", "epochs=2")
    summary = _train(
        compose_train, tmp_path / "b", "epochs=2", f"resume={tmp_path / 'a' / 'checkpoints' / 'last.pt'}"
    )
    best = load_checkpoint(summary["best_checkpoint"])
    assert summary["status"] == "ok" and best["epoch"] == summary["best_epoch"]
    assert summary["best_checkpoint"].startswith(str(tmp_path / "a"))


def test_weights_that_overflow_after_a_finite_loss_are_never_saved(compose_train, tmp_path):
    # Step 1's loss is finite (computed before the update); the update of lr 3e38 overflows the weights, so
    # the save every_n_steps asks for after step 1 must refuse them: no file at all may exist.
    with pytest.raises(TrainingDiverged, match=r"weights became NaN or infinite by step 1;"):
        _train(
            compose_train,
            tmp_path / "run",
            "optimizer=sgd",
            "learning_rate=3e38",
            "scheduler=none",
            "trainer.checkpoint.every_n_steps=1",
        )
    assert list((tmp_path / "run" / "checkpoints").glob("*.pt")) == []


def test_a_checkpoint_written_before_the_weights_overflow_holds_finite_weights(compose_train, tmp_path):
    # lr 1e30: step 1 leaves huge but finite weights, which last.pt keeps; step 2's loss is not finite.
    with pytest.raises(TrainingDiverged, match=r"at step 2; the last finite loss was .* at step 1;.*last.pt holds"):
        _train(
            compose_train,
            tmp_path / "run",
            "optimizer=sgd",
            "learning_rate=1e30",
            "scheduler=none",
            "trainer.checkpoint.every_n_steps=1",
        )
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["global_step"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_empty_categorical_cells_and_integer_labels_with_gaps(compose_train, tmp_path):
    frame = generate_seo_pages(300, seed=1)
    frame["quality"] = (frame["quality"] == "high").astype(int)
    frame["cms"] = frame["cms"].astype(object)
    frame.loc[[3, 9, 40], "cms"] = None  # an empty category: its own slot, not a crash
    train_part, test_part = frame.iloc[:240].copy(), frame.iloc[240:]
    train_part["quality"] = train_part["quality"].astype(float)
    train_part.loc[5, "quality"] = np.nan  # pandas reads this column as float: 1.0, 0.0, NaN
    train_part.to_csv(tmp_path / "train.csv", index=False)
    test_part.to_csv(tmp_path / "test.csv", index=False)  # read as int: 1, 0
    summary = _train(
        compose_train,
        tmp_path / "run",
        "data=csv",
        f"data.path={tmp_path / 'train.csv'}",
        f"data.test_path={tmp_path / 'test.csv'}",
        "data.numeric_columns=[backlinks]",
        "data.categorical_columns=[cms]",
        "data.missing=impute",
        "data.val_fraction=0.2",
        "scheduler=none",
        "data.targets=[{name:quality,type:classification}]",
        "objective=val/quality/accuracy",
        "trainer.monitor=val/quality/accuracy",
        "trainer.mode=max",
    )
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["preprocessing"]["targets"][0]["classes"] == ["0", "1"]
    assert "" in state["preprocessing"]["categories"]["cms"]
    assert summary["metrics"]["test/quality/accuracy"] > 0.5


def test_a_shorter_logging_interval_on_resume(compose_train, tmp_path):
    _train(
        compose_train, tmp_path / "a", "epochs=1", "trainer.log_every_n_steps=5"
    )  # 2 steps left in the window
    last = tmp_path / "a" / "checkpoints" / "last.pt"
    summary = _train(
        compose_train, tmp_path / "b", "epochs=2", f"resume={last}", "trainer.log_every_n_steps=1"
    )
    assert summary["global_step"] == 54
    steps = [row["step"] for row in read_jsonl(tmp_path / "b" / "metrics.jsonl") if "train/loss" in row]
    assert steps[:3] == [28, 29, 30]


def test_resume_auto_without_a_checkpoint_drops_what_the_killed_run_logged(compose_train, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 5, "train/loss": 9.0}) + "\n")
    _train(compose_train, run_dir, "resume=auto")
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert rows[0]["step"] == 5 and rows[0]["train/loss"] != 9.0


def test_resume_strict_false_with_another_optimizer_is_a_clear_error(compose_train, tmp_path):
    _train(compose_train, tmp_path / "a", "epochs=1")
    with pytest.raises(
        UserError, match=r"last.pt: optimizer.param_groups\[0\] must be the settings of this run's optimizer \("
    ):
        _train(
            compose_train,
            tmp_path / "b",
            "epochs=2",
            f"resume={tmp_path / 'a' / 'checkpoints' / 'last.pt'}",
            "optimizer=sgd",
            "resume_strict=false",
        )


def test_resume_may_change_how_the_data_is_loaded(compose_train, tmp_path):
    _train(compose_train, tmp_path / "a", "epochs=1")
    last = tmp_path / "a" / "checkpoints" / "last.pt"
    summary = _train(
        compose_train,
        tmp_path / "b",
        "epochs=2",
        f"resume={last}",
        "data.placement=stream",
        "data.num_workers=0",
    )
    assert summary["global_step"] == 54


def test_predict_keeps_ids_as_written_and_rejects_with_the_original_value(compose_train, tmp_path):
    _train(compose_train, tmp_path / "run", "epochs=1")
    frame = generate_seo_pages(6, seed=2).drop(columns=["intent", "quality", "ctr", "position"])
    frame["page_id"] = ["000123", "000124", "7", "007", "x1", "x2"]
    frame["backlinks"] = frame["backlinks"].astype(object)
    frame.loc[2, "backlinks"] = "many"
    frame.to_csv(tmp_path / "in.csv", index=False)
    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(
            "predict",
            [
                f"checkpoint={tmp_path / 'run' / 'checkpoints' / 'best.pt'}",
                f"input={tmp_path / 'in.csv'}",
                f"output={tmp_path / 'out.csv'}",
                "id_column=page_id",
            ],
        )
    run_predict(cfg)
    out = pd.read_csv(tmp_path / "out.csv", dtype={"page_id": str})
    assert out["page_id"].tolist() == ["000123", "000124", "007", "x1", "x2"]
    rejects = pd.read_csv(tmp_path / "out.rejects.csv", dtype=str)
    assert rejects.loc[0, "backlinks"] == "many" and rejects.loc[0, "page_id"] == "7"


@pytest.mark.parametrize(
    "override, message",
    [
        ("seed=-1", "seed=-1 must be between 0 and 2"),
        ("data.vocab_size=-1", "data.vocab_size=-1 must be at least 8"),
    ],
)
def test_more_values_are_refused_at_start_up(compose_train, override, message):
    from seo_cli.validation import check_train_config

    with pytest.raises(UserError, match=message.replace(".", r"\.").replace("(", r"\(")):
        check_train_config(compose_train(override))
