"""The training loop, top to bottom: device → data on device → AdamW → epochs → early stop.

Kept as one function on purpose: no trainer class, no callbacks. What it needs to know comes in
a :class:`TrainConfig`; what it learned goes out as the model's best weights and a loss history.

Under ``torchrun`` (data-parallel training, one process per GPU or per share of a CPU's cores)
the same function runs in every process: each trains on its own share of the rows, with its
share of each batch, and torch's ``DistributedDataParallel`` averages the gradients, so every
process takes the same steps and ends with the same weights. Each step is the one a single
process would take on the whole batch, but for the random draws (dropout, input noise, a VAE's
samples), which each process makes for itself. Losses are averaged across processes too, so
all stop early at the same epoch.

On a GPU, a training step of these small models is a few dozen tiny kernels, and launching them
from Python costs more than running them. So there, after a few eager warm-up steps, the whole
step (gather the batch, forward, backward, AdamW) is captured once as a CUDA graph and replayed:
two launches a step instead of ~50, the same arithmetic.
"""

from __future__ import annotations

import atexit
import copy
import logging
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
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


@dataclass(frozen=True)
class Process:
    """This process's place among the processes ``torchrun`` started: its ``rank`` of
    ``world``, and ``local_rank`` on its machine. Without torchrun: the one process, rank 0."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this is the process that reports, saves and registers (rank 0)."""
        return self.rank == 0


def this_process() -> Process:
    """Read from the variables ``torchrun`` sets (WORLD_SIZE, RANK, LOCAL_RANK); without a
    WORLD_SIZE above 1 this is the one process, whatever else is set."""
    env = os.environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        if world <= 1:
            return Process()
        if "RANK" not in env:
            raise InputError(f"torchrun's WORLD_SIZE is {world}, but its RANK is not set")
        place = Process(int(env["RANK"]), world, int(env.get("LOCAL_RANK", "0")))
    except ValueError as exc:
        raise InputError(
            f"torchrun's WORLD_SIZE, RANK and LOCAL_RANK must be whole numbers: {exc}"
        ) from exc
    if not (0 <= place.rank < place.world and place.local_rank >= 0):
        raise InputError(f"torchrun's variables do not fit together: {place}")
    return place


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


