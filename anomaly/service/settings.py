"""Service settings, from the environment (``ANOMALY_*``) or from ``anomaly serve``'s options."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every setting of the scoring service; each is read from ``ANOMALY_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="ANOMALY_", protected_namespaces=())

    model_uri: str = Field(description="Model directory or MLflow URI, e.g. models:/NAME@champion")
    api_token: SecretStr | None = Field(
        None, description="When set, scoring endpoints need 'Authorization: Bearer <token>'"
    )
    max_body_bytes: int = Field(16 * 2**20, gt=0, description="Largest request body (413 beyond)")
    max_records: int = Field(10_000, gt=0, description="Most records per request (413 beyond)")
    reload_interval: float = Field(
        30.0, ge=0, description="Seconds between registry polls of an alias URI (0: never)"
    )
    batch_wait_ms: float = Field(
        2.0, ge=0, description="Longest a request waits for others to share its forward pass"
    )
    batch_max_records: int = Field(8192, gt=0, description="Most records in one forward pass")
    stream_batch_lines: int = Field(
        512, gt=0, description="Most NDJSON lines scored together on /v1/score/stream"
    )
    max_line_bytes: int = Field(1 << 20, gt=0, description="Longest NDJSON line on the stream")
    drift_window: int = Field(5000, gt=0, description="Recent scores compared for drift")
    drift_level: float = Field(
        0.2, gt=0, description="PSI above which /v1/model suggests retraining"
    )
    max_streams: int = Field(
        10_000, gt=0, description="Most time-series streams buffered per process (LRU beyond)"
    )
    stream_ttl: float = Field(
        3600.0, gt=0, description="Seconds a stream's buffer lives without a new point"
    )
    stream_redis_url: str | None = Field(
        None,
        description="Keep stream buffers in Redis (redis://host:port/db), shared by workers and "
        "replicas; otherwise they live in each process",
    )
    device: str = Field("cpu", description="Torch device for scoring")
    torch_threads: int = Field(
        1,
        gt=0,
        description="Torch threads per worker. One: a worker scores one batch at a time, and "
        "more threads spin between small operations, taking the cores the workers and the "
        "event loop need; add workers for more cores",
    )

    @field_validator("api_token")
    @classmethod
    def _token_not_empty(cls, token: SecretStr | None) -> SecretStr | None:
        if token is None:
            return None
        # An empty token (a secret that did not arrive) would let "Bearer " through.
        if not token.get_secret_value().strip():
            raise ValueError("is empty; leave it unset for no token, or give one")
        # A secret made from a file often ends in a line break, which no header can carry.
        return SecretStr(token.get_secret_value().strip())
