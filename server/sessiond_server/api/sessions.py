"""SessionService: lifecycle, runtime state, retention and the watch stream."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from sessiond.v1 import event_pb2, session_pb2, session_service_pb2, session_service_pb2_grpc

from ..auth import peer_host
from ..store.records import TERMINAL_STATUSES
from ..store.state import MAX_STATE_BYTES, delta_problems, storable_state
from ..watch import HubClosed, LogReader
from .context import ApiContext
from .errors import RpcError, streaming, unary
from .page_tokens import request_digest
from .validation import Checker

ss = session_service_pb2
S = session_pb2
E = event_pb2
Ctx = grpc.aio.ServicerContext[Any, Any]

UPDATE_PATHS = frozenset({"kind", "channel", "room_id", "sender_id", "agent", "model",
                          "display_name", "goal", "owner_id", "dataset_id", "labels",
                          "runtime_instance", "budget_micros", "state_json"})
PURGE_LIMIT = 10_000
#: Sessions one ReconcileSessions call marks at most (one revision, one response).
RECONCILE_LIMIT = 1_000


def check_session_fields(c: Checker, prefix: str, s: S.Session) -> None:
    c.enum(f"{prefix}.kind", s.kind, S.SessionKind)
    c.channel(f"{prefix}.channel", s.channel)
    for name in ("room_id", "sender_id", "agent", "model", "owner_id", "dataset_id",
                 "runtime_instance"):
        c.identifier(f"{prefix}.{name}", getattr(s, name), required=False)
    c.text(f"{prefix}.display_name", s.display_name, 1024)
    c.text(f"{prefix}.goal", s.goal)
    c.string_map(f"{prefix}.labels", s.labels)
    c.non_negative(f"{prefix}.budget_micros", s.budget_micros)
    s.state_json = check_state(c, f"{prefix}.state_json", s.state_json)


def check_state(c: Checker, field: str, text: str) -> str:
    """A given state's stored (canonical) form; "" (and a violation) when it is not valid."""
    if not text:
        return ""
    try:
        return storable_state(text)
    except ValueError as error:
        c.fail(field, f"must be a JSON object of at most {MAX_STATE_BYTES} bytes: {error}")
        return ""


def check_delta(c: Checker, field: str, delta: S.StateDelta) -> None:
    for problem in delta_problems(delta):
        c.fail(field, problem)


#: The most shared state deltas one write carries (CreateSession, AppendMessages).
MAX_SHARED_STATE_DELTAS = 16


def check_shared_deltas(c: Checker, deltas: Sequence[S.SharedStateDelta]) -> None:
    """The shared_state_deltas of a write: how many, and each one's names and delta."""
    if len(deltas) > MAX_SHARED_STATE_DELTAS:
        c.fail("shared_state_deltas", f"holds more than {MAX_SHARED_STATE_DELTAS}")
        return
    for i, shared in enumerate(deltas):
        c.identifier(f"shared_state_deltas[{i}].app", shared.app)
        c.identifier(f"shared_state_deltas[{i}].user_id", shared.user_id, required=False)
        check_delta(c, f"shared_state_deltas[{i}].delta", shared.delta)


def check_filter(c: Checker, prefix: str, f: S.SessionFilter) -> None:
    c.values(f"{prefix}.session_ids", f.session_ids)
    c.enums(f"{prefix}.statuses", f.statuses, S.SessionStatus)
    c.enums(f"{prefix}.kinds", f.kinds, S.SessionKind)
    c.channels(f"{prefix}.channels", f.channels)
    for name in ("agents", "models", "owner_ids", "dataset_ids", "runtime_instances"):
        c.values(f"{prefix}.{name}", getattr(f, name))
    c.count(f"{prefix}.labels", f.labels)
    c.non_negative(f"{prefix}.running_longer_than_seconds", f.running_longer_than_seconds)
    if f.running_longer_than_seconds > 100 * 366 * 86400:
        # The store subtracts it from now in microseconds; beyond a century it overflows.
        c.fail(f"{prefix}.running_longer_than_seconds", "must be at most 100 years")
    c.query(f"{prefix}.text_query", f.text_query, required=False)
    c.identifier(f"{prefix}.parent_id", f.parent_id, required=False)


