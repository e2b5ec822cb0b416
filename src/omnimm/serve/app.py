"""The FastAPI application behind `omnimm serve`, and `serve()`, which binds a socket and runs it under uvicorn.

Routes: `POST /v1/chat/completions` (streamed as server-sent events or not), `GET /v1/models`, `GET /health`,
`GET /metrics` (Prometheus text), `POST /omnimm/frames` (the frames a video gives, for the page) and the page at `/`.
Every error is OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations (`fastapi.Request`) at runtime.

import asyncio
import ipaddress
import json
import secrets
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnimm.deps import require
from omnimm.serve.backends import Backend, Completion, GenerationOptions
from omnimm.serve.batching import Batcher
from omnimm.serve.media import read_content, read_conversation
from omnimm.serve.schemas import APIError, ChatRequest, parse_request

PAGE = Path(__file__).parent / "page" / "index.html"


@dataclass
class ServeSettings:
    """How `omnimm serve` runs (the command's options)."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    allow_files: Path | None = None
    max_batch: int = 8
    batch_wait_ms: float = 10.0
    max_queue: int = 64
    max_body_mb: float = 32.0
    timeout_s: float = 120.0
    default_max_tokens: int = 128


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def binding_problem(settings: ServeSettings) -> str | None:
    """Why the server must not start as asked: a non-loopback address without an API key would be open to all."""
    if not is_loopback(settings.host) and not settings.api_key:
        return f"--host {settings.host} is reachable from other machines: give --api-key KEY (or bind 127.0.0.1)"
    return None


class _Metrics:
    def __init__(self, batcher_depth: Any) -> None:
        prometheus = require("prometheus_client", extra="serve", purpose="omnimm serve's /metrics")
        self.prometheus = prometheus
        self.registry = prometheus.CollectorRegistry()
        self.requests = prometheus.Counter(
            "omnimm_requests", "Chat completion requests answered, by HTTP status.", ["status"], registry=self.registry
        )
        self.batch = prometheus.Histogram(
            "omnimm_batch_size",
            "Requests answered by one generate call.",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.latency = prometheus.Histogram(
            "omnimm_request_seconds", "Time from receiving a chat request to its last byte.", registry=self.registry
        )
        self.tokens = prometheus.Counter("omnimm_completion_tokens", "Tokens generated.", registry=self.registry)
        depth = prometheus.Gauge("omnimm_queue_depth", "Requests waiting to be generated.", registry=self.registry)
        depth.set_function(batcher_depth)

    def render(self) -> bytes:
        return self.prometheus.generate_latest(self.registry)


class _BodyLimit:
    """ASGI middleware: a body over `limit` bytes (by Content-Length, or as it arrives) is answered 413."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._refuse(send)
            return
        seen = 0
        started = False

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        async def tracked(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        megabytes = self.limit / 2**20
        error = APIError(413, f"the request body is larger than {megabytes:g} MiB (--max-body-mb)", code="too_large")
        body = json.dumps(error.body()).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def create_app(backend: Backend, settings: ServeSettings) -> Any:
    """The application for one backend. The batcher's thread starts here and stops when the app shuts down."""
    fastapi = require("fastapi", extra="serve", purpose="omnimm serve")
    responses = require("fastapi.responses", extra="serve", purpose="omnimm serve")
    starlette_exceptions = require("starlette.exceptions", extra="serve", purpose="omnimm serve")
    from contextlib import asynccontextmanager

    batcher: Batcher | None = None
    metrics: _Metrics | None = None

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        yield
        if batcher is not None:
            batcher.close()

    app = fastapi.FastAPI(title="omnimm serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    metrics = _Metrics(lambda: batcher.depth() if batcher is not None else 0)
    batcher = Batcher(
        backend,
        max_batch=settings.max_batch,
        max_queue=settings.max_queue,
        wait_s=settings.batch_wait_ms / 1000,
        on_batch=metrics.batch.observe,
    )
    app.state.batcher = batcher
    app.add_middleware(_BodyLimit, limit=int(settings.max_body_mb * 2**20))

    def error_response(error: APIError) -> Any:
        return responses.JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(APIError)
    async def api_error(_: Any, error: APIError) -> Any:
        metrics.requests.labels(status=str(error.status)).inc()
        return error_response(error)

    @app.exception_handler(starlette_exceptions.HTTPException)
    async def http_error(_: Any, error: Any) -> Any:
        return error_response(APIError(error.status_code, str(error.detail)))

    def authorise(request: Any) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {settings.api_key}".encode()):
            raise APIError(401, "missing or wrong API key (Authorization: Bearer KEY)", code="invalid_api_key")

    @app.get("/", include_in_schema=False)
    async def page() -> Any:
        return responses.HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> Any:
        return {"status": "ok", "model": backend.name, "mode": backend.mode, "queue": batcher.depth()}

    @app.get("/metrics")
    async def metrics_text(request: fastapi.Request) -> Any:
        authorise(request)
        return responses.Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def list_models(request: fastapi.Request) -> Any:
        authorise(request)
        return {"object": "list", "data": [_model_card(backend)]}

    @app.get("/v1/models/{name:path}")
    async def one_model(name: str, request: fastapi.Request) -> Any:
        authorise(request)
        _check_model(backend, name)
        return _model_card(backend)

    @app.post("/omnimm/frames")
    async def frames(request: fastapi.Request) -> Any:
        authorise(request)
        data = await _json_body(request)
        reader = getattr(backend, "frames", None)
        if reader is None:
            raise APIError(400, f"the {backend.mode} mode takes no video or image")
        parts = [{"type": data.get("type", "video_url"), data.get("type", "video_url"): {"url": data.get("url")}}]
        _, media = read_content(parts, "url", settings.allow_files)
        return await asyncio.to_thread(reader, media[0])

    @app.post("/v1/chat/completions")
    async def chat(request: fastapi.Request) -> Any:
        started = time.monotonic()
        authorise(request)
        body = parse_request(await _json_body(request))
        _check_model(backend, body.model)
        conversation = read_conversation(body.messages, settings.allow_files)
        options = GenerationOptions.from_request(body, settings.default_max_tokens)
        prepared = await asyncio.to_thread(backend.prepare, conversation)
        if body.stream:
            return responses.StreamingResponse(
                _stream(batcher, prepared, options, body, settings, metrics, started),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        future = batcher.submit(prepared, options)
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), settings.timeout_s)
        except TimeoutError:
            raise APIError(504, f"no answer within {settings.timeout_s:g} s (--timeout)", code="timeout") from None
        finally:
            future.cancel()  # timed out or the handler was cancelled: nobody waits (a no-op once answered)
        metrics.requests.labels(status="200").inc()
        metrics.tokens.inc(result.completion_tokens)
        metrics.latency.observe(time.monotonic() - started)
        return _completion_body(body, result)

    return app


async def _json_body(request: Any) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise APIError(400, f"the body is not JSON: {error}") from None


def _check_model(backend: Backend, name: str) -> None:
    if name != backend.name:
        raise APIError(
            404,
            f"model: {name!r} is not served here (this server has {backend.name!r})",
            param="model",
            code="model_not_found",
        )


def _model_card(backend: Backend) -> dict[str, Any]:
    return {"id": backend.name, "object": "model", "created": 0, "owned_by": "omnimm", "mode": backend.mode}


def _completion_body(request: ChatRequest, result: Completion) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": _usage(result),
        "omnimm": result.extra,
    }


def _usage(result: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


async def _stream(
    batcher: Batcher,
    prepared: Any,
    options: GenerationOptions,
    request: ChatRequest,
    settings: ServeSettings,
    metrics: _Metrics,
    started: float,
) -> AsyncIterator[bytes]:
    """Server-sent events: a role chunk, content deltas as they are generated, a final chunk, `[DONE]`."""
    loop = asyncio.get_running_loop()
    deltas: asyncio.Queue[str] = asyncio.Queue()
    future = batcher.submit(prepared, options, lambda text: loop.call_soon_threadsafe(deltas.put_nowait, text))
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        body = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": request.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return f"data: {json.dumps(body)}\n\n".encode()

    yield chunk({"role": "assistant", "content": ""})
    waiting = asyncio.wrap_future(future)
    deadline = started + settings.timeout_s
    try:
        while not waiting.done() or not deltas.empty():
            getter = asyncio.ensure_future(deltas.get())
            left = deadline - time.monotonic()
            done, _ = await asyncio.wait({getter, waiting}, timeout=max(left, 0), return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield chunk({"content": getter.result()})
            else:
                getter.cancel()
            if not done:
                future.cancel()
                error = APIError(504, f"no answer within {settings.timeout_s:g} s (--timeout)", code="timeout")
                yield f"data: {json.dumps(error.body())}\n\n".encode()
                metrics.requests.labels(status="504").inc()
                return
        try:
            result = waiting.result()
        except APIError as error:
            yield f"data: {json.dumps(error.body())}\n\n".encode()
            metrics.requests.labels(status=str(error.status)).inc()
            return
        yield chunk({}, result.finish_reason, usage=_usage(result), omnimm=result.extra)
        yield b"data: [DONE]\n\n"
        metrics.requests.labels(status="200").inc()
        metrics.tokens.inc(result.completion_tokens)
        metrics.latency.observe(time.monotonic() - started)
    finally:
        future.cancel()  # the client went away: a request still waiting is dropped


def bind(settings: ServeSettings) -> socket.socket:
    """A listening socket (port 0 picks a free one; `sock.getsockname()` says which)."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(backend: Backend, settings: ServeSettings, *, announce: Any = print) -> None:
    """Bind, announce the address, and run until interrupted."""
    uvicorn = require("uvicorn", extra="serve", purpose="omnimm serve")
    problem = binding_problem(settings)
    if problem is not None:
        raise ValueError(problem)
    app = create_app(backend, settings)
    sock = bind(settings)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    announce(f"serving {backend.name!r} ({backend.mode}) on http://{shown}:{port} (page: /, API: /v1)")
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5, access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
