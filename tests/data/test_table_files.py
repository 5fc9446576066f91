"""Table files as users have them: malformed files fail with one sentence naming file, column and row;
header-less CSV/TSV, encodings, missing values, a separate test file and the preprocessing stored in a
checkpoint all give exactly the rows and tensors they should."""

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from seo_cli.checkpoint import load_checkpoint
from seo_cli.config import DataConfig, TargetConfig
from seo_cli.data.pipeline import load_frame, load_splits, prepare_data
from seo_cli.data.preprocess import Preprocessor
from seo_cli.data.tables import Source
from seo_cli.errors import UserError
from seo_cli.validation import check_train_config

HEADER = "title,words,label"


def data_config(path, **overrides) -> DataConfig:
    fields = dict(
        source="file",
        path=str(path),
        text_columns=["title"],
        numeric_columns=["words"],
        targets=[TargetConfig("label", "classification")],
        val_fraction=0.2,
        test_fraction=0.2,
    )
    return DataConfig(**(fields | overrides))


def csv_lines(rows: list[str], header: str | None = HEADER) -> str:
    return "\n".join(([header] if header else []) + rows) + "\n"


def good_rows(n: int = 10) -> list[str]:
    return [f"page {i} title,{i * 10},{'ab'[i % 2]}" for i in range(n)]


# --------------------------------------------------------------------------- malformed files


def _bad_number(path: Path) -> None:
    rows = good_rows(10)
    rows[6] = "page 6 title,many,a"  # data row 7, line 8 under the header
    path.write_text(csv_lines(rows))


def _split_rows(labels: list[str]) -> list[str]:
    """Rows with a split column: train, val, test in turn."""
    return [f"page {i},{i},{label},{('train', 'val', 'test')[i % 3]}" for i, label in enumerate(labels)]


# (id, file name, writer, config overrides, prepare (True) or only load, expected message with {path})
MALFORMED = [
    (
        "missing-column",
        "pages.csv",
        lambda p: p.write_text(csv_lines(good_rows(3), header="title,word_count,label")),
        {},
        False,
        "data.numeric_columns names column 'words', which {path} does not have; "
        "its columns are: title, word_count, label.",
    ),
    (
        "bad-number-row-7",
        "pages.csv",
        _bad_number,
        {},
        False,
        "numeric column 'words' of {path} holds the non-numeric value 'many' at row 7 (line 8); "
        "fix the value or move the column to data.categorical_columns.",
    ),
    (
        "empty-file",
        "pages.csv",
        lambda p: p.write_bytes(b""),
        {},
        False,
        "data file {path} is empty; give a file with a header row and at least one data row.",
    ),
    (
        "empty-target",
        "pages.csv",
        lambda p: p.write_text(csv_lines(["a,1,", "b,2,NA", "c,3,null", "d,4, None "])),
        {"missing": "impute"},  # even where empty targets are skipped, an all-empty one is an error
        False,
        "target 'label' of {path} is empty in every row; check the column name and the file.",
    ),
    (
        "single-class",
        "pages.csv",
        lambda p: p.write_text(csv_lines(_split_rows(["buy"] * 9), header=HEADER + ",part")),
        {"split_column": "part"},
        True,
        "classification target 'label' has a single class ('buy') in the training split of {path}; "
        "a classifier needs at least two: check the column, or declare it type: regression.",
    ),
    (
        "class-only-in-val",
        "pages.csv",
        # rows 1..9 alternate a/b over train/val/test; row 11 (line 12) is the only 'c', in val
        lambda p: p.write_text(csv_lines(_split_rows(list("abababababcab")), header=HEADER + ",part")),
        {"split_column": "part"},
        True,
        "class 'c' of target 'label' is in the val split ({path}, row 11 (line 12)) but never in the "
        "training split, so the model cannot learn it; add training rows of it, or remove those rows.",
    ),
    (
        "non-utf8",
        "pages.csv",
        lambda p: p.write_bytes(b"title,words,label\ncafe,1,a\nshop,2,b\ncaf\xff,3,a\nx,4,b\n"),
        {},
        False,
        "data file {path} is not valid utf-8: byte 0xff at line 4; set data.encoding to the file's "
        "encoding (e.g. data.encoding=latin-1 or cp1252) or re-save it as UTF-8.",
    ),
    (
        "empty-text-column",
        "pages.csv",
        lambda p: p.write_text(csv_lines([",1,a", '"",2,b', "  ,3,a"])),
        {},
        False,
        "text column 'title' of {path} is empty in every row; check the column, or remove it from "
        "data.text_columns.",
    ),
    (
        "column-names-count",
        "pages.csv",
        lambda p: p.write_text(csv_lines(good_rows(4), header=None)),
        {"column_names": ["title", "words"]},
        False,
        "data.column_names lists 2 names but {path} has 3 columns; name every column of the file, in order.",
    ),
    (
        "column-names-on-parquet",
        "pages.parquet",
        lambda p: pd.DataFrame({"title": ["x"], "words": [1], "label": ["a"]}).to_parquet(p),
        {"column_names": ["title", "words", "label"]},
        False,
        "data.column_names names the columns of a header-less CSV or TSV, but {path} is parquet, whose "
        "columns are named in the file; remove data.column_names.",
    ),
    (
        "column-names-on-jsonl",
        "pages.jsonl",
        lambda p: p.write_text('{"title": "x", "words": 1, "label": "a"}\n'),
        {"column_names": ["title", "words", "label"]},
        False,
        "data.column_names names the columns of a header-less CSV or TSV, but {path} is jsonl, whose "
        "columns are named in the file; remove data.column_names.",
    ),
    (
        "unknown-extension",
        "pages.xlsx",
        lambda p: p.write_text(csv_lines(good_rows(3))),
        {},
        False,
        "cannot tell the format of {path} from its extension; set data.format to one of csv, tsv, "
        "jsonl, parquet.",
    ),
]


