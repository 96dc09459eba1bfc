"""The scoring service in-process (Starlette's TestClient runs its lifespan): endpoints, one
scoring path, bad input, limits, auth, dynamic batching and hot reload."""

import asyncio
import gzip
import json
import math
import shutil
import time
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from prometheus_client import REGISTRY

from anomaly import registry
from anomaly.data.tabular import TabularSchema
from anomaly.pyfunc import with_scores
from anomaly.service.app import create_app
from anomaly.service.batching import Batcher
from anomaly.service.model import ModelHolder
from anomaly.service.settings import Settings


def records_of(frame: pd.DataFrame) -> list[dict]:
    return json.loads(frame.to_json(orient="records", double_precision=15))


@pytest.fixture(scope="module")
def model_dir(fitted_vae, tmp_path_factory):
    return fitted_vae.save(tmp_path_factory.mktemp("served") / "model")


@pytest.fixture(scope="module")
def client(model_dir):
    with TestClient(create_app(Settings(model_uri=str(model_dir), max_records=500))) as c:
        yield c


@pytest.fixture(scope="module")
def rows(test_rows):
    return test_rows.drop(columns=["label"]).head(300).reset_index(drop=True)


def _written_as_float32(scores) -> bool:
    """Whether each score is written in float32's shortest digits, as `anomaly score` writes
    it (not 14.240520477294922 for 14.2405205, which read back differ as float64)."""
    return all(repr(float(s)) == repr(float(str(np.float32(s)))) for s in scores)


