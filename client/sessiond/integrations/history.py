"""One session's history as an agent framework sees it: an ordered list of its own objects.

Every framework adapter stores each of its objects (an SDK input item, a
LangChain message) as one sessiond message: the object itself, exactly as the
framework serialises it, in a content block whose type names the framework
(so it round-trips exactly), and beside it what sessiond understands (role,
text content, tool calls), so that counters, search, the dashboard and the
watch work on framework sessions as on any other. The rules the adapters
share live here once:

* appends carry a client-chosen id per message, so the client retries them
  safely (a server restart in the middle of a turn loses nothing and stores
  nothing twice), and are cut into requests within the server's limits
  (100 messages, and well under its request byte limit);
* a session is created on its first append, from a template the caller may
  give (agent, channel, labels...), as the frameworks expect;
* reads of "the latest N" cost one request when they fit in a page (1,000
  messages and the server's page byte bound), then page backwards: never
  fewer than N when the session holds N;
* a missing session reads as empty, and popping or clearing it changes nothing.

Calls from synchronous framework methods run on one background event loop
(``run_sync``), so the rules are written once, for asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from sessiond.aio import AsyncClient
from sessiond.errors import FailedPrecondition, NotFound
from sessiond.requests import TimestampLike
from sessiond.v1 import message_pb2, message_service_pb2, session_pb2

T = TypeVar("T")

#: The AppendMessages view of the appends whose answers are not read.
LEAN = message_service_pb2.APPEND_VIEW_LEAN

#: Messages per AppendMessages request (the server's default limit).
MAX_MESSAGES_PER_APPEND = 100
#: Bytes of messages per AppendMessages request: half the server's default
#: request limit (8 MiB), leaving room for the envelope.
MAX_APPEND_BYTES = 4 << 20
#: The most messages one ListMessages request returns.
MAX_PAGE = 1000


def payload_message(
    block_type: str,
    payload_json: str,
    role: message_pb2.Role.ValueType,
    content: str = "",
    **fields: Any,
) -> message_pb2.Message:
    """A message holding a framework object (JSON text) and what sessiond reads of it."""
    return message_pb2.Message(
        id=uuid.uuid4().hex,
        role=role,
        content=content,
        content_blocks=[message_pb2.ContentBlock(type=block_type, json=payload_json)],
        **fields,
    )


def payload_of(message: message_pb2.Message, block_type: str) -> str | None:
    """The framework object (JSON text) a message holds, None for any other message."""
    for block in message.content_blocks:
        if block.type == block_type and block.WhichOneof("data") == "json":
            return block.json
    return None


def _batches(messages: Sequence[message_pb2.Message]) -> list[list[message_pb2.Message]]:
    batches: list[list[message_pb2.Message]] = []
    size = 0
    for message in messages:
        message_size = message.ByteSize()
        if (not batches or len(batches[-1]) >= MAX_MESSAGES_PER_APPEND
                or size + message_size > MAX_APPEND_BYTES):
            batches.append([])
            size = 0
        batches[-1].append(message)
        size += message_size
    return batches


class StoredHistory:
    """The messages of one session, read and written through an ``AsyncClient``.

    ``template`` is the session created on the first append (its id is
    ``session_id`` whatever the template says).
    """

    def __init__(
        self,
        client: AsyncClient,
        session_id: str,
        template: session_pb2.Session | None = None,
    ) -> None:
        self.client = client
        self.session_id = session_id
        self._template = session_pb2.Session()
        if template is not None:
            self._template.CopyFrom(template)
        self._template.id = session_id

    async def latest(self, limit: int | None,
                     after_time: TimestampLike | None = None) -> list[message_pb2.Message]:
        """The latest ``limit`` messages, oldest first; all of them when None.

        ``after_time`` keeps only messages whose time (event_time, else
        created_at) is at or after it.
        """
        if limit is not None and limit <= 0:
            return []
        try:
            if limit is None:
                return [m async for m in self.client.iter_messages(
                    session_id=self.session_id, page_size=MAX_PAGE, after_time=after_time)]
            newest_first: list[message_pb2.Message] = []
            # Newest first, page after page: one request when the latest
            # `limit` fit in one page (1,000 messages and the server's page
            # byte bound), more when they do not, never fewer messages.
            async for message in self.client.iter_messages(
                    session_id=self.session_id, page_size=min(limit, MAX_PAGE),
                    descending=True, after_time=after_time):
                newest_first.append(message)
                if len(newest_first) == limit:
                    break
            newest_first.reverse()
            return newest_first
        except NotFound:
            return []

    async def append(self, messages: Sequence[message_pb2.Message]) -> None:
        """Append in order, creating the session on the first append. The answers are
        not read, so they come in the lean view (seq and ids only, no echoed bodies)."""
        for batch in _batches(messages):
            try:
                await self.client.append_messages(session_id=self.session_id, messages=batch,
                                                  view=LEAN)
            except NotFound:
                await self.client.touch_session(session=self._template)
                await self.client.append_messages(session_id=self.session_id, messages=batch,
                                                  view=LEAN)

    async def pop(self) -> message_pb2.Message | None:
        """Remove and return the last message; None when there is none."""
        try:
            return (await self.client.pop_message(session_id=self.session_id)).message
        except (NotFound, FailedPrecondition) as error:
            if isinstance(error, FailedPrecondition) and error.reason != "SESSION_EMPTY":
                raise
            return None

    async def clear(self) -> None:
        """Remove every message; the session itself stays."""
        with contextlib.suppress(NotFound):
            await self.client.clear_messages(session_id=self.session_id)


class _LoopThread:
    """An event loop on a daemon thread, for synchronous framework methods."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        thread = threading.Thread(target=self.loop.run_forever, name="sessiond-integrations",
                                  daemon=True)
        thread.start()


_loop_thread: _LoopThread | None = None
_loop_thread_lock = threading.Lock()


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on the background loop and wait for its result.

    Callable from any thread, including one whose own event loop is running
    (a synchronous framework method called from async code).
    """
    global _loop_thread
    with _loop_thread_lock:
        if _loop_thread is None:
            _loop_thread = _LoopThread()
        loop = _loop_thread.loop
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result()
