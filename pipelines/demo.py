"""`make demo`: the product end to end on generated data, with the commands a user would type.

train on normal rows -> batch-score a CSV with injected anomalies -> check what was flagged.
Everything lands in ./demo-output; the last lines say where to look.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd

from anomaly.datasets import make_service_metrics

OUT = Path("demo-output")


def run(*args: str) -> None:
    command = [Path(sys.executable).with_name("anomaly").as_posix(), *args]
    print(f"\n$ {shlex.join(['anomaly', *args])}", flush=True)
    subprocess.run(command, check=True)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    normal, new = OUT / "normal.csv", OUT / "new.csv"
    make_service_metrics(20_000, seed=0).to_csv(normal, index=False)
    make_service_metrics(50_000, 500, seed=1).to_csv(new, index=False)
    print(f"generated {normal} (20,000 normal rows) and {new} (50,000 normal + 500 anomalies)")

    run("train", str(normal), "--model", "vae", "--exclude", "host_id", "--exclude", "timestamp",
        "--exclude", "label", "--target-fpr", "0.01", "--out", str(OUT / "model"))  # fmt: skip
    run("score", str(new), "--model", str(OUT / "model"), "--out", str(OUT / "scored.csv"))

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
        f"  {OUT / 'model'}/detector.json   schema, preprocessing, threshold, loss history\n"
        f"  {OUT / 'scored.csv'}             every input row with anomaly_score, is_anomaly, "
        f"p_value, top_features"
    )


if __name__ == "__main__":
    main()
