"""The no-Docker stack as a user runs it: `deploy/local.sh up --demo` starts an MLflow server,
registers a demo model, serves its champion (through the image's entrypoint) and starts a
Prometheus with the deploy rules; then traffic, a promotion the service follows, and
Prometheus's view of it all; `down` leaves nothing running."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import free_port, start, stop
from deploy_files import (
    DEPLOY,
    alert_rules,
    all_queries,
    dashboard_queries,
    healthcheck_command,
    metric_names,
)

from anomaly.datasets import make_service_metrics

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="run tests/system-deps.sh"
)
NAME = "service-metrics"
TOKEN = "local-stack-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Stack:
    def __init__(self, root: Path):
        ports = set()
        while len(ports) < 3:
            ports.add(free_port())
        mlflow, service, prometheus = sorted(ports)
        self.root = root
        self.mlflow = f"http://127.0.0.1:{mlflow}"
        self.service = f"http://127.0.0.1:{service}"
        self.prometheus = f"http://127.0.0.1:{prometheus}"
        self.env = {
            k: v for k, v in os.environ.items()
            if not k.startswith(("MLFLOW_", "ANOMALY_", "PROMETHEUS_MULTIPROC_DIR"))
        }  # fmt: skip
        self.env.update(
            STACK_DIR=str(root), STACK_PYTHON=sys.executable, STACK_MODEL_NAME=NAME,
            STACK_MLFLOW_PORT=str(mlflow), STACK_SERVICE_PORT=str(service),
            STACK_PROMETHEUS_PORT=str(prometheus), STACK_SCRAPE_INTERVAL="1s",
            STACK_RELOAD_INTERVAL="1", STACK_WORKERS="1", ANOMALY_API_TOKEN=TOKEN,
        )  # fmt: skip
        # One worker (test_service_integration.py tests two): it halves the start-up, the slowest
        # part here, and on a loaded machine uvicorn's supervisor kills and restarts workers
        # that answer its 5 s health check late while they import torch.

    def script(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(DEPLOY / "local.sh"), *args], env=self.env,
                              capture_output=True, text=True, timeout=900)  # fmt: skip

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-2000:]}"
                         for log in sorted((self.root / "logs").glob("*.log")))  # fmt: skip

    def query(self, promql: str) -> list[dict]:
        answer = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": promql}).json()
        assert answer["status"] == "success", (promql, answer)
        return answer["data"]["result"]

    def wait_for(self, promql: str, seconds: float = 30) -> list[dict]:
        """The query's result once it is not empty."""
        deadline = time.monotonic() + seconds
        while not (result := self.query(promql)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert result, f"{promql}: nothing after {seconds} s"
        return result


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("stack"))
    try:
        up = stack.script("up", "--demo")
        assert up.returncode == 0, up.stdout + up.stderr + stack.logs()
        yield stack
    finally:
        down = stack.script("down")
        assert down.returncode == 0, down.stderr


def records(n: int, seed: int = 5) -> list[dict]:
    rows = make_service_metrics(n, seed=seed).drop(columns=["label"])
    return json.loads(rows.to_json(orient="records"))


def score(stack: Stack, n: int = 20) -> httpx.Response:
    return httpx.post(f"{stack.service}/v1/score", json={"records": records(n)},
                      headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)  # fmt: skip


def test_up_starts_everything_and_serves_the_champion(stack):
    status = stack.script("status")
    assert status.returncode == 0, status.stdout
    assert [line.split()[:2] for line in status.stdout.splitlines()] == [
        ["mlflow", "running"], ["service", "running"], ["prometheus", "running"]
    ]  # fmt: skip
    model = httpx.get(f"{stack.service}/v1/model", headers=AUTH).json()
    assert (model["name"], model["version"], model["alias"]) == (NAME, "1", "champion")
    assert httpx.get(f"{stack.mlflow}/health").status_code == 200


def test_the_token_reaches_the_service_and_metrics_stay_open(stack):
    assert httpx.post(f"{stack.service}/v1/score", json={"records": records(2)}).status_code == 401
    assert score(stack).status_code == 200
    assert httpx.get(f"{stack.service}/metrics").status_code == 200  # Prometheus has no token


def test_the_images_healthcheck_command_passes_against_the_service(stack):
    command = healthcheck_command("Dockerfile")
    assert command[0] == "python"
    command[0] = sys.executable  # the image's python, here

    def check(port: str) -> int:
        env = {**stack.env, "ANOMALY_PORT": port}
        return subprocess.run(command, env=env, capture_output=True, timeout=30).returncode

    assert check(stack.service.rsplit(":", 1)[1]) == 0
    assert check(str(free_port())) != 0  # nothing listens there


def test_prometheus_scrapes_the_traffic(stack):
    for _ in range(10):
        assert score(stack).status_code == 200
    (up,) = stack.wait_for('up{job="anomaly"} == 1')
    assert up["metric"]["instance"] == stack.service.removeprefix("http://")
    deadline, seen = time.monotonic() + 30, 0.0
    while seen < 10 and time.monotonic() < deadline:
        time.sleep(0.5)
        result = stack.query('sum(anomaly_requests_total{endpoint="/v1/score", status="200"})')
        seen = float(result[0]["value"][1]) if result else 0.0
    assert seen >= 10
    assert float(stack.wait_for("sum(anomaly_records_scored_total)")[0]["value"][1]) >= 200


