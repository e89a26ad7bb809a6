"""Executable watch guarantees: etcd's six, checked over recorded WatchSessions streams.

Every watch test states its expectations the same way, so that a guarantee is
written once and checked by many tests:

* ``WatchRecorder`` reads a WatchSessions stream in the background into a
  ``RecordedStream`` (every response, and the status the call ended with).
* ``ChangeLogWriter`` performs writes through the public API and records, in a
  ``ChangeLog``, the events each write must produce at the revision its
  response carried. The expected side therefore comes from acknowledged
  writes, never from the stream under test.
* ``WatchValidator`` checks one stream, or a sequence of resumptions of one
  logical watch, against the guarantees of DESIGN.md (after etcd's
  ``tests/robustness/validate/watch.go``):

  ordered       event revisions strictly increase across responses (and
                resumptions) and never decrease within one;
  unique        no (revision, session_id, type) is delivered twice;
  reliable      every expected revision inside the range a stream vouches for
                is delivered (no gap), and nothing unexpected is;
  atomic        the events of one revision arrive in one response, all of
                them; or, for a revision too large for one response, in
                marked fragments: consecutive EVENTS responses of that
                revision alone, every one but the last with fragment set
                (a stream that ends between them delivered nothing of it);
  bounded       every response carries at most ``max_response_bytes`` of
                events (one event alone may be larger only when the field
                limits are raised).
  resumable     a stream started at N delivers nothing below N, and each
                resumption starts right after what the previous one covered;
  bookmarkable  after PROGRESS (or INITIAL_COMPLETE) at R, no event <= R.

A violation raises ``AssertionError`` listing every problem found, each
prefixed by the guarantee and the stream it concerns.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc
from google.protobuf import field_mask_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sessiond.v1 import (
    event_pb2,
    message_pb2,
    message_service_pb2,
    session_pb2,
    session_service_pb2,
    stats_service_pb2,
)

CREATED = session_service_pb2.WATCH_RESPONSE_TYPE_CREATED
EVENTS = session_service_pb2.WATCH_RESPONSE_TYPE_EVENTS
INITIAL = session_service_pb2.WATCH_RESPONSE_TYPE_INITIAL
INITIAL_COMPLETE = session_service_pb2.WATCH_RESPONSE_TYPE_INITIAL_COMPLETE
PROGRESS = session_service_pb2.WATCH_RESPONSE_TYPE_PROGRESS

ET = event_pb2.EventType
DELETION_TYPES = frozenset(
    {event_pb2.EVENT_TYPE_SESSION_DELETED, event_pb2.EVENT_TYPE_SESSION_PURGED}
)

# The server's default bound on the events of one response (watch_response_bytes).
MAX_RESPONSE_BYTES = 1 << 20

# Generous bound for waiting on a stream: only there to turn a hang into a
# failure, never to assert speed.
DEFAULT_TIMEOUT = 30.0
# A refused watch fails before or right after CREATED; waiting longer than
# this for the error means the server is serving it.
ERROR_TIMEOUT = 10.0

EventKey = tuple[int, str, int]  # (revision, session_id, event type)


def event_key(event: event_pb2.SessionEvent) -> EventKey:
    return (event.revision, event.session_id, event.type)


def describe_key(key: EventKey) -> str:
    revision, session_id, event_type = key
    return f"r{revision}:{session_id}:{ET.Name(event_type).removeprefix('EVENT_TYPE_')}"


def describe_response(response: session_service_pb2.WatchSessionsResponse) -> str:
    kind = session_service_pb2.WatchResponseType.Name(response.type).removeprefix(
        "WATCH_RESPONSE_TYPE_"
    )
    events = ",".join(describe_key(event_key(e)) for e in response.events)
    return f"{kind}@{response.revision}" + (f"[{events}]" if events else "")


def events_bytes(response: session_service_pb2.WatchSessionsResponse) -> int:
    """Bytes the events of a response take on the wire (each with tag and length)."""
    return sum(e.ByteSize() + 1 + max(1, (e.ByteSize().bit_length() + 6) // 7)
               for e in response.events)


def join_fragments(
    responses: Sequence[session_service_pb2.WatchSessionsResponse],
) -> list[tuple[int, session_service_pb2.WatchSessionsResponse]]:
    """The responses as a client acts on them: (index of the last part, response).

    A run of EVENTS parts marked ``fragment`` followed by the unmarked last
    part of the same revision becomes one response; a run the stream never
    finished is left out (nothing of that revision was delivered). A run
    broken by anything else is kept part by part, for the checks to report.
    """
    joined: list[tuple[int, session_service_pb2.WatchSessionsResponse]] = []
    run: list[tuple[int, session_service_pb2.WatchSessionsResponse]] = []
    for index, response in enumerate(responses):
        if run and not (response.type == EVENTS and response.revision == run[0][1].revision):
            joined += run  # broken run
            run = []
        if response.type == EVENTS and response.fragment:
            run.append((index, response))
            continue
        if run:
            whole = session_service_pb2.WatchSessionsResponse()
            whole.CopyFrom(run[0][1])
            for _, part in run[1:]:
                whole.events.extend(part.events)
            whole.events.extend(response.events)
            whole.fragment = False
            joined.append((index, whole))
            run = []
        else:
            joined.append((index, response))
    return joined


def error_info(error: grpc.aio.AioRpcError | grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo detail of a failed call's google.rpc.Status, if any."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


# --------------------------------------------------------------------------
# What a stream delivered.


@dataclasses.dataclass
class RecordedStream:
    """Everything one WatchSessions call delivered, in arrival order."""

    request: session_service_pb2.WatchSessionsRequest
    name: str = "stream"
    responses: list[session_service_pb2.WatchSessionsResponse] = dataclasses.field(
        default_factory=list
    )
    # How the call ended when it was not cancelled by the test (None while it
    # runs or when the test cancelled it).
    error: grpc.aio.AioRpcError | None = None

    @property
    def created(self) -> session_service_pb2.WatchSessionsResponse | None:
        return next((r for r in self.responses if r.type == CREATED), None)

    @property
    def initial_complete(self) -> session_service_pb2.WatchSessionsResponse | None:
        return next((r for r in self.responses if r.type == INITIAL_COMPLETE), None)

    @property
    def delivered(self) -> list[tuple[int, session_service_pb2.WatchSessionsResponse]]:
        """(index, response) with fragments joined, as a client acts on them."""
        return join_fragments(self.responses)

    @property
    def events(self) -> list[event_pb2.SessionEvent]:
        """The change events delivered (INITIAL snapshots excluded), in order."""
        return [e for _, r in self.delivered if r.type == EVENTS for e in r.events]

    @property
    def initial_events(self) -> list[event_pb2.SessionEvent]:
        return [e for r in self.responses if r.type == INITIAL for e in r.events]

    @property
    def event_revisions(self) -> list[int]:
        return sorted({e.revision for e in self.events})

    @property
    def first_covered(self) -> int | None:
        """The first revision this stream is responsible for, None before CREATED."""
        if self.request.start_revision > 0:
            return self.request.start_revision
        if self.request.include_initial:
            complete = self.initial_complete
            return None if complete is None else complete.revision + 1
        created = self.created
        return None if created is None else created.revision + 1

    @property
    def last_covered(self) -> int:
        """The highest revision this stream vouches for: every matching event up
        to it has been delivered (an EVENTS, PROGRESS or INITIAL_COMPLETE
        revision). Below first_covered when it vouches for nothing yet."""
        first = self.first_covered
        last = (first - 1) if first is not None else 0
        for _, response in self.delivered:
            if response.type in (EVENTS, PROGRESS, INITIAL_COMPLETE):
                last = max(last, response.revision)
        return last

    @property
    def resume_revision(self) -> int:
        """The start_revision that continues this stream exactly."""
        return self.last_covered + 1

    def summary(self, limit: int = 12) -> str:
        shown = [describe_response(r) for r in self.responses[-limit:]]
        more = len(self.responses) - len(shown)
        ended = f"; ended {self.error.code().name}: {self.error.details()}" if self.error else ""
        return f"{self.name}: " + ("... " if more > 0 else "") + " ".join(shown) + ended


class WatchRecorder:
    """Reads one WatchSessions call in the background into a RecordedStream.

    Use as an async context manager; leaving it cancels the call. ``wait_*``
    methods poll the recording with a generous timeout and fail with a
    summary of what arrived, rather than hang.
    """

    def __init__(
        self,
        stub: Any,
        request: session_service_pb2.WatchSessionsRequest | None = None,
        *,
        name: str = "watch",
        timeout: float = DEFAULT_TIMEOUT,
        **request_fields: Any,
    ) -> None:
        self.timeout = timeout
        if request is None:
            request = session_service_pb2.WatchSessionsRequest(**request_fields)
        self.stub = stub
        self.stream = RecordedStream(request=request, name=name)
        self._changed = asyncio.Event()
        self._call: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def __aenter__(self) -> WatchRecorder:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def start(self) -> None:
        self._call = self.stub.WatchSessions(self.stream.request)
        self._task = asyncio.create_task(self._read(), name=f"recorder:{self.stream.name}")

    @property
    def finished(self) -> bool:
        return self._task is not None and self._task.done()

    async def _read(self) -> None:
        try:
            async for response in self._call:
                self.stream.responses.append(response)
                self._changed.set()
        except grpc.aio.AioRpcError as error:
            if not (self._stopping and error.code() == grpc.StatusCode.CANCELLED):
                self.stream.error = error
        except asyncio.CancelledError:
            if not self._stopping:
                raise
        finally:
            self._changed.set()

    async def wait_until(self, predicate: Callable[[RecordedStream], bool], what: str) -> None:
        """Wait (at most self.timeout) until predicate holds for the recording."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            self._changed.clear()
            if predicate(self.stream):
                return
            if self.finished:
                raise AssertionError(
                    f"{self.stream.name} ended before {what}: {self.stream.summary()}"
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}: {self.stream.summary()}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_created(self) -> session_service_pb2.WatchSessionsResponse:
        await self.wait_until(lambda s: s.created is not None, "the CREATED response")
        created = self.stream.created
        assert created is not None
        return created

    async def wait_covered(self, revision: int) -> None:
        """Wait until the stream vouches for every matching event up to revision."""
        await self.wait_until(
            lambda s: s.last_covered >= revision, f"revision {revision} to be covered"
        )

    async def wait_ended(self) -> grpc.aio.AioRpcError | None:
        await self.wait_until(lambda s: self.finished, "the stream to end")
        return self.stream.error

    async def stop(self) -> RecordedStream:
        """Cancel the call (if still running) and return the recording."""
        self._stopping = True
        if self._call is not None and not self.finished:
            self._call.cancel()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 10)
            except TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        return self.stream


