#!/usr/bin/env bash
# The stack without Docker, on loopback ports: an MLflow tracking server (sqlite, local
# artifacts), the scoring service (deploy/docker-entrypoint.sh, as in the image) serving
# models:/NAME@champion, and Prometheus with deploy/prometheus/prometheus.yml's jobs and rules
# pointed at them.
#
#   deploy/local.sh up [--demo | --train CSV [TRAIN-OPTION...]]
#   deploy/local.sh status
#   deploy/local.sh down
#
# up starts what is not running and waits until each part answers. --demo registers a demo model
# when NAME has no champion yet (deploy/demo_model.py); --train registers one trained on CSV
# (`anomaly train CSV --register NAME TRAIN-OPTION...`; the first version of a name becomes
# champion). Without either, NAME must have a champion in the registry already.
# status exits 0 when all three run, 3 otherwise. down stops them (the registry, the models and
# Prometheus's data stay in the state directory for the next up; delete it to start afresh).
#
# Environment (defaults in brackets):
#   STACK_DIR              state: pids, logs, the sqlite registry, artifacts [.local-stack]
#   STACK_MLFLOW_PORT      MLflow [5000]         STACK_SERVICE_PORT     scoring service [8000]
#   STACK_PROMETHEUS_PORT  Prometheus [9090]     STACK_MODEL_NAME       model [service-metrics]
#   STACK_WORKERS          service workers [2]   STACK_RELOAD_INTERVAL  alias polls, s [30]
#   STACK_SCRAPE_INTERVAL  Prometheus scrape and rule interval [15s]
#   STACK_PYTHON           Python with anomaly installed [.venv/bin/python, else python3]
#   PROMETHEUS, PROMTOOL   the binaries [prometheus, promtool]
# Other ANOMALY_* variables (ANOMALY_API_TOKEN, ...) reach the service as they are.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"

