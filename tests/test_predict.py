"""seo-predict in-process: the output's rows and columns, values equal to the model's on the training
tensors, rejected rows with their reasons, output formats, and the user's mistakes."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CONF_DIR, smoke_checkpoint
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from seo_cli.config import register_configs
from seo_cli.data import seo_pages
from seo_cli.data.batches import make_batches
from seo_cli.data.pipeline import load_splits, tensorize
from seo_cli.errors import UserError
from seo_cli.evaluation import Scorer
from seo_cli.loading import load_trained
from seo_cli.predict import run_predict

TARGETS = ["intent", "quality", "ctr", "position"]
CPU = torch.device("cpu")


def compose_predict(checkpoint: Path, input: Path, output: Path, *overrides: str) -> DictConfig:
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(
            "predict",
            overrides=[
                "device=cpu",
                f"checkpoint='{checkpoint}'",
                f"input='{input}'",
                f"output='{output}'",
                *overrides,
            ],
        )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The default model, trained with data.missing=error (the default); the one test_evaluate.py uses."""
    return smoke_checkpoint(tmp_path_factory, "multitask", "epochs=2")


@pytest.fixture(scope="module")
def impute_checkpoint(tmp_path_factory) -> Path:
    return smoke_checkpoint(tmp_path_factory, "mlp_impute", "model=mlp", "data.missing=impute")


@pytest.fixture(scope="module")
def trained(checkpoint):
    return load_trained(checkpoint, CPU, [])


def new_rows(num_rows: int = 40, seed: int = 3) -> pd.DataFrame:
    """Pages as a user would score them: every input column, no targets."""
    return seo_pages.generate_seo_pages(num_rows, seed=seed).drop(columns=TARGETS)


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("input") / "pages.csv"
    new_rows().to_csv(path, index=False)
    return path


def expected_columns(trained, first: str) -> list[str]:
    columns = [first]
    for t in TARGETS:
        columns.append(t)
        columns += [f"{t}_proba_{name}" for name in trained.preprocessor.class_names.get(t, [])]
    return columns


def test_all_valid_rows_are_scored_with_ids_classes_and_probabilities(checkpoint, trained, pages, tmp_path):
    output = tmp_path / "scores.csv"
    summary = run_predict(compose_predict(checkpoint, pages, output, "id_column=page_id"))
    assert summary == {"rows": 40, "scored": 40, "rejected": 0, "output": str(output), "rejects": None}
    assert not (tmp_path / "scores.rejects.csv").exists()
    scores = pd.read_csv(output)
    assert len(scores) == 40
    assert list(scores.columns) == expected_columns(trained, "page_id")
    assert scores["page_id"].tolist() == new_rows()["page_id"].tolist()
    for t, names in trained.preprocessor.class_names.items():
        assert len(names) >= 2
        proba = scores[[f"{t}_proba_{name}" for name in names]].to_numpy()
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5, err_msg=t)
        assert ((proba >= 0) & (proba <= 1)).all()
        assert scores[t].astype(str).tolist() == [names[k] for k in proba.argmax(axis=1)], t
    for t in ("ctr", "position"):
        assert scores[t].dtype == float and np.isfinite(scores[t]).all()


def test_without_id_column_rows_are_numbered_from_one(checkpoint, trained, pages, tmp_path):
    output = tmp_path / "scores.csv"
    run_predict(compose_predict(checkpoint, pages, output))
    scores = pd.read_csv(output)
    assert list(scores.columns) == expected_columns(trained, "row")
    assert scores["row"].tolist() == list(range(1, 41))


def test_predictions_equal_the_model_on_the_training_tensors(checkpoint, trained, tmp_path):
    """The test split scored by seo-predict from a file equals evaluation() on the tensors training built."""
    frame = load_splits(trained.data, trained.seed)["test"][0]
    pre = trained.preprocessor
    tensors = tensorize(pre, frame, "test")
    batches = make_batches(tensors.inputs, tensors.targets, batch_size=1024, device=CPU, placement="device")
    expected = Scorer(trained.targets, pre.target_scale).evaluate(trained.model, batches, "test")

    path = tmp_path / "test_split.parquet"
    frame.drop(columns=TARGETS).to_parquet(path, index=False)
    output = tmp_path / "scores.parquet"
    run_predict(compose_predict(checkpoint, path, output, "id_column=page_id"))
    scores = pd.read_parquet(output)
    assert scores["page_id"].tolist() == frame["page_id"].tolist()
    for t, names in pre.class_names.items():
        proba = scores[[f"{t}_proba_{name}" for name in names]].to_numpy()
        np.testing.assert_allclose(proba, expected.predictions[t], rtol=1e-5, atol=1e-7, err_msg=t)
    for t in ("ctr", "position"):
        mean, std = pre.target_scale[t]
        np.testing.assert_allclose(scores[t], expected.predictions[t] * std + mean, rtol=1e-5, err_msg=t)


