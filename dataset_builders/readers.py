"""Strict, fast readers for the raw file formats, shared by all source parsers.

Each reader either returns every record of the file or raises a [`RawDataError`] naming the file and the line of the
first problem (empty file, undecodable bytes, wrong number of fields, bad header, unparsable value). Validation is
vectorized (numpy over the raw bytes, pandas' C parser for the fields) so that a 100,000-line file is read in tens of
milliseconds; only when a problem is found is the file re-scanned line by line to name the line.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import RawDataError


# A byte that never occurs in the supported text formats; multi-character separators ("::") are rewritten to it so
# that pandas' C parser (single-character separators only) can be used.
_UNIT_SEPARATOR = "\x1f"


def read_raw_bytes(path: str | Path) -> bytes:
    """Read a file (transparently gunzipping `*.gz`) and reject an empty one.

    Args:
        path (`str` or `Path`): the file.

    Returns:
        `bytes`: the (decompressed) content.

    Raises:
        RawDataError: the file is empty (or holds only white space), or a `.gz` file is corrupt.
    """
    path = Path(path)
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as error:
            raise RawDataError(path, None, f"not a valid gzip file ({error})") from None
    if not data.strip():
        raise RawDataError(path, 1, "file is empty")
    return data


# Encodings in which every byte sequence decodes: a file in another encoding is read without error but garbled, so
# these are checked for UTF-8 content ("Les MisÃ©rables" is UTF-8 read as Latin-1).
_SINGLE_BYTE = {"latin-1", "latin1", "latin_1", "iso-8859-1", "iso8859-1", "l1", "cp1252", "windows-1252"}


def _reject_wide_encoding(data: bytes, path: str | Path, encoding: str) -> None:
    """A UTF-16 / UTF-32 file (byte-order mark or NUL bytes between characters), or NUL bytes in a text file."""
    head = data[:4096]
    try:  # the name iconv knows ("latin-1" is "ISO-8859-1" there)
        iconv_name = codecs.lookup(encoding).name.upper().replace("ISO8859", "ISO-8859")
    except LookupError:
        iconv_name = encoding.upper()
    fix = f"convert it to {encoding} (e.g. `iconv -f UTF-16 -t {iconv_name} FILE > FILE.new`) or use the "
    fix += "official file"
    for bom, name in (
        (b"\xff\xfe\x00\x00", "UTF-32"),
        (b"\x00\x00\xfe\xff", "UTF-32"),
        (b"\xff\xfe", "UTF-16"),
        (b"\xfe\xff", "UTF-16"),
    ):
        if head.startswith(bom):
            raise RawDataError(
                path,
                None,
                f"the file is {name} encoded (it starts with the byte-order mark {bom.hex(' ').upper()}), but this "
                f"format is {encoding} text: {fix.replace('UTF-16', name)}",
            )
    position = data.find(b"\x00")
    if position < 0:
        return
    if head.count(0) * 4 >= len(head):  # every other byte NUL: ASCII text as UTF-16 without a byte-order mark
        raise RawDataError(
            path,
            None,
            f"the file looks UTF-16 encoded (NUL bytes between the characters), but this format is "
            f"{encoding} text: {fix}",
        )
    line = data.count(b"\n", 0, position) + 1
    raise RawDataError(path, line, "NUL byte in a text file (a truncated or corrupt copy?): use the official file")


def _reject_utf8_read_as_single_byte(data: bytes, path: str | Path, encoding: str, hint: str) -> None:
    """Refuse UTF-8 content where a single-byte encoding is expected: it would decode silently into mojibake."""
    if encoding.lower() not in _SINGLE_BYTE or data.isascii():
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return  # not UTF-8: a genuine single-byte file
    index = next(i for i, char in enumerate(text) if ord(char) > 127)
    line_start = text.rfind("\n", 0, index) + 1
    line_end = text.find("\n", index)
    line = text[line_start : line_end if line_end >= 0 else len(text)].rstrip("\r")
    column = index - line_start
    shown = line[max(0, column - 30) : column + 30]
    garbled = shown.encode("utf-8").decode(encoding, errors="replace")
    number = text.count("\n", 0, index) + 1
    hint = hint or f"convert it back to {encoding} or use the official file"
    raise RawDataError(
        path,
        number,
        f"the file is UTF-8 encoded, but the official file is {encoding}: read as {encoding}, {shown!r} would become "
        f"{garbled!r}. The file was probably re-encoded; {hint}.",
    )


def decode_text(data: bytes, path: str | Path, encoding: str, *, detect_utf8: bool = True, utf8_hint: str = "") -> str:
    """Decode bytes, reporting the line of the first undecodable byte.

    A UTF-16 / UTF-32 file, and (for single-byte encodings such as Latin-1, where every byte decodes) a UTF-8 file,
    are refused with a message naming the encoding problem instead of being decoded into garbage.

    Args:
        data (`bytes`): the file's content.
        path (`str` or `Path`): the file (named in errors).
        encoding (`str`): the expected encoding.
        detect_utf8 (`bool`): refuse UTF-8 content when `encoding` is a single-byte encoding (turn off when the user
            chose the encoding explicitly).
        utf8_hint (`str`): how to fix a UTF-8 file, e.g. "pass raw_encoding='utf-8' (--raw-encoding utf-8)".

    Example:
    ```python
    >>> decode_text(b"ok\\n\\xe9\\n", "f.txt", "utf-8")
    Traceback (most recent call last):
    ...
    dataset_builders.errors.RawDataError: f.txt, line 2: cannot decode byte 0xe9 as utf-8 ...
    ```
    """
    _reject_wide_encoding(data, path, encoding)
    if detect_utf8:
        _reject_utf8_read_as_single_byte(data, path, encoding, utf8_hint)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        byte = data[error.start : error.start + 1].hex()
        raise RawDataError(
            path,
            line,
            f"cannot decode byte 0x{byte} as {encoding} (wrong encoding? the official file is {encoding})",
        ) from None


def _strip_trailing_newlines(data: bytes) -> bytes:
    # Files end with zero, one or several newlines (u.genre ends with a blank line); none of them is a record.
    return data.rstrip(b"\r\n") + b"\n"


def _field_counts(data: bytes, sep: bytes) -> np.ndarray:
    """Number of fields on each line of `data` (which must end with a newline), computed over the raw bytes."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(buffer == ord("\n"))
    separators = np.flatnonzero(buffer == sep[0])
    line_of_separator = np.searchsorted(newlines, separators)
    return np.bincount(line_of_separator, minlength=len(newlines)) + 1


