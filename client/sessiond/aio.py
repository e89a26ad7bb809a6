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

The settings, retries and methods are written once, in ``sessiond._methods_aio``;
the blocking client's (``sessiond._methods_sync``) are generated from them. This
module holds what only the asyncio client does: a channel per event loop, deadlines
on the loop's clock, and the WatchSessions stream.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any

import grpc
import grpc.aio

from sessiond._methods_aio import DEFAULT_TARGET as DEFAULT_TARGET
from sessiond._methods_aio import AsyncMethods, RequestT, ResponseT
from sessiond._methods_aio import watch_async as watch_async
from sessiond.errors import DeadlineExceeded
from sessiond.v1 import (
    message_service_pb2_grpc,
    session_service_pb2_grpc,
    stats_service_pb2_grpc,
)
from sessiond.watching import WatchRequest, WatchResponse

# The transport's types that the shared methods (sessiond._methods_aio) are written
# over; sessiond.sync names the blocking ones alike.
UnaryCall = grpc.aio.UnaryUnaryMultiCallable
Sleep = Callable[[float], Awaitable[None]]


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


class AsyncClient(AsyncMethods):
    """A sessiond client for asyncio code.

    ``target`` is "host:port"; ``credentials`` makes the channel TLS (plain
    text without). ``timeout`` is the default deadline of each call in
    seconds; ``max_retries`` bounds the retries of a retry-safe call that
    failed with UNAVAILABLE; ``retry_backoff`` spaces them (and the watch's
    reconnections). Use as ``async with AsyncClient(...) as client:`` or call
    ``close()``.
    """

    def _connect(
        self, credentials: grpc.ChannelCredentials | None, options: Sequence[tuple[str, Any]]
    ) -> None:
        self._credentials = credentials
        self._options = options
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

    async def close(self) -> None:
        """Close the running loop's channel; calls in flight on it are cancelled.

        Channels the client made on other event loops are closed with their
        loops (call ``close()`` on each loop to close them sooner).
        """
        with self._per_loop_lock:
            bound = self._per_loop.pop(asyncio.get_running_loop(), None)
        if bound is not None:
            await bound.channel.close(None)

    def _clock(self) -> float:
        return asyncio.get_running_loop().time()

    async def _send(
        self, method: UnaryCall[RequestT, ResponseT], request: RequestT, seconds: float
    ) -> ResponseT:
        return await _within(seconds, method(request, metadata=self._metadata))

    async def _open_watch(self, request: WatchRequest) -> AsyncGenerator[WatchResponse, None]:
        """One WatchSessions call, cancelled when the generator is closed."""
        call = self._sessions.WatchSessions(request, metadata=self._metadata)
        try:
            async for response in call:
                yield response
        finally:
            call.cancel()
