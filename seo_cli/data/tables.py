"""Reading table files (CSV, TSV, JSON Lines, Parquet) into a pandas DataFrame."""

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


def read_table(path: str | Path, fmt: str | None = None) -> pd.DataFrame:
    """Read a table file by its extension, or by ``fmt`` (csv | tsv | jsonl | parquet).

    Raises:
        UserError: the file is missing, empty, of an unknown format, or cannot be parsed.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise UserError(f"data.path {path} {what}; give the path of a CSV, TSV, JSON Lines or Parquet file.")
    fmt = fmt or FORMATS.get(path.suffix.lower())
    if fmt not in FORMATS.values():
        raise UserError(
            f"cannot tell the format of {path} from its extension; set data.format to one of csv, tsv, jsonl, parquet."
        )
    if path.stat().st_size == 0:
        raise UserError(
            f"data file {path} is empty; give a file with a header row and at least one data row."
        )
    try:
        if fmt == "csv":
            frame = pd.read_csv(path)
        elif fmt == "tsv":
            frame = pd.read_csv(path, sep="\t")
        elif fmt == "jsonl":
            frame = pd.read_json(path, lines=True)
        else:
            frame = pd.read_parquet(path)
    except (ValueError, OSError, pd.errors.ParserError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"cannot read {path} as {fmt}: {first_line}; check data.format and the file."
        ) from err
    if frame.empty:
        raise UserError(
            f"data file {path} has no data rows; give a file with at least one row below the header."
        )
    return frame
