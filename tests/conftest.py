"""Shared fixtures: small synthetic tables and detectors fitted once per session."""

from __future__ import annotations

import pandas as pd
import pytest

from anomaly import Detector
from anomaly.datasets import make_service_metrics

EXCLUDE = ("host_id", "timestamp", "label")


@pytest.fixture(scope="session")
def normal_rows() -> pd.DataFrame:
    return make_service_metrics(5000, seed=0)


@pytest.fixture(scope="session")
def test_rows() -> pd.DataFrame:
    """Fresh normal rows and injected anomalies; ``label`` says which."""
    return make_service_metrics(2000, 200, seed=1)


@pytest.fixture(scope="session")
def fitted_ae(normal_rows) -> Detector:
    return Detector(model="ae", exclude=EXCLUDE, epochs=40, seed=0).fit(normal_rows)


@pytest.fixture(scope="session")
def fitted_vae(normal_rows) -> Detector:
    return Detector(model="vae", exclude=EXCLUDE, epochs=40, seed=0).fit(normal_rows)
