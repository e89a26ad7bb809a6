"""Group commit, written once: one transaction per batch of writes, each write in a savepoint.

Every backend's writer (``sqlite_writer.py``: one thread; ``postgres_writer.py``:
one task per replica) collects whatever writes are queued and hands them to
:func:`run_batch` with its :class:`BatchHooks`, which differ only in how a
transaction is begun, marked, committed and asked whether it is still open.

The rules, for every backend:

* One transaction per batch. Each write runs in its own savepoint, so a write
  that fails rolls back alone and its neighbours still commit (a lone write
  needs no savepoint: the whole transaction is its own).
* Each write that changes something takes the next revision (see
  ``revisions.py``); the counter is stored once, just before COMMIT.
* After any error the loop asks the database whether the transaction is
  still open. SQLite rolls the whole transaction back on SQLITE_FULL or
  SQLITE_IOERR and drops its savepoints; a PostgreSQL connection can drop.
  Then the batch fails whole: nothing of it is stored, every caller is told
  UNAVAILABLE, no revision is taken, nothing is told to watchers, and the next
  batch starts afresh (the revision is read from the database at BEGIN).
* Callers are answered only after COMMIT.

The writes are coroutines even on SQLite, where the writer thread drives
them with :func:`run_sync`: every await inside a write is a statement on the
writer's own connection, which never suspends, so a write that awaits
anything else fails loudly instead of holding the transaction open.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import queue
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Generic, Protocol, TypeVar

from .errors import StoreError, Unavailable
from .interface import Change
from .revisions import ChangeRecorder

log = logging.getLogger(__name__)

T = TypeVar("T")
#: The driver's connection type.
C = TypeVar("C")


class Statements(Protocol):
    """How a dialect sends statements on one connection (inside a transaction).

    Rows come back as sequences read by position in the order the SELECT
    names its columns.
    """

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]: ...
    async def fetchrow(self, sql: str, params: Sequence[Any] = ()) -> Any: ...
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; the number of rows it changed."""
    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...


class WriteContext(ChangeRecorder, Generic[C]):
    """What a write function gets: statements, the driver connection, the time, revisions."""

    def __init__(self, tx: Statements, conn: C, revision: int,
                 clock: Callable[[], int]) -> None:
        super().__init__(revision, clock)
        self.tx = tx
        # The driver's own connection, for writes that are not (yet) dialect-neutral.
        self.conn = conn


#: A write: a function of the context, a coroutine function (or, for the SQLite
#: maintenance writes, a plain function).
WriteFn = Callable[["WriteContext[Any]"], "Awaitable[T] | T"]


class Job(Generic[T]):
    __slots__ = ("fn", "future")

    def __init__(self, fn: WriteFn[T], future: asyncio.Future[T]) -> None:
        self.fn = fn
        self.future = future


class BatchHooks(Protocol):
    """What a backend does at each step of a batch's transaction."""

    #: The change-log INSERT in the dialect's placeholders (7 values).
    @property
    def changes_sql(self) -> str: ...
    @property
    def tx(self) -> Statements: ...
    @property
    def conn(self) -> Any: ...

    async def begin(self) -> int:
        """Begin the transaction; the stored revision counter (locked where it must be)."""
    async def savepoint(self) -> None: ...
    async def renew_savepoint(self) -> None:
        """Release the savepoint and set it again, in one round trip where the driver can."""
    async def rollback_to(self) -> None: ...
    def in_transaction(self) -> bool:
        """Whether the database still has the batch's transaction open."""
    async def store_revision(self, start: int, last: int) -> None:
        """Move the counter from ``start`` to ``last`` (the revisions this batch took)."""
    async def commit(self) -> None: ...
    async def rollback(self) -> None: ...
    def is_database_error(self, exc: BaseException) -> bool: ...
    def unavailable(self, exc: BaseException) -> Unavailable:
        """What a caller hears of a database failure (the detail goes to the log only)."""


@dataclasses.dataclass
class BatchResult:
    """Each job's outcome, and what was committed (last revision 0: nothing new)."""

    outcomes: list[tuple[Job[Any], Any, BaseException | None]]
    last_revision: int
    changes: list[Change]
    committed: bool


