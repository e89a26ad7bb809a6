"""WatchSessions over random workloads: a replay equals the live stream.

Hypothesis draws sequences of writes of every kind over three sessions (some
of them fail: writing to a missing or ended session, popping an empty one;
a failed write must produce no event). For each sequence a live subscriber
records the stream; then replays from its first revision and from a random
later one must return the very same events (historic snapshots and messages,
not today's state), and every stream must satisfy the watch guarantees
against the change log of the acknowledged writes.

Bounded to 20 examples so the file runs in well under 40 seconds.
"""

from __future__ import annotations

import itertools
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sessiond.v1 import message_pb2, session_pb2
from watch_validator import (
    MAX_RESPONSE_BYTES,
    ChangeLogWriter,
    WatchRecorder,
    WatchValidator,
    assert_same_events,
    watch_until,
)

OPERATIONS = (
    "create",
    "append",
    "append_many",
    "pop",
    "update_last",
    "clear",
    "usage",
    "update",
    "touch",
    "runtime_running",
    "runtime_idle",
    "end",
    "delete",
    "fork",
    "reconcile",
)
# Refusals a random sequence legitimately runs into; anything else fails.
REFUSALS = {
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
}

_examples = itertools.count()


async def apply(w: ChangeLogWriter, operation: str, sid: str, prefix: str, step: int) -> None:
    instance = f"{prefix}ri"
    match operation:
        case "create":
            await w.create(
                sid, owner_id="alice", runtime_instance=instance, labels={"n": str(step)}
            )
        case "append":
            await w.append(sid, f"m{step}")
        case "append_many":
            await w.append(
                sid,
                message_pb2.Message(role=message_pb2.ROLE_USER, content=f"q{step}"),
                message_pb2.Message(
                    role=message_pb2.ROLE_ASSISTANT,
                    content=f"a{step}",
                    tool_calls=[message_pb2.ToolCall(id=f"c{step}", name="t")],
                ),
                message_pb2.Message(
                    role=message_pb2.ROLE_TOOL, content="r", tool_call_id=f"c{step}"
                ),
            )
        case "pop":
            await w.pop(sid)
        case "update_last":
            await w.update_last(sid, f"edited {step}")
        case "clear":
            await w.clear(sid)
        case "usage":
            await w.record_usage(sid, model=f"m{step % 2}", cost_micros=step)
        case "update":
            await w.update(sid, ["display_name"], display_name=f"title {step}")
        case "touch":
            await w.touch(sid, runtime_instance=instance)
        case "runtime_running":
            await w.set_runtime_state(sid, session_pb2.RUNTIME_STATE_RUNNING, turn_id=f"t{step}")
        case "runtime_idle":
            await w.set_runtime_state(sid, session_pb2.RUNTIME_STATE_IDLE)
        case "end":
            await w.end(sid, session_pb2.SESSION_STATUS_COMPLETED)
        case "delete":
            await w.delete(sid)
        case "fork":
            await w.fork(sid, f"{prefix}fork{step}")
        case "reconcile":
            await w.reconcile(instance)
        case _:
            raise AssertionError(operation)


workloads = st.lists(
    st.tuples(st.sampled_from(OPERATIONS), st.integers(min_value=0, max_value=2)),
    min_size=1,
    max_size=16,
)


# Byte bounds far below the defaults, so that one random workload meets every
# path: revisions split into fragments, several revisions per response, the
# hub buffer trimmed, and reads from the change log sized by bytes.
TIGHT_BOUNDS = {"watch_response_bytes": 400, "watch_read_ahead_bytes": 1500,
                "watch_buffer_bytes": 4000}

examples = settings(
    max_examples=20,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
async def tight_server(make_server: Any) -> Any:
    return await make_server(**TIGHT_BOUNDS)


@examples
@given(workload=workloads, replay_point=st.integers(min_value=0, max_value=1000))
async def test_replay_from_any_revision_equals_the_live_stream(
    server: Any, workload: list[tuple[str, int]], replay_point: int
) -> None:
    await check_replay_equals_live(server, workload, replay_point)


@examples
@given(workload=workloads, replay_point=st.integers(min_value=0, max_value=1000))
async def test_replay_equals_the_live_stream_under_tight_byte_bounds(
    tight_server: Any, workload: list[tuple[str, int]], replay_point: int
) -> None:
    await check_replay_equals_live(tight_server, workload, replay_point,
                                   max_response_bytes=TIGHT_BOUNDS["watch_response_bytes"])


async def check_replay_equals_live(server: Any, workload: list[tuple[str, int]],
                                   replay_point: int, *,
                                   max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:
    def validator(log: Any) -> WatchValidator:
        return WatchValidator(log, max_response_bytes=max_response_bytes)

    prefix = f"x{next(_examples)}-"
    writer = ChangeLogWriter.for_server(server)
    async with WatchRecorder(server.sessions, name="live") as live:
        created = await live.wait_created()
        # Start from three live sessions so that most drawn writes apply.
        for target in range(3):
            await apply(writer, "create", f"{prefix}{target}", prefix, -1)
        for step, (operation, target) in enumerate(workload):
            try:
                await apply(writer, operation, f"{prefix}{target}", prefix, step)
            except grpc.aio.AioRpcError as error:
                assert error.code() in REFUSALS, (operation, error.code(), error.details())
        committed = len(writer.log.revisions) - 3
        size = "0" if not committed else "1-5" if committed <= 5 else "6+"
        event(f"committed random writes: {size}")
        await live.wait_covered(writer.last_revision)
    validator(writer.log).validate(live.stream)
    split = any(r.fragment for r in live.stream.responses)
    event(f"a revision sent in fragments: {split}")

    first = created.revision + 1
    full = await watch_until(
        server.sessions, writer.last_revision, name="replay", start_revision=first
    )
    validator(writer.log).validate(full)
    assert_same_events(full.events, live.stream.events, f"replay from {first}")

    revisions = writer.log.revisions
    start = revisions[replay_point % len(revisions)]
    suffix = await watch_until(
        server.sessions, writer.last_revision, name="suffix", start_revision=start
    )
    validator(writer.log.filtered(lambda e: e.revision >= start)).validate(suffix)
    assert_same_events(
        suffix.events,
        [e for e in live.stream.events if e.revision >= start],
        f"replay from {start}",
    )
