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


# Run under torchrun (two processes) and alone: the same AE, rows, and full-batch settings.
_DATA_PARALLEL_SCRIPT = """
import json, os, sys
import numpy as np, torch
import anomaly.training
from anomaly.models import DenseAE
from anomaly.training import TrainConfig, this_process, train

seen = {"train": 0, "validation": 0}  # rows this process computed the loss of
loss = anomaly.training.training_loss


def counted(model, x_in, target, beta):
    seen["train" if torch.is_grad_enabled() else "validation"] += len(target)
    return loss(model, x_in, target, beta)


anomaly.training.training_loss = counted
torch.set_num_threads(1)
rng = np.random.default_rng(0)
z = rng.standard_normal((2400, 2)).astype(np.float32)
x = np.concatenate([z, z @ rng.standard_normal((2, 6)).astype(np.float32)], axis=1)
torch.manual_seed(0)
model = DenseAE(8, (16,), 2)
config = TrainConfig(epochs=6, batch_size=2000, patience=50, progress=False)
history = train(model, x[:2000], x[2000:], config, torch.device("cpu"))
weights = {k: v.tolist() for k, v in model.state_dict().items()}
out = os.path.join(sys.argv[1], f"rank{this_process().rank}-of-{this_process().world}.json")
with open(out, "w") as f:
    json.dump({"history": history, "weights": weights, "seen": seen}, f)
"""


def test_torchrun_processes_train_as_one_process_on_the_whole_batch(tmp_path):
    """Two processes, each on half of every batch and of the validation rows, end with the
    weights one process reaches on the whole batch, and with the same weights and loss history
    as each other."""
    import json
    import os
    import subprocess
    import sys

    from conftest import torchrun

    script = tmp_path / "fit.py"
    script.write_text(_DATA_PARALLEL_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    for command in (
        [sys.executable, str(script), str(tmp_path)],
        torchrun(str(script), str(tmp_path)),
    ):
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
    alone, first, second = (
        json.loads((tmp_path / f"rank{n}.json").read_text()) for n in ("0-of-1", "0-of-2", "1-of-2")
    )
    assert alone["seen"] == {"train": 6 * 2000, "validation": 6 * 400}
    assert first["seen"] == second["seen"] == {"train": 6 * 1000, "validation": 6 * 200}
    assert first == second  # the all-reduced gradients keep the processes' weights identical
    assert first["history"]["val_loss"] == pytest.approx(alone["history"]["val_loss"], rel=1e-5)
    assert first["history"]["val_loss"][-1] < first["history"]["val_loss"][0]
    for name, value in alone["weights"].items():
        np.testing.assert_allclose(first["weights"][name], value, rtol=1e-4, atol=1e-5)


def test_torchrun_variables_matter_to_training_only(monkeypatch, fitted_ae, test_rows, tmp_path):
    from anomaly import Detector
    from anomaly.errors import InputError
    from anomaly.training import Process, this_process, training_device

    monkeypatch.setenv("RANK", "1")  # set by something else, without torchrun's WORLD_SIZE
    assert this_process() == Process() and this_process().is_main
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert this_process() == Process(rank=1, world=2, local_rank=0) and not this_process().is_main
    # scoring and loading read no torchrun variables
    fitted_ae.save(tmp_path / "m")
    scores = Detector.load(tmp_path / "m").score_samples(test_rows)
    np.testing.assert_array_equal(scores, fitted_ae.score_samples(test_rows))
    # training refuses what the processes cannot share, before joining the others
    x = np.zeros((10, 8), np.float32)
    for rows, batch, what in ((x[:1], None, r"training rows \(1\)"), (x, 1, r"in a batch \(1\)")):
        with pytest.raises(InputError, match=f"too few (rows )?{what} for 2 processes"):
            config = TrainConfig(epochs=1, batch_size=batch, progress=False)
            train(DenseAE(8, (4,), 2), rows, x, config, torch.device("cpu"))
    assert training_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(InputError, match="WORLD_SIZE, RANK and LOCAL_RANK must be whole"):
        this_process()
    monkeypatch.delenv("RANK")
    with pytest.raises(InputError, match="WORLD_SIZE is 2, but its RANK is not set"):
        this_process()
    # a model loads and scores whatever torchrun's variables say: they are training's
    np.testing.assert_array_equal(Detector.load(tmp_path / "m").score_samples(test_rows), scores)


def test_under_torchrun_each_process_takes_its_own_gpu(monkeypatch):
    """The device mapping alone (CUDA mocked: this runs where there is none)."""
    from anomaly.errors import InputError
    from anomaly.training import training_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert training_device("auto") == training_device("cuda") == torch.device("cuda", 1)
    for shared in ("cuda:0", "cuda:1"):
        with pytest.raises(InputError, match="each process then trains on its own GPU"):
            training_device(shared)
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(InputError, match="start one process per GPU"):
        training_device("auto")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # two processes, one GPU
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(InputError, match="start one process per GPU"):
        training_device("auto")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert training_device("auto") == torch.device("cuda", 0)
