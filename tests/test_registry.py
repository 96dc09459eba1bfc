"""MLflow logging, the registry's aliases, model URIs and the pyfunc, on a real sqlite store."""

import importlib.util
import shutil
import uuid
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import free_port
from mlflow import MlflowClient

from anomaly import registry
from anomaly.errors import RegistryError
from anomaly.pyfunc import with_scores


def new_name() -> str:
    return f"svc-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def logged(fitted_vae, normal_rows):
    name = new_name()
    marks = np.zeros(len(normal_rows), bool)
    marks[:20] = True  # pretend some rows are known anomalies: the latent plot marks them
    first = registry.log_detector(
        fitted_vae, register=name, sample=normal_rows, sample_is_anomaly=marks,
        data_source="normal.csv",
    )  # fmt: skip
    return name, first


def test_run_holds_settings_losses_calibration_and_plots(logged, fitted_vae):
    _, first = logged
    client = MlflowClient()
    run = client.get_run(first.run_id)
    params = run.data.params
    assert params["model"] == "vae"
    assert params["latent_size"] == str(fitted_vae.architecture_["latent"])
    assert params["schema_hash"] == fitted_vae.schema_.fingerprint()
    assert params["train_rows"] == str(fitted_vae.training_summary_["n_train"])
    assert params["target_fpr"] == "0.01"
    assert params["data"] == "normal.csv"
    assert run.data.metrics["threshold"] == pytest.approx(fitted_vae.threshold_)
    assert run.data.metrics["calibration_rows"] == len(fitted_vae.calibrator_.scores_)
    losses = client.get_metric_history(first.run_id, "val_loss")
    assert [m.value for m in sorted(losses, key=lambda m: m.step)] == pytest.approx(
        fitted_vae.history_["val_loss"]
    )
    artifacts = {a.path for a in client.list_artifacts(first.run_id, "plots")}
    assert artifacts == {
        "plots/loss_curve.png",
        "plots/calibration_histogram.png",
        "plots/latent_projection.png",
    }
    local = Path(mlflow.artifacts.download_artifacts(run_id=first.run_id, artifact_path="plots"))
    for png in local.iterdir():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    schema = mlflow.artifacts.load_dict(f"runs:/{first.run_id}/schema.json")
    assert schema == fitted_vae.schema_.to_dict()


def test_model_is_pyfunc_without_pickle_with_signature_example_and_requirements(logged):
    name, _ = logged
    root = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/1"))
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))]
    assert "data/detector/weights.safetensors" in files
    assert "data/detector/detector.json" in files
    model = mlflow.models.Model.load(root / "MLmodel")
    assert model.flavors["python_function"]["loader_module"] == "anomaly.pyfunc"
    assert "python_model" not in model.flavors["python_function"]
    inputs = {c.name: c.required for c in model.signature.inputs.inputs}
    assert inputs["cpu"] and inputs["region"]
    assert inputs["host_id"] is False  # excluded at fit: optional, passed through
    assert model.signature.outputs.input_names() == [
        "anomaly_score", "is_anomaly", "p_value", "top_features",
    ]  # fmt: skip
    assert model.saved_input_example_info is not None
    requirements = (root / "requirements.txt").read_text().split()
    assert any(r.startswith("anomaly==") for r in requirements)
    assert any(r.startswith("torch==") for r in requirements)


def test_pyfunc_predict_returns_the_input_and_the_detector_scores(logged, fitted_vae, test_rows):
    name, _ = logged
    predicted = mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(test_rows)
    expected = with_scores(fitted_vae, test_rows)
    pd.testing.assert_frame_equal(predicted[expected.columns], expected)
    assert set(predicted.columns) == set(expected.columns)


def test_every_uri_form_loads_the_same_detector(logged, fitted_vae, test_rows, tmp_path):
    name, first = logged
    downloaded = mlflow.artifacts.download_artifacts(f"models:/{name}/1", dst_path=tmp_path)
    fitted_vae.save(tmp_path / "plain")
    uris = [
        f"models:/{name}@champion",
        f"models:/{name}/1",
        first.model_uri,  # runs:/RUN_ID/model
        f"models:/{first.model_id}",  # MLflow 3's logged model
        downloaded,  # an MLflow model on disk
        str(tmp_path / "plain"),  # a model directory
    ]
    expected = fitted_vae.score_samples(test_rows)
    for uri in uris:
        scores = registry.load_detector(uri).score_samples(test_rows)
        assert np.array_equal(scores, expected), uri
    ref = registry.resolve(f"models:/{name}@champion")
    assert (ref.name, ref.version, ref.run_id) == (name, "1", first.run_id)


