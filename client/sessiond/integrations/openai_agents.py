"""The OpenAI Agents SDK's ``Session`` on sessiond.

``SessiondSession`` replaces ``SQLiteSession`` (or any SDK session) in
``Runner.run(agent, input, session=...)``::

    session = SessiondSession("conversation-1", client=AsyncClient("127.0.0.1:50051"))

Each SDK input item is one sessiond message: the item's JSON in a content
block of type ``openai_agents.item`` (read back exactly as it was added), and
beside it the role, the text and the tool calls, so that sessiond's counters,
search and watch see the conversation. See docs/integrations.md.

Compaction: ``OpenAIResponsesCompactionSession(session_id, underlying_session=
SessiondSession(...))`` compacts automatically, because this session offers
the SDK's atomic suffix replacement (``_get_compaction_snapshot``) on
ReplaceMessages: the newest items are replaced by the compacted ones in one
transaction, guarded by the session's last_seq and etag, so an item another
writer added meanwhile is never lost (the SDK then keeps the history as it is).

Requires ``pip install 'sessiond[openai-agents]'``; the SDK is imported with
this module only.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

from agents.items import TResponseInputItem
from agents.memory.session import _await_mutation, _CompactionSnapshot
from agents.memory.session_settings import (
    SessionSettings,
    coerce_session_settings,
    resolve_session_limit,
)

from sessiond.aio import AsyncClient
from sessiond.errors import Aborted, NotFound
from sessiond.integrations.history import (
    MAX_MESSAGES_PER_APPEND,
    StoredHistory,
    payload_message,
    payload_of,
)
from sessiond.v1 import message_pb2, session_pb2

#: The content block type that holds an SDK item.
ITEM_BLOCK = "openai_agents.item"
#: Messages per page while looking for the end of an expired prefix.
PRUNE_PAGE = 100

_ROLES = {
    "user": message_pb2.ROLE_USER,
    "assistant": message_pb2.ROLE_ASSISTANT,
    "system": message_pb2.ROLE_SYSTEM,
    "developer": message_pb2.ROLE_SYSTEM,
}


def _text_of(content: Any) -> str:
    """The text of an item's content: a string, or the text of its parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part["text"] for part in content
                         if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""


def item_to_message(item: TResponseInputItem) -> message_pb2.Message:
    """One SDK item as a sessiond message (the item kept whole, as JSON)."""
    data: dict[str, Any] = dict(item)
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    kind = data.get("type", "message")
    if kind == "message" and data.get("role") in _ROLES:
        return payload_message(ITEM_BLOCK, payload, _ROLES[data["role"]],
                               _text_of(data.get("content")))
    if kind == "function_call":
        call = message_pb2.ToolCall(id=str(data.get("call_id", "")),
                                    name=str(data.get("name", "")),
                                    arguments_json=str(data.get("arguments", "")))
        return payload_message(ITEM_BLOCK, payload, message_pb2.ROLE_ASSISTANT,
                               tool_calls=[call])
    if kind == "function_call_output":
        output = data.get("output")
        return payload_message(ITEM_BLOCK, payload, message_pb2.ROLE_TOOL,
                               _text_of(output), tool_call_id=str(data.get("call_id", "")))
    # Reasoning, hosted tool calls, compaction items...: model output without a
    # text of its own.
    return payload_message(ITEM_BLOCK, payload, message_pb2.ROLE_ASSISTANT)


def message_to_item(message: message_pb2.Message) -> TResponseInputItem | None:
    """The SDK item a message holds; None for a message written by something else."""
    payload = payload_of(message, ITEM_BLOCK)
    if payload is None:
        return None
    item: TResponseInputItem = json.loads(payload)
    return item


def _items(messages: list[message_pb2.Message]) -> list[TResponseInputItem]:
    return [item for item in map(message_to_item, messages) if item is not None]


