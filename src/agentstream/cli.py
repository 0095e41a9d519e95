"""Command line of ``agentstream-worker``: arguments, exit codes, wiring."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

import anyio
import structlog

from agentstream._version import __version__
from agentstream.app import App
from agentstream.config import Settings, load_settings, redacted
from agentstream.errors import (
    ConfigError,
    PermissionDenied,
    StartupError,
    TransportError,
)
from agentstream.event_loop import backend_options
from agentstream.exit_codes import (
    EXIT_CONFIG,
    EXIT_CRASH,
    EXIT_OK,
    EXIT_STARTUP,
    EXIT_USAGE,
)
from agentstream.interrupts import until_interrupted
from agentstream.logging import configure_logging
from agentstream.transport.keys import physical_subscriptions
from agentstream.transport.permissions import acheck_permissions
from agentstream.transport.pool import pool_from_settings
from agentstream.transport.retention import eviction_line
from agentstream.transport.worker_ops import WorkerOps
from agentstream.worker.dispatcher import running_sync_calls
from agentstream.worker.names import name_base
from agentstream.worker.needed_permissions import worker_needs
from agentstream.worker.supervisor import Supervisor

__all__ = [
    "EXIT_CONFIG",
    "EXIT_CRASH",
    "EXIT_OK",
    "EXIT_STARTUP",
    "EXIT_USAGE",
    "import_app",
    "main",
    "worker_main",
]

log = structlog.get_logger("agentstream.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentstream-worker",
        description="Consume Redis Streams through a consumer group and run "
        "the handlers of an agentstream App.",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="TOML configuration file (see config.example.toml)",
    )
    parser.add_argument(
        "--app",
        metavar="MODULE:ATTR",
        help="the App to run; overrides `app` in the file",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the configuration, import the app, ping Redis, and exit",
    )
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("--process-index", type=int, help=argparse.SUPPRESS)
    return parser


def import_app(spec: str | None) -> App:
    """Import the ``App`` named by ``"package.module:attribute"``.

    The current directory is put on ``sys.path`` first, as uvicorn does.

    Raises:
        ConfigError: no app is named, or it cannot be imported, or it is not an App.
    """
    if not spec:
        raise ConfigError('app: no app given; set app = "module:attribute" or --app')
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"app: {spec!r} is not of the form 'module:attribute'")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not _names_part_of(exc.name, module_name):
            raise ConfigError(_user_code_failed(module_name, exc)) from None
        raise ConfigError(
            f"app: cannot import {module_name!r}: no module named {exc.name!r} "
            f"(looked in the current directory {os.getcwd()} and sys.path)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - the user's module raised: show where
        raise ConfigError(_user_code_failed(module_name, exc)) from None
    try:
        app = getattr(module, attr.split(".")[0])
        for part in attr.split(".")[1:]:
            app = getattr(app, part)
    except AttributeError:
        where = getattr(module, "__file__", None) or module_name
        raise ConfigError(
            f"app: module {module_name!r} ({where}) has no attribute {attr!r}"
        ) from None
    if not isinstance(app, App):
        raise ConfigError(
            f"app: {spec!r} is a {type(app).__name__}, not an agentstream.App"
        )
    return app


def _names_part_of(missing: str, module_name: str) -> bool:
    """Whether ``missing`` is ``module_name`` or one of its parent packages."""
    return module_name == missing or module_name.startswith(missing + ".")


def _user_code_failed(module_name: str, exc: BaseException) -> str:
    # The user's bug, not a setting: show their file, line and traceback,
    # without the import machinery's frames (and without local variables).
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith("<frozen importlib")
        and frame.filename not in (__file__, importlib.__file__)
    ]
    lines = traceback.format_list(frames)
    lines += traceback.format_exception_only(type(exc), exc)
    return (
        f"app: importing {module_name!r} raised {type(exc).__name__}; "
        "the traceback of your code:\n"
        "Traceback (most recent call last):\n" + "".join(lines).rstrip("\n")
    )


def worker_main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of ``agentstream-worker``."""
    status = run_worker(argv)
    abandoned = running_sync_calls()
    if abandoned:
        # Sync handlers still running past the shutdown deadline: Python cannot
        # stop their threads, and would wait for them at exit. Their events are
        # not acknowledged (redelivered later); exit now, on time.
        log.warning("sync_handlers_abandoned", count=abandoned)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def run_worker(argv: Sequence[str] | None = None) -> int:
    """Run the worker command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        if args.app:
            settings = settings.model_copy(update={"app": args.app})
        app = import_app(settings.app)
    except ConfigError as exc:
        print(f"agentstream-worker: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log)
    if args.check:
        return check(settings, app)
    if settings.processes > 1 and args.process_index is None:
        from agentstream.worker.processes import run_processes

        try:
            return run_processes(
                settings, list(argv if argv is not None else sys.argv[1:])
            )
        except StartupError as exc:
            print(f"agentstream-worker: cannot start: {exc}", file=sys.stderr)
            return EXIT_STARTUP
        except Exception:
            log.exception("worker_crashed")
            return EXIT_CRASH
    supervisor = Supervisor(
        settings,
        app,
        args.process_index or 0,
        parent_pid=os.getppid() if args.process_index is not None else None,
    )
    try:
        return anyio.run(
            supervisor.run,
            backend="asyncio",
            backend_options=backend_options(settings.event_loop),
        )
    except StartupError as exc:
        print(f"agentstream-worker: cannot start: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    except KeyboardInterrupt:
        return EXIT_OK
    except BaseException:
        log.exception("worker_crashed")
        return EXIT_CRASH


def check(settings: Settings, app: App) -> int:
    """Print the resolved configuration and handlers, then ping Redis."""
    print("configuration:")
    print(json.dumps(redacted(settings), indent=2, default=str))
    uses_uvloop = backend_options(settings.event_loop).get("use_uvloop", False)
    print(f"event loop: {'uvloop' if uses_uvloop else 'asyncio'}")
    print("handlers:")
    for handler in app.handlers:
        where = handler.stream or "*"
        kind = "async" if handler.is_async else "sync"
        print(f"  stream={where} type={handler.event_type} -> {handler.name} ({kind})")
    subscribed = {s.stream for s in settings.subscriptions}
    for stream in sorted(app.streams() - subscribed):
        print(f"warning: handlers for stream {stream!r}, which is not subscribed")

    async def ping() -> None:
        # Read-only: --check creates no stream or group (the worker does at
        # start) and checks the ACL without writing (transport.permissions).
        pool = pool_from_settings(
            settings.redis, socket_timeout_s=5.0, max_connections=2
        )
        try:
            subs = [
                physical
                for sub in settings.subscriptions
                for physical in physical_subscriptions(sub, cluster=pool.cluster)
            ]
            transports = [
                WorkerOps.attach(sub.stream, consumer_group=sub.group, pool=pool)
                for sub in subs
            ]
            needs = worker_needs(
                settings, subs, transports, name_base(settings, 0), check=True
            )
            await acheck_permissions(transports[0], needs)
            for transport in transports:
                info = await transport.agroup_info()
                state = "group exists" if info else "no group yet (created at start)"
                where = f"{transport.stream_name}/{transport.consumer_group}"
                print(f"redis: ok ({transport.location}, {where}: {state})")
                await _warn_unhandled_types(transport, app)
            commands = len({need.command for need in needs})
            print(f"redis: ACL ok (the user may run the {commands} commands needed)")
            try:
                policy: str | None = await transport.amaxmemory_policy()
            except PermissionDenied:
                policy = None
            print(eviction_line(policy))
        finally:
            await pool.aclose()

    try:
        anyio.run(until_interrupted, ping, backend="asyncio")
    except (TransportError, ConfigError) as exc:
        print(f"agentstream-worker: redis check failed: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    return EXIT_OK


#: How many of a stream's latest entries --check reads for unhandled types.
CHECK_RECENT = 1000


async def _warn_unhandled_types(transport: WorkerOps, app: App) -> None:
    """Print the types among the stream's recent entries that no handler takes."""
    types = await transport.arecent_types(CHECK_RECENT)
    stream = transport.stream_name
    missing = {t: n for t, n in types.items() if app.resolve(stream, t) is None}
    if missing:
        listed = ", ".join(f"{t!r} ({n})" for t, n in sorted(missing.items())[:20])
        print(
            f"warning: {stream}: event types in the last {CHECK_RECENT} entries "
            f"that no handler takes: {listed}"
        )


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of the ``agentstream`` operator command."""
    from agentstream.admin import run_admin

    sys.exit(run_admin(argv))


if __name__ == "__main__":
    worker_main()
