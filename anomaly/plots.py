"""Figures logged with a model or an evaluation. Each function returns a matplotlib Figure.

matplotlib is imported with the Agg backend, so figures render without a screen.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

_SIZE = (6.4, 4.2)


def loss_curve(history: dict[str, list[float]]) -> Figure:
    """Training and validation loss per epoch."""
    fig, ax = plt.subplots(figsize=_SIZE)
    for key, label in (("train_loss", "training"), ("val_loss", "validation")):
        values = history.get(key) or []
        ax.plot(np.arange(1, len(values) + 1), values, label=label)
    ax.set(xlabel="epoch", ylabel="loss", title="Loss per epoch")
    ax.legend()
    fig.tight_layout()
    return fig


def calibration_histogram(scores: np.ndarray, threshold: float, target_fpr: float) -> Figure:
    """Scores of the held-out normal rows, with the threshold they set."""
    fig, ax = plt.subplots(figsize=_SIZE)
    bins = _bins(scores, threshold)
    ax.hist(_clip(scores, bins), bins=bins, color="tab:blue", alpha=0.8)
    _log_axis_if_needed(ax, bins)
    ax.axvline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:.4g}")
    ax.set(
        xlabel="anomaly score",
        ylabel="calibration rows",
        title=f"Calibration scores ({len(scores)} normal rows, target FPR {target_fpr:g})",
    )
    ax.legend()
    fig.tight_layout()
    return fig


def latent_projection(latent: np.ndarray, is_anomaly: np.ndarray | None = None) -> Figure:
    """Latent means in 2-D (their first two principal components when the latent is wider)."""
    points, axes = _first_two_components(latent)
    fig, ax = plt.subplots(figsize=(5.6, 5.2))
    normal = np.ones(len(points), bool) if is_anomaly is None else ~is_anomaly
    ax.scatter(*points[normal].T, s=4, alpha=0.4, color="tab:blue", label="normal")
    if is_anomaly is not None and is_anomaly.any():
        ax.scatter(*points[is_anomaly].T, s=14, marker="x", color="tab:red", label="anomaly")
    ax.set(xlabel=axes[0], ylabel=axes[1], title="Latent means")
    ax.legend(markerscale=2)
    fig.tight_layout()
    return fig


def roc_pr_curves(
    fpr: np.ndarray, tpr: np.ndarray, precision: np.ndarray, recall: np.ndarray, base_rate: float
) -> tuple[Figure, Figure]:
    """An ROC figure and a precision-recall figure."""
    roc, ax = plt.subplots(figsize=(5.2, 5.0))
    ax.plot(fpr, tpr)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set(xlabel="false-positive rate", ylabel="recall", title="ROC")
    roc.tight_layout()
    pr, ax = plt.subplots(figsize=(5.2, 5.0))
    ax.plot(recall, precision)
    ax.axhline(base_rate, color="grey", linestyle=":", label=f"base rate {base_rate:.3g}")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall", ylim=(0, 1.02))
    ax.legend()
    pr.tight_layout()
    return roc, pr


def score_histogram_by_label(scores: np.ndarray, labels: np.ndarray, threshold: float) -> Figure:
    """Score distributions of labelled normal rows and anomalies, with the threshold."""
    fig, ax = plt.subplots(figsize=_SIZE)
    bins = _bins(scores, threshold)
    clipped = _clip(scores, bins)
    # Each group's bars add up to 1, whatever its size and however wide the bins.
    for rows, label, color in ((~labels, "normal", "tab:blue"), (labels, "anomaly", "tab:red")):
        share = np.full(rows.sum(), 1.0 / max(rows.sum(), 1))
        ax.hist(clipped[rows], bins=bins, weights=share, alpha=0.6, label=label, color=color)
    _log_axis_if_needed(ax, bins)
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g}")
    ax.set(xlabel="anomaly score", ylabel="share of the group's rows", title="Scores by label")
    ax.legend()
    fig.tight_layout()
    return fig


def _bins(scores: np.ndarray, threshold: float) -> np.ndarray:
    """60 bins from the lowest score to past the threshold and the bulk of the scores.

    Anomaly scores can span orders of magnitude (a broken row scores 10^6 where normal ones
    score 10): then the bins are even on a symmetric log scale, and the axis says so.
    """
    finite = scores[np.isfinite(scores)]
    if not len(finite):
        return np.linspace(0.0, 1.0, 61)
    low, high = float(finite.min()), max(float(finite.max()), threshold)
    if high <= low:
        high = low + 1.0
    if high - low < 50 * max(abs(threshold), 1.0):
        return np.linspace(low, high, 61)
    to_log = lambda x: np.sign(x) * np.log1p(np.abs(x))  # noqa: E731
    from_log = lambda y: np.sign(y) * np.expm1(np.abs(y))  # noqa: E731
    return from_log(np.linspace(to_log(low), to_log(high), 61))


def _log_axis_if_needed(ax, bins: np.ndarray) -> None:
    widths = np.diff(bins)
    if widths[-1] > 2 * widths[len(widths) // 2]:  # bins from the log branch of _bins
        ax.set_xscale("symlog", linthresh=1.0)


def _clip(scores: np.ndarray, bins: np.ndarray) -> np.ndarray:
    return np.clip(scores, bins[0], bins[-1])


def _first_two_components(latent: np.ndarray) -> tuple[np.ndarray, tuple[str, str]]:
    if latent.shape[1] == 1:
        return np.column_stack([latent[:, 0], np.zeros(len(latent))]), ("z1", "")
    if latent.shape[1] == 2:
        return latent, ("z1", "z2")
    centred = latent - latent.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T, ("PC1 of the latent means", "PC2")
