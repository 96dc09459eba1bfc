"""The service's endpoints. Each one: take the current model, turn the body into columns, await
the batcher, write the answer. No scoring logic lives here."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import AsyncIterator
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, File, HTTPException, Path, Query, Request, UploadFile
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from anomaly.errors import InputError
from anomaly.pyfunc import decode_images, with_results, with_scores
from anomaly.service import metrics
from anomaly.service.inputs import (
    lines_to_columns,
    parse_invocations,
    parse_line,
    parse_points_body,
    parse_records,
    records_to_columns,
)
from anomaly.service.model import ServedModel
from anomaly.service.schemas import (
    ErrorResponse,
    ImageResponse,
    MlflowError,
    ModelInfo,
    PointsRequest,
    PointsResponse,
    ScoreRequest,
    ScoreResponse,
)
from anomaly.streams import StoreUnavailable, parse_points

scoring = APIRouter(tags=["scoring"])
operations = APIRouter(tags=["operations"])

_ERRORS = {
    401: {"model": ErrorResponse, "description": "Missing or wrong bearer token"},
    413: {"model": ErrorResponse, "description": "Body or record count over the limit"},
    422: {"model": ErrorResponse, "description": "Bad input: names the field and record"},
    409: {"model": ErrorResponse, "description": "The model scores another kind of data"},
    503: {"model": ErrorResponse, "description": "No model loaded"},
}


class DuplexStreamingResponse(StreamingResponse):
    """Answers while the request body is still arriving.

    Starlette's StreamingResponse listens for a client disconnect by reading ``receive``, which
    would swallow the body's chunks; here the body iterator is the only reader, and it sees a
    disconnect as ``ClientDisconnect``.
    """

    async def __call__(self, scope, receive, send) -> None:
        await self.stream_response(send)


def _raw_body(media_types: dict[str, str]) -> dict:
    """OpenAPI for a body the route reads itself: media type -> JSON schema type."""
    content = {media: {"schema": {"type": kind}} for media, kind in media_types.items()}
    return {"requestBody": {"content": content, "required": True}}


def _json_body(model: type[BaseModel]) -> dict:
    """OpenAPI for a JSON body the route reads itself, in ``model``'s shape."""
    content = {"application/json": {"schema": model.model_json_schema()}}
    return {"requestBody": {"content": content, "required": True}}


# Dependencies are coroutines: FastAPI runs a plain function in a thread pool, a thread hop
# per dependency per request.
def _served(request: Request) -> ServedModel:
    served = request.app.state.holder.current
    if served is None:
        raise HTTPException(503, "no model loaded")
    return served


async def current_model(request: Request) -> ServedModel:
    return _served(request)


# Where each kind of model is scored, besides /invocations
ENDPOINTS = {
    "tabular": "/v1/score",
    "sequence": "/v1/streams/{stream_id}/points",
    "image": "/v1/score/image",
}


def _model_of_kind(request: Request, kind: str) -> ServedModel:
    served = _served(request)
    if served.detector.kind != kind:
        raise HTTPException(
            409,
            f"the model scores {served.detector.kind} data: use "
            f"{ENDPOINTS[served.detector.kind]} or /invocations",
        )
    return served


async def table_model(request: Request) -> ServedModel:
    return _model_of_kind(request, "tabular")


async def sequence_model(request: Request) -> ServedModel:
    return _model_of_kind(request, "sequence")


async def image_model(request: Request) -> ServedModel:
    return _model_of_kind(request, "image")


Model = Annotated[ServedModel, Depends(current_model)]
TableModel = Annotated[ServedModel, Depends(table_model)]
SequenceModel = Annotated[ServedModel, Depends(sequence_model)]
ImageModel = Annotated[ServedModel, Depends(image_model)]


def _check_count(request: Request, n: int) -> None:
    limit = request.app.state.settings.max_records
    if n > limit:
        raise HTTPException(413, f"{n} records in one request; the limit is {limit}")


@scoring.post(
    "/v1/score",
    response_model=ScoreResponse,
    responses=_ERRORS,
    summary="Score records",
    # The body is parsed by orjson and checked by parse_records, not by pydantic: at 1,000
    # records that is a third of the time. The schema still documents it.
    openapi_extra=_json_body(ScoreRequest),
)
async def score(request: Request, served: TableModel) -> Response:
    """Scores, flags, p-values and top features of each record, in input order."""
    records = parse_records(await request.body())
    _check_count(request, len(records))
    columns = records_to_columns(served.detector, records)
    result = await request.app.state.batcher.score(served, columns, len(records))
    payload = {
        "model": served.identity,
        "threshold": float(served.detector.threshold_),
        "results": _results(result),
    }
    return _json(payload)


