"""What the revision counter costs: appends/s on SQLite vs PostgreSQL with 1 and 2 replicas,
and how long a commit on one replica takes to reach the other's listeners.

Store level (no gRPC), so the numbers are the storage's own. Each run makes a
fresh database: a temp SQLite file (durability "full"), or a new database on
the PostgreSQL server at $SESSIOND_TEST_POSTGRES_URL (start one with
``eval "$(scripts/postgres.sh start)"``; keep fsync on for numbers that mean
something).

    python -m bench.replicas [--writers 32] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sessiond.v1 import message_pb2, session_pb2
from sessiond_server.store import Scope, SQLiteStore


def clock() -> int:
    return time.time_ns() // 1000


async def new_postgres_database(admin_url: str) -> str:
    import asyncpg

    name = f"sessiond_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    finally:
        await conn.close()
    return admin_url.rsplit("/", 1)[0] + "/" + name


async def appends_per_second(stores: list[Any], writers: int, seconds: float,
                             content: str = "hello " * 20) -> float:
    """Concurrent writers, spread over the stores, each appending ``content`` to its own
    session."""
    for i in range(writers):
        await stores[i % len(stores)].create_session(Scope(), session_pb2.Session(id=f"w{i}"))
    done = 0
    stop = time.monotonic() + seconds

    async def writer(i: int) -> None:
        nonlocal done
        store = stores[i % len(stores)]
        message = message_pb2.Message(role=message_pb2.ROLE_USER, content=content)
        while time.monotonic() < stop:
            await store.append_messages(Scope(), f"w{i}", [message], None)
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(writer(i) for i in range(writers)))
    return done / (time.monotonic() - started)


async def watch_delay(a: Any, b: Any, samples: int = 200) -> list[float]:
    """Seconds from a write's answer on ``a`` to its delivery to ``b``'s listeners."""
    delivered: dict[int, float] = {}
    arrived = asyncio.Event()

    def listener(changes: Any) -> None:
        for change in changes:
            delivered.setdefault(change.revision, time.monotonic())
        arrived.set()

    b.add_listener(listener)
    await a.create_session(Scope(), session_pb2.Session(id="probe"))
    delays = []
    message = message_pb2.Message(role=message_pb2.ROLE_USER, content="probe")
    for _ in range(samples):
        result = await a.append_messages(Scope(), "probe", [message], None)
        answered = time.monotonic()
        while result.revision not in delivered:
            arrived.clear()
            await arrived.wait()
        delays.append(max(0.0, delivered[result.revision] - answered))
    return delays


async def main(writers: int, seconds: float) -> None:
    print(f"appends/s, {writers} concurrent writers, {seconds:.0f}s each, one message per call")
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = SQLiteStore(Path(tmp) / "bench.db", clock=clock)
        await sqlite.open()
        try:
            rate = await appends_per_second([sqlite], writers, seconds)
            print(f"  sqlite (durability full)   {rate:8.0f}")
        finally:
            await sqlite.close()
    admin_url = os.environ.get("SESSIOND_TEST_POSTGRES_URL")
    if not admin_url:
        print("  postgres: set SESSIOND_TEST_POSTGRES_URL (scripts/postgres.sh start)")
        return
    from sessiond_server.store.postgres import PostgresStore

    for replicas in (1, 2):
        url = await new_postgres_database(admin_url)
        stores = [PostgresStore(url, clock=clock) for _ in range(replicas)]
        for store in stores:
            await store.open()
        try:
            rate = await appends_per_second(stores, writers, seconds)
            batches = sum(s.writer_stats[0] for s in stores)
            writes = sum(s.writer_stats[1] for s in stores)
            print(f"  postgres, {replicas} replica{'s' if replicas > 1 else ' '}      "
                  f"{rate:8.0f}   ({writes / max(1, batches):.1f} writes per transaction)")
            if replicas == 2:
                delays = sorted(await watch_delay(stores[0], stores[1]))
                print(f"watch delay, commit on one replica to the other's hub: median "
                      f"{statistics.median(delays) * 1000:.2f} ms, p99 "
                      f"{delays[int(len(delays) * 0.99) - 1] * 1000:.2f} ms")
        finally:
            for store in stores:
                await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    asyncio.run(main(args.writers, args.seconds))
