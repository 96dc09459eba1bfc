"""Scoring CSV files of any size: read in blocks, score, write, and rename into place.

Memory stays bounded by the block size whatever the file's size (for time series, by the
number of series). Every input column is written back exactly as read (as text), followed by
the result columns. The output appears only when every row has been scored: a bad row
anywhere leaves no output file.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import logging
import os
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import torch
from tqdm.auto import tqdm

from anomaly.data.tabular import (
    csv_header,
    in_file,
    text_blocks,
    without_na_tokens,
)
from anomaly.detector import RESULT_COLUMNS, Detector
from anomaly.errors import InputError
from anomaly.persistence import hidden_sibling
from anomaly.preprocessing import usable_cores
from anomaly.sequence import RESULT_COLUMNS as SERIES_RESULTS
from anomaly.sequence import OutOfTimeOrder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchSummary:
    rows: int
    flagged: int
    seconds: float
    output: Path
    unscored: int = 0  # rows without a score: points in a stretch shorter than a window


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
    if detector.kind == "image":
        raise InputError(
            "an image model scores images, not a CSV file: give `anomaly score` a folder of "
            "images (from Python, score_images)"
        )
    header = csv_header(input_path)
    if detector.kind == "sequence":
        return _score_series_csv(detector, input_path, output_path, header, block_size, progress)
    missing = [c for c in detector.schema_.names if c not in header]
    if missing:
        raise InputError(f"{input_path}: missing column {missing[0]!r}", column=missing[0])
    kept = [c for c in header if c not in RESULT_COLUMNS]
    if len(kept) < len(header):
        log.warning("%s already has result columns; they are replaced", input_path)

    started, rows, flagged = time.perf_counter(), 0, 0
    size = input_path.stat().st_size
    workers = usable_cores()
    try:
        with (
            tqdm(
                total=size, unit="B", unit_scale=True, desc="scoring", disable=not progress
            ) as bar,
            _replacing(output_path) as out,
            _one_torch_thread_each(workers),
            ThreadPoolExecutor(max_workers=workers) as pool,
        ):
            out.write(_header_line([*kept, *RESULT_COLUMNS]))
            # Blocks are scored and formatted in parallel (Arrow, numpy and torch release the
            # GIL) and written in order; a bad block raises when its turn to be written comes,
            # so the error named is the file's first.
            in_flight: deque[Future] = deque()
            for batch in _read_blocks(input_path, header, block_size, bar):
                in_flight.append(pool.submit(_score_block, detector, batch, kept, rows))
                rows += batch.num_rows
                if len(in_flight) > workers:
                    flagged += _write_next(in_flight, out)
            while in_flight:
                flagged += _write_next(in_flight, out)
    except InputError as exc:
        raise in_file(exc, input_path) from None
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
    """A file of time series: read twice, in blocks. The first pass scores each series' points
    as they become final (:meth:`SequenceDetector.score_time_ordered`) and keeps the results
    in a scratch file; the second writes every row with its results. Memory grows with the
    number of series, not the file. A file whose series are not in time order is scored
    whole instead (memory then grows with the file)."""
    missing = [c for c in detector.schema_.names if c not in header]
    if missing:
        raise InputError(f"{input_path}: missing column {missing[0]!r}", column=missing[0])
    kept = [c for c in header if c not in RESULT_COLUMNS]
    started = time.perf_counter()
    with (
        _replacing(output_path) as out,
        tempfile.TemporaryDirectory(prefix=f".{output_path.name}.", dir=output_path.parent) as tmp,
    ):
        results = _ResultsFile(Path(tmp) / "results")
        try:
            with _bar(input_path, "scoring", progress) as bar:
                blocks = _read_blocks(input_path, header, block_size, bar)
                for done, scored in detector.score_time_ordered(_parsed(detector.schema_, blocks)):
                    results.put(done, scored)
        except (OutOfTimeOrder, InputError) as exc:
            if isinstance(exc, InputError) and exc.row is not None:
                raise in_file(exc, input_path) from None
            # Out of time order; or a segment without values, met before the rest of the file
            # was read, which rows further on (out of order) may fill. Reading it whole decides.
            log.warning("%s: %s; scoring the file whole (memory grows with it)", input_path, exc)
            rows, flagged, unscored = _score_series_whole(
                detector, input_path, out, header, block_size, progress
            )
        else:
            rows, flagged, unscored = _write_series(
                input_path, out, header, kept, block_size, results, progress
            )
    return BatchSummary(rows, flagged, time.perf_counter() - started, output_path, unscored)


def _write_series(
    input_path: Path, out, header: list[str], kept: list[str], block_size: int, results, progress
) -> tuple[int, int, int]:
    """The second read of a streamed series file: each row with its results, in file order;
    returns the rows, the rows flagged and those without a score."""
    rows = flagged = unscored = 0
    scored_rows = results.rows
    with _bar(input_path, "writing", progress) as bar:
        out.write(_header_line([*kept, *SERIES_RESULTS]))
        for batch in _read_blocks(input_path, header, block_size, bar):
            if rows + batch.num_rows > scored_rows:
                raise InputError(f"{input_path} grew while it was being scored")
            scored = results.get(rows, rows + batch.num_rows)
            arrays = [batch.column(name) for name in kept]
            arrays += [pa.array(scored[name], from_pandas=True) for name in SERIES_RESULTS]
            out.write(_csv_bytes(pa.Table.from_arrays(arrays, [*kept, *SERIES_RESULTS])))
            rows += batch.num_rows
            flagged += int(scored["is_anomaly"].sum())
            unscored += int(np.isnan(scored["anomaly_score"]).sum())
    return rows, flagged, unscored


def _parsed(schema, blocks):
    """``(rows, times, ids, values)`` of each block, as :meth:`SequenceSchema.parse` reads it;
    bad values name their row in the file."""
    rows = 0
    for batch in blocks:
        frame = pd.DataFrame(
            {
                name: _series_column(batch.column(name), keep_empty=name not in schema.values)
                for name in schema.names
            }
        )
        yield (np.arange(rows, rows + len(frame)), *schema.parse(frame, row_offset=rows))
        rows += len(frame)


def _series_column(column: pa.Array, *, keep_empty: bool) -> np.ndarray:
    """A text column as :func:`~anomaly.data.tabular.read_csv` reads it: a value column's
    missing-value tokens (empty, ``NA``, ``null``...) are missing (None); a timestamp or
    series id stays text, to be refused or named as written."""
    column = pc.fill_null(column, "") if keep_empty else without_na_tokens(column)
    return column.to_numpy(zero_copy_only=False)


class _ResultsFile:
    """Per-row results of a series file, kept on disk (not in memory) until every row has
    them: points are scored in each series' time, rows written in the file's order."""

    DTYPE = np.dtype([("anomaly_score", "<f4"), ("is_anomaly", "?"), ("p_value", "<f8")])

    def __init__(self, path: Path):
        self.path = path
        path.touch()

    def put(self, rows: np.ndarray, results: dict[str, np.ndarray]) -> None:
        if not len(rows):
            return
        first, stop = int(rows.min()), int(rows.max()) + 1
        with open(self.path, "r+b") as fh:
            if fh.seek(0, os.SEEK_END) < stop * self.DTYPE.itemsize:
                fh.truncate(stop * self.DTYPE.itemsize)
        # A map of just the rows' span, dropped after: the file's pages are not held.
        part = np.memmap(self.path, self.DTYPE, "r+", first * self.DTYPE.itemsize, stop - first)
        for name in self.DTYPE.names:
            part[name][rows - first] = results[name]
        del part

    @property
    def rows(self) -> int:
        """Rows up to the last one with results."""
        return self.path.stat().st_size // self.DTYPE.itemsize

    def get(self, start: int, stop: int) -> dict[str, np.ndarray]:
        if stop == start:
            return {name: np.empty(0, self.DTYPE[name]) for name in self.DTYPE.names}
        part = np.memmap(self.path, self.DTYPE, "r", start * self.DTYPE.itemsize, stop - start)
        return {name: np.array(part[name]) for name in self.DTYPE.names}


def _score_series_whole(
    detector, input_path: Path, out, header: list[str], block_size: int, progress
) -> tuple[int, int, int]:
    """A file of time series scored whole (rows of a series may come in any order) and
    written to ``out``; returns the rows, the rows flagged and those without a score."""
    schema = detector.schema_
    kept = [c for c in header if c not in RESULT_COLUMNS]
    with _bar(input_path, "reading", progress) as bar:
        table = pa.Table.from_batches(
            list(_read_blocks(input_path, header, block_size, bar)),
            schema=pa.schema([(name, pa.string()) for name in header]),
        )
    frame = pd.DataFrame(
        {
            c: _series_column(table.column(c), keep_empty=c not in schema.values)
            for c in schema.names
        }
    )
    try:
        result = detector.score(frame)
    except InputError as exc:
        raise in_file(exc, input_path) from None
    arrays = [table.column(name) for name in kept] + [
        pa.array(result[name].to_numpy(), from_pandas=True) for name in SERIES_RESULTS
    ]
    output = pa.Table.from_arrays(arrays, names=[*kept, *SERIES_RESULTS])
    out.write(_header_line(output.column_names))
    out.write(_csv_bytes(output))
    unscored = int(result["anomaly_score"].isna().sum())
    return len(frame), int(result["is_anomaly"].sum()), unscored


@contextlib.contextmanager
def _replacing(output_path: Path) -> Iterator[BinaryIO]:
    """A binary file that becomes ``output_path`` when the block ends without an error: it is
    written beside it under a temporary name, then renamed. On an error, the temporary file
    goes, and so do the folders made for it: a failed run leaves everything as it was."""
    target, missing = _check_output(output_path)
    made: list[Path] = []  # by this call, outermost first
    tmp_name = None
    try:
        for folder in reversed(missing):
            with contextlib.suppress(FileExistsError):  # made meanwhile by someone else
                folder.mkdir()
                made.append(folder)
        tmp = hidden_sibling(target)
        with open(tmp, "xb") as out:  # permissions as any new file's (mkstemp's: 0o600)
            tmp_name = tmp
            yield out
        os.replace(tmp_name, target)
    except BaseException:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _check_output(output_path: Path) -> tuple[Path, list[Path]]:
    """Refuse an output path that cannot become a file (before any work, where it can be);
    returns the file to write (a symlink's target) and the folders to make for it."""
    if output_path.is_dir():
        raise InputError(f"{output_path} is a folder; give the output a file name")
    if output_path.exists() and not output_path.is_file():  # renaming onto it would replace it
        raise InputError(f"{output_path} is not a regular file (a device or pipe); give a file")
    # A symlink's target is written, and the link stays; "a/../b" is b, though a may not exist.
    target = Path(os.path.realpath(output_path))
    folder, missing = target.parent, []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    if not folder.is_dir():  # a file in the way, named as given
        given = output_path.parents[len(missing)]
        named = given if os.path.realpath(given) == str(folder) else folder
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(named))
    return target, missing


