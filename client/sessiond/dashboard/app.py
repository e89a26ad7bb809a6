"""The dashboard's routes: the page, its JSON under ``/api/``, and the event stream.

Everything the page shows comes through the public gRPC API with
``sessiond.aio.AsyncClient``; the dashboard keeps no state of its own beyond
open connections, so it can be restarted at will and several can run side
by side.

Credentials belong to the viewer: the bearer token of an ``Authorization:
Bearer`` header, or else of a ``token`` cookie, is the token the dashboard
sends to sessiond for that request, so a viewer sees exactly what their
token allows. Only when the viewer sends none, and only while the dashboard
listens on loopback, the token the dashboard was started with (``--token``)
stands in. Unary calls share one client per token (``ClientPool``); each
event stream gets a client of its own, closed when the browser leaves.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import importlib.resources
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sessiond.aio import DEFAULT_TARGET, AsyncClient
from sessiond.dashboard.bridge import bridge_watch
from sessiond.dashboard.payloads import (
    JsonObject,
    chat_message_dict,
    dumps,
    error_dict,
    message_dict,
)
from sessiond.dashboard.web import (
    EventStream,
    EventStreamWriter,
    HttpServer,
    Request,
    Response,
    text_response,
)
from sessiond.errors import RelistRequired, SessiondError
from sessiond.formatting import ORDER_WORDS, STATUS_WORDS, enum_word
from sessiond.v1 import event_pb2, session_pb2, session_service_pb2
from sessiond.watching import Backoff

log = logging.getLogger("sessiond.dashboard")

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_STUCK_AFTER_SECONDS = 300.0
DEFAULT_PROGRESS_INTERVAL_MS = 15_000
MAX_SESSION_PAGE_SIZE = 500
DEFAULT_SESSION_PAGE_SIZE = 25
MAX_MESSAGE_PAGE_SIZE = 200
DEFAULT_MESSAGE_PAGE_SIZE = 20
MAX_SPEND_BUCKETS = 48
DEFAULT_SPEND_BUCKETS = 24
CLIENT_POOL_SIZE = 16
MAX_TIMELINE_ENTRIES = 1000

HTTP_STATUS_BY_CODE = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "FAILED_PRECONDITION": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# A dashboard should notice a restarted sessiond within seconds, not after
# grpc's default reconnect backoff (up to two minutes).
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
)


@dataclasses.dataclass(frozen=True)
class DashboardConfig:
    """What the dashboard needs to start; every interval is injectable for tests.

    ``target`` is sessiond's address; ``listen`` the dashboard's own
    "host:port" (port 0 picks a free one); ``insecure`` allows a
    non-loopback ``listen`` and any Host header; ``token`` stands in for a
    viewer who sends none, on loopback only; ``timeout`` is the deadline of
    each unary call in seconds; a RUNNING turn older than
    ``stuck_after_seconds`` is shown as stuck; ``progress_interval_ms`` is
    how often an idle event stream gets a bookmark; ``reconnect_max_seconds``
    caps the watch's reconnection backoff.
    """

    target: str = DEFAULT_TARGET
    listen: str = DEFAULT_LISTEN
    insecure: bool = False
    token: str | None = None
    timeout: float = 10.0
    stuck_after_seconds: float = DEFAULT_STUCK_AFTER_SECONDS
    progress_interval_ms: int = DEFAULT_PROGRESS_INTERVAL_MS
    reconnect_max_seconds: float = 2.0


class ApiError(Exception):
    """A request the dashboard itself refuses (bad parameter, missing credentials)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def split_host_port(listen: str) -> tuple[str, int]:
    """("127.0.0.1", 8080) from "127.0.0.1:8080"; IPv6 in brackets: "[::1]:8080"."""
    host, separator, port_text = listen.rpartition(":")
    if not separator or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"--listen takes HOST:PORT, not {listen!r}")
    return host.strip("[]"), int(port_text)


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_host_headers(host: str, port: int) -> set[str]:
    """The Host header values that name a loopback dashboard (DNS rebinding guard)."""
    names = {"127.0.0.1", "localhost", "[::1]"}
    names.add(f"[{host}]" if ":" in host else host)
    allowed = {f"{name}:{port}" for name in names}
    if port == 80:
        allowed |= names
    return allowed


