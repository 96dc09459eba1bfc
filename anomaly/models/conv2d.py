"""Convolutional autoencoders for images (B, C, H, W).

The encoder is a stack of 3x3 stride-2 convolutions, each halving height and width, then a
linear layer to the latent code; the decoder mirrors it with 4x4 stride-2 transposed
convolutions and ends in a 3x3 convolution back to C channels (no output activation: inputs
are standardised). ``hidden`` gives the channels of the stride-2 layers, so its length is the
depth, and H and W must be divisible by ``2 ** len(hidden)``.

:func:`default_hidden` picks the depth from the image size: halve until the smaller side would
fall below 4 (at most 4 layers), with 32, 64, 128, 128 channels. So 8x8 images get one layer
(down to 4x4), 16x16 two, 32x32 three and 64x64 four.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

_MIN_SIDE = 4  # the smallest feature map default_hidden goes down to
_MAX_DEPTH = 4


def default_hidden(height: int, width: int) -> tuple[int, ...]:
    """Channels of the stride-2 layers for (height, width) images (see the module docstring)."""
    depth = 0
    while (
        depth < _MAX_DEPTH
        and height % 2 ** (depth + 1) == 0
        and width % 2 ** (depth + 1) == 0
        and min(height, width) // 2 ** (depth + 1) >= _MIN_SIDE
    ):
        depth += 1
    return tuple(min(32 * 2**i, 128) for i in range(depth))


def _activation(dropout: float) -> list[nn.Module]:
    return [nn.GELU(), nn.Dropout(dropout)] if dropout > 0 else [nn.GELU()]


class ConvEncoder(nn.Module):
    """(B, C, H, W) -> (B, hidden[-1] * H/2^d * W/2^d): stride-2 convolutions, flattened."""

    def __init__(self, in_shape: Sequence[int], hidden: Sequence[int], dropout: float = 0.0):
        super().__init__()
        channels, height, width = in_shape
        scale = 2 ** len(hidden)
        assert len(hidden) >= 1, "at least one stride-2 layer"
        assert height % scale == 0 and width % scale == 0, (
            f"height and width ({height}, {width}) must be divisible by 2**{len(hidden)}"
        )
        layers: list[nn.Module] = []
        for n_in, n_out in zip((channels, *hidden[:-1]), hidden, strict=True):
            layers += [nn.Conv2d(n_in, n_out, 3, stride=2, padding=1), *_activation(dropout)]
        self.layers = nn.Sequential(*layers, nn.Flatten())
        self.out_features = hidden[-1] * (height // scale) * (width // scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)  # (B, F)


class ConvDecoder(nn.Module):
    """(B, L) -> (B, C, H, W): a linear layer to the smallest feature map, then upsampling."""

    def __init__(
        self, in_shape: Sequence[int], hidden: Sequence[int], latent: int, dropout: float = 0.0
    ):
        super().__init__()
        channels, height, width = in_shape
        scale = 2 ** len(hidden)
        top = hidden[-1]
        layers: list[nn.Module] = [
            nn.Linear(latent, top * (height // scale) * (width // scale)),
            *_activation(dropout),
            nn.Unflatten(1, (top, height // scale, width // scale)),
        ]
        widths = list(reversed(hidden))
        for n_in, n_out in zip(widths, [*widths[1:], widths[-1]], strict=True):
            layers += [
                nn.ConvTranspose2d(n_in, n_out, 4, stride=2, padding=1),
                *_activation(dropout),
            ]
        layers.append(nn.Conv2d(widths[-1], channels, 3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(z)  # (B, C, H, W)


class ConvAE2d(nn.Module):
    """Convolutional autoencoder: image -> latent code -> image.

    Parameters
    ----------
    in_shape : (int, int, int)
        ``(C, H, W)`` of one image.
    hidden : sequence of int, default=(32, 64)
        Channels of the stride-2 convolutions (see the module docstring).
    latent : int, default=16
        Size of the code.
    dropout : float, default=0.0
        Dropout after every activation while training.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        hidden: Sequence[int] = (32, 64),
        latent: int = 16,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.encoder = ConvEncoder(in_shape, hidden, dropout)
        self.to_latent = nn.Linear(self.encoder.out_features, latent)
        self.decoder = ConvDecoder(in_shape, hidden, latent, dropout)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_latent(self.encoder(x))  # (B, L)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode(x))  # (B, C, H, W)


class ConvVAE2d(nn.Module):
    """Convolutional VAE: diagonal Gaussian posterior, Gaussian likelihood per pixel.

    It meets the VAE contract of :mod:`anomaly.scoring`: ``encode`` gives the posterior's mean
    and log-variance (B, L); ``decode`` maps latents (..., L) to images (..., C, H, W);
    ``log_scale`` (C, 1, 1) is the learned log standard deviation of each channel's pixels;
    ``eps`` holds ``n_samples`` fixed standard normal draws (K, L) used at scoring time, so an
    image's score is a deterministic function of the image.

    Parameters
    ----------
    in_shape, hidden, latent, dropout :
        As :class:`ConvAE2d`.
    n_samples : int, default=0
        Number of fixed draws (none: the score is taken at the posterior mean).
    seed : int, default=0
        Seed of the generator of the draws.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        hidden: Sequence[int] = (32, 64),
        latent: int = 16,
        dropout: float = 0.0,
        n_samples: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.encoder = ConvEncoder(in_shape, hidden, dropout)
        self.mu = nn.Linear(self.encoder.out_features, latent)
        self.logvar = nn.Linear(self.encoder.out_features, latent)
        self.decoder = ConvDecoder(in_shape, hidden, latent, dropout)
        self.log_scale = nn.Parameter(torch.zeros(in_shape[0], 1, 1))
        draws = torch.randn(n_samples, latent, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("eps", draws)  # (K, L)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        # Clamped so that a wild input cannot overflow exp() in the score.
        return self.mu(h), self.logvar(h).clamp(-12.0, 8.0)  # (B, L), (B, L)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        x = self.decoder(z.reshape(-1, z.shape[-1]))  # (prod(lead), C, H, W)
        return x.reshape(*lead, *self.in_shape)  # (..., C, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu, _ = self.encode(x)
        return self.decode(mu)  # (B, C, H, W): the reconstruction at the posterior mean
