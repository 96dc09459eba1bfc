"""The service as deployed: `anomaly serve` with two uvicorn workers in its own process, fuzzed
by schemathesis from its OpenAPI spec, and scraped by a real Prometheus server."""

import json
import os
import shutil
import sys
import time
from pathlib import Path

import httpx
import pytest
import schemathesis
from conftest import free_port, start, stop
from hypothesis import HealthCheck, given, settings

from anomaly.datasets import make_service_metrics

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def service(fitted_ae, tmp_path_factory):
    root = tmp_path_factory.mktemp("service")
    fitted_ae.save(root / "model")
    port = free_port()
    tmp = root / "tmp"
    tmp.mkdir()
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "TMPDIR": str(tmp)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = start(
        [sys.executable, "-m", "anomaly.cli", "serve", "--model", str(root / "model"),
         "--port", str(port), "--workers", "2", "--log-level", "warning"],
        root / "service.log", env, f"http://127.0.0.1:{port}/readyz",
    )  # fmt: skip
    assert [p.name for p in tmp.glob("anomaly-metrics-*/*.db")], "workers write no metric files"
    yield f"http://127.0.0.1:{port}", root
    stop(proc)
    # The workers' metric files go with the server.
    assert not list(tmp.glob("anomaly-metrics-*")), sorted(tmp.iterdir())


def records(n: int) -> list[dict]:
    rows = make_service_metrics(n, seed=5).drop(columns=["label"])
    return json.loads(rows.to_json(orient="records"))


def test_two_workers_answer_and_metrics_add_up(service):
    url, _ = service
    body = {"records": records(5)}
    for _ in range(20):
        assert httpx.post(f"{url}/v1/score", json=body).status_code == 200
    wanted = 'anomaly_requests_total{endpoint="/v1/score",status="200"}'
    for _ in range(6):  # whichever worker answers the scrape reports the sum over both
        text = httpx.get(f"{url}/metrics").text
        line = next(x for x in text.splitlines() if x.startswith(wanted))
        assert float(line.split()[-1]) == 20
    assert "anomaly_records_scored_total 100.0" in text


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx, value) -> dict:
    """The stream endpoint's body is text: generated strings go out as they are."""
    text = value if isinstance(value, str | bytes) else json.dumps(value)
    return {"data": text.encode() if isinstance(text, str) else text}


def test_no_client_input_gets_a_server_error(service):
    url, _ = service
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")

    failures, calls = [], []
    for path, method in [("/v1/score", "POST"), ("/invocations", "POST"),
                         ("/v1/score/stream", "POST"), ("/v1/model", "GET"),
                         ("/readyz", "GET"), ("/healthz", "GET")]:  # fmt: skip
        operation = schema[path][method]

        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def fuzz(case):
            response = case.call(base_url=url, timeout=30)
            calls.append(response.status_code)
            if response.status_code >= 500:
                failures.append((case.path, response.status_code, response.text[:300]))

        fuzz()
    assert not failures, failures
    assert len(calls) >= 100 and any(400 <= status < 500 for status in calls)


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="run tests/system-deps.sh")
def test_prometheus_scrapes_the_service(service, tmp_path):
    url, _ = service
    for _ in range(5):
        httpx.post(f"{url}/v1/score", json={"records": records(3)})
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: anomaly\n    static_configs:\n"
        f"      - targets: ['{url.removeprefix('http://')}']\n"
    )
    proc = start(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        tmp_path / "prometheus.log", dict(os.environ), f"http://127.0.0.1:{port}/-/ready",
    )  # fmt: skip
    try:
        deadline, value = time.monotonic() + 60, 0.0
        while time.monotonic() < deadline and value <= 0:
            time.sleep(1)
            answer = httpx.get(f"http://127.0.0.1:{port}/api/v1/query",
                               params={"query": "sum(anomaly_requests_total)"}).json()  # fmt: skip
            result = answer["data"]["result"]
            value = float(result[0]["value"][1]) if result else 0.0
        assert value > 0
        up = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": "up"}).json()
        assert up["data"]["result"][0]["value"][1] == "1"
    finally:
        stop(proc)


def test_a_client_that_reads_only_once_its_upload_is_done_gets_every_answer(service):
    """Python's requests and httpx's post send the whole body before reading a byte: the
    answers, more than the sockets' buffers hold, wait in the service for them."""
    url, _ = service
    line = json.dumps(records(1)[0]).encode() + b"\n"
    n = 100_000  # 12 MiB in, 9 MiB of answers out
    answer = httpx.post(f"{url}/v1/score/stream", content=line * n, timeout=60,
                        headers={"Content-Type": "application/x-ndjson"})  # fmt: skip
    assert answer.status_code == 200
    lines = answer.text.splitlines()
    assert len(lines) == n and json.loads(lines[-1])["line"] == n - 1
    assert all('"error"' not in x for x in lines[:: n // 100])
