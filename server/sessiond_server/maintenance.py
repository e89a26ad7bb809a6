"""Backup, restore, export and import of a sessiond SQLite database.

Why these work on the database file rather than over gRPC:

* **backup** needs a consistent copy of a live database without stopping
  writers. SQLite's online backup API, run inside one read transaction on a
  read-only connection, copies the WAL snapshot of that moment page by page
  while the server keeps committing: every write acknowledged before the
  backup began is in the copy, and no later write is half in it.
* **export** reads the same way (one read transaction, a consistent snapshot),
  so it runs against a live server too, and writes the stored values as they
  are: the raw status (never the read-time ABANDONED), sequence numbers and
  server times.
* **import** must set what the API rightly keeps server-owned (sequence
  numbers, creation times, end states, per-model usage), so it writes through
  the store's own single writer, with revisions and change-log events, into a
  database no server has open. A second process writing beside a running
  server would fork the store revision, so import, like restore, refuses a
  database that a server holds.

A running server holds an exclusive ``flock`` on ``<database>.lock`` for its
whole life (released by the kernel if it dies); restore and import take the
same lock and so cannot run beside a server, nor a server start beside them.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import sqlite3
import stat
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple, TextIO

from google.protobuf import json_format
from sessiond.v1 import event_pb2, message_pb2, session_pb2

from .store import records as rows
from .store.logic import LAST_EVENT_AT
from .store.records import COL, SESSION_COLUMNS, USAGE_FIELDS
from .store.sqlite import SQLiteStore
from .store.sqlite_schema import SCHEMA_VERSION
from .store.sqlite_writer import WriteContext
from .store.state import EMPTY_STATE, storable_state

EXPORT_FORMAT = "sessiond.export"
# Version 2 added shared_state records (and sessions' state_json, messages' event_time,
# which version 1 files carry too where their database had them). Import reads both.
EXPORT_VERSION = 2
IMPORT_VERSIONS = (1, 2)
# Store-local fields left out of an export: they describe this database's
# revision history, not the data, and a fresh import assigns its own.
STORE_LOCAL_SESSION_FIELDS = ("revision", "etag")
IMPORT_CHUNK = 500  # messages per import transaction

if sys.platform != "win32":
    import fcntl


class DatabaseInUse(Exception):
    """A running server (or another restore/import) holds the database."""


class MaintenanceError(Exception):
    """A backup, restore, export or import that cannot go ahead; the message says why."""


# The server lock


def lock_path(database: Path) -> Path:
    return Path(f"{database}.lock")


class DatabaseLock:
    """An exclusive, non-blocking ``flock`` on ``<database>.lock``.

    The server takes it at start and keeps it until it stops; the kernel drops
    it when the process dies, so a crash never leaves a stale lock. The file
    holds the owner's pid, for the error message only.
    """

    def __init__(self, database: Path, purpose: str = "server") -> None:
        self.path = lock_path(database)
        self._fd: int | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if sys.platform != "win32":
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                os.close(fd)
                raise DatabaseInUse(
                    f"{database} is in use ({holder or 'held by another process'}); "
                    f"stop that sessiond first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{purpose} pid {os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Give the lock back; safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing the descriptor drops the flock

    def __enter__(self) -> DatabaseLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# Progress


class Progress:
    """A one-line progress bar on a terminal; silent when ``stream`` is not a TTY.

    ``total`` None means unknown (input from a pipe): the line then shows how
    much is done, without a percentage. ``unit`` names what is counted.
    """

    def __init__(self, label: str, total: int | None, stream: TextIO | None = None,
                 enabled: bool | None = None, unit: str = "") -> None:
        self.stream = sys.stderr if stream is None else stream
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.label = label
        self.total = None if total is None else max(0, total)
        self.unit = f" {unit}" if unit else ""
        self.done = 0
        self._shown = -1

    def advance(self, count: int = 1) -> None:
        self.update(self.done + count)

    def update(self, done: int, total: int | None = None) -> None:
        if total is not None:
            self.total = total
        self.done = done
        if not self.enabled:
            return
        if self.total is None:
            shown = done
            line = f"\r{self.label} {done:,}{self.unit}"
        else:
            # Redrawn when the percentage moves, not on every step.
            shown = min(100, int(100 * done / self.total)) if self.total else 100
            width = 30
            filled = width * shown // 100
            line = (f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                    f"{shown:3d}% {done:,}/{self.total:,}{self.unit}")
        if shown == self._shown:
            return
        self._shown = shown
        self.stream.write(line)
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled and self._shown >= 0:
            self.stream.write("\n")
            self.stream.flush()


class ReadPosition:
    """How many bytes the inputs of one import have given so far: the measure of
    its progress (a file's size is known before it is read, its records are not)."""

    def __init__(self) -> None:
        self.bytes_read = 0

    def lines(self, stream: IO[bytes]) -> Iterator[str]:
        """The lines of ``stream`` decoded as UTF-8, counted as they are read."""
        for raw in stream:
            self.bytes_read += len(raw)
            yield raw.decode("utf-8")


def remaining_bytes(stream: IO[bytes]) -> int | None:
    """How many bytes a stream still holds: known for a regular file (also one
    redirected to standard input), None for a pipe or a terminal."""
    try:
        status = os.fstat(stream.fileno())
        if not stat.S_ISREG(status.st_mode):
            return None
        return max(0, status.st_size - stream.tell())
    except (OSError, ValueError, io.UnsupportedOperation):
        return None


def _read_only(database: Path) -> sqlite3.Connection:
    if not database.exists():
        raise MaintenanceError(f"{database} does not exist")
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, isolation_level=None,
                           timeout=5.0)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise MaintenanceError(f"{database} is not a SQLite database: {exc}") from None
    if version == 0 or version > SCHEMA_VERSION:
        conn.close()
        raise MaintenanceError(f"{database} has schema version {version}; this sessiond "
                               f"reads 1 to {SCHEMA_VERSION}")
    return conn


