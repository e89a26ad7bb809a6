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
* A subscriber asks for about ``max_bytes`` of events per step and asks
  for the next step only once its client has taken what the last one sent
  (the servicer is a generator that gRPC pulls as the stream drains), so a
  client that stops reading holds one step and one response, not a backlog.
  A revision larger than that is read from the change log a piece at a time
  (``Step.next_index``), so even a revision of many megabytes costs each
  subscriber only about ``max_bytes``.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
from collections.abc import Sequence

from .store import Change, Compacted, SessionStore

# The most revisions, and events, one read from the change log asks for.
LOG_READ_MAX_REVISIONS = 256
LOG_READ_MAX_EVENTS = 4096


class HubClosed(Exception):
    """The server is shutting down; streams end with UNAVAILABLE."""


def change_bytes(change: Change) -> int:
    """The encoded size of a change's event: what the byte budgets count."""
    return change.event.ByteSize()


@dataclasses.dataclass(frozen=True, slots=True)
class Step:
    """What one read gives a subscriber: changes, and where the next read starts.

    ``next_index`` is 0 when the changes end with a whole revision; otherwise
    the step stopped inside revision ``next_revision`` (one too large to read
    at once) and the next read continues at its ``next_index``-th event.
    """

    changes: list[Change]
    next_revision: int
    next_index: int = 0

    @property
    def ends_revision(self) -> bool:
        return self.next_index == 0


class LogReader:
    """How many events a subscriber asks the change log for, learnt from their sizes.

    Each read asks for about ``max_bytes`` worth of events at the sizes seen
    in the previous read (at least one, at most ``LOG_READ_MAX_EVENTS``), so
    what a subscriber holds stays near its byte budget whatever the size of
    the revisions, even one far larger than the budget.
    """

    def __init__(self) -> None:
        self.events = 1

    def learn(self, read: Sequence[Change], max_bytes: int) -> None:
        if read:
            average = max(1, sum(change_bytes(c) for c in read) // len(read))
            self.events = max(1, min(LOG_READ_MAX_EVENTS, max_bytes // average))


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
        # The first change such that it and all after it take at most keep_bytes.
        first_kept = bisect.bisect_left(self._ends, self._ends[-1] - keep_bytes) + 1
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

    async def changes_from(self, revision: int, max_bytes: int, log: LogReader | None = None,
                           *, index: int = 0) -> Step:
        """Changes from event ``index`` of ``revision`` on, about ``max_bytes`` of them.

        From the buffer: whole revisions within ``max_bytes`` (at least one;
        the buffer holds them anyway). From the change log: about
        ``max_bytes`` of events as ``log`` has learnt their size, ending
        inside a revision when it is larger than that. Raises ``Compacted``
        when the log no longer holds ``revision``.
        """
        if revision <= self._store.compacted_revision:
            # Even when the buffer still holds it: the answer must not depend on
            # whether this replica happened to see the revision live.
            raise Compacted(self._store.compacted_revision)
        nothing = Step([], revision, index)
        if revision > self._store.revision:
            return nothing
        if revision >= self._buffer_start:
            lo = bisect.bisect_left(self._revisions, revision) + index
            if lo >= len(self._buffer):
                return nothing
            before = self._ends[lo - 1] if lo else self._bytes_before
            # The changes that fit, then back to the end of a whole revision.
            hi = max(lo + 1, bisect.bisect_right(self._ends, before + max_bytes))
            if hi < len(self._buffer) and self._revisions[hi] == self._revisions[hi - 1]:
                boundary = bisect.bisect_left(self._revisions, self._revisions[hi])
                hi = boundary if boundary > lo else bisect.bisect_right(
                    self._revisions, self._revisions[lo])
            return Step(self._buffer[lo:hi], self._revisions[hi - 1] + 1)
        reader = log or LogReader()
        asked = reader.events
        # One event more than asked for tells whether the last revision goes on.
        read = await self._store.read_changes(revision, LOG_READ_MAX_REVISIONS, index,
                                              asked + 1)
        reader.learn(read, max_bytes)
        if not read:
            return nothing
        if len(read) <= asked:
            return Step(read, read[-1].revision + 1)
        following = read.pop()
        last = read[-1].revision
        if following.revision != last:
            return Step(read, last + 1)
        taken = sum(1 for c in read if c.revision == last)
        return Step(read, last, (index if last == revision else 0) + taken)

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
