"""Small SQLite reads answered on the event loop's own thread.

Why: an indexed read of one session row or one page of messages costs SQLite
tens of microseconds, while handing it to a reader thread (aiosqlite) costs a
queue hand-off, a thread wake-up and a future resolved back on the loop for
every statement: more CPU than the read, and a wait behind other threads on a
busy machine. So the reads an RPC answers from a few index lookups (a session
by id, a page of its messages) run here, inline; the reads whose cost grows
with the data (aggregates, listings with counts, search, the change log) stay
on the reader threads, so they never hold the loop.

Guarantees:

* One read transaction per snapshot (BEGIN ... COMMIT), so every statement of
  it sees one committed state, as on the reader threads.
* Never blocks the loop on a lock: the connection has no busy timeout, and a
  snapshot that meets SQLITE_BUSY when it starts (a checkpoint restarting the
  WAL) is reported as ``Busy`` for the caller to take on a reader thread
  instead; so is a snapshot asked for while the inline connection is already
  in one (a caller that awaited something else inside its snapshot).
* Read-only: the connection is opened ``mode=ro`` with ``query_only``.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .sqlite_writer import SQLiteStatements


class Busy(Exception):
    """The inline connection cannot answer now; read on a reader thread instead."""


class InlineStatements(SQLiteStatements):
    """Statements of one inline read transaction (the writer's statements, read-only).

    ``fetch`` is a coroutine only to fit the protocol: it never suspends, so no
    other task runs between the statements of one snapshot.
    """

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        raise sqlite3.OperationalError("a read transaction does not write")

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise sqlite3.OperationalError("a read transaction does not write")


class InlineReader:
    """One read-only connection used only from the event loop thread."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._in_use = False

    def open(self) -> None:
        conn = sqlite3.connect(f"file:{self._path}?mode=ro", uri=True, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA query_only = 1")
        conn.execute("PRAGMA busy_timeout = 0")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchall()  # parse the schema now
        self._conn = conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def begin(self) -> InlineStatements:
        """Start a read transaction and take its snapshot; ``end`` must follow.

        Raises ``Busy`` when the connection is closed or in use, or when SQLite
        cannot take a snapshot without waiting. The snapshot is taken here (WAL
        readers can meet SQLITE_BUSY only when they start reading), so once this
        returns, the statements of the transaction do not wait on locks.
        """
        conn = self._conn
        if conn is None or self._in_use:
            raise Busy
        if conn.in_transaction and not self._rolled_back(conn):
            raise Busy  # a transaction left by a failed end: the pooled readers serve
        conn.execute("BEGIN")
        try:
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        except BaseException as exc:
            # Whatever failed (busy, a damaged page, memory), no transaction is left open.
            self._rolled_back(conn)
            if isinstance(exc, sqlite3.OperationalError) and is_busy(exc):
                raise Busy from exc
            raise
        self._in_use = True
        return InlineStatements(conn)

    def end(self) -> None:
        """End the read transaction ``begin`` started (nothing to keep: it only read).
        Should its ROLLBACK fail, the next ``begin`` tries again before it reads."""
        conn = self._conn
        self._in_use = False
        if conn is not None and conn.in_transaction:
            self._rolled_back(conn)

    @staticmethod
    def _rolled_back(conn: sqlite3.Connection) -> bool:
        """Roll back the connection's transaction; whether none is left open."""
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        return not conn.in_transaction


def is_busy(exc: sqlite3.Error) -> bool:
    """Whether SQLite refused for a lock held elsewhere (worth retrying off the loop)."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
