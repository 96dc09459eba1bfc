"""The scoring service: ``create_app`` builds it; ``anomaly serve`` runs it on uvicorn.

Start-up (the lifespan) loads the model before the first request is accepted, starts the
batcher and, for an alias URI, the registry poller. Client errors are answered 4xx with a body
naming the field and record; anything else is a bug and answers 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import time
from collections.abc import AsyncIterator, Sequence

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import anomaly
from anomaly.errors import InputError
from anomaly.service import metrics
from anomaly.service.batching import Batcher
from anomaly.service.model import ModelHolder
from anomaly.service.routes import operations, scoring
from anomaly.service.settings import Settings
from anomaly.streams import MemoryStreams, RedisStreams

log = logging.getLogger(__name__)
STREAM_PATH = "/v1/score/stream"  # exempt from the body limit: its lines are limited instead
CLIENT_CLOSED = 499  # nginx's "client closed request": the client left, not a server error


def create_app(settings: Settings | None = None) -> FastAPI:
    """The FastAPI application; ``settings`` default to the ``ANOMALY_*`` environment."""
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        torch.set_num_threads(settings.torch_threads)
        holder = ModelHolder(
            settings.model_uri, settings.device, settings.drift_window, settings.drift_level
        )
        await asyncio.to_thread(holder.load)
        # What start-up made (modules, the model) lives as long as the process: moved out of
        # the collector's sight, so that a full collection does not stall requests to scan it.
        gc.collect()
        gc.freeze()
        batcher = Batcher(settings.batch_wait_ms / 1000, settings.batch_max_records)
        batcher.start()
        app.state.holder, app.state.batcher = holder, batcher
        app.state.streams = (
            RedisStreams(settings.stream_redis_url, settings.stream_ttl)
            if settings.stream_redis_url
            else MemoryStreams(settings.max_streams, settings.stream_ttl)
        )
        poller = None
        if holder.follows_alias and settings.reload_interval > 0:
            poller = asyncio.create_task(holder.poll_forever(settings.reload_interval))
        try:
            yield
        finally:
            if poller is not None:
                poller.cancel()
                await asyncio.gather(poller, return_exceptions=True)
            await batcher.stop()

    app = FastAPI(
        title="anomaly scoring service",
        version=anomaly.__version__,
        description="Scores records with an autoencoder anomaly detector: a calibrated flag, "
        "a p-value and the columns that contributed most.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.include_router(scoring)
    app.include_router(operations)
    app.add_exception_handler(InputError, _input_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.api_token is not None:
        app.add_middleware(TokenGuard, token=settings.api_token.get_secret_value())
    # The API's description (/docs, /openapi.json...) is FastAPI's own routes.
    described = [route for route in app.routes if isinstance(route, Route)]
    app.add_middleware(RequestMetrics, routes=[*described, *scoring.routes, *operations.routes])
    return app


async def _input_error(request: Request, exc: InputError) -> JSONResponse:
    if request.url.path == "/invocations":  # MLflow's error shape, for its clients
        return JSONResponse({"error_code": "BAD_REQUEST", "message": str(exc)}, status_code=400)
    path = request.url.path
    items = (
        "points"
        if path.startswith("/v1/streams/")
        else "files"
        if path == "/v1/score/image"
        else "records"
    )
    loc: list[str | int] = ["body", items]
    if exc.row is not None:
        loc.append(exc.row)
    if exc.column is not None:
        loc.append(exc.column)
    return JSONResponse(
        {"detail": [{"loc": loc, "msg": str(exc), "type": "value_error"}]}, status_code=422
    )


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's own answer, minus the echoed input: an error never repeats a whole payload.
    detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    return JSONResponse({"detail": detail}, status_code=422)


class TokenGuard:
    """401 without ``Authorization: Bearer TOKEN`` (compared in constant time), before the
    body is read: every path but health, metrics and the API's description."""

    OPEN = frozenset({"/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect",
                      "/openapi.json", "/redoc"})  # fmt: skip

    def __init__(self, app: ASGIApp, token: str):
        self.app, self.expected = app, token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") in self.OPEN:
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.expected):
            response = JSONResponse({"detail": "missing or wrong bearer token"}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
            return await response(scope, _no_receive, send)
        await self.app(scope, receive, send)


class BodyLimit:
    """413 for a body over ``max_bytes``, announced (Content-Length) or streamed (chunked).

    Not FastAPI's ``max_body_size`` (as of 0.165): for an announced length it answers plain text
    ("Content Too Large"), not the JSON error every other 4xx here has, and it does not say
    the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        encoding = headers.get(b"content-encoding", b"").strip().lower()
        if encoding not in (b"", b"identity"):  # else its bytes would be named as bad JSON
            shown = encoding.decode("latin-1")
            detail = f"compressed bodies ({shown}) are not read: send the body uncompressed"
            response = JSONResponse({"detail": detail}, status_code=415)
            return await response(scope, _no_receive, send)
        if scope["path"] == STREAM_PATH:
            return await self.app(scope, receive, send)
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _too_large(self.max_bytes, send)
        # Read the body here (every endpoint but the stream reads it whole anyway), counting
        # as it arrives, then hand it on in one piece.
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left: said as Starlette says it
                raise ClientDisconnect()
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                return await _too_large(self.max_bytes, send)
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _too_large(limit: int, send: Send) -> None:
    response = JSONResponse({"detail": f"request body over {limit} bytes"}, status_code=413)
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


class RequestMetrics:
    """Counts every request by route template and status, and times it.

    A request answered before routing (a body over the limit, a client gone mid-body) is named
    by matching ``routes`` as the router would; a path none matches is "unmatched", so there
    are never more labels than routes."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]):
        self.app, self.routes = app, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status: int | None = None

        async def recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording)
        except ClientDisconnect:
            # Nobody is left to answer: raised further, it would be logged as a server error
            # and Starlette would send a 500 to no one.
            status = status or CLIENT_CLOSED
        finally:
            route = scope.get("route") or _route_of(scope, self.routes)
            # the template as written in the docs ({stream_id}, not {stream_id:path})
            endpoint = route.path_format if route is not None else "unmatched"
            # No answer started and no disconnect: the app failed (ServerErrorMiddleware 500s)
            metrics.REQUESTS.labels(endpoint=endpoint, status=str(status or 500)).inc()
            metrics.REQUEST_DURATION.labels(endpoint=endpoint).observe(
                time.perf_counter() - started
            )


def _route_of(scope: Scope, routes: Sequence[BaseRoute]) -> BaseRoute | None:
    """The route the router would pick for a request answered before routing: the first full
    match, else the first partial one (another method: the router answers it 405)."""
    partial = None
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return route
        if match is Match.PARTIAL and partial is None:
            partial = route
    return partial
