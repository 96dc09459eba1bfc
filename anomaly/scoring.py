"""Anomaly scores and training losses: pure functions of a model and a batch.

Every score here is **higher = more anomalous**. Each function returns ``(score, parts)``:
``score`` of shape (B,) and ``parts`` shaped like the input (B, ...), the per-element terms: per
feature for a table (to rank the columns that contributed most), per channel and time step for
a sequence window, per channel and pixel for an image (its anomaly map).

A VAE here is any module with ``encode(x) -> (mu, logvar)`` of shape (B, L), ``decode(z)`` that
maps latents of shape (..., L) to reconstructions of shape (..., *x.shape[1:]), a
``log_scale`` broadcastable to one input, and ``eps``, its (K, L) fixed draws.

- ``reconstruction``: mean squared error between a row and its reconstruction (for a VAE, the
  reconstruction at the posterior mean). ``parts`` add up to ``score``.
- ``elbo``: negative evidence lower bound of a VAE, ``E_q[-log p(x|z)] + KL(q(z|x) || p(z))``,
  the expectation taken over the model's K fixed draws; with none (K = 0), at the posterior
  mean: the one-point Gauss-Hermite rule. That costs one decoder pass instead of K + 1 and
  ranked anomalies about as well as 4 draws on ADBench's tables, NAB's series and the digits
  (BENCHMARKS.md, sections 1, 5 and 7).
- ``iwae``: the importance-weighted bound with the same draws (K >= 1),
  ``-log mean_k p(x, z_k) / q(z_k | x)``, tighter than ``elbo`` for K > 1.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable

import numpy as np
import torch

SCORE_METHODS = ("reconstruction", "elbo", "iwae")
_LOG_2PI = math.log(2 * math.pi)


def gaussian_nll(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Per-feature negative log-likelihood of ``x`` under N(mean, exp(log_scale)^2); (B, F)."""
    return 0.5 * ((x - mean) * torch.exp(-log_scale)) ** 2 + log_scale + 0.5 * _LOG_2PI


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row; (B,)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


