"""The Starlette application: routes in plain sight, security headers on every answer."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import jinja2
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from verifier import access_log, api, endpoints
from verifier.auth import RegistryTokens
from verifier.clientaddr import ClientAddress
from verifier.metrics import Metrics
from verifier.ratelimit import RateLimiter
from verifier.settings import Settings, from_env
from verifier.shared import DATABASE, SharedState
from verifier.trust import TrustSource

HERE = Path(__file__).parent

# No inline script or style anywhere: the pages load only our own CSS and JS.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


class SecurityHeaders:
    """Adds CSP and friends to every response, and `no-store` to everything but the static
    files: a result page describes someone's health data."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Content-Security-Policy"] = CSP
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "no-referrer"
                headers["X-Frame-Options"] = "DENY"
                if not static:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every value shown is escaped, whatever the template's name
        undefined=jinja2.StrictUndefined,
        auto_reload=False,  # templates ship with the package; no stat per page
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env


def create_app(settings: Settings) -> Starlette:
    routes = [
        Route("/", endpoints.index, methods=["GET"]),
        Route("/verify", endpoints.verify_form, methods=["POST"]),
        Route("/verify", endpoints.verify_again, methods=["GET"]),
        Route("/openssl", endpoints.openssl_page, methods=["GET"]),
        Route("/root.pem", endpoints.root_pem, methods=["GET"]),
        Route("/api/v1/verify", api.api_verify, methods=["POST"]),
        Route("/api/v1/verify-batch", api.api_verify_batch, methods=["POST"]),
        Route("/api/v1/openapi.json", api.api_openapi, methods=["GET"]),
        Route("/healthz", endpoints.healthz, methods=["GET"]),
        Route("/log/{path:path}", endpoints.log_file, methods=["GET"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    state = shared_state(settings)
    metrics = Metrics(state)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        metrics.close()  # a stopping worker's last counts reach the host's totals

    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: endpoints.http_error},
        lifespan=lifespan,
    )
    app.state.services = endpoints.Services(
        settings=settings,
        trust=TrustSource(settings.archive_dir),
        anonymous=RateLimiter(state, settings.rate_limit_per_minute),
        organisations=RateLimiter(state, settings.org_rate_limit_per_minute),
        clients=ClientAddress(settings.trusted_proxies, settings.proxy_header),
        owners=RegistryTokens(settings.orgs_registry),
        metrics=metrics,
        templates=templates(),
    )
    app.add_middleware(SecurityHeaders)
    return app


def shared_state(settings: Settings) -> SharedState:
    """The state this host's workers share; the launcher prepared it in the runtime
    directory. Without one (an app embedded in one process), this process's own."""
    if not settings.runtime_dir:
        return SharedState.in_memory()
    return SharedState(Path(settings.runtime_dir) / DATABASE)


def app_from_env() -> Starlette:
    """The factory uvicorn's worker processes call (settings travel in the environment)."""
    access_log.install()
    return create_app(from_env())
