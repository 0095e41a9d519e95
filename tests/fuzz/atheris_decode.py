"""Coverage-guided fuzzing of ``decode_event`` with atheris (libFuzzer).

Run as a script, not imported by pytest: libFuzzer ends the process when it is
done. ``test_fuzz_atheris.py`` runs it for a fixed number of inputs::

    python tests/fuzz/atheris_decode.py -runs=20000 -seed=1

Each input is cut into up to six fields whose names are mostly the known ones
(``type``, ``data``, ``metadata``, ``timestamp``) and whose values are raw
bytes; the decoder must return an ``Event`` that holds what it claims, or one
of its reasons. Anything else (an exception, a wrong result) is a crash that
libFuzzer reports with the input that caused it.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from typing import Any

from fuzz_strategies import REASONS

# atheris ships no type information: Any keeps mypy out of its way.
atheris: Any = importlib.import_module("atheris")

# Only the decoder and the JSON module it calls are instrumented: the rest of
# the package (redis, anyio, ...) would take seconds and give no signal.
with atheris.instrument_imports(include=["agentstream.event", "json"]):
    from agentstream.event import Event, decode_event

_NAMES = (b"type", b"data", b"metadata", b"timestamp")


def _fields(data: bytes) -> dict[bytes, bytes]:
    fdp = atheris.FuzzedDataProvider(data)
    fields: dict[bytes, bytes] = {}
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        pick = fdp.ConsumeIntInRange(0, len(_NAMES))
        name = _NAMES[pick] if pick < len(_NAMES) else fdp.ConsumeBytes(8)
        fields[name] = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 512))
    return fields


def test_one_input(data: bytes) -> None:
    """libFuzzer's entry point: one input, checked."""
    fields = _fields(data)
    result = decode_event("s", "1-0", fields, 1, "c", "g")
    if isinstance(result, str):
        assert result in REASONS, f"unknown reason {result!r} for {fields!r}"
        return
    assert isinstance(result, Event), f"neither an Event nor a reason: {result!r}"
    assert result.type, fields
    assert result.type == fields[b"type"].decode(), (result.type, fields)
    assert type(result.data) is dict, (result.data, fields)
    assert result.data == json.loads(fields[b"data"].decode()), (result.data, fields)
    assert type(result.metadata) is dict, (result.metadata, fields)
    assert math.isfinite(result.timestamp), (result.timestamp, fields)


def main() -> None:
    """Fuzz with the command-line options of libFuzzer (``-runs=N`` ...)."""
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
