"""SystemdNotifier: reading the environment systemd gives a notify service."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from agentstream.observe.systemd import SystemdNotifier


def test_disabled_without_notify_socket() -> None:
    """Without NOTIFY_SOCKET nothing is sent and there is no watchdog."""
    notifier = SystemdNotifier({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert notifier.watchdog_s is None
    notifier.notify("READY=1")  # a no-op, not an error


def test_watchdog_interval_and_pid(tmp_path: Path) -> None:
    """WATCHDOG_USEC gives the interval only for our own pid."""
    sock = str(tmp_path / "n.sock")
    ours = {"NOTIFY_SOCKET": sock, "WATCHDOG_USEC": "30000000"}
    assert SystemdNotifier(ours).watchdog_s == 30.0
    mine = {**ours, "WATCHDOG_PID": str(os.getpid())}
    assert SystemdNotifier(mine).watchdog_s == 30.0
    other = {**ours, "WATCHDOG_PID": "1"}
    assert SystemdNotifier(other).watchdog_s is None


def test_sends_one_datagram(tmp_path: Path) -> None:
    """notify() sends all lines in one datagram to the socket."""
    path = tmp_path / "n.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        SystemdNotifier({"NOTIFY_SOCKET": str(path)}).notify("READY=1", "STATUS=ok")
        assert server.recv(100) == b"READY=1\nSTATUS=ok"


def test_abstract_socket_and_send_failure_do_not_raise() -> None:
    """An abstract address is accepted; a socket nobody listens on is logged."""
    notifier = SystemdNotifier({"NOTIFY_SOCKET": "@agentstream-test-nobody"})
    assert notifier.enabled
    notifier.notify("READY=1")
