"""Time series through every scoring path: HTTP streams (memory and Redis buffers), /invocations,
the MLflow pyfunc and the CLI give the detector's numbers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import free_port
from fastapi.testclient import TestClient

from anomaly import registry
from anomaly.datasets import make_metric_series
from anomaly.pyfunc import with_scores
from anomaly.sequence import SequenceDetector
from anomaly.service.app import create_app
from anomaly.service.settings import Settings
from anomaly.streams import MemoryStreams, parse_points

WINDOW = 16


@pytest.fixture(scope="module")
def detector() -> SequenceDetector:
    train = make_metric_series(800, 2)
    return SequenceDetector(series_col="host", exclude=["label"], window=WINDOW, epochs=8).fit(
        train
    )


@pytest.fixture(scope="module")
def model_dir(detector, tmp_path_factory):
    return detector.save(tmp_path_factory.mktemp("seq") / "model")


@pytest.fixture(scope="module")
def series() -> pd.DataFrame:
    """One host's points in time order, with a level shift."""
    rows = make_metric_series(120, 1, anomalies=(70,), seed=4, shuffle=False)
    return rows.assign(timestamp=rows["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"))


def points_of(rows: pd.DataFrame) -> list[dict]:
    return rows[["timestamp", "value"]].to_dict(orient="records")


def settings(model_dir, **kw) -> Settings:
    return Settings(model_uri=str(model_dir), reload_interval=0, **kw)


def test_a_stream_gets_the_window_scores_of_the_batch_path(model_dir, detector, series):
    expected = detector.score(series.assign(host="h0"), by="window")
    with TestClient(create_app(settings(model_dir))) as client:
        results = []
        for start in range(0, len(series), 7):  # uneven requests: state carries over
            chunk = series.iloc[start : start + 7]
            answer = client.post("/v1/streams/h0/points", json={"points": points_of(chunk)})
            assert answer.status_code == 200, answer.text
            results += answer.json()["results"]
    got = pd.DataFrame(results)
    assert got["anomaly_score"].iloc[: WINDOW - 1].isna().all()
    assert got["reason"].iloc[0] == f"the window is not full yet (1 of {WINDOW} points)"
    scored = got.iloc[WINDOW - 1 :]
    assert scored["reason"].isna().all()
    np.testing.assert_array_equal(
        scored["anomaly_score"].to_numpy(np.float32),
        expected["anomaly_score"].iloc[WINDOW - 1 :].to_numpy(),
    )
    assert (scored["is_anomaly"].to_numpy() == expected["is_anomaly"].iloc[WINDOW - 1 :]).all()
    assert scored["is_anomaly"].iloc[70 - WINDOW + 1 : 80 - WINDOW + 1].any()  # the shift


