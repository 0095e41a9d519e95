"""The ``agentstream`` operator command: publish and inspect streams."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from agentstream.config import load_settings
from agentstream.errors import AgentStreamError, ConfigError
from agentstream.pool import pool_from_settings
from agentstream.transport import RedisStreamTransport

__all__ = ["run_admin"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentstream")
    parser.add_argument("--config", metavar="PATH", help="worker configuration file")
    sub = parser.add_subparsers(dest="command", required=True)
    pub = sub.add_parser("publish", help="publish one event")
    pub.add_argument("stream")
    pub.add_argument("type")
    pub.add_argument("data", help="a JSON object")
    pub.add_argument("--metadata", help="a JSON object")
    return parser


def _json_object(text: str, what: str) -> dict[str, object]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a JSON object")
    return value


def run_admin(argv: Sequence[str] | None = None) -> int:
    """Run the operator command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        data = _json_object(args.data, "JSON_DATA")
        metadata = _json_object(args.metadata, "--metadata") if args.metadata else None
        pool = pool_from_settings(
            settings.redis, socket_timeout_s=10, max_connections=2
        )
        transport = RedisStreamTransport(args.stream, pool=pool)
        print(transport.publish(args.type, data, metadata))
        pool.close()
    except ConfigError as exc:
        print(f"agentstream: {exc}", file=sys.stderr)
        return 2
    except AgentStreamError as exc:
        print(f"agentstream: {exc}", file=sys.stderr)
        return 1
    return 0
