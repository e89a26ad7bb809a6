"""The single SQLite writer: one thread, one connection, group commit.

Why a thread of its own rather than aiosqlite: a write is several statements
and a batch is many writes. Running the whole batch in one hop to a dedicated
thread means no transaction is ever held across an await, and the event loop
pays one hand-off per batch instead of one per statement.

The thread takes whatever is queued (up to ``max_batch``) and runs it through
the group-commit loop every backend shares (``group_commit.py``), with the
hooks below: ``BEGIN IMMEDIATE``, SAVEPOINTs, and ``in_transaction`` to learn
whether SQLite has rolled the whole transaction back (a full disk, an I/O
error). Only after the commit are callers answered and listeners told, so an
acknowledged write is durable and every event is of a committed write.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from . import group_commit
from .errors import Unavailable
from .group_commit import BatchResult, Job, WriteFn, run_batch, run_sync, settle, take_batch
from .interface import Change

log = logging.getLogger(__name__)

T = TypeVar("T")

#: What this backend's write functions get.
WriteContext = group_commit.WriteContext[sqlite3.Connection]

__all__ = ["SQLiteStatements", "WriteContext", "WriteLock", "Writer"]

#: Told on the event loop after each commit that changed something: (last
#: revision, changes); an awaitable when the callers must wait for it.
OnCommit = Callable[[int, list[Change]], "Awaitable[None] | None"]

CHANGES_SQL = ("INSERT INTO changes (revision, idx, tenant, owner_id, dataset_id, created_at,"
               " event) VALUES (?, ?, ?, ?, ?, ?, ?)")


class SQLiteStatements:
    """Statements on a sqlite3 connection; the awaits never suspend (see run_sync)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self.conn.execute(sql, params).fetchall()

    async def fetchrow(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(sql, params).fetchone()

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return int(self.conn.execute(sql, params).rowcount)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)


class WriteLock:
    """The cross-process write lock: a blocking ``flock`` on a file beside the database.

    Every process that writes the file (each ``--workers`` replica) takes it
    on its writer thread before ``BEGIN IMMEDIATE`` and gives it back after
    COMMIT or ROLLBACK, so the kernel wakes the next writer at once instead of
    SQLite's busy handler sleeping and retrying. It also counts the seconds
    spent waiting for it and holding it (what serialises the replicas' writes).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self._taken = 0.0
        self.held = False
        self.wait_seconds = 0.0
        self.held_seconds = 0.0

    def acquire(self) -> None:
        """Wait for the lock (at once if this writer holds it already)."""
        if self.held:
            return
        began = time.perf_counter()
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self._taken = time.perf_counter()
        self.wait_seconds += self._taken - began
        self.held = True

    def release(self) -> None:
        if self.held:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self.held = False
            self.held_seconds += time.perf_counter() - self._taken

    def close(self) -> None:
        self.release()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class SQLiteBatch:
    """The group-commit hooks on the writer's connection."""

    changes_sql = CHANGES_SQL

    def __init__(self, conn: sqlite3.Connection, lock: WriteLock) -> None:
        self.conn = conn
        self.tx = SQLiteStatements(conn)
        self.lock = lock

    async def begin(self) -> int:
        # The revision is read inside the lock: another replica may have moved it.
        self.lock.acquire()
        self.conn.execute("BEGIN IMMEDIATE")
        return int(self.conn.execute("SELECT value FROM meta WHERE key = 'revision'")
                   .fetchone()[0])

    async def savepoint(self) -> None:
        self.conn.execute("SAVEPOINT write")

    async def renew_savepoint(self) -> None:
        self.conn.execute("RELEASE write")
        self.conn.execute("SAVEPOINT write")

    async def rollback_to(self) -> None:
        self.conn.execute("ROLLBACK TO write")

    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    async def store_revision(self, start: int, last: int) -> None:
        self.conn.execute("UPDATE meta SET value = ? WHERE key = 'revision'", (last,))

    async def commit(self) -> None:
        self.conn.execute("COMMIT")
        self.lock.release()

    async def rollback(self) -> None:
        try:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        finally:
            self.lock.release()

    def is_database_error(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.Error)

    def unavailable(self, exc: BaseException) -> Unavailable:
        return Unavailable(f"database error: {exc}")


class Writer:
    """Owns the write connection; ``submit`` queues a write and awaits its commit."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        clock: Callable[[], int],
        max_batch: int,
        on_commit: OnCommit,
        lock: WriteLock,
    ) -> None:
        self._connect = connect
        self.lock = lock
        self._clock = clock
        self._max_batch = max(1, max_batch)
        self._on_commit = on_commit
        self._queue: queue.SimpleQueue[Job[Any] | None] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._publishing: set[asyncio.Task[None]] = set()
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
        self._queue.put(Job(fn, future))
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
        hooks = SQLiteBatch(conn, self.lock)
        try:
            stopping = False
            while not stopping:
                job = self._queue.get()
                if job is None:
                    break
                # The lock first, then the batch: writes that queue while another
                # replica holds the lock join this batch (the commit releases it).
                with contextlib.suppress(OSError):  # begin tries again, fails cleanly
                    self.lock.acquire()
                batch, stopping = take_batch(job, self._queue.get_nowait, self._max_batch)
                began = time.perf_counter()
                try:
                    result = run_sync(run_batch(hooks, batch, self._clock))
                except RuntimeError:  # a write awaited something other than its connection
                    log.exception("write batch abandoned")
                    with contextlib.suppress(sqlite3.Error):
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                    failure = Unavailable("the write batch failed")
                    result = BatchResult([(job, None, failure) for job in batch], 0, [], False)
                self.lock.release()  # whatever ended the batch (commit and rollback already do)
                if result.committed:
                    self._observe(len(batch), time.perf_counter() - began)
                self._answer(result)
        finally:
            conn.close()

    def _observe(self, writes: int, elapsed: float) -> None:
        self.batches += 1
        self.writes += writes
        for observe in self.batch_observers:
            try:
                observe(writes, elapsed)
            except Exception:
                log.exception("batch observer failed")

    def _answer(self, result: BatchResult) -> None:
        assert self._loop is not None
        # A closed loop means nobody is waiting for these answers any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._deliver, result)

    def _deliver(self, result: BatchResult) -> None:
        # Listeners first, so that a caller who watches from its write's
        # revision + 1 right after the answer finds the hub already there.
        assert self._loop is not None
        if result.last_revision:
            pending = self._on_commit(result.last_revision, result.changes)
            if pending is not None:  # revisions of other replicas to deliver first
                task = self._loop.create_task(self._settle_after(pending, result))
                self._publishing.add(task)
                task.add_done_callback(self._publishing.discard)
                return
        settle(result.outcomes)

    async def _settle_after(self, pending: Awaitable[None], result: BatchResult) -> None:
        try:
            await pending
        except Exception:
            log.exception("publishing revision %d failed; the change feed will catch up",
                          result.last_revision)
        settle(result.outcomes)
