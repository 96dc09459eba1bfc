"""Score drift: are recent scores still distributed like the calibration scores?

A detector's threshold and p-values assume new normal rows score like the held-out normal rows
it was calibrated on. :class:`ScoreDrift` keeps a sliding window of recent scores and compares
it with the calibration scores by the population stability index (PSI, over the calibration
scores' deciles) and the Kolmogorov-Smirnov statistic. A PSI above about 0.2 is the usual sign
that the population has moved: retraining on recent normal data is suggested.
"""

from __future__ import annotations

import threading

import numpy as np

_EPS = 1e-4  # floor for empty bins, so that PSI stays finite


class ScoreDrift:
    """A window of the latest ``window`` scores, compared with ``calibration_scores``.

    ``update`` may be called from a scoring thread while ``snapshot`` is read elsewhere.
    """

    def __init__(
        self,
        calibration_scores: np.ndarray,
        *,
        window: int = 5000,
        level: float = 0.2,
        min_scores: int = 200,
    ):
        self.reference = np.sort(np.asarray(calibration_scores, dtype=np.float64))
        self.edges = np.unique(np.quantile(self.reference, np.linspace(0.1, 0.9, 9)))
        self.expected = self._shares(self.reference)
        self.window, self.level, self.min_scores = window, level, min_scores
        self._scores = np.empty(window, dtype=np.float64)
        self._flags = np.zeros(window, dtype=bool)
        self._next, self._count = 0, 0
        self._lock = threading.Lock()

    def update(self, scores: np.ndarray, flags: np.ndarray) -> None:
        """Add a batch of results (the newest ``window`` are kept)."""
        scores, flags = scores[-self.window :], flags[-self.window :]
        with self._lock:
            for part in _wrap(self._next, len(scores), self.window):
                start, stop, offset = part
                self._scores[start:stop] = scores[offset : offset + stop - start]
                self._flags[start:stop] = flags[offset : offset + stop - start]
            self._next = (self._next + len(scores)) % self.window
            self._count = min(self._count + len(scores), self.window)

    def snapshot(self) -> dict:
        """PSI, KS, the recent flag rate and whether retraining is suggested."""
        with self._lock:
            recent = self._scores[: self._count].copy()
            flags = self._flags[: self._count].copy()
        if len(recent) < self.min_scores:
            return {"window": len(recent), "psi": None, "ks": None,
                    "flag_rate": float(flags.mean()) if len(flags) else None,
                    "retrain_suggested": False}  # fmt: skip
        psi = float(np.sum((self._shares(recent) - self.expected)
                           * np.log(self._shares(recent) / self.expected)))  # fmt: skip
        return {
            "window": len(recent),
            "psi": psi,
            "ks": _ks(self.reference, np.sort(recent)),
            "flag_rate": float(flags.mean()),
            "retrain_suggested": psi > self.level,
        }

    def _shares(self, scores: np.ndarray) -> np.ndarray:
        counts = np.bincount(np.searchsorted(self.edges, scores, side="right"),
                             minlength=len(self.edges) + 1)  # fmt: skip
        return np.maximum(counts / max(len(scores), 1), _EPS)


def _wrap(start: int, n: int, size: int) -> list[tuple[int, int, int]]:
    """Ring-buffer slots for n new values from ``start``: (start, stop, offset) pieces."""
    first = min(n, size - start)
    pieces = [(start, start + first, 0)]
    if n > first:
        pieces.append((0, n - first, first))
    return pieces


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic of sorted samples."""
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / len(a)
    cdf_b = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))
