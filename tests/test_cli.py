"""The `anomaly` command end to end, as a user runs it: a subprocess, real files."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from anomaly.datasets import make_service_metrics


def anomaly(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "anomaly.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("cli")
    make_service_metrics(3000, seed=0).to_csv(work / "normal.csv", index=False)
    done = anomaly(
        "train", str(work / "normal.csv"), "--model", "ae", "--exclude", "host_id",
        "--exclude", "timestamp", "--exclude", "label", "--epochs", "60", "--out",
        str(work / "model"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "threshold" in done.stdout
    assert "training" in done.stderr  # the progress bar
    return work


def test_train_then_score_finds_anomalies_at_the_target_rate(trained):
    test = make_service_metrics(4000, 400, seed=1)
    test.to_csv(trained / "new.csv", index=False)
    done = anomaly("score", str(trained / "new.csv"), "--model", str(trained / "model"),
                   "--out", str(trained / "scored.csv"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "scored 4400 rows" in done.stdout
    assert "scoring" in done.stderr  # the progress bar over the input's bytes
    scored = pd.read_csv(trained / "scored.csv")
    assert list(scored.columns) == [
        *test.columns,
        "anomaly_score",
        "is_anomaly",
        "p_value",
        "top_features",
    ]
    assert roc_auc_score(scored["label"], scored["anomaly_score"]) > 0.95
    fpr = scored.loc[scored["label"] == 0, "is_anomaly"].mean()
    assert 0.003 <= fpr <= 0.025  # target 1%
    assert np.all((scored["p_value"] > 0) & (scored["p_value"] <= 1))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda df: df.drop(columns=["cpu"]), "missing column 'cpu'"),
        (lambda df: df.astype({"cpu": object}).assign(
            cpu=lambda d: d["cpu"].where(d.index != 7, "fast")),
         "column 'cpu', row 7: 'fast' is not a number"),
    ],
)  # fmt: skip
def test_bad_input_fails_clearly_and_writes_nothing(trained, edit, message):
    edit(make_service_metrics(50, seed=2)).to_csv(trained / "bad.csv", index=False)
    out = trained / "bad-scored.csv"
    done = anomaly("score", str(trained / "bad.csv"), "--model", str(trained / "model"),
                   "--out", str(out))  # fmt: skip
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()


def test_training_errors_are_one_line(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    done = anomaly("train", str(tmp_path / "empty.csv"), "--out", str(tmp_path / "m"))
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {tmp_path / 'empty.csv'} is empty"
    done = anomaly("score", str(tmp_path / "empty.csv"), "--model", str(tmp_path / "nothing"),
                   "--out", str(tmp_path / "o.csv"))  # fmt: skip
    assert done.returncode == 2
    assert f"no model at {tmp_path / 'nothing'}" in done.stderr
    (tmp_path / "twice.csv").write_text("cpu,memory,cpu\n1,2,3\n")
    done = anomaly("train", str(tmp_path / "twice.csv"), "--out", str(tmp_path / "m"))
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {tmp_path / 'twice.csv'}: column 'cpu' appears twice"
    make_service_metrics(300, seed=0).to_csv(tmp_path / "normal.csv", index=False)
    train = ("train", str(tmp_path / "normal.csv"), "-x", "host_id", "-x", "timestamp", "-x",
             "label", "--score", "iwae", "--epochs", "2", "--out", str(tmp_path / "m"))  # fmt: skip
    done = anomaly(*train)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: score 'iwae' needs n_samples of at least 1, got 0"
    assert anomaly(*train, "--n-samples", "3").returncode == 0
    assert json.loads((tmp_path / "m" / "detector.json").read_text())["params"]["n_samples"] == 3


def test_help_and_the_package_import_neither_torch_nor_pandas():
    code = (
        "import sys, anomaly, anomaly.cli\n"
        "heavy = sorted({'torch', 'pandas', 'mlflow'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
        "assert anomaly.Detector.__module__ == 'anomaly.detector'  # loaded on first use\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert anomaly("--help").returncode == 0
