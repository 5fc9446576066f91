"""``seo-train`` on table files as a user runs it: a malformed file is one sentence and exit code 1, with
no traceback; a header-less TSV trains end to end.

The console script runs in this process (tests/helpers/commands.py); the same kind of error through a
real process: tests/reliability/test_fuzzed_tables.py's garbage file.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.commands import run_command

CLASSIFY_LABEL = "data.targets=[{name:label,type:classification}]"


def run_train(*args: str):
    return run_command("train", *args)


def _rows(n: int = 40) -> list[str]:
    return [f"page {i},{i * 7},{'ab'[i % 2]}" for i in range(n)]


def _write(path: Path, rows: list[str], header: str = "title,words,label") -> None:
    path.write_text("\n".join([header, *rows]) + "\n")


def bad_number(path: Path) -> str:
    rows = _rows()
    rows[6] = "page 6,seven,a"
    _write(path, rows)
    return (
        f"numeric column 'words' of {path} holds the non-numeric value 'seven' at row 7 (line 8); "
        "fix the value or move the column to data.categorical_columns."
    )


def missing_column(path: Path) -> str:
    _write(path, _rows(), header="title,wordcount,label")
    return (
        f"data.numeric_columns names column 'words', which {path} does not have; "
        "its columns are: title, wordcount, label."
    )


def non_utf8(path: Path) -> str:
    lines = ["title,words,label", *_rows()]
    lines[3] = "caf\xe9 page,21,b"  # written as latin-1 below: byte 0xe9 on line 4
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    return (
        f"data file {path} is not valid utf-8: byte 0xe9 at line 4; set data.encoding to the file's "
        "encoding (e.g. data.encoding=latin-1 or cp1252) or re-save it as UTF-8."
    )


def single_class(path: Path) -> str:
    _write(path, [f"page {i},{i},spam" for i in range(40)])
    return (
        f"classification target 'label' has a single class ('spam') in the training split of {path}; "
        "a classifier needs at least two: check the column, or declare it type: regression."
    )


@pytest.mark.parametrize("make", [bad_number, missing_column, non_utf8, single_class])
def test_malformed_file_exits_1_with_one_sentence_and_no_traceback(tmp_path, make):
    path = tmp_path / "pages.csv"
    message = make(path)
    run_dir = tmp_path / "run"
    result = run_train(
        "data=csv",
        f"data.path={path}",
        "data.text_columns=[title]",
        "data.numeric_columns=[words]",
        CLASSIFY_LABEL,
        "debug=smoke",
        "logger=none",
        f"hydra.run.dir={run_dir}",
    )
    output = result.output
    assert result.code == 1, output[-3000:]
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if message in line]
    assert len(lines) == 1 and lines[0].endswith(message), output[-3000:]  # one line, the sentence last
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == message


def _header_less_tsv(path: Path, rows: int = 300) -> None:
    """label, title, words: the title's words and the word count both tell the label."""
    rng = np.random.default_rng(7)
    vocab = {
        "buy": ["cheap", "price", "deal", "shop", "order", "sale"],
        "info": ["guide", "learn", "history", "explain", "tutorial", "why"],
    }
    shared = ["the", "best", "page", "new", "top", "for"]
    lines = []
    for i in range(rows):
        label = ("buy", "info")[i % 2]
        words = list(rng.choice(vocab[label], 2)) + list(rng.choice(shared, 3))
        rng.shuffle(words)
        count = int(rng.normal(300 if label == "buy" else 1200, 150))
        lines.append(f"{label}\t{' '.join(words)}\t{count}")
    path.write_text("\n".join(lines) + "\n")


def test_header_less_tsv_trains_end_to_end(tmp_path):
    path = tmp_path / "pages.data"  # no extension to go by: data.format decides
    _header_less_tsv(path)
    run_dir = tmp_path / "run"
    result = run_train(
        "data=csv",
        f"data.path={path}",
        "data.format=tsv",
        "data.column_names=[label,title,words]",
        "data.text_columns=[title]",
        "data.numeric_columns=[words]",
        CLASSIFY_LABEL,
        "data.max_length=16",  # titles are five words: shorter rows, a faster run
        "debug=smoke",
        "scheduler=none",
        "logger=none",
        f"hydra.run.dir={run_dir}",
    )
    output = result.output
    assert result.code == 0, output[-3000:]
    assert "Traceback" not in output
    # The first line is a row: 300 read, none lost to a header.
    assert f"Data: 300 rows read from {path}; 300 used, 0 skipped -> train 210, val 45, test 45" in output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok"
    metrics = summary["metrics"]
    assert metrics["val/label/accuracy"] >= 0.9  # chance is 0.5; one smoke epoch reaches 1.0 here
    assert metrics["test/label/accuracy"] >= 0.9