async def watch_until(
    stub: Any,
    revision: int,
    *,
    name: str = "watch",
    **request_fields: Any,
) -> RecordedStream:
    """Open a watch, read until it covers revision, cancel it; the recording."""
    async with WatchRecorder(stub, name=name, **request_fields) as recorder:
        await recorder.wait_covered(revision)
    return recorder.stream


# --------------------------------------------------------------------------
# What the writes committed.


@dataclasses.dataclass(frozen=True)
class ExpectedEvent:
    """An event a committed write must produce."""

    revision: int
    session_id: str
    type: int
    # The session after the change, when the write response carried it (used
    # to evaluate filters); None for deletions and unknown snapshots.
    session: session_pb2.Session | None = dataclasses.field(default=None, compare=False)

    @property
    def key(self) -> EventKey:
        return (self.revision, self.session_id, self.type)

    @classmethod
    def of(cls, event: event_pb2.SessionEvent) -> ExpectedEvent:
        """The expectation a delivered event meets (for ground-truth streams)."""
        session = event.session if event.HasField("session") else None
        return cls(event.revision, event.session_id, event.type, session)


class ChangeLog:
    """The events expected per revision.

    A revision is *exact* when its events are known in full; an inexact one
    (for example activity that may also revive an UNKNOWN session) must
    deliver at least the listed events.
    """

    def __init__(self) -> None:
        self._events: dict[int, list[ExpectedEvent]] = {}
        self._inexact: set[int] = set()

    def expect(
        self,
        revision: int,
        session_id: str,
        event_type: int,
        session: session_pb2.Session | None = None,
        *,
        exact: bool = True,
    ) -> None:
        if revision <= 0:
            raise AssertionError(
                f"a write expected to produce {ET.Name(event_type)} for {session_id!r} "
                f"was answered with revision {revision}"
            )
        self._events.setdefault(revision, []).append(
            ExpectedEvent(revision, session_id, event_type, session)
        )
        if not exact:
            self._inexact.add(revision)

    @classmethod
    def from_events(cls, events: Iterable[event_pb2.SessionEvent]) -> ChangeLog:
        """A log built from delivered events (a ground-truth stream)."""
        log = cls()
        for event in events:
            e = ExpectedEvent.of(event)
            log.expect(e.revision, e.session_id, e.type, e.session)
        return log

    @property
    def revisions(self) -> list[int]:
        return sorted(self._events)

    @property
    def last_revision(self) -> int:
        return max(self._events, default=0)

    def events_at(self, revision: int) -> list[ExpectedEvent]:
        return list(self._events.get(revision, ()))

    def is_exact(self, revision: int) -> bool:
        return revision not in self._inexact

    def keys(self) -> list[EventKey]:
        return sorted(e.key for events in self._events.values() for e in events)

    def filtered(self, predicate: Callable[[ExpectedEvent], bool]) -> ChangeLog:
        log = ChangeLog()
        for revision, events in self._events.items():
            kept = [e for e in events if predicate(e)]
            if kept:
                log._events[revision] = kept
                if revision in self._inexact:
                    log._inexact.add(revision)
        return log

    def between(self, first: int, last: int) -> ChangeLog:
        return self.filtered(lambda e: first <= e.revision <= last)

    def merged(self, other: ChangeLog) -> ChangeLog:
        log = self.filtered(lambda e: True)
        for revision, events in other._events.items():
            log._events.setdefault(revision, []).extend(events)
            if revision in other._inexact:
                log._inexact.add(revision)
        return log


