"""The server's own retention: sessions idle past the TTL and beyond the count cap go.

The retention loop runs on a short interval here and reads the injected clock,
so the tests move time forward instead of waiting for it; they poll (bounded)
only for the loop's next turn.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from harness import append, create_session, user
from principals import Caller, Grant, write_key_file
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


async def ids_seen_by(address: str, key: str) -> list[str]:
    caller = Caller(address, key)
    try:
        return await listed_ids(caller)
    finally:
        await caller.close()


async def lay_out(address: str, key: str, clock: Any, session_ids: list[str]) -> None:
    caller = Caller(address, key)
    try:
        for sid in session_ids:
            await create_session(caller.sessions, sid)
            clock.advance(10)
    finally:
        await caller.close()


async def test_retention_applies_to_every_tenant_with_a_cap_per_tenant(
        make_server: Any, tmp_path: Path) -> None:
    keys = write_key_file(tmp_path / "keys.toml", [Grant("a", "acme", "admin"),
                                                   Grant("b", "bolt", "admin")])
    setup = await make_server(api_keys_file=tmp_path / "keys.toml")
    await lay_out(setup.address, keys["a"], setup.clock, ["a-0", "a-1", "a-2", "a-old"])
    await lay_out(setup.address, keys["b"], setup.clock, ["b-0", "b-1", "b-2"])
    setup.clock.advance(5000)
    for name in ("a", "b"):  # one session of each tenant active again; the rest idle 5,000 s
        caller = Caller(setup.address, keys[name])
        try:
            await append(caller.messages, f"{name}-0", user("touched last"))
        finally:
            await caller.close()
    await setup.close()
    server = await make_server(database=setup.database, clock=setup.clock,
                               api_keys_file=tmp_path / "keys.toml", retention_max_sessions=2,
                               retention_ttl_seconds=3600, retention_interval_seconds=0.02)
    async with asyncio.timeout(POLL_LIMIT_SECONDS):
        while [await ids_seen_by(server.address, keys[n]) for n in "ab"] != [["a-0"], ["b-0"]]:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    assert await server.check_consistency() == []


async def test_the_cap_counts_each_tenants_sessions_apart(make_server: Any,
                                                         tmp_path: Path) -> None:
    keys = write_key_file(tmp_path / "keys.toml", [Grant("a", "acme", "admin"),
                                                   Grant("b", "bolt", "admin")])
    setup = await make_server(api_keys_file=tmp_path / "keys.toml")
    await lay_out(setup.address, keys["a"], setup.clock, ["a-0", "a-1", "a-2"])
    await lay_out(setup.address, keys["b"], setup.clock, ["b-0"])
    await setup.close()
    server = await make_server(database=setup.database, clock=setup.clock,
                               api_keys_file=tmp_path / "keys.toml", retention_max_sessions=2,
                               retention_interval_seconds=0.02)
    async with asyncio.timeout(POLL_LIMIT_SECONDS):
        while await ids_seen_by(server.address, keys["a"]) != ["a-1", "a-2"]:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    # bolt's one session is within its own cap, whatever acme holds.
    assert await ids_seen_by(server.address, keys["b"]) == ["b-0"]