def check_watch_filter(c: Checker, prefix: str, f: ss.WatchFilter) -> None:
    c.values(f"{prefix}.session_ids", f.session_ids)
    c.values(f"{prefix}.owner_ids", f.owner_ids)
    c.values(f"{prefix}.agents", f.agents)
    c.channels(f"{prefix}.channels", f.channels)
    c.enums(f"{prefix}.statuses", f.statuses, S.SessionStatus)
    c.enums(f"{prefix}.event_types", f.event_types, E.EventType)
    c.string_map(f"{prefix}.labels", f.labels)


class WatchSelector:
    """A WatchFilter compiled once per call: sets, so each event costs lookups, not scans."""

    def __init__(self, f: ss.WatchFilter, *, initial: bool = False) -> None:
        # Event types select changes; the initial state is sent whatever they say.
        self.event_types = frozenset(() if initial else f.event_types)
        self.session_ids = frozenset(f.session_ids)
        self.owner_ids = frozenset(f.owner_ids)
        self.agents = frozenset(f.agents)
        self.channels = frozenset(ch[:-1] if ch.endswith(".") else ch
                                  for ch in f.channels)
        self.channel_types = tuple(ch for ch in f.channels if ch.endswith("."))
        self.statuses = frozenset(f.statuses)
        self.labels = tuple(f.labels.items())

    def matches(self, event: E.SessionEvent) -> bool:
        if self.event_types and event.type not in self.event_types:
            return False
        if self.session_ids and event.session_id not in self.session_ids:
            return False
        if not event.HasField("session"):
            # Deletions carry only the id, already matched against session_ids above.
            return True
        s = event.session
        if self.owner_ids and s.owner_id not in self.owner_ids:
            return False
        if self.agents and s.agent not in self.agents:
            return False
        if self.channels and s.channel not in self.channels and not (
                self.channel_types and s.channel.startswith(self.channel_types)):
            return False
        if self.statuses:
            stored = (S.SESSION_STATUS_ACTIVE if s.status == S.SESSION_STATUS_ABANDONED
                      else s.status)
            if stored not in self.statuses:
                return False
        return all(s.labels.get(k) == v for k, v in self.labels)


