"""The Python client: typed calls, safe retries, rich errors, page walking, resuming watch.

Two kinds of server answer here, both over real gRPC channels:

* a scripted ``grpc.aio`` server (``ScriptedServer``) that fails on cue, so retry,
  deadline, error-parsing and watch-resume behaviour is checked exactly (which requests
  arrived, with which start_revision) without waiting for real outages;
* the real sessiond server (the ``server`` and ``server_process`` fixtures of conftest),
  for the same behaviour end to end, including a watch that survives a SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
import grpc.aio
import pytest
import sessiond
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from sessiond import errors
from sessiond.aio import watch_async
from sessiond.v1 import (
    event_pb2,
    message_pb2,
    message_service_pb2,
    message_service_pb2_grpc,
    session_pb2,
    session_service_pb2,
    session_service_pb2_grpc,
    stats_service_pb2,
)
from sessiond.watching import Backoff, WatchCursor

FAST = Backoff(initial=0.001, maximum=0.01, rng=random.Random(7))


def _server_ready() -> bool:
    try:
        app = importlib.import_module("sessiond_server.app")
    except ImportError:
        return False
    return hasattr(app, "start_server")


requires_server = pytest.mark.skipif(not _server_ready(), reason="sessiond_server not built yet")


# A scripted server


def rich_status(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str = "",
    metadata: dict[str, str] | None = None,
    violations: Sequence[tuple[str, str]] = (),
) -> grpc.Status:
    details = []
    if reason:
        packed = any_pb2.Any()
        packed.Pack(
            error_details_pb2.ErrorInfo(
                reason=reason, domain=errors.ERROR_DOMAIN, metadata=metadata or {}
            )
        )
        details.append(packed)
    if violations:
        packed = any_pb2.Any()
        packed.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in violations
                ]
            )
        )
        details.append(packed)
    return rpc_status.to_status(
        status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=details)
    )


Failure = grpc.StatusCode | grpc.Status


class ScriptedSessions(session_service_pb2_grpc.SessionServiceServicer):
    """SessionService that fails the next calls as told and records what it received."""

    def __init__(self) -> None:
        self.failures: list[Failure] = []
        self.requests: list[Any] = []
        self.metadata: list[dict[str, str]] = []
        self.delay = 0.0
        # Each watch connection plays one script: responses, then an optional failure.
        self.watch_scripts: list[
            tuple[list[session_service_pb2.WatchSessionsResponse], Failure | None]
        ] = []
        self.watch_requests: list[session_service_pb2.WatchSessionsRequest] = []

    async def _answer(self, request: Any, context: grpc.aio.ServicerContext, response: Any) -> Any:
        self.requests.append(request)
        self.metadata.append(dict(context.invocation_metadata() or ()))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.failures:
            failure = self.failures.pop(0)
            if isinstance(failure, grpc.StatusCode):
                await context.abort(failure, f"scripted {failure.name}")
            await context.abort_with_status(failure)
        return response

    async def GetSession(self, request: Any, context: Any) -> Any:
        return await self._answer(
            request,
            context,
            session_service_pb2.GetSessionResponse(
                session=session_pb2.Session(id=request.session_id), revision=3
            ),
        )

    async def CreateSession(self, request: Any, context: Any) -> Any:
        return await self._answer(
            request, context, session_service_pb2.CreateSessionResponse(session=request.session)
        )

    async def UpdateSession(self, request: Any, context: Any) -> Any:
        return await self._answer(
            request, context, session_service_pb2.UpdateSessionResponse(session=request.session)
        )

    async def DeleteSession(self, request: Any, context: Any) -> Any:
        return await self._answer(request, context, session_service_pb2.DeleteSessionResponse())

    async def ListSessions(self, request: Any, context: Any) -> Any:
        # Three pages of two sessions; the token is the index of the next one.
        start = int(request.page_token or 0)
        ids = [f"s{i}" for i in range(start, min(start + 2, 6))]
        token = str(start + 2) if start + 2 < 6 else ""
        return await self._answer(
            request,
            context,
            session_service_pb2.ListSessionsResponse(
                sessions=[session_pb2.Session(id=i) for i in ids], next_page_token=token
            ),
        )

    async def WatchSessions(self, request: Any, context: Any) -> AsyncIterator[Any]:
        self.watch_requests.append(request)
        responses, failure = self.watch_scripts.pop(0) if self.watch_scripts else ([], None)
        for response in responses:
            yield response
        if isinstance(failure, grpc.StatusCode):
            await context.abort(failure, f"scripted {failure.name}")
        elif failure is not None:
            await context.abort_with_status(failure)
        else:
            await asyncio.Event().wait()  # a quiet stream that stays open


class ScriptedMessages(message_service_pb2_grpc.MessageServiceServicer):
    def __init__(self, sessions: ScriptedSessions) -> None:
        self.sessions = sessions

    async def AppendMessages(self, request: Any, context: Any) -> Any:
        return await self.sessions._answer(
            request,
            context,
            message_service_pb2.AppendMessagesResponse(messages=request.messages),
        )


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[ScriptedSessions, str]]:
    server = grpc.aio.server()
    sessions = ScriptedSessions()
    session_service_pb2_grpc.add_SessionServiceServicer_to_server(sessions, server)
    message_service_pb2_grpc.add_MessageServiceServicer_to_server(
        ScriptedMessages(sessions), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield sessions, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def watch_response(
    kind: int, revision: int, *event_revisions: int
) -> session_service_pb2.WatchSessionsResponse:
    return session_service_pb2.WatchSessionsResponse(
        type=kind,
        revision=revision,
        events=[
            event_pb2.SessionEvent(
                type=event_pb2.EVENT_TYPE_SESSION_UPDATED, revision=r, session_id=f"s{r}"
            )
            for r in event_revisions
        ],
    )


CREATED = session_service_pb2.WATCH_RESPONSE_TYPE_CREATED
EVENTS = session_service_pb2.WATCH_RESPONSE_TYPE_EVENTS
PROGRESS = session_service_pb2.WATCH_RESPONSE_TYPE_PROGRESS
INITIAL = session_service_pb2.WATCH_RESPONSE_TYPE_INITIAL
INITIAL_COMPLETE = session_service_pb2.WATCH_RESPONSE_TYPE_INITIAL_COMPLETE


def delivered_revisions(responses: list[session_service_pb2.WatchSessionsResponse]) -> list[int]:
    return [event.revision for response in responses for event in response.events]


# Retries


async def test_read_is_retried_on_unavailable_until_it_succeeds(scripted: Any) -> None:
    sessions, address = scripted
    sessions.failures = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE]
    async with sessiond.AsyncClient(address, retry_backoff=FAST) as client:
        answer = await client.get_session(session_id="a")
    assert answer.session.id == "a"
    assert len(sessions.requests) == 3


async def test_retries_stop_after_max_retries(scripted: Any) -> None:
    sessions, address = scripted
    sessions.failures = [grpc.StatusCode.UNAVAILABLE] * 10
    async with sessiond.AsyncClient(address, max_retries=2, retry_backoff=FAST) as client:
        with pytest.raises(sessiond.Unavailable):
            await client.get_session(session_id="a")
    assert len(sessions.requests) == 3


async def test_other_codes_are_never_retried(scripted: Any) -> None:
    sessions, address = scripted
    sessions.failures = [grpc.StatusCode.INTERNAL, grpc.StatusCode.INTERNAL]
    async with sessiond.AsyncClient(address, retry_backoff=FAST) as client:
        with pytest.raises(sessiond.SessiondError) as raised:
            await client.get_session(session_id="a")
    assert raised.value.code is grpc.StatusCode.INTERNAL
    assert len(sessions.requests) == 1


@pytest.mark.parametrize(
    ("call", "retried"),
    [
        (lambda c: c.create_session(session=session_pb2.Session(id="x")), True),
        (lambda c: c.create_session(session=session_pb2.Session(agent="no id")), False),
        (lambda c: c.update_session(session=session_pb2.Session(id="x"), etag="e1"), True),
        (lambda c: c.update_session(session=session_pb2.Session(id="x")), False),
        (lambda c: c.delete_session(session_id="x"), False),
        (
            lambda c: c.append_messages(
                session_id="x",
                messages=[message_pb2.Message(id="m1", role=message_pb2.ROLE_USER)],
            ),
            True,
        ),
        (
            lambda c: c.append_messages(
                session_id="x",
                messages=[
                    message_pb2.Message(id="m1", role=message_pb2.ROLE_USER),
                    message_pb2.Message(role=message_pb2.ROLE_USER),
                ],
            ),
            False,
        ),
    ],
    ids=[
        "create-with-id",
        "create-without-id",
        "update-with-etag",
        "update-without-etag",
        "delete",
        "append-all-ids",
        "append-missing-id",
    ],
)
async def test_writes_are_retried_only_when_a_repeat_is_harmless(
    scripted: Any, call: Callable[[sessiond.AsyncClient], Any], retried: bool
) -> None:
    sessions, address = scripted
    sessions.failures = [grpc.StatusCode.UNAVAILABLE]
    async with sessiond.AsyncClient(address, retry_backoff=FAST) as client:
        if retried:
            await call(client)
        else:
            with pytest.raises(sessiond.Unavailable):
                await call(client)
    assert len(sessions.requests) == (2 if retried else 1)


def test_retry_rule_covers_usage_and_runtime_calls() -> None:
    assert errors.retry_is_safe(stats_service_pb2.RecordUsageRequest(request_id="r1"))
    assert not errors.retry_is_safe(stats_service_pb2.RecordUsageRequest())
    assert errors.retry_is_safe(session_service_pb2.EndSessionRequest(session_id="x"))
    assert errors.retry_is_safe(session_service_pb2.SetRuntimeStateRequest(session_id="x"))
    assert errors.retry_is_safe(session_service_pb2.TouchSessionRequest())
    assert errors.retry_is_safe(session_service_pb2.ForkSessionRequest(new_session_id="f"))
    assert not errors.retry_is_safe(session_service_pb2.ForkSessionRequest())
    assert errors.retry_is_safe(message_service_pb2.DeleteMessagesRequest(up_to_seq=3))
    assert errors.retry_is_safe(message_service_pb2.ReplaceMessagesRequest(
        messages=[message_pb2.Message(id="m1")]))
    assert errors.retry_is_safe(message_service_pb2.ReplaceMessagesRequest())
    assert not errors.retry_is_safe(message_service_pb2.ReplaceMessagesRequest(
        messages=[message_pb2.Message(id="m1"), message_pb2.Message()]))
    assert not errors.retry_is_safe(message_service_pb2.PopMessageRequest())
    assert not errors.retry_is_safe(message_service_pb2.ClearMessagesRequest())
    assert not errors.retry_is_safe(session_service_pb2.PurgeSessionsRequest())
    assert not errors.retry_is_safe(session_service_pb2.ReconcileSessionsRequest())


def test_backoff_grows_exponentially_up_to_its_maximum_with_jitter_below() -> None:
    backoff = Backoff(initial=0.1, maximum=1.0, multiplier=2.0, jitter=0.5, rng=random.Random(1))
    for attempt, ceiling in enumerate([0.1, 0.2, 0.4, 0.8, 1.0, 1.0]):
        delay = backoff.delay(attempt)
        assert ceiling * 0.5 <= delay <= ceiling
    assert backoff.delay(10_000) <= 1.0


# Deadlines, metadata, request building


async def test_timeout_argument_overrides_the_default_deadline(scripted: Any) -> None:
    sessions, address = scripted
    sessions.delay = 0.5
    async with sessiond.AsyncClient(address, timeout=30.0, retry_backoff=FAST) as client:
        started = time.monotonic()
        with pytest.raises(sessiond.DeadlineExceeded):
            await client.get_session(session_id="a", timeout=0.05)
    assert time.monotonic() - started < 0.4


async def test_token_is_sent_as_bearer_authorization(scripted: Any) -> None:
    sessions, address = scripted
    async with sessiond.AsyncClient(address, token="s3cret") as client:
        await client.get_session(session_id="a")
    async with sessiond.AsyncClient(address) as client:
        await client.get_session(session_id="a")
    assert sessions.metadata[0]["authorization"] == "Bearer s3cret"
    assert "authorization" not in sessions.metadata[1]


async def test_request_message_and_keyword_fields_build_the_same_request(scripted: Any) -> None:
    sessions, address = scripted
    async with sessiond.AsyncClient(address) as client:
        await client.get_session(session_service_pb2.GetSessionRequest(session_id="a"))
        await client.get_session(session_id="a")
        with pytest.raises(TypeError):
            await client.get_session(
                session_service_pb2.GetSessionRequest(session_id="a"), session_id="b"
            )
        await client.update_session(
            session=session_pb2.Session(id="a", agent="b"), update_mask=["agent"]
        )
    assert sessions.requests[0] == sessions.requests[1]
    assert list(sessions.requests[2].update_mask.paths) == ["agent"]


async def test_iter_sessions_follows_page_tokens_to_the_end(scripted: Any) -> None:
    sessions, address = scripted
    async with sessiond.AsyncClient(address) as client:
        ids = [session.id async for session in client.iter_sessions(page_size=2)]
    assert ids == ["s0", "s1", "s2", "s3", "s4", "s5"]
    assert [r.page_token for r in sessions.requests] == ["", "2", "4"]


# Errors


async def test_rich_status_becomes_typed_error_with_reason_and_fields(scripted: Any) -> None:
    sessions, address = scripted
    sessions.failures = [
        rich_status(
            grpc.StatusCode.INVALID_ARGUMENT,
            "channel is malformed",
            reason="BAD_REQUEST",
            metadata={"limit": "128"},
            violations=[("session.channel", "must be lower-case")],
        )
    ]
    async with sessiond.AsyncClient(address) as client:
        with pytest.raises(sessiond.InvalidArgument) as raised:
            await client.get_session(session_id="a")
    error = raised.value
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.message == "channel is malformed"
    assert error.reason == "BAD_REQUEST"
    assert error.metadata == {"limit": "128"}
    assert error.field_violations == [("session.channel", "must be lower-case")]


@pytest.mark.parametrize(
    ("code", "error_class"),
    [
        (grpc.StatusCode.NOT_FOUND, sessiond.NotFound),
        (grpc.StatusCode.ALREADY_EXISTS, sessiond.AlreadyExists),
        (grpc.StatusCode.FAILED_PRECONDITION, sessiond.FailedPrecondition),
        (grpc.StatusCode.ABORTED, sessiond.Aborted),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, sessiond.ResourceExhausted),
        (grpc.StatusCode.UNAUTHENTICATED, sessiond.Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, sessiond.PermissionDenied),
    ],
)
async def test_each_status_code_has_its_error_class(
    scripted: Any, code: grpc.StatusCode, error_class: type[sessiond.SessiondError]
) -> None:
    sessions, address = scripted
    sessions.failures = [code]
    async with sessiond.AsyncClient(address) as client:
        with pytest.raises(error_class) as raised:
            await client.get_session(session_id="a")
    assert raised.value.reason == ""


async def test_unreachable_server_raises_unavailable_not_a_grpc_error() -> None:
    async with sessiond.AsyncClient("127.0.0.1:1", max_retries=1, retry_backoff=FAST) as client:
        with pytest.raises(sessiond.Unavailable):
            await client.get_session(session_id="a")


# Watch: the resume state machine


def test_cursor_resumes_after_the_last_event_and_drops_replayed_revisions() -> None:
    cursor = WatchCursor(session_service_pb2.WatchSessionsRequest())
    assert cursor.accept(watch_response(CREATED, 5)) is not None
    assert cursor.request().start_revision == 6
    assert cursor.accept(watch_response(EVENTS, 7, 6, 7)) is not None
    assert cursor.request().start_revision == 8
    assert cursor.accept(watch_response(CREATED, 9)) is None  # a reconnection's CREATED
    trimmed = cursor.accept(watch_response(EVENTS, 8, 7, 8))
    assert trimmed is not None and [e.revision for e in trimmed.events] == [8]
    assert cursor.accept(watch_response(EVENTS, 8, 8)) is None
    assert cursor.accept(watch_response(PROGRESS, 4)) is None  # behind what was delivered
    assert cursor.accept(watch_response(PROGRESS, 12)) is not None
    assert cursor.request().start_revision == 13


def test_cursor_keeps_an_explicit_start_revision_until_something_arrives() -> None:
    cursor = WatchCursor(session_service_pb2.WatchSessionsRequest(start_revision=3))
    cursor.accept(watch_response(CREATED, 40))  # the current revision, not a resume point
    assert cursor.request().start_revision == 3


def test_cursor_repeats_the_initial_state_until_it_is_complete() -> None:
    cursor = WatchCursor(session_service_pb2.WatchSessionsRequest(include_initial=True))
    cursor.accept(watch_response(CREATED, 10))
    assert cursor.accept(watch_response(INITIAL, 0)) is not None
    assert cursor.request().include_initial
    assert cursor.accept(watch_response(INITIAL_COMPLETE, 10)) is not None
    request = cursor.request()
    assert (request.include_initial, request.start_revision) == (False, 11)
    with pytest.raises(ValueError):
        WatchCursor(
            session_service_pb2.WatchSessionsRequest(include_initial=True, start_revision=2)
        )


# Watch: reconnection over a real channel


async def test_watch_reconnects_and_resumes_after_the_last_delivered_revision(
    scripted: Any,
) -> None:
    sessions, address = scripted
    sessions.watch_scripts = [
        (
            [watch_response(CREATED, 5), watch_response(EVENTS, 7, 6, 7)],
            grpc.StatusCode.UNAVAILABLE,
        ),
        ([], grpc.StatusCode.UNAVAILABLE),  # still down
        (
            [
                watch_response(CREATED, 9),
                watch_response(EVENTS, 8, 7, 8),  # the server replays 7: not delivered again
                watch_response(PROGRESS, 12),
            ],
            grpc.StatusCode.UNAVAILABLE,
        ),
        ([watch_response(CREATED, 12), watch_response(EVENTS, 13, 13)], None),
    ]
    sleeps: list[float] = []

    async def record_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async with sessiond.AsyncClient(address, retry_backoff=FAST, sleep=record_sleep) as client:
        received = []
        async for response in client.watch(max_backoff=0.01):
            received.append(response)
            if delivered_revisions(received)[-1:] == [13]:
                break
    assert [r.start_revision for r in sessions.watch_requests] == [0, 8, 8, 13]
    assert delivered_revisions(received) == [6, 7, 8, 13]
    assert [r.type for r in received] == [CREATED, EVENTS, EVENTS, PROGRESS, EVENTS]
    assert len(sleeps) == 3 and all(0 < s <= 0.01 for s in sleeps)


async def test_watch_raises_relist_required_with_the_compacted_revision(scripted: Any) -> None:
    sessions, address = scripted
    sessions.watch_scripts = [
        (
            [],
            rich_status(
                grpc.StatusCode.FAILED_PRECONDITION,
                "revision 3 is compacted",
                reason="REVISION_COMPACTED",
                metadata={"compacted_revision": "41"},
            ),
        )
    ]
    async with sessiond.AsyncClient(address) as client:
        with pytest.raises(sessiond.RelistRequired) as raised:
            async for _ in client.watch(start_revision=3):
                pass
    assert raised.value.compacted_revision == 41
    assert isinstance(raised.value, sessiond.FailedPrecondition)


async def test_watch_engine_takes_an_injected_sleep_and_stream() -> None:
    """watch_async works on any stream source: here one that drops twice."""
    connections = [
        [watch_response(CREATED, 1), watch_response(EVENTS, 2, 2)],
        [watch_response(CREATED, 2), watch_response(EVENTS, 3, 3)],
    ]
    requests: list[int] = []

    async def open_stream(request: Any) -> AsyncIterator[Any]:
        requests.append(request.start_revision)
        for response in connections.pop(0) if connections else []:
            yield response
        if not connections:
            await asyncio.Event().wait()

    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    stream = watch_async(
        open_stream,  # type: ignore[arg-type]
        session_service_pb2.WatchSessionsRequest(),
        backoff=FAST,
        sleep=fake_sleep,
    )
    received = []
    async for response in stream:
        received.append(response)
        if delivered_revisions(received) == [2, 3]:
            break
    await stream.aclose()
    assert requests == [0, 3]
    assert len(sleeps) == 1


# The sync client against the scripted server


async def test_sync_client_retries_walks_pages_and_resumes_watch(scripted: Any) -> None:
    sessions, address = scripted
    sessions.failures = [grpc.StatusCode.UNAVAILABLE]
    sessions.watch_scripts = [
        ([watch_response(CREATED, 1), watch_response(EVENTS, 2, 2)], grpc.StatusCode.UNAVAILABLE),
        ([watch_response(CREATED, 2), watch_response(EVENTS, 3, 3)], None),
    ]

    def use_sync_client() -> tuple[str, list[str], list[int]]:
        with sessiond.Client(address, retry_backoff=FAST, token="t") as client:
            got = client.get_session(session_id="a").session.id
            ids = [session.id for session in client.iter_sessions(page_size=2)]
            received: list[session_service_pb2.WatchSessionsResponse] = []
            stream = client.watch(max_backoff=0.01)
            for response in stream:
                received.append(response)
                if delivered_revisions(received)[-1:] == [3]:
                    break
            stream.close()
            return got, ids, delivered_revisions(received)

    got, ids, revisions = await asyncio.to_thread(use_sync_client)
    assert got == "a"
    assert ids == ["s0", "s1", "s2", "s3", "s4", "s5"]
    assert revisions == [2, 3]
    assert [r.start_revision for r in sessions.watch_requests] == [0, 3]
    assert sessions.metadata[0]["authorization"] == "Bearer t"


async def test_sync_client_raises_typed_errors(scripted: Any) -> None:
    sessions, address = scripted
    sessions.failures = [
        rich_status(grpc.StatusCode.NOT_FOUND, "no session a", reason="SESSION_NOT_FOUND")
    ]

    def call() -> sessiond.SessiondError:
        with sessiond.Client(address) as client:
            try:
                client.get_session(session_id="a")
            except sessiond.SessiondError as error:
                return error
        raise AssertionError("expected NotFound")

    error = await asyncio.to_thread(call)
    assert isinstance(error, sessiond.NotFound)
    assert error.reason == "SESSION_NOT_FOUND"


def _public_calls(client_class: type) -> dict[str, Callable[..., Any]]:
    return {
        name: member
        for name, member in inspect.getmembers(client_class, callable)
        if not name.startswith("_")
    }


def _parameters(call: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
    """Each parameter's name, kind and default (the annotations differ by calling style)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(call).parameters.values()]


