"""MessageService: append, page, pop, update-last, clear and search a session's history."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from sessiond.v1 import message_pb2, message_service_pb2, message_service_pb2_grpc, session_pb2

from ..store import MessageQuery
from ..store.records import message_bytes
from .context import ApiContext
from .errors import unary
from .page_tokens import request_digest
from .sessions import check_delta, check_shared_deltas
from .validation import Checker

ms = message_service_pb2
M = message_pb2
S = session_pb2
Ctx = grpc.aio.ServicerContext[Any, Any]

UPDATE_PATHS = frozenset({"content", "reasoning", "status", "name", "tool_calls",
                          "content_blocks", "provider_response_id", "metadata"})
STREAMING_PATHS = ("content", "reasoning", "status")
# The range of google.protobuf.Timestamp: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
TIMESTAMP_MIN_SECONDS, TIMESTAMP_MAX_SECONDS = -62_135_596_800, 253_402_300_799


def check_message(c: Checker, prefix: str, m: M.Message, *, role_required: bool = True) -> None:
    lim = c.limits
    c.identifier(f"{prefix}.id", m.id, required=False, chosen=True)
    c.enum(f"{prefix}.role", m.role, M.Role, required=role_required)
    c.enum(f"{prefix}.status", m.status, M.MessageStatus)
    size = message_bytes(m)
    if size > lim.max_message_bytes:
        c.fail(f"{prefix}.content", f"the message is {size} bytes; the limit is "
               f"{lim.max_message_bytes}")
    c.identifier(f"{prefix}.tool_call_id", m.tool_call_id, required=False)
    c.text(f"{prefix}.name", m.name, 1024)
    c.text(f"{prefix}.provider_response_id", m.provider_response_id, 1024)
    if len(m.tool_calls) > 1024:
        c.fail(f"{prefix}.tool_calls", "has more than 1024 calls")
    c.string_map(f"{prefix}.metadata", m.metadata)
    if m.HasField("event_time") and not (
            TIMESTAMP_MIN_SECONDS <= m.event_time.seconds <= TIMESTAMP_MAX_SECONDS
            and 0 <= m.event_time.nanos < 1_000_000_000):
        c.fail(f"{prefix}.event_time", "must lie between years 1 and 9999")


def check_messages(c: Checker, messages: Sequence[M.Message], *, required: bool) -> None:
    """The messages of an append or a replacement: how many, and each one."""
    n = len(messages)
    if n == 0 and required:
        c.fail("messages", "must hold at least one message")
    elif n > c.limits.max_messages_per_append:
        c.fail("messages", f"holds {n} messages; the limit is {c.limits.max_messages_per_append}")
    else:
        for i, message in enumerate(messages):
            check_message(c, f"messages[{i}]", message)


def lean_session(session: S.Session) -> S.Session:
    """The session as AppendMessages' LEAN view answers it: what a caller needs to guard
    its next write (the fields APPEND_VIEW_LEAN names), nothing else."""
    lean = S.Session(id=session.id, status=session.status, last_seq=session.last_seq,
                     message_count=session.message_count, revision=session.revision,
                     etag=session.etag)
    lean.last_activity_at.CopyFrom(session.last_activity_at)
    if session.HasField("last_event_at"):
        lean.last_event_at.CopyFrom(session.last_event_at)
    return lean


class MessageService(message_service_pb2_grpc.MessageServiceServicer):
    def __init__(self, api: ApiContext) -> None:
        self.api = api

    def _checker(self) -> Checker:
        return Checker(self.api.config.limits)

    @unary
    async def AppendMessages(self, request: ms.AppendMessagesRequest, context: Ctx
                             ) -> ms.AppendMessagesResponse:
        c = self._checker()
        c.identifier("session_id", request.session_id)
        check_messages(c, request.messages, required=True)
        check_delta(c, "state_delta", request.state_delta)
        check_shared_deltas(c, request.shared_state_deltas)
        c.enum("view", request.view, ms.AppendView)
        c.done()
        expected = (request.expected_last_seq if request.HasField("expected_last_seq")
                    else None)
        lean = request.view == ms.APPEND_VIEW_LEAN
        result = await self.api.store.append_messages(
            self.api.scope(context), request.session_id, request.messages, expected,
            request.state_delta, request.shared_state_deltas, lean=lean)
        return ms.AppendMessagesResponse(
            messages=result.messages,
            session=lean_session(result.session) if lean else result.session,
            revision=result.revision)

    @unary
    async def ListMessages(self, request: ms.ListMessagesRequest, context: Ctx
                           ) -> ms.ListMessagesResponse:
        lim = self.api.config.limits
        c = self._checker()
        c.identifier("session_id", request.session_id)
        size = c.page_size("page_size", request.page_size, lim.default_message_page_size,
                           lim.max_message_page_size)
        paging = bool(request.page_size or request.page_token or request.descending
                      or request.after_seq or request.HasField("after_time"))
        if request.last_n and request.last_turns:
            c.fail("last_turns", "cannot be combined with last_n")
        for name in ("last_n", "last_turns"):
            value = getattr(request, name)
            if value < 0 or value > lim.max_message_page_size:
                c.fail(name, f"must be between 1 and {lim.max_message_page_size}")
            elif value and paging:
                c.fail(name, "cannot be combined with paging fields")
        c.non_negative("after_seq", request.after_seq)
        c.done()
        scope = self.api.scope(context)
        digest = request_digest(scope, request.session_id, request.descending,
                                request.after_seq, request.after_time)
        cursor = None
        if request.page_token:
            cursor = int(self.api.tokens.decode("page_token", request.page_token, "messages",
                                                digest))
        query = MessageQuery(
            page_size=size, descending=request.descending, after_seq=request.after_seq,
            after_time_micros=(request.after_time.ToMicroseconds()
                               if request.HasField("after_time") else 0),
            last_n=request.last_n, last_turns=request.last_turns, cursor_seq=cursor,
            max_messages=lim.max_message_page_size, max_bytes=lim.max_page_bytes)
        page = await self.api.store.list_messages(scope, request.session_id,
                                                  query)
        token = ("" if page.next_cursor is None
                 else self.api.tokens.encode("messages", digest, page.next_cursor))
        return ms.ListMessagesResponse(messages=page.messages, next_page_token=token,
                                       truncated=page.truncated, revision=page.revision,
                                       size_limited=page.size_limited)

    @unary
    async def PopMessage(self, request: ms.PopMessageRequest, context: Ctx
                         ) -> ms.PopMessageResponse:
        c = self._checker()
        c.identifier("session_id", request.session_id)
        c.done()
        expected = request.expected_seq if request.HasField("expected_seq") else None
        result = await self.api.store.pop_message(self.api.scope(context), request.session_id,
                                                  expected)
        return ms.PopMessageResponse(message=result.messages[0], session=result.session,
                                     revision=result.revision)

    @unary
    async def UpdateLastMessage(self, request: ms.UpdateLastMessageRequest, context: Ctx
                                ) -> ms.UpdateLastMessageResponse:
        c = self._checker()
        c.identifier("session_id", request.session_id)
        check_message(c, "message", request.message, role_required=False)
        paths = list(request.update_mask.paths) or list(STREAMING_PATHS)
        c.mask_paths("update_mask", request.update_mask.paths, UPDATE_PATHS)
        c.done()
        expected = request.expected_seq if request.HasField("expected_seq") else None
        result = await self.api.store.update_last_message(
            self.api.scope(context), request.session_id, request.message, paths, expected,
            self.api.config.limits.max_message_bytes)
        return ms.UpdateLastMessageResponse(message=result.messages[0], session=result.session,
                                            revision=result.revision)

    @unary
    async def ClearMessages(self, request: ms.ClearMessagesRequest, context: Ctx
                            ) -> ms.ClearMessagesResponse:
        c = self._checker()
        c.identifier("session_id", request.session_id)
        c.done()
        removed, session, revision = await self.api.store.clear_messages(
            self.api.scope(context), request.session_id)
        return ms.ClearMessagesResponse(removed_count=removed, session=session,
                                        revision=revision)

    @unary
    async def SearchMessages(self, request: ms.SearchMessagesRequest, context: Ctx
                             ) -> ms.SearchMessagesResponse:
        lim = self.api.config.limits
        c = self._checker()
        c.query("query", request.query, required=True)
        c.values("session_ids", request.session_ids)
        size = c.page_size("page_size", request.page_size, lim.default_page_size,
                           lim.max_page_size)
        c.done()
        scope = self.api.scope(context)
        digest = request_digest(scope, request.query, list(request.session_ids))
        cursor = None
        if request.page_token:
            cursor = int(self.api.tokens.decode("page_token", request.page_token, "search",
                                                digest))
        found, next_cursor, revision = await self.api.store.search_messages(
            scope, request.query, list(request.session_ids), size, cursor,
            lim.max_page_bytes)
        token = "" if next_cursor is None else self.api.tokens.encode("search", digest,
                                                                      next_cursor)
        return ms.SearchMessagesResponse(messages=found, next_page_token=token,
                                         revision=revision)

    @unary
    async def ReplaceMessages(self, request: ms.ReplaceMessagesRequest, context: Ctx
                              ) -> ms.ReplaceMessagesResponse:
        c = self._checker()
        c.identifier("session_id", request.session_id)
        c.non_negative("after_seq", request.after_seq)
        check_messages(c, request.messages, required=False)
        if not request.HasField("expected_last_seq"):
            c.fail("expected_last_seq", "is required: the session's last_seq as last read")
        c.etag("etag", request.etag)
        c.done()
        result, removed = await self.api.store.replace_messages(
            self.api.scope(context), request.session_id, request.after_seq, request.messages,
            request.expected_last_seq, request.etag)
        return ms.ReplaceMessagesResponse(messages=result.messages, removed_count=removed,
                                          session=result.session, revision=result.revision)

    @unary
    async def DeleteMessages(self, request: ms.DeleteMessagesRequest, context: Ctx
                             ) -> ms.DeleteMessagesResponse:
        c = self._checker()
        c.identifier("session_id", request.session_id)
        if request.up_to_seq < 1:
            c.fail("up_to_seq", "must be at least 1")
        c.done()
        expected = (request.expected_last_seq if request.HasField("expected_last_seq")
                    else None)
        removed, session, revision = await self.api.store.delete_messages(
            self.api.scope(context), request.session_id, request.up_to_seq, expected)
        return ms.DeleteMessagesResponse(removed_count=removed, session=session,
                                         revision=revision)
