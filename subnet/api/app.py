"""`create_app(...)`: the node's HTTP face (OpenAI-compatible API, subnet views, metrics, dashboard)."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from importlib import resources

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CollectorRegistry
from starlette.concurrency import run_in_threadpool
from starlette.staticfiles import StaticFiles

from subnet.api import embedding_routes, openai_routes, subnet_routes, tokenize_routes
from subnet.api.backends import GenerationBackend, SubnetView
from subnet.api.context import ApiContext
from subnet.api.errors import APIError, error_body, install_error_handlers
from subnet.api.limits import StreamLimiter
from subnet.api.metrics import ApiMetrics, TimedBackend

_KNOWN_PATHS = {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/ready", "/metrics", "/",
                "/v1/embeddings", "/tokenize", "/detokenize"}
_KEYED_PATHS = ("/tokenize", "/detokenize")  # vLLM's paths (outside /v1/), keyed like /v1/


def _endpoint_label(path: str) -> str:
    if path in _KNOWN_PATHS:
        return path
    for prefix in ("/v1/models/", "/subnet/", "/static/"):
        if path.startswith(prefix):
            return path if prefix == "/subnet/" and path.count("/") == 2 and len(path) < 40 else prefix + "*"
    return "other"


class _EdgeMiddleware:
    """The API's edge, before any route runs: API key, body size, response counting.

    Pure ASGI (BaseHTTPMiddleware breaks disconnect detection of streams). The key is
    checked from the headers before a byte of the body is read, so an unauthenticated
    client cannot make the server buffer anything. A body without Content-Length (chunked)
    is read here up to `max_body_bytes` and replayed to the route; one byte more is a 413.
    """

    def __init__(self, app, *, metrics: ApiMetrics, max_body_bytes: int, api_keys: frozenset[str]):
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.api_keys = api_keys

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        label = _endpoint_label(scope.get("path", ""))

        async def reply(status: int, body: dict, headers: dict[str, str] | None = None) -> None:
            self.metrics.requests.labels(label, str(status)).inc()
            await JSONResponse(body, status, headers=headers)(scope, receive, send)

        headers = dict(scope.get("headers", ()))
        if self.api_keys and (scope.get("path", "").startswith("/v1/") or scope.get("path") in _KEYED_PATHS):
            denied = _check_key(self.api_keys, headers.get(b"authorization", b"").decode("latin-1"))
            if denied is not None:
                return await reply(denied.status, denied.body(), denied.headers)
        too_big = error_body(f"Request body exceeds {self.max_body_bytes} bytes.", "invalid_request_error", None,
                             "request_too_large")
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_body_bytes:
                return await reply(413, too_big)
        elif scope.get("method") in ("POST", "PUT", "PATCH"):
            body = await _read_body(receive, self.max_body_bytes)
            if body is None:
                return await reply(413, too_big)
            receive = _replay(body, receive)

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(label, str(message["status"])).inc()
            await send(message)

        return await self.app(scope, receive, counting_send)


async def _read_body(receive, limit: int) -> bytes | None:
    """The whole request body, or None as soon as it exceeds `limit` (the rest is never read)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)  # disconnected: the route will see an empty body
        size += len(message.get("body", b""))
        if size > limit:
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # afterwards: disconnect detection of streams

    return replay


def _check_key(keys: frozenset[str], header: str) -> APIError | None:
    """None if the Authorization header carries one of `keys`, else the 401 to answer."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return APIError(401, "You didn't provide an API key. Provide it in the Authorization header "
                             "(Authorization: Bearer YOUR_KEY).", code="missing_api_key",
                        headers={"WWW-Authenticate": "Bearer"})
    token = token.strip()
    if not any(hmac.compare_digest(token.encode(), k.encode()) for k in keys):
        return APIError(401, "Incorrect API key provided.", code="invalid_api_key",
                        headers={"WWW-Authenticate": "Bearer"})
    return None


def create_app(
    generation_backend: GenerationBackend,
    subnet_view: SubnetView | None = None,
    api_keys: Iterable[str] | None = None,
    max_concurrent_streams: int = 8,
    max_prompt_tokens: int = 4096,
    max_tokens_limit: int = 2048,
    *,
    retry_after: int = 1,
    max_body_bytes: int = 4 << 20,
    dashboard: bool = True,
    metrics_registry: CollectorRegistry | None = None,
) -> FastAPI:
    """Build the app. `api_keys` (if any) guard `/v1/*`; subnet views, metrics, probes and the
    dashboard page stay readable without a key (the dashboard asks for one to chat).

    `/health` is liveness (200 while the process serves); `/ready` is 200 only while some model
    has a full route through the swarm, else 503 with Retry-After. `metrics_registry`: the node's
    registry, so `/metrics` also shows its other roles (default: the API's own)."""
    metrics = ApiMetrics(subnet_view, registry=metrics_registry)
    metrics.max_active.set(max_concurrent_streams)
    limiter = StreamLimiter(max_concurrent_streams, on_change=lambda n: metrics.active.set(n))
    ctx = ApiContext(
        backend=TimedBackend(generation_backend, metrics),
        subnet_view=subnet_view,
        api_keys=frozenset(k for k in (api_keys or ()) if k),
        limiter=limiter,
        metrics=metrics,
        max_prompt_tokens=max_prompt_tokens,
        max_tokens_limit=max_tokens_limit,
        retry_after=retry_after,
    )
    app = FastAPI(title="mesh-node API", version="1", docs_url="/docs", redoc_url=None)
    app.state.ctx = ctx
    install_error_handlers(app)
    app.include_router(openai_routes.router)  # the API key is checked by _EdgeMiddleware
    app.include_router(subnet_routes.router)
    app.include_router(embedding_routes.router)
    app.include_router(tokenize_routes.router)

    @app.get("/health")
    async def health() -> dict:
        cards = await run_in_threadpool(generation_backend.models)
        return {
            "status": "ok",  # live: this process answers (whether it can generate is /ready's question)
            "ready": bool(cards),
            "models": [c.id for c in cards],
            "active_generations": limiter.active,
            "max_concurrent_generations": limiter.limit,
            "subnet_view": subnet_view is not None,
            "auth": bool(ctx.api_keys),
        }

    @app.get("/ready")
    async def ready() -> JSONResponse:
        cards = await run_in_threadpool(generation_backend.models)
        if cards:
            return JSONResponse({"status": "ready", "models": [c.id for c in cards]})
        return JSONResponse({"status": "unavailable", "models": [],
                             "reason": "no model has a full route through the swarm right now"},
                            503, headers={"Retry-After": str(retry_after)})

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    if dashboard:
        static_dir = resources.files("subnet.api") / "static"
        app.mount("/static", StaticFiles(directory=str(static_dir)), name="static")

        @app.get("/", include_in_schema=False)
        async def index() -> FileResponse:
            return FileResponse(str(static_dir / "index.html"), media_type="text/html")

    app.add_middleware(_EdgeMiddleware, metrics=metrics, max_body_bytes=max_body_bytes, api_keys=ctx.api_keys)
    return app
