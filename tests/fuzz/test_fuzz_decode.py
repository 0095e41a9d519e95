"""The strict decoder under hostile input: ``agentstream.event.decode_event``.

For any fields a producer can XADD, ``decode_event`` returns either a valid
``Event`` (data and metadata JSON objects, a finite timestamp, the type as
sent) or one of its short reasons; it never raises. Hypothesis draws the
entries (``fuzz_strategies.entries``); the explicit cases pin the edges.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from fuzz_strategies import REASONS, entries, field_values, json_objects, json_values
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agentstream.event import (
    Event,
    _json_object,
    _strict_object,
    decode_event,
    encode_fields,
)

pytestmark = pytest.mark.fuzz

_SETTINGS = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _finite(value: Any) -> bool:
    """Whether a decoded JSON value holds no NaN or infinity anywhere."""
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return False
        if isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return True


@_SETTINGS
@given(fields=entries())
@example(fields={b"type": b"t", b"data": b'{"a": 1, "a": 2}'})
@example(fields={b"type": b"t", b"data": b"[" * 100_000})
@example(fields={b"type": b"t", b"data": b'{"a": NaN}'})
@example(fields={b"type": b"\xff", b"data": b"{}"})
@example(fields={b"type": b"t", b"data": b"{}", b"timestamp": b"inf"})
def test_decode_event_returns_an_event_or_a_reason(fields: dict[bytes, bytes]) -> None:
    """Any entry decodes to a well-formed Event or to one of the documented reasons, never an exception."""
    result = decode_event("s", "1-0", fields, 3, "c", "g")
    if isinstance(result, str):
        assert result in REASONS, result
        return
    assert isinstance(result, Event)
    assert (result.id, result.stream, result.delivery_count) == ("1-0", "s", 3)
    assert (result.consumer, result.group) == ("c", "g")
    assert result.type == fields[b"type"].decode() and result.type
    assert type(result.data) is dict and type(result.metadata) is dict
    assert result.data == json.loads(fields[b"data"].decode())
    if b"metadata" in fields:
        assert result.metadata == json.loads(fields[b"metadata"].decode())
    assert isinstance(result.timestamp, float) and math.isfinite(result.timestamp)


@_SETTINGS
@given(
    event_type=st.text(min_size=1, max_size=20),
    data=json_objects,
    metadata=json_objects,
)
def test_what_publish_writes_always_decodes(
    event_type: str, data: dict[str, Any], metadata: dict[str, Any]
) -> None:
    """Every entry encode_fields() writes (the upstream wire format) decodes back to the same event."""
    fields = {
        k.encode(): v.encode()
        for k, v in encode_fields(event_type, data, metadata).items()
    }
    result = decode_event("s", "1-0", fields)
    assert isinstance(result, Event), result
    assert (result.type, result.data) == (event_type, data)
    assert result.metadata == metadata


@_SETTINGS
@given(value=json_values.filter(lambda v: not isinstance(v, dict)))
def test_json_that_is_not_an_object_is_refused(value: Any) -> None:
    """data that is valid JSON but not an object is refused with its own reason."""
    fields = {b"type": b"t", b"data": json.dumps(value).encode()}
    assert decode_event("s", "1-0", fields) == "data is not a JSON object"
    fields = {b"type": b"t", b"data": b"{}", b"metadata": json.dumps(value).encode()}
    assert decode_event("s", "1-0", fields) == "metadata is not a JSON object"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"a": NaN}', "data is not valid JSON"),
        (b'{"a": [Infinity]}', "data is not valid JSON"),
        (b'{"a": {"b": -Infinity}}', "data is not valid JSON"),
        (b"[" * 200_000 + b"]" * 200_000, "data is not valid JSON"),
        (b'{"a": ' * 200_000 + b"1" + b"}" * 200_000, "data is not valid JSON"),
        (
            b'{"n": 1' + b"0" * 5000 + b"}",
            "data is not valid JSON",
        ),  # > int digit limit
        (b'{"a": "\xff"}', "data is not UTF-8"),
        (b"\xef\xbb\xbf{}", "data is not valid JSON"),  # a BOM is not JSON
        (b'"{}"', "data is not a JSON object"),
        (b"null", "data is not a JSON object"),
        (b"", "data is not valid JSON"),
    ],
)
def test_edge_cases(data: bytes, reason: str) -> None:
    """NaN, infinities, nesting past the recursion limit, huge integers and stray bytes give their reason."""
    assert decode_event("s", "1-0", {b"type": b"t", b"data": data}) == reason


def test_huge_valid_entry_decodes() -> None:
    """An 8 MB data object and 10,000 extra fields decode like any entry."""
    blob = "x" * (8 << 20)
    fields = {b"type": b"big", b"data": json.dumps({"blob": blob}).encode()}
    fields.update({f"extra{i}".encode(): b"v" for i in range(10_000)})
    result = decode_event("s", "1-0", fields)
    assert isinstance(result, Event) and result.data["blob"] == blob


def test_duplicate_keys_keep_the_last_value() -> None:
    """Duplicate keys are accepted and the last value wins, as for every Python JSON reader."""
    result = decode_event("s", "1-0", {b"type": b"t", b"data": b'{"a": 1, "a": 2}'})
    assert isinstance(result, Event) and result.data == {"a": 2}


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"[1, 2e999]"])
def test_overflowing_numbers_do_not_become_infinities(number: bytes) -> None:
    """A number too large for a float is refused like Infinity, never handed over as inf."""
    data = b'{"x": ' + number + b"}"
    result = decode_event("s", "1-0", {b"type": b"t", b"data": data})
    if isinstance(result, Event):
        assert _finite(result.data), result.data
    else:
        assert result == "data is not valid JSON"


def _same(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down (1, 1.0 and True differ)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and a == 0.0:
        return math.copysign(1.0, a) == math.copysign(1.0, b)
    return bool(a == b)


@_SETTINGS
@given(raw=field_values)
@example(raw=b'{"a": "\\ud800"}')  # an escaped lone surrogate: msgspec refuses it
@example(raw=b'{"a": 1}\x0c')  # trailing whitespace only str.isspace() knows
@example(raw=b'{"a": ' + b"9" * 4300 + b"}")
@example(raw=b'{"a": ' + b"9" * 4301 + b"}")
@example(raw=b'{"a": 1' + b"0" * 400 + b".5}")  # overflows a double
@example(raw=b'{"a": -0.0, "b": 12345678901234567890123, "a": 2}')
@example(raw=b"\xef\xbb\xbf{}")
@example(raw=b' {"a": [1, 2.5, null, true]} ')
def test_the_fast_decoder_agrees_with_the_strict_one(raw: bytes) -> None:
    """msgspec decodes first; for any bytes the result is the strict decoder's."""
    assert _same(_json_object(raw, "data"), _strict_object(raw, "data"))
