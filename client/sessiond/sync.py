"""The blocking client: one typed method per sessiond RPC, over a sync channel.

The twin of ``sessiond.aio.AsyncClient`` for code without an event loop (the
``sessiond`` command, scripts, threads): same methods, same keyword fields,
same deadlines, retries, errors, page walking and resuming watch, over a
plain ``grpc`` channel rather than an event loop started per call. Its
settings, retries and methods are generated from the asyncio client's by
``make proto`` (``sessiond._methods_sync``), so the two cannot drift apart;
this module holds what only the blocking client does: one channel, deadlines
on the monotonic clock, and the WatchSessions stream.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any

import grpc

from sessiond._methods_sync import RequestT, ResponseT, SyncMethods
from sessiond.errors import DeadlineExceeded
from sessiond.v1 import (
    message_service_pb2_grpc,
    session_service_pb2_grpc,
    stats_service_pb2_grpc,
)
from sessiond.watching import WatchRequest, WatchResponse

# The transport's types that the generated methods (sessiond._methods_sync) are
# written over, as sessiond.aio names the asyncio ones.
UnaryCall = grpc.UnaryUnaryMultiCallable
Sleep = Callable[[float], None]


def _within(seconds: float, call: grpc.Future[ResponseT]) -> ResponseT:
    """Wait for a unary call for at most ``seconds`` of the monotonic clock.

    The rule of ``sessiond.aio._within``: gRPC's own ``timeout=`` and
    ``Future.result(timeout)`` count on ``time.time()``, which tests freeze
    and NTP steps; the client waits on a monotonic event instead and cancels
    the call when the time is up.
    """
    done = threading.Event()
    call.add_done_callback(lambda _: done.set())
    if not done.wait(seconds):
        call.cancel()
        raise DeadlineExceeded(
            grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer within {seconds:.3f} s"
        )
    return call.result()


class Client(SyncMethods):
    """A blocking sessiond client.

    ``target`` is "host:port"; ``credentials`` makes the channel TLS (plain
    text without). ``timeout`` is the default deadline of each call in
    seconds; ``max_retries`` bounds the retries of a retry-safe call that
    failed with UNAVAILABLE; ``retry_backoff`` spaces them (and the watch's
    reconnections). Use as ``with Client(...) as client:`` or call
    ``close()``.
    """

    # Plain attributes here, where the asyncio client has one stub per event loop.
    _sessions: session_service_pb2_grpc.SessionServiceStub
    _messages: message_service_pb2_grpc.MessageServiceStub
    _stats: stats_service_pb2_grpc.StatsServiceStub

    def _connect(
        self, credentials: grpc.ChannelCredentials | None, options: Sequence[tuple[str, Any]]
    ) -> None:
        if credentials is None:
            self._channel = grpc.insecure_channel(self.target, options=options)
        else:
            self._channel = grpc.secure_channel(self.target, credentials, options=options)
        self._sessions = session_service_pb2_grpc.SessionServiceStub(self._channel)
        self._messages = message_service_pb2_grpc.MessageServiceStub(self._channel)
        self._stats = stats_service_pb2_grpc.StatsServiceStub(self._channel)

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._channel.close()

    def _clock(self) -> float:
        return time.monotonic()

    def _send(
        self, method: UnaryCall[RequestT, ResponseT], request: RequestT, seconds: float
    ) -> ResponseT:
        return _within(seconds, method.future(request, metadata=self._metadata))

    def _open_watch(self, request: WatchRequest) -> Generator[WatchResponse, None, None]:
        """One WatchSessions call, cancelled when the generator is closed."""
        call = self._sessions.WatchSessions(request, metadata=self._metadata)
        try:
            yield from call
        finally:
            call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves it untyped
