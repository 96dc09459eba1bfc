"""deploy/ checked without Docker or a cluster: the Dockerfiles (parsed, and linted by hadolint),
the entrypoint (run), the compose file (against the compose-spec schema, then its wiring), the
Kubernetes manifests (against Kubernetes' schemas), the Prometheus configuration and alert rules
(promtool check and promtool's unit tests), and the Grafana dashboard; the metric names that rules
and dashboard use are the ones the service exports."""

import fnmatch
import importlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from deploy_files import (
    DASHBOARD,
    DEPLOY,
    PROMETHEUS,
    REPO,
    alert_rules,
    all_queries,
    build_args,
    dashboard_queries,
    dockerfile,
    final_stage,
    metric_names,
)
from prometheus_client.metrics import MetricWrapperBase

from anomaly.service import metrics
from anomaly.service.settings import Settings

BIN = Path(sys.executable).parent
K8S = DEPLOY / "k8s"
# Prometheus Operator kinds: not in Kubernetes' schemas, and applied on their own.
OPERATOR_MANIFESTS = {"podmonitor.yaml"}
ENTRYPOINT = DEPLOY / "docker-entrypoint.sh"
# Variables the entrypoint reads (the service's own are Settings fields).
ENTRYPOINT_VARIABLES = {"ANOMALY_HOST", "ANOMALY_PORT", "ANOMALY_WORKERS", "ANOMALY_LOG_LEVEL"}
SETTINGS_VARIABLES = {f"ANOMALY_{name.upper()}" for name in Settings.model_fields}
ANOMALY_VARIABLES = SETTINGS_VARIABLES | ENTRYPOINT_VARIABLES | {"ANOMALY_CACHE_DIR"}


def tool(name: str) -> str:
    """A linter installed with the dev extra (the venv's), or one on PATH."""
    found = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]'; promtool: system-deps.sh)")
    return found


def run(*command: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, **kwargs)


def env_of(instructions) -> dict[str, str]:
    pairs = (item.split("=", 1) for k, args in instructions if k == "ENV" for item in args.split())
    return dict(pairs)