def channel_matches(patterns: Sequence[str], channel: str) -> bool:
    """SessionFilter.channels: exact, or "<type>." for the type and its aliases."""
    for pattern in patterns:
        if channel == pattern:
            return True
        if pattern.endswith(".") and (channel == pattern[:-1] or channel.startswith(pattern)):
            return True
    return False


def filter_matches(watch_filter: session_service_pb2.WatchFilter, event: ExpectedEvent) -> bool:
    """WatchFilter semantics of the proto, evaluated on the expected side."""
    f = watch_filter
    if f.event_types and event.type not in f.event_types:
        return False
    if f.session_ids and event.session_id not in f.session_ids:
        return False
    if event.type in DELETION_TYPES:
        return True  # deletions match on session_ids only
    if not (f.owner_ids or f.agents or f.channels or f.statuses or f.labels):
        return True
    session = event.session
    if session is None:
        raise AssertionError(
            f"cannot evaluate the filter for {describe_key(event.key)}: no session snapshot"
        )
    if f.owner_ids and session.owner_id not in f.owner_ids:
        return False
    if f.agents and session.agent not in f.agents:
        return False
    if f.channels and not channel_matches(f.channels, session.channel):
        return False
    if f.statuses and session.status not in f.statuses:
        return False
    return all(session.labels.get(k) == v for k, v in f.labels.items())


