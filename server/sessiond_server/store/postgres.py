"""The PostgreSQL store: several stateless replicas on one database (asyncpg).

The same SessionStore as ``sqlite.py``, answering every call the same way:
the reads and writes are the shared store logic (``logic.py``) over the
PostgreSQL dialect (see ``postgres_writer.py`` for why the locking makes
the same write functions sound). What is new is that other replicas
commit too, so this replica's listeners (its WatchHub) are fed by the
change feed every backend shares (``feed.py``); what PostgreSQL adds is how
it is notified: every commit notifies ``sessiond_changes`` with its last
revision, and each replica LISTENs on a dedicated connection
(:class:`ListenNotifier`). A dropped LISTEN connection only delays delivery
until the next poll; the change log is the truth.

Reads run on a pool with a statement timeout; several statements that must
agree (a page, its total and the revision) run in one REPEATABLE READ READ
ONLY transaction. Every failure to reach the database is ``Unavailable``
and the pool reconnects by itself when the database is back. Every query is
parameterised and filtered by the caller's :class:`~.interface.Scope`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable

import asyncpg
from sessiond.v1 import event_pb2, session_pb2

from .dialect import POSTGRES
from .errors import Unavailable
from .feed import Heard, ReplicaFeed
from .logic import REVISION
from .postgres_schema import (
    CHANGES_CHANNEL,
    COMPACTION_LOCK,
    MIGRATION_LOCK,
    MIGRATIONS,
    SCHEMA_VERSION,
)
from .postgres_url import redacted
from .postgres_writer import (
    DATABASE_ERRORS,
    PostgresStatements,
    Writer,
    unavailable,
)
from .revisions import NEWEST_OVER_BYTES_SQL, PROVISIONAL_SPAN, compaction_target
from .sqlite import SchemaTooNew

log = logging.getLogger(__name__)

E = event_pb2
S = session_pb2

class PostgresStore(ReplicaFeed):
    """The SessionStore on a PostgreSQL database shared by any number of replicas."""

    dialect = POSTGRES
    feed_errors = (*DATABASE_ERRORS, Unavailable)

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], int],
        abandoned_after_seconds: float = 1800.0,
        max_batch: int = 256,
        pool_min_size: int = 2,
        pool_max_size: int = 10,
        statement_timeout_seconds: float = 30.0,
        connect_timeout_seconds: float = 10.0,
        poll_interval_seconds: float = 1.0,
    ) -> None:
        # A batch's provisional revisions must fit their connection's range.
        super().__init__(clock, abandoned_after_seconds, min(max_batch, PROVISIONAL_SPAN - 1))
        self.url = url
        self._pool_min = max(1, pool_min_size)
        self._pool_max = max(self._pool_min, pool_max_size)
        self._statement_timeout = statement_timeout_seconds
        self._connect_timeout = connect_timeout_seconds
        self._pool: asyncpg.Pool | None = None
        self._writer: Writer | None = None
        self._init_feed(ListenNotifier(url, connect_timeout_seconds), poll_interval_seconds)
        # The app asks every store this; PostgreSQL recovers on its own.
        self.recovered_wal = False

    # Life cycle.
    def _server_settings(self) -> dict[str, str]:
        timeout_ms = str(int(self._statement_timeout * 1000))
        # client_min_messages: the writer learns each batch's base revision by a NOTICE.
        return {"application_name": "sessiond", "statement_timeout": timeout_ms,
                "idle_in_transaction_session_timeout": str(int(timeout_ms) * 2),
                "client_min_messages": "notice"}

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.url, min_size=self._pool_min, max_size=self._pool_max,
                timeout=self._connect_timeout, server_settings=self._server_settings(),
                max_inactive_connection_lifetime=300.0)
        except DATABASE_ERRORS as exc:
            raise Unavailable(f"cannot connect to PostgreSQL at {redacted(self.url)}: "
                              f"{type(exc).__name__}") from exc
        try:
            async with self._pool.acquire() as conn:
                await self._migrate(conn)
                meta = {r[0]: (r[1], r[2]) for r in
                        await conn.fetch("SELECT key, value, data FROM meta")}
            self._revision = int(meta["revision"][0])
            self._compacted_revision = int(meta["compacted_revision"][0])
            self.page_token_key = bytes(meta["page_token_key"][1])
            await self._open_feed()
        except BaseException:
            await self._close_feed()
            await self._pool.close()
            self._pool = None
            raise
        self._writer = Writer(self._pool, self._clock, self._max_batch, self._publish,
                              self._connect_timeout)
        self._writer.start()

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        async def version() -> int:
            if not await conn.fetchval("SELECT to_regclass('meta') IS NOT NULL"):
                return 0
            found = await conn.fetchval("SELECT value FROM meta WHERE key = 'schema_version'")
            return int(found or 0)

        current = await version()
        if current > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"{redacted(self.url)} has schema version {current}, newer than this sessiond "
                f"understands ({SCHEMA_VERSION}); it was left untouched")
        if current == SCHEMA_VERSION:
            return
        # Replicas starting together: one migrates, the others then find it done. The
        # lock is taken before the transaction begins so that the transaction's view
        # of the catalog includes what the previous holder created.
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        try:
            async with conn.transaction():
                current = await version()
                if current > SCHEMA_VERSION:
                    raise SchemaTooNew(f"schema version {current} appeared while migrating")
                for target, sql in MIGRATIONS:
                    if target <= current:
                        continue
                    await conn.execute(sql)
                    if target == 1:
                        await conn.execute("INSERT INTO meta (key, data) VALUES"
                                           " ('page_token_key', $1)", secrets.token_bytes(32))
                    await conn.execute(
                        "UPDATE meta SET value = $1 WHERE key = 'schema_version'", target)
                    log.info("migrated %s to schema version %d", redacted(self.url), target)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.close()
            # What the write path cost, for docs/scaling.md's figures (bench/replicas.py).
            log.info("postgres writer stopped: %s", self._writer.stats.line())
        await self._close_feed()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), 5.0)
            except DATABASE_ERRORS:
                pool.terminate()

    @property
    def writer(self) -> Writer:
        """The open store's writer (its ``stats`` are what the write path cost)."""
        if self._writer is None:
            raise Unavailable("the store is not open")
        return self._writer

    # Plumbing.
    @contextlib.asynccontextmanager
    async def _held_snapshot(self) -> AsyncIterator[PostgresStatements]:
        """A REPEATABLE READ, READ ONLY transaction on a connection of its own (not
        the pool's), which PostgreSQL ends when it stays idle for longer than
        ``held_snapshot_idle_seconds`` (idle_in_transaction_session_timeout)."""
        if self._pool is None:
            raise Unavailable("the store is not open")
        try:
            idle_ms = str(int(self.held_snapshot_idle_seconds * 1000))
            conn = await asyncpg.connect(self.url, timeout=self._connect_timeout,
                                         server_settings={
                                             **self._server_settings(),
                                             "idle_in_transaction_session_timeout": idle_ms})
        except DATABASE_ERRORS as exc:
            log.warning("read failed: %s", exc)
            raise unavailable(exc) from exc
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                yield PostgresStatements(conn)
        except DATABASE_ERRORS as exc:
            log.warning("read failed: %s", exc)
            raise unavailable(exc) from exc
        finally:
            with contextlib.suppress(*DATABASE_ERRORS):
                await asyncio.wait_for(conn.close(), 5.0)

    @contextlib.asynccontextmanager
    async def _snapshot(self, small: bool = False) -> AsyncIterator[PostgresStatements]:
        """One snapshot: a REPEATABLE READ, READ ONLY transaction (small or not)."""
        if self._pool is None:
            raise Unavailable("the store is not open")
        try:
            async with self._pool.acquire(timeout=self._connect_timeout) as conn, \
                    conn.transaction(isolation="repeatable_read", readonly=True):
                yield PostgresStatements(conn)
        except DATABASE_ERRORS as exc:
            log.warning("read failed: %s", exc)
            raise unavailable(exc) from exc

    # Change log.
    async def compact(self, keep_revisions: int, max_age_seconds: float,
                      max_bytes: int = 0) -> int:
        """Drop old change log rows: one replica at a time (advisory lock), beside the writers.

        Compaction takes no revision and touches only ``changes`` and the
        ``compacted_revision`` row, so it runs in its own transaction and
        never holds the revision counter; a replica that finds another one
        compacting skips this round.
        """
        if self._pool is None:
            raise Unavailable("the store is not open")
        try:
            async with self._pool.acquire(timeout=self._connect_timeout) as conn, \
                    conn.transaction():
                if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)",
                                           COMPACTION_LOCK):
                    return self._compacted_revision
                head, current = await conn.fetchrow(
                    f"SELECT {REVISION}, (SELECT value FROM meta"
                    f" WHERE key = 'compacted_revision')")
                aged: int | None = None
                if max_age_seconds > 0:
                    cutoff = self._clock() - int(max_age_seconds * 1_000_000)
                    aged = int(await conn.fetchval(
                        "SELECT coalesce(max(revision), 0) FROM changes WHERE created_at < $1",
                        cutoff))
                over_bytes = int(await conn.fetchval(
                    NEWEST_OVER_BYTES_SQL.format(budget="$1"), max_bytes)) if max_bytes else None
                target = compaction_target(int(head), keep_revisions, aged, over_bytes)
                compacted = int(current)
                if target > compacted:
                    await conn.execute("DELETE FROM changes WHERE revision <= $1", target)
                    await conn.execute(
                        "UPDATE meta SET value = $1 WHERE key = 'compacted_revision'", target)
                    compacted = target
        except DATABASE_ERRORS as exc:
            raise unavailable(exc) from exc
        self._compacted_revision = max(self._compacted_revision, compacted)
        return self._compacted_revision

    # Maintenance.
    async def check_consistency(self) -> list[str]:
        """Counter recounts and change-log continuity (PostgreSQL checks its own pages)."""
        problems: list[str] = []
        problems.extend(await self.counter_problems())
        gaps, head = await self._read_many([
            ("SELECT count(DISTINCT revision), min(revision), max(revision) FROM changes", ()),
            (f"SELECT {REVISION}, (SELECT value FROM meta WHERE key = 'compacted_revision')",
             ()),
        ])
        n, lo, hi = gaps[0]
        if n and hi - lo + 1 != n:
            problems.append(f"change log has gaps: {n} revisions between {lo} and {hi}")
        revision, compacted = head[0]
        if n and hi != revision:
            problems.append(f"revision counter {revision} != last change log revision {hi}")
        if not n and revision != compacted:
            problems.append(f"revision counter {revision} but the change log is empty above "
                            f"compacted revision {compacted}")
        return problems


