"""Revisions and change-log events of the writes in one transaction, for every backend.

A backend's write context extends :class:`ChangeRecorder` with its
connection and with the statement that stores the pending change-log rows.
The rules live here once: a write takes one revision, on first use, only if
it changes something; all its events carry that revision; a write that fails
gives its revision back, so revisions have no holes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sessiond.v1 import event_pb2, message_pb2, session_pb2

from .interface import Change


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
        self._change_rows: list[tuple[Any, ...]] = []

    def begin_write(self) -> None:
        self.now = self._clock()
        self._write_revision = 0
        self._changes = []
        self._change_rows = []

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
        idx = len(self._changes)
        self._changes.append(Change(revision, tenant, owner_id, dataset_id, event))
        self._change_rows.append((revision, idx, tenant, owner_id, dataset_id, self.now,
                                  event.SerializeToString()))

    def take_pending(self) -> tuple[list[Change], list[tuple[Any, ...]]]:
        """The current write's events and their change-log rows, handed over once."""
        pending = self._changes, self._change_rows
        self._changes = []
        self._change_rows = []
        return pending

    def abandon_write(self) -> None:
        if self._write_revision:
            self.revision = self._write_revision - 1
        self._write_revision = 0
        self._changes = []
        self._change_rows = []
