"""Synthetic data for the demo, the tests and the docs: mixed-type tables with known anomalies."""

from __future__ import annotations

import numpy as np
import pandas as pd

REGIONS = ("eu-west", "eu-north", "us-east", "ap-south")


def make_service_metrics(
    n_normal: int = 5000, n_anomalies: int = 0, *, seed: int = 0, missing: float = 0.02
) -> pd.DataFrame:
    """Per-minute metrics of a fleet of web servers; anomalies break how the metrics co-vary.

    Normal rows follow two hidden factors (load and payload size) shared by the numeric
    columns, so no column is anomalous on its own scale alone: the detector has to learn
    the relations. Anomalies come in three kinds, in equal shares: an error burst (errors
    and latency up while load is normal), a stalled server (requests arrive but nothing is
    sent), and a hot spot (load far above what its region ever sees).

    Columns: ``host_id`` (int, an identifier), ``timestamp`` (ISO text), ``region``
    (categorical), ``cpu``, ``memory``, ``requests``, ``latency_ms``, ``errors``, ``bytes_out``
    (numeric; ``latency_ms`` has ``missing`` missing values), ``cached`` (boolean) and
    ``label`` (0 normal, 1 anomaly). Exclude ``host_id``, ``timestamp`` and ``label`` when
    training.
    """
    rng = np.random.default_rng(seed)
    n = n_normal + n_anomalies
    region = rng.choice(len(REGIONS), size=n, p=[0.4, 0.2, 0.3, 0.1])
    load = rng.gamma(4.0, 1.0, size=n) * (1.0 + 0.5 * (region == 2))  # us-east runs hotter
    payload = rng.normal(0.0, 1.0, size=n)
    cached = rng.random(n) < 0.3
    frame = pd.DataFrame(
        {
            "host_id": rng.integers(1000, 1100, size=n),
            "timestamp": pd.date_range("2026-01-01", periods=n, freq="min").strftime(
                "%Y-%m-%dT%H:%M:%S"
            ),
            "region": np.asarray(REGIONS)[region],
            "cpu": 10 + 8 * load + rng.normal(0, 3, n),
            "memory": 40 + 2 * load + 5 * payload + rng.normal(0, 2, n),
            "requests": 100 * load * (1 + 0.05 * rng.normal(size=n)),
            "latency_ms": 20 + 3 * load - 8 * cached + rng.normal(0, 2, n),
            "errors": rng.poisson(0.2 * load),
            "bytes_out": 100 * load * np.exp(0.3 * payload) * (1 + 0.05 * rng.normal(size=n)),
            "cached": cached,
            "label": np.zeros(n, dtype=int),
        }
    )
    if n_anomalies:
        rows = np.arange(n_normal, n)
        kind = rows % 3
        burst, stall, hot = rows[kind == 0], rows[kind == 1], rows[kind == 2]
        frame.loc[burst, "errors"] = frame.loc[burst, "errors"] + rng.poisson(15, len(burst))
        frame.loc[burst, "latency_ms"] = frame.loc[burst, "latency_ms"] * 3
        frame.loc[stall, "bytes_out"] = frame.loc[stall, "bytes_out"] * 0.05
        frame.loc[stall, "cpu"] = frame.loc[stall, "cpu"] * 0.3
        frame.loc[hot, "region"] = "eu-north"
        frame.loc[hot, "requests"] = frame.loc[hot, "requests"] * 4
        frame.loc[hot, "cpu"] = frame.loc[hot, "cpu"] * 3
        frame.loc[rows, "label"] = 1
    if missing > 0:
        frame.loc[rng.random(n) < missing, "latency_ms"] = np.nan
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def make_metric_series(
    n_points: int = 1200,
    n_series: int = 2,
    *,
    anomalies: tuple[int, ...] = (),
    seed: int = 0,
    shuffle: bool = True,
) -> pd.DataFrame:
    """Per-minute readings of ``n_series`` hosts: a noisy daily-like cycle (period 40 points).

    ``anomalies`` are positions where every series gets a 10-point level shift (+2), labelled.
    Columns: ``timestamp`` (datetime), ``host`` (the series id), ``value``, ``label`` (0/1).
    Rows are shuffled unless ``shuffle`` is false: a detector must put series in time order.
    """
    rng = np.random.default_rng(seed)
    frames = []
    for s in range(n_series):
        t = np.arange(n_points)
        value = np.sin(2 * np.pi * t / 40 + s) + 0.05 * rng.normal(size=n_points)
        label = np.zeros(n_points, dtype=int)
        for start in anomalies:
            value[start : start + 10] += 2.0
            label[start : start + 10] = 1
        frames.append(
            pd.DataFrame(
                {
                    "timestamp": pd.Timestamp("2024-01-01") + pd.to_timedelta(t, "min"),
                    "host": f"h{s}",
                    "value": value,
                    "label": label,
                }
            )
        )
    frame = pd.concat(frames, ignore_index=True)
    return frame.sample(frac=1, random_state=seed) if shuffle else frame
