"""RedisState and redis_cause: one view of Redis per process, errors unwrapped."""

from __future__ import annotations

import anyio
import pytest
from structlog.testing import capture_logs

from agentstream.errors import (
    ConnectionError,
    PermissionDenied,
    Refused,
    TransportError,
)
from agentstream.worker.redis_state import RedisState, redis_cause


def lost(n: int = 0) -> ConnectionError:
    return ConnectionError(f"cannot reach Redis ({n})", "xreadgroup")


def test_a_group_of_only_redis_errors_is_a_redis_error() -> None:
    """Two consumers of one task group losing the connection at once."""
    first = lost(1)
    group = ExceptionGroup("tg", [first, ExceptionGroup("inner", [lost(2)])])
    assert redis_cause(group) is first


def test_a_refusal_outranks_a_lost_connection_in_a_group() -> None:
    refused = Refused("OOM command not allowed", "set", "OOM")
    assert redis_cause(ExceptionGroup("tg", [lost(), refused])) is refused


def test_a_group_with_another_error_stays_a_group() -> None:
    group = ExceptionGroup("tg", [lost(), ValueError("bug")])
    assert redis_cause(group) is group


def test_a_single_nested_exception_is_unwrapped() -> None:
    bug = ValueError("bug")
    assert redis_cause(ExceptionGroup("a", [ExceptionGroup("b", [bug])])) is bug


def test_each_change_of_state_is_logged_once() -> None:
    state = RedisState()
    with capture_logs() as logs:
        for n in range(5):
            state.failed(lost(n))
        error = lost(9)
        state.failed(error)
        state.failed(error)  # the same failure, seen again by a supervisor
        for _ in range(3):
            state.answered()
        state.failed(TransportError("WRONGTYPE", "xadd"))  # answered: still up
    assert [r["event"] for r in logs] == ["redis_unavailable", "redis_available"]
    errors, reconnects, _ = state.take()
    assert errors == {"xreadgroup": 6, "xadd": 1} and reconnects == 1
    assert state.up


def test_a_refusal_is_an_answer_and_names_its_code() -> None:
    state = RedisState()
    state.failed(lost())
    with capture_logs() as logs:
        state.failed(Refused("command not allowed", "set", "OOM"))
        state.failed(Refused("command not allowed", "set", "OOM"))
        state.failed(PermissionDenied("no permissions", "xclaim"))
    assert state.up
    assert [r["event"] for r in logs] == [
        "redis_refused",
        "redis_available",
        "redis_permission_denied",
    ]
    assert state.recent_refusal_reason() == "NOPERM"
    assert state.take()[2] == {"OOM": 2, "NOPERM": 1}


@pytest.mark.anyio
async def test_every_waiter_wakes_when_any_call_sees_redis_answer() -> None:
    state = RedisState()
    state.failed(lost())
    woken: list[int] = []

    async def waiter(n: int) -> None:
        await state.wait_answer()
        woken.append(n)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for n in range(4):
                tg.start_soon(waiter, n)
            await anyio.wait_all_tasks_blocked()
            assert woken == []
            state.answered()
    assert sorted(woken) == [0, 1, 2, 3]
    await state.wait_answer()  # up: returns at once
