"""Reading table files (CSV, TSV, JSON Lines, Parquet) into a pandas DataFrame."""

import bz2
import codecs
import csv
import gzip
import json
import lzma
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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

# What one table file may make seo-cli hold, checked before pandas parses it (a crafted CSV with a
# million columns, or one 2 GiB cell, took over 4 GB inside pandas). README "Limits" lists them.
# Columns: SEO exports have tens to a few hundred, one-hot dumps a few thousand; pandas spends Python
# objects and a block per column, so a million columns cost gigabytes before the first row.
MAX_COLUMNS = 10_000
# One CSV or TSV cell: a whole page's HTML is rarely over 2 MB and its text far less; pandas' tokenizer
# holds a cell in a growing buffer and then as a Python str, about three times its size.
MAX_FIELD_BYTES = 10 * 2**20
# One JSON Lines record (several cells at their limit), and a CSV or TSV header row.
MAX_LINE_BYTES = 64 * 2**20
SCAN_CHUNK = 8 * 2**20  # bytes per step of the pre-parse scan, whose memory is about ten times this


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
    columns: list[str] | None = None,
) -> tuple[pd.DataFrame, Source]:
    """Read a table file by its extension, or by ``fmt`` (csv | tsv | jsonl | parquet).

    Args:
        column_names: for a CSV or TSV without a header row, the names of its columns in order.
        encoding: the text encoding of CSV, TSV and JSON Lines files.
        text_columns: columns read as text, not guessed as numbers or dates (ids such as "000123").
        columns: of a Parquet file that has them all, only these (the others are never decoded: three
            text columns of 1,000,000 rows took 2 s of 2.4); the whole file otherwise, so that a message
            naming a missing column can list the file's columns.

    Returns:
        The rows, with a 0-based index that numbers them as they are in the file, and their source.

    Raises:
        UserError: the file is missing, empty, of an unknown format, not in ``encoding``, cannot be parsed,
            is over a limit (``MAX_COLUMNS``, ``MAX_FIELD_BYTES``, ``MAX_LINE_BYTES``), names a column
            twice, or is JSON Lines with a line that is not an object.
    """
    path = Path(path)
    fmt = _checked_format(path, fmt, column_names)
    source = Source(
        str(path), {"csv": 0 if column_names else 1, "tsv": 0 if column_names else 1, "jsonl": 0}.get(fmt)
    )
    frame = _read_frame(path, fmt, column_names, encoding, text_columns, columns)
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




def _checked_format(path: Path, fmt: str | None, column_names: list[str] | None) -> str:
    """The file's format (``fmt``, or from its extension), once the file and the column names pass the checks
    that need no reading.

    Raises:
        UserError: the file is missing or empty, its format unknown, or ``column_names`` does not apply or
            names a column twice.
    """
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
    repeated = [name for name, n in Counter(column_names or []).items() if n > 1]
    if repeated:
        raise UserError(
            f"data.column_names names {repeated[0]!r} twice; give each column of {path} its own name."
        )
    if path.stat().st_size == 0:
        raise UserError(
            f"data file {path} is empty; give a file with a header row and at least one data row."
        )
    return fmt


def _read_frame(
    path: Path,
    fmt: str,
    column_names: list[str] | None,
    encoding: str,
    text_columns: list[str] | None,
    columns: list[str] | None,
) -> pd.DataFrame:
    """The file's rows as pandas reads them, after one bounded pass checks its limits and column names.

    Raises:
        UserError: the file is over a limit, names a column twice, is not in ``encoding``, or cannot be parsed.
    """
    try:
        # Limits and repeated names first, in one bounded pass: pandas would hold a huge file's
        # worst row whole, and silently renames a second "ctr" to "ctr.1".
        wanted = None
        if fmt in ("csv", "tsv"):
            _refuse_repeated(
                scan_delimited(path, "," if fmt == "csv" else "\t", encoding, not column_names), path
            )
        elif fmt == "jsonl":
            scan_json_lines(path, encoding)
        else:
            names = _parquet_columns(path)
            _refuse_repeated(names, path)
            if columns and set(columns) <= set(names):
                wanted = [c for c in names if c in set(columns)]
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
            frame = pd.read_parquet(path, columns=wanted)
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
    return frame