class ListenNotifier:
    """PostgreSQL's notifications: a LISTEN connection on ``sessiond_changes``.

    Announcing needs nothing here: every write transaction notifies the
    channel itself, and PostgreSQL delivers that only if it commits.
    """

    def __init__(self, url: str, connect_timeout: float) -> None:
        self._url = url
        self._connect_timeout = connect_timeout
        self._conn: asyncpg.Connection | None = None
        self._closing = False

    @property
    def connected(self) -> bool:
        return self._conn is not None

    async def open(self, heard: Heard, lost: Callable[[], None]) -> None:
        self._closing = False

        def notified(conn: object, pid: int, channel: str, payload: object) -> None:
            try:
                heard(int(str(payload)))
            except ValueError:
                heard(None)

        def dropped(conn: object) -> None:
            self._conn = None
            if not self._closing:
                log.warning("the LISTEN connection to PostgreSQL closed")
                lost()

        conn = await asyncpg.connect(self._url, timeout=self._connect_timeout,
                                     server_settings={"application_name": "sessiond-listen"})
        try:
            await conn.add_listener(CHANGES_CHANNEL, notified)
        except BaseException:
            await conn.close()
            raise
        conn.add_termination_listener(dropped)
        self._conn = conn

    def announce(self, revision: int) -> None:
        pass

    async def close(self) -> None:
        self._closing = True
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(*DATABASE_ERRORS):
                await conn.close(timeout=2.0)
