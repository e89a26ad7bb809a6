"""The PostgreSQL writer: one task per replica, group commit, revisions from a counter row.

Why a counter row and not a sequence: a sequence hands out numbers at
``nextval`` time, so a transaction that took 8 can commit before one that
took 7, and a watcher that has seen 8 would skip 7 forever. The revision
counter is a row in ``meta``; every write transaction locks it first
(``SELECT ... FOR UPDATE``), counts its revisions, and adds them to the row
(``UPDATE ... SET value = value + n RETURNING value``) before it commits.
The row lock is held until commit, so the next writer (on this replica or
any other) reads the counter only after this commit: revision order is
commit order across every replica.

Taking the lock first, before any other row is touched, has two more
effects. Every row lock a write takes is taken after the counter's, so two
sessiond writers can never deadlock. And a write reads state that every
lower revision has committed: within the lock, PostgreSQL's READ COMMITTED
behaves like SQLite's single ``BEGIN IMMEDIATE`` writer, so the write
functions are the same ones the SQLite store runs, only awaited.

Group commit as in ``sqlite_writer.py``: whatever is queued (up to
``max_batch``) runs in one transaction, each write in its own SAVEPOINT so
one failing write rolls back alone, each write that changed something takes
the next revision, its change log rows go in the same transaction, and a
``pg_notify`` in the transaction tells the other replicas at commit. Callers
are answered only after the commit and after this replica's listeners have
been told. The transaction awaits nothing but the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import asyncpg

from .errors import StoreError, Unavailable
from .interface import Change
from .postgres_schema import CHANGES_CHANNEL
from .revisions import ChangeRecorder

log = logging.getLogger(__name__)

T = TypeVar("T")

#: What the database driver raises when the database cannot serve a request.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError,
    TimeoutError,
)


def unavailable(exc: BaseException) -> Unavailable:
    """The Unavailable a database failure becomes; the detail goes to the log only.

    The message names the kind of failure, never the SQL or the server's text.
    """
    if isinstance(exc, asyncpg.QueryCanceledError):
        return Unavailable("the database did not answer in time (statement timeout)")
    if isinstance(exc, asyncpg.PostgresError) and not isinstance(
            exc, asyncpg.PostgresConnectionError | asyncpg.CannotConnectNowError
            | asyncpg.TooManyConnectionsError | asyncpg.AdminShutdownError):
        return Unavailable(f"database error ({type(exc).__name__})")
    return Unavailable("the database is unavailable")


def write_failure(exc: Exception) -> Exception:
    """What the caller of a failed write is answered with."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, DATABASE_ERRORS):
        log.warning("write failed in the database: %s", exc)
        return unavailable(exc)
    log.error("write failed", exc_info=exc)
    return exc


class WriteContext(ChangeRecorder):
    """What a write function gets: the connection, the time, and revisions."""

    def __init__(self, conn: asyncpg.Connection, revision: int,
                 clock: Callable[[], int]) -> None:
        super().__init__(revision, clock)
        self.conn = conn

    async def finish_write(self) -> list[Change]:
        changes, change_rows = self.take_pending()
        if change_rows:
            await self.conn.executemany(
                "INSERT INTO changes (revision, idx, tenant, owner_id, dataset_id, created_at,"
                " event) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                change_rows,
            )
        return changes


WriteFn = Callable[[WriteContext], Awaitable[T]]
#: Told after each commit that changed something: (last revision, changes).
OnCommit = Callable[[int, list[Change]], Awaitable[None]]


class _Job(Generic[T]):
    __slots__ = ("fn", "future")

    def __init__(self, fn: WriteFn[T], future: asyncio.Future[T]) -> None:
        self.fn = fn
        self.future = future