def _encoding_message(path: Path, encoding: str) -> str:
    """Name the first byte that is not ``encoding`` and its line, so the user can find it; the file is
    read in chunks, so a huge one costs no more memory than a small one."""
    decoder = codecs.getincrementaldecoder(encoding)()
    lines, where = 1, ""  # lines before the decoder's input: the bytes it held back, then the chunk
    with path.open("rb") as f:
        while True:
            chunk = f.read(SCAN_CHUNK)
            held = decoder.getstate()[0]
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                data = held + chunk
                line = lines + data.count(b"\n", 0, err.start)
                where = f": byte 0x{data[err.start]:02x} at line {line}"
                break
            if not chunk:
                break
            lines += (held + chunk).count(b"\n") - decoder.getstate()[0].count(b"\n")
    return (
        f"data file {path} is not valid {encoding}{where}; set data.encoding to the file's encoding "
        "(e.g. data.encoding=latin-1 or cp1252) or re-save it as UTF-8."
    )


def check_plain_cells(frame: pd.DataFrame, columns: list[str], source: Source) -> None:
    """Refuse list, dict or array cells (Parquet list and struct columns, nested JSON) in ``columns``:
    the model reads text, numbers and class labels, and such a cell would fail deep in preprocessing.
    Columns the frame lacks are left to the caller's own message.

    Raises:
        UserError: the first such cell, naming its column and row.
    """
    for col in dict.fromkeys(c for c in columns if c in frame.columns):
        column = frame[col]
        # infer_dtype runs in C; only a column it cannot call plain is looked at cell by cell.
        if column.dtype != object or pd.api.types.infer_dtype(column, skipna=True) in _PLAIN_KINDS:
            continue
        nested = column.map(lambda v: isinstance(v, list | tuple | dict | np.ndarray)).to_numpy(dtype=bool)
        if nested.any():
            row = int(np.flatnonzero(nested)[0])
            kind = "a struct (key-value) value" if isinstance(column.iloc[row], dict) else "a list"
            raise UserError(
                f"column {col!r} of {source} holds {kind} at {source.row(row)}, not a single text, number or "
                "label; flatten it into plain columns (join a list of keywords into one text cell, say)."
            )


_PLAIN_KINDS = frozenset(
    {
        "string",
        "empty",
        "integer",
        "floating",
        "mixed-integer-float",
        "decimal",
        "boolean",
        "bytes",
    }
)


def _refuse_repeated(names: list[str] | None, path: Path) -> None:
    """A name twice in a header: pandas would rename the second ``ctr`` to ``ctr.1`` and train on the
    first without a word (empty names are pandas' ``Unnamed: n``, never a clash)."""
    repeated = [name for name, n in Counter(names or []).items() if n > 1 and name != ""]
    if repeated:
        raise UserError(
            f"the header of {path} names column {repeated[0]!r} more than once; rename or remove the "
            "repeated column, so that each name means one column."
        )


def _parquet_columns(path: Path) -> list[str]:
    """The column names in a Parquet file's footer, checked against ``MAX_COLUMNS`` before reading rows."""
    import pyarrow.parquet as pq  # pandas imports it for read_parquet anyway

    names = pq.read_schema(path).names
    if len(names) > MAX_COLUMNS:
        raise UserError(_too_many_columns(path, len(names)))
    return names


def _too_many_columns(path: Path, count: int | None) -> str:
    many = f"{count:,} columns" if count is not None else f"more than {MAX_COLUMNS:,} columns"
    return (
        f"{path} has {many}, more than the {MAX_COLUMNS:,} seo-cli reads (seo_cli.data.tables.MAX_COLUMNS); "
        "keep the columns the model uses, or check the file's separator and data.format."
    )


def scan_json_lines(path: Path, encoding: str) -> None:
    """Check a JSON Lines file line by line before pandas reads it: each line at most ``MAX_LINE_BYTES``
    characters and one JSON object with each key once; at most ``MAX_COLUMNS`` keys in all.

    Raises:
        UserError: the first line that breaks a rule, by its number.
    """
    keys: set[str] = set()
    with path.open(encoding=encoding) as f:
        number = 0
        while line := f.readline(MAX_LINE_BYTES + 1):
            number += 1
            if len(line) > MAX_LINE_BYTES:
                raise UserError(
                    f"line {number} of {path} is longer than {_size(MAX_LINE_BYTES)}, the most seo-cli "
                    "reads as one record (seo_cli.data.tables.MAX_LINE_BYTES); shorten its values."
                )
            if not line.strip():
                continue  # pandas skips blank lines too
            try:
                value = json.loads(line, object_pairs_hook=_Pairs)
            except json.JSONDecodeError as err:
                raise UserError(
                    f"line {number} of {path} is not valid JSON ({err.msg} at column {err.colno}); each line "
                    'of a JSON Lines file holds one object such as {"title": "...", "ctr": 0.1}.'
                ) from None
            if not isinstance(value, _Pairs):
                raise UserError(
                    f"line {number} of {path} is {_json_kind(value)}, not an object; each line of a JSON Lines "
                    'file holds one object such as {"title": "...", "ctr": 0.1}.'
                )
            names = [k for k, _ in value]
            if len(set(names)) < len(names):
                twice = next(k for k, n in Counter(names).items() if n > 1)
                raise UserError(
                    f"line {number} of {path} has the key {twice!r} more than once (pandas would keep only "
                    "the last); give each key once."
                )
            keys.update(names)
            if len(keys) > MAX_COLUMNS:
                raise UserError(_too_many_columns(path, None))


