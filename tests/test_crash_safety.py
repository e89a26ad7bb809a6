"""Crash safety: SIGKILL the server at random moments under concurrent writers; nothing
acknowledged is lost or doubled.

Several client *processes* append messages and record usage with client-chosen ids
(message ids, usage request ids) against a ``sessiond serve`` subprocess. Each client logs
an operation only after the server acknowledged it, and retries a failed operation with the
same ids until it is acknowledged, so after the run every operation it attempted was
acknowledged. The server is killed with SIGKILL whenever a random number of further
acknowledgements has arrived (10 times, ``SESSIOND_CRASH_KILLS`` for more), restarted on
the same file, and finally stopped. Then the store, opened in process, must hold every
acknowledged message exactly once, usage equal to the sum of the acknowledged records,
counters equal to recounts, and a change log without gaps.

Run as a script, this file is the client: ``python test_crash_safety.py ADDRESS N LOG STOP``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc

CLIENTS = 4
OPS_PER_SESSION = 16
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
             grpc.StatusCode.CANCELLED}


def run_client(address: str, client: int, log_path: Path, stop_path: Path) -> int:
    """Write until ``stop_path`` exists; log each acknowledged operation as a JSON line."""
    from sessiond.v1 import (
        message_pb2,
        message_service_pb2,
        message_service_pb2_grpc,
        session_pb2,
        session_service_pb2,
        session_service_pb2_grpc,
        stats_service_pb2,
        stats_service_pb2_grpc,
    )

    channel = grpc.insecure_channel(address)
    sessions = session_service_pb2_grpc.SessionServiceStub(channel)
    messages = message_service_pb2_grpc.MessageServiceStub(channel)
    stats = stats_service_pb2_grpc.StatsServiceStub(channel)

    def until_acknowledged(call: Any, request: Any) -> Any:
        while True:
            try:
                return call(request, timeout=10, wait_for_ready=True)
            except grpc.RpcError as err:
                if err.code() not in RETRYABLE:  # type: ignore[attr-defined]
                    raise
                time.sleep(0.02)

    with log_path.open("a") as log:
        n = 0
        while not stop_path.exists():
            sid = f"c{client}-s{n // OPS_PER_SESSION}"
            if n % OPS_PER_SESSION == 0:
                until_acknowledged(sessions.CreateSession,
                                   session_service_pb2.CreateSessionRequest(
                                       session=session_pb2.Session(id=sid, agent="crash")))
                entry: dict[str, Any] = {"op": "create", "sid": sid}
            elif n % 3:
                mid = f"{sid}-m{n}"
                batch = [message_pb2.Message(id=f"{mid}-{k}", role=message_pb2.ROLE_USER,
                                             content=f"message {n}.{k}")
                         for k in range(1 + n % 3)]
                until_acknowledged(messages.AppendMessages,
                                   message_service_pb2.AppendMessagesRequest(
                                       session_id=sid, messages=batch))
                entry = {"op": "append", "sid": sid, "ids": [m.id for m in batch]}
            else:
                rid = f"{sid}-u{n}"
                answer = until_acknowledged(stats.RecordUsage, stats_service_pb2.RecordUsageRequest(
                    session_id=sid, model=f"model-{n % 2}", request_id=rid,
                    usage=session_pb2.Usage(prompt_tokens=n, completion_tokens=1,
                                            cost_micros=n)))
                entry = {"op": "usage", "sid": sid, "rid": rid, "cost": n,
                         "duplicate": answer.duplicate}
            log.write(json.dumps(entry) + "\n")
            log.flush()
            n += 1
    channel.close()
    return 0


def acknowledged(logs: list[Path]) -> int:
    return sum(p.read_text().count("\n") for p in logs if p.exists())


def test_every_acknowledged_write_survives_random_sigkills_exactly_once(
        server_process: Any, tmp_path: Path) -> None:
    kills = int(os.environ.get("SESSIOND_CRASH_KILLS", "10"))
    rng = random.Random(os.environ.get("SESSIOND_CRASH_SEED", "sessiond"))
    process = server_process()
    stop = tmp_path / "stop"
    logs = [tmp_path / f"client-{i}.jsonl" for i in range(CLIENTS)]
    clients = [subprocess.Popen([sys.executable, __file__, process.address, str(i),
                                 str(logs[i]), str(stop)], stderr=subprocess.PIPE)
               for i in range(CLIENTS)]
    try:
        for _ in range(kills):
            target = acknowledged(logs) + rng.randint(5, 120)
            while acknowledged(logs) < target:
                assert all(c.poll() is None for c in clients), "a client died"
                time.sleep(0.01)
            process.kill()  # SIGKILL: no cleanup, possibly mid-commit
            process.start()  # same port, same file; returns once SERVING
        target = acknowledged(logs) + 20
        while acknowledged(logs) < target:
            time.sleep(0.01)
    finally:
        stop.touch()
        for client in clients:
            _, err = client.communicate(timeout=60)
            assert client.returncode == 0, err.decode()[-2000:]
    assert process.terminate() == 0
    assert "replayed it" in process.log_path.read_text()  # WAL recovery was reported

    asyncio.run(verify(process.database, logs))


async def verify(database: Path, logs: list[Path]) -> None:
    from sessiond_server.api.context import DEFAULT_SCOPE
    from sessiond_server.store import MessageQuery, SQLiteStore

    entries = [json.loads(line) for p in logs for line in p.read_text().splitlines()]
    want_messages: dict[str, list[str]] = {}
    want_cost: dict[str, int] = {}
    for e in entries:
        want_messages.setdefault(e["sid"], [])
        want_cost.setdefault(e["sid"], 0)
        if e["op"] == "append":
            want_messages[e["sid"]].extend(e["ids"])
        elif e["op"] == "usage":
            want_cost[e["sid"]] += e["cost"]
    store = SQLiteStore(database, clock=lambda: time.time_ns() // 1000)
    await store.open()
    try:
        assert await store.check_consistency() == []
        checked = 0
        for sid, ids in want_messages.items():
            page = await store.list_messages(DEFAULT_SCOPE, sid,
                                             MessageQuery(page_size=1000, max_messages=1000))
            stored = [m.id for m in page.messages]
            assert stored == ids, f"{sid}: stored {stored}, acknowledged {ids}"
            assert [m.seq for m in page.messages] == list(range(1, len(ids) + 1))
            session, _ = await store.get_session(DEFAULT_SCOPE, sid)
            assert session.usage.cost_micros == want_cost[sid], sid
            assert session.message_count == len(ids)
            checked += len(ids) + 1
        listed = [s.id async for page, _ in store.initial_state(DEFAULT_SCOPE, [])
                  for s in page]
        assert set(listed) == set(want_messages)
        changes = await store.read_changes(store.compacted_revision + 1, 1_000_000)
        revisions = sorted({c.revision for c in changes})
        assert revisions == list(range(revisions[0], store.revision + 1))
        assert checked >= len(entries)
        print(f"crash safety: {len(entries)} acknowledged operations, {checked} writes checked")
    finally:
        await store.close()


if __name__ == "__main__":
    sys.exit(run_client(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])))
