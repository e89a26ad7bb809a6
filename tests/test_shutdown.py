"""Graceful shutdown of ``sessiond serve``: SIGTERM lets in-flight calls finish, ends watch
streams with UNAVAILABLE, closes the database cleanly (the next start finds no write-ahead
log to replay), and a second signal forces an exit at once.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sessiond.v1 import (
    message_pb2,
    message_service_pb2,
    message_service_pb2_grpc,
    session_pb2,
    session_service_pb2,
    session_service_pb2_grpc,
)

ss = session_service_pb2
ms = message_service_pb2
ALLOWED_DURING_SHUTDOWN = {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}


def reason_of(err: grpc.RpcError) -> str:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


def wait_for_log(process: Any, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in process.log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{process.log_tail()}"
        time.sleep(0.02)


def test_sigterm_finishes_in_flight_writes_ends_watches_and_closes_the_database(
        server_process: Any) -> None:
    process = server_process()
    channel = grpc.insecure_channel(process.address)
    sessions = session_service_pb2_grpc.SessionServiceStub(channel)
    messages = message_service_pb2_grpc.MessageServiceStub(channel)
    sessions.CreateSession(ss.CreateSessionRequest(session=session_pb2.Session(id="s")))
    watch = sessions.WatchSessions(ss.WatchSessionsRequest())
    assert next(watch).type == ss.WATCH_RESPONSE_TYPE_CREATED

    acknowledged: list[str] = []
    outcomes: list[grpc.StatusCode] = []
    lock = threading.Lock()

    def writer(w: int) -> None:
        for i in range(10_000):
            mid = f"w{w}-{i}"
            try:
                messages.AppendMessages(ms.AppendMessagesRequest(session_id="s", messages=[
                    message_pb2.Message(id=mid, role=message_pb2.ROLE_USER, content="x")]),
                    timeout=30)
            except grpc.RpcError as err:
                with lock:
                    outcomes.append(err.code())  # type: ignore[attr-defined]
                return
            with lock:
                acknowledged.append(mid)
                outcomes.append(grpc.StatusCode.OK)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    while len(acknowledged) < 50:
        time.sleep(0.005)
    assert process.process is not None
    process.process.send_signal(signal.SIGTERM)
    # The watch stream ends with UNAVAILABLE / SHUTTING_DOWN after a final progress.
    ended: grpc.RpcError | None = None
    try:
        for _ in watch:
            pass
    except grpc.RpcError as err:
        ended = err
    assert ended is not None and ended.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert reason_of(ended) == "SHUTTING_DOWN"
    for t in threads:
        t.join(timeout=60)
    channel.close()
    assert process.process.wait(timeout=60) == 0
    assert set(outcomes) <= ALLOWED_DURING_SHUTDOWN, outcomes
    log = process.log_path.read_text()
    assert "shutting down" in log and "stopped" in log

    # Closed cleanly: no write-ahead log is left to replay, and every acknowledged
    # write is in the file exactly once.
    wal = Path(f"{process.database}-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    db = sqlite3.connect(f"file:{process.database}?mode=ro", uri=True)
    try:
        stored = [r[0] for r in db.execute(
            "SELECT m.message_id FROM messages m JOIN sessions s ON s.pk = m.session_pk"
            " WHERE s.id = 's' ORDER BY m.seq")]
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        db.close()
    assert len(stored) == len(set(stored))
    assert set(acknowledged) <= set(stored)
    process.start()
    assert "replayed it" not in process.log_tail(200)


def test_a_second_signal_forces_an_exit_while_a_call_is_stuck(server_process: Any) -> None:
    process = server_process()
    channel = grpc.insecure_channel(process.address)
    sessions = session_service_pb2_grpc.SessionServiceStub(channel)
    sessions.CreateSession(ss.CreateSessionRequest(session=session_pb2.Session(id="s")))
    # Another connection holds SQLite's write lock, so the next write waits in the
    # server (its busy timeout) and holds shutdown inside its grace period.
    intruder = sqlite3.connect(process.database, isolation_level=None)
    intruder.execute("BEGIN IMMEDIATE")
    stuck = sessions.CreateSession.future(
        ss.CreateSessionRequest(session=session_pb2.Session(id="t")), timeout=60)
    try:
        time.sleep(0.2)  # let the write reach the server; not an assertion
        assert process.process is not None
        process.process.send_signal(signal.SIGTERM)
        wait_for_log(process, "shutting down")
        process.process.send_signal(signal.SIGTERM)
        assert process.process.wait(timeout=30) == 1
        assert "second signal" in process.log_path.read_text()
    finally:
        intruder.execute("ROLLBACK")
        intruder.close()
        with contextlib.suppress(grpc.RpcError):
            stuck.result()
        channel.close()
    # Forced out mid-write: the next start recovers and the file is sound.
    process.start()
    db = sqlite3.connect(f"file:{process.database}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        db.close()


def test_the_server_runs_on_uvloop_when_asked(server_process: Any) -> None:
    process = server_process(None, "--event-loop", "uvloop")
    with grpc.insecure_channel(process.address) as channel:
        sessions = session_service_pb2_grpc.SessionServiceStub(channel)
        created = sessions.CreateSession(
            ss.CreateSessionRequest(session=session_pb2.Session(id="on-uvloop")))
        assert created.created and created.revision == 1
    assert process.process is not None
    process.process.send_signal(signal.SIGTERM)
    assert process.process.wait(timeout=60) == 0
