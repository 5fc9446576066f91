"""4b. Fuzzed table files: wrong types, missing values, odd encodings, huge fields, quoting, duplicate or
missing headers, no rows. Every file either trains or stops with one sentence (a UserError), never
another exception and never a hang.

Hypothesis writes CSV, TSV and JSON Lines files from a drawn spec: a column layout, rows of mostly
sensible values of which a drawn share is replaced by hostile cells, a quoting style, a line ending and
an encoding. Each file is trained on in this process with ``data=csv``; a few go through the command
line too.
"""

import codecs
import copy
import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from seo_cli.errors import UserError
from seo_cli.train import train

from .support import QUIET, Hang, assert_clean_error, compose_train, count, run_cli, time_limit

pytestmark = pytest.mark.reliability

EXAMPLES = 60  # the suite's time budget (5 minutes on 2 cores)
CASE_SECONDS = 60

COLUMNS = ["a", "t", "c", "label", "y"]  # numeric, text, categorical, classification and regression targets
NA_TOKENS = ["", "NA", "n/a", "null", "None", "NaN", "nan", " "]
BAD_NUMBERS = [
    "abc",
    "1,5",
    "0x1F",
    "1e999",
    "inf",
    "-inf",
    " 7 ",
    "1_000",
    "\u0663",
    "--1",
    "1e-400",
    "9" * 400,
]
ODD_TEXT = [
    'say "hi"',
    "a,b,c",
    "tab\there",
    "line\nbreak",
    "cr\rreturn",
    "\ufeffbom inside",
    "caf\u00e9 na\u00efve",
    "\u4e2d\u6587 \U0001f600",
    "'single' \"double\" `back`",
    "\\",
    '"',
    "",
    "NA",
    "\x00nul",
]
# A drawn share of cells is replaced by a hostile one; 0 keeps the file clean, and it must train.
CORRUPTION = [0.0, 0.0, 0.0, 0.02, 0.1, 0.5]


@dataclass
class TableSpec:
    fmt: str  # csv | tsv | jsonl
    header: str  # normal | duplicate | missing-column | only-header | none (empty file)
    rows: list[dict] = field(default_factory=list)
    quoting: str = "minimal"  # minimal | all | nonnumeric | raw (no escaping at all)
    newline: str = "\n"
    encoding: str = "utf-8"  # what the file is written in
    declared: str = "utf-8"  # data.encoding
    missing: str = "error"  # data.missing
    huge: int = 0  # characters in one text cell (0: none)


def sensible_row(i: int) -> dict:
    label = "hi" if i % 2 else "lo"
    return {
        "a": f"{(i % 7) - 3 + (0.5 if label == 'hi' else 0)}",
        "t": f"caf\u00e9 page {i} {label}",
        "c": "pqr"[i % 3],
        "label": label,
        "y": f"{i * 0.1:.2f}",
    }


@st.composite
def hostile_cell(draw, column: str):
    if column in ("a", "y"):
        return draw(
            st.sampled_from(NA_TOKENS + BAD_NUMBERS)
            | st.floats(allow_nan=True, allow_infinity=True).map(repr)
        )
    if column == "t":
        return draw(st.sampled_from(ODD_TEXT) | st.text(max_size=30))
    if column == "c":
        return draw(st.sampled_from(["", "NA", "\u00fc", "1", "1.0", "True"]) | st.text(max_size=5))
    return draw(st.sampled_from(["", "NA", "mid", "1", "True", "hi ", "HI"]))


