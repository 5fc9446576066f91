"""Reading table files: every format gives the same frame; every bad path gets a UserError naming it."""

import re

import pandas as pd
import pytest

from seo_cli.data.tables import read_table
from seo_cli.errors import UserError

FRAME = pd.DataFrame(
    {
        "title": ["SEO guide", "Buy shoes, cheap", "How to rank"],
        "backlinks": [12, 0, 345],
        "page_speed": [1.5, 0.25, 3.0],
        "intent": ["info", "buy", "info"],
    }
)


def write(frame: pd.DataFrame, path) -> None:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix in (".tsv", ".tab"):
        frame.to_csv(path, sep="\t", index=False)
    elif suffix in (".jsonl", ".ndjson"):
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path, index=False)


@pytest.mark.parametrize(
    "name",
    ["pages.csv", "pages.tsv", "pages.tab", "pages.jsonl", "pages.ndjson", "pages.parquet", "PAGES.CSV"],
)
def test_every_format_reads_the_same_frame(tmp_path, name):
    path = tmp_path / name
    write(FRAME, path)
    pd.testing.assert_frame_equal(read_table(path)[0], FRAME)


@pytest.mark.parametrize("name", ["pages.parquet", "pages.csv"])
def test_columns_reads_only_those_of_a_parquet_file_that_has_them_all(tmp_path, name):
    path = tmp_path / name
    write(FRAME, path)
    wanted = read_table(path, columns=["intent", "backlinks"])[0]
    if name.endswith(".parquet"):  # in the file's order; the text column never decoded
        pd.testing.assert_frame_equal(wanted, FRAME[["backlinks", "intent"]])
    else:  # other formats are read whole
        pd.testing.assert_frame_equal(wanted, FRAME)
    # One of them missing: the whole file, whose columns the caller's message then lists.
    pd.testing.assert_frame_equal(read_table(path, columns=["intent", "ctr"])[0], FRAME)


def test_format_overrides_the_extension(tmp_path):
    path = tmp_path / "pages.txt"
    FRAME.to_csv(path, sep="\t", index=False)
    pd.testing.assert_frame_equal(read_table(str(path), "tsv")[0], FRAME)


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(UserError, match=rf"data file {re.escape(str(path))} does not exist"):
        read_table(path)


def test_directory_names_the_path(tmp_path):
    with pytest.raises(UserError, match=rf"data file {re.escape(str(tmp_path))} is a directory"):
        read_table(tmp_path)


def test_empty_file_names_the_path(tmp_path):
    path = tmp_path / "empty.csv"
    path.touch()
    with pytest.raises(UserError, match=rf"data file {re.escape(str(path))} is empty"):
        read_table(path)


def test_header_without_rows_names_the_path(tmp_path):
    path = tmp_path / "header.csv"
    path.write_text("title,intent\n")
    with pytest.raises(UserError, match=rf"data file {re.escape(str(path))} has no data rows"):
        read_table(path)


def test_unknown_extension_names_the_path(tmp_path):
    path = tmp_path / "pages.xlsx"
    path.write_text("x")
    with pytest.raises(
        UserError,
        match=rf"cannot tell the format of {re.escape(str(path))} from its extension; set data.format",
    ):
        read_table(path)


def test_unparsable_file_names_the_path_and_format(tmp_path):
    path = tmp_path / "pages.parquet"
    path.write_text("title,intent\nnot,parquet\n")
    with pytest.raises(UserError, match=rf"cannot read {re.escape(str(path))} as parquet: "):
        read_table(path)