@scoring.post(
    "/invocations",
    # MLflow's error shape and status for bad input, as `mlflow models serve` answers
    responses={
        **{code: answer for code, answer in _ERRORS.items() if code != 422},
        400: {"model": MlflowError, "description": "Bad input: names the column and row"},
    },
    summary="MLflow's scoring protocol",
    openapi_extra=_raw_body({"application/json": "object", "text/csv": "string"}),
)
async def invocations(request: Request, served: Model) -> Response:
    """``dataframe_split``, ``dataframe_records``, ``instances`` or ``inputs`` JSON, or CSV, as
    ``mlflow models serve`` takes them; answers ``{"predictions": [...]}`` with each row's input
    columns and its scores, as the MLflow pyfunc's ``predict`` returns them."""
    detector = served.detector
    frame = parse_invocations(
        await request.body(),
        request.headers.get("content-type", ""),
        schema=detector.schema_ if detector.kind == "tabular" else None,
        as_text=detector.schema_.text_columns if detector.kind == "sequence" else (),
    )
    _check_count(request, len(frame))
    if served.detector.kind == "tabular":
        columns = served.detector.schema_.coerce(frame)
        result = await request.app.state.batcher.score(served, columns, len(frame))
        out = with_results(frame, result)
    else:  # a sequence's rows are scored together, as the pyfunc does
        out = await asyncio.to_thread(with_scores, served.detector, frame)
        scores = out["anomaly_score"].to_numpy(np.float32, na_value=np.nan)
        flagged = out["is_anomaly"].to_numpy(bool, na_value=False)
        if served.detector.kind == "image":
            served.record(scores, flagged)
        else:  # point scores are counted; the drift window holds window scores (streams)
            metrics.observe_scores(scores, flagged)
    values = out.astype(object)
    for name in out.columns[out.dtypes == np.float32]:  # the scores
        # as the float64s their own shortest digits read as, since to_dict makes Python floats
        # of float32s: written as `anomaly score` writes them (see _json)
        values[name] = out[name].to_numpy().astype(str).astype(np.float64)
    predictions = values.where(out.notna(), None).to_dict(orient="records")
    try:
        body = orjson.dumps({"predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:  # an int past 64 bits, or deep nesting, in a column passed through
        try:
            safe = _nulls_for_nan(predictions)
        except RecursionError:
            raise InputError("a value passed through is nested too deeply to answer") from None
        body = json.dumps({"predictions": safe}, default=np.generic.item, allow_nan=False).encode()
    return Response(body, media_type="application/json")


def _nulls_for_nan(value: Any) -> Any:
    """``value`` with every NaN or infinity, however deep, made null (as orjson writes them)."""
    if isinstance(value, float | np.floating):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _nulls_for_nan(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_nulls_for_nan(item) for item in value]
    return value


@scoring.post(
    "/v1/score/stream",
    summary="Score an NDJSON stream",
    openapi_extra=_raw_body({"application/x-ndjson": "string"}),
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
            "description": "A result per line, in input order",
        },
        **_ERRORS,
    },
)
async def score_stream(request: Request) -> DuplexStreamingResponse:
    """A record per line in, a result per line out (``{"line": i, ...}``, or ``{"line": i,
    "error": ...}`` for a bad line), scored in micro-batches as lines arrive."""
    _model_of_kind(request, "tabular")  # 503 or 409 before the stream starts
    settings = request.app.state.settings
    parts = _stream_parts(request, settings.stream_batch_lines, settings.max_line_bytes)
    return DuplexStreamingResponse(
        _held_for_the_client(parts, settings.max_body_bytes), media_type="application/x-ndjson"
    )


