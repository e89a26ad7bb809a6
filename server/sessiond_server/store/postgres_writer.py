"""The PostgreSQL writer: one task per replica, group commit, the revision counter taken last.

Why a counter row and not a sequence: a sequence hands out numbers at
``nextval`` time, so a transaction that took 8 can commit before one that
took 7, and a watcher that has seen 8 would skip 7 forever. The revision
counter is a row in ``meta``, and each write transaction moves it by the
revisions it took in one statement just before COMMIT:
``UPDATE ... SET value = value + n RETURNING value``. That statement takes
the row's lock and holds it to COMMIT, so a second transaction's UPDATE waits
for the first to commit and then reads its value: revision order is commit
order across every replica, and the lock is held for one statement and the
COMMIT, not for the batch (docs/scaling.md has the proof).

Until then the batch's revisions are provisional (``revisions.provisional_start`` +
k, a range of the connection's own, so batches of several replicas in flight
never insert the same change-log key and never wait for each other before the
counter): the same statement stamps the session rows the batch wrote with their
final revision (a partial index holds only provisional rows) and stores the
batch's change-log rows at their final revisions (their events keep the
provisional ones, which the log's readers map: ``revisions.logged_event``);
stored responses are rewritten, and the results are mapped before the
callers hear of them. A write locks the session rows it relies on
(``SELECT ... FOR UPDATE``, the dialect's ``lock_rows``), so what it read is
still true at COMMIT; a write that loses a race for a new unique key, or is
chosen to break a deadlock, runs again. The counter is the last lock a
transaction takes, so it is never part of a wait cycle.

Round trips are what a batch's time is made of, so few are spent: BEGIN goes
with the first statement's message, a batch runs without savepoints until a
write fails after changing something (``group_commit.Optimistic``), an
append's message rows go in its session UPDATE, and the change log goes in
the counter's statement. :class:`WriterStats` counts them, with the time the
counter was held and waited for, and the store logs them when it closes.

Group commit is the loop every backend shares (``group_commit.py``), with
the hooks below: whatever is queued (up to ``max_batch``) runs in one
transaction, and a ``pg_notify`` in the transaction tells the other replicas
at commit. After an error the loop asks ``is_in_transaction()`` whether the
connection still holds the transaction. Callers are answered only after the
commit and after this replica's listeners have been told. The transaction
awaits nothing but the database.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg

from . import group_commit
from .errors import Unavailable
from .group_commit import Alone, Job, WriteFn, run_batch, settle, take_batch
from .interface import Change
from .postgres_schema import CHANGES_CHANNEL
from .revisions import PROVISIONAL, provisional_start

log = logging.getLogger(__name__)

T = TypeVar("T")

#: What this backend's write functions get.
WriteContext = group_commit.WriteContext[asyncpg.Connection]

__all__ = ["DATABASE_ERRORS", "PostgresStatements", "WriteContext", "Writer", "WriterStats",
           "unavailable"]

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
    """Statements on an asyncpg connection; ``round_trips`` counts them (each call is one
    exchange with the server: asyncpg sends a cached prepared statement's Bind, Execute
    and Sync together, and ``executemany`` pipelines its rows)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.round_trips = 0
        #: Statements sent that may change rows: every one but a plain SELECT.
        self.changes_sent = 0

    def _count(self, sql: str, changes: bool = True) -> None:
        self.round_trips += 1
        if changes or sql.lstrip()[:6].upper() != "SELECT":
            self.changes_sent += 1

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        self._count(sql, False)
        return list(await self.conn.fetch(sql, *params))

    async def fetchrow(self, sql: str, params: Sequence[Any] = ()) -> Any:
        self._count(sql, False)
        return await self.conn.fetchrow(sql, *params)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self._count(sql, False)
        status = await self.conn.execute(sql, *params)
        try:
            return count_of(status)
        except ValueError:
            return 0

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._count(sql)
        await self.conn.executemany(sql, rows)


