"""Scoring CSV files of any size: read in blocks, score, write, and rename into place.

Memory stays bounded by the block size whatever the file's size. Every input column is written
back exactly as read (as text), followed by the result columns of :meth:`Detector.score`. The
output appears only when every row has been scored: a bad row anywhere leaves no output file.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import tempfile
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import torch
from tqdm.auto import tqdm

from anomaly.detector import RESULT_COLUMNS, Detector
from anomaly.errors import InputError

log = logging.getLogger(__name__)


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
    block_size: int = 2 << 20,
    progress: bool = True,
) -> BatchSummary:
    """Score every row of ``input_path`` and write ``output_path`` atomically.

    A table's blocks are scored on every usable core at once, each on one torch thread: the
    process's torch thread count is 1 meanwhile, and restored after.

    Parameters
    ----------
    detector : Detector
        A fitted detector.
    input_path, output_path : path
        CSV in; CSV out with every input column plus ``anomaly_score``, ``is_anomaly``,
        ``p_value`` and ``top_features``.
    block_size : int, default=2 MiB
        Bytes of input read at a time. Arrow reads up to 32 blocks ahead, so memory use is
        bounded by a few hundred times the block size, whatever the file's size.
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
    if detector.kind == "sequence":
        return _score_series_csv(detector, input_path, output_path, header, block_size, progress)
    missing = [c for c in detector.schema_.names if c not in header]
    if missing:
        raise InputError(f"{input_path}: missing column {missing[0]!r}", column=missing[0])
    kept = [c for c in header if c not in RESULT_COLUMNS]
    if len(kept) < len(header):
        log.warning("%s already has result columns; they are replaced", input_path)

    output_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output_path.name}.", dir=output_path.parent)
    os.close(fd)
    started, rows, flagged = time.perf_counter(), 0, 0
    size = input_path.stat().st_size
    workers = _usable_cores()
    try:
        with (
            tqdm(
                total=size, unit="B", unit_scale=True, desc="scoring", disable=not progress
            ) as bar,
            open(input_path, "rb") as raw,
            open(tmp_name, "wb") as out,
            _one_torch_thread_each(workers),
            ThreadPoolExecutor(max_workers=workers) as pool,
        ):
            out.write(_header_line([*kept, *RESULT_COLUMNS]))
            # Blocks are scored and formatted in parallel (Arrow, numpy and torch release the
            # GIL) and written in order; a bad block raises when its turn to be written comes,
            # so the error named is the file's first.
            in_flight: deque[Future] = deque()
            for batch in _read_blocks(_Counting(raw, bar), header, block_size, input_path):
                in_flight.append(pool.submit(_score_block, detector, batch, kept, rows))
                rows += batch.num_rows
                if len(in_flight) > workers:
                    flagged += _write_next(in_flight, out)
            while in_flight:
                flagged += _write_next(in_flight, out)
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


def _score_block(
    detector: Detector, batch: pa.RecordBatch, kept: list[str], row_offset: int
) -> tuple[pa.Buffer, int]:
    """One block's output rows as CSV text, and how many of them are flagged."""
    columns = detector.schema_.coerce_text(batch, row_offset=row_offset)
    result = detector.score_columns(columns)
    return _csv_bytes(_output_table(batch, kept, result)), int(result["is_anomaly"].sum())


def _write_next(in_flight: deque[Future], out) -> int:
    text, flagged = in_flight.popleft().result()
    out.write(text)
    return flagged


def _usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def _one_torch_thread_each(workers: int):
    """With several blocks scored at once, each on one torch thread: ``workers`` threads that
    each start a torch thread pool would oversubscribe the cores. (A row's score does not
    depend on the thread count.)"""
    if workers == 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _score_series_csv(
    detector, input_path: Path, output_path: Path, header: list[str], block_size: int, progress
) -> BatchSummary:
    """A file of time series, scored whole: a point's score needs the points around it, in
    any row order. Memory grows with the file (unlike tables, which stream in blocks)."""
    schema = detector.schema_
    needed = schema.names
    missing = [c for c in needed if c not in header]
    if missing:
        raise InputError(f"{input_path}: missing column {missing[0]!r}", column=missing[0])
    kept = [c for c in header if c not in RESULT_COLUMNS]
    started = time.perf_counter()
    with (
        tqdm(
            total=input_path.stat().st_size,
            unit="B",
            unit_scale=True,
            desc="reading",
            disable=not progress,
        ) as bar,
        open(input_path, "rb") as raw,
    ):
        table = pa.Table.from_batches(
            list(_read_blocks(_Counting(raw, bar), header, block_size, input_path)),
            schema=pa.schema([(name, pa.string()) for name in header]),
        )
    frame = pd.DataFrame({c: table.column(c).to_numpy() for c in needed})
    for name in schema.values:  # an empty field is a missing value
        frame[name] = frame[name].replace("", np.nan)
    try:
        result = detector.score(frame)
    except InputError as exc:
        if exc.row is None:
            raise
        raise InputError(
            f"{input_path}: {exc} (line {exc.row + 2} of the file)", column=exc.column, row=exc.row
        ) from None
    arrays = [table.column(name) for name in kept] + [
        pa.array(result[name].to_numpy(), from_pandas=True) for name in RESULT_COLUMNS[:3]
    ]
    output = pa.Table.from_arrays(arrays, names=[*kept, *RESULT_COLUMNS[:3]])
    output_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output_path.name}.", dir=output_path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(_header_line(output.column_names))
            out.write(_csv_bytes(output))
        os.replace(tmp_name, output_path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    flagged = int(result["is_anomaly"].sum())
    return BatchSummary(len(frame), flagged, time.perf_counter() - started, output_path)


def score_images(
    detector, source: str | Path, output_path: str | Path, *, maps_dir: str | Path | None = None
) -> BatchSummary:
    """Score images (a folder, file or array, as :func:`anomaly.data.images.load_images`
    reads) into a CSV with a row per image: ``path``, ``anomaly_score``, ``is_anomaly`` and
    ``p_value``, written atomically. With ``maps_dir``, each image's anomaly map over it too,
    as ``<name>_map.png``, on one colour scale (the model's)."""
    from anomaly.data.images import load_images
    from anomaly.image_maps import save_overlays

    started = time.perf_counter()
    images, names = load_images(source, detector.image_size_, detector.channels)
    frame, maps = detector.score_with_maps(images, names, maps=maps_dir is not None)
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output_path.name}.", dir=output_path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as out:
            frame.to_csv(out, index=False)
        os.replace(tmp_name, output_path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    if maps_dir is not None:
        save_overlays(images, maps, names, maps_dir, vmax=detector.map_scale_)
    flagged = int(frame["is_anomaly"].sum())
    return BatchSummary(len(frame), flagged, time.perf_counter() - started, output_path)


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
    with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: Excel's byte-order mark
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


def _output_table(batch: pa.RecordBatch, kept: list[str], result: dict) -> pa.Table:
    arrays = [batch.column(name) for name in kept] + [
        pa.array(result[name]) for name in RESULT_COLUMNS
    ]
    return pa.Table.from_arrays(arrays, names=[*kept, *RESULT_COLUMNS])


def _header_line(names: list[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(names)
    return buffer.getvalue().encode()


def _csv_bytes(table: pa.Table) -> pa.Buffer:
    """A block as CSV without a header: unquoted unless a value needs quotes (then strings are
    quoted)."""
    sink = pa.BufferOutputStream()
    try:
        pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=False, quoting_style="none"))
    except pa.ArrowInvalid:  # a comma, quote or newline inside a value
        sink = pa.BufferOutputStream()
        pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=False))
    return sink.getvalue()
