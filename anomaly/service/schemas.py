"""The service's request and response bodies: the HTTP contract, and its OpenAPI schema."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ScoreRequest(BaseModel):
    records: list[dict[str, Any]] = Field(
        min_length=1,
        description="Rows to score: column name to value. Every trained column is required; "
        "columns the model ignores (excluded at training) are allowed.",
        examples=[[{"cpu": 41.2, "region": "eu-west", "cached": True}]],
    )


class ScoreResult(BaseModel):
    anomaly_score: float = Field(description="Higher = more anomalous")
    is_anomaly: bool = Field(description="anomaly_score above the calibrated threshold")
    p_value: float = Field(description="Conformal p-value against the calibration scores")
    top_features: list[str] = Field(description="Columns that contributed most, most first")


class PointsRequest(BaseModel):
    points: list[dict[str, Any]] = Field(
        min_length=1,
        description="A stream's new points, oldest first: the timestamp and every value column "
        "the model was trained on (a missing value takes the stream's previous one).",
        examples=[[{"timestamp": "2024-05-01T12:00:00Z", "value": 41.2}]],
    )


class PointResult(BaseModel):
    timestamp: Any = Field(description="The point's timestamp, as sent")
    anomaly_score: float | None = Field(
        description="Score of the window ending at this point; null until the window is full"
    )
    is_anomaly: bool | None
    p_value: float | None
    reason: str | None = Field(description="Why there is no score, when there is none")


class ModelRefOut(BaseModel):
    name: str | None
    version: str | None
    uri: str


class ScoreResponse(BaseModel):
    model: ModelRefOut
    threshold: float
    results: list[ScoreResult] = Field(description="One per input record, in input order")


class PointsResponse(BaseModel):
    model: ModelRefOut
    threshold: float = Field(description="Threshold of window scores")
    stream_id: str
    results: list[PointResult] = Field(description="One per point, in input order")


class ImageResult(BaseModel):
    name: str = Field(description="The uploaded file's name")
    anomaly_score: float = Field(description="Higher = more anomalous")
    is_anomaly: bool
    p_value: float
    map_png: str | None = Field(
        None, description="With maps=true: the anomaly map over the image, base64 PNG"
    )


class ImageResponse(BaseModel):
    model: ModelRefOut
    threshold: float
    results: list[ImageResult] = Field(description="One per image, in upload order")


class Drift(BaseModel):
    window: int = Field(description="Recent scores compared")
    psi: float | None = Field(description="Population stability index against calibration")
    ks: float | None = Field(description="Kolmogorov-Smirnov statistic against calibration")
    flag_rate: float | None = Field(description="Share of recent records flagged")
    retrain_suggested: bool = Field(description="psi above ANOMALY_DRIFT_LEVEL")


class ModelInfo(BaseModel):
    name: str | None
    version: str | None
    alias: str | None
    uri: str
    run_id: str | None
    kind: str = Field(description="tabular, sequence or image: the data it scores")
    model: str = Field(description="vae, ae or linear")
    score: str = Field(description="What anomaly_score measures")
    threshold: float = Field(description="Threshold of the scores /v1/score and /invocations give")
    window_threshold: float | None = Field(
        None, description="Sequence models: the threshold of window scores, which streams flag"
    )
    target_fpr: float
    trained_at: str
    loaded_at: str
    schema_: dict = Field(alias="schema", description="Columns, kinds and categories")
    drift: Drift


class ErrorItem(BaseModel):
    loc: list[str | int] = Field(description="Where: e.g. ['body', 'records', 3, 'cpu']")
    msg: str
    type: str


class ErrorResponse(BaseModel):
    detail: list[ErrorItem] | str


class MlflowError(BaseModel):
    """How ``/invocations`` answers bad input: MLflow's shape, as its clients expect."""

    error_code: str = Field(examples=["BAD_REQUEST"])
    message: str = Field(description="What is wrong, naming the column and row")
