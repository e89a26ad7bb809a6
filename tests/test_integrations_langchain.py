"""LangChain on sessiond: SessiondChatMessageHistory through LangChain's own API.

A real server on both backends; the history is driven by its sync and async
methods, and by ``RunnableWithMessageHistory`` over a scripted chat model (no
network). Every message reads back exactly, and sessiond's counters see the
conversation.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import warnings

import sessiond
from conftest import ServerHarness
from harness import assert_counters_match_recount, get_session
from langchain_core.language_models.fake_chat_models import (
    FakeMessagesListChatModel,
)
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables.history import RunnableWithMessageHistory
from sessiond.integrations.langchain import SessiondChatMessageHistory

CONVERSATION: list[BaseMessage] = [
    SystemMessage("be brief"),
    HumanMessage("what is 2 + 3? ünïcödé ✓", id="h1"),
    AIMessage("", tool_calls=[{"name": "add", "args": {"a": 2, "b": 3}, "id": "call_1"}]),
    ToolMessage("5", tool_call_id="call_1"),
    AIMessage("5", response_metadata={"model": "scripted"}, additional_kwargs={"x": [1, 2]}),
]


def make_history(session_id: str, client: sessiond.AsyncClient) -> SessiondChatMessageHistory:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the interface is deprecated
        return SessiondChatMessageHistory(session_id, client=client)


async def test_async_methods_round_trip_every_message_exactly(server: ServerHarness) -> None:
    async with sessiond.AsyncClient(server.address) as client:
        history = make_history("lc-async", client)
        assert await history.aget_messages() == []
        await history.aadd_messages(CONVERSATION)
        assert await history.aget_messages() == CONVERSATION
        stored = await get_session(server.sessions, "lc-async")
        assert (stored.message_count, stored.turn_count, stored.tool_call_count) == (5, 1, 1)
        await assert_counters_match_recount(server.sessions, server.messages, "lc-async")
        await history.aclear()
        assert await history.aget_messages() == []


async def test_sync_methods_work_in_threads_with_and_without_a_running_loop(
    server: ServerHarness,
) -> None:
    # The server runs on this test's loop, so the blocking calls go to other threads.
    async with sessiond.AsyncClient(server.address) as client:
        history = make_history("lc-sync", client)

        def without_loop() -> list[BaseMessage]:
            history.add_user_message("hello")
            history.add_ai_message("hi there")
            return history.messages

        async def inside_a_loop() -> list[BaseMessage]:
            return history.messages  # a sync call made from async code

        expected = [HumanMessage("hello"), AIMessage("hi there")]
        assert await asyncio.to_thread(without_loop) == expected
        assert await asyncio.to_thread(asyncio.run, inside_a_loop()) == expected
        await asyncio.to_thread(history.clear)
        assert await history.aget_messages() == []


async def test_a_chain_with_message_history_keeps_the_conversation(
    server: ServerHarness,
) -> None:
    model = FakeMessagesListChatModel(responses=[AIMessage("Hello Ada."),
                                                 AIMessage("Your name is Ada.")])
    prompt = ChatPromptTemplate.from_messages(
        [("system", "You are terse."), MessagesPlaceholder("history"), ("human", "{question}")])
    async with sessiond.AsyncClient(server.address) as client:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            chain = RunnableWithMessageHistory(
                prompt | model,
                lambda session_id: make_history(session_id, client),
                input_messages_key="question",
                history_messages_key="history",
            )
        config = {"configurable": {"session_id": "lc-chain"}}
        first = await chain.ainvoke({"question": "I am Ada."}, config=config)
        second = await chain.ainvoke({"question": "What is my name?"}, config=config)
        assert (first.content, second.content) == ("Hello Ada.", "Your name is Ada.")
        texts = [m.content for m in await make_history("lc-chain", client).aget_messages()]
        assert texts == ["I am Ada.", "Hello Ada.", "What is my name?", "Your name is Ada."]
        stored = await get_session(server.sessions, "lc-chain")
        assert stored.turn_count == 2


def test_the_core_install_imports_no_framework() -> None:
    code = ("import sys, sessiond, sessiond.integrations, sessiond.integrations.history; "
            "print(sorted(m for m in ('agents', 'langchain_core', 'openai', 'google.adk')"
            " if m in sys.modules))")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True)
    assert shown.stdout.strip() == "[]"
