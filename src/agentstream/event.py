"""The event a handler receives, and the wire format it travels in."""

from __future__ import annotations

import json
import json.scanner
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import msgspec

__all__ = ["Event", "decode_event", "encode_fields", "event_type", "parse_lenient"]


@dataclass(slots=True)
class Event:
    """One stream entry, decoded, as a handler sees it.

    Attributes:
        id: the stream entry id, e.g. ``"1700000000000-0"``.
        stream: the stream the entry was read from.
        type: the event type (``token``, ``tool_call``, ...).
        timestamp: the publish time in Unix seconds (``0.0`` when absent).
        data: the event payload, a JSON object.
        metadata: the optional metadata object (``{}`` when absent).
        delivery_count: how many times the entry was delivered; 1 the first time.
        consumer: the consumer name that holds the entry.
        group: the consumer group it was read through.
    """

    id: str
    stream: str
    type: str
    timestamp: float
    data: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    delivery_count: int = 1
    consumer: str = ""
    group: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the event in the dict shape of ``RedisStreamTransport`` reads."""
        out: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "timestamp": self.timestamp,
            "data": self.data,
        }
        if self.metadata:
            out["metadata"] = self.metadata
        return out


def encode_fields(
    event_type: str, data: Mapping[str, Any], metadata: Mapping[str, Any] | None
) -> dict[str, str]:
    """Return the stream fields of an event in the upstream wire format.

    Raises:
        ValueError: ``data`` or ``metadata`` holds NaN or an infinity (not JSON).
        TypeError: they hold a value that is not JSON-serialisable.
    """
    fields = {
        "type": event_type,
        "timestamp": str(time.time()),
        "data": json.dumps(data, allow_nan=False),
    }
    if metadata:
        fields["metadata"] = json.dumps(metadata, allow_nan=False)
    return fields


def _loads_or_empty(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # nesting deeper than Python's stack
        return {}


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if type(value) is bytes else str(value)


def parse_lenient(
    entry_id: str | bytes, fields: Mapping[str, str] | Mapping[bytes, bytes]
) -> dict[str, Any]:
    """Parse an entry's fields as the upstream library does: never fail.

    A missing ``type`` reads as ``"unknown"``, a missing or invalid ``timestamp`` as
    ``0.0``, and ``data`` or ``metadata`` that is not valid JSON as ``{}``. Fields
    may be ``bytes`` (a pool with ``decode_responses=False``): bytes that are not
    UTF-8 are replaced with U+FFFD, never fatal.
    """
    if type(entry_id) is bytes or any(type(k) is bytes for k in fields):
        entry_id = _text(entry_id)
        fields = {_text(k): _text(v) for k, v in fields.items()}
    assert type(entry_id) is str
    fields = cast("Mapping[str, str]", fields)
    try:
        timestamp = float(fields.get("timestamp", 0))
    except ValueError:
        timestamp = 0.0
    event: dict[str, Any] = {
        "id": entry_id,
        "type": fields.get("type", "unknown"),
        "timestamp": timestamp,
        "data": _loads_or_empty(fields.get("data", "{}")),
    }
    if "metadata" in fields:
        event["metadata"] = _loads_or_empty(fields["metadata"])
    return event


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# One decoder built once: json.loads(s, parse_constant=...) would build a new one
# per call, which shows up at tens of thousands of events per second. Its C
# scanner, called directly, also skips the Python-level whitespace handling
# that JSONDecoder.decode adds around it.
def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 overflows to inf: not JSON's number
        raise ValueError(f"{text} is out of range")
    return value


_decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
# msgspec's decoder, twice as fast, accepts a subset of what the strict decoder
# does, with the same values (exact integers, correctly rounded floats, the
# last of duplicate keys): whatever it refuses (escaped lone surrogates,
# numbers that overflow a double, trailing Unicode whitespace, deep nesting,
# bad input) goes to the strict decoder, whose answer stands
# (tests/fuzz/test_fuzz_decode.py compares the two).
_fast_decode = msgspec.json.Decoder().decode
_strict_json = _decoder.decode
_scan_once = json.scanner.make_scanner(_decoder)  # type: ignore[arg-type]

_TYPE = b"type"
_DATA = b"data"
_TIMESTAMP = b"timestamp"
_METADATA = b"metadata"


def _json_object(raw: bytes, name: str) -> dict[str, Any] | str:
    try:
        value: Any = _fast_decode(raw)
    except (msgspec.MsgspecError, ValueError, RecursionError):
        pass  # the strict decoder below decides
    else:
        return value if type(value) is dict else f"{name} is not a JSON object"
    return _strict_object(raw, name)


def _strict_object(raw: bytes, name: str) -> dict[str, Any] | str:
    """The stdlib's strict decoding of a JSON object, or why ``raw`` is not one."""
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return f"{name} is not UTF-8"
    try:
        if text[:1] == "{":  # the usual case: no leading whitespace
            value, end = _scan_once(text, 0)
            if end != len(text) and not text[end:].isspace():
                return f"{name} is not valid JSON"
        else:
            value = _strict_json(text)
    except (ValueError, RecursionError, StopIteration):
        return f"{name} is not valid JSON"
    if type(value) is not dict:
        return f"{name} is not a JSON object"
    return value


def decode_event(
    stream: str,
    entry_id: str,
    fields: Mapping[bytes, bytes],
    delivery_count: int = 1,
    consumer: str = "",
    group: str = "",
) -> Event | str:
    """Decode raw stream fields strictly.

    Returns:
        The ``Event``, or a short reason string when the entry is malformed: no
        ``type``, ``data`` missing or not a JSON object, ``metadata`` not a JSON
        object, a ``timestamp`` that is not a finite number, or bytes that are not
        UTF-8. Other fields are ignored. Never raises for any input.
    """
    raw_type = fields.get(_TYPE)
    if not raw_type:
        return "missing type"
    try:
        event_type = raw_type.decode()
    except UnicodeDecodeError:
        return "type is not UTF-8"
    raw_data = fields.get(_DATA)
    if raw_data is None:
        return "missing data"
    data = _json_object(raw_data, "data")
    if type(data) is str:
        return data
    raw_metadata = fields.get(_METADATA)
    metadata: dict[str, Any] | str
    if raw_metadata is None:
        metadata = {}
    else:
        metadata = _json_object(raw_metadata, "metadata")
        if type(metadata) is str:
            return metadata
    raw_ts = fields.get(_TIMESTAMP)
    if raw_ts is None:
        timestamp = 0.0
    else:
        try:
            timestamp = float(raw_ts)
        except ValueError:
            return "timestamp is not a number"
        if not math.isfinite(timestamp):
            return "timestamp is not a number"
    return Event(
        entry_id,
        stream,
        event_type,
        timestamp,
        data,  # type: ignore[arg-type]
        metadata,  # type: ignore[arg-type]
        delivery_count,
        consumer,
        group,
    )


def event_type(fields: Mapping[bytes, bytes] | None) -> str:
    """The ``type`` field of raw fields as text, or ``"unknown"``."""
    raw = (fields or {}).get(_TYPE)
    return raw.decode(errors="replace") if raw else "unknown"
