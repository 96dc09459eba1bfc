"""Dense autoencoders for tabular rows."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn


def mlp(sizes: Sequence[int], dropout: float = 0.0, last_activation: bool = False) -> nn.Sequential:
    """Linear layers between consecutive ``sizes``, GELU (and dropout) between them."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.GELU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class DenseAE(nn.Module):
    """Autoencoder: ``n_features -> hidden... -> latent -> ...hidden reversed -> n_features``.

    With ``hidden=()`` it is a linear autoencoder, whose optimum spans the same subspace as PCA
    with ``latent`` components: the baseline every deeper model has to beat.
    """

    def __init__(
        self,
        n_features: int,
        hidden: Sequence[int] = (64, 32),
        latent: int = 8,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.encoder = mlp([n_features, *hidden, latent], dropout)
        self.decoder = mlp([latent, *reversed(hidden), n_features], dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))  # (B, F)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)  # (B, L)


class DenseVAE(nn.Module):
    """Variational autoencoder with a diagonal Gaussian posterior and a Gaussian likelihood.

    The likelihood has one learned scale per feature, so the negative ELBO weighs each
    feature by how well the model can predict it. ``eps`` holds ``n_samples`` fixed standard
    normal draws used at scoring time: every row is scored with the same draws, so a row's score
    is a deterministic function of the row. With none (the default) the score is taken at the
    posterior mean (:mod:`anomaly.scoring`).
    """

    def __init__(
        self,
        n_features: int,
        hidden: Sequence[int] = (64, 32),
        latent: int = 8,
        dropout: float = 0.0,
        n_samples: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        self.trunk = mlp([n_features, *hidden], dropout, last_activation=True) if hidden else None
        width = hidden[-1] if hidden else n_features
        self.mu = nn.Linear(width, latent)
        self.logvar = nn.Linear(width, latent)
        self.decoder = mlp([latent, *reversed(hidden), n_features], dropout)
        self.log_scale = nn.Parameter(torch.zeros(n_features))
        draws = torch.randn(n_samples, latent, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("eps", draws)  # (K, L)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x) if self.trunk is not None else x
        # Clamped so that a wild input cannot overflow exp() in the score.
        return self.mu(h), self.logvar(h).clamp(-12.0, 8.0)  # (B, L), (B, L)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu, _ = self.encode(x)
        return self.decode(mu)  # (B, F): the reconstruction at the posterior mean
