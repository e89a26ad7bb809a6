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

Group commit is the loop every backend shares (``group_commit.py``), with
the hooks below: whatever is queued (up to ``max_batch``) runs in one
transaction, each write in its own SAVEPOINT, and a ``pg_notify`` in the
transaction tells the other replicas at commit. After an error the loop asks
``is_in_transaction()`` whether the connection still holds the transaction.
Callers are answered only after the commit and after this replica's
listeners have been told. The transaction awaits nothing but the database.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg

from . import group_commit
from .errors import Unavailable
from .group_commit import Job, WriteFn, run_batch, settle, take_batch
from .interface import Change
from .postgres_schema import CHANGES_CHANNEL

log = logging.getLogger(__name__)

T = TypeVar("T")

#: What this backend's write functions get.
WriteContext = group_commit.WriteContext[asyncpg.Connection]

__all__ = ["DATABASE_ERRORS", "PostgresStatements", "WriteContext", "Writer", "unavailable"]

#: What the database driver raises when the database cannot serve a request.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError,
    TimeoutError,
)

CHANGES_SQL = ("INSERT INTO changes (revision, idx, tenant, owner_id, dataset_id, created_at,"
               " event) VALUES ($1, $2, $3, $4, $5, $6, $7)")


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


def count_of(status: str) -> int:
    """The row count of an asyncpg command status such as ``DELETE 3``."""
    return int(status.rsplit(" ", 1)[-1])


class PostgresStatements:
    """Statements on an asyncpg connection."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(await self.conn.fetch(sql, *params))

    async def fetchrow(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return await self.conn.fetchrow(sql, *params)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        status = await self.conn.execute(sql, *params)
        try:
            return count_of(status)
        except ValueError:
            return 0

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self.conn.executemany(sql, rows)


class PostgresBatch:
    """The group-commit hooks on one pooled connection."""

    changes_sql = CHANGES_SQL

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.tx = PostgresStatements(conn)
        self._transaction = conn.transaction()

    async def begin(self) -> int:
        await self._transaction.start()
        # The counter row is locked first, before any other row: revision order is
        # commit order on every replica, and two writers can never deadlock.
        return int(await self.conn.fetchval(
            "SELECT value FROM meta WHERE key = 'revision' FOR UPDATE"))

    async def savepoint(self) -> None:
        await self.conn.execute("SAVEPOINT write")

    async def renew_savepoint(self) -> None:
        # No parameters: one simple-protocol message, so both statements in one round trip.
        await self.conn.execute("RELEASE SAVEPOINT write; SAVEPOINT write")

    async def rollback_to(self) -> None:
        await self.conn.execute("ROLLBACK TO SAVEPOINT write")

    def in_transaction(self) -> bool:
        return not self.conn.is_closed() and self.conn.is_in_transaction()

    async def store_revision(self, start: int, last: int) -> None:
        # The counter moves by the revisions taken, and the other replicas
        # hear of it at commit (NOTIFY is delivered only if this commits).
        counter = await self.conn.fetchrow(
            "WITH counter AS (UPDATE meta SET value = value + $1"
            " WHERE key = 'revision' RETURNING value)"
            " SELECT value, pg_notify($2, value::text) FROM counter",
            last - start, CHANGES_CHANNEL)
        if int(counter[0]) != last:  # only if a writer skipped the lock protocol
            raise RuntimeError(f"revision counter at {counter[0]}, expected {last}")

    async def commit(self) -> None:
        await self._transaction.commit()

    async def rollback(self) -> None:
        if self.in_transaction():
            await self._transaction.rollback()

    def is_database_error(self, exc: BaseException) -> bool:
        return isinstance(exc, DATABASE_ERRORS)

    def unavailable(self, exc: BaseException) -> Unavailable:
        return unavailable(exc)


#: Told after each commit that changed something: (last revision, changes).
OnCommit = Callable[[int, list[Change]], Awaitable[None]]


class Writer:
    """Owns the write path of one replica; ``submit`` queues a write and awaits its commit."""

    def __init__(self, pool: asyncpg.Pool, clock: Callable[[], int], max_batch: int,
                 on_commit: OnCommit, acquire_timeout: float) -> None:
        self._pool = pool
        self._clock = clock
        self._max_batch = max(1, max_batch)
        self._on_commit = on_commit
        self._acquire_timeout = acquire_timeout
        self._queue: asyncio.Queue[Job[Any] | None] = asyncio.Queue()
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
        self._queue.put_nowait(Job(fn, future))
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
            batch, stopping = take_batch(job, self._queue.get_nowait, self._max_batch)
            try:
                await self._commit(batch)
            except BaseException as exc:  # the writer must outlive any one batch
                if not isinstance(exc, DATABASE_ERRORS):
                    log.exception("write batch failed")
                failure = unavailable(exc)
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(failure)
                if isinstance(exc, asyncio.CancelledError):
                    raise

    async def _commit(self, batch: list[Job[Any]]) -> None:
        async with self._pool.acquire(timeout=self._acquire_timeout) as conn:
            result = await run_batch(PostgresBatch(conn), batch, self._clock)
        if result.committed:
            self.batches += 1
            self.writes += len(batch)
        if result.last_revision:
            # Listeners first, so that a caller who watches from its write's
            # revision + 1 right after the answer finds the hub already there.
            try:
                await self._on_commit(result.last_revision, result.changes)
            except Exception:
                log.exception("publishing revision %d failed; the change feed will catch up",
                              result.last_revision)
        settle(result.outcomes)
