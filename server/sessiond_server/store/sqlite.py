"""The embedded SQLite store: WAL, one writer thread, read-only aiosqlite readers.

The reads and writes themselves are the shared store logic (``logic.py``)
over the SQLite dialect; this module holds what only SQLite has. Writes go
through :class:`~.sqlite_writer.Writer` (group commit, one revision per
write, change log in the same transaction). Reads run on a small pool of
read-only aiosqlite connections, each read in its own transaction (one
snapshot); WAL lets them proceed while the writer commits.

Several processes may serve one file (``sessiond serve --workers N``), each a
replica exactly as PostgreSQL replicas are: writers take the cross-process
write lock (:class:`~.sqlite_writer.WriteLock`, ``<database>.write-lock``)
and read the revision inside it, and each replica's listeners are fed by the
change feed every backend shares (``feed.py``). What SQLite adds is how a
replica is notified (:class:`DatagramNotifier`): after each commit a
datagram to every other replica of the file, which may be lost (the poll
and the change log make up for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
from sessiond.v1 import event_pb2, session_pb2

from .dialect import SQLITE
from .errors import Unavailable
from .feed import Heard, ReplicaFeed
from .logic import ORDER_COLUMNS
from .revisions import NEWEST_OVER_BYTES_SQL, compaction_target
from .sqlite_inline import Busy, InlineReader, InlineStatements
from .sqlite_schema import (
    ACTIVE_ROLLUP_KEY,
    ACTIVE_ROLLUP_RECOUNT_SQL,
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
from .sqlite_writer import WriteContext, WriteLock, Writer

log = logging.getLogger(__name__)

E = event_pb2
S = session_pb2

__all__ = ["ORDER_COLUMNS", "SQLiteStore", "SchemaTooNew"]


class SchemaTooNew(Exception):
    """The database was written by a newer sessiond; it is left untouched."""


class AioSQLiteStatements:
    """Statements on a read-only aiosqlite connection."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(await self.conn.execute_fetchall(sql, params))

    async def fetchrow(self, sql: str, params: Sequence[Any] = ()) -> Any:
        found = await self.fetch(sql, params)
        return found[0] if found else None

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        raise sqlite3.OperationalError("a read transaction does not write")

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise sqlite3.OperationalError("a read transaction does not write")


class HeldStatements(AioSQLiteStatements):
    """The statements of a held snapshot: its connection closes (and the snapshot
    with it) when nothing is read from it for ``idle_seconds``."""

    def __init__(self, conn: aiosqlite.Connection, idle_seconds: float) -> None:
        super().__init__(conn)
        self._idle_seconds = idle_seconds
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self.closing: asyncio.Task[None] | None = None
        self._arm()

    def _arm(self) -> None:
        self._timer = self._loop.call_later(self._idle_seconds, self._expire)

    def _expire(self) -> None:
        self.closing = self._loop.create_task(self.conn.close())

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        if self.closing is not None:
            raise Unavailable(f"the snapshot was let go after {self._idle_seconds:g} s "
                              "without a read")
        self.disarm()
        try:
            return await super().fetch(sql, params)
        finally:
            self._arm()


def replicas_directory(database: Path) -> Path:
    """Where each replica of ``database`` registers to be notified of commits."""
    return Path(f"{database}.replicas")


def write_lock_path(database: Path) -> Path:
    return Path(f"{database}.write-lock")