def test_bad_points_are_refused_whole_and_leave_the_stream_as_it_was(model_dir, series):
    with TestClient(create_app(settings(model_dir))) as client:
        url = "/v1/streams/s1/points"
        first = points_of(series.iloc[:5])
        assert client.post(url, json={"points": first}).status_code == 200
        replay = points_of(series.iloc[5:7]) + points_of(series.iloc[2:3])  # back in time
        answer = client.post(url, json={"points": replay})
        assert answer.status_code == 422
        assert answer.json()["detail"][0]["loc"] == ["body", "points", 2, "timestamp"]
        answer = client.post(url, json={"points": [{"timestamp": "2024-02-01", "value": "x"}]})
        assert answer.status_code == 422
        assert answer.json()["detail"][0]["loc"] == ["body", "points", 0, "value"]
        answer = client.post(url, json={"points": [{"value": 1.0}]})
        assert answer.status_code == 422 and "missing field 'timestamp'" in answer.text
        for lone in ({"timestamp": "\ud800", "value": 1.0}, {"timestamp": "x", "value": "\udc00"}):
            answer = client.post(url, content=json.dumps({"points": [lone]}),
                                 headers={"Content-Type": "application/json"})  # fmt: skip
            assert answer.status_code == 422 and "unpaired surrogate" in answer.text
        for escaped in ("%FF", "s%FE1"):  # both would read as U+FFFD, one stream
            answer = client.post(f"/v1/streams/{escaped}/points", json={"points": first})
            assert answer.status_code == 422, answer.text
            assert answer.json()["detail"][0]["loc"] == ["path", "stream_id"]
        assert client.post("/v1/streams/%EF%BF%BD/points", json={"points": first}).is_success
        # ids such as rack1/host7 name streams of their own, written plainly or escaped
        answer = client.post("/v1/streams/rack1/host7/points", json={"points": first})
        assert answer.status_code == 200 and answer.json()["stream_id"] == "rack1/host7"
        answer = client.post("/v1/streams/rack1%2Fhost7/points", json={"points": first})
        assert answer.status_code == 422 and "not after the stream's last point" in answer.text
        # counted under the route as the docs and alerts write it
        assert (
            'endpoint="/v1/streams/{stream_id}/points",status="422"' in client.get("/metrics").text
        )
        # true is no time (nor 1 second past 1970)
        answer = client.post(url, json={"points": [{"timestamp": True, "value": 1.0}]})
        assert answer.status_code == 422 and "'timestamp' is true, not a time" in answer.text
        answer = client.post(url, json={"points": [{**first[0], "value": "maybe"}]})
        assert answer.json()["detail"][0]["loc"] == ["body", "points", 0, "value"]
        typo = {"timestamp": first[0]["timestamp"], "valeu": 1.0}  # refused as value missing
        answer = client.post(url, json={"points": [typo]})
        assert answer.json()["detail"][0]["msg"] == "point 0: missing field 'value'"
        # a body JSON cannot read is named as /v1/score names it, in the same shape
        for body, problem in ((b'{"points": [{"value": 1' + b"9" * 5000 + b"}]}", "too long"),
                              (b"[" * 2000 + b"]" * 2000, "nested too deeply"),
                              (b'{"points": [1, 2', "not valid JSON")):  # fmt: skip
            answer = client.post(url, content=body)
            assert answer.status_code == 422 and problem in answer.json()["detail"][0]["msg"]
        answer = client.post(url, json={"points": []})
        assert answer.json()["detail"][0]["loc"] == ["body", "points"]
        # read whatever the content type says, as /v1/score is (curl -d sends a form's)
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        probe = json.dumps({"points": [{"timestamp": "2023-01-01T00:00:00Z", "value": 1.0}]})
        answer = client.post(url, content=probe, headers=form)
        assert answer.status_code == 422 and "not after the stream's last point" in answer.text
        # the refused requests changed nothing: the stream goes on from point 5
        answer = client.post(url, json={"points": points_of(series.iloc[5:WINDOW])})
        assert answer.json()["results"][-1]["anomaly_score"] is not None
        # a missing value takes the previous one; a new stream has none to take
        nxt = {"timestamp": series["timestamp"].iloc[WINDOW], "value": None}
        assert client.post(url, json={"points": [nxt]}).json()["results"][0]["reason"] is None
        answer = client.post("/v1/streams/new/points", json={"points": [nxt]})
        assert answer.status_code == 422 and "no earlier value" in answer.text
        # a gap much longer than the typical step restarts the window
        later = {"timestamp": "2024-03-01T00:00:00Z", "value": 0.1}
        reason = client.post(url, json={"points": [later]}).json()["results"][0]["reason"]
        assert reason == "a gap in time: the window restarts"
        after_gap = {"timestamp": "2024-04-01T00:00:00Z", "value": None}  # none since the gap
        answer = client.post(url, json={"points": [after_gap]})
        assert "has no earlier value since the gap before it" in answer.text
        # a table endpoint says which endpoint this model takes
        answer = client.post("/v1/score", json={"records": [{"value": 1.0}]})
        assert answer.status_code == 409 and "/v1/streams/" in answer.text
        info = client.get("/v1/model").json()
        assert info["kind"] == "sequence" and info["schema"]["values"] == ["value"]
        # streams flag windows: their threshold is the window calibrator's, said beside the other
        assert info["window_threshold"] == float(
            client.app.state.holder.current.detector.window_calibrator_.threshold_
        )


def test_streams_survive_a_hot_reload_and_memory_is_bounded(model_dir, detector, series):
    with TestClient(create_app(settings(model_dir))) as client:
        url = "/v1/streams/r/points"
        client.post(url, json={"points": points_of(series.iloc[: WINDOW - 1])})
        client.app.state.holder.load()  # what a poll does when the alias moves
        answer = client.post(url, json={"points": points_of(series.iloc[WINDOW - 1 : WINDOW])})
        assert answer.json()["results"][0]["anomaly_score"] is not None
    streams = MemoryStreams(max_streams=2, ttl_s=3600)
    times, values = parse_points(detector, points_of(series.iloc[:3]))
    for name in ("a", "b", "c"):
        streams.update(name, detector, times, values)
    assert len(streams) == 2 and "a" not in streams._buffers  # least recently used went first
    streams.ttl_s = 0.0
    streams.update("d", detector, times, values)
    assert len(streams) == 1  # the idle ones expired


def scraped(client, sample: str) -> float:
    """The value of an unlabelled sample on the service's /metrics page."""
    from prometheus_client.parser import text_string_to_metric_families

    families = text_string_to_metric_families(client.get("/metrics").text)
    return next(s.value for f in families for s in f.samples if s.name == sample)


