"""A WatchSessions stream that survives restarts and lost connections.

A raw WatchSessions call ends when the server restarts or the connection
drops. The iterators here reconnect by themselves, with exponential backoff
and jitter, and resume at the revision after the last one they know to be
complete, so the consumer sees one ordered stream in which no revision is
missing and none is delivered twice (etcd's resumable watch, driven from the
client).

What the consumer receives is ``WatchSessionsResponse`` messages:

* ``CREATED`` once, when the first connection is confirmed (reconnections
  are invisible). Writes made after it has arrived are sure to be seen.
* ``INITIAL`` and then ``INITIAL_COMPLETE`` when ``include_initial`` is set
  (the "listed" sentinel). If the connection drops before INITIAL_COMPLETE,
  the initial state is sent again from the start, so treat INITIAL events as
  a snapshot that is complete only at INITIAL_COMPLETE.
* ``EVENTS`` with whole revisions, each revision at most once. A revision
  too large for one response comes from the server in fragments; they are
  joined here, so the consumer gets it as one response (and a connection
  lost between fragments resends the revision from its first part). The join
  is bounded: a revision whose events pass ``max_revision_bytes`` (64 MiB of
  encoded events by default) ends the watch with ``ResourceExhausted``
  rather than growing the buffer without limit.
* ``PROGRESS`` bookmarks, never lower than a revision already delivered.

The resume point advances on CREATED of a "from now" watch, on EVENTS, on
INITIAL_COMPLETE and on PROGRESS. When the server answers that the resume
point has been compacted away, the iterator raises ``RelistRequired``: list
again and start a new watch from the list's revision + 1.

The state machine (``WatchCursor``) knows nothing of gRPC. The loop around
it is ``watch_async`` in ``sessiond._methods_aio``, written once: its blocking
twin ``watch_sync`` is generated from it with the client's methods (``make
proto``). It takes its ``sleep`` and ``Backoff`` as arguments, so tests drive
reconnection without waiting for real time. Reconnections are invisible in the
stream; a caller that wants to show them (``sessiond watch`` says
"reconnecting") passes ``on_connection``, told of each call opened and each
call the server confirmed.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

import grpc

from sessiond.errors import ResourceExhausted, Unavailable, error_from_rpc_error
from sessiond.v1 import session_service_pb2

WatchRequest = session_service_pb2.WatchSessionsRequest
WatchResponse = session_service_pb2.WatchSessionsResponse

WATCH_CREATED = session_service_pb2.WATCH_RESPONSE_TYPE_CREATED
_EVENTS = session_service_pb2.WATCH_RESPONSE_TYPE_EVENTS
_INITIAL = session_service_pb2.WATCH_RESPONSE_TYPE_INITIAL
_INITIAL_COMPLETE = session_service_pb2.WATCH_RESPONSE_TYPE_INITIAL_COMPLETE
_PROGRESS = session_service_pb2.WATCH_RESPONSE_TYPE_PROGRESS

MAX_REVISION_BYTES = 64 << 20
"""The default bound on one revision joined from fragments: 64 MiB of encoded events."""


@dataclasses.dataclass(frozen=True, slots=True)
class WatchConnection:
    """One step of a watch's connection, for an ``on_connection`` hook.

    ``attempt`` is the number of calls that ended in a row before this one
    (0 for the first call; n for the n-th try after the connection was lost);
    ``reconnecting`` is False only for the watch's very first call;
    ``start_revision`` is the revision the call asks to start from (0: from
    now); ``confirmed`` is False when the call is being opened and True when
    the server has confirmed it (CREATED), with ``revision`` the server's
    revision at that moment.
    """

    attempt: int
    reconnecting: bool
    start_revision: int
    confirmed: bool
    revision: int = 0


ConnectionHook = Callable[[WatchConnection], None]


@dataclasses.dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter: how long to wait before attempt n.

    The n-th delay (n from 0) is ``initial * multiplier**n`` capped at
    ``maximum``, then scaled by a random factor in ``[1 - jitter, 1]`` so
    that many clients cut off at once do not come back in step. Tests pass a
    tiny ``initial`` (and a seeded ``rng``) instead of sleeping for real.
    """

    initial: float = 0.1
    maximum: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.5
    rng: random.Random = dataclasses.field(default_factory=random.Random, compare=False)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after the attempt-th consecutive failure (from 0)."""
        # Cap the exponent first: a long outage must not overflow the float.
        base = min(self.maximum, self.initial * self.multiplier ** min(attempt, 64))
        return base * (1.0 - self.jitter * self.rng.random())


class WatchCursor:
    """The resume point of a watch, and the filter that keeps delivery exact.

    ``request()`` is what to send on each (re)connection; ``accept(response)``
    updates the resume point and returns what to hand to the consumer, or
    None when the response holds nothing new (a repeated CREATED, a replayed
    revision, a bookmark behind what was delivered). ``max_revision_bytes``
    bounds the encoded events of one revision joined from fragments.
    """

    def __init__(self, request: WatchRequest, max_revision_bytes: int = MAX_REVISION_BYTES
                 ) -> None:
        if request.include_initial and request.start_revision:
            raise ValueError("include_initial requires start_revision 0")
        self._template = WatchRequest()
        self._template.CopyFrom(request)
        # next_revision is the first revision not yet delivered; 0 means
        # "from now", until the first CREATED tells us what now is.
        self.next_revision = request.start_revision
        self._initial_pending = request.include_initial
        self._created_seen = False
        # The fragments received so far of a revision not yet complete, and
        # the encoded size of their events.
        self._fragments: list[WatchResponse] = []
        self._fragment_bytes = 0
        self._max_revision_bytes = max_revision_bytes

    @property
    def initial_pending(self) -> bool:
        """Whether the initial state has still to be completed."""
        return self._initial_pending

    def request(self) -> WatchRequest:
        """The request that resumes the watch where delivery stopped."""
        # A new stream sends a split revision again from its first part.
        self._drop_fragments()
        request = WatchRequest()
        request.CopyFrom(self._template)
        if self._initial_pending:
            request.start_revision = 0
            request.include_initial = True
        else:
            request.start_revision = self.next_revision
            request.include_initial = False
        return request

    def accept(self, response: WatchResponse) -> WatchResponse | None:
        """Advance the resume point past ``response``; return what to deliver."""
        if response.type == WATCH_CREATED:
            first = not self._created_seen
            self._created_seen = True
            if self.next_revision == 0 and not self._initial_pending:
                # "From now": events after the revision current at creation
                # follow, so a reconnect must resume right after it.
                self.next_revision = response.revision + 1
            return response if first else None
        if response.type == _INITIAL:
            return response if self._initial_pending else None
        if response.type == _INITIAL_COMPLETE:
            if not self._initial_pending:
                return None
            self._initial_pending = False
            self.next_revision = response.revision + 1
            return response
        if response.type == _EVENTS:
            if response.fragment or self._fragments:
                joined = self._join(response)
                if joined is None:
                    return None
                response = joined
            fresh = [event for event in response.events if event.revision >= self.next_revision]
            if not fresh:
                return None
            self.next_revision = max(response.revision, fresh[-1].revision) + 1
            if len(fresh) == len(response.events):
                return response
            trimmed = WatchResponse()
            trimmed.CopyFrom(response)
            del trimmed.events[:]
            trimmed.events.extend(fresh)
            return trimmed
        if response.type == _PROGRESS:
            if self._initial_pending or response.revision + 1 < self.next_revision:
                return None
            self.next_revision = response.revision + 1
            return response
        return None

    def _drop_fragments(self) -> None:
        self._fragments = []
        self._fragment_bytes = 0

    def _join(self, part: WatchResponse) -> WatchResponse | None:
        """Gather the fragments of one revision; the whole revision once its last part came.

        Raises ``ResourceExhausted`` when the revision's events pass the join bound.
        """
        if self._fragments and self._fragments[0].revision != part.revision:
            # A part of another revision: the server never sends that, so the
            # gathered parts cannot be completed; start again from this one.
            self._drop_fragments()
        self._fragment_bytes += sum(event.ByteSize() for event in part.events)
        if self._fragment_bytes > self._max_revision_bytes:
            self._drop_fragments()
            raise ResourceExhausted(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"revision {part.revision} exceeds max_revision_bytes "
                f"({self._max_revision_bytes} bytes of events)",
            )
        if part.fragment:
            self._fragments.append(part)
            return None
        if not self._fragments:
            self._drop_fragments()
            return part
        whole = WatchResponse()
        whole.CopyFrom(self._fragments[0])
        for earlier in self._fragments[1:]:
            whole.events.extend(earlier.events)
        whole.events.extend(part.events)
        whole.fragment = False
        whole.time.CopyFrom(part.time)
        self._drop_fragments()
        return whole


def tell_connection(
    hook: ConnectionHook | None,
    failures: int,
    earlier_calls: int,
    request: WatchRequest,
    created: WatchResponse | None,
) -> None:
    """Tell ``hook`` that a call is being opened (``created`` None) or was confirmed."""
    if hook is None:
        return
    hook(
        WatchConnection(
            attempt=failures,
            reconnecting=earlier_calls > 0,
            start_revision=request.start_revision,
            confirmed=created is not None,
            revision=created.revision if created is not None else 0,
        )
    )


def raise_unless_connection_loss(error: grpc.RpcError) -> None:
    """Return on UNAVAILABLE (reconnect); raise the SessiondError otherwise."""
    converted = error_from_rpc_error(error)
    if not isinstance(converted, Unavailable):
        raise converted from error