def test_sync_client_has_every_method_of_the_async_client_with_the_same_parameters() -> None:
    async_calls = _public_calls(sessiond.AsyncClient)
    sync_calls = _public_calls(sessiond.Client)
    assert sorted(sync_calls) == sorted(async_calls)
    assert {"create_session", "iter_messages", "watch", "cost_by_model"} <= set(async_calls)
    for name, async_call in async_calls.items():
        assert _parameters(sync_calls[name]) == _parameters(async_call), name
        # The asyncio client's calls are awaited (or iterated with `async for`);
        # none of the blocking client's is.
        sync_call = sync_calls[name]
        assert not inspect.iscoroutinefunction(sync_call), name
        assert not inspect.isasyncgenfunction(sync_call), name
        if name != "watch":  # watch returns the resuming stream from a plain call
            assert (inspect.iscoroutinefunction(async_call)
                    or inspect.isasyncgenfunction(async_call)), name
    # The constructors take the same settings; each sleeps its own way by default.
    async_init = _parameters(sessiond.AsyncClient)
    sync_init = _parameters(sessiond.Client)
    assert [p[:2] for p in sync_init] == [p[:2] for p in async_init]
    defaults = {name: (a, s) for (name, _, a), (_, _, s) in zip(async_init, sync_init, strict=True)
                if a != s}
    assert defaults == {"sleep": (asyncio.sleep, time.sleep)}


