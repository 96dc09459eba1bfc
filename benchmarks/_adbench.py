"""ADBench tabular sets: loading, and the split protocol the project's numbers are compared on.

Each ``.npz`` file holds ``X`` (rows x features) and ``y`` (0 normal, 1 anomaly). A set is named
by its file name without the ADBench number: ``6_cardio.npz`` is ``cardio``.

Protocol (the "novelty" setting, training on normal rows only), per seed:

- shuffle the normal rows; the first 60% train, the next 10% calibrate the threshold, the last
  30% go to test;
- test = those normal rows + all anomalies;
- train and test are capped at :data:`MAX_ROWS` rows each by a random choice (seeded).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_ROWS = 20_000
TRAIN_SHARE, CALIBRATION_SHARE = 0.6, 0.1


@dataclass(frozen=True)
class Dataset:
    name: str
    path: Path
    X: np.ndarray  # float64, (rows, features)
    y: np.ndarray  # int8, 1 = anomaly


@dataclass(frozen=True)
class Split:
    """Train and calibration rows are all normal; ``y_test`` marks the anomalies in test."""

    X_train: np.ndarray
    X_cal: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray


def dataset_name(path: str | Path) -> str:
    """``6_cardio.npz`` -> ``cardio``."""
    return re.sub(r"^\d+_", "", Path(path).stem)


def find_datasets(folder: str | Path, names: list[str] | None = None) -> list[Path]:
    """The ``.npz`` files in ``folder``, sorted by set name; only ``names`` when given.

    Names match case-insensitively. An unknown name raises ``ValueError``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"no such data folder: {folder}")
    paths = sorted(folder.glob("*.npz"), key=lambda p: dataset_name(p).lower())
    if not names:
        return paths
    by_name = {dataset_name(p).lower(): p for p in paths}
    unknown = [n for n in names if n.lower() not in by_name]
    if unknown:
        raise ValueError(f"no data set named {unknown} in {folder}; have {sorted(by_name)}")
    return [by_name[n.lower()] for n in names]


def load(path: str | Path) -> Dataset:
    with np.load(path) as data:
        X = np.asarray(data["X"], dtype=np.float64)
        y = np.asarray(data["y"]).astype(np.int8).ravel()
    if X.ndim != 2 or len(X) != len(y) or not np.isin(y, (0, 1)).all():
        raise ValueError(f"{path}: expected X (rows, features) and y of 0/1 per row")
    return Dataset(dataset_name(path), Path(path), X, y)


def split(data: Dataset, seed: int, max_rows: int = MAX_ROWS) -> Split:
    """The protocol's split for one seed (see the module docstring)."""
    rng = np.random.default_rng(seed)
    normal = rng.permutation(np.flatnonzero(data.y == 0))
    n_train = round(TRAIN_SHARE * len(normal))
    n_cal = round(CALIBRATION_SHARE * len(normal))
    train = normal[:n_train]
    cal = normal[n_train : n_train + n_cal]
    test = np.concatenate([normal[n_train + n_cal :], np.flatnonzero(data.y == 1)])
    if len(train) > max_rows:
        train = rng.choice(train, max_rows, replace=False)
    if len(test) > max_rows:
        test = rng.choice(test, max_rows, replace=False)
    return Split(data.X[train], data.X[cal], data.X[test], data.y[test])
