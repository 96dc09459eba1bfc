"""Anomaly scores and training losses: pure functions of a model and a batch.

Every score here is **higher = more anomalous**. Each function returns ``(score, parts)``:
``score`` of shape (B,) and ``parts`` of shape (B, F), the per-feature terms used to rank which
input columns contributed most.

- ``reconstruction``: mean squared error between a row and its reconstruction (for a VAE, the
  reconstruction at the posterior mean). ``parts`` add up to ``score``.
- ``elbo``: negative evidence lower bound of a VAE, ``E_q[-log p(x|z)] + KL(q(z|x) || p(z))``,
  the expectation taken over the model's fixed draws.
- ``iwae``: the importance-weighted bound with the same draws,
  ``-log mean_k p(x, z_k) / q(z_k | x)``, tighter than ``elbo`` for K > 1.
"""

from __future__ import annotations

import math

import torch

from anomaly.models import DenseVAE

SCORE_METHODS = ("reconstruction", "elbo", "iwae")
_LOG_2PI = math.log(2 * math.pi)


def gaussian_nll(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Per-feature negative log-likelihood of ``x`` under N(mean, exp(log_scale)^2); (B, F)."""
    return 0.5 * ((x - mean) * torch.exp(-log_scale)) ** 2 + log_scale + 0.5 * _LOG_2PI


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row; (B,)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


def score_batch(
    model: torch.nn.Module, x: torch.Tensor, method: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score a batch with ``method`` (one of ``SCORE_METHODS``); returns (score, parts)."""
    if method == "reconstruction":
        sq = (model(x) - x) ** 2  # (B, F)
        parts = sq / x.shape[1]
        return parts.sum(dim=1), parts
    assert isinstance(model, DenseVAE), f"{method!r} scores need a VAE"
    mu, logvar = model.encode(x)
    # Parts: the squared standardised error at the posterior mean, so that features are ranked
    # by how far off they are, not by their learned scale.
    parts = 0.5 * ((x - model.decode(mu)) * torch.exp(-model.log_scale)) ** 2
    eps = model.eps.unsqueeze(0)  # (1, K, L)
    z = mu.unsqueeze(1) + torch.exp(0.5 * logvar).unsqueeze(1) * eps  # (B, K, L)
    # Samples on the inner axis: every reduction below runs along contiguous memory, which
    # keeps a row's result independent of how many rows are scored with it.
    log_px_z = -gaussian_nll(x.unsqueeze(1), model.decode(z), model.log_scale).sum(dim=2)  # (B, K)
    if method == "elbo":
        return -log_px_z.mean(dim=1) + kl_to_standard_normal(mu, logvar), parts
    if method == "iwae":
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
    if not isinstance(model, DenseVAE):
        return ((model(x_in) - target) ** 2).mean()
    mu, logvar = model.encode(x_in)
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    nll = gaussian_nll(target, model.decode(z), model.log_scale).sum(dim=1)
    return (nll + beta * kl_to_standard_normal(mu, logvar)).mean()
