"""How the supervisor reads the failures of a consumer's task groups."""

from __future__ import annotations

from agentstream import errors
from agentstream.worker.supervisor import unwrap


def test_one_exception_in_nested_groups() -> None:
    inner = errors.ConnectionError("down", "xack")
    assert unwrap(ExceptionGroup("a", [ExceptionGroup("b", [inner])])) is inner


def test_two_tasks_losing_redis_at_once_are_one_redis_failure() -> None:
    """The reader and the handling side of one consumer both lost Redis: a
    Redis outage to back off from, not a crash with a traceback."""
    first = errors.ConnectionError("timeout", "xreadgroup")
    group = ExceptionGroup(
        "consumer", [first, ExceptionGroup("acks", [errors.TransportError("x")])]
    )
    assert unwrap(group) is first


def test_a_group_with_another_failure_stays_a_group() -> None:
    group = ExceptionGroup(
        "consumer", [errors.ConnectionError("down", "xack"), KeyError("bug")]
    )
    assert unwrap(group) is group