def _bar(path: Path, desc: str, progress: bool) -> tqdm:
    return tqdm(
        total=path.stat().st_size, unit="B", unit_scale=True, desc=desc, disable=not progress
    )


def score_images(
    detector, source: str | Path, output_path: str | Path, *, maps_dir: str | Path | None = None
) -> BatchSummary:
    """Score images (a folder, file or array, as :func:`anomaly.data.images.load_images`
    reads) into a CSV with a row per image: ``path``, ``anomaly_score``, ``is_anomaly`` and
    ``p_value``, written atomically. With ``maps_dir``, each image's anomaly map over it too,
    as ``<name>_map.png``, on one colour scale (the model's)."""
    from anomaly.data.images import load_images
    from anomaly.image_maps import check_maps_dir, save_overlays

    started = time.perf_counter()
    output_path = Path(output_path)
    _check_output(output_path)  # a file in the way fails now, not after every image is scored
    if maps_dir is not None:
        check_maps_dir(maps_dir)
    images, names = load_images(source, detector.image_size_, detector.channels)
    frame, maps = detector.score_with_maps(images, names, maps=maps_dir is not None)
    with _replacing(output_path) as out:
        # true/false, as the table and series outputs write them (pandas writes True/False)
        flags = frame["is_anomaly"].map({True: "true", False: "false"})
        frame.assign(is_anomaly=flags).to_csv(out, index=False, lineterminator="\n")
    if maps_dir is not None:
        save_overlays(images, maps, names, maps_dir, vmax=detector.map_scale_)
    flagged = int(frame["is_anomaly"].sum())
    return BatchSummary(len(frame), flagged, time.perf_counter() - started, output_path)


def _read_blocks(path: Path, header: list[str], block_size: int, bar: tqdm):
    """Record batches of text columns, advancing ``bar`` by the bytes read (ahead); a bad
    row's error is named by path and line where it is caught (``in_file``)."""
    for batch, read in text_blocks(path, header, name=str(path), block_size=block_size):
        bar.update(read - bar.n)
        yield batch


def _output_table(batch: pa.RecordBatch, kept: list[str], result: dict) -> pa.Table:
    results = {name: pa.array(result[name]) for name in RESULT_COLUMNS}
    # A p-value is one of n_calibration + 1 values: each is formatted once, then indexed, as
    # formatting floats is much of writing a block. (The same text Arrow writes for them.)
    p_values = pc.dictionary_encode(results["p_value"])
    results["p_value"] = pc.cast(p_values.dictionary, pa.string()).take(p_values.indices)
    arrays = [batch.column(name) for name in kept] + list(results.values())
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
