"""The ``agentstream`` parser, and ``run_admin``: dispatch and exit statuses."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Awaitable, Callable, Sequence

import anyio

from agentstream._version import __version__
from agentstream.admin._common import (
    CommandFailed,
    Context,
    UsageError,
    err,
)
from agentstream.admin._common import bound_arg as _bound
from agentstream.admin._common import entry_id_arg as _entry_id
from agentstream.admin._common import positive_arg as _positive
from agentstream.admin._dlq import run_list, run_purge, run_replay, run_show
from agentstream.admin._events import run_publish, run_tail
from agentstream.admin._operate_args import add_operator_parsers
from agentstream.admin._stats import run_stats
from agentstream.admin._web import run_web
from agentstream.config import load_settings, redact_url
from agentstream.errors import ConfigError, TransportError
from agentstream.exit_codes import (
    EXIT_CONFIG,
    EXIT_CRASH,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
)
from agentstream.interrupts import until_interrupted

Command = Callable[[argparse.Namespace, Context], Awaitable[int]]

_CONFIG_HELP = "the worker's TOML configuration (environment overrides apply)"
_URL_HELP = "the Redis to use, instead of redis.url of the configuration"


class _Parsers:
    """The parser, and the sub-parsers whose own errors need their usage line."""

    def __init__(self) -> None:
        # --config may also come after the command; SUPPRESS keeps a value given
        # before it from being overwritten by the sub-parser's default.
        config = argparse.ArgumentParser(add_help=False)
        config.add_argument(
            "--config", metavar="PATH", default=argparse.SUPPRESS, help=_CONFIG_HELP
        )
        config.add_argument(
            "--redis-url", metavar="URL", default=argparse.SUPPRESS, help=_URL_HELP
        )
        stream = argparse.ArgumentParser(add_help=False)
        stream.add_argument(
            "--stream", help="whose dead letters (default: the first subscription's)"
        )
        filters = argparse.ArgumentParser(add_help=False)
        group = filters.add_argument_group("filters")
        group.add_argument("--type", metavar="T", help="event type (wildcards: *, ?)")
        group.add_argument(
            "--reason", metavar="R", help="dead-letter reason (wildcards)"
        )
        group.add_argument(
            "--text", metavar="S", help="text in the error (case-insensitive)"
        )
        group.add_argument(
            "--from", dest="start", metavar="ID", type=_bound, default="-",
            help="first dead-letter id (inclusive)",
        )  # fmt: skip
        group.add_argument(
            "--to", dest="end", metavar="ID", type=_bound, default="+",
            help="last dead-letter id (inclusive)",
        )  # fmt: skip
        group.add_argument(
            "--count", metavar="N", type=_positive, help="at most N dead letters"
        )

        self.root = argparse.ArgumentParser(
            prog="agentstream",
            description="Inspect and operate the Redis Streams of agentstream-worker.",
        )
        self.root.add_argument("--config", metavar="PATH", help=_CONFIG_HELP)
        self.root.add_argument("--redis-url", metavar="URL", help=_URL_HELP)
        self.root.add_argument("--version", action="version", version=__version__)
        sub = self.root.add_subparsers(dest="command", required=True, metavar="COMMAND")

        stats = sub.add_parser(
            "stats", parents=[config], help="state of every subscription"
        )
        stats.add_argument("--json", action="store_true", help="print JSON")
        stats.set_defaults(run=run_stats)

        dlq = sub.add_parser("dlq", parents=[config], help="dead letters")
        actions = dlq.add_subparsers(dest="action", required=True, metavar="ACTION")
        listing = actions.add_parser(
            "list", parents=[config, filters], help="list dead letters, oldest first"
        )
        listing.add_argument(
            "stream", nargs="?", help="its dead letters (default: first subscription)"
        )
        listing.add_argument("--json", action="store_true", help="print JSON")
        listing.set_defaults(run=run_list)
        show = actions.add_parser(
            "show", parents=[config, stream], help="print one dead letter in full"
        )
        show.add_argument("id", type=_entry_id, help="the dead letter's id")
        show.set_defaults(run=run_show)
        self.replay = actions.add_parser(
            "replay",
            parents=[config, stream, filters],
            help="put dead letters back on their original stream",
        )
        self.replay.add_argument(
            "ids", nargs="*", type=_entry_id, metavar="ID", help="dead-letter ids"
        )
        self.replay.add_argument(
            "--all", action="store_true", help="all dead letters matching the filters"
        )
        self.replay.set_defaults(run=run_replay)
        purge = actions.add_parser(
            "purge",
            parents=[config, stream, filters],
            help="delete dead letters (all of them without filters)",
        )
        purge.add_argument("--yes", action="store_true", help="do not ask")
        purge.set_defaults(run=run_purge)

        publish = sub.add_parser("publish", parents=[config], help="publish one event")
        publish.add_argument("stream")
        publish.add_argument("type")
        publish.add_argument("data", metavar="JSON_DATA", help="a JSON object")
        publish.add_argument("--metadata", metavar="JSON", help="a JSON object")
        publish.set_defaults(run=run_publish)

        tail = sub.add_parser(
            "tail", parents=[config], help="print new events as they arrive"
        )
        tail.add_argument("stream")
        tail.add_argument(
            "--from", dest="start", metavar="ID", type=_bound,
            help="print the events after ID (0: all); default: only new ones",
        )  # fmt: skip
        tail.add_argument(
            "--count", metavar="N", type=_positive, help="stop after N events"
        )
        tail.set_defaults(run=run_tail)
        add_operator_parsers(sub, config)

    def parse(self, argv: Sequence[str] | None) -> argparse.Namespace:
        """Parse; argparse exits with status 2 (usage) or 0 (``--help``)."""
        args = self.root.parse_args(argv)
        if getattr(args, "run", None) is run_replay:
            if bool(args.ids) == args.all:
                self.replay.error("give dead-letter IDs or --all (not both)")
            filtered = args.type or args.reason or args.count
            if args.ids and (filtered or (args.start, args.end) != ("-", "+")):
                self.replay.error("the filters apply to --all only")
        return args


async def _run(command: Command, args: argparse.Namespace, ctx: Context) -> int:
    try:
        status = await until_interrupted(command, args, ctx)
        # Here, so that a reader gone away (BrokenPipeError) is handled below.
        sys.stdout.flush()
        return status
    finally:
        with anyio.CancelScope(shield=True):
            await ctx.aclose()


def _exit_status(code: object) -> int:
    if code is None:
        return EXIT_OK
    return code if isinstance(code, int) else EXIT_USAGE


def _sole(exc: BaseException) -> BaseException:
    """The one exception inside task-group wrappers (tail runs a task group)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _failure(exc: BaseException, args: argparse.Namespace) -> int:
    """Report what stopped a command in one line; return the exit status."""
    if isinstance(exc, UsageError):
        err(f"agentstream: {exc}")
        return EXIT_USAGE
    if isinstance(exc, CommandFailed | TransportError):
        err(f"agentstream: {exc}")
        return EXIT_CRASH
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_OK if args.run is run_tail else EXIT_INTERRUPTED
    if isinstance(exc, BrokenPipeError):
        # The reader went away (`agentstream tail s | head`): stop quietly, and
        # keep the interpreter from failing again when it flushes stdout.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    if isinstance(exc, Exception):
        # An operator tool prints one line, never a traceback.
        err(f"agentstream: unexpected error: {type(exc).__name__}: {exc}")
        return EXIT_CRASH
    raise exc  # SystemExit and the like


def run_admin(argv: Sequence[str] | None = None) -> int:
    """Run the ``agentstream`` command line.

    Args:
        argv: the arguments, without the program name; ``sys.argv[1:]`` if None.

    Returns:
        The exit status: 0 done, 1 failed (Redis unreachable, unknown id, ...),
        2 usage error, 78 configuration error, 130 interrupted (except tail).
    """
    try:
        args = _Parsers().parse(argv)
    except SystemExit as exc:
        return _exit_status(exc.code)
    url = getattr(args, "redis_url", None)
    env = None if url is None else {**os.environ, "AGENTSTREAM_REDIS__URL": url}
    try:
        settings = load_settings(getattr(args, "config", None), env=env)
    except ConfigError as exc:
        err(f"agentstream: configuration error: {exc}")
        return EXIT_CONFIG
    # Which Redis a command touches, on stderr so that stdout stays parseable.
    user = settings.redis.username
    err(f"redis: {redact_url(settings.redis.url)}{f' (user {user})' if user else ''}")
    if args.command == "web":
        return run_web(args, settings)
    try:
        return anyio.run(_run, args.run, args, Context(settings), backend="asyncio")
    except BaseException as exc:  # noqa: BLE001 - sorted out by _failure
        return _failure(_sole(exc), args)