@st.composite
def table_specs(draw) -> TableSpec:
    fmt = draw(st.sampled_from(["csv", "tsv", "jsonl"]))
    header = draw(st.sampled_from(["normal"] * 8 + ["duplicate", "missing-column", "only-header", "none"]))
    # Mostly enough rows for a stratified three-way split (about 20), sometimes too few.
    n = (
        draw(st.sampled_from([20, 30, 40]) | st.integers(0, 40))
        if header not in ("only-header", "none")
        else 0
    )
    share = draw(st.sampled_from(CORRUPTION))
    rows = []
    for i in range(n):
        row = sensible_row(i)
        for column in COLUMNS:
            if share and draw(st.floats(0, 1)) < share:
                row[column] = draw(hostile_cell(column))
        rows.append(row)
    encoding = draw(st.sampled_from(["utf-8"] * 4 + ["utf-8-sig", "latin-1", "cp1252", "utf-16"]))
    declared = draw(st.sampled_from([encoding] * 3 + ["utf-8"]))
    return TableSpec(
        fmt=fmt,
        header=header,
        rows=rows,
        quoting=draw(st.sampled_from(["minimal", "all", "nonnumeric", "raw"])),
        newline=draw(st.sampled_from(["\n", "\r\n"])),
        encoding=encoding,
        declared=declared,
        missing=draw(st.sampled_from(["error", "impute"])),
        huge=draw(st.sampled_from([0] * 8 + [100_000, 1_000_000])),
    )


def header_of(spec: TableSpec) -> list[str]:
    if spec.header == "duplicate":
        return ["a", "t", "a", "label", "y"]  # c named a again
    if spec.header == "missing-column":
        return ["a", "c", "label", "y"]
    return list(COLUMNS)


