"""anomaly: autoencoder and VAE anomaly detection with calibrated thresholds.

>>> from anomaly import Detector
>>> det = Detector(model="ae").fit(normal_rows)      # doctest: +SKIP
>>> det.score(new_rows)                              # doctest: +SKIP
"""

from importlib.metadata import PackageNotFoundError, version

from anomaly.detector import Detector
from anomaly.errors import AnomalyError, InputError, ModelFormatError, NotFittedError
from anomaly.image import ImageDetector
from anomaly.persistence import load_detector_dir as load
from anomaly.sequence import SequenceDetector

try:
    __version__ = version("anomaly")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

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
