"""The wire format: strict decoding, lenient parsing, and round trips."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentstream import Event, RedisStreamTransport
from agentstream.event import decode_event, encode_fields, parse_lenient

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)
json_objects = st.dictionaries(st.text(), json_values, max_size=6)


def good_fields(**overrides: bytes) -> dict[bytes, bytes]:
    fields = {
        b"type": b"token",
        b"timestamp": b"1700000000.5",
        b"data": b'{"token": "hi"}',
    }
    fields.update({k.encode(): v for k, v in overrides.items()})
    return fields


class TestStrictDecoder:
    def test_good_entry(self) -> None:
        """A well-formed entry decodes to an Event with every field set."""
        event = decode_event("s", "1-0", good_fields(metadata=b'{"a": 1}'), 3, "c", "g")
        assert event == Event(
            "1-0", "s", "token", 1700000000.5, {"token": "hi"}, {"a": 1}, 3, "c", "g"
        )

    def test_missing_timestamp_reads_as_zero(self) -> None:
        """A missing timestamp is tolerated, as upstream reads it."""
        fields = good_fields()
        del fields[b"timestamp"]
        event = decode_event("s", "1-0", fields)
        assert isinstance(event, Event) and event.timestamp == 0.0

    @pytest.mark.parametrize(
        ("fields", "reason"),
        [
            ({b"data": b"{}"}, "missing type"),
            ({b"type": b"", b"data": b"{}"}, "missing type"),
            ({b"type": b"\xff", b"data": b"{}"}, "type is not UTF-8"),
            ({b"type": b"t"}, "missing data"),
            ({b"type": b"t", b"data": b"[1]"}, "data is not a JSON object"),
            ({b"type": b"t", b"data": b"nope"}, "data is not valid JSON"),
            ({b"type": b"t", b"data": b'{"x": NaN}'}, "data is not valid JSON"),
            ({b"type": b"t", b"data": b'{"x": "\xff"}'}, "data is not UTF-8"),
            (
                {b"type": b"t", b"data": b"{}", b"metadata": b"1"},
                "metadata is not a JSON object",
            ),
            (
                {b"type": b"t", b"data": b"{}", b"timestamp": b"x"},
                "timestamp is not a number",
            ),
            (
                {b"type": b"t", b"data": b"{}", b"timestamp": b"inf"},
                "timestamp is not a number",
            ),
        ],
    )
    def test_malformed_entries_give_a_reason(
        self, fields: dict[bytes, bytes], reason: str
    ) -> None:
        """Each kind of malformed entry is named by a short reason."""
        assert decode_event("s", "1-0", fields) == reason

    def test_deep_nesting_is_a_reason_not_a_crash(self) -> None:
        """JSON nested deeper than the parser allows is reported, not raised."""
        deep = b"{" + b'"a":[' * 100_000 + b"]" * 100_000 + b"}"
        assert decode_event("s", "1-0", good_fields(data=deep)) == (
            "data is not valid JSON"
        )

    @given(st.dictionaries(st.binary(max_size=12), st.binary(max_size=40)))
    def test_arbitrary_fields_never_crash(self, fields: dict[bytes, bytes]) -> None:
        """Any field names and bytes give either an Event or a reason string."""
        result = decode_event("s", "1-0", fields)
        assert isinstance(result, Event | str)
        if isinstance(result, str):
            assert 0 < len(result) < 60

    @given(st.text(min_size=1), json_objects, json_objects)
    def test_encoded_events_decode_strictly(
        self, event_type: str, data: dict[str, Any], metadata: dict[str, Any]
    ) -> None:
        """Whatever we encode, the strict decoder accepts with the same values."""
        fields = {
            k.encode(): v.encode()
            for k, v in encode_fields(event_type, data, metadata).items()
        }
        event = decode_event("s", "1-0", fields)
        assert isinstance(event, Event)
        assert (event.type, event.data, event.metadata) == (event_type, data, metadata)


def test_publishing_nan_is_refused() -> None:
    """NaN is not JSON: encoding it fails at once instead of poisoning the stream."""
    with pytest.raises(ValueError, match="JSON"):
        encode_fields("t", {"x": float("nan")}, None)


class TestLenientParse:
    def test_defaults(self) -> None:
        """Missing type and timestamp and invalid data read as upstream reads them."""
        assert parse_lenient("1-0", {"data": "oops"}) == {
            "id": "1-0",
            "type": "unknown",
            "timestamp": 0.0,
            "data": {},
        }


@pytest.mark.redis
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=json_objects, metadata=json_objects)
def test_any_json_object_round_trips_through_redis(
    redis_url: str, data: dict[str, Any], metadata: dict[str, Any]
) -> None:
    """Any JSON-serialisable dict survives publish and read unchanged."""
    transport = RedisStreamTransport("test:roundtrip", redis_url=redis_url)
    try:
        entry_id = transport.publish("t", data, metadata)
        [event] = transport.read_all(count=1, start_id=entry_id)
        assert event["data"] == data
        assert event.get("metadata", {}) == metadata
        client = redis.Redis.from_url(redis_url)
        rows: Any = client.xrange("test:roundtrip", entry_id, entry_id)
        [(_, raw)] = rows
        client.close()
        strict = decode_event("test:roundtrip", entry_id, raw)
        assert isinstance(strict, Event) and strict.data == data
        assert json.loads(raw[b"data"]) == data
    finally:
        transport.delete()
        transport.close()
