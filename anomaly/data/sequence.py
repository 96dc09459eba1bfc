"""Time series in a table: checked, ordered, gap-split and cut into sliding windows.

A file holds one or more series: a timestamp column, an optional series-id column, and one or
more numeric value columns. The policy for imperfect data, the same at fit and at scoring:

- **Order.** Rows may come in any order; each series is put in timestamp order, and results go
  back to the input order. Two rows of one series with the same timestamp are an error.
- **Missing values** are interpolated linearly in time within a segment (the nearest value at
  its ends). A segment with no value at all in a column is an error naming column and series.
- **Gaps.** Windows run over consecutive observations. A step longer than ``max_gap`` times the
  typical step (the median step seen at fit) starts a new segment: no window straddles the gap,
  and the first ``window - 1`` points after it are scored by fewer windows (a segment shorter
  than one window gets no score: NaN).

Timestamps may be dates (anything pandas parses) or plain numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from anomaly.data.tabular import _show, _to_float
from anomaly.errors import InputError

_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class SequenceSchema:
    """Which columns hold time, series id and values, learned at fit and stored as JSON."""

    timestamp: str
    values: tuple[str, ...]
    series: str | None = None
    timestamp_kind: str = "datetime"  # or "number"
    step: float = 1.0  # the typical step between observations (seconds for dates)
    max_gap: float = 5.0  # a step over max_gap * step starts a new segment

    @property
    def names(self) -> list[str]:
        """The columns a model of this schema reads: timestamp, series id (if any), values."""
        return [c for c in (self.timestamp, self.series, *self.values) if c]

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
        """Learn the schema from normal rows: value columns default to the numeric ones."""
        for name in (timestamp, series):
            if name is not None and name not in frame.columns:
                raise InputError(f"column {name!r} is not in the data", column=name)
        if len(frame) == 0:
            raise InputError("the data has no rows")
        if values is None:
            skip = {timestamp, series, *exclude}
            values = [
                str(c)
                for c in frame.columns
                if c not in skip and pd.api.types.is_numeric_dtype(frame[c].dtype)
            ]
            if not values:
                raise InputError(
                    "no numeric value columns found; name them (value_cols) or fix their types"
                )
        kind = "number" if pd.api.types.is_numeric_dtype(frame[timestamp].dtype) else "datetime"
        schema = cls(timestamp, tuple(values), series, kind, 1.0, float(max_gap))
        times = schema.seconds(frame[timestamp])
        ids = schema._series_ids(frame)
        steps = [np.diff(np.sort(times[ids == s])) for s in pd.unique(ids)]
        steps = np.concatenate(steps) if steps else np.empty(0)
        steps = steps[steps > 0]
        step = float(np.median(steps)) if len(steps) else 1.0
        return cls(timestamp, tuple(values), series, kind, step, float(max_gap))

    def prepare(self, frame: pd.DataFrame, *, row_offset: int = 0) -> Segments:
        """Check, order and fill ``frame``; errors name the column and first bad row."""
        times, ids, values = self.parse(frame, row_offset=row_offset)
        codes, names = pd.factorize(ids, sort=False)
        order = np.lexsort((times, codes))  # by series, then time
        t, c = times[order], codes[order]
        dup = (c[1:] == c[:-1]) & (t[1:] == t[:-1])
        if dup.any():
            i = int(order[np.flatnonzero(dup)[0] + 1])
            raise self.repeated(frame[self.timestamp].iloc[i], row_offset + i)
        return self.segments(t, c, values[order], order, names)

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
        ids = self._series_ids(frame)
        values = (
            np.column_stack([_to_float(frame[c], c, row_offset) for c in self.values])
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
    ) -> Segments:
        """Rows already in series-then-time order, without repeated times, split at gaps and
        filled: ``codes`` index the series ``names``; ``order`` maps each row to its input row.
        ``values`` (n, C) is filled in place."""
        same = codes[1:] == codes[:-1]
        breaks = ~same | (np.diff(times) > self.max_gap * self.step)
        n = len(times)
        starts = np.concatenate([[0], np.flatnonzero(breaks) + 1]) if n else np.empty(0, int)
        stops = np.concatenate([starts[1:], [n]]) if n else np.empty(0, int)
        bounds = np.column_stack([starts, stops]).astype(np.int64)
        for start, stop in bounds:
            _interpolate(values[start:stop], times[start:stop], self.values, names[codes[start]])
        series = [names[codes[s]] for s in starts]
        # Kept within float32's range: a wild value is then a large number, not inf.
        finite = np.clip(values, -_FLOAT32_MAX, _FLOAT32_MAX)
        return Segments(finite.astype(np.float32), order, bounds, series)

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
        """The timestamps as float64 (seconds since 1970 for dates); an unparsable one is an
        error naming its row (``row_offset`` + position)."""
        if self.timestamp_kind == "number":
            return _to_float(column, self.timestamp, row_offset)
        parsed = pd.to_datetime(column, errors="coerce", utc=True, format="mixed")
        bad = parsed.isna().to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"column {self.timestamp!r}, row {row_offset + i}: "
                f"{_show(column.iloc[i])} is not a timestamp",
                column=self.timestamp,
                row=row_offset + i,
            )
        # In the parsed values' own unit: in nanoseconds, times past 2262 overflow.
        epoch = pd.Timestamp(0, tz="UTC").as_unit(parsed.dt.unit)
        seconds = (parsed - epoch) / pd.Timedelta(1, "s")
        return seconds.to_numpy(dtype=np.float64)

    def _series_ids(self, frame: pd.DataFrame) -> np.ndarray:
        if self.series is None:
            return np.full(len(frame), "", dtype=object)
        return frame[self.series].astype(str).to_numpy(dtype=object)

    def to_dict(self) -> dict:
        return {
            "timestamp": self.timestamp,
            "values": list(self.values),
            "series": self.series,
            "timestamp_kind": self.timestamp_kind,
            "step": self.step,
            "max_gap": self.max_gap,
        }

    @classmethod
    def from_dict(cls, data: dict) -> SequenceSchema:
        return cls(**{**data, "values": tuple(data["values"])})


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


def _interpolate(block: np.ndarray, times: np.ndarray, names: Sequence[str], series) -> None:
    """Fill NaNs of a segment in place, linearly in time; nearest value at the ends."""
    for j in range(block.shape[1]):
        col = block[:, j]
        missing = np.isnan(col)
        if not missing.any():
            continue
        if missing.all():
            where = f" in series {series!r}" if series else ""
            raise InputError(
                f"column {names[j]!r} has no values{where}: nothing to fill the gaps from",
                column=names[j],
            )
        col[missing] = np.interp(times[missing], times[~missing], col[~missing])
