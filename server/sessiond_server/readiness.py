"""Readiness that follows the storage: health turns NOT_SERVING while the database cannot answer.

A replica whose database is down (PostgreSQL stopped, a SQLite file held by another
process's write lock) fails every write; a readiness probe must see that, so load balancers
stop sending it calls, and must see it recover. The server therefore probes its store every
``interval`` seconds with the same check the start uses (``ping_database``: a read through a
reader connection and an empty write transaction on the writer). One probe that fails or is
still running after ``interval`` counts as a failure; ``failures`` in a row turn health
NOT_SERVING, and the first probe that succeeds turns it SERVING again. Requiring several
failures in a row keeps one slow query from flapping the status; a probe that hangs is not
started again until it finishes, so a stuck database never piles probes up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("sessiond")


class StorageReadiness:
    """The probe loop; ``set_serving`` is called only when the status changes."""

    def __init__(self, probe: Callable[[], Awaitable[None]],
                 set_serving: Callable[[bool], Awaitable[None]],
                 interval: float, failures: int) -> None:
        self._probe = probe
        self._set_serving = set_serving
        self._interval = interval
        self._failures_needed = failures
        self._closed = False
        self.serving = True

    def close(self) -> None:
        """Stop changing the health status (shutdown owns it from now on)."""
        self._closed = True

    async def run(self) -> None:
        pending: asyncio.Future[None] | None = None
        failed = 0
        try:
            while not self._closed:
                await asyncio.sleep(self._interval)
                if pending is None:
                    pending = asyncio.ensure_future(self._probe())
                done, _ = await asyncio.wait({pending}, timeout=self._interval)
                error: BaseException | None = None
                if pending in done:
                    error = pending.exception()
                    pending = None
                    ok = error is None
                else:
                    ok = False
                failed = 0 if ok else failed + 1
                if self._closed:
                    return
                if ok and not self.serving:
                    self.serving = True
                    log.warning("the database answers again: serving")
                    await self._set_serving(True)
                elif not ok and self.serving and failed >= self._failures_needed:
                    self.serving = False
                    log.error("the database does not answer (%d probes in a row: %s): "
                              "not serving until it does", failed,
                              repr(error) if error else f"no answer in {self._interval:g}s")
                    await self._set_serving(False)
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
