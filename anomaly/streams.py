"""Scoring time series point by point: a window buffer per stream.

Each stream (a series, named by the client) keeps its last ``window`` points. A point is scored
as soon as the window ending at it is full: its score is the score of that window, the same
number :meth:`SequenceDetector.score` gives with ``by="window"`` for the same points. The
stream's policy for imperfect points, which differs from a file's only where a file can look
ahead:

- a point must come after the stream's last point in time (else the request is refused whole);
- a missing value takes the stream's previous value for that column (a file interpolates);
- a step longer than ``max_gap`` typical steps (of the training series named as the stream,
  else over all series) empties the buffer: the next
  ``window - 1`` points get no score, with that reason;
- a model hot reload keeps the buffers; a new model with other value columns empties them.

Where buffers live: :class:`MemoryStreams` keeps them in the process (bounded: at most
``max_streams``, the least recently used go first, and idle ones expire after ``ttl_s``), so
one process must see all of a stream's points: one worker per replica, and replicas reached by
stream id (e.g. a consistent-hash load balancer). :class:`RedisStreams` keeps them in Redis, so
any worker of any replica can take any point.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from anomaly.data.sequence import to_values
from anomaly.errors import InputError


@dataclass
class Buffer:
    """A stream's recent points: times (seconds) and values (one list per point)."""

    columns: tuple[str, ...]
    times: list[float] = field(default_factory=list)
    values: list[list[float]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"columns": self.columns, "times": self.times, "values": self.values})

    @classmethod
    def from_json(cls, text: str) -> Buffer:
        data = json.loads(text)
        return cls(tuple(data["columns"]), data["times"], data["values"])


@dataclass
class Pushed:
    """What pushing points gave: the full windows, and for each point its window's row in
    ``windows`` (or -1, with the reason it has none)."""

    windows: np.ndarray  # (N, window, n_values)
    row: np.ndarray  # (n_points,) index into windows, -1 when the point has no window
    reasons: list[str | None]


def parse_points(detector, points: Sequence[Mapping]) -> tuple[np.ndarray, np.ndarray]:
    """Times (seconds) and values (n, n_values, NaN when missing) of a request's points;
    errors name the point and the field."""
    schema = detector.schema_
    if not points:
        return np.empty(0), np.empty((0, len(schema.values)))
    # Other fields (a label, the series id, what a collector adds) are left alone: a typo of
    # a value's name is refused as that value missing, and models saved before they recorded
    # their training data's other columns could not tell those from a stranger.
    for i, point in enumerate(points):
        for name in (schema.timestamp, *schema.values):
            if name not in point:
                raise InputError(f"point {i}: missing field {name!r}", column=name, row=i)
            value = point[name]
            if name == schema.timestamp and (problem := _not_a_time(value)):
                raise InputError(f"point {i}: {name!r} {problem}", column=name, row=i)
            # JSON may carry a lone surrogate ("\ud800"), which no text column can hold.
            if isinstance(value, str) and not value.isascii() and not _encodes(value):
                raise InputError(f"point {i}: {name!r} holds an unpaired surrogate, not text",
                                 column=name, row=i)  # fmt: skip
    frame = pd.DataFrame(
        [{k: p.get(k) for k in (schema.timestamp, *schema.values)} for p in points]
    )
    times = schema.seconds(frame[schema.timestamp])
    values = np.column_stack([to_values(frame[c], c) for c in schema.values])
    return times, values


def _not_a_time(value) -> str | None:
    """Why a JSON value cannot be a point's time (None when it may be one)."""
    if isinstance(value, bool):
        return f"is {str(value).lower()}, not a time"
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        return "is out of range: times are echoed back as 64-bit integers at most"
    return None