# Backup and restore


def backup_database(database: Path, destination: Path, *, progress: Progress | None = None,
                    pages_per_step: int = 256) -> int:
    """Copy a (possibly live) database to ``destination``; returns the revision copied.

    The copy is the snapshot of one read transaction: writers go on, and the
    copy has every write committed before it began. It is written beside the
    destination and renamed into place once complete and checked.
    """
    destination = Path(destination)
    if destination.exists():
        raise MaintenanceError(f"{destination} exists; choose a new file")
    partial = destination.with_name(destination.name + ".partial")
    partial.unlink(missing_ok=True)
    source = _read_only(Path(database))
    try:
        source.execute("BEGIN")
        revision = int(source.execute(
            "SELECT value FROM meta WHERE key = 'revision'").fetchone()[0])
        target = sqlite3.connect(partial)
        try:
            def step(_status: int, remaining: int, total: int) -> None:
                if progress is not None:
                    progress.update(total - remaining, total)

            source.backup(target, pages=pages_per_step, progress=step)
            # A standalone file: no WAL of its own to carry around.
            target.execute("PRAGMA journal_mode = DELETE")
            problems = target.execute("PRAGMA integrity_check").fetchall()
            if problems != [("ok",)]:
                raise MaintenanceError(f"the copy failed its integrity check: {problems[:3]}")
        finally:
            target.close()
        source.execute("COMMIT")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        source.close()
        if progress is not None:
            progress.finish()
    _fsync(partial)
    os.replace(partial, destination)
    _fsync(destination.parent)
    return revision


def restore_database(source: Path, database: Path, *, force: bool = False,
                     progress: Progress | None = None) -> int:
    """Replace ``database`` with the backup ``source``; refuses while a server holds it.

    Returns the revision of the restored database. An existing database is
    replaced only with ``force``. The old database's WAL and shared-memory
    files are removed with it, so none of its writes can be replayed over the
    restored copy.
    """
    source, database = Path(source), Path(database)
    check = _read_only(source)
    try:
        problems = check.execute("PRAGMA integrity_check").fetchall()
        if problems != [("ok",)]:
            raise MaintenanceError(f"{source} failed its integrity check: {problems[:3]}")
    finally:
        check.close()
    with DatabaseLock(database, "restore"):
        if database.exists() and not force:
            raise MaintenanceError(f"{database} exists; pass --force to replace it")
        partial = database.with_name(database.name + ".restoring")
        partial.unlink(missing_ok=True)
        src = _read_only(source)
        try:
            dst = sqlite3.connect(partial)
            try:
                def step(_status: int, remaining: int, total: int) -> None:
                    if progress is not None:
                        progress.update(total - remaining, total)

                src.backup(dst, pages=256, progress=step)
                revision = int(dst.execute(
                    "SELECT value FROM meta WHERE key = 'revision'").fetchone()[0])
            finally:
                dst.close()
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        finally:
            src.close()
            if progress is not None:
                progress.finish()
        _fsync(partial)
        for leftover in (Path(f"{database}-wal"), Path(f"{database}-shm")):
            leftover.unlink(missing_ok=True)
        os.replace(partial, database)
        _fsync(database.parent)
        return revision


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


