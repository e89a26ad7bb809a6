"""Revisions and change-log events of the writes in one transaction, for every backend.

A backend's write context extends :class:`ChangeRecorder` with its
connection and with the statement that stores the pending change-log rows.
The rules live here once: a write takes one revision, on first use, only if
it changes something; all its events carry that revision; a write that fails
gives its revision back, so revisions have no holes.

Where the store-wide counter is taken at the end of a batch (PostgreSQL), the
revisions a batch takes are provisional, ``PROVISIONAL + k``, until the
counter says where the batch goes: then :func:`final` maps every revision
(and etag) of the batch's results, events and stored responses by the same
shift. Where the counter is read at BEGIN (SQLite) the shift is 0.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message as ProtoMessage
from sessiond.v1 import event_pb2, message_pb2, session_pb2

from .interface import Change

T = TypeVar("T")

#: Above it every revision is provisional: it is above every committed revision and
#: every other counter the store keeps (those stop at 2^62).
PROVISIONAL = (1 << 62) + (1 << 61)
#: Room for one batch's provisional revisions (a batch takes at most one per write).
PROVISIONAL_SPAN = 1 << 24


def provisional_start(connection_id: int) -> int:
    """Where the provisional revisions of a batch on database connection
    ``connection_id`` (a server process id, below 2^32) start.

    Batches in flight at once on different connections (replicas) get ranges
    that do not meet, so the change-log rows they insert before the counter is
    taken never share a key: a shared key would make each batch wait at that
    INSERT for the other to commit, and hold every replica's writes behind one
    replica's round trips instead of behind the counter alone.
    """
    return PROVISIONAL + (connection_id % (1 << 32)) * PROVISIONAL_SPAN

#: A stored response to rewrite once the batch's revisions are final:
#: (UPDATE statement taking the key values and then the bytes, key values, response).
StoredResponse = tuple[str, tuple[Any, ...], ProtoMessage]


def final(value: T, shift: int) -> T:
    """``value`` with each provisional revision moved by ``shift``: ints above
    PROVISIONAL, and the ``revision`` and ``etag`` fields of messages at any depth
    (changed in place). Tuples, lists and dataclasses are rebuilt."""
    if not shift:
        return value
    return _final(value, shift)  # type: ignore[no-any-return]


def _final(value: Any, shift: int) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value + shift if value > PROVISIONAL else value
    if isinstance(value, ProtoMessage):
        _final_message(value, shift)
        return value
    if isinstance(value, tuple):
        return tuple(_final(v, shift) for v in value)
    if isinstance(value, list):
        return [_final(v, shift) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{
            f.name: _final(getattr(value, f.name), shift) for f in dataclasses.fields(value)})
    return value


def _final_message(message: ProtoMessage, shift: int) -> None:
    for field, value in message.ListFields():
        if field.name == "revision" and isinstance(value, int) and value > PROVISIONAL:
            setattr(message, field.name, value + shift)
        elif field.name == "etag" and isinstance(value, str) and value.isdigit() \
                and int(value) > PROVISIONAL:
            setattr(message, field.name, str(int(value) + shift))
        elif field.message_type is not None and _carries_revision(field.message_type):
            for item in [value] if isinstance(value, ProtoMessage) else value:
                _final_message(item, shift)


@functools.cache
def _carries_revision(descriptor: Descriptor) -> bool:
    """Whether messages of this type can hold a ``revision`` or ``etag`` at any depth
    (a message's messages, timestamps and maps need no walk when they cannot)."""
    return _reaches_revision(descriptor, set())


def _reaches_revision(descriptor: Descriptor, seen: set[str]) -> bool:
    if descriptor.GetOptions().map_entry or descriptor.full_name in seen:
        return False
    seen.add(descriptor.full_name)
    return any(field.name in ("revision", "etag") or (
        field.message_type is not None and _reaches_revision(field.message_type, seen))
        for field in descriptor.fields)


def logged_event(revision: int, event: bytes) -> event_pb2.SessionEvent:
    """A change-log row's event, with final revisions. Where the counter is taken with
    the change-log INSERT (PostgreSQL), the event was serialised before its batch's
    revisions were final: its revisions are provisional, and the row's ``revision``
    (final) says by how much they move."""
    parsed = event_pb2.SessionEvent.FromString(event)
    if parsed.revision > PROVISIONAL:
        _final_message(parsed, revision - parsed.revision)
    return parsed


def change_rows(changes: Sequence[Change]) -> list[tuple[Any, ...]]:
    """The change-log rows of ``changes`` (in revision order), serialised now."""
    rows: list[tuple[Any, ...]] = []
    idx = 0
    for i, change in enumerate(changes):
        idx = idx + 1 if i and changes[i - 1].revision == change.revision else 0
        rows.append((change.revision, idx, change.tenant, change.owner_id, change.dataset_id,
                     change.event.time.ToMicroseconds(), change.event.SerializeToString()))
    return rows


def compaction_target(head: int, keep_revisions: int, newest_aged: int | None,
                      newest_over_bytes: int | None = None) -> int:
    """The highest revision compaction may drop.

    The newest ``keep_revisions`` revisions are kept, so a subscriber can
    fall that far behind; older ones go once they are older than the age
    bound (``newest_aged`` is the newest revision older than it, None when the
    age bound is off). With both bounds off nothing is dropped by them.

    Beside count and age, the byte budget: ``newest_over_bytes`` is the newest
    revision at which the log, summed from the head down, holds more bytes of
    events than the budget (None when the budget is off or not reached). It
    and everything older go whatever count and age say, since the budget is
    what keeps the disk bounded; the head revision itself always stays.
    """
    by_count = head - keep_revisions if keep_revisions > 0 else None
    candidates = [t for t in (by_count, newest_aged) if t is not None]
    target = max(0, min(candidates)) if candidates else 0
    if newest_over_bytes:
        target = max(target, min(newest_over_bytes, head - 1))
    return target


# The newest revision at which the change log, summed from the newest revision
# down, holds more than the byte budget (one parameter); 0 when within it.
# Every backend runs it as written, with its own placeholder.
NEWEST_OVER_BYTES_SQL = (
    "SELECT coalesce(max(revision), 0) FROM (SELECT revision, sum(length(event))"
    " OVER (ORDER BY revision DESC) AS newer FROM changes) AS log WHERE newer > {budget}")


class ChangeRecorder:
    def __init__(self, revision: int, clock: Callable[[], int]) -> None:
        self.revision = revision  # last revision taken in this batch
        self._clock = clock
        self.now = 0
        self._write_revision = 0
        self._changes: list[Change] = []
        self._responses: list[StoredResponse] = []

    def begin_write(self) -> None:
        self.now = self._clock()
        self._write_revision = 0
        self._changes = []
        self._responses = []

    def take_revision(self) -> int:
        """The revision of the current write, taken on first use."""
        if not self._write_revision:
            self.revision += 1
            self._write_revision = self.revision
        return self._write_revision

    @property
    def write_revision(self) -> int:
        return self._write_revision

    def emit(
        self,
        event_type: event_pb2.EventType.ValueType,
        session_id: str,
        tenant: str,
        owner_id: str,
        dataset_id: str,
        session: session_pb2.Session | None = None,
        messages: Sequence[message_pb2.Message] = (),
        messages_truncated: bool = False,
        removed_count: int = 0,
        after_seq: int = 0,
        up_to_seq: int = 0,
    ) -> None:
        revision = self.take_revision()
        event = event_pb2.SessionEvent(
            type=event_type, revision=revision, session_id=session_id, session=session,
            messages=messages, messages_truncated=messages_truncated,
            removed_count=removed_count, after_seq=after_seq, up_to_seq=up_to_seq,
        )
        event.time.FromMicroseconds(self.now)
        self._changes.append(Change(revision, tenant, owner_id, dataset_id, event))

    def store_response(self, rewrite_sql: str, key: tuple[Any, ...],
                       response: ProtoMessage) -> None:
        """Note a response the write stored (serialised with its provisional revision):
        rewritten with ``rewrite_sql`` once the batch's revisions are final."""
        self._responses.append((rewrite_sql, key, response))

    def take_pending(self) -> tuple[list[Change], list[StoredResponse]]:
        """The current write's events and stored responses, handed over once."""
        pending = self._changes, self._responses
        self._changes = []
        self._responses = []
        return pending

    def abandon_write(self) -> None:
        if self._write_revision:
            self.revision = self._write_revision - 1
        self._write_revision = 0
        self._changes = []
        self._responses = []