class SessionService(session_service_pb2_grpc.SessionServiceServicer):
    def __init__(self, api: ApiContext) -> None:
        self.api = api

    def _checker(self) -> Checker:
        return Checker(self.api.config.limits)

    @unary
    async def CreateSession(self, request: ss.CreateSessionRequest, context: Ctx
                            ) -> ss.CreateSessionResponse:
        c = self._checker()
        c.identifier("session.id", request.session.id, required=False, chosen=True)
        check_session_fields(c, "session", request.session)
        check_shared_deltas(c, request.shared_state_deltas)
        c.done()
        session, created, revision = await self.api.store.create_session(
            self.api.scope(context), request.session, request.shared_state_deltas)
        return ss.CreateSessionResponse(session=session, created=created, revision=revision)

    @unary
    async def GetSession(self, request: ss.GetSessionRequest, context: Ctx
                         ) -> ss.GetSessionResponse:
        c = self._checker()
        c.identifier("session_id", request.session_id)
        c.done()
        session, revision = await self.api.store.get_session(self.api.scope(context),
                                                             request.session_id)
        return ss.GetSessionResponse(session=session, revision=revision)

    @unary
    async def UpdateSession(self, request: ss.UpdateSessionRequest, context: Ctx
                            ) -> ss.UpdateSessionResponse:
        c = self._checker()
        c.identifier("session.id", request.session.id)
        check_session_fields(c, "session", request.session)
        paths = list(request.update_mask.paths)
        if not paths:
            c.fail("update_mask", "is required and must name at least one field")
        c.mask_paths("update_mask", paths, UPDATE_PATHS)
        c.etag("etag", request.etag)
        c.done()
        session, revision = await self.api.store.update_session(
            self.api.scope(context), request.session, paths, request.etag)
        return ss.UpdateSessionResponse(session=session, revision=revision)

    @unary
    async def DeleteSession(self, request: ss.DeleteSessionRequest, context: Ctx
                            ) -> ss.DeleteSessionResponse:
        c = self._checker()
        c.identifier("session_id", request.session_id)
        c.etag("etag", request.etag)
        c.done()
        removed, revision = await self.api.store.delete_session(
            self.api.scope(context), request.session_id, request.etag)
        return ss.DeleteSessionResponse(revision=revision, deleted_message_count=removed)

    @unary
    async def ListSessions(self, request: ss.ListSessionsRequest, context: Ctx
                           ) -> ss.ListSessionsResponse:
        lim = self.api.config.limits
        c = self._checker()
        check_filter(c, "filter", request.filter)
        c.enum("order_by", request.order_by, ss.SessionOrderField)
        size = c.page_size("page_size", request.page_size, lim.default_page_size,
                           lim.max_page_size)
        c.done()
        scope = self.api.scope(context)
        digest = request_digest(scope, request.filter, request.order_by, request.ascending)
        cursor = None
        # total_size is counted once per listing (the proto's rule): a token carries the
        # count of the page that issued it, or None when that page skipped it (and in
        # tokens from before the count was carried, which held the cursor alone).
        carried: int | None = None
        if request.page_token:
            value, key, *rest = self.api.tokens.decode("page_token", request.page_token,
                                                       "sessions", digest)
            cursor = (int(value), str(key))
            carried = int(rest[0]) if rest and rest[0] is not None else None
        count = not request.skip_total_size and carried is None
        page = await self.api.store.list_sessions(scope, request.filter,
                                                  request.order_by, request.ascending, size,
                                                  cursor, self.api.config.limits.max_page_bytes,
                                                  count_total=count)
        total = None if request.skip_total_size else (page.total_size if count else carried)
        token = (self.api.tokens.encode("sessions", digest, [*page.next_cursor, total])
                 if page.next_cursor else "")
        return ss.ListSessionsResponse(sessions=page.sessions, next_page_token=token,
                                       total_size=total or 0, revision=page.revision)

    @unary
    async def TouchSession(self, request: ss.TouchSessionRequest, context: Ctx
                           ) -> ss.TouchSessionResponse:
        c = self._checker()
        c.identifier("session.id", request.session.id, chosen=True)
        check_session_fields(c, "session", request.session)
        c.done()
        session, created, revision = await self.api.store.touch_session(
            self.api.scope(context), request.session)
        return ss.TouchSessionResponse(session=session, created=created, revision=revision)

    @unary
    async def EndSession(self, request: ss.EndSessionRequest, context: Ctx
                         ) -> ss.EndSessionResponse:
        c = self._checker()
        c.identifier("session_id", request.session_id)
        c.enum("status", request.status, S.SessionStatus, TERMINAL_STATUSES, required=True)
        c.text("reason", request.reason, 4096)
        c.done()
        ended = request.ended_at.ToMicroseconds() if request.HasField("ended_at") else 0
        session, revision = await self.api.store.end_session(
            self.api.scope(context), request.session_id, request.status, request.reason, ended)
        return ss.EndSessionResponse(session=session, revision=revision)

    @unary
    async def SetRuntimeState(self, request: ss.SetRuntimeStateRequest, context: Ctx
                              ) -> ss.SetRuntimeStateResponse:
        c = self._checker()
        c.identifier("session_id", request.session_id)
        c.enum("state", request.state, S.RuntimeState, required=True)
        c.identifier("turn_id", request.turn_id, required=False)
        c.identifier("runtime_instance", request.runtime_instance, required=False)
        c.done()
        started = (request.turn_started_at.ToMicroseconds()
                   if request.HasField("turn_started_at") else 0)
        session, revision = await self.api.store.set_runtime_state(
            self.api.scope(context), request.session_id, request.state, request.turn_id,
            started, request.runtime_instance)
        return ss.SetRuntimeStateResponse(session=session, revision=revision)

    @unary
    async def ForkSession(self, request: ss.ForkSessionRequest, context: Ctx
                          ) -> ss.ForkSessionResponse:
        c = self._checker()
        c.identifier("source_session_id", request.source_session_id)
        c.identifier("new_session_id", request.new_session_id, required=False, chosen=True)
        c.non_negative("up_to_seq", request.up_to_seq)
        c.text("display_name", request.display_name, 1024)
        c.done()
        session, created, revision = await self.api.store.fork_session(
            self.api.scope(context), request.source_session_id, request.up_to_seq,
            request.new_session_id, request.display_name)
        return ss.ForkSessionResponse(session=session, created=created, revision=revision)

    @unary
    async def ReconcileSessions(self, request: ss.ReconcileSessionsRequest, context: Ctx
                                ) -> ss.ReconcileSessionsResponse:
        c = self._checker()
        c.identifier("runtime_instance", request.runtime_instance)
        if len(request.keep_session_ids) > 10_000:
            c.fail("keep_session_ids", "has more than 10000 ids")
        c.text("reason", request.reason, 4096)
        c.done()
        marked, revision, more = await self.api.store.reconcile_sessions(
            self.api.scope(context), request.runtime_instance, request.keep_session_ids,
            request.reason, RECONCILE_LIMIT)
        return ss.ReconcileSessionsResponse(marked_session_ids=marked, revision=revision,
                                            has_more=more)

    @unary
    async def PurgeSessions(self, request: ss.PurgeSessionsRequest, context: Ctx
                            ) -> ss.PurgeSessionsResponse:
        c = self._checker()
        if not request.HasField("last_activity_before") and request.keep_newest <= 0:
            c.fail("last_activity_before", "set it or keep_newest")
        c.non_negative("keep_newest", request.keep_newest)
        c.enums("statuses", request.statuses, S.SessionStatus)
        c.done()
        before = (request.last_activity_before.ToMicroseconds()
                  if request.HasField("last_activity_before") else 0)
        count, more, revision = await self.api.store.purge_sessions(
            self.api.scope(context), before, request.keep_newest, list(request.statuses),
            request.dry_run, PURGE_LIMIT)
        return ss.PurgeSessionsResponse(purged_count=count, has_more=more, revision=revision)

    @streaming
    async def WatchSessions(self, request: ss.WatchSessionsRequest, context: Ctx
                            ) -> AsyncIterator[ss.WatchSessionsResponse]:
        lim = self.api.config.limits
        c = self._checker()
        c.non_negative("start_revision", request.start_revision)
        check_watch_filter(c, "filter", request.filter)
        interval = request.progress_interval_ms
        if interval and not 50 <= interval <= 3_600_000:
            c.fail("progress_interval_ms", "must be 0 or between 50 and 3600000")
        if request.include_initial and request.start_revision:
            c.fail("start_revision", "must be 0 with include_initial")
        c.done()
        scope = self.api.scope(context)
        # The watch quota is per principal; without authentication every caller is the
        # same principal, so the quota is per peer address instead (one client cannot
        # take every slot).
        caller = (scope.tenant + "/" + scope.user_id if self.api.authenticated
                  else "peer:" + peer_host(context))
        api = self.api
        if api.hub.watcher_count >= lim.max_watchers or \
                api.watchers_by_caller.get(caller, 0) >= lim.max_watchers_per_caller:
            raise RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_WATCHES",
                           "too many concurrent watches; close one and retry")
        api.hub.watcher_count += 1
        api.watchers_by_caller[caller] = api.watchers_by_caller.get(caller, 0) + 1
        try:
            async for response in self._watch(request, scope, interval / 1000 or None):
                yield response
        finally:
            api.hub.watcher_count -= 1
            left = api.watchers_by_caller[caller] - 1
            if left:
                api.watchers_by_caller[caller] = left
            else:
                del api.watchers_by_caller[caller]

    async def _watch(self, request: ss.WatchSessionsRequest, scope: Any,
                     progress_every: float | None) -> AsyncIterator[ss.WatchSessionsResponse]:
        """The stream: each step is read only after the client took the previous one.

        gRPC pulls this generator as the stream drains, so a client that stops
        reading stops the reads too: the stream holds one step (about
        ``watch_read_ahead_bytes``, even inside a larger revision), the part of
        a revision being gathered and one response.
        """
        store, hub, config = self.api.store, self.api.hub, self.api.config
        bound = config.watch_response_bytes
        now = config.clock
        current = store.revision
        yield _response(ss.WATCH_RESPONSE_TYPE_CREATED, current, now(),
                        compacted_revision=store.compacted_revision)
        if request.include_initial:
            initial = WatchSelector(request.filter, initial=True)
            packer = Packer(bound)
            read_at = current
            # One page of sessions in memory at a time, all from one snapshot.
            async with contextlib.aclosing(
                    store.initial_state(scope, list(request.filter.session_ids))) as pages:
                async for sessions, read_at in pages:
                    for session in sessions:
                        event = E.SessionEvent(type=E.EVENT_TYPE_INITIAL, revision=read_at,
                                               session_id=session.id, session=session)
                        if initial.matches(event):
                            for part in packer.add(read_at, event):
                                yield _response(ss.WATCH_RESPONSE_TYPE_INITIAL, read_at,
                                                now(), part.events)
            for part in packer.flush():
                yield _response(ss.WATCH_RESPONSE_TYPE_INITIAL, read_at, now(), part.events)
            yield _response(ss.WATCH_RESPONSE_TYPE_INITIAL_COMPLETE, read_at, now())
            next_revision = read_at + 1
        elif request.start_revision:
            next_revision = request.start_revision
        else:
            next_revision = current + 1
        selector = WatchSelector(request.filter)
        log = LogReader()
        packer = Packer(bound)
        next_index = 0  # inside next_revision, when a step stopped in it
        last_sent = time.monotonic()
        try:
            while True:
                step = await hub.changes_from(next_revision, config.watch_read_ahead_bytes, log,
                                              index=next_index)
                if step.changes:
                    next_revision, next_index = step.next_revision, step.next_index
                    sent = False
                    for change in step.changes:
                        if scope.can_see(change.tenant, change.owner_id, change.dataset_id) \
                                and selector.matches(change.event):
                            for part in packer.add(change.revision, change.event):
                                yield _events_response(part, now())
                                sent = True
                    for part in packer.flush(revision_ended=step.ends_revision):
                        yield _events_response(part, now())
                        sent = True
                    if sent:
                        last_sent = time.monotonic()
                    if sent or not step.ends_revision:
                        continue
                else:
                    wait = None
                    if progress_every:
                        wait = max(0.0, last_sent + progress_every - time.monotonic())
                    if await hub.wait_for(next_revision, wait):
                        continue
                if progress_every and time.monotonic() - last_sent >= progress_every:
                    yield _response(ss.WATCH_RESPONSE_TYPE_PROGRESS, next_revision - 1, now())
                    last_sent = time.monotonic()
                else:
                    await asyncio.sleep(0)
        except HubClosed:
            yield _response(ss.WATCH_RESPONSE_TYPE_PROGRESS, next_revision - 1, now())
            raise RpcError(grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN",
                           "the server is shutting down; resume from the last revision + 1"
                           ) from None

    @unary
    async def GetSharedState(self, request: ss.GetSharedStateRequest, context: Ctx
                             ) -> ss.GetSharedStateResponse:
        c = self._checker()
        c.identifier("app", request.app)
        c.identifier("user_id", request.user_id, required=False)
        c.done()
        state = await self.api.store.get_shared_state(self.api.scope(context), request.app,
                                                      request.user_id)
        return ss.GetSharedStateResponse(state=state)

    @unary
    async def UpdateSharedState(self, request: ss.UpdateSharedStateRequest, context: Ctx
                                ) -> ss.UpdateSharedStateResponse:
        c = self._checker()
        c.identifier("app", request.app)
        c.identifier("user_id", request.user_id, required=False)
        if not request.HasField("delta"):
            c.fail("delta", "is required")
        check_delta(c, "delta", request.delta)
        c.etag("etag", request.etag)
        c.done()
        state = await self.api.store.update_shared_state(
            self.api.scope(context), request.app, request.user_id, request.delta, request.etag)
        return ss.UpdateSharedStateResponse(state=state)


