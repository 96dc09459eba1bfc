"""The training loop, top to bottom: device → data on device → AdamW → epochs → early stop.

Kept as one function on purpose: no trainer class, no callbacks. What it needs to know comes in
a :class:`TrainConfig`; what it learned goes out as the model's best weights and a loss history.

On a GPU, a training step of these small models is a few dozen tiny kernels, and launching them
from Python costs more than running them. So there, after a few eager warm-up steps, the whole
step (gather the batch, forward, backward, AdamW) is captured once as a CUDA graph and replayed:
two launches a step instead of ~50, the same arithmetic.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from anomaly.errors import InputError
from anomaly.scoring import training_loss

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs: int = 200  # upper bound; early stopping usually ends sooner
    batch_size: int | None = None  # None: auto_batch_size(rows)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 20  # epochs without a better validation loss before stopping
    denoise: float = 0.0  # std of Gaussian noise added to inputs while training (0 = off)
    beta: float = 1.0  # weight of the KL term of a VAE's ELBO
    seed: int = 0
    progress: bool = True
    cuda_graph: bool = True  # replay the step as a CUDA graph on a GPU (off: eager, to compare)

    def to_dict(self) -> dict:
        return asdict(self)


DEVICE_FORMS = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` means CUDA when present, else CPU; else one of :data:`DEVICE_FORMS`, which
    must be present here. Anything else is an :class:`~anomaly.errors.InputError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):  # "tpu", "cpu:abc": torch's own words are about C++
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"unknown device {name!r}; use {DEVICE_FORMS}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r} was asked for, but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(
                f"device {name!r} was asked for, but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {name!r} was asked for, but MPS is not available here")
    return device


def auto_batch_size(n_rows: int) -> int:
    """128 rows up to 32k rows (small sets need many steps), then growing to 8192 (big sets
    need large batches to keep a GPU busy): about 256 steps an epoch past 32k rows."""
    return int(min(8192, max(128, n_rows // 256)))


def to_device(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """Move a whole matrix to the device when it fits in half the free memory, else pin it."""
    tensor = torch.from_numpy(x)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if tensor.nbytes > free // 2:
            log.info("training data (%.1f GB) stays in pinned host memory", tensor.nbytes / 1e9)
            return tensor.pin_memory()
    return tensor.to(device)


def train(
    model: torch.nn.Module,
    x_train: np.ndarray,
    x_val: np.ndarray,
    config: TrainConfig,
    device: torch.device,
) -> dict[str, list[float]]:
    """Fit ``model`` in place on normal rows; returns the per-epoch loss history.

    The weights kept are those of the epoch with the lowest validation loss.
    """
    torch.manual_seed(config.seed)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    model.to(device)
    train_x, val_x = to_device(x_train, device), to_device(x_val, device)
    graphed = config.cuda_graph and train_x.is_cuda  # not when the data stays in host memory
    # fused: one kernel for the whole update, ~1.5x the steps/s of the default on small models;
    # capturable: its step counter lives on the GPU, as a CUDA graph needs
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config.lr,
        weight_decay=config.weight_decay,
        fused=True,
        capturable=graphed,
    )

    n = len(train_x)
    batch_size = min(config.batch_size or auto_batch_size(n), n)
    step = _training_step(model, optimizer, train_x, config, device)
    if graphed:
        step = _graphed(step, batch_size, device)
    history: dict[str, list[float]] = {"train_loss": [], "val_loss": []}
    best_loss, best_state, stale = math.inf, copy.deepcopy(model.state_dict()), 0
    bar = tqdm(range(config.epochs), desc="training", unit="epoch", disable=not config.progress)
    for _epoch in bar:
        model.train()
        order = torch.randperm(n, device=device, generator=generator)
        total = torch.zeros((), device=device)
        # Drop the last partial batch: a tiny final batch makes for noisy steps, and every
        # step having one shape is what lets a CUDA graph replay it.
        n_batches = max(1, n // batch_size)
        for i in range(n_batches):
            total += step(order[i * batch_size : (i + 1) * batch_size])
        train_loss = total.item() / n_batches  # one device sync per epoch
        val_loss = evaluate_loss(model, val_x, config.beta, device)
        history["train_loss"].append(train_loss)
        history["val_loss"].append(val_loss)
        bar.set_postfix(train=f"{train_loss:.4g}", val=f"{val_loss:.4g}")
        if not math.isfinite(train_loss):
            raise FloatingPointError(
                "training diverged (loss is not finite); lower the learning rate"
            )
        monitored = val_loss if math.isfinite(val_loss) else train_loss  # no validation rows
        if best_loss == math.inf or monitored < best_loss - 1e-6 * abs(best_loss):
            best_loss, best_state, stale = monitored, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    return history


Step = Callable[[torch.Tensor], torch.Tensor]


def _training_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    train_x: torch.Tensor,
    config: TrainConfig,
    device: torch.device,
) -> Step:
    """One optimisation step on the rows ``idx`` of ``train_x``; returns the batch's loss."""

    def step(idx: torch.Tensor) -> torch.Tensor:
        target = train_x[idx.to(train_x.device)].to(device, non_blocking=True)
        x_in = target
        if config.denoise > 0:
            x_in = target + config.denoise * torch.randn_like(target)
        loss = training_loss(model, x_in, target, config.beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def _graphed(step: Step, batch_size: int, device: torch.device, warm_up: int = 3) -> Step:
    """``step`` captured as a CUDA graph after ``warm_up`` eager steps (PyTorch's recipe for
    whole-network capture: warm up on a side stream, capture with gradients unset, replay).

    The warm-up steps are real steps on real batches, so training is the same whichever way
    it runs. Random numbers (dropout, denoising, the VAE's sample) come from the default CUDA
    generator, which graphs advance on every replay.
    """
    static_idx = torch.zeros(batch_size, dtype=torch.long, device=device)
    graph: torch.cuda.CUDAGraph | None = None
    static_loss = torch.zeros((), device=device)
    eager_steps = 0
    side = torch.cuda.Stream(device)

    def graphed_step(idx: torch.Tensor) -> torch.Tensor:
        nonlocal graph, static_loss, eager_steps
        static_idx.copy_(idx)
        if graph is not None:
            graph.replay()
            return static_loss.clone()
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            if eager_steps < warm_up:
                static_loss = step(static_idx)
            else:
                try:
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, stream=side):
                        static_loss = step(static_idx)
                except RuntimeError as exc:  # an op of this model cannot be captured
                    log.warning("training eagerly: the step cannot be a CUDA graph (%s)", exc)
                    graph, eager_steps = None, -(10**18)  # never try again
                    static_loss = step(static_idx)
        torch.cuda.current_stream(device).wait_stream(side)
        eager_steps += 1
        if graph is not None:  # capture records the step without running it
            graph.replay()
        return static_loss.clone()

    return graphed_step


@torch.no_grad()
def evaluate_loss(
    model: torch.nn.Module, x: torch.Tensor, beta: float, device: torch.device, chunk: int = 65536
) -> float:
    """Mean training loss over ``x`` in eval mode (no dropout, no input noise)."""
    if len(x) == 0:
        return math.nan
    model.eval()
    total = 0.0
    # The VAE's sample in the loss is the same at every check, and the training stream of
    # random numbers is left where it was.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        for start in range(0, len(x), chunk):
            xb = x[start : start + chunk].to(device, non_blocking=True)
            total += training_loss(model, xb, xb, beta).item() * len(xb)
    return total / len(x)
