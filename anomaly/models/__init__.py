"""Torch modules only: no data handling, no devices, no MLflow."""

from anomaly.models.dense import DenseAE, DenseVAE

__all__ = ["DenseAE", "DenseVAE"]
