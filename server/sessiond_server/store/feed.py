"""The change feed, written once: how a replica delivers the commits of every replica.

Every server process is a replica of one store (several ``sessiond serve``
workers on one SQLite file, several hosts on one PostgreSQL database). Each
one's listeners (its WatchHub) must see every committed revision, in order,
whole, once, whoever committed it. The backends differ only in how a
replica is told that others committed (a :class:`Notifier`): PostgreSQL's
LISTEN/NOTIFY, or a datagram to each SQLite replica's socket. A notification
may be lost; the change log may not, so:

* A notification, a local commit, or the periodic poll (``poll_interval``)
  makes the follower read the change log from the last revision delivered,
  in order, whole revisions (:meth:`ReplicaFeed._catch_up_locked`), and hand
  those changes to the listeners. ``revision`` is the last revision
  delivered, so the hub's "nothing above revision yet" holds.
* A lost notification (a dropped LISTEN connection, a full socket buffer)
  only delays delivery until the next poll.
* A local commit is delivered before its callers are answered, after any
  lower revisions other replicas committed first (:meth:`ReplicaFeed._publish`),
  so a caller that watches from its revision + 1 finds the hub already there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from .group_commit import Statements
from .interface import Change
from .logic import REVISION, StoreLogic
from .revisions import logged_event

log = logging.getLogger(__name__)

#: Revisions the change feed reads per query while catching up.
CATCH_UP_REVISIONS = 1000

#: Bytes of events the change feed reads per query while catching up. It reads
#: whole revisions, so a single revision larger than this is read alone, whole:
#: that is what the replica that committed it held in memory too.
CATCH_UP_BYTES = 8 << 20

#: Told of a revision another replica announced (None: "something, read the log").
Heard = Callable[[int | None], None]


class Notifier(Protocol):
    """How a backend hears of other replicas' commits, and tells them of its own."""

    @property
    def connected(self) -> bool:
        """Whether notifications can arrive now (else the follower reconnects)."""

    async def open(self, heard: Heard, lost: Callable[[], None]) -> None:
        """Start hearing; ``heard`` on each notification, ``lost`` when they stop."""

    def announce(self, revision: int) -> None:
        """Tell the other replicas that ``revision`` is committed (never raises)."""

    async def close(self) -> None: ...