@pytest.mark.parametrize(
    ("name", "write", "overrides", "prepare", "expected"),
    [case[1:] for case in MALFORMED],
    ids=[case[0] for case in MALFORMED],
)
def test_malformed_file_is_one_sentence_naming_file_column_and_row(
    tmp_path, name, write, overrides, prepare, expected
):
    path = tmp_path / name
    write(path)
    data = data_config(path, **overrides)
    with pytest.raises(UserError) as err:
        prepare_data(data, seed=0) if prepare else load_frame(data, seed=0)
    message = str(err.value)
    assert message == expected.format(path=path)
    assert "\n" not in message and str(path) in message


# --------------------------------------------------------------------------- header-less, encodings


@pytest.mark.parametrize(("suffix", "sep"), [(".csv", ","), (".tsv", "\t")])
def test_header_less_file_reads_every_row_under_the_given_names(tmp_path, suffix, sep):
    path = tmp_path / f"pages{suffix}"
    rows = [("buy", "cheap shoes", 120), ("info", "seo guide", 800), ("buy", "red hats", 95)]
    path.write_text("".join(sep.join(map(str, row)) + "\n" for row in rows))
    data = data_config(path, column_names=["label", "title", "words"])
    frame, source = load_frame(data, seed=0)
    assert list(frame.columns) == ["label", "title", "words"]
    assert frame["label"].tolist() == ["buy", "info", "buy"]  # the first line is a row, not a header
    assert frame["title"].tolist() == ["cheap shoes", "seo guide", "red hats"]
    assert frame["words"].tolist() == [120.0, 800.0, 95.0]
    assert frame.index.tolist() == [0, 1, 2]
    assert source.row(2) == "row 3 (line 3)"  # no header: row n is line n


def test_source_numbers_rows_by_header_lines():
    assert Source("t.csv", 0).row(2) == "row 3 (line 3)"
    assert Source("t.csv", 1).row(6) == "row 7 (line 8)"
    assert Source("t.parquet").row(6) == "row 7"
    assert str(Source("t.csv", 1)) == "t.csv"


def test_header_less_bad_value_names_row_and_same_line(tmp_path):
    path = tmp_path / "pages.tsv"
    path.write_text("buy\tshoes\t1\ninfo\tguide\t2\nbuy\thats\tlots\n")
    with pytest.raises(UserError) as err:
        load_frame(data_config(path, column_names=["label", "title", "words"]), seed=0)
    assert str(err.value) == (
        f"numeric column 'words' of {path} holds the non-numeric value 'lots' at row 3 (line 3); "
        "fix the value or move the column to data.categorical_columns."
    )


