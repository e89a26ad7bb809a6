"""What the stats rollups cost the write path: appends/s with and without their triggers.

Store level (no gRPC), SQLite, durability "full": the same writers append 1 KB
messages to a fresh database whose rollup triggers are in place, then to one
where they were dropped, alternating, several rounds each. The medians and
their ratio go to stdout, last as one line:

    RESULT_ROLLUPS with=<appends/s> without=<appends/s> ratio=<with/without>

    python -m bench.rollups [--writers 64] [--seconds 3] [--rounds 3]

The database without triggers is only for this measurement: its rollups go
stale, which ``check_consistency`` would report.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
from pathlib import Path

from sessiond_server.store import SQLiteStore

from bench.replicas import appends_per_second, clock

ROLLUP_TRIGGERS = (
    "sessions_rollup_insert", "sessions_rollup_delete", "sessions_rollup_update",
    "usage_rollup_insert", "usage_rollup_delete", "usage_rollup_update",
    "usage_rollup_session_delete", "usage_rollup_session_move",
    "active_rollup_insert", "active_rollup_delete", "active_rollup_update",
)


async def rate(path: Path, writers: int, seconds: float, triggers: bool) -> float:
    """Appends/s of 1 KB messages on a fresh database, its rollup triggers kept or dropped."""
    store = SQLiteStore(path, clock=clock, durability="full")
    await store.open()
    await store.close()
    if not triggers:
        with sqlite3.connect(path) as conn:
            for name in ROLLUP_TRIGGERS:
                conn.execute(f"DROP TRIGGER {name}")
    store = SQLiteStore(path, clock=clock, durability="full")
    await store.open()
    try:
        return await appends_per_second([store], writers, seconds, content="x" * 1024)
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rates: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory(prefix="sessiond-bench-rollups-") as tmp:
        for round_ in range(args.rounds):
            for triggers in (True, False):
                path = Path(tmp) / f"{round_}-{int(triggers)}.db"
                measured = asyncio.run(rate(path, args.writers, args.seconds, triggers))
                rates[triggers].append(measured)
                print(f"round {round_ + 1}: {'with' if triggers else 'without'} rollup triggers:"
                      f" {measured:,.0f} appends/s", flush=True)
    with_, without = statistics.median(rates[True]), statistics.median(rates[False])
    print(f"RESULT_ROLLUPS with={with_:.0f} without={without:.0f} ratio={with_ / without:.3f}")


if __name__ == "__main__":
    main()
