"""The scoring service against `mlflow models serve`, the same model, the same load generator.

    python -m benchmarks.service [--duration 10] [--workers 1 2]

For each worker count, both servers get in turn:
- single-record requests at saturation (wrk, 16 connections): requests/s and latency;
- single-record requests at about 100 requests/s (wrk, 3 connections each pausing 20 ms
  between answer and next request): p50/p99 latency;
- 1,000-record requests at saturation (wrk, 4 connections): records/s.
Needs Debian's `wrk`. The model is the default VAE trained on 20,000 generated rows; both
servers load the same MLflow model directory (pyfunc with loader_module anomaly.pyfunc).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from anomaly import Detector
from anomaly.datasets import make_service_metrics
from benchmarks._machine import cpu_summary

BIN = Path(sys.executable).parent
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("{body}", "rb"); wrk.body = f:read("*a"); f:close()
{pacing}
"""
# Each of 3 connections waits 20 ms after an answer: about 100 requests/s at 10 ms answers.
PACING = "function delay() return 20 end"


def build_model(root: Path) -> Path:
    import mlflow

    rows = make_service_metrics(20_000, seed=0)
    detector = Detector(exclude=["host_id", "timestamp", "label"], epochs=40).fit(rows)
    detector.save(root / "detector")
    mlflow.pyfunc.save_model(root / "mlflow-model", loader_module="anomaly.pyfunc",
                             data_path=str(root / "detector"))  # fmt: skip
    return root / "mlflow-model"


def start(command: list[str], ready: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip
    for _ in range(240):
        try:
            if httpx.get(ready, timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{command[:3]} did not start: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def wrk(url: str, body_file: Path, connections: int, duration: int, paced: bool = False) -> dict:
    script = body_file.with_suffix(".paced.lua" if paced else ".lua")
    script.write_text(WRK_SCRIPT.format(body=body_file, pacing=PACING if paced else ""))
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        raise RuntimeError(f"{url}: {non_2xx.group(1)} failed requests\n{out}")
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": _ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1)),
        "p99_ms": _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1)),
    }


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--port", type=int, default=18080)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("needs wrk (apt-get install wrk)")
    root = Path(tempfile.mkdtemp(prefix="bench-service-"))
    model = build_model(root)
    rows = make_service_metrics(1000, seed=9).drop(columns=["label"])
    records = json.loads(rows.to_json(orient="records"))
    # The single-record body is a row the model does not flag, as most traffic is; a flagged
    # row also gets counterfactual top features (one more forward pass).
    flagged = Detector.load(model / "data" / "detector").score(rows)["is_anomaly"].to_numpy()
    records.insert(0, records.pop(int(np.flatnonzero(~flagged)[0])))
    bodies = {
        ("anomaly", 1): {"records": records[:1]},
        ("mlflow", 1): {"dataframe_records": records[:1]},
        ("anomaly", 1000): {"records": records},
        ("mlflow", 1000): {"dataframe_records": records},
    }
    files = {}
    for key, body in bodies.items():
        files[key] = root / f"{key[0]}-{key[1]}.json"
        files[key].write_text(json.dumps(body))
    print(cpu_summary())
    print(f"model: default VAE, {model}; wrk -t1, {args.duration} s per run\n")
    print(
        "| server | workers | 1-record req/s (16 conn) | p50 / p99 ms at saturation "
        "| p50 / p99 ms at ~100 req/s | 1,000-record requests: records/s |"
    )
    print("|---|---|---|---|---|---|")
    port = args.port
    for workers in args.workers:
        for server in ("anomaly", "mlflow"):
            port += 1
            base = f"http://127.0.0.1:{port}"
            if server == "anomaly":
                command = [str(BIN / "anomaly"), "serve", "--model", str(model), "--port",
                           str(port), "--workers", str(workers), "--log-level",
                           "warning"]  # fmt: skip
                path, ready = "/v1/score", f"{base}/readyz"
            else:
                command = [str(BIN / "mlflow"), "models", "serve", "-m", str(model),
                           "--env-manager", "local", "--port", str(port), "--workers",
                           str(workers)]  # fmt: skip
                path, ready = "/invocations", f"{base}/ping"
            proc = start(command, ready, root / f"{server}-{workers}.log")
            try:
                url = base + path
                wrk(url, files[(server, 1)], 16, 2)  # warm-up
                single = wrk(url, files[(server, 1)], 16, args.duration)
                paced = wrk(url, files[(server, 1)], 3, args.duration, paced=True)
                big = wrk(url, files[(server, 1000)], 4, args.duration)
            finally:
                stop(proc)
            print(
                f"| {server} | {workers} | {single['rps']:,.0f} | {single['p50_ms']:.1f} / "
                f"{single['p99_ms']:.1f} | {paced['p50_ms']:.1f} / {paced['p99_ms']:.1f} "
                f"({paced['rps']:.0f} req/s) | "
                f"{big['rps'] * 1000:,.0f} |",
                flush=True,
            )
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
