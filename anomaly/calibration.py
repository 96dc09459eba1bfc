"""From scores on held-out normal rows to a threshold with a known false-positive rate.

Two threshold rules:

- ``quantile`` (default): the conformal quantile of the calibration scores. With n scores and a
  target rate α, the threshold is the ⌈(n+1)(1-α)⌉-th smallest score, so a new normal row
  exceeds it with probability at most α (for exchangeable data).
- ``evt``: SPOT's peaks-over-threshold estimate (Siffer et al., KDD 2017, via the authors'
  ``libspot``): a generalised Pareto tail fitted to the largest calibration scores, which
  reaches rates far below 1/n where the plain quantile cannot.

Every scored row also gets a conformal p-value ``(1 + #{calibration scores >= s}) / (n + 1)``
(NaN for a NaN score).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from anomaly.errors import InputError

log = logging.getLogger(__name__)

THRESHOLD_METHODS = ("quantile", "evt")
EVT_MIN_SCORES = 100  # fewer leave too few peaks above the tail level to fit
EVT_MIN_PEAKS = 5  # scores above the tail level the fit needs (ties can leave fewer)


def conformal_rank(n: int, target_fpr: float) -> int:
    """⌈(n+1)(1-α)⌉: (9 + 1) * (1 - 0.7) is 3.0000000000000004 in floats, whose ceiling is 3."""
    return count_at_least((n + 1) * (1.0 - target_fpr))


def count_at_least(x: float) -> int:
    """⌈x⌉ of a count computed in floats, less a hair: 0.07 * 100 is 7.000000000000001."""
    return math.ceil(x * (1.0 - 1e-12))


def count_at_most(x: float) -> int:
    """⌊x⌋ of a count computed in floats, plus a hair: 0.29 * 100 is 28.999999999999996."""
    return math.floor(x * (1.0 + 1e-12))


class Calibrator:
    """Threshold and p-values from calibration scores.

    Parameters
    ----------
    target_fpr : float, default=0.01
        The false-positive rate the threshold aims for, in (0, 1).
    method : {"quantile", "evt"}, default="quantile"
        Threshold rule (see module docstring).
    evt_level : float, default=0.9
        For ``evt``: the quantile of calibration scores above which the tail is fitted.

    Attributes
    ----------
    threshold_ : float
        A score above it is flagged.
    scores_ : ndarray
        The sorted calibration scores.
    """

    def __init__(
        self, *, target_fpr: float = 0.01, method: str = "quantile", evt_level: float = 0.9
    ):
        self.target_fpr = target_fpr
        self.method = method
        self.evt_level = evt_level

    def check(self, n_scores: int | None = None) -> None:
        """Refuse settings this rule cannot meet (detectors ask before training): the rate, the
        rule, and for ``evt`` its tail level and, when known, the ``n_scores`` it needs."""
        if not 0.0 < self.target_fpr < 1.0:
            raise InputError(f"target_fpr must be in (0, 1), got {self.target_fpr}")
        if self.method not in THRESHOLD_METHODS:
            raise InputError(
                f"unknown threshold method {self.method!r}; use one of {THRESHOLD_METHODS}"
            )
        if self.method != "evt":
            return
        if not 0.0 < self.evt_level < 1.0:
            raise InputError(f"evt_level must be in (0, 1), got {self.evt_level}")
        reach = 1.0 - self.evt_level
        if self.target_fpr >= reach:
            raise InputError(
                f"the evt threshold fits the tail above the {self.evt_level:g} quantile of the "
                f"calibration scores, so it reaches rates below {reach:.4g}, not "
                f"target_fpr {self.target_fpr}; use the quantile threshold"
            )
        if n_scores is not None and n_scores < EVT_MIN_SCORES:
            raise InputError(
                f"the evt threshold needs at least {EVT_MIN_SCORES} calibration rows, got "
                f"{n_scores}"
            )

    def fit(self, scores: np.ndarray) -> Calibrator:
        scores = np.sort(np.asarray(scores, dtype=np.float64))
        self.check(len(scores))
        if len(scores) == 0:
            raise InputError("no calibration rows: give more data or a larger calibration_fraction")
        if np.isnan(scores[-1]):  # sorted last
            raise InputError("a calibration score is not a number; the threshold would be NaN")
        self.scores_ = scores
        self.threshold_ = self._evt() if self.method == "evt" else self._quantile()
        return self

    def _quantile(self) -> float:
        n = len(self.scores_)
        rank = conformal_rank(n, self.target_fpr)
        if rank > n:
            evt = Calibrator(target_fpr=self.target_fpr, method="evt")
            try:
                evt.check(n)
                advice = " The evt threshold (--threshold evt) reaches small rates."
            except InputError:
                advice = ""
            log.warning(
                "%d calibration rows cannot support a %.4g false-positive rate (needs %.4g); "
                "the threshold is the largest calibration score.%s",
                n,
                self.target_fpr,
                math.ceil(1 / self.target_fpr) - 1,
                advice,
            )
            rank = n
        return float(self.scores_[rank - 1])

    def _evt(self) -> float:
        import libspot  # only this rule needs it

        scores, n, q = self.scores_, len(self.scores_), self.target_fpr
        # Fitted in standard units: libspot's fit depends on the scores' scale (on scores
        # near 1e-10 it found no tail at all), where the tail's law does not.
        center, spread = float(np.median(scores)), float(np.std(scores))
        if not spread > 0 or not math.isfinite(spread):
            raise InputError("the calibration scores are all alike: no tail to fit; use 'quantile'")
        spot = libspot.Spot(q=q, level=self.evt_level, max_excess=n)
        try:
            spot.fit((scores - center) / spread)
        except RuntimeError as exc:
            raise InputError(
                f"the evt tail fit failed on these calibration scores ({exc}); use 'quantile'"
            ) from None
        tail_level = center + spread * float(spot.excess_threshold)
        self.evt_ = {
            "excess_threshold": tail_level,
            "gamma": float(spot.gamma),
            "sigma": spread * float(spot.sigma),
        }
        threshold = center + spread * float(spot.anomaly_threshold)
        peaks = int(np.sum(scores > tail_level))
        # With fewer peaks than the rate flags (q * n) the formula reaches below its own tail
        # level: below zero, flagging every row, on scores with many ties.
        if peaks < EVT_MIN_PEAKS or not threshold > tail_level:
            tied = " (many scores are tied)" if len(np.unique(scores)) < n else ""
            raise InputError(
                f"the evt tail fit has {peaks} of {n} calibration scores above its tail level "
                f"({tail_level:.4g}){tied}: too few for a fit (at least {EVT_MIN_PEAKS}), or "
                f"for a {q:g} rate to lie above it; use 'quantile'"
            )
        if not self.evt_["sigma"] > 0 or not math.isfinite(threshold):
            raise InputError("the evt tail fit failed on these calibration scores; use 'quantile'")
        return threshold

    def p_values(self, scores: np.ndarray) -> np.ndarray:
        """Conformal p-values: small when a score is rare among normal calibration scores.

        A NaN score gets a NaN p-value: ``searchsorted`` places NaN after every score, which
        would give it the smallest p-value while :meth:`flag` says it is not above the
        threshold.
        """
        scores = np.asarray(scores, dtype=np.float64)
        n = len(self.scores_)
        at_least = n - np.searchsorted(self.scores_, scores, side="left")
        return np.where(np.isnan(scores), np.nan, (1.0 + at_least) / (n + 1.0))

    def flag(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold_

    def to_dict(self) -> dict:
        state = {
            "target_fpr": self.target_fpr,
            "method": self.method,
            "evt_level": self.evt_level,
            "threshold": self.threshold_,
            "n_calibration": len(self.scores_),
            "scores": self.scores_.tolist(),
        }
        if hasattr(self, "evt_"):
            state["evt"] = self.evt_
        return state

    @classmethod
    def from_dict(cls, data: dict) -> Calibrator:
        cal = cls(target_fpr=data["target_fpr"], method=data["method"], evt_level=data["evt_level"])
        cal.scores_ = np.asarray(data["scores"], dtype=np.float64)
        cal.threshold_ = float(data["threshold"])
        scores = cal.scores_
        # p-values count scores by binary search: unsorted ones would give wrong p-values.
        if (
            scores.ndim != 1
            or not len(scores)
            or np.isnan(scores).any()
            or (np.diff(scores) < 0).any()
        ):
            raise ValueError("calibration scores must be numbers in ascending order")
        if np.isnan(cal.threshold_):
            raise ValueError("the threshold is not a number")
        if "evt" in data:
            cal.evt_ = dict(data["evt"])
        return cal
