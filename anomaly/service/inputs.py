"""Request bodies into the columns a detector checks: JSON records, MLflow's formats, NDJSON.

Only shape is checked here (is it JSON, are the fields the model's); values are checked by the
detector's schema, whose errors name the column and the row.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import orjson
import pandas as pd
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from anomaly.data.tabular import TabularSchema, read_csv
from anomaly.detector import Detector
from anomaly.errors import InputError
from anomaly.service.schemas import PointsRequest

MLFLOW_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# An integer of 20 digits or more: maybe past 64 bits, which orjson reads as a float. (Not
# the digits after a decimal point, which most bodies of floats hold somewhere.)
_LONG_INTEGER = re.compile(rb"(?<![\d.])\d{20}")


class RecordError(InputError):
    """A record without a trained field, or with a field the model does not know."""


def parse_records(body: bytes) -> list[dict[str, Any]]:
    """The records of a ``/v1/score`` body, ``{"records": [{...}, ...]}``."""
    data = _loads(body)
    if not isinstance(data, dict) or "records" not in data:
        raise InputError('the JSON body must be an object with a "records" list')
    records = data["records"]
    if not isinstance(records, list) or not records:
        raise InputError('"records" must be a non-empty list of objects')
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise RecordError(f"record {i}: expected an object (column name to value)", row=i)
    return records


def parse_points_body(body: bytes) -> list[dict[str, Any]]:
    """The points of a stream's body, ``{"points": [{...}, ...]}``, read as every body here
    is (any content type; bad JSON named), then checked as :class:`PointsRequest` says."""
    try:
        return PointsRequest.model_validate(_loads(body)).points
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(errors) from None


def records_to_columns(detector: Detector, records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Check each record's fields, then its values; raises :class:`InputError` naming both."""
    error = next(field_errors(detector, enumerate(records)), None)
    if error is not None:
        raise error
    return detector.schema_.coerce_records(records)


def field_errors(
    detector: Detector, records: Iterable[tuple[int, Mapping[str, Any]]], item: str = "record"
) -> Iterator[RecordError]:
    """An error for each numbered record that lacks a trained field or has one the model does
    not know, naming it as ``{item} {number}``: the number is written in, never edited in."""
    schema = detector.schema_
    required = set(schema.names)
    allowed = required | set(schema.ignored)
    reads = f"the model reads {len(required)} fields"
    for number, record in records:
        keys = record.keys()
        if not keys >= required:
            field = next(n for n in schema.names if n not in keys)
            yield RecordError(f"{item} {number}: missing field {field!r}", column=field, row=number)
        elif not keys <= allowed:
            field = sorted(k for k in keys if k not in allowed)[0]
            yield RecordError(
                f"{item} {number}: unknown field {field!r} ({reads})",
                column=field,
                row=number,
            )


def lines_to_columns(
    detector: Detector, records: Mapping[int, Mapping[str, Any]]
) -> tuple[list[int], dict[str, np.ndarray], dict[int, str]]:
    """NDJSON records by line number: the good lines' numbers and columns, and an error for each
    bad line, the one the line would get alone.

    Linear in the lines (re-checking the batch after each bad line cost a batch per bad line):
    a column is checked whole, and line by line only when it holds a bad value; the columns
    go in the schema's order, so that a line's error names its first bad column."""
    errors = {error.row: str(error) for error in field_errors(detector, records.items(), "line")}
    good = {number: record for number, record in records.items() if number not in errors}
    schema = detector.schema_
    try:
        return list(good), schema.coerce_records(list(good.values())), errors
    except InputError:
        pass  # a bad value somewhere: find every one
    for column in schema.columns:
        single = TabularSchema((column,))
        try:
            single.coerce_records(list(good.values()))
            continue
        except InputError:
            pass
        for number, record in list(good.items()):
            try:
                single.coerce_records([record], row_offset=number)
            except InputError as exc:
                errors[number] = _on_line(exc, number)
                del good[number]
    # Each value left passed alone, and coercion goes value by value: together they pass too.
    return list(good), schema.coerce_records(list(good.values())), errors


def _on_line(exc: InputError, number: int) -> str:
    """The message of a value error of line ``number`` (coerced with that row offset), saying
    "line" where the schema's own prefix says "row": the rest of the message, which may echo
    the client's value, is left as it is."""
    message = str(exc)
    own = f"column {exc.column!r}, row {number}: "
    if message.startswith(own):
        return f"column {exc.column!r}, line {number}: {message[len(own) :]}"
    return f"line {number}: {message}"


