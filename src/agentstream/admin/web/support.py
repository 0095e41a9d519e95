"""What the console's pages and actions share: state, rendering, input checks."""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from agentstream.admin._common import Context, duration, is_entry_id, text
from agentstream.admin.web.rates import RateSampler
from agentstream.admin.web.security import CSRF_COOKIE, Credentials, new_csrf_token
from agentstream.config import Settings, SubscriptionSettings, redact_url
from agentstream.transport.admin_ops import AdminOps
from agentstream.transport.core import RawFields

__all__ = [
    "BadInput",
    "Console",
    "NotFound",
    "render",
    "secure_cookie",
]

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


def _age(ms: int | None) -> str:
    return "-" if ms is None else duration(ms)


def _when(seconds: Any) -> str:
    try:
        moment = datetime.fromtimestamp(float(seconds), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return str(seconds)
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def _id_time(entry_id: str) -> str:
    try:
        return _when(int(entry_id.partition("-")[0]) / 1000)
    except ValueError:
        return ""


def _pretty(value: str) -> str:
    """JSON re-indented for reading; anything else as it is."""
    try:
        return json.dumps(json.loads(value), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):
        return value


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


templates.env.filters.update(
    age=_age, when=_when, id_time=_id_time, pretty=_pretty, rate=_rate, text=text
)


class BadInput(Exception):
    """A request parameter is malformed: shown on the page with status 400."""


class NotFound(Exception):
    """What the request names does not exist: shown with status 404."""


@dataclass
class Console:
    """The console's state, shared by every request."""

    settings: Settings
    ctx: Context
    credentials: Credentials
    sampler: RateSampler

    @property
    def redis_target(self) -> str:
        """The Redis the console reads, password masked."""
        return redact_url(self.settings.redis.url)

    def new_csrf(self) -> str:
        return new_csrf_token()

    def subscription(self, index: int) -> SubscriptionSettings:
        """The configured subscription ``index``.

        Raises:
            NotFound: there is no such subscription.
        """
        subs = self.settings.subscriptions
        if not 0 <= index < len(subs):
            raise NotFound(f"there is no subscription {index}")
        return subs[index]

    def ops(self, index: int) -> AdminOps:
        """The operator's transport on subscription ``index``'s stream and group."""
        sub = self.subscription(index)
        return self.ctx.transport(sub.stream, sub.group)


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def render(
    request: Request, name: str, context: dict[str, Any], status: int = 200
) -> Response:
    """Render a template with what every page needs."""
    console = console_of(request)
    base = {
        "user": getattr(request.state, "user", None),
        "csrf": getattr(request.state, "csrf", ""),
        "read_only": console.settings.web.read_only,
        "subscriptions": list(enumerate(console.settings.subscriptions)),
        "redis": console.redis_target,
    }
    return templates.TemplateResponse(request, name, base | context, status_code=status)


def secure_cookie(response: Response, request: Request, name: str, value: str) -> None:
    """Set an HttpOnly, SameSite=Strict cookie (Secure over https)."""
    response.set_cookie(
        name,
        value,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )


def csrf_ok(request: Request, form: FormData) -> bool:
    """Whether a form carries the CSRF token of the request's cookie (double submit)."""
    cookie = request.cookies.get(CSRF_COOKIE, "")
    sent = str(form.get("csrf", ""))
    return bool(cookie) and hmac.compare_digest(cookie, sent)


def int_param(request: Request, name: str, minimum: int = 0) -> int | None:
    """An optional whole-number query parameter.

    Raises:
        BadInput: it is not a whole number >= ``minimum``.
    """
    raw = request.query_params.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadInput(f"{name} must be a whole number, not {raw!r}") from None
    if value < minimum:
        raise BadInput(f"{name} must be at least {minimum}, not {value}")
    return value


def entry_id(value: str, what: str = "id") -> str:
    """Check a stream entry id.

    Raises:
        BadInput: it is not of the form ``1700000000000-0``.
    """
    if not is_entry_id(value):
        raise BadInput(
            f"{what} {value!r} is not a stream entry id like 1700000000000-0"
        )
    return value


def fields_view(fields: RawFields | None) -> list[tuple[str, str]]:
    """An entry's fields decoded for display, in their order."""
    return [(text(k), text(v)) for k, v in (fields or {}).items()]
