"""Retraining end to end on a real sqlite registry: drift -> challenger promoted -> rollback;
a worse challenger refused; an incompatible schema promoting nothing; the scheduler entry point."""

import uuid

import mlflow
import pandas as pd
import pytest
from conftest import free_port
from mlflow import MlflowClient

from anomaly import registry
from anomaly.datasets import make_service_metrics
from anomaly.detector import Detector
from anomaly.errors import InputError, PromotionLocked, RegistryUnavailable
from anomaly.retraining import GateRules, SchemaMismatch, apply_rules, compare_schema, retrain
from pipelines import retrain as retrain_pipeline


def drifted(frame: pd.DataFrame) -> pd.DataFrame:
    """Normal behaviour moved: twice the traffic, and everything that follows it."""
    out = frame.copy()
    for column in ("requests", "cpu", "bytes_out"):
        out[column] = out[column] * 2.0
    out["latency_ms"] = out["latency_ms"] + 15.0
    return out


def anomalies_only(n: int, seed: int) -> pd.DataFrame:
    rows = make_service_metrics(50, n, seed=seed)
    return rows[rows["label"] == 1].reset_index(drop=True)


@pytest.fixture
def champion(fitted_ae, normal_rows, tmp_path):
    name = f"retrain-{uuid.uuid4().hex[:8]}"
    normal_rows.to_csv(tmp_path / "first.csv", index=False)
    registry.log_detector(fitted_ae, register=name, data_source=str(tmp_path / "first.csv"))
    return name


def aliases(name: str) -> dict:
    return {k: str(v) for k, v in MlflowClient().get_registered_model(name).aliases.items()}


def test_drift_promotes_the_challenger_and_rollback_restores(champion):
    new = drifted(make_service_metrics(4000, seed=11))
    result = retrain(champion, new, epochs=40)
    assert result.figures["champion_fpr"] > 0.1  # the old threshold no longer holds
    assert result.figures["challenger_fpr"] <= 0.02
    assert result.promoted, result.reasons
    assert aliases(champion) == {"champion": "2", "previous": "1", "challenger": "2"}
    run = MlflowClient().get_run(result.run_id)
    assert run.data.tags["anomaly.gate"] == "promoted"
    logged_fpr = run.data.metrics["gate_challenger_fpr"]
    assert logged_fpr == pytest.approx(result.figures["challenger_fpr"])
    gate_text = mlflow.artifacts.load_text(f"runs:/{result.run_id}/gate.txt")
    assert "decision: promoted" in gate_text
    assert registry.rollback(champion) == ("2", "1")
    assert aliases(champion)["champion"] == "1"


def test_rollback_past_a_deleted_version_drops_previous(fitted_ae):
    name = f"rollback-{uuid.uuid4().hex[:8]}"
    for _ in range(3):
        registry.log_detector(fitted_ae, register=name)
    registry.promote(name, 2)
    registry.promote(name, 3)  # champion 3, previous 2, and 2 replaced 1
    MlflowClient().delete_model_version(name, "1")
    assert registry.rollback(name) == ("3", "2")
    assert aliases(name) == {"champion": "2"}


def test_the_challenger_reads_the_champions_columns_only(normal_rows, tmp_path):
    """Not a column the champion ignored (all missing) that the new data fills; and the new
    data need not hold the columns the champion excluded."""
    name = f"columns-{uuid.uuid4().hex[:8]}"
    first = normal_rows.assign(disk=float("nan"))
    first.to_csv(tmp_path / "first.csv", index=False)
    det = Detector(model="ae", exclude=["host_id", "timestamp", "label"], epochs=3, seed=0)
    registry.log_detector(det.fit(first), register=name, data_source=str(tmp_path / "first.csv"))
    assert det.schema_.ignored["disk"] == "all values missing"
    new = make_service_metrics(2000, seed=12).drop(columns=["host_id", "timestamp", "label"])
    result = retrain(name, new.assign(disk=1.0), epochs=3)
    challenger = registry.load_detector(f"models:/{name}/{result.challenger_version}")
    assert challenger.schema_.names == det.schema_.names


