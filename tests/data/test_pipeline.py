"""Splitting rows and checking table columns before anything is fitted."""

import numpy as np
import pandas as pd
import pytest

from seo_cli.config import DataConfig, TargetConfig
from seo_cli.data.pipeline import _check_columns, load_frame, split_rows
from seo_cli.errors import UserError


def data_config(**overrides) -> DataConfig:
    fields = dict(
        source="file",
        numeric_columns=["backlinks"],
        targets=[TargetConfig("label", "classification")],
        val_fraction=0.2,
        test_fraction=0.2,
    )
    return DataConfig(**(fields | overrides))


def labelled_frame(num_a: int = 80, num_b: int = 20) -> pd.DataFrame:
    labels = ["a"] * num_a + ["b"] * num_b
    return pd.DataFrame({"backlinks": np.arange(len(labels), dtype=float), "label": labels})


def test_split_sizes_follow_the_fractions_and_cover_every_row_once():
    frame = labelled_frame()
    rows = split_rows(frame, data_config(), seed=0, where="t.csv")
    assert {name: len(idx) for name, idx in rows.items()} == {"train": 60, "val": 20, "test": 20}
    assert sorted(np.concatenate(list(rows.values())).tolist()) == list(range(100))
    assert all(np.all(np.diff(idx) > 0) for idx in rows.values())  # sorted positions


def test_split_is_deterministic_by_seed():
    frame = labelled_frame()
    first = split_rows(frame, data_config(), seed=3, where="t.csv")
    again = split_rows(frame, data_config(), seed=3, where="t.csv")
    other = split_rows(frame, data_config(), seed=4, where="t.csv")
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first["train"], other["train"])


def test_split_is_stratified_on_the_first_classification_target():
    frame = labelled_frame(80, 20)
    for seed in range(3):
        rows = split_rows(frame, data_config(), seed=seed, where="t.csv")
        counts = {name: frame["label"].iloc[idx].value_counts().to_dict() for name, idx in rows.items()}
        assert counts == {"train": {"a": 48, "b": 12}, "val": {"a": 16, "b": 4}, "test": {"a": 16, "b": 4}}


def test_regression_only_split_is_random_with_the_same_sizes():
    frame = pd.DataFrame({"backlinks": np.arange(50.0), "ctr": np.linspace(0, 1, 50)})
    data = data_config(targets=[TargetConfig("ctr", "regression")], val_fraction=0.1, test_fraction=0.3)
    rows = split_rows(frame, data, seed=0, where="t.csv")
    assert {name: len(idx) for name, idx in rows.items()} == {"train": 30, "val": 5, "test": 15}


def test_split_column_decides_and_ignores_case_and_spaces():
    frame = labelled_frame(3, 3).assign(part=["train", " Train", "VAL", "test ", "train", "Test"])
    rows = split_rows(frame, data_config(split_column="part"), seed=0, where="t.csv")
    assert {k: v.tolist() for k, v in rows.items()} == {"train": [0, 1, 4], "val": [2], "test": [3, 5]}


def test_split_column_with_another_value_is_a_user_error():
    frame = labelled_frame(2, 2).assign(part=["train", "validation", "test", "train"])
    with pytest.raises(
        UserError,
        match=r"data.split_column 'part' of t.csv holds 'validation' at row 2; .*train, val or test",
    ):
        split_rows(frame, data_config(split_column="part"), seed=0, where="t.csv")


def test_too_few_rows_of_a_class_to_stratify_is_a_user_error():
    frame = labelled_frame(30, 1)
    with pytest.raises(
        UserError,
        match=r"cannot split the 31 rows of t.csv .*stratified on target 'label': class 'b' has only 1 rows",
    ):
        split_rows(frame, data_config(), seed=0, where="t.csv")


def write_csv(tmp_path, text: str):
    path = tmp_path / "pages.csv"
    path.write_text(text)
    return path


def test_missing_column_lists_the_columns_the_file_has(tmp_path):
    path = write_csv(tmp_path, "backlink,label\n1,a\n")
    with pytest.raises(UserError) as err:
        load_frame(data_config(path=str(path)), seed=0)
    message = str(err.value)
    assert f"data.numeric_columns names column 'backlinks', which {path} does not have" in message
    assert "its columns are: backlink, label." in message


def test_missing_target_column_names_the_targets_key():
    frame = labelled_frame(2, 2).rename(columns={"label": "intent"})
    with pytest.raises(
        UserError, match=r"data.targets names column 'label'.*its columns are: backlinks, intent"
    ):
        _check_columns(frame, data_config(), "t.csv")


def test_non_numeric_value_names_the_column_value_and_data_row(tmp_path):
    path = write_csv(tmp_path, "backlinks,label\n1,a\n2,b\nmany,a\n4,b\n")
    with pytest.raises(
        UserError,
        match=r"numeric column 'backlinks' of .*pages.csv holds the non-numeric value "
        r"'many' at row 3 \(line 4\);",
    ):
        load_frame(data_config(path=str(path)), seed=0)


def test_empty_numeric_value_names_the_data_row(tmp_path):
    path = write_csv(tmp_path, "backlinks,label\n1,a\n,b\n")
    with pytest.raises(
        UserError, match=r"numeric column 'backlinks' of .*pages.csv is empty at row 2 \(line 3\)"
    ):
        load_frame(data_config(path=str(path)), seed=0)


def test_empty_target_names_the_data_row(tmp_path):
    path = write_csv(tmp_path, "backlinks,label\n1,a\n2,b\n3,\n")
    with pytest.raises(UserError, match=r"target 'label' of .*pages.csv is empty at row 3 \(line 4\)"):
        load_frame(data_config(path=str(path)), seed=0)


def test_non_numeric_regression_target_names_the_data_row(tmp_path):
    path = write_csv(tmp_path, "backlinks,ctr\n1,0.5\n2,high\n")
    data = data_config(path=str(path), targets=[TargetConfig("ctr", "regression")])
    with pytest.raises(
        UserError,
        match=r"regression target 'ctr' of .*pages.csv holds the non-numeric or infinite value "
        r"'high' at row 2 \(line 3\)",
    ):
        load_frame(data, seed=0)


def test_valid_file_loads_with_its_values(tmp_path):
    path = write_csv(tmp_path, "backlinks,label,note\n1,a,x\n2.5,b,y\n")
    frame, where = load_frame(data_config(path=str(path)), seed=0)
    assert str(where) == str(path) and where.row(1) == "row 2 (line 3)"
    assert frame["backlinks"].tolist() == [1.0, 2.5]
    assert frame["label"].tolist() == ["a", "b"]


@pytest.mark.parametrize("column", ["backlinks", "ctr"])
def test_infinite_values_name_the_column_and_row(tmp_path, column):
    import numpy as np

    from seo_cli.config import DataConfig, TargetConfig
    from seo_cli.data.pipeline import load_frame
    from seo_cli.data.seo_pages import generate_seo_pages

    frame = generate_seo_pages(60, seed=0)
    frame[column] = frame[column].astype(float)
    frame.loc[7, column] = np.inf
    path = tmp_path / "pages.csv"
    frame.to_csv(path, index=False)
    data = DataConfig(
        source="file",
        path=str(path),
        numeric_columns=["backlinks"],
        targets=[TargetConfig("ctr", "regression")],
    )
    with pytest.raises(UserError, match=rf"{column}.*inf.* at row 8 \(line 9\)"):
        load_frame(data, seed=0)
