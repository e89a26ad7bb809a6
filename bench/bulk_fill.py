"""Filling a database with many sessions before the server starts.

The listing and stats scenarios need 200,000 and 1,000,000 sessions. Filled
through gRPC (CreateSession + RecordUsage) that takes tens of minutes on two
cores, so the full run fills in-process through the server's own store,
``sessiond_server.store.sqlite.SQLiteStore``, with its public methods: the
rows, counters, per-model usage rows and change log are exactly what the
server would have written, only without the RPC layer. Writes go in flight in
large numbers so the store's group commit batches them, with durability
"normal" (the fill is not what is measured). The server is then started on
that file as usual.

The quick run fills through gRPC instead (``Suite.fill_sessions``), which also
measures the public write path; both fills build the same sessions (see
``workload.fill_session_calls``).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from sessiond.v1 import session_service_pb2, stats_service_pb2

from bench import workload

IN_FLIGHT = 512


async def _fill(path: Path, first: int, count: int, base_us: int, deadline_s: float) -> int:
    from sessiond_server.config import wall_clock_micros
    from sessiond_server.store.interface import Scope
    from sessiond_server.store.sqlite import SQLiteStore

    store = SQLiteStore(path, clock=wall_clock_micros, durability="normal", max_batch=1024)
    await store.open()
    scope = Scope()
    done = 0
    stop_at = time.monotonic() + deadline_s
    indices = iter(range(first, first + count))

    async def worker() -> None:
        nonlocal done
        for index in indices:
            if time.monotonic() > stop_at:
                return
            create, usage = workload.fill_session_calls(index, base_us)
            request = session_service_pb2.CreateSessionRequest.FromString(create.request)
            await store.create_session(scope, request.session)
            record = stats_service_pb2.RecordUsageRequest.FromString(usage.request)
            await store.record_usage(
                scope, record.session_id, record.model, record.usage, record.errored, ""
            )
            done += 1

    try:
        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    finally:
        await store.close()
    return done


def fill_sessions(path: Path, first: int, count: int, base_us: int, deadline_s: float) -> int:
    """Create sessions first..first+count-1 in the database at ``path``.

    Runs in a process of its own (the caller's pool), returns how many were
    created before the deadline.
    """
    return asyncio.run(_fill(path, first, count, base_us, deadline_s))
