"""Helpers of the web console tests: a config, the app under TestClient, data.

Kept out of a ``conftest.py`` for the reason given in tests/e2e/worker_harness.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from agentstream.admin.web.app import create_app
from agentstream.admin.web.security import Credentials, load_credentials
from agentstream.config import Settings, load_settings

__all__ = [
    "CSRF",
    "client_for",
    "csrf_of",
    "settings_for",
    "write_config",
]

CSRF = "agentstream_csrf"
_RESULT = re.compile(r'id="(result|problem)">([^<]*)<')


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(str(value))


def write_config(
    path: Path,
    url: str,
    streams: Sequence[str],
    web: dict[str, Any] | None = None,
    *,
    top: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """A worker.toml: ``top`` keys, ``streams`` subscribed, [metrics] and [web]."""
    lines = [f"{key} = {_toml(value)}" for key, value in (top or {}).items()]
    lines += ["[redis]", f'url = "{url}"']
    for stream in streams:
        lines += ["[[subscriptions]]", f'stream = "{stream}"']
    for name, table in (("metrics", metrics), ("web", web)):
        if table:
            lines.append(f"[{name}]")
            lines += [f"{key} = {_toml(value)}" for key, value in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def settings_for(tmp_path: Path, url: str, streams: Sequence[str], **web: Any) -> Settings:  # fmt: skip
    return load_settings(
        write_config(tmp_path / "worker.toml", url, streams, web), env={}
    )


@contextmanager
def client_for(settings: Settings, credentials: Credentials | None = None) -> Iterator[TestClient]:  # fmt: skip
    """The console app under Starlette's TestClient (lifespan included)."""
    creds = load_credentials(settings.web) if credentials is None else credentials
    with TestClient(create_app(settings, creds), follow_redirects=False) as client:
        yield client


def csrf_of(client: TestClient) -> str:
    """The CSRF token the console gave this client (load a page first)."""
    token = client.cookies.get(CSRF)
    assert token, "no CSRF cookie yet"
    return token


def message(html: str) -> str:
    """The result or problem sentence of a page."""
    found = _RESULT.search(html)
    assert found, html[-2000:]
    return found.group(2)
