"""GPU checks: they run where CUDA is (the device machine), and are skipped elsewhere (CI).

Run there with ``pytest --noconftest tests/test_gpu.py``: the shared conftest needs MLflow.
"""

from __future__ import annotations

import numpy as np
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