def read_delimited(
    path: str | Path,
    *,
    sep: str,
    columns: list[str],
    encoding: str,
    header: list[str] | None = None,
    usecols: list[str] | None = None,
    detect_utf8: bool = True,
    utf8_hint: str = "",
) -> pd.DataFrame:
    """Read an unquoted delimited file (tab, `|`, `,` without quotes, `::`) with strict field counts.

    Args:
        path (`str` or `Path`): the file (`.gz` allowed).
        sep (`str`): field separator; one character, or `"::"`.
        columns (`list[str]`): names of all fields of a line, in order.
        encoding (`str`): text encoding of the official file.
        header (`list[str]`, *optional*): the expected header line, if the format has one; it is checked.
        usecols (`list[str]`, *optional*): the columns to return (default: all).
        detect_utf8 (`bool`), utf8_hint (`str`): see [`decode_text`].

    Returns:
        `pd.DataFrame`: one string column per requested field, plus `line` (1-based line number in the file).

    Example:
    ```python
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "u.data"
    >>> _ = path.write_text("196\\t242\\t3\\t881250949\\n186\\t302\\t3\\t891717742\\n")
    >>> read_delimited(path, sep="\\t", columns=["user", "item", "rating", "ts"], encoding="latin-1")["item"].tolist()
    ['242', '302']
    ```
    """
    path = Path(path)
    data = read_raw_bytes(path)
    decode_text(data, path, encoding, detect_utf8=detect_utf8, utf8_hint=utf8_hint)  # errors only
    if len(sep) > 1:
        data = data.replace(sep.encode("ascii"), _UNIT_SEPARATOR.encode("ascii"))
        shown_sep, sep = sep, _UNIT_SEPARATOR
    else:
        shown_sep = sep
    data = _strip_trailing_newlines(data)
    counts = _field_counts(data, sep.encode("ascii"))
    bad = np.flatnonzero(counts != len(columns))
    if len(bad):
        line = int(bad[0]) + 1
        found = int(counts[bad[0]])
        what = "truncated line?" if found < len(columns) else "unexpected separator inside a field?"
        raise RawDataError(
            path, line, f"expected {len(columns)} {shown_sep!r}-separated fields, found {found} ({what})"
        )
    if header is not None:
        first = data[: data.index(b"\n")].decode(encoding).lstrip("\ufeff").rstrip("\r").split(sep)
        if first != list(header):
            raise RawDataError(path, 1, f"unexpected header {first!r}, expected {list(header)!r}")
    frame = pd.read_csv(
        io.BytesIO(data),
        sep=sep,
        header=None,
        names=columns,
        usecols=usecols,
        skiprows=1 if header is not None else 0,
        dtype=str,
        na_filter=False,
        quoting=csv.QUOTE_NONE,
        encoding=encoding,
        skip_blank_lines=False,
        engine="c",
    )
    if usecols is not None:
        frame = frame[list(usecols)]
    # pandas keeps a trailing "\r" of CRLF files only on the last field; official HetRec files use CRLF.
    last = columns[-1]
    if last in frame.columns and frame[last].str.endswith("\r").any():
        frame[last] = frame[last].str.rstrip("\r")
    frame["line"] = np.arange(len(frame), dtype=np.int64) + (2 if header is not None else 1)
    return frame