def test_prometheus_loads_and_evaluates_the_rules(stack):
    wanted = {rule.get("alert") or rule["record"] for rule in alert_rules()}
    deadline = time.monotonic() + 30
    while True:
        groups = httpx.get(f"{stack.prometheus}/api/v1/rules").json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        healthy = all(rule["health"] == "ok" for rule in rules)
        if (healthy and rules) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert [group["name"] for group in groups] == ["anomaly-service"]
    assert {rule["name"] for rule in rules} == wanted
    assert healthy, [(r["name"], r["health"], r.get("lastError")) for r in rules]
    assert str(DEPLOY / "prometheus" / "alerts.yml") == groups[0]["file"]


def test_every_dashboard_query_runs(stack):
    score(stack)
    stack.wait_for("anomaly_model_info == 1")
    for queries in dashboard_queries().values():
        for promql in queries:
            stack.query(promql)  # status "success", or the assertion names the query
    (info,) = stack.query("max by (name, version) (anomaly_model_info) == 1")
    assert info["metric"] == {"name": NAME, "version": "1"}
    assert stack.wait_for(dashboard_queries()["Latency percentiles (p50, p95, p99)"][2])


def test_a_promotion_is_followed_and_every_metric_in_rules_and_dashboard_is_scraped(stack):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.mlflow, registry_uri=stack.mlflow)
    second = client.create_model_version(NAME, f"models:/{NAME}/1")  # v1's files as v2
    client.set_registered_model_alias(NAME, "champion", second.version)
    deadline, versions = time.monotonic() + 60, []
    while time.monotonic() < deadline:
        versions = [
            httpx.get(f"{stack.service}/v1/model", headers=AUTH).json()["version"] for _ in range(6)
        ]
        if set(versions) == {second.version}:
            break
        time.sleep(0.5)
    assert set(versions) == {second.version}
    # Drift needs 200 scores of the new version, and is published at most once a second.
    deadline = time.monotonic() + 60
    while not stack.query("anomaly_score_drift >= 0") and time.monotonic() < deadline:  # not NaN
        assert score(stack, 100).status_code == 200
        time.sleep(0.3)
    stack.wait_for(f'anomaly_model_info{{version="{second.version}"}} == 1')
    stack.wait_for('anomaly_model_reloads_total{result="success"} > 0')

    used = set().union(*map(metric_names, all_queries()))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        scraped = set(httpx.get(f"{stack.prometheus}/api/v1/label/__name__/values").json()["data"])
        if used <= scraped:
            break
        time.sleep(0.5)
    assert used <= scraped, used - scraped


# As Kubernetes runs the image: the root read-only, /tmp and /var/cache writable (emptyDirs).
# The writable places are /var/tmp and /var/cache, not /tmp: a clone (and its .venv) may
# itself live under /tmp, and a tmpfs there would hide it.
READ_ONLY_ROOT = """
mount --make-rprivate /
mount -o remount,bind,ro /
mount -t tmpfs -o mode=1777 tmpfs /var/tmp
mount -t tmpfs tmpfs /var/cache
mkdir /var/tmp/metrics
exec "$@"
"""


def test_the_service_runs_on_a_read_only_root_filesystem(stack, tmp_path):
    if subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare --mount is not permitted here (it needs root)")
    port = free_port()
    # One worker, as above; its metrics files go under the writable temporary directory, where
    # `anomaly serve --workers N` puts them (PROMETHEUS_MULTIPROC_DIR).
    env = {**stack.env, "MLFLOW_TRACKING_URI": stack.mlflow, "ANOMALY_PORT": str(port),
           "ANOMALY_HOST": "127.0.0.1", "ANOMALY_MODEL_URI": f"models:/{NAME}@champion",
           "ANOMALY_CACHE_DIR": "/var/cache/anomaly", "MPLCONFIGDIR": "/var/tmp/matplotlib",
           "PYTHONDONTWRITEBYTECODE": "1", "ANOMALY_LOG_LEVEL": "info", "TMPDIR": "/var/tmp",
           "ANOMALY_WORKERS": "1", "PROMETHEUS_MULTIPROC_DIR": "/var/tmp/metrics",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    entrypoint = str(DEPLOY / "docker-entrypoint.sh")
    command = ["unshare", "--mount", "sh", "-c", READ_ONLY_ROOT, "sh", entrypoint]
    proc = start(command, tmp_path / "service.log", env, f"http://127.0.0.1:{port}/readyz")
    try:
        mounts = {line.split()[4]: line.split()[5] for line in
                  Path(f"/proc/{proc.pid}/mountinfo").read_text().splitlines()}  # fmt: skip
        assert mounts["/"].startswith("ro,") and mounts["/var/tmp"].startswith("rw,")
        url = f"http://127.0.0.1:{port}"
        answer = httpx.post(f"{url}/v1/score", json={"records": records(50)},
                            headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)  # fmt: skip
        assert answer.status_code == 200, answer.text
        assert "anomaly_records_scored_total 50.0" in httpx.get(f"{url}/metrics").text
    finally:
        stop(proc)


def test_down_stops_everything(stack):
    pids = [int((stack.root / "run" / f"{name}.pid").read_text())
            for name in ("mlflow", "service", "prometheus")]  # fmt: skip
    down = stack.script("down")
    assert down.returncode == 0, down.stderr
    status = stack.script("status")
    assert status.returncode == 3
    assert all(line.split()[1] == "stopped" for line in status.stdout.splitlines())
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{stack.service}/healthz")
