"""Table files that would mislead or exhaust the reader: a column named twice, too many columns, a cell
or record over its limit, JSON Lines lines that are not objects, list and struct cells, too many
classes, and fractions that leave a split without every class. Each is one sentence naming the file,
the column, line or key, and the fix; the limits are checked before pandas parses the file."""

import json
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import seo_cli.data.tables as tables
from seo_cli.config import DataConfig, TargetConfig
from seo_cli.data.pipeline import load_frame, prepare_data, split_rows
from seo_cli.data.tables import read_table
from seo_cli.errors import UserError


def data_config(path, **overrides) -> DataConfig:
    fields = dict(
        source="file",
        path=str(path),
        text_columns=["title"],
        numeric_columns=["ctr"],
        targets=[TargetConfig("label", "classification")],
        val_fraction=0.2,
        test_fraction=0.2,
    )
    return DataConfig(**(fields | overrides))


def rows(n: int = 12) -> list[dict]:
    return [{"title": f"page {i}", "ctr": i / 100, "label": "ab"[i % 2]} for i in range(n)]


def error_of(call) -> str:
    with pytest.raises(UserError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message and message.endswith("."), message
    return message


# --------------------------------------------------------------------------- a column named twice


@pytest.mark.parametrize("sep, suffix", [(",", "csv"), ("\t", "tsv")])
def test_a_header_naming_a_column_twice_is_refused(tmp_path, sep, suffix):
    path = tmp_path / f"pages.{suffix}"
    path.write_text(
        sep.join(["title", "ctr", "label", "ctr"]) + "\n" + sep.join(["a", "0.1", "x", "0.9"]) + "\n"
    )
    # pandas alone reads the second ctr as "ctr.1" and the model trains on the first.
    assert list(pd.read_csv(path, sep=sep).columns) == ["title", "ctr", "label", "ctr.1"]
    assert error_of(lambda: read_table(path)) == (
        f"the header of {path} names column 'ctr' more than once; rename or remove the repeated column, "
        "so that each name means one column."
    )


def test_repeated_names_in_parquet_and_column_names_are_refused(tmp_path):
    path = tmp_path / "pages.parquet"
    pq.write_table(
        pa.table([pa.array(["a"]), pa.array([0.1]), pa.array([0.2])], names=["title", "ctr", "ctr"]), path
    )
    assert "names column 'ctr' more than once" in error_of(lambda: read_table(path))
    headerless = tmp_path / "pages.csv"
    headerless.write_text("a,0.1,x\n")
    assert error_of(lambda: read_table(headerless, column_names=["title", "ctr", "ctr"])) == (
        f"data.column_names names 'ctr' twice; give each column of {headerless} its own name."
    )


def test_a_quoted_header_with_separators_in_names_is_not_a_repeat(tmp_path):
    path = tmp_path / "pages.csv"
    path.write_text('title,"ctr, %",ctr,"a ""b"""\nx,1,2,3\n')
    frame, _ = read_table(path)
    assert list(frame.columns) == ["title", "ctr, %", "ctr", 'a "b"']


# --------------------------------------------------------------------------- column and cell limits


def test_a_csv_with_more_columns_than_the_limit_is_refused_before_pandas_reads_it(tmp_path):
    path = tmp_path / "wide.csv"
    path.write_text(",".join(f"c{i}" for i in range(20_001)) + "\n" + ",".join(["1"] * 20_001) + "\n")
    assert error_of(lambda: read_table(path)) == (
        f"{path} has more than 10,000 columns, more than the 10,000 seo-cli reads "
        "(seo_cli.data.tables.MAX_COLUMNS); keep the columns the model uses, or check the file's separator "
        "and data.format."
    )
    headerless = tmp_path / "wide.tsv"
    headerless.write_text("\t".join(["1"] * 10_001) + "\n")
    assert "more than 10,000 columns" in error_of(lambda: read_table(headerless, column_names=["a"]))
    exactly = tmp_path / "limit.csv"
    exactly.write_text(",".join(f"c{i}" for i in range(10_000)) + "\n" + ",".join(["1"] * 10_000) + "\n")
    assert read_table(exactly)[0].shape == (1, 10_000)


def test_parquet_and_json_lines_columns_are_limited_too(tmp_path, monkeypatch):
    monkeypatch.setattr(tables, "MAX_COLUMNS", 3)
    parquet = tmp_path / "pages.parquet"
    pd.DataFrame({f"c{i}": [i] for i in range(5)}).to_parquet(parquet)
    assert error_of(lambda: read_table(parquet)).startswith(
        f"{parquet} has 5 columns, more than the 3 seo-cli reads"
    )
    jsonl = tmp_path / "pages.jsonl"
    jsonl.write_text('{"a": 1, "b": 2}\n{"c": 3, "d": 4}\n')
    assert error_of(lambda: read_table(jsonl)).startswith(f"{jsonl} has more than 3 columns")


# Each file's long cell (1001 bytes, over the lowered limit of 1000) starts on line 3.
LONG = "x" * 1001
OVER_THE_LIMIT = {
    "unquoted": f"title,ctr\na,1\n{LONG},2\n",
    "quoted with separators and line breaks": 'title,ctr\na,1\n"' + "ab,\n" * 250 + '",2\n',
    "a quote never closed": 'title,ctr\na,1\n"open,2\n' + "b,3\n" * 300,
    "the last cell, without a line break": f"title,ctr\na,1\nb,{LONG}",
}


@pytest.mark.parametrize("chunk", [5, 64, 2**20], ids=["5-byte chunks", "64-byte chunks", "one chunk"])
@pytest.mark.parametrize("text", OVER_THE_LIMIT.values(), ids=OVER_THE_LIMIT.keys())
def test_a_cell_over_the_limit_is_refused_naming_its_line(tmp_path, monkeypatch, text, chunk):
    monkeypatch.setattr(tables, "MAX_FIELD_BYTES", 1000)
    monkeypatch.setattr(tables, "SCAN_CHUNK", chunk)
    path = tmp_path / "pages.csv"
    path.write_text(text)
    assert error_of(lambda: read_table(path)) == (
        f"a cell of {path} starting at line 3 is longer than 1,000 bytes, the most seo-cli reads into one cell "
        "(seo_cli.data.tables.MAX_FIELD_BYTES); shorten it, or close the quote that leaves it open."
    )


@pytest.mark.parametrize("chunk", [5, 64, 2**20], ids=["5-byte chunks", "64-byte chunks", "one chunk"])
def test_cells_at_the_limit_and_quotes_inside_cells_are_read(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(tables, "MAX_FIELD_BYTES", 1000)
    monkeypatch.setattr(tables, "SCAN_CHUNK", chunk)
    path = tmp_path / "pages.csv"
    # A quote inside an unquoted cell is text (24" monitor), not the start of a 3 KB quoted cell.
    lines = ['title,ctr,"quoted, ""name"""', '24" monitor,1,x', f'{"y" * 1000},2,"""a"", b"']
    lines += [f"page {i},{i},z" for i in range(300)]
    path.write_text("\r\n".join(lines) + "\r\n")
    frame, _ = read_table(path)
    assert list(frame.columns) == ["title", "ctr", 'quoted, "name"']
    assert frame["title"].iloc[:2].tolist() == ['24" monitor', "y" * 1000] and len(frame) == 302


def test_a_huge_cell_is_refused_after_reading_little_more_than_the_limit(tmp_path):
    path = tmp_path / "pages.csv"
    with path.open("w") as f:
        f.write("title,ctr\n")
        f.write("a" * (tables.MAX_FIELD_BYTES + 2**20) + ",1\n")
    started = time.perf_counter()
    assert "starting at line 2 is longer than 10 MiB" in error_of(lambda: read_table(path))
    assert time.perf_counter() - started < 5


def test_utf16_files_are_scanned_as_text(tmp_path, monkeypatch):
    monkeypatch.setattr(tables, "MAX_FIELD_BYTES", 1000)
    path = tmp_path / "pages.csv"
    path.write_text("title,ctr,ctr\nx,1,2\n", encoding="utf-16")
    assert "names column 'ctr' more than once" in error_of(lambda: read_table(path, encoding="utf-16"))
    path.write_text(f"title,ctr\na,1\n{LONG},2\n", encoding="utf-16")
    assert "starting at line 3 is longer than" in error_of(lambda: read_table(path, encoding="utf-16"))


# --------------------------------------------------------------------------- JSON Lines


@pytest.mark.parametrize(
    "line, kind",
    [
        ("[1, 2, 3]", "an array"),
        ("42", "a number"),
        ("null", "null"),
        ('"page"', "a string"),
        ("true", "true or false"),
    ],
)
def test_a_json_lines_line_that_is_not_an_object_is_named(tmp_path, line, kind):
    path = tmp_path / "pages.jsonl"
    path.write_text(json.dumps(rows(1)[0]) + "\n\n" + line + "\n")
    assert error_of(lambda: read_table(path)) == (
        f"line 3 of {path} is {kind}, not an object; each line of a JSON Lines file holds one object such as "
        '{"title": "...", "ctr": 0.1}.'
    )


def test_json_lines_with_a_repeated_key_bad_json_or_a_long_line_are_named(tmp_path, monkeypatch):
    path = tmp_path / "pages.jsonl"
    path.write_text('{"title": "a", "ctr": 1}\n{"title": "b", "ctr": 1, "ctr": 2}\n')
    assert error_of(lambda: read_table(path)) == (
        f"line 2 of {path} has the key 'ctr' more than once (pandas would keep only the last); give each key once."
    )
    path.write_text('{"title": "a"}\n{"title": "b",\n')
    assert error_of(lambda: read_table(path)).startswith(f"line 2 of {path} is not valid JSON (")
    monkeypatch.setattr(tables, "MAX_LINE_BYTES", 100)
    path.write_text('{"title": "a"}\n' + json.dumps({"title": "b" * 100}) + "\n")
    assert error_of(lambda: read_table(path)) == (
        f"line 2 of {path} is longer than 100 bytes, the most seo-cli reads as one record "
        "(seo_cli.data.tables.MAX_LINE_BYTES); shorten its values."
    )


# --------------------------------------------------------------------------- list and struct cells


def test_list_and_struct_cells_in_mapped_columns_are_named(tmp_path):
    path = tmp_path / "pages.parquet"
    table = pd.DataFrame(rows(4))
    table["label"] = [["a"], ["b"], ["a", "b"], ["b"]]
    table["tags"] = [["x"]] * 4  # not mapped: no concern of seo-cli's
    table.to_parquet(path)
    assert error_of(lambda: load_frame(data_config(path), seed=0)) == (
        f"column 'label' of {path} holds a list at row 1, not a single text, number or label; flatten it "
        "into plain columns (join a list of keywords into one text cell, say)."
    )
    pq.write_table(
        pa.table({"title": [{"en": "a"}, {"en": "b"}], "ctr": [0.1, 0.2], "label": ["a", "b"]}), path
    )
    assert "column 'title' of" in error_of(lambda: load_frame(data_config(path), seed=0))
    jsonl = tmp_path / "pages.jsonl"
    jsonl.write_text(
        '{"title": "a", "ctr": 0.1, "label": "a"}\n{"title": "b", "ctr": [1, 2], "label": "b"}\n'
    )
    assert error_of(lambda: load_frame(data_config(jsonl), seed=0)).startswith(
        f"column 'ctr' of {jsonl} holds a list at row 2 (line 2), "
    )


# --------------------------------------------------------------------------- classes and splits


def write_classes(path: Path, classes: int, per_class: int) -> Path:
    lines = ["title,ctr,label"] + [
        f"page {c} {i},{i},class{c}" for c in range(classes) for i in range(per_class)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_target_with_more_classes_than_max_classes_is_refused_before_splitting(tmp_path):
    path = write_classes(tmp_path / "pages.csv", classes=30, per_class=1)
    assert error_of(lambda: prepare_data(data_config(path, max_classes=20), seed=0)) == (
        f"classification target 'label' of {path} has 30 classes, more than data.max_classes=20; check that "
        "it is a label and not an id or a number (declare it type: regression), or raise data.max_classes."
    )


def test_a_fraction_too_small_for_every_class_is_named(tmp_path):
    path = write_classes(tmp_path / "pages.csv", classes=4, per_class=200)
    data = data_config(path, val_fraction=0.1, test_fraction=0.0001)
    frame, source = load_frame(data, seed=0)
    assert error_of(lambda: split_rows(frame, data, 0, source)) == (
        f"data.test_fraction=0.0001 leaves the test split of {path} 1 of its 800 rows, fewer than the 4 classes "
        "of target 'label', and a stratified split puts each class in every split; raise it to at least "
        "0.005, add rows, or give data.split_column."
    )
    data = data_config(path, val_fraction=0.001, test_fraction=0.2)
    assert error_of(lambda: split_rows(frame, data, 0, source)).startswith(
        f"data.val_fraction=0.001 leaves the val split of {path} "
    )
    data = data_config(path, val_fraction=0.5, test_fraction=0.4985)
    assert error_of(lambda: split_rows(frame, data, 0, source)).startswith(
        f"data.val_fraction + data.test_fraction = 0.9985 leaves the train split of {path} 1 of its 800 rows"
    )


@pytest.mark.parametrize("chunk", [3, 2**20], ids=["3-byte chunks", "one chunk"])
def test_a_byte_not_in_the_encoding_is_located_chunk_by_chunk(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(tables, "SCAN_CHUNK", chunk)
    path = tmp_path / "pages.csv"
    path.write_bytes("title,ctr\ncafé,1\nshop,2\n".encode() + b"caf\xe2\x82,3\n")
    assert error_of(lambda: read_table(path)) == (
        f"data file {path} is not valid utf-8: byte 0xe2 at line 4; set data.encoding to the file's encoding "
        "(e.g. data.encoding=latin-1 or cp1252) or re-save it as UTF-8."
    )
