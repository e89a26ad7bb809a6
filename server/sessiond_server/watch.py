"""The watch hub: fans committed changes out to WatchSessions subscribers.

Subscribers are cursors, not queues. Each one remembers the next revision it
needs and asks the hub for changes from there: recent revisions come from an
in-memory buffer that the store's commit listener fills, older ones from the
change log. So a slow subscriber never blocks writers or other subscribers
and never loses an event; it only reads from the log until it catches up.
Only a start revision that compaction has passed ends its stream
(``Compacted``). Waiting is a shared asyncio.Event that is replaced on each
commit, so a wake-up costs nothing per idle subscriber.

Memory is bounded in bytes, not in counts of revisions or events:

* The buffer holds the newest revisions whose events take at most
  ``buffer_bytes`` (encoded size); older ones are dropped from the front,
  whole revisions at a time, and subscribers read them from the log. A
  revision larger than the whole budget is never buffered.
* A subscriber asks for at most ``max_bytes`` of events per step and asks
  for the next step only once its client has taken what the last one sent
  (the servicer is a generator that gRPC pulls as the stream drains), so a
  client that stops reading holds one step and one response, not a backlog.
  A step always holds at least one whole revision, so one revision larger
  than ``max_bytes`` is read whole.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Sequence

from .store import Change, Compacted, SessionStore

# The most revisions one read from the change log asks for.
LOG_READ_MAX_REVISIONS = 256


class HubClosed(Exception):
    """The server is shutting down; streams end with UNAVAILABLE."""


def change_bytes(change: Change) -> int:
    """The encoded size of a change's event: what the byte budgets count."""
    return change.event.ByteSize()


def take_bytes(changes: Sequence[Change], max_bytes: int) -> list[Change]:
    """The longest run of whole revisions from the start of ``changes`` within ``max_bytes``.

    At least the first revision, whatever its size, so a reader always moves on.
    """
    total = 0
    end = 0  # end of the last whole revision that fits
    for i, change in enumerate(changes):
        total += change_bytes(change)
        last_of_revision = i + 1 == len(changes) or changes[i + 1].revision != change.revision
        if last_of_revision:
            if total > max_bytes and end:
                break
            end = i + 1
            if total >= max_bytes:
                break
    return list(changes[:end])


class LogReader:
    """How many revisions a subscriber asks the change log for, learnt from their sizes.

    The store reads whole revisions by count; this keeps the count near what
    fits in the byte budget: it halves (or less) after a read that ran over
    and doubles after one well under, between 1 and ``LOG_READ_MAX_REVISIONS``.
    """

    def __init__(self) -> None:
        self.revisions = 1

    def learn(self, read: Sequence[Change], max_bytes: int) -> None:
        if not read:
            return
        size = sum(change_bytes(c) for c in read)
        count = read[-1].revision - read[0].revision + 1
        if size > max_bytes:
            self.revisions = max(1, count * max_bytes // size)
        elif 2 * size < max_bytes:
            self.revisions = min(LOG_READ_MAX_REVISIONS, 2 * self.revisions)


class WatchHub:
    def __init__(self, store: SessionStore, buffer_bytes: int = 16 << 20) -> None:
        self._store = store
        self._buffer: list[Change] = []
        self._revisions: list[int] = []
        # _ends[i] is the running byte total up to and including _buffer[i];
        # _bytes_before is the total of everything dropped from the front.
        self._ends: list[int] = []
        self._bytes_before = 0
        self._buffer_bytes = buffer_bytes
        # Every revision >= _buffer_start is in the buffer (until trimmed).
        self._buffer_start = store.revision + 1
        self._wakeup = asyncio.Event()
        self._closed = False
        self.watcher_count = 0
        store.add_listener(self._on_commit)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def buffered_bytes(self) -> int:
        """Bytes of events held in the buffer now."""
        return (self._ends[-1] if self._ends else self._bytes_before) - self._bytes_before

    def _on_commit(self, changes: Sequence[Change]) -> None:
        total = self._ends[-1] if self._ends else self._bytes_before
        for change in changes:
            total += change_bytes(change)
            self._buffer.append(change)
            self._revisions.append(change.revision)
            self._ends.append(total)
        if self.buffered_bytes > self._buffer_bytes:
            self._trim()
        wakeup, self._wakeup = self._wakeup, asyncio.Event()
        wakeup.set()

    def _trim(self) -> None:
        """Drop the oldest whole revisions, down to three quarters of the budget.

        Trimming below the budget, not just to it, makes the (linear) cut of
        the lists happen once per quarter budget of commits, not on each.
        """
        keep_bytes = self._buffer_bytes * 3 // 4
        first_kept = bisect.bisect_left(self._ends, self._ends[-1] - keep_bytes)
        # Cut at a revision boundary: the first revision that lies wholly
        # within what is kept (possibly none: then the buffer empties).
        if first_kept < len(self._buffer) and (
                first_kept and self._revisions[first_kept - 1] == self._revisions[first_kept]):
            first_kept = bisect.bisect_right(self._revisions, self._revisions[first_kept])
        if first_kept:
            self._bytes_before = self._ends[first_kept - 1]
            self._buffer_start = (self._revisions[first_kept] if first_kept < len(self._buffer)
                                  else self._revisions[-1] + 1)
            del self._buffer[:first_kept]
            del self._revisions[:first_kept]
            del self._ends[:first_kept]

    async def changes_from(self, revision: int, max_bytes: int,
                           log: LogReader | None = None) -> list[Change]:
        """Whole revisions from ``revision`` on, at most ``max_bytes`` of events.

        At least one revision when there is one, whatever its size. ``log``
        keeps the subscriber's learnt read size for the change log.
        Raises ``Compacted`` when the log no longer holds ``revision``.
        """
        if revision <= self._store.compacted_revision:
            # Even when the buffer still holds it: the answer must not depend on
            # whether this replica happened to see the revision live.
            raise Compacted(self._store.compacted_revision)
        if revision > self._store.revision:
            return []
        if revision >= self._buffer_start:
            lo = bisect.bisect_left(self._revisions, revision)
            if lo == len(self._buffer):
                return []
            before = self._ends[lo - 1] if lo else self._bytes_before
            # The changes that fit, then back to the end of a whole revision.
            hi = max(lo + 1, bisect.bisect_right(self._ends, before + max_bytes))
            if hi < len(self._buffer) and self._revisions[hi] == self._revisions[hi - 1]:
                boundary = bisect.bisect_left(self._revisions, self._revisions[hi])
                hi = boundary if boundary > lo else bisect.bisect_right(
                    self._revisions, self._revisions[lo])
            return self._buffer[lo:hi]
        reader = log or LogReader()
        read = await self._store.read_changes(revision, reader.revisions)
        reader.learn(read, max_bytes)
        return take_bytes(read, max_bytes)

    async def wait_for(self, revision: int, seconds: float | None) -> bool:
        """Wait until ``revision`` is committed; False after ``seconds``."""
        while self._store.revision < revision:
            if self._closed:
                raise HubClosed
            wakeup = self._wakeup
            try:
                await asyncio.wait_for(wakeup.wait(), seconds)
            except TimeoutError:
                return self._store.revision >= revision
        if self._closed:
            raise HubClosed
        return True

    def close(self) -> None:
        """Wake every subscriber so it can tell its client and end."""
        self._closed = True
        self._wakeup.set()
