"""Scoring CSV files of any size: read in blocks, score, write, and rename into place.

Memory stays bounded by the block size whatever the file's size. Every input column is written
back exactly as read (as text), followed by the result columns of :meth:`Detector.score`. The
output appears only when every row has been scored: a bad row anywhere leaves no output file.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from tqdm.auto import tqdm

from anomaly.data.tabular import NA_VALUES, NUMERIC
from anomaly.detector import RESULT_COLUMNS, Detector
from anomaly.errors import InputError

log = logging.getLogger(__name__)

_NA = pa.array(NA_VALUES, pa.string())


@dataclass(frozen=True)
class BatchSummary:
    rows: int
    flagged: int
    seconds: float
    output: Path


def score_csv(
    detector: Detector,
    input_path: str | Path,
    output_path: str | Path,
    *,
    block_size: int = 8 << 20,
    progress: bool = True,
) -> BatchSummary:
    """Score every row of ``input_path`` and write ``output_path`` atomically.

    Parameters
    ----------
    detector : Detector
        A fitted detector.
    input_path, output_path : path
        CSV in; CSV out with every input column plus ``anomaly_score``, ``is_anomaly``,
        ``p_value`` and ``top_features``.
    block_size : int, default=8 MiB
        Bytes of input read at a time; memory use is a small multiple of it.
    progress : bool, default=True
        Show a progress bar over the input's bytes.

    Raises
    ------
    InputError
        For a missing or empty file, a missing column, or a bad value (naming the column and
        the row, counted from 0 after the header). No output file is left behind.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    header = _read_header(input_path)
    trained = set(detector.schema_.names)
    missing = [c for c in detector.schema_.names if c not in header]
    if missing:
        raise InputError(f"{input_path}: missing column {missing[0]!r}", column=missing[0])
    kept = [c for c in header if c not in RESULT_COLUMNS]
    if len(kept) < len(header):
        log.warning("%s already has result columns; they are replaced", input_path)
    numeric = {c.name for c in detector.schema_.columns if c.kind == NUMERIC}

    output_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output_path.name}.", dir=output_path.parent)
    os.close(fd)
    started, rows, flagged = time.perf_counter(), 0, 0
    size = input_path.stat().st_size
    try:
        with (
            tqdm(
                total=size, unit="B", unit_scale=True, desc="scoring", disable=not progress
            ) as bar,
            open(input_path, "rb") as raw,
        ):
            with open(tmp_name, "wb") as out:
                out.write(_header_line([*kept, *RESULT_COLUMNS]))
                for batch in _read_blocks(_Counting(raw, bar), header, block_size, input_path):
                    frame = _model_frame(batch, trained, numeric)
                    result = detector.score(frame, row_offset=rows)
                    out.write(_csv_bytes(_output_table(batch, kept, result)))
                    rows += batch.num_rows
                    flagged += int(result["is_anomaly"].sum())
        os.replace(tmp_name, output_path)
    except InputError as exc:
        Path(tmp_name).unlink(missing_ok=True)
        if exc.row is None:
            raise
        # Row numbers count data rows from 0; an editor shows the line (header = line 1).
        raise InputError(
            f"{input_path}: {exc} (line {exc.row + 2} of the file)", column=exc.column, row=exc.row
        ) from None
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return BatchSummary(rows, flagged, time.perf_counter() - started, output_path)


class _Counting:
    """A read-only file wrapper that advances a progress bar by the bytes read."""

    def __init__(self, raw, bar: tqdm):
        self._raw, self._bar = raw, bar
        self.closed = False

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._bar.update(len(data))
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


def _read_header(path: Path) -> list[str]:
    if not path.is_file():
        raise InputError(f"no such file: {path}")
    with open(path, newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh), None)
    if not header:
        raise InputError(f"{path} is empty")
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise InputError(f"{path}: column {name!r} appears twice", column=name)
        seen.add(name)
    return header


def _read_blocks(stream, header: list[str], block_size: int, path: Path):
    """Record batches of text columns; Arrow's parse errors become InputError."""
    try:
        reader = pacsv.open_csv(
            stream,
            read_options=pacsv.ReadOptions(block_size=block_size),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in header},
                strings_can_be_null=False,  # passthrough text is written back verbatim
            ),
        )
        yield from reader
    except pa.ArrowInvalid as exc:
        raise InputError(f"{path} is not well-formed CSV: {exc}") from None


def _model_frame(batch: pa.RecordBatch, trained: set[str], numeric: set[str]) -> pd.DataFrame:
    """The trained columns of a block, missing-value tokens made null, numbers parsed by Arrow.

    A numeric column Arrow cannot parse stays text: the detector's own checks then find and
    name the first bad value.
    """
    columns = {}
    for name in trained:
        values = batch.column(name)
        values = pc.if_else(
            pc.is_in(values, value_set=_NA), pa.nulls(len(values), pa.string()), values
        )
        if name in numeric:
            try:
                columns[name] = pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False)
                continue
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass
        columns[name] = pd.Series(values.to_numpy(zero_copy_only=False), dtype=object)
    return pd.DataFrame(columns)


def _output_table(batch: pa.RecordBatch, kept: list[str], result: pd.DataFrame) -> pa.Table:
    arrays = [batch.column(name) for name in kept] + [
        pa.array(result["anomaly_score"].to_numpy(np.float64)),
        pa.array(result["is_anomaly"].to_numpy(bool)),
        pa.array(result["p_value"].to_numpy(np.float64)),
        pa.array(result["top_features"].to_numpy(object), pa.string()),
    ]
    return pa.Table.from_arrays(arrays, names=[*kept, *RESULT_COLUMNS])


def _header_line(names: list[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(names)
    return buffer.getvalue().encode()


def _csv_bytes(table: pa.Table) -> bytes:
    """CSV text of a block: unquoted unless a value needs quotes (then strings are quoted)."""
    sink = pa.BufferOutputStream()
    try:
        pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=False, quoting_style="none"))
    except pa.ArrowInvalid:  # a comma, quote or newline inside a value
        sink = pa.BufferOutputStream()
        pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=False))
    return sink.getvalue().to_pybytes()
