"""The PostgreSQL store: several stateless replicas on one database (asyncpg).

The same SessionStore as ``sqlite.py``, answering every call the same way;
the write functions are that module's, awaited (see ``postgres_writer.py``
for why the locking makes that sound). What is new is that other replicas
commit too, so this replica's listeners (its WatchHub) are fed by a change
feed rather than by its own writer alone:

* Every commit notifies ``sessiond_changes`` with its last revision.
* Each replica LISTENs on a dedicated connection. A notification, a local
  commit, or the periodic catch-up poll (``poll_interval``) makes it read the
  change log from the last revision it delivered, in order, whole revisions,
  and hand those changes to its listeners. ``revision`` is the last revision
  delivered, so the hub's "nothing above revision yet" holds.
* A lost notification (the LISTEN connection dropped, the database
  restarted) only delays delivery until the next poll; the log is the truth.
* A local commit is delivered before its callers are answered, after
  reading any lower revisions other replicas committed first, so a caller
  that watches from its revision + 1 finds the hub already there.

Reads run on a pool with a statement timeout; several statements that must
agree (a page, its total and the revision) run in one REPEATABLE READ READ
ONLY transaction. Every failure to reach the database is ``Unavailable``
and the pool reconnects by itself when the database is back. Every query is
parameterised and filtered by the caller's :class:`~.interface.Scope`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
from sessiond.v1 import event_pb2, message_pb2, session_pb2, session_service_pb2, stats_service_pb2

from . import records as rows
from .errors import (
    Aborted,
    AlreadyExists,
    Compacted,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from .interface import (
    Change,
    ChangeListener,
    MessagePage,
    MessageQuery,
    MessagesResult,
    Scope,
    SessionPage,
    UsageResult,
)
from .postgres_schema import (
    CHANGES_CHANNEL,
    COMPACTION_LOCK,
    MIGRATION_LOCK,
    MIGRATIONS,
    RUN_PREDICATE,
    RUN_TEXT,
    SCHEMA_VERSION,
    TSVECTOR,
)
from .postgres_url import redacted
from .postgres_writer import DATABASE_ERRORS, WriteContext, Writer, unavailable
from .records import COL, SESSION_COLUMNS, USAGE_FIELDS
from .revisions import compaction_target
from .search import SearchTerms, like_pattern, search_terms
from .sqlite import ORDER_COLUMNS, SchemaTooNew

log = logging.getLogger(__name__)

E = event_pb2
S = session_pb2
M = message_pb2

MESSAGE_COLUMNS = ("m.row_id, m.session_pk, m.seq, m.message_id, m.role, m.content,"
                   " m.is_turn, m.tool_calls, m.created_at, m.updated_at, m.body")
RETURNING_COLUMNS = ", ".join(rows.SESSION_FIELDS)
USAGE_ADD = ", ".join(f"{name} = {name} + {{}}" for name in USAGE_FIELDS)
USAGE_UPSERT = ", ".join(f"{name} = session_usage.{name} + EXCLUDED.{name}"
                         for name in USAGE_FIELDS)
REVISION = "(SELECT value FROM meta WHERE key = 'revision')"
#: Revisions the change feed reads per query while catching up.
CATCH_UP_REVISIONS = 1000


def match_sql(terms: SearchTerms, p: Params) -> str:
    """The condition on messages ``m`` matching every word and run (store/search.py): words in
    the tsvector index, each run as a case-insensitive substring, which the pg_trgm index
    over the messages holding a run character serves (the class repeats its predicate)."""
    clauses = []
    if terms.words:
        clauses.append(f"{TSVECTOR} @@ plainto_tsquery('simple', {p(' '.join(terms.words))})")
    for run in terms.runs:
        clauses.append(f"{RUN_TEXT} LIKE {p(like_pattern(run))} AND {RUN_PREDICATE}")
    return " AND ".join(clauses)


def count_of(status: str) -> int:
    """The row count of an asyncpg command status such as ``DELETE 3``."""
    return int(status.rsplit(" ", 1)[-1])


class Params:
    """Collects parameter values; calling it with a value returns its ``$n``."""

    def __init__(self, *values: Any) -> None:
        self.values: list[Any] = list(values)

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def visibility_sql(scope: Scope, p: Params, alias: str = "s") -> str:
    """The WHERE fragment that keeps a query inside the caller's scope."""
    clause = f"{alias}.tenant = {p(scope.tenant)}"
    if not scope.sees_all:
        ors = []
        if scope.user_id:
            ors.append(f"{alias}.owner_id = {p(scope.user_id)}")
        if scope.dataset_ids:
            ors.append(f"{alias}.dataset_id = ANY({p(sorted(scope.dataset_ids))}::text[])")
        clause += f" AND ({' OR '.join(ors) or 'false'})"
    return clause