class ClientPool:
    """One AsyncClient per bearer token for unary calls, the least recently used closed first.

    A client pushed out may still have calls in flight, so it is closed only
    after a call's whole deadline has passed.
    """

    def __init__(self, make_client: Callable[[str | None], AsyncClient], size: int,
                 close_delay: float) -> None:
        self._make_client = make_client
        self._size = size
        self._close_delay = close_delay
        self._clients: collections.OrderedDict[str | None, AsyncClient] = (
            collections.OrderedDict()
        )
        self._evicted: dict[AsyncClient, asyncio.Task[None]] = {}

    def get(self, token: str | None) -> AsyncClient:
        client = self._clients.get(token)
        if client is None:
            client = self._clients[token] = self._make_client(token)
            while len(self._clients) > self._size:
                _, evicted = self._clients.popitem(last=False)
                self._evicted[evicted] = asyncio.create_task(self._close_later(evicted))
        else:
            self._clients.move_to_end(token)
        return client

    async def _close_later(self, client: AsyncClient) -> None:
        await asyncio.sleep(self._close_delay)
        del self._evicted[client]
        await client.close()

    async def close(self) -> None:
        for task in self._evicted.values():
            task.cancel()
        clients = [*self._clients.values(), *self._evicted]
        self._clients.clear()
        self._evicted.clear()
        await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)


def timeline_entry(event: event_pb2.SessionEvent, before: session_pb2.Usage) -> JsonObject | None:
    """One event of a session's timeline, or None for an event the timeline leaves out.

    ``before`` is the session's usage before the event, so a usage entry
    carries what this one RecordUsage added.
    """
    session = event.session
    entry: JsonObject = {
        "revision": event.revision,
        "time": event.time.ToJsonString() if event.HasField("time") else None,
    }
    kind = event.type
    if kind == event_pb2.EVENT_TYPE_SESSION_CREATED:
        entry["kind"] = "created"
    elif kind == event_pb2.EVENT_TYPE_RUNTIME_STATE_CHANGED:
        entry.update(kind="runtime", state=enum_word(session_pb2.RuntimeState.DESCRIPTOR,
                                                     session.runtime_state),
                     turn_id=session.current_turn_id,
                     turn_started_at=session.turn_started_at.ToJsonString()
                     if session.HasField("turn_started_at") else None)
    elif kind == event_pb2.EVENT_TYPE_USAGE_RECORDED:
        usage = session.usage
        entry.update(kind="usage",
                     cost_micros=usage.cost_micros - before.cost_micros,
                     total_tokens=usage.total_tokens - before.total_tokens,
                     errors=usage.error_count - before.error_count)
    elif kind == event_pb2.EVENT_TYPE_MESSAGES_APPENDED:
        entry.update(kind="messages", count=session.last_seq - (
            event.messages[0].seq - 1 if event.messages else session.last_seq))
    elif kind in (event_pb2.EVENT_TYPE_SESSION_ENDED, event_pb2.EVENT_TYPE_STATUS_CHANGED):
        entry.update(kind="status", status=enum_word(session_pb2.SessionStatus.DESCRIPTOR,
                                                     session.status),
                     reason=session.end_reason)
    else:
        return None
    return entry


def load_static_files() -> dict[str, tuple[bytes, str]]:
    """The page's files, bundled as package data: name -> (bytes, content type)."""
    folder = importlib.resources.files("sessiond.dashboard").joinpath("static")
    files: dict[str, tuple[bytes, str]] = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in CONTENT_TYPES:
            files[entry.name] = (entry.read_bytes(), CONTENT_TYPES[suffix])
    return files


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(
        status,
        dumps(payload).encode(),
        content_type="application/json; charset=utf-8",
        headers=[("Cache-Control", "no-store")],
    )