def render(spec: TableSpec) -> str:
    """The file's text, before encoding."""
    if spec.header == "none":
        return ""
    names = header_of(spec)
    rows = [dict(r) for r in spec.rows]
    if spec.huge and rows:
        rows[len(rows) // 2]["t"] = "seo " * (spec.huge // 4)
    if spec.header == "duplicate":
        for r in rows:
            r["a2"] = r["c"]
    keys = ["a", "t", "a2", "label", "y"] if spec.header == "duplicate" else [n for n in names]
    if spec.fmt == "jsonl":
        lines = []
        for r in rows:
            obj = {}
            for name, key in zip(names, keys, strict=True):
                value = r[key]
                # Numbers as JSON numbers where they parse; a few nested values, booleans and nulls.
                try:
                    value = float(value) if name in ("a", "y") and value.strip() else value
                except ValueError:
                    pass
                obj[name] = value
            lines.append(json.dumps(obj, ensure_ascii=False))
        return spec.newline.join(lines) + (spec.newline if lines else "")
    delimiter = "," if spec.fmt == "csv" else "\t"
    table = [names] + [[str(r[key]) for key in keys] for r in rows]
    if spec.quoting == "raw":
        return spec.newline.join(delimiter.join(cells) for cells in table) + spec.newline
    buffer = io.StringIO()
    quoting = {"minimal": csv.QUOTE_MINIMAL, "all": csv.QUOTE_ALL, "nonnumeric": csv.QUOTE_NONNUMERIC}
    writer = csv.writer(
        buffer, delimiter=delimiter, quoting=quoting[spec.quoting], lineterminator=spec.newline
    )
    writer.writerows(table)
    return buffer.getvalue()


def write(spec: TableSpec, directory: Path) -> Path:
    path = directory / f"pages.{spec.fmt}"
    text = render(spec)
    # utf-8-sig writes the BOM; latin-1 and cp1252 replace what they cannot encode, as an export would.
    path.write_bytes(codecs.encode(text, spec.encoding, errors="replace"))
    return path


@pytest.fixture(scope="module")
def base_cfg():
    """The run every file is trained with; each case sets data.path, data.encoding and data.missing."""
    return compose_train(
        *QUIET,
        "data=csv",
        "data.path=placeholder.csv",
        "data.numeric_columns=[a]",
        "data.text_columns=[t]",
        "data.categorical_columns=[c]",
        "data.targets=[{name:label,type:classification},{name:y,type:regression}]",
        "data.max_length=16",
        "model.embedding_dim=8",
        "model.num_filters=4",
        "model.kernel_sizes=[2]",
        "model.tabular_hidden=[8]",
        "model.fusion_hidden=[8]",
        "scheduler=none",
    )


def train_on(spec: TableSpec, base_cfg, directory: Path) -> str:
    path = write(spec, directory)
    cfg = copy.deepcopy(base_cfg)
    cfg.data.path, cfg.data.encoding, cfg.data.missing = str(path), spec.declared, spec.missing
    try:
        with time_limit(CASE_SECONDS):
            summary = train(cfg, directory / "run")
    except UserError as err:
        assert_clean_error(str(err))
        return "clean error"
    except Hang:
        pytest.fail(f"training on this file ran for more than {CASE_SECONDS} s")
    assert summary["status"] == "ok"
    return "trained"


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(spec=table_specs())
def test_fuzzed_table_files_train_or_fail_with_one_sentence(spec, base_cfg, tmp_path_factory, cases_tried):
    result = train_on(spec, base_cfg, tmp_path_factory.mktemp("table_case"))
    count(cases_tried, "fuzzed table files (hypothesis)", result)


# Files picked by hand: what each must do.
def clean(n: int = 30) -> list[dict]:
    return [sensible_row(i) for i in range(n)]


@pytest.mark.parametrize(
    "fmt, encoding, quoting",
    [
        ("csv", "utf-8-sig", "all"),  # a BOM, as Excel writes
        ("csv", "latin-1", "nonnumeric"),
        ("csv", "utf-16", "minimal"),
        ("tsv", "cp1252", "minimal"),
        ("jsonl", "utf-8-sig", "minimal"),
    ],
)
def test_a_clean_file_trains_in_each_format_encoding_and_quoting(
    base_cfg, tmp_path, cases_tried, fmt, encoding, quoting
):
    spec = TableSpec(fmt, "normal", clean(), quoting, "\r\n", encoding, encoding)
    assert train_on(spec, base_cfg, tmp_path) == "trained"
    count(cases_tried, "hand-picked table files", "trained")


@pytest.mark.parametrize(
    "name, edit, message",
    [
        ("only-header", lambda s: setattr(s, "header", "only-header") or s.rows.clear(), "has no data rows"),
        ("empty", lambda s: setattr(s, "header", "none"), "is empty"),
        ("missing-column", lambda s: setattr(s, "header", "missing-column"), "names column 't'"),
        ("utf-16-read-as-utf-8", lambda s: setattr(s, "encoding", "utf-16"), "is not valid utf-8"),
        ("bad-number", lambda s: s.rows[4].update(a="many"), "holds the non-numeric value 'many' at row 5"),
        ("blank-target", lambda s: s.rows[2].update(label=""), "target 'label' of"),
    ],
)
def test_a_broken_file_is_one_sentence_naming_the_problem(
    base_cfg, tmp_path, cases_tried, name, edit, message
):
    spec = TableSpec("csv", "normal", clean())
    edit(spec)
    with pytest.raises(UserError) as err:
        train(_cfg_for(spec, base_cfg, tmp_path), tmp_path / "run")
    assert_clean_error(str(err.value))
    assert message in str(err.value), str(err.value)
    count(cases_tried, "hand-picked table files", "clean error")


def _cfg_for(spec: TableSpec, base_cfg, directory: Path):
    cfg = copy.deepcopy(base_cfg)
    cfg.data.path, cfg.data.encoding, cfg.data.missing = (
        str(write(spec, directory)),
        spec.declared,
        spec.missing,
    )
    return cfg


def test_a_megabyte_field_with_quotes_and_newlines_trains(base_cfg, tmp_path, cases_tried):
    rows = clean()
    rows[3]["t"] = ('he said "buy", then\nleft; ' * 40_000)[:1_000_000]
    spec = TableSpec("csv", "normal", rows, "minimal")
    assert train_on(spec, base_cfg, tmp_path) == "trained"
    count(cases_tried, "hand-picked table files", "trained")


@pytest.mark.slow  # the real command line: ~5 s of imports
def test_the_cli_stops_a_garbage_file_with_one_line_and_no_traceback(tmp_path):
    path = tmp_path / "pages.csv"
    path.write_bytes(b'a,t,c,label,y\n1,"unterminated,p,hi,1\n\xff\xfe\x00garbage\x00\n')
    result = run_cli(
        "train",
        *QUIET,
        "data=csv",
        f"data.path={path}",
        "data.numeric_columns=[a]",
        "data.text_columns=[t]",
        "data.targets=[{name:label,type:classification}]",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "Traceback" not in output and "Error executing job" not in output
    errors = [line.split("[ERROR] - ", 1)[1] for line in output.splitlines() if "[ERROR] - " in line]
    assert len(errors) == 1 and str(path) in errors[0], output[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == errors[0]
