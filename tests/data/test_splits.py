"""data.split_by=group and time, and the folds of cv.folds: values on small frames, no training."""

import logging

import numpy as np
import pandas as pd
import pytest

from seo_cli.config import DataConfig, TargetConfig
from seo_cli.data.pipeline import describe_split, fold_rows, load_splits, split_rows
from seo_cli.data.tables import Source
from seo_cli.errors import UserError


def data_config(**overrides) -> DataConfig:
    fields = dict(
        source="file",
        numeric_columns=["x"],
        targets=[TargetConfig("label", "classification")],
        val_fraction=0.2,
        test_fraction=0.2,
    )
    return DataConfig(**(fields | overrides))


def sites_frame(rows: int = 600, sites: int = 60, seed: int = 0) -> pd.DataFrame:
    """Rows of ``sites`` sites of different sizes (the largest about 4 times the smallest); label b is a
    third of the rows, c a tenth."""
    rng = np.random.default_rng(seed)
    size = 1 / (np.arange(sites) + sites / 3)
    return pd.DataFrame(
        {
            "x": rng.normal(size=rows),
            "label": rng.choice(["a", "b", "c"], size=rows, p=[0.57, 0.33, 0.1]),
            "site": [f"site{i}" for i in rng.choice(sites, size=rows, p=size / size.sum())],
        }
    )


def shares(frame: pd.DataFrame, rows: np.ndarray) -> pd.Series:
    return frame["label"].iloc[rows].value_counts(normalize=True).reindex(["a", "b", "c"], fill_value=0.0)


# data.split_by=group


def test_group_split_puts_each_group_in_one_split_and_every_row_in_one():
    frame = sites_frame()
    rows = split_rows(frame, data_config(split_by="group", group_column="site"), seed=0, where="t.csv")
    groups = {name: set(frame["site"].iloc[idx]) for name, idx in rows.items()}
    assert not groups["train"] & groups["val"] and not groups["train"] & groups["test"]
    assert not groups["val"] & groups["test"]
    assert sorted(np.concatenate(list(rows.values())).tolist()) == list(range(len(frame)))
    # The fractions to the nearest twentieth of the rows (four of 20 group folds each), groups kept whole.
    sizes = {name: len(idx) / len(frame) for name, idx in rows.items()}
    assert sizes["val"] == pytest.approx(0.2, abs=0.06) and sizes["test"] == pytest.approx(0.2, abs=0.06)


def test_group_split_is_stratified_where_groups_allow_and_seeded():
    frame = sites_frame(rows=1200, sites=200)
    data = data_config(split_by="group", group_column="site")
    rows = split_rows(frame, data, seed=1, where="t.csv")
    overall = frame["label"].value_counts(normalize=True).reindex(["a", "b", "c"])
    for idx in rows.values():
        np.testing.assert_allclose(shares(frame, idx), overall, atol=0.05)
    again = split_rows(frame, data, seed=1, where="t.csv")
    other = split_rows(frame, data, seed=2, where="t.csv")
    assert all(np.array_equal(rows[k], again[k]) for k in rows)
    assert not np.array_equal(rows["test"], other["test"])


def test_group_split_of_regression_targets_keeps_groups_whole():
    frame = sites_frame().assign(ctr=np.linspace(0, 1, 600))
    data = data_config(split_by="group", group_column="site", targets=[TargetConfig("ctr", "regression")])
    rows = split_rows(frame, data, seed=0, where="t.csv")
    groups = [set(frame["site"].iloc[idx]) for idx in rows.values()]
    assert sum(len(g) for g in groups) == len(set().union(*groups)) == frame["site"].nunique()


def test_group_split_beside_a_test_file_makes_train_and_val_only():
    frame = sites_frame()
    rows = split_rows(frame, data_config(split_by="group", group_column="site"), 0, "t.csv", with_test=False)
    assert set(rows) == {"train", "val"}
    assert not set(frame["site"].iloc[rows["train"]]) & set(frame["site"].iloc[rows["val"]])


def test_too_few_groups_for_the_fractions_is_a_user_error():
    frame = sites_frame(rows=40).assign(site=["s1", "s2"] * 20)
    with pytest.raises(
        UserError,
        match=r"^data.group_column 'site' of t.csv has 2 groups, too few to give the train/val/test splits groups "
        r"of their own at data.val_fraction=0.2 and data.test_fraction=0.2; add groups, lower the fractions, "
        r"or set data.split_by=random.$",
    ):
        split_rows(frame, data_config(split_by="group", group_column="site"), 0, "t.csv")


def test_a_row_without_a_group_is_named():
    frame = sites_frame(rows=40)
    frame.loc[7, "site"] = ""
    with pytest.raises(
        UserError, match=r"data.group_column 'site' of t.csv is empty at row 8; give every row"
    ):
        split_rows(frame, data_config(split_by="group", group_column="site"), 0, "t.csv")


# data.split_by=time