def test_latin1_file_reads_with_data_encoding(tmp_path):
    path = tmp_path / "pages.csv"
    path.write_bytes(csv_lines(["café,1,a", "crème brûlée,2,b"]).encode("latin-1"))
    frame, _ = load_frame(data_config(path, encoding="latin-1"), seed=0)
    assert frame["title"].tolist() == ["café", "crème brûlée"]
    # The same bytes read as UTF-8 fail on the first accented byte (é is 0xe9 in latin-1), line 2.
    with pytest.raises(UserError, match=r"is not valid utf-8: byte 0xe9 at line 2; set data.encoding"):
        load_frame(data_config(path), seed=0)


# --------------------------------------------------------------------------- missing values


@pytest.mark.parametrize("token", ["NA", "null", "", "n/a", " None "])
def test_missing_word_in_numeric_column_is_an_error_naming_the_row(tmp_path, token):
    path = tmp_path / "pages.csv"
    path.write_text(csv_lines(["a,1,a", "b,2,b", f"c,{token},a", "d,4,b"]))
    with pytest.raises(UserError) as err:
        load_frame(data_config(path, missing="error"), seed=0)
    assert str(err.value) == (
        f"numeric column 'words' of {path} is empty at row 3 (line 4); fill it in, or set "
        "data.missing=impute to use the training median."
    )


def test_impute_fills_empty_numbers_with_the_training_median(tmp_path):
    # part decides the split; train holds 1, 2, 4, 100 and three empty cells; val/test hold large values
    # so that a median over all rows (or a mean) would differ from the training median.
    rows = [
        ("t0", "1", "a", "train"),
        ("t1", "NA", "b", "train"),
        ("t2", "2", "a", "train"),
        ("t3", "", "b", "train"),
        ("t4", "100", "a", "train"),
        ("t5", "null", "b", "train"),
        ("t6", "4", "b", "train"),
        ("v0", "5000", "a", "val"),
        ("v1", "", "b", "val"),
        ("s0", "7000", "a", "test"),
        ("s1", "9000", "b", "test"),
    ]
    path = tmp_path / "pages.csv"
    path.write_text(csv_lines([",".join(r) for r in rows], header=HEADER + ",part"))
    data = data_config(path, missing="impute", split_column="part")
    prepared = prepare_data(data, seed=0)
    pre = prepared.preprocessor

    train_values = np.array([1.0, 2.0, 100.0, 4.0])
    median = float(np.median(train_values))
    assert median == 3.0
    assert pre.numeric_fill == [median]

    imputed = np.array([1.0, 3.0, 2.0, 3.0, 100.0, 3.0, 4.0])  # the train rows in file order
    mean = imputed.sum() / 7
    std = np.sqrt(((imputed - mean) ** 2).sum() / 7)
    assert pre.numeric_mean == pytest.approx([mean]) and pre.numeric_scale == pytest.approx([std])
    expected_fill = np.float32((median - mean) / std)
    assert expected_fill != 0.0  # median != mean, so the imputed value is not simply 0

    train_numeric = prepared.splits["train"].inputs["numeric"][:, 0]
    expected = torch.from_numpy(((imputed - mean) / std).astype(np.float32))
    assert torch.equal(train_numeric, expected)
    for empty_row in (1, 3, 5):
        assert train_numeric[empty_row].item() == expected_fill
    val_numeric = prepared.splits["val"].inputs["numeric"][:, 0]
    assert val_numeric[1].item() == expected_fill  # a val cell gets the training median too
    assert val_numeric[0].item() == np.float32((5000.0 - mean) / std)


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (
            "c, ,a",
            "numeric column 'words' of {path} is empty at row 3 (line 4); fill it in, or set "
            "data.missing=impute to use the training median.",
        ),
        (
            "c,3,  ",
            "target 'label' of {path} is empty at row 3 (line 4); fill it in, or set "
            "data.missing=impute to skip rows without a target.",
        ),
    ],
    ids=["numeric", "target"],
)
def test_blank_cell_counts_as_empty(tmp_path, row, expected):
    """A cell of spaces is as empty as "" or " NA " (which is missing after stripping), not a value."""
    path = tmp_path / "pages.csv"
    path.write_text(csv_lines(["a,1,a", "b,2,b", row, "d,4,b"]))
    with pytest.raises(UserError) as err:
        load_frame(data_config(path, missing="error"), seed=0)
    assert str(err.value) == expected.format(path=path)