def is_vae(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a VAE in the sense above (it has fixed draws for scoring)."""
    return hasattr(model, "eps") and hasattr(model, "decode")


def score_batch(
    model: torch.nn.Module, x: torch.Tensor, method: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score a batch with ``method`` (one of ``SCORE_METHODS``); returns (score, parts)."""
    if method == "reconstruction":
        sq = (model(x) - x) ** 2  # (B, ...)
        parts = sq / x[0].numel()
        return parts.flatten(1).sum(dim=1), parts
    assert is_vae(model), f"{method!r} scores need a VAE"
    mu, logvar = model.encode(x)
    eps = model.eps.unsqueeze(0)  # (1, K, L)
    z = mu.unsqueeze(1) + torch.exp(0.5 * logvar).unsqueeze(1) * eps  # (B, K, L)
    # The posterior mean and the K samples go through the decoder in one pass (at a batch of
    # one row, a pass costs its operations' overhead, not their arithmetic).
    decoded = model.decode(torch.cat([mu.unsqueeze(1), z], dim=1))  # (B, 1 + K, ...)
    # Parts: the squared standardised error at the posterior mean, so that features are ranked
    # by how far off they are, not by their learned scale.
    parts = 0.5 * ((x - decoded[:, 0]) * torch.exp(-model.log_scale)) ** 2
    # Samples on the inner axis: every reduction below runs along contiguous memory, which
    # keeps a row's result independent of how many rows are scored with it.
    if len(model.eps):
        nll = gaussian_nll(x.unsqueeze(1), decoded[:, 1:], model.log_scale)  # (B, K, ...)
    else:  # no draws: the posterior mean's, whose squared part ``parts`` already holds
        nll = (parts + model.log_scale + 0.5 * _LOG_2PI).unsqueeze(1)  # (B, 1, ...)
    log_px_z = -nll.flatten(2).sum(dim=2)  # (B, max(K, 1))
    if method == "elbo":
        return -log_px_z.mean(dim=1) + kl_to_standard_normal(mu, logvar), parts
    if method == "iwae":
        assert len(model.eps), "'iwae' scores need draws (n_samples >= 1)"
        log_pz = -0.5 * (z.pow(2) + _LOG_2PI).sum(dim=2)  # (B, K)
        log_qz = -0.5 * (eps.pow(2) + _LOG_2PI + logvar.unsqueeze(1)).sum(dim=2)  # (B, K)
        log_w = log_px_z + log_pz - log_qz
        log_k = torch.log(torch.tensor(float(log_w.shape[1]), device=x.device))
        return -(torch.logsumexp(log_w, dim=1) - log_k), parts
    raise ValueError(f"unknown score method {method!r}; expected one of {SCORE_METHODS}")


def training_loss(
    model: torch.nn.Module, x_in: torch.Tensor, target: torch.Tensor, beta: float = 1.0
) -> torch.Tensor:
    """Mean loss over a batch: MSE for an autoencoder, the β-weighted negative ELBO for a VAE.

    ``x_in`` may be a corrupted copy of ``target`` (denoising); the loss always reconstructs
    ``target``. The VAE uses one fresh reparameterised sample per row.
    """
    if not is_vae(model):
        return ((model(x_in) - target) ** 2).mean()
    mu, logvar = model.encode(x_in)
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    nll = gaussian_nll(target, model.decode(z), model.log_scale).flatten(1).sum(dim=1)
    return (nll + beta * kl_to_standard_normal(mu, logvar)).mean()


def scoring_blocks(
    device: torch.device, row_size: int = 1, activation_size: int | None = None
) -> tuple[int, int]:
    """(block rows, alignment) for scoring rows of ``row_size`` elements on ``device``.

    Rows are scored in blocks of at most ``block rows``, each padded to a multiple of
    ``alignment``, because a row's score must not depend on the rows scored beside it. CPU
    matrix kernels give a row bit-identical results whenever the block height is a multiple of
    8. GPU libraries pick kernels by height, so there every block is padded to one full height;
    a large one, since a GPU's cost per block is mostly kernel launches. Blocks are also capped
    in elements, so that a block of images fits in memory.

    On a CPU, a block's largest activation (``activation_size`` elements a row, see
    :func:`widest_activation`) is kept to about 2 MiB, so that it stays in cache. Against
    blocks sized by their input alone, one thread, scores came 1.4x (image AE) to 2.7x (table
    AE) faster; a window or image VAE 2x (BENCHMARKS.md, section 6).
    """
    if device.type == "cuda":  # activations of conv models are ~100x the input: 4M elements
        rows = min(262_144, max(16, (1 << 22) // row_size // 16 * 16))
        return rows, rows
    per_row = activation_size or row_size
    return min(8_192, max(16, _CPU_BLOCK_ELEMENTS // per_row // 16 * 16)), 16


_CPU_BLOCK_ELEMENTS = 1 << 19
_widest: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def widest_activation(
    model: torch.nn.Module, row_shape: tuple[int, ...], method: str, device: torch.device
) -> int:
    """Elements per row in the largest output of any of ``model``'s layers when scored with
    ``method``; probed once per model, row shape and method, on 16 rows of zeros.

    Rows of the layer's own batch: a VAE that decodes its K samples as a batch of K times the
    rows counts one sample's activation, which sized blocks best in measurements (window and
    image VAEs: 256-512 and 16-32 rows a block)."""
    known = _widest.setdefault(model, {})
    key = (tuple(row_shape), method)
    if key not in known:
        sizes = [int(np.prod(row_shape, dtype=np.int64))]

        def record(module, inputs, output) -> None:
            for out in output if isinstance(output, tuple) else (output,):
                if isinstance(out, torch.Tensor) and out.dim() > 0 and len(out):
                    # Per row of its own batch: right even for a forward in another thread.
                    sizes.append(out.numel() // len(out))

        leaves = [m for m in model.modules() if next(m.children(), None) is None]
        hooks = [m.register_forward_hook(record) for m in leaves]
        try:
            with torch.inference_mode():
                score_batch(model, torch.zeros(16, *row_shape, device=device), method)
        finally:
            for hook in hooks:
                hook.remove()
        known[key] = max(sizes)
    return known[key]


def model_blocks(
    model: torch.nn.Module, row_shape: tuple[int, ...], method: str, device: torch.device
) -> tuple[int, int]:
    """:func:`scoring_blocks` for ``model``'s rows of ``row_shape`` scored with ``method``."""
    row_size = int(np.prod(row_shape, dtype=np.int64))
    if device.type == "cuda":
        return scoring_blocks(device, row_size)
    return scoring_blocks(device, row_size, widest_activation(model, row_shape, method, device))


@torch.inference_mode()
def score_array(
    model: torch.nn.Module,
    x: np.ndarray,
    method: str,
    device: torch.device,
    reduce_parts: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Scores (n,) of the model-input array ``x`` (n, ...), block by block on ``device``.

    ``reduce_parts`` maps a block's ``parts`` to what the caller keeps of them (per-column sums,
    per-time-step sums, an anomaly map); without it the parts are dropped. ``model`` must be in
    eval mode.
    """
    n = len(x)
    block_rows, align = model_blocks(model, x.shape[1:], method, device)
    scores = np.empty(n, dtype=np.float32)
    kept: np.ndarray | None = None
    for start in range(0, n, block_rows):
        block = torch.from_numpy(x[start : start + block_rows]).to(device)
        rows = len(block)
        padded = -rows % align
        if padded:  # padded where the block is, so a GPU is not sent a block of zeros
            block = torch.cat([block, block.new_zeros(padded, *block.shape[1:])])
        with _full_precision(device):
            s, parts = score_batch(model, block, method)
        scores[start : start + rows] = s[:rows].cpu().numpy()
        if reduce_parts is not None:
            reduced = reduce_parts(parts[:rows]).cpu().numpy()
            if kept is None:
                kept = np.empty((n, *reduced.shape[1:]), dtype=np.float32)
            kept[start : start + rows] = reduced
    if reduce_parts is not None and kept is None:  # no rows
        kept = np.empty((0,), dtype=np.float32)
    return scores, kept


def _full_precision(device: torch.device):
    """cuDNN's convolutions in float32, not TF32 (its default on recent GPUs): a score is a
    small difference of large activations, and TF32's 10-bit mantissa moved window scores by
    a few percent against the CPU's. Training keeps TF32's speed."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    cudnn = torch.backends.cudnn
    return cudnn.flags(
        enabled=cudnn.enabled,
        benchmark=cudnn.benchmark,
        deterministic=cudnn.deterministic,
        allow_tf32=False,
    )
