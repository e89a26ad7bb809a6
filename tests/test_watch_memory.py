"""Watch memory, measured on a real ``sessiond serve`` process: bounded in bytes per stream.

A watch stream reads the next step of the change log only once its client
has taken what the previous step sent (flow control). So clients that open
a watch from revision 1 and then never read hold a small, fixed amount of
server memory each, not a backlog of the log. The bound asserted here is
generous (several MiB per stream against about 1 MiB of read-ahead and one
response of at most 1 MiB); before flow control each such stream held its
256-revision read and every response packed from it, about 20 MB here.
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
BOUND_PER_WATCHER = 6 * MIB


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