def parse_invocations(
    body: bytes,
    content_type: str,
    schema: TabularSchema | None = None,
    as_text: Sequence[str] = (),
) -> pd.DataFrame:
    """A DataFrame from a body in one of the formats ``mlflow models serve`` accepts; a CSV
    body read as ``anomaly score`` reads a file (see :func:`read_csv`)."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "text/csv":
        return read_csv(io.BytesIO(body), name="the CSV body", schema=schema, as_text=as_text)
    if media != "application/json":
        raise InputError(f"unsupported content type {media!r}: use application/json or text/csv")
    data = _loads(body)
    if not isinstance(data, dict):
        raise InputError(f"the JSON body must be an object with one of the keys {MLFLOW_KEYS}")
    keys = [k for k in MLFLOW_KEYS if k in data]
    if len(keys) != 1:
        raise InputError(f"the JSON body must have exactly one of the keys {MLFLOW_KEYS}")
    key, value = keys[0], data[keys[0]]
    frame = _json_table(key, value)
    if len(frame) == 0:
        raise InputError(f"{key} holds no rows")
    if any(not isinstance(c, str) for c in frame.columns):
        raise InputError(f"{key}: column names must be strings")
    repeated = frame.columns[frame.columns.duplicated()]
    if len(repeated):
        raise InputError(f"{key}: column {repeated[0]!r} appears twice", column=repeated[0])
    # A table model's other columns pass through as sent: typed by pandas, an id next to a
    # null would come back a float, and past 2**53 a wrong one.
    passed = [] if schema is None else [c for c in frame.columns if c not in schema.names]
    if passed:
        sent = _json_table(key, value, dtype=object)
        for i, name in enumerate(frame.columns):
            if name in passed:
                frame.isetitem(i, sent.iloc[:, i])  # the same layout, column for column
    return frame


def _json_table(key: str, value: Any, dtype: type | None = None) -> pd.DataFrame:
    """The table of one of MLflow's JSON layouts (values typed by pandas, or as sent)."""
    try:
        if key == "dataframe_split":
            if not isinstance(value, dict) or not isinstance(value.get("data"), list):
                raise InputError("dataframe_split must be an object with 'columns' and 'data'")
            return pd.DataFrame(value["data"], columns=value.get("columns"), dtype=dtype)
        if isinstance(value, list) and all(isinstance(r, dict) for r in value):
            if dtype is None:
                return pd.DataFrame.from_records(value)
            return pd.DataFrame(value, dtype=dtype)
        if key != "dataframe_records" and isinstance(value, dict):
            return pd.DataFrame(value, dtype=dtype)  # columns of values
        raise InputError(f"{key} must be a list of records (objects)")
    except (ValueError, TypeError) as exc:  # ragged rows, wrong column count, scalars...
        raise InputError(f"{key} does not form a table: {exc}") from None


def parse_line(line: bytes, number: int) -> dict[str, Any]:
    """One NDJSON line: a JSON object (a record), read as a JSON body is (NaN included)."""
    record = _loads(line, f"line {number}", row=number)
    if not isinstance(record, dict):
        raise InputError(f"line {number}: expected a JSON object (a record)", row=number)
    return record


def _loads(data: bytes, name: str = "the body", row: int | None = None) -> Any:
    if not _LONG_INTEGER.search(data):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    # Python clients write NaN and Infinity, which strict JSON (and orjson) refuse; json keeps
    # an id past 64 bits whole.
    try:
        value = json.loads(data)
        # json also takes an unpaired surrogate escape ("\ud800"), which no UTF-8 text can hold
        # and pandas fails on; only an escape makes one, so most bodies skip the check.
        if _SURROGATE_ESCAPE.search(data):
            json.dumps(value, ensure_ascii=False).encode()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{name} is not valid JSON: {exc}", row=row) from None
    except UnicodeEncodeError:  # its message would repeat the surrogate
        raise InputError(f"{name} is not valid JSON: an unpaired surrogate", row=row) from None
    except RecursionError:  # nesting orjson refuses past 1024 levels, which json recurses into
        raise InputError(f"{name} is not valid JSON: nested too deeply", row=row) from None
    except ValueError:  # an integer of more digits than Python converts (4,300)
        raise InputError(f"{name} is not valid JSON: a number too long", row=row) from None
    return value
