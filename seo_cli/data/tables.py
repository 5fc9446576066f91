"""Reading table files (CSV, TSV, JSON Lines, Parquet) into a pandas DataFrame."""

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from seo_cli.errors import UserError

FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
}


@dataclass(frozen=True)
class Source:
    """Where rows came from, to name them in messages: ``row 7 (line 8)`` of a CSV with a header."""

    name: str
    header_lines: int | None = (
        None  # lines before the first data row; None where lines mean nothing (parquet)
    )

    def row(self, position: int) -> str:
        """``position``: 0-based data row, as in the frame's index."""
        if self.header_lines is None:
            return f"row {position + 1}"
        return f"row {position + 1} (line {position + 1 + self.header_lines})"

    def __str__(self) -> str:
        return self.name


def read_table(
    path: str | Path,
    fmt: str | None = None,
    column_names: list[str] | None = None,
    encoding: str = "utf-8",
    text_columns: list[str] | None = None,
) -> tuple[pd.DataFrame, Source]:
    """Read a table file by its extension, or by ``fmt`` (csv | tsv | jsonl | parquet).

    Args:
        column_names: for a CSV or TSV without a header row, the names of its columns in order.
        encoding: the text encoding of CSV, TSV and JSON Lines files.
        text_columns: columns read as text, not guessed as numbers or dates (ids such as "000123").

    Returns:
        The rows, with a 0-based index that numbers them as they are in the file, and their source.

    Raises:
        UserError: the file is missing, empty, of an unknown format, not in ``encoding``, or cannot be parsed.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise UserError(f"data file {path} {what}; give the path of a CSV, TSV, JSON Lines or Parquet file.")
    fmt = fmt or FORMATS.get(path.suffix.lower())
    if fmt not in FORMATS.values():
        raise UserError(
            f"cannot tell the format of {path} from its extension; set data.format to one of csv, tsv, jsonl, parquet."
        )
    if column_names and fmt not in ("csv", "tsv"):
        raise UserError(
            f"data.column_names names the columns of a header-less CSV or TSV, but {path} is {fmt}, whose "
            "columns are named in the file; remove data.column_names."
        )
    if path.stat().st_size == 0:
        raise UserError(
            f"data file {path} is empty; give a file with a header row and at least one data row."
        )
    source = Source(
        str(path), {"csv": 0 if column_names else 1, "tsv": 0 if column_names else 1, "jsonl": 0}.get(fmt)
    )
    try:
        if fmt in ("csv", "tsv"):
            frame = pd.read_csv(
                path,
                sep="," if fmt == "csv" else "\t",
                header=None if column_names else "infer",
                encoding=encoding,
                # Empty text is an empty string, not a missing value; "NA" or "null" in a title is text too.
                keep_default_na=False,
                na_values=[""],
                low_memory=False,
                dtype={c: str for c in text_columns or []} or None,
            )
        elif fmt == "jsonl":
            frame = pd.read_json(
                path,
                lines=True,
                encoding=encoding,
                convert_dates=False,
                dtype={c: str for c in text_columns or []} or None,
            )
        else:
            frame = pd.read_parquet(path)
    except UnicodeDecodeError as err:
        raise UserError(_encoding_message(path, encoding)) from err
    except LookupError as err:
        raise UserError(
            f"data.encoding={encoding} is not a text encoding Python knows; use e.g. utf-8, latin-1 or cp1252."
        ) from err
    except (ValueError, OSError, pd.errors.ParserError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"cannot read {path} as {fmt}: {first_line}; check data.format and the file."
        ) from err
    if column_names:
        if frame.shape[1] != len(column_names):
            raise UserError(
                f"data.column_names lists {len(column_names)} names but {path} has {frame.shape[1]} columns; "
                "name every column of the file, in order."
            )
        frame.columns = list(column_names)
    if frame.empty:
        raise UserError(
            f"data file {path} has no data rows; give a file with at least one row below the header."
        )
    return frame.reset_index(drop=True), source


def _encoding_message(path: Path, encoding: str) -> str:
    """Name the first byte that is not ``encoding`` and its line, so the user can find it."""
    data = path.read_bytes()
    try:
        data.decode(encoding)
        where = ""
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        where = f": byte 0x{data[err.start]:02x} at line {line}"
    return (
        f"data file {path} is not valid {encoding}{where}; set data.encoding to the file's encoding "
        "(e.g. data.encoding=latin-1 or cp1252) or re-save it as UTF-8."
    )
