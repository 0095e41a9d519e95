"""Testing the example app's handlers against a real Redis, with agentstream.testing.

Run with ``pytest examples/test_agent_app.py``: the ``redis_url`` and
``stream_name`` fixtures come with agentstream (a throwaway redis-server for the
session); ``run_worker`` runs the app in this process.
"""

from __future__ import annotations

import pytest

from agentstream.testing import run_worker
from examples import agent_app

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's async client needs asyncio


async def test_tokens_are_buffered_and_a_tool_call_without_name_dead_lettered(
    redis_url: str, stream_name: str
) -> None:
    async with run_worker(agent_app.app, redis_url, streams=[stream_name]) as worker:
        hello = await worker.publish("token", {"run_id": "r1", "token": "Hello"})
        world = await worker.publish("token", {"run_id": "r1", "token": " world"})
        bad = await worker.publish("tool_call", {"run_id": "r1"})  # names no tool
        await worker.drained()  # every event acknowledged or dead-lettered

        assert agent_app.buffers["r1"] == ["Hello", " world"]
        assert (await worker.outcome(hello)).acked
        assert (await worker.outcome(world)).acked
        outcome = await worker.outcome(bad)
        assert outcome.dead_lettered
        assert outcome.dead_letter_reason == "tool_call without name"
        assert [call.outcome for call in outcome.calls] == ["dead_letter"]