# Against the real server


def user_message(content: str, message_id: str = "") -> message_pb2.Message:
    return message_pb2.Message(role=message_pb2.ROLE_USER, content=content, id=message_id)


@requires_server
async def test_session_lifecycle_through_the_async_client(server: Any) -> None:
    async with sessiond.AsyncClient(server.address) as client:
        created = await client.create_session(
            session=session_pb2.Session(id="s1", agent="clamps", channel="cli")
        )
        assert created.created and created.revision > 0
        again = await client.create_session(
            session=session_pb2.Session(id="s1", agent="clamps", channel="cli")
        )
        assert not again.created
        appended = await client.append_messages(
            session_id="s1", messages=[user_message("hello", "m1"), user_message("again", "m2")]
        )
        assert [m.seq for m in appended.messages] == [1, 2]
        usage = await client.record_usage(
            session_id="s1",
            model="gpt",
            usage=session_pb2.Usage(prompt_tokens=10, completion_tokens=5, cost_micros=1234),
            request_id="r1",
        )
        assert usage.session_usage.cost_micros == 1234
        ended = await client.end_session(
            session_id="s1", status=session_pb2.SESSION_STATUS_COMPLETED, reason="done"
        )
        assert ended.session.status == session_pb2.SESSION_STATUS_COMPLETED
        stats = await client.get_stats()
        assert stats.stats.completed_count == 1
        costs = await client.cost_by_model()
        assert [m.model for m in costs.models] == ["gpt"]


