"""Anomaly detection on time series: window autoencoders, per-point scores, calibrated.

:class:`SequenceDetector` follows :class:`anomaly.Detector`'s API for a table of time series
(see :mod:`anomaly.data.sequence` for the data policy). Each series is cut into sliding windows
of ``window`` observations; a window autoencoder learns normal windows.

Scores, higher = more anomalous:

- a **point's score** (``score(frame)``, what ``anomaly score`` writes) is the mean of the
  scores of every window that covers the point. It uses the points after it too. (On NAB this
  ranked anomalies better than the window score alone and than the model's error at the point
  itself: BENCHMARKS.md.)
- a **window's score** (``score(frame, by="window")``, what a stream answers) belongs to the
  window's last point: reconstruction error or negative ELBO of the window that ends there. It
  uses only the past, so a stream can answer as each point arrives.

Both are calibrated, each on its own scores of the calibration part of the normal data (the last
``calibration_fraction`` of every series, in time, never trained on).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from anomaly.calibration import Calibrator
from anomaly.data.sequence import Segments, SequenceSchema
from anomaly.data.tabular import with_text_names
from anomaly.errors import InputError
from anomaly.estimator import AutoencoderDetector
from anomaly.models.sequence import ARCHS, SequenceAE, SequenceVAE
from anomaly.preprocessing import STANDARDISED_LIMIT, mean_and_std
from anomaly.scoring import score_array

log = logging.getLogger(__name__)

RESULT_COLUMNS = ("anomaly_score", "is_anomaly", "p_value")
BY = ("point", "window")
_WINDOWS_AT_ONCE = 65_536  # windows cut and scored per slice when scoring a table of points
_POINTS_AT_ONCE = 65_536  # points scored at once when scoring a stream in time order


class SequenceDetector(AutoencoderDetector):
    """Window AE or VAE for one or many time series in a table.

    Parameters
    ----------
    timestamp_col : str
        The time column (dates or numbers).
    series_col : str, optional
        The series-id column, when a table holds several series.
    value_cols : str or sequence of str, optional
        The value columns; by default every numeric column but the others named here.
    exclude : str or list of str
        Columns to ignore when value columns are inferred (labels, ids).
    model : {"ae", "vae"}, default="ae"
    arch : {"conv", "gru"}, default="conv"
        Encoder-decoder body (:mod:`anomaly.models.sequence`).
    window : int, default=32
        Observations per window.
    stride : int, default=1
        Step between training windows (scoring always uses every window).
    latent : int, optional
        Latent size; by default ``clip(window // 4, 4, 16)``.
    hidden : int, default=32
        Channels (conv) or state size (gru).
    dropout, denoise, beta, n_samples, target_fpr, threshold_method, epochs, batch_size, lr,
    weight_decay, patience, seed, device, progress
        As for :class:`anomaly.Detector`.
    score : {"reconstruction", "elbo", "iwae"}, optional
        The window score; default ``elbo`` for a VAE, ``reconstruction`` for an AE.
    max_gap : float, default=5.0
        A step longer than ``max_gap`` typical steps starts a new segment.
    calibration_fraction, validation_fraction : float
        The last parts of every series, in time, held out for calibration and early stopping.
    """

    kind = "sequence"

    def __init__(
        self,
        timestamp_col: str = "timestamp",
        series_col: str | None = None,
        value_cols: str | list[str] | None = None,
        exclude: str | tuple[str, ...] | list[str] = (),
        model: str = "ae",
        arch: str = "conv",
        window: int = 32,
        stride: int = 1,
        latent: int | None = None,
        hidden: int = 32,
        dropout: float = 0.0,
        denoise: float = 0.0,
        beta: float = 1.0,
        score: str | None = None,
        n_samples: int = 0,
        max_gap: float = 5.0,
        target_fpr: float = 0.01,
        threshold_method: str = "quantile",
        calibration_fraction: float = 0.2,
        validation_fraction: float = 0.1,
        epochs: int = 100,
        batch_size: int | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        patience: int = 10,
        seed: int = 0,
        device: str = "auto",
        progress: bool = False,
    ):
        self.timestamp_col = timestamp_col
        self.series_col = series_col
        self.value_cols = (
            (value_cols,)
            if isinstance(value_cols, str)
            else tuple(value_cols)
            if isinstance(value_cols, list)
            else value_cols
        )
        self.exclude = (exclude,) if isinstance(exclude, str) else tuple(exclude)
        self.model = model
        self.arch = arch
        self.window = window
        self.stride = stride
        self.latent = latent
        self.hidden = hidden
        self.dropout = dropout
        self.denoise = denoise
        self.beta = beta
        self.score_method = score
        self.n_samples = n_samples
        self.max_gap = max_gap
        self.target_fpr = target_fpr
        self.threshold_method = threshold_method
        self.calibration_fraction = calibration_fraction
        self.validation_fraction = validation_fraction
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.patience = patience
        self.seed = seed
        self.device = device
        self.progress = progress

    # ------------------------------------------------------------------ parameters
    def _check_params(self) -> None:
        if self.model not in ("ae", "vae"):
            raise InputError(f"unknown model {self.model!r}; choose 'ae' or 'vae'")
        if self.arch not in ARCHS:
            raise InputError(f"unknown arch {self.arch!r}; choose one of {ARCHS}")
        self._check_shared()
        self._check_score()
        if self.window < 2:
            raise InputError(f"window must be at least 2, got {self.window}")
        for name in ("stride", "epochs", "patience", "hidden"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 < self.calibration_fraction < 1.0:
            raise InputError(
                f"calibration_fraction must be in (0, 1), got {self.calibration_fraction}"
            )
        if not 0.0 <= self.validation_fraction < 1.0 - self.calibration_fraction:
            raise InputError(f"validation_fraction {self.validation_fraction} leaves no training")

    def _architecture(self, channels: int) -> dict:
        latent = self.latent or int(np.clip(self.window // 4, 4, 16))
        return {
            "channels": channels,
            "window": self.window,
            "latent": latent,
            "hidden": self.hidden,
            "arch": self.arch,
        }

    def _build_module(self, arch: dict) -> torch.nn.Module:
        if self.model == "vae":
            return SequenceVAE(
                **arch, dropout=self.dropout, n_samples=self.n_samples, seed=self.seed
            )
        return SequenceAE(**arch, dropout=self.dropout)

    # ------------------------------------------------------------------ fit
    def fit(
        self, frame: pd.DataFrame, *, warm_start_from: SequenceDetector | None = None
    ) -> SequenceDetector:
        """Learn normal windows from ``frame``, rows of series believed normal.

        ``warm_start_from``, a fitted detector of the same model and shape, is continued
        from: its schema, scaling and architecture are kept (so its inputs mean the same),
        training starts from its weights, and both thresholds are calibrated anew on
        ``frame``'s calibration part.
        """
        self._check_before_training()
        frame = _as_frame(frame)
        if warm_start_from is None:
            schema = SequenceSchema.infer(
                frame,
                timestamp=self.timestamp_col,
                series=self.series_col,
                values=self.value_cols,
                exclude=self.exclude,
                max_gap=self.max_gap,
            )
        else:
            warm_start_from._check_fitted()
            schema = warm_start_from.schema_
        segments = schema.prepare(frame, window=self.window)
        if schema.series is not None:
            _warn_unwindowed(segments, self.window)
        train_part, val_part, cal_part = _split_in_time(
            segments, self.validation_fraction, self.calibration_fraction
        )
        if warm_start_from is None:
            train_values = np.concatenate([segments.values[a:b] for a, b in train_part.bounds])
            mean, std = _mean_std(train_values)
            self.mean_ = mean.astype(np.float32)
            self.std_ = np.where(std > 1e-8, std, 1.0).astype(np.float32)
        else:
            self.mean_, self.std_ = warm_start_from.mean_, warm_start_from.std_
        scaled = self._scaled(segments.values)
        for part in (train_part, val_part, cal_part):
            part.values = scaled
        x_train = train_part.windows(
            train_part.window_starts(self.window, self.stride), self.window
        )
        x_val = val_part.windows(val_part.window_starts(self.window), self.window)
        cal_starts = cal_part.window_starts(self.window)
        if len(x_train) < 10:
            raise InputError(
                f"{len(x_train)} training windows of {self.window} points are too few: give "
                "longer series or a shorter window"
            )
        if len(cal_starts) == 0:
            raise InputError(
                f"the calibration part of the series (the last {self.calibration_fraction:.0%} "
                f"of each) holds no gap-free stretch of one window ({self.window} points): "
                "give longer series, a larger calibration_fraction or a shorter window"
            )
        # evt's least number of calibration windows: before training, not after
        Calibrator(target_fpr=self.target_fpr, method=self.threshold_method).check(len(cal_starts))

        arch, module = self._initial_module(
            warm_start_from, lambda: self._architecture(len(schema.values))
        )
        run = self._train(module, x_train, x_val)
        self.schema_, self.architecture_ = schema, arch
        window_scores, point_scores = self._score_segments(cal_part, cal_starts)
        self.window_calibrator_ = Calibrator(
            target_fpr=self.target_fpr, method=self.threshold_method
        ).fit(window_scores)
        self.calibrator_ = Calibrator(target_fpr=self.target_fpr, method=self.threshold_method).fit(
            point_scores[~np.isnan(point_scores)]
        )
        self.training_summary_ = {
            "n_series": len(set(segments.series)),
            "n_points": len(frame),
            "n_train": len(x_train),
            "n_validation": len(x_val),
            "n_calibration": len(cal_starts),
            **run,
        }
        return self

    # ------------------------------------------------------------------ score
    @property
    def threshold_(self) -> float:
        """The point-score threshold (``window_calibrator_.threshold_`` for window scores)."""
        self._check_fitted()
        return self.calibrator_.threshold_

    def score(self, frame: pd.DataFrame, *, by: str = "point", row_offset: int = 0) -> pd.DataFrame:
        """Score every row of ``frame``; a DataFrame indexed like it.

        Parameters
        ----------
        frame : DataFrame
            Rows with the timestamp, series-id and value columns the detector was trained on.
        by : {"point", "window"}
            ``point``: the score of each point over all windows covering it. ``window``: the
            score of the window that ends at each point (NaN for a segment's first
            ``window - 1`` points), as a stream answers.
        row_offset : int
            Added to row positions in error messages.

        Returns
        -------
        DataFrame with ``anomaly_score`` (float, NaN where no window covers the point),
        ``is_anomaly`` (bool) and ``p_value`` (float, NaN with the score).
        """
        self._check_fitted()
        if by not in BY:
            raise InputError(f"by must be one of {BY}, got {by!r}")
        frame = _as_frame(frame)
        segments = self.schema_.prepare(frame, window=self.window, row_offset=row_offset)
        return pd.DataFrame(self._score_prepared(segments, by), index=frame.index)

    def score_time_ordered(
        self, pieces: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Point scores of a long stream of rows, in memory that grows with the number of
        series, not with the stream.

        ``pieces`` yields ``(rows, times, ids, values)``: each row's number, and what
        :meth:`SequenceSchema.parse` returns for it. Every series must come in time order
        (series may interleave). Yields ``(rows, results)`` as points become final: their
        windows, and the values needed to fill those windows' gaps, have all arrived. The
        results are those :meth:`score` gives for the whole stream, bit for bit.

        Raises
        ------
        OutOfTimeOrder
            When a series goes back in time: score such data whole.
        InputError
            A timestamp repeated within its series (naming its row), or a segment of a window
            or more without a value in a column (naming its row once the stream has ended:
            before, rows out of time order further on might fill it).
        """
        self._check_fitted()
        tails, enough = _Tails(), self._ready_enough()
        for rows, times, ids, values in pieces:
            if not len(rows):  # a block of blank lines
                continue
            # The block's rows by series (in file order within each), checked all at once: a loop
            # over thousands of series per block must do little more than hand out slices.
            codes, names = pd.factorize(ids, sort=False)
            order = np.argsort(codes, kind="stable")
            rows, times, values = rows[order], times[order], values[order]
            ends = np.cumsum(np.bincount(codes, minlength=len(names)))
            starts = np.r_[0, ends[:-1]]
            series = [tails[name] for name in names]
            _check_time_order(series, starts, rows, times, self.schema_)
            # Each column's last observed value in each series' rows (-1: none).
            observed = np.where(~np.isnan(values), np.arange(len(rows))[:, None], -1)
            for tail, lo, hi, last in zip(
                series, starts, ends, np.maximum.reduceat(observed, starts, axis=0), strict=True
            ):
                tail.append(rows[lo:hi], times[lo:hi], values[lo:hi], last - lo)
            ready = (tail.ready(self.window) for tail in tails.values())
            due = sum(n for n in ready if n >= enough) >= _POINTS_AT_ONCE
            if due and (done := self._finish(tails.values(), final=False)) is not None:
                yield done
        if (done := self._finish(tails.values(), final=True)) is not None:
            yield done

    def _finish(
        self, tails: Iterable[_SeriesTail], *, final: bool
    ) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
        """Score the points of ``tails`` that are final (all of them when ``final``: the
        stream has ended), together, and keep the context later points need; their rows and
        results, or None when no series has enough.

        A point's score depends on the points within ``window - 1`` of it, and their values
        on the nearest observed values of each column around them, in their segment (gaps are
        interpolated). So a point is final once every column has an observed value at or
        after the point ``window - 1`` after it: a row need not hold every column (sensors
        logged on rows of their own). A pass reads the rows up to each column's next value
        from there (:meth:`_pass_end`); the kept context starts at each column's last value
        before the next point's first window (:meth:`_context_start`): scoring from there
        sees exactly what scoring the whole series sees.
        """
        w = self.window
        parts = []  # (tail, its (rows, times, values), rows scored in it, end of final points)
        for tail in tails:
            last = tail.size if final else tail.observed - w + 1
            if last - tail.done >= (1 if final else self._ready_enough()):
                arrays = tail.arrays()
                stop = tail.size if final else self._pass_end(arrays, tail.observed - 1, tail.name)
                parts.append((tail, arrays, stop, last))
        if not parts:
            return None
        # One pass for every series: windows are scored in blocks of a steady size, whatever
        # the number of series (small passes per series ran 2x slower, in memory churn).
        stops = [stop for *_, stop, _ in parts]
        # Rows are named in errors only once the stream has ended in time order: before, rows
        # out of order may yet fill a segment without values (the file is then read whole).
        named = (
            np.concatenate([rows[:stop] for (_, (rows, _, _), stop, _) in parts]) if final else None
        )
        segments = self.schema_.segments(
            np.concatenate([times[:stop] for (_, (_, times, _), stop, _) in parts]),
            np.repeat(np.arange(len(parts)), stops),
            np.concatenate([values[:stop] for (_, (_, _, values), stop, _) in parts]),
            np.arange(sum(stops)),
            [tail.name for tail, *_ in parts],
            window=w,
            rows=named,
        )
        scored = self._score_prepared(segments, "point")
        finished = np.zeros(len(segments.values), dtype=bool)
        done_rows, offset = [], 0
        for tail, (rows, times, values), stop, last in parts:
            finished[offset + tail.done : offset + last] = True
            done_rows.append(rows[tail.done : last])
            offset += stop
            if not final:
                tail.keep(self._context_start(times, values, max(0, last - w + 1), tail.name), last)
        return np.concatenate(done_rows), {name: col[finished] for name, col in scored.items()}

    def _breaks(self, times: np.ndarray, series) -> np.ndarray:
        """Where segments start among rows of ``series`` in time order, but the first (as
        :meth:`SequenceSchema.segments` splits them): after a step longer than ``max_gap``."""
        return np.flatnonzero(self.schema_.gaps(times, series)) + 1

    def _pass_end(self, arrays: tuple[np.ndarray, ...], needed: int, series) -> int:
        """The rows of a series that a pass reads to score the points whose windows end by
        ``needed`` as the whole series would: up to each column's first value at or after
        ``needed`` (all have arrived), which the gaps before it are interpolated from; or up
        to the end of ``needed``'s segment, when that comes first. Not further: a segment
        begun later may lack a column only for now (an error to the pass)."""
        _, times, values = arrays
        stop = needed + 1 + int((~np.isnan(values[needed:])).argmax(axis=0).max())
        breaks = self._breaks(times[needed:stop], series)
        return needed + int(breaks[0]) if len(breaks) else stop

    def _context_start(self, times: np.ndarray, values: np.ndarray, first: int, series) -> int:
        """The first row of a series to keep when the windows still to score start at
        ``first`` or later: each column's last value at or before ``first`` in its segment,
        the value the gaps after it are interpolated from (a column without one there is
        filled from its values after: nothing to keep for it)."""
        breaks = self._breaks(times[: first + 1], series)
        segment = int(breaks[-1]) if len(breaks) else 0
        seen = ~np.isnan(values[segment : first + 1])
        previous = np.where(seen.any(axis=0), first - seen[::-1].argmax(axis=0), first)
        return int(previous.min())

    def _ready_enough(self) -> int:
        """Final points a series needs to join a pass before the stream ends: its context,
        about two windows, is scored again each time, so at most a quarter more work."""
        return 8 * self.window

    def _score_prepared(self, segments: Segments, by: str) -> dict[str, np.ndarray]:
        """The result columns of prepared rows, in their input order."""
        segments.values = self._scaled(segments.values)
        starts = segments.window_starts(self.window)
        window_scores, point_scores = self._score_segments(segments, starts)
        if by == "point":
            sorted_scores, calibrator = point_scores, self.calibrator_
        else:
            sorted_scores = np.full(len(segments.values), np.nan, dtype=np.float32)
            sorted_scores[starts + self.window - 1] = window_scores
            calibrator = self.window_calibrator_
        return _calibrated(segments.to_input_order(sorted_scores), calibrator)

    def score_samples(self, frame: pd.DataFrame) -> np.ndarray:
        """Point scores, float32 of shape (n_rows,), in row order; NaN where no window covers."""
        return self.score(frame)["anomaly_score"].to_numpy()

    def score_windows(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        """Window scores of raw windows (N, window, n_values), oldest point first.

        A stream's path: the windows are already ordered and filled. Returns the result
        columns, calibrated against window scores.
        """
        self._check_fitted()
        windows = np.asarray(windows, dtype=np.float32)
        expected = (self.window, len(self.schema_.values))
        if windows.ndim != 3 or windows.shape[1:] != expected:
            raise InputError(f"windows must have shape (N, {expected[0]}, {expected[1]})")
        x = np.ascontiguousarray(self._scaled(windows).transpose(0, 2, 1))
        scores, _ = score_array(self.module_, x, self._score_method(), self.device_)
        return _calibrated(scores, self.window_calibrator_)

    def _scaled(self, values: np.ndarray) -> np.ndarray:
        # Clipped as tables are (anomaly.preprocessing): a wild value overflows to inf, whose
        # score would be NaN, read as "no window covers this point".
        with np.errstate(over="ignore"):
            scaled = (values - self.mean_) / self.std_
        return np.clip(scaled, -STANDARDISED_LIMIT, STANDARDISED_LIMIT).astype(np.float32)

    def _score_segments(
        self, segments: Segments, starts: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scores of the windows at ``starts`` and point scores (NaN where uncovered)."""
        # Windows are cut a slice of starts at a time: all at once they would take ``window``
        # times the memory of the series.
        window_scores = np.empty(len(starts), dtype=np.float32)
        for first in range(0, len(starts), _WINDOWS_AT_ONCE):
            chunk = starts[first : first + _WINDOWS_AT_ONCE]
            x = segments.windows(chunk, self.window)
            scores, _ = score_array(self.module_, x, self._score_method(), self.device_)
            window_scores[first : first + len(chunk)] = scores
        n = len(segments.values)
        if len(starts) == 0:
            return window_scores, np.full(n, np.nan, dtype=np.float32)
        # A pass per offset in the window, from the last: each point adds up its windows'
        # scores in the order of their starts, whatever else the table holds. (Starts are
        # distinct, so no position repeats within a pass.)
        total, count = np.zeros(n), np.zeros(n, dtype=np.int64)
        for offset in range(self.window - 1, -1, -1):
            total[starts + offset] += window_scores
            count[starts + offset] += 1
        with np.errstate(invalid="ignore", divide="ignore"):
            points = (total / count).astype(np.float32)  # NaN where no window covers
        return window_scores, points

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | Path) -> Path:
        """Write the fitted detector to the directory ``path`` (safetensors + JSON)."""
        self._check_fitted()
        return self._save(
            path,
            schema=self.schema_.to_dict(),
            scaler={"mean": self.mean_.tolist(), "std": self.std_.tolist()},
            calibration={
                "point": self.calibrator_.to_dict(),
                "window": self.window_calibrator_.to_dict(),
            },
        )

    def _restore_state(self, meta: dict) -> None:
        self.schema_ = SequenceSchema.from_dict(meta["schema"])
        self.mean_ = np.asarray(meta["scaler"]["mean"], dtype=np.float32)
        self.std_ = np.asarray(meta["scaler"]["std"], dtype=np.float32)
        self.calibrator_ = Calibrator.from_dict(meta["calibration"]["point"])
        self.window_calibrator_ = Calibrator.from_dict(meta["calibration"]["window"])


class OutOfTimeOrder(ValueError):
    """A series went back in time in a stream that had to be in time order."""


class _Tails(dict):
    """The :class:`_SeriesTail` of each series seen, by name; made when first asked for."""

    def __missing__(self, name) -> _SeriesTail:
        tail = self[name] = _SeriesTail(name)
        return tail


def _check_time_order(series, starts, rows, times, schema: SequenceSchema) -> None:
    """Refuse a block (rows grouped by series, from ``starts``) in which a series goes back in
    time, or repeats a timestamp, since its rows before; the file's first such row is named."""
    before = np.empty(len(times))  # float: a new series' last time is -inf
    before[1:] = times[:-1]
    before[starts] = [tail.last_time for tail in series]
    bad = np.flatnonzero(times <= before)
    if not len(bad):
        return
    i = bad[np.argmin(rows[bad])]
    if times[i] == before[i]:
        raise schema.repeated(schema.shown(times[i]), int(rows[i]))
    name = series[np.searchsorted(starts, i, side="right") - 1].name
    where = f"series {name!r}" if name != "" else "the series"
    raise OutOfTimeOrder(f"{where} goes back in time at row {int(rows[i])}")


def _warn_unwindowed(segments: Segments, window: int) -> None:
    """Warn of the series that no window fits in (each stretch between gaps is shorter than
    one): they are not trained on."""
    windowed = {
        name
        for name, (a, b) in zip(segments.series, segments.bounds, strict=True)
        if b - a >= window
    }
    left_out = [name for name in dict.fromkeys(segments.series) if name not in windowed]
    if left_out:
        log.warning(
            "%d of %d series have no stretch of %d points without a gap, and are not trained "
            "on: %s",
            len(left_out),
            len(windowed) + len(left_out),
            window,
            ", ".join(repr(str(name)) for name in left_out[:5])
            + (", ..." if len(left_out) > 5 else ""),
        )


class _SeriesTail:
    """One series' rows of a time-ordered stream not yet dropped: the context kept for later
    points, then the points not yet scored (from ``done``). ``seen`` counts, for each value
    column, the rows up to its last observed value (0: none); ``observed``, the rows up to
    the point from which on every column has an observed value (their least)."""

    def __init__(self, name):
        self.name = name
        self.pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.size = self.done = self.observed = 0
        self.seen: np.ndarray | None = None
        self.last_time = -np.inf

    def append(self, rows, times, values, last_observed: np.ndarray) -> None:
        """The series' next rows, in time order after those before; ``last_observed`` is,
        for each value column, the index among them of its last observed value (negative:
        none)."""
        if self.seen is None:
            self.seen = np.zeros(len(last_observed), dtype=np.int64)
        self.seen = np.where(last_observed >= 0, self.size + last_observed + 1, self.seen)
        self.observed = int(self.seen.min())
        # Copies: a slice would keep the whole block it came from in memory.
        self.pieces.append((rows.copy(), times.copy(), values.copy()))
        self.size += len(rows)
        self.last_time = float(times[-1])

    def ready(self, window: int) -> int:
        """Points final now (see :meth:`SequenceDetector._finish`)."""
        return max(0, self.observed - window + 1 - self.done)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if len(self.pieces) > 1:
            self.pieces = [tuple(np.concatenate(p) for p in zip(*self.pieces, strict=True))]
        return self.pieces[0]

    def keep(self, start: int, done: int) -> None:
        """Drop the rows before ``start``; those before ``done`` are scored."""
        rows, times, values = self.arrays()
        self.pieces = [(rows[start:], times[start:], values[start:])]
        self.size -= start
        self.seen = np.maximum(self.seen - start, 0)  # a column's values all before: none
        self.observed = int(self.seen.min())
        self.done = done - start


def _as_frame(frame: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(frame, pd.DataFrame):
        raise InputError(f"expected a DataFrame, got {type(frame).__name__}")
    frame = with_text_names(frame)
    arrow_times = [
        name
        for name, dtype in frame.dtypes.items()
        if isinstance(dtype, pd.ArrowDtype)
        and (pa.types.is_timestamp(dtype.pyarrow_dtype) or pa.types.is_date(dtype.pyarrow_dtype))
    ]
    if arrow_times:  # as numpy's datetime64, which the time rules read
        frame = frame.assign(**{name: pd.to_datetime(frame[name]) for name in arrow_times})
    return frame


def _split_in_time(
    segments: Segments, val_fraction: float, cal_fraction: float
) -> tuple[Segments, Segments, Segments]:
    """Each series cut in time into training, validation and calibration parts (in that
    order: the last ``cal_fraction`` of its points calibrate); each part keeps the series'
    gaps, and no window of one part overlaps another."""
    parts: list[list[tuple[int, int]]] = [[], [], []]
    series: list[list] = [[], [], []]
    names = np.asarray(segments.series, dtype=object)
    for name in pd.unique(names):
        mine = segments.bounds[names == name]  # consecutive in sorted positions
        first, last = int(mine[0, 0]), int(mine[-1, 1])
        n = last - first
        n_cal, n_val = round(cal_fraction * n), round(val_fraction * n)
        cuts = [first, last - n_cal - n_val, last - n_cal, last]
        for start, stop in mine:
            for i in range(3):
                a, b = max(start, cuts[i]), min(stop, cuts[i + 1])
                if b > a:
                    parts[i].append((a, b))
                    series[i].append(name)
    return tuple(
        Segments(
            segments.values,
            segments.order,
            np.asarray(parts[i], dtype=np.int64).reshape(-1, 2),
            series[i],
        )
        for i in range(3)
    )


def _mean_std(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each column's mean and standard deviation, as for a table's (so rescaled where squares
    overflow), in float64: in float32 the squares of values past ~1.8e19 overflow, the scale
    would be inf and every window score alike. NaN, a short segment's column without values
    (never in a window), is left out."""
    stats = [mean_and_std(col[~np.isnan(col)]) for col in values.T]
    return np.array([m for m, _ in stats]), np.array([s for _, s in stats])


def _calibrated(scores: np.ndarray, calibrator: Calibrator) -> dict[str, np.ndarray]:
    scored = ~np.isnan(scores)
    p_values = np.full(len(scores), np.nan)
    p_values[scored] = calibrator.p_values(scores[scored])
    return {
        "anomaly_score": scores.astype(np.float32),
        "is_anomaly": scored & (np.nan_to_num(scores, nan=-np.inf) > calibrator.threshold_),
        "p_value": p_values,
    }
