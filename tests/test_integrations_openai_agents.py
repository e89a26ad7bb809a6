"""The OpenAI Agents SDK on sessiond: SessiondSession driven through the SDK's own API.

Every test runs a real server (both backends) and the SDK's public entry points:
``Runner.run`` with a scripted model (no network), the ``Session`` methods, and
``OpenAIResponsesCompactionSession`` over the adapter with a scripted compaction
endpoint. What sessiond stores is checked through the API as well: counters equal
recounts, and every item reads back exactly as it was added.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
import sessiond
from agents import (
    Agent,
    ModelSettings,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from agents.items import ModelResponse, TResponseInputItem
from agents.memory import OpenAIResponsesCompactionSession, SessionSettings
from agents.models.interface import Model
from agents.usage import Usage
from conftest import MakeServer, ServerHarness, free_port
from harness import assert_counters_match_recount, get_session
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)
from sessiond.integrations.openai_agents import SessiondSession
from sessiond.v1 import session_pb2
from sessiond.watching import Backoff

set_tracing_disabled(True)  # the SDK would export traces to its vendor: nothing leaves here

RETRY_UNTIL_BACK = Backoff(initial=0.01, maximum=0.05, rng=random.Random(3))


def reply(text: str) -> ResponseOutputMessage:
    return ResponseOutputMessage(
        id=f"msg_{abs(hash(text)) % 10**8}", type="message", role="assistant",
        status="completed",
        content=[ResponseOutputText(type="output_text", text=text, annotations=[])])


def call(name: str, arguments: str, call_id: str) -> ResponseFunctionToolCall:
    return ResponseFunctionToolCall(id=f"fc_{call_id}", type="function_call", call_id=call_id,
                                    name=name, arguments=arguments)


class ScriptedModel(Model):
    """A model that answers from a script and records the input it was given."""

    def __init__(self, *turns: list[Any]) -> None:
        self.turns = list(turns)
        self.inputs: list[list[TResponseInputItem]] = []

    async def get_response(self, system_instructions: str | None,
                           input: str | list[TResponseInputItem], *args: Any,
                           **kwargs: Any) -> ModelResponse:
        self.inputs.append([{"role": "user", "content": input}] if isinstance(input, str)
                           else list(input))
        return ModelResponse(output=self.turns.pop(0), usage=Usage(),
                             response_id=f"resp_{len(self.inputs)}")

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        raise NotImplementedError("the scripted model does not stream")


@function_tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


ITEMS: list[TResponseInputItem] = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "what is 2 + 3? ünïcödé ✓"},
    {"type": "message", "role": "user",
     "content": [{"type": "input_text", "text": "and quickly"}]},
    {"type": "function_call", "call_id": "call_1", "name": "add",
     "arguments": "{\"a\": 2, \"b\": 3}", "id": "fc_1", "status": "completed"},
    {"type": "function_call_output", "call_id": "call_1", "output": "5"},
    {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "sum"}]},
    {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
     "content": [{"type": "output_text", "text": "5", "annotations": []}]},
]


async def test_every_item_reads_back_exactly_as_added(server: ServerHarness) -> None:
    async with sessiond.AsyncClient(server.address) as client:
        session = SessiondSession("round-trip", client=client)
        assert await session.get_items() == []
        await session.add_items(ITEMS)
        assert await session.get_items() == ITEMS
        assert await session.get_items(limit=2) == ITEMS[-2:]
        assert await session.get_items(limit=0) == []
        limited = SessiondSession("round-trip", client=client,
                                  session_settings={"limit": 3})
        assert limited.session_settings == SessionSettings(limit=3)
        assert await limited.get_items() == ITEMS[-3:]
        assert await session.pop_item() == ITEMS[-1]
        assert await session.get_items() == ITEMS[:-1]
        stored = await get_session(server.sessions, "round-trip")
        assert stored.tool_call_count == 1
        await assert_counters_match_recount(server.sessions, server.messages, "round-trip")
        await session.clear_session()
        assert await session.get_items() == []
        assert await session.pop_item() is None


async def test_reads_cross_the_servers_page_byte_bound_without_losing_items(
    make_server: MakeServer,
) -> None:
    server = await make_server(limits={"max_page_bytes": 64 * 1024})
    items: list[TResponseInputItem] = [{"role": "user", "content": f"{n}:" + "x" * 20_000}
                                       for n in range(12)]
    async with sessiond.AsyncClient(server.address) as client:
        session = SessiondSession("big-items", client=client)
        await session.add_items(items)
        assert await session.get_items(limit=9) == items[-9:]
        assert await session.get_items() == items


async def test_a_missing_session_reads_empty_and_is_created_from_the_template(
    server: ServerHarness,
) -> None:
    async with sessiond.AsyncClient(server.address) as client:
        template = session_pb2.Session(agent="math-bot", channel="cli", labels={"app": "demo"})
        session = SessiondSession("fresh", client=client, session_template=template)
        assert await session.pop_item() is None
        await session.clear_session()
        assert await session.get_items() == []
        await session.add_items([{"role": "user", "content": "hi"}])
        stored = await get_session(server.sessions, "fresh")
        assert (stored.agent, stored.channel, dict(stored.labels)) == (
            "math-bot", "cli", {"app": "demo"})


async def test_a_runner_conversation_with_a_tool_call_is_kept_between_runs(
    server: ServerHarness,
) -> None:
    model = ScriptedModel(
        [call("add", "{\"a\": 2, \"b\": 3}", "call_1")],
        [reply("2 + 3 = 5")],
        [reply("You asked about 2 + 3.")],
    )
    agent = Agent(name="math", instructions="Use the tool.", model=model, tools=[add],
                  model_settings=ModelSettings())
    async with sessiond.AsyncClient(server.address) as client:
        session = SessiondSession("run", client=client)
        first = await Runner.run(agent, "what is 2 + 3?", session=session)
        assert first.final_output == "2 + 3 = 5"
        second = await Runner.run(agent, "what did I ask?", session=session)
        assert second.final_output == "You asked about 2 + 3."
        # The last model call saw the whole first run, read back from sessiond.
        seen = model.inputs[-1]
        kinds = [item.get("type", "message") for item in seen]
        assert kinds.count("function_call") == 1 and kinds.count("function_call_output") == 1
        assert seen[0] == {"role": "user", "content": "what is 2 + 3?"}
        assert seen[-1] == {"role": "user", "content": "what did I ask?"}
        items = await session.get_items()
        assert items[:len(seen)] == seen
        assert len(items) == len(seen) + 1
        assert items[-1]["content"][0]["text"] == "You asked about 2 + 3."  # type: ignore
        stored = await get_session(server.sessions, "run")
        assert stored.message_count == len(items)
        assert stored.tool_call_count == 1
        assert stored.turn_count == 2
        await assert_counters_match_recount(server.sessions, server.messages, "run")


async def test_writers_on_threads_with_their_own_loops_share_one_client(
    server: ServerHarness,
) -> None:
    client = sessiond.AsyncClient(server.address)
    writes_per_writer = 20
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        async def write() -> None:
            session = SessiondSession("shared", client=client)
            for i in range(writes_per_writer):
                await session.add_items([{"role": "user", "content": f"{name}-{i}"}])
            await client.close()

        try:
            asyncio.run(write())
        except BaseException as error:  # reported below, on the test's own thread
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(f"w{n}",)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        await asyncio.to_thread(thread.join)
    assert errors == []
    items = await SessiondSession("shared", client=client).get_items()
    await client.close()
    assert len(items) == 3 * writes_per_writer
    for n in range(3):
        mine = [item["content"] for item in items if str(item["content"]).startswith(f"w{n}-")]
        assert mine == [f"w{n}-{i}" for i in range(writes_per_writer)]
    await assert_counters_match_recount(server.sessions, server.messages, "shared")


async def test_a_server_restart_in_the_middle_of_a_run_loses_and_repeats_nothing(
    make_server: MakeServer,
) -> None:
    address = f"127.0.0.1:{free_port()}"
    first = await make_server(address=address)
    restarted: list[ServerHarness] = []

    async def restart_then_wait(delay: float) -> None:
        # The client's retry pause: the server comes back before the retry.
        if not restarted:
            restarted.append(await make_server(address=address, database=first.database))
        await asyncio.sleep(delay)

    model = ScriptedModel([reply("first answer")], [reply("second answer")])
    agent = Agent(name="echo", model=model)
    # gRPC waits before reconnecting to an address that refused it; the
    # test shortens that wait rather than sleeping through it.
    reconnect_soon = [("grpc.initial_reconnect_backoff_ms", 10),
                      ("grpc.min_reconnect_backoff_ms", 10),
                      ("grpc.max_reconnect_backoff_ms", 50)]
    async with sessiond.AsyncClient(address, retry_backoff=RETRY_UNTIL_BACK, max_retries=200,
                                    timeout=60.0, sleep=restart_then_wait,
                                    options=reconnect_soon) as client:
        session = SessiondSession("restart", client=client)
        await Runner.run(agent, "one", session=session)
        await first.close()  # the server stops between two turns
        result = await Runner.run(agent, "two", session=session)
        assert result.final_output == "second answer"
        assert restarted, "the run never needed the restarted server"
        items = await session.get_items()
    assert [item.get("content") if isinstance(item.get("content"), str)
            else item["content"][0]["text"] for item in items] == [
        "one", "first answer", "two", "second answer"]
    await assert_counters_match_recount(restarted[0].sessions, restarted[0].messages, "restart")


async def test_calls_keep_their_deadline_when_time_time_is_frozen(
    server: ServerHarness, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with sessiond.AsyncClient(server.address, timeout=30.0) as client:
        session = SessiondSession("frozen", client=client)
        monkeypatch.setattr(time, "time", lambda: 946_684_800.0)  # 2000-01-01, forever
        await session.add_items([{"role": "user", "content": "still on time"}])
        assert await session.get_items() == [{"role": "user", "content": "still on time"}]


SUMMARY: TResponseInputItem = {
    "type": "message", "role": "assistant", "status": "completed", "id": "msg_summary",
    "content": [{"type": "output_text", "text": "Summary: the user greets; the bot answers.",
                 "annotations": []}],
}


class ScriptedCompaction:
    """The compaction endpoint (``client.responses.compact``) answering a fixed summary."""

    def __init__(self) -> None:
        self.responses = self
        self.requests: list[dict[str, Any]] = []

    async def compact(self, **request: Any) -> Any:
        self.requests.append(request)
        return SimpleNamespace(output=[SUMMARY], usage=None)


async def test_automatic_compaction_replaces_the_turn_atomically_on_sessiond(
    server: ServerHarness,
) -> None:
    model = ScriptedModel([reply("hello, human")], [reply("hello again")])
    agent = Agent(name="greeter", model=model)
    compaction = ScriptedCompaction()
    async with sessiond.AsyncClient(server.address) as client:
        stored = SessiondSession("compacted", client=client)
        session = OpenAIResponsesCompactionSession(
            "compacted", underlying_session=stored, client=compaction,  # type: ignore[arg-type]
            compaction_mode="input", should_trigger_compaction=lambda context: True)
        await Runner.run(agent, "hi", session=session)
        await Runner.run(agent, "hi again", session=session)
        assert len(compaction.requests) == 2
        # The second compaction summarised the first summary with the second
        # exchange: the stored history is the endpoint's output (the SDK drops
        # the id of an assistant message it cannot pair), swapped in by
        # ReplaceMessages.
        summary = {key: value for key, value in SUMMARY.items() if key != "id"}
        assert compaction.requests[1]["input"][0]["content"] == SUMMARY["content"]
        assert await stored.get_items() == [summary]
        last = await get_session(server.sessions, "compacted")
        assert (last.message_count, last.turn_count) == (1, 1)
        await assert_counters_match_recount(server.sessions, server.messages, "compacted")


async def test_a_snapshot_is_never_replaced_over_history_it_did_not_see(
    server: ServerHarness,
) -> None:
    async with sessiond.AsyncClient(server.address) as client:
        session = SessiondSession("guarded", client=client)
        await session.add_items(ITEMS[:3])
        snapshot = await session._get_compaction_snapshot(10)
        assert snapshot is not None and snapshot.complete
        assert snapshot.items == ITEMS[:3]
        await session.add_items([ITEMS[3]])  # another writer, after the read
        assert await snapshot.replace_suffix(1, [SUMMARY]) is False
        assert await session.get_items() == ITEMS[:4]
        snapshot = await session._get_compaction_snapshot(10)
        assert snapshot is not None
        await session.pop_item()  # last_seq stays; the etag catches it
        assert await snapshot.replace_suffix(1, [SUMMARY]) is False
        snapshot = await session._get_compaction_snapshot(2)
        assert snapshot is not None and not snapshot.complete
        assert await snapshot.replace_suffix(1, [SUMMARY]) is True
        assert await session.get_items() == [*ITEMS[:2], SUMMARY]


async def test_a_compaction_drops_the_expired_prefix_up_to_the_first_live_item(
    server: ServerHarness,
) -> None:
    def note(text: str) -> TResponseInputItem:
        return {"role": "user", "content": text}

    def expired(item: TResponseInputItem) -> bool:  # the encrypted session's TTL check
        return str(item.get("content", "")).startswith("expired")

    async with sessiond.AsyncClient(server.address) as client:
        session = SessiondSession("ttl", client=client)
        await session.add_items([note("expired a"), note("expired b"), note("live c"),
                                 note("expired d"), note("newest e")])
        snapshot = await session._get_compaction_snapshot(1, prune_prefix=expired)
        assert snapshot is not None and snapshot.items == [note("newest e")]
        assert await snapshot.replace_suffix(0, [SUMMARY]) is True
        # The oldest items go while the check holds; "live c" stops it, so the
        # expired item after it stays (as in the SDK's own stores).
        assert await session.get_items() == [note("live c"), note("expired d"), SUMMARY]
        await assert_counters_match_recount(server.sessions, server.messages, "ttl")
        # A refused replacement drops nothing.
        snapshot = await session._get_compaction_snapshot(1, prune_prefix=lambda item: True)
        assert snapshot is not None
        await session.add_items([note("another writer")])
        assert await snapshot.replace_suffix(0, [SUMMARY]) is False
        assert len(await session.get_items()) == 4
