"""Prometheus metrics of the scoring service.

With several uvicorn workers, ``anomaly serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` before the
workers start: prometheus_client then keeps each worker's values in files there and ``/metrics``
adds them up (its multiprocess mode), so a scrape sees the whole service whichever worker
answers it.
"""

from __future__ import annotations

import math
import os

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

REQUESTS = Counter(
    "anomaly_requests", "HTTP requests answered, by route and status code", ["endpoint", "status"]
)
REQUEST_DURATION = Histogram(
    "anomaly_request_duration_seconds",
    "Time to answer a request, by route",
    ["endpoint"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0),
)
RECORDS_SCORED = Counter("anomaly_records_scored", "Records scored")
RECORDS_FLAGGED = Counter("anomaly_records_flagged", "Records flagged as anomalies")
# Scores of different models live on different scales: buckets span 10^-3 to 10^7, 4 a decade.
SCORE = Histogram(
    "anomaly_score",
    "Anomaly scores of scored records",
    buckets=tuple(float(b) for b in np.logspace(-3, 7, 41)),
)
THRESHOLD = Gauge(
    "anomaly_threshold", "Threshold of the model being served", multiprocess_mode="mostrecent"
)
MODEL_INFO = Gauge(
    "anomaly_model_info",
    "1 for the model version being served",
    ["name", "version"],
    multiprocess_mode="mostrecent",
)
SCORE_DRIFT = Gauge(
    "anomaly_score_drift",
    "PSI of recent scores against the calibration scores (above ~0.2: retrain)",
    multiprocess_mode="mostrecent",
)
RECENT_FLAG_RATE = Gauge(
    "anomaly_recent_flag_rate",
    "Share of the recent scored records that were flagged",
    multiprocess_mode="mostrecent",
)
MODEL_RELOADS = Counter(
    "anomaly_model_reloads", "Model loads after start-up, by result", ["result"]
)


def observe_scores(scores: np.ndarray, flagged: np.ndarray) -> None:
    """Count a batch of results: one pass over the array, not a Python call per record."""
    RECORDS_SCORED.inc(len(scores))
    RECORDS_FLAGGED.inc(int(flagged.sum()))
    finite = scores[np.isfinite(scores)].astype(np.float64)
    # What Histogram.observe does per value, done per batch: each value counts in the first
    # bucket whose upper bound is >= it (the last bound is +Inf).
    bounds = np.asarray(SCORE._upper_bounds)
    counts = np.bincount(np.searchsorted(bounds, finite, side="left"), minlength=len(bounds))
    for bucket, count in zip(SCORE._buckets, counts, strict=True):
        if count:
            bucket.inc(int(count))
    SCORE._sum.inc(float(finite.sum()))


def publish_drift(drift) -> None:
    """Set the drift gauges from a snapshot (which sorts the window: done at scrape time, not
    per request). In multiprocess mode the gauges show the scraped worker's traffic."""
    snapshot = drift.snapshot()
    # NaN until the model now served has scored enough: a value kept from the model it
    # replaced would go on firing the drift alert against the new one.
    for gauge, value in ((SCORE_DRIFT, snapshot["psi"]), (RECENT_FLAG_RATE, snapshot["flag_rate"])):
        gauge.set(math.nan if value is None else value)


def show_model(name: str | None, version: str | None, threshold: float, before=None) -> None:
    """Point ``anomaly_model_info`` and ``anomaly_threshold`` at the model now served."""
    if before is not None:
        MODEL_INFO.labels(name=before[0] or "", version=before[1] or "").set(0)
    MODEL_INFO.labels(name=name or "", version=version or "").set(1)
    THRESHOLD.set(threshold)


def exposition() -> tuple[bytes, str]:
    """The text a scrape gets, summed over workers in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