def test_a_challenger_trained_on_anomalies_is_refused(champion):
    contaminated = pd.concat([make_service_metrics(2500, seed=12), anomalies_only(900, 13)])
    result = retrain(champion, contaminated, anomalies=anomalies_only(300, 14), epochs=40)
    assert not result.promoted
    assert any(r.startswith("failed: challenger AUROC") for r in result.reasons), result.reasons
    assert result.figures["challenger_auroc"] < result.figures["champion_auroc"]
    assert aliases(champion) == {"champion": "1", "challenger": "2"}
    assert MlflowClient().get_run(result.run_id).data.tags["anomaly.gate"] == "kept"


def test_a_barely_trained_challenger_is_refused(champion, caplog):
    new = make_service_metrics(3000, seed=15)
    labelled = anomalies_only(300, 16).assign(is_fraud=1)  # a column the model does not read
    result = retrain(champion, new, anomalies=labelled, epochs=1,
                     rules=GateRules(max_auroc_drop=0.005))  # fmt: skip
    assert not result.promoted, result.figures
    # said, as a labelled file given whole would count its normal rows as anomalies
    assert "every row counts as an anomaly; the model does not read 'is_fraud'" in caplog.text
    shift = f"champion {result.figures['champion_score_shift_ks']:.4f}, challenger"
    assert any(r.startswith("reported: score shift") and shift in r for r in result.reasons)
    assert aliases(champion)["champion"] == "1"


def test_an_incompatible_schema_promotes_nothing(champion, fitted_ae):
    new = make_service_metrics(500, seed=17)
    with pytest.raises(SchemaMismatch, match="column 'cpu' is gone"):
        retrain(champion, new.drop(columns=["cpu"]))
    as_text = new.assign(requests=["many"] * len(new))
    with pytest.raises(SchemaMismatch, match="'requests': numeric -> categorical"):
        retrain(champion, as_text)
    assert [v["version"] for v in registry.list_versions(champion)] == ["1"]
    report = compare_schema(fitted_ae, new.assign(region="mars", extra=1))
    assert report.compatible
    assert report.added == ["extra"] and report.new_categories == {"region": ["mars"]}


def test_finetune_keeps_the_champions_inputs_and_append_adds_its_data(champion, fitted_ae):
    new = drifted(make_service_metrics(2000, seed=18))
    tuned = retrain(champion, new, mode="finetune", epochs=10)
    challenger = registry.load_detector(f"models:/{champion}/{tuned.challenger_version}")
    assert challenger.architecture_ == fitted_ae.architecture_
    assert challenger.preprocessor_.to_dict() == fitted_ae.preprocessor_.to_dict()
    if tuned.promoted:
        registry.rollback(champion)
    appended = retrain(champion, new, mode="append", epochs=10)
    params = MlflowClient().get_run(appended.run_id).data.params
    rows = sum(int(params[k]) for k in ("train_rows", "validation_rows", "calibration_rows"))
    assert rows == 5000 + 1600  # the champion's 5,000 rows and 80% of the new 2,000


def test_scheduler_exit_codes(champion, tmp_path, monkeypatch):
    make_service_metrics(300, seed=19).drop(columns=["cpu"]).to_csv(tmp_path / "bad.csv",
                                                                     index=False)  # fmt: skip
    assert retrain_pipeline.main(["--name", champion, "--data", str(tmp_path / "bad.csv")]) == 2
    with monkeypatch.context() as patch:  # a server down is worth a retry: 75, not 2
        patch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
        args = ["--name", champion, "--data", str(tmp_path / "bad.csv")]
        assert retrain_pipeline.main(args) == 75
    drifted(make_service_metrics(3000, seed=20)).to_csv(tmp_path / "new.csv", index=False)
    args = ["--name", champion, "--data", str(tmp_path / "new.csv"), "--epochs", "30"]
    assert retrain_pipeline.main(args) == 0
    anomalies_only(200, 21).to_csv(tmp_path / "anomalies.csv", index=False)
    pd.concat([make_service_metrics(1500, seed=22), anomalies_only(600, 23)]).to_csv(
        tmp_path / "dirty.csv", index=False
    )
    args = ["--name", champion, "--data", str(tmp_path / "dirty.csv"), "--anomalies",
            str(tmp_path / "anomalies.csv"), "--epochs", "30"]  # fmt: skip
    assert retrain_pipeline.main(args) == 3