def error_response(error: SessiondError | ApiError) -> Response:
    if isinstance(error, ApiError):
        payload: JsonObject = {"error": {"code": error.code, "message": str(error),
                                         "reason": "", "field_violations": []}}
        return json_response(payload, error.status)
    return json_response(error_dict(error), HTTP_STATUS_BY_CODE.get(error.code.name, 502))


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_value(name)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, "INVALID_ARGUMENT", f"{name} must be an integer") from None
    if not low <= value <= high:
        raise ApiError(400, "INVALID_ARGUMENT", f"{name} must be between {low} and {high}")
    return value


def micros_param(request: Request, name: str) -> int | None:
    """An epoch-microseconds query parameter, None when absent."""
    text = request.query_value(name)
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ApiError(400, "INVALID_ARGUMENT", f"{name} must be epoch microseconds") from None


def started_window(request: Request) -> session_pb2.TimeRange | None:
    """filter.started from ``started_after`` / ``started_before`` (epoch microseconds)."""
    after = micros_param(request, "started_after")
    before = micros_param(request, "started_before")
    if after is None and before is None:
        return None
    window = session_pb2.TimeRange()
    if after is not None:
        window.start.FromMicroseconds(after)
    if before is not None:
        window.end.FromMicroseconds(before)
    return window


