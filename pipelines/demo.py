"""`make demo`: the product end to end on generated data, with the commands a user would type.

train and register in MLflow -> list the registry -> batch-score a CSV by alias -> evaluate on
labelled rows -> serve the champion over HTTP: score records, stream NDJSON, read the metrics
-> retrain on drifted normal rows while serving: the gate promotes the challenger and the
service switches to it -> time series: train a window model, score a file per point, serve it
and stream points, retrain it on later, taller cycles.
Everything lands in ./demo-output (MLflow's default store, mlflow.db, included: the commands
run there); the last lines say where to look.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd

from anomaly.datasets import make_metric_series, make_service_metrics

OUT = Path("demo-output")
NAME = "service-metrics"
SERIES = "host-series"


def run(*args: str) -> None:
    command = [Path(sys.executable).with_name("anomaly").as_posix(), *args]
    print(f"\n$ {shlex.join(['anomaly', *args])}", flush=True)
    subprocess.run(command, check=True, cwd=OUT)


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)  # a fresh registry: the model trained here is v1
    OUT.mkdir()
    make_service_metrics(20_000, 100, seed=0).to_csv(OUT / "normal.csv", index=False)
    make_service_metrics(50_000, 500, seed=1).to_csv(OUT / "new.csv", index=False)
    print(
        f"generated in {OUT}/: normal.csv (20,000 normal rows, 100 labelled anomalies) and "
        "new.csv (50,000 normal rows + 500 anomalies)"
    )

    run("train", "normal.csv", "--model", "vae", "--exclude", "host_id", "--exclude",
        "timestamp", "--label-col", "label", "--target-fpr", "0.01", "--register", NAME,
        "--out", "model")  # fmt: skip
    run("models", "list", NAME)
    run("score", "new.csv", "--model", f"models:/{NAME}@champion", "--out", "scored.csv")
    run("evaluate", "new.csv", "--model", f"models:/{NAME}@champion", "--label-col", "label",
        "--target-recall", "0.95")  # fmt: skip

    scored = pd.read_csv(OUT / "scored.csv")
    normal_rows, anomalies = scored[scored["label"] == 0], scored[scored["label"] == 1]
    print(
        f"\nfalse-positive rate on normal rows: {normal_rows['is_anomaly'].mean():.2%} "
        f"(target 1%); anomalies flagged: {anomalies['is_anomaly'].mean():.1%}"
    )
    columns = ["region", "cpu", "requests", "latency_ms", "errors", "bytes_out"]
    top = scored.nlargest(5, "anomaly_score")[[*columns, "anomaly_score", "top_features"]]
    print("\nthe five most anomalous rows:\n" + top.to_string(index=False))
    serve_and_stream(pd.read_csv(OUT / "new.csv"))
    time_series()
    print(
        f"\nwhere to look:\n"
        f"  {OUT}/scored.csv        every input row with anomaly_score, is_anomaly, p_value, "
        "top_features\n"
        f"  {OUT}/scored_series.csv every point of every host with its score\n"
        f"  {OUT}/model/            the model directory (detector.json + weights.safetensors)\n"
        f"  anomaly serve --model models:/{NAME}@champion   then http://127.0.0.1:8000/docs "
        f"(run in {OUT})\n"
        f"  cd {OUT} && ../.venv/bin/mlflow ui\n"
        "                          runs with losses and plots (loss curve, calibration histogram,\n"
        f"                          latent projection, ROC/PR), the registered model {NAME}\n"
        "                          (v2 = the retrained champion; its run has gate.txt), and\n"
        f"                          {SERIES}, the time-series model (v2 retrained on taller "
        "cycles)"
    )


def start_service(name: str) -> tuple[subprocess.Popen, str]:
    """``anomaly serve`` of the champion of ``name`` on a free port, once it is ready."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    args = ["serve", "--model", f"models:/{name}@champion", "--port", str(port),
            "--reload-interval", "2", "--log-level", "warning"]  # fmt: skip
    print(f"\n$ {shlex.join(['anomaly', *args])} &", flush=True)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen([str(bin_dir / "anomaly"), *args], cwd=OUT, env=env)
    for _ in range(120):
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    return server, url


def serve_and_stream(rows: pd.DataFrame) -> None:
    server, url = start_service(NAME)
    try:
        model = httpx.get(f"{url}/v1/model").json()
        print(f"GET /v1/model -> {model['name']} v{model['version']} ({model['alias']}), "
              f"threshold {model['threshold']:.4g}")  # fmt: skip
        features = rows.drop(columns=["label"])
        picked = pd.concat(
            [features[rows["label"] == 0].head(2), features[rows["label"] == 1].head(1)]
        )
        records = json.loads(picked.to_json(orient="records"))
        answer = httpx.post(f"{url}/v1/score", json={"records": records}).json()
        print("POST /v1/score (two normal rows, one anomaly) ->")
        for result in answer["results"]:
            top = ", ".join(result["top_features"])
            print(f"  score {result['anomaly_score']:10.4g}  anomaly {result['is_anomaly']!s:5}  "
                  f"p {result['p_value']:.3g}  top {top}")  # fmt: skip
        lines = features.head(2000).to_json(orient="records", lines=True).encode()
        ndjson = {"Content-Type": "application/x-ndjson"}
        streamed = httpx.post(f"{url}/v1/score/stream", content=lines, headers=ndjson, timeout=60)
        out = [json.loads(line) for line in streamed.text.splitlines()]
        flagged = sum(bool(o.get("is_anomaly")) for o in out)
        print(
            f"POST /v1/score/stream (2,000 NDJSON lines) -> {len(out)} result lines, "
            f"{flagged} flagged"
        )
        wanted = ("anomaly_requests_total", "anomaly_records_scored_total", "anomaly_model_info")
        metrics = [line for line in httpx.get(f"{url}/metrics").text.splitlines()
                   if line.startswith(wanted)]  # fmt: skip
        print("GET /metrics ->\n  " + "\n  ".join(metrics))
        retrain_while_serving(url)
    finally:
        server.terminate()
        server.wait(timeout=30)