def test_a_running_service_follows_the_promotion_without_failed_requests(champion, tmp_path):
    import json
    import os
    import sys
    import threading
    import time

    import httpx
    from conftest import free_port, start, stop

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    bin_dir = os.path.dirname(sys.executable)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    server = start([sys.executable, "-m", "anomaly.cli", "serve", "--model",
                    f"models:/{champion}@champion", "--port", str(port), "--reload-interval",
                    "0.5", "--log-level", "warning"], tmp_path / "serve.log", env,
                   f"{url}/readyz")  # fmt: skip
    rows = make_service_metrics(3, seed=24).drop(columns=["label"])
    body = {"records": json.loads(rows.to_json(orient="records"))}
    seen: list[tuple[int, str | None]] = []
    done = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not done.is_set():
                answer = client.post("/v1/score", json=body)
                version = answer.json()["model"]["version"] if answer.status_code == 200 else None
                seen.append((answer.status_code, version))

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        result = retrain(champion, drifted(make_service_metrics(3000, seed=25)), epochs=30)
        assert result.promoted, result.reasons
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not seen or seen[-1][1] != "2"):
            time.sleep(0.2)
    finally:
        done.set()
        sender.join()
        stop(server)
    assert {status for status, _ in seen} == {200}
    versions = [version for _, version in seen]
    assert versions[0] == "1" and versions[-1] == "2"
    assert versions == sorted(versions)  # once switched, it stays switched


def test_racing_promotions_leave_one_winner(fitted_ae):
    """Two challengers gated against the same champion: exactly one may promote."""
    from concurrent.futures import ThreadPoolExecutor

    name = f"race-{uuid.uuid4().hex[:8]}"
    for _ in range(3):
        registry.log_detector(fitted_ae, register=name)
    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda v: registry.promote_if_champion(name, v, "1"), [2, 3]))
    assert sorted(promoted for promoted, _ in outcomes) == [False, True]
    winner = "2" if outcomes[0][0] else "3"
    assert aliases(name) == {"champion": winner, "previous": "1"}
    assert name + "--promotion-lock" not in {
        m.name for m in MlflowClient().search_registered_models()
    }


def test_a_gate_record_that_cannot_be_logged_leaves_the_decision_standing(
    champion, monkeypatch, tmp_path
):
    """Promoted, then the server fails: exit 0, not the 75 that has a scheduler retrain again
    against the champion this run just made."""

    def down(*args, **kwargs):
        raise RegistryUnavailable("the MLflow server answered 503")

    monkeypatch.setattr(registry, "log_gate", down)
    drifted(make_service_metrics(3000, seed=25)).to_csv(tmp_path / "new.csv", index=False)
    args = ["--name", champion, "--data", str(tmp_path / "new.csv"), "--epochs", "30"]
    assert retrain_pipeline.main(args) == 0
    assert aliases(champion)["champion"] == "2"


def test_a_promotion_holding_the_lock_fails_the_gate(champion, monkeypatch):
    """Another promotion still holds the lock: a gate failure (the scheduler's exit 3), with its
    record logged, and the champion where it was."""
    MlflowClient().create_registered_model(champion + "--promotion-lock")
    listed = {m["name"] for m in registry.list_models()}
    assert champion in listed and champion + "--promotion-lock" not in listed  # not a model
    monkeypatch.setattr(registry, "PROMOTION_WAIT_S", 0.3)
    new = make_service_metrics(1500, seed=24)
    result = retrain(champion, new, epochs=2, rules=GateRules(max_fpr_ratio=50.0))
    assert not result.promoted
    assert any("holds its lock" in reason for reason in result.reasons), result.reasons
    assert aliases(champion) == {"champion": "1", "challenger": "2"}
    assert MlflowClient().get_run(result.run_id).data.tags["anomaly.gate"] == "kept"


@pytest.mark.parametrize(
    ("flagged", "held_out", "passes"),
    [(1, 40, True), (2, 40, True), (3, 40, False),  # one image in 40 is 2.5%, yet no evidence
     (5, 100, True), (6, 100, False), (223, 10_000, True), (224, 10_000, False)],
)  # fmt: skip
def test_the_fpr_rule_allows_for_the_size_of_the_holdout(flagged, held_out, passes):
    figures = {"challenger_false_positives": flagged, "holdout_scored": held_out,
               "challenger_fpr": flagged / held_out, "champion_fpr": 0.5}  # fmt: skip
    failures, passed = apply_rules(GateRules(), figures, target_fpr=0.01)
    assert (not failures) == passes, failures or passed
    assert f"({flagged} of {held_out}) vs 0.0200 (2 x target 0.01)" in (failures or passed)[0]


