"""The exceptions agentstream raises."""

from __future__ import annotations

__all__ = [
    "AgentStreamError",
    "AuthenticationError",
    "ConfigError",
    "ConnectionError",
    "DeadLetter",
    "HandlerConflict",
    "PermissionDenied",
    "Refused",
    "ReplicationTimeout",
    "Retry",
    "StartupError",
    "TransportError",
]


class AgentStreamError(Exception):
    """Root of every error agentstream raises on purpose."""


class ConfigError(AgentStreamError):
    """The configuration is missing, malformed or names an invalid value.

    The message names the offending field; the worker exits with status 78.
    """


class HandlerConflict(AgentStreamError):
    """Two handlers were registered for the same stream and event type."""


class TransportError(AgentStreamError):
    """A Redis command failed; the message names the server, never a password.

    Attributes:
        operation: the Redis command or step that failed (``"xreadgroup"``, ...).
    """

    def __init__(self, message: str, operation: str = "other") -> None:
        super().__init__(message)
        self.operation = operation


class ConnectionError(TransportError):
    """Redis could not be reached, or the connection broke mid-command."""


class AuthenticationError(TransportError):
    """Redis refused the credentials (wrong password or unknown user)."""


class Refused(TransportError):
    """Redis answered but refused the command: it is not down, and retrying the
    same command will fail the same way until an operator acts.

    Attributes:
        reason: the error code Redis gave: ``"OOM"`` (``maxmemory`` reached with
            ``noeviction``), ``"READONLY"`` (a replica), ``"MISCONF"`` (writes
            stopped after a failed save), ``"BUSY"`` (a script runs too long),
            ``"NOPERM"`` (the ACL), ``"NOREPLICAS"``, ``"MASTERDOWN"``.
    """

    def __init__(
        self, message: str, operation: str = "other", reason: str = ""
    ) -> None:
        super().__init__(message, operation)
        self.reason = reason or "refused"


class PermissionDenied(Refused):
    """Redis refused a command for the ACL user (NOPERM).

    Attributes:
        command: the command the ACL refused, as ``ACL SETUSER`` names it
            (``"xdel"``, ``"xinfo|groups"``); the operation when Redis named none.
    """

    def __init__(
        self, message: str, operation: str = "other", command: str = ""
    ) -> None:
        super().__init__(message, operation, "NOPERM")
        self.command = command or operation


class ReplicationTimeout(TransportError):
    """Fewer replicas than ``wait_replicas`` confirmed a write in time (WAIT).

    The entry is on the primary and may still replicate; a failover before it
    does would lose it. Publishing again is safe under at-least-once delivery.

    Attributes:
        entry_id: the id the primary gave the entry.
        replicas: how many replicas confirmed it.
    """

    def __init__(self, message: str, entry_id: str, replicas: int) -> None:
        super().__init__(message, "wait")
        self.entry_id = entry_id
        self.replicas = replicas


class StartupError(Exception):
    """The worker cannot start and retrying will not help (credentials, ACL,
    a metrics port taken); the worker exits with status 3."""


class DeadLetter(Exception):
    """Raised by a handler to send the event to the dead-letter stream now.

    Args:
        reason: a short machine-friendly reason stored with the dead letter.
    """

    def __init__(self, reason: str = "dead_letter") -> None:
        super().__init__(reason)
        self.reason = reason


class Retry(Exception):
    """Raised by a handler to leave the event unacknowledged for redelivery.

    Unlike any other exception it is not logged as a failure.
    """