# Export


def _rfc3339(micros: int) -> str:
    return datetime.datetime.fromtimestamp(micros / 1_000_000, datetime.UTC).isoformat(
        timespec="microseconds").replace("+00:00", "Z")


def _dump(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _proto_json(message: Any) -> dict[str, Any]:
    found: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return found


def parse_time(text: str) -> int:
    """Epoch microseconds from RFC 3339 (``2025-06-15T00:00:00Z``) or a date."""
    value = text.strip()
    try:
        when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an RFC 3339 time or a date") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return int(when.timestamp() * 1_000_000)


def export_database(database: Path, out: IO[str], *, tenants: Sequence[str] = (),
                    owners: Sequence[str] = (), since_micros: int = 0, until_micros: int = 0,
                    progress: Progress | None = None) -> dict[str, int]:
    """Write sessions, messages, usage and shared state as JSON Lines; counts per record type.

    One read transaction: the export is the consistent state at one revision,
    even while a server writes. ``since``/``until`` select sessions by
    ``started_at`` (``since`` inclusive, ``until`` exclusive). Shared states
    follow the sessions: those of the selected tenants; with ``owners``, only
    those users' states (an application's own state belongs to no owner).
    """
    conn = _read_only(Path(database))
    counts = {"session": 0, "message": 0, "usage": 0, "shared_state": 0}
    clauses: list[str] = ["1"]
    params: list[Any] = []
    for column, values in (("tenant", tenants), ("owner_id", owners)):
        if values:
            clauses.append(f"s.{column} IN ({','.join('?' * len(values))})")
            params.extend(values)
    if since_micros:
        clauses.append("s.started_at >= ?")
        params.append(since_micros)
    if until_micros:
        clauses.append("s.started_at < ?")
        params.append(until_micros)
    where = " AND ".join(clauses)
    try:
        conn.execute("BEGIN")
        revision = int(conn.execute("SELECT value FROM meta WHERE key = 'revision'")
                       .fetchone()[0])
        total = int(conn.execute(f"SELECT count(*) FROM sessions s WHERE {where}",
                                 params).fetchone()[0])
        if progress is not None:
            progress.update(0, total)
        out.write(_dump({"type": "header", "format": EXPORT_FORMAT, "version": EXPORT_VERSION,
                         "revision": revision}) + "\n")
        cursor: tuple[str, str] = ("", "")
        while True:
            page = conn.execute(
                f"SELECT {SESSION_COLUMNS} FROM sessions s WHERE {where}"
                f" AND (s.tenant, s.id) > (?, ?) ORDER BY s.tenant, s.id LIMIT 200",
                (*params, *cursor)).fetchall()
            if not page:
                break
            for row in page:
                _export_session(conn, row, out, counts)
                if progress is not None:
                    progress.advance()
            cursor = (page[-1][COL["tenant"]], page[-1][COL["id"]])
        _export_shared_states(conn, out, counts, tenants, owners)
        conn.execute("COMMIT")
    finally:
        conn.close()
        if progress is not None:
            progress.finish()
    return counts


def _export_session(conn: sqlite3.Connection, row: Sequence[Any], out: IO[str],
                    counts: dict[str, int]) -> None:
    # abandoned_before=0: the stored status, never the read-time ABANDONED.
    session = rows.session_from_row(row, 0)
    for name in STORE_LOCAL_SESSION_FIELDS:
        session.ClearField(name)  # type: ignore[arg-type]
    tenant, session_id, pk = session.tenant, session.id, row[0]
    out.write(_dump({"type": "session", "session": _proto_json(session)}) + "\n")
    counts["session"] += 1
    after = 0
    while True:
        found = conn.execute(
            f"SELECT {rows.MESSAGE_COLUMNS} FROM messages m WHERE m.session_pk = ?"
            f" AND m.seq > ? ORDER BY m.seq LIMIT 500", (pk, after)).fetchall()
        if not found:
            break
        for message_row in found:
            message = rows.message_from_row(message_row, session_id)
            out.write(_dump({"type": "message", "tenant": tenant, "session_id": session_id,
                             "message": _proto_json(message)}) + "\n")
            counts["message"] += 1
        after = int(found[-1][2])
    for usage_row in conn.execute(
            f"SELECT model, {', '.join(USAGE_FIELDS)} FROM session_usage WHERE session_pk = ?"
            f" ORDER BY model", (pk,)):
        usage = rows.usage_from(usage_row[1:])
        out.write(_dump({"type": "usage", "tenant": tenant, "session_id": session_id,
                         "model": usage_row[0], "usage": _proto_json(usage)}) + "\n")
        counts["usage"] += 1


def _export_shared_states(conn: sqlite3.Connection, out: IO[str], counts: dict[str, int],
                          tenants: Sequence[str], owners: Sequence[str]) -> None:
    clauses, params = ["1"], list[Any]()
    for column, values in (("tenant", tenants), ("user_id", owners)):
        if values:
            clauses.append(f"{column} IN ({','.join('?' * len(values))})")
            params.extend(values)
    where = " AND ".join(clauses)
    cursor: tuple[str, str, str] = ("", "", "")
    while True:
        page = conn.execute(
            f"SELECT tenant, app, user_id, state, version, updated_at FROM shared_state"
            f" WHERE {where} AND (tenant, app, user_id) > (?, ?, ?)"
            f" ORDER BY tenant, app, user_id LIMIT 500", (*params, *cursor)).fetchall()
        if not page:
            return
        for tenant, app, user_id, state, version, updated_at in page:
            shared = session_pb2.SharedState(app=app, user_id=user_id, state_json=state,
                                             etag=str(version))
            shared.updated_at.FromMicroseconds(updated_at)
            out.write(_dump({"type": "shared_state", "tenant": tenant,
                             "shared_state": _proto_json(shared)}) + "\n")
            counts["shared_state"] += 1
        cursor = tuple(page[-1][:3])


# Import


class ImportChunk(NamedTuple):
    """What one import transaction merges: part of a session, or shared states.

    ``session`` is None for a chunk of shared states alone.
    """

    session: session_pb2.Session | None
    messages: Sequence[message_pb2.Message] = ()
    usage: Sequence[tuple[str, session_pb2.Usage]] = ()
    #: (tenant, state) pairs; the state's etag is its version number.
    shared_states: Sequence[tuple[str, session_pb2.SharedState]] = ()


class ImportingStore(SQLiteStore):
    """The SQLite store with one extra write: merge an imported session.

    A subclass, so the import goes through the same writer thread, revisions
    and change log as every other write. Merging only adds what is missing:
    a session not yet stored (by tenant and id), messages whose seq is not yet
    stored, usage of models not yet recorded, shared states not yet stored (by
    tenant, app and user). Stored rows are never changed, so importing the
    same records twice changes nothing the second time.
    """

    async def merge_shared_states(self, states: Sequence[tuple[str, session_pb2.SharedState]]
                                  ) -> int:
        """Add the shared states not yet stored, as they were (version, time); how many."""
        def write(ctx: WriteContext) -> int:
            return sum(ctx.conn.execute(
                "INSERT OR IGNORE INTO shared_state (tenant, app, user_id, state, version,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (tenant, shared.app, shared.user_id, shared.state_json or EMPTY_STATE,
                 int(shared.etag or 0), shared.updated_at.ToMicroseconds())).rowcount
                for tenant, shared in states)

        added: int = await self._write(write)
        return added

    async def merge_session(self, session: session_pb2.Session,
                            messages: Sequence[message_pb2.Message],
                            usage: Sequence[tuple[str, session_pb2.Usage]]) -> tuple[bool, int]:
        """Add what is missing; returns (session created, messages added)."""
        prepared = [(m, rows.message_body(m), int(rows.is_turn(m)), len(m.tool_calls))
                    for m in messages]

        def write(ctx: WriteContext) -> tuple[bool, int]:
            found = ctx.conn.execute("SELECT pk FROM sessions WHERE tenant = ? AND id = ?",
                                     (session.tenant, session.id)).fetchone()
            created = found is None
            pk = self._insert_imported(ctx, session) if found is None else int(found[0])
            inserted: list[message_pb2.Message] = []
            for message, body, turn, calls in prepared:
                if ctx.conn.execute(
                        "INSERT OR IGNORE INTO messages (session_pk, seq, message_id, role,"
                        " content, is_turn, tool_calls, created_at, updated_at, body, event_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (pk, message.seq, message.id or None, message.role, message.content,
                         turn, calls, message.created_at.ToMicroseconds(),
                         message.updated_at.ToMicroseconds(), body,
                         message.event_time.ToMicroseconds()
                         if message.HasField("event_time") else None)).rowcount:
                    inserted.append(message)
            added = len(inserted)
            usage_added = 0
            for model, counters in usage:
                usage_added += ctx.conn.execute(
                    f"INSERT OR IGNORE INTO session_usage (session_pk, model,"
                    f" {', '.join(USAGE_FIELDS)}) VALUES (?, ?{', ?' * len(USAGE_FIELDS)})",
                    (pk, model, *(getattr(counters, name) for name in USAGE_FIELDS))).rowcount
            if not (created or added or usage_added):
                return False, 0
            if created or added:
                count, turns, calls, top, newest = ctx.conn.execute(
                    "SELECT count(*), coalesce(sum(is_turn), 0), coalesce(sum(tool_calls), 0),"
                    " coalesce(max(seq), 0), coalesce(max(created_at), 0) FROM messages"
                    " WHERE session_pk = ?", (pk,)).fetchone()
                # Sequence numbers are never reused: last_seq only grows.
                ctx.conn.execute(
                    "UPDATE sessions SET message_count = ?, turn_count = ?,"
                    " tool_call_count = ?, last_seq = max(last_seq, ?, ?),"
                    " last_activity_at = max(last_activity_at, ?)" + LAST_EVENT_AT
                    + " WHERE pk = ?",
                    (count, turns, calls, top, session.last_seq, newest, pk))
            if usage_added:
                sums = ", ".join(f"coalesce(sum({name}), 0)" for name in USAGE_FIELDS)
                ctx.conn.execute(
                    f"UPDATE sessions SET ({', '.join(USAGE_FIELDS)}) = (SELECT {sums}"
                    f" FROM session_usage WHERE session_pk = ?) WHERE pk = ?", (pk, pk))
            ctx.conn.execute("UPDATE sessions SET revision = ? WHERE pk = ?",
                             (ctx.take_revision(), pk))
            stored = rows.session_from_row(ctx.conn.execute(
                f"SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.pk = ?", (pk,)).fetchone(),
                self._abandoned_before(ctx.now))
            if created:
                self._emit(ctx, event_pb2.EVENT_TYPE_SESSION_CREATED, stored)
            elif added:
                for message in inserted:
                    message.session_id = session.id
                carried, truncated = rows.event_messages(inserted)
                self._emit(ctx, event_pb2.EVENT_TYPE_MESSAGES_APPENDED, stored, carried,
                           truncated or added > len(carried))
            else:
                self._emit(ctx, event_pb2.EVENT_TYPE_USAGE_RECORDED, stored)
            return created, added

        result: tuple[bool, int] = await self._write(write)
        return result

    @staticmethod
    def _insert_imported(ctx: WriteContext, s: session_pb2.Session) -> int:
        def micros(name: str) -> int:
            return int(getattr(s, name).ToMicroseconds()) if s.HasField(name) else 0  # type: ignore[arg-type]

        started = micros("started_at") or ctx.now
        status = s.status
        if status in (session_pb2.SESSION_STATUS_UNSPECIFIED, session_pb2.SESSION_STATUS_ABANDONED):
            status = session_pb2.SESSION_STATUS_ACTIVE  # abandoned is computed, never stored
        cur = ctx.conn.execute(
            "INSERT INTO sessions (tenant, id, kind, channel, room_id, sender_id, agent, model,"
            " display_name, goal, owner_id, dataset_id, labels, runtime_instance, parent_id,"
            " fork_seq, status, end_reason, runtime_state, current_turn_id, turn_started_at,"
            " started_at, last_activity_at, ended_at, updated_at, last_seq, budget_micros,"
            " revision, state) VALUES"
            " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
            " ?)",
            (s.tenant, s.id, s.kind or session_pb2.SESSION_KIND_INTERACTIVE, s.channel,
             s.room_id, s.sender_id, s.agent, s.model, s.display_name, s.goal, s.owner_id,
             s.dataset_id, rows.labels_json(s.labels), s.runtime_instance, s.parent_id,
             s.fork_seq, status, s.end_reason,
             s.runtime_state or session_pb2.RUNTIME_STATE_IDLE, s.current_turn_id,
             micros("turn_started_at"), started, micros("last_activity_at") or started,
             micros("ended_at"), micros("updated_at") or started, s.last_seq,
             s.budget_micros, ctx.take_revision(), s.state_json or EMPTY_STATE))
        assert cur.lastrowid is not None
        return cur.lastrowid