def test_predictions_equal_a_forward_pass_of_the_rebuilt_model(checkpoint, trained, pages, tmp_path):
    output = tmp_path / "scores.csv"
    run_predict(compose_predict(checkpoint, pages, output))
    scores = pd.read_csv(output)
    pre = trained.preprocessor
    trained.model.eval()
    with torch.no_grad():
        outputs = trained.model(pre.transform_inputs(new_rows()))
    for t, names in pre.class_names.items():
        proba = torch.softmax(outputs[t].float(), dim=-1).numpy()
        got = scores[[f"{t}_proba_{name}" for name in names]].to_numpy()
        np.testing.assert_allclose(got, proba, rtol=1e-5, atol=1e-7, err_msg=t)
    for t in ("ctr", "position"):
        mean, std = pre.target_scale[t]
        value = outputs[t].float().reshape(-1).numpy() * std + mean
        np.testing.assert_allclose(scores[t], value, rtol=1e-5, err_msg=t)


def write_with_problems(path: Path) -> pd.DataFrame:
    """40 rows: a word in a number at row 4, an infinite number at row 8."""
    frame = new_rows()
    frame["word_count"] = frame["word_count"].astype(object)
    frame.loc[3, "word_count"] = "lots"
    frame["backlinks"] = frame["backlinks"].astype(float)
    frame.loc[7, "backlinks"] = np.inf
    frame.to_csv(path, index=False)
    return frame


INVALID = {
    4: "numeric column 'word_count' holds the non-numeric value 'lots'",
    8: "numeric column 'backlinks' holds 'inf'",
}


def test_invalid_rows_go_to_the_rejects_file_with_their_reason(checkpoint, tmp_path):
    source = tmp_path / "pages.csv"
    frame = write_with_problems(source)
    output = tmp_path / "out" / "scores.csv"
    summary = run_predict(compose_predict(checkpoint, source, output, "id_column=page_id"))
    rejects_path = tmp_path / "out" / "scores.rejects.csv"
    assert summary == {
        "rows": 40,
        "scored": 38,
        "rejected": 2,
        "output": str(output),
        "rejects": str(rejects_path),
    }
    rejects = pd.read_csv(rejects_path)
    assert list(rejects.columns[:2]) == ["row", "reason"]
    assert dict(zip(rejects["row"], rejects["reason"], strict=True)) == INVALID
    assert rejects["page_id"].tolist() == [frame["page_id"][3], frame["page_id"][7]]
    scores = pd.read_csv(output)
    assert len(scores) == 38
    assert scores["page_id"].tolist() == [p for i, p in enumerate(frame["page_id"]) if i + 1 not in INVALID]


def test_empty_numeric_cell_is_rejected_when_trained_without_imputation(checkpoint, trained, tmp_path):
    assert trained.data.missing == "error"
    frame = new_rows()
    frame.loc[11, "page_speed"] = np.nan  # row 12
    frame.to_csv(tmp_path / "pages.csv", index=False)
    output = tmp_path / "scores.csv"
    summary = run_predict(compose_predict(checkpoint, tmp_path / "pages.csv", output, "id_column=page_id"))
    assert (summary["scored"], summary["rejected"]) == (39, 1)
    rejects = pd.read_csv(tmp_path / "scores.rejects.csv")
    assert rejects[["row", "reason"]].values.tolist() == [[12, "numeric column 'page_speed' is empty"]]
    assert frame["page_id"][11] not in pd.read_csv(output)["page_id"].tolist()


def test_empty_numeric_cell_is_scored_under_imputation(impute_checkpoint, tmp_path):
    trained = load_trained(impute_checkpoint, CPU, [])
    assert trained.data.missing == "impute"
    frame = new_rows()
    frame.loc[11, "page_speed"] = np.nan
    frame.to_csv(tmp_path / "pages.csv", index=False)
    output = tmp_path / "scores.csv"
    summary = run_predict(compose_predict(impute_checkpoint, tmp_path / "pages.csv", output))
    assert (summary["scored"], summary["rejected"], summary["rejects"]) == (40, 0, None)
    scores = pd.read_csv(output)
    assert len(scores) == 40
    # Scored as if the cell held the training median.
    filled = frame.copy()
    filled.loc[11, "page_speed"] = trained.preprocessor.numeric_fill[
        trained.preprocessor.numeric_columns.index("page_speed")
    ]
    trained.model.eval()
    with torch.no_grad():
        outputs = trained.model(trained.preprocessor.transform_inputs(filled.iloc[[11]]))
    mean, std = trained.preprocessor.target_scale["ctr"]
    assert scores["ctr"][11] == pytest.approx(float(outputs["ctr"].reshape(-1)[0]) * std + mean, rel=1e-5)


def test_strict_stops_at_the_first_invalid_row(checkpoint, tmp_path):
    source = tmp_path / "pages.csv"
    write_with_problems(source)
    output = tmp_path / "scores.csv"
    message = f"{source} row 4 (line 5): {INVALID[4]}; fix it, or drop strict=true."
    with pytest.raises(UserError, match=re.escape(message)):
        run_predict(compose_predict(checkpoint, source, output, "strict=true"))
    assert not output.exists()


def test_parquet_and_jsonl_outputs_hold_the_csv_values(checkpoint, pages, tmp_path):
    tables = {}
    for ext in ("csv", "parquet", "jsonl"):
        output = tmp_path / f"scores.{ext}"
        run_predict(compose_predict(checkpoint, pages, output, "id_column=page_id"))
        tables[ext] = {
            "csv": pd.read_csv,
            "parquet": pd.read_parquet,
            "jsonl": lambda p: pd.read_json(p, lines=True),
        }[ext](output)
    for ext in ("parquet", "jsonl"):
        pd.testing.assert_frame_equal(tables[ext], tables["csv"], check_dtype=False, rtol=1e-6, atol=1e-9)
    assert len(tables["csv"]) == 40


def test_unknown_output_extension_is_a_user_error(checkpoint, pages, tmp_path):
    output = tmp_path / "scores.xlsx"
    with pytest.raises(UserError, match=re.escape(f"output={output} has no known extension")):
        run_predict(compose_predict(checkpoint, pages, output))
    assert not output.exists()


@pytest.mark.parametrize(
    "drop, overrides, column",
    [("backlinks", [], "backlinks"), ("title", [], "title"), (None, ["id_column=url"], "url")],
)
def test_missing_input_column_is_a_user_error(checkpoint, tmp_path, drop, overrides, column):
    source = tmp_path / "pages.csv"
    frame = new_rows()
    (frame.drop(columns=[drop]) if drop else frame).to_csv(source, index=False)
    with pytest.raises(UserError, match=re.escape(f"{source} has no column {column!r}")):
        run_predict(compose_predict(checkpoint, source, tmp_path / "scores.csv", *overrides))


def test_unseen_categorical_values_are_scored(checkpoint, trained, tmp_path):
    assert "joomla" not in trained.preprocessor.categories["cms"]
    frame = new_rows()
    frame.loc[[0, 1], "cms"] = ["joomla", "drupal"]
    frame.loc[1, frame.columns.drop("cms")] = frame.loc[0, frame.columns.drop("cms")]
    frame.to_csv(tmp_path / "pages.csv", index=False)
    output = tmp_path / "scores.csv"
    summary = run_predict(compose_predict(checkpoint, tmp_path / "pages.csv", output))
    assert (summary["scored"], summary["rejected"]) == (40, 0)
    scores = pd.read_csv(output)
    # Both unseen values share the unknown slot: identical rows otherwise, identical scores.
    pd.testing.assert_series_equal(
        scores.iloc[0].drop("row"), scores.iloc[1].drop("row"), check_names=False, rtol=0, atol=0
    )


@pytest.mark.slow
def test_cli_predict_writes_the_output(checkpoint, pages, tmp_path):
    output = tmp_path / "scores.csv"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "seo_cli.predict",
            f"checkpoint={checkpoint}",
            f"input={pages}",
            f"output={output}",
            "id_column=page_id",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    scores = pd.read_csv(output)
    assert len(scores) == 40 and scores.columns[0] == "page_id"
