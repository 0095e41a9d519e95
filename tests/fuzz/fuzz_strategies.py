"""Hypothesis strategies of hostile stream entries, shared by the fuzz tests.

Kept out of a ``conftest.py`` on purpose (mypy would see two ``conftest``
modules); pytest puts ``tests/fuzz`` on ``sys.path`` for the tests here.

An entry is what a producer can XADD: field names and values are any bytes.
The values aim at the strict decoder's edges: JSON that is not an object,
``NaN``/``Infinity``, duplicate keys, deep nesting (far below or far above
Python's recursion limit, never near it, where the outcome would depend on the
caller's stack depth), bytes that are not UTF-8, and plain garbage.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

__all__ = [
    "REASONS",
    "entries",
    "field_values",
    "json_objects",
    "json_values",
    "nested",
]

#: Every reason ``decode_event`` may give for a malformed entry.
REASONS = frozenset(
    {
        "missing type",
        "type is not UTF-8",
        "missing data",
        "data is not UTF-8",
        "data is not valid JSON",
        "data is not a JSON object",
        "metadata is not UTF-8",
        "metadata is not valid JSON",
        "metadata is not a JSON object",
        "timestamp is not a number",
    }
)

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)

#: Any JSON value Python's json module writes without NaN or infinities.
json_values: st.SearchStrategy[Any] = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)

#: A JSON object, as a Python dict.
json_objects: st.SearchStrategy[dict[str, Any]] = st.dictionaries(
    st.text(max_size=8), json_values, max_size=5
)


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


@st.composite
def nested(draw: st.DrawFn) -> bytes:
    """Arrays or objects nested shallowly (parses) or very deeply (does not)."""
    depth = draw(st.integers(1, 150) | st.integers(20_000, 60_000))
    if draw(st.booleans()):
        return b"[" * depth + b"]" * depth
    inner = b'{"a": ' * (depth - 1) + b"{}" + b"}" * (depth - 1)
    return (
        inner if draw(st.booleans()) else b'{"k": ' + b"[" * depth + b"]" * depth + b"}"
    )


@st.composite
def _with_constant(draw: st.DrawFn) -> bytes:
    """An object holding NaN, Infinity or -Infinity somewhere."""
    token = draw(st.sampled_from(["NaN", "Infinity", "-Infinity"]))
    obj = draw(json_objects)
    text = json.dumps(obj)
    at = draw(st.sampled_from(["first", "nested"]))
    if at == "first" or text == "{}":
        return ('{"c": ' + token + (", " + text[1:] if text != "{}" else "}")).encode()
    return ('{"c": [1, {"d": ' + token + "}], " + text[1:]).encode()


@st.composite
def _duplicate_keys(draw: st.DrawFn) -> bytes:
    key = json.dumps(draw(st.text(max_size=5)))
    first, second = draw(json_values), draw(json_values)
    return f"{{{key}: {json.dumps(first)}, {key}: {json.dumps(second)}}}".encode()


@st.composite
def _not_utf8(draw: st.DrawFn) -> bytes:
    raw = bytearray(_dumps(draw(json_objects)))
    bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"]))
    at = draw(st.integers(0, len(raw)))
    return bytes(raw[:at] + bad + raw[at:])


#: Values for ``data`` and ``metadata``: valid objects and every kind of wrong.
field_values: st.SearchStrategy[bytes] = st.one_of(
    json_objects.map(_dumps),
    json_objects.map(_dumps),
    json_values.map(_dumps),  # often not an object
    _with_constant(),
    _duplicate_keys(),
    nested(),
    _not_utf8(),
    st.sampled_from([b"", b"{", b"}", b"null", b"{}", b"[]", b'{"a": 1e400}']),
    st.binary(max_size=40),
    st.text(max_size=40).map(str.encode),
)

_types = st.one_of(
    st.sampled_from([b"token", b"tool_call", b"complete", b"", b"*"]),
    st.text(min_size=1, max_size=12).map(str.encode),
    st.binary(max_size=12),
)

_timestamps = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: repr(f).encode()),
    st.sampled_from([b"nan", b"inf", b"-inf", b"1e400", b"", b"0x10", b"1_0", b" 1 "]),
    st.binary(max_size=12),
)


@st.composite
def entries(draw: st.DrawFn) -> dict[bytes, bytes]:
    """The fields of one stream entry: some of the known ones, plus any others."""
    fields: dict[bytes, bytes] = {}
    if draw(st.integers(0, 9)):  # type present 90 % of the time
        fields[b"type"] = draw(_types)
    if draw(st.integers(0, 9)):
        fields[b"data"] = draw(field_values)
    if draw(st.booleans()):
        fields[b"metadata"] = draw(field_values)
    if draw(st.booleans()):
        fields[b"timestamp"] = draw(_timestamps)
    extra = draw(
        st.dictionaries(st.binary(max_size=10), st.binary(max_size=30), max_size=3)
    )
    for name, value in extra.items():
        fields.setdefault(name, value)
    if not fields:
        fields[b"x"] = b""
    return fields
