"""`create_app(...)`: the node's HTTP face (OpenAI-compatible API, subnet views, metrics, dashboard)."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from importlib import resources

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.staticfiles import StaticFiles

from subnet.api import openai_routes, subnet_routes
from subnet.api.backends import GenerationBackend, SubnetView
from subnet.api.context import ApiContext
from subnet.api.errors import APIError, error_body, install_error_handlers
from subnet.api.limits import StreamLimiter
from subnet.api.metrics import ApiMetrics

_KNOWN_PATHS = {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "/"}


def _endpoint_label(path: str) -> str:
    if path in _KNOWN_PATHS:
        return path
    for prefix in ("/v1/models/", "/subnet/", "/static/"):
        if path.startswith(prefix):
            return path if prefix == "/subnet/" and path.count("/") == 2 and len(path) < 40 else prefix + "*"
    return "other"


class _EdgeMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware, which breaks disconnect detection of streams):
    rejects oversize bodies by Content-Length and counts responses by endpoint and status."""

    def __init__(self, app, *, metrics: ApiMetrics, max_body_bytes: int):
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        label = _endpoint_label(scope.get("path", ""))
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_body_bytes
                except ValueError:
                    too_big = True
                if too_big:
                    self.metrics.requests.labels(label, "413").inc()
                    resp = JSONResponse(error_body(f"Request body exceeds {self.max_body_bytes} bytes.",
                                                   "invalid_request_error", None, "request_too_large"), 413)
                    return await resp(scope, receive, send)

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(label, str(message["status"])).inc()
            await send(message)

        return await self.app(scope, receive, counting_send)


def _auth_dependency(keys: frozenset[str]):
    async def check(request: Request) -> None:
        if not keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError(401, "You didn't provide an API key. Provide it in the Authorization header "
                                "(Authorization: Bearer YOUR_KEY).", code="missing_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
        token = token.strip()
        if not any(hmac.compare_digest(token.encode(), k.encode()) for k in keys):
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    return check


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
) -> FastAPI:
    """Build the app. `api_keys` (if any) guard `/v1/*`; subnet views, metrics and the
    dashboard page stay readable without a key (the dashboard asks for one to chat)."""
    metrics = ApiMetrics(subnet_view)
    limiter = StreamLimiter(max_concurrent_streams, on_change=lambda n: metrics.active.set(n))
    ctx = ApiContext(
        backend=generation_backend,
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
    app.include_router(openai_routes.router, dependencies=[Depends(_auth_dependency(ctx.api_keys))])
    app.include_router(subnet_routes.router)

    @app.get("/health")
    async def health() -> dict:
        cards = await run_in_threadpool(generation_backend.models)
        return {
            "status": "ok" if cards else "degraded",
            "models": [c.id for c in cards],
            "active_generations": limiter.active,
            "max_concurrent_generations": limiter.limit,
            "subnet_view": subnet_view is not None,
            "auth": bool(ctx.api_keys),
        }

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    if dashboard:
        static_dir = resources.files("subnet.api") / "static"
        app.mount("/static", StaticFiles(directory=str(static_dir)), name="static")

        @app.get("/", include_in_schema=False)
        async def index() -> FileResponse:
            return FileResponse(str(static_dir / "index.html"), media_type="text/html")

    app.add_middleware(_EdgeMiddleware, metrics=metrics, max_body_bytes=max_body_bytes)
    return app