def test_na_in_a_text_column_is_text(tmp_path):
    path = tmp_path / "pages.csv"
    path.write_text(csv_lines(["NA,1,a", "null,2,b", "None,3,a", "real title,4,b"]))
    frame, _ = load_frame(data_config(path, missing="error"), seed=0)
    assert frame["title"].tolist() == ["NA", "null", "None", "real title"]


def _rows_with_empty_targets(path: Path) -> None:
    """30 rows over train/val/test in turn; rows 4 and 8 (train and val) have an empty or NA target."""
    rows = []
    for i in range(30):
        label = {3: "", 7: "NA"}.get(i, "ab"[i % 2])
        rows.append(f"page {i},{i},{label},{('train', 'val', 'test')[i % 3]}")
    path.write_text(csv_lines(rows, header=HEADER + ",part"))


def test_impute_skips_rows_without_a_target_and_says_how_many(tmp_path, caplog):
    path = tmp_path / "pages.csv"
    _rows_with_empty_targets(path)
    data = data_config(path, missing="impute", split_column="part")
    with caplog.at_level(logging.INFO, logger="seo_cli.data.pipeline"):
        splits = load_splits(data, seed=0)
    messages = [r.getMessage() for r in caplog.records]
    assert f"Skipping 2 rows of {path}: target 'label' is empty." in messages
    assert f"Data: 30 rows read from {path}; 28 used, 2 skipped -> train 9, val 9, test 10" in messages
    assert splits["train"][0].index.tolist() == [0, 6, 9, 12, 15, 18, 21, 24, 27]  # not 3
    assert 7 not in splits["val"][0].index
    assert not splits["train"][0]["label"].isna().any()


def test_empty_target_with_missing_error_names_the_row(tmp_path):
    path = tmp_path / "pages.csv"
    _rows_with_empty_targets(path)
    with pytest.raises(UserError) as err:
        load_frame(data_config(path, missing="error", split_column="part"), seed=0)
    assert str(err.value) == (
        f"target 'label' of {path} is empty at row 4 (line 5); fill it in, or set "
        "data.missing=impute to skip rows without a target."
    )


# --------------------------------------------------------------------------- data.test_path


def test_test_path_rows_are_the_test_split(tmp_path, caplog):
    main = tmp_path / "train.csv"
    main.write_text(csv_lines(good_rows(100)))
    test = tmp_path / "test.csv"
    test.write_text(csv_lines([f"held out {i},{i},{'ab'[i % 2]}" for i in range(30)]))
    data = data_config(main, test_path=str(test), val_fraction=0.2, test_fraction=0.4)
    with caplog.at_level(logging.INFO, logger="seo_cli.data.pipeline"):
        splits = load_splits(data, seed=0)
    assert {name: len(frame) for name, (frame, _) in splits.items()} == {"train": 80, "val": 20, "test": 30}
    assert splits["test"][0]["title"].tolist() == [f"held out {i}" for i in range(30)]
    assert str(splits["test"][1]) == str(test) and str(splits["train"][1]) == str(main)
    train_val = sorted(splits["train"][0].index.tolist() + splits["val"][0].index.tolist())
    assert train_val == list(range(100))  # data.path gives train + val, every row once
    assert (
        f"Data: 130 rows read from {main} and {test}; 130 used, 0 skipped -> train 80, val 20, test 30"
        in [r.getMessage() for r in caplog.records]
    )


def test_class_only_in_the_test_file_names_the_test_file_and_row(tmp_path):
    main = tmp_path / "train.csv"
    main.write_text(csv_lines(good_rows(20)))
    test = tmp_path / "test.csv"
    test.write_text(csv_lines(["x,1,a", "y,2,b", "z,3,a", "w,4,c", "v,5,c"]))
    with pytest.raises(UserError) as err:
        prepare_data(data_config(main, test_path=str(test)), seed=0)
    assert str(err.value) == (
        f"class 'c' of target 'label' is in the test split ({test}, row 4 (line 5)) but never in the "
        "training split, so the model cannot learn it; add training rows of it, or remove those rows."
    )