class Writer:
    """Owns the write path of one replica; ``submit`` queues a write and awaits its commit."""

    def __init__(self, pool: asyncpg.Pool, clock: Callable[[], int], max_batch: int,
                 on_commit: OnCommit, acquire_timeout: float) -> None:
        self._pool = pool
        self._clock = clock
        self._max_batch = max(1, max_batch)
        self._on_commit = on_commit
        self._acquire_timeout = acquire_timeout
        self._queue: asyncio.Queue[_Job[Any] | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.batches = 0
        self.writes = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sessiond-pg-writer")

    async def submit(self, fn: WriteFn[T]) -> T:
        if self._closed or self._task is None:
            raise Unavailable("the store is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(fn, future))
        return await future

    async def close(self) -> None:
        """Commit what is queued, then stop."""
        if self._closed:
            return
        self._closed = True
        self._queue.put_nowait(None)
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            job = await self._queue.get()
            if job is None:
                break
            batch: list[_Job[Any]] = [job]
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if nxt is None:
                    stopping = True
                    break
                batch.append(nxt)
            try:
                await self._commit(batch)
            except BaseException as exc:  # the writer must outlive any one batch
                failure = exc if isinstance(exc, StoreError) else unavailable(exc)
                if not isinstance(exc, DATABASE_ERRORS):
                    log.exception("write batch failed")
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(failure)
                if isinstance(exc, asyncio.CancelledError):
                    raise

    async def _commit(self, batch: list[_Job[Any]]) -> None:
        outcomes: list[tuple[_Job[Any], Any, BaseException | None]] = []
        changes: list[Change] = []
        last = 0
        async with self._pool.acquire(timeout=self._acquire_timeout) as conn:
            transaction = conn.transaction()
            await transaction.start()
            try:
                start = int(await conn.fetchval(
                    "SELECT value FROM meta WHERE key = 'revision' FOR UPDATE"))
                ctx = WriteContext(conn, start, self._clock)
                # A lone write needs no savepoint: its failure rolls back the transaction.
                alone = len(batch) == 1
                for job in batch:
                    ctx.begin_write()
                    if not alone:
                        await conn.execute("SAVEPOINT write")
                    try:
                        result = await job.fn(ctx)
                        written = await ctx.finish_write()
                        if not alone:
                            await conn.execute("RELEASE SAVEPOINT write")
                    except Exception as exc:
                        # One failing write must not fail its neighbours.
                        ctx.abandon_write()
                        if alone:
                            raise
                        await conn.execute("ROLLBACK TO SAVEPOINT write")
                        await conn.execute("RELEASE SAVEPOINT write")
                        outcomes.append((job, None, write_failure(exc)))
                        continue
                    changes.extend(written)
                    outcomes.append((job, result, None))
                if ctx.revision != start:
                    # The counter moves by the revisions taken, and the other replicas
                    # hear of it at commit (NOTIFY is delivered only if this commits).
                    counter = await conn.fetchrow(
                        "WITH counter AS (UPDATE meta SET value = value + $1"
                        " WHERE key = 'revision' RETURNING value)"
                        " SELECT value, pg_notify($2, value::text) FROM counter",
                        ctx.revision - start, CHANGES_CHANNEL)
                    last = int(counter[0])
                    if last != ctx.revision:  # only if a writer skipped the lock protocol
                        raise RuntimeError(f"revision counter at {last}, expected "
                                           f"{ctx.revision}")
                await transaction.commit()
            except BaseException as exc:
                with contextlib.suppress(*DATABASE_ERRORS):
                    await transaction.rollback()
                if len(batch) == 1 and isinstance(exc, Exception):
                    outcomes = [(batch[0], None, write_failure(exc))]
                    changes = []
                    last = 0
                else:
                    if isinstance(exc, DATABASE_ERRORS):
                        log.error("write transaction of %d writes rolled back: %s",
                                  len(batch), exc)
                    raise
        self.batches += 1
        self.writes += len(batch)
        if changes:
            # Listeners first, so that a caller who watches from its write's
            # revision + 1 right after the answer finds the hub already there.
            try:
                await self._on_commit(last, changes)
            except Exception:
                log.exception("publishing revision %d failed; the change feed will catch up",
                              last)
        for job, result, error in outcomes:
            if job.future.done():
                continue
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result)