def _response(kind: ss.WatchResponseType.ValueType, revision: int, now_micros: int,
              events: Sequence[E.SessionEvent] = (), compacted_revision: int = 0
              ) -> ss.WatchSessionsResponse:
    response = ss.WatchSessionsResponse(type=kind, revision=revision, events=events,
                                        compacted_revision=compacted_revision)
    response.time.FromMicroseconds(now_micros)
    return response


@dataclasses.dataclass(slots=True)
class Part:
    """The events of one response: whole revisions, or one fragment of a revision."""

    revision: int = 0
    events: list[E.SessionEvent] = dataclasses.field(default_factory=list)
    size: int = 0
    fragment: bool = False


def response_event_bytes(event: E.SessionEvent) -> int:
    """What an event adds to a response: its bytes, tag and length prefix (a varint)."""
    size = event.ByteSize()
    return size + 1 + max(1, (size.bit_length() + 6) // 7)


class Packer:
    """Packs (revision, event) pairs into responses of at most ``bound`` bytes of events.

    A response holds whole revisions while they fit. A revision that does not
    fit in what is left starts a new response; one that does not fit in an
    empty response is split into fragments: every part but its last is
    marked ``fragment``, and no other revision shares any of its parts. One
    event larger than the bound (possible only when the field limits are
    raised) goes alone. Events are added in revision order, across steps: a
    revision a step ended inside is kept (at most ``bound`` bytes of it)
    until the next step brings the rest.
    """

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self.done = Part()     # whole revisions, ready to send together
        self.current = Part()  # the revision being gathered; fragment: earlier parts sent

    def add(self, revision: int, event: E.SessionEvent) -> list[Part]:
        """Add an event; the parts that are now ready to send."""
        ready: list[Part] = []
        if revision != self.current.revision:
            ready += self._close_revision()
            self.current = Part(revision)
        size = response_event_bytes(event)
        current = self.current
        if current.events and current.size + size > self.bound:
            # The revision is too large for one response: send what it has so far.
            if self.done.events:
                ready.append(self.done)
                self.done = Part()
            ready.append(Part(revision, current.events, current.size, fragment=True))
            self.current = current = Part(revision, fragment=True)
        current.events.append(event)
        current.size += size
        return ready

    def flush(self, *, revision_ended: bool = True) -> list[Part]:
        """The parts to send at the end of a step (all of them once its revision ended)."""
        ready = self._close_revision() if revision_ended else []
        if self.done.events:
            ready.append(self.done)
            self.done = Part()
        return ready

    def _close_revision(self) -> list[Part]:
        """Move the finished revision being gathered after ``done``; the parts ready now."""
        current, self.current = self.current, Part()
        if not current.events:
            return []
        ready: list[Part] = []
        if current.fragment:
            # The last part of a split revision carries that revision alone, unmarked.
            if self.done.events:
                ready.append(self.done)
                self.done = Part()
            ready.append(Part(current.revision, current.events, current.size))
            return ready
        if self.done.events and self.done.size + current.size > self.bound:
            ready.append(self.done)
            self.done = Part()
        self.done.events += current.events
        self.done.size += current.size
        self.done.revision = current.revision
        return ready


def _events_response(part: Part, now_micros: int) -> ss.WatchSessionsResponse:
    response = _response(ss.WATCH_RESPONSE_TYPE_EVENTS, part.revision, now_micros, part.events)
    response.fragment = part.fragment
    return response
