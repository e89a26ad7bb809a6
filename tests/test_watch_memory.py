"""Watch memory, measured on a real ``sessiond serve`` process: bounded in bytes per stream.

A watch stream reads the next step of the change log only once its client
has taken what the previous step sent (flow control). So clients that open
a watch from revision 1 and then never read hold a small, fixed amount of
server memory each, not a backlog of the log. The bound asserted here is
generous (8 MiB per stream; about 3 to 4 MiB measured: 1 MiB of read-ahead,
one response of at most 1 MiB and its encoding); before flow control each such
stream held its 256-revision read and every response packed from it (15 MiB
each here), and a stream replaying one revision larger than the hub's buffer
held all of it (28 MiB each for a 21 MB revision).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import field_mask_pb2
from sessiond.v1 import session_pb2, session_service_pb2, session_service_pb2_grpc

WATCHERS = 30
REVISIONS = 500
GOAL_BYTES = 40_000  # about 40 KB per revision: 64 of them still fit in a 4 MiB response
MIB = 1 << 20
# Generous: what one stalled stream may hold (read-ahead, one response, gRPC's buffers).
BOUND_PER_WATCHER = 8 * MIB


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


async def settled_rss(pid: int, samples: int = 6, most_polls: int = 120) -> int:
    """RSS once it has stopped growing for a few samples in a row (or after most_polls)."""
    highest = rss_bytes(pid)
    steady = 0
    for _ in range(most_polls):
        await asyncio.sleep(0.5)
        now = rss_bytes(pid)
        if now > highest + MIB:
            highest, steady = now, 0
        else:
            highest = max(highest, now)
            steady += 1
            if steady >= samples:
                break
    return highest


async def write_log(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = session_service_pb2_grpc.SessionServiceStub(channel)
        await stub.CreateSession(session_service_pb2.CreateSessionRequest(
            session=session_pb2.Session(id="big")))
        revision = 0
        for i in range(REVISIONS):
            answer = await stub.UpdateSession(session_service_pb2.UpdateSessionRequest(
                session=session_pb2.Session(id="big", goal=f"{i:08d}" * (GOAL_BYTES // 8)),
                update_mask=field_mask_pb2.FieldMask(paths=["goal"])))
            revision = answer.revision
        return int(revision)


async def test_watchers_that_never_read_hold_a_bounded_amount_of_server_memory(
        server_process: Any) -> None:
    proc = server_process()
    assert proc.process is not None
    pid = proc.process.pid
    await write_log(proc.address)
    before = await settled_rss(pid)
    channels = [grpc.aio.insecure_channel(proc.address) for _ in range(WATCHERS)]
    calls = []
    try:
        for channel in channels:
            stub = session_service_pb2_grpc.SessionServiceStub(channel)
            call = stub.WatchSessions(session_service_pb2.WatchSessionsRequest(start_revision=1))
            first = await call.read()
            assert first.type == session_service_pb2.WATCH_RESPONSE_TYPE_CREATED
            calls.append(call)  # and never read again
        after = await settled_rss(pid)
        # Every stream is still open: nothing was refused or dropped to save memory.
        assert not any(call.done() for call in calls)
    finally:
        for call in calls:
            call.cancel()
        for channel in channels:
            await channel.close()
    growth = after - before
    assert growth < WATCHERS * BOUND_PER_WATCHER, (
        f"{WATCHERS} stalled watchers took the server from {before / MIB:.0f} MiB to "
        f"{after / MIB:.0f} MiB ({growth / WATCHERS / MIB:.1f} MiB each)")


#: Sessions of the huge revision: 7.8 MB, under ReconcileSessions' 8 MiB per call.
HUGE_SESSIONS = 90


async def write_huge_revision(address: str, sessions: int) -> int:
    """Sessions of about 87 KB each, then one ReconcileSessions marking them all: one
    revision (ReconcileSessions marks up to 8 MiB of sessions per call)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = session_service_pb2_grpc.SessionServiceStub(channel)
        for i in range(sessions):
            await stub.CreateSession(session_service_pb2.CreateSessionRequest(
                session=session_pb2.Session(
                    id=f"s{i:04d}", runtime_instance="rt", goal=f"{i:08d}" * 8192,
                    labels={f"{k:063d}": "v" * 256 for k in range(64)})))
        answer = await stub.ReconcileSessions(
            session_service_pb2.ReconcileSessionsRequest(runtime_instance="rt"))
        assert len(answer.marked_session_ids) == sessions
        return int(answer.revision)


async def test_watchers_replaying_a_revision_larger_than_the_buffer_read_it_in_pieces(
        server_process: Any) -> None:
    """A 7.8 MB revision (beyond a 4 MiB hub buffer) costs each stalled stream a piece."""
    proc = server_process(None, "--watch-buffer-bytes", str(4 << 20))
    assert proc.process is not None
    pid = proc.process.pid
    huge = await write_huge_revision(proc.address, HUGE_SESSIONS)
    before = await settled_rss(pid)
    channels = [grpc.aio.insecure_channel(proc.address) for _ in range(WATCHERS)]
    calls = []
    try:
        for channel in channels:
            stub = session_service_pb2_grpc.SessionServiceStub(channel)
            call = stub.WatchSessions(session_service_pb2.WatchSessionsRequest(
                start_revision=huge))
            assert (await call.read()).type == session_service_pb2.WATCH_RESPONSE_TYPE_CREATED
            calls.append(call)
        after = await settled_rss(pid)
        assert not any(call.done() for call in calls)
        # And a reader that does read gets the whole revision, in fragments.
        stub = session_service_pb2_grpc.SessionServiceStub(channels[0])
        parts = []
        async for response in stub.WatchSessions(
                session_service_pb2.WatchSessionsRequest(start_revision=huge)):
            if response.type == session_service_pb2.WATCH_RESPONSE_TYPE_EVENTS:
                parts.append(response)
                if not response.fragment:
                    break
    finally:
        for call in calls:
            call.cancel()
        for channel in channels:
            await channel.close()
    assert len(parts) > 5 and all(p.revision == huge for p in parts)
    assert sum(len(p.events) for p in parts) == HUGE_SESSIONS
    growth = after - before
    assert growth < WATCHERS * BOUND_PER_WATCHER, (
        f"{WATCHERS} stalled watchers of a huge revision took the server from "
        f"{before / MIB:.0f} MiB to {after / MIB:.0f} MiB ({growth / WATCHERS / MIB:.1f} MiB each)")
