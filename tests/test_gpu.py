"""GPU checks: they run where CUDA is (the device machine), and are skipped elsewhere (CI).

Run there with ``pytest --noconftest tests/test_gpu.py``: the shared conftest needs MLflow.
"""

from __future__ import annotations

import functools
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import torch

from anomaly import Detector
from anomaly.datasets import make_service_metrics
from anomaly.training import TrainConfig, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

EXCLUDE = ("host_id", "timestamp", "label")


@pytest.fixture(scope="module")
def rows():
    return make_service_metrics(6000, 300, seed=3)


@pytest.mark.parametrize(("model", "noise"), [("ae", 0.0), ("ae", 0.1), ("vae", 0.1)])
def test_cuda_graph_training_matches_eager_training(model, noise):
    """The captured step does the same arithmetic as the eager one. Without randomness the
    losses agree to float rounding; with dropout and input noise (and a VAE's sampling) the
    random draws may be split differently, and training still reaches the same loss."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 12)).astype(np.float32)
    x[:, 6:] = x[:, :6] * 0.5 + 0.1 * x[:, 6:]
    histories = {}
    for graphed in (False, True):
        torch.manual_seed(0)
        module = Detector(model=model, dropout=noise)._build_module(
            {"n_features": 12, "hidden": [32, 16], "latent": 4}
        )
        config = TrainConfig(
            epochs=5, batch_size=512, denoise=noise, progress=False, cuda_graph=graphed
        )
        histories[graphed] = train(module, x[:18_000], x[18_000:], config, torch.device("cuda"))
    eager, graph = histories[False], histories[True]
    print(f"{model} noise={noise}: eager {eager['val_loss']}, graph {graph['val_loss']}")
    if model == "ae" and noise == 0:
        np.testing.assert_allclose(graph["train_loss"], eager["train_loss"], rtol=1e-4)
        np.testing.assert_allclose(graph["val_loss"], eager["val_loss"], rtol=1e-4)
    else:
        np.testing.assert_allclose(graph["val_loss"][-1], eager["val_loss"][-1], rtol=0.05)
    assert graph["val_loss"][-1] < graph["val_loss"][0]


@pytest.mark.parametrize("model", ["ae", "vae"])
def test_gpu_trained_detector_loads_on_cpu_with_the_same_scores(model, rows, tmp_path):
    normal = rows[rows["label"] == 0]
    det = Detector(model=model, exclude=EXCLUDE, epochs=15, device="cuda").fit(normal)
    assert det.training_summary_["device"].startswith("cuda")
    on_gpu = det.score(rows)
    det.save(tmp_path / "m")
    on_cpu = Detector.load(tmp_path / "m").score(rows)
    assert next(Detector.load(tmp_path / "m").module_.parameters()).device.type == "cpu"
    np.testing.assert_allclose(on_cpu["anomaly_score"], on_gpu["anomaly_score"], rtol=1e-4)
    np.testing.assert_allclose(on_cpu["p_value"], on_gpu["p_value"], atol=2e-3)
    agree = (on_cpu["is_anomaly"] == on_gpu["is_anomaly"]).mean()
    assert agree > 0.999


@pytest.mark.parametrize("model", ["ae", "vae"])
def test_gpu_scores_do_not_depend_on_the_other_rows(model, rows):
    """The same row gets the same score alone, in a small batch, or across scoring chunks."""
    normal = rows[rows["label"] == 0]
    det = Detector(model=model, exclude=EXCLUDE, epochs=5, device="cuda").fit(normal)
    big = rows.sample(270_000, replace=True, random_state=0).reset_index(drop=True)
    everything = det.score_samples(big)
    for start, stop in [(0, 1), (0, 7), (100, 1_000), (262_140, 262_150)]:
        np.testing.assert_array_equal(det.score_samples(big[start:stop]), everything[start:stop])


@pytest.mark.parametrize("kind", ["sequence", "image"])
def test_conv_models_train_on_gpu_as_graphs_and_load_on_cpu(kind, tmp_path):
    """Window and image models: a CUDA-graph fit reaches the eager fit's loss, and the model
    trained on the GPU scores the same on the CPU."""
    from anomaly.datasets import make_metric_series
    from anomaly.image import ImageDetector
    from anomaly.sequence import SequenceDetector

    if kind == "sequence":
        data = make_metric_series(1500, 2, seed=0)
        test = make_metric_series(400, 2, anomalies=(200,), seed=1)

        def make(**kw):
            return SequenceDetector(series_col="host", exclude=["label"], window=24, **kw)
    else:
        rng = np.random.default_rng(0)
        y, x = np.mgrid[0:16, 0:16] / 16
        data = np.clip(0.5 * (x + y) + rng.uniform(-0.2, 0.2, (600, 1, 1)), 0, 1)[:, None]
        data = data.astype(np.float32)
        test = data[:50].copy()
        test[:10, :, 4:8, 4:8] = 1.0

        def make(**kw):
            return ImageDetector(size=16, **kw)

    losses = {}
    for graphed in (False, True):
        det = make(epochs=8, patience=100, device="cuda")
        config = functools.partial(TrainConfig, cuda_graph=graphed)
        with mock.patch("anomaly.estimator.TrainConfig", config):
            det.fit(data)
        losses[graphed] = det.history_["val_loss"][-1]
    print(f"{kind}: eager {losses[False]:.6g}, graph {losses[True]:.6g}")
    np.testing.assert_allclose(losses[True], losses[False], rtol=0.05)
    on_gpu = det.score_samples(test)
    det.save(tmp_path / "m")
    on_cpu = type(det).load(tmp_path / "m").score_samples(test)
    np.testing.assert_allclose(on_cpu, on_gpu, rtol=1e-3, atol=1e-6)


def test_a_table_file_scored_on_the_gpu_gets_the_dataframe_scores(rows, tmp_path):
    """Batch scoring runs blocks from several threads at once; on a GPU they share one device
    and still give each row the score ``score`` gives it."""
    from anomaly.batch import score_csv
    from anomaly.data.tabular import read_csv

    det = Detector(model="vae", exclude=EXCLUDE, epochs=5, device="cuda")
    det.fit(rows[rows["label"] == 0])
    path, out = tmp_path / "in.csv", tmp_path / "out.csv"
    rows.to_csv(path, index=False)
    score_csv(det, path, out, block_size=64 << 10, progress=False)
    # Arrow parses floats exactly; pandas 3.0 can be one ulp off, which p-values would show
    written, expected = pd.read_csv(out, engine="pyarrow"), det.score(read_csv(path))
    np.testing.assert_array_equal(
        written["anomaly_score"].to_numpy(np.float32), expected["anomaly_score"]
    )
    np.testing.assert_array_equal(written["p_value"], expected["p_value"])
    assert (written["top_features"] == expected["top_features"]).all()


def test_a_series_file_streamed_on_the_gpu_gets_the_whole_files_scores(tmp_path, monkeypatch):
    """Streamed passes differ in size from the whole file's; padded blocks keep a window's
    score independent of them on a GPU too."""
    import anomaly.sequence
    from anomaly.batch import score_csv
    from anomaly.data.tabular import read_csv
    from anomaly.datasets import make_metric_series
    from anomaly.sequence import SequenceDetector

    det = SequenceDetector(series_col="host", exclude=["label"], window=24, epochs=3, device="cuda")
    det.fit(make_metric_series(1200, 2))
    frame = make_metric_series(2000, 3, anomalies=(900,), seed=1, shuffle=False)
    path, out = tmp_path / "in.csv", tmp_path / "out.csv"
    frame.sort_values(["timestamp", "host"], kind="stable").to_csv(path, index=False)
    monkeypatch.setattr(anomaly.sequence, "_POINTS_AT_ONCE", 200)
    score_csv(det, path, out, block_size=8192, progress=False)
    written, expected = pd.read_csv(out), det.score(read_csv(path))
    np.testing.assert_array_equal(
        written["anomaly_score"].to_numpy(np.float32), expected["anomaly_score"]
    )
    assert written["is_anomaly"].sum() > 0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_torchrun_trains_one_model_on_two_gpus(rows, tmp_path):
    """Data-parallel over NCCL: each process on its own GPU, the first saves the model."""
    import subprocess
    import sys
    from pathlib import Path

    from sklearn.metrics import roc_auc_score

    rows[rows["label"] == 0].to_csv(tmp_path / "normal.csv", index=False)
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [
        str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "anomaly.cli", "train",
        str(tmp_path / "normal.csv"), "--model", "vae", "--epochs", "40", "--no-progress",
        *(a for c in EXCLUDE for a in ("--exclude", c)), "--out", str(tmp_path / "model"),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("cuda:0 x 2 processes") == 1, done.stdout
    detector = Detector.load(tmp_path / "model")
    assert roc_auc_score(rows["label"], detector.score_samples(rows)) > 0.95
