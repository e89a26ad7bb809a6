"""The asyncio client: one typed coroutine per sessiond RPC, over grpc.aio.

Every method takes either the RPC's Request message or the same fields as
keyword arguments (never both), and returns the RPC's Response message, so
the proto comments document the client too. Around each call the client
adds what every caller would otherwise repeat:

* the bearer token in the ``authorization`` metadata;
* a deadline (the client's ``timeout``, or the call's own ``timeout=``),
  which bounds the whole call, retries included;
* retries with exponential backoff and jitter, only on UNAVAILABLE and only
  for requests that ``sessiond.errors.retry_is_safe`` accepts;
* ``SessiondError`` subclasses instead of raw grpc errors;
* page walking (``iter_sessions``, ``iter_messages``) and a watch that
  resumes by itself (``watch``, see ``sessiond.watching``).

The request-building helpers live in ``sessiond.requests``, shared with the sync client.
"""

# ASYNC109 prefers asyncio.timeout() over a timeout parameter; here timeout
# is the gRPC deadline sent to the server, part of the call, not a local wait.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import Message

from sessiond.channel import channel_options
from sessiond.errors import DeadlineExceeded, Unavailable, error_from_rpc_error, retry_is_safe
from sessiond.requests import (
    FieldMaskLike,
    TimestampLike,
    auth_metadata,
    build_request,
    to_field_mask,
    to_timestamp,
)
from sessiond.v1 import (
    message_pb2,
    message_service_pb2,
    message_service_pb2_grpc,
    session_pb2,
    session_service_pb2,
    session_service_pb2_grpc,
    stats_service_pb2,
    stats_service_pb2_grpc,
)
from sessiond.watching import (
    Backoff,
    ConnectionHook,
    WatchRequest,
    WatchResponse,
    watch_async,
)

DEFAULT_TARGET = "127.0.0.1:50051"

RequestT = TypeVar("RequestT", bound=Message)
ResponseT = TypeVar("ResponseT", bound=Message)

class _LoopChannel:
    """One event loop's channel and the stubs over it."""

    def __init__(
        self,
        target: str,
        credentials: grpc.ChannelCredentials | None,
        options: Sequence[tuple[str, Any]],
    ) -> None:
        if credentials is None:
            self.channel = grpc.aio.insecure_channel(target, options=options)
        else:
            self.channel = grpc.aio.secure_channel(target, credentials, options=options)
        self.sessions = session_service_pb2_grpc.SessionServiceStub(self.channel)
        self.messages = message_service_pb2_grpc.MessageServiceStub(self.channel)
        self.stats = stats_service_pb2_grpc.StatsServiceStub(self.channel)


async def _within(seconds: float, call: grpc.aio.UnaryUnaryCall[Any, ResponseT]) -> ResponseT:
    """Await a unary call for at most ``seconds`` of the event loop's clock.

    gRPC turns a ``timeout=`` into a deadline on ``time.time()``, so a
    process whose wall clock is frozen or stepped (tests that patch
    ``time.time``, a clock adjusted by NTP) sees calls expire at once or
    never. The client keeps its deadline on the loop's monotonic clock
    instead and cancels the call when it passes; the server sees the
    cancellation and stops the call's work.
    """
    try:
        async with asyncio.timeout(seconds):
            return await call
    except TimeoutError:
        call.cancel()
        raise DeadlineExceeded(
            grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer within {seconds:.3f} s"
        ) from None


