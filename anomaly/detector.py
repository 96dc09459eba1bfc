"""Detector: schema + preprocessing + autoencoder + calibration, with fit / score / save / load.

Every consumer (CLI, batch scoring, and later the MLflow model and the HTTP service) scores
through :meth:`Detector.score`; none re-implements a step of it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch

from anomaly.calibration import Calibrator
from anomaly.data.tabular import TabularSchema, with_text_names
from anomaly.errors import InputError
from anomaly.estimator import AutoencoderDetector
from anomaly.models import DenseAE, DenseVAE
from anomaly.preprocessing import TabularPreprocessor, map_columns
from anomaly.scoring import score_array

log = logging.getLogger(__name__)

MODELS = ("ae", "vae", "linear")
RESULT_COLUMNS = ("anomaly_score", "is_anomaly", "p_value", "top_features")
_MIN_TRAIN_ROWS = 10


class Detector(AutoencoderDetector):
    """Anomaly detector for tables, trained on normal rows only.

    Scores are **higher = more anomalous**. A row is flagged when its score is above a threshold
    calibrated on held-out normal rows for a target false-positive rate.

    Parameters
    ----------
    model : {"vae", "ae", "linear"}, default="vae"
        Dense variational autoencoder (the best default in BENCHMARKS.md), dense autoencoder,
        or a linear autoencoder (the PCA-like baseline).
    hidden : tuple of int, optional
        Hidden layer widths of the encoder (the decoder mirrors them). Default: chosen from
        the input width. Ignored for ``linear``.
    latent : int, optional
        Size of the bottleneck. Default: chosen from the input width.
    dropout : float, default=0.0
        Dropout between hidden layers while training.
    denoise : float, default=0.0
        Standard deviation of Gaussian noise added to (standardised) inputs while training; the
        model learns to reconstruct the clean row.
    beta : float, default=1.0
        Weight of the KL term in the VAE's training loss (the ELBO when 1).
    score : {"reconstruction", "elbo", "iwae"}, optional
        What the score measures. Default: ``reconstruction`` for autoencoders, ``elbo`` (the
        negative ELBO) for the VAE. ``iwae`` is the importance-weighted bound with
        ``n_samples`` samples.
    n_samples : int, default=0
        Fixed draws of the VAE posterior over which the ``elbo`` and ``iwae`` scores take
        their expectations. With 0, the ``elbo`` takes it at the posterior mean: one decoder
        pass per row instead of ``n_samples + 1``, and as good a ranking on ADBench as 4
        draws (BENCHMARKS.md, section 1). ``iwae`` needs at least 1.
    exclude : str or sequence of str, default=()
        Columns the model must not read (ids, timestamps, labels).
    max_categories : int, default=64
        Most levels kept per categorical column; rarer levels count as unseen.
    target_fpr : float, default=0.01
        False-positive rate the threshold aims for.
    threshold_method : {"quantile", "evt"}, default="quantile"
        See :class:`anomaly.calibration.Calibrator`.
    calibration_fraction : float, default=0.2
        Share of the normal rows held out for calibration, when ``fit`` is not given
        ``calibration_data``.
    validation_fraction : float, default=0.1
        Share of the remaining rows used for early stopping.
    epochs, batch_size, lr, weight_decay, patience, seed :
        Training settings; see :class:`anomaly.training.TrainConfig`. ``batch_size=None``
        picks one from the number of training rows (:func:`anomaly.training.auto_batch_size`).
    device : str, default="auto"
        ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda``, ``cuda:1``...
    progress : bool, default=False
        Show a progress bar while training.

    Examples
    --------
    >>> det = Detector(model="ae", exclude=["id"]).fit(normal_df)  # doctest: +SKIP
    >>> det.score(new_df)  # doctest: +SKIP
       anomaly_score  is_anomaly  p_value  top_features
    """

    kind = "tabular"

    def __init__(
        self,
        *,
        model: str = "vae",
        hidden: tuple[int, ...] | None = None,
        latent: int | None = None,
        dropout: float = 0.0,
        denoise: float = 0.0,
        beta: float = 1.0,
        score: str | None = None,
        n_samples: int = 0,
        exclude: str | tuple[str, ...] | list[str] = (),
        max_categories: int = 64,
        target_fpr: float = 0.01,
        threshold_method: str = "quantile",
        calibration_fraction: float = 0.2,
        validation_fraction: float = 0.1,
        epochs: int = 200,
        batch_size: int | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        patience: int = 20,
        seed: int = 0,
        device: str = "auto",
        progress: bool = False,
    ):
        self.model = model
        self.hidden = tuple(hidden) if isinstance(hidden, list) else hidden  # as saved
        self.latent = latent
        self.dropout = dropout
        self.denoise = denoise
        self.beta = beta
        self.score_method = score
        self.n_samples = n_samples
        self.exclude = (exclude,) if isinstance(exclude, str) else tuple(exclude)
        self.max_categories = max_categories
        self.target_fpr = target_fpr
        self.threshold_method = threshold_method
        self.calibration_fraction = calibration_fraction
        self.validation_fraction = validation_fraction
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.patience = patience
        self.seed = seed
        self.device = device
        self.progress = progress

    # ------------------------------------------------------------------ parameters
    def _check_params(self) -> None:
        if self.model not in MODELS:
            raise InputError(f"unknown model {self.model!r}; choose one of {MODELS}")
        self._check_shared()
        self._check_score()
        for name in ("calibration_fraction", "validation_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise InputError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {self.batch_size}")
        for name in ("epochs", "patience", "max_categories"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")

    def _architecture(self, n_features: int) -> dict:
        """Layer sizes, chosen from the input width unless given."""
        latent = self.latent or int(np.clip(n_features // 4, 2, 16))
        if self.model == "linear":
            hidden: tuple[int, ...] = ()
        elif self.hidden is not None:
            hidden = tuple(int(h) for h in self.hidden)
        else:
            first = int(np.clip(2 * n_features, 32, 256))
            hidden = (first, max(first // 2, latent))
        return {"n_features": n_features, "hidden": list(hidden), "latent": latent}

    def _build_module(self, arch: dict) -> torch.nn.Module:
        if self.model == "vae":
            return DenseVAE(
                arch["n_features"],
                arch["hidden"],
                arch["latent"],
                self.dropout,
                n_samples=self.n_samples,
                seed=self.seed,
            )
        return DenseAE(arch["n_features"], arch["hidden"], arch["latent"], self.dropout)

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        X: pd.DataFrame,
        calibration_data: pd.DataFrame | None = None,
        *,
        warm_start_from: Detector | None = None,
    ) -> Detector:
        """Learn normal behaviour from ``X``, rows believed normal.

        Parameters
        ----------
        X : DataFrame
            Normal rows. Unless ``calibration_data`` is given, ``calibration_fraction`` of them
            is held out to calibrate the threshold and never trained on.
        calibration_data : DataFrame, optional
            Separate normal rows for calibration.
        warm_start_from : Detector, optional
            A fitted detector of the same model and shape to continue from: its schema and
            preprocessing are kept (so its input features mean the same), training starts from
            its weights, and the threshold is calibrated anew on ``X``'s calibration rows.

        Returns
        -------
        self

        Notes
        -----
        Under ``torchrun``, give every process the same rows: each trains on its share, the
        gradients are averaged, and every process ends with the same fitted detector (see
        :mod:`anomaly.training`). Save or register it from one process, the one whose
        ``anomaly.training.this_process().is_main`` is true.
        """
        self._check_before_training()
        X = _as_frame(X)
        if warm_start_from is None:
            schema = TabularSchema.infer(
                X, exclude=self.exclude, max_categories=self.max_categories
            )
        else:
            warm_start_from._check_fitted()
            schema = warm_start_from.schema_
        columns = schema.coerce(X)
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(X))
        if calibration_data is None:
            n_cal = round(self.calibration_fraction * len(X))
            if n_cal < 1:
                raise InputError(
                    f"{len(X)} rows leave no calibration rows at calibration_fraction="
                    f"{self.calibration_fraction}; give more rows or calibration_data"
                )
            cal_idx, order = order[:n_cal], order[n_cal:]
            cal_columns = _take(columns, cal_idx)
        else:
            calibration_data = _as_frame(calibration_data)
            n_cal, cal_columns = len(calibration_data), schema.coerce(calibration_data)
        calibrator = Calibrator(target_fpr=self.target_fpr, method=self.threshold_method)
        calibrator.check(n_cal)  # evt's least number of rows: before training, not after
        n_val = round(self.validation_fraction * len(order))
        if len(order) - n_val < _MIN_TRAIN_ROWS:
            raise InputError(
                f"{len(X)} rows are too few: {len(order) - n_val} would be left to train on, "
                f"fewer than {_MIN_TRAIN_ROWS}"
            )
        val_idx, train_idx = order[:n_val], order[n_val:]

        train_columns = _take(columns, train_idx)
        if warm_start_from is None:
            preprocessor = TabularPreprocessor(schema).fit(train_columns)
        else:
            preprocessor = warm_start_from.preprocessor_
        x_train = preprocessor.transform(train_columns)
        x_val = preprocessor.transform(_take(columns, val_idx))

        arch, module = self._initial_module(
            warm_start_from, lambda: self._architecture(preprocessor.n_features_)
        )
        run = self._train(module, x_train, x_val)
        self.schema_, self.preprocessor_, self.architecture_ = schema, preprocessor, arch
        self._to_columns = None
        cal_scores, cal_parts = self._score_matrix(preprocessor.transform(cal_columns))
        # Columns are ranked by how unusual their error is for them: a column that is hard to
        # reconstruct on normal rows (noise, a many-level category) does not top every list.
        self.typical_contribution_ = np.maximum(cal_parts.mean(axis=0), 1e-12)
        self.calibrator_ = calibrator.fit(cal_scores)
        self.training_summary_ = {
            "n_train": len(train_idx),
            "n_validation": len(val_idx),
            "n_calibration": len(cal_scores),
            **run,
        }
        return self

    # ------------------------------------------------------------------ score
    @property
    def threshold_(self) -> float:
        self._check_fitted()
        return self.calibrator_.threshold_

    def score_samples(self, X: pd.DataFrame) -> np.ndarray:
        """Raw anomaly scores, float32 of shape (n_rows,); higher = more anomalous."""
        self._check_fitted()
        x = self.preprocessor_.transform(self.schema_.coerce(_as_frame(X)))
        scores, _ = self._score_matrix(x)
        return scores

    @torch.no_grad()
    def encode(self, X: pd.DataFrame) -> np.ndarray:
        """Latent codes of rows, shape (n_rows, latent): the posterior means for a VAE."""
        self._check_fitted()
        x = self.preprocessor_.transform(self.schema_.coerce(_as_frame(X)))
        codes = self.module_.eval().encode(torch.from_numpy(x).to(self.device_))
        if isinstance(codes, tuple):  # a VAE's (mean, log-variance)
            codes = codes[0]
        return codes.cpu().numpy()

    def score(self, X: pd.DataFrame, *, row_offset: int = 0, n_top: int = 3) -> pd.DataFrame:
        """Score rows and calibrate the result.

        Parameters
        ----------
        X : DataFrame
            Rows with (at least) the columns the detector was trained on.
        row_offset : int, default=0
            Added to row positions in error messages (for callers scoring a file in chunks).
        n_top : int, default=3
            How many columns ``top_features`` names.

        Returns
        -------
        DataFrame, indexed like ``X``, with columns
            ``anomaly_score`` (float32, higher = more anomalous), ``is_anomaly`` (bool, score
            above the threshold), ``p_value`` (float, conformal p-value against the
            calibration scores) and ``top_features`` (the columns whose error is most unusual
            for them, most first, joined by ``;``).

        Raises
        ------
        InputError
            When a trained column is missing or holds a bad value; the message names the
            column and the first bad row.
        """
        self._check_fitted()
        X = _as_frame(X)
        result = self.score_columns(self.schema_.coerce(X, row_offset=row_offset), n_top=n_top)
        frame = pd.DataFrame({name: result[name] for name in RESULT_COLUMNS[:3]}, index=X.index)
        frame["top_features"] = result["top_features"].to_numpy(zero_copy_only=False)
        return frame

    def score_columns(self, columns: dict[str, np.ndarray], *, n_top: int = 3) -> dict:
        """:meth:`score` for columns already checked by the schema; arrays, not a DataFrame.

        Every scoring path ends here. Returns a dict of the result columns: numpy arrays, and
        ``top_features`` as an Arrow string array.
        """
        self._check_fitted()
        if n_top < 1:
            raise ValueError(f"n_top must be at least 1, got {n_top}")
        x = self.preprocessor_.transform(columns)
        scores, contributions = self._score_matrix(x)
        flagged = self.calibrator_.flag(scores)
        # Which columns to name. Any row: the columns whose error is most unusual for them.
        # A flagged row: the columns whose replacement by a typical value lowers its score most,
        # since a strong anomaly is partly absorbed by the latent code and then shows up as
        # error in other columns. Both are per-row, so a row's answer never depends on others.
        relevance = contributions / self.typical_contribution_
        if flagged.any():
            relevance[flagged] = self._score_drops(x[flagged], scores[flagged])
        return {
            "anomaly_score": scores,
            "is_anomaly": flagged,
            "p_value": self.calibrator_.p_values(scores),
            "top_features": self._top_features(relevance, n_top),
        }

    def _score_drops(self, x: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """(n, n_columns): how much each row's score falls when one column is made typical."""
        typical, owner = self.preprocessor_.typical_input(), self.preprocessor_.feature_owner_
        n_columns = len(self.schema_.columns)
        # Every (row, column) variant in one pass: rows are scored independently, so stacking
        # them changes no score and costs one forward pass instead of one per column.
        variants = np.repeat(x[None], n_columns, axis=0)  # (C, n, F)
        for column in range(n_columns):
            features = owner == column
            variants[column][:, features] = typical[features]
        changed = self._score_matrix(variants.reshape(-1, x.shape[1]))[0].reshape(n_columns, -1)
        return (scores[None] - changed).T.astype(np.float32)

    def _score_matrix(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores (n,) and per-column contributions (n, n_columns) of a model-input matrix."""
        to_columns = self._feature_to_column()
        scores, contributions = score_array(
            self.module_,  # in eval mode since fit / load
            x,
            self._score_method(),
            self.device_,
            reduce_parts=lambda parts: parts @ to_columns,
        )
        if len(x) == 0:
            contributions = np.empty((0, len(self.schema_.columns)), dtype=np.float32)
        return scores, contributions

    def _feature_to_column(self) -> torch.Tensor:
        """(F, C) indicator on the scoring device: ``parts @ it`` sums each column's features."""
        cached = getattr(self, "_to_columns", None)
        if cached is None or cached.device != self.device_:
            owner = torch.from_numpy(self.preprocessor_.feature_owner_)
            n_columns = len(self.schema_.columns)
            cached = torch.nn.functional.one_hot(owner, n_columns).float().to(self.device_)
            self._to_columns = cached
        return cached

    def _top_features(self, relevance: np.ndarray, n_top: int) -> pa.Array:
        """Names of the ``n_top`` most relevant columns of each row, most relevant first."""
        n, n_columns = relevance.shape
        n_top = min(n_top, n_columns)
        if n == 0:
            return pa.array([], pa.string())
        top = torch.topk(torch.from_numpy(relevance), n_top, dim=1).indices.numpy()  # (n, n_top)
        # Far fewer rankings occur than rows: build each one's text once (in Arrow, not a
        # Python loop), then index. factorize hashes; np.unique would sort.
        shape = (n_columns,) * n_top
        inverse, distinct = pd.factorize(np.ravel_multi_index(tuple(top.T), shape))
        names = pa.array(self.schema_.names, pa.string())
        places = [names.take(pa.array(place)) for place in np.unravel_index(distinct, shape)]
        return pc.binary_join_element_wise(*places, ";").take(pa.array(inverse))

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | Path) -> Path:
        """Write the fitted detector to the directory ``path`` (safetensors + JSON)."""
        self._check_fitted()
        return self._save(
            path,
            schema=self.schema_.to_dict(),
            preprocessor=self.preprocessor_.to_dict(),
            calibration=self.calibrator_.to_dict(),
            typical_contribution=self.typical_contribution_.tolist(),
        )

    def _restore_state(self, meta: dict) -> None:
        self.schema_ = TabularSchema.from_dict(meta["schema"])
        self.preprocessor_ = TabularPreprocessor.from_dict(self.schema_, meta["preprocessor"])
        self.calibrator_ = Calibrator.from_dict(meta["calibration"])
        self.typical_contribution_ = np.asarray(meta["typical_contribution"], dtype=np.float32)
        if self.typical_contribution_.shape != (len(self.schema_.columns),):
            raise ValueError("typical_contribution has not one value per column")
        if self.preprocessor_.n_features_ != self.architecture_["n_features"]:
            raise ValueError("the schema's columns do not make the model's inputs")


def _as_frame(X: pd.DataFrame | np.ndarray) -> pd.DataFrame:
    if isinstance(X, pd.DataFrame):
        return with_text_names(X)
    if isinstance(X, np.ndarray) and X.ndim == 2:
        return pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])
    raise InputError(f"expected a DataFrame or a 2-D array, got {type(X).__name__}")


def _take(columns: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    """Rows ``idx`` of every column; columns gathered on several threads (numpy gathers
    without the GIL), as fitting a million rows spent a tenth of its time here on a GPU."""
    gathered = map_columns(lambda values: values[idx], columns.values())
    return dict(zip(columns, gathered, strict=True))
