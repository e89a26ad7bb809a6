"""GetStats' active/abandoned split, counted from the active rollup (ACTIVE sessions by
minute of last activity), equals a recount whatever the writes and clock moves.

The rollup serves tenant-wide stats and windows of whole days (SQLite); naming every kind
makes the same filter a row-by-row sum, which is the recount compared against. Random
creates, appends, touches, ends, deletes, purges, reconciles and clock moves of seconds to
hours, checked after every step and by the store's consistency check at the end.
"""

from __future__ import annotations

import random

import pytest
from harness import append, create_session, timestamp, user
from sessiond.v1 import session_pb2 as sp
from sessiond.v1 import session_service_pb2 as ss
from sessiond.v1 import stats_service_pb2 as st

HOUR = 3_600_000_000
DAY = 24 * HOUR
ALL_KINDS = [sp.SESSION_KIND_INTERACTIVE, sp.SESSION_KIND_AUTONOMOUS,
             sp.SESSION_KIND_AGENT_TO_AGENT]


async def stats(server, **filter_fields) -> st.Stats:
    answer = await server.stats.GetStats(
        st.GetStatsRequest(filter=sp.SessionFilter(**filter_fields)))
    return answer.stats


async def assert_stats_equal_recount(server, origin: int) -> None:
    for filter_fields in ({}, {"owner_ids": ["o1"]}, {"dataset_ids": ["d0", "d2"]},
                          {"started": sp.TimeRange(start=timestamp(origin + DAY))}):
        fast = await stats(server, **filter_fields)
        recount = await stats(server, kinds=ALL_KINDS, **filter_fields)
        assert fast == recount, filter_fields


# Creates and appends outweigh the writes that end sessions, so tens of sessions stay
# ACTIVE, spread over the minutes around the cutoff.
ACTIONS = ["create", "append", "touch", "end", "delete", "purge", "reconcile", "clock"]
WEIGHTS = [6, 6, 2, 1, 1, 0.3, 0.3, 6]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_active_and_abandoned_counts_equal_a_recount_under_random_writes_and_clock_moves(
        make_server, seed):
    rng = random.Random(seed)
    server = await make_server(abandoned_after_seconds=600)
    origin = server.clock.now_micros() - server.clock.now_micros() % DAY
    live: list[str] = []
    ended: set[str] = set()
    created = 0
    seen_split = False
    for step in range(200):
        action = rng.choices(ACTIONS, WEIGHTS)[0]
        if action == "create" or not live:
            sid = f"s{created}"
            created += 1
            await create_session(server.sessions, sid, owner_id=f"o{created % 3}",
                                 dataset_id=f"d{created % 4}",
                                 runtime_instance=f"r{created % 2}")
            live.append(sid)
        elif action in ("append", "touch", "end") and set(live) <= ended:
            server.clock.advance(1)
        elif action == "append":
            sid = rng.choice([sid for sid in live if sid not in ended])
            await append(server.messages, sid, user("still here"))
        elif action == "touch":
            sid = rng.choice([sid for sid in live if sid not in ended])
            await server.sessions.TouchSession(ss.TouchSessionRequest(session=sp.Session(id=sid)))
        elif action == "end":
            sid = rng.choice([sid for sid in live if sid not in ended])
            ended.add(sid)
            await server.sessions.EndSession(ss.EndSessionRequest(
                session_id=sid,
                status=rng.choice([sp.SESSION_STATUS_COMPLETED, sp.SESSION_STATUS_FAILED])))
        elif action == "delete":
            sid = live.pop(rng.randrange(len(live)))
            await server.sessions.DeleteSession(ss.DeleteSessionRequest(session_id=sid))
        elif action == "purge":
            before = server.clock.now_micros() - rng.choice([300, 900, 3600]) * 1_000_000
            await server.sessions.PurgeSessions(ss.PurgeSessionsRequest(
                last_activity_before=timestamp(before)))
            listed = await server.sessions.ListSessions(ss.ListSessionsRequest(page_size=500))
            kept = {s.id for s in listed.sessions}
            live = [sid for sid in live if sid in kept]
        elif action == "reconcile":
            instance = rng.randrange(2)
            answer = await server.sessions.ReconcileSessions(ss.ReconcileSessionsRequest(
                runtime_instance=f"r{instance}", keep_session_ids=live[::2]))
            ended.update(answer.marked_session_ids)
        else:
            # Seconds (inside one minute or across a few), up to hours.
            server.clock.advance(rng.choices([1, 7, 29, 59, 61, 130, 599, 601, 3 * 3600],
                                             [3, 3, 3, 3, 3, 3, 1, 1, 1])[0])
        await assert_stats_equal_recount(server, origin)
        everything = await stats(server)
        if step % 25 == 0:
            assert await server.check_consistency() == []
        seen_split = seen_split or (everything.active_count > 0
                                    and everything.abandoned_count > 0)
    assert seen_split
    assert await server.check_consistency() == []