@dataclasses.dataclass
class WriterStats:
    """What one replica's writer did since it started: the figures docs/scaling.md
    reasons with, logged when the store closes (``bench/replicas.py`` reads them)."""

    batches: int = 0
    writes: int = 0
    #: Exchanges with the server made by write transactions (the feed's reads are apart).
    round_trips: int = 0
    #: Seconds this replica held the revision counter's row lock, summed over batches:
    #: from the moment the counter's UPDATE got the lock (the database's clock, read in
    #: that statement) to COMMIT's answer (this process's clock; the two agree when both
    #: run on one host, as in the bench). An upper bound: it includes half a round trip
    #: and however long this process took to read the answer.
    counter_held_seconds: float = 0.0
    #: Transactions rolled back whole: a batch run again with savepoints after a write
    #: failed in it (group_commit's optimistic first run), a lost transaction.
    rollbacks: int = 0
    #: Seconds from sending the counter's UPDATE to getting its lock (another replica's
    #: batch held it), plus half a round trip.
    counter_wait_seconds: float = 0.0

    def line(self) -> str:
        return (f"writes={self.writes} batches={self.batches} round_trips={self.round_trips}"
                f" counter_held={self.counter_held_seconds:.3f}s"
                f" counter_wait={self.counter_wait_seconds:.3f}s rollbacks={self.rollbacks}")


