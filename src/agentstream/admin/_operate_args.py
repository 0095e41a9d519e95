"""The parsers of ``pending``, ``consumers``, ``workers``, ``group``, ``pause``,
``resume`` and ``web``."""

from __future__ import annotations

import argparse
from typing import Any

from agentstream.admin._common import (
    entry_id_arg,
    group_id_arg,
    non_negative_arg,
    positive_arg,
)
from agentstream.admin._operate import (
    run_consumers_list,
    run_consumers_remove,
    run_group_reset,
    run_pause,
    run_pending_ack,
    run_pending_claim,
    run_pending_list,
    run_pending_show,
    run_resume,
    run_workers,
)

_Subparsers = Any  # argparse's _SubParsersAction is private


def add_operator_parsers(sub: _Subparsers, config: argparse.ArgumentParser) -> None:
    """Add the operator commands to the ``agentstream`` parser."""
    target = argparse.ArgumentParser(add_help=False)
    target.add_argument(
        "--stream", help="the subscription's stream (default: the first one's)"
    )
    target.add_argument(
        "--group", help="its consumer group (default: the configured one, or agents)"
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON")
    yes = argparse.ArgumentParser(add_help=False)
    yes.add_argument("--yes", action="store_true", help="do not ask")
    common = [config, target]

    pending = sub.add_parser(
        "pending", parents=[config], help="a group's pending entries"
    )
    actions = pending.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list", parents=[*common, as_json], help="list pending entries, oldest first"
    )
    listing.add_argument("--consumer", help="owned by this consumer")
    listing.add_argument(
        "--min-idle-ms", metavar="MS", type=non_negative_arg,
        help="idle at least MS milliseconds",
    )  # fmt: skip
    listing.add_argument(
        "--min-deliveries", metavar="N", type=positive_arg,
        help="delivered at least N times",
    )  # fmt: skip
    listing.add_argument(
        "--after", metavar="ID", type=entry_id_arg, help="start after this id"
    )
    listing.add_argument(
        "--count", metavar="N", type=positive_arg, help="at most N (default 100)"
    )
    listing.set_defaults(run=run_pending_list)
    show = actions.add_parser(
        "show", parents=[*common, as_json],
        help="one pending entry: owner, idle, deliveries, fields, last error",
    )  # fmt: skip
    show.add_argument("id", type=entry_id_arg)
    show.set_defaults(run=run_pending_show)
    claim = actions.add_parser(
        "claim", parents=common,
        help="hand stuck entries to the reaper for redelivery now",
    )  # fmt: skip
    claim.add_argument("ids", nargs="+", type=entry_id_arg, metavar="ID")
    claim.set_defaults(run=run_pending_claim)
    ack = actions.add_parser(
        "ack", parents=[*common, yes], help="acknowledge entries without handling"
    )
    ack.add_argument("ids", nargs="+", type=entry_id_arg, metavar="ID")
    ack.set_defaults(run=run_pending_ack)

    consumers = sub.add_parser(
        "consumers", parents=[config], help="a group's consumers"
    )
    actions = consumers.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list", parents=[*common, as_json],
        help="consumers with pending count, idle time and owning worker",
    )  # fmt: skip
    listing.set_defaults(run=run_consumers_list)
    remove = actions.add_parser(
        "remove", parents=common, help="remove consumers that own nothing"
    )
    remove.add_argument("names", nargs="+", metavar="NAME")
    remove.set_defaults(run=run_consumers_remove)

    workers = sub.add_parser(
        "workers", parents=[config, as_json],
        help="running worker processes (from their consumer-name leases)",
    )  # fmt: skip
    workers.set_defaults(run=run_workers)

    group = sub.add_parser("group", parents=[config], help="a consumer group")
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    reset = actions.add_parser(
        "reset", parents=[*common, yes],
        help="set the group's last-delivered id (0: all again, $: skip to now)",
    )  # fmt: skip
    reset.add_argument("id", type=group_id_arg, metavar="ID")
    reset.set_defaults(run=run_group_reset)

    for name, run, text in (
        ("pause", run_pause, "stop workers reading a subscription (within 1 s)"),
        ("resume", run_resume, "let workers read a paused subscription again"),
    ):
        command = sub.add_parser(name, parents=[config], help=text)
        command.add_argument(
            "stream", nargs="?", help="the stream (default: the first subscription)"
        )
        command.add_argument("--group", help="its consumer group")
        if name == "pause":
            command.add_argument("--by", help="who pauses it, shown in stats")
        command.set_defaults(run=run)

    web = sub.add_parser(
        "web", parents=[config], help="serve the web console (needs the web extra)"
    )
    web.add_argument("--host", help="address to bind (default: web.host)")
    web.add_argument(
        "--port", type=non_negative_arg, help="TCP port (default: web.port)"
    )
    web.set_defaults(run=None, command="web")