class _Pairs(list):
    """A JSON object as its (key, value) pairs: repeated keys stay visible, unlike in a dict."""


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, list):
        return "an array"
    return "a string" if isinstance(value, str) else "a number"


_QUOTE, _LF, _CR = ord('"'), ord("\n"), ord("\r")


def scan_delimited(path: Path, sep: str, encoding: str, header: bool) -> list[str] | None:
    """Check a CSV or TSV against ``MAX_COLUMNS`` (its first row), ``MAX_FIELD_BYTES`` (every cell) and
    ``MAX_LINE_BYTES`` (the header row) in one pass of bounded memory, before pandas reads it.

    Vectorised over chunks, and quote-aware as pandas' tokenizer is: a quote opens a quoted field
    only at the start of a field; inside one, a run of quotes of odd length closes it (``""`` is an
    escaped quote); anywhere else a quote is text (``24" monitor``). Separators and line breaks
    inside quoted fields do not end the field, so a runaway quote is one long field, and refused.

    Returns:
        With ``header``, the names of the first row as written (repeats kept); otherwise None.

    Raises:
        UserError: a limit is broken, naming it and the line.
    """
    sep_byte = ord(sep)
    inside = False  # within a quoted field, after the odd quote runs seen so far
    prev = _LF  # the byte before the chunk: the file starts with a field
    carry = b""  # a run of quotes cut by the end of a chunk, kept for the next one
    offset = 0  # position in the scanned bytes of the chunk's first byte
    lines_before = 0  # line feeds before ``offset``
    last_end, last_end_line = -1, 1  # where the last field ended, and the line after it
    first_row = _FirstRow(header)
    chunks, text_encoding = _text_chunks(path, encoding)
    for raw, final in chunks:
        data = carry + raw
        cut = len(data)
        if not final and data.endswith(b'"'):  # keep a run of quotes whole for the next chunk
            cut = len(data.rstrip(b'"'))
            if cut == 0:
                if len(data) > MAX_FIELD_BYTES:
                    raise UserError(_long_field(path, last_end_line))
                carry = data
                continue
        carry = data[cut:]
        b = np.frombuffer(data, np.uint8, count=cut)
        # Runs of quotes, and the state after each run of odd length.
        pad = np.zeros(1, np.int8)
        edges = np.diff(np.concatenate((pad, (b == _QUOTE).view(np.int8), pad)))
        starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        odd = (stops - starts) % 2 == 1
        odd_starts = starts[odd]
        before = np.where(odd_starts > 0, b[odd_starts - 1], prev)
        at_field_start = (before == sep_byte) | (before == _LF) | (before == _CR)
        # After odd run i we are inside iff it opened a field: at a field start, coming from outside.
        # A run not at a field start leaves us outside; within a streak of runs at field starts the
        # state alternates, from ``inside`` if the streak began the chunk.
        index = np.arange(len(odd_starts))
        last_other = np.maximum.accumulate(np.where(at_field_start, -1, index)) if len(index) else index
        inside_after = ((index - last_other) % 2 == 1) ^ (inside & (last_other == -1))
        # Field ends: separators and line breaks outside quoted fields.
        ends = np.flatnonzero((b == sep_byte) | (b == _LF) | (b == _CR))
        if len(odd_starts):
            # Inside or not at every byte: a running sum of the changes made at each odd run.
            change = np.zeros(cut, np.int8)
            change[odd_starts] = np.diff(inside_after.view(np.int8), prepend=np.int8(inside))
            change[0] += inside
            ends = ends[np.cumsum(change, dtype=np.int8)[ends] == 0]
        elif inside:
            ends = ends[:0]
        if len(ends):
            lengths = np.diff(ends, prepend=last_end - offset) - 1
            longest = int(np.argmax(lengths))
            if lengths[longest] > MAX_FIELD_BYTES:
                line = (
                    last_end_line
                    if longest == 0
                    else lines_before + int(np.count_nonzero(b[: ends[longest - 1] + 1] == _LF)) + 1
                )
                raise UserError(_long_field(path, line))
            last_end = offset + int(ends[-1])
            last_end_line = lines_before + int(np.count_nonzero(b[: ends[-1] + 1] == _LF)) + 1
        if offset + cut - 1 - last_end > MAX_FIELD_BYTES:  # a field still open: no need to see its end
            raise UserError(_long_field(path, last_end_line))
        if not first_row.done:
            first_row.add(path, b, ends, sep_byte)
        lines_before += int(np.count_nonzero(b == _LF))
        inside = bool(inside_after[-1]) if len(inside_after) else inside
        prev = int(b[-1]) if cut else prev
        offset += cut
    if not header:
        return None
    try:
        names = next(csv.reader([first_row.text.decode(text_encoding)], delimiter=sep), [])
    except csv.Error:  # a header csv cannot split (a name over its 128 KiB): pandas' error will say
        return None
    return [names[0].removeprefix("\ufeff"), *names[1:]] if names else []


