"""Tables: the schema inferred at fit, and the checks every scored row passes through.

A column is one of three kinds:

- ``numeric``: floats; missing values allowed.
- ``boolean``: true/false (also 1/0, yes/no, t/f, y/n in text); missing values allowed.
- ``categorical``: text; the most frequent levels seen at fit are kept, any other level
  (and a missing value) counts as unseen.

The schema is the one place that decides which columns a model reads, in which order, and how a
raw value becomes a number. It is plain data (``to_dict``/``from_dict``) so it lives in JSON.
"""

from __future__ import annotations

import csv
import datetime
import functools
import hashlib
import io
import itertools
import json
import logging
import math
import reprlib
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from anomaly.errors import InputError

# The csv module (headers, and naming a bad row) reads fields as long as pandas and Arrow do,
# not only up to its default 128 KiB: a limit raised for the process, never lowered.
csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))

log = logging.getLogger(__name__)

NUMERIC, BOOLEAN, CATEGORICAL = "numeric", "boolean", "categorical"
KINDS = (NUMERIC, BOOLEAN, CATEGORICAL)

# Text read as a missing value, in every column, when reading CSV files (pandas' defaults).
NA_VALUES = (
    "",
    "#N/A",
    "#N/A N/A",
    "#NA",
    "-1.#IND",
    "-1.#QNAN",
    "-NaN",
    "-nan",
    "1.#IND",
    "1.#QNAN",
    "<NA>",
    "N/A",
    "NA",
    "NULL",
    "NaN",
    "None",
    "n/a",
    "nan",
    "null",
)
# Spellings of a boolean value (lower-cased, stripped); label columns reuse them.
TRUE_WORDS = frozenset({"true", "t", "yes", "y", "1", "1.0"})
FALSE_WORDS = frozenset({"false", "f", "no", "n", "0", "0.0"})
_NA_ARROW = pa.array(NA_VALUES, pa.string())
_TRUE_SORTED = sorted(TRUE_WORDS)
# An index below len(TRUE_WORDS) spells true.
_BOOL_ARROW = pa.array(_TRUE_SORTED + sorted(FALSE_WORDS), pa.string())
# The same words as files usually spell them (true, True, TRUE): matched without lower-casing.
_CASED_TRUE, _CASED_FALSE = (
    list(dict.fromkeys(case(w) for case in (str.lower, str.title, str.upper) for w in words))
    for words in (_TRUE_SORTED, sorted(FALSE_WORDS))
)
_BOOL_CASED = pa.array(_CASED_TRUE + _CASED_FALSE, pa.string())


@dataclass(frozen=True)
class Column:
    """One model input column.

    Parameters
    ----------
    name : str
        Column name, as in the data.
    kind : {"numeric", "boolean", "categorical"}
        How values are read.
    categories : tuple of str
        Levels kept for a categorical column, most frequent first; empty otherwise.
    """

    name: str
    kind: str
    categories: tuple[str, ...] = ()