class SessiondSession:
    """An SDK ``Session`` whose history is a sessiond session.

    ``client`` is shared freely (between sessions, threads and event loops);
    ``session_template`` is the session created on the first write (agent,
    channel, labels...); ``session_settings.limit`` is the default number of
    items ``get_items`` returns (None: all).
    """

    session_settings: SessionSettings | None

    def __init__(
        self,
        session_id: str,
        *,
        client: AsyncClient,
        session_template: session_pb2.Session | None = None,
        session_settings: SessionSettings | dict[str, Any] | None = None,
    ) -> None:
        self.session_id = session_id
        self.session_settings = (SessionSettings() if session_settings is None
                                 else coerce_session_settings(session_settings))
        self._history = StoredHistory(client, session_id, session_template)

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        """The latest ``limit`` items (the settings' limit when None), oldest first."""
        limit = resolve_session_limit(limit, self.session_settings)
        return _items(await self._history.latest(limit))

    # Writes finish even when the caller is cancelled, and the cancellation is
    # raised once their outcome is known (the SDK's rule for its own stores), so
    # the runner never retries a write that was applied.

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        """Append the items in order (one message each)."""
        await _await_mutation(self._history.append([item_to_message(item) for item in items]))

    async def pop_item(self) -> TResponseInputItem | None:
        """Remove and return the latest item; None when the session is empty."""
        message = await _await_mutation(self._history.pop())
        return None if message is None else message_to_item(message)

    async def clear_session(self) -> None:
        """Remove every item; the sessiond session (with its usage) stays."""
        await _await_mutation(self._history.clear())

    async def _get_compaction_snapshot(
        self,
        limit: int,
        *,
        prune_prefix: Callable[[TResponseInputItem], bool] | None = None,
    ) -> _CompactionSnapshot | None:
        """The latest ``limit`` items with an atomic replacement of any suffix of them.

        The SDK's hook for automatic compaction. The session is read first
        (last_seq, etag), then its messages: a write in between makes the
        etag stale, and the replacement is then refused (ABORTED), never
        applied over history it did not see. ``prune_prefix`` (the SDK's
        encrypted session: "this item has expired") drops, once the
        replacement has committed, the oldest items before the replaced
        suffix for as long as it holds (see ``_prune_prefix``).
        """
        client = self._history.client
        try:
            session = (await client.get_session(session_id=self._history.session_id)).session
        except NotFound:
            return _CompactionSnapshot([], True, _nothing_to_replace)
        window = await self._history.latest(limit + 1)
        complete = len(window) <= limit
        window = window[-limit:] if limit > 0 else []
        if len(_items(window)) != len(window):
            return None  # messages the SDK did not write: not the SDK's to rewrite

        async def replace_suffix(start: int, output: list[TResponseInputItem]) -> bool:
            replaced = window[start:]
            if not replaced or len(output) > MAX_MESSAGES_PER_APPEND:
                return False
            try:
                await _await_mutation(client.replace_messages(
                    session_id=self._history.session_id,
                    after_seq=replaced[0].seq - 1,
                    messages=[item_to_message(item) for item in output],
                    expected_last_seq=session.last_seq,
                    etag=session.etag,
                ))
            except Aborted:
                return False
            if prune_prefix is not None:
                await self._prune_prefix(replaced[0].seq, prune_prefix)
            return True

        return _CompactionSnapshot(_items(window), complete, replace_suffix)

    async def _prune_prefix(self, before_seq: int,
                            prune: Callable[[TResponseInputItem], bool]) -> None:
        """Delete the oldest messages before ``before_seq`` while ``prune`` accepts each.

        A second call after the replacement, not the same transaction (sessiond
        has no replacement that also drops a prefix). It is safe without a
        guard: sequence numbers only grow, so every message up to the last one
        accepted was read and accepted here, whatever else is written
        meanwhile. A failure in between only leaves expired items, which the
        encrypted session skips on reads and the next compaction drops.
        """
        client = self._history.client
        last_accepted = 0
        async for message in client.iter_messages(session_id=self._history.session_id,
                                                  page_size=PRUNE_PAGE):
            item = message_to_item(message)
            if message.seq >= before_seq or item is None or not prune(item):
                break
            last_accepted = message.seq
        if last_accepted:
            with contextlib.suppress(NotFound):  # deleted meanwhile: nothing left to prune
                await _await_mutation(client.delete_messages(
                    session_id=self._history.session_id, up_to_seq=last_accepted))


async def _nothing_to_replace(start: int, output: list[TResponseInputItem]) -> bool:
    return False