# --------------------------------------------------------------------------- checkpoint round trip


def _mixed_csv(path: Path, rows: int = 120) -> None:
    rng = np.random.default_rng(0)
    lines = []
    for i in range(rows):
        label = "ab"[i % 2]
        words = "" if i in (5, 50) else str(int(rng.integers(10, 2000)))
        title = f"{'buy cheap' if label == 'a' else 'learn how'} item {i}"
        cms = ("wp", "shopify", "ghost")[int(rng.integers(0, 3))]
        lines.append(f"{title},{words},{cms},{label}")
    path.write_text(csv_lines(lines, header="title,words,cms,label"))


def test_preprocessing_round_trips_through_the_checkpoint_bit_for_bit(tmp_path, compose_train):
    from seo_cli.train import train

    path = tmp_path / "mixed.csv"
    _mixed_csv(path)
    cfg = compose_train(
        "data=csv",
        f"data.path={path}",
        "data.text_columns=[title]",
        "data.numeric_columns=[words]",
        "data.categorical_columns=[cms]",
        "data.targets=[{name:label,type:classification}]",
        "data.missing=impute",
        "scheduler=none",
        "debug=smoke",
        "logger=none",
        "trainer.progress=plain",
    )
    run_dir = tmp_path / "run"
    assert train(cfg, run_dir)["status"] == "ok"
    restored = Preprocessor.from_state(load_checkpoint(run_dir / "checkpoints" / "last.pt")["preprocessing"])

    data = OmegaConf.to_object(cfg.data)
    prepared = prepare_data(data, seed=cfg.seed)  # the run's seed: the same training split
    fitted = prepared.preprocessor
    assert restored.to_state() == fitted.to_state()
    assert len(fitted.numeric_fill) == 1 and not np.isnan(fitted.numeric_fill[0])

    frame, _ = load_frame(data, seed=cfg.seed)
    assert frame["words"].isna().sum() == 2  # the empty cells are there to be imputed
    ours, theirs = restored.transform_inputs(frame), fitted.transform_inputs(frame)
    assert set(ours) == {"numeric", "categorical", "tokens"}
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    splits = load_splits(data, seed=cfg.seed)
    for name in ("train", "val", "test"):
        for key, tensor in restored.transform_inputs(splits[name][0]).items():
            assert torch.equal(tensor, prepared.splits[name].inputs[key]), (name, key)
    empty = np.flatnonzero(frame["words"].isna().to_numpy())
    fill = np.float32((fitted.numeric_fill[0] - fitted.numeric_mean[0]) / fitted.numeric_scale[0])
    assert ours["numeric"][empty, 0].tolist() == [fill, fill]

    unseen = frame.head(3).assign(cms=["wp", "drupal", "shopify"])
    codes = restored.transform_inputs(unseen)["categorical"][:, 0].tolist()
    assert codes == [
        fitted.categories["cms"].index("wp") + 1,
        0,  # a category the training split never had: the unknown slot
        fitted.categories["cms"].index("shopify") + 1,
    ]


# --------------------------------------------------------------------------- validation rules

FILE = (
    "data=csv",
    "data.path=x.csv",
    "data.text_columns=[title]",
    "data.targets=[{name:label,type:classification}]",
)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            (*FILE, "data.test_path=y.csv", "data.split_column=part"),
            "data.test_path and data.split_column both choose the test rows; keep one of them.",
        ),
        (
            ("data.column_names=[a,b]",),
            "data.column_names applies to data files only; set data=csv or remove it.",
        ),
        (("data.test_path=y.csv",), "data.test_path applies to data files only; set data=csv or remove it."),
    ],
    ids=["test-path-with-split-column", "column-names-seo-pages", "test-path-seo-pages"],
)
def test_data_file_rules_name_the_key(compose_train, overrides, expected):
    with pytest.raises(UserError) as err:
        check_train_config(compose_train(*overrides))
    assert str(err.value).splitlines() == [expected]


def test_file_options_pass_validation(compose_train):
    cfg = compose_train(
        *FILE, "data.missing=impute", "data.test_path=y.csv", "data.column_names=[title,label]"
    )
    check_train_config(cfg)