class Dashboard:
    """The dashboard's HTTP server over one sessiond target."""

    def __init__(self, config: DashboardConfig) -> None:
        self.config = config
        host, port = split_host_port(config.listen)
        if not config.insecure and not is_loopback_host(host):
            raise ValueError(
                f"refusing to listen on {config.listen}: not a loopback address, and the "
                "dashboard shows every session its viewers' tokens allow (use --insecure "
                "to listen there anyway)"
            )
        self._host, self._port = host, port
        self._default_token = config.token if is_loopback_host(host) else None
        self._static = load_static_files()
        self._pool = ClientPool(self._make_client, CLIENT_POOL_SIZE, config.timeout + 1.0)
        self._http = HttpServer(self.handle, allowed_hosts=None)
        self.address = ""

    def _make_client(self, token: str | None) -> AsyncClient:
        return AsyncClient(
            self.config.target,
            token=token,
            timeout=self.config.timeout,
            retry_backoff=Backoff(initial=0.1, maximum=self.config.reconnect_max_seconds),
            options=CHANNEL_OPTIONS,
        )

    @property
    def url(self) -> str:
        return f"http://{self.address}/"

    async def start(self) -> None:
        host, port = await self._http.start(self._host, self._port)
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._http.allow_hosts(None if self.config.insecure else allowed_host_headers(host, port))
        log.info("dashboard on %s for sessiond at %s", self.url, self.config.target)

    async def stop(self) -> None:
        await self._http.stop()
        await self._pool.close()

    # Routing

    async def handle(self, request: Request) -> Response | EventStream:
        segments = request.segments
        started = time.monotonic()
        try:
            if not segments:
                return self._static_file("index.html")
            if segments[0] == "static" and len(segments) == 2:
                return self._static_file(segments[1])
            if segments[0] == "favicon.ico":
                return self._static_file("favicon.svg")
            if segments[0] == "api" and len(segments) >= 2:
                if segments[1:] == ["events"]:
                    return self._event_stream(request)
                route = self._api_route(segments[1:])
                if route is None:
                    raise ApiError(404, "NOT_FOUND", "no such endpoint")
                return json_response(await route(request))
            return text_response(404)
        except (ApiError, SessiondError) as error:
            return error_response(error)
        finally:
            log.debug("%s %s in %.1f ms", request.method, request.path,
                      (time.monotonic() - started) * 1000)

    def _static_file(self, name: str) -> Response:
        found = self._static.get(name)
        if found is None:
            return text_response(404)
        body, content_type = found
        return Response(200, body, content_type=content_type,
                        headers=[("Cache-Control", "no-cache")])

    def _api_route(self, path: list[str]) -> Callable[[Request], Awaitable[JsonObject]] | None:
        if path == ["config"]:
            return self.api_config
        if path == ["stats"]:
            return self.api_stats
        if path == ["cost-by-model"]:
            return self.api_cost_by_model
        if path == ["spend"]:
            return self.api_spend
        if path == ["sessions"]:
            return self.api_sessions
        if len(path) == 2 and path[0] == "sessions":
            session_id = path[1]
            return lambda request: self.api_session(request, session_id)
        if len(path) == 3 and path[0] == "sessions" and path[2] == "messages":
            session_id = path[1]
            return lambda request: self.api_messages(request, session_id)
        if len(path) == 3 and path[0] == "sessions" and path[2] == "timeline":
            session_id = path[1]
            return lambda request: self.api_timeline(request, session_id)
        if path == ["values"]:
            return self.api_values
        return None

    def _token(self, request: Request) -> str | None:
        """The viewer's bearer token: Authorization header, then the ``token`` cookie."""
        authorization = request.headers.get("authorization", "")
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise ApiError(401, "UNAUTHENTICATED", "Authorization must be 'Bearer TOKEN'")
            return token.strip()
        return request.cookie("token") or self._default_token

    def _client(self, request: Request) -> AsyncClient:
        return self._pool.get(self._token(request))

    # JSON endpoints

    async def api_config(self, request: Request) -> JsonObject:
        return {
            "target": self.config.target,
            "stuck_after_seconds": self.config.stuck_after_seconds,
            "progress_interval_ms": self.config.progress_interval_ms,
        }

    def _session_filter(self, request: Request) -> session_pb2.SessionFilter:
        statuses = []
        for word in request.query_values("status"):
            if word not in STATUS_WORDS:
                raise ApiError(400, "INVALID_ARGUMENT",
                               f"status must be one of {', '.join(STATUS_WORDS)}")
            statuses.append(STATUS_WORDS[word])
        labels: dict[str, str] = {}
        for pair in request.query_values("label"):
            key, separator, value = pair.partition("=")
            if not separator or not key.strip():
                raise ApiError(400, "INVALID_ARGUMENT", f"label {pair!r} is not KEY=VALUE")
            labels[key.strip()] = value.strip()
        session_filter = session_pb2.SessionFilter(
            statuses=statuses,
            agents=request.query_values("agent"),
            channels=request.query_values("channel"),
            models=request.query_values("model"),
            owner_ids=request.query_values("owner"),
            session_ids=request.query_values("session_id"),
            labels=labels,
            parent_id=request.query_value("parent_id"),
            text_query=request.query_value("q").strip(),
        )
        if request.query_value("stuck") in ("1", "true"):
            session_filter.running_longer_than_seconds = max(
                1, round(self.config.stuck_after_seconds)
            )
        window = started_window(request)
        if window is not None:
            session_filter.started.CopyFrom(window)
        return session_filter

    async def api_stats(self, request: Request) -> JsonObject:
        answer = await self._client(request).get_stats(filter=self._session_filter(request))
        return message_dict(answer)

    async def api_cost_by_model(self, request: Request) -> JsonObject:
        answer = await self._client(request).cost_by_model(filter=self._session_filter(request))
        return message_dict(answer)

    async def api_spend(self, request: Request) -> JsonObject:
        """Spend, tokens and activity of the sessions started in each of N equal time buckets.

        One GetStats per bucket, run together: the sums stay in the
        database. Without ``start``/``end`` the range spans the first to the
        last session start. Buckets are by session start because that is
        the only time the stats RPCs filter on: the API keeps no record of
        when each usage was recorded that can be summed by time (see
        docs/dashboard.md).
        """
        client = self._client(request)
        buckets = int_param(request, "buckets", DEFAULT_SPEND_BUCKETS, 1, MAX_SPEND_BUCKETS)
        start = micros_param(request, "start")
        end = micros_param(request, "end")
        base_filter = self._session_filter(request)
        base_filter.ClearField("started")
        if start is None or end is None:
            # Only the first and last start times are read: no count (skip_total_size).
            oldest, newest = await asyncio.gather(
                client.list_sessions(
                    filter=base_filter, page_size=1, ascending=True,
                    order_by=session_service_pb2.SESSION_ORDER_FIELD_STARTED_AT,
                    skip_total_size=True,
                ),
                client.list_sessions(
                    filter=base_filter, page_size=1,
                    order_by=session_service_pb2.SESSION_ORDER_FIELD_STARTED_AT,
                    skip_total_size=True,
                ),
            )
            if not oldest.sessions:
                return {"buckets": [], "revision": oldest.revision}
            if start is None:
                start = oldest.sessions[0].started_at.ToMicroseconds()
            if end is None:
                end = newest.sessions[0].started_at.ToMicroseconds() + 1
        if end <= start:
            raise ApiError(400, "INVALID_ARGUMENT", "end must be after start")
        width = max(1, -(-(end - start) // buckets))
        bounds = [(start + i * width, min(end, start + (i + 1) * width)) for i in range(buckets)]
        bounds = [(low, high) for low, high in bounds if low < high]

        async def bucket(low: int, high: int) -> JsonObject:
            bucket_filter = session_pb2.SessionFilter()
            bucket_filter.CopyFrom(base_filter)
            bucket_filter.started.start.FromMicroseconds(low)
            bucket_filter.started.end.FromMicroseconds(high)
            answer = await client.get_stats(filter=bucket_filter)
            stats = answer.stats
            return {
                "start_micros": low,
                "end_micros": high,
                "session_count": stats.session_count,
                "cost_micros": stats.usage.cost_micros,
                "total_tokens": stats.usage.total_tokens,
                "message_count": stats.message_count,
                "failed_count": stats.failed_count,
                "request_count": stats.usage.request_count,
                "error_count": stats.usage.error_count,
                "revision": answer.revision,
            }

        rows = await asyncio.gather(*(bucket(low, high) for low, high in bounds))
        return {"buckets": rows, "revision": min((row["revision"] for row in rows), default=0)}

    async def api_sessions(self, request: Request) -> JsonObject:
        order = request.query_value("order", "last-activity")
        if order not in ORDER_WORDS:
            raise ApiError(400, "INVALID_ARGUMENT",
                           f"order must be one of {', '.join(ORDER_WORDS)}")
        answer = await self._client(request).list_sessions(
            filter=self._session_filter(request),
            order_by=ORDER_WORDS[order],
            ascending=request.query_value("asc") in ("1", "true"),
            page_size=int_param(request, "page_size", DEFAULT_SESSION_PAGE_SIZE, 1,
                                MAX_SESSION_PAGE_SIZE),
            page_token=request.query_value("page_token"),
        )
        return message_dict(answer)

    async def api_session(self, request: Request, session_id: str) -> JsonObject:
        answer = await self._client(request).get_session(session_id=session_id)
        return message_dict(answer)

    async def api_messages(self, request: Request, session_id: str) -> JsonObject:
        """A page of messages, newest first."""
        answer = await self._client(request).list_messages(
            session_id=session_id,
            descending=True,
            page_size=int_param(request, "page_size", DEFAULT_MESSAGE_PAGE_SIZE, 1,
                                MAX_MESSAGE_PAGE_SIZE),
            page_token=request.query_value("page_token"),
        )
        return {
            "messages": [chat_message_dict(message) for message in answer.messages],
            "next_page_token": answer.next_page_token,
            "revision": answer.revision,
        }

    async def api_values(self, request: Request) -> JsonObject:
        """The agents, models, owners and channels that exist, for the filters' suggestions.

        Read from the most recently active sessions (one page of
        ``MAX_SESSION_PAGE_SIZE``) and from CostByModel (every model with
        usage): the API has no "distinct values" call, so a value used only
        by older sessions is not suggested, though it can still be typed.
        """
        client = self._client(request)
        listed, costs = await asyncio.gather(
            client.list_sessions(page_size=MAX_SESSION_PAGE_SIZE, skip_total_size=True),
            client.cost_by_model(),
        )
        values: dict[str, set[str]] = {"agent": set(), "model": set(), "owner": set(),
                                       "channel": set()}
        for session in listed.sessions:
            values["agent"].add(session.agent)
            values["model"].add(session.model)
            values["owner"].add(session.owner_id)
            values["channel"].add(session.channel)
        values["model"].update(model.model for model in costs.models)
        answer: JsonObject = {
            name: sorted(found - {""}, key=lambda value: (value.casefold(), value))
            for name, found in values.items()
        }
        answer["revision"] = min(listed.revision, costs.revision)
        return answer

    async def api_timeline(self, request: Request, session_id: str) -> JsonObject:
        """What happened to one session, from the change log: runtime states and turns,
        usage (as increments), messages appended, its creation and its end.

        The session's events are replayed with a watch from revision 1 up to
        the session's own revision (its last change, which is therefore in the
        log). Where compaction has removed the oldest events the replay starts
        after them and ``complete`` is false. At most ``MAX_TIMELINE_ENTRIES``
        entries are kept, the newest ones.
        """
        client = self._client(request)
        session = (await client.get_session(session_id=session_id)).session
        entries: collections.deque[JsonObject] = collections.deque(maxlen=MAX_TIMELINE_ENTRIES)
        start, complete, seen = 1, True, 0
        while True:
            try:
                seen = await self._replay_session(client, session, start, entries)
                break
            except RelistRequired as error:
                if not complete:  # compacted again while replaying: give up cleanly
                    raise
                start, complete = error.compacted_revision + 1, False
                entries.clear()
            except TimeoutError:  # the session's last change never came (deleted meanwhile)
                complete = False
                break
        return {
            "entries": list(entries),
            "complete": complete,
            "dropped": max(0, seen - len(entries)),
            "revision": session.revision,
        }

    async def _replay_session(
        self,
        client: AsyncClient,
        session: session_pb2.Session,
        start: int,
        entries: collections.deque[JsonObject],
    ) -> int:
        """Replay the session's events from ``start`` to its last change into ``entries``;
        returns how many entries there were (``entries`` keeps the newest)."""
        previous = session_pb2.Usage()
        seen = 0
        stream = client.watch(
            session_service_pb2.WatchFilter(session_ids=[session.id]),
            start_revision=start,
            max_backoff=self.config.reconnect_max_seconds,
        )
        async with asyncio.timeout(self.config.timeout), contextlib.aclosing(stream):
            async for response in stream:
                for event in response.events:
                    entry = timeline_entry(event, previous)
                    if entry is not None:
                        entries.append(entry)
                        seen += 1
                    if event.HasField("session"):
                        previous.CopyFrom(event.session.usage)
                    if event.revision >= session.revision:
                        return seen
        return seen

    # Event stream

    def _event_stream(self, request: Request) -> EventStream:
        """``Last-Event-ID`` (a reconnecting browser) wins over ``?since=`` (a new page)."""
        text = request.headers.get("last-event-id") or request.query_value("since", "0")
        if not text.isdigit():
            raise ApiError(400, "INVALID_ARGUMENT", "the last event id must be a revision")
        last_revision = int(text)
        token = self._token(request)

        async def run(events: EventStreamWriter) -> None:
            async with self._make_client(token) as client:
                await bridge_watch(
                    client,
                    events,
                    last_revision=last_revision,
                    progress_interval_ms=self.config.progress_interval_ms,
                    max_backoff=self.config.reconnect_max_seconds,
                )

        return EventStream(run)
