import numpy as np
import pytest
import torch

from anomaly.models import DenseAE
from anomaly.training import TrainConfig, auto_batch_size, resolve_device, train


def test_auto_batch_size_grows_with_the_data():
    assert auto_batch_size(500) == 128
    assert auto_batch_size(32_768) == 128
    assert auto_batch_size(1_000_000) == 3906
    assert auto_batch_size(10**9) == 8192


def test_device_auto_is_cpu_without_cuda_and_cuda_is_refused_clearly():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")


def test_training_lowers_the_loss_and_keeps_the_best_epoch():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((2000, 2)).astype(np.float32)
    x = np.concatenate([z, z @ rng.standard_normal((2, 6)).astype(np.float32)], axis=1)
    model = DenseAE(8, (16,), 2)
    config = TrainConfig(epochs=30, patience=5, progress=False)
    history = train(model, x[:1600], x[1600:], config, torch.device("cpu"))
    assert len(history["train_loss"]) == len(history["val_loss"]) <= 30
    assert history["val_loss"][-1] < history["val_loss"][0] / 2
    with torch.no_grad():
        val = torch.from_numpy(x[1600:])
        final = ((model(val) - val) ** 2).mean().item()
    assert final == pytest.approx(min(history["val_loss"]), rel=1e-5)
    assert not model.training  # handed back in eval mode
