"""The server's own retention: sessions idle past the TTL and beyond the count cap go.

The retention loop runs on a short interval here and reads the injected clock,
so the tests move time forward instead of waiting for it; they poll (bounded)
only for the loop's next turn.
"""

from __future__ import annotations

import asyncio
from typing import Any

from harness import append, create_session, user
from sessiond.v1 import session_service_pb2 as ss

POLL_LIMIT_SECONDS = 20.0


async def listed_ids(server: Any) -> list[str]:
    answer = await server.sessions.ListSessions(ss.ListSessionsRequest(page_size=500))
    return sorted(s.id for s in answer.sessions)


async def wait_for_ids(server: Any, expected: list[str]) -> None:
    # The loop's turns are not observable from outside: poll, bounded.
    async with asyncio.timeout(POLL_LIMIT_SECONDS):
        while await listed_ids(server) != expected:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def test_sessions_idle_past_the_ttl_are_purged_and_active_ones_stay(
        make_server: Any) -> None:
    server = await make_server(retention_ttl_seconds=3600, retention_interval_seconds=0.02)
    for sid in ("old-1", "old-2", "fresh"):
        await create_session(server.sessions, sid)
    server.clock.advance(3000)
    await append(server.messages, "fresh", user("still here"))
    server.clock.advance(1000)  # old-* idle 4000 s > TTL; fresh idle 1000 s
    await wait_for_ids(server, ["fresh"])
    assert await server.check_consistency() == []


async def test_the_session_cap_keeps_the_most_recently_active(make_server: Any) -> None:
    # The sessions are laid out with no retention running: a loop already capping
    # at two could take "a" before it is touched. The capped server then opens
    # the same data.
    setup = await make_server()
    for i, sid in enumerate(("a", "b", "c", "d")):
        await create_session(setup.sessions, sid)
        setup.clock.advance(10 + i)
    await append(setup.messages, "a", user("touched last"))
    await setup.close()
    server = await make_server(database=setup.database, clock=setup.clock,
                               retention_max_sessions=2, retention_interval_seconds=0.02)
    await wait_for_ids(server, ["a", "d"])
    assert await server.check_consistency() == []