class AsyncClient:
    """A sessiond client for asyncio code.

    ``target`` is "host:port"; ``credentials`` makes the channel TLS (plain
    text without). ``timeout`` is the default deadline of each call in
    seconds; ``max_retries`` bounds the retries of a retry-safe call that
    failed with UNAVAILABLE; ``retry_backoff`` spaces them (and the watch's
    reconnections). Use as ``async with AsyncClient(...) as client:`` or call
    ``close()``.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        max_retries: int = 3,
        credentials: grpc.ChannelCredentials | None = None,
        retry_backoff: Backoff | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.target = target
        self._credentials = credentials
        self._options = channel_options(options)
        self._metadata = auth_metadata(token)
        self._timeout = timeout
        self._max_retries = max_retries
        self._backoff = retry_backoff if retry_backoff is not None else Backoff()
        self._sleep = sleep
        # A grpc.aio channel belongs to the event loop it was made on; the
        # client makes one per loop on first use, so one client serves
        # several threads that each run their own loop (and a loop that is
        # closed takes its channel with it).
        self._per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopChannel] = (
            weakref.WeakKeyDictionary()
        )
        self._per_loop_lock = threading.Lock()

    def _loop_channel(self) -> _LoopChannel:
        """The channel and stubs of the running event loop, made on first use."""
        loop = asyncio.get_running_loop()
        with self._per_loop_lock:
            bound = self._per_loop.get(loop)
            if bound is None:
                bound = _LoopChannel(self.target, self._credentials, self._options)
                self._per_loop[loop] = bound
            return bound

    @property
    def _sessions(self) -> session_service_pb2_grpc.SessionServiceAsyncStub:
        return self._loop_channel().sessions

    @property
    def _messages(self) -> message_service_pb2_grpc.MessageServiceAsyncStub:
        return self._loop_channel().messages

    @property
    def _stats(self) -> stats_service_pb2_grpc.StatsServiceAsyncStub:
        return self._loop_channel().stats

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the running loop's channel; calls in flight on it are cancelled.

        Channels the client made on other event loops are closed with their
        loops (call ``close()`` on each loop to close them sooner).
        """
        with self._per_loop_lock:
            bound = self._per_loop.pop(asyncio.get_running_loop(), None)
        if bound is not None:
            await bound.channel.close(None)

    async def _call(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[RequestT, ResponseT],
        request: RequestT,
        timeout: float | None,
    ) -> ResponseT:
        """Send one unary call with deadline, retries and error conversion."""
        budget = self._timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        may_retry = retry_is_safe(request)
        attempt = 0
        while True:
            remaining = max(deadline - loop.time(), 0.0)
            try:
                return await _within(remaining, method(request, metadata=self._metadata))
            except grpc.RpcError as rpc_error:
                error = error_from_rpc_error(rpc_error)
                if not (may_retry and isinstance(error, Unavailable)):
                    raise error from rpc_error
                delay = self._backoff.delay(attempt)
                if attempt >= self._max_retries or loop.time() + delay >= deadline:
                    raise error from rpc_error
            attempt += 1
            await self._sleep(delay)

    # SessionService

    async def create_session(
        self,
        request: session_service_pb2.CreateSessionRequest | None = None,
        *,
        session: session_pb2.Session | None = None,
        shared_state_deltas: Sequence[session_pb2.SharedStateDelta] | None = None,
        timeout: float | None = None,
    ) -> session_service_pb2.CreateSessionResponse:
        """CreateSession; retried on UNAVAILABLE when session.id is set.

        ``shared_state_deltas`` commit with the session (a retry applies them once).
        """
        request = build_request(session_service_pb2.CreateSessionRequest, request,
                                session=session, shared_state_deltas=shared_state_deltas)
        return await self._call(self._sessions.CreateSession, request, timeout)

    async def get_session(
        self,
        request: session_service_pb2.GetSessionRequest | None = None,
        *,
        session_id: str | None = None,
        timeout: float | None = None,
    ) -> session_service_pb2.GetSessionResponse:
        """GetSession."""
        request = build_request(
            session_service_pb2.GetSessionRequest, request, session_id=session_id
        )
        return await self._call(self._sessions.GetSession, request, timeout)

    async def update_session(
        self,
        request: session_service_pb2.UpdateSessionRequest | None = None,
        *,
        session: session_pb2.Session | None = None,
        update_mask: FieldMaskLike | None = None,
        etag: str | None = None,
        timeout: float | None = None,
    ) -> session_service_pb2.UpdateSessionResponse:
        """UpdateSession; retried on UNAVAILABLE only when etag is set."""
        request = build_request(
            session_service_pb2.UpdateSessionRequest,
            request,
            session=session,
            update_mask=to_field_mask(update_mask),
            etag=etag,
        )
        return await self._call(self._sessions.UpdateSession, request, timeout)

    async def delete_session(
        self,
        request: session_service_pb2.DeleteSessionRequest | None = None,
        *,
        session_id: str | None = None,
        etag: str | None = None,
        timeout: float | None = None,
    ) -> session_service_pb2.DeleteSessionResponse:
        """DeleteSession; never retried."""
        request = build_request(
            session_service_pb2.DeleteSessionRequest, request, session_id=session_id, etag=etag
        )
        return await self._call(self._sessions.DeleteSession, request, timeout)

    async def list_sessions(
        self,
        request: session_service_pb2.ListSessionsRequest | None = None,
        *,
        filter: session_pb2.SessionFilter | None = None,
        order_by: session_service_pb2.SessionOrderField.ValueType | None = None,
        ascending: bool | None = None,
        page_size: int | None = None,
        page_token: str | None = None,
        skip_total_size: bool | None = None,
        timeout: float | None = None,
    ) -> session_service_pb2.ListSessionsResponse:
        """ListSessions: one page; see ``iter_sessions`` for all of them.

        ``total_size`` is counted on a listing's first page and carried on; pass
        ``skip_total_size=True`` when the count is not wanted (it visits every match).
        """
        request = build_request(
            session_service_pb2.ListSessionsRequest,
            request,
            filter=filter,
            order_by=order_by,
            ascending=ascending,
            page_size=page_size,
            page_token=page_token,
            skip_total_size=skip_total_size,
        )
        return await self._call(self._sessions.ListSessions, request, timeout)

    async def iter_sessions(
        self,
        request: session_service_pb2.ListSessionsRequest | None = None,
        *,
        filter: session_pb2.SessionFilter | None = None,
        order_by: session_service_pb2.SessionOrderField.ValueType | None = None,
        ascending: bool | None = None,
        page_size: int | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[session_pb2.Session]:
        """Every session matching the filter, page after page (never counted: the
        walker yields sessions, not total_size, so it asks the server to skip it)."""
        page_request = session_service_pb2.ListSessionsRequest()
        page_request.CopyFrom(
            build_request(
                session_service_pb2.ListSessionsRequest,
                request,
                filter=filter,
                order_by=order_by,
                ascending=ascending,
                page_size=page_size,
            )
        )
        page_request.skip_total_size = True
        while True:
            page = await self.list_sessions(page_request, timeout=timeout)
            for session in page.sessions:
                yield session
            if not page.next_page_token:
                return
            page_request.page_token = page.next_page_token

    async def touch_session(
        self,
        request: session_service_pb2.TouchSessionRequest | None = None,
        *,
        session: session_pb2.Session | None = None,
        timeout: float | None = None,
    ) -> session_service_pb2.TouchSessionResponse:
        """TouchSession; retried on UNAVAILABLE."""
        request = build_request(session_service_pb2.TouchSessionRequest, request, session=session)
        return await self._call(self._sessions.TouchSession, request, timeout)

    async def end_session(
        self,
        request: session_service_pb2.EndSessionRequest | None = None,
        *,
        session_id: str | None = None,
        status: session_pb2.SessionStatus.ValueType | None = None,
        reason: str | None = None,
        ended_at: TimestampLike | None = None,
        timeout: float | None = None,
    ) -> session_service_pb2.EndSessionResponse:
        """EndSession; retried on UNAVAILABLE."""
        request = build_request(
            session_service_pb2.EndSessionRequest,
            request,
            session_id=session_id,
            status=status,
            reason=reason,
            ended_at=to_timestamp(ended_at),
        )
        return await self._call(self._sessions.EndSession, request, timeout)

    async def set_runtime_state(
        self,
        request: session_service_pb2.SetRuntimeStateRequest | None = None,
        *,
        session_id: str | None = None,
        state: session_pb2.RuntimeState.ValueType | None = None,
        turn_id: str | None = None,
        turn_started_at: TimestampLike | None = None,
        runtime_instance: str | None = None,
        timeout: float | None = None,
    ) -> session_service_pb2.SetRuntimeStateResponse:
        """SetRuntimeState; retried on UNAVAILABLE."""
        request = build_request(
            session_service_pb2.SetRuntimeStateRequest,
            request,
            session_id=session_id,
            state=state,
            turn_id=turn_id,
            turn_started_at=to_timestamp(turn_started_at),
            runtime_instance=runtime_instance,
        )
        return await self._call(self._sessions.SetRuntimeState, request, timeout)

    async def fork_session(
        self,
        request: session_service_pb2.ForkSessionRequest | None = None,
        *,
        source_session_id: str | None = None,
        up_to_seq: int | None = None,
        new_session_id: str | None = None,
        display_name: str | None = None,
        timeout: float | None = None,
    ) -> session_service_pb2.ForkSessionResponse:
        """ForkSession; retried on UNAVAILABLE when new_session_id is set."""
        request = build_request(
            session_service_pb2.ForkSessionRequest,
            request,
            source_session_id=source_session_id,
            up_to_seq=up_to_seq,
            new_session_id=new_session_id,
            display_name=display_name,
        )
        return await self._call(self._sessions.ForkSession, request, timeout)

    async def reconcile_sessions(
        self,
        request: session_service_pb2.ReconcileSessionsRequest | None = None,
        *,
        runtime_instance: str | None = None,
        keep_session_ids: Sequence[str] | None = None,
        reason: str | None = None,
        timeout: float | None = None,
    ) -> session_service_pb2.ReconcileSessionsResponse:
        """ReconcileSessions; never retried."""
        request = build_request(
            session_service_pb2.ReconcileSessionsRequest,
            request,
            runtime_instance=runtime_instance,
            keep_session_ids=keep_session_ids,
            reason=reason,
        )
        return await self._call(self._sessions.ReconcileSessions, request, timeout)

    async def purge_sessions(
        self,
        request: session_service_pb2.PurgeSessionsRequest | None = None,
        *,
        last_activity_before: TimestampLike | None = None,
        keep_newest: int | None = None,
        statuses: Sequence[session_pb2.SessionStatus.ValueType] | None = None,
        dry_run: bool | None = None,
        timeout: float | None = None,
    ) -> session_service_pb2.PurgeSessionsResponse:
        """PurgeSessions; never retried."""
        request = build_request(
            session_service_pb2.PurgeSessionsRequest,
            request,
            last_activity_before=to_timestamp(last_activity_before),
            keep_newest=keep_newest,
            statuses=statuses,
            dry_run=dry_run,
        )
        return await self._call(self._sessions.PurgeSessions, request, timeout)

    def watch(
        self,
        filter: session_service_pb2.WatchFilter | None = None,
        *,
        start_revision: int = 0,
        include_initial: bool = False,
        progress_interval_ms: int = 0,
        max_backoff: float = 30.0,
        on_connection: ConnectionHook | None = None,
    ) -> AsyncGenerator[WatchResponse, None]:
        """WatchSessions as an endless async iterator that resumes by itself.

        Yields WatchSessionsResponse messages as described in
        ``sessiond.watching``: CREATED once, then INITIAL/INITIAL_COMPLETE,
        EVENTS and PROGRESS, each revision once, across reconnections.
        Raises ``RelistRequired`` when the resume point was compacted, and
        other ``SessiondError`` subclasses for anything but UNAVAILABLE.
        ``on_connection`` is told of each call opened and confirmed
        (``sessiond.watching.WatchConnection``), to show reconnections.
        Close it with ``aclose()`` (or ``contextlib.aclosing``) to end the call.
        """
        request = WatchRequest(
            filter=filter,
            start_revision=start_revision,
            include_initial=include_initial,
            progress_interval_ms=progress_interval_ms,
        )
        backoff = Backoff(
            initial=min(self._backoff.initial, max_backoff),
            maximum=max_backoff,
            multiplier=self._backoff.multiplier,
            jitter=self._backoff.jitter,
            rng=self._backoff.rng,
        )
        return watch_async(
            self._open_watch,
            request,
            backoff=backoff,
            sleep=self._sleep,
            on_connection=on_connection,
        )

    async def _open_watch(self, request: WatchRequest) -> AsyncGenerator[WatchResponse, None]:
        """One WatchSessions call, cancelled when the generator is closed."""
        call = self._sessions.WatchSessions(request, metadata=self._metadata)
        try:
            async for response in call:
                yield response
        finally:
            call.cancel()

    async def get_shared_state(
        self,
        request: session_service_pb2.GetSharedStateRequest | None = None,
        *,
        app: str | None = None,
        user_id: str | None = None,
        timeout: float | None = None,
    ) -> session_service_pb2.GetSharedStateResponse:
        """GetSharedState."""
        request = build_request(
            session_service_pb2.GetSharedStateRequest, request, app=app, user_id=user_id
        )
        return await self._call(self._sessions.GetSharedState, request, timeout)

    async def update_shared_state(
        self,
        request: session_service_pb2.UpdateSharedStateRequest | None = None,
        *,
        app: str | None = None,
        user_id: str | None = None,
        delta: session_pb2.StateDelta | None = None,
        etag: str | None = None,
        timeout: float | None = None,
    ) -> session_service_pb2.UpdateSharedStateResponse:
        """UpdateSharedState; retried on UNAVAILABLE (a delta applied twice is applied once)."""
        request = build_request(
            session_service_pb2.UpdateSharedStateRequest,
            request,
            app=app,
            user_id=user_id,
            delta=delta,
            etag=etag,
        )
        return await self._call(self._sessions.UpdateSharedState, request, timeout)

    # MessageService

    async def append_messages(
        self,
        request: message_service_pb2.AppendMessagesRequest | None = None,
        *,
        session_id: str | None = None,
        messages: Sequence[message_pb2.Message] | None = None,
        expected_last_seq: int | None = None,
        state_delta: session_pb2.StateDelta | None = None,
        shared_state_deltas: Sequence[session_pb2.SharedStateDelta] | None = None,
        view: message_service_pb2.AppendView.ValueType | None = None,
        timeout: float | None = None,
    ) -> message_service_pb2.AppendMessagesResponse:
        """AppendMessages; retried on UNAVAILABLE when every message has an id.

        ``view=APPEND_VIEW_LEAN`` answers each message's seq, id and created_at and the
        session's guards only (last_seq, etag, status): for callers that ignore the rest.
        """
        request = build_request(
            message_service_pb2.AppendMessagesRequest,
            request,
            session_id=session_id,
            messages=messages,
            expected_last_seq=expected_last_seq,
            state_delta=state_delta,
            shared_state_deltas=shared_state_deltas,
            view=view,
        )
        return await self._call(self._messages.AppendMessages, request, timeout)

    async def list_messages(
        self,
        request: message_service_pb2.ListMessagesRequest | None = None,
        *,
        session_id: str | None = None,
        page_size: int | None = None,
        page_token: str | None = None,
        descending: bool | None = None,
        after_seq: int | None = None,
        after_time: TimestampLike | None = None,
        last_n: int | None = None,
        last_turns: int | None = None,
        timeout: float | None = None,
    ) -> message_service_pb2.ListMessagesResponse:
        """ListMessages: one page, or the last N messages or turns."""
        request = build_request(
            message_service_pb2.ListMessagesRequest,
            request,
            session_id=session_id,
            page_size=page_size,
            page_token=page_token,
            descending=descending,
            after_seq=after_seq,
            after_time=to_timestamp(after_time),
            last_n=last_n,
            last_turns=last_turns,
        )
        return await self._call(self._messages.ListMessages, request, timeout)

    async def iter_messages(
        self,
        request: message_service_pb2.ListMessagesRequest | None = None,
        *,
        session_id: str | None = None,
        page_size: int | None = None,
        descending: bool | None = None,
        after_seq: int | None = None,
        after_time: TimestampLike | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[message_pb2.Message]:
        """Every message of a session (after a seq or time), page after page."""
        page_request = message_service_pb2.ListMessagesRequest()
        page_request.CopyFrom(
            build_request(
                message_service_pb2.ListMessagesRequest,
                request,
                session_id=session_id,
                page_size=page_size,
                descending=descending,
                after_seq=after_seq,
                after_time=to_timestamp(after_time),
            )
        )
        while True:
            page = await self.list_messages(page_request, timeout=timeout)
            for message in page.messages:
                yield message
            if not page.next_page_token:
                return
            page_request.page_token = page.next_page_token

    async def pop_message(
        self,
        request: message_service_pb2.PopMessageRequest | None = None,
        *,
        session_id: str | None = None,
        expected_seq: int | None = None,
        timeout: float | None = None,
    ) -> message_service_pb2.PopMessageResponse:
        """PopMessage; never retried."""
        request = build_request(
            message_service_pb2.PopMessageRequest,
            request,
            session_id=session_id,
            expected_seq=expected_seq,
        )
        return await self._call(self._messages.PopMessage, request, timeout)

    async def update_last_message(
        self,
        request: message_service_pb2.UpdateLastMessageRequest | None = None,
        *,
        session_id: str | None = None,
        message: message_pb2.Message | None = None,
        update_mask: FieldMaskLike | None = None,
        expected_seq: int | None = None,
        timeout: float | None = None,
    ) -> message_service_pb2.UpdateLastMessageResponse:
        """UpdateLastMessage; never retried."""
        request = build_request(
            message_service_pb2.UpdateLastMessageRequest,
            request,
            session_id=session_id,
            message=message,
            update_mask=to_field_mask(update_mask),
            expected_seq=expected_seq,
        )
        return await self._call(self._messages.UpdateLastMessage, request, timeout)

    async def clear_messages(
        self,
        request: message_service_pb2.ClearMessagesRequest | None = None,
        *,
        session_id: str | None = None,
        timeout: float | None = None,
    ) -> message_service_pb2.ClearMessagesResponse:
        """ClearMessages; never retried."""
        request = build_request(
            message_service_pb2.ClearMessagesRequest, request, session_id=session_id
        )
        return await self._call(self._messages.ClearMessages, request, timeout)

    async def search_messages(
        self,
        request: message_service_pb2.SearchMessagesRequest | None = None,
        *,
        query: str | None = None,
        session_ids: Sequence[str] | None = None,
        page_size: int | None = None,
        page_token: str | None = None,
        timeout: float | None = None,
    ) -> message_service_pb2.SearchMessagesResponse:
        """SearchMessages: one page of matches, newest first."""
        request = build_request(
            message_service_pb2.SearchMessagesRequest,
            request,
            query=query,
            session_ids=session_ids,
            page_size=page_size,
            page_token=page_token,
        )
        return await self._call(self._messages.SearchMessages, request, timeout)

    async def replace_messages(
        self,
        request: message_service_pb2.ReplaceMessagesRequest | None = None,
        *,
        session_id: str | None = None,
        after_seq: int | None = None,
        messages: Sequence[message_pb2.Message] | None = None,
        expected_last_seq: int | None = None,
        etag: str | None = None,
        timeout: float | None = None,
    ) -> message_service_pb2.ReplaceMessagesResponse:
        """ReplaceMessages; retried on UNAVAILABLE when every new message has an id."""
        request = build_request(
            message_service_pb2.ReplaceMessagesRequest,
            request,
            session_id=session_id,
            after_seq=after_seq,
            messages=messages,
            expected_last_seq=expected_last_seq,
            etag=etag,
        )
        return await self._call(self._messages.ReplaceMessages, request, timeout)

    async def delete_messages(
        self,
        request: message_service_pb2.DeleteMessagesRequest | None = None,
        *,
        session_id: str | None = None,
        up_to_seq: int | None = None,
        expected_last_seq: int | None = None,
        timeout: float | None = None,
    ) -> message_service_pb2.DeleteMessagesResponse:
        """DeleteMessages; retried on UNAVAILABLE (a repeat finds nothing left to delete)."""
        request = build_request(
            message_service_pb2.DeleteMessagesRequest,
            request,
            session_id=session_id,
            up_to_seq=up_to_seq,
            expected_last_seq=expected_last_seq,
        )
        return await self._call(self._messages.DeleteMessages, request, timeout)

    # StatsService

    async def record_usage(
        self,
        request: stats_service_pb2.RecordUsageRequest | None = None,
        *,
        session_id: str | None = None,
        model: str | None = None,
        usage: session_pb2.Usage | None = None,
        errored: bool | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> stats_service_pb2.RecordUsageResponse:
        """RecordUsage; retried on UNAVAILABLE when request_id is set."""
        request = build_request(
            stats_service_pb2.RecordUsageRequest,
            request,
            session_id=session_id,
            model=model,
            usage=usage,
            errored=errored,
            request_id=request_id,
        )
        return await self._call(self._stats.RecordUsage, request, timeout)

    async def get_stats(
        self,
        request: stats_service_pb2.GetStatsRequest | None = None,
        *,
        filter: session_pb2.SessionFilter | None = None,
        timeout: float | None = None,
    ) -> stats_service_pb2.GetStatsResponse:
        """GetStats."""
        request = build_request(stats_service_pb2.GetStatsRequest, request, filter=filter)
        return await self._call(self._stats.GetStats, request, timeout)

    async def cost_by_model(
        self,
        request: stats_service_pb2.CostByModelRequest | None = None,
        *,
        filter: session_pb2.SessionFilter | None = None,
        timeout: float | None = None,
    ) -> stats_service_pb2.CostByModelResponse:
        """CostByModel."""
        request = build_request(stats_service_pb2.CostByModelRequest, request, filter=filter)
        return await self._call(self._stats.CostByModel, request, timeout)