class ReplicaFeed(StoreLogic):
    """The follower, catch-up and publish of one replica; a backend adds its Notifier."""

    #: What a failure to read the log or to (re)open the notifier may raise.
    feed_errors: tuple[type[BaseException], ...] = (OSError,)

    def _init_feed(self, notifier: Notifier, poll_interval: float) -> None:
        self._notifier = notifier
        self._poll_interval = poll_interval
        self._deliver_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._follower: asyncio.Task[None] | None = None
        self._feed_closing = False
        self._feed_failing = False
        self.notifications = 0
        self.catch_ups = 0
        self.catch_up_bytes = CATCH_UP_BYTES

    async def _open_feed(self) -> None:
        """Start hearing (a failure here fails the start) and following."""
        self._feed_closing = False
        await self._notifier.open(self._heard, self._lost)
        # Whatever was committed while nobody listened is read now.
        self._wake.set()
        self._follower = asyncio.create_task(self._follow(), name="sessiond-change-feed")

    async def _close_feed(self) -> None:
        self._feed_closing = True
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None
        await self._notifier.close()

    def _heard(self, announced: int | None) -> None:
        self.notifications += 1
        if announced is None or announced > self._revision:
            self._wake.set()

    def _lost(self) -> None:
        if not self._feed_closing:
            log.warning("change notifications stopped; polling every %.1fs until they are "
                        "back", self._poll_interval)
        self._wake.set()

    async def _follow(self) -> None:
        """Deliver what other replicas commit: on notification, and every poll interval."""
        while not self._feed_closing:
            if not self._notifier.connected:
                try:
                    await self._notifier.open(self._heard, self._lost)
                    if self._feed_failing:
                        log.info("change feed reconnected at revision %d", self._revision)
                    self._feed_failing = False
                except self.feed_errors as exc:
                    self._feed_trouble(exc)
            # asyncio.timeout, not wait_for: in 3.11 wait_for can swallow a
            # cancellation that arrives as the event is set, and close() would hang.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                async with self._deliver_lock:
                    await self._catch_up_locked(None)
            except self.feed_errors as exc:
                self._feed_trouble(exc)
            except Exception:
                log.exception("change feed failed; retrying")

    def _feed_trouble(self, exc: BaseException) -> None:
        if not self._feed_failing:
            log.warning("change feed cannot read the change log (%s); retrying every %.1fs",
                        type(exc).__name__, self._poll_interval)
        self._feed_failing = True

    async def _catch_up_locked(self, until: int | None) -> None:
        """Deliver every committed revision after ``revision`` (up to ``until``), in order.

        Each query reads whole revisions and about ``catch_up_bytes`` of events
        at most (the first revision whole, whatever its size), so a replica far
        behind catches up in bounded steps.
        """
        while True:
            async with self._snapshot() as tx:
                head, compacted = await tx.fetchrow(
                    f"SELECT {REVISION}, (SELECT value FROM meta"
                    f" WHERE key = 'compacted_revision')")
                lower = max(self._revision, int(compacted))
                upper = int(head) if until is None else min(int(head), until)
                upper = min(upper, lower + CATCH_UP_REVISIONS)
                found = [] if upper <= lower else await self._read_log(tx, lower, upper)
            self._compacted_revision = max(self._compacted_revision, int(compacted))
            if found and found[-1][5] < found[-1][6]:
                # Cut by the byte bound: the last revision read may be partial,
                # unless it is the first (always read whole).
                last = int(found[-1][0])
                upper = last if last == found[0][0] else last - 1
                found = [r for r in found if r[0] <= upper]
            if upper <= self._revision:
                return
            if lower > self._revision:
                log.warning("revisions %d to %d were compacted before this replica delivered "
                            "them; watchers there must list again", self._revision + 1, lower)
            self.catch_ups += 1
            changes = [Change(r[0], r[1], r[2], r[3], logged_event(r[0], bytes(r[4])))
                       for r in found]
            self._deliver(upper, changes)
            if until is not None and upper >= until:
                return

    async def _read_log(self, tx: Statements, lower: int, upper: int) -> list[Any]:
        """The change rows of revisions (lower, upper], in order, while the bytes of
        the rows before stay under ``catch_up_bytes``, plus the first revision whole.

        Each row ends with the bytes up to and including it, and the bytes of
        the whole range: fewer read than the range holds means the read was cut.
        """
        p = self.dialect.params()
        size = self.dialect.byte_length("event")
        first = (f"(SELECT min(revision) FROM changes WHERE revision > {p(lower)}"
                 f" AND revision <= {p(upper)})")
        return await tx.fetch(
            f"SELECT revision, tenant, owner_id, dataset_id, event, upto, whole FROM"
            f" (SELECT revision, idx, tenant, owner_id, dataset_id, event, {size} AS size,"
            f" sum({size}) OVER (ORDER BY revision, idx ROWS UNBOUNDED PRECEDING) AS upto,"
            f" sum({size}) OVER () AS whole FROM changes"
            f" WHERE revision > {p(lower)} AND revision <= {p(upper)}) c"
            f" WHERE upto - size < {p(self.catch_up_bytes)} OR revision = {first}"
            f" ORDER BY revision, idx", p.values)

    def _deliver(self, last: int, changes: list[Change]) -> None:
        self._revision = last
        if changes:
            for listener in self._listeners:
                listener(changes)

    def _publish_now(self, last: int, changes: list[Change]) -> Awaitable[None] | None:
        """Deliver a local commit at once when nothing lies before it (None), else the
        awaitable :meth:`_publish`. Either way the other replicas are told."""
        self._notifier.announce(last)
        if last <= self._revision:
            return None  # the feed was quicker
        first = changes[0].revision if changes else last
        if not self._deliver_lock.locked() and first - 1 == self._revision:
            self._deliver(last, changes)
            return None
        return self._publish(last, changes)

    async def _publish(self, last: int, changes: list[Change]) -> None:
        """Deliver a local commit, after whatever lower revisions other replicas made."""
        async with self._deliver_lock:
            if last <= self._revision:
                return  # the feed was quicker
            first = changes[0].revision if changes else last
            if first - 1 > self._revision:
                await self._catch_up_locked(first - 1)
            if first - 1 < self._revision:
                changes = [c for c in changes if c.revision > self._revision]
            elif first - 1 > self._revision:
                self._wake.set()  # could not fill the gap now; the feed will
                return
            self._deliver(last, changes)
