"""Exit statuses of ``agentstream-worker`` and ``agentstream`` (README: Exit codes)."""

from __future__ import annotations

__all__ = [
    "EXIT_CONFIG",
    "EXIT_CRASH",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_STARTUP",
    "EXIT_USAGE",
]

EXIT_OK = 0
EXIT_CRASH = 1
EXIT_USAGE = 2  # argparse's own status for bad arguments
EXIT_STARTUP = 3
EXIT_CONFIG = 78  # sysexits EX_CONFIG: systemd's RestartPreventExitStatus=78
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