# ---------------------------------------------------------------------------- images
def test_cpu_image_is_slim_non_root_and_checks_healthz():
    instructions = dockerfile("Dockerfile")
    final, args = final_stage(instructions), build_args(instructions)
    base = final[0][1].replace("${PYTHON_IMAGE}", args["PYTHON_IMAGE"])
    assert base.startswith("python:3.11") and "slim" in base
    (user,) = [a for k, a in final if k == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    (healthcheck,) = [a for k, a in final if k == "HEALTHCHECK"]
    assert "/healthz" in healthcheck and "--start-period" in healthcheck
    assert [a for k, a in final if k == "ENTRYPOINT"] == ['["/app/deploy/docker-entrypoint.sh"]']


def test_cpu_image_installs_torch_from_the_cpu_index():
    instructions = dockerfile("Dockerfile")
    args = build_args(instructions)
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    (torch_install,) = [a for k, a in instructions if k == "RUN" and "TORCH_SPEC" in a]
    assert '--index-url "${TORCH_INDEX_URL}"' in torch_install
    # torch comes before the package, so that `pip install .` finds it already satisfied.
    runs = [a for k, a in instructions if k == "RUN"]
    assert runs.index(torch_install) < runs.index('pip install ".[streams]"')
    assert not re.search(r"cu\d{3}|nvidia", json.dumps(instructions))


def test_cuda_image_uses_cuda_torch_and_the_same_entrypoint():
    instructions = dockerfile("Dockerfile.cuda")
    final, args = final_stage(instructions), build_args(instructions)
    assert args["CUDA_IMAGE"].startswith("nvidia/cuda:")
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d{3}", args["TORCH_INDEX_URL"])
    assert env_of(final)["ANOMALY_DEVICE"] == "cuda"
    (user,) = [a for k, a in final if k == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    assert any(k == "HEALTHCHECK" and "/healthz" in a for k, a in final)
    assert [a for k, a in final if k == "ENTRYPOINT"] == ['["/app/deploy/docker-entrypoint.sh"]']


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_model_registry_and_token_come_from_the_environment(name):
    baked = env_of(dockerfile(name))
    for variable in ("ANOMALY_MODEL_URI", "MLFLOW_TRACKING_URI", "ANOMALY_API_TOKEN"):
        assert variable not in baked
    assert {v for v in baked if v.startswith("ANOMALY_")} <= ANOMALY_VARIABLES
    assert baked["ANOMALY_CACHE_DIR"] == "/var/cache/anomaly"


def test_mlflow_image_is_non_root_with_postgres_driver():
    final = final_stage(dockerfile("Dockerfile.mlflow"))
    assert any(k == "RUN" and "psycopg2-binary==" in a and "mlflow==" in a for k, a in final)
    assert any(k == "USER" and not a.startswith(("root", "0")) for k, a in final)
    assert any(k == "HEALTHCHECK" and "/health" in a for k, a in final)


def dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch.fnmatch(prefix, pattern) or fnmatch.fnmatch(prefix, pattern.removeprefix("**/"))
        for prefix in prefixes
        for pattern in patterns
    )


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda", "Dockerfile.mlflow"])
def test_copied_files_exist_and_are_not_dockerignored(name):
    patterns = dockerignore()
    for keyword, args in dockerfile(name):
        if keyword != "COPY" or "--from=" in args:
            continue
        sources = [word for word in args.split() if not word.startswith("--")][:-1]
        for source in sources:
            assert (REPO / source).exists(), source
            assert not ignored(source, patterns), f"{source} is excluded by .dockerignore"


def test_dockerignore_keeps_environments_and_stores_out():
    patterns = dockerignore()
    for path in (".venv/bin/python", ".git/HEAD", "mlflow.db", "mlruns/0", ".local-stack/run",
                 "anomaly/__pycache__/x.pyc", "demo-output/normal.csv"):  # fmt: skip
        assert ignored(path, patterns), path


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda", "Dockerfile.mlflow"])
def test_hadolint_passes(name):
    done = run(tool("hadolint"), "--no-color", str(DEPLOY / name))
    assert done.returncode == 0, done.stdout + done.stderr


# ---------------------------------------------------------------------------- entrypoint
def entrypoint(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Run the entrypoint with a stand-in `anomaly` that prints the arguments it was given."""
    fake = tmp_path / "anomaly"
    fake.write_text('#!/bin/sh\necho "anomaly $*"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    path = f"{tmp_path}{os.pathsep}{os.environ['PATH']}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ANOMALY_")}
    return run(str(ENTRYPOINT), *args, env={**clean, "PATH": path, **env})


def test_entrypoint_serves_the_model_named_in_the_environment(tmp_path):
    done = entrypoint(tmp_path, "--timeout-keep-alive", "5", ANOMALY_MODEL_URI="models:/m@champion",
                      ANOMALY_PORT="9000", ANOMALY_WORKERS="3")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "anomaly", "serve", "--model", "models:/m@champion", "--host", "0.0.0.0",
        "--port", "9000", "--workers", "3", "--reload-interval", "30", "--log-level", "info",
        "--timeout-keep-alive", "5",
    ]  # fmt: skip


def test_entrypoint_without_a_model_says_so(tmp_path):
    done = entrypoint(tmp_path)
    assert done.returncode == 2
    assert "set ANOMALY_MODEL_URI" in done.stderr


def test_entrypoint_runs_other_commands_as_they_are(tmp_path):
    assert entrypoint(tmp_path, "sh", "-c", "echo as is").stdout == "as is\n"
    assert entrypoint(tmp_path, "anomaly", "train", "x.csv").stdout == "anomaly train x.csv\n"


def test_shell_scripts_pass_shellcheck():
    done = run(tool("shellcheck"), str(ENTRYPOINT), str(DEPLOY / "local.sh"))
    assert done.returncode == 0, done.stdout


# ---------------------------------------------------------------------------- compose
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_file_matches_the_compose_spec():
    done = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
               str(DEPLOY / "compose.yaml"))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_services_are_wired_together():
    spec = compose()
    services = spec["services"]
    assert {"postgres", "mlflow", "scoring", "prometheus", "grafana"} <= set(services)
    one_shot = {"seed", "pipelines"}
    for name, service in services.items():
        if name not in one_shot:
            assert service["healthcheck"]["test"], name
        for needed, condition in service.get("depends_on", {}).items():
            assert needed in services, (name, needed)
            assert condition["condition"] in ("service_started", "service_healthy",
                                              "service_completed_successfully")  # fmt: skip
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), (name, source)
            else:
                assert source in spec["volumes"], (name, source)
        if "build" in service:
            context = DEPLOY / service["build"]["context"]
            assert (context / service["build"]["dockerfile"]).is_file(), name
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    backend = services["mlflow"]["command"][
        services["mlflow"]["command"].index("--backend-store-uri") + 1
    ]
    assert backend.startswith("postgresql://") and "@postgres:5432/" in backend
    assert "/mlartifacts" in services["mlflow"]["command"]
    assert "mlartifacts:/mlartifacts" in services["mlflow"]["volumes"]


def test_compose_scoring_service_is_configured_like_the_image_expects():
    services = compose()["services"]
    scoring = services["scoring"]
    env = scoring["environment"]
    assert {k for k in env if k.startswith("ANOMALY_")} <= ANOMALY_VARIABLES
    assert re.fullmatch(
        r"models:/\$\{ANOMALY_MODEL_NAME:-[\w-]+\}@champion", env["ANOMALY_MODEL_URI"]
    )
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "5000" in services["mlflow"]["command"]
    assert env["ANOMALY_API_TOKEN"].startswith("${ANOMALY_API_TOKEN:?")  # no default token
    assert int(env["ANOMALY_WORKERS"]) >= 2
    # Stream buffers shared by the workers, in the compose stack's Redis.
    assert env["ANOMALY_STREAM_REDIS_URL"] == "redis://redis:6379/0"
    assert scoring["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "/healthz" in json.dumps(scoring["healthcheck"]["test"])
    assert scoring["read_only"] is True and "/tmp" in scoring["tmpfs"]
    assert "model-cache:/var/cache/anomaly" in scoring["volumes"]
    assert scoring["depends_on"]["seed"]["condition"] == "service_completed_successfully"
    assert services["seed"]["command"][:2] == ["python", "deploy/demo_model.py"]


def test_compose_prometheus_scrapes_scoring_and_grafana_is_provisioned():
    services = compose()["services"]
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "anomaly"]
    assert job["static_configs"][0]["targets"] == ["scoring:8000"]  # ANOMALY_PORT of the image
    assert "./prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]

    grafana = services["grafana"]["volumes"]
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/anomaly.yaml").read_text())
    assert f"./grafana/dashboards:{provider['providers'][0]['options']['path']}:ro" in grafana
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana
    source = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text()
    )
    (datasource,) = source["datasources"]
    assert datasource["url"] == "http://prometheus:9090" and datasource["type"] == "prometheus"
    assert json.loads(DASHBOARD.read_text())["panels"][0]["datasource"]["uid"] == datasource["uid"]


# ---------------------------------------------------------------------------- kubernetes
def manifests() -> dict[str, dict]:
    files = sorted(K8S.glob("*.yaml"))
    return {f.name: yaml.safe_load(f.read_text()) for f in files if f.name != "kustomization.yaml"}


@pytest.mark.parametrize("name", sorted(set(manifests()) - OPERATOR_MANIFESTS))
def test_manifest_matches_the_kubernetes_schema(name):
    kubernetes_validate.validate(
        manifests()[name], kubernetes_validate.latest_version(), strict=True
    )


def test_kustomization_lists_every_manifest_but_the_token_and_the_one_off_jobs():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    left_out = {"secret.yaml", "job-batch-score.yaml", "job-train-gpu.yaml"} | OPERATOR_MANIFESTS
    assert sorted(kustomization["resources"]) == sorted(set(manifests()) - left_out)


def by_kind() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in manifests().values()}


def pod_is_locked_down(pod: dict) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    # Under a read-only root: /tmp (the workers' metrics directory) and the model cache.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    assert "emptyDir" in mounts["/tmp"]
    assert "emptyDir" in mounts[env_of(dockerfile("Dockerfile"))["ANOMALY_CACHE_DIR"]]
    assert container["envFrom"] == [
        {"configMapRef": {"name": by_kind()["ConfigMap"]["metadata"]["name"]}}
    ]


def test_deployment_probes_resources_and_security():
    kinds = by_kind()
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    pod_is_locked_down(pod)
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["cpu"]
    (port,) = container["ports"]
    assert str(port["containerPort"]) == env_of(dockerfile("Dockerfile"))["ANOMALY_PORT"]
    (token,) = [e for e in container["env"] if e["name"] == "ANOMALY_API_TOKEN"]
    secret = kinds["Secret"]
    assert token["valueFrom"]["secretKeyRef"] == {
        "name": secret["metadata"]["name"], "key": next(iter(secret["stringData"]))
    }  # fmt: skip


def test_service_and_autoscaler_point_at_the_deployment():
    kinds = by_kind()
    deployment = kinds["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert kinds["Service"]["spec"]["selector"].items() <= labels.items()
    (port,) = kinds["Service"]["spec"]["ports"]
    assert (
        port["targetPort"]
        == deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["name"]
    )
    target = kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_configmap_names_only_real_settings():
    data = by_kind()["ConfigMap"]["data"]
    assert {k for k in data if k.startswith("ANOMALY_")} <= ANOMALY_VARIABLES
    assert data["ANOMALY_MODEL_URI"].startswith("models:/") and data["MLFLOW_TRACKING_URI"]
    Settings(**{k.removeprefix("ANOMALY_").lower(): v for k, v in data.items()
                if k in SETTINGS_VARIABLES})  # fmt: skip


def job_pod(name: str) -> tuple[dict, dict, dict]:
    """(job spec, pod spec, its one container) of the Job or CronJob in manifest ``name``."""
    spec = manifests()[name]["spec"]
    job = spec["jobTemplate"]["spec"] if "jobTemplate" in spec else spec
    pod = job["template"]["spec"]
    pod_is_locked_down(pod)
    assert pod["restartPolicy"] == "Never"
    (claim,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert (
        claim["persistentVolumeClaim"]["claimName"]
        == by_kind()["PersistentVolumeClaim"]["metadata"]["name"]
    )
    (container,) = pod["containers"]
    return job, pod, container


def accepts(module: str, args: list[str], capsys, monkeypatch) -> None:
    """Every option in ``args`` is one that the pipeline ``module`` takes."""
    monkeypatch.syspath_prepend(str(REPO))  # pipelines/ is not installed: it runs from /app
    with pytest.raises(SystemExit):
        importlib.import_module(module).main(["--help"])
    usage = capsys.readouterr().out
    for option in (a for a in args if a.startswith("--")):
        assert option in usage, f"{module} has no {option}"


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("cronjob-retrain.yaml", "pipelines.retrain"),
        ("job-batch-score.yaml", "pipelines.batch_score"),
    ],
)
def test_jobs_run_the_pipelines_with_options_they_accept(name, module, capsys, monkeypatch):
    job, _, container = job_pod(name)
    assert container["command"] == ["python", "-m", module]
    accepts(module, container["args"], capsys, monkeypatch)
    # Bad input (2), and for retraining a refused challenger (3), fail at once: no retries.
    (rule,) = [r for r in job["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    assert 2 in rule["onExitCodes"]["values"]
    assert rule["onExitCodes"]["containerName"] == container["name"]
    if name.startswith("cronjob"):
        assert rule["onExitCodes"]["values"] == [2, 3]
        assert manifests()[name]["spec"]["concurrencyPolicy"] == "Forbid"


def test_gpu_training_job_runs_the_pipeline_under_torchrun_on_the_cuda_image(capsys, monkeypatch):
    _, pod, container = job_pod("job-train-gpu.yaml")
    assert container["image"] == "anomaly:cuda"  # the tag deploy/Dockerfile.cuda builds
    assert "-t anomaly:cuda" in (DEPLOY / "Dockerfile.cuda").read_text()
    assert container["command"] == ["torchrun"]
    args = container["args"]
    assert args[: args.index("-m")] == ["--standalone", "--nproc-per-node", "gpu"]
    assert args[args.index("-m") + 1] == "pipelines.train"
    accepts("pipelines.train", args[args.index("-m") + 2 :], capsys, monkeypatch)
    # it registers the demo's model name: it must read the same columns as the demo's model
    from deploy.demo_model import EXCLUDE

    assert args[args.index("--register") + 1] == "service-metrics"
    assert {args[i + 1] for i, a in enumerate(args) if a == "--exclude"} == set(EXCLUDE)
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    # NCCL's shared memory: a container's own /dev/shm is 64 MiB
    volumes = {v["name"]: v for v in pod["volumes"]}
    (shm,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    assert volumes[shm["name"]]["emptyDir"]["medium"] == "Memory"


# ---------------------------------------------------------------------------- prometheus
def test_promtool_checks_the_config_and_its_rule_files():
    done = run(tool("promtool"), "check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout
    done = run(tool("promtool"), "check", "rules", str(PROMETHEUS / "alerts.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_of_the_alerts_pass():
    done = run(tool("promtool"), "test", "rules", "alerts.test.yml", cwd=PROMETHEUS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_is_covered_and_made_to_fire_by_a_unit_test():
    alerts = {rule["alert"] for rule in alert_rules() if "alert" in rule}
    assert alerts == {
        "AnomalyServiceDown",
        "AnomalyHighErrorRate",
        "AnomalyHighLatencyP99",
        "AnomalyFlagRateSpike",
        "AnomalyScoreDrift",
        "AnomalyModelReloadFailing",
    }
    tests = yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])
             if case["exp_alerts"]}  # fmt: skip
    assert fired == alerts
    for rule in alert_rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]


def test_service_down_alert_watches_the_scrape_job():
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    (down,) = [rule for rule in alert_rules() if rule.get("alert") == "AnomalyServiceDown"]
    assert re.search(r'job="(\w+)"', down["expr"])[1] in jobs


def test_pod_monitor_scrapes_the_pods_as_the_job_the_alerts_watch():
    """An annotation-based Kubernetes scrape names the job "kubernetes-pods"; the PodMonitor's
    jobLabel names a pod label whose value is the job in the AnomalyServiceDown alert."""
    (down,) = [rule for rule in alert_rules() if rule.get("alert") == "AnomalyServiceDown"]
    job = re.search(r'job="(\w+)"', down["expr"])[1]
    monitor = manifests()["podmonitor.yaml"]
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    template = by_kind()["Deployment"]["spec"]["template"]
    pod_labels = template["metadata"]["labels"]
    assert pod_labels[monitor["spec"]["jobLabel"]] == job
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    (container,) = template["spec"]["containers"]
    assert endpoint["port"] in {port["name"] for port in container["ports"]}
    assert endpoint["path"] == template["metadata"]["annotations"]["prometheus.io/path"]


def endpoint_matchers(expr: str, metric: str) -> list[str | None]:
    """The endpoint=~ regex of each selector of METRIC in EXPR (None: no such matcher)."""
    out = []
    for matchers in re.findall(rf"\b{metric}\b(?:\{{([^}}]*)\}})?", expr):
        found = re.search(r'endpoint=~"([^"]*)"', matchers)
        out.append(found[1] if found else None)
    return out


def test_error_ratios_count_only_the_scoring_routes():
    """Probes, the scrape and /v1/model always succeed and, at low traffic, outnumber scoring
    requests: a 5xx ratio over every endpoint never reaches its level. Numerator and denominator
    select the scoring router's routes (the endpoint label is the route template), no others."""
    from anomaly.service.routes import operations, scoring

    scoring_paths = {route.path for route in scoring.routes}
    other_paths = {route.path for route in operations.routes} | {"unmatched"}
    ratios = [expr for expr in all_queries() if re.search(r'status=~"5\.\."', expr)]
    assert len(ratios) == 2  # the alert and the dashboard panel
    for expr in ratios:
        # the same in numerator and denominator
        (regex,) = set(endpoint_matchers(expr, "anomaly_requests_total"))
        assert regex is not None, expr
        assert {p for p in scoring_paths | other_paths if re.fullmatch(regex, p)} == scoring_paths
    latency = [expr for expr in all_queries() if "anomaly_request_duration_seconds" in expr]
    assert latency
    for expr in latency:
        for regex in endpoint_matchers(expr, "anomaly_request_duration_seconds_bucket"):
            assert regex is not None, expr
            matched = {p for p in scoring_paths | other_paths if re.fullmatch(regex, p)}
            assert matched and matched <= scoring_paths, expr


# ---------------------------------------------------------------------------- grafana and names
def test_dashboard_panels_query_prometheus_and_cover_the_service():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    for panel in dashboard["panels"]:
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
        assert panel["datasource"]["type"] == "prometheus"
    queries = dashboard_queries()

    def panel(word: str) -> str:
        (title,) = [t for t in queries if word in t.lower()]
        return " ".join(queries[title])

    assert "anomaly_requests_total" in panel("request rate")
    assert panel("latency").count("histogram_quantile(") == 3
    assert "anomaly_records_flagged_total" in panel("flag rate")
    assert "anomaly_score_bucket" in panel("score distribution")
    assert "anomaly_score_drift" in panel("drift")
    assert "anomaly_model_info" in panel("model version")
    (heatmap,) = [p for p in dashboard["panels"] if p["type"] == "heatmap"]
    assert heatmap["targets"][0]["format"] == "heatmap"


def test_dashboard_panels_do_not_overlap():
    cells = set()
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}  # fmt: skip
        assert not cells & mine, panel["title"]
        cells |= mine


def test_dashboard_promql_parses(tmp_path):
    """promtool parses PromQL offline only in rule files: each query becomes a recording rule."""
    queries = [expr for exprs in dashboard_queries().values() for expr in exprs]
    rules = [{"record": f"dashboard:query{i}", "expr": expr} for i, expr in enumerate(queries)]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = run(tool("promtool"), "check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


def exported_names() -> dict[str, set[str]]:
    """Each series name the service's metrics expose, with the labels it may carry."""
    out = {}
    for collector in vars(metrics).values():
        if not isinstance(collector, MetricWrapperBase):
            continue
        labels = set(collector._labelnames) | {"job", "instance"}
        for family in collector.describe():
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
            for suffix in suffixes.get(family.type, [""]):
                out[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return out


@pytest.mark.parametrize("expr", all_queries(), ids=lambda expr: " ".join(expr.split())[:60])
def test_queries_use_only_exported_metrics_and_labels(expr):
    exported = exported_names()
    used = metric_names(expr)
    assert used <= set(exported), used - set(exported)
    recorded = {rule["record"] for rule in alert_rules() if "record" in rule}
    assert set(re.findall(r"\banomaly:[a-z0-9_:]+", expr)) <= recorded
    assert used or "anomaly:" in expr or expr.startswith("up{"), expr
    allowed = set().union(*(exported[name] for name in used))
    for name, matchers in re.findall(r"(anomaly_[a-z0-9_]+)\{([^}]*)\}", expr):
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
            assert label in exported[name], (name, label)
    for grouping in re.findall(r"\bby\s*\(([^)]*)\)", expr):
        for label in (g.strip() for g in grouping.split(",")):
            assert label in allowed, (label, expr)


# ---------------------------------------------------------------------------- README
def test_readme_deploy_section_names_every_variable():
    readme = (REPO / "README.md").read_text()
    start = readme.index("\n## Deploy\n")
    end = readme.find("\n## ", start + 1)
    section = readme[start : end if end != -1 else None]
    stack_variables = set(re.findall(r"\b(STACK_[A-Z_]+)\b", (DEPLOY / "local.sh").read_text()))
    wanted = (
        ANOMALY_VARIABLES | stack_variables | {"MLFLOW_TRACKING_URI", "PROMETHEUS_MULTIPROC_DIR"}
    )
    missing = sorted(v for v in wanted if f"`{v}`" not in section)
    assert not missing, missing
    for command in ("docker build", "docker compose", "kubectl apply", "deploy/local.sh up"):
        assert command in section, command
