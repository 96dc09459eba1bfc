"""anomaly: autoencoder and VAE anomaly detection with calibrated thresholds.

>>> from anomaly import Detector
>>> det = Detector(model="ae").fit(normal_rows)      # doctest: +SKIP
>>> det.score(new_rows)                              # doctest: +SKIP
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from anomaly.errors import AnomalyError, InputError, ModelFormatError, NotFittedError

if TYPE_CHECKING:
    from anomaly.detector import Detector
    from anomaly.image import ImageDetector
    from anomaly.persistence import load_detector_dir as load
    from anomaly.sequence import SequenceDetector

try:
    __version__ = version("anomaly")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

# The estimators import torch and pandas, seconds of start-up: they load on first use, so that
# `anomaly --help`, and the CLI's imports of this package's errors, start at once.
_ON_FIRST_USE = {
    "Detector": ("anomaly.detector", "Detector"),
    "ImageDetector": ("anomaly.image", "ImageDetector"),
    "SequenceDetector": ("anomaly.sequence", "SequenceDetector"),
    "load": ("anomaly.persistence", "load_detector_dir"),
}


def __getattr__(name: str):
    if name not in _ON_FIRST_USE:
        raise AttributeError(f"module 'anomaly' has no attribute {name!r}")
    module, attribute = _ON_FIRST_USE[name]
    value = getattr(import_module(module), attribute)
    globals()[name] = value
    return value


__all__ = [
    "AnomalyError",
    "Detector",
    "ImageDetector",
    "InputError",
    "ModelFormatError",
    "NotFittedError",
    "SequenceDetector",
    "__version__",
    "load",
]
