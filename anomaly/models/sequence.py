"""Autoencoders for windows of a time series: inputs (B, C, W), C value columns, W time steps.

Two encoder-decoder bodies, chosen by ``arch``:

- ``conv`` (the default): 1-D convolutions along time, one of them strided, then a linear map to
  the latent code; the decoder mirrors it (a transposed convolution doubles the length back to
  W steps).
- ``gru``: a GRU reads the window, its last state maps to the latent code; the decoder feeds
  the code to a GRU at every step and reads values out of its states.

Any window length works: nothing requires W to divide by a power of two.
"""

from __future__ import annotations

import torch
from torch import nn

ARCHS = ("conv", "gru")


class _ConvEncoder(nn.Module):
    def __init__(self, channels: int, window: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(channels, hidden, 5, padding=2),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Conv1d(hidden, hidden, 5, stride=2, padding=2),
            nn.GELU(),
            nn.Flatten(),
        )
        self.width = hidden * ((window + 1) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, width)


class _ConvDecoder(nn.Module):
    def __init__(self, channels: int, window: int, hidden: int, latent: int, dropout: float):
        super().__init__()
        self.hidden, self.half, self.window = hidden, (window + 1) // 2, window
        self.inflate = nn.Sequential(nn.Linear(latent, hidden * self.half), nn.GELU())
        # A learned x2 upsampling: torch's linear interpolation kernel on CUDA spends ~1.5 s
        # on 131k windows (it parallelises over the length, not the batch).
        self.upsample = nn.ConvTranspose1d(hidden, hidden, 4, stride=2, padding=1)
        self.net = nn.Sequential(
            nn.GELU(),
            nn.Conv1d(hidden, hidden, 5, padding=2),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Conv1d(hidden, channels, 5, padding=2),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.inflate(z).view(len(z), self.hidden, self.half)
        h = self.upsample(h)[..., : self.window]  # 2 * half is the window, or one more
        return self.net(h)  # (N, C, W)


class _GRUEncoder(nn.Module):
    def __init__(self, channels: int, window: int, hidden: int, dropout: float):
        super().__init__()
        self.gru = nn.GRU(channels, hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.width = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, last = self.gru(x.transpose(1, 2))  # reads (B, W, C)
        return self.dropout(last[0])  # (B, hidden)


class _GRUDecoder(nn.Module):
    def __init__(self, channels: int, window: int, hidden: int, latent: int, dropout: float):
        super().__init__()
        self.window = window
        self.gru = nn.GRU(latent, hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        states, _ = self.gru(z.unsqueeze(1).expand(-1, self.window, -1).contiguous())
        return self.out(self.dropout(states)).transpose(1, 2)  # (N, C, W)


def _bodies(arch: str, channels: int, window: int, hidden: int, latent: int, dropout: float):
    if arch == "conv":
        return (
            _ConvEncoder(channels, window, hidden, dropout),
            _ConvDecoder(channels, window, hidden, latent, dropout),
        )
    if arch == "gru":
        return (
            _GRUEncoder(channels, window, hidden, dropout),
            _GRUDecoder(channels, window, hidden, latent, dropout),
        )
    raise ValueError(f"unknown sequence arch {arch!r}; choose one of {ARCHS}")


class SequenceAE(nn.Module):
    """Window autoencoder: (B, C, W) -> latent (B, L) -> (B, C, W)."""

    def __init__(
        self,
        channels: int,
        window: int,
        latent: int = 8,
        hidden: int = 32,
        arch: str = "conv",
        dropout: float = 0.0,
    ):
        super().__init__()
        self.encoder_body, self.decoder = _bodies(arch, channels, window, hidden, latent, dropout)
        self.to_latent = nn.Linear(self.encoder_body.width, latent)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_latent(self.encoder_body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode(x))


class SequenceVAE(nn.Module):
    """Window VAE: a diagonal Gaussian posterior, a Gaussian likelihood with one learned scale
    per value column, and ``n_samples`` fixed draws ``eps`` for deterministic scoring (as
    :class:`anomaly.models.DenseVAE`)."""

    def __init__(
        self,
        channels: int,
        window: int,
        latent: int = 8,
        hidden: int = 32,
        arch: str = "conv",
        dropout: float = 0.0,
        n_samples: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        self.encoder_body, self.decoder = _bodies(arch, channels, window, hidden, latent, dropout)
        self.mu = nn.Linear(self.encoder_body.width, latent)
        self.logvar = nn.Linear(self.encoder_body.width, latent)
        self.log_scale = nn.Parameter(torch.zeros(channels, 1))
        draws = torch.randn(n_samples, latent, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("eps", draws)  # (K, L)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder_body(x)
        return self.mu(h), self.logvar(h).clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        out = self.decoder(z.reshape(-1, z.shape[-1]))
        return out.view(*lead, *out.shape[1:])  # (..., C, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x)[0])