def days_frame(days: int = 50, per_day: int = 4) -> pd.DataFrame:
    dates = pd.date_range("2024-01-01", periods=days).repeat(per_day)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(dates))  # the file is not in time order
    return pd.DataFrame(
        {
            "x": np.arange(len(dates), dtype=float),
            "label": np.tile(["a", "b"], len(dates) // 2),
            "date": dates.strftime("%Y-%m-%d")[order],
        }
    )


def test_time_split_trains_on_the_past_and_tests_on_the_future():
    frame = days_frame()
    rows = split_rows(frame, data_config(split_by="time", time_column="date"), seed=0, where="t.csv")
    dates = {name: pd.to_datetime(frame["date"].iloc[idx]) for name, idx in rows.items()}
    assert dates["train"].max() < dates["val"].min() <= dates["val"].max() < dates["test"].min()
    # 200 rows: the random split's sizes 120 / 40 / 40, and 4 rows a day, so no day is cut in two.
    assert {name: len(idx) for name, idx in rows.items()} == {"train": 120, "val": 40, "test": 40}
    assert sorted(np.concatenate(list(rows.values())).tolist()) == list(range(200))


def test_rows_tied_at_a_boundary_all_go_to_the_later_split():
    # Ten distinct numeric times; the 60% boundary of 100 rows falls inside time 5's block (rows 55-64).
    frame = pd.DataFrame({"x": np.zeros(100), "label": ["a", "b"] * 50, "t": np.repeat(np.arange(10), 10)})
    frame.loc[np.arange(50, 65), "t"] = 5
    rows = split_rows(frame, data_config(split_by="time", time_column="t"), seed=0, where="t.csv")
    times = {name: frame["t"].iloc[idx] for name, idx in rows.items()}
    assert times["train"].max() == 4 and times["val"].min() == 5  # the 15 rows of time 5 are all val
    assert len(rows["train"]) == 50
    assert times["val"].max() < times["test"].min()


def test_time_column_of_numbers_written_as_text_and_mixed_date_formats():
    numbers = days_frame().assign(date=lambda f: pd.to_datetime(f["date"]).map(lambda d: str(d.toordinal())))
    rows = split_rows(numbers, data_config(split_by="time", time_column="date"), 0, "t.csv")
    assert (
        numbers["date"].astype(int).iloc[rows["train"]].max()
        < numbers["date"].astype(int).iloc[rows["val"]].min()
    )
    mixed = pd.DataFrame(
        {
            "x": np.zeros(10),
            "label": ["a", "b"] * 5,
            "date": [f"2024-01-0{d}" for d in range(1, 10)] + ["Jan 10 2024"],
        }
    )
    rows = split_rows(
        mixed, data_config(split_by="time", time_column="date", val_fraction=0.2, test_fraction=0.2), 0, "t"
    )
    assert rows["test"].tolist() == [8, 9]  # "Jan 10 2024" is the latest


def test_a_time_that_is_neither_date_nor_number_is_named():
    frame = days_frame()
    frame.loc[3, "date"] = "last tuesday"
    with pytest.raises(
        UserError,
        match=r"data.time_column 'date' of t.csv holds 'last tuesday' at row 4, which is neither a date nor",
    ):
        split_rows(frame, data_config(split_by="time", time_column="date"), 0, "t.csv")
    frame.loc[3, "date"] = None
    with pytest.raises(
        UserError, match=r"data.time_column 'date' of t.csv is empty at row 4; give every row a time"
    ):
        split_rows(frame, data_config(split_by="time", time_column="date"), 0, "t.csv")


def test_too_few_distinct_times_is_a_user_error():
    frame = days_frame(days=2, per_day=10)
    with pytest.raises(
        UserError,
        match=r"data.time_column 'date' of t.csv has 2 distinct times in its 20 rows, too few to give the",
    ):
        split_rows(frame, data_config(split_by="time", time_column="date"), 0, "t.csv")


# The start-up account and its check


def test_the_start_up_account_states_groups_or_times_and_refuses_an_overlap():
    frame = sites_frame()
    data = data_config(split_by="group", group_column="site")
    rows = split_rows(frame, data, seed=0, where="t.csv")
    splits = {name: (frame.iloc[idx], Source("t.csv")) for name, idx in rows.items()}
    counts = {name: frame["site"].iloc[idx].nunique() for name, idx in rows.items()}
    assert describe_split(splits, data, ("train", "val", "test")) == (
        "Split by group (data.group_column='site'): "
        f"train {counts['train']} groups, val {counts['val']} groups, test {counts['test']} groups; "
        "no group is in two splits"
    )
    leaked = dict(splits, test=(frame.iloc[np.r_[rows["test"], rows["train"][:1]]], Source("t.csv")))
    with pytest.raises(AssertionError, match="is in the train and the test split"):
        describe_split(leaked, data, ("train", "val", "test"))

    days = days_frame()
    data = data_config(split_by="time", time_column="date")
    rows = split_rows(days, data, seed=0, where="t.csv")
    splits = {name: (days.iloc[idx], Source("t.csv")) for name, idx in rows.items()}
    assert describe_split(splits, data, ("train", "val", "test")) == (
        "Split by time (data.time_column='date'): train 2024-01-01 to 2024-01-30, val 2024-01-31 to 2024-02-09, "
        "test 2024-02-10 to 2024-02-19; each split is later than the one before"
    )
    swapped = dict(splits, val=splits["test"], test=splits["val"])
    with pytest.raises(AssertionError, match="the val split ends at"):
        describe_split(swapped, data, ("train", "val", "test"))


# cv.folds


def test_each_row_is_in_exactly_one_fold_and_the_folds_are_stratified():
    frame = sites_frame(rows=500)
    fold_of = fold_rows(frame, data_config(), seed=0, folds=5, where="t.csv")
    assert np.bincount(fold_of).tolist() == [100] * 5  # a partition into five equal folds
    overall = frame["label"].value_counts(normalize=True).reindex(["a", "b", "c"])
    for k in range(5):
        np.testing.assert_allclose(shares(frame, np.flatnonzero(fold_of == k)), overall, atol=0.02)
    assert np.array_equal(fold_of, fold_rows(frame, data_config(), seed=0, folds=5, where="t.csv"))
    assert not np.array_equal(fold_of, fold_rows(frame, data_config(), seed=1, folds=5, where="t.csv"))


def test_group_folds_keep_each_group_in_one_fold():
    frame = sites_frame()
    fold_of = fold_rows(frame, data_config(split_by="group", group_column="site"), 0, 4, "t.csv")
    assert (
        frame.groupby("site")["x"].size().size == frame.assign(f=fold_of).groupby("site")["f"].nunique().size
    )
    assert frame.assign(f=fold_of).groupby("site")["f"].nunique().max() == 1
    assert set(fold_of) == {0, 1, 2, 3}


@pytest.mark.parametrize(
    ("frame", "data", "message"),
    [
        (
            sites_frame(rows=40).assign(site=["s1", "s2", "s3"] * 13 + ["s1"]),
            data_config(split_by="group", group_column="site"),
            r"^cv.folds=5 needs at least 5 groups of data.group_column 'site' among the train and val rows of t.csv, "
            r"which have 3; lower cv.folds or add groups.$",
        ),
        (
            sites_frame(rows=4).assign(label=["a", "a", "b", "b"]),
            data_config(),
            r"^cv.folds=5 is more than the 4 train and val rows of t.csv; lower cv.folds or add rows.$",
        ),
        (
            sites_frame(rows=20).assign(label=["a"] * 19 + ["z"]),
            data_config(),
            r"^class 'z' of target 'label' has a single row among the 20 train and val rows of t.csv, so the fold",
        ),
    ],
)
def test_folds_that_cannot_be_made_are_user_errors(frame, data, message):
    with pytest.raises(UserError, match=message):
        fold_rows(frame, data, seed=0, folds=5, where="t.csv")


def test_a_fold_validates_on_its_rows_and_the_test_split_stays(tmp_path, caplog):
    path = tmp_path / "pages.csv"
    sites_frame(rows=300).to_csv(path, index=False)
    data = data_config(path=str(path), split_by="group", group_column="site")
    with caplog.at_level(logging.INFO):
        base = load_splits(data, seed=0)
        folds = [load_splits(data, seed=0, fold=(k, 3)) for k in range(3)]
    pool = sorted(base["train"][0].index.tolist() + base["val"][0].index.tolist())
    vals = [f["val"][0].index.tolist() for f in folds]
    assert sorted(sum(vals, [])) == pool  # each train or val row validates in exactly one fold
    for f, val in zip(folds, vals, strict=True):
        assert sorted(f["train"][0].index.tolist() + val) == pool
        assert f["test"][0].index.tolist() == base["test"][0].index.tolist()
        assert not set(f["train"][0]["site"]) & set(f["val"][0]["site"])
    assert "no group is in two splits" in caplog.text
    assert "Cross-validation fold 2 of folds 0-2: it validates on" in caplog.text


def test_a_missing_group_or_time_column_names_the_key(tmp_path):
    path = tmp_path / "pages.csv"
    sites_frame(rows=30).to_csv(path, index=False)
    for key, column in (("group_column", "domain"), ("time_column", "day")):
        split_by = key.split("_")[0]
        with pytest.raises(
            UserError, match=rf"^data.{key} names column '{column}', which {path} does not have; its"
        ):
            load_splits(data_config(path=str(path), split_by=split_by, **{key: column}), seed=0)


def test_times_with_different_offsets_are_compared_in_utc():
    times = ["2024-06-01T10:00+02:00", "2024-06-01T09:00Z", "2024-06-01T12:00+05:00", "2024-06-01T08:30Z"] * 5
    frame = pd.DataFrame({"x": np.zeros(20), "label": ["a", "b"] * 10, "t": times})
    rows = split_rows(
        frame, data_config(split_by="time", time_column="t", val_fraction=0.25, test_fraction=0.25), 0, "t"
    )
    # In UTC: 07:00 (row 2), 08:00 (row 0), 08:30 (row 3), 09:00 (row 1), five rows each.
    assert {name: sorted({i % 4 for i in idx}) for name, idx in rows.items()} == {
        "train": [0, 2],
        "val": [3],
        "test": [1],
    }
