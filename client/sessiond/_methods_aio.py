"""What both Python clients share, written once: settings, retries and every RPC method.

``AsyncMethods`` is the base of ``sessiond.aio.AsyncClient``: the client's
settings (``__init__``), the unary call with its deadline, retries and error
conversion (``_call``), every RPC method, the page walkers
(``iter_sessions``, ``iter_messages``) and ``watch``. Each method builds its
request with the ``sessiond.requests`` helpers and sends it with ``_call``.

``sessiond._methods_sync`` (``SyncMethods``, the base of the blocking
``sessiond.sync.Client``) is generated from this file by unasync (``make
proto``), so a change here is a change to both clients, and the docstrings
here serve both. What truly differs stays in ``aio.py`` and ``sync.py``: the
channels, one attempt of a unary call (``_send``), the clock its deadline is
kept on (``_clock``), closing, and the WatchSessions stream.

Write nothing here that only one calling style can say: the generator drops
``async``/``await`` and renames the names in its replacement table
(scripts/gen_sync_methods.py), nothing else.
"""

# ASYNC109 prefers asyncio.timeout() over a timeout parameter; here timeout
# is the gRPC deadline sent to the server, part of the call, not a local wait.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import grpc
from google.protobuf.message import Message

from sessiond.channel import channel_options
from sessiond.errors import Unavailable, error_from_rpc_error, retry_is_safe
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
    MAX_REVISION_BYTES,
    WATCH_CREATED,
    Backoff,
    ConnectionHook,
    WatchCursor,
    WatchRequest,
    WatchResponse,
    raise_unless_connection_loss,
    tell_connection,
)

if TYPE_CHECKING:
    from sessiond.aio import Sleep, UnaryCall

DEFAULT_TARGET = "127.0.0.1:50051"

RequestT = TypeVar("RequestT", bound=Message)
ResponseT = TypeVar("ResponseT", bound=Message)


class AsyncMethods:
    """A sessiond client's settings and calls, over the channels its subclass makes."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        max_retries: int = 3,
        credentials: grpc.ChannelCredentials | None = None,
        retry_backoff: Backoff | None = None,
        sleep: Sleep = asyncio.sleep,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.target = target
        self._metadata = auth_metadata(token)
        self._timeout = timeout
        self._max_retries = max_retries
        self._backoff = retry_backoff if retry_backoff is not None else Backoff()
        self._sleep = sleep
        self._connect(credentials, channel_options(options))

    if TYPE_CHECKING:
        # What each client provides: its channels and the stubs over them, one
        # attempt of a unary call given up after `seconds` of its clock, closing,
        # and one WatchSessions call.
        def _connect(
            self, credentials: grpc.ChannelCredentials | None, options: Sequence[tuple[str, Any]]
        ) -> None: ...

        @property
        def _sessions(self) -> session_service_pb2_grpc.SessionServiceAsyncStub: ...

        @property
        def _messages(self) -> message_service_pb2_grpc.MessageServiceAsyncStub: ...

        @property
        def _stats(self) -> stats_service_pb2_grpc.StatsServiceAsyncStub: ...

        def _clock(self) -> float: ...

        async def _send(
            self, method: UnaryCall[RequestT, ResponseT], request: RequestT, seconds: float
        ) -> ResponseT: ...

        async def close(self) -> None: ...

        def _open_watch(self, request: WatchRequest) -> AsyncGenerator[WatchResponse, None]: ...

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(
        self,
        method: UnaryCall[RequestT, ResponseT],
        request: RequestT,
        timeout: float | None,
    ) -> ResponseT:
        """Send one unary call with deadline, retries and error conversion.

        The deadline (``timeout``, else the client's) bounds the whole call,
        retries and their waits included. Only UNAVAILABLE is retried, and only
        for a request that ``retry_is_safe`` accepts, at most ``max_retries``
        times, spaced by the client's backoff.
        """
        budget = self._timeout if timeout is None else timeout
        deadline = self._clock() + budget
        may_retry = retry_is_safe(request)
        attempt = 0
        while True:
            remaining = max(deadline - self._clock(), 0.0)
            try:
                return await self._send(method, request, remaining)
            except grpc.RpcError as rpc_error:
                error = error_from_rpc_error(rpc_error)
                if not (may_retry and isinstance(error, Unavailable)):
                    raise error from rpc_error
                delay = self._backoff.delay(attempt)
                if attempt >= self._max_retries or self._clock() + delay >= deadline:
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
        max_revision_bytes: int = MAX_REVISION_BYTES,
    ) -> AsyncGenerator[WatchResponse, None]:
        """WatchSessions as an endless iterator that resumes by itself.

        Yields WatchSessionsResponse messages as described in
        ``sessiond.watching``: CREATED once, then INITIAL/INITIAL_COMPLETE,
        EVENTS and PROGRESS, each revision once, across reconnections.
        Raises ``RelistRequired`` when the resume point was compacted, and
        other ``SessiondError`` subclasses for anything but UNAVAILABLE.
        ``on_connection`` is told of each call opened and confirmed
        (``sessiond.watching.WatchConnection``), to show reconnections.
        ``max_revision_bytes`` bounds a revision joined from fragments (64 MiB
        of encoded events); a larger one raises ``ResourceExhausted``.
        Close it to end the call: ``aclose()`` (or ``contextlib.aclosing``) on the
        asyncio client's, ``close()`` (or ``contextlib.closing``) on the blocking one's.
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
            max_revision_bytes=max_revision_bytes,
        )

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


async def watch_async(
    open_stream: Callable[[WatchRequest], AsyncGenerator[WatchResponse, None]],
    request: WatchRequest,
    *,
    backoff: Backoff,
    sleep: Sleep = asyncio.sleep,
    on_connection: ConnectionHook | None = None,
    max_revision_bytes: int = MAX_REVISION_BYTES,
) -> AsyncGenerator[WatchResponse, None]:
    """Yield the responses of a watch that reconnects on connection loss.

    ``open_stream`` is a generator that starts one WatchSessions call and
    yields its responses; it must cancel the call when closed early.
    Raises ``SessiondError`` subclasses (``RelistRequired`` for a compacted
    resume point) for anything but UNAVAILABLE or a stream that ends without
    an error. The rules of the stream are ``sessiond.watching``'s.
    """
    cursor = WatchCursor(request, max_revision_bytes)
    failures = 0
    calls = 0
    while True:
        call_request = cursor.request()
        tell_connection(on_connection, failures, calls, call_request, None)
        calls += 1
        stream = open_stream(call_request)
        try:
            async for response in stream:
                if response.type == WATCH_CREATED:
                    tell_connection(on_connection, failures, calls - 1, call_request, response)
                    failures = 0
                delivered = cursor.accept(response)
                if delivered is not None:
                    yield delivered
        except grpc.RpcError as error:
            raise_unless_connection_loss(error)
        finally:
            await stream.aclose()
        # Connection lost, or the server ended the stream: come back later.
        await sleep(backoff.delay(failures))
        failures += 1