def test_v1_score_invocations_and_stream_give_the_detector_scores(client, rows, fitted_vae):
    expected = fitted_vae.score(rows)
    answer = client.post("/v1/score", json={"records": records_of(rows)})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["threshold"] == pytest.approx(float(fitted_vae.threshold_))
    results = pd.DataFrame(body["results"])
    assert np.array_equal(results["anomaly_score"].to_numpy("float32"), expected["anomaly_score"])
    assert _written_as_float32(results["anomaly_score"])
    assert (results["is_anomaly"] == expected["is_anomaly"]).all()
    assert (results["p_value"] == expected["p_value"]).all()
    assert results["top_features"].str.join(";").tolist() == expected["top_features"].tolist()

    split = {"columns": list(rows.columns), "data": rows.astype(object).to_numpy().tolist()}
    answer = client.post(
        "/invocations",
        content=json.dumps({"dataframe_split": split}),
        headers={"Content-Type": "application/json"},
    )  # NaN: Python's json
    assert answer.status_code == 200, answer.text
    predictions = pd.DataFrame(answer.json()["predictions"])
    pyfunc = with_scores(fitted_vae, rows)
    assert list(predictions.columns) == list(pyfunc.columns)
    assert np.array_equal(predictions["anomaly_score"].to_numpy("float32"), pyfunc["anomaly_score"])
    assert (predictions["top_features"] == pyfunc["top_features"]).all()
    answer = client.post("/invocations", content=rows.to_csv(index=False),
                         headers={"Content-Type": "text/csv"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    from_csv = pd.DataFrame(answer.json()["predictions"])
    assert np.array_equal(from_csv["anomaly_score"].to_numpy("float32"), pyfunc["anomaly_score"])
    assert _written_as_float32(from_csv["anomaly_score"])

    lines = b"".join(json.dumps(r).encode() + b"\n" for r in records_of(rows))
    answer = client.post("/v1/score/stream", content=_chunks(lines, 997),
                         headers={"Content-Type": "application/x-ndjson"})  # fmt: skip
    assert answer.status_code == 200
    streamed = pd.DataFrame([json.loads(line) for line in answer.text.splitlines()])
    assert streamed["line"].tolist() == list(range(len(rows)))
    assert _written_as_float32(streamed["anomaly_score"])
    assert np.array_equal(streamed["anomaly_score"].to_numpy("float32"), expected["anomaly_score"])


def _chunks(data: bytes, size: int):
    for start in range(0, len(data), size):  # chunked upload, lines cut anywhere
        yield data[start : start + size]


def test_stream_answers_bad_lines_and_scores_the_rest(client, rows, fitted_vae):
    good = records_of(rows.head(3))
    unknown = {**good[0], "cpux": 1}
    wrong = {**good[1], "cpu": "fast"}
    body = "\n".join([json.dumps(good[0]), "{not json", json.dumps(unknown), json.dumps(wrong),
                      json.dumps(good[2]), "[1, 2]"]) + "\n"  # fmt: skip
    answer = client.post("/v1/score/stream", content=body.encode())
    out = [json.loads(line) for line in answer.text.splitlines()]
    assert [o["line"] for o in out] == [0, 1, 2, 3, 4, 5]
    assert "not valid JSON" in out[1]["error"]
    assert out[2]["error"] == "line 2: unknown field 'cpux' (the model reads 8 fields)"
    assert out[3]["error"] == "column 'cpu', line 3: 'fast' is not a number"
    assert "expected a JSON object" in out[5]["error"]
    expected = fitted_vae.score(rows.head(3))["anomaly_score"].to_numpy()
    assert np.float32(out[4]["anomaly_score"]) == expected[2]


def test_a_stream_line_past_the_limit_is_named_and_the_lines_before_it_are_scored(model_dir, rows):
    records = [json.dumps(r).encode() for r in records_of(rows.head(3))]
    limit = max(map(len, records)) + 10
    long = json.dumps({**records_of(rows.head(1))[0], "pad": "x" * limit}).encode()
    settings = Settings(model_uri=str(model_dir), max_line_bytes=limit)
    with TestClient(create_app(settings)) as client:
        # A long line that ends within the chunk: an error for it, the others scored.
        body = b"\n".join([records[0], long, records[1]]) + b"\n"
        out = _stream_body(client, body)
        assert [o["line"] for o in out] == [0, 1, 2]
        assert out[1] == {"line": 1, "error": f"line longer than {limit} bytes"}
        assert "anomaly_score" in out[0] and "anomaly_score" in out[2]
        # One that does not end: the complete lines before it are scored, then it is named.
        body = b"\n".join([records[0], records[1], long])
        out = _stream_body(client, body)
        assert [o["line"] for o in out] == [0, 1, 2] and "error" in out[2]
        # One that spans chunks: named once its buffered part passes the limit, the rest of it
        # skipped as it arrives, and the lines after it scored.
        half = len(long) // 2
        chunks = [records[0] + b"\n" + long[:half], long[half:-5], long[-5:] + b"\n" + records[1]]
        out = _stream_chunks(client, chunks, limit)
        assert [o["line"] for o in out] == [0, 1, 2]
        assert out[1] == {"line": 1, "error": f"line longer than {limit} bytes"}
        assert "anomaly_score" in out[0] and "anomaly_score" in out[2]


def _stream_chunks(client: TestClient, chunks: list[bytes], limit: int) -> list[dict]:
    """The stream endpoint's answer to a body that arrives in ``chunks`` (TestClient sends a
    body whole), run on the app's own event loop."""
    from starlette.requests import Request

    from anomaly.service.routes import _stream_parts

    messages = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
    messages.append({"type": "http.request", "body": b"", "more_body": False})

    async def receive():
        return messages.pop(0)

    async def answer():
        request = Request({"type": "http", "app": client.app, "headers": []}, receive)
        return b"".join([part async for part in _stream_parts(request, 512, limit)])

    return [json.loads(line) for line in client.portal.call(answer).splitlines()]


def _stream_body(client: TestClient, body: bytes) -> list[dict]:
    return [json.loads(x) for x in client.post("/v1/score/stream", content=body).text.splitlines()]


def _stream(client: TestClient, records: list[dict]) -> list[dict]:
    body = "".join(json.dumps(r) + "\n" for r in records).encode()
    answer = client.post("/v1/score/stream", content=body)
    return [json.loads(line) for line in answer.text.splitlines()]


def test_stream_reads_json_as_the_json_endpoint_does(client, rows):
    records = records_of(rows.head(3))
    records[0]["cpu"] = float("nan")  # a missing value
    records[1]["memory"] = float("inf")
    records[2]["region"] = "\ud800"  # json reads it, pandas cannot convert it
    out = _stream(client, records)  # Python writes NaN, Infinity and the lone surrogate
    scored = client.post("/v1/score", content=json.dumps({"records": records[:1]}),
                         headers={"Content-Type": "application/json"})  # fmt: skip
    assert out[0]["anomaly_score"] == scored.json()["results"][0]["anomaly_score"]
    assert out[1]["error"].startswith("column 'memory', line 1: infinite values are not allowed")
    assert out[2]["error"] == "line 2 is not valid JSON: an unpaired surrogate"
    surrogate = client.post("/v1/score", content=json.dumps({"records": records[2:]}),
                            headers={"Content-Type": "application/json"})  # fmt: skip
    assert surrogate.status_code == 422 and "unpaired surrogate" in surrogate.text


def test_stream_finds_every_bad_line_in_linear_work(client, rows, fitted_vae, monkeypatch):
    """Each bad line gets the error it would get alone, and finding them coerces each value a
    bounded number of times: re-checking the batch after each bad line was quadratic."""
    coerced = []
    coerce_records = TabularSchema.coerce_records

    def counting(self, records, **kw):
        coerced.append(len(records) * len(self.columns))
        return coerce_records(self, records, **kw)

    monkeypatch.setattr(TabularSchema, "coerce_records", counting)
    n = 200
    edits = [{}, {"cpu": "fast"}, {"cached": "maybe", "memory": "lots"}, {"cpux": 1}]
    records = [{**r, **edits[i % 4]} for i, r in enumerate(records_of(rows.head(n)))]
    out = _stream(client, records)
    assert [o["line"] for o in out] == list(range(n))
    errors = ["column 'cpu', line {}: 'fast' is not a number",
              "column 'memory', line {}: 'lots' is not a number",  # the schema's first
              "line {}: unknown field 'cpux' (the model reads 8 fields)"]  # fmt: skip
    for i, o in enumerate(out):
        assert o.get("error") == (errors[i % 4 - 1].format(i) if i % 4 else None), o
    expected = fitted_vae.score(rows.head(n).iloc[::4])["anomaly_score"].to_numpy()
    assert np.array_equal(np.float32([o["anomaly_score"] for o in out[::4]]), expected)
    assert sum(coerced) <= 4 * n * len(fitted_vae.schema_.names)


def test_stream_errors_say_line_only_in_their_own_words(client, rows):
    good = records_of(rows.head(4))
    lines = [*good[:3], {**good[3], "cpu": "row 3"}, {**good[0], "record 4": 1}]
    out = _stream(client, lines)
    assert out[3]["error"] == "column 'cpu', line 3: 'row 3' is not a number"
    assert out[4]["error"] == "line 4: unknown field 'record 4' (the model reads 8 fields)"


@pytest.mark.parametrize(
    ("edit", "status", "loc", "message"),
    [
        (lambda r: r[1].pop("cpu"), 422, ["body", "records", 1, "cpu"], "missing field 'cpu'"),
        (lambda r: r[2].update(cpux=3), 422, ["body", "records", 2, "cpux"], "unknown field"),
        (lambda r: r[0].update(cpu="fast"), 422, ["body", "records", 0, "cpu"], "not a number"),
        (lambda r: r[0].update(cpu=[1, 2]), 422, ["body", "records", 0, "cpu"], "not a number"),
        (lambda r: r[1].update(cached="maybe"), 422, ["body", "records", 1, "cached"],
         "not true or false"),
    ],
)  # fmt: skip
def test_bad_records_name_the_field_and_record(client, rows, edit, status, loc, message):
    records = records_of(rows.head(3))
    edit(records)
    answer = client.post("/v1/score", json={"records": records})
    assert answer.status_code == status
    (error,) = answer.json()["detail"]
    assert error["loc"] == loc and message in error["msg"]


def test_malformed_bodies_and_non_finite_values(client, rows):
    assert client.post("/v1/score", content=b"{oops").status_code == 422
    assert client.post("/v1/score", json={"records": []}).status_code == 422
    assert client.post("/v1/score", json={"rows": []}).status_code == 422
    record = records_of(rows.head(1))[0]
    answer = client.post("/v1/score", json={"records": [record, 7]})
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["body", "records", 1]
    text = json.dumps({"records": [{**record, "cpu": float("inf")}]})  # Python writes Infinity
    answer = client.post("/v1/score", content=text, headers={"Content-Type": "application/json"})
    assert answer.status_code == 422
    answer = client.post("/invocations", json={"dataframe_records": [{**record, "cpu": "x"}]})
    assert answer.status_code == 400
    assert answer.json()["message"] == "column 'cpu', row 0: 'x' is not a number"
    answer = client.post("/invocations", json={"inputs": 3})
    assert answer.status_code == 400
    answer = client.post("/invocations", content=b"a,b", headers={"Content-Type": "text/plain"})
    assert answer.status_code == 400
    deep = b'{"records": [' + b"[" * 5000 + b"]" * 5000 + b"]}"  # json's recursion, not orjson's
    answer = client.post("/v1/score", content=deep, headers={"Content-Type": "application/json"})
    assert answer.status_code == 422 and "nested too deeply" in answer.text
    nested = b'{"records": [{"region": ' + b"[" * 990 + b"]" * 990 + b"}]}"  # orjson reads it
    answer = client.post("/v1/score", content=nested, headers={"Content-Type": "application/json"})
    assert answer.status_code == 422
    long = b'{"records": [{"cpu": NaN, "memory": ' + b"1" * 5000 + b"}]}"  # json's int limit
    answer = client.post("/v1/score", content=long, headers={"Content-Type": "application/json"})
    assert answer.status_code == 422 and "a number too long" in answer.text
    # A field more than the header names: pandas would shift every value one column left.
    csv_text = rows.head(2).to_csv(index=False).replace("\n", ",1\n").replace(",1\n", "\n", 1)
    answer = client.post("/invocations", content=csv_text, headers={"Content-Type": "text/csv"})
    assert answer.status_code == 400 and "row 0 has 11 fields, the header 10 names" in answer.text
    # Read as `anomaly score` reads it: "+1" is a number, not a spelling of true.
    plus_one = rows.head(2).astype({"cached": object})
    plus_one.loc[plus_one.index[1], "cached"] = "+1"
    answer = client.post("/invocations", content=plus_one.to_csv(index=False),
                         headers={"Content-Type": "text/csv"})  # fmt: skip
    assert answer.status_code == 400
    assert answer.json()["message"].startswith("the CSV body: column 'cached', row 1: '+1'")
    # An int past 64 bits in a column passed through comes back as sent.
    huge = {**record, "host_id": 10**400}
    answer = client.post("/invocations", content=json.dumps({"dataframe_records": [huge]}),
                         headers={"Content-Type": "application/json"})  # fmt: skip
    assert answer.status_code == 200 and answer.json()["predictions"][0]["host_id"] == 10**400
    # One past 64 bits, within a float's range (orjson would read it as one), and beside it a
    # NaN deep in another column: the answer is the id as sent, and strict JSON.
    long_id = {**record, "host_id": 12345678901234567890123456789, "tags": [float("nan")]}
    answer = client.post("/invocations", content=json.dumps({"dataframe_records": [long_id]}),
                         headers={"Content-Type": "application/json"})  # fmt: skip
    assert answer.status_code == 200
    strict = json.loads(answer.text, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert strict["predictions"][0]["host_id"] == 12345678901234567890123456789
    assert strict["predictions"][0]["tags"] == [None]
    # (only integers that long leave orjson for json: a float's many decimals do not)
    from anomaly.service.inputs import _LONG_INTEGER

    assert not _LONG_INTEGER.search(b'{"cpu": 0.00014168904951117334, "memory": 1.5e-7}')
    # A column named twice would come back once, its first values lost.
    twice = {"columns": ["host_id", *record], "data": [[1, *record.values()]]}
    answer = client.post("/invocations", json={"dataframe_split": twice})
    assert answer.status_code == 400
    assert answer.json()["message"] == "dataframe_split: column 'host_id' appears twice"
    # A row with fields left off is refused, as `anomaly score` refuses it.
    short = rows.head(3).to_csv(index=False).splitlines()
    short[2] = short[2].rsplit(",", 2)[0]
    answer = client.post("/invocations", content="\n".join(short) + "\n",
                         headers={"Content-Type": "text/csv"})  # fmt: skip
    assert answer.status_code == 400
    assert answer.json()["message"].startswith("the CSV body: row 1 has 8 fields, the header 10")
    # An id next to a null stays an int (pandas alone would make the column float).
    ids = [{**record, "host_id": 2**53 + 1}, {**record, "host_id": None}]
    split = {"columns": list(ids[0]), "data": [list(r.values()) for r in ids]}
    for body in ({"dataframe_records": ids}, {"dataframe_split": split}):
        answer = client.post("/invocations", json=body)
        assert [p["host_id"] for p in answer.json()["predictions"]] == [2**53 + 1, None], body


def test_limits_answer_413(model_dir, rows):
    records = records_of(rows.head(20))
    settings = Settings(model_uri=str(model_dir), max_records=10, max_body_bytes=4000)
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/score", json={"records": records[:5]}).status_code == 200
        answer = client.post("/v1/score", json={"records": records[:10] * 2})
        assert answer.status_code == 413  # over the byte limit, told by Content-Length
        assert answer.json()["detail"] == "request body over 4000 bytes"
        small = [{k: v for k, v in r.items() if k not in ("host_id", "timestamp")} for r in records]
        answer = client.post("/v1/score", json={"records": small[:2] * 6})
        assert answer.status_code == 413 and "limit is 10" in answer.json()["detail"]
        chunked = (b" " * 1000 for _ in range(5))  # no Content-Length: counted as it arrives
        assert client.post("/v1/score", content=chunked).status_code == 413


def _requests_counted(endpoint: str, status: int) -> float:
    labels = {"endpoint": endpoint, "status": str(status)}
    return REGISTRY.get_sample_value("anomaly_requests_total", labels) or 0.0


def test_metrics_name_the_route_of_a_413_and_count_a_client_gone_as_499(model_dir):
    app = create_app(Settings(model_uri=str(model_dir), max_body_bytes=100))
    counts = {(e, s): _requests_counted(e, s) for e in ("/v1/score", "unmatched")
              for s in (413, 499, 500)}  # fmt: skip
    client = TestClient(app)  # no lifespan: these answers come before any model is needed
    assert client.post("/v1/score", content=b" " * 200).status_code == 413
    assert client.post("/v1/nowhere", content=b" " * 200).status_code == 413
    messages = [{"type": "http.request", "body": b'{"records": [', "more_body": True},
                {"type": "http.disconnect"}]  # fmt: skip
    sent = []

    async def receive() -> dict:
        return messages.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/score", "raw_path": b"/v1/score", "root_path": "",
             "query_string": b"", "headers": [], "client": ("client", 1),
             "server": ("service", 80)}  # fmt: skip
    asyncio.run(app(scope, receive, send))  # the disconnect does not escape as an error
    assert sent == []  # nobody left to answer
    grown = {key: _requests_counted(*key) - before for key, before in counts.items()}
    assert {key: n for key, n in grown.items() if n} == {
        ("/v1/score", 413): 1,
        ("unmatched", 413): 1,  # unknown paths share one label
        ("/v1/score", 499): 1,
    }


def test_token_guards_scoring_not_health_or_metrics(model_dir, rows):
    settings = Settings(model_uri=str(model_dir), api_token="s3cret")
    body = {"records": records_of(rows.head(2))}
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/score", json=body).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert client.post("/v1/score", json=body, headers=wrong).status_code == 401
        right = {"Authorization": "Bearer s3cret"}
        assert client.post("/v1/score", json=body, headers=right).status_code == 200
        assert client.post("/v1/score/stream", content=b"{}\n").status_code == 401
        # Before the body is read: a malformed one gets 401 too, not 422.
        assert client.post("/v1/score", content=b"{oops").status_code == 401
        assert client.get("/v1/model").status_code == 401  # the schema and levels are guarded
        assert client.get("/v1/model", headers=right).status_code == 200
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/healthz/"):
            assert client.get(path).status_code == 200
        assert 'endpoint="/v1/score",status="401"' in client.get("/metrics").text  # counted
    with pytest.raises(ValueError, match=r"(?s)api_token.*is empty"):  # "Bearer " would pass
        Settings(model_uri=str(model_dir), api_token=" ")
    # A token from a file often ends in a line break: it is the token without it.
    settings = Settings(model_uri=str(model_dir), api_token="s3cret\n")
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/score", json=body, headers=right).status_code == 200


def test_health_model_info_and_metrics(client, rows, fitted_vae):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    info = client.get("/v1/model").json()
    assert info["threshold"] == pytest.approx(float(fitted_vae.threshold_))
    assert info["model"] == "vae" and info["score"] == "elbo"
    assert [c["name"] for c in info["schema"]["columns"]] == fitted_vae.schema_.names
    client.post("/v1/score", json={"records": records_of(rows.head(7))})
    text = client.get("/metrics").text
    for name in ("anomaly_requests_total", "anomaly_request_duration_seconds_bucket",
                 "anomaly_records_scored_total", "anomaly_records_flagged_total",
                 "anomaly_score_bucket", "anomaly_threshold", "anomaly_model_info",
                 "anomaly_model_reloads"):  # fmt: skip
        assert name in text, name
    assert 'anomaly_requests_total{endpoint="/v1/score",status="200"}' in text
    assert f"anomaly_threshold {float(fitted_vae.threshold_)}"[:24] in text
    assert client.get("/openapi.json").status_code == 200 and client.get("/docs").status_code == 200
    assert client.head("/healthz").status_code == client.head("/readyz").status_code == 200
    # the API's description is counted as itself, not as a path no route matches
    assert _requests_counted("/docs", 200) >= 1 and _requests_counted("/openapi.json", 200) >= 1


def test_the_openapi_description_says_what_is_answered(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    invocations = paths["/invocations"]["post"]["responses"]
    assert "400" in invocations and "422" not in invocations  # MLflow's status and shape
    assert "MlflowError" in json.dumps(invocations["400"])
    assert "error_code" in spec["components"]["schemas"]["MlflowError"]["properties"]
    stream = paths["/v1/score/stream"]["post"]["responses"]["200"]["content"]
    assert list(stream) == ["application/x-ndjson"]
    points = paths["/v1/streams/{stream_id}/points"]["post"]["requestBody"]["content"]
    assert "points" in json.dumps(points["application/json"]["schema"])


def test_a_compressed_body_is_refused_by_name(client, rows):
    body = json.dumps({"records": records_of(rows.head(2))}).encode()
    for path in ("/v1/score", "/v1/score/stream", "/invocations"):
        answer = client.post(path, content=gzip.compress(body),
                             headers={"Content-Encoding": "gzip"})  # fmt: skip
        assert answer.status_code == 415, path
        assert "compressed bodies (gzip) are not read" in answer.json()["detail"]
    for plain in ({"Content-Encoding": "identity"}, {"Content-Encoding": ""}):
        assert client.post("/v1/score", content=body, headers=plain).is_success


def test_concurrent_requests_share_forward_passes(fitted_vae, model_dir, rows):
    holder = ModelHolder(str(model_dir))
    served = holder.load()
    columns = fitted_vae.schema_.coerce(rows)

    async def burst() -> tuple[list[dict], int]:
        batcher = Batcher(max_wait_s=0.005, max_records=4096)
        batcher.start()
        jobs = [
            batcher.score(served, {k: v[i : i + 1] for k, v in columns.items()}, 1)
            for i in range(100)
        ]
        results = await asyncio.gather(*jobs)
        await batcher.stop()
        return results, batcher.batches

    results, batches = asyncio.run(burst())
    assert batches < 10  # 100 requests, a handful of forward passes
    expected = fitted_vae.score(rows.head(100))
    scores = np.concatenate([r["anomaly_score"] for r in results])
    assert np.array_equal(scores, expected["anomaly_score"])  # batch company changes nothing


def test_hot_reload_follows_the_alias_without_failed_requests(fitted_ae, fitted_vae, rows):
    name = "hot-reload"
    registry.log_detector(fitted_vae, register=name)
    second = registry.log_detector(fitted_ae, register=name)
    settings = Settings(model_uri=f"models:/{name}@champion", reload_interval=0.2)
    body = {"records": records_of(rows.head(5))}
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/model").json()["version"] == "1"
        registry.promote(name, second.version)
        statuses, versions, deadline = [], set(), time.monotonic() + 30
        while time.monotonic() < deadline:
            answer = client.post("/v1/score", json=body)
            statuses.append(answer.status_code)
            versions.add(answer.json()["model"]["version"])
            if versions == {"1", "2"}:
                break
        assert set(statuses) == {200} and versions == {"1", "2"}
        expected = fitted_ae.score(rows.head(5))["anomaly_score"].to_numpy()
        scores = [r["anomaly_score"] for r in client.post("/v1/score", json=body).json()["results"]]
        assert np.array_equal(np.float32(scores), expected)

        # A version whose files are gone: the reload fails, is counted, and v2 stays.
        broken = registry.log_detector(fitted_vae, register=name)
        location = MlflowClient().get_logged_model(broken.model_id).artifact_location
        shutil.rmtree(urlparse(location).path)
        # Moved by another tool: registry.promote would refuse a version it cannot load.
        MlflowClient().set_registered_model_alias(name, "champion", broken.version)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if 'anomaly_model_reloads_total{result="error"}' in client.get("/metrics").text:
                break
            time.sleep(0.2)
        assert 'anomaly_model_reloads_total{result="error"}' in client.get("/metrics").text
        assert client.get("/v1/model").json()["version"] == "2"
        assert client.post("/v1/score", json=body).status_code == 200


def test_drift_is_measured_and_suggests_retraining(model_dir, fitted_vae):
    from anomaly.datasets import make_service_metrics

    settings = Settings(model_uri=str(model_dir), drift_window=600, drift_level=0.2)
    normal = make_service_metrics(600, seed=31).drop(columns=["label"])
    moved = normal.assign(requests=normal["requests"] * 2.0, cpu=normal["cpu"] * 2.0)
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/model").json()["drift"]["psi"] is None  # nothing scored yet
        client.post("/v1/score", content=json.dumps({"records": records_of(normal)}),
                    headers={"Content-Type": "application/json"})  # fmt: skip
        drift = client.get("/v1/model").json()["drift"]
        assert drift["window"] == 600 and drift["psi"] < 0.2
        assert drift["retrain_suggested"] is False
        assert drift["flag_rate"] < 0.05
        client.post("/v1/score", content=json.dumps({"records": records_of(moved)}),
                    headers={"Content-Type": "application/json"})  # fmt: skip
        drift = client.get("/v1/model").json()["drift"]
        assert drift["psi"] > 0.2 and drift["ks"] > 0.2 and drift["retrain_suggested"] is True
        assert drift["flag_rate"] > 0.2
        time.sleep(1.1)  # the gauges refresh at most once a second
        client.post("/v1/score", content=json.dumps({"records": records_of(moved.head(5))}),
                    headers={"Content-Type": "application/json"})  # fmt: skip
        text = client.get("/metrics").text
        line = next(x for x in text.splitlines() if x.startswith("anomaly_score_drift "))
        assert float(line.split()[-1]) > 0.2
        holder = client.app.state.holder  # a reload: the new version has no drift figure yet
        holder.load()
        text = client.get("/metrics").text
        line = next(x for x in text.splitlines() if x.startswith("anomaly_score_drift "))
        assert math.isnan(float(line.split()[-1]))
        assert "anomaly_recent_flag_rate " in text