class _FirstRow:
    """The first row of a CSV or TSV, seen chunk by chunk: its columns, and its text if it is the header."""

    def __init__(self, header: bool) -> None:
        self.header, self.columns, self.length, self.done = header, 1, 0, False
        self.text = bytearray()

    def add(self, path: Path, b: np.ndarray, ends: np.ndarray, sep_byte: int) -> None:
        """Take this chunk's part of the row; ``ends``: where fields end, outside quotes.

        Raises:
            UserError: more than ``MAX_COLUMNS`` columns, or a header over ``MAX_LINE_BYTES``.
        """
        breaks = ends[(b[ends] == _LF) | (b[ends] == _CR)].tolist()
        start = 0
        for stop in [*breaks, len(b)]:
            if self.length == 0 and stop == start and stop < len(b):
                start = stop + 1  # a blank line before the first row: pandas skips it
                continue
            self.length += stop - start
            self.columns += int(np.count_nonzero(b[ends[(ends >= start) & (ends < stop)]] == sep_byte))
            if self.columns > MAX_COLUMNS:
                raise UserError(_too_many_columns(path, None))
            if self.header:
                if self.length > MAX_LINE_BYTES:
                    raise UserError(
                        f"the header row of {path} is longer than {_size(MAX_LINE_BYTES)} "
                        "(seo_cli.data.tables.MAX_LINE_BYTES); check the file's quoting and line breaks."
                    )
                self.text += b[start:stop].tobytes()
            self.done = stop < len(b)
            return


def _size(limit: int) -> str:
    return f"{limit // 2**20} MiB" if limit % 2**20 == 0 else f"{limit:,} bytes"


def _long_field(path: Path, line: int) -> str:
    return (
        f"a cell of {path} starting at line {line} is longer than {_size(MAX_FIELD_BYTES)}, the most "
        "seo-cli reads into one cell (seo_cli.data.tables.MAX_FIELD_BYTES); shorten it, or close the "
        "quote that leaves it open."
    )


def _text_chunks(path: Path, encoding: str) -> tuple[Iterator[tuple[bytes, bool]], str]:
    """The file as bytes in which separators, quotes and line breaks are single ASCII bytes, chunk by
    chunk with a flag on the last: the file's own bytes for an ASCII-compatible encoding (UTF-8,
    Latin-1, cp1252), else re-encoded as UTF-8 (UTF-16); decompressed as pandas would for .gz, .bz2, .xz.

    Returns:
        The chunks, and the encoding their bytes are in.

    Raises:
        LookupError: ``encoding`` is not one Python knows.
    """
    probe = ',\t"\r\nAz09'
    try:
        ascii_compatible = probe.encode(encoding) == probe.encode("ascii")
    except UnicodeError:
        ascii_compatible = False
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path.suffix.lower(), open)

    def chunks() -> Iterator[tuple[bytes, bool]]:
        decoder = None if ascii_compatible else codecs.getincrementaldecoder(encoding)()
        with opener(path, "rb") as f:
            ahead = f.read(SCAN_CHUNK)
            while ahead:
                chunk, ahead = ahead, f.read(SCAN_CHUNK)
                if decoder is not None:
                    chunk = decoder.decode(chunk, final=not ahead).encode("utf-8")
                yield chunk, not ahead

    return chunks(), encoding if ascii_compatible else "utf-8"


# Words that mean "no value" in exported tables; pandas would read them as text in an object column.
NA_TOKENS = {"na", "n/a", "nan", "null", "none"}


def missing_cells(column: pd.Series) -> pd.Series:
    """True where a cell is empty or holds a missing-value word."""
    if pd.api.types.is_numeric_dtype(column):
        return column.isna()
    as_text = column.astype(str).str.strip().str.lower()
    return column.isna() | as_text.isin(NA_TOKENS) | as_text.eq("")