class PostgresBatch:
    """The group-commit hooks on one pooled connection.

    A batch runs without savepoints until a write fails after changing
    something (``group_commit.Optimistic``): each would cost a round trip.
    BEGIN is not sent on its own: it goes with the first write's SAVEPOINT (one
    simple-protocol message, one round trip), or, for a batch of one write (which
    has no savepoint), just before that write's first statement.
    """

    changes_sql = CHANGES_SQL

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.tx = _BeginFirst(self)
        self._begun = False
        self._committed = False
        self._locked_at = 0.0
        self.counter_held = 0.0
        self.counter_wait = 0.0
        self.rollbacks = 0

    @property
    def round_trips(self) -> int:
        return self.tx.round_trips

    def changes_sent(self) -> int:
        # Optimistic (group_commit): savepoints cost a round trip here.
        return self.tx.changes_sent

    async def _send(self, sql: str) -> None:
        """A statement without parameters (simple protocol: several in one message)."""
        self.tx.round_trips += 1
        await self.conn.execute(sql)

    async def ensure_begun(self, then: str = "") -> bool:
        """Send BEGIN if it was not sent yet, with ``then`` in the same message; whether
        it was (False: nothing was sent)."""
        if self._begun:
            return False
        self._begun = True
        await self._send("BEGIN" + (f"; {then}" if then else ""))
        return True

    async def begin(self) -> int:
        # No counter yet: the batch's revisions are provisional until store_revision.
        self._begun = False
        self._committed = False
        return provisional_start(self.conn.get_server_pid())

    async def savepoint(self) -> None:
        if not await self.ensure_begun("SAVEPOINT write"):
            await self._send("SAVEPOINT write")

    async def renew_savepoint(self) -> None:
        # No parameters: one simple-protocol message, so both statements in one round trip.
        await self._send("RELEASE SAVEPOINT write; SAVEPOINT write")

    async def rollback_to(self) -> None:
        await self._send("ROLLBACK TO SAVEPOINT write")

    def in_transaction(self) -> bool:
        return not self.conn.is_closed() and self.conn.is_in_transaction()

    #: The counter's statement: moves the counter by $1 (its lock is taken here and held
    #: to COMMIT), gives the session rows this transaction wrote their final revision
    #: (only they match: committed rows are never provisional, other transactions' rows
    #: are not visible) and tells the other replicas at commit (NOTIFY is delivered
    #: only if this commits). $3 is the batch's first provisional revision. Answers the
    #: base and the database's clock once the lock is held.
    STAMP_SQL = (
        "WITH counter AS (UPDATE meta SET value = value + $1 WHERE key = 'revision'"
        " RETURNING value - $1 AS base),"
        " stamped AS (UPDATE sessions SET revision = revision - $3 + counter.base"
        f" FROM counter WHERE sessions.revision > {PROVISIONAL}){{log}}"
        " SELECT base, extract(epoch FROM clock_timestamp())::float8,"
        " pg_notify($2, (base + $1)::text) FROM counter")
    #: ... and stores the batch's change-log rows ($4.. one array per column) at their
    #: final revisions, their events as serialised (provisional).
    LOG_SQL = (
        ", logged AS (INSERT INTO changes (revision, idx, tenant, owner_id, dataset_id,"
        " created_at, event) SELECT x.revision - $3 + counter.base, x.idx, x.tenant,"
        " x.owner_id, x.dataset_id, x.created_at, x.event FROM counter, unnest($4::bigint[],"
        " $5::integer[], $6::text[], $7::text[], $8::text[], $9::bigint[], $10::bytea[])"
        " AS x (revision, idx, tenant, owner_id, dataset_id, created_at, event))")

    async def store_revision(self, start: int, last: int) -> int:
        return await self._stamp(self.STAMP_SQL.format(log=""), last - start, start)

    #: The change-log rows at their provisional revisions ($1.. one array per column).
    LOG_PROVISIONAL_SQL = (
        "INSERT INTO changes (revision, idx, tenant, owner_id, dataset_id, created_at, event)"
        " SELECT * FROM unnest($1::bigint[], $2::integer[], $3::text[], $4::text[],"
        " $5::text[], $6::bigint[], $7::bytea[])")
    #: Where the counter's lock is held only inside the database: the counter moved, the
    #: session rows and the change-log rows (inserted before, at their provisional
    #: revisions) stamped, the other replicas notified, and COMMIT, in one message. A
    #: simple-protocol message takes no parameters (the values are integers this
    #: process made) and returns no rows to asyncpg, so the base comes back in a NOTICE.
    STAMP_AND_COMMIT_SQL = (
        "DO $$DECLARE base bigint; locked float8; BEGIN"
        " UPDATE meta SET value = value + {taken} WHERE key = 'revision'"
        " RETURNING value - {taken} INTO base;"
        " locked := extract(epoch FROM clock_timestamp());"
        f" UPDATE sessions SET revision = revision - {{start}} + base"
        f" WHERE revision > {PROVISIONAL};"
        f" UPDATE changes SET revision = revision - {{start}} + base"
        f" WHERE revision > {PROVISIONAL};"
        f" PERFORM pg_notify('{CHANGES_CHANNEL}', (base + {{taken}})::text);"
        " PERFORM set_config('sessiond.base', base || ' ' || locked, false);"
        " RAISE NOTICE 'sessiond-base % %', base, locked;"
        " END$$; COMMIT")
    #: Where the base is read again should its NOTICE not arrive: the DO block also
    #: keeps it in a setting of the connection's session, which outlives the COMMIT.
    BASE_AGAIN_SQL = "SELECT current_setting('sessiond.base', true)"

    async def store_revision_and_log(self, start: int, last: int,
                                     rows: Sequence[tuple[Any, ...]], commit: bool) -> int:
        # LogsWithCounter (group_commit).
        columns = [list(column) for column in zip(*rows, strict=True)]
        if not commit:
            # The change log in the counter's statement; COMMIT follows on its own.
            return await self._stamp(self.STAMP_SQL.format(log=self.LOG_SQL), last - start,
                                     start, *columns)
        self.tx.round_trips += 1
        await self.conn.execute(self.LOG_PROVISIONAL_SQL, *columns)
        heard: list[str] = []

        def notice(conn: object, message: Any) -> None:
            text = str(getattr(message, "message", ""))
            if text.startswith("sessiond-base "):
                heard.append(text)

        self.conn.add_log_listener(notice)
        sent = time.time()
        try:
            self.tx.round_trips += 1
            await self.conn.execute(self.STAMP_AND_COMMIT_SQL.format(taken=last - start,
                                                                     start=start))
            # asyncpg schedules the NOTICE's listener before it wakes this task.
            for _ in range(3):
                if heard:
                    break
                await asyncio.sleep(0)
        finally:
            self.conn.remove_log_listener(notice)
        self._committed = True
        if heard:
            _, base, locked_at = heard[0].split(" ")
        else:  # committed: the base is in the session's setting
            self.tx.round_trips += 1
            base, locked_at = str(await self.conn.fetchval(self.BASE_AGAIN_SQL)).split(" ")
        locked = min(max(sent, float(locked_at)), time.time())
        self.counter_wait += locked - sent
        self.counter_held += time.time() - locked
        return int(base) - start

    async def _stamp(self, sql: str, taken: int, start: int, *log: list[Any]) -> int:
        sent = time.time()
        self.tx.round_trips += 1
        base, locked_at, _ = await self.conn.fetchrow(sql, taken, CHANGES_CHANNEL, start, *log)
        self._locked_at = min(max(sent, float(locked_at)), time.time())
        self.counter_wait += self._locked_at - sent
        return int(base) - start

    def _counter_released(self) -> None:
        if self._locked_at:
            self.counter_held += time.time() - self._locked_at
            self._locked_at = 0.0

    async def commit(self) -> None:
        if not self._begun or self._committed:
            return  # a lone write that failed before its first statement, or done
        try:
            await self._send("COMMIT")
        finally:
            self._counter_released()

    async def rollback(self) -> None:
        try:
            if self.in_transaction():
                self.rollbacks += 1
                await self._send("ROLLBACK")
        finally:
            self._counter_released()

    def is_database_error(self, exc: BaseException) -> bool:
        return isinstance(exc, DATABASE_ERRORS)

    def is_conflict(self, exc: BaseException) -> bool:
        return isinstance(exc, asyncpg.UniqueViolationError | asyncpg.DeadlockDetectedError
                          | asyncpg.SerializationError)

    def unavailable(self, exc: BaseException) -> Unavailable:
        return unavailable(exc)


