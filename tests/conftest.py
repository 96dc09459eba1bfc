"""Shared fixtures: small synthetic tables, detectors fitted once per session, and a private
MLflow store (sqlite, artifacts under the session's temporary directory) for every test."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
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


@pytest.fixture(scope="session", autouse=True)
def mlflow_store(tmp_path_factory):
    """Runs, registry, artifacts and the model cache of the whole session, away from the repo.

    Subprocesses (the CLI, ``mlflow models serve``) inherit the environment, so they see the
    same store.
    """
    root = tmp_path_factory.mktemp("mlflow")
    saved = {k: os.environ.get(k) for k in _MLFLOW_ENV}
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["ANOMALY_CACHE_DIR"] = str(root / "cache")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    import mlflow

    # Artifacts would otherwise land in ./mlruns of the working directory.
    experiment = mlflow.create_experiment("anomaly-tests", artifact_location=str(root / "art"))
    os.environ["MLFLOW_EXPERIMENT_ID"] = experiment
    yield root
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


_MLFLOW_ENV = (
    "MLFLOW_TRACKING_URI",
    "ANOMALY_CACHE_DIR",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
    "MLFLOW_EXPERIMENT_ID",
)


def torchrun(*args: str, processes: int = 2) -> list[str]:
    """The command that runs ``args`` (a script, or ``-m MODULE``, and its arguments) in
    ``processes`` data-parallel processes on this machine."""
    launcher = Path(sys.executable).with_name("torchrun")
    return [str(launcher), "--standalone", "--nproc-per-node", str(processes), *args]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], log: Path, env: dict, ready_url: str) -> subprocess.Popen:
    """Start a server in its own process group; wait until ``ready_url`` answers 200."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{command[:3]} exited: {log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(ready_url, timeout=2).status_code == 200:
                return proc
        time.sleep(0.5)
    stop(proc)
    raise RuntimeError(f"{command[:3]} not ready after 120 s: {log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
