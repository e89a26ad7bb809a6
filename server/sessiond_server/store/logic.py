"""The store logic, written once for every backend.

Every read and write of the SessionStore is one function here, over two
small interfaces: a write is a coroutine of a
:class:`~.group_commit.WriteContext` (its statements run inside the group
commit's transaction), and a read runs its statements on a snapshot (one
read transaction, so a page, its total and the revision agree). The SQL is
built from the :class:`~.dialect.Dialect`'s snippets; the backends
(``sqlite.py``, ``postgres.py``) add only what truly differs: connections,
the writer, migrations, the change feed, compaction and integrity checks.

The rules written once here, among others: idempotency checks come before
every other guard (a retry returns the original result), a counter never
passes 2^62, a session's activity and revision move with every write that
changes it, and every query is filtered by the caller's :class:`Scope`.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, cast

from sessiond.v1 import event_pb2, message_pb2, session_pb2, session_service_pb2, stats_service_pb2

from . import records as rows
from .dialect import Dialect, Params
from .errors import (
    Aborted,
    AlreadyExists,
    Compacted,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from .group_commit import Alone, Statements, WriteContext
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
from .records import COL, SESSION_COLUMNS, USAGE_FIELDS
from .revisions import logged_event
from .search import search_terms
from .sqlite_schema import DAY_MICROS, MINUTE_MICROS
from .state import EMPTY_STATE, apply_delta, is_empty

E = event_pb2
S = session_pb2
M = message_pb2

Ctx = WriteContext[Any]

ORDER_COLUMNS = {
    session_service_pb2.SESSION_ORDER_FIELD_UNSPECIFIED: "last_activity_at",
    session_service_pb2.SESSION_ORDER_FIELD_LAST_ACTIVITY_AT: "last_activity_at",
    session_service_pb2.SESSION_ORDER_FIELD_STARTED_AT: "started_at",
    session_service_pb2.SESSION_ORDER_FIELD_ENDED_AT: "ended_at",
    session_service_pb2.SESSION_ORDER_FIELD_COST: "cost_micros",
    session_service_pb2.SESSION_ORDER_FIELD_TOKENS: "total_tokens",
}
ORDER_INDEXES = {
    "last_activity_at": "sessions_by_last_activity",
    "started_at": "sessions_by_started",
    "ended_at": "sessions_by_ended",
    "cost_micros": "sessions_by_cost",
    "total_tokens": "sessions_by_tokens",
}

#: A usage counter never passes this: past 2^63 SQLite would turn it into a
#: float and PostgreSQL's BIGINT would fail the write, which a caller with a
#: request_id would retry for ever.
MAX_USAGE_COUNTER = 1 << 62
RETURNING_COLUMNS = ", ".join(rows.SESSION_FIELDS)
REVISION = "(SELECT value FROM meta WHERE key = 'revision')"
#: How long a held snapshot (a watch's initial state) may wait for its reader to
#: take the next page before the server lets it go: it keeps the database from
#: reclaiming what later writes replace (SQLite's write-ahead log, PostgreSQL's
#: old row versions), so a client that stops reading must not hold it forever.
HELD_SNAPSHOT_IDLE_SECONDS = 60.0
#: ... and how long it may be held in all: a client that takes a page just before
#: each idle bound would otherwise hold it (and the database's old versions) for
#: as long as it likes. Reading every page of a million sessions takes well under it.
HELD_SNAPSHOT_MAX_SECONDS = 600.0
#: Held snapshots (watches' initial states being sent) one server process keeps
#: at once; a watch beyond them waits its turn before its initial state. Each one
#: holds a database connection of its own and a page of up to 64 sessions in
#: memory, so this bounds both (PostgreSQL: the pool's connections plus these).
MAX_HELD_SNAPSHOTS = 16
#: Bytes of marked sessions after which one ReconcileSessions call stops marking
#: (and answers has_more): its events are one revision, built and held whole.
RECONCILE_EVENT_BYTES = 8 << 20
#: Sessions per page of a watch's initial state: a session is at most about
#: 150 KB (goal, state, labels, ids at their limits), so a page is under 10 MB.
INITIAL_PAGE_ROWS = 64
SESSION_INSERT_COLUMNS = (
    "tenant", "id", "kind", "channel", "room_id", "sender_id", "agent", "model", "display_name",
    "goal", "owner_id", "dataset_id", "labels", "runtime_instance", "parent_id", "fork_seq",
    "status", "runtime_state", "started_at", "last_activity_at", "updated_at", "budget_micros",
    "revision", "state")
#: Session.last_event_at, the one rule: when the session's newest message (highest seq)
#: happened, its event time else its created_at (as after_time reads compare); 0 with no
#: messages. Every write that adds, removes or rewrites messages sets it in its UPDATE
#: of the session (StoreLogic._bump's ``messages_changed``, ForkSession, import), so the
#: field always equals this recompute (one indexed lookup of the last row), which
#: counter_problems checks.
LAST_EVENT_AT_VALUE = ("COALESCE((SELECT COALESCE(m.event_at, m.created_at)"
                       " FROM messages m WHERE m.session_pk = sessions.pk"
                       " ORDER BY m.seq DESC LIMIT 1), 0)")
LAST_EVENT_AT = f", last_event_at = {LAST_EVENT_AT_VALUE}"
#: The columns of a new message row (StoreLogic._new_messages builds the rows in this
#: order) with their SQL types, for a dialect that sends the rows as one array per column.
MESSAGE_INSERT = (
    ("session_pk", "bigint"), ("seq", "bigint"), ("message_id", "text"), ("role", "integer"),
    ("content", "text"), ("is_turn", "integer"), ("tool_calls", "integer"),
    ("created_at", "bigint"), ("updated_at", "bigint"), ("body", "bytea"),
    ("event_at", "bigint"))
MESSAGE_INSERT_COLUMNS = ", ".join(column for column, _ in MESSAGE_INSERT)
MESSAGE_INSERT_TYPES = tuple(kind for _, kind in MESSAGE_INSERT)
#: Where a new message row holds its times (LAST_EVENT_AT's rule on the row itself).
_NEW_CREATED_AT, _NEW_EVENT_AT = (
    [column for column, _ in MESSAGE_INSERT].index(name) for name in ("created_at", "event_at"))

# GetStats sums, in the order of _scan_stats_sql's columns.
STATS_SUMS = 19
STATS_ACTIVE, STATS_ABANDONED = 12, 14


def _stats_from_sums(sums: Sequence[int]) -> stats_service_pb2.Stats:
    r = [rows.int64(value) for value in sums]
    count = r[0]
    duration = float(sums[11]) / 1_000_000
    completed, failed = r[15], r[16]
    return stats_service_pb2.Stats(
        session_count=count, usage=rows.usage_from(r[1:10]),
        average_cost_micros=r[6] // count if count else 0,
        message_count=r[10], total_duration_seconds=duration,
        average_duration_seconds=duration / count if count else 0.0,
        active_count=r[STATS_ACTIVE], running_count=r[13], abandoned_count=r[STATS_ABANDONED],
        completed_count=completed, failed_count=failed, cancelled_count=r[17],
        unknown_count=r[18],
        success_rate=completed / (completed + failed) if completed + failed else 0.0,
    )


@dataclass(frozen=True)
class RollupPlan:
    """How an aggregate (GetStats, CostByModel, a listing's total_size) splits a
    filter between the rollups and a row-by-row sum."""

    # owner/dataset and the whole UTC days of the window, served by the rollup.
    whole_days: S.SessionFilter
    # The window's partial days at either end, summed row by row.
    scanned: list[S.SessionFilter]


def rollup_plan(f: S.SessionFilter) -> RollupPlan | None:
    """The rollup's share of ``f``, or None when rows must be summed one by one."""
    rest = S.SessionFilter()
    rest.CopyFrom(f)
    # The fields the rollup serves; any other one set means a scan.
    rest.ClearField("started")
    rest.ClearField("owner_ids")
    rest.ClearField("dataset_ids")
    if rest.ByteSize():
        return None
    start = f.started.start.ToMicroseconds() if f.started.HasField("start") else None
    end = f.started.end.ToMicroseconds() if f.started.HasField("end") else None
    first_day = -(-start // DAY_MICROS) if start is not None else None
    end_day = end // DAY_MICROS if end is not None else None
    if first_day is not None and end_day is not None and first_day >= end_day:
        return None  # not one whole day in the window
    whole = S.SessionFilter(owner_ids=f.owner_ids, dataset_ids=f.dataset_ids)
    scanned: list[S.SessionFilter] = []

    def edge(lo: int, hi: int) -> None:
        if lo < hi:
            part = S.SessionFilter(owner_ids=f.owner_ids, dataset_ids=f.dataset_ids)
            part.started.start.FromMicroseconds(lo)
            part.started.end.FromMicroseconds(hi)
            scanned.append(part)

    if start is not None and first_day is not None:
        whole.started.start.FromMicroseconds(first_day * DAY_MICROS)
        edge(start, first_day * DAY_MICROS)
    if end is not None and end_day is not None:
        whole.started.end.FromMicroseconds(end_day * DAY_MICROS)
        edge(end_day * DAY_MICROS, end)
    return RollupPlan(whole, scanned)


def message_delta(message: M.Message) -> tuple[int, int]:
    """What a stored message adds to its session's (turn_count, tool_call_count)."""
    return int(rows.is_turn(message)), len(message.tool_calls)


def lean_message(seq: int, message_id: str | None, created_at_micros: int) -> M.Message:
    """A stored message as AppendMessages' LEAN view answers it: seq, id, created_at."""
    lean = M.Message(seq=seq, id=message_id or "")
    lean.created_at.FromMicroseconds(created_at_micros)
    return lean


#: A statement and its parameter values.
Statement = tuple[str, Sequence[Any]]


class StoreLogic:
    """The SessionStore's reads and writes over a dialect, a writer and snapshots.

    A backend subclasses this and provides ``_write`` (queue a write function
    for the group commit) and ``_snapshot`` (a read transaction).
    """

    dialect: Dialect
    _clock: Callable[[], int]
    _abandoned_after: int
    _max_batch: int
    _listeners: list[ChangeListener]
    _revision: int
    _compacted_revision: int
    # The backend's writer: ``submit(fn)`` and the ``batches``/``writes`` counts.
    _writer: Any

    def __init__(self, clock: Callable[[], int], abandoned_after_seconds: float,
                 max_batch: int) -> None:
        self._clock = clock
        self._abandoned_after = int(abandoned_after_seconds * 1_000_000)
        self._max_batch = max_batch
        self._writer = None
        self._listeners = []
        self._revision = 0
        self._compacted_revision = 0
        self.page_token_key = b""
        self.held_snapshot_idle_seconds = HELD_SNAPSHOT_IDLE_SECONDS
        self.held_snapshot_max_seconds = HELD_SNAPSHOT_MAX_SECONDS
        self.held_snapshots = asyncio.BoundedSemaphore(MAX_HELD_SNAPSHOTS)

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

    async def _write(self, fn: Callable[[Ctx], Any]) -> Any:
        if self._writer is None:
            raise Unavailable("the store is not open")
        return await self._writer.submit(fn)

    def _held_snapshot(self) -> AbstractAsyncContextManager[Statements]:
        """A read-only transaction on a connection of its own, for a read that is
        taken slowly, page by page (it must not hold a pooled reader meanwhile).
        Left idle for ``held_snapshot_idle_seconds``, it ends: the next statement
        raises Unavailable."""
        raise NotImplementedError

    def _snapshot(self, small: bool = False) -> AbstractAsyncContextManager[Statements]:
        """A read-only transaction: every statement in it sees one snapshot.

        ``small`` marks a read of a few indexed rows (a session by id, a page of
        its messages), which a dialect may answer without leaving the event loop.
        """
        raise NotImplementedError

    async def _read(self, sql: str, params: Sequence[Any] = (), small: bool = False
                    ) -> list[Any]:
        async with self._snapshot(small) as r:
            return await r.fetch(sql, params)

    async def _read_many(self, statements: Sequence[Statement]) -> list[list[Any]]:
        """Several statements in one snapshot."""
        async with self._snapshot() as r:
            return [await r.fetch(sql, params) for sql, params in statements]

    def _abandoned_before(self, now: int | None = None) -> int:
        return (self._clock() if now is None else now) - self._abandoned_after

    def _session(self, row: Sequence[Any], now: int | None = None) -> S.Session:
        return rows.session_from_row(row, self._abandoned_before(now))

    # SQL pieces.
    def visibility_sql(self, scope: Scope, p: Params, alias: str = "s") -> str:
        """The WHERE fragment that keeps a query inside the caller's scope."""
        clause = f"{alias}.tenant = {p(scope.tenant)}"
        if not scope.sees_all:
            ors = []
            if scope.user_id:
                ors.append(f"{alias}.owner_id = {p(scope.user_id)}")
            if scope.dataset_ids:
                ors.append(self.dialect.any_of(f"{alias}.dataset_id",
                                               sorted(scope.dataset_ids), p))
            clause += f" AND ({' OR '.join(ors) or '1 = 0'})"
        return clause

    def _filter_sql(self, scope: Scope, f: S.SessionFilter, now: int, p: Params) -> str:
        d = self.dialect
        clauses = [self.visibility_sql(scope, p)]

        def any_of(column: str, values: Sequence[Any], kind: str = "text") -> None:
            if values:
                clauses.append(d.any_of(f"s.{column}", values, p, kind))

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
                               f" OR substr(s.channel, 1, {p(len(channel))}) = {p(channel)})")
                else:
                    ors.append(f"s.channel = {p(channel)}")
            clauses.append(f"({' OR '.join(ors)})")
        any_of("agent", list(f.agents))
        any_of("model", list(f.models))
        any_of("owner_id", list(f.owner_ids))
        any_of("dataset_id", list(f.dataset_ids))
        any_of("runtime_instance", list(f.runtime_instances))
        if f.labels:
            clauses.append(d.labels_match(p, f.labels))
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
                clauses.append("1 = 0")
            else:
                clauses.append("s.pk IN (SELECT m.session_pk FROM messages m"
                               f" WHERE {d.message_match(p, terms)})")
        if f.parent_id:
            clauses.append(f"s.parent_id = {p(f.parent_id)}")
        return " AND ".join(clauses)

    def _rollup_where(self, scope: Scope, days: S.SessionFilter, p: Params,
                      alias: str = "u") -> str:
        """The WHERE of a rollup read: the caller's scope, owners, datasets, whole days."""
        clauses = [self.visibility_sql(scope, p, alias)]
        for column, values in (("owner_id", days.owner_ids), ("dataset_id", days.dataset_ids)):
            if values:
                clauses.append(self.dialect.any_of(f"{alias}.{column}", list(values), p))
        if days.started.HasField("start"):
            clauses.append(f"{alias}.day >= {p(days.started.start.ToMicroseconds() // DAY_MICROS)}")
        if days.started.HasField("end"):
            clauses.append(f"{alias}.day < {p(days.started.end.ToMicroseconds() // DAY_MICROS)}")
        return " AND ".join(clauses)

    def _plan(self, f: S.SessionFilter) -> RollupPlan | None:
        return rollup_plan(f) if self.dialect.rollups else None

    def _row_by_row(self, scope: Scope, filter: S.SessionFilter, plan: RollupPlan | None,
                    now: int, select: Callable[[str, Params], str]) -> list[Statement]:
        """The statements of the sessions an aggregate sums one by one: all that
        match ``filter`` without a plan, else the window's partial days."""
        statements: list[Statement] = []
        for part in (plan.scanned if plan else [filter]):
            p = self.dialect.params()
            where = self._filter_sql(scope, part, now, p)
            statements.append((select(where, p), p.values))
        return statements

    # Helpers used inside write functions.
    async def _load(self, ctx: Ctx, scope: Scope, session_id: str) -> Any:
        p = self.dialect.params()
        vis = self.visibility_sql(scope, p)
        row = await ctx.tx.fetchrow(
            f"SELECT {SESSION_COLUMNS} FROM sessions s WHERE {vis} AND s.id = {p(session_id)}"
            f"{self.dialect.lock_rows}", p.values)
        if row is None:
            raise NotFound(f"session {session_id!r} not found")
        return row

    async def _find(self, ctx: Ctx, tenant: str, session_id: str) -> Any:
        p = self.dialect.params()
        return await ctx.tx.fetchrow(
            f"SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.tenant = {p(tenant)}"
            f" AND s.id = {p(session_id)}{self.dialect.lock_rows}", p.values)

    async def _reload(self, ctx: Ctx, pk: int) -> S.Session:
        p = self.dialect.params()
        row = await ctx.tx.fetchrow(
            f"SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.pk = {p(pk)}", p.values)
        return self._session(row, ctx.now)

    @staticmethod
    def _emit(ctx: Ctx, event_type: E.EventType.ValueType, session: S.Session,
              messages: Sequence[M.Message] = (), truncated: bool = False,
              removed_count: int = 0) -> None:
        ctx.emit(event_type, session.id, session.tenant, session.owner_id, session.dataset_id,
                 session=session, messages=messages, messages_truncated=truncated,
                 removed_count=removed_count)

    async def _bump(self, ctx: Ctx, row: Sequence[Any], extra_sql: str = "",
                    extra_params: Sequence[Any] = (), *, revive: bool = True,
                    messages: Sequence[Sequence[Any]] = (), messages_changed: bool = False
                    ) -> tuple[S.Session, bool]:
        """Bump activity and revision, revive an UNKNOWN session; the session after.

        ``extra_sql`` holds one ``{}`` per value of ``extra_params``. ``messages``
        (rows of :meth:`_new_messages`) are stored first: in the same statement where
        the dialect can send rows as arrays (one round trip less per append).
        ``messages_changed`` (a write that added, removed or rewrote messages) sets
        last_event_at: from the newest of ``messages`` when there are any (they are the
        session's newest, and an UPDATE does not see rows its own statement inserts),
        else by the recompute (``LAST_EVENT_AT``), which sees the write's deletions.
        """
        revived: bool = revive and row[COL["status"]] == rows.UNKNOWN
        p = self.dialect.params()
        prefix = ""
        if messages:
            insert = f"INSERT INTO messages ({MESSAGE_INSERT_COLUMNS}) "
            source = self.dialect.rows_source(p, messages, MESSAGE_INSERT_TYPES)
            if source is None:
                await ctx.tx.executemany(
                    f"{insert}VALUES ({self.dialect.placeholders(len(MESSAGE_INSERT_TYPES))})",
                    messages)
            else:
                prefix = f"WITH inserted AS ({insert}{source}) "
        sets = (f"last_activity_at = {p(ctx.now)}, updated_at = {p(ctx.now)},"
                f" revision = {p(ctx.take_revision())},"
                f" status = {p(rows.ACTIVE if revived else row[COL['status']])}")
        extra = extra_sql.format(*(p(v) for v in extra_params))
        if messages_changed and messages:
            newest = messages[-1]
            # LAST_EVENT_AT's rule on the row itself: event_at, else created_at.
            event_at = newest[_NEW_EVENT_AT]
            extra += (", last_event_at ="
                      f" {p(event_at if event_at is not None else newest[_NEW_CREATED_AT])}")
        elif messages_changed:
            extra += LAST_EVENT_AT
        updated = await ctx.tx.fetchrow(
            f"{prefix}UPDATE sessions SET {sets}{extra} WHERE pk = {p(row[0])}"
            f" RETURNING {RETURNING_COLUMNS}", p.values)
        return self._session(updated, ctx.now), revived

    # Sessions.
    async def _insert_session(self, ctx: Ctx, scope: Scope, session: S.Session,
                              session_id: str, parent_id: str = "", fork_seq: int = 0) -> int:
        started = session.started_at.ToMicroseconds() if session.HasField("started_at") else ctx.now
        values = (
            scope.tenant, session_id, session.kind or S.SESSION_KIND_INTERACTIVE,
            session.channel, session.room_id, session.sender_id, session.agent, session.model,
            session.display_name, session.goal, session.owner_id, session.dataset_id,
            rows.labels_json(session.labels), session.runtime_instance, parent_id, fork_seq,
            rows.ACTIVE, S.RUNTIME_STATE_IDLE, started, max(started, ctx.now), ctx.now,
            session.budget_micros, ctx.take_revision(), session.state_json or EMPTY_STATE)
        p = self.dialect.params()
        placeholders = [self.dialect.json_value(p, str(v)) if column == "labels" else p(v)
                        for column, v in zip(SESSION_INSERT_COLUMNS, values, strict=True)]
        row = await ctx.tx.fetchrow(
            f"INSERT INTO sessions ({', '.join(SESSION_INSERT_COLUMNS)})"
            f" VALUES ({', '.join(placeholders)}) RETURNING pk",
            p.values)
        return int(row[0])

    async def create_session(self, scope: Scope, session: S.Session,
                             shared_state_deltas: Sequence[S.SharedStateDelta] = (),
                             ) -> tuple[S.Session, bool, int]:
        session_id = session.id or str(uuid.uuid4())

        async def write(ctx: Ctx) -> tuple[S.Session, bool, int]:
            existing = await self._find(ctx, scope.tenant, session_id)
            if existing is not None:
                # A retry finds its session and applies no shared delta again.
                found = self._session(existing, ctx.now)
                if scope.can_see(found.tenant, found.owner_id, found.dataset_id) and \
                        rows.same_content(found, session):
                    return found, False, 0
                raise AlreadyExists(f"session {session_id!r} already exists with other content")
            await self._change_shared_states(ctx, scope.tenant, shared_state_deltas)
            pk = await self._insert_session(ctx, scope, session, session_id)
            created = await self._reload(ctx, pk)
            self._emit(ctx, E.EVENT_TYPE_SESSION_CREATED, created)
            return created, True, ctx.write_revision

        result: tuple[S.Session, bool, int] = await self._write(write)
        return result

    async def get_session(self, scope: Scope, session_id: str) -> tuple[S.Session, int]:
        p = self.dialect.params()
        vis = self.visibility_sql(scope, p)
        found = await self._read(
            f"SELECT {SESSION_COLUMNS}, {REVISION} FROM sessions s"
            f" WHERE {vis} AND s.id = {p(session_id)}", p.values, small=True)
        if not found:
            raise NotFound(f"session {session_id!r} not found")
        return self._session(found[0]), int(found[0][-1])

    async def update_session(self, scope: Scope, session: S.Session, paths: Sequence[str],
                             etag: str) -> tuple[S.Session, int]:
        async def write(ctx: Ctx) -> tuple[S.Session, int]:
            row = await self._load(ctx, scope, session.id)
            current = self._session(row, ctx.now)
            p = self.dialect.params()
            sets: list[str] = []
            for path in sorted(set(paths)):
                if path == "labels":
                    if dict(session.labels) == json.loads(row[COL["labels"]]):
                        continue
                    sets.append(f"labels = "
                                f"{self.dialect.json_value(p, rows.labels_json(session.labels))}")
                    continue
                value = getattr(session, path)
                column = "state" if path == "state_json" else path
                if path == "kind":
                    value = value or S.SESSION_KIND_INTERACTIVE
                elif path == "state_json":
                    value = value or EMPTY_STATE
                if value == row[COL[column]]:
                    continue
                sets.append(f"{column} = {p(value)}")
            # An update that changes nothing is answered with the session as it is,
            # whatever its etag: the retry of an applied update returns its result.
            if not sets:
                return current, 0
            if etag and etag != current.etag:
                raise Aborted(f"etag {etag!r} is stale; the session is at {current.etag!r}")
            await ctx.tx.execute(
                f"UPDATE sessions SET {', '.join(sets)}, updated_at = {p(ctx.now)},"
                f" revision = {p(ctx.take_revision())} WHERE pk = {p(row[0])}", p.values)
            updated = await self._reload(ctx, row[0])
            self._emit(ctx, E.EVENT_TYPE_SESSION_UPDATED, updated)
            return updated, ctx.write_revision

        result: tuple[S.Session, int] = await self._write(write)
        return result

    async def _delete_rows(self, ctx: Ctx, pk: int) -> int:
        key = self.dialect.placeholders(1)
        removed = await ctx.tx.execute(f"DELETE FROM messages WHERE session_pk = {key}", (pk,))
        for table, column in (("session_usage", "session_pk"), ("usage_requests", "session_pk"),
                              ("sessions", "pk")):
            await ctx.tx.execute(f"DELETE FROM {table} WHERE {column} = {key}", (pk,))
        return removed

    async def delete_session(self, scope: Scope, session_id: str, etag: str) -> tuple[int, int]:
        async def write(ctx: Ctx) -> tuple[int, int]:
            row = await self._load(ctx, scope, session_id)
            if etag and etag != str(row[COL["revision"]]):
                raise Aborted(f"etag {etag!r} is stale")
            removed = await self._delete_rows(ctx, row[0])
            ctx.emit(E.EVENT_TYPE_SESSION_DELETED, session_id, row[1], row[COL["owner_id"]],
                     row[COL["dataset_id"]])
            return removed, ctx.write_revision

        result: tuple[int, int] = await self._write(write)
        return result

    def list_sessions_sql(
        self, scope: Scope, f: S.SessionFilter,
        order_by: session_service_pb2.SessionOrderField.ValueType, ascending: bool,
        page_size: int, cursor: tuple[int, str] | None, now: int,
    ) -> tuple[str, list[Any]]:
        """The page query; public so the index tests can EXPLAIN it."""
        column = ORDER_COLUMNS[order_by]
        p = self.dialect.params()
        where = self._filter_sql(scope, f, now, p)
        direction = "ASC" if ascending else "DESC"
        if cursor is not None:
            where += (f" AND (s.{column}, s.id) {'>' if ascending else '<'}"
                      f" ({p(cursor[0])}, {p(cursor[1])})")
        sql = (f"SELECT {SESSION_COLUMNS} FROM sessions s"
               f"{self.dialect.index_hint(ORDER_INDEXES[column])}"
               f" WHERE {where} ORDER BY s.{column} {direction}, s.id {direction}"
               f" LIMIT {p(page_size + 1)}")
        return sql, p.values

    def _count_sql(self, scope: Scope, filter: S.SessionFilter, now: int) -> list[Statement]:
        """Statements whose answers add up to the number of sessions matching
        ``filter``: whole days from the rollup where it serves (as GetStats)."""
        plan = self._plan(filter)
        statements = self._row_by_row(
            scope, filter, plan, now,
            lambda where, p: f"SELECT count(*) FROM sessions s WHERE {where}")
        if plan:
            p = self.dialect.params()
            where = self._rollup_where(scope, plan.whole_days, p, "r")
            statements.append((f"SELECT {self.dialect.total('r.session_count')}"
                               f" FROM session_rollup r WHERE {where}", p.values))
        return statements

    async def list_sessions(
        self, scope: Scope, filter: S.SessionFilter,
        order_by: session_service_pb2.SessionOrderField.ValueType, ascending: bool,
        page_size: int, cursor: tuple[int, str] | None, max_bytes: int = 2 << 20,
        count_total: bool = True,
    ) -> SessionPage:
        now = self._clock()
        page_sql, page_params = self.list_sessions_sql(scope, filter, order_by, ascending,
                                                       page_size, cursor, now)
        page, rev, *counts = await self._read_many([
            (page_sql, page_params),
            (f"SELECT {REVISION}", ()),
            *(self._count_sql(scope, filter, now) if count_total else ()),
        ])
        column = COL[ORDER_COLUMNS[order_by]]
        # Sessions are taken while the bytes of those before stay under max_bytes (a page
        # holds at most that plus one session, and always one); the rest follow on the
        # next page, as when page_size is reached.
        sessions: list[S.Session] = []
        taken = 0
        for row in page[:page_size]:
            if sessions and taken >= max_bytes:
                break
            sessions.append(self._session(row, now))
            taken += sessions[-1].ByteSize()
        next_cursor = None
        if len(page) > len(sessions):
            last = page[len(sessions) - 1]
            next_cursor = (int(last[column]), str(last[2]))
        total = sum(int(found[0][0]) for found in counts) if count_total else None
        return SessionPage(sessions, next_cursor, total, int(rev[0][0]))

    async def touch_session(self, scope: Scope, session: S.Session
                            ) -> tuple[S.Session, bool, int]:
        async def write(ctx: Ctx) -> tuple[S.Session, bool, int]:
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
        async def write(ctx: Ctx) -> tuple[S.Session, int]:
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
            p = self.dialect.params()
            # An ended session runs no turn: a RUNNING one becomes IDLE with its turn
            # cleared (as SetRuntimeState IDLE does); ERROR stays, with the failed turn.
            running = f"runtime_state = {p(S.RUNTIME_STATE_RUNNING)}"
            await ctx.tx.execute(
                f"UPDATE sessions SET status = {p(int(status))}, end_reason = {p(reason)},"
                f" ended_at = {p(ended)}, updated_at = {p(ctx.now)},"
                f" revision = {p(ctx.take_revision())},"
                f" current_turn_id = CASE WHEN {running} THEN '' ELSE current_turn_id END,"
                f" turn_started_at = CASE WHEN {running} THEN 0 ELSE turn_started_at END,"
                f" runtime_state = CASE WHEN {running} THEN {p(S.RUNTIME_STATE_IDLE)}"
                f" ELSE runtime_state END WHERE pk = {p(row[0])}", p.values)
            session = await self._reload(ctx, row[0])
            self._emit(ctx, E.EVENT_TYPE_SESSION_ENDED, session)
            return session, ctx.write_revision

        result: tuple[S.Session, int] = await self._write(write)
        return result

    async def set_runtime_state(self, scope: Scope, session_id: str,
                                state: S.RuntimeState.ValueType, turn_id: str,
                                turn_started_at_micros: int, runtime_instance: str
                                ) -> tuple[S.Session, int]:
        async def write(ctx: Ctx) -> tuple[S.Session, int]:
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

        async def write(ctx: Ctx) -> tuple[S.Session, bool, int]:
            # A retry first, before any guard on the source: it answers the fork as
            # made, however the source changed (or went) since.
            existing = await self._find(ctx, scope.tenant, new_session_id)
            if existing is not None:
                found = self._session(existing, ctx.now)
                if (found.parent_id == source_id
                        and (not up_to_seq or found.fork_seq == up_to_seq)
                        and scope.can_see(found.tenant, found.owner_id, found.dataset_id)):
                    return found, False, 0
                raise AlreadyExists(f"session {new_session_id!r} already exists")
            row = await self._load(ctx, scope, source_id)
            last_seq = row[COL["last_seq"]]
            if up_to_seq > last_seq:
                raise InvalidArgument("up_to_seq", f"up_to_seq {up_to_seq} is beyond the "
                                      f"source's last_seq {last_seq}")
            upto = up_to_seq or last_seq
            source = self._session(row, ctx.now)
            template = S.Session()
            template.CopyFrom(source)
            template.ClearField("started_at")
            if display_name:
                template.display_name = display_name
            pk = await self._insert_session(ctx, scope, template, new_session_id, source_id,
                                            upto)
            p = self.dialect.params()
            await ctx.tx.execute(
                f"INSERT INTO messages ({MESSAGE_INSERT_COLUMNS})"
                f" SELECT {p(pk)}, row_number() OVER (ORDER BY seq), message_id, role, content,"
                f" is_turn, tool_calls, created_at, updated_at, body, event_at FROM messages"
                f" WHERE session_pk = {p(row[0])} AND seq <= {p(upto)} ORDER BY seq", p.values)
            key = self.dialect.placeholders(1)
            await ctx.tx.execute(
                f"UPDATE sessions SET (message_count, turn_count, tool_call_count, last_seq) ="
                f" (SELECT count(*), coalesce(sum(is_turn), 0), coalesce(sum(tool_calls), 0),"
                f" coalesce(max(seq), 0) FROM messages WHERE session_pk = {key}){LAST_EVENT_AT}"
                f" WHERE pk = {key}", (pk,))
            forked = await self._reload(ctx, pk)
            self._emit(ctx, E.EVENT_TYPE_SESSION_CREATED, forked)
            return forked, True, ctx.write_revision

        result: tuple[S.Session, bool, int] = await self._write(write)
        return result

    async def reconcile_sessions(self, scope: Scope, runtime_instance: str,
                                 keep_ids: Sequence[str], reason: str, limit: int
                                 ) -> tuple[list[str], int, bool]:
        """Mark at most ``limit`` of the instance's ACTIVE sessions, but those kept,
        UNKNOWN in one revision (in id order); whether more remain to mark. The
        marking also stops once the marked sessions (each in its event, a session
        being up to about 150 KB) reach RECONCILE_EVENT_BYTES, so one revision's
        events stay bounded in bytes as well as in number."""
        keep = set(keep_ids)

        async def write(ctx: Ctx) -> tuple[list[str], int, bool]:
            p = self.dialect.params()
            vis = self.visibility_sql(scope, p)
            # Enough rows to find ``limit`` to mark and one more, however many are kept.
            found = await ctx.tx.fetch(
                f"SELECT s.pk, s.id FROM sessions s"
                f"{self.dialect.index_hint('sessions_by_runtime')} WHERE {vis}"
                f" AND s.runtime_instance = {p(runtime_instance)} AND s.status = {p(rows.ACTIVE)}"
                f" ORDER BY s.id LIMIT {p(limit + len(keep) + 1)}{self.dialect.lock_rows}",
                p.values)
            marked: list[str] = []
            spent = 0
            for pk, sid in found:
                if sid in keep:
                    continue
                if len(marked) == limit or spent >= RECONCILE_EVENT_BYTES:
                    return marked, ctx.write_revision, True
                p = self.dialect.params()
                await ctx.tx.execute(
                    f"UPDATE sessions SET status = {p(rows.UNKNOWN)},"
                    f" end_reason = {p(reason or 'runtime restarted')},"
                    f" updated_at = {p(ctx.now)}, revision = {p(ctx.take_revision())}"
                    f" WHERE pk = {p(pk)}", p.values)
                session = await self._reload(ctx, pk)
                self._emit(ctx, E.EVENT_TYPE_STATUS_CHANGED, session)
                spent += session.ByteSize()
                marked.append(sid)
            return marked, ctx.write_revision, False

        result: tuple[list[str], int, bool] = await self._write(write)
        return result

    async def purge_sessions(self, scope: Scope, last_activity_before_micros: int,
                             keep_newest: int, statuses: Sequence[S.SessionStatus.ValueType],
                             dry_run: bool, limit: int) -> tuple[int, bool, int]:
        async def write(ctx: Ctx) -> tuple[int, bool, int]:
            if self.dialect.lock_sessions and not dry_run:
                # The victims are chosen by a window over other sessions, which row
                # locks cannot keep true: no other writer runs on sessions until COMMIT.
                await ctx.tx.execute(self.dialect.lock_sessions)
            f = S.SessionFilter(statuses=statuses)
            victims: dict[int, tuple[Any, ...]] = {}
            source = (f"SELECT s.pk, s.id, s.tenant, s.owner_id, s.dataset_id FROM sessions s"
                      f"{self.dialect.index_hint('sessions_by_last_activity')}")
            if last_activity_before_micros:
                p = self.dialect.params()
                where = self._filter_sql(scope, f, ctx.now, p)
                for r in await ctx.tx.fetch(
                        f"{source} WHERE {where}"
                        f" AND s.last_activity_at < {p(last_activity_before_micros)}"
                        f" ORDER BY s.last_activity_at LIMIT {p(limit + 1)}", p.values):
                    victims[r[0]] = tuple(r)
            if keep_newest > 0:
                p = self.dialect.params()
                where = self._filter_sql(scope, f, ctx.now, p)
                for r in await ctx.tx.fetch(
                        f"{source} WHERE {where} ORDER BY s.last_activity_at DESC, s.id DESC"
                        f" LIMIT {p(limit + 1)} OFFSET {p(keep_newest)}", p.values):
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

        result: tuple[int, bool, int] = await self._write(
            Alone[tuple[int, bool, int]](write))
        return result

    # Messages.
    async def _stored_by_id(self, ctx: Ctx, pk: int, messages: Sequence[M.Message]
                            ) -> dict[str, Any]:
        """The stored rows of the client-chosen message ids among ``messages``."""
        ids = sorted({m.id for m in messages if m.id})
        if not ids:
            return {}
        p = self.dialect.params()
        return {r[3]: r for r in await ctx.tx.fetch(
            f"SELECT {self.dialect.message_columns} FROM messages m WHERE m.session_pk = {p(pk)}"
            f" AND {self.dialect.any_of('m.message_id', ids, p)}", p.values)}

    @staticmethod
    def _new_messages(ctx: Ctx, pk: int, last_seq: int,
                      prepared: Sequence[tuple[M.Message, Any, int, int]]
                      ) -> tuple[list[tuple[Any, ...]], int, int]:
        """The rows of messages numbered after ``last_seq`` (stored by :meth:`_bump`),
        their turns and tool calls."""
        new_rows: list[tuple[Any, ...]] = []
        turns = tool_calls = 0
        for message, body, turn, calls in prepared:
            last_seq += 1
            new_rows.append((pk, last_seq, message.id or None, int(message.role),
                             message.content, turn, calls, ctx.now, ctx.now, body,
                             message.event_time.ToMicroseconds()
                             if message.HasField("event_time") else None))
            turns += turn
            tool_calls += calls
        return new_rows, turns, tool_calls

    async def append_messages(self, scope: Scope, session_id: str,
                              messages: Sequence[M.Message],
                              expected_last_seq: int | None,
                              state_delta: S.StateDelta | None = None,
                              shared_state_deltas: Sequence[S.SharedStateDelta] = (),
                              *, lean: bool = False) -> MessagesResult:
        """Append ``messages``; with ``lean`` the result's messages carry only seq, id and
        created_at (AppendMessages' LEAN view) and are built as such: no stored body is
        parsed and no whole copy is made for them. The event is the same either way."""
        prepared = [(m, rows.message_body(m), *message_delta(m)) for m in messages]

        def answer(row: Sequence[Any]) -> M.Message:
            """A stored message row as the result carries it."""
            if lean:
                return lean_message(row[2], row[3], row[8])
            return rows.message_from_row(row, session_id)

        async def write(ctx: Ctx) -> MessagesResult:
            row = await self._load(ctx, scope, session_id)
            pk, last_seq = row[0], row[COL["last_seq"]]
            known = await self._stored_by_id(ctx, pk, messages)
            out: list[M.Message | None] = []
            seen_ids: set[str] = set()
            for i, (message, *_) in enumerate(prepared):
                if message.id and (message.id in known or message.id in seen_ids):
                    old = known.get(message.id)
                    if old is None:
                        raise AlreadyExists(f"messages[{i}].id {message.id!r} repeats in "
                                            f"the request", reason="MESSAGE_ID_CONFLICT")
                    # role and content are columns of their own (MESSAGE_FIELDS).
                    if old[4] != message.role or old[5] != message.content:
                        raise AlreadyExists(
                            f"messages[{i}].id {message.id!r} is stored with other "
                            f"content", reason="MESSAGE_ID_CONFLICT")
                    out.append(answer(old))
                    continue
                seen_ids.add(message.id)
                out.append(None)
            if all(m is not None for m in out):
                # Every message is stored: a retry, answered with what was stored,
                # before the guards below (which the stored append changed).
                return MessagesResult([m for m in out if m is not None],
                                      self._session(row, ctx.now), 0)
            rows.require_writable(row)
            if expected_last_seq is not None and expected_last_seq != last_seq:
                raise Aborted(f"expected last_seq {expected_last_seq}, the session is at "
                              f"{last_seq}", reason="LAST_SEQ_MISMATCH")
            # The state deltas commit with the messages, or nothing does.
            state_sql, state_values = "", cast(tuple[str, ...], ())
            if state_delta is not None and not is_empty(state_delta):
                state_sql = ", state = {}"
                state_values = (apply_delta(row[COL["state"]], state_delta, "state_delta"),)
            await self._change_shared_states(ctx, scope.tenant, shared_state_deltas)
            new_rows, turns, tool_calls = self._new_messages(
                ctx, pk, last_seq, [fresh for kept, fresh in zip(out, prepared, strict=True)
                                    if kept is None])
            last_seq = new_rows[-1][1]
            session, revived = await self._bump(
                ctx, row, ", message_count = message_count + {}, turn_count = turn_count + {},"
                " tool_call_count = tool_call_count + {}, last_seq = {}" + state_sql,
                (len(new_rows), turns, tool_calls, last_seq, *state_values), messages=new_rows,
                messages_changed=True)
            inserted = iter(new_rows)
            fresh = [(i, rows.stored_message(message, session_id, next(inserted)[1], ctx.now))
                     for i, (message, *_) in enumerate(prepared) if out[i] is None]
            if revived:
                self._emit(ctx, E.EVENT_TYPE_STATUS_CHANGED, session)
            # The lean result does not hold the stored messages, so the event may cut
            # them where they are instead of cutting copies.
            carried, truncated = rows.event_messages([m for _, m in fresh], in_place=lean)
            self._emit(ctx, E.EVENT_TYPE_MESSAGES_APPENDED, session, carried, truncated)
            for i, stored in fresh:
                out[i] = lean_message(stored.seq, stored.id, ctx.now) if lean else stored
            return MessagesResult([m for m in out if m is not None], session,
                                  ctx.write_revision)

        result: MessagesResult = await self._write(write)
        return result

    def _bounded_page(self, select: Sequence[str], source: str, order: str, order_column: int,
                      descending: bool, limit: int, max_bytes: int, p: Params) -> str:
        """Rows of ``select`` (messages ``m`` among them) from ``source`` in ``order``: at most
        ``limit``, taken while the message bytes before each stay under ``max_bytes``, so a
        page holds at most that plus one message, and always one. The running sum follows
        the index order, so rows past the bound are never handed over."""
        direction = "DESC" if descending else "ASC"
        size = self.dialect.message_bytes
        inner = ", ".join(f"{expression} AS c{i}" for i, expression in enumerate(select))
        outer = ", ".join(f"page.c{i}" for i in range(len(select)))
        return (f"SELECT {outer} FROM (SELECT {inner}, SUM({size}) OVER (ORDER BY {order}"
                f" {direction} ROWS UNBOUNDED PRECEDING) - ({size}) AS before_bytes"
                f" FROM {source} ORDER BY {order} {direction} LIMIT {p(limit)}) page"
                f" WHERE page.before_bytes < {p(max_bytes)}"
                f" ORDER BY page.c{order_column} {direction}")

    async def list_messages(self, scope: Scope, session_id: str,
                            query: MessageQuery) -> MessagePage:
        d = self.dialect
        select = [f"m.{name}" for name in (d.message_key, *rows.MESSAGE_FIELDS[1:])]
        seq = rows.MESSAGE_FIELDS.index("seq")
        truncated = size_limited = False
        next_cursor: int | None = None
        # One snapshot: the revision is the one the returned messages were read at.
        async with self._snapshot(small=True) as r:
            p = d.params()
            vis = self.visibility_sql(scope, p)
            found = await r.fetch(
                f"SELECT s.pk, {REVISION} FROM sessions s WHERE {vis} AND s.id = {p(session_id)}",
                p.values)
            if not found:
                raise NotFound(f"session {session_id!r} not found")
            pk, revision = int(found[0][0]), int(found[0][1])

            async def any_message(condition: Callable[[Params], str]) -> bool:
                p = d.params()
                return bool(await r.fetch(
                    f"SELECT 1 FROM messages m WHERE m.session_pk = {p(pk)}"
                    f" AND {condition(p)} LIMIT 1", p.values))

            def newest(first_seq: int, limit: int, p: Params) -> str:
                return self._bounded_page(
                    select, f"messages m WHERE m.session_pk = {p(pk)} AND m.seq >= {p(first_seq)}",
                    "m.seq", seq, True, limit, query.max_bytes, p)

            p = d.params()
            if query.last_n or query.last_turns:
                first_seq = 0
                if query.last_turns:
                    first_seq = await self._last_turns_start(r, pk, query.last_turns)
                limit = query.last_n or query.max_messages + 1
                p = d.params()
                found = await r.fetch(newest(first_seq, limit, p), p.values)
                if len(found) > query.max_messages:
                    truncated = True
                    found = found[:query.max_messages]
                elif len(found) < limit and found:
                    oldest = int(found[-1][seq])
                    size_limited = await any_message(
                        lambda p: f"m.seq >= {p(first_seq)} AND m.seq < {p(oldest)}")
                    truncated = truncated or size_limited
                found.reverse()
            else:
                def matching(p: Params) -> str:
                    clauses = [f"m.session_pk = {p(pk)}", f"m.seq > {p(query.after_seq)}"]
                    if query.after_time_micros:
                        clauses.append(f"COALESCE(m.event_at, m.created_at)"
                                       f" >= {p(query.after_time_micros)}")
                    if query.cursor_seq is not None:
                        clauses.append(
                            f"m.seq {'<' if query.descending else '>'} {p(query.cursor_seq)}")
                    return " AND ".join(clauses)

                found = await r.fetch(self._bounded_page(
                    select, f"messages m WHERE {matching(p)}", "m.seq", seq, query.descending,
                    query.page_size + 1, query.max_bytes, p), p.values)
                if len(found) > query.page_size:
                    found = found[:query.page_size]
                    next_cursor = int(found[-1][seq])
                elif found:
                    last = int(found[-1][seq])
                    size_limited = await any_message(
                        lambda p: f"{matching(p)} AND m.seq {'<' if query.descending else '>'}"
                                  f" {p(last)}")
                    if size_limited:
                        next_cursor = last
        messages = [rows.message_from_row(m, session_id) for m in found]
        if truncated and query.last_turns:
            messages = rows.without_orphaned_tool_results(messages)
        return MessagePage(messages, next_cursor, truncated, revision, size_limited)

    async def _last_turns_start(self, r: Statements, pk: int, turns: int) -> int:
        """The seq the last ``turns`` turns start at (0: from the first message)."""
        d = self.dialect
        indexed = f"messages m{d.index_hint('messages_user_turns')}"
        p = d.params()
        start = await r.fetch(
            f"SELECT m.seq FROM {indexed} WHERE m.session_pk = {p(pk)} AND m.role = 2"
            f" ORDER BY m.seq DESC LIMIT 1 OFFSET {p(turns - 1)}", p.values)
        first_seq = int(start[0][0]) if start else 0
        if first_seq:
            p = d.params()
            earlier = await r.fetch(
                f"SELECT 1 FROM {indexed} WHERE m.session_pk = {p(pk)} AND m.role = 2"
                f" AND m.seq < {p(first_seq)} LIMIT 1", p.values)
            if not earlier:
                first_seq = 0  # what precedes the first user message is its turn
        return first_seq

    async def _last_message(self, ctx: Ctx, row: Sequence[Any], session_id: str,
                            expected_seq: int | None) -> Any:
        p = self.dialect.params()
        last = await ctx.tx.fetchrow(
            f"SELECT {self.dialect.message_columns} FROM messages m"
            f" WHERE m.session_pk = {p(row[0])} ORDER BY m.seq DESC LIMIT 1", p.values)
        if last is None:
            raise FailedPrecondition(f"session {session_id!r} has no messages",
                                     reason="SESSION_EMPTY")
        if expected_seq is not None and expected_seq != last[2]:
            raise Aborted(f"expected the last message to be seq {expected_seq}, it is "
                          f"{last[2]}", reason="LAST_SEQ_MISMATCH")
        return last

    async def pop_message(self, scope: Scope, session_id: str,
                          expected_seq: int | None) -> MessagesResult:
        async def write(ctx: Ctx) -> MessagesResult:
            row = await self._load(ctx, scope, session_id)
            rows.require_writable(row)
            last = await self._last_message(ctx, row, session_id, expected_seq)
            message = rows.message_from_row(last, session_id)
            p = self.dialect.params()
            await ctx.tx.execute(f"DELETE FROM messages WHERE session_pk = {p(row[0])}"
                                 f" AND seq = {p(last[2])}", p.values)
            session, _ = await self._bump(
                ctx, row, ", message_count = message_count - 1, turn_count = turn_count - {},"
                " tool_call_count = tool_call_count - {}", (last[6], last[7]),
                messages_changed=True)
            carried, truncated = rows.event_messages([message])
            self._emit(ctx, E.EVENT_TYPE_MESSAGE_POPPED, session, carried, truncated, 1)
            return MessagesResult([message], session, ctx.write_revision)

        result: MessagesResult = await self._write(write)
        return result

    async def update_last_message(self, scope: Scope, session_id: str, message: M.Message,
                                  paths: Sequence[str], expected_seq: int | None,
                                  max_message_bytes: int) -> MessagesResult:
        async def write(ctx: Ctx) -> MessagesResult:
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
            size = rows.message_bytes(updated)
            if size > max_message_bytes:
                # The limit holds for the message as stored, not only for what a call sends.
                raise InvalidArgument("message.content", f"the updated message would be {size}"
                                      f" bytes; the limit is {max_message_bytes}")
            turn, calls = message_delta(updated)
            p = self.dialect.params()
            await ctx.tx.execute(
                f"UPDATE messages SET content = {p(updated.content)}, is_turn = {p(turn)},"
                f" tool_calls = {p(calls)}, updated_at = {p(ctx.now)},"
                f" body = {p(rows.message_body(updated))}"
                f" WHERE session_pk = {p(row[0])} AND seq = {p(last[2])}", p.values)
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
        async def write(ctx: Ctx) -> tuple[int, S.Session, int]:
            row = await self._load(ctx, scope, session_id)
            rows.require_writable(row)
            if not row[COL["message_count"]]:
                return 0, self._session(row, ctx.now), 0
            removed = await ctx.tx.execute(
                f"DELETE FROM messages WHERE session_pk = {self.dialect.placeholders(1)}",
                (row[0],))
            session, _ = await self._bump(
                ctx, row, ", message_count = 0, turn_count = 0, tool_call_count = 0",
                messages_changed=True)
            self._emit(ctx, E.EVENT_TYPE_MESSAGES_CLEARED, session, removed_count=removed)
            return removed, session, ctx.write_revision

        result: tuple[int, S.Session, int] = await self._write(write)
        return result

    async def _range_counts(self, ctx: Ctx, pk: int, condition: str, seq: int
                            ) -> tuple[int, int, int]:
        """Messages, turns and tool calls of the session's messages whose seq meets
        ``condition`` (an operator) against ``seq``, summed in SQL."""
        p = self.dialect.params()
        found = await ctx.tx.fetchrow(
            f"SELECT COUNT(*), COALESCE(SUM(is_turn), 0), COALESCE(SUM(tool_calls), 0)"
            f" FROM messages WHERE session_pk = {p(pk)} AND seq {condition} {p(seq)}", p.values)
        return int(found[0]), int(found[1]), int(found[2])

    async def replace_messages(self, scope: Scope, session_id: str, after_seq: int,
                               messages: Sequence[M.Message], expected_last_seq: int,
                               etag: str) -> tuple[MessagesResult, int]:
        prepared = [(m, rows.message_body(m), *message_delta(m)) for m in messages]

        async def write(ctx: Ctx) -> tuple[MessagesResult, int]:
            row = await self._load(ctx, scope, session_id)
            pk, last_seq = row[0], row[COL["last_seq"]]
            if after_seq > last_seq:
                raise InvalidArgument("after_seq", f"after_seq {after_seq} is beyond the "
                                      f"session's last_seq {last_seq}")
            removed, removed_turns, removed_calls = await self._range_counts(
                ctx, pk, ">", after_seq)
            p = self.dialect.params()
            n = len(messages)
            if all(m.id for m in messages) and (
                    removed == n or (n and removed > n and expected_last_seq != last_seq)):
                # A retry of an applied replacement: the tail starts with these
                # messages (and is them alone, or went on with later appends, which
                # moved last_seq past the guard this request carries: with a current
                # guard it asks to drop those too, and is no retry). Answered before
                # the guards, which the first attempt moved.
                tail = await ctx.tx.fetch(
                    f"SELECT {self.dialect.message_columns} FROM messages m"
                    f" WHERE m.session_pk = {p(pk)} AND m.seq > {p(after_seq)}"
                    f" ORDER BY m.seq LIMIT {p(n)}", p.values)
                stored = [rows.message_from_row(r, session_id) for r in tail]
                if all((s.id, s.role, s.content) == (m.id, m.role, m.content)
                       for s, m in zip(stored, messages, strict=True)):
                    return MessagesResult(stored, self._session(row, ctx.now), 0), 0
            rows.require_writable(row)
            if expected_last_seq != last_seq:
                raise Aborted(f"expected last_seq {expected_last_seq}, the session is at "
                              f"{last_seq}", reason="LAST_SEQ_MISMATCH")
            if etag and etag != self._session(row, ctx.now).etag:
                raise Aborted(f"etag {etag!r} is stale")
            seen: set[str] = set()
            kept = await self._stored_by_id(ctx, pk, messages)
            for i, message in enumerate(messages):
                old = kept.get(message.id)
                if message.id in seen or (old is not None and old[2] <= after_seq):
                    raise AlreadyExists(f"messages[{i}].id {message.id!r} is used by another "
                                        f"message", reason="MESSAGE_ID_CONFLICT")
                if message.id:
                    seen.add(message.id)
            p = self.dialect.params()
            await ctx.tx.execute(f"DELETE FROM messages WHERE session_pk = {p(pk)}"
                                 f" AND seq > {p(after_seq)}", p.values)
            new_rows, turns, tool_calls = self._new_messages(ctx, pk, last_seq, prepared)
            new_last = new_rows[-1][1] if new_rows else last_seq
            session, revived = await self._bump(
                ctx, row, ", message_count = message_count + {}, turn_count = turn_count + {},"
                " tool_call_count = tool_call_count + {}, last_seq = {}",
                (len(new_rows) - removed, turns - removed_turns, tool_calls - removed_calls,
                 new_last), messages=new_rows, messages_changed=True)
            result = [rows.stored_message(message, session_id, new_row[1], ctx.now)
                      for message, new_row in zip(messages, new_rows, strict=True)]
            if revived:
                self._emit(ctx, E.EVENT_TYPE_STATUS_CHANGED, session)
            carried, truncated = rows.event_messages(result)
            ctx.emit(E.EVENT_TYPE_MESSAGES_REPLACED, session.id, session.tenant,
                     session.owner_id, session.dataset_id, session=session, messages=carried,
                     messages_truncated=truncated, removed_count=removed, after_seq=after_seq)
            return MessagesResult(result, session, ctx.write_revision), removed

        result: tuple[MessagesResult, int] = await self._write(write)
        return result

    async def delete_messages(self, scope: Scope, session_id: str, up_to_seq: int,
                              expected_last_seq: int | None) -> tuple[int, S.Session, int]:
        async def write(ctx: Ctx) -> tuple[int, S.Session, int]:
            row = await self._load(ctx, scope, session_id)
            last_seq = row[COL["last_seq"]]
            if up_to_seq > last_seq:
                raise InvalidArgument("up_to_seq", f"up_to_seq {up_to_seq} is beyond the "
                                      f"session's last_seq {last_seq}")
            removed, turns, tool_calls = await self._range_counts(ctx, row[0], "<=", up_to_seq)
            if not removed:
                # Nothing left up to there (a retry, or deleted already): no change,
                # answered before the guards.
                return 0, self._session(row, ctx.now), 0
            rows.require_writable(row)
            if expected_last_seq is not None and expected_last_seq != last_seq:
                raise Aborted(f"expected last_seq {expected_last_seq}, the session is at "
                              f"{last_seq}", reason="LAST_SEQ_MISMATCH")
            p = self.dialect.params()
            await ctx.tx.execute(f"DELETE FROM messages WHERE session_pk = {p(row[0])}"
                                 f" AND seq <= {p(up_to_seq)}", p.values)
            session, revived = await self._bump(
                ctx, row, ", message_count = message_count - {}, turn_count = turn_count - {},"
                " tool_call_count = tool_call_count - {}", (removed, turns, tool_calls),
                messages_changed=True)
            if revived:
                self._emit(ctx, E.EVENT_TYPE_STATUS_CHANGED, session)
            ctx.emit(E.EVENT_TYPE_MESSAGES_DELETED, session.id, session.tenant,
                     session.owner_id, session.dataset_id, session=session,
                     removed_count=removed, up_to_seq=up_to_seq)
            return removed, session, ctx.write_revision

        result: tuple[int, S.Session, int] = await self._write(write)
        return result

    # Shared state (per tenant, application and user).
    @staticmethod
    def _shared_state(app: str, user_id: str, found: Sequence[Any] | None) -> S.SharedState:
        shared = S.SharedState(app=app, user_id=user_id, state_json=EMPTY_STATE, etag="0")
        if found is not None:
            shared.state_json, shared.etag = found[0], str(found[1])
            shared.updated_at.FromMicroseconds(int(found[2]))
        return shared

    def _shared_select(self, tenant: str, app: str, user_id: str, lock: str = ""
                       ) -> tuple[str, list[Any]]:
        p = self.dialect.params()
        return (f"SELECT state, version, updated_at FROM shared_state WHERE tenant = {p(tenant)}"
                f" AND app = {p(app)} AND user_id = {p(user_id)}{lock}", p.values)

    async def _change_shared_state(self, ctx: Ctx, tenant: str, app: str, user_id: str,
                                   delta: S.StateDelta, field: str, etag: str = ""
                                   ) -> S.SharedState:
        """Apply a delta to a shared state inside the current write."""
        # Locked like the session rows a write relies on, so a replica's concurrent change
        # waits instead of being overwritten (a concurrent first insert loses on the key
        # and the write runs again).
        found = await ctx.tx.fetchrow(*self._shared_select(tenant, app, user_id,
                                                           self.dialect.lock_rows))
        current = self._shared_state(app, user_id, found)
        changed = apply_delta(current.state_json, delta, field)
        # A delta that changes nothing (a retry of an applied one) is answered
        # with the state as it is, before the etag guard.
        if changed == current.state_json:
            return current
        if etag and etag != current.etag:
            raise Aborted(f"etag {etag!r} is stale; the state is at {current.etag!r}")
        version = int(current.etag) + 1
        p = self.dialect.params()
        if found is None:
            await ctx.tx.execute(
                f"INSERT INTO shared_state (tenant, app, user_id, state, version, updated_at)"
                f" VALUES ({p(tenant)}, {p(app)}, {p(user_id)}, {p(changed)}, {p(version)},"
                f" {p(ctx.now)})", p.values)
        else:
            await ctx.tx.execute(
                f"UPDATE shared_state SET state = {p(changed)}, version = {p(version)},"
                f" updated_at = {p(ctx.now)} WHERE tenant = {p(tenant)} AND app = {p(app)}"
                f" AND user_id = {p(user_id)}", p.values)
        return self._shared_state(app, user_id, (changed, version, ctx.now))

    async def _change_shared_states(self, ctx: Ctx, tenant: str,
                                    deltas: Sequence[S.SharedStateDelta]) -> None:
        """A write's shared_state_deltas, in order, inside the write (all or none commit)."""
        for i, shared in enumerate(deltas):
            await self._change_shared_state(ctx, tenant, shared.app, shared.user_id,
                                            shared.delta, f"shared_state_deltas[{i}].delta")

    async def get_shared_state(self, scope: Scope, app: str, user_id: str) -> S.SharedState:
        found = await self._read(*self._shared_select(scope.tenant, app, user_id))
        return self._shared_state(app, user_id, found[0] if found else None)

    async def update_shared_state(self, scope: Scope, app: str, user_id: str,
                                  delta: S.StateDelta, etag: str) -> S.SharedState:
        async def write(ctx: Ctx) -> S.SharedState:
            return await self._change_shared_state(ctx, scope.tenant, app, user_id, delta,
                                                   "delta", etag)

        result: S.SharedState = await self._write(write)
        return result

    async def search_messages(self, scope: Scope, query: str, session_ids: Sequence[str],
                              page_size: int, cursor: int | None, max_bytes: int
                              ) -> tuple[list[M.Message], int | None, int]:
        d = self.dialect
        terms = search_terms(query)
        key = f"m.{d.message_key}"

        def matching(p: Params, before: int | None) -> str:
            clauses = [self.visibility_sql(scope, p), d.message_match(p, terms)]
            if session_ids:
                clauses.append(d.any_of("s.id", list(session_ids), p))
            if before is not None:
                clauses.append(f"{key} < {p(before)}")
            return (f"messages m JOIN sessions s ON s.pk = m.session_pk"
                    f" WHERE {' AND '.join(clauses)}")

        # One snapshot: the revision is the one the messages were read at.
        async with self._snapshot() as r:
            revision = int((await r.fetch(f"SELECT {REVISION}"))[0][0])
            if not terms:
                return [], None, revision
            p = d.params()
            select = [f"m.{name}" for name in (d.message_key, *rows.MESSAGE_FIELDS[1:])]
            found = await r.fetch(self._bounded_page(
                [*select, "s.id"], matching(p, cursor), key, 0, True, page_size + 1,
                max_bytes, p), p.values)
            next_cursor = None
            if len(found) > page_size:
                found = found[:page_size]
                next_cursor = int(found[-1][0])
            elif found:  # short: the end, or the page's byte bound
                p = d.params()
                last = int(found[-1][0])
                if await r.fetch(f"SELECT 1 FROM {matching(p, last)} LIMIT 1", p.values):
                    next_cursor = last
        return [rows.message_from_row(m, m[-1]) for m in found], next_cursor, revision

    # Usage and stats.
    async def record_usage(self, scope: Scope, session_id: str, model: str, usage: S.Usage,
                           errored: bool, request_id: str) -> UsageResult:
        delta = (usage.prompt_tokens, usage.completion_tokens, usage.reasoning_tokens,
                 usage.cache_read_tokens, usage.cache_write_tokens, usage.cost_micros, 1,
                 int(errored), usage.prompt_tokens + usage.completion_tokens)
        d = self.dialect

        async def write(ctx: Ctx) -> UsageResult:
            row = await self._load(ctx, scope, session_id)
            pk = row[0]
            if request_id:
                p = d.params()
                seen = await ctx.tx.fetchrow(
                    f"SELECT response FROM usage_requests WHERE session_pk = {p(pk)}"
                    f" AND request_id = {p(request_id)}", p.values)
                if seen is not None:
                    first = stats_service_pb2.RecordUsageResponse.FromString(bytes(seen[0]))
                    return UsageResult(first.session_usage, first.model_usage,
                                       first.budget_micros, True, first.revision)
            start = COL["prompt_tokens"]
            for name, have, add in zip(USAGE_FIELDS, row[start:start + 9], delta, strict=True):
                if have + add > MAX_USAGE_COUNTER:
                    raise FailedPrecondition(
                        f"session {session_id!r}: usage.{name} would exceed "
                        f"{MAX_USAGE_COUNTER}", reason="USAGE_OVERFLOW")
            model_row = await ctx.tx.fetchrow(
                f"INSERT INTO session_usage (session_pk, model, {', '.join(USAGE_FIELDS)})"
                f" VALUES ({d.placeholders(11)}) ON CONFLICT (session_pk, model) DO UPDATE SET "
                + ", ".join(f"{name} = session_usage.{name} + excluded.{name}"
                            for name in USAGE_FIELDS)
                + f" RETURNING {', '.join(USAGE_FIELDS)}", (pk, model, *delta))
            session, _ = await self._bump(
                ctx, row, ", " + ", ".join(f"{name} = {name} + {{}}" for name in USAGE_FIELDS),
                delta, revive=False)
            self._emit(ctx, E.EVENT_TYPE_USAGE_RECORDED, session)
            result = UsageResult(session.usage, rows.usage_from(model_row),
                                 session.budget_micros, False, ctx.write_revision)
            if request_id:
                response = stats_service_pb2.RecordUsageResponse(
                    session_usage=result.session_usage, model_usage=result.model_usage,
                    budget_micros=result.budget_micros, revision=result.revision)
                await ctx.tx.execute(
                    f"INSERT INTO usage_requests (session_pk, request_id, response)"
                    f" VALUES ({d.placeholders(3)})",
                    (pk, request_id, response.SerializeToString()))
                ctx.store_response(
                    f"UPDATE usage_requests SET response = {d.placeholders(1, 3)}"
                    f" WHERE session_pk = {d.placeholders(1, 1)}"
                    f" AND request_id = {d.placeholders(1, 2)}", (pk, request_id), response)
            return result

        result: UsageResult = await self._write(write)
        return result

    def _count_where(self, condition: str) -> str:
        return self.dialect.total(f"CASE WHEN {condition} THEN 1 ELSE 0 END")

    def _scan_stats_sql(self, where: str, p: Params, cutoff: int) -> str:
        """The STATS_SUMS aggregates of the sessions matching ``where``, row by row."""
        total, count = self.dialect.total, self._count_where
        sums = ", ".join(total(f"s.{name}") for name in USAGE_FIELDS)
        cut = p(cutoff)
        duration = "CASE WHEN s.ended_at > 0 THEN s.ended_at ELSE s.last_activity_at END" \
                   " - s.started_at"
        return (
            f"SELECT count(*), {sums}, {total('s.message_count')}, {total(duration)},"
            f" {count(f's.status = 1 AND s.last_activity_at >= {cut}')},"
            f" {count('s.status IN (1, 5) AND s.runtime_state = 2')},"
            f" {count(f's.status = 1 AND s.last_activity_at < {cut}')},"
            f" {count('s.status = 2')}, {count('s.status = 3')},"
            f" {count('s.status = 4')}, {count('s.status = 5')}"
            f" FROM sessions s WHERE {where}")

    def _rollup_stats_sql(self, scope: Scope, days: S.SessionFilter, cutoff: int, now: int
                          ) -> list[Statement]:
        """The STATS_SUMS of whole days from the rollup (every ACTIVE session
        counted as active), then the count of sessions still active."""
        total = self.dialect.total
        p = self.dialect.params()
        where = self._rollup_where(scope, days, p, "r")
        sums = ", ".join(total(f"r.{name}") for name in USAGE_FIELDS)

        def count_of(status: int) -> str:
            return total(f"CASE WHEN r.status = {status} THEN r.session_count ELSE 0 END")

        # Column for column as _scan_stats_sql; abandoned (0 here) is
        # split off the active count by the caller.
        rollup = (
            f"SELECT {total('r.session_count')}, {sums}, {total('r.message_count')},"
            f" {total('r.duration_micros')}, {count_of(1)}, {total('r.running_count')}, 0,"
            f" {count_of(2)}, {count_of(3)}, {count_of(4)}, {count_of(5)}"
            f" FROM session_rollup r WHERE {where}", p.values)
        # The sessions still active: the active rollup's minutes after the cutoff's
        # minute, plus an exact count inside that one minute (bounded by its sessions,
        # not by every active one).
        p = self.dialect.params()
        next_minute = (cutoff // MINUTE_MICROS + 1) * MINUTE_MICROS
        later = (f"SELECT coalesce(sum(a.session_count), 0) FROM active_rollup a"
                 f" WHERE a.minute >= {p(next_minute // MINUTE_MICROS)}"
                 f" AND {self._rollup_where(scope, days, p, 'a')}")
        where = self._filter_sql(scope, days, now, p)
        live = (f"SELECT ({later}) + (SELECT count(*) FROM sessions s"
                f"{self.dialect.index_hint('sessions_by_status')}"
                f" WHERE s.status = 1 AND s.last_activity_at >= {p(cutoff)}"
                f" AND s.last_activity_at < {p(next_minute)} AND {where})", p.values)
        return [rollup, live]

    async def get_stats(self, scope: Scope, filter: S.SessionFilter
                        ) -> tuple[stats_service_pb2.Stats, int]:
        now = self._clock()
        cutoff = self._abandoned_before(now)
        plan = self._plan(filter)
        statements: list[Statement] = [(f"SELECT {REVISION}", ())]
        statements.extend(self._row_by_row(
            scope, filter, plan, now,
            lambda where, p: self._scan_stats_sql(where, p, cutoff)))
        if plan:
            statements.extend(self._rollup_stats_sql(scope, plan.whole_days, cutoff, now))
        found = await self._read_many(statements)
        sums = [0] * STATS_SUMS
        for part in found[1:-1] if plan else found[1:]:
            for i, value in enumerate(part[0]):
                sums[i] += int(value or 0)
        if plan:
            # The rollup counts every ACTIVE session of its whole days as active; those
            # of them not still active (read from the status index) are abandoned. The
            # partial days' rows were split by the scan already: only the rollup's share
            # is corrected.
            rollup_active = int(found[-2][0][STATS_ACTIVE] or 0)
            active_live = int(found[-1][0][0])
            sums[STATS_ABANDONED] += rollup_active - active_live
            sums[STATS_ACTIVE] += active_live - rollup_active
        return _stats_from_sums(sums), int(found[0][0][0])

    async def cost_by_model(self, scope: Scope, filter: S.SessionFilter
                            ) -> tuple[list[stats_service_pb2.ModelCost], int]:
        now = self._clock()
        plan = self._plan(filter)
        total = self.dialect.total
        sums = ", ".join(total(f"u.{name}") for name in USAGE_FIELDS)
        statements: list[Statement] = [(f"SELECT {REVISION}", ())]
        statements.extend(self._row_by_row(
            scope, filter, plan, now,
            lambda where, p: f"SELECT u.model, count(*), {sums} FROM session_usage u"
                             f" JOIN sessions s ON s.pk = u.session_pk WHERE {where}"
                             f" GROUP BY u.model"))
        if plan:
            p = self.dialect.params()
            where = self._rollup_where(scope, plan.whole_days, p)
            statements.append((f"SELECT u.model, {total('u.session_count')}, {sums}"
                               f" FROM usage_rollup u WHERE {where} GROUP BY u.model",
                               p.values))
        found = await self._read_many(statements)
        by_model: dict[str, list[int]] = {}
        for part in found[1:]:
            for model, *values in part:
                into = by_model.setdefault(model, [0] * len(values))
                for i, value in enumerate(values):
                    into[i] += int(value)
        costs = [stats_service_pb2.ModelCost(
            model=model, session_count=int(values[0]),
            usage=rows.usage_from([rows.int64(v) for v in values[1:]]))
            for model, values in by_model.items()]
        # Ordered after saturation: equal (saturated) costs by name.
        costs.sort(key=lambda c: (-c.usage.cost_micros, c.model))
        return costs, int(found[0][0][0])

    async def tenants(self) -> list[str]:
        # Every session index begins with the tenant, so this is a walk of distinct keys.
        return [str(r[0]) for r in await self._read(
            "SELECT DISTINCT tenant FROM sessions ORDER BY tenant")]

    # Change log.
    async def read_changes(self, from_revision: int, limit: int, from_idx: int = 0,
                           max_events: int = 0) -> list[Change]:
        """Changes of at most ``limit`` revisions from ``from_revision`` on, in order.

        Whole revisions, except that the first starts at its ``from_idx``-th
        event and, when ``max_events`` is positive, the read stops after that
        many events. Raises Compacted when from_revision <= compacted_revision.
        """
        if from_revision <= self._compacted_revision:
            raise Compacted(self._compacted_revision)
        p = self.dialect.params()
        first = p(from_revision)
        bounded = f" LIMIT {p(max_events)}" if max_events > 0 else ""
        found, compacted = await self._read_many([
            (f"SELECT revision, tenant, owner_id, dataset_id, event FROM changes"
             f" WHERE revision >= {first} AND revision < (SELECT min(revision) FROM changes"
             f" WHERE revision >= {first}) + {p(max(1, limit))}"
             f" AND (revision > {first} OR idx >= {p(from_idx)})"
             f" ORDER BY revision, idx{bounded}",
             p.values),
            ("SELECT value FROM meta WHERE key = 'compacted_revision'", ()),
        ])
        compacted_revision = int(compacted[0][0])
        self._compacted_revision = max(self._compacted_revision, compacted_revision)
        if from_revision <= compacted_revision:
            raise Compacted(compacted_revision)
        return [Change(r[0], r[1], r[2], r[3], logged_event(r[0], bytes(r[4])))
                for r in found]

    async def initial_state(self, scope: Scope, session_ids: Sequence[str]
                            ) -> AsyncGenerator[tuple[list[S.Session], int], None]:
        """Every visible session (or those named), in pages of at most
        INITIAL_PAGE_ROWS (at least one page, perhaps empty), each with the
        revision they were all read at.

        Every page comes from one snapshot, held (on a connection of its own,
        not a pooled reader) while the caller takes the pages one at a time, so
        the server holds one page, not every session, however slowly they go out.
        A caller that waits longer than ``held_snapshot_idle_seconds`` before the
        next page gets Unavailable instead, and so does one that asks for a page
        after ``held_snapshot_max_seconds`` since the snapshot was taken.

        At most MAX_HELD_SNAPSHOTS (``held_snapshots``) are held at once; a caller
        beyond them waits here for a turn. A caller idle for
        ``held_snapshot_idle_seconds`` gives its turn back at once, before it asks
        again (a client that stops reading leaves its call blocked on the send,
        and must not keep others waiting).
        """
        gate = self.held_snapshots
        await gate.acquire()
        held = True
        timer: asyncio.TimerHandle | None = None

        def give_back() -> None:
            nonlocal held
            if held:
                held = False
                gate.release()

        try:
            now = self._clock()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.held_snapshot_max_seconds
            async with self._held_snapshot() as tx:
                read_at = int((await tx.fetchrow(f"SELECT {REVISION}"))[0])
                after = 0
                while True:
                    p = self.dialect.params()
                    where = self._filter_sql(scope, S.SessionFilter(session_ids=session_ids),
                                             now, p)
                    found = await tx.fetch(
                        f"SELECT {SESSION_COLUMNS}, s.pk FROM sessions s WHERE {where}"
                        f" AND s.pk > {p(after)} ORDER BY s.pk LIMIT {p(INITIAL_PAGE_ROWS)}",
                        p.values)
                    if found or not after:  # the first page, even empty, gives the revision
                        timer = loop.call_later(self.held_snapshot_idle_seconds, give_back)
                        yield [self._session(r, now) for r in found], read_at
                        timer.cancel()
                    if len(found) < INITIAL_PAGE_ROWS:
                        return
                    if not held:
                        raise Unavailable(
                            f"the snapshot was let go after "
                            f"{self.held_snapshot_idle_seconds:g} s without a read")
                    if loop.time() > deadline:
                        raise Unavailable(
                            f"the snapshot was let go after "
                            f"{self.held_snapshot_max_seconds:g} s in all")
                    after = int(found[-1][-1])
        finally:
            if timer is not None:
                timer.cancel()
            give_back()

    # Maintenance.
    async def counter_problems(self) -> list[str]:
        """Session counters that differ from a recount of their messages and usage rows."""
        mismatched, bad_usage, bad_event_at = await self._read_many([
            ("SELECT s.id, s.message_count, s.turn_count, s.tool_call_count, s.last_seq,"
             " coalesce(m.n, 0), coalesce(m.turns, 0), coalesce(m.calls, 0),"
             " coalesce(m.top, 0) FROM sessions s LEFT JOIN"
             " (SELECT session_pk, count(*) n, sum(is_turn) turns, sum(tool_calls) calls,"
             "  max(seq) top FROM messages GROUP BY session_pk) m ON m.session_pk = s.pk"
             " WHERE s.message_count <> coalesce(m.n, 0) OR s.turn_count <> coalesce(m.turns, 0)"
             " OR s.tool_call_count <> coalesce(m.calls, 0) OR s.last_seq < coalesce(m.top, 0)",
             ()),
            ("SELECT s.id FROM sessions s LEFT JOIN (SELECT session_pk, "
             + ", ".join(f"sum({n}) {n}" for n in USAGE_FIELDS)
             + " FROM session_usage GROUP BY session_pk) u ON u.session_pk = s.pk WHERE "
             + " OR ".join(f"s.{n} <> coalesce(u.{n}, 0)" for n in USAGE_FIELDS), ()),
            (f"SELECT id, last_event_at, {LAST_EVENT_AT_VALUE} FROM sessions"
             f" WHERE last_event_at <> {LAST_EVENT_AT_VALUE}", ()),
        ])
        problems = [f"session {r[0]!r}: message counters {tuple(r[1:5])} != recount "
                    f"{tuple(int(v) for v in r[5:9])}" for r in mismatched]
        problems.extend(f"session {r[0]!r}: usage differs from its per-model rows"
                        for r in bad_usage)
        problems.extend(f"session {r[0]!r}: last_event_at {r[1]} != recompute {r[2]}"
                        for r in bad_event_at)
        return problems
