"""LangChain's ``BaseChatMessageHistory`` on sessiond.

``SessiondChatMessageHistory`` replaces any chat message history (for
example in ``RunnableWithMessageHistory``)::

    history = SessiondChatMessageHistory("conversation-1", client=AsyncClient())

Each LangChain message is one sessiond message: the message as
``message_to_dict`` gives it, in a content block of type
``langchain.message`` (read back exactly), and beside it the role, the text
and the tool calls. The async methods call sessiond directly; the sync ones
run the same calls on a background event loop (sessiond.integrations.history).

Requires ``pip install 'sessiond[langchain]'``; LangChain is imported with
this module only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import BaseMessage, message_to_dict, messages_from_dict

from sessiond.aio import AsyncClient
from sessiond.integrations.history import StoredHistory, payload_message, payload_of, run_sync
from sessiond.v1 import message_pb2, session_pb2

#: The content block type that holds a LangChain message.
MESSAGE_BLOCK = "langchain.message"

_ROLES = {
    "human": message_pb2.ROLE_USER,
    "ai": message_pb2.ROLE_ASSISTANT,
    "system": message_pb2.ROLE_SYSTEM,
    "tool": message_pb2.ROLE_TOOL,
    "function": message_pb2.ROLE_TOOL,
}


def to_stored(message: BaseMessage) -> message_pb2.Message:
    """One LangChain message as a sessiond message (kept whole, as JSON)."""
    payload = json.dumps(message_to_dict(message), ensure_ascii=False, separators=(",", ":"))
    role = _ROLES.get(message.type, message_pb2.ROLE_USER)
    fields: dict[str, Any] = {}
    tool_calls = getattr(message, "tool_calls", None) or []
    if tool_calls:
        fields["tool_calls"] = [
            message_pb2.ToolCall(id=call.get("id") or "", name=call["name"],
                                 arguments_json=json.dumps(call.get("args", {})))
            for call in tool_calls]
    tool_call_id = getattr(message, "tool_call_id", None)
    if isinstance(tool_call_id, str) and tool_call_id:
        fields["tool_call_id"] = tool_call_id
    return payload_message(MESSAGE_BLOCK, payload, role, message.text, **fields)


def from_stored(messages: Sequence[message_pb2.Message]) -> list[BaseMessage]:
    """The LangChain messages among sessiond messages (others are skipped)."""
    payloads = [payload_of(message, MESSAGE_BLOCK) for message in messages]
    return messages_from_dict([json.loads(p) for p in payloads if p is not None])


class SessiondChatMessageHistory(BaseChatMessageHistory):
    """A chat message history kept in one sessiond session.

    ``client`` may be shared between histories, threads and event loops;
    ``session_template`` is the session created on the first write.
    """

    def __init__(
        self,
        session_id: str,
        *,
        client: AsyncClient,
        session_template: session_pb2.Session | None = None,
    ) -> None:
        super().__init__()
        self.session_id = session_id
        self._history = StoredHistory(client, session_id, session_template)

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        """Every message, oldest first."""
        return run_sync(self.aget_messages())

    async def aget_messages(self) -> list[BaseMessage]:
        """Every message, oldest first."""
        return from_stored(await self._history.latest(None))

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Append the messages in order."""
        run_sync(self.aadd_messages(messages))

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Append the messages in order."""
        await self._history.append([to_stored(message) for message in messages])

    def clear(self) -> None:
        """Remove every message; the sessiond session stays."""
        run_sync(self.aclear())

    async def aclear(self) -> None:
        """Remove every message; the sessiond session stays."""
        await self._history.clear()
