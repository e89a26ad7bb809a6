"""``python -m bench.adapters``: an agent turn through each framework adapter, beside the
framework's own store, in one run (on demand; not part of ``python -m bench``).

A turn is what a framework's runner does around one model call: read the
session's history, then append the turn (the user's message, a tool call, its
result and the reply: four items). Each store does ``--turns`` turns on one
session of its own, one after the other (latency, not throughput), on the same
machine:

* OpenAI Agents SDK: ``SessiondSession`` against ``sessiond serve`` (a
  subprocess on a fresh SQLite file, durability ``full``) and the SDK's own
  ``SQLiteSession`` on a fresh file;
* Google ADK: ``SessiondSessionService`` against the same server and ADK's
  own ``SqliteSessionService`` on a fresh file; a turn there is what the
  runner does: ``get_session``, then ``append_event`` for the user's message
  and for the reply, each with a state delta (session, ``user:`` and ``app:``
  keys on the reply);
* LangChain: ``SessiondChatMessageHistory`` against the same server, and
  LangChain core's ``InMemoryChatMessageHistory`` (core ships no durable
  history: the in-memory one is the floor, not a peer).

History reads are the whole session (``get_items()`` / ``aget_messages()``),
as both frameworks' runners read it by default, so a turn's cost grows with
the session; the p50 and p99 are over every turn. Prints a table and one
``RESULT_ADAPTERS`` JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from agents.memory import SQLiteSession
from google.adk.events.event import Event
from google.adk.events.event_actions import EventActions
from google.adk.sessions.sqlite_session_service import SqliteSessionService
from google.genai import types
from langchain_core.chat_history import InMemoryChatMessageHistory
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from sessiond import AsyncClient
from sessiond.integrations.adk import SessiondSessionService
from sessiond.integrations.langchain import SessiondChatMessageHistory
from sessiond.integrations.openai_agents import SessiondSession

from bench.sessiond_process import SessiondServer

Turn = Callable[[int], Awaitable[None]]


def sdk_turn_items(n: int) -> list[Any]:
    call_id = f"call_{n}"
    return [
        {"role": "user", "content": f"question {n}: what is {n} + {n}?"},
        {"type": "function_call", "call_id": call_id, "name": "add",
         "arguments": json.dumps({"a": n, "b": n})},
        {"type": "function_call_output", "call_id": call_id, "output": str(2 * n)},
        {"type": "message", "role": "assistant", "status": "completed", "id": f"msg_{n}",
         "content": [{"type": "output_text", "text": f"{n} + {n} = {2 * n}",
                      "annotations": []}]},
    ]


def langchain_turn_messages(n: int) -> list[BaseMessage]:
    call_id = f"call_{n}"
    return [
        HumanMessage(f"question {n}: what is {n} + {n}?"),
        AIMessage("", tool_calls=[{"name": "add", "args": {"a": n, "b": n}, "id": call_id}]),
        ToolMessage(str(2 * n), tool_call_id=call_id),
        AIMessage(f"{n} + {n} = {2 * n}"),
    ]


def sdk_turn(session: Any) -> Turn:
    async def turn(n: int) -> None:
        await session.get_items()
        await session.add_items(sdk_turn_items(n))
    return turn


def langchain_turn(history: Any) -> Turn:
    async def turn(n: int) -> None:
        await history.aget_messages()
        await history.aadd_messages(langchain_turn_messages(n))
    return turn


def adk_event(author: str, text: str, state: dict[str, Any]) -> Event:
    return Event(invocation_id="bench", author=author,
                 content=types.Content(role="user" if author == "user" else "model",
                                       parts=[types.Part(text=text)]),
                 actions=EventActions(state_delta=state))


def adk_turn(service: Any, session_id: str) -> Turn:
    async def turn(n: int) -> None:
        session = await service.get_session(app_name="bench", user_id="u",
                                            session_id=session_id)
        await service.append_event(session, adk_event("user", f"question {n}", {"turn": n}))
        await service.append_event(session, adk_event(
            "agent", f"answer {n}", {"answered": n, "user:last": n, "app:turns": n}))
    return turn


async def measure(turn: Turn, turns: int) -> dict[str, float]:
    latencies: list[float] = []
    for n in range(turns):
        started = time.perf_counter()
        await turn(n)
        latencies.append(time.perf_counter() - started)
    latencies.sort()
    return {
        "turns": turns,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "turns_per_s": turns / sum(latencies),
    }


async def run(turns: int, workdir: Path) -> dict[str, dict[str, float]]:
    server = SessiondServer(workdir / "sessiond.db", "full", workdir / "sessiond.log")
    results: dict[str, dict[str, float]] = {}
    try:
        async with AsyncClient(server.target) as client:
            results["openai-agents sessiond"] = await measure(
                sdk_turn(SessiondSession("bench-sdk", client=client)), turns)
            sqlite_session = SQLiteSession("bench-sdk", str(workdir / "sdk.db"))
            results["openai-agents SQLiteSession"] = await measure(sdk_turn(sqlite_session),
                                                                   turns)
            sqlite_session.close()
            sessiond_adk = SessiondSessionService(client=client)
            await sessiond_adk.create_session(app_name="bench", user_id="u", session_id="adk")
            results["adk sessiond"] = await measure(adk_turn(sessiond_adk, "adk"), turns)
            sqlite_adk = SqliteSessionService(str(workdir / "adk.db"))
            await sqlite_adk.create_session(app_name="bench", user_id="u", session_id="adk")
            results["adk SqliteSessionService"] = await measure(adk_turn(sqlite_adk, "adk"),
                                                                turns)
            results["langchain sessiond"] = await measure(
                langchain_turn(SessiondChatMessageHistory("bench-lc", client=client)), turns)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # LangChain marks its histories deprecated
                floor = InMemoryChatMessageHistory()
            results["langchain in-memory (floor)"] = await measure(langchain_turn(floor), turns)
    finally:
        server.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=200, help="turns per store (default 200)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sessiond-bench-adapters-") as directory:
        results = asyncio.run(run(args.turns, Path(directory)))
    print(f"{'store':32} {'p50 ms':>9} {'p99 ms':>9} {'turns/s':>9}")
    for name, figures in results.items():
        print(f"{name:32} {figures['p50_ms']:9.2f} {figures['p99_ms']:9.2f} "
              f"{figures['turns_per_s']:9.1f}")
    print("RESULT_ADAPTERS " + json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    main()