class PostgresStore:
    """The SessionStore on a PostgreSQL database shared by any number of replicas."""

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
        self.url = url
        self._clock = clock
        self._abandoned_after = int(abandoned_after_seconds * 1_000_000)
        self._max_batch = max_batch
        self._pool_min = max(1, pool_min_size)
        self._pool_max = max(self._pool_min, pool_max_size)
        self._statement_timeout = statement_timeout_seconds
        self._connect_timeout = connect_timeout_seconds
        self._poll_interval = poll_interval_seconds
        self._pool: asyncpg.Pool | None = None
        self._writer: Writer | None = None
        self._listeners: list[ChangeListener] = []
        self._revision = 0
        self._compacted_revision = 0
        self._deliver_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._listen_conn: asyncpg.Connection | None = None
        self._follower: asyncio.Task[None] | None = None
        self._closing = False
        self._feed_failing = False
        self.page_token_key = b""
        # The app asks every store this; PostgreSQL recovers on its own.
        self.recovered_wal = False
        self.notifications = 0
        self.catch_ups = 0

    # Life cycle.
    def _server_settings(self) -> dict[str, str]:
        timeout_ms = str(int(self._statement_timeout * 1000))
        return {"application_name": "sessiond", "statement_timeout": timeout_ms,
                "idle_in_transaction_session_timeout": str(int(timeout_ms) * 2)}

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
            await self._listen()
        except BaseException:
            await self._pool.close()
            self._pool = None
            raise
        self._writer = Writer(self._pool, self._clock, self._max_batch, self._publish,
                              self._connect_timeout)
        self._writer.start()
        self._follower = asyncio.create_task(self._follow(), name="sessiond-pg-feed")

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
        self._closing = True
        if self._writer is not None:
            await self._writer.close()
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None
        if self._listen_conn is not None:
            conn, self._listen_conn = self._listen_conn, None
            with contextlib.suppress(*DATABASE_ERRORS):
                await conn.close(timeout=2.0)
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), 5.0)
            except DATABASE_ERRORS:
                pool.terminate()

    def add_listener(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def compacted_revision(self) -> int:
        return self._compacted_revision

    @property
    def writer_stats(self) -> tuple[int, int]:
        """(batches, writes) committed since start."""
        w = self._writer
        return (w.batches, w.writes) if w else (0, 0)

    # The change feed.
    async def _listen(self) -> None:
        """Open the LISTEN connection; a notification wakes the follower."""
        conn = await asyncpg.connect(self.url, timeout=self._connect_timeout,
                                     server_settings={"application_name": "sessiond-listen"})
        try:
            await conn.add_listener(CHANGES_CHANNEL, self._notified)
        except BaseException:
            await conn.close()
            raise
        conn.add_termination_listener(self._listen_lost)
        self._listen_conn = conn
        # Whatever was committed while nobody listened is read now.
        self._wake.set()

    def _notified(self, conn: object, pid: int, channel: str, payload: object) -> None:
        self.notifications += 1
        try:
            announced = int(str(payload))
        except ValueError:
            announced = self._revision + 1
        if announced > self._revision:
            self._wake.set()

    def _listen_lost(self, conn: object) -> None:
        if not self._closing:
            log.warning("the LISTEN connection to PostgreSQL closed; polling until it is back")
        self._listen_conn = None
        self._wake.set()

    async def _follow(self) -> None:
        """Deliver what other replicas commit: on notification, and every poll interval."""
        while not self._closing:
            if self._listen_conn is None:
                try:
                    await self._listen()
                    if self._feed_failing:
                        log.info("change feed reconnected at revision %d", self._revision)
                    self._feed_failing = False
                except DATABASE_ERRORS as exc:
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
            except DATABASE_ERRORS as exc:
                self._feed_trouble(exc)
            except Exception:
                log.exception("change feed failed; retrying")

    def _feed_trouble(self, exc: BaseException) -> None:
        if not self._feed_failing:
            log.warning("change feed cannot read from PostgreSQL (%s); retrying every %.1fs",
                        type(exc).__name__, self._poll_interval)
        self._feed_failing = True

    async def _catch_up_locked(self, until: int | None) -> None:
        """Deliver every committed revision after ``revision`` (up to ``until``), in order."""
        assert self._pool is not None
        while True:
            async with self._pool.acquire(timeout=self._connect_timeout) as conn, \
                    conn.transaction(isolation="repeatable_read", readonly=True):
                head, compacted = await conn.fetchrow(
                    f"SELECT {REVISION}, (SELECT value FROM meta"
                    f" WHERE key = 'compacted_revision')")
                lower = max(self._revision, int(compacted))
                upper = int(head) if until is None else min(int(head), until)
                upper = min(upper, lower + CATCH_UP_REVISIONS)
                found = [] if upper <= lower else await conn.fetch(
                    "SELECT revision, tenant, owner_id, dataset_id, event FROM changes"
                    " WHERE revision > $1 AND revision <= $2 ORDER BY revision, idx",
                    lower, upper)
            self._compacted_revision = max(self._compacted_revision, int(compacted))
            if upper <= self._revision:
                return
            if lower > self._revision:
                log.warning("revisions %d to %d were compacted before this replica delivered "
                            "them; watchers there must list again", self._revision + 1, lower)
            self.catch_ups += 1
            changes = [Change(r[0], r[1], r[2], r[3], E.SessionEvent.FromString(r[4]))
                       for r in found]
            self._revision = upper
            for listener in self._listeners:
                listener(changes)
            if until is not None and upper >= until:
                return

    async def _publish(self, last: int, changes: list[Change]) -> None:
        """Deliver a local commit, after whatever lower revisions other replicas made."""
        async with self._deliver_lock:
            if last <= self._revision:
                return  # the feed was quicker
            first = changes[0].revision
            if first - 1 > self._revision:
                await self._catch_up_locked(first - 1)
            if first - 1 < self._revision:
                changes = [c for c in changes if c.revision > self._revision]
            elif first - 1 > self._revision:
                self._wake.set()  # could not fill the gap now; the feed will
                return
            self._revision = last
            for listener in self._listeners:
                listener(changes)

    # Plumbing.
    async def _write(self, fn: Callable[[WriteContext], Any]) -> Any:
        if self._writer is None:
            raise Unavailable("the store is not open")
        return await self._writer.submit(fn)

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        if self._pool is None:
            raise Unavailable("the store is not open")
        try:
            async with self._pool.acquire(timeout=self._connect_timeout) as conn:
                return list(await conn.fetch(sql, *params))
        except DATABASE_ERRORS as exc:
            log.warning("read failed: %s", exc)
            raise unavailable(exc) from exc

    async def _read_many(self, statements: Sequence[tuple[str, Sequence[Any]]]
                         ) -> list[list[Any]]:
        """Several statements in one snapshot (REPEATABLE READ, READ ONLY)."""
        if self._pool is None:
            raise Unavailable("the store is not open")
        try:
            async with self._pool.acquire(timeout=self._connect_timeout) as conn, \
                    conn.transaction(isolation="repeatable_read", readonly=True):
                return [list(await conn.fetch(sql, *params)) for sql, params in statements]
        except DATABASE_ERRORS as exc:
            log.warning("read failed: %s", exc)
            raise unavailable(exc) from exc

    def _abandoned_before(self, now: int | None = None) -> int:
        return (self._clock() if now is None else now) - self._abandoned_after

    def _session(self, row: Sequence[Any], now: int | None = None) -> S.Session:
        return rows.session_from_row(row, self._abandoned_before(now))

    # Helpers used inside write functions.
    async def _load(self, ctx: WriteContext, scope: Scope, session_id: str) -> Any:
        p = Params()
        vis = visibility_sql(scope, p)
        row = await ctx.conn.fetchrow(
            f"SELECT {SESSION_COLUMNS} FROM sessions s WHERE {vis} AND s.id = {p(session_id)}",
            *p.values)
        if row is None:
            raise NotFound(f"session {session_id!r} not found")
        return row

    async def _find(self, ctx: WriteContext, tenant: str, session_id: str) -> Any:
        return await ctx.conn.fetchrow(
            f"SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.tenant = $1 AND s.id = $2",
            tenant, session_id)

    async def _reload(self, ctx: WriteContext, pk: int) -> S.Session:
        row = await ctx.conn.fetchrow(
            f"SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.pk = $1", pk)
        return self._session(row, ctx.now)

    @staticmethod
    def _emit(ctx: WriteContext, event_type: E.EventType.ValueType, session: S.Session,
              messages: Sequence[M.Message] = (), truncated: bool = False,
              removed_count: int = 0) -> None:
        ctx.emit(event_type, session.id, session.tenant, session.owner_id, session.dataset_id,
                 session=session, messages=messages, messages_truncated=truncated,
                 removed_count=removed_count)

    async def _bump(self, ctx: WriteContext, row: Sequence[Any], extra_sql: str = "",
                    extra_params: Sequence[Any] = (), *, revive: bool = True
                    ) -> tuple[S.Session, bool]:
        """Bump activity and revision, revive an UNKNOWN session; the session after.

        ``extra_sql`` holds one ``{}`` per value of ``extra_params``.
        """
        revived: bool = revive and row[COL["status"]] == rows.UNKNOWN
        p = Params()
        sets = (f"last_activity_at = {p(ctx.now)}, updated_at = {p(ctx.now)},"
                f" revision = {p(ctx.take_revision())},"
                f" status = {p(rows.ACTIVE if revived else row[COL['status']])}")
        extra = extra_sql.format(*(p(v) for v in extra_params))
        updated = await ctx.conn.fetchrow(
            f"UPDATE sessions SET {sets}{extra} WHERE pk = {p(row[0])}"
            f" RETURNING {RETURNING_COLUMNS}", *p.values)
        return self._session(updated, ctx.now), revived

    # Sessions.
    async def _insert_session(self, ctx: WriteContext, scope: Scope, session: S.Session,
                              session_id: str, parent_id: str = "", fork_seq: int = 0) -> int:
        started = session.started_at.ToMicroseconds() if session.HasField("started_at") else ctx.now
        pk = await ctx.conn.fetchval(
            "INSERT INTO sessions (tenant, id, kind, channel, room_id, sender_id, agent, model,"
            " display_name, goal, owner_id, dataset_id, labels, runtime_instance, parent_id,"
            " fork_seq, status, runtime_state, started_at, last_activity_at, updated_at,"
            " budget_micros, revision) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,"
            " $12, $13::jsonb, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23) RETURNING pk",
            scope.tenant, session_id, session.kind or S.SESSION_KIND_INTERACTIVE,
            session.channel, session.room_id, session.sender_id, session.agent, session.model,
            session.display_name, session.goal, session.owner_id, session.dataset_id,
            rows.labels_json(session.labels), session.runtime_instance, parent_id, fork_seq,
            rows.ACTIVE, S.RUNTIME_STATE_IDLE, started, max(started, ctx.now), ctx.now,
            session.budget_micros, ctx.take_revision())
        return int(pk)

    async def create_session(self, scope: Scope, session: S.Session
                             ) -> tuple[S.Session, bool, int]:
        session_id = session.id or str(uuid.uuid4())

        async def write(ctx: WriteContext) -> tuple[S.Session, bool, int]:
            existing = await self._find(ctx, scope.tenant, session_id)
            if existing is not None:
                found = self._session(existing, ctx.now)
                if scope.can_see(found.tenant, found.owner_id, found.dataset_id) and \
                        rows.same_content(found, session):
                    return found, False, 0
                raise AlreadyExists(f"session {session_id!r} already exists with other content")
            pk = await self._insert_session(ctx, scope, session, session_id)
            created = await self._reload(ctx, pk)
            self._emit(ctx, E.EVENT_TYPE_SESSION_CREATED, created)
            return created, True, ctx.write_revision

        result: tuple[S.Session, bool, int] = await self._write(write)
        return result

    async def get_session(self, scope: Scope, session_id: str) -> tuple[S.Session, int]:
        p = Params()
        vis = visibility_sql(scope, p)
        found = await self._read(
            f"SELECT {SESSION_COLUMNS}, {REVISION} FROM sessions s"
            f" WHERE {vis} AND s.id = {p(session_id)}", p.values)
        if not found:
            raise NotFound(f"session {session_id!r} not found")
        return self._session(found[0]), int(found[0][-1])

    async def update_session(self, scope: Scope, session: S.Session, paths: Sequence[str],
                             etag: str) -> tuple[S.Session, int]:
        async def write(ctx: WriteContext) -> tuple[S.Session, int]:
            row = await self._load(ctx, scope, session.id)
            current = self._session(row, ctx.now)
            if etag and etag != current.etag:
                raise Aborted(f"etag {etag!r} is stale; the session is at {current.etag!r}")
            p = Params()
            sets: list[str] = []
            for path in sorted(set(paths)):
                if path == "labels":
                    if dict(session.labels) == json.loads(row[COL["labels"]]):
                        continue
                    sets.append(f"labels = {p(rows.labels_json(session.labels))}::jsonb")
                    continue
                value = getattr(session, path)
                if path == "kind":
                    value = value or S.SESSION_KIND_INTERACTIVE
                if value == row[COL[path]]:
                    continue
                sets.append(f"{path} = {p(value)}")
            if not sets:
                return current, 0
            await ctx.conn.execute(
                f"UPDATE sessions SET {', '.join(sets)}, updated_at = {p(ctx.now)},"
                f" revision = {p(ctx.take_revision())} WHERE pk = {p(row[0])}", *p.values)
            updated = await self._reload(ctx, row[0])
            self._emit(ctx, E.EVENT_TYPE_SESSION_UPDATED, updated)
            return updated, ctx.write_revision

        result: tuple[S.Session, int] = await self._write(write)
        return result

    @staticmethod
    async def _delete_rows(ctx: WriteContext, pk: int) -> int:
        removed = await ctx.conn.execute("DELETE FROM messages WHERE session_pk = $1", pk)
        await ctx.conn.execute("DELETE FROM session_usage WHERE session_pk = $1", pk)
        await ctx.conn.execute("DELETE FROM usage_requests WHERE session_pk = $1", pk)
        await ctx.conn.execute("DELETE FROM sessions WHERE pk = $1", pk)
        return count_of(removed)

    async def delete_session(self, scope: Scope, session_id: str, etag: str) -> tuple[int, int]:
        async def write(ctx: WriteContext) -> tuple[int, int]:
            row = await self._load(ctx, scope, session_id)
            if etag and etag != str(row[COL["revision"]]):
                raise Aborted(f"etag {etag!r} is stale")
            removed = await self._delete_rows(ctx, row[0])
            ctx.emit(E.EVENT_TYPE_SESSION_DELETED, session_id, row[1], row[COL["owner_id"]],
                     row[COL["dataset_id"]])
            return removed, ctx.write_revision

        result: tuple[int, int] = await self._write(write)
        return result

    def _filter_sql(self, scope: Scope, f: S.SessionFilter, now: int, p: Params) -> str:
        clauses = [visibility_sql(scope, p)]

        def any_of(column: str, values: Sequence[Any], kind: str = "text") -> None:
            if values:
                clauses.append(f"s.{column} = ANY({p(list(values))}::{kind}[])")

        any_of("id", list(f.session_ids))
        if f.statuses:
            cutoff = self._abandoned_before(now)
            ors = []
            for status in f.statuses:
                if status == S.SESSION_STATUS_ACTIVE:
                    ors.append(f"(s.status = {p(rows.ACTIVE)}"
                               f" AND s.last_activity_at >= {p(cutoff)})")
                elif status == S.SESSION_STATUS_ABANDONED:
                    ors.append(f"(s.status = {p(rows.ACTIVE)}"
                               f" AND s.last_activity_at < {p(cutoff)})")
                else:
                    ors.append(f"s.status = {p(int(status))}")
            clauses.append(f"({' OR '.join(ors)})")
        any_of("kind", [int(k) for k in f.kinds], "int")
        if f.channels:
            ors = []
            for channel in f.channels:
                if channel.endswith("."):
                    ors.append(f"(s.channel = {p(channel[:-1])}"
                               f" OR left(s.channel, {p(len(channel))}) = {p(channel)})")
                else:
                    ors.append(f"s.channel = {p(channel)}")
            clauses.append(f"({' OR '.join(ors)})")
        any_of("agent", list(f.agents))
        any_of("model", list(f.models))
        any_of("owner_id", list(f.owner_ids))
        any_of("dataset_id", list(f.dataset_ids))
        any_of("runtime_instance", list(f.runtime_instances))
        if f.labels:
            clauses.append(f"s.labels @> {p(rows.labels_json(f.labels))}::jsonb")
        for column, rng in (("started_at", f.started), ("last_activity_at", f.last_activity)):
            if rng.HasField("start"):
                clauses.append(f"s.{column} >= {p(rng.start.ToMicroseconds())}")
            if rng.HasField("end"):
                clauses.append(f"s.{column} < {p(rng.end.ToMicroseconds())}")
        if f.running_longer_than_seconds > 0:
            clauses.append(
                f"s.runtime_state = {p(S.RUNTIME_STATE_RUNNING)}"
                f" AND s.status IN ({p(rows.ACTIVE)}, {p(rows.UNKNOWN)})"
                f" AND s.turn_started_at > 0"
                f" AND s.turn_started_at < {p(now - f.running_longer_than_seconds * 1_000_000)}")
        if f.text_query:
            terms = search_terms(f.text_query)
            if not terms:
                clauses.append("false")
            else:
                clauses.append("s.pk IN (SELECT m.session_pk FROM messages m WHERE"
                               f" {match_sql(terms, p)})")
        if f.parent_id:
            clauses.append(f"s.parent_id = {p(f.parent_id)}")
        return " AND ".join(clauses)

    def list_sessions_sql(
        self, scope: Scope, f: S.SessionFilter,
        order_by: session_service_pb2.SessionOrderField.ValueType, ascending: bool,
        page_size: int, cursor: tuple[int, str] | None, now: int,
    ) -> tuple[str, list[Any]]:
        """The page query; public so the index test can EXPLAIN it."""
        column = ORDER_COLUMNS[order_by]
        p = Params()
        where = self._filter_sql(scope, f, now, p)
        direction = "ASC" if ascending else "DESC"
        if cursor is not None:
            where += (f" AND (s.{column}, s.id) {'>' if ascending else '<'}"
                      f" ({p(cursor[0])}, {p(cursor[1])})")
        sql = (f"SELECT {SESSION_COLUMNS} FROM sessions s WHERE {where}"
               f" ORDER BY s.{column} {direction}, s.id {direction} LIMIT {p(page_size + 1)}")
        return sql, p.values

    async def list_sessions(
        self, scope: Scope, filter: S.SessionFilter,
        order_by: session_service_pb2.SessionOrderField.ValueType, ascending: bool,
        page_size: int, cursor: tuple[int, str] | None,
    ) -> SessionPage:
        now = self._clock()
        page_sql, page_params = self.list_sessions_sql(scope, filter, order_by, ascending,
                                                       page_size, cursor, now)
        p = Params()
        where = self._filter_sql(scope, filter, now, p)
        page, total, rev = await self._read_many([
            (page_sql, page_params),
            (f"SELECT count(*) FROM sessions s WHERE {where}", p.values),
            (f"SELECT {REVISION}", ()),
        ])
        column = COL[ORDER_COLUMNS[order_by]]
        next_cursor = None
        if len(page) > page_size:
            page = page[:page_size]
            last = page[-1]
            next_cursor = (int(last[column]), str(last[2]))
        return SessionPage([self._session(r, now) for r in page], next_cursor,
                           int(total[0][0]), int(rev[0][0]))

    async def touch_session(self, scope: Scope, session: S.Session
                            ) -> tuple[S.Session, bool, int]:
        async def write(ctx: WriteContext) -> tuple[S.Session, bool, int]:
            row = await self._find(ctx, scope.tenant, session.id)
            if row is None:
                pk = await self._insert_session(ctx, scope, session, session.id)
                created = await self._reload(ctx, pk)
                self._emit(ctx, E.EVENT_TYPE_SESSION_CREATED, created)
                return created, True, ctx.write_revision
            found = self._session(row, ctx.now)
            if not scope.can_see(found.tenant, found.owner_id, found.dataset_id):
                raise AlreadyExists(f"session {session.id!r} already exists")
            rows.require_writable(row)
            touched, revived = await self._bump(ctx, row)
            self._emit(ctx, E.EVENT_TYPE_STATUS_CHANGED if revived
                       else E.EVENT_TYPE_SESSION_UPDATED, touched)
            return touched, False, ctx.write_revision

        result: tuple[S.Session, bool, int] = await self._write(write)
        return result

    async def end_session(self, scope: Scope, session_id: str,
                          status: S.SessionStatus.ValueType, reason: str,
                          ended_at_micros: int) -> tuple[S.Session, int]:
        async def write(ctx: WriteContext) -> tuple[S.Session, int]:
            row = await self._load(ctx, scope, session_id)
            current = row[COL["status"]]
            if current in rows.TERMINAL_STATUSES:
                if current == status:
                    return self._session(row, ctx.now), 0
                raise FailedPrecondition(
                    f"session {session_id!r} already ended as "
                    f"{S.SessionStatus.Name(current)}", reason="SESSION_ENDED")
            ended = ended_at_micros or ctx.now
            if ended < row[COL["started_at"]]:
                raise InvalidArgument("ended_at", "is before the session's started_at")
            await ctx.conn.execute(
                "UPDATE sessions SET status = $1, end_reason = $2, ended_at = $3,"
                " updated_at = $4, revision = $5, runtime_state = CASE WHEN runtime_state = $6"
                " THEN $7 ELSE runtime_state END WHERE pk = $8",
                int(status), reason, ended, ctx.now, ctx.take_revision(),
                S.RUNTIME_STATE_RUNNING, S.RUNTIME_STATE_IDLE, row[0])
            session = await self._reload(ctx, row[0])
            self._emit(ctx, E.EVENT_TYPE_SESSION_ENDED, session)
            return session, ctx.write_revision

        result: tuple[S.Session, int] = await self._write(write)
        return result

    async def set_runtime_state(self, scope: Scope, session_id: str,
                                state: S.RuntimeState.ValueType, turn_id: str,
                                turn_started_at_micros: int, runtime_instance: str
                                ) -> tuple[S.Session, int]:
        async def write(ctx: WriteContext) -> tuple[S.Session, int]:
            row = await self._load(ctx, scope, session_id)
            rows.require_writable(row)
            if state == S.RUNTIME_STATE_IDLE:
                turn, started = "", 0
            elif state == S.RUNTIME_STATE_RUNNING:
                turn, started = turn_id, turn_started_at_micros or ctx.now
            else:
                turn = turn_id or row[COL["current_turn_id"]]
                started = turn_started_at_micros or row[COL["turn_started_at"]]
            instance = runtime_instance or row[COL["runtime_instance"]]
            session, _ = await self._bump(
                ctx, row, ", runtime_state = {}, current_turn_id = {}, turn_started_at = {},"
                " runtime_instance = {}", (int(state), turn, started, instance))
            self._emit(ctx, E.EVENT_TYPE_RUNTIME_STATE_CHANGED, session)
            return session, ctx.write_revision

        result: tuple[S.Session, int] = await self._write(write)
        return result

    async def fork_session(self, scope: Scope, source_id: str, up_to_seq: int, new_id: str,
                           display_name: str) -> tuple[S.Session, bool, int]:
        new_session_id = new_id or str(uuid.uuid4())

        async def write(ctx: WriteContext) -> tuple[S.Session, bool, int]:
            row = await self._load(ctx, scope, source_id)
            last_seq = row[COL["last_seq"]]
            if up_to_seq > last_seq:
                raise InvalidArgument("up_to_seq", f"up_to_seq {up_to_seq} is beyond the "
                                      f"source's last_seq {last_seq}")
            upto = up_to_seq or last_seq
            source = self._session(row, ctx.now)
            existing = await self._find(ctx, scope.tenant, new_session_id)
            if existing is not None:
                found = self._session(existing, ctx.now)
                if (found.parent_id == source_id and found.fork_seq == upto
                        and scope.can_see(found.tenant, found.owner_id, found.dataset_id)):
                    return found, False, 0
                raise AlreadyExists(f"session {new_session_id!r} already exists")
            template = S.Session()
            template.CopyFrom(source)
            template.ClearField("started_at")
            if display_name:
                template.display_name = display_name
            pk = await self._insert_session(ctx, scope, template, new_session_id, source_id,
                                            upto)
            await ctx.conn.execute(
                "INSERT INTO messages (session_pk, seq, message_id, role, content, is_turn,"
                " tool_calls, created_at, updated_at, body)"
                " SELECT $1, row_number() OVER (ORDER BY seq), message_id, role, content,"
                " is_turn, tool_calls, created_at, updated_at, body FROM messages"
                " WHERE session_pk = $2 AND seq <= $3 ORDER BY seq", pk, row[0], upto)
            await ctx.conn.execute(
                "UPDATE sessions SET (message_count, turn_count, tool_call_count, last_seq) ="
                " (SELECT count(*), coalesce(sum(is_turn), 0), coalesce(sum(tool_calls), 0),"
                " coalesce(max(seq), 0) FROM messages WHERE session_pk = $1) WHERE pk = $1", pk)
            forked = await self._reload(ctx, pk)
            self._emit(ctx, E.EVENT_TYPE_SESSION_CREATED, forked)
            return forked, True, ctx.write_revision

        result: tuple[S.Session, bool, int] = await self._write(write)
        return result

    async def reconcile_sessions(self, scope: Scope, runtime_instance: str,
                                 keep_ids: Sequence[str], reason: str) -> tuple[list[str], int]:
        keep = set(keep_ids)

        async def write(ctx: WriteContext) -> tuple[list[str], int]:
            p = Params()
            vis = visibility_sql(scope, p)
            found = await ctx.conn.fetch(
                f"SELECT s.pk, s.id FROM sessions s WHERE {vis}"
                f" AND s.runtime_instance = {p(runtime_instance)} AND s.status = {p(rows.ACTIVE)}"
                f" ORDER BY s.id", *p.values)
            marked: list[str] = []
            for pk, sid in found:
                if sid in keep:
                    continue
                await ctx.conn.execute(
                    "UPDATE sessions SET status = $1, end_reason = $2, updated_at = $3,"
                    " revision = $4 WHERE pk = $5",
                    rows.UNKNOWN, reason or "runtime restarted", ctx.now, ctx.take_revision(), pk)
                self._emit(ctx, E.EVENT_TYPE_STATUS_CHANGED, await self._reload(ctx, pk))
                marked.append(sid)
            return marked, ctx.write_revision

        result: tuple[list[str], int] = await self._write(write)
        return result

    async def purge_sessions(self, scope: Scope, last_activity_before_micros: int,
                             keep_newest: int, statuses: Sequence[S.SessionStatus.ValueType],
                             dry_run: bool, limit: int) -> tuple[int, bool, int]:
        async def write(ctx: WriteContext) -> tuple[int, bool, int]:
            f = S.SessionFilter(statuses=statuses)
            victims: dict[int, tuple[Any, ...]] = {}
            columns = "s.pk, s.id, s.tenant, s.owner_id, s.dataset_id"
            if last_activity_before_micros:
                p = Params()
                where = self._filter_sql(scope, f, ctx.now, p)
                for r in await ctx.conn.fetch(
                        f"SELECT {columns} FROM sessions s WHERE {where}"
                        f" AND s.last_activity_at < {p(last_activity_before_micros)}"
                        f" ORDER BY s.last_activity_at LIMIT {p(limit + 1)}", *p.values):
                    victims[r[0]] = tuple(r)
            if keep_newest > 0:
                p = Params()
                where = self._filter_sql(scope, f, ctx.now, p)
                for r in await ctx.conn.fetch(
                        f"SELECT {columns} FROM sessions s WHERE {where}"
                        f" ORDER BY s.last_activity_at DESC, s.id DESC"
                        f" LIMIT {p(limit + 1)} OFFSET {p(keep_newest)}", *p.values):
                    victims[r[0]] = tuple(r)
            chosen = list(victims.values())
            has_more = len(chosen) > limit
            chosen = chosen[:limit]
            if dry_run or not chosen:
                return len(chosen), has_more, 0
            for pk, sid, tenant, owner, dataset in chosen:
                await self._delete_rows(ctx, pk)
                ctx.emit(E.EVENT_TYPE_SESSION_PURGED, sid, tenant, owner, dataset)
            return len(chosen), has_more, ctx.write_revision

        result: tuple[int, bool, int] = await self._write(write)
        return result

    # Messages.
    async def append_messages(self, scope: Scope, session_id: str,
                              messages: Sequence[M.Message],
                              expected_last_seq: int | None) -> MessagesResult:
        prepared = [(m, rows.message_body(m), rows.is_turn(m), len(m.tool_calls))
                    for m in messages]

        async def write(ctx: WriteContext) -> MessagesResult:
            row = await self._load(ctx, scope, session_id)
            rows.require_writable(row)
            pk, last_seq = row[0], row[COL["last_seq"]]
            if expected_last_seq is not None and expected_last_seq != last_seq:
                raise Aborted(f"expected last_seq {expected_last_seq}, the session is at "
                              f"{last_seq}", reason="LAST_SEQ_MISMATCH")
            ids = [m.id for m, *_ in prepared if m.id]
            known: dict[str, Any] = {}
            if ids:
                known = {r[3]: r for r in await ctx.conn.fetch(
                    f"SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.session_pk = $1"
                    f" AND m.message_id = ANY($2::text[])", pk, ids)}
            out: list[M.Message | None] = []
            new_rows: list[tuple[Any, ...]] = []
            turns = tool_calls = 0
            seen_ids: set[str] = set()
            for i, (message, body, turn, calls) in enumerate(prepared):
                if message.id:
                    old = known.get(message.id)
                    if old is not None or message.id in seen_ids:
                        if old is None:
                            raise AlreadyExists(f"messages[{i}].id {message.id!r} repeats in "
                                                f"the request", reason="MESSAGE_ID_CONFLICT")
                        stored = rows.message_from_row(old, session_id)
                        if stored.role != message.role or stored.content != message.content:
                            raise AlreadyExists(
                                f"messages[{i}].id {message.id!r} is stored with other "
                                f"content", reason="MESSAGE_ID_CONFLICT")
                        out.append(stored)
                        continue
                    seen_ids.add(message.id)
                last_seq += 1
                new_rows.append((pk, last_seq, message.id or None, int(message.role),
                                 message.content, int(turn), calls, ctx.now, ctx.now, body))
                turns += turn
                tool_calls += calls
                out.append(None)
            if not new_rows:
                return MessagesResult([m for m in out if m is not None],
                                      self._session(row, ctx.now), 0)
            await ctx.conn.executemany(
                "INSERT INTO messages (session_pk, seq, message_id, role, content, is_turn,"
                " tool_calls, created_at, updated_at, body)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)", new_rows)
            session, revived = await self._bump(
                ctx, row, ", message_count = message_count + {}, turn_count = turn_count + {},"
                " tool_call_count = tool_call_count + {}, last_seq = {}",
                (len(new_rows), turns, tool_calls, last_seq))
            first_new = new_rows[0][1]
            inserted = iter(new_rows)
            result = [m if m is not None else rows.stored_message(message, session_id,
                                                                   next(inserted)[1], ctx.now)
                      for m, (message, *_) in zip(out, prepared, strict=True)]
            if revived:
                self._emit(ctx, E.EVENT_TYPE_STATUS_CHANGED, session)
            fresh = [m for m in result if m.seq >= first_new]
            carried, truncated = rows.event_messages(fresh)
            self._emit(ctx, E.EVENT_TYPE_MESSAGES_APPENDED, session, carried, truncated)
            return MessagesResult(result, session, ctx.write_revision)

        result: MessagesResult = await self._write(write)
        return result

    async def _session_pk(self, scope: Scope, session_id: str) -> tuple[int, int]:
        p = Params()
        vis = visibility_sql(scope, p)
        found = await self._read(
            f"SELECT s.pk, {REVISION} FROM sessions s WHERE {vis} AND s.id = {p(session_id)}",
            p.values)
        if not found:
            raise NotFound(f"session {session_id!r} not found")
        return int(found[0][0]), int(found[0][1])

    async def list_messages(self, scope: Scope, session_id: str,
                            query: MessageQuery) -> MessagePage:
        pk, revision = await self._session_pk(scope, session_id)
        truncated = False
        next_cursor: int | None = None
        if query.last_n:
            found = await self._read(
                f"SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.session_pk = $1"
                f" ORDER BY m.seq DESC LIMIT $2", (pk, query.last_n))
            found.reverse()
        elif query.last_turns:
            start = await self._read(
                "SELECT m.seq FROM messages m WHERE m.session_pk = $1 AND m.role = 2"
                " ORDER BY m.seq DESC LIMIT 1 OFFSET $2", (pk, query.last_turns - 1))
            first_seq = int(start[0][0]) if start else 0
            if first_seq:
                earlier = await self._read(
                    "SELECT 1 FROM messages m WHERE m.session_pk = $1 AND m.role = 2"
                    " AND m.seq < $2 LIMIT 1", (pk, first_seq))
                if not earlier:
                    first_seq = 0  # what precedes the first user message is its turn
            found = await self._read(
                f"SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.session_pk = $1"
                f" AND m.seq >= $2 ORDER BY m.seq DESC LIMIT $3",
                (pk, first_seq, query.max_messages + 1))
            if len(found) > query.max_messages:
                truncated = True
                found = found[:query.max_messages]
            found.reverse()
        else:
            p = Params()
            clauses = [f"m.session_pk = {p(pk)}", f"m.seq > {p(query.after_seq)}"]
            if query.after_time_micros:
                clauses.append(f"m.created_at >= {p(query.after_time_micros)}")
            if query.cursor_seq is not None:
                clauses.append(f"m.seq {'<' if query.descending else '>'} {p(query.cursor_seq)}")
            direction = "DESC" if query.descending else "ASC"
            found = await self._read(
                f"SELECT {MESSAGE_COLUMNS} FROM messages m WHERE {' AND '.join(clauses)}"
                f" ORDER BY m.seq {direction} LIMIT {p(query.page_size + 1)}", p.values)
            if len(found) > query.page_size:
                found = found[:query.page_size]
                next_cursor = int(found[-1][2])
        return MessagePage([rows.message_from_row(r, session_id) for r in found],
                           next_cursor, truncated, revision)

    @staticmethod
    async def _last_message(ctx: WriteContext, row: Sequence[Any], session_id: str,
                            expected_seq: int | None) -> Any:
        last = await ctx.conn.fetchrow(
            f"SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.session_pk = $1"
            f" ORDER BY m.seq DESC LIMIT 1", row[0])
        if last is None:
            raise FailedPrecondition(f"session {session_id!r} has no messages",
                                     reason="SESSION_EMPTY")
        if expected_seq is not None and expected_seq != last[2]:
            raise Aborted(f"expected the last message to be seq {expected_seq}, it is "
                          f"{last[2]}", reason="LAST_SEQ_MISMATCH")
        return last

    async def pop_message(self, scope: Scope, session_id: str,
                          expected_seq: int | None) -> MessagesResult:
        async def write(ctx: WriteContext) -> MessagesResult:
            row = await self._load(ctx, scope, session_id)
            rows.require_writable(row)
            last = await self._last_message(ctx, row, session_id, expected_seq)
            message = rows.message_from_row(last, session_id)
            await ctx.conn.execute("DELETE FROM messages WHERE session_pk = $1 AND seq = $2",
                                   row[0], last[2])
            session, _ = await self._bump(
                ctx, row, ", message_count = message_count - 1, turn_count = turn_count - {},"
                " tool_call_count = tool_call_count - {}", (last[6], last[7]))
            carried, truncated = rows.event_messages([message])
            self._emit(ctx, E.EVENT_TYPE_MESSAGE_POPPED, session, carried, truncated, 1)
            return MessagesResult([message], session, ctx.write_revision)

        result: MessagesResult = await self._write(write)
        return result

    async def update_last_message(self, scope: Scope, session_id: str, message: M.Message,
                                  paths: Sequence[str], expected_seq: int | None
                                  ) -> MessagesResult:
        async def write(ctx: WriteContext) -> MessagesResult:
            row = await self._load(ctx, scope, session_id)
            rows.require_writable(row)
            last = await self._last_message(ctx, row, session_id, expected_seq)
            updated = rows.message_from_row(last, session_id)
            for path in paths:
                if path in ("tool_calls", "content_blocks", "metadata"):
                    updated.ClearField(path)  # type: ignore[arg-type]
                    getattr(updated, path).MergeFrom(getattr(message, path))
                else:
                    setattr(updated, path, getattr(message, path))
            if updated.status == M.MESSAGE_STATUS_UNSPECIFIED:
                updated.status = M.MESSAGE_STATUS_COMPLETE
            turn, calls = int(rows.is_turn(updated)), len(updated.tool_calls)
            await ctx.conn.execute(
                "UPDATE messages SET content = $1, is_turn = $2, tool_calls = $3,"
                " updated_at = $4, body = $5 WHERE session_pk = $6 AND seq = $7",
                updated.content, turn, calls, ctx.now, rows.message_body(updated), row[0],
                last[2])
            session, _ = await self._bump(ctx, row, ", turn_count = turn_count + {},"
                                          " tool_call_count = tool_call_count + {}",
                                          (turn - last[6], calls - last[7]))
            updated.updated_at.FromMicroseconds(ctx.now)
            carried, truncated = rows.event_messages([updated])
            self._emit(ctx, E.EVENT_TYPE_MESSAGE_UPDATED, session, carried, truncated)
            return MessagesResult([updated], session, ctx.write_revision)

        result: MessagesResult = await self._write(write)
        return result

    async def clear_messages(self, scope: Scope, session_id: str
                             ) -> tuple[int, S.Session, int]:
        async def write(ctx: WriteContext) -> tuple[int, S.Session, int]:
            row = await self._load(ctx, scope, session_id)
            rows.require_writable(row)
            if not row[COL["message_count"]]:
                return 0, self._session(row, ctx.now), 0
            removed = count_of(await ctx.conn.execute(
                "DELETE FROM messages WHERE session_pk = $1", row[0]))
            session, _ = await self._bump(
                ctx, row, ", message_count = 0, turn_count = 0, tool_call_count = 0")
            self._emit(ctx, E.EVENT_TYPE_MESSAGES_CLEARED, session, removed_count=removed)
            return removed, session, ctx.write_revision

        result: tuple[int, S.Session, int] = await self._write(write)
        return result

    async def search_messages(self, scope: Scope, query: str, session_ids: Sequence[str],
                              page_size: int, cursor: int | None
                              ) -> tuple[list[M.Message], int | None, int]:
        revision = self._revision
        terms = search_terms(query)
        if not terms:
            return [], None, revision
        p = Params()
        clauses = [visibility_sql(scope, p), match_sql(terms, p)]
        if session_ids:
            clauses.append(f"s.id = ANY({p(list(session_ids))}::text[])")
        if cursor is not None:
            clauses.append(f"m.row_id < {p(cursor)}")
        found = await self._read(
            f"SELECT {MESSAGE_COLUMNS}, s.id FROM messages m"
            f" JOIN sessions s ON s.pk = m.session_pk WHERE {' AND '.join(clauses)}"
            f" ORDER BY m.row_id DESC LIMIT {p(page_size + 1)}", p.values)
        next_cursor = None
        if len(found) > page_size:
            found = found[:page_size]
            next_cursor = int(found[-1][0])
        return [rows.message_from_row(r, r[-1]) for r in found], next_cursor, revision

    # Usage and stats.
    async def record_usage(self, scope: Scope, session_id: str, model: str, usage: S.Usage,
                           errored: bool, request_id: str) -> UsageResult:
        delta = (usage.prompt_tokens, usage.completion_tokens, usage.reasoning_tokens,
                 usage.cache_read_tokens, usage.cache_write_tokens, usage.cost_micros, 1,
                 int(errored), usage.prompt_tokens + usage.completion_tokens)

        async def write(ctx: WriteContext) -> UsageResult:
            row = await self._load(ctx, scope, session_id)
            pk = row[0]
            if request_id:
                seen = await ctx.conn.fetchval(
                    "SELECT response FROM usage_requests WHERE session_pk = $1"
                    " AND request_id = $2", pk, request_id)
                if seen is not None:
                    first = stats_service_pb2.RecordUsageResponse.FromString(seen)
                    return UsageResult(first.session_usage, first.model_usage,
                                       first.budget_micros, True, first.revision)
            model_row = await ctx.conn.fetchrow(
                f"INSERT INTO session_usage (session_pk, model, {', '.join(USAGE_FIELDS)})"
                f" VALUES ($1, $2, {', '.join(f'${i}' for i in range(3, 12))})"
                f" ON CONFLICT (session_pk, model) DO UPDATE SET {USAGE_UPSERT}"
                f" RETURNING {', '.join(USAGE_FIELDS)}", pk, model, *delta)
            session, _ = await self._bump(ctx, row, ", " + USAGE_ADD, delta, revive=False)
            self._emit(ctx, E.EVENT_TYPE_USAGE_RECORDED, session)
            result = UsageResult(session.usage, rows.usage_from(model_row),
                                 session.budget_micros, False, ctx.write_revision)
            if request_id:
                await ctx.conn.execute(
                    "INSERT INTO usage_requests (session_pk, request_id, response)"
                    " VALUES ($1, $2, $3)",
                    pk, request_id, stats_service_pb2.RecordUsageResponse(
                        session_usage=result.session_usage, model_usage=result.model_usage,
                        budget_micros=result.budget_micros, revision=result.revision,
                    ).SerializeToString())
            return result

        result: UsageResult = await self._write(write)
        return result

    async def get_stats(self, scope: Scope, filter: S.SessionFilter
                        ) -> tuple[stats_service_pb2.Stats, int]:
        now = self._clock()
        cutoff = self._abandoned_before(now)
        p = Params()
        cut = p(cutoff)
        where = self._filter_sql(scope, filter, now, p)
        # Sums stay numeric: past the int64 range they saturate in Python
        # (rows.int64) instead of failing the cast.
        sums = ", ".join(f"coalesce(sum(s.{name}), 0)" for name in USAGE_FIELDS)
        found = await self._read(
            f"SELECT count(*), {sums}, coalesce(sum(s.message_count), 0),"
            f" coalesce(sum(CASE WHEN s.ended_at > 0 THEN s.ended_at ELSE s.last_activity_at"
            f" END - s.started_at), 0),"
            f" count(*) FILTER (WHERE s.status = 1 AND s.last_activity_at >= {cut}),"
            f" count(*) FILTER (WHERE s.status IN (1, 5) AND s.runtime_state = 2),"
            f" count(*) FILTER (WHERE s.status = 1 AND s.last_activity_at < {cut}),"
            f" count(*) FILTER (WHERE s.status = 2), count(*) FILTER (WHERE s.status = 3),"
            f" count(*) FILTER (WHERE s.status = 4), count(*) FILTER (WHERE s.status = 5),"
            f" {REVISION} FROM sessions s WHERE {where}", p.values)
        r = found[0]
        count = int(r[0])
        duration = float(r[11]) / 1_000_000
        completed, failed = int(r[15]), int(r[16])
        stats = stats_service_pb2.Stats(
            session_count=count, usage=rows.usage_from([rows.int64(v) for v in r[1:10]]),
            average_cost_micros=rows.int64(r[6]) // count if count else 0,
            message_count=rows.int64(r[10]), total_duration_seconds=duration,
            average_duration_seconds=duration / count if count else 0.0,
            active_count=int(r[12]), running_count=int(r[13]), abandoned_count=int(r[14]),
            completed_count=completed, failed_count=failed, cancelled_count=int(r[17]),
            unknown_count=int(r[18]),
            success_rate=completed / (completed + failed) if completed + failed else 0.0,
        )
        return stats, int(r[19])

    async def cost_by_model(self, scope: Scope, filter: S.SessionFilter
                            ) -> tuple[list[stats_service_pb2.ModelCost], int]:
        now = self._clock()
        p = Params()
        where = self._filter_sql(scope, filter, now, p)
        sums = ", ".join(f"sum(u.{name})" for name in USAGE_FIELDS)
        found, rev = await self._read_many([
            (f"SELECT u.model, count(*), {sums} FROM session_usage u"
             f" JOIN sessions s ON s.pk = u.session_pk WHERE {where}"
             f" GROUP BY u.model", p.values),
            (f"SELECT {REVISION}", ()),
        ])
        costs = [stats_service_pb2.ModelCost(
            model=r[0], session_count=r[1], usage=rows.usage_from([rows.int64(v) for v in r[2:11]]))
            for r in found]
        # Ordered after saturation, as on SQLite: equal (saturated) costs by name.
        costs.sort(key=lambda c: (-c.usage.cost_micros, c.model))
        return costs, int(rev[0][0])

    # Change log.
    async def read_changes(self, from_revision: int, limit: int) -> list[Change]:
        if from_revision <= self._compacted_revision:
            raise Compacted(self._compacted_revision)
        found, compacted = await self._read_many([
            ("SELECT revision, tenant, owner_id, dataset_id, event FROM changes"
             " WHERE revision >= $1 AND revision < (SELECT min(revision) FROM changes"
             " WHERE revision >= $1) + $2 ORDER BY revision, idx",
             (from_revision, max(1, limit))),
            ("SELECT value FROM meta WHERE key = 'compacted_revision'", ()),
        ])
        compacted_revision = int(compacted[0][0])
        self._compacted_revision = max(self._compacted_revision, compacted_revision)
        if from_revision <= compacted_revision:
            raise Compacted(compacted_revision)
        return [Change(r[0], r[1], r[2], r[3], E.SessionEvent.FromString(r[4])) for r in found]

    async def initial_state(self, scope: Scope, session_ids: Sequence[str]
                            ) -> tuple[list[S.Session], int]:
        now = self._clock()
        p = Params()
        where = self._filter_sql(scope, S.SessionFilter(session_ids=session_ids), now, p)
        found, rev = await self._read_many([
            (f"SELECT {SESSION_COLUMNS} FROM sessions s WHERE {where} ORDER BY s.pk", p.values),
            (f"SELECT {REVISION}", ()),
        ])
        return [self._session(r, now) for r in found], int(rev[0][0])

    async def compact(self, keep_revisions: int, max_age_seconds: float) -> int:
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
                target = compaction_target(int(head), keep_revisions, aged)
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
        mismatched = await self._read(
            "SELECT s.id, s.message_count, s.turn_count, s.tool_call_count, s.last_seq,"
            " coalesce(m.n, 0), coalesce(m.turns, 0), coalesce(m.calls, 0),"
            " coalesce(m.top, 0) FROM sessions s LEFT JOIN"
            " (SELECT session_pk, count(*) n, sum(is_turn) turns, sum(tool_calls) calls,"
            "  max(seq) top FROM messages GROUP BY session_pk) m ON m.session_pk = s.pk"
            " WHERE s.message_count <> coalesce(m.n, 0) OR s.turn_count <> coalesce(m.turns, 0)"
            " OR s.tool_call_count <> coalesce(m.calls, 0) OR s.last_seq < coalesce(m.top, 0)")
        problems.extend(f"session {r[0]!r}: message counters {tuple(r[1:5])} != recount "
                        f"{tuple(int(v) for v in r[5:9])}" for r in mismatched)
        usage_sums = ", ".join(f"sum({n}) {n}" for n in USAGE_FIELDS)
        differs = " OR ".join(f"s.{n} <> coalesce(u.{n}, 0)" for n in USAGE_FIELDS)
        bad_usage = await self._read(
            f"SELECT s.id FROM sessions s LEFT JOIN (SELECT session_pk, {usage_sums}"
            f" FROM session_usage GROUP BY session_pk) u ON u.session_pk = s.pk WHERE {differs}")
        problems.extend(f"session {r[0]!r}: usage differs from its per-model rows"
                        for r in bad_usage)
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
