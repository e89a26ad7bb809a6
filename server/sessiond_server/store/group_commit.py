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
  ``revisions.py``); the counter is stored once, just before COMMIT. Where
  the backend takes the counter only then (PostgreSQL), the batch's
  revisions are provisional until it does: its events are serialised, its
  stored responses rewritten and its results mapped with the final ones.
* A write that lost a race with another replica's transaction (the backend's
  ``is_conflict``: a unique key taken meanwhile, a deadlock the database
  broke) is rolled back to its savepoint and run again, a few times at most.
* After any error the loop asks the database whether the transaction is
  still open. SQLite rolls the whole transaction back on SQLITE_FULL or
  SQLITE_IOERR and drops its savepoints; a PostgreSQL connection can drop.
  Then the batch fails whole: nothing of it is stored, every caller is told
  UNAVAILABLE, no revision is taken, nothing is told to watchers, and the next
  batch starts afresh (the revision is read from the database at BEGIN).
* Callers are answered only after COMMIT.
* Where the backend can (PostgreSQL, :class:`LogsWithCounter`), the change-log
  rows go in the counter's own statement, serialised before the revisions are
  final; the log's readers map them (``revisions.logged_event``).
* Where a savepoint costs a round trip (PostgreSQL: the backend's hooks are
  :class:`Optimistic`), a batch first runs without savepoints. A write that
  fails with a store error having sent only reads (its guards: not found, a stale etag, a
  conflicting message id) changed nothing, so its neighbours go on. A write
  that fails after it sent a statement that may change rows, or that fails
  in the database (which aborts the transaction), rolls the whole batch back,
  and the batch runs again at once with a savepoint per write, as above.
  Nothing was answered or committed, so every write's outcome is the one
  the second run gives.

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
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from .errors import StoreError, Unavailable
from .interface import Change
from .revisions import ChangeRecorder, StoredResponse, change_rows, final

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


class Alone(Generic[T]):
    """A write that must be the first of its transaction (it locks a whole table):
    a writer whose batches may race with other writers' runs it in a batch alone."""

    def __init__(self, fn: WriteFn[T]) -> None:
        self.fn = fn

    def __call__(self, ctx: WriteContext[Any]) -> Awaitable[T] | T:
        return self.fn(ctx)


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
    async def store_revision(self, start: int, last: int) -> int | None:
        """Move the counter by ``last - start`` (the revisions this batch took); the
        shift from the batch's revisions to the stored ones: 0 (or None) where
        ``begin`` read the counter, base - ``start`` where the batch's revisions
        were provisional and the counter is taken now."""
    async def commit(self) -> None: ...
    async def rollback(self) -> None: ...
    def is_database_error(self, exc: BaseException) -> bool: ...
    def is_conflict(self, exc: BaseException) -> bool:
        """Whether a write lost a race with another transaction and may run again
        (never on a backend with one writer)."""
    def unavailable(self, exc: BaseException) -> Unavailable:
        """What a caller hears of a database failure (the detail goes to the log only)."""


@runtime_checkable
class Optimistic(Protocol):
    """Hooks of a backend whose savepoints cost a round trip: its batches run without
    them until a write fails after changing something (see the module docstring)."""

    def changes_sent(self) -> int:
        """How many statements that may change rows the batch has sent (all but plain
        SELECTs, counted by the statement text)."""


@runtime_checkable
class LogsWithCounter(Protocol):
    """Hooks of a backend that takes the counter with the change-log INSERT, in one
    statement: its events are stored with provisional revisions, which the readers of
    the log map (``revisions.logged_event``)."""

    async def store_revision_and_log(self, start: int, last: int,
                                     rows: Sequence[tuple[Any, ...]], commit: bool) -> int:
        """Move the counter by ``last - start``, store ``rows`` (change-log rows with
        provisional revisions) at their final ones, and COMMIT too when ``commit``
        (nothing else is left to write); the shift (base - ``start``)."""


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


#: How many times a write that lost a race with another replica's transaction (a
#: unique key taken meanwhile, a deadlock broken by the database) is run again.
CONFLICT_RETRIES = 3


