"""Turning checked columns into the model's input matrix, fitted on normal rows only.

Numeric and boolean columns: missing values take the training median, then the column is
standardised with the training mean and standard deviation. A constant column keeps a unit
scale, so any departure from its one training value shows up in the score. Categorical
columns: one indicator per kept level; an unseen or missing level is all zeros.

The fitted state is plain numbers and lists (``to_dict``/``from_dict``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from anomaly.data.tabular import CATEGORICAL, TabularSchema
from anomaly.errors import InputError

log = logging.getLogger(__name__)


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity, not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def map_columns(function: Callable[[np.ndarray], object], columns: Iterable[np.ndarray]) -> list:
    """``function`` of each column, on a thread per usable core (numpy sorts, sums and
    gathers without the GIL; a default pool would start up to 32 threads on a big host
    whatever this process may use)."""
    columns = list(columns)
    with ThreadPoolExecutor(max_workers=max(1, min(len(columns), usable_cores()))) as pool:
        return list(pool.map(function, columns))


class TabularPreprocessor:
    """Impute, scale and one-hot encode the columns of a :class:`TabularSchema`.

    Attributes
    ----------
    n_features_ : int
        Width of the model input.
    feature_owner_ : ndarray of shape (n_features_,)
        For each input feature, the index of the schema column it comes from; used to add
        per-feature errors up into per-column contributions.
    """

    def __init__(self, schema: TabularSchema):
        self.schema = schema
        self.stats_: dict[str, dict[str, float]] = {}

    def fit(self, columns: dict[str, np.ndarray]) -> TabularPreprocessor:
        """Learn medians, means and scales from coerced training columns."""
        names = [col.name for col in self.schema.columns if col.kind != CATEGORICAL]
        # Columns on several threads (numpy sorts and sums without the GIL): on a GPU machine
        # these statistics took an eighth of a million-row fit.
        stats = map_columns(_median_mean_std, [columns[name] for name in names])
        self.stats_ = {}
        for name, (median, mean, std) in zip(names, stats, strict=True):
            if np.isnan(median):  # the schema saw values, but in held-out rows only
                raise InputError(
                    f"column {name!r} has no values in the training rows (only in those held "
                    "out to calibrate or validate); exclude it, or give more rows",
                    column=name,
                )
            # Relative: a column of tiny units (1e-13 mol) still varies; rounding leaves a
            # constant column's std at a 1e-16th of its mean.
            if not std > 1e-12 * abs(mean):
                log.warning("column %r is constant at fit; it keeps unit scale", name)
                std = 1.0
            self.stats_[name] = {"median": median, "mean": mean, "scale": std}
        self._build_layout()
        return self

    def transform(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        """Return the model input, float32 of shape (n_rows, n_features_)."""
        n_rows = len(next(iter(columns.values())))
        out = np.zeros((n_rows, self.n_features_), dtype=np.float32)
        start = 0
        for col in self.schema.columns:
            values = columns[col.name]
            if col.kind == CATEGORICAL:
                width = len(col.categories)
                rows = np.flatnonzero(values >= 0)
                out[rows, start + values[rows]] = 1.0
            else:
                width = 1
                s = self.stats_[col.name]
                filled = np.where(np.isnan(values), s["median"], values)
                # Clipped: a wild value (1e39) would overflow float32 to inf, the model's
                # score to NaN, and NaN is never above a threshold.
                scaled = (filled - s["mean"]) / s["scale"]
                out[:, start] = np.clip(scaled, -STANDARDISED_LIMIT, STANDARDISED_LIMIT)
            start += width
        return out

    def typical_input(self) -> np.ndarray:
        """The model input of a typical row: medians, and each column's most frequent level."""
        row = np.zeros(self.n_features_, dtype=np.float32)
        start = 0
        for col in self.schema.columns:
            if col.kind == CATEGORICAL:
                if col.categories:
                    row[start] = 1.0  # levels are kept most frequent first
                start += len(col.categories)
            else:
                s = self.stats_[col.name]
                row[start] = (s["median"] - s["mean"]) / s["scale"]
                start += 1
        return row

    def to_dict(self) -> dict:
        return {"stats": self.stats_}

    @classmethod
    def from_dict(cls, schema: TabularSchema, data: dict) -> TabularPreprocessor:
        pre = cls(schema)
        pre.stats_ = {k: dict(v) for k, v in data["stats"].items()}
        pre._build_layout()
        return pre

    def _build_layout(self) -> None:
        widths = [len(c.categories) if c.kind == CATEGORICAL else 1 for c in self.schema.columns]
        self.n_features_ = int(sum(widths))
        self.feature_owner_ = np.repeat(np.arange(len(widths)), widths)


# Standardised values are kept within this many standard deviations: far enough that no
# normal value reaches it, near enough that its squares add up finitely in float32.
STANDARDISED_LIMIT = 1e6


def _median_mean_std(values: np.ndarray) -> tuple[float, float, float]:
    """A numeric column's median, and its mean and standard deviation with gaps at the median;
    NaN for a column without values."""
    if np.isnan(values).all():
        return np.nan, np.nan, np.nan
    median = float(np.nanmedian(values))
    return median, *mean_and_std(np.where(np.isnan(values), median, values))


def mean_and_std(values: np.ndarray) -> tuple[float, float]:
    """The mean and standard deviation of values without gaps, in float64; the deviation is
    taken on rescaled values where squares overflow (past ~1e154), so it stays finite."""
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore"):
        mean, std = float(values.mean()), float(values.std())
    if not np.isfinite(std):
        peak = float(np.abs(values).max())
        std = peak * float((values / peak).std())
    return mean, std
