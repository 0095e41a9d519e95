"""The console's ASGI application: routes, templates, authentication, lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from agentstream.admin._common import Context
from agentstream.admin.web import actions, pages
from agentstream.admin.web.rates import RateSampler
from agentstream.admin.web.security import AUTH_COOKIE, CSRF_COOKIE, Credentials
from agentstream.admin.web.support import Console, csrf_ok, render, secure_cookie
from agentstream.config import Settings

__all__ = ["create_app"]

log = structlog.get_logger("agentstream.web")

_HERE = Path(__file__).parent
#: Reachable without signing in: the sign-in page, static files, the probe.
_PUBLIC = ("/login", "/static/", "/healthz")


class _Auth(BaseHTTPMiddleware):
    """Authenticate every request, set ``request.state.user``, and the CSRF cookie."""

    async def dispatch(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        console: Console = request.app.state.console
        creds = console.credentials
        user = _user(request, creds)
        if user is None and not request.url.path.startswith(_PUBLIC):
            if creds.users:
                return Response(
                    "authentication required",
                    401,
                    {"WWW-Authenticate": 'Basic realm="agentstream"'},
                )
            if request.method == "GET":
                return RedirectResponse(f"/login?next={request.url.path}", 303)
            return Response("authentication required", 401)
        request.state.user = user or "anonymous"
        token = request.cookies.get(CSRF_COOKIE)
        request.state.csrf = token or console.new_csrf()
        response = await call_next(request)
        if token is None:
            secure_cookie(response, request, CSRF_COOKIE, request.state.csrf)
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Cache-Control", "no-store")
        return response


def _user(request: Request, creds: Credentials) -> str | None:
    """Who sent the request, or None when it must authenticate and did not."""
    if not creds.required:
        host = request.client.host if request.client else "unknown"
        return f"local:{host}"
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and creds.check_token(value.strip()):
        return "token"
    if scheme.lower() == "basic" and creds.users:
        return creds.check_basic(value.strip())
    if creds.check_cookie(request.cookies.get(AUTH_COOKIE)):
        return "token"
    return None


async def _login(request: Request) -> Response:
    console: Console = request.app.state.console
    creds = console.credentials
    target = request.query_params.get("next", "/")
    if not target.startswith("/") or target.startswith("//"):
        target = "/"
    if request.method == "POST":
        form = await request.form()
        if not csrf_ok(request, form):
            return render(request, "login.html",
                          {"error": "the form is stale: try again", "next": target}, 403)  # fmt: skip
        if creds.token is not None and creds.check_token(str(form.get("token", ""))):
            log.info("web_sign_in", who="token", client=_client(request))
            response = RedirectResponse(target, 303)
            secure_cookie(response, request, AUTH_COOKIE, creds.session_value())
            return response
        log.warning("web_sign_in_refused", client=_client(request))
        return render(
            request, "login.html", {"error": "wrong token", "next": target}, 401
        )
    if creds.token is None:
        return RedirectResponse("/", 303)
    return render(request, "login.html", {"error": None, "next": target})


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def _healthz(request: Request) -> Response:
    """Liveness of the console process (it needs no Redis to answer)."""
    return PlainTextResponse("ok")


def create_app(settings: Settings, credentials: Credentials) -> Starlette:
    """Build the console for ``settings`` (Redis, subscriptions, ``web``).

    The Redis connection pool opens on first use and closes with the app; the
    rate sampler runs while the app runs.
    """
    ctx = Context(settings, max_connections=settings.redis.max_connections)
    subs = list(settings.subscriptions)
    sampler = RateSampler(
        [ctx.transport(s.stream, s.group) for s in subs], settings.web.refresh_s
    )
    console = Console(settings, ctx, credentials, sampler)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(sampler.run)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await ctx.aclose()

    routes = [
        Route("/login", _login, methods=["GET", "POST"]),
        Route("/healthz", _healthz),
        *pages.routes(),
        *actions.routes(),
        Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(_Auth)],
        lifespan=lifespan,
        exception_handlers=pages.exception_handlers(),
    )
    app.state.console = console
    return app