@requires_server
async def test_real_server_errors_arrive_as_typed_errors(server: Any) -> None:
    async with sessiond.AsyncClient(server.address) as client:
        with pytest.raises(sessiond.NotFound):
            await client.get_session(session_id="missing")
        with pytest.raises(sessiond.InvalidArgument) as bad:
            await client.create_session(session=session_pb2.Session(id="s", channel="Not Valid!"))
        assert bad.value.reason
        assert any("channel" in field for field, _ in bad.value.field_violations)
        await client.create_session(session=session_pb2.Session(id="s"))
        with pytest.raises(sessiond.AlreadyExists):
            await client.create_session(session=session_pb2.Session(id="s", agent="other"))
        with pytest.raises(sessiond.Aborted) as stale:
            await client.update_session(
                session=session_pb2.Session(id="s", agent="a"), update_mask=["agent"], etag="nope"
            )
        assert stale.value.reason == "ETAG_MISMATCH"


@requires_server
async def test_page_walkers_return_everything_once_in_order(server: Any) -> None:
    async with sessiond.AsyncClient(server.address) as client:
        for i in range(7):
            await client.create_session(session=session_pb2.Session(id=f"s{i}"))
        await client.append_messages(
            session_id="s0", messages=[user_message(f"m{i}") for i in range(25)]
        )
        ids = [s.id async for s in client.iter_sessions(page_size=3, order_by=2, ascending=True)]
        seqs = [m.seq async for m in client.iter_messages(session_id="s0", page_size=4)]
    assert sorted(ids) == [f"s{i}" for i in range(7)] and len(set(ids)) == 7
    assert seqs == list(range(1, 26))


