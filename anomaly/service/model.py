"""The model being served, swapped atomically when the registry's alias moves."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass

import numpy as np

from anomaly import registry
from anomaly.detector import Detector
from anomaly.drift import ScoreDrift
from anomaly.errors import ModelFormatError
from anomaly.persistence import load_detector_dir, read_kind
from anomaly.service import metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """A loaded detector and where it came from. Requests hold one for their whole life."""

    detector: Detector
    ref: registry.ModelRef
    loaded_at: str
    drift: ScoreDrift  # this version's recent scores against its calibration scores

    @property
    def alias(self) -> str | None:
        target = self.ref.uri.removeprefix("models:/")
        return (
            target.split("@", 1)[1]
            if self.ref.uri.startswith("models:/") and "@" in target
            else None
        )

    @property
    def identity(self) -> dict:
        """What answers say about the model that scored them."""
        return {"name": self.ref.name, "version": self.ref.version, "uri": self.ref.uri}

    def record(self, scores: np.ndarray, flagged: np.ndarray) -> None:
        """Count scored records in the metrics and feed this version's drift window."""
        metrics.observe_scores(scores, flagged)
        self.drift.update(scores, flagged)


class ModelHolder:
    """Holds the current :class:`ServedModel`; :meth:`poll_forever` follows an alias.

    Swapping is one reference assignment: a request that took the old model finishes with it,
    the next one gets the new model, and none fails because of the swap.
    """

    def __init__(
        self, uri: str, device: str = "cpu", drift_window: int = 5000, drift_level: float = 0.2
    ):
        self.uri, self.device = uri, device
        self.drift_window, self.drift_level = drift_window, drift_level
        self.current: ServedModel | None = None

    def load(self, ref: registry.ModelRef | None = None) -> ServedModel:
        """Load the model the URI names now (or ``ref``, already resolved), make it current."""
        ref = ref or registry.resolve(self.uri)
        kind = read_kind(ref.path)
        if self.current is not None and kind != self.current.detector.kind:
            # Its routes, clients and stream state differ (and a sequence model may need one
            # worker or Redis, which start-up checks): a new kind needs a restart.
            raise ModelFormatError(
                f"{self.uri} moved to version {ref.version}, a {kind} model; this "
                f"service serves {self.current.detector.kind} models: restart it to serve the "
                "new one"
            )
        detector = load_detector_dir(ref.path, device=self.device)
        # a sequence model is served window by window: compare with its window scores
        reference = getattr(detector, "window_calibrator_", detector.calibrator_).scores_
        drift = ScoreDrift(reference, window=self.drift_window, level=self.drift_level)
        loaded_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        served = ServedModel(detector, ref, loaded_at, drift)
        before = None if self.current is None else (self.current.ref.name, self.current.ref.version)
        self.current = served
        metrics.show_model(ref.name, ref.version, float(detector.threshold_), before)
        log.info("serving %s (name %s, version %s)", self.uri, ref.name, ref.version)
        return served

    @property
    def follows_alias(self) -> bool:
        return self.uri.startswith("models:/") and "@" in self.uri

    async def poll_forever(self, interval: float) -> None:
        """Every ``interval`` seconds, load the alias's version if it moved; keep going on error."""
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self._reload_if_moved)
            except Exception as exc:  # a bad new version must not take the service down
                metrics.MODEL_RELOADS.labels(result="error").inc()
                log.error("reload of %s failed, still serving version %s: %s", self.uri,
                          self.current.ref.version if self.current else None, exc)  # fmt: skip

    def _reload_if_moved(self) -> None:
        ref = registry.resolve(self.uri)  # a registry lookup; downloads only a new version
        if self.current is not None and ref.version == self.current.ref.version:
            return
        self.load(ref)
        metrics.MODEL_RELOADS.labels(result="success").inc()