def _encodes(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def push(
    detector, buffer: Buffer | None, times: np.ndarray, values: np.ndarray, stream_id: str = ""
):
    """Append points to a stream's buffer; returns the new buffer and a :class:`Pushed`. A
    stream named as a training series has that series' typical step (gaps are longer than
    ``max_gap`` of them).

    Pure: the old buffer is not changed, so a refused request leaves the stream as it was.
    """
    schema, window = detector.schema_, detector.window
    longest_step = schema.max_gap * schema.step_of(stream_id)
    if buffer is None or buffer.columns != schema.values:
        buffer = Buffer(schema.values)
    kept_times, kept_values = list(buffer.times), [list(v) for v in buffer.values]
    windows, rows, reasons = [], np.full(len(times), -1), []
    for i, (t, point) in enumerate(zip(times, values, strict=True)):
        if kept_times and t <= kept_times[-1]:
            raise InputError(
                f"point {i}: timestamp is not after the stream's last point",
                column=schema.timestamp,
                row=i,
            )
        reason = None
        if kept_times and t - kept_times[-1] > longest_step:
            kept_times, kept_values = [], []
            reason = "a gap in time: the window restarts"
        missing = np.isnan(point)
        if missing.any():
            if not kept_values:
                name = schema.values[int(np.flatnonzero(missing)[0])]
                since = " since the gap before it" if reason else ""
                raise InputError(
                    f"point {i}: {name!r} is missing and the stream has no earlier value{since}",
                    column=name,
                    row=i,
                )
            point = np.where(missing, kept_values[-1], point)
        kept_times.append(float(t))
        kept_values.append([float(v) for v in point])
        del kept_times[:-window], kept_values[:-window]
        if len(kept_times) == window:
            rows[i] = len(windows)
            windows.append(np.asarray(kept_values, dtype=np.float32))
        else:
            reason = reason or f"the window is not full yet ({len(kept_times)} of {window} points)"
        reasons.append(reason if rows[i] < 0 else None)
    stacked = (
        np.stack(windows) if windows else np.empty((0, window, len(schema.values)), np.float32)
    )
    return Buffer(schema.values, kept_times, kept_values), Pushed(stacked, rows, reasons)


class MemoryStreams:
    """Buffers in this process: at most ``max_streams`` (least recently used evicted first),
    each dropped after ``ttl_s`` seconds without a point."""

    def __init__(self, max_streams: int = 10_000, ttl_s: float = 3600.0):
        self.max_streams, self.ttl_s = max_streams, ttl_s
        self._buffers: OrderedDict[str, tuple[float, Buffer]] = OrderedDict()
        self._lock = threading.Lock()

    def update(self, stream_id: str, detector, times: np.ndarray, values: np.ndarray) -> Pushed:
        with self._lock:
            now = time.monotonic()
            self._expire(now)
            entry = self._buffers.get(stream_id)
            buffer, pushed = push(detector, entry[1] if entry else None, times, values, stream_id)
            self._buffers[stream_id] = (now, buffer)
            self._buffers.move_to_end(stream_id)
            while len(self._buffers) > self.max_streams:
                self._buffers.popitem(last=False)
            return pushed

    def __len__(self) -> int:
        return len(self._buffers)

    def _expire(self, now: float) -> None:
        while self._buffers:
            stream_id, (seen, _) = next(iter(self._buffers.items()))
            if now - seen <= self.ttl_s:
                break
            del self._buffers[stream_id]


class RedisStreams:
    """Buffers in Redis (one key per stream, expiring after ``ttl_s`` idle seconds), shared by
    every worker and replica. An update is a check-and-set transaction: two requests for one
    stream at once are applied one after the other, never interleaved."""

    def __init__(self, url: str, ttl_s: float = 3600.0, prefix: str = "anomaly:stream:"):
        import redis

        # A stalled server answers an error after seconds, not a request that hangs for ever.
        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.ttl_s, self.prefix = ttl_s, prefix

    def update(self, stream_id: str, detector, times: np.ndarray, values: np.ndarray) -> Pushed:
        import redis

        key = self.prefix + stream_id
        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    stored = pipe.get(key)
                    buffer = Buffer.from_json(stored) if stored is not None else None
                    new_buffer, pushed = push(detector, buffer, times, values, stream_id)
                    pipe.multi()
                    pipe.set(key, new_buffer.to_json(), ex=max(1, round(self.ttl_s)))
                    pipe.execute()
                    return pushed
                except redis.WatchError:
                    continue  # another request changed the stream first: read it again
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    message = f"the stream store (Redis) is unavailable: {exc}"
                    raise StoreUnavailable(message) from None


class StoreUnavailable(Exception):
    """The shared stream store could not be reached: the service's fault, not the client's."""