STACK_DIR="${STACK_DIR:-$repo/.local-stack}"
STACK_MLFLOW_PORT="${STACK_MLFLOW_PORT:-5000}"
STACK_SERVICE_PORT="${STACK_SERVICE_PORT:-8000}"
STACK_PROMETHEUS_PORT="${STACK_PROMETHEUS_PORT:-9090}"
STACK_MODEL_NAME="${STACK_MODEL_NAME:-service-metrics}"
STACK_WORKERS="${STACK_WORKERS:-2}"
STACK_RELOAD_INTERVAL="${STACK_RELOAD_INTERVAL:-30}"
STACK_SCRAPE_INTERVAL="${STACK_SCRAPE_INTERVAL:-15s}"
PROMETHEUS="${PROMETHEUS:-prometheus}"
PROMTOOL="${PROMTOOL:-promtool}"
if [[ -z "${STACK_PYTHON:-}" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then STACK_PYTHON="$repo/.venv/bin/python"; else STACK_PYTHON=python3; fi
fi
STACK_DIR="$(mkdir -p "$STACK_DIR" && cd "$STACK_DIR" && pwd)"
# The venv's scripts (anomaly, for the entrypoint) without activating it.
PATH="$(dirname "$(command -v "$STACK_PYTHON")"):$PATH"
export PATH

mlflow_url="http://127.0.0.1:$STACK_MLFLOW_PORT"
service_url="http://127.0.0.1:$STACK_SERVICE_PORT"
prometheus_url="http://127.0.0.1:$STACK_PROMETHEUS_PORT"
components=(mlflow service prometheus)

say() { printf '%s\n' "$*" >&2; }
pidfile() { printf '%s/run/%s.pid' "$STACK_DIR" "$1"; }
logfile() { printf '%s/logs/%s.log' "$STACK_DIR" "$1"; }

# The pid of a component that runs, or nothing. Each runs in its own session (setsid), so its
# pid is also its process group: down stops the workers it started with it.
running() {
    local file pid
    file="$(pidfile "$1")"
    [[ -f "$file" ]] || return 1
    pid="$(<"$file")"
    if [[ -n "$pid" ]] && kill -0 -- "-$pid" 2>/dev/null; then
        printf '%s' "$pid"
        return 0
    fi
    rm -f "$file"
    return 1
}

# wait_ready NAME URL SECONDS: until URL answers 200, or the component exits, or time is up.
wait_ready() {
    local name="$1" url="$2" seconds="$3" pid
    pid="$(<"$(pidfile "$name")")"
    "$STACK_PYTHON" - "$url" "$seconds" "$pid" <<'PY' || {
import os, sys, time, urllib.request
url, deadline, pid = sys.argv[1], time.monotonic() + float(sys.argv[2]), int(sys.argv[3])
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit(f"exited before {url} answered")
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            if answer.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.3)
sys.exit(f"{url} did not answer within {sys.argv[2]} s")
PY
        say "$name failed to start; the end of $(logfile "$name"):"
        tail -n 30 "$(logfile "$name")" >&2 || true
        return 1
    }
}

# launch NAME READY-URL SECONDS COMMAND...: start COMMAND in its own session, wait until ready.
launch() {
    local name="$1" url="$2" seconds="$3" pid
    shift 3
    if pid="$(running "$name")"; then
        say "$name: already running (pid $pid)"
        return 0
    fi
    setsid "$@" >"$(logfile "$name")" 2>&1 </dev/null &
    echo "$!" >"$(pidfile "$name")"
    wait_ready "$name" "$url" "$seconds"
    say "$name: $url (pid $(<"$(pidfile "$name")"), log $(logfile "$name"))"
}

# wait_gone PID|-PGID SECONDS: until the process (group) is gone; false if time ran out.
wait_gone() {
    local _
    for _ in $(seq 1 $(($2 * 5))); do
        kill -0 -- "$1" 2>/dev/null || return 0
        sleep 0.2
    done
    ! kill -0 -- "$1" 2>/dev/null
}

stop() {
    local name="$1" pid
    pid="$(running "$name")" || return 0
    # The leader first: uvicorn's supervisor then stops its workers (signalled together, it
    # would start new ones for those that died first). Then whatever is left in the group.
    kill -TERM "$pid" 2>/dev/null || true
    wait_gone "$pid" 15 || true
    kill -TERM -- "-$pid" 2>/dev/null || true
    if ! wait_gone "-$pid" 10; then
        say "$name: still running, killing it"
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$(pidfile "$name")"
    say "$name: stopped"
}

# The compose stack's Prometheus configuration with loopback targets and the same rule files.
render_prometheus_config() {
    "$STACK_PYTHON" - "$here/prometheus/prometheus.yml" "$STACK_DIR/prometheus.yml" \
        "$STACK_SCRAPE_INTERVAL" "127.0.0.1:$STACK_SERVICE_PORT" "127.0.0.1:$STACK_PROMETHEUS_PORT" <<'PY'
import sys
from pathlib import Path

import yaml

source, target = Path(sys.argv[1]), Path(sys.argv[2])
interval, loopback = sys.argv[3], {"anomaly": sys.argv[4], "prometheus": sys.argv[5]}
config = yaml.safe_load(source.read_text())
config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = interval
config["rule_files"] = [str((source.parent / rules).resolve()) for rules in config["rule_files"]]
for job in config["scrape_configs"]:
    job["static_configs"] = [{"targets": [loopback[job["job_name"]]]}]
header = f"# Rendered by deploy/local.sh from {source}: loopback targets, the same rules.\n"
target.write_text(header + yaml.safe_dump(config, sort_keys=False))
PY
}

up() {
    local train=() demo=0
    while (($#)); do
        case "$1" in
            --demo) demo=1; shift ;;
            --train) [[ $# -ge 2 ]] || { say "--train needs a CSV"; return 2; }
                     train=("${@:2}"); break ;;
            *) say "unknown option for up: $1"; return 2 ;;
        esac
    done
    command -v "$PROMETHEUS" >/dev/null || { say "no $PROMETHEUS: run tests/system-deps.sh"; return 2; }
    mkdir -p "$STACK_DIR"/{run,logs,artifacts,cache,data}
    unset MLFLOW_TRACKING_URI MLFLOW_REGISTRY_URI MLFLOW_EXPERIMENT_ID MLFLOW_EXPERIMENT_NAME
    # Without MLflow's job runner (its GenAI jobs, seven worker processes): a registry needs none.
    launch mlflow "$mlflow_url/health" 300 \
        env MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}" \
        "$STACK_PYTHON" -m mlflow server --backend-store-uri "sqlite:///$STACK_DIR/mlflow.db" \
        --artifacts-destination "$STACK_DIR/artifacts" --host 127.0.0.1 \
        --port "$STACK_MLFLOW_PORT" --workers 1
    # The clients: the model's registration, the service.
    export MLFLOW_TRACKING_URI="$mlflow_url" ANOMALY_CACHE_DIR="$STACK_DIR/cache"
    export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false

    if ((demo)); then
        "$STACK_PYTHON" "$here/demo_model.py" --name "$STACK_MODEL_NAME" \
            --data-dir "$STACK_DIR/data" >>"$(logfile train)" 2>&1 \
            || { say "demo model failed; see $(logfile train)"; tail -n 20 "$(logfile train)" >&2; return 1; }
        say "model: $(tail -n 1 "$(logfile train)")"
    elif ((${#train[@]})); then
        "$STACK_PYTHON" -m anomaly.cli train "${train[0]}" --register "$STACK_MODEL_NAME" \
            "${train[@]:1}" >>"$(logfile train)" 2>&1 \
            || { say "training failed; see $(logfile train)"; tail -n 20 "$(logfile train)" >&2; return 1; }
        say "model: $(tail -n 1 "$(logfile train)")"
    fi

    if ! running service >/dev/null; then
        # Each start gets an empty metrics directory: counters restart at zero, as Prometheus
        # expects of a restarted process.
        rm -rf "$STACK_DIR/metrics" && mkdir -p "$STACK_DIR/metrics"
    fi
    launch service "$service_url/readyz" 300 env \
        ANOMALY_MODEL_URI="models:/$STACK_MODEL_NAME@champion" ANOMALY_HOST=127.0.0.1 \
        ANOMALY_PORT="$STACK_SERVICE_PORT" ANOMALY_WORKERS="$STACK_WORKERS" \
        ANOMALY_RELOAD_INTERVAL="$STACK_RELOAD_INTERVAL" \
        ANOMALY_LOG_LEVEL="${ANOMALY_LOG_LEVEL:-warning}" \
        PROMETHEUS_MULTIPROC_DIR="$STACK_DIR/metrics" "$here/docker-entrypoint.sh"

    render_prometheus_config
    if command -v "$PROMTOOL" >/dev/null; then
        "$PROMTOOL" check config "$STACK_DIR/prometheus.yml" >"$(logfile promtool)" 2>&1 \
            || { say "promtool refused the configuration:"; cat "$(logfile promtool)" >&2; return 1; }
    fi
    launch prometheus "$prometheus_url/-/ready" 120 \
        "$PROMETHEUS" --config.file="$STACK_DIR/prometheus.yml" \
        --storage.tsdb.path="$STACK_DIR/prometheus-data" \
        --web.listen-address="127.0.0.1:$STACK_PROMETHEUS_PORT"

    cat <<EOF
the stack is up (state in $STACK_DIR):
  MLflow       $mlflow_url
  scoring      $service_url   (models:/$STACK_MODEL_NAME@champion; /docs, /metrics)
  Prometheus   $prometheus_url   (alerts: $prometheus_url/alerts)
clients of the registry: export MLFLOW_TRACKING_URI=$mlflow_url
EOF
}

status() {
    local name pid all=0 url
    for name in "${components[@]}"; do
        case "$name" in
            mlflow) url="$mlflow_url" ;; service) url="$service_url" ;; *) url="$prometheus_url" ;;
        esac
        if pid="$(running "$name")"; then
            printf '%-11s running  pid %-8s %s\n' "$name" "$pid" "$url"
        else
            printf '%-11s stopped\n' "$name"
            all=3
        fi
    done
    return "$all"
}

down() {
    local i
    for ((i = ${#components[@]} - 1; i >= 0; i--)); do
        stop "${components[i]}"
    done
}

command="${1:-}"
case "$command" in
    up)
        shift
        # A failed up (set -e ends it at the first failing step) leaves nothing running.
        trap 'rc=$?; if ((rc)); then say "up failed; stopping what started"; down; fi' EXIT
        up "$@"
        trap - EXIT ;;
    down) down ;;
    status) status ;;
    *) say "usage: $0 up [--demo | --train CSV [TRAIN-OPTION...]] | status | down"; exit 2 ;;
esac
