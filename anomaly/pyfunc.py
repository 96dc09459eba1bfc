"""The MLflow pyfunc form of a detector, with no pickled code.

An MLflow model of a detector is its model directory (safetensors + JSON) under ``data/`` and
``loader_module: anomaly.pyfunc`` in the MLmodel file. MLflow imports this module from the
installed package and calls :func:`_load_pyfunc`; ``predict`` is the detector's ``score``: for
a table and a sequence model, the input rows with the result columns appended.
"""

from __future__ import annotations

import binascii
from typing import Any

import numpy as np
import pandas as pd

from anomaly.detector import RESULT_COLUMNS, Detector, _as_frame
from anomaly.errors import InputError
from anomaly.persistence import load_detector_dir

DATA_DIR = "detector"  # the model directory's name under the MLflow model's data/


class DetectorModel:
    """What ``mlflow.pyfunc.load_model`` wraps: a loaded detector with MLflow's ``predict``."""

    def __init__(self, detector: Detector):
        self.detector = detector

    def predict(self, model_input: Any, params: dict | None = None) -> pd.DataFrame:
        """The input's columns followed by the result columns, as ``anomaly score`` writes.

        (Through ``mlflow.pyfunc.load_model``, MLflow has already kept only the signature's
        columns, in its order.)"""
        return with_scores(self.detector, _as_frame(model_input))


IMAGE_COLUMN = "image"  # an image model's input: PNG or JPEG bytes, or their base64 text


def with_scores(detector, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` (minus any old result columns) with the detector's result columns appended.

    For an image model, the ``image`` column (encoded bytes or base64 text) is scored and left
    out of the answer; other columns (a name, an id) pass through.
    """
    if detector.kind == "sequence":
        return with_results(frame, detector.score(frame))
    if detector.kind == "image":
        if IMAGE_COLUMN not in frame.columns:
            raise InputError(f"missing column {IMAGE_COLUMN!r}", column=IMAGE_COLUMN)
        images = decode_images(detector, frame[IMAGE_COLUMN].tolist())
        names = [str(i) for i in range(len(images))]
        result, _ = detector.score_with_maps(images, names, maps=False)
        return with_results(frame.drop(columns=[IMAGE_COLUMN]).reset_index(drop=True), result)
    return with_results(frame, detector.score_columns(detector.schema_.coerce(frame)))


def decode_images(detector, encoded: list) -> np.ndarray:
    """(n, C, H, W) images at the detector's size from PNG/JPEG bytes or base64 text; an
    undecodable one is an error naming its row."""
    from anomaly.data.images import b64decode_text, decode_image

    out = np.empty((len(encoded), detector.channels, *detector.image_size_), dtype=np.float32)
    for row, value in enumerate(encoded):
        if isinstance(value, str):
            try:
                value = b64decode_text(value)  # wrapped in lines or not
            except binascii.Error:
                raise InputError(
                    f"row {row}: {IMAGE_COLUMN!r} is neither image bytes nor base64 text",
                    column=IMAGE_COLUMN,
                    row=row,
                ) from None
        if not isinstance(value, bytes | bytearray):
            raise InputError(
                f"row {row}: {IMAGE_COLUMN!r} must be PNG/JPEG bytes or base64 text",
                column=IMAGE_COLUMN,
                row=row,
            )
        try:
            out[row] = decode_image(bytes(value), detector.image_size_, detector.channels,
                                    name=f"row {row}")  # fmt: skip
        except InputError as exc:
            raise InputError(str(exc), column=IMAGE_COLUMN, row=row) from None
    return out


def with_results(frame: pd.DataFrame, result) -> pd.DataFrame:
    """``frame`` (minus any old result columns) followed by the result columns of ``result``
    (from ``score_columns``, or a detector's ``score``)."""
    out = frame.drop(columns=[c for c in RESULT_COLUMNS if c in frame.columns])
    for name in RESULT_COLUMNS:
        if name not in result:
            continue
        values = result[name]
        if isinstance(values, pd.Series):
            values = values.to_numpy()
        out[name] = values.to_numpy(zero_copy_only=False) if name == "top_features" else values
    return out


def _load_pyfunc(data_path: str) -> DetectorModel:
    """MLflow's entry point: ``data_path`` is the model directory MLflow copied into data/."""
    return DetectorModel(load_detector_dir(data_path))


def signature(detector: Detector):
    """Input: the columns the detector reads; output: the result columns.

    Input types are ``any``: the detector checks values itself, accepts what ``anomaly score``
    accepts (numbers as integers, floats or text) and names the column and row of a bad value.
    For a table, trained columns are required and ignored ones (excluded, all missing at fit)
    optional, so that they pass through to the output as they do in ``anomaly score``. A
    sequence model reads its time, series and value columns, and the other columns of its
    training data are optional likewise; an image model reads its ``image`` column.
    """
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    outputs = [
        ColSpec("float", "anomaly_score"),
        ColSpec("boolean", "is_anomaly"),
        ColSpec("double", "p_value"),
    ]
    if detector.kind == "image":
        inputs = [ColSpec(AnyType(), IMAGE_COLUMN)]
    elif detector.kind == "sequence":
        inputs = [ColSpec(AnyType(), name) for name in detector.schema_.names]
        inputs += [ColSpec(AnyType(), name, required=False) for name in detector.schema_.ignored]
    else:
        inputs = [ColSpec(AnyType(), name) for name in detector.schema_.names]
        inputs += [ColSpec(AnyType(), name, required=False) for name in detector.schema_.ignored]
        outputs.append(ColSpec("string", "top_features"))
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))
