"""Against real processes: an `mlflow server` (sqlite, local artifact root) on a loopback port,
and `mlflow models serve` answering /invocations for the registered champion."""

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import free_port, start, stop

from anomaly.datasets import make_service_metrics

BIN = Path(sys.executable).parent  # mlflow, uvicorn: the venv's own


@pytest.fixture(scope="module")
def server_env(tmp_path_factory):
    """Environment of a client of a fresh `mlflow server`."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    proc = start(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'db.sqlite'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        root / "server.log", env, f"http://127.0.0.1:{port}/health",
    )  # fmt: skip
    env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{port}"
    env["ANOMALY_CACHE_DIR"] = str(root / "cache")
    env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    yield env | {"_ROOT": str(root)}
    stop(proc)


def run_cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "anomaly.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def scored(server_env):
    """train -> register on the server -> score by alias, all through the CLI."""
    root = Path(server_env["_ROOT"])
    make_service_metrics(2000, seed=0).to_csv(root / "normal.csv", index=False)
    make_service_metrics(300, 30, seed=1).to_csv(root / "new.csv", index=False)
    done = run_cli("train", str(root / "normal.csv"), "--register", "served", "--model", "ae",
                   "-x", "host_id", "-x", "timestamp", "-x", "label", "--epochs", "20",
                   env=server_env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "registered served version 1 with alias champion" in done.stdout
    done = run_cli("score", str(root / "new.csv"), "--model", "models:/served@champion",
                   "--out", str(root / "scored.csv"), env=server_env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return root


def test_train_register_load_by_alias_score_on_a_tracking_server(scored, server_env, monkeypatch):
    from_cli = pd.read_csv(scored / "scored.csv")
    assert len(from_cli) == 330
    assert from_cli.loc[from_cli["label"] == 1, "is_anomaly"].mean() > 0.5
    # The artifacts went to the server's artifact root, not to a local ./mlruns.
    assert list((scored / "artifacts").rglob("weights.safetensors"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server_env["MLFLOW_TRACKING_URI"])
    monkeypatch.setenv("ANOMALY_CACHE_DIR", server_env["ANOMALY_CACHE_DIR"])
    model = mlflow.pyfunc.load_model("models:/served@champion")
    predicted = model.predict(pd.read_csv(scored / "new.csv"))
    assert np.array_equal(
        predicted["anomaly_score"].to_numpy(), from_cli["anomaly_score"].to_numpy("float32")
    )
    assert (predicted["top_features"].to_numpy() == from_cli["top_features"].to_numpy()).all()


def test_mlflow_models_serve_answers_with_the_same_scores(scored, server_env):
    port = free_port()
    proc = start(
        [str(BIN / "mlflow"), "models", "serve", "-m", "models:/served@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        scored / "serve.log", server_env, f"http://127.0.0.1:{port}/ping",
    )  # fmt: skip
    try:
        rows = pd.read_csv(scored / "new.csv")
        # json.dumps writes floats exactly (pandas' to_json rounds to 10 digits).
        body = {"dataframe_split": {"columns": list(rows.columns),
                                    "data": rows.astype(object).to_numpy().tolist()}}  # fmt: skip
        answer = httpx.post(f"http://127.0.0.1:{port}/invocations", content=json.dumps(body),
                            headers={"Content-Type": "application/json"}, timeout=60)  # fmt: skip
        assert answer.status_code == 200, answer.text[:2000]
        served = pd.DataFrame(answer.json()["predictions"])
        from_cli = pd.read_csv(scored / "scored.csv")
        assert np.array_equal(
            served["anomaly_score"].to_numpy("float32"),
            from_cli["anomaly_score"].to_numpy("float32"),
        )
        for column in ("is_anomaly", "p_value", "top_features"):
            assert (served[column].to_numpy() == from_cli[column].to_numpy()).all(), column

        body["dataframe_split"]["data"][3][body["dataframe_split"]["columns"].index("cpu")] = "x"
        answer = httpx.post(f"http://127.0.0.1:{port}/invocations", content=json.dumps(body),
                            headers={"Content-Type": "application/json"}, timeout=60)  # fmt: skip
        assert answer.status_code == 400
        assert "column 'cpu', row 3: 'x' is not a number" in answer.text
    finally:
        stop(proc)