def test_a_series_counts_its_flags_per_window():
    figures = {"holdout_scored": 600, "score_span": 24, "champion_fpr": 0.5}
    one_excursion = {**figures, "challenger_false_positives": 24, "challenger_fpr": 0.04}
    failures, passed = apply_rules(GateRules(), one_excursion, target_fpr=0.01)
    assert not failures and "counted as 1 of 25 windows of 24 points" in passed[0]
    many = {**figures, "challenger_false_positives": 100, "challenger_fpr": 100 / 600}
    failures, _ = apply_rules(GateRules(), many, target_fpr=0.01)
    assert failures and "counted as 5 of 25 windows" in failures[0]
    with pytest.raises(InputError, match="fpr_significance must be in"):
        GateRules(fpr_significance=0.0)


def test_warm_start_needs_the_same_model_and_shape(fitted_ae, normal_rows):
    with pytest.raises(InputError, match="cannot warm-start a 'vae' Detector from a 'ae' Det"):
        Detector(model="vae").fit(normal_rows, warm_start_from=fitted_ae)
    with pytest.raises(InputError, match="another shape: hidden"):
        Detector(model="ae", hidden=(8,)).fit(normal_rows, warm_start_from=fitted_ae)


def test_promote_and_rollback_wait_for_the_lock_and_a_holder_drops_only_its_own(
    fitted_ae, monkeypatch
):
    name = f"locked-{uuid.uuid4().hex[:8]}"
    for _ in range(2):
        registry.log_detector(fitted_ae, register=name)
    lock = name + "--promotion-lock"
    client = MlflowClient()
    client.create_registered_model(lock)  # a retrain promoting at this moment
    monkeypatch.setattr(registry, "PROMOTION_WAIT_S", 0.3)
    with pytest.raises(PromotionLocked):
        registry.promote(name, "2")
    client.delete_registered_model(lock)
    assert registry.promote(name, "2") == "1"
    client.create_registered_model(lock)
    with pytest.raises(PromotionLocked):
        registry.rollback(name)
    assert aliases(name) == {"champion": "2", "previous": "1"}  # neither moved anything
    # The CLI says "try again later" (EX_TEMPFAIL), not "bad input".
    from typer.testing import CliRunner

    from anomaly.cli import app

    for args in (["models", "promote", name, "1"], ["rollback", name]):
        done = CliRunner().invoke(app, args)
        assert done.exit_code == 75 and "holds its lock" in done.output, args
    client.delete_registered_model(lock)
    # A holder whose lock was broken as stale, and taken by another, leaves the other's lock.
    with registry._promotion_lock(client, name, wait_s=1.0, lease_s=600.0):
        client.delete_registered_model(lock)
        client.create_registered_model(lock, description="another promotion's")
    assert client.get_registered_model(lock).description == "another promotion's"
    client.delete_registered_model(lock)


def test_retrain_is_refused_under_torchrun(normal_rows, monkeypatch):
    """Every process would gate, register and promote a challenger of its own."""
    from anomaly import AnomalyError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(AnomalyError, match="run it without torchrun"):
        retrain("never-registered", normal_rows)


def test_a_champion_of_another_kind_is_refused(fitted_ae):
    """Every service and job on NAME@champion reads one kind of data."""
    from anomaly.datasets import make_metric_series
    from anomaly.errors import RegistryError
    from anomaly.sequence import SequenceDetector

    name = f"kinds-{uuid.uuid4().hex[:8]}"
    registry.log_detector(fitted_ae, register=name)
    series = SequenceDetector(window=8, epochs=1).fit(
        make_metric_series(300, 1).drop(columns="host")
    )
    registry.log_detector(series, register=name)
    with pytest.raises(RegistryError, match=r"v2 is a sequence model, its champion v1 a tabular"):
        registry.promote(name, "2")
    assert aliases(name) == {"champion": "1"}
    assert registry.promote(name, "2", alias="challenger") is None  # other aliases may move