def read_quoted_csv(
    path: str | Path, *, encoding: str, required: list[str], detect_utf8: bool = True, utf8_hint: str = ""
) -> pd.DataFrame:
    """Read a CSV file with a header and RFC-4180 quoting (titles with commas), line by line with `csv`.

    Meant for item files (thousands of lines); interaction files without quotes go through [`read_delimited`].

    Args:
        path (`str` or `Path`): the file.
        encoding (`str`): text encoding.
        required (`list[str]`): header columns that must be present; only these are returned.
        detect_utf8 (`bool`), utf8_hint (`str`): see [`decode_text`].

    Returns:
        `pd.DataFrame`: the required columns (strings) and `line` (line where each record starts).
    """
    path = Path(path)
    data = read_raw_bytes(path)
    # tolerate a UTF-8 byte-order mark
    text = decode_text(data, path, encoding, detect_utf8=detect_utf8, utf8_hint=utf8_hint).lstrip("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader)
    missing = [name for name in required if name not in header]
    if missing:
        raise RawDataError(path, 1, f"header lacks column(s) {missing}; found {header}")
    positions = [header.index(name) for name in required]
    values: list[list[str]] = [[] for _ in required]
    lines: list[int] = []
    start = reader.line_num + 1
    try:
        for row in reader:
            if len(row) != len(header):
                if not row:
                    what = "blank line"
                else:
                    what = f"expected {len(header)} comma-separated fields, found {len(row)} (truncated line?)"
                raise RawDataError(path, start, what)
            for column, position in zip(values, positions):
                column.append(row[position])
            lines.append(start)
            start = reader.line_num + 1
    except csv.Error as error:
        raise RawDataError(path, reader.line_num, f"malformed CSV ({error})") from None
    frame = pd.DataFrame(dict(zip(required, values)), dtype=str)
    frame["line"] = np.asarray(lines, dtype=np.int64)
    return frame


def _python_type_ok(value, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    raise ValueError(kind)


def _scan_json_lines(path: Path, fields: Mapping[str, str], check: Callable[[dict], str | None] | None) -> None:
    """Re-read a JSON-lines file line by line and raise at the first malformed record."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                raise RawDataError(path, number, "blank line")
            try:
                record = json.loads(raw)
            except UnicodeDecodeError as error:
                raise RawDataError(path, number, f"cannot decode as utf-8 ({error.reason})") from None
            except json.JSONDecodeError as error:
                raise RawDataError(path, number, f"invalid JSON ({error.msg}; truncated line?)") from None
            if not isinstance(record, dict):
                raise RawDataError(path, number, "expected a JSON object")
            for name, kind in fields.items():
                if name not in record:
                    raise RawDataError(path, number, f"missing key {name!r}")
                if not _python_type_ok(record[name], kind):
                    raise RawDataError(path, number, f"key {name!r} should be {kind}, found {record[name]!r}")
            if check is not None and (problem := check(record)):
                raise RawDataError(path, number, problem)


def read_json_lines(
    path: str | Path, *, fields: Mapping[str, str], check: Callable[[dict], str | None] | None = None
) -> pd.DataFrame:
    """Read a JSON-lines file (`.gz` allowed) keeping only `fields`, with pyarrow's multi-threaded parser.

    Args:
        path (`str` or `Path`): the file.
        fields (`Mapping[str, str]`): key -> kind (`"string"`, `"int"`, `"bool"`); every record must have them.
        check (`Callable[[dict], str | None]`, *optional*): per-record check used only to locate a problem that the
            caller found in the returned frame (see [`raise_at_first`]); returns a message or `None`.

    Returns:
        `pd.DataFrame`: one column per field and `line` (1-based; JSON-lines files have one record per line).
    """
    import pyarrow as pa
    import pyarrow.json as pa_json

    path = Path(path)
    if path.stat().st_size == 0:
        raise RawDataError(path, 1, "file is empty")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            _reject_wide_encoding(handle.read(4096), path, "utf-8")  # JSON lines are UTF-8
    except (OSError, EOFError):
        pass  # a corrupt .gz: reported below, with the parser's message
    kinds = {"string": pa.string(), "int": pa.int64(), "bool": pa.bool_()}
    schema = pa.schema([(name, kinds[kind]) for name, kind in fields.items()])
    options = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    try:
        stream = pa.input_stream(str(path), compression="gzip" if path.suffix == ".gz" else None)
        table = pa_json.read_json(stream, parse_options=options, read_options=pa_json.ReadOptions(block_size=1 << 24))
    except (pa.ArrowInvalid, OSError, EOFError) as error:
        _scan_json_lines(path, fields, check)
        raise RawDataError(path, None, f"cannot parse JSON lines ({error})") from None
    if table.num_rows == 0:
        raise RawDataError(path, 1, "file is empty")
    if any(table.column(name).null_count for name in fields):
        _scan_json_lines(path, fields, check)  # names the line of the missing key
        raise RawDataError(path, None, "some records lack required keys")
    frame = table.to_pandas()
    frame["line"] = np.arange(1, len(frame) + 1, dtype=np.int64)
    return frame


def raise_at_first(path: str | Path, frame: pd.DataFrame, bad: np.ndarray | pd.Series, message: Callable) -> None:
    """Raise a [`RawDataError`] at the first row of `frame` where `bad` is true.

    Args:
        path: the file the rows come from.
        frame (`pd.DataFrame`): rows with a `line` column.
        bad (`np.ndarray` or `pd.Series`): boolean mask over the rows.
        message (`Callable`): `row -> str`, the error text for the offending row (a `pd.Series`).
    """
    bad = np.asarray(bad, dtype=bool)
    if bad.any():
        position = int(np.flatnonzero(bad)[0])
        row = frame.iloc[position]
        raise RawDataError(path, int(row["line"]), message(row))


def parse_integers(frame: pd.DataFrame, column: str, path: str | Path) -> np.ndarray:
    """Convert a string column to int64, naming the line of the first non-integer value."""
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna().to_numpy() | (values.to_numpy(dtype=float, na_value=0.0) % 1 != 0)
    raise_at_first(path, frame, bad, lambda row: f"{column} must be an integer, found {row[column]!r}")
    return values.to_numpy().astype(np.int64)


def parse_floats(frame: pd.DataFrame, column: str, path: str | Path) -> np.ndarray:
    """Convert a string column to float64, naming the line of the first non-numeric value."""
    values = pd.to_numeric(frame[column], errors="coerce")
    raise_at_first(path, frame, values.isna(), lambda row: f"{column} must be a number, found {row[column]!r}")
    return values.to_numpy(dtype=np.float64)


def require_values(frame: pd.DataFrame, column: str, path: str | Path) -> None:
    """Reject empty values (after stripping white space) in an id column."""
    raise_at_first(path, frame, frame[column].str.strip() == "", lambda row: f"empty {column}")