async def run_batch(hooks: BatchHooks, jobs: Sequence[Job[Any]],
                    clock: Callable[[], int], attempt: int = 0,
                    savepoints: bool = False) -> BatchResult:
    """Run ``jobs`` in one transaction; see the module docstring for the rules.

    ``savepoints``: each write in its own savepoint even where the hooks are
    :class:`Optimistic` (the second run of a batch a write failed in).
    """

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
    # The hooks that count what they send, when this run goes without savepoints.
    counted = hooks if not alone and not savepoints and isinstance(hooks, Optimistic) \
        else None
    optimistic = counted is not None
    outcomes: list[tuple[Job[Any], Any, BaseException | None]] = []
    changes: list[Change] = []
    responses: list[StoredResponse] = []
    # Round trips saved: a write's savepoint is released when the next write sets its
    # own (one statement), the last one by COMMIT; the change-log rows of the whole
    # batch go in one statement after the counter moved.
    held = False
    for job in jobs:
        tries = 0
        while True:
            ctx.begin_write()
            sent = counted.changes_sent() if counted is not None else 0
            try:
                if not alone and not optimistic and not tries:
                    # (a retry keeps the savepoint it rolled back to)
                    await (hooks.renew_savepoint() if held else hooks.savepoint())
                    held = True
                result = job.fn(ctx)
                if inspect.isawaitable(result):
                    result = await result
            except Exception as exc:
                ctx.abandon_write()
                retry = hooks.is_conflict(exc)
                if alone:
                    await _rollback_quietly(hooks)
                    if retry and attempt < CONFLICT_RETRIES:
                        return await run_batch(hooks, jobs, clock, attempt + 1)
                    return BatchResult([(job, None, failure_of(hooks, exc))], 0, [], False)
                if counted is not None:
                    if counted.changes_sent() == sent and isinstance(exc, StoreError):
                        # A guard refused it after reads alone: nothing to undo, the
                        # neighbours go on.
                        outcomes.append((job, None, failure_of(hooks, exc)))
                        break
                    await _rollback_quietly(hooks)
                    return await run_batch(hooks, jobs, clock, attempt, savepoints=True)
                if not hooks.in_transaction():
                    # The database ended the transaction (and its savepoints) itself.
                    log.error("the database rolled back a batch of %d writes: %s",
                              len(jobs), exc)
                    return await fail_all(exc)
                try:
                    await hooks.rollback_to()  # the savepoint stays, for the next write
                except Exception as undo_failed:
                    return await fail_all(undo_failed)
                tries += 1
                if retry and tries <= CONFLICT_RETRIES:
                    continue
                outcomes.append((job, None, failure_of(hooks, exc)))
                break
            written, stored = ctx.take_pending()
            changes.extend(written)
            responses.extend(stored)
            outcomes.append((job, result, None))
            break
    try:
        shift = 0
        logged = False
        if ctx.revision != start:
            if changes and isinstance(hooks, LogsWithCounter):
                # COMMIT with it unless stored responses wait for their final revision.
                shift = await hooks.store_revision_and_log(
                    start, ctx.revision, change_rows(changes), commit=not responses)
                logged = True
            else:
                shift = await hooks.store_revision(start, ctx.revision) or 0
        if shift:
            changes = final(changes, shift)
            rewrites: dict[str, list[tuple[Any, ...]]] = {}
            for sql, key, response in responses:
                rewrites.setdefault(sql, []).append(
                    (*key, final(response, shift).SerializeToString()))
            for sql, rows in rewrites.items():
                await hooks.tx.executemany(sql, rows)
        if changes and not logged:
            await hooks.tx.executemany(hooks.changes_sql, change_rows(changes))
        await hooks.commit()  # (done already where store_revision_and_log committed)
    except Exception as exc:
        return await fail_all(exc)
    if shift:
        outcomes = [(job, final(result, shift), exc) for job, result, exc in outcomes]
    last = ctx.revision + shift if ctx.revision != start else 0
    return BatchResult(outcomes, last, changes, True)


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
