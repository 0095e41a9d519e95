"""An example agentstream app: the handlers of a small agent backend.

An agent run streams its answer as ``token`` events, may call a tool
(``tool_call``, then ``tool_result``), and ends with ``complete``. Every event
carries ``data["run_id"]``. ``python -m examples.producer`` publishes such runs.
An event without a run id, or a tool call without a tool name or with arguments
the tool does not take, cannot succeed however often it is retried: its handler
raises ``DeadLetter`` to send it to the dead-letter stream (``agent_output:dlq``)
at once. The demo producer's second run has such a tool call (the model wrote
``q`` where ``search_docs`` takes ``query``), so the example shows a dead letter.

Run it with the example configuration, which names ``examples.agent_app:app``::

    agentstream-worker --config config.example.toml

or let ``scripts/run-example`` start Redis, the worker and the producer for you.

The token buffers live in this process's memory, which is enough for a demo
(the example runs one worker process, and the producer spaces events out so
that a run's events are handled in order). A real app would keep them in Redis
or a database and order tokens by a sequence number, since handlers of one
stream run concurrently and a run may be handled by several worker processes.
"""

from __future__ import annotations

import time

import structlog

from agentstream import DeadLetter, Event
from agentstream.app import App

__all__ = ["TOOLS", "app", "buffers"]

log = structlog.get_logger(__name__)

app = App()

#: The tools the agent may call, with the arguments each one requires.
TOOLS: dict[str, tuple[str, ...]] = {
    "get_weather": ("city",),
    "search_docs": ("query",),
    "calculator": ("expression",),
}

#: The tokens received so far for each run still in progress, by run id.
buffers: dict[str, list[str]] = {}


def _run_id(event: Event) -> str:
    run_id = event.data.get("run_id")
    if not isinstance(run_id, str) or not run_id:
        raise DeadLetter(f"{event.type} without run_id")
    return run_id


@app.handler("token")
async def on_token(event: Event) -> None:
    """Append the token to its run's buffer."""
    run_id = _run_id(event)
    token = str(event.data.get("token", ""))
    buffers.setdefault(run_id, []).append(token)
    log.info("token", run_id=run_id, token=token)


@app.handler("tool_call", "tool_result")
def on_tool(event: Event) -> None:
    """Run (or record the result of) a tool; a blocking call, so a plain def.

    Raises:
        DeadLetter: a ``tool_call`` names no known tool, or lacks an argument
            the tool requires; retrying cannot fix either.
    """
    run_id = _run_id(event)
    name = event.data.get("name")
    if event.type == "tool_call":
        _check_call(name, event.data.get("args"))
    time.sleep(0.05)  # stands for a blocking tool: an HTTP call, a database query
    if event.type == "tool_call":
        log.info("tool_call", run_id=run_id, tool=name, args=event.data.get("args"))
    else:
        log.info(
            "tool_result", run_id=run_id, tool=name, result=event.data.get("result")
        )


def _check_call(name: object, args: object) -> None:
    if not name:
        raise DeadLetter("tool_call without name")
    if not isinstance(name, str) or name not in TOOLS:
        raise DeadLetter(f"unknown tool {name!r}")
    given = args if isinstance(args, dict) else {}
    for required in TOOLS[name]:
        if required not in given:
            raise DeadLetter(f"{name}: missing argument {required!r}")


@app.handler("complete")
async def on_complete(event: Event) -> None:
    """Log the run's assembled answer and forget its buffer."""
    run_id = _run_id(event)
    text = "".join(buffers.pop(run_id, []))
    log.info("complete", run_id=run_id, text=text)


@app.handler("*")
async def on_unknown(event: Event) -> None:
    """Log (and acknowledge) events of a type no other handler takes."""
    log.warning("unknown event type", type=event.type, id=event.id, stream=event.stream)