# --------------------------------------------------------------------------
# The guarantees.


class WatchValidator:
    """Checks recorded streams against etcd's watch guarantees.

    ``expected`` is the change log of the writes, already restricted to what
    the streams' filter selects (see ``ChangeLog.filtered``). Without it only
    the intrinsic guarantees (ordered, unique, atomic within the stream,
    resumable start, bookmarkable) are checked. ``complete`` says the log
    holds every write of the covered range, so that an event it does not
    list is a phantom.
    """

    def __init__(self, expected: ChangeLog | None = None, *, complete: bool = True,
                 max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:
        self.expected = expected
        self.complete = complete
        self.max_response_bytes = max_response_bytes

    def validate(self, *streams: RecordedStream) -> None:
        """Check one logical watch: a stream and its resumptions, in order."""
        problems = self.problems(*streams)
        if problems:
            detail = "\n".join(f"  - {p}" for p in problems[:40])
            more = f"\n  ... and {len(problems) - 40} more" if len(problems) > 40 else ""
            recordings = "\n".join(f"  {s.summary()}" for s in streams)
            raise AssertionError(
                f"watch guarantees violated:\n{detail}{more}\nrecorded:\n{recordings}"
            )

    def problems(self, *streams: RecordedStream) -> list[str]:
        problems: list[str] = []
        for stream in streams:
            problems += self.check_well_formed(stream)
        problems += self.check_ordered(streams)
        problems += self.check_unique(streams)
        for stream in streams:
            problems += self.check_atomic(stream)
            problems += self.check_reliable(stream)
            problems += self.check_bookmarkable(stream)
        problems += self.check_resumable(streams)
        return problems

    # Shape of the stream: the contract of WatchResponseType.
    def check_well_formed(self, stream: RecordedStream) -> list[str]:
        p = f"well-formed [{stream.name}]"
        problems: list[str] = []
        if not stream.responses:
            if stream.error is not None:
                problems.append(
                    f"{p}: ended with {stream.error.code().name} before CREATED: "
                    f"{stream.error.details()}"
                )
            return problems
        if stream.responses[0].type != CREATED:
            problems.append(
                f"{p}: first response is {describe_response(stream.responses[0])}, not CREATED"
            )
        if sum(r.type == CREATED for r in stream.responses) > 1:
            problems.append(f"{p}: more than one CREATED response")
        include_initial = stream.request.include_initial
        complete_seen = False
        for index, response in enumerate(stream.responses):
            where = f"{p}: response #{index} {describe_response(response)}"
            if response.type == session_service_pb2.WATCH_RESPONSE_TYPE_UNSPECIFIED:
                problems.append(f"{where}: type UNSPECIFIED is never sent")
            size = events_bytes(response)
            if size > self.max_response_bytes and len(response.events) > 1:
                problems.append(f"bounded [{stream.name}]: response #{index} "
                                f"{describe_response(response)} carries {size} bytes of events;"
                                f" the bound is {self.max_response_bytes}")
            if response.fragment and response.type != EVENTS:
                problems.append(f"{where}: fragment set on a response that is not EVENTS")
            if response.type in (CREATED, PROGRESS, INITIAL_COMPLETE) and response.events:
                problems.append(f"{where}: carries events")
            if response.type == INITIAL:
                if not include_initial:
                    problems.append(f"{where}: INITIAL without include_initial")
                if complete_seen:
                    problems.append(f"{where}: INITIAL after INITIAL_COMPLETE")
                if any(e.type != event_pb2.EVENT_TYPE_INITIAL for e in response.events):
                    problems.append(f"{where}: INITIAL response with non-INITIAL events")
            if response.type == INITIAL_COMPLETE:
                if not include_initial:
                    problems.append(f"{where}: INITIAL_COMPLETE without include_initial")
                if complete_seen:
                    problems.append(f"{where}: second INITIAL_COMPLETE")
                complete_seen = True
            if response.type in (EVENTS, PROGRESS) and include_initial and not complete_seen:
                problems.append(f"{where}: before INITIAL_COMPLETE")
            if response.type == EVENTS:
                if not response.events:
                    problems.append(f"{where}: EVENTS response without events")
                    continue
                highest = max(e.revision for e in response.events)
                if response.revision != highest:
                    problems.append(
                        f"{where}: revision {response.revision} is not the highest event "
                        f"revision {highest}"
                    )
                for event in response.events:
                    problems += self._check_event_shape(
                        f"{where} {describe_key(event_key(event))}", event
                    )
        return problems

    @staticmethod
    def _check_event_shape(where: str, event: event_pb2.SessionEvent) -> list[str]:
        problems: list[str] = []
        if event.type in (event_pb2.EVENT_TYPE_UNSPECIFIED, event_pb2.EVENT_TYPE_INITIAL):
            problems.append(f"{where}: type {ET.Name(event.type)} in an EVENTS response")
        if event.revision <= 0:
            problems.append(f"{where}: revision {event.revision}")
        if not event.session_id:
            problems.append(f"{where}: empty session_id")
        if event.type in DELETION_TYPES:
            if event.HasField("session"):
                problems.append(f"{where}: deletion carries a session")
        elif not event.HasField("session"):
            problems.append(f"{where}: no session snapshot")
        elif event.session.id != event.session_id:
            problems.append(f"{where}: session.id {event.session.id!r} != session_id")
        return problems

    def check_ordered(self, streams: Sequence[RecordedStream]) -> list[str]:
        problems: list[str] = []
        previous_last = 0
        previous_where = ""
        for stream in streams:
            for index, response in stream.delivered:
                if response.type != EVENTS or not response.events:
                    continue
                revisions = [e.revision for e in response.events]
                where = f"ordered [{stream.name}] response #{index}"
                if revisions != sorted(revisions):
                    problems.append(f"{where}: revisions decrease within a response: {revisions}")
                if revisions[0] <= previous_last:
                    problems.append(
                        f"{where}: revision {revisions[0]} follows {previous_last} "
                        f"({previous_where})"
                    )
                previous_last = max(previous_last, revisions[-1])
                previous_where = f"{stream.name} response #{index}"
        return problems

    def check_unique(self, streams: Sequence[RecordedStream]) -> list[str]:
        counts: collections.Counter[EventKey] = collections.Counter()
        for stream in streams:
            counts.update(event_key(e) for e in stream.events)
        return [
            f"unique: {describe_key(key)} delivered {count} times"
            for key, count in sorted(counts.items())
            if count > 1
        ]

    @staticmethod
    def check_fragments(stream: RecordedStream) -> list[str]:
        """The parts of a split revision: consecutive, that revision alone, last one unmarked."""
        problems: list[str] = []
        p = f"atomic [{stream.name}]"
        responses = stream.responses
        for index, response in enumerate(responses):
            if not (response.type == EVENTS and response.fragment):
                continue
            where = f"{p}: fragment #{index} {describe_response(response)}"
            others = sorted({e.revision for e in response.events} - {response.revision})
            if others:
                problems.append(f"{where}: carries revisions {others} beside {response.revision}")
            if index + 1 == len(responses):
                continue  # the stream ended between parts: nothing of it was delivered
            following = responses[index + 1]
            if following.type != EVENTS or following.revision != response.revision:
                problems.append(f"{where}: followed by {describe_response(following)}, not "
                                f"the next part of revision {response.revision}")
            elif not following.fragment and any(
                    e.revision != response.revision for e in following.events):
                problems.append(f"{where}: its last part #{index + 1} carries other revisions")
        return problems

    def check_atomic(self, stream: RecordedStream) -> list[str]:
        problems: list[str] = self.check_fragments(stream)
        responses_of: dict[int, set[int]] = collections.defaultdict(set)
        delivered: dict[int, list[EventKey]] = collections.defaultdict(list)
        for index, response in stream.delivered:
            if response.type != EVENTS:
                continue
            for event in response.events:
                responses_of[event.revision].add(index)
                delivered[event.revision].append(event_key(event))
        for revision, indexes in sorted(responses_of.items()):
            if len(indexes) > 1:
                problems.append(
                    f"atomic [{stream.name}]: revision {revision} split across responses "
                    f"{sorted(indexes)}"
                )
        if self.expected is None:
            return problems
        for revision, keys in sorted(delivered.items()):
            expected = sorted(e.key for e in self.expected.events_at(revision))
            if not expected:
                continue  # a phantom revision is reported by check_reliable
            got = sorted(keys)
            missing = list((collections.Counter(expected) - collections.Counter(got)).elements())
            extra = list((collections.Counter(got) - collections.Counter(expected)).elements())
            if missing:
                problems.append(
                    f"atomic [{stream.name}]: revision {revision} delivered {len(got)} of "
                    f"{len(expected)} expected events; missing "
                    f"{[describe_key(k) for k in missing]}"
                )
            if extra and self.expected.is_exact(revision):
                problems.append(
                    f"atomic [{stream.name}]: revision {revision} delivered unexpected events "
                    f"{[describe_key(k) for k in extra]} (expected "
                    f"{[describe_key(k) for k in expected]})"
                )
        return problems

    def check_reliable(self, stream: RecordedStream) -> list[str]:
        if self.expected is None:
            return []
        first, last = stream.first_covered, stream.last_covered
        if first is None:
            return []
        delivered = set(stream.event_revisions)
        expected = [r for r in self.expected.revisions if first <= r <= last]
        problems = [
            f"reliable [{stream.name}]: revision {r} "
            f"({[describe_key(e.key) for e in self.expected.events_at(r)]}) missing from the "
            f"covered range [{first}, {last}]"
            for r in expected
            if r not in delivered
        ]
        if self.complete:
            known = set(self.expected.revisions)
            problems += [
                f"reliable [{stream.name}]: revision {r} delivered but no write produced it "
                f"({[describe_key(event_key(e)) for e in stream.events if e.revision == r]})"
                for r in sorted(delivered - known)
            ]
        return problems

    def check_bookmarkable(self, stream: RecordedStream) -> list[str]:
        problems: list[str] = []
        bookmark = 0
        bookmark_where = ""
        for index, response in stream.delivered:
            if response.type in (PROGRESS, INITIAL_COMPLETE):
                if response.revision > bookmark:
                    bookmark = response.revision
                    bookmark_where = f"{describe_response(response)} #{index}"
            elif response.type == EVENTS:
                low = [e.revision for e in response.events if e.revision <= bookmark]
                if low:
                    problems.append(
                        f"bookmarkable [{stream.name}]: response #{index} delivers revisions "
                        f"{low} after {bookmark_where}"
                    )
        return problems

    def check_resumable(self, streams: Sequence[RecordedStream]) -> list[str]:
        problems: list[str] = []
        for stream in streams:
            first = stream.first_covered
            if first is None:
                continue
            low = sorted({e.revision for e in stream.events if e.revision < first})
            if low:
                problems.append(
                    f"resumable [{stream.name}]: starts at {first} but delivers revisions {low}"
                )
        for before, after in itertools.pairwise(streams):
            first = after.first_covered
            if first is not None and first != before.last_covered + 1:
                problems.append(
                    f"resumable: {after.name} starts at {first}, but {before.name} covered up "
                    f"to {before.last_covered} (a resumption must start at last + 1)"
                )
        return problems


# --------------------------------------------------------------------------
# The writes, through the public API, each recorded with its expected events.


def user_message(content: str, **fields: Any) -> message_pb2.Message:
    return message_pb2.Message(role=message_pb2.ROLE_USER, content=content, **fields)


def timestamp_from_micros(micros: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMicroseconds(micros)
    return ts


class ChangeLogWriter:
    """Performs writes and records in ``log`` the events each must produce.

    Each method returns the RPC response, so a test can compare it with the
    event. Errors propagate untouched (a failed write is expected to produce
    nothing). ``sessions``, ``messages`` and ``stats`` are the three stubs.
    """

    def __init__(self, sessions: Any, messages: Any, stats: Any) -> None:
        self.sessions = sessions
        self.messages = messages
        self.stats = stats
        self.log = ChangeLog()
        self.last_revision = 0
        self._status: dict[str, int] = {}

    @classmethod
    def for_server(cls, server: Any) -> ChangeLogWriter:
        return cls(server.sessions, server.messages, server.stats)

    def _seen(self, revision: int, session: session_pb2.Session | None = None) -> None:
        self.last_revision = max(self.last_revision, revision)
        if session is not None and session.id:
            self._status[session.id] = session.status

    def _revives(self, session_id: str) -> bool:
        """Activity on an UNKNOWN session may add a STATUS_CHANGED event."""
        return self._status.get(session_id) == session_pb2.SESSION_STATUS_UNKNOWN

    async def current_revision(self) -> int:
        response = await self.sessions.ListSessions(
            session_service_pb2.ListSessionsRequest(page_size=1)
        )
        return int(response.revision)

    async def create(
        self, session_id: str, **fields: Any
    ) -> session_service_pb2.CreateSessionResponse:
        response = await self.sessions.CreateSession(
            session_service_pb2.CreateSessionRequest(
                session=session_pb2.Session(id=session_id, **fields)
            )
        )
        if response.created:
            self.log.expect(
                response.revision,
                response.session.id,
                event_pb2.EVENT_TYPE_SESSION_CREATED,
                response.session,
            )
        self._seen(response.revision, response.session)
        return response

    async def update(
        self, session_id: str, paths: Sequence[str], **fields: Any
    ) -> session_service_pb2.UpdateSessionResponse:
        response = await self.sessions.UpdateSession(
            session_service_pb2.UpdateSessionRequest(
                session=session_pb2.Session(id=session_id, **fields),
                update_mask=field_mask_pb2.FieldMask(paths=list(paths)),
            )
        )
        if response.revision:
            self.log.expect(
                response.revision,
                session_id,
                event_pb2.EVENT_TYPE_SESSION_UPDATED,
                response.session,
            )
        self._seen(response.revision, response.session)
        return response

    async def end(
        self, session_id: str, status: int = session_pb2.SESSION_STATUS_COMPLETED, reason: str = ""
    ) -> session_service_pb2.EndSessionResponse:
        response = await self.sessions.EndSession(
            session_service_pb2.EndSessionRequest(
                session_id=session_id, status=status, reason=reason
            )
        )
        if response.revision:
            self.log.expect(
                response.revision, session_id, event_pb2.EVENT_TYPE_SESSION_ENDED, response.session
            )
        self._seen(response.revision, response.session)
        return response

    async def delete(self, session_id: str) -> session_service_pb2.DeleteSessionResponse:
        response = await self.sessions.DeleteSession(
            session_service_pb2.DeleteSessionRequest(session_id=session_id)
        )
        self.log.expect(response.revision, session_id, event_pb2.EVENT_TYPE_SESSION_DELETED)
        self._seen(response.revision)
        self._status.pop(session_id, None)
        return response

    async def set_runtime_state(
        self, session_id: str, state: int, turn_id: str = "", runtime_instance: str = ""
    ) -> session_service_pb2.SetRuntimeStateResponse:
        revives = self._revives(session_id) and state == session_pb2.RUNTIME_STATE_RUNNING
        response = await self.sessions.SetRuntimeState(
            session_service_pb2.SetRuntimeStateRequest(
                session_id=session_id,
                state=state,
                turn_id=turn_id,
                runtime_instance=runtime_instance,
            )
        )
        if response.revision:
            self.log.expect(
                response.revision,
                session_id,
                event_pb2.EVENT_TYPE_RUNTIME_STATE_CHANGED,
                response.session,
                exact=not revives,
            )
        self._seen(response.revision, response.session)
        return response

    async def append(
        self, session_id: str, *messages: message_pb2.Message | str
    ) -> message_service_pb2.AppendMessagesResponse:
        revives = self._revives(session_id)
        response = await self.messages.AppendMessages(
            message_service_pb2.AppendMessagesRequest(
                session_id=session_id,
                messages=[user_message(m) if isinstance(m, str) else m for m in messages],
            )
        )
        if response.revision:
            self.log.expect(
                response.revision,
                session_id,
                event_pb2.EVENT_TYPE_MESSAGES_APPENDED,
                response.session,
                exact=not revives,
            )
        self._seen(response.revision, response.session)
        return response

    async def pop(self, session_id: str) -> message_service_pb2.PopMessageResponse:
        response = await self.messages.PopMessage(
            message_service_pb2.PopMessageRequest(session_id=session_id)
        )
        self.log.expect(
            response.revision,
            session_id,
            event_pb2.EVENT_TYPE_MESSAGE_POPPED,
            response.session,
            exact=not self._revives(session_id),
        )
        self._seen(response.revision, response.session)
        return response

    async def update_last(
        self,
        session_id: str,
        content: str,
        status: int = message_pb2.MESSAGE_STATUS_COMPLETE,
    ) -> message_service_pb2.UpdateLastMessageResponse:
        response = await self.messages.UpdateLastMessage(
            message_service_pb2.UpdateLastMessageRequest(
                session_id=session_id,
                message=message_pb2.Message(content=content, status=status),
                update_mask=field_mask_pb2.FieldMask(paths=["content", "status"]),
            )
        )
        if response.revision:
            self.log.expect(
                response.revision,
                session_id,
                event_pb2.EVENT_TYPE_MESSAGE_UPDATED,
                response.session,
                exact=not self._revives(session_id),
            )
        self._seen(response.revision, response.session)
        return response

    async def clear(self, session_id: str) -> message_service_pb2.ClearMessagesResponse:
        response = await self.messages.ClearMessages(
            message_service_pb2.ClearMessagesRequest(session_id=session_id)
        )
        if response.revision:
            self.log.expect(
                response.revision,
                session_id,
                event_pb2.EVENT_TYPE_MESSAGES_CLEARED,
                response.session,
                exact=not self._revives(session_id),
            )
        self._seen(response.revision, response.session)
        return response

    async def replace(
        self, session_id: str, after_seq: int, *contents: str, expected_last_seq: int
    ) -> message_service_pb2.ReplaceMessagesResponse:
        revives = self._revives(session_id)
        response = await self.messages.ReplaceMessages(
            message_service_pb2.ReplaceMessagesRequest(
                session_id=session_id, after_seq=after_seq, expected_last_seq=expected_last_seq,
                messages=[message_pb2.Message(role=message_pb2.ROLE_ASSISTANT, content=c)
                          for c in contents],
            )
        )
        if response.revision:
            self.log.expect(
                response.revision,
                session_id,
                event_pb2.EVENT_TYPE_MESSAGES_REPLACED,
                response.session,
                exact=not revives,
            )
        self._seen(response.revision, response.session)
        return response

    async def delete_up_to(
        self, session_id: str, up_to_seq: int
    ) -> message_service_pb2.DeleteMessagesResponse:
        revives = self._revives(session_id)
        response = await self.messages.DeleteMessages(
            message_service_pb2.DeleteMessagesRequest(session_id=session_id, up_to_seq=up_to_seq)
        )
        if response.revision:
            self.log.expect(
                response.revision,
                session_id,
                event_pb2.EVENT_TYPE_MESSAGES_DELETED,
                response.session,
                exact=not revives,
            )
        self._seen(response.revision, response.session)
        return response

    async def record_usage(
        self,
        session_id: str,
        model: str = "m1",
        prompt_tokens: int = 10,
        completion_tokens: int = 5,
        cost_micros: int = 100,
        request_id: str = "",
    ) -> stats_service_pb2.RecordUsageResponse:
        response = await self.stats.RecordUsage(
            stats_service_pb2.RecordUsageRequest(
                session_id=session_id,
                model=model,
                request_id=request_id,
                usage=session_pb2.Usage(
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    cost_micros=cost_micros,
                ),
            )
        )
        if not response.duplicate:
            # RecordUsage answers with usage only: no snapshot for filters.
            self.log.expect(
                response.revision,
                session_id,
                event_pb2.EVENT_TYPE_USAGE_RECORDED,
                exact=not self._revives(session_id),
            )
        self._seen(response.revision)
        return response

    async def reconcile(
        self, runtime_instance: str, keep: Sequence[str] = (), reason: str = ""
    ) -> session_service_pb2.ReconcileSessionsResponse:
        response = await self.sessions.ReconcileSessions(
            session_service_pb2.ReconcileSessionsRequest(
                runtime_instance=runtime_instance, keep_session_ids=list(keep), reason=reason
            )
        )
        for session_id in response.marked_session_ids:
            self.log.expect(response.revision, session_id, event_pb2.EVENT_TYPE_STATUS_CHANGED)
            self._status[session_id] = session_pb2.SESSION_STATUS_UNKNOWN
        self._seen(response.revision)
        return response

    async def purge(
        self, expected_ids: Sequence[str], **request_fields: Any
    ) -> session_service_pb2.PurgeSessionsResponse:
        """PurgeSessions, which must remove exactly expected_ids (its response
        names no ids)."""
        response = await self.sessions.PurgeSessions(
            session_service_pb2.PurgeSessionsRequest(**request_fields)
        )
        assert response.purged_count == len(expected_ids), (
            f"PurgeSessions removed {response.purged_count}, the test expected "
            f"{len(expected_ids)}: {list(expected_ids)}"
        )
        for session_id in expected_ids:
            self.log.expect(response.revision, session_id, event_pb2.EVENT_TYPE_SESSION_PURGED)
            self._status.pop(session_id, None)
        self._seen(response.revision)
        return response

    async def touch(
        self, session_id: str, **fields: Any
    ) -> session_service_pb2.TouchSessionResponse:
        revives = self._revives(session_id)
        response = await self.sessions.TouchSession(
            session_service_pb2.TouchSessionRequest(
                session=session_pb2.Session(id=session_id, **fields)
            )
        )
        if response.created:
            self.log.expect(
                response.revision,
                session_id,
                event_pb2.EVENT_TYPE_SESSION_CREATED,
                response.session,
            )
        elif revives:
            # An UNKNOWN session touched becomes ACTIVE: STATUS_CHANGED, maybe
            # with SESSION_UPDATED; require one of them by session only.
            self.log.expect(
                response.revision,
                session_id,
                event_pb2.EVENT_TYPE_STATUS_CHANGED,
                response.session,
                exact=False,
            )
        elif response.revision:
            self.log.expect(
                response.revision,
                session_id,
                event_pb2.EVENT_TYPE_SESSION_UPDATED,
                response.session,
            )
        self._seen(response.revision, response.session)
        return response

    async def fork(
        self, source_id: str, new_id: str, up_to_seq: int = 0, display_name: str = ""
    ) -> session_service_pb2.ForkSessionResponse:
        response = await self.sessions.ForkSession(
            session_service_pb2.ForkSessionRequest(
                source_session_id=source_id,
                new_session_id=new_id,
                up_to_seq=up_to_seq,
                display_name=display_name,
            )
        )
        if response.created:
            self.log.expect(
                response.revision, new_id, event_pb2.EVENT_TYPE_SESSION_CREATED, response.session
            )
        self._seen(response.revision, response.session)
        return response


# --------------------------------------------------------------------------
# Small assertions shared by the watch tests.


async def watch_error(
    stub: Any, **request_fields: Any
) -> tuple[grpc.aio.AioRpcError, list[session_service_pb2.WatchSessionsResponse]]:
    """Open a watch expected to fail; the error and whatever came before it."""
    call = stub.WatchSessions(session_service_pb2.WatchSessionsRequest(**request_fields))
    responses: list[session_service_pb2.WatchSessionsResponse] = []
    try:
        async with asyncio.timeout(ERROR_TIMEOUT):
            async for response in call:
                responses.append(response)
                if response.type != CREATED:
                    break  # serving the watch: it will not fail
    except grpc.aio.AioRpcError as error:
        return error, responses
    except TimeoutError:
        pass
    call.cancel()
    raise AssertionError(
        f"watch {request_fields} was served instead of failing; got "
        f"{[describe_response(r) for r in responses]}"
    )


def session_diff(got: session_pb2.Session, want: session_pb2.Session) -> list[str]:
    """The top-level fields in which two sessions differ, with both values."""
    diffs = []
    for field in session_pb2.Session.DESCRIPTOR.fields:
        a, b = getattr(got, field.name), getattr(want, field.name)
        if a != b:
            diffs.append(f"{field.name}: got {a!r}, want {b!r}".replace("\n", " "))
    return diffs


def assert_same_events(
    got: Sequence[event_pb2.SessionEvent], want: Sequence[event_pb2.SessionEvent], what: str
) -> None:
    """Event lists equal field for field (snapshots and messages included)."""
    got_keys = [describe_key(event_key(e)) for e in got]
    want_keys = [describe_key(event_key(e)) for e in want]
    assert got_keys == want_keys, f"{what}: events differ\n got:  {got_keys}\n want: {want_keys}"
    for g, w in zip(got, want, strict=True):
        if g != w:
            diffs = session_diff(g.session, w.session) if g.session != w.session else []
            fields = [
                f.name
                for f in event_pb2.SessionEvent.DESCRIPTOR.fields
                if getattr(g, f.name) != getattr(w, f.name)
            ]
            raise AssertionError(
                f"{what}: {describe_key(event_key(g))} differs in {fields}; session: {diffs}"
            )