def _parse_record(line: str, where: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise MaintenanceError(f"{where}: not JSON: {exc.msg}") from None
    if not isinstance(record, dict):
        raise MaintenanceError(f"{where}: expected a JSON object")
    return record


def _imported_state(text: str, where: str) -> str:
    """A state as it will be stored (canonical form, within the bound); "" stays ""."""
    try:
        return storable_state(text) if text else ""
    except ValueError as exc:
        raise MaintenanceError(f"{where}: state_json {exc}") from None


def read_export(lines: Iterable[str], source: str = "input") -> Iterator[ImportChunk]:
    """The records of a ``sessiond export`` stream as chunks, one transaction each.

    A session comes with its messages and usage; one with many messages comes
    as several chunks (the session record repeated). Shared states come in
    chunks of their own.
    """
    session: session_pb2.Session | None = None
    messages: list[message_pb2.Message] = []
    usage: list[tuple[str, session_pb2.Usage]] = []
    shared: list[tuple[str, session_pb2.SharedState]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        record = _parse_record(line, where)
        kind = record.get("type")
        try:
            if kind == "header":
                if record.get("format") != EXPORT_FORMAT or \
                        record.get("version") not in IMPORT_VERSIONS:
                    raise MaintenanceError(
                        f"{where}: not a sessiond export of version "
                        f"{' or '.join(map(str, IMPORT_VERSIONS))}")
            elif kind == "session":
                if session is not None:
                    yield ImportChunk(session, messages, usage)
                session = json_format.ParseDict(record["session"], session_pb2.Session())
                session.state_json = _imported_state(session.state_json, where)
                messages, usage = [], []
            elif kind == "shared_state":
                if session is not None:
                    yield ImportChunk(session, messages, usage)
                    session = None
                state = json_format.ParseDict(record["shared_state"], session_pb2.SharedState())
                state.state_json = _imported_state(state.state_json, where) or EMPTY_STATE
                if not state.app or not state.etag.isdigit():
                    raise MaintenanceError(f"{where}: a shared state needs an app and a "
                                           f"numeric etag")
                shared.append((str(record["tenant"]), state))
                if len(shared) >= IMPORT_CHUNK:
                    yield ImportChunk(None, shared_states=shared)
                    shared = []
            elif kind in ("message", "usage"):
                if session is None or record.get("session_id") != session.id or \
                        record.get("tenant") != session.tenant:
                    raise MaintenanceError(f"{where}: {kind} record outside its session")
                if kind == "message":
                    messages.append(json_format.ParseDict(record["message"],
                                                          message_pb2.Message()))
                    if len(messages) >= IMPORT_CHUNK:
                        yield ImportChunk(session, messages, usage)
                        messages, usage = [], []
                else:
                    usage.append((str(record["model"]),
                                  json_format.ParseDict(record["usage"], session_pb2.Usage())))
            else:
                raise MaintenanceError(f"{where}: unknown record type {kind!r}")
        except (KeyError, json_format.ParseError) as exc:
            raise MaintenanceError(f"{where}: bad {kind} record: {exc}") from None
    if session is not None:
        yield ImportChunk(session, messages, usage)
    if shared:
        yield ImportChunk(None, shared_states=shared)


HISTORY_ROLES = {
    "system": message_pb2.ROLE_SYSTEM, "developer": message_pb2.ROLE_SYSTEM,
    "user": message_pb2.ROLE_USER, "human": message_pb2.ROLE_USER,
    "assistant": message_pb2.ROLE_ASSISTANT, "ai": message_pb2.ROLE_ASSISTANT,
    "tool": message_pb2.ROLE_TOOL, "function": message_pb2.ROLE_TOOL,
}


def _history_time(value: Any, where: str) -> int:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value * 1_000_000)  # epoch seconds
    if isinstance(value, str):
        try:
            return parse_time(value)
        except ValueError as exc:
            raise MaintenanceError(f"{where}: {exc}") from None
    raise MaintenanceError(f"{where}: time {value!r} is neither RFC 3339 nor epoch seconds")


def history_message(record: dict[str, Any], seq: int, where: str,
                    default_micros: int) -> message_pb2.Message:
    """One line of a runtime's history file as a Message numbered ``seq``."""
    role = HISTORY_ROLES.get(str(record.get("role", "")).lower())
    if role is None:
        raise MaintenanceError(f"{where}: role {record.get('role')!r} is not one of "
                               f"{', '.join(sorted(HISTORY_ROLES))}")
    content = record.get("content") or ""
    if isinstance(content, list):  # provider content blocks: keep the text, and the blocks
        text = "".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
        blocks = [message_pb2.ContentBlock(type=str(b.get("type", "")), json=json.dumps(b))
                  for b in content if isinstance(b, dict)]
    else:
        text, blocks = str(content), []
    message = message_pb2.Message(
        seq=seq, id=str(record.get("id") or ""), role=role, content=text,
        name=str(record.get("name") or ""), tool_call_id=str(record.get("tool_call_id") or ""),
        reasoning=str(record.get("reasoning") or ""), content_blocks=blocks,
        status=message_pb2.MESSAGE_STATUS_COMPLETE)
    for call in record.get("tool_calls") or []:
        function = call.get("function") or {}
        arguments = call.get("arguments", function.get("arguments", ""))
        message.tool_calls.add(
            id=str(call.get("id", "")), name=str(call.get("name") or function.get("name", "")),
            arguments_json=arguments if isinstance(arguments, str) else json.dumps(arguments))
    when = record.get("created_at", record.get("timestamp"))
    micros = default_micros if when is None else _history_time(when, where)
    message.created_at.FromMicroseconds(micros)
    message.updated_at.FromMicroseconds(micros)
    return message


def read_history(lines: Iterable[str], session_id: str, *, tenant: str = "default",
                 agent: str = "", channel: str = "", source: str = "input",
                 default_micros: int = 0) -> Iterator[ImportChunk]:
    """A file-based runtime's history (one message object per line) as one session.

    The n-th message line becomes seq n, so importing the file again after it
    grew adds only the new lines.
    """
    messages: list[message_pb2.Message] = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            messages.append(history_message(_parse_record(line, f"{source}:{number}"),
                                            len(messages) + 1, f"{source}:{number}",
                                            default_micros))
    session = session_pb2.Session(id=session_id, tenant=tenant, agent=agent, channel=channel,
                                  status=session_pb2.SESSION_STATUS_ACTIVE)
    if messages:
        session.started_at.CopyFrom(messages[0].created_at)
        session.last_activity_at.CopyFrom(messages[-1].created_at)
        session.updated_at.CopyFrom(messages[-1].created_at)
    for start in range(0, max(1, len(messages)), IMPORT_CHUNK):
        yield ImportChunk(session, messages[start:start + IMPORT_CHUNK])


async def import_records(
    database: Path,
    chunks: Iterable[ImportChunk],
    *, clock: Callable[[], int], on_chunk: Callable[[], None] | None = None,
) -> dict[str, int]:
    """Merge chunks into ``database`` (created if missing); refuses while a server holds it.

    ``on_chunk`` is called after each chunk is stored (the caller measures
    progress in what it has read).
    """
    counts = {"sessions_created": 0, "messages_added": 0, "shared_states_added": 0,
              "chunks": 0}
    with DatabaseLock(Path(database), "import"):
        store = ImportingStore(Path(database), clock=clock)
        await store.open()
        try:
            for chunk in chunks:
                if chunk.shared_states:
                    counts["shared_states_added"] += await store.merge_shared_states(
                        chunk.shared_states)
                if chunk.session is not None:
                    created, added = await store.merge_session(chunk.session, chunk.messages,
                                                               chunk.usage)
                    counts["sessions_created"] += int(created)
                    counts["messages_added"] += added
                counts["chunks"] += 1
                if on_chunk is not None:
                    on_chunk()
            counts["revision"] = store.revision
        finally:
            await store.close()
    return counts
