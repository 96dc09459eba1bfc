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


def test_torchrun_trains_one_model_in_two_processes(tmp_path):
    """Data-parallel training: both processes train, the first alone reports, warns, saves and
    registers."""
    import os

    import mlflow
    from conftest import torchrun

    from anomaly import Detector

    normal = make_service_metrics(3001, seed=0).assign(constant=1.0)  # warned of at fit
    normal.to_csv(tmp_path / "normal.csv", index=False)
    command = torchrun(
        "-m", "anomaly.cli", "train", str(tmp_path / "normal.csv"), "--model", "ae",
        "--exclude", "host_id", "--exclude", "timestamp", "--exclude", "label",
        "--epochs", "60", "--device", "cpu",
        "--out", str(tmp_path / "model"), "--register", "ddp-trained",
    )  # fmt: skip
    # A new store: only the first process may create it (two at once corrupted it)
    store = f"sqlite:///{tmp_path / 'fresh.db'}"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_EXPERIMENT_ID"}
    env["MLFLOW_TRACKING_URI"] = store
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path
    )  # artifacts go to ./mlruns
    assert done.returncode == 0, done.stderr
    # 2161 training rows: 1080 in each process, one left out
    assert done.stdout.count("trained ae on 2160 rows") == 1, done.stdout
    assert "cpu x 2 processes" in done.stdout
    assert done.stdout.count("saved to") == 1
    assert done.stderr.count("'constant' is constant") == 1, done.stderr  # not once a process
    client = mlflow.MlflowClient(tracking_uri=store)
    (version,) = client.search_model_versions("name='ddp-trained'")  # registered once
    assert client.get_run(version.run_id).data.params["train_processes"] == "2"
    assert done.stderr.count("0/60 [00:00<?, ?epoch/s]") == 1  # one bar started
    detector = Detector.load(tmp_path / "model")
    assert detector.training_summary_["processes"] == 2
    test = make_service_metrics(2000, 200, seed=1).assign(constant=1.0)
    assert roc_auc_score(test["label"], detector.score_samples(test)) > 0.95


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
    done = anomaly(*train, "--n-samples", "3", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "epoch/s" not in done.stderr  # no bar (the module's first training shows one)
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


# In-process (CliRunner) from here: refusals that must come before any work, in a second.
def _run(*args: str):
    from typer.testing import CliRunner

    from anomaly.cli import app

    return CliRunner().invoke(app, list(args))


def test_training_errors_name_the_files_row_and_line_labelled_rows_counted(tmp_path):
    """Training reads the rows labelled normal; an error there names the row in the file."""
    rows = make_service_metrics(300, seed=0).assign(label=0).astype({"cpu": object})
    rows.loc[:9, "label"] = 1
    rows.loc[50, "cpu"] = "inf"
    path = tmp_path / "labelled.csv"
    rows.to_csv(path, index=False)
    done = _run("train", str(path), "-x", "host_id", "-x", "timestamp", "--label-col", "label",
                "--out", str(tmp_path / "m"))  # fmt: skip
    assert done.exit_code == 2
    assert f"error: {path}: column 'cpu', row 50: infinite values" in done.stderr
    assert done.stderr.strip().endswith("(line 52 of the file)")


def test_a_bad_label_is_named_as_written_with_its_line(trained, tmp_path):
    rows = make_service_metrics(200, 20, seed=2)
    for labels, message in [
        (rows["label"].map({0: -1, 1: 1}), "label column 'label', row 0: -1 is not a label"),
        (rows["label"].where(rows.index != 5), "label column 'label', row 5: the label is missing"),
    ]:
        rows.assign(label=labels).to_csv(tmp_path / "labelled.csv", index=False)
        evaluate = ["evaluate", "--no-log", "--model", str(trained / "model")]
        train = ["train", "--out", str(tmp_path / "m"), "-x", "host_id", "-x", "timestamp"]
        for command in (evaluate, train):
            done = _run(command[0], str(tmp_path / "labelled.csv"), *command[1:],
                        "--label-col", "label")  # fmt: skip
            assert done.exit_code == 2, done.output
            row = message.split("row ")[1].split(":")[0]
            assert message in done.stderr and f"(line {int(row) + 2} of the file)" in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "D", "-o", "M", "--device", "tpu"], "unknown device 'tpu'; use auto, cpu"),
        (["train", "D", "-o", "M", "--device", "cpu:abc"], "unknown device 'cpu:abc'"),
        (["train", "D", "-o", "M", "--hidden", "-3,2"], "hidden widths must be at least 1"),
        (["train", "D", "-o", "M", "--hidden", "0"], "hidden widths must be at least 1"),
        (["train", "D", "-o", "M", "--latent", "0"], "latent must be at least 1, got 0"),
        (["train", "D", "-o", "M", "--latent", "-1"], "latent must be at least 1, got -1"),
        (["train", "D", "-o", "M", "--beta", "-1"], "'--beta'"),
        (["train", "D", "-o", "M", "--dropout", "1"], "'--dropout'"),
        (["train", "D", "-o", "M", "--dropout", "-0.1"], "'--dropout'"),
        (["train", "D", "-o", "M", "--denoise", "-1"], "'--denoise'"),
        (["train", "D", "-o", "M", "--seed", "-1"], "'--seed'"),
        (["retrain", "D", "--name", "x", "--max-auroc-drop", "-1"], "'--max-auroc-drop'"),
        (["retrain", "D", "--name", "x", "--seed", "-1"], "'--seed'"),
        (["serve", "-m", "M", "--log-level", "loud"], "'--log-level'"),
        (["serve", "-m", "M", "--port", "0"], "'--port'"),
        (["serve", "-m", "M", "--port", "65536"], "'--port'"),
        (["serve", "-m", "M", "--workers", "0"], "'--workers'"),
    ],
)
def test_bad_options_are_refused_in_one_line_before_any_work(tmp_path, args, message):
    make_service_metrics(20, seed=0).to_csv(tmp_path / "d.csv", index=False)
    paths = {"D": str(tmp_path / "d.csv"), "M": str(tmp_path / "m")}
    done = _run(*(paths.get(a, a) for a in args))
    assert done.exit_code == 2, done.output
    assert isinstance(done.exception, SystemExit)  # no traceback
    assert message in " ".join(done.stderr.split()).replace("│ │", "")
    assert "trained" not in done.stdout
    assert not (tmp_path / "m").exists()