def retrain_while_serving(url: str) -> None:
    """Normal traffic doubled: the champion now flags much of it; a challenger learns it."""
    drifted = make_service_metrics(20_000, seed=2)
    for column in ("requests", "cpu", "bytes_out"):
        drifted[column] *= 2.0
    drifted.to_csv(OUT / "drifted.csv", index=False)
    print(f"\ngenerated {OUT}/drifted.csv: 20,000 normal rows after traffic doubled")
    run("retrain", "drifted.csv", "--name", NAME, "--epochs", "60")
    run("models", "list", NAME)
    for _ in range(60):
        version = httpx.get(f"{url}/v1/model").json()["version"]
        if version != "1":
            break
        time.sleep(0.5)
    print(f"GET /v1/model -> the running service now serves {NAME} v{version}")


def time_series() -> None:
    """Three hosts' readings: a window model learns normal shapes; a file is scored per point,
    and a stream gets a score as each point arrives."""
    make_metric_series(3000, 3, seed=0).to_csv(OUT / "series.csv", index=False)
    fresh = make_metric_series(600, 3, anomalies=(300,), seed=1, shuffle=False)
    fresh.to_csv(OUT / "new_series.csv", index=False)
    print(
        f"\ngenerated {OUT}/series.csv (3 hosts x 3,000 normal points, a minute apart) and "
        "new_series.csv (600 more points each, a level shift at point 300)"
    )
    run("train", "series.csv", "--modality", "sequence", "--timestamp-col", "timestamp",
        "--series-col", "host", "--exclude", "label", "--model", "ae", "--window", "32",
        "--epochs", "30", "--register", SERIES)  # fmt: skip
    run("score", "new_series.csv", "--model", f"models:/{SERIES}@champion", "--out",
        "scored_series.csv")  # fmt: skip
    scored = pd.read_csv(OUT / "scored_series.csv", parse_dates=["timestamp"])
    shift = scored["label"] == 1
    # a point's score averages the windows covering it: the 31 points either side of the shift
    # share windows with it
    minute = (scored["timestamp"] - scored["timestamp"].min()).dt.total_seconds() // 60
    far = ((minute - 300).abs() > 40) & ~shift
    print(
        f"points flagged: {scored.loc[shift, 'is_anomaly'].mean():.0%} of the level shift, "
        f"{scored.loc[far, 'is_anomaly'].mean():.2%} of the points more than 40 minutes from it"
    )
    server, url = start_service(SERIES)
    try:
        host = fresh[fresh["host"] == "h0"].assign(
            timestamp=lambda f: f["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S")
        )
        results = []
        for start in range(0, len(host), 50):  # a collector sending 50 points at a time
            points = host.iloc[start : start + 50][["timestamp", "value"]]
            answer = httpx.post(
                f"{url}/v1/streams/h0/points", json={"points": points.to_dict(orient="records")}
            )
            results += answer.json()["results"]
        start = host["timestamp"].iloc[300]
        caught = next(r for r in results if r["is_anomaly"] and r["timestamp"] >= start)
        flagged = sum(bool(r["is_anomaly"]) for r in results)
        print(
            f"POST /v1/streams/h0/points (600 points, 50 a request) -> the first 31: "
            f"{results[0]['reason']!r}; {flagged} points flagged; the shift starts at {start} "
            f"and is flagged at {caught['timestamp']} (score {caught['anomaly_score']:.4g}, "
            f"p {caught['p_value']:.3g})"
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    # The next days: every host's cycle is twice as tall. The champion's threshold no longer
    # holds; a challenger trained on those days is gated on their last 20% and promoted.
    taller = make_metric_series(2000, 3, seed=2).assign(
        timestamp=lambda f: f["timestamp"] + pd.Timedelta(days=3), value=lambda f: 2 * f["value"]
    )
    taller.to_csv(OUT / "taller_series.csv", index=False)
    print(f"\ngenerated {OUT}/taller_series.csv (2,000 later points each, the cycle twice as tall)")
    run("retrain", "taller_series.csv", "--name", SERIES, "--epochs", "30")


if __name__ == "__main__":
    if sys.argv[1:]:  # it takes none: `--help` would otherwise run the whole demo
        sys.exit(f"{__doc__}\nusage: python -m pipelines.demo (no arguments; `make demo` runs it)")
    main()
