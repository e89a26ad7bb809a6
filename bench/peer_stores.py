"""Peers: the session stores of other agent frameworks doing the same work.

This file runs under the peers venv's interpreter (bench/.peers-venv, see
bench/peers.py), as a script: it imports nothing from sessiond or from the
bench package, so the peers' dependencies never meet the project's. Each peer
works in-process on a fresh SQLite file, with no network and no model call.

The work is the append scenario's: one 1 KB user message appended per call,
by 1 and by 8 concurrent writers, each writer on its own session, for a fixed
time. Each peer is used the way its documentation shows:

* OpenAI Agents SDK ``SQLiteSession.add_items`` (a thread per call, a
  per-file lock, one commit per call);
* LangGraph ``SqliteSaver.put``: one checkpoint per message, whose messages
  channel holds only the new message. This is the cheapest LangGraph write;
  a real graph using the add_messages reducer stores the whole list each step,
  so real LangGraph appends cost more as a thread grows;
* Google ADK ``DatabaseSessionService.append_event`` on
  ``sqlite+aiosqlite`` (SQLAlchemy async), one Event per message.

The agent turn (OpenAI Agents SDK): read the whole history with
``get_items`` and append a user and an assistant item, on a session of 10 and
of 1,000 items, one writer; the SDK's Runner reads the whole history each turn.

Prints one JSON object: {peer: {"version", "writers": {"1": {...}, "8": {...}},
"turns": {"10": {...}, "1000": {...}}}
or {peer: {"skipped": reason}}.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import math
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

PAYLOAD = "x" * 1024
WARMUP_S = 0.5


def _percentile_ms(latencies_ns: list[int], fraction: float) -> float | None:
    if not latencies_ns:
        return None
    ordered = sorted(latencies_ns)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1] / 1e6


def _summary(latencies_ns: list[int], window_s: float) -> dict[str, Any]:
    return {
        "ops_per_s": len(latencies_ns) / window_s,
        "p50_ms": _percentile_ms(latencies_ns, 0.5),
        "p99_ms": _percentile_ms(latencies_ns, 0.99),
        "samples": len(latencies_ns),
    }


async def _drive_async(
    appenders: list[Callable[[], Awaitable[None]]], duration_s: float
) -> dict[str, Any]:
    """Run each appender in its own task until the window closes."""
    record_from = time.monotonic_ns() + int(WARMUP_S * 1e9)
    stop_at = record_from + int(duration_s * 1e9)
    latencies: list[int] = []

    async def writer(append: Callable[[], Awaitable[None]]) -> None:
        while time.monotonic_ns() < stop_at:
            started = time.monotonic_ns()
            await append()
            ended = time.monotonic_ns()
            if started >= record_from and ended <= stop_at:
                latencies.append(ended - started)

    await asyncio.gather(*(writer(append) for append in appenders))
    return _summary(latencies, duration_s)


def _drive_threads(appenders: list[Callable[[], None]], duration_s: float) -> dict[str, Any]:
    """Run each blocking appender in its own thread until the window closes."""
    record_from = time.monotonic_ns() + int(WARMUP_S * 1e9)
    stop_at = record_from + int(duration_s * 1e9)
    latencies: list[int] = []
    lock = threading.Lock()

    def writer(append: Callable[[], None]) -> None:
        mine: list[int] = []
        while time.monotonic_ns() < stop_at:
            started = time.monotonic_ns()
            append()
            ended = time.monotonic_ns()
            if started >= record_from and ended <= stop_at:
                mine.append(ended - started)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=writer, args=(append,)) for append in appenders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(duration_s + 60)
    return _summary(latencies, duration_s)


def run_openai_agents(directory: Path, writers: int, duration_s: float) -> dict[str, Any]:
    from agents.memory import SQLiteSession

    path = directory / f"openai-{writers}.sqlite"
    sessions = [SQLiteSession(f"session-{index}", path) for index in range(writers)]
    item: Any = {"role": "user", "content": PAYLOAD}

    def appender(session: Any) -> Callable[[], Awaitable[None]]:
        async def append() -> None:
            await session.add_items([item])

        return append

    try:
        return asyncio.run(_drive_async([appender(s) for s in sessions], duration_s))
    finally:
        for session in sessions:
            session.close()


def run_openai_agents_turns(directory: Path, history: int, duration_s: float) -> dict[str, Any]:
    """An agent turn as the SDK's Runner does it: read the whole history, append two.

    The session holds ``history`` items when each turn starts: the two a turn
    adds are popped again outside the timed part, so the history does not grow.
    """
    from agents.memory import SQLiteSession

    path = directory / f"openai-turns-{history}.sqlite"
    session = SQLiteSession("turns", path)
    user: Any = {"role": "user", "content": PAYLOAD}
    assistant: Any = {"role": "assistant", "content": PAYLOAD}

    async def main() -> dict[str, Any]:
        await session.add_items([user if i % 2 == 0 else assistant for i in range(history)])
        record_from = time.monotonic_ns() + int(WARMUP_S * 1e9)
        stop_at = record_from + int(duration_s * 1e9)
        latencies: list[int] = []
        while time.monotonic_ns() < stop_at:
            started = time.monotonic_ns()
            await session.get_items()
            await session.add_items([user, assistant])
            ended = time.monotonic_ns()
            if started >= record_from and ended <= stop_at:
                latencies.append(ended - started)
            await session.pop_item()
            await session.pop_item()
        return _summary(latencies, duration_s)

    try:
        return asyncio.run(main())
    finally:
        session.close()


#: Peers whose agent turn is measured, by the name PEERS gives them.
TURNS: dict[str, Callable[[Path, int, float], dict[str, Any]]] = {
    "openai-agents SQLiteSession": run_openai_agents_turns,
}


def run_langgraph(directory: Path, writers: int, duration_s: float) -> dict[str, Any]:
    import sqlite3

    from langgraph.checkpoint.base import empty_checkpoint
    from langgraph.checkpoint.sqlite import SqliteSaver

    path = directory / f"langgraph-{writers}.sqlite"
    connection = sqlite3.connect(path, check_same_thread=False)
    saver = SqliteSaver(connection)
    saver.setup()

    def appender(thread_id: str) -> Callable[[], None]:
        config: Any = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
        step = 0

        def append() -> None:
            nonlocal config, step
            step += 1
            checkpoint = empty_checkpoint()
            checkpoint["id"] = str(uuid.uuid4())
            version = str(step)
            checkpoint["channel_values"] = {"messages": [{"type": "human", "content": PAYLOAD}]}
            checkpoint["channel_versions"] = {"messages": version}
            config = saver.put(
                config, checkpoint, {"source": "loop", "step": step}, {"messages": version}
            )

        return append

    try:
        return _drive_threads([appender(f"thread-{i}") for i in range(writers)], duration_s)
    finally:
        connection.close()


def run_google_adk(directory: Path, writers: int, duration_s: float) -> dict[str, Any]:
    from google.adk.events import Event
    from google.adk.sessions import DatabaseSessionService
    from google.genai import types

    path = directory / f"adk-{writers}.sqlite"

    async def main() -> dict[str, Any]:
        service = DatabaseSessionService(db_url=f"sqlite+aiosqlite:///{path}")
        sessions = [
            await service.create_session(app_name="bench", user_id="user", session_id=f"s{i}")
            for i in range(writers)
        ]

        def appender(session: Any) -> Callable[[], Awaitable[None]]:
            async def append() -> None:
                event = Event(
                    author="user",
                    invocation_id=str(uuid.uuid4()),
                    content=types.Content(role="user", parts=[types.Part(text=PAYLOAD)]),
                )
                await service.append_event(session, event)

            return append

        try:
            return await _drive_async([appender(s) for s in sessions], duration_s)
        finally:
            await service.close()

    return asyncio.run(main())


PEERS: dict[str, tuple[str, Callable[[Path, int, float], dict[str, Any]]]] = {
    "openai-agents SQLiteSession": ("openai-agents", run_openai_agents),
    "langgraph SqliteSaver": ("langgraph-checkpoint-sqlite", run_langgraph),
    "google-adk DatabaseSessionService": ("google-adk", run_google_adk),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--turn-histories", type=int, nargs="*", default=[10, 1000])
    args = parser.parse_args()
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sessiond-bench-peers-") as directory:
        for name, (package, run) in PEERS.items():
            try:
                version = importlib.metadata.version(package)
            except importlib.metadata.PackageNotFoundError:
                report[name] = {"skipped": f"{package} is not installed"}
                continue
            entry: dict[str, Any] = {"version": version, "writers": {}}
            for writers in args.writers:
                try:
                    entry["writers"][str(writers)] = run(Path(directory), writers, args.duration)
                except Exception as error:  # one broken peer must not hide the others
                    entry["writers"][str(writers)] = {"error": f"{type(error).__name__}: {error}"}
            if name in TURNS:
                entry["turns"] = {}
                for history in args.turn_histories:
                    try:
                        entry["turns"][str(history)] = TURNS[name](
                            Path(directory), history, args.duration)
                    except Exception as error:  # reported, as a writer's failure is
                        entry["turns"][str(history)] = {
                            "error": f"{type(error).__name__}: {error}"}
            report[name] = entry
    print(json.dumps(report))


if __name__ == "__main__":
    main()