def test_score_refuses_an_unknown_device_in_one_line(tmp_path):
    done = _run("score", "x.csv", "-m", str(tmp_path), "-o", "o.csv", "--device", "tpu")
    assert done.exit_code == 2 and isinstance(done.exception, SystemExit)
    assert done.stderr.strip() == "error: unknown device 'tpu'; use auto, cpu, cuda, cuda:N or mps"


def test_an_unusable_out_or_registry_is_refused_before_training(tmp_path, monkeypatch):
    from conftest import free_port

    make_service_metrics(50, seed=0).to_csv(tmp_path / "d.csv", index=False)
    (tmp_path / "f").write_text("not a folder")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    train = ("train", str(tmp_path / "d.csv"), "-x", "host_id", "-x", "timestamp", "-x",
             "label", "--epochs", "1")  # fmt: skip
    for out, message in [
        (tmp_path / "f", f"{tmp_path / 'f'} is a file, not a model directory"),
        (tmp_path / "other", f"{tmp_path / 'other'} exists and is not a model directory"),
        (tmp_path / "f" / "m", f"error: {tmp_path / 'f'}: Not a directory"),
    ]:
        done = _run(*train, "--out", str(out))
        assert done.exit_code == 2 and isinstance(done.exception, SystemExit)
        assert message in done.stderr
        assert "trained" not in done.stdout
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    done = _run(*train, "--register", "unreachable")
    assert done.exit_code == 75 and isinstance(done.exception, SystemExit)  # try again later
    assert "cannot reach the MLflow tracking server" in done.stderr
    assert "trained" not in done.stdout


def test_os_errors_are_one_line_with_the_path(tmp_path, monkeypatch):
    import anomaly.persistence

    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(anomaly.persistence, "check_target", refuse)
    done = _run("train", str(tmp_path / "d.csv"), "--out", str(tmp_path / "ro" / "m"))
    assert done.exit_code == 2 and isinstance(done.exception, SystemExit)
    assert done.stderr.strip() == f"error: {tmp_path / 'ro' / 'm'}: Permission denied"


def test_truncated_weights_are_one_line_naming_the_file(tmp_path):
    from anomaly import Detector

    rows = make_service_metrics(200, seed=0)
    det = Detector(exclude=("host_id", "timestamp", "label"), epochs=1, progress=False)
    det.fit(rows).save(tmp_path / "m")
    weights = tmp_path / "m" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:5])
    rows.to_csv(tmp_path / "d.csv", index=False)
    done = _run("score", str(tmp_path / "d.csv"), "-m", str(tmp_path / "m"), "-o",
                str(tmp_path / "o.csv"))  # fmt: skip
    assert done.exit_code == 2 and isinstance(done.exception, SystemExit)
    assert done.stderr.startswith(f"error: {weights} is not a valid safetensors file")
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_reader_gone_is_no_reason_to_try_again():
    """`anomaly evaluate ... | head -1`: BrokenPipeError is a ConnectionError, but no server is
    to be waited for; a scheduler would retry a 75."""
    from anomaly.errors import BAD_INPUT, TRY_LATER, exit_code

    assert exit_code(BrokenPipeError(32, "Broken pipe")) == BAD_INPUT
    assert exit_code(ConnectionRefusedError(111, "Connection refused")) == TRY_LATER


def test_a_bad_service_setting_is_named_as_the_environment_names_it(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from anomaly.cli import app

    monkeypatch.setenv("ANOMALY_MAX_RECORDS", "abc")
    done = CliRunner().invoke(app, ["serve", "--model", str(tmp_path / "m")])
    assert done.exit_code == 2
    assert "bad service settings: ANOMALY_MAX_RECORDS: Input should be a valid integer" in (
        " ".join(done.output.split())
    )
