"""Request bodies into the columns a detector checks: JSON records, MLflow's formats, NDJSON.

Only shape is checked here (is it JSON, are the fields the model's); values are checked by the
detector's schema, whose errors name the column and the row.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import orjson
import pandas as pd

from anomaly.data.tabular import read_csv
from anomaly.detector import Detector
from anomaly.errors import InputError

MLFLOW_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")


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


def records_to_columns(detector: Detector, records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Check each record's fields, then its values; raises :class:`InputError` naming both."""
    schema = detector.schema_
    required = set(schema.names)
    allowed = required | set(schema.ignored)
    for i, record in enumerate(records):
        keys = record.keys()
        if not keys >= required:
            field = next(n for n in schema.names if n not in keys)
            raise RecordError(f"record {i}: missing field {field!r}", column=field, row=i)
        if not keys <= allowed:
            field = sorted(k for k in keys if k not in allowed)[0]
            raise RecordError(
                f"record {i}: unknown field {field!r} (the model reads {len(required)} fields)",
                column=field,
                row=i,
            )
    return schema.coerce_records(records)


def parse_invocations(body: bytes, content_type: str) -> pd.DataFrame:
    """A DataFrame from a body in one of the formats ``mlflow models serve`` accepts."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "text/csv":
        return read_csv(io.BytesIO(body), name="the CSV body")
    if media != "application/json":
        raise InputError(f"unsupported content type {media!r}: use application/json or text/csv")
    data = _loads(body)
    if not isinstance(data, dict):
        raise InputError(f"the JSON body must be an object with one of the keys {MLFLOW_KEYS}")
    keys = [k for k in MLFLOW_KEYS if k in data]
    if len(keys) != 1:
        raise InputError(f"the JSON body must have exactly one of the keys {MLFLOW_KEYS}")
    key, value = keys[0], data[keys[0]]
    try:
        if key == "dataframe_split":
            if not isinstance(value, dict) or not isinstance(value.get("data"), list):
                raise InputError("dataframe_split must be an object with 'columns' and 'data'")
            frame = pd.DataFrame(value["data"], columns=value.get("columns"))
        elif isinstance(value, list) and all(isinstance(r, dict) for r in value):
            frame = pd.DataFrame.from_records(value)
        elif key != "dataframe_records" and isinstance(value, dict):
            frame = pd.DataFrame(value)  # columns of values
        else:
            raise InputError(f"{key} must be a list of records (objects)")
    except (ValueError, TypeError) as exc:  # ragged rows, wrong column count, scalars...
        raise InputError(f"{key} does not form a table: {exc}") from None
    if len(frame) == 0:
        raise InputError(f"{key} holds no rows")
    if any(not isinstance(c, str) for c in frame.columns):
        raise InputError(f"{key}: column names must be strings")
    return frame


def parse_line(line: bytes, number: int) -> dict[str, Any]:
    """One NDJSON line: a JSON object (a record)."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"line {number}: not valid JSON: {exc}", row=number) from None
    if not isinstance(record, dict):
        raise InputError(f"line {number}: expected a JSON object (a record)", row=number)
    return record


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:  # Python clients write NaN and Infinity, which strict JSON (and orjson) refuse
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"the body is not valid JSON: {exc}") from None
    except RecursionError:  # nesting orjson refuses past 1024 levels, which json recurses into
        raise InputError("the body is not valid JSON: nested too deeply") from None
