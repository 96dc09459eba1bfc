"""ImageDetector: images + normalisation + convolutional autoencoder + calibration.

The image counterpart of :class:`anomaly.Detector`, with the same estimator API (``fit``,
``score_samples``, ``score``, ``save``, ``load``) and the same guarantees: scores are **higher =
more anomalous**, the threshold is calibrated on held-out normal images for a target
false-positive rate, and an image's score does not depend on the images scored with it.

Each image also gets an anomaly map: the score's per-pixel terms summed over channels, from the
same forward pass as the score (for ``reconstruction`` the map sums to the score).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from anomaly.calibration import Calibrator
from anomaly.data.images import ImageNormalizer, ImageSource, image_size, load_images
from anomaly.errors import InputError
from anomaly.estimator import AutoencoderDetector
from anomaly.models.conv2d import ConvAE2d, ConvVAE2d, default_hidden
from anomaly.scoring import score_array
from anomaly.training import auto_batch_size

log = logging.getLogger(__name__)

MODELS = ("ae", "vae")
RESULT_COLUMNS = ("path", "anomaly_score", "is_anomaly", "p_value")
_MIN_TRAIN_IMAGES = 10


class ImageDetector(AutoencoderDetector):
    """Anomaly detector for images, trained on normal images only.

    Scores are **higher = more anomalous**. An image is flagged when its score is above a
    threshold calibrated on held-out normal images for a target false-positive rate.

    Parameters
    ----------
    model : {"ae", "vae"}, default="ae"
        Convolutional autoencoder or variational autoencoder
        (:mod:`anomaly.models.conv2d`).
    size : int or (int, int), default=(32, 32)
        ``(height, width)`` every image is resized to (bilinear); an int means a square. Both
        must be divisible by ``2 ** len(hidden)``.
    channels : {1, 3}, default=1
        Grey or RGB.
    hidden : tuple of int, optional
        Channels of the encoder's stride-2 convolutions; their number is the depth. Default:
        :func:`anomaly.models.conv2d.default_hidden` (halve down to a 4-pixel side).
    latent : int, optional
        Size of the code. Default: ``height * width * channels // 16``, within [8, 64].
    dropout : float, default=0.0
        Dropout after every activation while training.
    denoise : float, default=0.0
        Standard deviation of Gaussian noise added to (standardised) images while training;
        the model learns to reconstruct the clean image.
    beta : float, default=1.0
        Weight of the KL term in the VAE's training loss.
    score : {"reconstruction", "elbo", "iwae"}, optional
        What the score measures. Default: ``reconstruction`` (the mean squared error over
        pixels) for the autoencoder, ``elbo`` (the negative ELBO) for the VAE.
    n_samples : int, default=0
        Fixed draws of the VAE posterior for the ``elbo`` and ``iwae`` scores; 0 takes the
        ``elbo``'s expectation at the posterior mean. As for :class:`anomaly.Detector`.
    target_fpr : float, default=0.01
        False-positive rate the threshold aims for.
    threshold_method : {"quantile", "evt"}, default="quantile"
        See :class:`anomaly.calibration.Calibrator`.
    calibration_fraction : float, default=0.2
        Share of the normal images held out for calibration, when ``fit`` is not given
        ``calibration_data``.
    validation_fraction : float, default=0.1
        Share of the remaining images used for early stopping.
    epochs, lr, weight_decay, patience, seed :
        Training settings; see :class:`anomaly.training.TrainConfig`.
    batch_size : int, optional
        Default: a sixteenth of the training images, within [16, 128] (larger past 32k images,
        as :func:`anomaly.training.auto_batch_size`), so small sets still get several steps
        an epoch.
    device : str, default="auto"
        ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda``, ``cuda:1``...
    progress : bool, default=False
        Show a progress bar while training.

    Attributes
    ----------
    threshold_ : float
        Scores above it are flagged.
    map_scale_ : float
        A reference height for anomaly maps (the 99th percentile over calibration images of
        their hottest pixel): pass it as ``vmax`` to :func:`anomaly.image_maps.save_overlays`.
    image_size_ : (int, int)
        ``(height, width)`` images are resized to.
    normalizer_ : ImageNormalizer
        Per-channel standardisation fitted on the training images.
    module_ : ConvAE2d or ConvVAE2d
        The trained network, in eval mode.
    calibrator_, architecture_, history_, training_summary_ :
        Calibration state, layer sizes, per-epoch losses and what training did.

    Examples
    --------
    >>> det = ImageDetector(size=32).fit("images/normal/")  # doctest: +SKIP
    >>> det.score("images/new/")  # doctest: +SKIP
                   path  anomaly_score  is_anomaly  p_value
    """

    kind = "image"

    def __init__(
        self,
        *,
        model: str = "ae",
        size: int | tuple[int, int] = (32, 32),
        channels: int = 1,
        hidden: tuple[int, ...] | None = None,
        latent: int | None = None,
        dropout: float = 0.0,
        denoise: float = 0.0,
        beta: float = 1.0,
        score: str | None = None,
        n_samples: int = 0,
        target_fpr: float = 0.01,
        threshold_method: str = "quantile",
        calibration_fraction: float = 0.2,
        validation_fraction: float = 0.1,
        epochs: int = 100,
        batch_size: int | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        patience: int = 10,
        seed: int = 0,
        device: str = "auto",
        progress: bool = False,
    ):
        self.model = model
        self.size = size
        self.channels = channels
        self.hidden = tuple(hidden) if isinstance(hidden, list) else hidden  # as saved
        self.latent = latent
        self.dropout = dropout
        self.denoise = denoise
        self.beta = beta
        self.score_method = score
        self.n_samples = n_samples
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
    @property
    def image_size_(self) -> tuple[int, int]:
        """``(height, width)`` the detector reads images at."""
        return image_size(self.size)

    def _check_params(self) -> None:
        if self.model not in MODELS:
            raise InputError(f"unknown model {self.model!r}; choose one of {MODELS}")
        self._check_shared()
        self._check_score()
        if self.channels not in (1, 3):
            raise InputError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels!r}")
        hidden = self._hidden()
        height, width = self.image_size_
        if not hidden:
            raise InputError(
                f"size {(height, width)} is too small or odd for a convolutional encoder: give "
                "sides that are even and at least 8, or hidden=..."
            )
        if height % 2 ** len(hidden) or width % 2 ** len(hidden):
            raise InputError(
                f"size {(height, width)} must be divisible by 2**{len(hidden)} for "
                f"{len(hidden)} stride-2 layers (hidden={hidden})"
            )
        for name in ("calibration_fraction", "validation_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise InputError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {self.batch_size}")
        for name in ("epochs", "patience"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")

    def _hidden(self) -> tuple[int, ...]:
        if self.hidden is not None:
            return tuple(int(h) for h in self.hidden)
        return default_hidden(*self.image_size_)

    def _architecture(self) -> dict:
        height, width = self.image_size_
        latent = self.latent or int(np.clip(height * width * self.channels // 16, 8, 64))
        return {
            "in_shape": [self.channels, height, width],
            "hidden": list(self._hidden()),
            "latent": latent,
        }

    def _build_module(self, arch: dict) -> torch.nn.Module:
        if self.model == "vae":
            return ConvVAE2d(
                arch["in_shape"],
                arch["hidden"],
                arch["latent"],
                self.dropout,
                n_samples=self.n_samples,
                seed=self.seed,
            )
        return ConvAE2d(arch["in_shape"], arch["hidden"], arch["latent"], self.dropout)

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        images: ImageSource,
        calibration_data: ImageSource | None = None,
        *,
        warm_start_from: ImageDetector | None = None,
    ) -> ImageDetector:
        """Learn normal appearance from ``images``, believed normal.

        Parameters
        ----------
        images : folder, file(s) or ndarray
            Normal images, in any form :func:`anomaly.data.images.load_images` reads. Unless
            ``calibration_data`` is given, ``calibration_fraction`` of them is held out to
            calibrate the threshold and never trained on.
        calibration_data : folder, file(s) or ndarray, optional
            Separate normal images for calibration.
        warm_start_from : ImageDetector, optional
            A fitted detector of the same model and shape to continue from: its
            normalisation and architecture are kept, training starts from its weights, and the
            threshold is calibrated anew.

        Returns
        -------
        self
        """
        self._check_before_training()
        # First: a warm start from a model of another shape fails before any image is read.
        arch, module = self._initial_module(warm_start_from, self._architecture)
        x, _ = self._load(images)
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(x))
        if calibration_data is None:
            n_cal = round(self.calibration_fraction * len(x))
            if n_cal < 1:
                raise InputError(
                    f"{len(x)} images leave no calibration images at calibration_fraction="
                    f"{self.calibration_fraction}; give more images or calibration_data"
                )
            cal_idx, order = order[:n_cal], order[n_cal:]
            x_cal = x[np.sort(cal_idx)]
        else:
            x_cal, _ = self._load(calibration_data)
        # evt's least number of calibration images: before training, not after
        Calibrator(target_fpr=self.target_fpr, method=self.threshold_method).check(len(x_cal))
        n_val = round(self.validation_fraction * len(order))
        if len(order) - n_val < _MIN_TRAIN_IMAGES:
            raise InputError(
                f"{len(x)} images are too few: {len(order) - n_val} would be left to train on, "
                f"fewer than {_MIN_TRAIN_IMAGES}"
            )
        val_idx, train_idx = order[:n_val], order[n_val:]
        x_train = x[train_idx]
        if warm_start_from is None:
            normalizer = ImageNormalizer().fit(x_train)  # on the training images only
        else:
            normalizer = warm_start_from.normalizer_
        x_train = normalizer.transform(x_train)
        x_val = normalizer.transform(x[val_idx])

        n_train = len(train_idx)
        batch_size = self.batch_size or _auto_image_batch(n_train)
        run = self._train(module, x_train, x_val, batch_size=batch_size)
        self.normalizer_, self.architecture_ = normalizer, arch
        cal_scores, cal_maps = self._score_normalized(normalizer.transform(x_cal), maps=True)
        self.calibrator_ = Calibrator(target_fpr=self.target_fpr, method=self.threshold_method).fit(
            cal_scores
        )
        self.map_scale_ = _map_scale(cal_maps)
        self.training_summary_ = {
            "n_train": n_train,
            "n_validation": len(val_idx),
            "n_calibration": len(cal_scores),
            "batch_size": batch_size,
            **run,
        }
        return self

    # ------------------------------------------------------------------ score
    @property
    def threshold_(self) -> float:
        self._check_fitted()
        return self.calibrator_.threshold_

    def score_samples(self, images: ImageSource) -> np.ndarray:
        """Raw anomaly scores, float32 of shape (n_images,); higher = more anomalous."""
        self._check_fitted()
        x, _ = self._load(images)
        scores, _ = self._score_normalized(self.normalizer_.transform(x), maps=False)
        return scores

    def anomaly_maps(self, images: ImageSource) -> np.ndarray:
        """Per-pixel anomaly maps, float32 of shape (n_images, height, width).

        A pixel's value is its share of the score (summed over channels); higher = more
        anomalous. For the ``reconstruction`` score a map sums to the image's score; for the
        VAE's scores it is the squared standardised error of the reconstruction at the
        posterior mean.
        """
        return self.score_with_maps(images)[1]

    def score(self, images: ImageSource, names: Sequence[str] | None = None) -> pd.DataFrame:
        """Score images and calibrate the result.

        Parameters
        ----------
        images : folder, file(s) or ndarray
            Images in any form :func:`anomaly.data.images.load_images` reads; they are resized
            and converted to the detector's size and channels.
        names : sequence of str, optional
            What the ``path`` column says, one per image. Default: the names the loader gives
            (file paths, ``file.npz:key[i]``, or ``"0"``, ``"1"``... for an array).

        Returns
        -------
        DataFrame, one row per image in the order read, with columns
            ``path`` (str), ``anomaly_score`` (float32, higher = more anomalous),
            ``is_anomaly`` (bool, score above the threshold) and ``p_value`` (float,
            conformal p-value against the calibration scores).

        Raises
        ------
        InputError
            When an image cannot be read; the message names the file.
        """
        return self.score_with_maps(images, names, maps=False)[0]

    def score_with_maps(
        self, images: ImageSource, names: Sequence[str] | None = None, *, maps: bool = True
    ) -> tuple[pd.DataFrame, np.ndarray | None]:
        """:meth:`score` and :meth:`anomaly_maps` from one pass: (frame, maps (N, H, W)).

        Every scoring path ends here. With ``maps=False`` the maps are not kept (None).
        """
        self._check_fitted()
        x, loaded_names = self._load(images)
        if names is None:
            names = loaded_names
        elif len(names) != len(x):
            raise InputError(f"{len(names)} names given for {len(x)} images")
        scores, kept = self._score_normalized(self.normalizer_.transform(x), maps=maps)
        frame = pd.DataFrame(
            {
                "path": pd.Series(list(names), dtype=str),
                "anomaly_score": scores,
                "is_anomaly": self.calibrator_.flag(scores),
                "p_value": self.calibrator_.p_values(scores),
            }
        )
        return frame, kept

    def _load(self, images: ImageSource) -> tuple[np.ndarray, list[str]]:
        return load_images(images, self.image_size_, self.channels)

    def _score_normalized(self, x: np.ndarray, maps: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Scores (n,) and, when asked, maps (n, H, W) of standardised images (n, C, H, W)."""
        # score_array cuts the images into blocks (on a CPU, sized by the model's activations).
        scores, kept = score_array(
            self.module_,  # in eval mode since fit / load
            x,
            self._score_method(),
            self.device_,
            reduce_parts=(lambda parts: parts.sum(dim=1)) if maps else None,
        )
        if maps and len(x) == 0:
            kept = np.empty((0, *x.shape[2:]), dtype=np.float32)
        return scores, kept

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | Path) -> Path:
        """Write the fitted detector to the directory ``path`` (safetensors + JSON)."""
        self._check_fitted()
        return self._save(
            path,
            normalizer=self.normalizer_.to_dict(),
            calibration=self.calibrator_.to_dict(),
            map_scale=self.map_scale_,
        )

    def _restore_state(self, meta: dict) -> None:
        self.normalizer_ = ImageNormalizer.from_dict(meta["normalizer"])
        self.calibrator_ = Calibrator.from_dict(meta["calibration"])
        self.map_scale_ = float(meta["map_scale"])

    @staticmethod
    def _saved_params(params: dict) -> dict:
        size = params["size"]  # a side, or a list from JSON
        return {**params, "size": tuple(size) if isinstance(size, list) else size}


def _auto_image_batch(n_train: int) -> int:
    """A sixteenth of the images within [16, 128]; :func:`auto_batch_size` past that."""
    if n_train > 32_768:
        return auto_batch_size(n_train)
    return int(np.clip(n_train // 16, 16, 128))


def _map_scale(maps: np.ndarray) -> float:
    """A reference height for anomaly maps: the 99th percentile, over the calibration images,
    of each image's hottest pixel. Overlays drawn with it as full colour show normal images
    cool and anomalies hot."""
    if len(maps) == 0:
        return 1.0
    peak = float(np.quantile(maps.reshape(len(maps), -1).max(axis=1), 0.99))
    return peak if peak > 0 else 1.0
