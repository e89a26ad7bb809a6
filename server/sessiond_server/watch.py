"""The watch hub: fans committed changes out to WatchSessions subscribers.

Subscribers are cursors, not queues. Each one remembers the next revision it
needs and asks the hub for changes from there: recent revisions come from an
in-memory buffer that the store's commit listener fills, older ones from the
change log. So a slow subscriber never blocks writers or other subscribers
and never loses an event; it only reads from the log until it catches up.
Only a start revision that compaction has passed ends its stream
(``Compacted``). Waiting is a shared asyncio.Event that is replaced on each
commit, so a wake-up costs nothing per idle subscriber.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Sequence

from .store import Change, Compacted, SessionStore


class HubClosed(Exception):
    """The server is shutting down; streams end with UNAVAILABLE."""


class WatchHub:
    def __init__(self, store: SessionStore, buffer_revisions: int = 10_000) -> None:
        self._store = store
        self._buffer: list[Change] = []
        self._revisions: list[int] = []
        self._buffer_revisions = buffer_revisions
        # Every revision >= _buffer_start is in the buffer (until trimmed).
        self._buffer_start = store.revision + 1
        self._wakeup = asyncio.Event()
        self._closed = False
        self.watcher_count = 0
        store.add_listener(self._on_commit)

    @property
    def closed(self) -> bool:
        return self._closed

    def _on_commit(self, changes: Sequence[Change]) -> None:
        self._buffer.extend(changes)
        self._revisions.extend(c.revision for c in changes)
        span = self._revisions[-1] - self._revisions[0] if self._revisions else 0
        if span > 2 * self._buffer_revisions:
            keep_from = self._revisions[-1] - self._buffer_revisions
            cut = bisect.bisect_left(self._revisions, keep_from)
            del self._buffer[:cut]
            del self._revisions[:cut]
            self._buffer_start = keep_from
        wakeup, self._wakeup = self._wakeup, asyncio.Event()
        wakeup.set()

    async def changes_from(self, revision: int, limit: int) -> list[Change]:
        """Whole revisions from ``revision`` on, at most about ``limit`` of them.

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
            hi = bisect.bisect_left(self._revisions, revision + limit)
            return self._buffer[lo:hi]
        return await self._store.read_changes(revision, limit)

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