def test_invocations_pyfunc_and_cli_give_the_same_point_scores(
    model_dir, detector, series, tmp_path
):
    rows = series.assign(host="h0")  # and a label, which the model does not read
    expected = detector.score(rows)
    with TestClient(create_app(settings(model_dir))) as client:
        split = {"columns": list(rows.columns), "data": rows.astype(object).to_numpy().tolist()}
        before = scraped(client, "anomaly_records_scored_total")
        answer = client.post("/invocations", json={"dataframe_split": split})
        assert scraped(client, "anomaly_records_scored_total") == before + len(rows)
    assert answer.status_code == 200, answer.text
    predictions = pd.DataFrame(answer.json()["predictions"])
    np.testing.assert_array_equal(
        predictions["anomaly_score"].to_numpy(np.float32), expected["anomaly_score"]
    )

    logged = registry.log_detector(detector, register="series-model", sample=rows)
    model = mlflow.pyfunc.load_model(f"models:/series-model/{logged.version}")
    out = model.predict(rows)
    assert list(out.columns) == [*rows.columns, "anomaly_score", "is_anomaly", "p_value"]
    np.testing.assert_array_equal(out["anomaly_score"].to_numpy(), expected["anomaly_score"])
    pd.testing.assert_frame_equal(out, with_scores(detector, rows))

    rows.to_csv(tmp_path / "in.csv", index=False)
    anomaly = shutil.which("anomaly", path=str(sys.executable).rsplit("/", 1)[0])
    subprocess.run(
        [anomaly, "score", str(tmp_path / "in.csv"), "--model", "models:/series-model@champion",
         "--out", str(tmp_path / "out.csv"), "--no-progress"],
        check=True,
    )  # fmt: skip
    written = pd.read_csv(tmp_path / "out.csv")
    np.testing.assert_array_equal(
        written["anomaly_score"].to_numpy(np.float32), expected["anomaly_score"]
    )
    assert (written["is_anomaly"] == expected["is_anomaly"].to_numpy()).all()


def test_several_workers_need_shared_buffers(model_dir):
    anomaly = shutil.which("anomaly", path=str(sys.executable).rsplit("/", 1)[0])
    done = subprocess.run(
        [anomaly, "serve", "--model", str(model_dir), "--workers", "2"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "ANOMALY_STREAM_REDIS_URL" in done.stderr


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (tests/system-deps.sh installs it)")
    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path_factory.mktemp("redis"))],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


def test_redis_buffers_let_any_replica_take_any_point(model_dir, detector, series, redis_url):
    """Two service instances share one Redis: points alternate between them and the scores
    are those of one stream."""
    expected = detector.score(series.assign(host="h0"), by="window")["anomaly_score"].to_numpy()
    s = settings(model_dir, stream_redis_url=redis_url, stream_ttl=60)
    with TestClient(create_app(s)) as one, TestClient(create_app(s)) as two:
        scores = []
        for i in range(0, 40, 4):
            client = (one, two)[(i // 4) % 2]
            answer = client.post(
                "/v1/streams/shared/points", json={"points": points_of(series.iloc[i : i + 4])}
            )
            assert answer.status_code == 200, answer.text
            scores += [r["anomaly_score"] for r in answer.json()["results"]]
    got = np.array([np.nan if s is None else s for s in scores], dtype=np.float32)
    np.testing.assert_array_equal(got[WINDOW - 1 :], expected[WINDOW - 1 : 40])
    import redis

    ttl = redis.Redis.from_url(redis_url).ttl("anomaly:stream:shared")
    assert 0 < ttl <= 60


def test_an_unreachable_redis_is_a_503_not_a_500(model_dir, series):
    s = settings(model_dir, stream_redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with TestClient(create_app(s)) as client:
        answer = client.post("/v1/streams/x/points", json={"points": points_of(series.iloc[:2])})
        assert answer.status_code == 503 and "stream store (Redis) is unavailable" in answer.text


def test_a_reload_to_another_kind_of_model_is_refused(detector, fitted_ae):
    """An alias moved from a table model to a series model: the service keeps the table model
    (a restart checks what a series model needs: one worker, or Redis)."""
    import uuid

    from mlflow import MlflowClient

    from anomaly.errors import ModelFormatError, RegistryError
    from anomaly.service.model import ModelHolder

    name = f"kinds-{uuid.uuid4().hex[:8]}"
    registry.log_detector(fitted_ae, register=name)
    series_version = registry.log_detector(detector, register=name).version
    holder = ModelHolder(f"models:/{name}@champion")
    holder.load()
    with pytest.raises(RegistryError, match="is a sequence model, its champion v1 a tabular"):
        registry.promote(name, series_version)  # refused; MLflow's own client moves it
    MlflowClient().set_registered_model_alias(name, registry.CHAMPION, series_version)
    with pytest.raises(ModelFormatError, match="a sequence model; this service serves tabular"):
        holder._reload_if_moved()
    assert holder.current.ref.version == "1" and holder.current.detector.kind == "tabular"


def test_a_time_past_64_bits_is_refused_not_a_500():
    """The answer echoes each point's time; JSON integers past 64 bits cannot be written."""
    from types import SimpleNamespace

    from anomaly.data.sequence import SequenceSchema
    from anomaly.errors import InputError

    numbered = SimpleNamespace(schema_=SequenceSchema("t", ("v",), timestamp_kind="number"))
    times, _ = parse_points(numbered, [{"t": 2**63 - 1, "v": 1.0}, {"t": -(2**63), "v": 1.0}])
    assert times.tolist() == [2.0**63, -(2.0**63)]
    for bad in (2**64, -(2**63) - 1):
        with pytest.raises(InputError, match="'t' is out of range"):
            parse_points(numbered, [{"t": 1, "v": 1.0}, {"t": bad, "v": 1.0}])
