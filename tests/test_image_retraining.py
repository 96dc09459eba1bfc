"""Retraining an image champion on a real sqlite registry: folders of new normal images and of
known anomalies; drift promotes the challenger; finetune keeps the champion's normalisation and
append adds its images."""

import shutil
import subprocess
import sys
import uuid

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from anomaly import registry
from anomaly.errors import InputError
from anomaly.image import ImageDetector
from anomaly.retraining import retrain

SIZE = 16
SETTINGS = {"size": SIZE, "hidden": (8, 16), "latent": 8, "epochs": 20, "device": "cpu"}


def pictures(n: int, seed: int, flipped: bool = False, defect: bool = False) -> np.ndarray:
    """(n, 16, 16) uint8 diagonal gradients with noise; ``flipped`` runs them the other way (a
    new normal look); a defect is a 4x4 square inverted."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    base = 0.5 * ((1 - x) + y) if flipped else 0.5 * (x + y)
    out = []
    for _ in range(n):
        image = np.clip(base + rng.uniform(-0.2, 0.2) + 0.03 * rng.normal(size=base.shape), 0, 1)
        if defect:
            r, c = rng.integers(2, SIZE - 6, size=2)
            image[r : r + 4, c : c + 4] = 1.0 - image[r : r + 4, c : c + 4]
        out.append((image * 255).astype(np.uint8))
    return np.stack(out)


def folder(path, images: np.ndarray):
    path.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(path / f"i{i:03d}.png")
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def champion(tmp_path):
    first = folder(tmp_path / "first", pictures(200, seed=0))
    detector = ImageDetector(model="ae", **SETTINGS).fit(first)
    name = f"parts-{uuid.uuid4().hex[:8]}"
    registry.log_detector(detector, register=name, data_source=str(first))
    return name, detector


def aliases(name: str) -> dict:
    return {k: str(v) for k, v in MlflowClient().get_registered_model(name).aliases.items()}


def test_a_new_look_promotes_the_challenger_from_the_cli(champion, tmp_path):
    name, _ = champion
    new = folder(tmp_path / "new", pictures(500, seed=1, flipped=True))
    bad = folder(tmp_path / "bad", pictures(40, seed=2, flipped=True, defect=True))
    cli = shutil.which("anomaly", path=str(sys.executable).rsplit("/", 1)[0])
    done = subprocess.run(
        [cli, "retrain", str(new), "--name", name, "--anomalies", str(bad), "--epochs", "20",
         "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "epoch/s" not in done.stderr  # no training bar
    assert "promoted" in done.stdout
    assert aliases(name) == {"champion": "2", "previous": "1", "challenger": "2"}
    run_id = done.stdout.rsplit("run ", 1)[1].split()[0]
    metrics = MlflowClient().get_run(run_id).data.metrics
    assert metrics["gate_holdout_rows"] == 100  # 20% of the new images
    assert metrics["gate_champion_fpr"] > 0.5  # the new look is not what it learned
    assert metrics["gate_challenger_fpr"] <= 0.05
    assert metrics["gate_challenger_auroc"] > 0.9


def test_finetune_keeps_the_normalisation_and_append_adds_the_champions_images(champion, tmp_path):
    name, first = champion
    new = pictures(100, seed=3, flipped=True)
    tuned = retrain(name, new, mode="finetune", epochs=3)
    challenger = registry.load_detector(f"models:/{name}/{tuned.challenger_version}")
    assert challenger.architecture_ == first.architecture_
    assert challenger.normalizer_.to_dict() == first.normalizer_.to_dict()
    if tuned.promoted:
        registry.rollback(name)
    appended = retrain(name, new, mode="append", epochs=3)
    summary = registry.load_detector(
        f"models:/{name}/{appended.challenger_version}"
    ).training_summary_
    assert sum(summary[k] for k in ("n_train", "n_validation", "n_calibration")) == 200 + 80


def test_warm_start_continues_from_the_champions_weights(champion):
    _, first = champion
    images = pictures(100, seed=4)
    warm = ImageDetector(model="ae", **{**SETTINGS, "epochs": 1}, lr=1e-6).fit(
        images, warm_start_from=first
    )
    for name, weights in first.module_.state_dict().items():
        assert torch.allclose(warm.module_.state_dict()[name], weights, atol=1e-4), name
    with pytest.raises(InputError, match="cannot warm-start a 'vae' ImageDetector from a 'ae'"):
        ImageDetector(model="vae", **SETTINGS).fit(images, warm_start_from=first)
    rgb = np.repeat(images[..., None], 3, axis=-1)
    with pytest.raises(InputError, match=r"in_shape \[1, 16, 16\] there, \[3, 16, 16\] here"):
        ImageDetector(model="ae", channels=3, **SETTINGS).fit(rgb, warm_start_from=first)
