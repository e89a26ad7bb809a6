"""The embedded SQLite store: WAL, one writer thread, read-only aiosqlite readers.

Writes go through :class:`~.sqlite_writer.Writer` (group commit, one revision
per write, change log in the same transaction). Reads run on a small pool of
read-only aiosqlite connections; WAL lets them proceed while the writer
commits. Every statement is parameterised, and every query is filtered by the
caller's :class:`~.interface.Scope` here, in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
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
from .records import COL, MESSAGE_COLUMNS, SESSION_COLUMNS, USAGE_FIELDS
from .revisions import compaction_target
from .search import SearchTerms, fts5_strings, search_terms, spaced_runs
from .sqlite_inline import Busy, InlineReader
from .sqlite_schema import (
    DAY_MICROS,
    MIGRATIONS,
    ROLLUP_KEY,
    ROLLUP_RECOUNT_SQL,
    ROLLUP_SUMS,
    SCHEMA_VERSION,
    USAGE_ROLLUP_KEY,
    USAGE_ROLLUP_RECOUNT_SQL,
    USAGE_SUMS,
    register_search_functions,
)
from .sqlite_writer import WriteContext, Writer

log = logging.getLogger(__name__)

E = event_pb2
S = session_pb2
M = message_pb2

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

UPDATABLE_FIELDS = frozenset(rows.CREATE_FIELDS) | {"labels"}


MAX_USAGE_COUNTER = (1 << 62)
RETURNING_COLUMNS = ", ".join(rows.SESSION_FIELDS)
USAGE_ADD = ", ".join(f"{name} = {name} + ?" for name in USAGE_FIELDS)


class SchemaTooNew(Exception):
    """The database was written by a newer sessiond; it is left untouched."""


def match_sql(terms: SearchTerms) -> tuple[str, list[Any]]:
    """A SELECT of the rowids of the messages matching every word and run (store/search.py):
    words in the word index, each run as a phrase of its characters in the run index."""
    selects, params = [], []
    if terms.words:
        selects.append("SELECT rowid FROM messages_fts WHERE messages_fts MATCH ?")
        params.append(fts5_strings(terms.words))
    if terms.runs:
        selects.append("SELECT rowid FROM messages_runs WHERE messages_runs MATCH ?")
        params.append(fts5_strings(tuple(spaced_runs(run) for run in terms.runs)))
    return " INTERSECT ".join(selects), params


# GetStats sums, in the order of _scan_stats_sql's columns.
STATS_SUMS = 19
STATS_ACTIVE, STATS_ABANDONED = 12, 14


def _stats_from_sums(sums: Sequence[float]) -> stats_service_pb2.Stats:
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


def _rollup_plan(f: S.SessionFilter) -> RollupPlan | None:
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


def _rollup_where(scope: Scope, days: S.SessionFilter, alias: str = "u"
                  ) -> tuple[str, list[Any]]:
    """The WHERE of a rollup read: the caller's scope, owners, datasets, whole days."""
    clause, params = visibility_sql(scope, alias)
    clauses = [clause]
    for column, values in (("owner_id", days.owner_ids), ("dataset_id", days.dataset_ids)):
        if values:
            clauses.append(f"{alias}.{column} IN ({','.join('?' * len(values))})")
            params.extend(values)
    if days.started.HasField("start"):
        clauses.append(f"{alias}.day >= ?")
        params.append(days.started.start.ToMicroseconds() // DAY_MICROS)
    if days.started.HasField("end"):
        clauses.append(f"{alias}.day < ?")
        params.append(days.started.end.ToMicroseconds() // DAY_MICROS)
    return " AND ".join(clauses), params


def visibility_sql(scope: Scope, alias: str = "s") -> tuple[str, list[Any]]:
    """The WHERE fragment that keeps a query inside the caller's scope."""
    clause = f"{alias}.tenant = ?"
    params: list[Any] = [scope.tenant]
    if not scope.sees_all:
        ors = []
        if scope.user_id:
            ors.append(f"{alias}.owner_id = ?")
            params.append(scope.user_id)
        if scope.dataset_ids:
            ors.append(f"{alias}.dataset_id IN ({','.join('?' * len(scope.dataset_ids))})")
            params.extend(sorted(scope.dataset_ids))
        clause += f" AND ({' OR '.join(ors) or '0'})"
    return clause, params


class SQLiteStore:
    """The SessionStore on one SQLite file."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], int],
        abandoned_after_seconds: float = 1800.0,
        durability: str = "full",
        readers: int = 4,
        max_batch: int = 256,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._abandoned_after = int(abandoned_after_seconds * 1_000_000)
        if durability not in ("full", "normal"):
            raise ValueError(f"durability must be 'full' or 'normal', not {durability!r}")
        self._durability = durability
        self._reader_count = max(1, readers)
        self._max_batch = max_batch
        self._readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._all_readers: list[aiosqlite.Connection] = []
        self._writer: Writer | None = None
        self._listeners: list[ChangeListener] = []
        self._revision = 0
        self._compacted_revision = 0
        self.page_token_key = b""
        self.recovered_wal = False
        self._recycling: set[asyncio.Task[None]] = set()
        # Small indexed reads (a session by id, a page of messages) run inline on
        # the event loop: cheaper than a hop to a reader thread (see sqlite_inline).
        self._inline = InlineReader(self.path)

    # Life cycle.
    def _connect_writer(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=5.0)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self._durability.upper()}")
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute("PRAGMA busy_timeout = 5000")
        register_search_functions(conn)
        return conn

    async def open(self) -> None:
        await asyncio.to_thread(self._migrate)
        for _ in range(self._reader_count):
            conn = await aiosqlite.connect(f"file:{self.path}?mode=ro", uri=True)
            await conn.execute("PRAGMA query_only = 1")
            self._all_readers.append(conn)
            self._readers.put_nowait(conn)
        self._inline.open()
        self._writer = Writer(self._connect_writer, self._revision, self._clock,
                              self._max_batch, self._committed)
        await self._writer.start()

    def _migrate(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        wal = Path(f"{self.path}-wal")
        self.recovered_wal = wal.exists() and wal.stat().st_size > 0
        conn = sqlite3.connect(self.path, isolation_level=None)
        register_search_functions(conn)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"{self.path} has schema version {version}, newer than this sessiond "
                    f"understands ({SCHEMA_VERSION}); it was left untouched")
            conn.execute("PRAGMA journal_mode = WAL")
            for target, sql in MIGRATIONS:
                if target <= version:
                    continue
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in _split_sql(sql):
                        conn.execute(statement)
                    if target == 1:
                        conn.execute("INSERT INTO meta (key, value) VALUES ('revision', 0),"
                                     " ('compacted_revision', 0), ('page_token_key', ?)",
                                     (secrets.token_bytes(32),))
                    conn.execute(f"PRAGMA user_version = {target}")
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                log.info("migrated %s to schema version %d", self.path, target)
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            self._revision = int(meta["revision"])
            self._compacted_revision = int(meta["compacted_revision"])
            self.page_token_key = bytes(meta["page_token_key"])
        finally:
            conn.close()

    async def close(self) -> None:
        # Readers first: the last connection to close checkpoints and removes the
        # write-ahead log, and a read-only one cannot, which would leave a WAL that
        # the next start mistakes for the trace of a crash.
        self._inline.close()
        for conn in self._all_readers:
            await conn.close()
        self._all_readers.clear()
        if self._writer is not None:
            await self._writer.close()

    def add_listener(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def _committed(self, revision: int, changes: list[Change]) -> None:
        self._revision = revision
        if changes:
            for listener in self._listeners:
                listener(changes)

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

    async def _write(self, fn: Callable[[WriteContext], Any]) -> Any:
        if self._writer is None:
            raise Unavailable("the store is not open")
        return await self._writer.submit(fn)

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        conn = await self._readers.get()
        try:
            return list(await conn.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise Unavailable(f"database error: {exc}") from exc
        finally:
            self._readers.put_nowait(conn)

    async def _read_small(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """A read of a few indexed rows: inline on the loop, else on a reader thread."""
        try:
            return self._inline.read([(sql, params)])[0]
        except Busy:
            return await self._read(sql, params)
        except sqlite3.Error as exc:
            raise Unavailable(f"database error: {exc}") from exc

    async def _read_many(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[list[Any]]:
        """Several statements in one read transaction: one consistent snapshot."""
        conn = await self._readers.get()
        ended = False
        try:
            await conn.execute("BEGIN")
            try:
                return [list(await conn.execute_fetchall(sql, params))
                        for sql, params in statements]
            finally:
                await conn.execute("COMMIT")
                ended = True
        except sqlite3.Error as exc:
            raise Unavailable(f"database error: {exc}") from exc
        finally:
            if ended:
                self._readers.put_nowait(conn)
            else:
                # Cancelled (or failed) inside the transaction: a reader left in it
                # would fail its next BEGIN and serve a stale snapshot. aiosqlite runs
                # statements in order, so this ROLLBACK follows any pending BEGIN.
                task = asyncio.get_running_loop().create_task(self._recycle(conn))
                self._recycling.add(task)
                task.add_done_callback(self._recycling.discard)

    async def _recycle(self, conn: aiosqlite.Connection) -> None:
        with contextlib.suppress(sqlite3.Error, ValueError):  # ValueError: closed meanwhile
            await conn.execute("ROLLBACK")
        self._readers.put_nowait(conn)

    def _abandoned_before(self, now: int | None = None) -> int:
        return (self._clock() if now is None else now) - self._abandoned_after

    def _session(self, row: Sequence[Any], now: int | None = None) -> S.Session:
        return rows.session_from_row(row, self._abandoned_before(now))

    # Helpers used inside write functions (writer thread).
    def _load(self, ctx: WriteContext, scope: Scope, session_id: str) -> tuple[Any, ...]:
        vis, params = visibility_sql(scope)
        row = ctx.conn.execute(
            f"SELECT {SESSION_COLUMNS} FROM sessions s WHERE {vis} AND s.id = ?",
            (*params, session_id)).fetchone()
        if row is None:
            raise NotFound(f"session {session_id!r} not found")
        return tuple(row)

    def _reload(self, ctx: WriteContext, pk: int) -> S.Session:
        row = ctx.conn.execute(f"SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.pk = ?",
                               (pk,)).fetchone()
        return self._session(row, ctx.now)

    @staticmethod
    def _emit(ctx: WriteContext, event_type: E.EventType.ValueType, session: S.Session,
              messages: Sequence[M.Message] = (), truncated: bool = False,
              removed_count: int = 0) -> None:
        ctx.emit(event_type, session.id, session.tenant, session.owner_id, session.dataset_id,
                 session=session, messages=messages, messages_truncated=truncated,
                 removed_count=removed_count)

    def _bump(self, ctx: WriteContext, row: Sequence[Any], extra_sql: str = "",
              extra_params: Sequence[Any] = (), *, revive: bool = True
              ) -> tuple[S.Session, bool]:
        """Bump activity and revision, revive an UNKNOWN session; the session after."""
        revived: bool = revive and row[COL["status"]] == rows.UNKNOWN
        updated = ctx.conn.execute(
            f"UPDATE sessions SET last_activity_at = ?, updated_at = ?, revision = ?,"
            f" status = ?{extra_sql} WHERE pk = ? RETURNING {RETURNING_COLUMNS}",
            (ctx.now, ctx.now, ctx.take_revision(),
             rows.ACTIVE if revived else row[COL["status"]], *extra_params, row[0])).fetchone()
        return self._session(updated, ctx.now), revived

    # Sessions.
    def _insert_session(self, ctx: WriteContext, scope: Scope, session: S.Session,
                        session_id: str, parent_id: str = "", fork_seq: int = 0) -> int:
        started = session.started_at.ToMicroseconds() if session.HasField("started_at") else ctx.now
        cur = ctx.conn.execute(
            "INSERT INTO sessions (tenant, id, kind, channel, room_id, sender_id, agent, model,"
            " display_name, goal, owner_id, dataset_id, labels, runtime_instance, parent_id,"
            " fork_seq, status, runtime_state, started_at, last_activity_at, updated_at,"
            " budget_micros, revision) VALUES"
            " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (scope.tenant, session_id, session.kind or S.SESSION_KIND_INTERACTIVE,
             session.channel, session.room_id, session.sender_id, session.agent, session.model,
             session.display_name, session.goal, session.owner_id, session.dataset_id,
             rows.labels_json(session.labels), session.runtime_instance, parent_id, fork_seq,
             rows.ACTIVE, S.RUNTIME_STATE_IDLE, started, max(started, ctx.now), ctx.now,
             session.budget_micros, ctx.take_revision()))
        assert cur.lastrowid is not None
        return cur.lastrowid

    async def create_session(self, scope: Scope, session: S.Session
                             ) -> tuple[S.Session, bool, int]:
        session_id = session.id or str(uuid.uuid4())

        def write(ctx: WriteContext) -> tuple[S.Session, bool, int]:
            existing = ctx.conn.execute(
                f"SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.tenant = ? AND s.id = ?",
                (scope.tenant, session_id)).fetchone()
            if existing is not None:
                found = self._session(existing, ctx.now)
                if scope.can_see(found.tenant, found.owner_id, found.dataset_id) and \
                        rows.same_content(found, session):
                    return found, False, 0
                raise AlreadyExists(f"session {session_id!r} already exists with other content")
            pk = self._insert_session(ctx, scope, session, session_id)
            created = self._reload(ctx, pk)
            self._emit(ctx, E.EVENT_TYPE_SESSION_CREATED, created)
            return created, True, ctx.write_revision

        result: tuple[S.Session, bool, int] = await self._write(write)
        return result

    async def get_session(self, scope: Scope, session_id: str) -> tuple[S.Session, int]:
        vis, params = visibility_sql(scope)
        found = await self._read_small(
            f"SELECT {SESSION_COLUMNS}, (SELECT value FROM meta WHERE key = 'revision')"
            f" FROM sessions s WHERE {vis} AND s.id = ?", (*params, session_id))
        if not found:
            raise NotFound(f"session {session_id!r} not found")
        return self._session(found[0]), int(found[0][-1])

    async def update_session(self, scope: Scope, session: S.Session, paths: Sequence[str],
                             etag: str) -> tuple[S.Session, int]:
        def write(ctx: WriteContext) -> tuple[S.Session, int]:
            row = self._load(ctx, scope, session.id)
            current = self._session(row, ctx.now)
            if etag and etag != current.etag:
                raise Aborted(f"etag {etag!r} is stale; the session is at {current.etag!r}")
            sets: list[str] = []
            params: list[Any] = []
            for path in sorted(set(paths)):
                if path == "labels":
                    value: Any = rows.labels_json(session.labels)
                    if value == row[COL["labels"]]:
                        continue
                else:
                    value = getattr(session, path)
                    if path == "kind":
                        value = value or S.SESSION_KIND_INTERACTIVE
                    if value == row[COL[path]]:
                        continue
                sets.append(f"{path} = ?")
                params.append(value)
            if not sets:
                return current, 0
            ctx.conn.execute(
                f"UPDATE sessions SET {', '.join(sets)}, updated_at = ?, revision = ?"
                f" WHERE pk = ?", (*params, ctx.now, ctx.take_revision(), row[0]))
            updated = self._reload(ctx, row[0])
            self._emit(ctx, E.EVENT_TYPE_SESSION_UPDATED, updated)
            return updated, ctx.write_revision

        result: tuple[S.Session, int] = await self._write(write)
        return result

    def _delete_rows(self, ctx: WriteContext, pk: int) -> int:
        removed = ctx.conn.execute("DELETE FROM messages WHERE session_pk = ?", (pk,)).rowcount
        ctx.conn.execute("DELETE FROM session_usage WHERE session_pk = ?", (pk,))
        ctx.conn.execute("DELETE FROM usage_requests WHERE session_pk = ?", (pk,))
        ctx.conn.execute("DELETE FROM sessions WHERE pk = ?", (pk,))
        return int(removed)

    async def delete_session(self, scope: Scope, session_id: str, etag: str) -> tuple[int, int]:
        def write(ctx: WriteContext) -> tuple[int, int]:
            row = self._load(ctx, scope, session_id)
            if etag and etag != str(row[COL["revision"]]):
                raise Aborted(f"etag {etag!r} is stale")
            removed = self._delete_rows(ctx, row[0])
            ctx.emit(E.EVENT_TYPE_SESSION_DELETED, session_id, row[1], row[COL["owner_id"]],
                     row[COL["dataset_id"]])
            return removed, ctx.write_revision

        result: tuple[int, int] = await self._write(write)
        return result

    def _filter_sql(self, scope: Scope, f: S.SessionFilter, now: int
                    ) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        vis, params = visibility_sql(scope)
        clauses.append(vis)

        def any_of(column: str, values: Sequence[Any]) -> None:
            if values:
                clauses.append(f"s.{column} IN ({','.join('?' * len(values))})")
                params.extend(values)

        any_of("id", list(f.session_ids))
        if f.statuses:
            cutoff = self._abandoned_before(now)
            ors = []
            for status in f.statuses:
                if status == S.SESSION_STATUS_ACTIVE:
                    ors.append("(s.status = ? AND s.last_activity_at >= ?)")
                    params.extend([rows.ACTIVE, cutoff])
                elif status == S.SESSION_STATUS_ABANDONED:
                    ors.append("(s.status = ? AND s.last_activity_at < ?)")
                    params.extend([rows.ACTIVE, cutoff])
                else:
                    ors.append("s.status = ?")
                    params.append(status)
            clauses.append(f"({' OR '.join(ors)})")
        any_of("kind", list(f.kinds))
        if f.channels:
            ors = []
            for channel in f.channels:
                if channel.endswith("."):
                    ors.append("(s.channel = ? OR substr(s.channel, 1, ?) = ?)")
                    params.extend([channel[:-1], len(channel), channel])
                else:
                    ors.append("s.channel = ?")
                    params.append(channel)
            clauses.append(f"({' OR '.join(ors)})")
        any_of("agent", list(f.agents))
        any_of("model", list(f.models))
        any_of("owner_id", list(f.owner_ids))
        any_of("dataset_id", list(f.dataset_ids))
        any_of("runtime_instance", list(f.runtime_instances))
        for key, value in sorted(f.labels.items()):
            clauses.append("EXISTS (SELECT 1 FROM json_each(s.labels) j"
                           " WHERE j.key = ? AND j.value = ?)")
            params.extend([key, value])
        for column, rng in (("started_at", f.started), ("last_activity_at", f.last_activity)):
            if rng.HasField("start"):
                clauses.append(f"s.{column} >= ?")
                params.append(rng.start.ToMicroseconds())
            if rng.HasField("end"):
                clauses.append(f"s.{column} < ?")
                params.append(rng.end.ToMicroseconds())
        if f.running_longer_than_seconds > 0:
            clauses.append("s.runtime_state = ? AND s.status IN (?, ?) AND s.turn_started_at > 0"
                           " AND s.turn_started_at < ?")
            params.extend([S.RUNTIME_STATE_RUNNING, rows.ACTIVE, rows.UNKNOWN,
                           now - f.running_longer_than_seconds * 1_000_000])
        if f.text_query:
            terms = search_terms(f.text_query)
            if not terms:
                clauses.append("0")
            else:
                rowids, match_params = match_sql(terms)
                clauses.append("s.pk IN (SELECT m.session_pk FROM messages m"
                               f" WHERE m.rowid IN ({rowids}))")
                params.extend(match_params)
        if f.parent_id:
            clauses.append("s.parent_id = ?")
            params.append(f.parent_id)
        return " AND ".join(clauses), params

    def list_sessions_sql(
        self, scope: Scope, f: S.SessionFilter,
        order_by: session_service_pb2.SessionOrderField.ValueType, ascending: bool,
        page_size: int, cursor: tuple[int, str] | None, now: int,
    ) -> tuple[str, list[Any]]:
        """The page query; public so the index test can EXPLAIN it."""
        column = ORDER_COLUMNS[order_by]
        where, params = self._filter_sql(scope, f, now)
        direction = "ASC" if ascending else "DESC"
        if cursor is not None:
            where += f" AND (s.{column}, s.id) {'>' if ascending else '<'} (?, ?)"
            params.extend(cursor)
        sql = (f"SELECT {SESSION_COLUMNS} FROM sessions s INDEXED BY {ORDER_INDEXES[column]}"
               f" WHERE {where} ORDER BY s.{column} {direction}, s.id {direction} LIMIT ?")
        params.append(page_size + 1)
        return sql, params

    async def list_sessions(
        self, scope: Scope, filter: S.SessionFilter,
        order_by: session_service_pb2.SessionOrderField.ValueType, ascending: bool,
        page_size: int, cursor: tuple[int, str] | None,
    ) -> SessionPage:
        now = self._clock()
        page_sql, page_params = self.list_sessions_sql(scope, filter, order_by, ascending,
                                                       page_size, cursor, now)
        page, rev, *counts = await self._read_many([
            (page_sql, page_params),
            ("SELECT value FROM meta WHERE key = 'revision'", ()),
            *self._count_sql(scope, filter, now),
        ])
        column = COL[ORDER_COLUMNS[order_by]]
        next_cursor = None
        if len(page) > page_size:
            page = page[:page_size]
            last = page[-1]
            next_cursor = (int(last[column]), str(last[2]))
        return SessionPage([self._session(r, now) for r in page], next_cursor,
                           sum(int(found[0][0]) for found in counts), int(rev[0][0]))

    def _row_by_row(self, scope: Scope, filter: S.SessionFilter, plan: RollupPlan | None,
                    now: int) -> list[tuple[str, list[Any]]]:
        """WHERE clauses of the sessions an aggregate sums one by one: all that
        match ``filter`` without a plan, else the window's partial days."""
        return [self._filter_sql(scope, part, now)
                for part in (plan.scanned if plan else [filter])]

    def _count_sql(self, scope: Scope, filter: S.SessionFilter, now: int
                   ) -> list[tuple[str, Sequence[Any]]]:
        """Statements whose answers add up to the number of sessions matching
        ``filter``: whole days from the rollup where it serves (as GetStats)."""
        plan = _rollup_plan(filter)
        statements: list[tuple[str, Sequence[Any]]] = [
            (f"SELECT count(*) FROM sessions s WHERE {where}", params)
            for where, params in self._row_by_row(scope, filter, plan, now)]
        if plan:
            where, params = _rollup_where(scope, plan.whole_days, "r")
            statements.append(
                (f"SELECT coalesce(sum(r.session_count), 0) FROM session_rollup r"
                 f" WHERE {where}", params))
        return statements

    async def touch_session(self, scope: Scope, session: S.Session
                            ) -> tuple[S.Session, bool, int]:
        def write(ctx: WriteContext) -> tuple[S.Session, bool, int]:
            row = ctx.conn.execute(
                f"SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.tenant = ? AND s.id = ?",
                (scope.tenant, session.id)).fetchone()
            if row is None:
                pk = self._insert_session(ctx, scope, session, session.id)
                created = self._reload(ctx, pk)
                self._emit(ctx, E.EVENT_TYPE_SESSION_CREATED, created)
                return created, True, ctx.write_revision
            found = self._session(row, ctx.now)
            if not scope.can_see(found.tenant, found.owner_id, found.dataset_id):
                raise AlreadyExists(f"session {session.id!r} already exists")
            rows.require_writable(row)
            touched, revived = self._bump(ctx, row)
            self._emit(ctx, E.EVENT_TYPE_STATUS_CHANGED if revived
                       else E.EVENT_TYPE_SESSION_UPDATED, touched)
            return touched, False, ctx.write_revision

        result: tuple[S.Session, bool, int] = await self._write(write)
        return result

    async def end_session(self, scope: Scope, session_id: str,
                          status: S.SessionStatus.ValueType, reason: str,
                          ended_at_micros: int) -> tuple[S.Session, int]:
        def write(ctx: WriteContext) -> tuple[S.Session, int]:
            row = self._load(ctx, scope, session_id)
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
            ctx.conn.execute(
                "UPDATE sessions SET status = ?, end_reason = ?, ended_at = ?, updated_at = ?,"
                " revision = ?, runtime_state = CASE WHEN runtime_state = ? THEN ? ELSE"
                " runtime_state END WHERE pk = ?",
                (status, reason, ended, ctx.now, ctx.take_revision(), S.RUNTIME_STATE_RUNNING,
                 S.RUNTIME_STATE_IDLE, row[0]))
            session = self._reload(ctx, row[0])
            self._emit(ctx, E.EVENT_TYPE_SESSION_ENDED, session)
            return session, ctx.write_revision

        result: tuple[S.Session, int] = await self._write(write)
        return result

    async def set_runtime_state(self, scope: Scope, session_id: str,
                                state: S.RuntimeState.ValueType, turn_id: str,
                                turn_started_at_micros: int, runtime_instance: str
                                ) -> tuple[S.Session, int]:
        def write(ctx: WriteContext) -> tuple[S.Session, int]:
            row = self._load(ctx, scope, session_id)
            rows.require_writable(row)
            if state == S.RUNTIME_STATE_IDLE:
                turn, started = "", 0
            elif state == S.RUNTIME_STATE_RUNNING:
                turn, started = turn_id, turn_started_at_micros or ctx.now
            else:
                turn = turn_id or row[COL["current_turn_id"]]
                started = turn_started_at_micros or row[COL["turn_started_at"]]
            instance = runtime_instance or row[COL["runtime_instance"]]
            session, _ = self._bump(ctx, row, ", runtime_state = ?, current_turn_id = ?,"
                                    " turn_started_at = ?, runtime_instance = ?",
                                    (state, turn, started, instance))
            self._emit(ctx, E.EVENT_TYPE_RUNTIME_STATE_CHANGED, session)
            return session, ctx.write_revision

        result: tuple[S.Session, int] = await self._write(write)
        return result

    async def fork_session(self, scope: Scope, source_id: str, up_to_seq: int, new_id: str,
                           display_name: str) -> tuple[S.Session, bool, int]:
        new_session_id = new_id or str(uuid.uuid4())

        def write(ctx: WriteContext) -> tuple[S.Session, bool, int]:
            row = self._load(ctx, scope, source_id)
            last_seq = row[COL["last_seq"]]
            if up_to_seq > last_seq:
                raise InvalidArgument("up_to_seq", f"up_to_seq {up_to_seq} is beyond the "
                                      f"source's last_seq {last_seq}")
            upto = up_to_seq or last_seq
            source = self._session(row, ctx.now)
            existing = ctx.conn.execute(
                f"SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.tenant = ? AND s.id = ?",
                (scope.tenant, new_session_id)).fetchone()
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
            pk = self._insert_session(ctx, scope, template, new_session_id, source_id, upto)
            ctx.conn.execute(
                "INSERT INTO messages (session_pk, seq, message_id, role, content, is_turn,"
                " tool_calls, created_at, updated_at, body)"
                " SELECT ?, row_number() OVER (ORDER BY seq), message_id, role, content,"
                " is_turn, tool_calls, created_at, updated_at, body FROM messages"
                " WHERE session_pk = ? AND seq <= ? ORDER BY seq", (pk, row[0], upto))
            ctx.conn.execute(
                "UPDATE sessions SET (message_count, turn_count, tool_call_count, last_seq) ="
                " (SELECT count(*), coalesce(sum(is_turn), 0), coalesce(sum(tool_calls), 0),"
                " coalesce(max(seq), 0) FROM messages WHERE session_pk = ?) WHERE pk = ?",
                (pk, pk))
            forked = self._reload(ctx, pk)
            self._emit(ctx, E.EVENT_TYPE_SESSION_CREATED, forked)
            return forked, True, ctx.write_revision

        result: tuple[S.Session, bool, int] = await self._write(write)
        return result

    async def reconcile_sessions(self, scope: Scope, runtime_instance: str,
                                 keep_ids: Sequence[str], reason: str) -> tuple[list[str], int]:
        keep = set(keep_ids)

        def write(ctx: WriteContext) -> tuple[list[str], int]:
            vis, params = visibility_sql(scope)
            found = ctx.conn.execute(
                f"SELECT s.pk, s.id FROM sessions s INDEXED BY sessions_by_runtime"
                f" WHERE {vis} AND s.runtime_instance = ? AND s.status = ? ORDER BY s.id",
                (*params, runtime_instance, rows.ACTIVE)).fetchall()
            marked: list[str] = []
            for pk, sid in found:
                if sid in keep:
                    continue
                ctx.conn.execute(
                    "UPDATE sessions SET status = ?, end_reason = ?, updated_at = ?,"
                    " revision = ? WHERE pk = ?",
                    (rows.UNKNOWN, reason or "runtime restarted", ctx.now,
                     ctx.take_revision(), pk))
                self._emit(ctx, E.EVENT_TYPE_STATUS_CHANGED, self._reload(ctx, pk))
                marked.append(sid)
            return marked, ctx.write_revision

        result: tuple[list[str], int] = await self._write(write)
        return result

    async def purge_sessions(self, scope: Scope, last_activity_before_micros: int,
                             keep_newest: int, statuses: Sequence[S.SessionStatus.ValueType],
                             dry_run: bool, limit: int) -> tuple[int, bool, int]:
        def write(ctx: WriteContext) -> tuple[int, bool, int]:
            f = S.SessionFilter(statuses=statuses)
            where, params = self._filter_sql(scope, f, ctx.now)
            victims: dict[int, tuple[Any, ...]] = {}
            if last_activity_before_micros:
                for r in ctx.conn.execute(
                        f"SELECT s.pk, s.id, s.tenant, s.owner_id, s.dataset_id FROM sessions s"
                        f" INDEXED BY sessions_by_last_activity WHERE {where}"
                        f" AND s.last_activity_at < ? ORDER BY s.last_activity_at LIMIT ?",
                        (*params, last_activity_before_micros, limit + 1)):
                    victims[r[0]] = tuple(r)
            if keep_newest > 0:
                for r in ctx.conn.execute(
                        f"SELECT s.pk, s.id, s.tenant, s.owner_id, s.dataset_id FROM sessions s"
                        f" INDEXED BY sessions_by_last_activity WHERE {where}"
                        f" ORDER BY s.last_activity_at DESC, s.id DESC LIMIT ? OFFSET ?",
                        (*params, limit + 1, keep_newest)):
                    victims[r[0]] = tuple(r)
            chosen = list(victims.values())
            has_more = len(chosen) > limit
            chosen = chosen[:limit]
            if dry_run or not chosen:
                return len(chosen), has_more, 0
            for pk, sid, tenant, owner, dataset in chosen:
                self._delete_rows(ctx, pk)
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

        def write(ctx: WriteContext) -> MessagesResult:
            row = self._load(ctx, scope, session_id)
            rows.require_writable(row)
            pk, last_seq = row[0], row[COL["last_seq"]]
            if expected_last_seq is not None and expected_last_seq != last_seq:
                raise Aborted(f"expected last_seq {expected_last_seq}, the session is at "
                              f"{last_seq}", reason="LAST_SEQ_MISMATCH")
            out: list[M.Message | None] = []
            new_rows: list[tuple[Any, ...]] = []
            turns = tool_calls = 0
            seen_ids: set[str] = set()
            for i, (message, body, turn, calls) in enumerate(prepared):
                if message.id:
                    old = ctx.conn.execute(
                        f"SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.session_pk = ?"
                        f" AND m.message_id = ?", (pk, message.id)).fetchone()
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
                new_rows.append((pk, last_seq, message.id or None, message.role,
                                 message.content, int(turn), calls, ctx.now, ctx.now, body))
                turns += turn
                tool_calls += calls
                out.append(None)
            if not new_rows:
                return MessagesResult([m for m in out if m is not None],
                                      self._session(row, ctx.now), 0)
            ctx.conn.executemany(
                "INSERT INTO messages (session_pk, seq, message_id, role, content, is_turn,"
                " tool_calls, created_at, updated_at, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                new_rows)
            session, revived = self._bump(
                ctx, row, ", message_count = message_count + ?, turn_count = turn_count + ?,"
                " tool_call_count = tool_call_count + ?, last_seq = ?",
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
        vis, params = visibility_sql(scope)
        found = await self._read_small(
            f"SELECT s.pk, (SELECT value FROM meta WHERE key = 'revision') FROM sessions s"
            f" WHERE {vis} AND s.id = ?", (*params, session_id))
        if not found:
            raise NotFound(f"session {session_id!r} not found")
        return int(found[0][0]), int(found[0][1])

    async def list_messages(self, scope: Scope, session_id: str,
                            query: MessageQuery) -> MessagePage:
        pk, revision = await self._session_pk(scope, session_id)
        truncated = False
        next_cursor: int | None = None
        if query.last_n:
            found = await self._read_small(
                f"SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.session_pk = ?"
                f" ORDER BY m.seq DESC LIMIT ?", (pk, query.last_n))
            found.reverse()
        elif query.last_turns:
            start = await self._read_small(
                "SELECT m.seq FROM messages m INDEXED BY messages_user_turns"
                " WHERE m.session_pk = ? AND m.role = 2 ORDER BY m.seq DESC LIMIT 1 OFFSET ?",
                (pk, query.last_turns - 1))
            first_seq = int(start[0][0]) if start else 0
            if first_seq:
                earlier = await self._read_small(
                    "SELECT 1 FROM messages m INDEXED BY messages_user_turns"
                    " WHERE m.session_pk = ? AND m.role = 2 AND m.seq < ? LIMIT 1",
                    (pk, first_seq))
                if not earlier:
                    first_seq = 0  # what precedes the first user message is its turn
            found = await self._read_small(
                f"SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.session_pk = ?"
                f" AND m.seq >= ? ORDER BY m.seq DESC LIMIT ?",
                (pk, first_seq, query.max_messages + 1))
            if len(found) > query.max_messages:
                truncated = True
                found = found[:query.max_messages]
            found.reverse()
        else:
            clauses = ["m.session_pk = ?", "m.seq > ?"]
            params: list[Any] = [pk, query.after_seq]
            if query.after_time_micros:
                clauses.append("m.created_at >= ?")
                params.append(query.after_time_micros)
            if query.cursor_seq is not None:
                clauses.append("m.seq < ?" if query.descending else "m.seq > ?")
                params.append(query.cursor_seq)
            direction = "DESC" if query.descending else "ASC"
            found = await self._read_small(
                f"SELECT {MESSAGE_COLUMNS} FROM messages m WHERE {' AND '.join(clauses)}"
                f" ORDER BY m.seq {direction} LIMIT ?", (*params, query.page_size + 1))
            if len(found) > query.page_size:
                found = found[:query.page_size]
                next_cursor = int(found[-1][2])
        return MessagePage([rows.message_from_row(r, session_id) for r in found],
                           next_cursor, truncated, revision)

    def _last_message(self, ctx: WriteContext, row: Sequence[Any], session_id: str,
                      expected_seq: int | None) -> tuple[Any, ...]:
        last = ctx.conn.execute(
            f"SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.session_pk = ?"
            f" ORDER BY m.seq DESC LIMIT 1", (row[0],)).fetchone()
        if last is None:
            raise FailedPrecondition(f"session {session_id!r} has no messages",
                                     reason="SESSION_EMPTY")
        if expected_seq is not None and expected_seq != last[2]:
            raise Aborted(f"expected the last message to be seq {expected_seq}, it is "
                          f"{last[2]}", reason="LAST_SEQ_MISMATCH")
        return tuple(last)

    async def pop_message(self, scope: Scope, session_id: str,
                          expected_seq: int | None) -> MessagesResult:
        def write(ctx: WriteContext) -> MessagesResult:
            row = self._load(ctx, scope, session_id)
            rows.require_writable(row)
            last = self._last_message(ctx, row, session_id, expected_seq)
            message = rows.message_from_row(last, session_id)
            ctx.conn.execute("DELETE FROM messages WHERE rowid = ?", (last[0],))
            session, _ = self._bump(
                ctx, row, ", message_count = message_count - 1, turn_count = turn_count - ?,"
                " tool_call_count = tool_call_count - ?", (last[6], last[7]))
            carried, truncated = rows.event_messages([message])
            self._emit(ctx, E.EVENT_TYPE_MESSAGE_POPPED, session, carried, truncated, 1)
            return MessagesResult([message], session, ctx.write_revision)

        result: MessagesResult = await self._write(write)
        return result

    async def update_last_message(self, scope: Scope, session_id: str, message: M.Message,
                                  paths: Sequence[str], expected_seq: int | None
                                  ) -> MessagesResult:
        def write(ctx: WriteContext) -> MessagesResult:
            row = self._load(ctx, scope, session_id)
            rows.require_writable(row)
            last = self._last_message(ctx, row, session_id, expected_seq)
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
            ctx.conn.execute(
                "UPDATE messages SET content = ?, is_turn = ?, tool_calls = ?, updated_at = ?,"
                " body = ? WHERE rowid = ?",
                (updated.content, turn, calls, ctx.now, rows.message_body(updated), last[0]))
            session, _ = self._bump(ctx, row, ", turn_count = turn_count + ?,"
                                    " tool_call_count = tool_call_count + ?",
                                    (turn - last[6], calls - last[7]))
            updated.updated_at.FromMicroseconds(ctx.now)
            carried, truncated = rows.event_messages([updated])
            self._emit(ctx, E.EVENT_TYPE_MESSAGE_UPDATED, session, carried, truncated)
            return MessagesResult([updated], session, ctx.write_revision)

        result: MessagesResult = await self._write(write)
        return result

    async def clear_messages(self, scope: Scope, session_id: str
                             ) -> tuple[int, S.Session, int]:
        def write(ctx: WriteContext) -> tuple[int, S.Session, int]:
            row = self._load(ctx, scope, session_id)
            rows.require_writable(row)
            if not row[COL["message_count"]]:
                return 0, self._session(row, ctx.now), 0
            removed = ctx.conn.execute("DELETE FROM messages WHERE session_pk = ?",
                                       (row[0],)).rowcount
            session, _ = self._bump(
                ctx, row, ", message_count = 0, turn_count = 0, tool_call_count = 0")
            self._emit(ctx, E.EVENT_TYPE_MESSAGES_CLEARED, session, removed_count=removed)
            return int(removed), session, ctx.write_revision

        result: tuple[int, S.Session, int] = await self._write(write)
        return result

    async def search_messages(self, scope: Scope, query: str, session_ids: Sequence[str],
                              page_size: int, cursor: int | None
                              ) -> tuple[list[M.Message], int | None, int]:
        terms = search_terms(query)
        revision = self._revision
        if not terms:
            return [], None, revision
        vis, params = visibility_sql(scope)
        rowids, match_params = match_sql(terms)
        clauses = [vis, f"m.rowid IN ({rowids})"]
        params.extend(match_params)
        if session_ids:
            clauses.append(f"s.id IN ({','.join('?' * len(session_ids))})")
            params.extend(session_ids)
        if cursor is not None:
            clauses.append("m.rowid < ?")
            params.append(cursor)
        found = await self._read(
            f"SELECT {MESSAGE_COLUMNS}, s.id FROM messages m"
            f" JOIN sessions s ON s.pk = m.session_pk WHERE {' AND '.join(clauses)}"
            f" ORDER BY m.rowid DESC LIMIT ?", (*params, page_size + 1))
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

        def write(ctx: WriteContext) -> UsageResult:
            row = self._load(ctx, scope, session_id)
            pk = row[0]
            if request_id:
                seen = ctx.conn.execute(
                    "SELECT response FROM usage_requests WHERE session_pk = ? AND request_id = ?",
                    (pk, request_id)).fetchone()
                if seen is not None:
                    first = stats_service_pb2.RecordUsageResponse.FromString(seen[0])
                    return UsageResult(first.session_usage, first.model_usage,
                                       first.budget_micros, True, first.revision)
            start = COL["prompt_tokens"]
            for name, have, add in zip(USAGE_FIELDS, row[start:start + 9], delta, strict=True):
                if have + add > MAX_USAGE_COUNTER:
                    # Past 2^63 SQLite would silently turn the counter into a float.
                    raise FailedPrecondition(
                        f"session {session_id!r}: usage.{name} would exceed "
                        f"{MAX_USAGE_COUNTER}", reason="USAGE_OVERFLOW")
            ctx.conn.execute(
                "INSERT INTO session_usage (session_pk, model) VALUES (?, ?)"
                " ON CONFLICT (session_pk, model) DO NOTHING", (pk, model))
            ctx.conn.execute(f"UPDATE session_usage SET {USAGE_ADD}"
                             f" WHERE session_pk = ? AND model = ?", (*delta, pk, model))
            session, _ = self._bump(ctx, row, ", " + USAGE_ADD, delta, revive=False)
            model_row = ctx.conn.execute(
                f"SELECT {', '.join(USAGE_FIELDS)} FROM session_usage"
                f" WHERE session_pk = ? AND model = ?", (pk, model)).fetchone()
            self._emit(ctx, E.EVENT_TYPE_USAGE_RECORDED, session)
            result = UsageResult(session.usage, rows.usage_from(model_row),
                                 session.budget_micros, False, ctx.write_revision)
            if request_id:
                ctx.conn.execute(
                    "INSERT INTO usage_requests (session_pk, request_id, response)"
                    " VALUES (?, ?, ?)",
                    (pk, request_id, stats_service_pb2.RecordUsageResponse(
                        session_usage=result.session_usage, model_usage=result.model_usage,
                        budget_micros=result.budget_micros, revision=result.revision,
                    ).SerializeToString()))
            return result

        result: UsageResult = await self._write(write)
        return result

    async def get_stats(self, scope: Scope, filter: S.SessionFilter
                        ) -> tuple[stats_service_pb2.Stats, int]:
        now = self._clock()
        cutoff = self._abandoned_before(now)
        plan = _rollup_plan(filter)
        statements: list[tuple[str, Sequence[Any]]] = [
            ("SELECT value FROM meta WHERE key = 'revision'", ())]
        statements.extend(self._scan_stats_sql(where, params, cutoff)
                          for where, params in self._row_by_row(scope, filter, plan, now))
        if plan:
            statements.extend(self._rollup_stats_sql(scope, plan.whole_days, cutoff, now))
        found = await self._read_many(statements)
        sums = [0.0] * STATS_SUMS
        for part in found[1:-1] if plan else found[1:]:
            for i, value in enumerate(part[0]):
                sums[i] += value or 0
        if plan:
            # Active sessions in the rollup minus the ones still active (not
            # abandoned), read from the status index: the abandoned ones.
            active_live = int(found[-1][0][0])
            sums[STATS_ABANDONED] += sums[STATS_ACTIVE] - active_live
            sums[STATS_ACTIVE] = active_live
        return _stats_from_sums(sums), int(found[0][0][0])

    def _scan_stats_sql(self, where: str, params: list[Any], cutoff: int
                        ) -> tuple[str, Sequence[Any]]:
        """The STATS_SUMS aggregates of the sessions matching ``where``, row by row."""
        sums = ", ".join(f"total(s.{name})" for name in USAGE_FIELDS)
        return (
            f"SELECT count(*), {sums}, total(s.message_count),"
            f" total(CASE WHEN s.ended_at > 0 THEN s.ended_at ELSE s.last_activity_at"
            f" END - s.started_at),"
            f" total(s.status = 1 AND s.last_activity_at >= ?),"
            f" total(s.status IN (1, 5) AND s.runtime_state = 2),"
            f" total(s.status = 1 AND s.last_activity_at < ?),"
            f" total(s.status = 2), total(s.status = 3),"
            f" total(s.status = 4), total(s.status = 5)"
            f" FROM sessions s WHERE {where}", (cutoff, cutoff, *params))

    def _rollup_stats_sql(self, scope: Scope, days: S.SessionFilter, cutoff: int, now: int
                          ) -> list[tuple[str, Sequence[Any]]]:
        """The STATS_SUMS of whole days from the rollup (every ACTIVE session
        counted as active), then the count of sessions still active."""
        where, params = _rollup_where(scope, days, "r")
        sums = ", ".join(f"total(r.{name})" for name in USAGE_FIELDS)
        # Column for column as _scan_stats_sql; abandoned (0 here) is
        # split off the active count by the caller.
        count_of = "total(CASE WHEN r.status = {} THEN r.session_count END)".format
        rollup = (
            f"SELECT total(r.session_count), {sums}, total(r.message_count),"
            f" total(r.duration_micros), {count_of(1)}, total(r.running_count), 0,"
            f" {count_of(2)}, {count_of(3)}, {count_of(4)}, {count_of(5)}"
            f" FROM session_rollup r WHERE {where}", params)
        where, live_params = self._filter_sql(scope, days, now)
        live = (f"SELECT count(*) FROM sessions s INDEXED BY sessions_by_status"
                f" WHERE s.status = 1 AND s.last_activity_at >= ? AND {where}",
                (cutoff, *live_params))
        return [rollup, live]

    async def cost_by_model(self, scope: Scope, filter: S.SessionFilter
                            ) -> tuple[list[stats_service_pb2.ModelCost], int]:
        now = self._clock()
        plan = _rollup_plan(filter)
        sums = ", ".join(f"total(u.{name})" for name in USAGE_FIELDS)
        statements: list[tuple[str, Sequence[Any]]] = [
            ("SELECT value FROM meta WHERE key = 'revision'", ())]
        statements.extend((f"SELECT u.model, count(*), {sums} FROM session_usage u"
                           f" JOIN sessions s ON s.pk = u.session_pk WHERE {where}"
                           f" GROUP BY u.model", params)
                          for where, params in self._row_by_row(scope, filter, plan, now))
        if plan:
            where, params = _rollup_where(scope, plan.whole_days)
            statements.append((f"SELECT u.model, total(u.session_count), {sums}"
                               f" FROM usage_rollup u WHERE {where} GROUP BY u.model", params))
        found = await self._read_many(statements)
        by_model: dict[str, list[float]] = {}
        for part in found[1:]:
            for model, *values in part:
                into = by_model.setdefault(model, [0.0] * len(values))
                for i, value in enumerate(values):
                    into[i] += value
        costs = [stats_service_pb2.ModelCost(
            model=model, session_count=int(values[0]),
            usage=rows.usage_from([rows.int64(v) for v in values[1:]]))
            for model, values in by_model.items()]
        costs.sort(key=lambda c: (-c.usage.cost_micros, c.model))
        return costs, int(found[0][0][0])

    # Change log.
    async def read_changes(self, from_revision: int, limit: int) -> list[Change]:
        if from_revision <= self._compacted_revision:
            raise Compacted(self._compacted_revision)
        found, compacted = await self._read_many([
            ("SELECT revision, tenant, owner_id, dataset_id, event FROM changes"
             " WHERE revision >= ? AND revision < (SELECT min(revision) FROM changes"
             " WHERE revision >= ?) + ? ORDER BY revision, idx", (from_revision, from_revision,
                                                                 max(1, limit))),
            ("SELECT value FROM meta WHERE key = 'compacted_revision'", ()),
        ])
        if from_revision <= int(compacted[0][0]):
            raise Compacted(int(compacted[0][0]))
        return [Change(r[0], r[1], r[2], r[3], E.SessionEvent.FromString(r[4])) for r in found]

    async def initial_state(self, scope: Scope, session_ids: Sequence[str]
                            ) -> tuple[list[S.Session], int]:
        now = self._clock()
        where, params = self._filter_sql(scope, S.SessionFilter(session_ids=session_ids), now)
        found, rev = await self._read_many([
            (f"SELECT {SESSION_COLUMNS} FROM sessions s WHERE {where} ORDER BY s.pk", params),
            ("SELECT value FROM meta WHERE key = 'revision'", ()),
        ])
        return [self._session(r, now) for r in found], int(rev[0][0])

    async def compact(self, keep_revisions: int, max_age_seconds: float) -> int:
        def write(ctx: WriteContext) -> int:
            aged: int | None = None
            if max_age_seconds > 0:
                cutoff = ctx.now - int(max_age_seconds * 1_000_000)
                aged = int(ctx.conn.execute(
                    "SELECT coalesce(max(revision), 0) FROM changes WHERE created_at < ?",
                    (cutoff,)).fetchone()[0])
            target = compaction_target(ctx.revision, keep_revisions, aged)
            current = int(ctx.conn.execute(
                "SELECT value FROM meta WHERE key = 'compacted_revision'").fetchone()[0])
            if target <= current:
                return current
            ctx.conn.execute("DELETE FROM changes WHERE revision <= ?", (target,))
            ctx.conn.execute("UPDATE meta SET value = ? WHERE key = 'compacted_revision'",
                             (target,))
            return target

        compacted: int = await self._write(write)
        self._compacted_revision = max(self._compacted_revision, compacted)
        return self._compacted_revision

    # Maintenance.
    async def check_consistency(self) -> list[str]:
        problems: list[str] = []
        integrity = await self._read("PRAGMA integrity_check")
        if [tuple(r) for r in integrity] != [("ok",)]:
            problems.extend(str(r[0]) for r in integrity)
        mismatched = await self._read(
            "SELECT s.id, s.message_count, s.turn_count, s.tool_call_count, s.last_seq,"
            " m.n, m.turns, m.calls, m.top FROM sessions s LEFT JOIN"
            " (SELECT session_pk, count(*) n, sum(is_turn) turns, sum(tool_calls) calls,"
            "  max(seq) top FROM messages GROUP BY session_pk) m ON m.session_pk = s.pk"
            " WHERE s.message_count <> coalesce(m.n, 0) OR s.turn_count <> coalesce(m.turns, 0)"
            " OR s.tool_call_count <> coalesce(m.calls, 0) OR s.last_seq < coalesce(m.top, 0)")
        problems.extend(f"session {r[0]!r}: message counters {tuple(r[1:5])} != recount "
                        f"{tuple(r[5:9])}" for r in mismatched)
        usage_sums = ", ".join(f"sum({n}) {n}" for n in USAGE_FIELDS)
        differs = " OR ".join(f"s.{n} <> coalesce(u.{n}, 0)" for n in USAGE_FIELDS)
        bad_usage = await self._read(
            f"SELECT s.id FROM sessions s LEFT JOIN (SELECT session_pk, {usage_sums}"
            f" FROM session_usage GROUP BY session_pk) u ON u.session_pk = s.pk WHERE {differs}")
        problems.extend(f"session {r[0]!r}: usage differs from its per-model rows"
                        for r in bad_usage)
        problems.extend(await self._rollup_problems())
        gaps = await self._read(
            "SELECT count(DISTINCT revision), min(revision), max(revision) FROM changes")
        n, lo, hi = gaps[0]
        if n and hi - lo + 1 != n:
            problems.append(f"change log has gaps: {n} revisions between {lo} and {hi}")
        return problems

    async def _rollup_problems(self) -> list[str]:
        """Rollup rows that differ from a recount of the rows they sum."""
        problems: list[str] = []
        for table, recount_sql, columns in (
            ("session_rollup", ROLLUP_RECOUNT_SQL,
             (*ROLLUP_KEY, "session_count", "running_count", "duration_micros", *ROLLUP_SUMS)),
            ("usage_rollup", USAGE_ROLLUP_RECOUNT_SQL,
             (*USAGE_ROLLUP_KEY, "session_count", *USAGE_SUMS)),
        ):
            recount, stored = await self._read_many(
                [(recount_sql, ()), (f"SELECT {', '.join(columns)} FROM {table}", ())])
            expected = {tuple(r[:5]): tuple(r[5:]) for r in recount}
            actual = {tuple(r[:5]): tuple(r[5:]) for r in stored}
            problems.extend(
                f"{table} {key}: {actual.get(key)} != recount {expected.get(key)}"
                for key in sorted(expected.keys() | actual.keys())
                if expected.get(key) != actual.get(key))
        return problems


def _split_sql(script: str) -> list[str]:
    """Statements of a migration script (triggers keep their inner semicolons)."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements
