"""systemd's notify protocol: READY, STATUS, WATCHDOG and STOPPING datagrams."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

__all__ = ["SystemdNotifier"]

log = structlog.get_logger("agentstream.systemd")


class SystemdNotifier:
    """Sends sd_notify messages when the service runs under ``Type=notify``.

    Does nothing when ``NOTIFY_SOCKET`` is not set. ``watchdog_s`` is the
    service's ``WatchdogSec`` (from ``WATCHDOG_USEC``), or None without a watchdog
    or when ``WATCHDOG_PID`` names another process.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        # A leading "@" names a socket in the abstract namespace.
        if address is not None and address.startswith("@"):
            address = "\0" + address[1:]
        self._address = address
        self.watchdog_s: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        ours = not pid or pid == str(os.getpid())
        if address and ours and usec.isdigit() and int(usec) > 0:
            self.watchdog_s = int(usec) / 1_000_000
        self._failed = False

    @property
    def enabled(self) -> bool:
        """Whether a notify socket was given."""
        return self._address is not None

    def notify(self, *assignments: str) -> None:
        """Send ``KEY=value`` lines in one datagram; failures are logged once."""
        if self._address is None:
            return
        message = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self._address)
                sock.sendall(message)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("sd_notify_failed", error=str(exc))
