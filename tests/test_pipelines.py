import pandas as pd

from anomaly.datasets import make_service_metrics
from pipelines import batch_score, train


def test_scheduler_entry_points_train_then_score(tmp_path):
    make_service_metrics(600, seed=0).to_csv(tmp_path / "normal.csv", index=False)
    code = train.main([
        "--data", str(tmp_path / "normal.csv"), "--out", str(tmp_path / "model"),
        "--exclude", "host_id", "--exclude", "timestamp", "--exclude", "label",
    ])  # fmt: skip
    assert code == 0
    make_service_metrics(100, 10, seed=1).to_csv(tmp_path / "new.csv", index=False)
    args = ["--model", str(tmp_path / "model"), "--input", str(tmp_path / "new.csv")]
    assert batch_score.main([*args, "--output", str(tmp_path / "out.csv")]) == 0
    assert len(pd.read_csv(tmp_path / "out.csv")) == 110


def test_scheduler_exit_code_for_bad_input(tmp_path, monkeypatch, caplog):
    (tmp_path / "empty.csv").write_text("")
    assert train.main(["--data", str(tmp_path / "empty.csv"), "--out", str(tmp_path / "m")]) == 2
    # What would refuse the model is asked before training: a file in the way, a registry
    # that does not answer (retry later).
    make_service_metrics(300, seed=0).to_csv(tmp_path / "normal.csv", index=False)
    (tmp_path / "afile").write_text("")
    data = [
        "--data",
        str(tmp_path / "normal.csv"),
        "--exclude",
        "host_id",
        "--exclude",
        "timestamp",
    ]
    caplog.clear()
    assert train.main([*data, "--out", str(tmp_path / "afile" / "m")]) == 2
    assert "Not a directory" in caplog.text and "trained" not in caplog.text
    from conftest import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    caplog.clear()
    assert train.main([*data, "--register", "never"]) == 75
    assert "trained" not in caplog.text
    # An output the system refuses is one line, and bad input, as in the CLI.
    model = ["--model", str(tmp_path / "m")]
    train.main([*data, "--exclude", "label", "--out", str(tmp_path / "m")])
    caplog.clear()
    out = str(tmp_path / "afile" / "out.csv")
    assert batch_score.main([*model, "--input", str(tmp_path / "normal.csv"), "--output", out]) == 2
    assert f"{tmp_path / 'afile'}: Not a directory" in caplog.text
    # A network failure MLflow does not wrap (an artifact store's) is worth a retry.
    import requests

    from anomaly import registry

    def unreachable(*args, **kwargs):
        raise requests.ConnectionError("the artifact store did not answer")

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(registry, "log_detector", unreachable)
    assert train.main([*data, "--exclude", "label", "--register", "m"]) == 75


def test_train_under_torchrun_saves_once_from_the_first_process(tmp_path):
    import subprocess
    from pathlib import Path

    from conftest import torchrun

    from anomaly import Detector

    normal = make_service_metrics(600, seed=0).assign(constant=1.0)  # warned of at fit
    normal.to_csv(tmp_path / "normal.csv", index=False)
    command = torchrun(
        "-m", "pipelines.train", "--data", str(tmp_path / "normal.csv"),
        "--out", str(tmp_path / "model"), "--device", "cpu",
        "--exclude", "host_id", "--exclude", "timestamp", "--exclude", "label",
    )  # fmt: skip
    root = Path(__file__).resolve().parents[1]  # pipelines run from the repository root
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=root)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("trained vae; threshold") == 1
    assert done.stderr.count("'constant' is constant") == 1  # not once a process
    assert Detector.load(tmp_path / "model").training_summary_["processes"] == 2
