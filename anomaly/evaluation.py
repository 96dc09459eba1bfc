"""How well a detector separates labelled anomalies from normal rows, for users who hold some.

Pure computation: scores and labels in, metrics and curves out. Logging them to MLflow is
:func:`anomaly.registry.log_evaluation`'s job; drawing them is :mod:`anomaly.plots`'.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from anomaly.calibration import count_at_least, count_at_most
from anomaly.data.tabular import FALSE_WORDS, TRUE_WORDS, _show
from anomaly.detector import Detector
from anomaly.errors import InputError

_TRUE = TRUE_WORDS | {"anomaly"}
_FALSE = FALSE_WORDS | {"normal"}


@dataclass
class Evaluation:
    """Metrics (a flat dict of numbers, as logged) and what the plots need."""

    metrics: dict[str, float]
    scores: np.ndarray
    labels: np.ndarray  # bool, True = anomaly
    threshold: float
    curves: dict[str, np.ndarray] = field(default_factory=dict)


def parse_labels(series: pd.Series, column: str) -> np.ndarray:
    """A label column as booleans (True = anomaly): 0/1, true/false, yes/no, anomaly/normal."""
    if pd.api.types.is_bool_dtype(series.dtype):
        values = series.to_numpy()
        if not series.isna().any():
            return values.astype(bool)
    text = series.astype(str).str.strip().str.lower()
    is_true, is_false = text.isin(_TRUE).to_numpy(), text.isin(_FALSE).to_numpy()
    bad = ~(is_true | is_false)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        value = series.iloc[row]
        problem = "the label is missing" if pd.isna(value) else f"{_show(value)} is not a label"
        raise InputError(
            f"label column {column!r}, row {row}: {problem} "
            "(use 1/0, true/false, yes/no or anomaly/normal)",
            column=column,
            row=row,
        )
    return is_true


def evaluate(
    detector: Detector,
    frame: pd.DataFrame,
    label_column: str,
    *,
    target_fpr: float | None = None,
    target_recall: float | None = None,
) -> Evaluation:
    """Score ``frame`` and compare with its labels.

    Metrics: AUROC and AUPRC; FPR, recall and precision at the model's own threshold; and the
    threshold that would give ``target_fpr`` on these normal rows (default: the model's target)
    and, when asked, the one that would reach ``target_recall``, each with the other rate there.
    """
    if label_column not in frame.columns:
        raise InputError(f"no label column {label_column!r} in the data", column=label_column)
    labels = parse_labels(frame[label_column], label_column)
    n_anomalies = int(labels.sum())
    if n_anomalies == 0 or n_anomalies == len(labels):
        raise InputError(
            f"label column {label_column!r} must hold both anomalies and normal rows; "
            f"it has {n_anomalies} anomalies in {len(labels)} rows",
            column=label_column,
        )
    scores = detector.score_samples(frame).astype(np.float64)
    threshold = float(detector.threshold_)
    normal, anomalous = scores[~labels], scores[labels]
    target_fpr = detector.target_fpr if target_fpr is None else target_fpr
    metrics = {
        "rows": float(len(labels)),
        "anomalies": float(n_anomalies),
        "auroc": float(roc_auc_score(labels, scores)),
        "auprc": float(average_precision_score(labels, scores)),
        "threshold": threshold,
        **_rates(normal, anomalous, threshold, suffix="at_threshold"),
        "target_fpr": target_fpr,
        "threshold_for_target_fpr": _threshold_for_fpr(normal, target_fpr),
    }
    metrics |= _rates(normal, anomalous, metrics["threshold_for_target_fpr"], "at_target_fpr")
    if target_recall is not None:
        metrics["target_recall"] = target_recall
        metrics["threshold_for_target_recall"] = _threshold_for_recall(anomalous, target_recall)
        metrics |= _rates(
            normal, anomalous, metrics["threshold_for_target_recall"], "at_target_recall"
        )
    fpr, tpr, _ = roc_curve(labels, scores)
    precision, recall, _ = precision_recall_curve(labels, scores)
    curves = {"fpr": fpr, "tpr": tpr, "precision": precision, "recall": recall}
    return Evaluation(metrics, scores, labels, threshold, curves)


def _rates(normal: np.ndarray, anomalous: np.ndarray, threshold: float, suffix: str) -> dict:
    """A row is flagged when its score is above the threshold, as the detector flags."""
    false_pos, true_pos = int((normal > threshold).sum()), int((anomalous > threshold).sum())
    flagged = false_pos + true_pos
    return {
        f"fpr_{suffix}": false_pos / len(normal),
        f"recall_{suffix}": true_pos / len(anomalous),
        f"precision_{suffix}": true_pos / flagged if flagged else float("nan"),
    }


def _threshold_for_fpr(normal: np.ndarray, target: float) -> float:
    """The lowest threshold that flags at most ``target`` of these normal rows."""
    if not 0.0 <= target < 1.0:
        raise InputError(f"target FPR must be in [0, 1), got {target}")
    allowed = count_at_most(target * len(normal))  # normal rows that may lie above
    ordered = np.sort(normal)
    return float(ordered[len(ordered) - allowed - 1])


def _threshold_for_recall(anomalous: np.ndarray, target: float) -> float:
    """The highest threshold that still flags at least ``target`` of these anomalies."""
    if not 0.0 < target <= 1.0:
        raise InputError(f"target recall must be in (0, 1], got {target}")
    needed = count_at_least(target * len(anomalous))
    kth_highest = np.sort(anomalous)[len(anomalous) - needed]
    return float(np.nextafter(kth_highest, -np.inf))