def failure_of(hooks: BatchHooks, exc: BaseException) -> BaseException:
    """What the caller of a failed write is answered with."""
    if isinstance(exc, StoreError):
        return exc
    if hooks.is_database_error(exc):
        log.error("write failed in the database: %s", exc)
        return hooks.unavailable(exc)
    log.error("write failed", exc_info=exc)
    return exc


async def _rollback_quietly(hooks: BatchHooks) -> None:
    try:
        await hooks.rollback()
    except Exception as exc:  # the transaction may be gone already
        if not hooks.is_database_error(exc):
            raise


async def run_batch(hooks: BatchHooks, jobs: Sequence[Job[Any]],
                    clock: Callable[[], int]) -> BatchResult:
    """Run ``jobs`` in one transaction; see the module docstring for the rules."""

    async def fail_all(exc: BaseException) -> BatchResult:
        await _rollback_quietly(hooks)
        if hooks.is_database_error(exc):
            log.error("write transaction of %d writes rolled back: %s", len(jobs), exc)
        failure = hooks.unavailable(exc) if hooks.is_database_error(exc) else (
            exc if isinstance(exc, StoreError) else Unavailable("the write batch failed"))
        return BatchResult([(job, None, failure) for job in jobs], 0, [], False)

    try:
        start = await hooks.begin()
    except Exception as exc:
        return await fail_all(exc)
    ctx: WriteContext[Any] = WriteContext(hooks.tx, hooks.conn, start, clock)
    alone = len(jobs) == 1
    outcomes: list[tuple[Job[Any], Any, BaseException | None]] = []
    changes: list[Change] = []
    change_rows: list[tuple[Any, ...]] = []
    # Round trips saved: a write's savepoint is released when the next write sets its
    # own (one statement), the last one by COMMIT; the change-log rows of the whole
    # batch go in one statement before the counter moves.
    held = False
    for job in jobs:
        ctx.begin_write()
        try:
            if not alone:
                await (hooks.renew_savepoint() if held else hooks.savepoint())
                held = True
            result = job.fn(ctx)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            ctx.abandon_write()
            if alone:
                await _rollback_quietly(hooks)
                return BatchResult([(job, None, failure_of(hooks, exc))], 0, [], False)
            if not hooks.in_transaction():
                # The database ended the transaction (and its savepoints) itself.
                log.error("the database rolled back a batch of %d writes: %s", len(jobs), exc)
                return await fail_all(exc)
            try:
                await hooks.rollback_to()  # the savepoint stays, for the next write
            except Exception as undo_failed:
                return await fail_all(undo_failed)
            outcomes.append((job, None, failure_of(hooks, exc)))
            continue
        written, rows = ctx.take_pending()
        changes.extend(written)
        change_rows.extend(rows)
        outcomes.append((job, result, None))
    try:
        if change_rows:
            await hooks.tx.executemany(hooks.changes_sql, change_rows)
        if ctx.revision != start:
            await hooks.store_revision(start, ctx.revision)
        await hooks.commit()
    except Exception as exc:
        return await fail_all(exc)
    return BatchResult(outcomes, ctx.revision if ctx.revision != start else 0, changes, True)


def take_batch(first: Job[Any], get_nowait: Callable[[], Job[Any] | None],
               max_batch: int) -> tuple[list[Job[Any]], bool]:
    """``first`` and whatever else is queued, up to ``max_batch``; and whether the queue
    said stop (a None). ``get_nowait`` raises queue.Empty or asyncio.QueueEmpty."""
    batch = [first]
    while len(batch) < max_batch:
        try:
            nxt = get_nowait()
        except (queue.Empty, asyncio.QueueEmpty):
            break
        if nxt is None:
            return batch, True
        batch.append(nxt)
    return batch, False


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (every await is a synchronous statement)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise RuntimeError("a write awaited something other than its own connection")


def settle(outcomes: Sequence[tuple[Job[Any], Any, BaseException | None]]) -> None:
    """Answer each caller (on the event loop's thread)."""
    for job, result, exc in outcomes:
        if job.future.done():
            continue
        if exc is not None:
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)
