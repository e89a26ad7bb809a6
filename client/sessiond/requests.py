"""Request building shared by the async and sync clients.

Both clients accept a Request message or its fields as keyword arguments;
these helpers turn the keyword form, datetimes and path lists into protobuf.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any, TypeVar

from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

RequestT = TypeVar("RequestT", bound=Message)

TimestampLike = Timestamp | datetime.datetime
FieldMaskLike = FieldMask | Sequence[str]


def build_request(
    request_type: type[RequestT], request: RequestT | None, **fields: Any
) -> RequestT:
    """The request itself, or one built from the keyword fields that are set.

    None stands for "not given", so a field left out keeps its proto default
    (and an ``optional`` field stays unset).
    """
    given = {name: value for name, value in fields.items() if value is not None}
    if request is None:
        return request_type(**given)
    if given:
        raise TypeError(
            f"pass a {request_type.__name__} or keyword fields, not both "
            f"(got {', '.join(sorted(given))})"
        )
    return request


def to_timestamp(value: TimestampLike | None) -> Timestamp | None:
    """A Timestamp from a Timestamp or an aware datetime (naive means UTC)."""
    if value is None or isinstance(value, Timestamp):
        return value
    timestamp = Timestamp()
    timestamp.FromDatetime(value)
    return timestamp


def to_field_mask(value: FieldMaskLike | None) -> FieldMask | None:
    """A FieldMask from a FieldMask or a sequence of paths."""
    if value is None or isinstance(value, FieldMask):
        return value
    if isinstance(value, str):
        raise TypeError("update_mask takes a sequence of paths, not one string")
    return FieldMask(paths=list(value))


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries the bearer token (none without one)."""
    return (("authorization", f"Bearer {token}"),) if token else ()
