"""A small HTTP/1.1 server on asyncio streams: GET requests and server-sent events.

The dashboard needs three things from HTTP: answer GET with bytes, keep one
response open as an event stream, and set the same security headers on
everything. That is little enough to write on ``asyncio.start_server`` rather
than to add a web framework to a client package, and small enough to read in
one sitting, which matters for code that faces a browser.

What it accepts, and why it is strict:

* GET and HEAD only: the dashboard only reads. Any other method answers 405,
  so no request can change anything through it (nothing to forge).
* No request bodies: a ``Content-Length`` above 0 or any ``Transfer-Encoding``
  answers 400 and closes, so a body can never be mistaken for the next
  request (no smuggling through a proxy in front).
* Bounded reads: the request head is at most ``MAX_HEAD_BYTES`` and must
  arrive within ``HEAD_TIMEOUT_SECONDS``; a keep-alive connection idle for
  ``IDLE_TIMEOUT_SECONDS`` is closed.
* A ``Host`` check: unless the server was started to accept any host, a
  request whose Host header does not name the listening address answers 421,
  which defeats DNS rebinding (a foreign page whose name resolves to
  127.0.0.1 cannot read the dashboard).

An event stream is an HTTP/1.1 response without a length, ended by closing
the connection; the handler writes to it until it returns or the browser
goes away (read EOF), whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from http import HTTPStatus
from typing import Any

log = logging.getLogger("sessiond.dashboard")

MAX_HEAD_BYTES = 16 * 1024
HEAD_TIMEOUT_SECONDS = 10.0
IDLE_TIMEOUT_SECONDS = 60.0
MAX_HEADERS = 100
EVENT_STREAM_TYPE = "text/event-stream; charset=utf-8"

# default-src 'self' with nothing inline: scripts and styles come from the
# package's own files; SVG charts are drawn through the DOM, which CSP allows.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)

SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)


@dataclasses.dataclass(frozen=True)
class Request:
    """One parsed request head; header names are lower-case."""

    method: str
    target: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]
    http_version: str

    @property
    def segments(self) -> list[str]:
        """The path split on "/", each segment percent-decoded ("/a%2Fb/c" -> ["a/b", "c"])."""
        return [urllib.parse.unquote(part) for part in self.path.split("/") if part]

    def query_value(self, name: str, default: str = "") -> str:
        """The first value of a query parameter, or ``default``."""
        values = self.query.get(name)
        return values[0] if values else default

    def query_values(self, name: str) -> list[str]:
        """Every non-empty value of a repeated query parameter."""
        return [value for value in self.query.get(name, []) if value]

    def cookie(self, name: str) -> str:
        """A cookie's value, or ""."""
        for part in self.headers.get("cookie", "").split(";"):
            key, separator, value = part.strip().partition("=")
            if separator and key == name:
                return urllib.parse.unquote(value)
        return ""


@dataclasses.dataclass
class Response:
    """A complete response; security headers are added when it is sent."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)


class EventStreamWriter:
    """Writes server-sent events to an open response."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    async def send(
        self, data: str, *, event: str | None = None, event_id: str | None = None
    ) -> None:
        """One event; ``data`` must not contain a newline (send JSON)."""
        if "\n" in data or "\r" in data:
            raise ValueError("event data must be one line")
        lines = []
        if event_id is not None:
            lines.append(f"id: {event_id}")
        if event is not None:
            lines.append(f"event: {event}")
        lines.append(f"data: {data}")
        await self._write("\n".join(lines) + "\n\n")

    async def retry(self, milliseconds: int) -> None:
        """Tell the browser how long to wait before it reconnects."""
        await self._write(f"retry: {milliseconds}\n\n")

    async def comment(self, text: str = "") -> None:
        """A comment line: keeps proxies from closing an idle stream."""
        await self._write(f": {text}\n\n")

    async def _write(self, text: str) -> None:
        self._writer.write(text.encode())
        await self._writer.drain()


EventStreamHandler = Callable[[EventStreamWriter], Coroutine[Any, Any, None]]


@dataclasses.dataclass
class EventStream:
    """A response that stays open: ``run`` writes events until it returns."""

    run: EventStreamHandler
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)


Handler = Callable[[Request], Awaitable[Response | EventStream]]


class BadRequest(Exception):
    """The request cannot be parsed or is not one this server accepts."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def text_response(status: int, text: str = "") -> Response:
    return Response(status, (text or HTTPStatus(status).phrase).encode() + b"\n")


def parse_head(head: bytes) -> Request:
    """Parse the request line and headers (``head`` ends with the blank line)."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError as error:  # latin-1 decodes any byte; kept for clarity
        raise BadRequest(400, "undecodable request") from error
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        if len(headers) >= MAX_HEADERS:
            raise BadRequest(431, "too many headers")
        name, separator, value = line.partition(":")
        if not separator or not name or name != name.strip():
            raise BadRequest(400, "malformed header")
        key = name.lower()
        value = value.strip()
        if key in headers and key == "host":
            raise BadRequest(400, "more than one Host header")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    if not target.startswith("/"):
        raise BadRequest(400, "only origin-form request targets are accepted")
    parsed = urllib.parse.urlsplit(target)
    query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True, max_num_fields=200)
    return Request(method, target, parsed.path, query, headers, version)