async def _held_for_the_client(parts: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """``parts``, read and scored ahead of the client's reading, up to ``limit`` bytes.

    Many clients (Python's requests, httpx's ``post``) read the answer only once their upload
    is done. Were the body read only as fast as the answer is taken, such a client would fill
    the socket buffers and wait on the service as the service waits on it, for good. Answers
    wait here instead, up to ``limit`` bytes; past that the service reads on as the client
    reads (a client that reads while it sends, as curl does, is never held up).
    """
    waiting: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
    room = asyncio.Event()
    held = 0

    async def read_ahead() -> None:
        nonlocal held
        try:
            async for part in parts:
                waiting.put_nowait(part)
                held += len(part)
                while held > limit:
                    room.clear()
                    await room.wait()
        except ClientDisconnect:
            pass
        except Exception as exc:  # raised again below, where the answer is written
            waiting.put_nowait(exc)
        waiting.put_nowait(None)

    reader = asyncio.create_task(read_ahead())
    try:
        while (part := await waiting.get()) is not None:
            if isinstance(part, BaseException):
                raise part
            held -= len(part)
            room.set()
            yield part
    finally:
        reader.cancel()


async def _stream_parts(request: Request, batch_lines: int, max_line: int) -> AsyncIterator[bytes]:
    pending, number, skipping = b"", 0, False
    async for chunk in request.stream():
        if skipping:  # the rest of a line already answered as too long
            end = chunk.find(b"\n")
            if end < 0:
                continue
            chunk, skipping, number = chunk[end + 1 :], False, number + 1
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for start in range(0, len(lines), batch_lines):
            group = lines[start : start + batch_lines]
            yield await _score_lines(request, group, number, max_line)
            number += len(group)
        if len(pending) > max_line:  # an unfinished line past the limit: not buffered further
            yield _line(_too_long(number, max_line))
            pending, skipping = b"", True
    if pending.strip():
        yield await _score_lines(request, [pending], number, max_line)


def _too_long(number: int, max_line: int) -> dict:
    return {"line": number, "error": f"line longer than {max_line} bytes"}


async def _score_lines(request: Request, lines: list[bytes], first: int, max_line: int) -> bytes:
    """Results of consecutive lines, in order; a bad line gets an error and spares the rest."""
    served = _served(request)  # per batch: a long stream follows hot reloads
    out: dict[int, dict] = {}
    records: dict[int, dict[str, Any]] = {}
    for offset, line in enumerate(lines):
        if not line.strip():
            continue
        if len(line) > max_line:
            out[first + offset] = _too_long(first + offset, max_line)
            continue
        try:
            records[first + offset] = parse_line(line, first + offset)
        except InputError as exc:
            out[first + offset] = {"line": first + offset, "error": str(exc)}
    numbers, columns, errors = lines_to_columns(served.detector, records)
    for number, message in errors.items():
        out[number] = {"line": number, "error": message}
    if numbers:
        result = await request.app.state.batcher.score(served, columns, len(numbers))
        for number, item in zip(numbers, _results(result), strict=True):
            out[number] = {"line": number, **item}
    return b"".join(_line(out[n]) for n in sorted(out))


@scoring.post(
    "/v1/streams/{stream_id:path}/points",
    response_model=PointsResponse,
    responses=_ERRORS,
    summary="Score a time series point by point",
    # Read as /v1/score's body is (bad JSON is a 422 naming the problem); documented as it is.
    openapi_extra=_json_body(PointsRequest),
)
async def stream_points(
    request: Request,
    served: SequenceModel,
    stream_id: Annotated[str, Path(min_length=1, max_length=200)],
) -> Response:
    """Append points to the stream's window buffer; each point gets the score of the window
    ending at it once the window is full (null before, with a reason). See
    :mod:`anomaly.streams` for ordering, missing values, gaps and where buffers live."""
    points = parse_points_body(await request.body())
    _check_count(request, len(points))
    _check_utf8_path(request, "stream_id")
    detector = served.detector
    times, values = parse_points(detector, points)
    streams = request.app.state.streams
    try:
        pushed = await asyncio.to_thread(streams.update, stream_id, detector, times, values)
    except StoreUnavailable as exc:
        raise HTTPException(503, str(exc)) from None
    result = await asyncio.to_thread(detector.score_windows, pushed.windows)
    served.record(result["anomaly_score"], result["is_anomaly"])
    results = []
    for point, row, reason in zip(points, pushed.row, pushed.reasons, strict=True):
        scored = row >= 0
        results.append(
            {
                "timestamp": point[detector.schema_.timestamp],
                "anomaly_score": result["anomaly_score"][row] if scored else None,
                "is_anomaly": bool(result["is_anomaly"][row]) if scored else None,
                "p_value": float(result["p_value"][row]) if scored else None,
                "reason": reason,
            }
        )
    payload = {
        "model": served.identity,
        "threshold": float(detector.window_calibrator_.threshold_),
        "stream_id": stream_id,
        "results": results,
    }
    return _json(payload)


def _check_utf8_path(request: Request, name: str) -> None:
    """Refuse a path whose %-escapes are not UTF-8: the server decodes each bad byte to U+FFFD,
    so ``%FF`` and ``%FE`` would name one stream."""
    try:
        urllib.parse.unquote_to_bytes(request.scope.get("raw_path") or b"").decode()
    except UnicodeDecodeError:
        message = f"{name} is not UTF-8 once its %-escapes are decoded"
        detail = [{"loc": ["path", name], "msg": message, "type": "value_error"}]
        raise HTTPException(422, detail) from None


@scoring.post(
    "/v1/score/image",
    response_model=ImageResponse,
    responses=_ERRORS,
    summary="Score images",
)
async def score_images(
    request: Request,
    served: ImageModel,
    files: Annotated[list[UploadFile], File(description="PNG or JPEG images")],
    maps: Annotated[bool, Query(description="Also return each anomaly map over its image")] = False,
) -> Response:
    """Scores, flags and p-values of the uploaded images, in upload order; with ``maps=true``
    each result carries its anomaly map drawn over the image, as base64 PNG."""
    _check_count(request, len(files))
    detector = served.detector
    encoded = [await f.read() for f in files]
    images = await asyncio.to_thread(decode_images, detector, encoded)
    names = [f.filename or str(i) for i, f in enumerate(files)]
    frame, amaps = await asyncio.to_thread(detector.score_with_maps, images, names, maps=maps)
    served.record(frame["anomaly_score"].to_numpy(), frame["is_anomaly"].to_numpy())
    results = []
    scores = frame["anomaly_score"].to_numpy()
    for i, row in enumerate(frame.itertuples(index=False)):
        item = {
            "name": row.path,
            "anomaly_score": scores[i],
            "is_anomaly": bool(row.is_anomaly),
            "p_value": float(row.p_value),
        }
        if amaps is not None:
            item["map_png"] = _overlay_png(images[i], amaps[i], detector.map_scale_)
        results.append(item)
    payload = {
        "model": served.identity,
        "threshold": float(detector.threshold_),
        "results": results,
    }
    return _json(payload)


def _overlay_png(image: np.ndarray, amap: np.ndarray, vmax: float) -> str:
    import base64
    import io

    from PIL import Image

    from anomaly.image_maps import overlay

    buffer = io.BytesIO()
    Image.fromarray(overlay(image, amap, vmax)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# HEAD too, as monitors often probe with it (left out of the API's description, as FastAPI
# would give the two methods one operation id).
@operations.head("/healthz", include_in_schema=False)
@operations.get("/healthz", summary="Liveness")
async def healthz() -> dict:
    return {"status": "ok"}


@operations.head("/readyz", include_in_schema=False)
@operations.get("/readyz", summary="Readiness: a model is loaded", responses={503: _ERRORS[503]})
async def readyz(request: Request) -> dict:
    served = _served(request)
    return {"status": "ready", "version": served.ref.version}


@operations.get("/v1/model", response_model=ModelInfo, summary="The model being served")
async def model_info(served: Model) -> dict:
    detector, ref = served.detector, served.ref
    return {
        "name": ref.name,
        "version": ref.version,
        "alias": served.alias,
        "uri": ref.uri,
        "run_id": ref.run_id,
        "kind": detector.kind,
        "model": detector.model,
        "score": detector._score_method(),
        "threshold": float(detector.threshold_),
        "window_threshold": (
            float(detector.window_calibrator_.threshold_) if detector.kind == "sequence" else None
        ),
        "target_fpr": detector.target_fpr,
        "trained_at": detector.training_summary_["trained_at"],
        "loaded_at": served.loaded_at,
        "schema": (
            # not each series' step: one entry per series, thousands of them
            {k: v for k, v in detector.schema_.to_dict().items() if k != "steps"}
            if hasattr(detector, "schema_")
            else {"size": list(detector.image_size_), "channels": detector.channels}
        ),
        "drift": served.drift.snapshot(),
    }


@operations.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus_metrics(request: Request) -> Response:
    served = request.app.state.holder.current
    if served is not None:
        metrics.publish_drift(served.drift)
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)


def _json(payload: dict) -> Response:
    # Scores as numpy's float32: written in their own shortest digits, as `anomaly score`
    # writes them (as float64, 14.2405205 would read 14.240520477294922).
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
                    media_type="application/json")  # fmt: skip


def _results(result: dict) -> list[dict]:
    scores = list(result["anomaly_score"])  # numpy's float32s
    flags = result["is_anomaly"].tolist()
    p_values = result["p_value"].tolist()
    top = [text.split(";") for text in result["top_features"].to_pylist()]
    return [
        {"anomaly_score": s, "is_anomaly": f, "p_value": p, "top_features": t}
        for s, f, p, t in zip(scores, flags, p_values, top, strict=True)
    ]


def _line(item: dict) -> bytes:
    return orjson.dumps(item, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