@requires_server
async def test_watch_delivers_each_change_after_created(server: Any) -> None:
    async with sessiond.AsyncClient(server.address) as client:
        stream = client.watch(session_service_pb2.WatchFilter(session_ids=["w"]))
        first = await anext(stream)
        assert first.type == CREATED
        await client.create_session(session=session_pb2.Session(id="w"))
        await client.append_messages(session_id="w", messages=[user_message("hi")])
        events: list[event_pb2.SessionEvent] = []
        async with asyncio.timeout(10):
            async for response in stream:
                events.extend(response.events)
                if len(events) >= 2:
                    break
        await stream.aclose()
    assert [e.type for e in events] == [
        event_pb2.EVENT_TYPE_SESSION_CREATED,
        event_pb2.EVENT_TYPE_MESSAGES_APPENDED,
    ]
    assert events[0].revision < events[1].revision


@requires_server
def test_resume_after_kill_delivers_each_event_once(server_process: Any) -> None:
    proc = server_process()
    received: list[event_pb2.SessionEvent] = []
    created = threading.Event()

    def watch() -> None:
        with sessiond.Client(proc.address, retry_backoff=FAST) as watcher:
            stream = watcher.watch(max_backoff=0.2)
            for response in stream:
                if response.type == CREATED:
                    created.set()
                received.extend(response.events)
                if any(event.session_id == "after-2" for event in response.events):
                    break
            stream.close()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    assert created.wait(10)
    backoff = Backoff(initial=0.05, maximum=0.5)
    with sessiond.Client(proc.address, retry_backoff=backoff, max_retries=20) as client:
        for i in range(3):
            client.create_session(session=session_pb2.Session(id=f"before-{i}"))
        proc.kill()
        proc.start()
        for i in range(3):
            client.create_session(session=session_pb2.Session(id=f"after-{i}"), timeout=20)
    thread.join(20)
    assert not thread.is_alive(), [(e.revision, e.session_id) for e in received]
    revisions = [event.revision for event in received]
    assert revisions == sorted(set(revisions))
    assert [event.session_id for event in received] == [
        "before-0",
        "before-1",
        "before-2",
        "after-0",
        "after-1",
        "after-2",
    ]