def head_bytes(status: int, headers: Iterable[tuple[str, str]]) -> bytes:
    phrase = HTTPStatus(status).phrase
    lines = [f"HTTP/1.1 {status} {phrase}"]
    lines.extend(f"{name}: {value}" for name, value in (*SECURITY_HEADERS, *headers))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class HttpServer:
    """Serves ``handler`` on one listening socket.

    ``allowed_hosts`` are the Host header values accepted (lower-case);
    None accepts any (the dashboard's ``--insecure``).
    """

    def __init__(self, handler: Handler, *, allowed_hosts: set[str] | None) -> None:
        self._handler = handler
        self._allowed_hosts = allowed_hosts
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen; returns the bound (host, port), the port resolved when 0 was asked."""
        self._server = await asyncio.start_server(
            self._serve_connection, host, port, limit=MAX_HEAD_BYTES
        )
        bound = self._server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    def allow_hosts(self, hosts: set[str] | None) -> None:
        self._allowed_hosts = hosts

    async def stop(self) -> None:
        """Stop listening and end every open connection, event streams included."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # The requests run in a task of our own, which stop() cancels: asyncio's
        # stream protocol reports a cancelled callback task as an error (3.11),
        # so this outer task must end normally when only the inner one was
        # cancelled, and still propagate its own cancellation.
        serving = asyncio.create_task(self._serve_requests(reader, writer))
        self._connections.add(serving)
        outer = asyncio.current_task()
        try:
            await serving
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:
            if outer is not None and outer.cancelling():
                serving.cancel()
                raise
        except Exception:
            log.exception("dashboard connection failed")
        finally:
            self._connections.discard(serving)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _serve_requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        first = True
        while True:
            try:
                async with asyncio.timeout(HEAD_TIMEOUT_SECONDS if first else IDLE_TIMEOUT_SECONDS):
                    head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                await self._send(writer, text_response(431), head_only=False, keep_alive=False)
                return
            except asyncio.IncompleteReadError:
                return  # the browser closed an idle connection
            first = False
            try:
                request = parse_head(head)
                self._check(request)
            except BadRequest as error:
                await self._send(
                    writer, text_response(error.status, str(error)), head_only=False,
                    keep_alive=False,
                )
                return
            keep_alive = self._keeps_alive(request)
            response: Response | EventStream
            if request.method in ("GET", "HEAD"):
                try:
                    response = await self._handler(request)
                except Exception:
                    log.exception("dashboard request failed: %s %s", request.method, request.path)
                    response = text_response(500)
            else:
                response = text_response(405)
                response.headers.append(("Allow", "GET, HEAD"))
            if isinstance(response, EventStream):
                if request.method == "HEAD":
                    writer.write(head_bytes(200, [("Content-Type", EVENT_STREAM_TYPE),
                                                  ("Connection", "close")]))
                    await writer.drain()
                else:
                    await self._stream(reader, writer, response)
                return
            await self._send(writer, response, head_only=request.method == "HEAD",
                             keep_alive=keep_alive)
            if not keep_alive:
                return

    def _check(self, request: Request) -> None:
        if request.headers.get("transfer-encoding") or request.headers.get(
            "content-length", "0"
        ).strip() not in ("", "0"):
            raise BadRequest(400, "request bodies are not accepted")
        host = request.headers.get("host", "").lower()
        if not host and request.http_version == "HTTP/1.1":
            raise BadRequest(400, "missing Host header")
        if self._allowed_hosts is not None and host not in self._allowed_hosts:
            raise BadRequest(421, "unexpected Host header")

    @staticmethod
    def _keeps_alive(request: Request) -> bool:
        connection = request.headers.get("connection", "").lower()
        if request.http_version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection

    @staticmethod
    async def _send(
        writer: asyncio.StreamWriter, response: Response, *, head_only: bool, keep_alive: bool
    ) -> None:
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            ("Connection", "keep-alive" if keep_alive else "close"),
            *response.headers,
        ]
        writer.write(head_bytes(response.status, headers))
        if not head_only:
            writer.write(response.body)
        await writer.drain()

    @staticmethod
    async def _stream(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stream: EventStream
    ) -> None:
        headers = [
            ("Content-Type", EVENT_STREAM_TYPE),
            ("Cache-Control", "no-store"),
            ("Connection", "close"),
            ("X-Accel-Buffering", "no"),
            *stream.headers,
        ]
        writer.write(head_bytes(200, headers))
        await writer.drain()
        producer = asyncio.create_task(stream.run(EventStreamWriter(writer)))
        # The browser sends nothing more on this connection: EOF means it left.
        gone = asyncio.create_task(reader.read(1))
        try:
            await asyncio.wait({producer, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (producer, gone):
                task.cancel()
            await asyncio.gather(producer, gone, return_exceptions=True)
        if producer.done() and not producer.cancelled():
            error = producer.exception()
            if error is not None and not isinstance(error, ConnectionError):
                log.error("event stream failed: %r", error)