class SQLiteStore(ReplicaFeed):
    """The SessionStore on one SQLite file (shared by any number of local replicas)."""

    dialect = SQLITE
    feed_errors = (OSError, sqlite3.Error, Unavailable)

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], int],
        abandoned_after_seconds: float = 1800.0,
        durability: str = "full",
        readers: int = 4,
        max_batch: int = 256,
        poll_interval_seconds: float = 1.0,
    ) -> None:
        super().__init__(clock, abandoned_after_seconds, max_batch)
        self.path = Path(path)
        self._init_feed(DatagramNotifier(replicas_directory(self.path)), poll_interval_seconds)
        self._lock: WriteLock | None = None
        if durability not in ("full", "normal"):
            raise ValueError(f"durability must be 'full' or 'normal', not {durability!r}")
        self._durability = durability
        self._reader_count = max(1, readers)
        self._readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._all_readers: list[aiosqlite.Connection] = []
        self._writer: Writer | None = None
        self.recovered_wal = False
        self._recycling: set[asyncio.Task[None]] = set()
        # Small indexed reads (a session by id, a page of messages) run inline on
        # the event loop: cheaper than a hop to a reader thread (see sqlite_inline).
        self._inline = InlineReader(self.path)

    @property
    def write_lock(self) -> WriteLock | None:
        """The cross-process write lock, with the seconds spent waiting for and holding it."""
        return self._lock

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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = WriteLock(str(write_lock_path(self.path)))
        try:
            await asyncio.to_thread(self._migrate, self._lock)
            for _ in range(self._reader_count):
                conn = await self._connect_reader()
                # Parse the schema now, not in the first call each reader answers.
                await conn.execute_fetchall("SELECT count(*) FROM sqlite_master")
                self._all_readers.append(conn)
                self._readers.put_nowait(conn)
            self._inline.open()
            await self._open_feed()
            self._writer = Writer(self._connect_writer, self._clock, self._max_batch,
                                  self._publish_now, self._lock)
            await self._writer.start()
        except BaseException:
            await self.close()
            raise

    def _migrate(self, lock: WriteLock) -> None:
        # Under the write lock: replicas starting together migrate one at a time.
        lock.acquire()
        try:
            self._migrate_locked()
        finally:
            lock.release()
        # What this replica delivers starts here; the feed reads on from it.

    def _migrate_locked(self) -> None:
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
        # The writer first (its last commits may need the readers to be published),
        # then the feed and the readers.
        if self._writer is not None:
            await self._writer.close()
        await self._close_feed()
        self._inline.close()
        for conn in self._all_readers:
            await conn.close()
        self._all_readers.clear()
        if self._lock is not None:
            self._lock.close()
        # The last connection to close checkpoints and removes the write-ahead log;
        # a read-only one cannot, which would leave a WAL that the next start
        # mistakes for the trace of a crash. So one writable connection closes last
        # (it removes the log only if no other replica still has the file open).
        if self._writer is not None:
            with contextlib.suppress(sqlite3.Error):
                await asyncio.to_thread(close_last, self.path)

    async def _connect_reader(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(f"file:{self.path}?mode=ro", uri=True)
        await conn.execute("PRAGMA query_only = 1")
        return conn

    @contextlib.asynccontextmanager
    async def _held_snapshot(self) -> AsyncIterator[AioSQLiteStatements]:
        """A read transaction on a reader of its own, closed at the end (while it is
        open, checkpoints cannot move the database past its snapshot)."""
        if self._writer is None:
            raise Unavailable("the store is not open")
        try:
            conn = await self._connect_reader()
        except sqlite3.Error as exc:
            raise Unavailable(f"database error: {exc}") from exc
        held: HeldStatements | None = None
        try:
            await conn.execute("BEGIN")
            held = HeldStatements(conn, self.held_snapshot_idle_seconds)
            yield held
        except sqlite3.Error as exc:
            raise Unavailable(f"database error: {exc}") from exc
        finally:
            if held is not None:
                held.disarm()
            with contextlib.suppress(sqlite3.Error, ValueError):
                if held is not None and held.closing is not None:
                    await held.closing
                else:
                    await conn.close()  # ends the read transaction

    @contextlib.asynccontextmanager
    async def _snapshot(self, small: bool = False
                        ) -> AsyncIterator[AioSQLiteStatements | InlineStatements]:
        """One read transaction: every statement sees one snapshot.

        A ``small`` read runs inline on the event loop when it can (see
        sqlite_inline); otherwise, and for every other read, on a pooled reader.
        """
        if small:
            try:
                inline = self._inline.begin()
            except Busy:
                pass
            except sqlite3.Error as exc:
                raise Unavailable(f"database error: {exc}") from exc
            else:
                try:
                    yield inline
                except sqlite3.Error as exc:
                    raise Unavailable(f"database error: {exc}") from exc
                finally:
                    self._inline.end()
                return
        conn = await self._readers.get()
        ended = False
        try:
            await conn.execute("BEGIN")
            try:
                yield AioSQLiteStatements(conn)
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


    # Change log.
    async def compact(self, keep_revisions: int, max_age_seconds: float,
                      max_bytes: int = 0) -> int:
        def write(ctx: WriteContext) -> int:
            aged: int | None = None
            if max_age_seconds > 0:
                cutoff = ctx.now - int(max_age_seconds * 1_000_000)
                aged = int(ctx.conn.execute(
                    "SELECT coalesce(max(revision), 0) FROM changes WHERE created_at < ?",
                    (cutoff,)).fetchone()[0])
            over_bytes = int(ctx.conn.execute(NEWEST_OVER_BYTES_SQL.format(budget="?"),
                                              (max_bytes,)).fetchone()[0]) if max_bytes else None
            target = compaction_target(ctx.revision, keep_revisions, aged, over_bytes)
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
        problems.extend(await self.counter_problems())
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
            ("active_rollup", ACTIVE_ROLLUP_RECOUNT_SQL, (*ACTIVE_ROLLUP_KEY, "session_count")),
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


def close_last(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("SELECT count(*) FROM meta").fetchone()  # opens the file and its log
    finally:
        conn.close()


class DatagramNotifier:
    """How SQLite replicas of one file tell each other of commits: datagrams.

    Each replica binds a datagram socket in Linux's abstract namespace and
    registers it by an empty file in ``<database>.replicas/`` (so no socket
    path length limit applies, and no socket file outlives its process).
    After each commit it sends the revision to every registered replica but
    itself; a name nobody is bound to any more (a replica that died) is
    removed. A datagram that cannot be sent (a full buffer) is lost: the
    receiver's poll reads the change log anyway.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._sock: socket.socket | None = None
        self._name = ""
        self._prefix = ""
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def _address(self, name: str) -> str:
        return f"\0{self._prefix}{name}"

    async def open(self, heard: Heard, lost: Callable[[], None]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        found = self.directory.stat()
        self._prefix = f"sessiond-{found.st_dev:x}-{found.st_ino:x}-"
        name = f"{os.getpid()}-{secrets.token_hex(4)}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind(self._address(name))
            (self.directory / name).touch()
        except BaseException:
            sock.close()
            raise
        self._sock, self._name = sock, name
        self._loop = asyncio.get_running_loop()

        def readable() -> None:
            newest: int | None = 0
            while True:
                try:
                    data = sock.recv(64)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    lost()
                    return
                try:
                    announced = int(data)
                    newest = None if newest is None else max(newest, announced)
                except ValueError:
                    newest = None
            if newest != 0:
                heard(newest)

        self._loop.add_reader(sock.fileno(), readable)

    def announce(self, revision: int) -> None:
        sock = self._sock
        if sock is None:
            return
        payload = str(revision).encode()
        try:
            names = [e.name for e in os.scandir(self.directory) if e.name != self._name]
        except OSError:
            return
        for name in names:
            try:
                sock.sendto(payload, self._address(name))
            except ConnectionRefusedError:  # nobody bound: that replica is gone
                with contextlib.suppress(OSError):
                    (self.directory / name).unlink()
            except OSError:
                pass  # a full buffer: that replica's poll reads the log anyway

    async def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(sock.fileno())
        sock.close()
        with contextlib.suppress(OSError):
            (self.directory / self._name).unlink()


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
