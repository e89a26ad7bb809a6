"""Session and shared state: JSON objects stored as canonical text, changed key by key.

State is stored as text, not as a database JSON type, so that it reads back
exactly as it was given: Python's ``json`` keeps integers of any size and
floats by their shortest round-tripping form, and dicts keep their keys in
the order they were first set, which neither SQLite's nor PostgreSQL's JSON
functions promise. Every state passes through ``canonical_state`` (compact
separators, UTF-8 kept as is) before it is stored, so equal states are equal
text and the byte bound is measured on what is stored.

The bound is checked on the result of every change (a delta can grow a state
past it), by ``apply_delta``.
"""

from __future__ import annotations

import json
from typing import Any

from sessiond.v1 import session_pb2

from .errors import InvalidArgument

#: The most bytes a stored state may hold (Session.state_json, SharedState.state_json).
MAX_STATE_BYTES = 64 * 1024
#: The most bytes of a state key.
MAX_STATE_KEY_BYTES = 256
EMPTY_STATE = "{}"


def dump_state(state: dict[str, Any]) -> str:
    return json.dumps(state, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def parse_state(text: str) -> dict[str, Any]:
    """A stored or given state as a dict; ValueError when it is not a JSON object."""
    state = json.loads(text or EMPTY_STATE)
    if not isinstance(state, dict):
        raise ValueError("is not a JSON object")
    return state


def canonical_state(text: str) -> str:
    """The stored form of a given state; ValueError when it is not a JSON object."""
    return dump_state(parse_state(text))


def storable_state(text: str) -> str:
    """The stored form of a whole given state; ValueError when not an object or too large."""
    canonical = canonical_state(text)
    size = len(canonical.encode())
    if size > MAX_STATE_BYTES:
        raise ValueError(f"is {size} bytes; the limit is {MAX_STATE_BYTES}")
    return canonical


def delta_problems(delta: session_pb2.StateDelta) -> list[str]:
    """What is wrong with a delta on its own (before it meets a state)."""
    problems: list[str] = []
    for key in sorted(delta.set):
        if not key or len(key.encode()) > MAX_STATE_KEY_BYTES:
            problems.append(f"key {key[:40]!r} must be 1 to {MAX_STATE_KEY_BYTES} bytes")
            continue
        try:
            json.dumps(json.loads(delta.set[key]), allow_nan=False)
        except ValueError:
            problems.append(f"the value of {key!r} is not JSON (NaN and Infinity are not)")
    both = sorted(set(delta.set) & set(delta.remove))
    if both:
        problems.append(f"keys both set and removed: {', '.join(map(repr, both[:5]))}")
    return problems


def apply_delta(text: str, delta: session_pb2.StateDelta, field: str) -> str:
    """The stored state after a delta, within MAX_STATE_BYTES (else InvalidArgument)."""
    state = parse_state(text)
    for key in delta.remove:
        state.pop(key, None)
    for key in sorted(delta.set):
        state[key] = json.loads(delta.set[key])
    result = dump_state(state)
    size = len(result.encode())
    if size > MAX_STATE_BYTES:
        raise InvalidArgument(field, f"the state would be {size} bytes; the limit is "
                              f"{MAX_STATE_BYTES}")
    return result


def is_empty(delta: session_pb2.StateDelta) -> bool:
    return not delta.set and not delta.remove