def test_a_loaded_version_comes_from_the_cache_afterwards(
    fitted_ae, test_rows, tmp_path, monkeypatch
):
    name = new_name()
    logged = registry.log_detector(fitted_ae, register=name)
    first = registry.resolve(f"models:/{name}@champion")
    # Delete the version's files from the store: from now on only the cache has them.
    location = MlflowClient().get_logged_model(logged.model_id)
    shutil.rmtree(urlparse(location.artifact_location).path)
    again = registry.resolve(f"models:/{name}/1")
    assert again.path == first.path
    assert np.array_equal(
        registry.load_detector(f"models:/{name}@champion").score_samples(test_rows),
        fitted_ae.score_samples(test_rows),
    )
    monkeypatch.setenv("ANOMALY_CACHE_DIR", str(tmp_path / "empty-cache"))
    with pytest.raises(RegistryError, match=f"models:/{name}/1 is not an MLflow model"):
        registry.resolve(f"models:/{name}/1")


def test_first_version_is_champion_and_promotion_and_rollback_chain(fitted_ae):
    name = new_name()
    client = MlflowClient()

    def aliases() -> dict:
        return {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}

    assert registry.log_detector(fitted_ae, register=name).aliases == ("champion",)
    second = registry.log_detector(fitted_ae, register=name)
    assert (second.version, second.aliases) == ("2", ())
    assert aliases() == {"champion": "1"}
    assert registry.promote(name, 2) == "1"
    assert aliases() == {"champion": "2", "previous": "1"}
    registry.log_detector(fitted_ae, register=name)
    registry.promote(name, 3)
    assert aliases() == {"champion": "3", "previous": "2"}
    assert registry.rollback(name) == ("3", "2")
    assert aliases() == {"champion": "2", "previous": "1"}
    assert registry.rollback(name) == ("2", "1")
    assert aliases() == {"champion": "1"}
    with pytest.raises(RegistryError, match="no 'previous' version"):
        registry.rollback(name)
    listed = registry.list_versions(name)
    assert [v["version"] for v in listed] == ["3", "2", "1"]
    assert listed[-1]["aliases"] == ["champion"] and listed[0]["model"] == "ae"
    assert registry.promote(name, 1) == "1"  # already champion: nothing moves
    with pytest.raises(RegistryError, match="has no version 9"):
        registry.promote(name, 9)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("models:/no-such-model@champion", "model 'no-such-model' has no alias 'champion'"),
        ("models:/no-such-model/1", "model 'no-such-model' has no version 1"),
        ("models:/x/Production", "give a version number or an alias"),
        ("runs:/0123456789abcdef/model", "cannot download runs:/0123456789abcdef/model"),
        ("/no/such/dir", "no model at /no/such/dir"),
        ("http://127.0.0.1:9/y", "points into an MLflow server's artifacts"),
        pytest.param(
            "s3://bucket/model",
            r"needs the package 'boto3' \(pip install boto3\)",
            marks=pytest.mark.skipif(
                importlib.util.find_spec("botocore") is not None, reason="boto3 is installed"
            ),
        ),
    ],
)
def test_bad_uris_say_what_is_wrong(uri, message):
    with pytest.raises(RegistryError, match=message):
        registry.resolve(uri)


def test_missing_alias_and_unreachable_server(logged, monkeypatch):
    name, _ = logged
    with pytest.raises(RegistryError, match=f"model '{name}' has no alias 'staging'"):
        registry.resolve(f"models:/{name}@staging")
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    with pytest.raises(RegistryError, match=f"cannot reach the MLflow tracking server at {url}"):
        registry.resolve(f"models:/{name}@champion")


def test_a_store_missing_its_package_names_the_package():
    uri = "wasbs://c@a.blob.core.windows.net/m"
    missing = ModuleNotFoundError("No module named 'azure.identity'", name="azure.identity")
    with (
        pytest.raises(RegistryError, match=r"needs the package 'azure-identity' \(pip install"),
        registry._download_errors(uri),
    ):
        raise missing
    with (
        pytest.raises(RegistryError, match="requires the azure-storage-blob package"),
        registry._download_errors(uri),
    ):
        raise ImportError("wasbs requires the azure-storage-blob package")  # no module name


def test_a_version_that_cannot_load_is_not_promoted(fitted_ae, tmp_path):
    name = new_name()
    registry.log_detector(fitted_ae, register=name)
    (tmp_path / "bogus").mkdir()
    MlflowClient().create_model_version(name, source=str(tmp_path / "bogus"))
    with pytest.raises(RegistryError, match=f"models:/{name}/2 is not an MLflow model"):
        registry.promote(name, 2)
    assert MlflowClient().get_registered_model(name).aliases == {"champion": 1}
