"""`make demo`: the product end to end on generated data, with the commands a user would type.

train and register in MLflow -> list the registry -> batch-score a CSV by alias -> evaluate on
labelled rows. Everything lands in ./demo-output (MLflow's default store, mlflow.db, included:
the commands run there); the last lines say where to look.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from anomaly.datasets import make_service_metrics

OUT = Path("demo-output")
NAME = "service-metrics"


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
    print(
        f"\nwhere to look:\n"
        f"  {OUT}/scored.csv        every input row with anomaly_score, is_anomaly, p_value, "
        "top_features\n"
        f"  {OUT}/model/            the model directory (detector.json + weights.safetensors)\n"
        f"  cd {OUT} && ../.venv/bin/mlflow ui\n"
        "                          runs with losses and plots (loss curve, calibration histogram,\n"
        f"                          latent projection, ROC/PR), the registered model {NAME}"
    )


if __name__ == "__main__":
    main()