def training_device(name: str = "auto") -> torch.device:
    """The device to train on: :func:`resolve_device`'s, but under torchrun ``auto`` and
    ``cuda`` mean this process's own GPU, ``cuda:LOCAL_RANK``, and a GPU named by its number
    (which every process would share) or MPS is refused."""
    place = this_process()
    device = resolve_device(name)
    if place.world == 1 or device.type == "cpu":
        return device
    if device.type == "mps" or device.index is not None:
        raise InputError(
            f"device {name!r} under torchrun: give auto, cuda or cpu; each process then "
            "trains on its own GPU (cuda:LOCAL_RANK) or on the CPU"
        )
    count = torch.cuda.device_count()
    if place.local_rank >= count:  # two processes on one GPU: NCCL would fail, less clearly
        raise InputError(
            f"torchrun started process {place.local_rank} on a machine with {count} CUDA "
            "devices: start one process per GPU"
        )
    return torch.device("cuda", place.local_rank)


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

    The weights kept are those of the epoch with the lowest validation loss. Under torchrun
    every process is given the same rows and trains on its share of them (see the module's
    docstring); ``config.batch_size`` is the batch of all processes together, each taking an
    equal share (rounded down).
    """
    place = this_process()
    distributed = place.world > 1
    # The same number of rows in every process, so that all take the same number of steps
    # (the last len % world rows are left out).
    n = len(x_train) // place.world
    batch_size = min(config.batch_size or auto_batch_size(len(x_train)), len(x_train))
    if n < 1 or batch_size < place.world:
        what = "training rows" if n < 1 else "rows in a batch"
        raise InputError(
            f"too few {what} ({min(len(x_train), batch_size)}) for {place.world} processes"
        )
    batch_size //= place.world  # this process's share of each batch (rounded down)
    if distributed:
        _join_processes(device)
    # Each process its own random numbers (dropout, noise, the VAE's samples, its order of rows)
    seed = (config.seed + place.rank) % 2**64
    torch.manual_seed(seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    model.to(device)
    train_x = to_device(np.ascontiguousarray(x_train[place.rank :: place.world][:n]), device)
    val_x = to_device(np.ascontiguousarray(x_val[place.rank :: place.world]), device)
    loss_of: torch.nn.Module = _Loss(model, config.beta)
    if distributed:  # averages the gradients across processes during backward()
        loss_of = DistributedDataParallel(
            loss_of,
            device_ids=[device] if device.type == "cuda" else None,
            broadcast_buffers=False,  # the only buffers, a VAE's fixed draws, are the same
        )
    # Not as a CUDA graph under torchrun (the gradients' all-reduce is not captured), nor when
    # the data stays in host memory.
    graphed = config.cuda_graph and train_x.is_cuda and not distributed
    # fused: one kernel for the whole update, ~1.5x the steps/s of the default on small models;
    # capturable: its step counter lives on the GPU, as a CUDA graph needs
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config.lr,
        weight_decay=config.weight_decay,
        fused=True,
        capturable=graphed,
    )

    step = _training_step(loss_of, optimizer, train_x, config, device)
    if graphed:
        step = _graphed(step, batch_size, device)
    history: dict[str, list[float]] = {"train_loss": [], "val_loss": []}
    best_loss, best_state, stale = math.inf, copy.deepcopy(model.state_dict()), 0
    bar = tqdm(
        range(config.epochs),
        desc="training",
        unit="epoch",
        disable=not (config.progress and place.is_main),
    )
    for _epoch in bar:
        model.train()
        order = torch.randperm(n, device=device, generator=generator)
        total = torch.zeros((), device=device)
        # Drop the last partial batch: a tiny final batch makes for noisy steps, and every
        # step having one shape is what lets a CUDA graph replay it.
        n_batches = max(1, n // batch_size)
        for i in range(n_batches):
            total += step(order[i * batch_size : (i + 1) * batch_size])
        val_sum, val_count = _loss_sum(model, val_x, config.beta, device)
        sums = torch.stack([total.double() / n_batches, val_sum, val_count])
        if distributed:  # every process gets the same sums, so all stop at the same epoch
            dist.all_reduce(sums)
        train_sum, val_sum, val_count = sums.tolist()  # one device sync per epoch
        train_loss = train_sum / place.world
        val_loss = val_sum / val_count if val_count else math.nan
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


class _Loss(torch.nn.Module):
    """The training loss as a module's forward, the form ``DistributedDataParallel`` wraps (a
    VAE's loss calls its encoder and decoder, not its forward)."""

    def __init__(self, model: torch.nn.Module, beta: float):
        super().__init__()
        self.model, self.beta = model, beta

    def forward(self, x_in: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return training_loss(self.model, x_in, target, self.beta)


def _join_processes(device: torch.device) -> None:
    """Join torchrun's process group, once per process. With no backend named, torch sets up
    both: NCCL for CUDA tensors, gloo for CPU ones, whichever device a later fit trains on."""
    if dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group()
    atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())


def _training_step(
    loss_of: torch.nn.Module,
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
        loss = loss_of(x_in, target)
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
def _loss_sum(
    model: torch.nn.Module, x: torch.Tensor, beta: float, device: torch.device, chunk: int = 65536
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training loss summed over the rows of ``x`` in eval mode (no dropout, no input
    noise), and their number; as tensors on ``device``, to be added up across processes."""
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    # The VAE's sample in the loss is the same at every check, and the training stream of
    # random numbers is left where it was.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        for start in range(0, len(x), chunk):
            xb = x[start : start + chunk].to(device, non_blocking=True)
            total += training_loss(model, xb, xb, beta).double() * len(xb)
    return total, torch.tensor(float(len(x)), dtype=torch.float64, device=device)