@requires_server
def test_sync_client_against_real_server_process(server_process: Any) -> None:
    proc = server_process()
    with sessiond.Client(proc.address) as client:
        client.touch_session(session=session_pb2.Session(id="t"))
        client.append_messages(session_id="t", messages=[user_message("a"), user_message("b")])
        assert [m.content for m in client.iter_messages(session_id="t", page_size=1)] == ["a", "b"]
        assert client.list_messages(session_id="t", last_n=1).messages[0].content == "b"
        with pytest.raises(sessiond.NotFound):
            client.delete_session(session_id="nope")
        with contextlib.suppress(sessiond.SessiondError):
            client.delete_session(session_id="t")
        with pytest.raises(sessiond.NotFound):
            client.get_session(session_id="t")


async def test_both_clients_accept_responses_larger_than_grpcs_default_limit(
        server: Any) -> None:
    # Five messages of 1 MB are within the request limit; their echo in the response is
    # over gRPC's default 4 MiB receive limit, which the clients must not keep.
    big = [message_pb2.Message(role=message_pb2.ROLE_USER, content=f"{i}" + "x" * 1_000_000)
           for i in range(5)]
    async with sessiond.AsyncClient(server.address) as client:
        await client.create_session(session=session_pb2.Session(id="large"))
        answer = await client.append_messages(session_id="large", messages=big)
        assert answer.ByteSize() > 4 << 20
    with sessiond.Client(server.address) as sync_client:
        answer = await asyncio.to_thread(
            sync_client.append_messages, session_id="large", messages=big)
        assert answer.ByteSize() > 4 << 20
        assert [m.seq for m in answer.messages] == [6, 7, 8, 9, 10]
