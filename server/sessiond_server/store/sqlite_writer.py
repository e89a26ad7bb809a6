"""The single SQLite writer: one thread, one connection, group commit.

Why a thread of its own rather than aiosqlite: a write is several statements
and a batch is many writes. Running the whole batch in one hop to a dedicated
thread means no transaction is ever held across an await, and the event loop
pays one hand-off per batch instead of one per statement.

Each queued write is a plain function of a :class:`WriteContext`. The writer
takes whatever is queued (up to ``max_batch``), opens one ``BEGIN IMMEDIATE``
transaction, runs each write inside its own SAVEPOINT (so one failing write
rolls back alone and its neighbours still commit), gives each write that
changed something the next store revision, writes the change log rows, and
commits once. Only after the commit are callers answered and listeners told,
so an acknowledged write is durable and every event is of a committed write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .errors import StoreError, Unavailable
from .interface import Change
from .revisions import ChangeRecorder

log = logging.getLogger(__name__)

T = TypeVar("T")


class WriteContext(ChangeRecorder):
    """What a write function gets: the connection, the time, and revisions."""

    def __init__(self, conn: sqlite3.Connection, revision: int,
                 clock: Callable[[], int]) -> None:
        super().__init__(revision, clock)
        self.conn = conn

    def finish_write(self) -> list[Change]:
        changes, change_rows = self.take_pending()
        if change_rows:
            self.conn.executemany(
                "INSERT INTO changes (revision, idx, tenant, owner_id, dataset_id, created_at,"
                " event) VALUES (?, ?, ?, ?, ?, ?, ?)",
                change_rows,
            )
        return changes


WriteFn = Callable[[WriteContext], T]


class _Job(Generic[T]):
    __slots__ = ("fn", "future")

    def __init__(self, fn: WriteFn[T], future: asyncio.Future[T]) -> None:
        self.fn = fn
        self.future = future


class Writer:
    """Owns the write connection; ``submit`` queues a write and awaits its commit."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        revision: int,
        clock: Callable[[], int],
        max_batch: int,
        on_commit: Callable[[int, list[Change]], None],
    ) -> None:
        self._connect = connect
        self._revision = revision
        self._clock = clock
        self._max_batch = max(1, max_batch)
        self._on_commit = on_commit
        self._queue: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batches = 0
        self.writes = 0
        # Called on the writer thread after each commit with (writes in the
        # batch, seconds from BEGIN to COMMIT); metrics hook in here, so the
        # store needs no metrics library.
        self.batch_observers: list[Callable[[int, float], None]] = []

    async def start(self) -> None:
        """Start the thread; raises what opening its connection raised."""
        self._loop = asyncio.get_running_loop()
        opened: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, args=(opened,),
                                        name="sessiond-writer", daemon=True)
        self._thread.start()
        await opened

    async def submit(self, fn: WriteFn[T]) -> T:
        if self._closed or self._loop is None:
            raise Unavailable("the store is closed")
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put(_Job(fn, future))
        return await future

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    # The writer thread.
    def _run(self, opened: asyncio.Future[None]) -> None:
        assert self._loop is not None
        try:
            conn = self._connect()
        except BaseException as exc:
            # Nothing may hang on a writer that never started: refuse at once.
            self._closed = True
            self._loop.call_soon_threadsafe(opened.set_exception, exc)
            return
        self._loop.call_soon_threadsafe(opened.set_result, None)
        try:
            stopping = False
            while not stopping:
                job = self._queue.get()
                if job is None:
                    break
                batch: list[_Job[Any]] = [job]
                while len(batch) < self._max_batch:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stopping = True
                        break
                    batch.append(nxt)
                self._commit(conn, batch)
        finally:
            conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: list[_Job[Any]]) -> None:
        ctx = WriteContext(conn, self._revision, self._clock)
        outcomes: list[tuple[_Job[Any], Any, BaseException | None]] = []
        changes: list[Change] = []
        began = time.perf_counter()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            log.error("cannot begin a write transaction: %s", exc)
            self._answer([(job, None, Unavailable(f"database unavailable: {exc}"))
                          for job in batch], self._revision, [])
            return
        for job in batch:
            ctx.begin_write()
            conn.execute("SAVEPOINT write")
            try:
                result = job.fn(ctx)
                written = ctx.finish_write()
                conn.execute("RELEASE write")
            except BaseException as exc:  # one failing write must not fail its neighbours
                ctx.abandon_write()
                try:
                    conn.execute("ROLLBACK TO write")
                    conn.execute("RELEASE write")
                except sqlite3.Error:
                    log.exception("rollback to savepoint failed")
                if isinstance(exc, sqlite3.Error):
                    log.error("write failed in the database: %s", exc)
                    exc = Unavailable(f"database error: {exc}")
                elif not isinstance(exc, StoreError):
                    log.exception("write failed")
                outcomes.append((job, None, exc))
                continue
            changes.extend(written)
            outcomes.append((job, result, None))
        try:
            if ctx.revision != self._revision:
                conn.execute("UPDATE meta SET value = ? WHERE key = 'revision'", (ctx.revision,))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            log.error("commit failed, %d writes rolled back: %s", len(batch), exc)
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            failure = Unavailable(f"database unavailable: {exc}")
            self._answer([(job, None, failure) for job in batch], self._revision, [])
            return
        self._revision = ctx.revision
        self.batches += 1
        self.writes += len(batch)
        elapsed = time.perf_counter() - began
        for observe in self.batch_observers:
            try:
                observe(len(batch), elapsed)
            except Exception:
                log.exception("batch observer failed")
        self._answer(outcomes, ctx.revision, changes)

    def _answer(self, outcomes: list[tuple[_Job[Any], Any, BaseException | None]],
                revision: int, changes: list[Change]) -> None:
        assert self._loop is not None
        # A closed loop means nobody is waiting for these answers any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._deliver, outcomes, revision, changes)

    def _deliver(self, outcomes: list[tuple[_Job[Any], Any, BaseException | None]],
                 revision: int, changes: list[Change]) -> None:
        # Listeners first, so that a caller who watches from its write's
        # revision + 1 right after the answer finds the hub already there.
        self._on_commit(revision, changes)
        for job, result, exc in outcomes:
            if job.future.cancelled():
                continue
            if exc is not None:
                job.future.set_exception(exc)
            else:
                job.future.set_result(result)
