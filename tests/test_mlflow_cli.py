"""The MLflow side of the `anomaly` command, as a user runs it: subprocesses, real files."""

import os
import subprocess
import sys

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from anomaly.datasets import make_service_metrics

EXCLUDE = ["-x", "host_id", "-x", "timestamp"]


def anomaly(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "anomaly.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    work = tmp_path_factory.mktemp("mlflow-cli")
    make_service_metrics(3000, 30, seed=0).to_csv(work / "normal.csv", index=False)
    make_service_metrics(1500, 150, seed=1).to_csv(work / "new.csv", index=False)
    return work


def test_without_a_tracking_uri_runs_and_registry_go_to_mlflow_db(workdir):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_URI")}
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    done = anomaly(
        "train", "normal.csv", "--register", "svc", "--label-col", "label", *EXCLUDE,
        "--epochs", "30", cwd=workdir, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "registered svc version 1 with alias champion" in done.stdout
    assert (workdir / "mlflow.db").is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    assert client.get_registered_model("svc").aliases == {"champion": 1}
    run = client.get_run(client.get_model_version("svc", "1").run_id)
    assert run.data.params["exclude"] == "host_id,timestamp,label"  # the label column too
    # Known anomalies were left out of training: 30 of 3030 rows.
    n = sum(int(run.data.params[k]) for k in ("train_rows", "validation_rows", "calibration_rows"))
    assert n == 3000


@pytest.fixture(scope="module")
def registered(workdir):
    """A model registered in the session's store (MLFLOW_TRACKING_URI is set by conftest)."""
    done = anomaly("train", str(workdir / "normal.csv"), "--register", "cli-svc", "--label-col",
                   "label", *EXCLUDE, "--epochs", "30", "--model", "ae")  # fmt: skip
    assert done.returncode == 0, done.stderr
    return "cli-svc"


def test_score_by_alias_matches_the_mlflow_pyfunc(workdir, registered):
    out = workdir / "scored.csv"
    done = anomaly("score", str(workdir / "new.csv"), "--model", f"models:/{registered}@champion",
                   "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    from_cli = pd.read_csv(out)
    rows = pd.read_csv(workdir / "new.csv")
    predicted = mlflow.pyfunc.load_model(f"models:/{registered}@champion").predict(rows)
    assert set(predicted.columns) == set(from_cli.columns)
    pd.testing.assert_series_equal(
        predicted["anomaly_score"].astype("float64"),
        from_cli["anomaly_score"].astype("float32").astype("float64"),
    )
    for column in ("is_anomaly", "p_value", "top_features", "cpu", "host_id"):
        assert (predicted[column].to_numpy() == from_cli[column].to_numpy()).all(), column


def test_evaluate_prints_metrics_and_logs_a_run_linked_to_the_version(workdir, registered):
    done = anomaly("evaluate", str(workdir / "new.csv"), "--model", f"models:/{registered}/1",
                   "--label-col", "label", "--target-recall", "0.8")  # fmt: skip
    assert done.returncode == 0, done.stderr
    printed = dict(line.split() for line in done.stdout.splitlines() if len(line.split()) == 2)
    assert float(printed["auroc"]) > 0.9
    assert float(printed["recall_at_target_recall"]) >= 0.8
    assert 0.0 <= float(printed["fpr_at_threshold"]) <= 0.03
    client = MlflowClient()
    run_id = client.get_model_version(registered, "1").tags["anomaly.evaluation_run"]
    run = client.get_run(run_id)
    assert run.data.tags["anomaly.model_version"] == "1"
    assert run.data.metrics["auroc"] == pytest.approx(float(printed["auroc"]), rel=1e-5)
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert plots == {"plots/roc.png", "plots/pr.png", "plots/score_histogram.png"}


def test_models_list_promote_rollback(registered):
    done = anomaly("models", "list", registered)
    assert done.returncode == 0, done.stderr
    assert "champion" in done.stdout.splitlines()[-1]  # v1, the oldest, listed last
    done = anomaly("models", "rollback", registered)
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == f"error: model '{registered}' has no 'previous' version to roll back to"
    )


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("models:/nothing-here@champion", "model 'nothing-here' has no alias 'champion'"),
        ("models:/cli-svc@staging", "model 'cli-svc' has no alias 'staging'"),
    ],
)
def test_unknown_model_or_alias_is_one_line(workdir, registered, model, message):
    done = anomaly("score", str(workdir / "new.csv"), "--model", model, "--out",
                   str(workdir / "never.csv"))  # fmt: skip
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (workdir / "never.csv").exists()


def test_unreachable_tracking_server_is_one_line(workdir):
    from conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"
    done = anomaly("score", str(workdir / "new.csv"), "--model", "models:/svc@champion",
                   "--out", str(workdir / "never.csv"),
                   env={**os.environ, "MLFLOW_TRACKING_URI": url})  # fmt: skip
    assert done.returncode == 75  # EX_TEMPFAIL: worth running again later
    assert done.stderr.strip().startswith(
        f"error: cannot reach the MLflow tracking server at {url}"
    )


def test_serve_with_a_bad_model_is_one_line():
    done = anomaly("serve", "--model", "models:/nothing-here@champion")
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: model 'nothing-here' has no alias 'champion'")


def test_retrain_refuses_an_incompatible_schema_in_one_line(workdir, registered):
    make_service_metrics(200, seed=3).drop(columns=["cpu"]).to_csv(workdir / "nocpu.csv",
                                                                   index=False)  # fmt: skip
    done = anomaly("retrain", str(workdir / "nocpu.csv"), "--name", registered)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: new data does not fit {registered} v1: column 'cpu' is gone"
    )
    done = anomaly("rollback", registered)
    assert done.returncode == 2 and "no 'previous' version" in done.stderr


def test_the_batch_pipeline_logs_no_mlflow_download_bars(workdir, registered, tmp_path):
    """A scheduler's log is no terminal: MLflow's per-file download bars would fill it."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"}
    env["ANOMALY_CACHE_DIR"] = str(tmp_path / "cache")  # empty, so the model is downloaded
    command = [sys.executable, "-m", "pipelines.batch_score", "--model",
               f"models:/{registered}@champion", "--input", str(workdir / "new.csv"),
               "--output", str(tmp_path / "out.csv")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    assert "scored 1650 rows" in done.stderr
    assert "Downloading artifacts" not in done.stderr