@dataclass(frozen=True)
class TabularSchema:
    """The columns a detector reads, inferred from normal training data.

    Parameters
    ----------
    columns : tuple of Column
        Model inputs, in the order the model sees them.
    ignored : dict
        Columns present at fit that the model does not read, mapped to the reason
        ("excluded", "all values missing").
    """

    columns: tuple[Column, ...]
    ignored: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @classmethod
    def infer(
        cls,
        frame: pd.DataFrame,
        *,
        exclude: Iterable[str] = (),
        max_categories: int = 64,
    ) -> TabularSchema:
        """Infer the schema from a DataFrame of normal rows.

        Columns named in ``exclude`` are ignored (they must exist). An all-missing column is
        ignored with a warning. A datetime column must be excluded explicitly: a timestamp is
        not a feature of a row. A categorical column keeps its ``max_categories`` most frequent
        levels.
        """
        if frame.shape[0] == 0:
            raise InputError("the training data has no rows")
        exclude = [str(c) for c in exclude]  # as the frame's names are (0 is "0")
        unknown = [c for c in exclude if c not in frame.columns]
        if unknown:
            raise InputError(
                f"cannot exclude column {unknown[0]!r}: no such column", column=unknown[0]
            )
        duplicated = frame.columns[frame.columns.duplicated()]
        if len(duplicated):
            raise InputError(f"column {duplicated[0]!r} appears twice", column=str(duplicated[0]))

        columns: list[Column] = []
        ignored = {str(c): "excluded" for c in exclude}
        for name in frame.columns:
            name = str(name)
            if name in ignored:
                continue
            series = frame[name]
            if series.isna().all():
                log.warning("column %r: all values missing at fit; it is ignored", name)
                ignored[name] = "all values missing"
                continue
            columns.append(_infer_column(name, series, max_categories))
        if not columns:
            raise InputError("no usable columns: every column is excluded or all missing")
        for col in columns:
            if ";" in col.name:  # top_features joins names with it
                raise InputError(
                    f"column {col.name!r}: a column the model reads cannot have ';' in its "
                    "name (it separates the names in top_features); rename or exclude it",
                    column=col.name,
                )
        return cls(tuple(columns), ignored)

    def coerce(self, frame: pd.DataFrame, *, row_offset: int = 0) -> dict[str, np.ndarray]:
        """Check a DataFrame against the schema and return each model column as an array.

        Numeric and boolean columns come back as float64 with NaN for missing; categorical
        columns as integer codes into ``Column.categories``, -1 for unseen or missing. Extra
        columns are left alone.

        Raises
        ------
        InputError
            Naming the column and the first bad row (``row_offset`` + position) when a column
            is missing, a numeric value is not a number or is infinite, or a boolean value is
            not one of the accepted spellings.
        """
        missing = [c for c in self.names if c not in frame.columns]
        if missing:
            raise InputError(
                f"missing column {missing[0]!r}, one of the {len(self.names)} the model reads",
                column=missing[0],
            )
        repeated = [c for c in self.names if (frame.columns == c).sum() > 1]
        if repeated:
            raise InputError(f"column {repeated[0]!r} appears twice", column=repeated[0])
        out = {}
        for col in self.columns:
            series = frame[col.name]
            if col.kind == NUMERIC:
                out[col.name] = to_numbers(series, col.name, row_offset)
            elif col.kind == BOOLEAN:
                out[col.name] = _to_bool(series, col.name, row_offset)
            else:
                out[col.name] = _to_codes(series, col.name, col.categories, row_offset)
        return out

    def coerce_text(self, table: pa.Table | pa.RecordBatch, *, row_offset: int = 0) -> dict:
        """:meth:`coerce` for columns of CSV text, parsed by Arrow without leaving C++.

        The text rules of every path that reads CSV for a model: the batch scorer, and
        :func:`read_csv` given the model's schema. A column that Arrow cannot parse goes
        through :meth:`coerce`'s checks, which name the first bad row; so there is one set of
        rules and one set of error messages.
        """
        out = {}
        for col in self.columns:
            values = table.column(col.name)
            try:
                out[col.name] = _parse_text(values, col)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                text = pd.DataFrame({col.name: without_na_tokens(values).to_pandas()})
                out[col.name] = TabularSchema((col,)).coerce(text, row_offset=row_offset)[col.name]
        return out

    def coerce_records(self, records: Sequence[Mapping], *, row_offset: int = 0) -> dict:
        """:meth:`coerce` for records (parsed JSON objects), without building a DataFrame.

        A column whose values are all JSON numbers (numeric), booleans (boolean) or strings
        (categorical), or null, is converted directly; any other column goes through
        :meth:`coerce`, so there is one set of rules and one set of error messages. Records
        lacking a column count as missing values there; callers that want them refused check
        first.
        """
        out = {}
        for col in self.columns:
            values = [record.get(col.name) for record in records]
            direct = _from_json(values, col)
            if direct is None:
                frame = pd.DataFrame({col.name: pd.Series(values, dtype=object)})
                direct = TabularSchema((col,)).coerce(frame, row_offset=row_offset)[col.name]
            out[col.name] = direct
        return out

    def to_dict(self) -> dict:
        return {
            "columns": [
                {"name": c.name, "kind": c.kind, "categories": list(c.categories)}
                for c in self.columns
            ],
            "ignored": dict(self.ignored),
        }

    @classmethod
    def from_dict(cls, data: dict) -> TabularSchema:
        columns = tuple(
            Column(c["name"], c["kind"], tuple(c.get("categories", ()))) for c in data["columns"]
        )
        if not columns:
            raise ValueError("the schema names no columns")
        for col in columns:
            if col.kind not in KINDS:
                raise ValueError(f"column {col.name!r} is of no known kind ({col.kind!r})")
            if (col.kind == CATEGORICAL) != bool(col.categories):
                raise ValueError(f"column {col.name!r}: levels do not match its kind")
        return cls(columns, dict(data.get("ignored", {})))

    def fingerprint(self) -> str:
        """A short hash of the schema: equal schemas, equal fingerprints."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def read_csv(
    source: str | Path | BinaryIO,
    *,
    name: str | None = None,
    schema: TabularSchema | None = None,
    as_text: Sequence[str | None] = (),
) -> pd.DataFrame:
    """Read a whole CSV file (or a binary stream, e.g. a request body) with clear errors.

    Parameters
    ----------
    source : path or binary stream
        The CSV file, or its bytes (read to the end).
    name : str, optional
        What ``source`` is, in error messages (default: the path).
    schema : TabularSchema, optional
        The columns a table model reads, when it is known (scoring, evaluating, retraining).
        Those columns are then read as text and converted by
        :meth:`TabularSchema.coerce_text`, the batch scorer's own rules: so a file gives the
        same values, hence the same scores, and the same errors (naming the column and row)
        here as in ``anomaly score``. They come back as the model reads them: numeric columns
        as float64 (NaN for missing), boolean ones as pandas' nullable ``boolean``,
        categorical ones as text (an empty field, or a missing-value token that is not one
        of the kept levels, is missing). A column the model reads that the file lacks is left
        out, for the caller to report.
    as_text : column names
        Columns read as written, only an empty field missing: a time series' timestamps and
        series ids, where ``NA`` may name a series (Namibia) and the batch scorer reads them
        so too. Names not in the file, and None, are passed over.

    Every other column (and every column without a schema, as at training, where kinds are
    inferred from the data) is read by pandas, which infers its type; the missing-value
    tokens (:data:`NA_VALUES`) are missing. The file is parsed by pandas, then by Arrow (one
    column converted), which refuses a row with fields left off as the batch scorer does.

    Raises
    ------
    InputError
        For a missing, empty or malformed file, a repeated or empty column name, a header
        without rows, and (with ``schema``) a bad value in a column the model reads.
    """
    # A stream is read once, into bytes that the header checks and the parser share.
    data = None if isinstance(source, str | Path) else source.read()
    source = Path(source) if data is None else io.BytesIO(data)
    name = name or (str(source) if data is None else "the CSV data")
    # Checked as written: pandas would rename a repeated name ("a.1") or an empty one
    # ("Unnamed: 2"), and a model trained on such names could not score the same file.
    leading = _leading_rows(source, 2, name)
    header = _checked_header(leading, name)
    # pandas would take a first field more than the header names as the rows' index, and
    # shift every value one column left.
    if len(leading) > 1 and len(leading[1]) > len(header):
        raise _in_source(ragged_row_error(0, len(leading[1]), header), source, name)
    reads = TabularSchema(tuple(c for c in (schema.columns if schema else ()) if c.name in header))
    text = {*reads.names, *(c for c in as_text if c in header)}
    if not isinstance(source, Path):
        source.seek(0)
    try:
        frame = pd.read_csv(
            source,
            dtype={c: str for c in text},
            low_memory=False,
            keep_default_na=False,
            na_values={c: [""] if c in text else list(NA_VALUES) for c in header},
        )
    except pd.errors.EmptyDataError:
        raise InputError(f"{name} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        ragged = (
            first_ragged_row(source, len(header))
            if isinstance(exc, pd.errors.ParserError)
            else None
        )
        if ragged is not None:
            raise _in_source(ragged_row_error(*ragged, header), source, name) from None
        raise InputError(f"{name} is not a well-formed CSV file: {exc}") from None
    if frame.shape[0] == 0:
        raise InputError(f"{name} has a header but no rows")
    # pandas fills a row's missing last fields with NaN, and skips a line of spaces: Arrow
    # reads the file again (a third of pandas' time) to refuse both, as the batch scorer does.
    _refuse_short_rows(source, header, name)
    if reads.columns:
        table = pa.table(
            {c: pa.array(frame[c], pa.string(), from_pandas=True) for c in reads.names}
        )
        try:
            values = reads.coerce_text(table)
        except InputError as exc:
            if exc.row is None:
                raise
            raise _in_source(exc, source, name) from None
        for col in reads.columns:
            frame[col.name] = _frame_column(col, values[col.name], table.column(col.name))
    return frame


# Quoted values may hold line breaks, as pandas reads them; Arrow's block reader otherwise
# splits blocks inside them. (No slower here: blocks are parsed one at a time.)
CSV_PARSE_OPTIONS = pacsv.ParseOptions(newlines_in_values=True)


def text_convert_options(names: Iterable[str]) -> pacsv.ConvertOptions:
    """How Arrow reads the CSV columns ``names`` for :meth:`TabularSchema.coerce_text`: as
    text, an empty field (quoted or not) as null and any other as written."""
    return pacsv.ConvertOptions(
        column_types={name: pa.string() for name in names},
        strings_can_be_null=True,
        null_values=[""],
    )


def text_blocks(
    source: Path | BinaryIO,
    header: list[str],
    *,
    name: str,
    block_size: int = 2 << 20,
    columns: Sequence[str] | None = None,
) -> Iterator[tuple[pa.RecordBatch, int]]:
    """A CSV file's (or stream's) record batches of text columns (``columns``, by default
    all), each with the bytes read so far (Arrow reads ahead). A row with fields left off or
    added is an InputError naming the row (counted from 0 after the header); the caller
    names the file and line.

    Arrow opens the file itself: its read-ahead threads then never call into Python, which
    could abort the interpreter as it exits after a parse error (apache/arrow#34314).
    """
    stream = (
        pa.OSFile(str(source)) if isinstance(source, Path) else pa.BufferReader(source.getvalue())
    )
    convert = text_convert_options(header if columns is None else columns)
    if columns is not None:
        convert.include_columns = list(columns)
    try:
        with stream:
            reader = pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(block_size=block_size),
                parse_options=CSV_PARSE_OPTIONS,
                convert_options=convert,
            )
            for batch in reader:
                yield batch, stream.tell()
    except pa.ArrowInvalid as exc:
        ragged = first_ragged_row(source, len(header))
        if ragged is None:
            raise InputError(f"{name} is not a well-formed CSV file: {exc}") from None
        raise ragged_row_error(*ragged, header) from None


def line_of(path: Path, row: int) -> int:
    """The line (from 1, the header's) where data row ``row`` (from 0) starts, for errors.

    It is ``row + 2`` unless a quoted value holds a line break, or blank lines (which the
    readers skip) come before it: then the rows before it are read again with the csv
    module, which counts the lines each one spans."""
    if _plain_lines(path, row + 1):
        return row + 2
    with open(path, newline="", encoding="utf-8", errors="replace") as text:
        reader = csv.reader(text)
        records, last_line = 0, 0  # the header is record 0
        for fields in reader:
            if fields:
                if records == row + 1:
                    return last_line + 1
                records += 1
            last_line = reader.line_num
    return row + 2  # not reached for a row that was read


def in_file(exc: InputError, path: Path, rows: np.ndarray | None = None) -> InputError:
    """``exc`` naming the file, and the line of its row: rows count from 0 after the header,
    an editor's lines from 1 at the header. ``rows``: the file's row at each position
    ``exc`` counts, when it was raised on some of the file's rows (those labelled normal)."""
    if exc.row is None:
        return exc
    message, row = str(exc), exc.row
    if rows is not None:
        row = int(rows[exc.row])
        message = message.replace(f"row {exc.row}", f"row {row}", 1)
    line = line_of(path, row)
    return InputError(f"{path}: {message} (line {line} of the file)", column=exc.column, row=row)


def first_ragged_row(source: Path | BinaryIO, n_fields: int) -> tuple[int, int] | None:
    """The first data row (from 0) of a CSV file or stream that has not ``n_fields`` fields,
    and how many it has; None if every row has them, or if the csv module cannot read the
    file (a field past its size limit). Read with the csv module: for errors (a stream is read
    from its start, and left there)."""
    try:
        if isinstance(source, Path):
            with open(source, newline="", encoding="utf-8-sig", errors="replace") as text:
                return _first_ragged(csv.reader(text), n_fields)
        source.seek(0)
        text = io.TextIOWrapper(source, encoding="utf-8-sig", errors="replace", newline="")
        try:
            return _first_ragged(csv.reader(text), n_fields)
        finally:
            text.detach()
            source.seek(0)
    except csv.Error:
        return None


def _first_ragged(reader, n_fields: int) -> tuple[int, int] | None:
    rows = (fields for fields in reader if fields)  # the readers skip blank lines
    next(rows, None)  # the header
    for row, fields in enumerate(rows):
        if len(fields) != n_fields:
            return row, len(fields)
    return None


def ragged_row_error(row: int, fields: int, header: Sequence[str]) -> InputError:
    """The error for a row with more or fewer fields than the header names."""
    return InputError(
        f"row {row} has {fields} fields, the header {len(header)} names; write each row's "
        "fields in full, empty ones too",
        row=row,
    )


def _plain_lines(path: Path, lines: int) -> bool:
    """Whether the first ``lines`` lines of ``path`` are one record each: no quote, carriage
    return or blank line among them (a chunk at a time, stopping once they are seen)."""
    seen, previous = 0, b"\n"  # a blank first line counts as blank
    with open(path, "rb") as raw:
        while seen < lines and (chunk := raw.read(1 << 20)):
            if b'"' in chunk or b"\r" in chunk or b"\n\n" in previous[-1:] + chunk:
                return False
            seen += chunk.count(b"\n")
            previous = chunk
    return True


def _frame_column(col: Column, values: np.ndarray, text: pa.ChunkedArray) -> np.ndarray | pd.Series:
    """A column converted by :meth:`TabularSchema.coerce_text`, as a DataFrame holds it; the
    schema's checks read it back as the same numbers."""
    if col.kind == NUMERIC:
        return values
    if col.kind == BOOLEAN:
        return pd.Series(pd.arrays.BooleanArray(values == 1.0, np.isnan(values)))
    # Text, as matched against the levels: a missing-value token is missing unless it is a
    # kept level (it would then match, as it does in the batch scorer).
    tokens = [t for t in NA_VALUES if t not in set(col.categories)]
    missing = pc.is_in(text, pa.array(tokens, pa.string()))
    if pc.any(missing).as_py():
        text = pc.if_else(missing, pa.nulls(len(text), pa.string()), text)
    return text.to_pandas()


def _parse_text(values: pa.Array, col: Column) -> np.ndarray:
    """Arrow's fast path of :meth:`TabularSchema.coerce_text`; raises ArrowInvalid on doubt.

    Missing-value tokens are only looked for when a column does not parse without them:
    most columns have none, and the lookup is a large share of the work.
    """
    if col.kind == CATEGORICAL:  # a missing-value token is never a kept level: it codes -1
        codes = pc.index_in(values, pa.array(col.categories, pa.string()))
        return pc.fill_null(codes, -1).to_numpy().astype(np.int64)
    if col.kind == NUMERIC:
        try:
            parsed = pc.cast(values, pa.float64())
        except pa.ArrowInvalid:
            parsed = pc.cast(without_na_tokens(values), pa.float64())
        parsed = parsed.to_numpy(zero_copy_only=False)
        if np.isinf(parsed).any():
            raise pa.ArrowInvalid("infinite value")
        nan = np.isnan(parsed)  # Arrow reads any "nan" spelling; read_csv only its tokens
        if nan.any():  # a null (an empty field) is missing already: not a spelling to check
            spelled = values.filter(nan).drop_null()
            if not pc.all(pc.is_in(spelled, _NA_ARROW), min_count=0).as_py():
                raise pa.ArrowInvalid("a spelling of nan that is not a missing-value token")
        return parsed
    spelled, n_true = pc.index_in(values, _BOOL_CASED), len(_CASED_TRUE)
    if spelled.null_count > values.null_count:  # other spellings, missing-value tokens or bad
        loose = pc.utf8_lower(pc.utf8_trim_whitespace(values))
        spelled, n_true = pc.index_in(loose, _BOOL_ARROW), len(_TRUE_SORTED)
        unknown = pc.and_(pc.is_null(spelled), pc.is_valid(values))
        if pc.any(pc.and_(unknown, pc.invert(pc.is_in(values, _NA_ARROW)))).as_py():
            raise pa.ArrowInvalid("not a boolean")
    return pc.cast(pc.less(spelled, n_true), pa.float64()).to_numpy(zero_copy_only=False)


def without_na_tokens(values: pa.Array) -> pa.Array:
    """Text with the missing-value tokens (:data:`NA_VALUES`) made null."""
    return pc.if_else(pc.is_in(values, _NA_ARROW), pa.nulls(len(values), pa.string()), values)


def csv_header(source: Path | BinaryIO, *, name: str | None = None) -> list[str]:
    """The column names of a CSV file's header, as written; a repeated or empty name is an
    error."""
    name = name or str(source)
    return _checked_header(_leading_rows(source, 1, name), name)


def _checked_header(rows: list[list[str]], name: str) -> list[str]:
    if not rows or not rows[0]:
        raise InputError(f"{name} is empty")
    seen: set[str] = set()
    for position, column in enumerate(rows[0]):
        if not column.strip():  # pandas would call it "Unnamed: 6"; a trailing comma does this
            raise InputError(f"{name}: column {position + 1} of the header has no name")
        if column in seen:
            raise InputError(f"{name}: column {column!r} appears twice", column=column)
        seen.add(column)
    return rows[0]


def _refuse_short_rows(source: Path | BinaryIO, header: list[str], name: str) -> None:
    """Refuse a row with fields left off (or a line of spaces) as the batch scorer does: its
    reader drains the file, converting one column."""
    try:
        for _ in text_blocks(source, header, name=name, columns=header[:1]):
            pass
    except InputError as exc:
        raise (exc if exc.row is None else _in_source(exc, source, name)) from None


def _in_source(exc: InputError, source: Path | BinaryIO, name: str) -> InputError:
    """``exc`` naming what ``read_csv`` reads: a file and the line of the row, or a stream
    (a request body, whose rows are named by number only)."""
    if isinstance(source, Path):
        return in_file(exc, source)
    return InputError(f"{name}: {exc}", column=exc.column, row=exc.row)


def _leading_rows(source: Path | BinaryIO, count: int, name: str) -> list[list[str]]:
    """The first ``count`` rows of a CSV file or stream (a stream is left where it was)."""
    try:
        if isinstance(source, Path):
            if source.is_dir():
                raise InputError(f"{source} is a folder; give a CSV file")
            if not source.is_file():
                raise InputError(f"no such file: {source}")
            with open(source, newline="", encoding="utf-8-sig") as fh:  # -sig: Excel's BOM
                return list(itertools.islice(csv.reader(fh), count))
        start = source.tell()
        text = io.TextIOWrapper(source, encoding="utf-8-sig", newline="")
        try:
            return list(itertools.islice(csv.reader(text), count))
        finally:
            text.detach()
            source.seek(start)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{name} is not a well-formed CSV file: {exc}") from None


# Kinds of values pandas.api.types.infer_dtype finds in a column that may hold numbers
_MAYBE_NUMBERS = ("string", "mixed", "mixed-integer", "mixed-integer-float", "integer", "floating")


# What pandas infers for an object column of numbers (Decimal from a database, Python ints or
# floats), and of dates, times and durations.
_OBJECT_NUMBERS = ("integer", "floating", "mixed-integer-float", "decimal")
_OBJECT_TIMES = ("datetime", "datetime64", "date", "time", "timedelta", "timedelta64", "period")


def _infer_column(name: str, series: pd.Series, max_categories: int) -> Column:
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return Column(name, BOOLEAN)
    inferred = None
    if pd.api.types.is_object_dtype(dtype):
        inferred = pd.api.types.infer_dtype(series, skipna=True)
    if _holds_times(dtype) or inferred in _OBJECT_TIMES:
        # As numbers they would be nanoseconds; as text, every value a level of its own.
        raise InputError(
            f"column {name!r} holds dates, times or durations; exclude it (--exclude {name}) "
            "or turn it into numbers",
            column=name,
        )
    if pd.api.types.is_numeric_dtype(dtype) or inferred in _OBJECT_NUMBERS:
        return Column(name, NUMERIC)
    text = series.dropna().astype(str).str.strip().str.lower()
    if len(text) and text.isin(TRUE_WORDS | FALSE_WORDS).all() and text.nunique() <= 2:
        return Column(name, BOOLEAN)
    counts = series.dropna().astype(str).value_counts(sort=False)
    # A column of numbers with a stray word ("ERR") reads as text, and is learned as levels:
    # said, naming the words. (Codes such as "7", "12", "A" are levels: not refused.)
    if not isinstance(dtype, pd.CategoricalDtype) and (
        words := _words_among_numbers(series, counts)
    ):
        log.warning(
            "column %r: most of its values are numbers, but not %s: it is read as categorical "
            "levels (fix them if they are typos, or exclude the column)",
            name,
            ", ".join(map(repr, words[:3]))
            + (f" and {len(words) - 3} more" if len(words) > 3 else ""),
        )
    # Most frequent first; ties broken by name so the order never depends on row order.
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    if len(ranked) > max_categories:
        log.warning(
            "column %r: %d levels, keeping the %d most frequent; the rest count as unseen",
            name,
            len(ranked),
            max_categories,
        )
    if len(ranked) == len(series) and len(series) > max_categories:
        log.warning("column %r: every value is distinct; is it an identifier to exclude?", name)
    return Column(name, CATEGORICAL, tuple(k for k, _ in ranked[:max_categories]))


def _holds_times(dtype: object) -> bool:
    """Whether a column of this dtype holds dates, times or durations (numpy's or Arrow's)."""
    if isinstance(dtype, pd.ArrowDtype):
        return pa.types.is_temporal(dtype.pyarrow_dtype)
    return (
        pd.api.types.is_datetime64_any_dtype(dtype)
        or pd.api.types.is_timedelta64_dtype(dtype)
        or isinstance(dtype, pd.PeriodDtype)
    )


def with_text_names(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with one text name per column, as schemas name them: numbers as names
    (``pd.DataFrame(array)``'s 0, 1) become "0", "1"; several levels (a MultiIndex) are
    refused."""
    if isinstance(frame.columns, pd.MultiIndex):
        raise InputError("the columns have several levels (a MultiIndex): give one name each")
    if all(isinstance(c, str) for c in frame.columns):
        return frame
    return frame.rename(columns=str)


def mostly_numbers(column: pd.Series) -> bool:
    """Whether more than half of a text column's values are numbers."""
    return _words_among_numbers(column) is not None


def _words_among_numbers(column: pd.Series, counts: pd.Series | None = None) -> list[str] | None:
    """The distinct values of a text column that are not numbers (missing-value tokens
    aside), when more than half of its values are numbers; None when they are not.
    ``counts``: the column's values as text, counted, if already at hand."""
    if pd.api.types.infer_dtype(column, skipna=True) not in _MAYBE_NUMBERS:
        return None  # dates, true/false, ...: no column of numbers
    if counts is None:
        counts = column.dropna().astype(str).value_counts(sort=False)
    # Each distinct value read once: a million rows hold a few thousand of them.
    values = counts.index.to_series()
    numeric = pd.to_numeric(values, errors="coerce").notna().to_numpy()
    if counts.to_numpy()[numeric].sum() * 2 <= counts.sum():
        return None
    return sorted(values[~numeric & ~values.isin(NA_VALUES).to_numpy()])


_NONE = type(None)


def _from_json(values: list, col: Column) -> np.ndarray | None:
    """:meth:`TabularSchema.coerce_records`' direct path; None when a value needs the checks."""
    kinds = set(map(type, values))
    if col.kind == NUMERIC and kinds <= {int, float, _NONE}:
        try:
            array = np.array(values, dtype=np.float64)  # None -> NaN
        except OverflowError:
            return None
        return None if np.isinf(array).any() else array
    if col.kind == BOOLEAN and kinds <= {bool, _NONE}:
        return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    if col.kind == CATEGORICAL and kinds <= {str, _NONE}:
        index = _category_index(col.categories)
        return np.fromiter((index.get(v, -1) for v in values), np.int64, len(values))
    return None


@functools.lru_cache(maxsize=256)
def _category_index(categories: tuple[str, ...]) -> dict[str, int]:
    return {name: i for i, name in enumerate(categories)}


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _refuse_first(
    bad: np.ndarray, series: pd.Series, name: str, row_offset: int, problem: str
) -> None:
    """Raise an InputError naming the column, and the first ``bad`` row with its value."""
    if bad.any():
        i = _first_bad(bad)
        raise InputError(
            f"column {name!r}, row {row_offset + i}: {_show(series.iloc[i])} {problem}",
            column=name,
            row=row_offset + i,
        )


def to_numbers(series: pd.Series, name: str, row_offset: int = 0) -> np.ndarray:
    """A column of numbers as float64, NaN for missing; anything else is an error naming the
    column and the first bad row (``row_offset`` + position).

    true/false and dates read as numbers to numpy (1, nanoseconds), and a CSV file's "true"
    is no number: refused alike, whichever way they came.
    """
    _refuse_first(_not_numbers(series), series, name, row_offset, "is not a number")
    return _to_float(series, name, row_offset)


def _to_float(series: pd.Series, name: str, row_offset: int) -> np.ndarray:
    if pd.api.types.is_bool_dtype(series.dtype) or pd.api.types.is_numeric_dtype(series.dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        try:
            numbers = pd.to_numeric(series, errors="coerce")
        except OverflowError:  # an int past float64's range: pandas reads long digit runs so
            numbers = pd.to_numeric(series.map(_past_float_as_inf), errors="coerce")
        values = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
        _refuse_first(_not_missing(np.isnan(values), series), series, name, row_offset,
                      "is not a number")  # fmt: skip
    infinite = np.isinf(values)
    if infinite.any():
        i = _first_bad(infinite)
        raise InputError(
            f"column {name!r}, row {row_offset + i}: infinite values are not allowed, nor "
            "numbers beyond ±1.8e308",
            column=name,
            row=row_offset + i,
        )
    return values


_NOT_NUMBERS = (bool, np.bool_, datetime.date, datetime.timedelta, np.datetime64, np.timedelta64)


def _not_numbers(series: pd.Series) -> np.ndarray:
    """Which values of a column are true/false, dates or durations: numbers to numpy, not to
    a model's numeric column."""
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype) or _holds_times(dtype):
        return series.notna().to_numpy()
    if not pd.api.types.is_object_dtype(dtype) or pd.api.types.infer_dtype(series, skipna=True) in (
        "string",
        "floating",
        "integer",
        "mixed-integer-float",
        "decimal",
        "empty",
    ):
        return np.zeros(len(series), dtype=bool)  # the usual cases, without a look at each
    return series.map(lambda v: isinstance(v, _NOT_NUMBERS)).to_numpy(dtype=bool)


def _past_float_as_inf(value: object) -> object:
    if isinstance(value, int) and abs(value) > sys.float_info.max:
        return math.inf if value > 0 else -math.inf
    return value


def _to_bool(series: pd.Series, name: str, row_offset: int) -> np.ndarray:
    if pd.api.types.is_bool_dtype(series.dtype) or pd.api.types.is_numeric_dtype(series.dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isnan(values) & (values != 0) & (values != 1)
    else:
        values = truth_values(series)
        bad = _not_missing(np.isnan(values), series)
    _refuse_first(bad, series, name, row_offset, "is not true or false")
    return values


def truth_values(series: pd.Series) -> np.ndarray:
    """1.0 or 0.0 for each value spelled true or false as a boolean column takes them
    (``true``, `` No``, ``1``, a bool...), NaN for any other."""
    words = series.astype(str).str.strip().str.lower()
    values = np.full(len(series), np.nan)
    values[words.isin(TRUE_WORDS).to_numpy()] = 1.0
    values[words.isin(FALSE_WORDS).to_numpy()] = 0.0
    return values


def _not_missing(unread: np.ndarray, series: pd.Series) -> np.ndarray:
    """Which ``unread`` values were given, not missing: a missing-value token (``NA``,
    ``null``, ``""``...) is missing here as it is in a CSV file, whichever way it came."""
    given = unread & series.notna().to_numpy()
    if given.any():
        given &= ~series.isin(NA_VALUES).to_numpy()
    return given


def _to_codes(
    series: pd.Series, name: str, categories: Sequence[str], row_offset: int
) -> np.ndarray:
    levels = pd.Index(list(categories), dtype=object)
    if isinstance(series.dtype, pd.CategoricalDtype):
        if pd.api.types.is_object_dtype(series.cat.categories.dtype):
            # a category may be anything (a tuple): checked per row, so errors name the row
            return _to_codes(series.astype(object), name, categories, row_offset)
        # Each category read as a value of its own dtype would be, then looked up per row.
        of_category = _to_codes(pd.Series(series.cat.categories), name, categories, 0)
        return np.append(of_category, -1)[series.cat.codes.to_numpy()]
    if series.dtype == object:
        nested = series.map(lambda v: isinstance(v, dict | list | tuple | set)).to_numpy(bool)
        _refuse_first(nested, series, name, row_offset, "is not a level")
    elif pd.api.types.is_string_dtype(series.dtype):
        return levels.get_indexer(series).astype(np.int64)
    # By position from here: an index may repeat labels (pd.concat's).
    text = series.astype(str).to_numpy(dtype=object)
    text[series.isna().to_numpy()] = None
    codes = levels.get_indexer(text)
    # Levels read as numbers: "1" comes back as 1.0 when a column of them has a gap, and
    # JSON's 1.0 is its 1. Each such value is the level it is written as, else its whole
    # number's, whatever else the column holds.
    if pd.api.types.is_float_dtype(series.dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    elif series.dtype == object:
        values = np.array([v if isinstance(v, float) else np.nan for v in series], np.float64)
    else:
        return codes.astype(np.int64)
    with np.errstate(invalid="ignore"):
        whole = (np.abs(values) < 2**53) & (values % 1 == 0)  # False for NaN and inf
    text[whole] = values[whole].astype(np.int64).astype(str)
    return np.where(codes >= 0, codes, levels.get_indexer(text)).astype(np.int64)


def _show(value: object, limit: int = 40) -> str:
    """A value for an error message, cut short: errors never echo whole payloads."""
    # reprlib stops at a depth, where repr of a list nested 1,000 deep (orjson takes that
    # much) would overflow the stack.
    if isinstance(value, np.generic):  # np.float64(nan) reads as nan, as the user wrote it
        value = value.item()
    try:
        text = _SHORT_REPR.repr(value)
    except ValueError:  # an int of more digits than Python writes out (4,300), or holds one
        text = (
            f"an integer of about {value.bit_length() * 0.30103:.0f} digits"
            if isinstance(value, int)
            else f"a {type(value).__name__} holding a huge integer"
        )
    return text if len(text) <= limit else text[: limit - 3] + "..."


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel, _SHORT_REPR.maxstring, _SHORT_REPR.maxother = 4, 200, 200