class _BeginFirst(PostgresStatements):
    """The batch's statements: the first one of a batch without savepoints sends the
    deferred BEGIN first."""

    def __init__(self, batch: PostgresBatch) -> None:
        super().__init__(batch.conn)
        self._batch = batch

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        await self._batch.ensure_begun()
        return await super().fetch(sql, params)

    async def fetchrow(self, sql: str, params: Sequence[Any] = ()) -> Any:
        await self._batch.ensure_begun()
        return await super().fetchrow(sql, params)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        await self._batch.ensure_begun()
        return await super().execute(sql, params)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._batch.ensure_begun()
        await super().executemany(sql, rows)


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
        self._alone: Job[Any] | None = None  # taken from the queue, runs in the next batch
        self._closed = False
        self.stats = WriterStats()

    @property
    def batches(self) -> int:
        return self.stats.batches

    @property
    def writes(self) -> int:
        return self.stats.writes

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

    def _next_joining(self) -> Job[Any] | None:
        """The next queued job that may join a batch; a write that must run alone is
        kept for the next batch."""
        if self._alone is not None:
            raise asyncio.QueueEmpty
        job = self._queue.get_nowait()
        if job is not None and isinstance(job.fn, Alone):
            self._alone = job
            raise asyncio.QueueEmpty
        return job

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            if self._alone is not None:
                job: Job[Any] | None = self._alone
                self._alone = None
            else:
                job = await self._queue.get()
            if job is None:
                break
            if isinstance(job.fn, Alone):
                batch = [job]
            else:
                batch, stopping = take_batch(job, self._next_joining, self._max_batch)
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
            hooks = PostgresBatch(conn)
            try:
                result = await run_batch(hooks, batch, self._clock)
            finally:
                self.stats.round_trips += hooks.round_trips
                self.stats.counter_held_seconds += hooks.counter_held
                self.stats.counter_wait_seconds += hooks.counter_wait
                self.stats.rollbacks += hooks.rollbacks
        if result.committed:
            self.stats.batches += 1
            self.stats.writes += len(batch)
        if result.last_revision:
            # Listeners first, so that a caller who watches from its write's
            # revision + 1 right after the answer finds the hub already there.
            try:
                await self._on_commit(result.last_revision, result.changes)
            except Exception:
                log.exception("publishing revision %d failed; the change feed will catch up",
                              result.last_revision)
        settle(result.outcomes)
