"""Time series in a table: checked, ordered, gap-split and cut into sliding windows.

A file holds one or more series: a timestamp column, an optional series-id column, and one or
more numeric value columns. The policy for imperfect data, the same at fit and at scoring:

- **Order.** Rows may come in any order; each series is put in timestamp order, and results go
  back to the input order. Two rows of one series with the same timestamp are an error, and so
  is a row without a timestamp or (when there is a series column) without a series id.
- **Missing values** are interpolated linearly in time within a segment (the nearest value at
  its ends). A segment of at least one window with no value at all in a column is an error
  naming column, series, and the segment's first row and time.
- **Gaps.** Windows run over consecutive observations. A step longer than ``max_gap`` times the
  typical step (the series' median step seen at fit; for a series not seen at fit, the median
  over all series) starts a new segment: no window straddles the gap,
  and the first ``window - 1`` points after it are scored by fewer windows (a segment shorter
  than one window gets no score: NaN).

Timestamps may be plain numbers, or dates: written as text in one format, found at fit (ISO
8601 when the training times all are) and required of every time scored after, so that
"12/01/2024" means the same day in every row; training times in no one format are each read
as they look, the day first or not as found. Numbers are not read as dates.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pandas.tseries.api import guess_datetime_format

from anomaly.data.tabular import _refuse_first, mostly_numbers, to_numbers, truth_values
from anomaly.errors import InputError

log = logging.getLogger(__name__)

_FLOAT32_MAX = float(np.finfo(np.float32).max)
ISO8601 = "ISO8601"  # pandas' name for any ISO 8601 time: never ambiguous, so preferred
# Training times in no one format (a bare date at midnight, seconds on some rows only): each
# time is read in the format it looks like, with the day before the month or not, as found.
MIXED, MIXED_DAY_FIRST = "mixed", "mixed, day first"
_CLOCK_WORDS = ("now", "today")  # not times: pandas reads them as the clock's
_FORMAT_SAMPLE = 10  # training times a format is guessed from
_OWN_STEP_FROM = 10  # steps a series needs at fit to keep its own typical step
# Kinds of values pandas.api.types.infer_dtype finds in a column
_NO_NUMBERS = ("string", "datetime", "datetime64", "date", "empty")


@dataclass(frozen=True)
class SequenceSchema:
    """Which columns hold time, series id and values, learned at fit and stored as JSON."""

    timestamp: str
    values: tuple[str, ...]
    series: str | None = None
    timestamp_kind: str = "datetime"  # or "number"
    step: float = 1.0  # the typical step between observations (seconds for dates)
    max_gap: float = 5.0  # a step over max_gap * step starts a new segment
    # The format of date times (strptime's, ISO8601, MIXED or MIXED_DAY_FIRST), found at
    # fit. None in models saved before it was kept: they read each time in whatever format it
    # looks like, as they did.
    time_format: str | None = None
    # The training data's other columns (labels, ids...): not read, but passed through to the
    # output, where the MLflow signature would otherwise drop them.
    ignored: tuple[str, ...] = ()
    # Each training series' typical step, by series id: series may be sampled at different
    # rates. Empty without a series column, and in models saved before it was kept.
    steps: dict[str, float] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """The columns a model of this schema reads: timestamp, series id (if any), values."""
        return [c for c in (self.timestamp, self.series, *self.values) if c]

    @property
    def text_columns(self) -> list[str]:
        """The columns read as written from a CSV file (``read_csv``'s ``as_text``), as the
        batch scorer reads them: timestamp and series id, where ``NA`` may name a series."""
        return [c for c in (self.timestamp, self.series) if c]

    @classmethod
    def infer(
        cls,
        frame: pd.DataFrame,
        *,
        timestamp: str,
        series: str | None = None,
        values: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        max_gap: float = 5.0,
    ) -> SequenceSchema:
        """Learn the schema from normal rows: value columns default to the numeric ones, and
        date times are read in the one format they are written in."""
        # Names as the frame's are (pd.DataFrame(array)'s 0 is "0"), as a table's schema has them.
        timestamp, series = str(timestamp), None if series is None else str(series)
        values = None if values is None else [str(name) for name in values]
        exclude = [str(name) for name in exclude]
        unknown = [name for name in exclude if name not in frame.columns]
        if unknown:
            raise InputError(
                f"cannot exclude column {unknown[0]!r}: no such column", column=unknown[0]
            )
        for name in (timestamp, series):
            if name is not None and name not in frame.columns:
                raise InputError(f"column {name!r} is not in the data", column=name)
        if len(frame) == 0:
            raise InputError("the data has no rows")
        if values is None:
            values = _value_columns(frame, {timestamp, series, *exclude})
        if _numbers_as_times(frame[timestamp]):
            kind, time_format = "number", None
        else:
            kind, time_format = "datetime", _time_format(frame[timestamp], timestamp)
        reads = {timestamp, series, *values}
        ignored = tuple(str(c) for c in frame.columns if c not in reads)
        schema = cls(timestamp, tuple(values), series, kind, 1.0, float(max_gap), time_format)
        step, steps = _typical_steps(schema.seconds(frame[timestamp]), schema._series_ids(frame))
        return cls(
            timestamp,
            tuple(values),
            series,
            kind,
            step,
            float(max_gap),
            time_format,
            ignored,
            steps if series is not None else {},
        )

    def prepare(self, frame: pd.DataFrame, *, window: int = 1, row_offset: int = 0) -> Segments:
        """Check, order and fill ``frame`` for windows of ``window`` points (by default, every
        segment must have values); errors name the column and first bad row."""
        times, ids, values = self.parse(frame, row_offset=row_offset)
        codes, names = pd.factorize(ids, sort=False)
        order = np.lexsort((times, codes))  # by series, then time
        t, c = times[order], codes[order]
        dup = (c[1:] == c[:-1]) & (t[1:] == t[:-1])
        if dup.any():
            i = int(order[np.flatnonzero(dup)[0] + 1])
            raise self.repeated(frame[self.timestamp].iloc[i], row_offset + i)
        return self.segments(
            t, c, values[order], order, names, window=window, rows=order + row_offset
        )

    def parse(
        self, frame: pd.DataFrame, *, row_offset: int = 0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``frame``'s timestamps (seconds), series ids and values (n, C; NaN where missing),
        in row order; errors name the column and first bad row."""
        missing = [c for c in self.names if c not in frame.columns]
        if missing:
            raise InputError(
                f"missing column {missing[0]!r} "
                f"(the model needs {', '.join(map(repr, self.names))})",
                column=missing[0],
            )
        times = self.seconds(frame[self.timestamp], row_offset)
        ids = self._series_ids(frame, row_offset)
        values = (
            np.column_stack([to_values(frame[c], c, row_offset) for c in self.values])
            if len(frame)
            else np.empty((0, len(self.values)))
        )
        return times, ids, values

    def repeated(self, timestamp, row: int) -> InputError:
        """The error for a timestamp seen twice in one series, at ``row``."""
        return InputError(
            f"column {self.timestamp!r}, row {row}: timestamp {str(timestamp)[:40]} repeats "
            "within its series",
            column=self.timestamp,
            row=row,
        )

    def segments(
        self,
        times: np.ndarray,
        codes: np.ndarray,
        values: np.ndarray,
        order: np.ndarray,
        names: Sequence,
        *,
        window: int,
        rows: np.ndarray | None = None,
    ) -> Segments:
        """Rows already in series-then-time order, without repeated times, split at gaps and
        filled: ``codes`` index the series ``names``; ``order`` maps each row to its input row.
        ``values`` (n, C) is filled in place.

        A column without values in a segment shorter than ``window`` stays NaN: no window, so
        no score, reads it. In a longer one it is an error naming the segment's first row
        (``rows``: each row's number) and time; without ``rows`` it names no row, as when
        rows still to come may yet fill the segment (a stream out of time order)."""
        same = codes[1:] == codes[:-1]
        limits = self.max_gap * np.array([self.step_of(name) for name in names], dtype=float)
        breaks = ~same | (np.diff(times) > limits[codes[1:]])
        n = len(times)
        starts = np.concatenate([[0], np.flatnonzero(breaks) + 1]) if n else np.empty(0, int)
        stops = np.concatenate([starts[1:], [n]]) if n else np.empty(0, int)
        bounds = np.column_stack([starts, stops]).astype(np.int64)
        for start, stop in bounds:
            empty = _interpolate(values[start:stop], times[start:stop])
            if empty is not None and stop - start >= window:
                row = None if rows is None else int(rows[start])
                raise self._unfilled(empty, names[codes[start]], times[start], stop - start, row)
        series = [names[codes[s]] for s in starts]
        # Kept within float32's range: a wild value is then a large number, not inf.
        finite = np.clip(values, -_FLOAT32_MAX, _FLOAT32_MAX)
        return Segments(finite.astype(np.float32), order, bounds, series)

    def step_of(self, series) -> float:
        """The typical step of ``series`` (an id): its own, or over all series when it was not
        seen at fit."""
        return self.steps.get(str(series), self.step)

    def gaps(self, times: np.ndarray, series="") -> np.ndarray:
        """Whether each step between consecutive ``times`` (of one series, in order) is a gap
        that starts a new segment: longer than ``max_gap`` of the series' typical steps."""
        return np.diff(times) > self.max_gap * self.step_of(series)

    def _unfilled(
        self, column: int, series, start: float, size: int, row: int | None
    ) -> InputError:
        """The error for a segment of ``size`` points, from time ``start`` (at ``row``), with
        no value in the value column ``column``."""
        name = self.values[column]
        where = f" in series {series!r}" if self.series else ""
        at = f"row {row}, " if row is not None else ""
        return InputError(
            f"column {name!r} has no values{where} in the {size} points from {at}"
            f"time {self.shown(start)} on: nothing to fill them from",
            column=name,
            row=row,
        )

    def split_in_time(self, frame: pd.DataFrame, share: float) -> tuple[pd.DataFrame, pd.DataFrame]:
        """``frame`` cut in two: the rows before the last ``share`` of each series in time,
        and that last share (each part in ``frame``'s row order)."""
        times = self.seconds(frame[self.timestamp])
        codes, _ = pd.factorize(self._series_ids(frame), sort=False)
        order = np.lexsort((times, codes))
        sizes = np.bincount(codes)
        firsts = np.cumsum(sizes) - sizes
        rank = np.empty(len(frame), dtype=np.int64)  # position of a row within its series
        rank[order] = np.arange(len(frame)) - firsts[codes[order]]
        later = rank >= (sizes - np.round(share * sizes).astype(np.int64))[codes]
        return frame[~later], frame[later]

    def first_overlap(self, earlier: pd.DataFrame, later: pd.DataFrame) -> tuple | None:
        """``(series, start, end)`` of the first series that ``later`` does not continue: it
        starts at ``start``, not after ``earlier``'s last point of it at ``end`` (times as
        text); None when every series of ``later`` comes after ``earlier``'s."""
        ends = (
            pd.Series(self.seconds(earlier[self.timestamp]))
            .groupby(self._series_ids(earlier))
            .max()
        )
        starts = (
            pd.Series(self.seconds(later[self.timestamp])).groupby(self._series_ids(later)).min()
        )
        shared = ends.index.intersection(starts.index)
        late = shared[(starts[shared] <= ends[shared]).to_numpy()]
        if len(late) == 0:
            return None
        name = late[0]
        return name, self.shown(starts[name]), self.shown(ends[name])

    def shown(self, seconds: float) -> str:
        """A time in seconds as a person reads it: a number, or an ISO date."""
        if self.timestamp_kind == "number":
            return f"{seconds:g}"
        return pd.Timestamp(seconds, unit="s", tz="UTC").isoformat()

    def seconds(self, column: pd.Series, row_offset: int = 0) -> np.ndarray:
        """The timestamps as float64 (seconds since 1970 for dates); a missing or unparsable
        one is an error naming its row (``row_offset`` + position)."""
        # A NaN time would sort last, and, never equal to itself, pass as no repeat.
        # "" too: the batch scorer reads an empty field as written.
        missing = column.isna().to_numpy() | (column.to_numpy() == "")
        _refuse_missing(missing, self.timestamp, row_offset, "timestamp")
        if self.timestamp_kind == "number":
            return to_numbers(column, self.timestamp, row_offset)
        # A number is no date: pandas would read it as nanoseconds since 1970.
        problem = "is a number; the model reads times as dates written as text"
        _refuse_first(_numbers(column), column, self.timestamp, row_offset, problem)
        # Each time in the one format (older models: each in the format it looks like).
        time_format = self.time_format or MIXED
        parsed = pd.to_datetime(
            column,
            errors="coerce",
            utc=True,
            format=MIXED if time_format == MIXED_DAY_FIRST else time_format,
            dayfirst=time_format == MIXED_DAY_FIRST,
        )
        if time_format in (MIXED, MIXED_DAY_FIRST):
            problem = "is not a timestamp"
        else:
            shown = "ISO 8601" if self.time_format == ISO8601 else self.time_format
            problem = f"is not a timestamp in the format {shown}, that of the training times"
        # pandas reads these two words as the time of reading, in any format.
        unread = parsed.isna().to_numpy() | column.isin(_CLOCK_WORDS).to_numpy()
        _refuse_first(unread, column, self.timestamp, row_offset, problem)
        # In the parsed values' own unit: in nanoseconds, times past 2262 overflow.
        epoch = pd.Timestamp(0, tz="UTC").as_unit(parsed.dt.unit)
        seconds = (parsed - epoch) / pd.Timedelta(1, "s")
        return seconds.to_numpy(dtype=np.float64)

    def _series_ids(self, frame: pd.DataFrame, row_offset: int = 0) -> np.ndarray:
        """Each row's series id as text; a missing or empty one (as a CSV file's empty value
        reads) is an error naming its row: it would be a series of its own, "nan" or ""."""
        if self.series is None:
            return np.full(len(frame), "", dtype=object)
        column = frame[self.series]
        ids = column.astype(str).to_numpy(dtype=object)
        _refuse_missing(
            column.isna().to_numpy() | (ids == ""), self.series, row_offset, "series id"
        )
        return ids

    def to_dict(self) -> dict:
        return {
            "timestamp": self.timestamp,
            "values": list(self.values),
            "series": self.series,
            "timestamp_kind": self.timestamp_kind,
            "step": self.step,
            "max_gap": self.max_gap,
            "time_format": self.time_format,
            "ignored": list(self.ignored),
            # Left out when empty: models with one series stay readable by older versions.
            **({"steps": self.steps} if self.steps else {}),
        }

    @classmethod
    def from_dict(cls, data: dict) -> SequenceSchema:
        return cls(
            **{**data, "values": tuple(data["values"]), "ignored": tuple(data.get("ignored", ()))}
        )


def _typical_steps(times: np.ndarray, ids: np.ndarray) -> tuple[float, dict[str, float]]:
    """The median step between consecutive times over all series (1 when there is none), and
    each series' own median step (of those with enough steps to tell it)."""
    codes, names = pd.factorize(ids, sort=False)
    order = np.lexsort((times, codes))
    t, c = times[order], codes[order]
    steps, series = np.diff(t), c[1:]
    kept = (series == c[:-1]) & (steps > 0)
    steps, series = steps[kept], series[kept]
    overall = float(np.median(steps)) if len(steps) else 1.0
    steps = pd.Series(steps).groupby(series)
    medians = steps.median()[steps.size() >= _OWN_STEP_FROM]
    return overall, {str(names[k]): float(v) for k, v in medians.items()}


@dataclass
class Segments:
    """Rows ordered by series and time, split into gap-free segments.

    ``values`` (n, C) follow ``order`` (sorted position -> input row); ``bounds`` (S, 2) are the
    [start, stop) of each segment in sorted positions; ``series`` names each segment's series.
    """

    values: np.ndarray
    order: np.ndarray
    bounds: np.ndarray
    series: list

    def window_starts(self, window: int, stride: int = 1) -> np.ndarray:
        """Sorted positions where windows start: every ``stride`` inside each segment, and one
        ending at each segment's last point so that every point of a long segment is covered."""
        starts = []
        for start, stop in self.bounds:
            if stop - start < window:
                continue
            s = np.arange(start, stop - window + 1, stride)
            if s[-1] != stop - window:
                s = np.append(s, stop - window)
            starts.append(s)
        return np.concatenate(starts) if starts else np.empty(0, dtype=np.int64)

    def windows(self, starts: np.ndarray, window: int) -> np.ndarray:
        """(N, C, window) float32 windows starting at ``starts``."""
        if len(starts) == 0:
            return np.empty((0, self.values.shape[1], window), dtype=np.float32)
        view = np.lib.stride_tricks.sliding_window_view(self.values, window, axis=0)
        return np.ascontiguousarray(view[starts])  # (N, C, window)

    def to_input_order(self, sorted_values: np.ndarray) -> np.ndarray:
        """Values indexed by sorted position, returned in the input's row order."""
        out = np.empty_like(sorted_values)
        out[self.order] = sorted_values
        return out


def _interpolate(block: np.ndarray, times: np.ndarray) -> int | None:
    """Fill NaNs of a segment in place, linearly in time; nearest value at the ends. Returns
    the first column without any value (left NaN), or None."""
    empty = None
    for j in range(block.shape[1]):
        col = block[:, j]
        missing = np.isnan(col)
        if not missing.any():
            continue
        if missing.all():
            if empty is None:
                empty = j
            continue
        col[missing] = np.interp(times[missing], times[~missing], col[~missing])
    return empty


def to_values(column: pd.Series, name: str, row_offset: int = 0) -> np.ndarray:
    """A value column as float64, NaN for missing: numbers, and true/false as 1/0 in any form
    (a DataFrame's bool, JSON's true, a file's "true" or "no"), so that an on/off sensor reads
    alike from every source. Anything else is an error naming the column and the first bad
    row (``row_offset`` + position)."""
    if pd.api.types.is_bool_dtype(column.dtype):
        return column.to_numpy(dtype=np.float64, na_value=np.nan)
    try:
        return to_numbers(column, name, row_offset)
    except InputError:
        if pd.api.types.is_numeric_dtype(column.dtype):
            raise
    # The slow path, for a column that holds true/false words (or bools among objects).
    truth = truth_values(column)
    spelled = ~np.isnan(truth)
    others = np.where(spelled, None, column.to_numpy(dtype=object))
    return np.where(spelled, truth, to_numbers(pd.Series(others, dtype=object), name, row_offset))


def _all_true_or_false(column: pd.Series) -> bool:
    """Whether a text column holds true/false words only (missing values aside)."""
    given = column.dropna()
    return len(given) > 0 and not np.isnan(truth_values(given)).any()


def _value_columns(frame: pd.DataFrame, skip: set) -> list[str]:
    """The value columns of ``frame`` by default: its columns of numbers but ``skip``.

    A column of numbers with a stray word ("ERR") reads as text: it is refused, naming the
    word, rather than silently left out of the model. The text columns left out are logged.
    """
    values, left_out = [], []
    for name in frame.columns:
        if name in skip:
            continue
        column = frame[name]
        if pd.api.types.is_numeric_dtype(column.dtype) or pd.api.types.is_bool_dtype(column.dtype):
            values.append(str(name))  # numpy's, pandas' or Arrow's numbers or true/false
        elif mostly_numbers(column) or _all_true_or_false(column):
            to_values(column, str(name))  # refuses the first value that is not a number
            values.append(str(name))  # numbers (or true/false) written as text
        else:
            left_out.append(str(name))
    if left_out:
        log.warning(
            "left out of the value columns, as not numeric: %s (name value_cols to choose)",
            ", ".join(map(repr, left_out)),
        )
    if not values:
        raise InputError(
            "no numeric value columns found; name them (value_cols) or fix their types"
        )
    return values


def _refuse_missing(missing: np.ndarray, name: str, row_offset: int, what: str) -> None:
    """Raise an InputError naming the column and the first ``missing`` row."""
    if missing.any():
        row = row_offset + int(np.flatnonzero(missing)[0])
        raise InputError(f"column {name!r}, row {row}: the {what} is missing", column=name, row=row)


def _numbers_as_times(column: pd.Series) -> bool:
    """Whether a time column holds numbers: of a numeric dtype, or text that is mostly
    numbers (a CSV file's "1709251200", as written; a stray word is then refused, naming its
    row) but for digits that a date format reads whole ("20240131")."""
    if pd.api.types.is_numeric_dtype(column.dtype):
        return True
    if not mostly_numbers(column):
        return False
    text = column.dropna()
    text = text[text != ""].astype(str)
    sample = text.iloc[np.linspace(0, len(text) - 1, min(len(text), _FORMAT_SAMPLE)).astype(int)]
    formats = {guess_datetime_format(v) for v in sample} - {None}
    return not any(_reads(text, fmt) == len(text) for fmt in formats)


def _numbers(column: pd.Series) -> np.ndarray:
    """Which values of a time column are numbers (not text, not dates)."""
    if pd.api.types.is_numeric_dtype(column.dtype):
        return column.notna().to_numpy()
    if pd.api.types.infer_dtype(column, skipna=True) in _NO_NUMBERS:
        return np.zeros(len(column), dtype=bool)  # the usual cases, without a look at each
    kinds = (int, float, np.number)
    return column.map(lambda v: isinstance(v, kinds) and not isinstance(v, bool)).to_numpy(bool)


def _time_format(column: pd.Series, name: str) -> str:
    """The one format a training column of date times is written in, in which every time is
    then read: ISO 8601 when they all are (or are dates already), else a format guessed from
    a sample that reads them all. When two do ("01/02/2024": day or month first), the first
    guessed is kept, with a warning. When none does (a bare date at midnight among times),
    :data:`MIXED` or :data:`MIXED_DAY_FIRST`, as the format reading the most has it."""
    text = column.dropna()
    if pd.api.types.infer_dtype(text, skipna=True) != "string":
        return ISO8601  # dates already: text scored later is read as ISO 8601
    sample = text.iloc[np.linspace(0, len(text) - 1, min(len(text), _FORMAT_SAMPLE)).astype(int)]
    with warnings.catch_warnings():  # pandas warns when a guess reads the day first
        warnings.simplefilter("ignore", UserWarning)
        guesses = [guess_datetime_format(v, dayfirst=d) for v in sample for d in (False, True)]
    formats = [fmt for fmt in dict.fromkeys([ISO8601, *guesses]) if fmt is not None]
    # Only the formats that read the most of the sample are tried on every time: a read of a
    # million times takes a second.
    on_sample = {fmt: _reads(sample, fmt) for fmt in formats}
    read = {}
    for fmt in (fmt for fmt in formats if on_sample[fmt] == max(on_sample.values())):
        read[fmt] = _reads(text, fmt)
        if fmt == ISO8601 and read[fmt] == len(text):
            return ISO8601  # never ambiguous
    complete = [fmt for fmt, n in read.items() if n == len(text)]
    if len(complete) > 1:
        log.warning(
            "column %r: its times read in the formats %s; reading them as %s (ISO 8601 "
            "times, 2024-01-31, are never ambiguous)",
            name,
            " and ".join(complete),
            complete[0],
        )
    if complete:
        return complete[0]
    # No one format reads them all: each time is read as it looks, the day first or not as
    # in the format that reads the most (ISO 8601 on a tie).
    most = max(read.values())
    best = [fmt for fmt, n in read.items() if n == most]
    if len({_day_first(fmt) for fmt in best}) > 1:
        log.warning(
            "column %r: no one format reads all its times, and the most are read as well "
            "in the formats %s; reading each time as it looks, %s (ISO 8601 times, "
            "2024-01-31, are never ambiguous)",
            name,
            " and ".join(best),
            "the day first" if _day_first(best[0]) else "the month first",
        )
    return MIXED_DAY_FIRST if _day_first(best[0]) else MIXED


def _day_first(fmt: str) -> bool:
    """Whether a strptime format puts the day before the month."""
    return fmt != ISO8601 and -1 < fmt.find("%d") < fmt.find("%m")


def _reads(text: pd.Series, fmt: str) -> int:
    """How many of the times ``text`` ``fmt`` reads."""
    parsed = pd.to_datetime(text, format=fmt, errors="coerce", utc=True)
    return int(parsed.notna().sum())
